"""Resume faults (issue 17): a resume with other settings is refused naming them (unless
``--override-settings``; never for settings that fix shapes), and a torn latest checkpoint falls
back to the newest intact one with a warning. For ``recoder.train`` and ``paca_jax.train``."""

import pathlib

import numpy as np
import pytest

WORDS = "the cat sat on a mat dog ran to big red house <unk>".split()


def _tear(ckpt_dir: pathlib.Path, step: int) -> None:
  """Truncates every data file of one orbax step (a disk filled or a copy cut short)."""
  files = [p for p in (ckpt_dir / str(step)).rglob("*") if p.is_file()]
  assert files, f"no files under {ckpt_dir / str(step)}"
  for p in files:
    p.write_bytes(p.read_bytes()[:3])


def test_recoder_resume_refuses_changed_settings_and_survives_a_torn_checkpoint(tmp_path):
  from recoder._src import train as train_lib

  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  data.mkdir()
  for split, n in (("train", 60), ("valid", 8), ("test", 8)):
    lines = [" " + " ".join(rng.choice(WORDS, 6)) for _ in range(n)] + [" " + " ".join(WORDS)]
    (data / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
  out = tmp_path / "run"
  base = ["--data", str(data), "--out", str(out), "--emb", "4", "--hidden", "4", "--layers", "1"]
  base += ["--batch-size", "2", "--bptt", "5", "--epochs", "1", "--ckpt-every", "1"]
  base += ["--no-progress"]

  def train(*extra):
    return train_lib.train_from_argv([*base, *extra])

  assert train("--max-steps", "2").global_step == 2
  config = (out / "config.json").read_text()
  with pytest.raises(ValueError, match=r"other settings \(--lr 20\.0 -> 5\.0\).*--override"):
    train("--max-steps", "3", "--lr", "5")
  with pytest.raises(ValueError, match=r"other model settings \(--emb 4 -> 16\)"):
    train("--max-steps", "3", "--emb", "16", "--override-settings")
  assert (out / "config.json").read_text() == config  # a refused resume rewrites nothing

  _tear(out / "ckpt", 2)
  with pytest.warns(train_lib.CheckpointWarning, match="step 2 .* damaged.*falling back to step 1"):
    got = train("--max-steps", "3", "--lr", "5", "--override-settings")
  assert got.global_step == 3  # resumed from step 1, trained steps 2 and 3
  assert '"lr": 5.0' in (out / "config.json").read_text()


def test_paca_resume_refuses_changed_settings_and_survives_a_torn_checkpoint(tmp_path):
  from paca_jax import train

  text = tmp_path / "input.txt"
  text.write_text(" ".join(np.random.default_rng(0).choice(WORDS, 400)))
  out = tmp_path / "run"
  args = ["--model", "nano", "--data", str(text), "--out", str(out), "--method", "lora"]
  args += ["--rank", "2", "--steps", "3", "--ckpt-every", "1", "--seq", "8", "--batch", "2"]
  args += ["--eval-batches", "1", "--export", "none", "--no-progress"]
  first = train.main([*args, "--stop-after", "2"])
  assert first["end_step"] == 2
  with pytest.raises(ValueError, match=r"other settings \(--lr 0\.001 -> 0\.01, --batch 2 -> 4\)"):
    train.main([*args, "--lr", "1e-2", "--batch", "4"])
  _tear(out / "ckpt", 2)
  with pytest.warns(train.CheckpointWarning, match="step 2 .* damaged.*falling back to step 1"):
    got = train.main([*args, "--lr", "1e-2", "--override-settings"])
  assert got["start_step"] == 1 and got["end_step"] == 3 and sorted(got["losses"]) == [2, 3]
