"""The architecture registry: two-way weight maps for every architecture, dispatch, bad configs."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import tiny_llava_config

import jaxsteer
from jaxsteer._src.models import loading, registry
from jaxsteer.models import SUPPORTED_ARCHITECTURES, ModelConfig

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SMALL = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)
VISION = dict(projection_dim=8)
# (transformers config class, model class, kwargs): one tiny model per registered model_type.
HF = {
  "llama": ("LlamaConfig", "LlamaForCausalLM", dict(SMALL)),
  "mistral": ("MistralConfig", "MistralForCausalLM", dict(SMALL, sliding_window=8)),
  "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL)),
  "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(SMALL, head_dim=8)),
  "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(SMALL, pad_token_id=0, eos_token_id=2)),
  "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(SMALL, head_dim=8)),
  "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(SMALL, head_dim=8)),
  "gpt2": (
    "GPT2Config",
    "GPT2LMHeadModel",
    dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64),
  ),
  "llava": (
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    tiny_llava_config(text=SMALL, vision=VISION, image_token_id=60),
  ),
  "llava_next": (
    "LlavaNextConfig",
    "LlavaNextForConditionalGeneration",
    tiny_llava_config(
      text=dict(SMALL, model_type="qwen2"),
      vision=VISION,
      image_token_id=60,
      image_grid_pinpoints=[[28, 28], [28, 56]],
    ),
  ),
}


def test_every_registered_architecture_has_a_case():
  assert set(HF) == set(SUPPORTED_ARCHITECTURES) == set(registry.known())


def _hf_model(model_type):
  cfg_cls, model_cls, kw = HF[model_type]
  torch.manual_seed(0)
  cfg = getattr(transformers, cfg_cls)(**kw)
  return cfg, getattr(transformers, model_cls)(cfg)


@pytest.mark.parametrize("model_type", sorted(HF))
def test_weight_map_round_trip_matches_transformers_names(model_type, tmp_path):
  """HF names -> Flax paths -> HF names, on the tensors transformers itself saves."""
  hf_cfg, model = _hf_model(model_type)
  model.save_pretrained(tmp_path)
  from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint

  ckpt = SafetensorsCheckpoint(tmp_path)
  arch = registry.get(model_type)
  cfg = arch.parse(json.loads((tmp_path / "config.json").read_text()))
  # The canonical (export) names are the tensors transformers 5 writes (less the CLIP tower's
  # post_layernorm, which LLaVA never uses).
  canonical = arch.weights(cfg, None)
  assert {e.hf for e in canonical} <= set(ckpt.keys())
  unused = set(ckpt.keys()) - {e.hf for e in canonical}
  assert all("vision_tower.post_layernorm." in k for k in unused), unused
  flat = registry.hf_to_flax(arch.weights(cfg, frozenset(ckpt.keys())), ckpt)
  want = arch.shapes(cfg) if arch.shapes else loading.expected_shapes(cfg)
  assert {k: tuple(v.shape) for k, v in flat.items()} == want  # every Flax leaf exactly once
  back = registry.flax_to_hf(canonical, flat)
  assert set(back) == set(ckpt.keys()) - unused
  for name in back:
    np.testing.assert_array_equal(back[name], ckpt[name], err_msg=name)
  # Flax -> HF -> Flax is the identity as well.
  again = registry.hf_to_flax(canonical, back)
  for k in flat:
    np.testing.assert_array_equal(again[k], flat[k], err_msg=k)
  # The path -> name index covers fused tensors (several paths, one name).
  names = registry.hf_name_of(canonical)
  assert set(names) == set(flat) and set(names.values()) == set(ckpt.keys()) - unused


def test_transformers4_llava_names_map_to_the_same_leaves(tmp_path):
  """The other naming (``model.language_model.``...) resolves to the same Flax leaves."""
  arch = registry.get("llava")
  hf_cfg, _ = _hf_model("llava")
  cfg = arch.parse(hf_cfg.to_dict())
  old = {
    e.hf.replace("language_model.model.", "model.language_model.")
    .replace("vision_tower.", "model.vision_tower.vision_model.")
    .replace("multi_modal_projector.", "model.multi_modal_projector.")
    .replace("language_model.lm_head.weight", "lm_head.weight")
    for e in arch.weights(cfg, None)
  }
  assert old.isdisjoint({e.hf for e in arch.weights(cfg, None)})
  entries = arch.weights(cfg, frozenset(old))
  assert {e.hf for e in entries} == old
  assert {p for e in entries for p in e.flax} == {
    p for e in arch.weights(cfg, None) for p in e.flax
  }


def test_unknown_model_type_lists_known_ones(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 10}))
  with pytest.raises(ValueError, match="unknown architecture model_type='mamba'") as e:
    jaxsteer.load(str(tmp_path))
  for t in ("gemma2", "gemma3_text", "llama", "llava", "phi3", "qwen3"):
    assert t in str(e.value)
  with pytest.raises(ValueError, match="unknown architecture 'rwkv'.*qwen3"):
    ModelConfig("rwkv", 10, 8, 8, 1, 2, 2, 4, 16)


BAD = {
  "string dim": (dict(hidden_size="32"), r"hidden_size must be an integer, got '32'"),
  "float heads": (dict(num_attention_heads=4.5), r"num_attention_heads must be an integer"),
  "bool layers": (dict(num_hidden_layers=True), r"num_hidden_layers must be an integer"),
  "heads do not divide": (dict(num_attention_heads=5, num_key_value_heads=5), "not a multiple"),
  "kv heads do not divide": (dict(num_key_value_heads=3), r"multiple of num_kv_heads \(3\)"),
  "negative vocab": (dict(vocab_size=-3), "vocab_size must be positive"),
  "missing field": ({"intermediate_size": None}, "lacks the field 'intermediate_size'"),
  "layer_types length": (dict(layer_types=["full_attention"]), "layer_types has 1 entries"),
  "rope factor string": (
    dict(rope_scaling={"rope_type": "linear", "factor": "2"}),
    "needs a positive number 'factor'",
  ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_gives_clear_error(case, tmp_path):
  patch, msg = BAD[case]
  hf = dict(SMALL, model_type="gemma2" if "layer_types" in patch else "llama", **patch)
  hf = {k: v for k, v in hf.items() if v is not None}
  (tmp_path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=msg):
    jaxsteer.load(str(tmp_path))
  with pytest.raises(ValueError, match=msg):
    ModelConfig.from_hf(hf)


def test_bad_longrope_factors(tmp_path):
  hf = dict(
    SMALL,
    model_type="phi3",
    original_max_position_embeddings=16,
    rope_scaling={"type": "su", "short_factor": [1.0, 1.0], "long_factor": [1.0] * 4},
  )
  with pytest.raises(ValueError, match="short_factor has 2 entries; the 8 rotary dims need 4"):
    ModelConfig.from_hf(hf)


def test_registering_an_architecture_is_one_entry():
  """A new model_type becomes loadable by registering parser, module and weight map."""
  base = registry.get("llama")
  arch = registry.Architecture("my_llama", base.parse, base.module, base.weights)
  registry.register(arch)
  try:
    assert registry.get("my_llama") is arch and "my_llama" in registry.known()
    with pytest.raises(ValueError, match="registered twice"):
      registry.register(registry.Architecture("my_llama", base.parse, base.module, base.weights))
  finally:
    registry._REGISTRY.pop("my_llama")


def test_init_random_through_registry():
  cfg = ModelConfig.from_hf(dict(SMALL, model_type="gemma2", head_dim=8))
  lm = jaxsteer.models.init_random(cfg)
  flat = traverse_util.flatten_dict(lm.params, sep="/")
  assert "layers_0/pre_feedforward_norm/scale" in flat
  assert np.isfinite(np.asarray(lm(np.arange(6)[None]))).all()
  assert jax.tree.leaves(lm.params)
