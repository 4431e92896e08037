"""Atomic file writes: the one helper every package of this distribution uses.

A reader (or a crash) never sees a half-written file: content goes to a temporary file in the
target's own folder (same filesystem, so ``os.replace`` is an atomic rename), is flushed and
fsynced, and only then replaces the target. On any error the temporary file is removed and the
target is left as it was.

* ``atomic_path(path)``: a context manager yielding a temporary path for writers that want a file
  name (safetensors' ``save_file``, ``np.save``, matplotlib's ``savefig``); the file is moved into
  place when the block ends without an exception.
* ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json``: the common cases.
* ``atomic_directory(path)``: the same for a whole directory (a model export): it is built in a
  temporary sibling directory and renamed into place; the caller decides beforehand whether an
  existing ``path`` may be replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = [
  "atomic_directory",
  "atomic_path",
  "atomic_write_bytes",
  "atomic_write_json",
  "atomic_write_text",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside ``path``; on success it replaces ``path`` atomically.

  The parent folder is created if needed. The temporary file is removed when the block raises
  (or when the writer never created it); ``path`` is then untouched. ``mode`` is applied before
  the rename (``mkstemp`` creates files readable only by their owner).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  tmp = pathlib.Path(name)
  try:
    yield tmp
    if not tmp.exists():
      raise FileNotFoundError(f"the writer did not create the temporary file for {path}")
    with open(tmp, "rb+") as f:  # the data reaches the disk before the rename makes it visible
      os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> pathlib.Path:
  """Writes ``data`` to ``path`` atomically; returns ``path`` as a ``pathlib.Path``."""
  with atomic_path(path, mode=mode) as tmp:
    tmp.write_bytes(data)
  return pathlib.Path(path)


def atomic_write_text(
  path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int = 0o644
) -> pathlib.Path:
  """Writes ``text`` to ``path`` atomically (encoded before any file is touched)."""
  return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(
  path: str | os.PathLike, obj: Any, *, indent: int | None = 2, default=None, **dumps_kwargs
) -> pathlib.Path:
  """Writes ``obj`` as JSON (trailing newline) atomically.

  ``obj`` may have a ``to_dict()`` method. Serialisation happens first, so an object ``json``
  cannot encode raises before anything is written.
  """
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  dumps_kwargs.setdefault("ensure_ascii", False)
  text = json.dumps(obj, indent=indent, default=default, **dumps_kwargs) + "\n"
  return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory beside ``path``; on success it becomes ``path``.

  The files written into it are fsynced, then the directory is renamed into place. An existing
  non-empty ``path`` is first moved aside (to a sibling temporary name) and deleted only once the
  new directory is in place, so the caller must have checked that it may be replaced (this
  helper does not look inside it). When the block raises, the temporary directory is removed and
  ``path`` is left (or put back) as it was.

  Raises:
    ValueError: ``path`` exists and is not a directory (nothing is touched).
  """
  out = pathlib.Path(path).absolute()
  if out.exists() and not out.is_dir():
    raise ValueError(f"{out} exists and is not a directory")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  old = None
  try:
    yield tmp
    for f in tmp.rglob("*"):
      if f.is_file() and not f.is_symlink():
        with open(f, "rb+") as fh:
          os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)  # mkdtemp creates it readable only by its owner
    if out.is_dir() and any(out.iterdir()):
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
      os.replace(out, old)  # onto an empty directory: allowed by rename(2)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and not out.exists():
      os.replace(old, out)
    elif old is not None and not any(old.iterdir()):
      old.rmdir()  # the move aside itself failed
    raise
  if old is not None:
    shutil.rmtree(old)
