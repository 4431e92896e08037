"""File IO shared by the evaluations: JSON and JSONL reading, atomic JSON writes and the
append-only JSONL log lines of ``EvalLog``.

Writes go through the library's one atomic-write helper (``jaxsteer._src.fileio``); images are
read by the library's one image loader (``jaxsteer._src.images``: ``decode_image``, ``open_image``).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from jaxsteer._src.fileio import atomic_write_json

__all__ = [
  "append_jsonl",
  "read_json",
  "read_jsonl",
  "save_json",
]


def read_json(path, what: str | None = None) -> Any:
  """The JSON value in ``path`` (UTF-8, a leading BOM allowed); ``path`` may also be an
  ``importlib.resources`` traversable (package data).

  Raises:
    ValueError: the file is not valid JSON; the message names the file (after ``what``, e.g.
      ``"split file"``, when given).
  """
  if isinstance(path, str | os.PathLike):
    path = pathlib.Path(path)
  text = path.read_text(encoding="utf-8-sig")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{what + ' ' if what else ''}{path} is not valid JSON: {e}") from None


def read_jsonl(path, *, what: str | None = None, torn_tail: bool = False) -> list[Any]:
  """The values of a JSON Lines file, one per non-blank line (UTF-8, a leading BOM allowed).

  Lines are separated by ``\\n`` only (a JSON string may hold U+2028 and other characters that
  ``str.splitlines`` would split on). With ``torn_tail``, an unparsable last line (a writer killed
  mid-line) is dropped instead of raising.

  Raises:
    ValueError: a line is not valid JSON (the message names the file, after ``what`` when given,
      and the line).
  """
  lines = pathlib.Path(path).read_text(encoding="utf-8-sig").split("\n")
  rows = []
  for n, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if torn_tail and all(not x.strip() for x in lines[n + 1 :]):
        break
      where = f"{what + ' ' if what else ''}{path}"
      raise ValueError(f"{where} line {n + 1} is not valid JSON: {e}") from None
  return rows


def append_jsonl(path, row: Any) -> None:
  """Appends ``row`` as one JSON line to ``path``, flushed and fsynced before returning (a
  killed writer loses at most the line in progress)."""
  line = json.dumps(row, ensure_ascii=False) + "\n"
  with open(path, "a", encoding="utf-8") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def save_json(obj: Any, path) -> pathlib.Path:
  """Writes ``obj`` as indented JSON atomically (``fileio.atomic_write_json``); returns the path.

  ``obj`` may be anything ``json`` serialises or an object with a ``to_dict()`` method.
  """
  return atomic_write_json(path, obj)
