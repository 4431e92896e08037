"""Smoke tests of benchmarks/gpu_suite.py: the ``--dry-run`` CPU mode at tiny shapes, the budget."""

import importlib.util
import json
import math
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
  spec = importlib.util.spec_from_file_location("gpu_suite", _PATH)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["gpu_suite"] = mod  # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


def test_dry_run_smoke(suite, tmp_path):
  out = tmp_path / "suite.json"
  res = suite.run(dry_run=True, out=out)
  assert json.loads(out.read_text())["sections"].keys() == set(suite.SECTIONS)
  s = res["sections"]
  assert math.isfinite(s["ig"]["s_per_attribution"]) and s["ig"]["points"] == 4
  assert math.isfinite(s["ig"]["completeness_delta"])
  for b in res["shapes"]["decode_batches"]:
    row = s["decode"][f"batch{b}"]
    assert row["unsteered"]["tok_per_s"] > 0 and row["steered"]["tok_per_s"] > 0
  ft = s["finetune"]
  assert 0 < ft["paca"]["trainable_params"] < ft["full"]["trainable_params"]
  assert all(ft[m]["step_ms"] > 0 for m in ("paca", "lora", "full"))
  assert s["lstm"]["jax_step_ms"] > 0
  assert len(res["loadavg"]) == 3


def test_budget_skips_sections_and_still_writes(suite, tmp_path):
  out = tmp_path / "suite.json"
  suite.run(dry_run=True, out=out, budget_s=1e-9)
  sections = json.loads(out.read_text())["sections"]
  assert all("budget" in v["skipped"] for v in sections.values())


def test_no_gpu_without_dry_run_is_a_one_line_error(suite, tmp_path, capsys):
  assert suite.main(["--out", str(tmp_path / "x.json")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: no GPU found") and "\n" not in err
  assert not (tmp_path / "x.json").exists()
