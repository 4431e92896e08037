"""The architecture registry: HF ``model_type`` -> config parser, Flax module and weight map.

Adding an architecture is one file under ``jaxsteer/_src/models/archs/`` that calls ``register``
with an ``Architecture``; ``jaxsteer.load`` dispatches through ``get``. The weight map is a tuple of
``Tensor`` entries, each tying one Hugging Face tensor to one or more Flax parameter paths with an
invertible layout change, so it works in both directions:

  >>> from jaxsteer._src.models import registry
  >>> arch = registry.get("qwen3")
  >>> cfg = arch.parse(hf_config_dict)  # doctest: +SKIP
  >>> entries = arch.weights(cfg, None)  # canonical (transformers 5) names  # doctest: +SKIP
  >>> flax_flat = registry.hf_to_flax(entries, checkpoint)  # {"layers_0/attn/q_proj/kernel": ...}
  >>> hf = registry.flax_to_hf(entries, flax_flat)  # {"model.layers.0.self_attn.q_proj.weight": ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Layout changes between a HF tensor and its Flax leaves. Each is a view both ways.
OPS = ("copy", "T", "split_T", "split_cols", "split", "conv2d")


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One HF tensor and the Flax leaves (``/``-joined paths) it becomes.

  ``op``: ``copy``; ``T`` (``nn.Linear`` weight (out, in) -> kernel (in, out)); ``split_T`` (a
  fused Linear weight whose output rows are cut into ``sizes`` blocks, each transposed: Phi-3's
  ``qkv_proj`` and ``gate_up_proj``); ``split_cols`` (GPT-2's Conv1D (in, out) cut along out);
  ``split`` (a fused bias cut into ``sizes``); ``conv2d`` ((out, in, kh, kw) -> (kh, kw, in, out)).
  """

  hf: str
  flax: tuple[str, ...]
  op: str = "copy"
  sizes: tuple[int, ...] = ()

  def __post_init__(self):
    if self.op not in OPS:
      raise ValueError(f"unknown weight-map op {self.op!r}; known: {', '.join(OPS)}")
    if (len(self.flax) > 1) != (self.op.startswith("split")):
      raise ValueError(f"{self.hf}: op {self.op} does not fit {len(self.flax)} Flax leaves")

  def to_flax(self, a) -> dict[str, Any]:
    if self.op == "copy":
      return {self.flax[0]: a}
    if self.op == "T":
      return {self.flax[0]: a.T}
    if self.op == "conv2d":
      return {self.flax[0]: a.transpose(2, 3, 1, 0)}
    bounds = np.cumsum((0,) + self.sizes)
    if a.shape[0 if self.op != "split_cols" else 1] != bounds[-1]:
      raise ValueError(
        f"tensor {self.hf} has shape {tuple(a.shape)}; the config implies blocks of {self.sizes}"
      )
    out = {}
    for path, lo, hi in zip(self.flax, bounds[:-1], bounds[1:]):
      if self.op == "split_T":
        out[path] = a[lo:hi].T
      elif self.op == "split_cols":
        out[path] = a[:, lo:hi]
      else:
        out[path] = a[lo:hi]
    return out

  def to_hf(self, leaves: Mapping[str, Any]) -> np.ndarray:
    parts = [np.asarray(leaves[p]) for p in self.flax]
    if self.op == "copy":
      return parts[0]
    if self.op == "T":
      return parts[0].T
    if self.op == "conv2d":
      return parts[0].transpose(3, 2, 0, 1)
    if self.op == "split_T":
      return np.concatenate([p.T for p in parts], axis=0)
    return np.concatenate(parts, axis=1 if self.op == "split_cols" else 0)


