"""The one atomic-write helper: a failing writer leaves the old file and no temporary behind."""

import json
import os

import pytest

from jaxsteer._src import fileio


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path):
  p = tmp_path / "sub" / "a.json"
  fileio.atomic_write_json(p, {"x": 1})
  fileio.atomic_write_json(p, {"x": 2})
  assert json.loads(p.read_text()) == {"x": 2}
  assert os.listdir(p.parent) == ["a.json"]
  assert (p.stat().st_mode & 0o777) == 0o644


def test_failing_writer_keeps_old_content_and_removes_temp(tmp_path):
  p = tmp_path / "a.txt"
  p.write_text("old")
  with pytest.raises(RuntimeError, match="boom"):
    with fileio.atomic_path(p) as tmp:
      tmp.write_text("half")
      raise RuntimeError("boom")
  assert p.read_text() == "old"
  assert os.listdir(tmp_path) == ["a.txt"]


def test_unserialisable_json_raises_before_touching_the_target(tmp_path):
  p = tmp_path / "a.json"
  p.write_text("old")
  with pytest.raises(TypeError):
    fileio.atomic_write_json(p, {"x": object()})
  assert p.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_writer_that_never_writes_is_an_error(tmp_path):
  p = tmp_path / "a.bin"
  with pytest.raises(FileNotFoundError, match="did not create"):
    with fileio.atomic_path(p) as tmp:
      tmp.unlink()
  assert not p.exists() and os.listdir(tmp_path) == []


def test_atomic_directory_replaces_and_restores_on_failure(tmp_path):
  out = tmp_path / "export"
  with fileio.atomic_directory(out) as tmp:
    (tmp / "a.txt").write_text("1")
  assert os.listdir(out) == ["a.txt"] and os.listdir(tmp_path) == ["export"]
  assert (out.stat().st_mode & 0o777) == 0o755
  with pytest.raises(RuntimeError, match="boom"):
    with fileio.atomic_directory(out) as tmp:
      (tmp / "b.txt").write_text("half")
      raise RuntimeError("boom")
  assert os.listdir(out) == ["a.txt"] and os.listdir(tmp_path) == ["export"]
  with fileio.atomic_directory(out) as tmp:
    (tmp / "b.txt").write_text("2")
  assert os.listdir(out) == ["b.txt"] and os.listdir(tmp_path) == ["export"]


def test_atomic_directory_refuses_a_file_target(tmp_path):
  p = tmp_path / "f"
  p.write_text("keep")
  with pytest.raises(ValueError, match="not a directory"):
    with fileio.atomic_directory(p):
      pass
  assert p.read_text() == "keep" and os.listdir(tmp_path) == ["f"]
