"""Fixtures for the paca_jax tests: the tiny Llama-shaped model, its params and a batch; tiny
random Hugging Face Llama checkpoints for the export and PyTorch parity tests."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paca_jax.models import CONFIGS, TinyLlama

TARGETS = r".*_proj"


@pytest.fixture(scope="session")
def tiny():
  model = TinyLlama(CONFIGS["nano"])
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  toks = jax.random.randint(jax.random.key(2), (8, 9), 0, 64)
  batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
  return model, params, batch


# Grouped-query attention (4 heads, 2 KV heads), untied embeddings, two layers.
TINY = dict(
  vocab_size=64,
  hidden_size=16,
  intermediate_size=24,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)


def make_hf_llama(directory, dtype="float32", seed=0, tokenizer=True):
  """Saves a random ``LlamaForCausalLM`` (and a word-level tokenizer) to ``directory``."""
  import torch
  import transformers

  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(**TINY)
  model = transformers.LlamaForCausalLM(cfg).eval()
  if dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  model.save_pretrained(directory)
  if tokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(TINY["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")
    fast.save_pretrained(directory)
  return directory


def batch(seed=0, b=4, t=9):
  toks = np.random.default_rng(seed).integers(0, TINY["vocab_size"], (b, t)).astype(np.int32)
  return {"x": toks[:, :-1], "y": toks[:, 1:]}


def hf_logits(model, x):
  import torch

  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(x), dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="session")
def hf_tools():
  return types.SimpleNamespace(make=make_hf_llama, batch=batch, logits=hf_logits, tiny=TINY)


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
  """A float32 tiny HF Llama with a tokenizer (read-only: tests write elsewhere)."""
  return make_hf_llama(tmp_path_factory.mktemp("hf_llama") / "model")
