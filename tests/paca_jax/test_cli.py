"""python -m paca_jax.train: smoke run, kill/resume equality, plan-mismatch refusal, exports."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from tolerances import assert_close

from paca_jax import train
from paca_jax.export import apply_lora
from paca_jax.models import CONFIGS, TinyLlama

pytestmark = pytest.mark.entry


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
  p = tmp_path_factory.mktemp("data") / "input.txt"
  rng = np.random.default_rng(0)
  words = ["the", "king", "queen", "speaks", "of", "love", "and", "war", "to", "thee"]
  p.write_text(" ".join(rng.choice(words, 3000)))
  return p


def _args(data, out, *extra):
  return [
    "--model", "nano", "--data", str(data), "--out", str(out), "--method", "paca",
    "--rank", "4", "--steps", "4", "--ckpt-every", "2", "--seq", "16", "--batch", "4",
    "--lr", "1e-2", "--eval-batches", "2", "--no-progress", *extra,
  ]  # fmt: skip


def test_resume_matches_uninterrupted_and_exports(text_file, tmp_path):
  full = train.main(_args(text_file, tmp_path / "a"))
  part = train.main(_args(text_file, tmp_path / "b", "--stop-after", "2", "--export", "none"))
  assert part["end_step"] == 2 and "eval_loss" not in part
  # a checkpoint written under another plan is refused (nothing is trained or overwritten)
  with pytest.raises(ValueError, match="different plan"):
    args = _args(text_file, tmp_path / "b", "--export", "none")
    args[args.index("--rank") + 1] = "3"
    train.main(args)
  rest = train.main(_args(text_file, tmp_path / "b", "--export", "none"))
  assert rest["start_step"] == 2
  got = np.float32([part["losses"][1], part["losses"][2], rest["losses"][3], rest["losses"][4]])
  want = np.float32([full["losses"][k] for k in (1, 2, 3, 4)])
  assert_close(got, want)
  assert_close(np.float32(rest["eval_loss"]), np.float32(full["eval_loss"]))
  assert full["trainable_params"] == 4 * (16 * 5 + 24 * 2)  # r * out over q,k,v,o,down + gate,up

  # exports: merged safetensors == base + exact LoRA adapter, same logits
  merged = load_file(tmp_path / "a" / "merged" / "model.safetensors")
  ad = load_file(tmp_path / "a" / "lora_adapter" / "adapter_model.safetensors")
  cfg = json.loads((tmp_path / "a" / "lora_adapter" / "adapter_config.json").read_text())
  assert cfg["r"] == 4 and cfg["lora_alpha"] == 4
  model = TinyLlama(CONFIGS["nano"])
  base = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  adapters = {}
  for k in ad:
    if k.endswith("lora_A.weight"):
      path = k[len("base_model.model.") : -len(".lora_A.weight")].replace(".", "/")
      b = ad[k.replace("lora_A", "lora_B")]
      adapters[path] = {"a": ad[k].T, "b": b.T, "scale": 1.0}
      assert ad[k].shape == (4, 16 if "down" not in path else 24)
      assert np.all(ad[k].sum(axis=1) == 1.0)  # one-hot row selector
  assert len(adapters) == 7
  via_lora = apply_lora(base, adapters)
  tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, 64)
  logits_lora = model.apply({"params": via_lora}, tokens)

  def from_st(path, leaf):
    name = ".".join(p.key for p in path[:-1])
    arr = merged[f"{name}.weight"]
    return jnp.asarray(arr.T if path[-1].key == "kernel" else arr)

  via_st = jax.tree_util.tree_map_with_path(from_st, base)
  logits_st = model.apply({"params": via_st}, tokens)
  assert_close(logits_lora, logits_st)
  assert not np.allclose(np.asarray(model.apply({"params": base}, tokens)), np.asarray(logits_st))


def test_bad_paths(tmp_path, text_file):
  with pytest.raises(FileNotFoundError, match="--data"):
    train.main(_args(tmp_path / "missing.txt", tmp_path / "d"))
  with pytest.raises(FileNotFoundError, match="neither a config"):
    args = _args(text_file, tmp_path / "d")
    args[args.index("--model") + 1] = str(tmp_path / "nope.bin")
    train.main(args)
