"""Parity of jaxsteer.models with HF transformers (PyTorch, CPU) on tiny random checkpoints."""

import numpy as np
import pytest
from tolerances import PARITY_ATOL_F32

import jaxsteer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA = dict(
  vocab_size=97,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  max_position_embeddings=64,
)

CASES = {
  "llama_mha_untied": ("LlamaConfig", "LlamaForCausalLM", dict(LLAMA, num_key_value_heads=4)),
  "llama_gqa_tied": (
    "LlamaConfig",
    "LlamaForCausalLM",
    dict(LLAMA, num_key_value_heads=2, tie_word_embeddings=True),
  ),
  "llama31_rope_scaling": (
    "LlamaConfig",
    "LlamaForCausalLM",
    dict(
      LLAMA,
      num_key_value_heads=2,
      rope_theta=500000.0,
      rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
      ),
    ),
  ),
  "mistral_sliding": (
    "MistralConfig",
    "MistralForCausalLM",
    dict(LLAMA, num_key_value_heads=2, sliding_window=5),
  ),
  "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(LLAMA, num_key_value_heads=2)),
  "gpt2": (
    "GPT2Config",
    "GPT2LMHeadModel",
    dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64),
  ),
}


def _save(tmp_path, name):
  cfg_cls, model_cls, kw = CASES[name]
  torch.manual_seed(0)
  cfg = getattr(transformers, cfg_cls)(**kw)
  model = getattr(transformers, model_cls)(cfg).eval()
  # Random biases / norm weights so that a wrong mapping of them cannot pass.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if n.endswith("bias") or "norm" in n or "ln_" in n:
        p.add_(0.1 * torch.randn_like(p))
  d = tmp_path / name
  model.save_pretrained(d)
  return model, d


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path, name):
  model, d = _save(tmp_path, name)
  lm = jaxsteer.load(str(d))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 97, size=(2, 12))
  with torch.no_grad():
    ref = model(torch.tensor(ids)).logits.numpy()
  out = np.asarray(lm(ids))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=PARITY_ATOL_F32, rtol=0)


def test_llama3_scaling_changes_logits(tmp_path):
  """The rope scaling in the llama3 case is not a no-op at these positions."""
  model, d = _save(tmp_path, "llama31_rope_scaling")
  cfg = jaxsteer.load(str(d)).config
  assert dict(cfg.rope_scaling)["rope_type"] == "llama3"


def test_sharded_checkpoint_matches_single(tmp_path):
  model, d = _save(tmp_path, "llama_gqa_tied")
  sharded = tmp_path / "sharded"
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert (sharded / "model.safetensors.index.json").is_file()
  ids = np.arange(10)[None] % 97
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.load(str(d))(ids)), np.asarray(jaxsteer.load(str(sharded))(ids))
  )


def test_bfloat16_close_to_float32(tmp_path):
  _, d = _save(tmp_path, "llama_gqa_tied")
  ids = np.arange(10)[None] % 97
  f32 = np.asarray(jaxsteer.load(str(d))(ids))
  bf16 = jaxsteer.load(str(d), dtype="bfloat16")
  assert bf16.params["embed"]["embedding"].dtype == np.dtype("bfloat16")
  out = np.asarray(bf16(ids))
  # bfloat16 keeps ~3 significant digits; compare the predicted distributions coarsely.
  np.testing.assert_allclose(out, f32, atol=0.05 * np.abs(f32).max())
