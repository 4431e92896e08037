"""Every CLI entry point, given missing, malformed or out-of-range arguments or bad input files,
exits with status 2 and one stderr line naming the problem -- no usage block, no traceback.

In-process (``cli``/``main`` functions) for speed; one subprocess per ``python -m`` module checks
that its ``__main__`` goes through the same path. Cases that would need compute check that the
error comes before it (the model loader is replaced by a function that fails the test).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxsteer._src import cli as jcli

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.entry


def _exit2(capsys, fn, argv, match):
  capsys.readouterr()
  try:
    code = fn([str(a) for a in argv])
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert code == 2, (argv, code, err)
  assert len(lines) == 1, (argv, err)
  assert "Traceback" not in err and match in lines[0], (argv, match, err)
  return lines[0]


@pytest.fixture
def no_model(monkeypatch):
  """Fails the test if a model is loaded (the error must come before any compute)."""
  import jaxsteer

  def refuse(*a, **k):
    raise AssertionError("the model was loaded before the argument error")

  monkeypatch.setattr(jaxsteer, "load", refuse)


@pytest.fixture
def blocked(tmp_path):
  """A path whose parent is a file: nothing can be written below it."""
  f = tmp_path / "a_file"
  f.write_text("x")
  return f / "sub"


def test_jaxsteer_arguments(capsys, tmp_path, no_model, blocked):
  m = ["--model", tmp_path / "m.bin"]
  gen = ["generate", *m, "--prompt", "x"]
  cases = [
    (["generate", "--prompt", "x"], "--model"),  # missing
    (["generate", *m], "--prompt"),
    ([*gen, "--dtype", "foo"], "--dtype"),  # malformed
    ([*gen, "--alpha", "nan"], "finite"),
    ([*gen, "--alpha", "inf"], "finite"),
    ([*gen, "--temperature", "nan"], "finite"),
    ([*gen, "--temperature", "-1"], ">= 0"),  # out of range
    ([*gen, "--top-p", "0"], "(0, 1]"),
    ([*gen, "--max-new-tokens", "0"], "positive integer"),
    ([*gen, "--max-new-tokens", "x"], "positive integer"),
    (["fit", *m, "--pairs", "p", "--layers", "a,b", "--out", "o"], "--layers"),
    (["fit", *m, "--pairs", "p", "--layers", "1", "--out", "o", "--k", "0"], "positive"),
    (["fit", *m, "--layers", "1", "--out", "o"], "one of the arguments"),
    (["fit", *m, "--pairs", "p", "--layers", "1", "--out", blocked], "--out"),  # unwritable
    (["attribute", *m, "--prompt", "a", "--preferred", "b", "--dispreferred", "c"]
     + ["--html", blocked / "a.html"], "--html"),
    (["eval", "truthfulqa", *m, "--batch-size", "0"], "positive integer"),
    (["eval", "mmlu", *m], "invalid choice"),
    (["eval", "mmhal", *m, "--data", "d", "--judge", "llm", "--judge-url", "file:///etc/passwd#"]
     + ["--judge-model", "j"], "http:// or https://"),
    (["eval", "mmhal", *m, "--data", "d", "--judge-total-timeout", "0"], "positive"),
    (["eval", "spavl", *m, "--data", "d", "--judge-retries", "-1"], ">= 0"),
    (["eval", "mmhal", *m, "--data", "d", "--out", blocked / "r.json"], "--out"),
    (["bogus"], "invalid choice"),
    ([], "COMMAND"),
  ]  # fmt: skip
  for argv, match in cases:
    _exit2(capsys, jcli.main, argv, match)


def test_jaxsteer_fit_refuses_a_folder_of_other_files(capsys, tmp_path, no_model):
  """Row 1: ``fit --out DIR`` with DIR holding other files: exit 2, nothing deleted."""
  out = tmp_path / "precious"
  out.mkdir()
  (out / "thesis.tex").write_text("years of work")
  pairs = tmp_path / "p.jsonl"
  pairs.write_text(json.dumps({"prompt": "a", "preferred": "b", "dispreferred": "c"}) + "\n")
  argv = ["fit", "--model", tmp_path / "m.bin", "--pairs", pairs, "--layers", "1", "--out", out]
  _exit2(capsys, jcli.main, argv, "not a SteeringVectors save")
  assert (out / "thesis.tex").read_text() == "years of work"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "precious"]


def test_jaxsteer_bad_input_files(capsys, tmp_path, stories260k):
  model, tok = stories260k
  d = tmp_path / "cfg"
  d.mkdir()
  good = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
  }  # fmt: skip
  bad_configs = [
    ({**good, "hidden_size": "8"}, "hidden_size must be an integer"),
    ({**good, "rope_scaling": {"rope_type": "linear"}}, "needs a positive number 'factor'"),
    ([1, 2], "expected a JSON object"),
  ]
  for cfg, match in bad_configs:
    (d / "config.json").write_text(json.dumps(cfg))
    _exit2(capsys, jcli.main, ["generate", "--model", d, "--prompt", "x"], match)

  # steering vectors without a layers array, and with NaN entries
  import numpy as np
  import orbax.checkpoint as ocp

  v = tmp_path / "vecs"
  v.mkdir()
  (v / "metadata.json").write_text("{}")
  ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(
    v / "arrays", args=ocp.args.StandardSave({"vectors": np.zeros((1, 32), np.float32)})
  )
  gen = ["generate", "--model", model, "--tokenizer", tok, "--prompt", "x"]
  _exit2(capsys, jcli.main, [*gen, "--vectors", v], "SteeringVectors")
  # The constructor refuses NaN, so a NaN file is written the way another tool would write it.
  from safetensors import safe_open
  from safetensors.numpy import save_file

  from jaxsteer.grains import SteeringVectors

  SteeringVectors((1,), np.ones((1, 64), np.float32)).save(tmp_path / "nan")
  with safe_open(tmp_path / "nan", "np") as f:
    header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
  tensors = {k: np.full_like(t, np.nan) if t.dtype.kind == "f" else t for k, t in tensors.items()}
  save_file(tensors, tmp_path / "nan", metadata=header)
  _exit2(capsys, jcli.main, [*gen, "--vectors", tmp_path / "nan"], "NaN or inf")

  # image paths in a pairs file may not leave its folder (row 13)
  pairs = tmp_path / "pairs.jsonl"
  for image in ("../../etc/passwd", "/etc/shadow"):
    row = {"prompt": "a", "preferred": "b", "dispreferred": "c", "image": image}
    pairs.write_text(json.dumps(row) + "\n")
    argv = ["fit", "--model", model, "--pairs", pairs, "--layers", "1", "--out", tmp_path / "o"]
    line = _exit2(capsys, jcli.main, argv, "lies outside")
    assert "root:" not in line


def test_spavl_image_paths_are_confined(tmp_path):
  from jaxsteer import evals

  f = tmp_path / "d" / "rows.jsonl"
  f.parent.mkdir()
  for image in ("../../../../etc/passwd", "/etc/shadow", {"path": "/etc/passwd"}):
    f.write_text(json.dumps({"image": image, "question": "q"}) + "\n")
    with pytest.raises(ValueError, match="lies outside") as e:
      evals.load_spavl(f)
    assert "root:" not in str(e.value)


def test_paca_arguments(capsys, tmp_path):
  from paca_jax import train

  data = tmp_path / "t.txt"
  data.write_text("hello " * 50)
  base = ["--model", "nano", "--data", data, "--out", tmp_path / "o"]
  cases = [
    (["--data", data, "--out", "o"], "--model"),
    ([*base, "--rank", "0"], "positive integer"),
    ([*base, "--rank", "two"], "positive integer"),
    ([*base, "--lr", "nan"], "finite"),
    ([*base, "--lr", "-1"], "positive"),
    ([*base, "--batch", "0"], "positive integer"),
    ([*base, "--ckpt-every", "0"], "positive integer"),
    ([*base, "--method", "qlora"], "invalid choice"),
    (["--model", "nano", "--data", tmp_path / "none.txt", "--out", tmp_path / "o"], "--data"),
    (["--model", tmp_path / "nope.bin", "--data", data, "--out", tmp_path / "o"], "neither"),
  ]
  for argv, match in cases:
    _exit2(capsys, train.cli, argv, match)


def test_recoder_arguments(capsys, tmp_path):
  from recoder import evaluate
  from recoder._src import train

  base = ["--data", tmp_path / "none", "--out", tmp_path / "o", "--no-progress"]
  cases = [
    (["--out", "o"], "--data"),
    ([*base, "--emb", "0"], "positive integer"),
    ([*base, "--ckpt-every", "0"], "positive integer"),
    ([*base, "--dropout", "1.5"], "[0, 1)"),
    ([*base, "--lr", "inf"], "finite"),
    ([*base, "--epochs", "x"], "positive integer"),
    (base, "none"),  # missing corpus: a runtime error, still one line
  ]
  for argv, match in cases:
    _exit2(capsys, train.cli, argv, match)
  for argv, match in [
    ([], "--run"),
    (["--run", tmp_path, "--batch-size", "0"], "positive integer"),
    (["--run", tmp_path / "nothing"], "no config.json"),
  ]:
    _exit2(capsys, evaluate.cli, argv, match)


def test_reproduce_arguments(capsys, tmp_path, blocked):
  from experiments import reproduce

  for argv, match in [
    (["--only", "bogus", "--out", tmp_path], "unknown studies"),
    (["--smoke", "--quick"], "not allowed with"),
    (["--smoke", "--data", tmp_path / "none"], "data directory not found"),
    (["--smoke", "--out", blocked], "not writable"),
  ]:
    _exit2(capsys, reproduce.main, argv, match)


@pytest.mark.parametrize(
  "module, argv, match",
  [
    ("paca_jax.train", ["--model", "nano", "--data", "/nonexistent.txt", "--out", "o"], "--data"),
    ("recoder.train", ["--data", "/nonexistent", "--out", "o"], "nonexistent"),
    ("recoder.evaluate", ["--run", "/nonexistent"], "no config.json"),
    ("experiments.reproduce", ["--only", "bogus"], "unknown studies"),
  ],
)
def test_module_entry_points(module, argv, match, tmp_path):
  r = subprocess.run(
    [sys.executable, "-m", module, *argv],
    capture_output=True,
    text=True,
    # The checkout on the path: `experiments` runs from the checkout, it is not installed.
    env=dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    ),
    cwd=tmp_path,
    timeout=300,
  )
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr
  assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
