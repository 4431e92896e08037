"""Exports that load elsewhere: merged HF model dirs (transformers + jaxsteer), peft LoRA adapters
(LoRA trained here, PaCA in LoRA form), PaCA's own adapter form, and the bad-input errors."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict
from tolerances import PARITY_ATOL_F32, assert_close

import paca_jax
from paca_jax import export
from paca_jax.models import lm_loss

peft_warning = pytest.mark.filterwarnings(
  # peft 0.21.2 reads transformers 5's deprecated `is_gradient_checkpointing`.
  "ignore:.*is_gradient_checkpointing.*:FutureWarning"
)
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def _train(lm, method, batch, steps=3, lr=0.5):
  def loss_fn(p, b):
    return lm_loss(lm.module.apply({"params": p}, b["x"]), b["y"])

  tr = paca_jax.Trainer(method, loss_fn, optax.sgd(lr))
  st = tr.init(lm.params, jax.random.key(3))
  for _ in range(steps):
    st, _ = tr.step(st, batch)
  st = tr.flush(st)
  return tr, st


@pytest.fixture(scope="module")
def trained(hf_llama_dir, hf_tools):
  """PaCA (alpha = 2r) and LoRA (alpha = 3r) trained 3 SGD steps on the tiny HF Llama."""
  import jaxsteer

  lm = jaxsteer.load(hf_llama_dir)
  b = hf_tools.batch()
  plan = paca_jax.select(lm.params, TARGETS, 4, jax.random.key(0), alpha=8)
  paca = paca_jax.Paca(plan)
  tr, st = _train(lm, paca, b)
  lora = paca_jax.Lora(paca_jax.lora_plan(lm.params, TARGETS, 2, alpha=6.0))
  tr_l, st_l = _train(lm, lora, b)
  return lm, b, (paca, tr, st), (lora, tr_l, st_l)


def test_merged_export_loads_in_transformers_and_jaxsteer(
  trained, hf_llama_dir, hf_tools, tmp_path
):
  import transformers

  import jaxsteer

  lm, b, (paca, tr, st), _ = trained
  merged = tr.merged_params(st)
  want = np.asarray(lm.module.apply({"params": merged}, b["x"]))
  base = np.asarray(lm.module.apply({"params": lm.params}, b["x"]))
  assert np.abs(want - base).max() > 1e-3  # training changed the model
  for shard in (None, 2_000):  # one file; many shards with an index
    out = tmp_path / f"merged_{shard}"
    kw = {} if shard is None else {"max_shard_bytes": shard}
    export.save_merged(merged, out, config=lm.config, source=hf_llama_dir, **kw)
    files = set(os.listdir(out))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    if shard is None:
      assert "model.safetensors" in files
    else:
      index = json.loads((out / "model.safetensors.index.json").read_text())
      assert len(set(index["weight_map"].values())) > 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert_close(hf_tools.logits(hf, b["x"]), want, atol=PARITY_ATOL_F32, rtol=0)
    lm2 = jaxsteer.load(out)
    assert lm2.tokenizer is not None
    assert_close(lm2(jnp.asarray(b["x"])), want, atol=PARITY_ATOL_F32, rtol=0)


def test_merged_export_keeps_bfloat16(hf_tools, tmp_path):
  import torch
  import transformers

  import jaxsteer

  src = hf_tools.make(tmp_path / "bf16", dtype="bfloat16", tokenizer=False)
  lm = jaxsteer.load(src)
  assert lm.params["embed"]["embedding"].dtype == jnp.bfloat16
  b = hf_tools.batch()
  plan = paca_jax.select(lm.params, TARGETS, 4, jax.random.key(0))
  tr, st = _train(lm, paca_jax.Paca(plan), b, steps=1)
  merged = tr.merged_params(st)
  out = export.save_merged(merged, tmp_path / "out", config=lm.config, source=src)
  from paca_jax._src.export import _read_header

  dtypes = {v["dtype"] for k, v in _read_header(out / "model.safetensors").items() if k[0] != "_"}
  assert dtypes == {"BF16"}
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
  want = np.asarray(lm.module.apply({"params": merged}, b["x"]))
  assert_close(hf_tools.logits(hf, b["x"]), want, dtype=jnp.bfloat16)
  # the trained rows survive the bf16 round trip bit for bit
  k = np.asarray(flatten_dict(merged, sep="/")["layers_0/attn/q_proj/kernel"])
  lm2 = jaxsteer.load(out)
  np.testing.assert_array_equal(
    np.asarray(lm2.params["layers_0"]["attn"]["q_proj"]["kernel"]).view(np.uint16),
    k.view(np.uint16),
  )


def test_llama2c_source_exports_hf_llama_layout(stories260k, tmp_path):
  import torch
  import transformers

  import jaxsteer

  ckpt, _ = stories260k
  lm = jaxsteer.load(ckpt)
  out = export.save_merged(lm.params, tmp_path / "stories", config=lm.config, source=ckpt)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  x = np.random.default_rng(0).integers(0, lm.config.vocab_size, (2, 12))
  with torch.no_grad():
    got = hf(torch.as_tensor(x)).logits.numpy()
  assert_close(got, np.asarray(lm(jnp.asarray(x))), atol=PARITY_ATOL_F32, rtol=0)


@peft_warning
def test_peft_adapter_for_lora_and_paca(trained, hf_llama_dir, hf_tools, tmp_path):
  import peft
  import transformers

  lm, b, (paca, tr, st), (lora, tr_l, st_l) = trained
  for name, method, trainer, state in (("paca", paca, tr, st), ("lora", lora, tr_l, st_l)):
    adapters = export.to_lora(method, lm.params, state.trainable)
    out = export.save_peft_adapter(adapters, tmp_path / name, base_model=str(hf_llama_dir))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == (4 if name == "paca" else 2)
    assert cfg["lora_alpha"] == (8 if name == "paca" else 6)
    assert "model.layers.0.self_attn.q_proj" in cfg["target_modules"]
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_llama_dir).eval()
    model = peft.PeftModel.from_pretrained(base, out).eval()
    want = np.asarray(lm.module.apply({"params": trainer.merged_params(state)}, b["x"]))
    assert_close(hf_tools.logits(model, b["x"]), want, atol=PARITY_ATOL_F32, rtol=0, err_msg=name)


def test_paca_adapter_form_round_trip_and_torch_apply(trained, hf_llama_dir, hf_tools, tmp_path):
  import torch
  import transformers
  from safetensors.numpy import load_file

  lm, b, (paca, tr, st), _ = trained
  out = export.save_paca_adapter(paca, lm.params, st.trainable, tmp_path / "paca")
  cfg = json.loads((out / "paca_config.json").read_text())
  assert (cfg["peft_type"], cfg["r"], cfg["paca_alpha"]) == ("PACA", 4, 8.0)
  sd = load_file(out / "paca_model.safetensors")
  want = np.asarray(lm.module.apply({"params": tr.merged_params(st)}, b["x"]))
  # Apply it by hand in PyTorch: W[:, idx] = W0[:, idx] + (alpha / r) * delta.
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_llama_dir).eval()
  mods = dict(hf.named_modules())
  s = cfg["paca_alpha"] / cfg["r"]
  for m in cfg["target_modules"]:
    idx = torch.as_tensor(sd[f"base_model.model.{m}.paca_indices"])
    delta = torch.as_tensor(sd[f"base_model.model.{m}.paca_delta"])
    assert delta.shape == (mods[m].weight.shape[0], 4) and idx.dtype == torch.int64
    with torch.no_grad():
      mods[m].weight[:, idx] += s * delta
  assert_close(hf_tools.logits(hf, b["x"]), want, atol=PARITY_ATOL_F32, rtol=0)
  # and back into JAX
  method, trainable = export.load_paca_adapter(out, lm.params)
  assert [e.idx for e in method.plan] == [e.idx for e in paca.plan]
  got = lm.module.apply({"params": method.merge(lm.params, trainable)}, b["x"])
  assert_close(got, want, atol=PARITY_ATOL_F32, rtol=0)


# ------------------------------------------------------------------------------ bad input


class _Custom(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name="proj")(nn.Dense(6, name="fc")(x))


def test_export_bad_inputs(trained, tmp_path):
  import jaxsteer

  lm, b, (paca, tr, st), _ = trained
  # an architecture without an HF mapping: nothing written
  gpt2 = jaxsteer.models.ModelConfig(
    arch="gpt2",
    vocab_size=8,
    hidden_size=4,
    intermediate_size=8,
    num_layers=1,
    num_heads=1,
    num_kv_heads=1,
    head_dim=4,
    max_position_embeddings=8,
  )
  with pytest.raises(ValueError, match="no Hugging Face export mapping for architecture 'gpt2'"):
    export.save_merged(lm.params, tmp_path / "g", config=gpt2)
  params = _Custom().init(jax.random.key(0), jnp.ones((1, 3)))["params"]
  with pytest.raises(ValueError, match="'fc/(bias|kernel)' has no Hugging Face name"):
    export.save_merged(params, tmp_path / "c", config=lm.config)
  # an adapter for a module that is not an HF linear layer
  plan = paca_jax.select(params, ["proj"], 2, jax.random.key(0))
  method = paca_jax.Paca(plan)
  _, rows = method.init(params)
  with pytest.raises(ValueError, match="'proj' is not a linear layer"):
    export.save_peft_adapter(export.to_lora(method, params, rows), tmp_path / "p")
  with pytest.raises(ValueError, match="'proj' is not a linear layer"):
    export.save_paca_adapter(method, params, rows, tmp_path / "q")
  assert sorted(os.listdir(tmp_path)) == []  # nothing partial, no temp dirs left
  # a foreign non-empty directory is never replaced; a previous export is
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="refusing to replace"):
    export.save_merged(tr.merged_params(st), foreign, config=lm.config)
  assert os.listdir(foreign) == ["notes.txt"]
  out = export.save_paca_adapter(paca, lm.params, st.trainable, tmp_path / "again")
  export.save_paca_adapter(paca, lm.params, st.trainable, out)
  assert sorted(os.listdir(tmp_path)) == ["again", "foreign"]
