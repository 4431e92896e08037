"""``load``: a model directory, hub id or llama2.c ``.bin`` -> a model, through the registry.

``config.json``'s ``model_type`` picks the ``Architecture`` (``registry.get``), whose parser, weight
map and module do the rest; LLaVA registers itself like any text architecture.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp

from jaxsteer._src.models import loading, registry
from jaxsteer._src.models.config import ModelConfig, hf_ids
from jaxsteer._src.models.lm import LanguageModel
from jaxsteer._src.models.modules import stack_layers, unstack_layers
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint
from jaxsteer._src.models.tokenizer import make_tokenizer

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = (
  "config.json",
  "generation_config.json",
  "*.safetensors",
  "model.safetensors.index.json",
  "tokenizer*",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "*.model",
  "preprocessor_config.json",
  "chat_template.json",
  "chat_template.jinja",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def download(repo_id: str, revision: str | None = None) -> pathlib.Path:
  """Downloads the safetensors files, config and tokenizer of a hub model (never pickles)."""
  from jaxsteer._src import hub

  try:  # bounded wait for an endpoint that never replies (jaxsteer._src.hub)
    return hub.snapshot(repo_id, revision=revision, allow_patterns=list(HUB_PATTERNS))
  except FileNotFoundError as e:  # offline, unknown repo, auth, no reply
    raise FileNotFoundError(
      f"{repo_id!r} is neither a local path nor a downloadable hub model: {e}"
    ) from None


def read_config(path: pathlib.Path):
  """``(architecture, parsed config)`` of ``path/config.json``; errors name the file."""
  f = path / "config.json"
  try:
    hf = json.loads(f.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"missing config.json: {f}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"corrupt config.json at {f}: {e}") from None
  if not isinstance(hf, dict):
    raise ValueError(f"corrupt config.json at {f}: expected a JSON object")
  arch = registry.get(hf.get("model_type"))
  try:
    cfg = arch.parse(hf)
  except KeyError as e:
    raise ValueError(f"config.json at {f} lacks the field {e}") from None
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.json at {f}: {e}") from None
  return arch, cfg


def _with_generation_eos(cfg: ModelConfig, path: pathlib.Path) -> ModelConfig:
  """Adds the EOS ids of ``generation_config.json`` (Llama 3 instruct lists several)."""
  f = path / "generation_config.json"
  if not f.is_file():
    return cfg
  try:
    gen = json.loads(f.read_text())
    extra = hf_ids(gen.get("eos_token_id")) if isinstance(gen, dict) else ()
  except (json.JSONDecodeError, ValueError) as e:
    raise ValueError(f"corrupt generation_config.json at {f}: {e}") from None
  ids = tuple(dict.fromkeys(cfg.stop_ids + extra))
  if not ids or ids == cfg.stop_ids:
    return cfg
  return dataclasses.replace(cfg, eos_token_id=ids[0], eos_token_ids=ids)


def weights_of(arch: registry.Architecture, cfg, ckpt: SafetensorsCheckpoint):
  """Flax-layout numpy views of a checkpoint, checked against the shapes ``cfg`` implies."""
  entries = arch.weights(cfg, frozenset(ckpt.keys()))
  arrays = registry.hf_to_flax(entries, ckpt)
  want = arch.shapes(cfg) if arch.shapes is not None else loading.expected_shapes(cfg)
  loading.check_shapes(arrays, cfg, want=want)
  return arrays


def load(
  source: str | pathlib.Path,
  *,
  dtype=None,
  mesh: jax.sharding.Mesh | None = None,
  tokenizer=None,
  rules=loading.DEFAULT_RULES,
  scan_layers: bool = False,
  remat: str | None = None,
) -> LanguageModel:
  """Loads a causal LM.

  Args:
    source: a Hugging Face model directory (``config.json`` + safetensors, single or sharded;
      any ``model_type`` of ``jaxsteer.models.SUPPORTED_ARCHITECTURES``; ``llava`` /
      ``llava_next`` give a ``VisionLanguageModel``), a hub id (downloaded with
      ``huggingface_hub`` when online), or a llama2.c ``.bin`` checkpoint.
    dtype: parameter and compute dtype (default: the checkpoint's floating dtype).
    mesh: place parameters with ``NamedSharding`` from the logical-axis rule table; each device
      reads only its own shard.
    tokenizer: a tokenizer object, a llama2.c ``tok*.bin`` path or a HF tokenizer directory
      (default: the model directory's tokenizer, or ``tok{vocab}.bin`` beside a ``.bin``).
    rules: logical-axis -> mesh-axis table (``jaxsteer.models.DEFAULT_RULES``).
    scan_layers: run the decoder layers through ``nn.scan`` (``ModelConfig.scan_layers``); the
      per-layer checkpoint tensors are stacked as they are read (a VLM's language model too;
      its vision tower stays unrolled).
    remat: per-layer rematerialisation policy (``ModelConfig.remat``).

  Returns:
    A ``LanguageModel`` (a ``VisionLanguageModel`` for LLaVA checkpoints).
  """
  path = pathlib.Path(source)
  if not path.exists():
    if isinstance(source, str) and _HUB_ID.match(source) and not source.startswith((".", "/")):
      path = download(source)
    else:
      raise FileNotFoundError(f"model source not found: {source}")
  if path.is_dir():
    arch, cfg = read_config(path)
    if arch.text:
      cfg = _with_generation_eos(cfg, path)
    arrays = weights_of(arch, cfg, SafetensorsCheckpoint(path))
    if tokenizer is None and any((path / n).exists() for n in _TOKENIZER_FILES):
      tokenizer = path
  else:
    if path.suffix == ".safetensors":
      raise ValueError(
        f"{path} is a bare safetensors file; pass its directory (with config.json) instead"
      )
    cfg, arrays = loading.read_llama2c(path)
    arch = registry.get(cfg.arch)
    if tokenizer is None:
      cand = path.parent / f"tok{cfg.vocab_size}.bin"
      if cand.is_file():
        tokenizer = cand
  if scan_layers or remat is not None:
    cfg = _with_layout(cfg, scan_layers, remat)
    text = cfg if isinstance(cfg, ModelConfig) else cfg.text
    if text.scan_layers:
      arrays = loading.stack_views(arrays, text.num_layers)
  text_cfg = arch.text_config(cfg) if arch.text_config is not None else cfg
  tok = make_tokenizer(tokenizer, text_cfg)
  if dtype is None:  # the checkpoint's floating dtype
    dtype = next(iter(arrays.values())).dtype
  dtype = jnp.dtype(dtype)
  params = loading.place(arrays, dtype, mesh, rules)
  module = arch.module(cfg, dtype)
  if arch.wrap is not None:
    return arch.wrap(module, params, cfg, tok, mesh, str(source), path)
  return LanguageModel(module, params, cfg, tok, mesh, source=str(source))


def from_params(config: ModelConfig, params, tokenizer=None, dtype=jnp.float32) -> LanguageModel:
  """Wraps existing parameters (e.g. freshly initialised) as a ``LanguageModel``.

  Per-layer parameters are stacked for a ``scan_layers`` config and stacked ones unstacked for an
  unrolled config, so either layout fits either config.
  """
  module = registry.get(config.arch).module(config, dtype)
  return LanguageModel(module, _layer_layout(params, config), config, tokenizer)


def _with_layout(cfg, scan_layers, remat):
  """``cfg`` (a ``ModelConfig``, or a VLM config whose ``text`` is one) with the decoder layout."""
  text = cfg if isinstance(cfg, ModelConfig) else getattr(cfg, "text", None)
  if not isinstance(text, ModelConfig):
    raise ValueError(
      f"scan_layers / remat need a decoder-only language model, not {type(cfg).__name__}"
    )
  text = dataclasses.replace(text, scan_layers=bool(scan_layers), remat=remat)
  return text if isinstance(cfg, ModelConfig) else dataclasses.replace(cfg, text=text)


def _layer_layout(params, config: ModelConfig):
  if not isinstance(config, ModelConfig):
    return params
  decoder = params.get("language_model", params)  # a VLM's decoder sits under language_model
  if config.scan_layers and "layers_0" in decoder:
    return stack_layers(params, config.num_layers)
  if not config.scan_layers and "layers" in decoder:
    return unstack_layers(params)
  return params


def relayout(lm: LanguageModel, *, scan_layers: bool, remat: str | None = None) -> LanguageModel:
  """``lm`` with its decoder layers scanned (stacked parameters) or unrolled (per-layer), and the
  given ``remat`` policy; the parameters are converted (and re-placed on ``lm.mesh``). For a
  ``VisionLanguageModel`` this is its language model's decoder (the vision tower stays unrolled).

  Raises:
    ValueError: ``lm`` is neither a text ``LanguageModel`` nor a ``VisionLanguageModel``.
  """
  vlm = getattr(lm, "vlm_config", None)
  if not isinstance(lm.config, ModelConfig) or (type(lm) is not LanguageModel and vlm is None):
    raise ValueError(
      f"relayout supports LanguageModels and VisionLanguageModels, not {type(lm).__name__}"
    )
  cfg = _with_layout(lm.config, scan_layers, remat)
  params = _layer_layout(lm.params, cfg)
  if lm.mesh is not None and params is not lm.params:
    params = jax.device_put(params, loading.param_shardings(params, lm.mesh))
  if vlm is None:
    return lm.replace(module=lm.module.clone(config=cfg), params=params, config=cfg)
  vcfg = dataclasses.replace(vlm, text=cfg)
  return lm.replace(module=lm.module.clone(config=vcfg), params=params, config=cfg, vlm_config=vcfg)


def init_random(config, seed: int = 0, dtype=jnp.float32, tokenizer=None):
  """A randomly initialised model (for tests and examples): a ``LanguageModel`` for a
  ``ModelConfig``, a ``VisionLanguageModel`` for a ``LlavaConfig``."""
  if isinstance(config, ModelConfig):
    arch = registry.get(config.arch)
  else:
    arch = next((a for a in registry.architectures() if a.config_type is type(config)), None)
    if arch is None:
      raise TypeError(
        f"init_random needs a ModelConfig or LlavaConfig, got {type(config).__name__}"
      )
  module = arch.module(config, dtype)
  if arch.init_params is not None:
    params = arch.init_params(module, seed)
  else:
    params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2), jnp.int32))["params"]
  if arch.wrap is not None:
    return arch.wrap(module, params, config, tokenizer, None, None, None)
  return LanguageModel(module, params, config, tokenizer)
