"""``fit`` flags and ``--out`` safety (issue 12)."""

import json

import pytest

from jaxsteer import grains
from jaxsteer._src import cli

pytestmark = pytest.mark.entry


def _run(capsys, argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
  p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
  rows = [
    {"prompt": "Lily was", "preferred": "happy", "dispreferred": "sad"},
    {"prompt": "The dog was", "preferred": "kind", "dispreferred": "mean"},
  ]
  p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return p


def test_fit_flags_reach_the_metadata(capsys, stories260k, pairs_file, tmp_path):
  out = tmp_path / "v.safetensors"
  code, res, err = _run(
    capsys,
    ["fit", "--model", stories260k[0], "--pairs", pairs_file, "--layers", "3", "--k", 1]
    + ["--baseline", "mean", "--candidates", "prompt", "--mask-with", "pad", "--reduce", "mean"]
    + ["--aggregate", "pca", "--mode", "pos", "--pairing", "pooled", "--batch-size", 1]
    + ["--steps", 4, "--max-steps", 64, "--on-unconverged", "warn", "--out", out],
  )
  assert code == 0, err
  m = grains.SteeringVectors.load(out).metadata
  assert (m["baseline"], m["candidates"], m["mask_with"], m["reduce"]) == (
    "mean", "prompt", "pad", "mean"
  )  # fmt: skip
  assert (m["aggregate"], m["mode"], m["pairing"], m["max_steps"]) == ("pca", "pos", "pooled", 64)
  assert len(m["ig_steps"]) == 2 and res["ig_steps_max"] <= 64


def test_fit_out_never_deletes_a_foreign_directory(capsys, stories260k, pairs_file, tmp_path):
  foreign = tmp_path / "results"
  foreign.mkdir()
  (foreign / "keep.txt").write_text("mine")
  code, _, err = _run(
    capsys,
    ["fit", "--model", stories260k[0], "--pairs", pairs_file, "--layers", "3", "--out", foreign],
  )
  assert code == 2 and "not a SteeringVectors save" in err and "Traceback" not in err
  assert (foreign / "keep.txt").read_text() == "mine"


def test_fit_unconverged_fails_with_one_line(capsys, stories260k, pairs_file, tmp_path):
  code, _, err = _run(
    capsys,
    ["fit", "--model", stories260k[0], "--pairs", pairs_file, "--layers", "3"]
    + ["--baseline", "zeros", "--steps", 2, "--max-steps", 2, "--out", tmp_path / "v"],
  )
  assert code == 2 and "did not converge" in err and "at 2 points" in err
  assert not (tmp_path / "v").exists()