WeightMap = tuple[Tensor, ...]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One registered architecture.

  Attributes:
    name: the canonical HF ``model_type``.
    parse: HF ``config.json`` dict -> config (``ModelConfig``, or ``LlavaConfig`` for a VLM).
    module: ``(config, dtype) -> flax.linen.Module``.
    weights: ``(config, names) -> WeightMap``; ``names`` are the checkpoint's tensor names (to
      pick among name variants of older exports) or ``None`` for the canonical names.
    aliases: further ``model_type`` values parsed by this entry.
    text: a text-only causal LM (``ModelConfig``); ``False`` for VLMs.
    wrap: builds the user-facing model, ``(module, params, config, tokenizer, mesh, source, path)
      -> LanguageModel``; ``None``: a plain ``LanguageModel``.
    init_params: ``(module, seed) -> params`` for ``init_random`` (``None``: ``module.init``).
    text_config: config -> its text ``ModelConfig`` (identity for text models).
    shapes: config -> ``{flax_path: shape}`` (``None``: those of the text ``CausalLM``).
    config_type: the config class (``init_random`` dispatches on it for non-text models).
  """

  name: str
  parse: Callable[[dict[str, Any]], Any]
  module: Callable[[Any, Any], Any]
  weights: Callable[[Any, frozenset[str] | None], WeightMap]
  aliases: tuple[str, ...] = ()
  text: bool = True
  wrap: Callable[..., Any] | None = None
  init_params: Callable[[Any, int], Any] | None = None
  text_config: Callable[[Any], Any] | None = None
  shapes: Callable[[Any], dict[str, tuple[int, ...]]] | None = None
  config_type: type | None = None

  @property
  def model_types(self) -> tuple[str, ...]:
    return (self.name, *self.aliases)


_REGISTRY: dict[str, Architecture] = {}
_LOADED = False


def register(arch: Architecture) -> Architecture:
  for t in arch.model_types:
    if t in _REGISTRY and _REGISTRY[t] is not arch:
      raise ValueError(f"model_type {t!r} is registered twice")
    _REGISTRY[t] = arch
  return arch


def _ensure_loaded():
  global _LOADED
  if not _LOADED:
    _LOADED = True
    from jaxsteer._src.models import archs  # noqa: F401  (each module registers itself)


def known() -> tuple[str, ...]:
  """Every registered ``model_type``, sorted."""
  _ensure_loaded()
  return tuple(sorted(_REGISTRY))


def text_architectures() -> tuple[str, ...]:
  _ensure_loaded()
  return tuple(sorted(t for t, a in _REGISTRY.items() if a.text))


def get(model_type) -> Architecture:
  """The architecture of ``model_type``; a ValueError listing the known ones otherwise."""
  _ensure_loaded()
  if model_type not in _REGISTRY:
    raise ValueError(
      f"unknown architecture model_type={model_type!r} in config.json; "
      f"supported: {', '.join(known())}"
    )
  return _REGISTRY[model_type]


def architectures() -> tuple[Architecture, ...]:
  """Each registered architecture once (by canonical name)."""
  _ensure_loaded()
  seen = {a.name: a for a in _REGISTRY.values()}
  return tuple(seen[k] for k in sorted(seen))


def text_config(hf: dict[str, Any]):
  """The text ``ModelConfig`` of a HF config dict (used by ``ModelConfig.from_hf``)."""
  arch = get(hf.get("model_type"))
  if not arch.text:
    raise ValueError(f"model_type={hf.get('model_type')!r} is not a text-only causal LM")
  return arch.parse(hf)


# ------------------------------------------------------------------------------------------------
# Applying a weight map.


def hf_to_flax(entries: WeightMap, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
  """``{flax_path: array}`` (lazy views where ``checkpoint`` gives memmaps) from HF tensors."""
  out: dict[str, Any] = {}
  for e in entries:
    if e.hf not in checkpoint:
      raise ValueError(f"checkpoint lacks tensor {e.hf!r}")
    out.update(e.to_flax(checkpoint[e.hf]))
  return out


def flax_to_hf(entries: WeightMap, flat_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``{hf_name: numpy array}`` from ``/``-joined Flax leaves (the export direction)."""
  missing = [p for e in entries for p in e.flax if p not in flat_params]
  if missing:
    raise ValueError(f"parameters lack {', '.join(missing[:5])}")
  return {e.hf: e.to_hf(flat_params) for e in entries}


def hf_name_of(entries: WeightMap) -> dict[str, str]:
  """``{flax_path: hf_name}`` (several paths share the name of a fused tensor)."""
  return {p: e.hf for e in entries for p in e.flax}


def flax_paths_of(entries: WeightMap) -> dict[str, tuple[str, ...]]:
  """``{hf_name: flax_paths}``."""
  return {e.hf: e.flax for e in entries}


def pick_prefix(names, candidates, probe: str, what: str) -> str:
  """The first of ``candidates`` with ``prefix + probe`` among ``names`` (``names=None``: the
  first candidate, i.e. the canonical export name)."""
  if names is None:
    return candidates[0]
  for p in candidates:
    if p + probe in names:
      return p
  raise ValueError(
    f"checkpoint lacks the {what} (looked for {', '.join(repr(c + probe) for c in candidates)})"
  )
