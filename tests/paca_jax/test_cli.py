"""python -m paca_jax.train: smoke run, kill/resume equality, plan-mismatch refusal, exports."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

from paca_jax import train
from paca_jax.export import load_paca_adapter, save_merged
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
    "--lr", "1e-2", "--eval-batches", "2", "--no-progress", "--alpha", "8", *extra,
  ]  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
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

  # exports: a merged HF model dir, a peft adapter and the PaCA form, all with alpha = 8
  import peft
  import torch
  import transformers

  model = TinyLlama(CONFIGS["nano"])
  base = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  base_dir = save_merged(base, tmp_path / "base", config=CONFIGS["nano"])
  out = tmp_path / "a"
  assert json.loads((out / "lora_adapter" / "adapter_config.json").read_text())["lora_alpha"] == 8
  assert json.loads((out / "paca_adapter" / "paca_config.json").read_text())["paca_alpha"] == 8
  tokens = np.array(jax.random.randint(jax.random.key(5), (2, 16), 0, 64))
  method, rows = load_paca_adapter(out / "paca_adapter", base)
  want = np.asarray(model.apply({"params": method.merge(base, rows)}, tokens))
  assert not np.allclose(np.asarray(model.apply({"params": base}, tokens)), want, atol=1e-3)
  with torch.no_grad():
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert_close(merged(torch.as_tensor(tokens)).logits.numpy(), want, atol=1e-4, rtol=0)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    lora = peft.PeftModel.from_pretrained(hf_base, out / "lora_adapter").eval()
    assert_close(lora(torch.as_tensor(tokens)).logits.numpy(), want, atol=1e-4, rtol=0)


def test_bad_paths(tmp_path, text_file):
  with pytest.raises(FileNotFoundError, match="--data"):
    train.main(_args(tmp_path / "missing.txt", tmp_path / "d"))
  with pytest.raises(FileNotFoundError, match="neither a config"):
    args = _args(text_file, tmp_path / "d")
    args[args.index("--model") + 1] = str(tmp_path / "nope.bin")
    train.main(args)


def test_make_method_alpha_and_nf4(tiny):
  _, params, _ = tiny
  kw = dict(rank=4, alpha=8.0, targets=r".*_proj", selector="random", seed=0)
  paca = train.make_method("paca_nf4", params, nf4_block=32, double_quant=True, **kw)
  assert paca.name == "paca_nf4" and paca.block_size == 32 and paca.double_quant
  assert paca.plan.alpha == 8.0 and paca.plan.scale("layers_0/attn/q_proj") == 2.0
  lora = train.make_method("lora_nf4", params, **kw)
  assert lora.name == "lora_nf4" and lora.plan.scale == 2.0
  assert train.make_method("paca", params, **{**kw, "alpha": None}).plan.alpha is None
