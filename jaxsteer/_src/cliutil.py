"""Shared command-line plumbing: one-line argument errors, validated argument types, exit code 2.

Every CLI of the repository (``python -m jaxsteer``, ``paca_jax.train``, ``recoder.train``,
``recoder.evaluate``, ``experiments.reproduce``) reports a bad argument or bad input as one line on
stderr, ``PROG: error: MESSAGE``, and exits with status 2 -- no usage block, no traceback.

  >>> p = OneLineParser(prog="demo")
  >>> _ = p.add_argument("--alpha", type=finite_float)
  >>> p.parse_args(["--alpha", "2"]).alpha
  2.0
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable

__all__ = [
  "UsageError",
  "OneLineParser",
  "finite_float",
  "positive_int",
  "non_negative_int",
  "positive_float",
  "non_negative_float",
  "probability",
  "check_writable_dir",
  "check_writable_file",
  "run_main",
]

# Errors that mean "bad input", not "bug": reported in one line with exit code 2.
USER_ERRORS = (ValueError, OSError)


class UsageError(Exception):
  """A user error that is not a ``ValueError``/``OSError``: printed on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
  """``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE``), exit status 2."""

  def error(self, message):  # noqa: D102 (argparse API)
    msg = " ".join(str(message).split())
    self.exit(2, f"{self.prog}: error: {msg} (see --help)\n")


def _number(text: str, kind, what: str):
  try:
    return kind(text)
  except (TypeError, ValueError):
    raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def finite_float(text: str) -> float:
  """A finite float (``nan``/``inf`` refused)."""
  v = _number(text, float, "a number")
  if not math.isfinite(v):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return v


def positive_float(text: str) -> float:
  v = finite_float(text)
  if v <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
  return v


def non_negative_float(text: str) -> float:
  v = finite_float(text)
  if v < 0:
    raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
  return v


def probability(text: str) -> float:
  """A float in (0, 1]."""
  v = finite_float(text)
  if not 0 < v <= 1:
    raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
  return v


def positive_int(text: str) -> int:
  v = _number(text, int, "a positive integer")
  if v < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
  return v


def non_negative_int(text: str) -> int:
  v = _number(text, int, "an integer >= 0")
  if v < 0:
    raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
  return v


def _probe(directory: pathlib.Path, what: str) -> None:
  try:
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe")
  except OSError as e:
    raise UsageError(f"{what}: cannot write to {directory} ({e.strerror or e})") from None
  os.close(fd)
  os.unlink(probe)


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
  p = path.absolute()
  while not p.exists():
    p = p.parent
  return p


def check_writable_dir(path, what: str = "--out") -> None:
  """Refuses an output directory that cannot be created or written, before any compute.

  Creates nothing: the nearest existing ancestor is probed with a temp file.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise UsageError(f"{what}: {path} exists and is not a directory")
  anc = _existing_ancestor(path)
  if not anc.is_dir():
    raise UsageError(f"{what}: {anc} is not a directory, so {path} cannot be created")
  _probe(anc, what)


def check_writable_file(path, what: str = "--out") -> None:
  """Refuses an output file whose folder cannot be created or written, before any compute."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise UsageError(f"{what}: {path} is a directory; expected a file path")
  check_writable_dir(path.parent if str(path.parent) else pathlib.Path("."), what)


def run_main(prog: str, fn: Callable[[], object]) -> int:
  """Runs ``fn()``; a user error (``ValueError``, ``OSError``, ``UsageError``) becomes one line
  ``PROG: error: MESSAGE`` on stderr and exit code 2. Returns 0 otherwise (or ``fn``'s int)."""
  try:
    out = fn()
  except (UsageError, *USER_ERRORS) as e:
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2
  return out if isinstance(out, int) else 0
