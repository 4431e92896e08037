"""``python -m jaxsteer`` smoke tests on stories260K (in-process ``main(argv)``, one subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from jaxsteer._src import cli

pytestmark = pytest.mark.entry


def _run(capsys, argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def model(stories260k):
  return stories260k[0]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
  p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
  rows = [
    {"prompt": "Lily was", "preferred": "happy", "dispreferred": "sad"},
    {"prompt": "The dog was", "preferred": "kind", "dispreferred": "mean"},
  ]
  p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return p


def test_attribute(capsys, model, tmp_path):
  html, png = tmp_path / "a.html", tmp_path / "sub" / "a.png"
  code, out, _ = _run(
    capsys,
    ["attribute", "--model", model, "--prompt", "Lily was", "--preferred", "happy"]
    + ["--dispreferred", "sad", "--steps", 2, "--html", html, "--png", png],
  )
  assert code == 0
  assert len(out["tokens_pos"]) == len(out["scores_pos"]) and len(out["tokens_neg"]) > 0
  assert html.read_text().startswith("<div>") and png.stat().st_size > 0


def test_fit_then_steer_generate_and_eval(capsys, model, pairs_file, tmp_path, data_dir):
  out_dir = tmp_path / "vecs"
  code, out, _ = _run(
    capsys,
    ["fit", "--model", model, "--pairs", pairs_file, "--layers", "3", "--k", 1, "--steps", 2]
    + ["--out", out_dir],
  )
  assert code == 0 and out["layers"] == [3] and out["num_pairs"] == 2
  assert out_dir.is_file()  # one safetensors file
  code, out, _ = _run(
    capsys,
    ["generate", "--model", model, "--prompt", "Once upon a time", "--max-new-tokens", 4]
    + ["--vectors", out_dir, "--alpha", 2],
  )
  assert code == 0 and out["steering"]["alpha"] == 2.0 and out["steering"]["layers"] == [3]
  assert isinstance(out["completion"], str) and out["prompt"] == "Once upon a time"
  code, out, _ = _run(
    capsys,
    ["eval", "truthfulqa", "--model", model, "--set", "binary", "--limit", 2, "--metrics", "mc0"]
    + ["--vectors", out_dir, "--alpha", 1, "--data", data_dir, "--no-progress"],
  )
  assert code == 0 and out["num_questions"] == 2 and 0 <= out["mc0"] <= 1
  assert out["set"] == "binary" and out["split"] == "eval" and out["steering"]["alpha"] == 1.0


def test_eval_unsteered(capsys, model, data_dir):
  code, out, _ = _run(
    capsys,
    ["eval", "truthfulqa", "--model", model, "--set", "v1", "--limit", 1, "--data", data_dir]
    + ["--no-progress"],
  )
  assert code == 0 and set(out) >= {"mc1", "mc2"} and out["num_questions"] == 1


def test_bad_input(capsys, model, pairs_file, tmp_path, monkeypatch, data_dir):
  cases = [
    (["generate", "--model", tmp_path / "nope.bin", "--prompt", "x"], "model not found"),
    (["generate", "--model", model, "--prompt", "x", "--alpha", 2], "--alpha needs --vectors"),
    (
      ["generate", "--model", model, "--prompt", "x", "--vectors", tmp_path / "none"],
      "no saved SteeringVectors",
    ),
    (
      ["fit", "--model", model, "--pairs", tmp_path / "missing.jsonl"]
      + ["--layers", "1", "--out", tmp_path / "o"],
      "pairs file not found",
    ),
    (
      ["fit", "--model", model, "--pairs", pairs_file, "--layers", "9", "--out", tmp_path / "o"],
      "out of range",
    ),
    (["eval", "truthfulqa", "--model", model, "--data", tmp_path / "nodata"], "not found"),
    (["generate", "--model", model, "--prompt", ""], "empty prompt"),
    (
      ["fit", "--model", model, "--truthfulqa", "v1", "--n", 500, "--data", data_dir]
      + ["--layers", "1", "--out", tmp_path / "o"],
      "n must be in",
    ),
  ]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "preferred": "b"}\n')
  cases.append(
    (
      ["fit", "--model", model, "--pairs", bad, "--layers", "1", "--out", tmp_path / "o"],
      "line 1: need string fields",
    )
  )
  for argv, msg in cases:
    code, _, err = _run(capsys, argv)
    assert code == 2 and msg in err, (argv, err)
  assert not (tmp_path / "o").exists()
  monkeypatch.delenv("JAXSTEER_DATA", raising=False)
  code, _, err = _run(capsys, ["eval", "truthfulqa", "--model", model])
  assert code == 2 and "--data" in err
  for argv in (
    ["fit", "--model", model, "--pairs", pairs_file, "--layers", "a,b", "--out", "o"],
    ["generate", "--model", model],  # no --prompt
    ["eval", "mmlu", "--model", model],
  ):
    with pytest.raises(SystemExit) as e:
      cli.main([str(a) for a in argv])
    assert e.value.code == 2
  capsys.readouterr()


def test_module_entry_point(model):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
    [sys.executable, "-m", "jaxsteer", "generate", "--model", str(model) + ".missing"]
    + ["--prompt", "x"],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert r.returncode == 2 and "model not found" in r.stderr and r.stdout == ""
