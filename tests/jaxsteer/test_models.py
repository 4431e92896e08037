"""jaxsteer.models: the real stories260K checkpoint, caching, padding, sharding, bad input."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxsteer
from jaxsteer.models import Llama2cTokenizer, ModelConfig

GOLDEN = [
  int(t)
  for t in """
403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337
410 408 419 292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352
266 268 388 426 338 391 266 267 337 335 312 432 398 312 286 267 414 270 333 415
426 13 438 310""".split()
]
GOLDEN_TEXT = (
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
  "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily"
)


@pytest.fixture(scope="module")
def lm(stories260k):
  ckpt, tok = stories260k
  return jaxsteer.load(str(ckpt), tokenizer=str(tok))


def test_golden_greedy_decoding(lm):
  out = lm.generate([lm.tokenizer.bos_id], max_new_tokens=64)
  assert out[0].tolist() == GOLDEN
  text = lm.decode([1] + GOLDEN)
  assert text.startswith(GOLDEN_TEXT)


def test_tokenizer_roundtrip(lm):
  ids = lm.encode("Once upon a time, there was a little girl")
  assert ids[:5] == [1, 403, 407, 261, 378]
  assert lm.decode(ids) == "Once upon a time, there was a little girl"
  # Byte fallback: characters outside the 512-piece vocabulary.
  s = "naïve café ☃"
  assert lm.decode(lm.encode(s)) == s


def test_kv_cache_equals_no_cache_argmax(lm):
  prompt = lm.encode("Once upon a time, Tom")
  n = 12
  cached = lm.generate(prompt, max_new_tokens=n)[0].tolist()
  # No cache: full forward passes over a fixed-width buffer (right padding cannot affect earlier
  # positions of a causal model), so one compiled program serves every step.
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + n):
    buf[0, t] = int(np.argmax(np.asarray(lm(buf))[0, t - 1]))
  assert cached == buf[0, len(prompt) :].tolist()


def test_left_padded_batch_equals_each_alone(lm):
  prompts = ["Once upon a time, there was a girl", "The cat sat on the mat and looked at"]
  batch = lm.generate(prompts, max_new_tokens=10)
  for p, b in zip(prompts, batch):
    assert lm.generate(p, max_new_tokens=10) == b
  ids, mask = lm.prepare_batch(prompts)
  assert int(mask[0].sum()) < int(mask[1].sum())  # the first row really is padded
  logits = np.asarray(lm(ids, mask))
  for i, p in enumerate(prompts):
    alone = np.asarray(lm([lm.encode(p)]))[0]
    k = alone.shape[0]
    np.testing.assert_allclose(logits[i, -k:], alone, atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded(lm):
  a = lm.generate("Once upon a time", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
  b = lm.generate("Once upon a time", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)
  c = lm.generate("Once upon a time", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=4)
  assert a == b and a != c


def test_sharded_load_matches_unsharded(lm, stories260k):
  ckpt, tok = stories260k
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = jaxsteer.load(str(ckpt), tokenizer=str(tok), mesh=mesh)
  w = sharded.params["layers_0"]["mlp"]["gate_proj"]["kernel"]  # (64, 172): fsdp x tensor
  assert w.sharding.spec[0] == "fsdp"
  assert {s.data.shape for s in w.addressable_shards} == {(16, 86)}
  emb = sharded.params["embed"]["embedding"]  # (512, 64): vocab over tensor, embed over fsdp
  assert {s.data.shape for s in emb.addressable_shards} == {(256, 16)}
  ids = np.array([lm.encode("Once upon a time, there was")])
  np.testing.assert_allclose(np.asarray(sharded(ids)), np.asarray(lm(ids)), atol=1e-5, rtol=1e-5)
  assert sharded.generate([1], max_new_tokens=16)[0].tolist() == GOLDEN[:16]


def test_second_forward_compiles_nothing(lm):
  ids = np.array([lm.encode("Once upon a time")])
  lm(ids).block_until_ready()
  with count_compiles() as c:
    lm(ids + 1).block_until_ready()
  assert c.count == 0


def test_generation_second_call_compiles_nothing(lm):
  lm.generate("Once upon", max_new_tokens=5)
  with count_compiles() as c:
    lm.generate("The dog ran", max_new_tokens=5, temperature=0.7, seed=1)
  assert c.count == 0


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing touched.


def test_bad_token_ids(lm):
  with pytest.raises(ValueError, match="token ids must lie in"):
    lm(np.array([[1, 512]]))
  with pytest.raises(ValueError, match="token ids must lie in"):
    lm.generate([1, -3])


def test_empty_prompt(lm):
  with pytest.raises(ValueError, match="empty prompt"):
    lm.generate("")
  with pytest.raises(ValueError, match="empty prompt"):
    lm.generate([])


def test_prompt_longer_than_context(lm):
  with pytest.raises(ValueError, match="longer than the model's context"):
    lm(np.ones((1, 513), np.int32))
  with pytest.raises(ValueError, match="exceeds the model's context"):
    lm.generate([1] * 500, max_new_tokens=20)


def test_missing_and_corrupt_files(tmp_path, stories260k):
  ckpt, tok = stories260k
  with pytest.raises(FileNotFoundError, match="not found"):
    jaxsteer.load(str(tmp_path / "nope.bin"))
  trunc = tmp_path / "trunc.bin"
  trunc.write_bytes(ckpt.read_bytes()[:5000])
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(ValueError, match="corrupt llama2.c checkpoint"):
    jaxsteer.load(str(trunc))
  assert sorted(os.listdir(tmp_path)) == before
  with pytest.raises(ValueError, match="corrupt llama2.c tokenizer"):
    bad = tmp_path / "tokbad.bin"
    bad.write_bytes(tok.read_bytes()[:1000])
    Llama2cTokenizer(bad, vocab_size=512)
  with pytest.raises(FileNotFoundError, match="missing config.json"):
    (tmp_path / "empty_dir").mkdir()
    jaxsteer.load(str(tmp_path / "empty_dir"))


def test_pickle_checkpoint_refused(tmp_path):
  torch = pytest.importorskip("torch")
  p = tmp_path / "model.bin"
  torch.save({"w": torch.zeros(3)}, p)
  with pytest.raises(ValueError, match="pickle"):
    jaxsteer.load(str(p))
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(
    json.dumps(
      dict(
        model_type="llama",
        vocab_size=10,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
      )
    )
  )
  shutil.copy(p, d / "pytorch_model.bin")
  with pytest.raises(ValueError, match="pickle checkpoints"):
    jaxsteer.load(str(d))


def test_unknown_architecture(tmp_path):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 10}))
  with pytest.raises(ValueError, match="unknown architecture model_type='mamba'"):
    jaxsteer.load(str(d))
  with pytest.raises(ValueError, match="unknown architecture"):
    ModelConfig("rwkv", 10, 8, 8, 1, 2, 2, 4, 16)


def _save_tiny_llama(transformers, d):
  """A one-layer random HF Llama saved as safetensors in ``d``."""
  cfg = transformers.LlamaConfig(
    vocab_size=50,
    hidden_size=16,
    intermediate_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=32,
  )
  transformers.LlamaForCausalLM(cfg).save_pretrained(d)
  return d


def test_corrupt_safetensors(tmp_path):
  transformers = pytest.importorskip("transformers")
  d = _save_tiny_llama(transformers, tmp_path / "m")
  f = d / "model.safetensors"
  f.write_bytes(f.read_bytes()[:-100])
  with pytest.raises(ValueError, match="corrupt safetensors"):
    jaxsteer.load(str(d))


def test_hub_id_downloads_through_huggingface_hub(tmp_path, monkeypatch, stories260k):
  """A hub id goes through snapshot_download (mocked: no network in tests) with safe patterns."""
  transformers = pytest.importorskip("transformers")
  d = _save_tiny_llama(transformers, tmp_path / "snap")
  import huggingface_hub

  calls = []

  def fake(repo_id, revision=None, allow_patterns=None):
    calls.append((repo_id, allow_patterns))
    return str(d)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
  lm = jaxsteer.load("someorg/tiny-llama")
  assert calls[0][0] == "someorg/tiny-llama"
  assert "*.safetensors" in calls[0][1] and not any(p.endswith(".bin") for p in calls[0][1])
  assert lm.config.vocab_size == 50

  def offline(*a, **k):
    raise OSError("offline")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match="neither a local path nor a downloadable"):
    jaxsteer.load("someorg/other")


def test_hf_tokenizers(data_dir, tmp_path):
  """HF-directory tokenizers load through transformers (GPT-2 BPE and the Llama-2 sentencepiece)."""
  pytest.importorskip("transformers")
  from jaxsteer.models import HFTokenizer

  g = tmp_path / "gpt2"
  g.mkdir()
  shutil.copy(data_dir / "gpt2_tokenizer" / "encoder.json", g / "vocab.json")
  shutil.copy(data_dir / "gpt2_tokenizer" / "vocab.bpe", g / "merges.txt")
  (g / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
  tok = HFTokenizer.from_dir(g)
  ids = tok.encode("Hello world, steering vectors in JAX!", add_bos=False)
  assert ids == [15496, 995, 11, 19702, 30104, 287, 449, 25922, 0]
  assert tok.decode(ids) == "Hello world, steering vectors in JAX!"
  lt = tmp_path / "llama"
  lt.mkdir()
  shutil.copy(data_dir / "llama2_tokenizer" / "tokenizer.model", lt / "tokenizer.model")
  (lt / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
  tok = HFTokenizer.from_dir(lt)
  assert tok.encode("Hello world") == [1, 15043, 3186]
