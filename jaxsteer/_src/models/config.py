"""Model configuration: one frozen dataclass for every supported decoder-only architecture."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a causal LM (hashable, so it can be a jit static argument).

  One flat dataclass serves every text architecture of the registry
  (``jaxsteer._src.models.registry``); each architecture's parser fills the fields it uses.

  Attributes:
    arch: a registered text ``model_type`` (``SUPPORTED_ARCHITECTURES``).
    vocab_size: number of token ids.
    hidden_size: residual-stream width D.
    intermediate_size: MLP width F.
    num_layers: number of decoder layers.
    num_heads: query heads H.
    num_kv_heads: key/value heads (H for MHA, fewer for grouped-query attention).
    head_dim: width of one head.
    max_position_embeddings: the context length.
    norm_eps: epsilon of RMSNorm / LayerNorm.
    rope_theta: RoPE base (of the global layers where local and global bases differ).
    rope_scaling: RoPE scaling as a sorted tuple of ``(key, value)`` pairs (``rope_type``
      ``linear``, ``llama3`` or ``longrope``; list values become tuples), or ``None``.
    tie_word_embeddings: the output projection is the transposed input embedding.
    attention_bias: biases on q/k/v (Qwen2, GPT-2).
    attention_out_bias: bias on the output projection (GPT-2).
    mlp_bias: biases in the MLP (GPT-2).
    sliding_window: local attention window (of every layer, or of the ``sliding_attention``
      layers of ``layer_types``), or ``None``.
    bos_token_id, eos_token_id, pad_token_id: special ids (``None`` where absent).
    eos_token_ids: every id that ends a generated row (``eos_token_id`` first; Llama 3 instruct
      models have several).
    hidden_act: MLP activation (``silu``; ``gelu_pytorch_tanh`` for Gemma's GeGLU; ``gelu_new``).
    qk_norm: RMSNorm of each query and key head before RoPE (Qwen3, Gemma 3).
    norm_plus_one: RMSNorm multiplies by ``1 + w`` in float32 (Gemma).
    sandwich_norms: norms after attention and after the MLP too (Gemma 2/3).
    scale_embeddings: token embeddings are multiplied by ``sqrt(hidden_size)`` (Gemma).
    query_pre_attn_scalar: attention scores scale as ``1 / sqrt(this)`` instead of
      ``1 / sqrt(head_dim)`` (Gemma).
    attn_logit_softcapping: ``cap * tanh(score / cap)`` on attention scores (Gemma 2).
    final_logit_softcapping: the same on the output logits (Gemma 2).
    layer_types: per layer ``"sliding_attention"`` or ``"full_attention"``; ``None``: every layer
      uses ``sliding_window`` (if any).
    rope_local_theta: RoPE base of the sliding layers (Gemma 3; unscaled), or ``None``.
    partial_rotary_factor: fraction of each head that RoPE rotates (Phi-3 family).
    scan_layers: run the decoder layers through one ``nn.scan`` (parameters stacked under
      ``layers/`` with a leading layer axis) instead of a Python loop that unrolls every layer
      (``layers_0`` .. ``layers_{L-1}``). Compile time then no longer grows with depth; steering,
      capture and ``return_hidden`` work per layer (the layer index is a scanned value). Layers
      that mix sliding-window and global attention (Gemma 2/3, with Gemma 3's two RoPE bases)
      scan too: the scanned layer index selects its kind's window and RoPE
      (``modules.layer_kinds``). ``paca_jax`` (PaCA / LoRA) stacks its adapters along the
      layer axis (per-layer plans, as unrolled). Default ``False``, from
      the evidence: at 2-8 layers of a small model (``benchmarks/results/scan_layers_cpu.json``,
      load 24-30 on 2 cores) scanning gained no compile time (forward 8.8-14.9 s scanned vs
      6.6-15.3 s unrolled, gradient 32-78 s vs 22-44 s) and steps were no faster (0.16-2.6 s vs
      0.17-3.9 s, noise-bound); at 8B shape the scanned IG compiles in 36 s at 2 layers and 34 s
      at 32, the unrolled one took 33 s at 1 layer and 65 s at 2
      (``benchmarks/results/aot_8b_*``). Use it for deep models and pods (``jaxsteer.load(...,
      scan_layers=True)``, ``jaxsteer.models.relayout``); ``stack_layers`` / ``unstack_layers``
      convert parameter trees between the layouts.
    remat: rematerialise each decoder layer in the backward pass (``nn.remat``) with this
      policy: ``None`` (store every activation), ``"full"`` (store only layer inputs),
      ``"dots"`` (keep matmul outputs) or ``"dots_no_batch"`` (keep matmuls without batch dims).
      IG at 8B shape, 512 tokens, 5 points per chunk: 90.6 GB peak without, 51.7 GB with
      ``"full"`` (scanned; XLA's CPU schedule ignores remat in unrolled programs).
  """

  arch: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  max_position_embeddings: int
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  sliding_window: int | None = None
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  pad_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  hidden_act: str = "silu"
  qk_norm: bool = False
  norm_plus_one: bool = False
  sandwich_norms: bool = False
  scale_embeddings: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  layer_types: tuple[str, ...] | None = None
  rope_local_theta: float | None = None
  partial_rotary_factor: float = 1.0
  scan_layers: bool = False
  remat: str | None = None

  def __post_init__(self):
    from jaxsteer._src.models import registry  # the registry imports this module

    known = registry.text_architectures()
    if self.arch not in known:
      raise ValueError(f"unknown architecture {self.arch!r}; supported: {', '.join(known)}")
    for name in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "max_position_embeddings",
    ):
      v = getattr(self, name)
      if not _is_int(v):
        raise ValueError(f"config field {name} must be an integer, got {v!r} ({type(v).__name__})")
      if v <= 0:
        raise ValueError(f"config field {name} must be positive, got {v}")
    for name in ("sliding_window", "bos_token_id", "eos_token_id", "pad_token_id"):
      v = getattr(self, name)
      if v is not None and not _is_int(v):
        raise ValueError(f"config field {name} must be an integer or null, got {v!r}")
    for name in ("norm_eps", "rope_theta", "partial_rotary_factor"):
      v = getattr(self, name)
      if not _is_number(v) or v <= 0:
        raise ValueError(f"config field {name} must be a positive number, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
      )
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(f"sliding_window must be positive, got {self.sliding_window}")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
          f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
        )
      bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if bad:
        raise ValueError(f"unknown layer_types {bad}; supported: {', '.join(LAYER_TYPES)}")
      if "sliding_attention" in self.layer_types and self.sliding_window is None:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is null")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
        f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}"
      )
    if self.remat is not None and self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"unknown remat policy {self.remat!r}; supported: None, {', '.join(REMAT_POLICIES)}"
      )
    rot = self.rotary_dim
    if rot % 2 or not 0 < rot <= self.head_dim:
      raise ValueError(
        f"partial_rotary_factor {self.partial_rotary_factor} gives {rot} rotary dims of a "
        f"{self.head_dim}-wide head (need an even number in (0, head_dim])"
      )
    s = self.rope_scaling_dict
    if s is not None and s.get("rope_type") == "longrope":
      for key in ("short_factor", "long_factor"):
        if len(s.get(key, ())) != rot // 2:
          raise ValueError(
            f"longrope {key} has {len(s.get(key, ()))} entries; the {rot} rotary dims need "
            f"{rot // 2}"
          )

  @property
  def is_gpt2(self) -> bool:
    return self.arch == "gpt2"

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Every id that ends a generated row (``eos_token_ids``, else ``(eos_token_id,)``)."""
    if self.eos_token_ids:
      return tuple(self.eos_token_ids)
    return () if self.eos_token_id is None else (self.eos_token_id,)

  @property
  def layers_identical(self) -> bool:
    """Every decoder layer has the same attention window and RoPE (a scanned model then needs
    no per-layer selection)."""
    return len({self.layer_is_sliding(i) for i in range(self.num_layers)}) == 1

  def layer_is_sliding(self, i: int) -> bool:
    if self.sliding_window is None:
      return False
    return self.layer_types is None or self.layer_types[i] == "sliding_attention"

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
    """Builds a config from a HF ``config.json`` dict (transformers 4 or 5) via the registry."""
    from jaxsteer._src.models import registry

    return registry.text_config(hf)

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> ModelConfig:
    return config_from_json(cls, path)


LAYER_TYPES = ("sliding_attention", "full_attention")
# ``ModelConfig.remat`` names (the policies live in ``modules.REMAT_POLICIES``).
REMAT_POLICIES = ("full", "dots", "dots_no_batch")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_new", "gelu")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")


def _is_int(v) -> bool:
  return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


_MISSING = object()


def hf_int(hf: dict[str, Any], key: str, default=_MISSING) -> int | None:
  """``hf[key]`` as an int; a clear ValueError when missing (without default) or not an integer."""
  if key not in hf or hf[key] is None:
    if default is _MISSING:
      raise ValueError(f"config lacks the field {key!r}")
    return default
  v = hf[key]
  if isinstance(v, float) and v.is_integer():
    v = int(v)
  if not _is_int(v):
    raise ValueError(f"config field {key} must be an integer, got {v!r} ({type(v).__name__})")
  return int(v)


def hf_float(hf: dict[str, Any], key: str, default=_MISSING) -> float | None:
  if key not in hf or hf[key] is None:
    if default is _MISSING:
      raise ValueError(f"config lacks the field {key!r}")
    return default
  v = hf[key]
  if not _is_number(v):
    raise ValueError(f"config field {key} must be a number, got {v!r} ({type(v).__name__})")
  return float(v)


def hf_ids(x) -> tuple[int, ...]:
  """A special-token field (an id, a list of ids or null) as a tuple of ints."""
  if x is None:
    return ()
  items = x if isinstance(x, list | tuple) else [x]
  for v in items:
    if not _is_int(v):
      raise ValueError(f"special token ids must be integers, got {x!r}")
  return tuple(int(v) for v in items)


def parse_rope(hf: dict[str, Any], default_theta: float = 10000.0, params=None):
  """``(theta, rope_scaling, partial_rotary_factor)`` from either config form.

  transformers 5 keeps RoPE settings in ``rope_parameters``; transformers 4 in ``rope_theta`` +
  ``rope_scaling`` (``type`` or ``rope_type``; Phi-3's ``su`` is ``longrope``).
  """
  rope = dict(hf.get("rope_parameters") or {}) if params is None else dict(params)
  scaling = hf.get("rope_scaling") if params is None else None
  if scaling is not None and not isinstance(scaling, dict):
    raise ValueError(f"rope_scaling must be an object or null, got {scaling!r}")
  if scaling:
    rope.update(scaling)
  theta = rope.pop("rope_theta", hf.get("rope_theta", default_theta))
  if not _is_number(theta) or theta <= 0:
    raise ValueError(f"rope_theta must be a positive number, got {theta!r}")
  rope_type = rope.pop("type", None) or rope.get("rope_type") or "default"
  if rope_type == "su":
    rope_type = "longrope"
  rope["rope_type"] = rope_type
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"unsupported rope_type {rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
  partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if rope_type == "default":
    return float(theta), None, float(partial)
  if rope_type == "longrope":
    orig = rope.get("original_max_position_embeddings") or hf.get(
      "original_max_position_embeddings"
    )
    if not _is_int(orig):
      raise ValueError("longrope needs an integer original_max_position_embeddings")
    rope["original_max_position_embeddings"] = int(orig)
    if rope.get("factor") is None:
      rope["factor"] = hf_int(hf, "max_position_embeddings") / int(orig)
  elif not _is_number(rope.get("factor")) or not rope["factor"] > 0:
    raise ValueError(
      f"rope_type {rope_type!r} needs a positive number 'factor', got {rope.get('factor')!r}"
    )
  items = []
  for k, v in rope.items():
    if v is None:
      continue
    items.append((k, tuple(float(x) for x in v) if isinstance(v, list | tuple) else v))
  return float(theta), tuple(sorted(items)), float(partial)


def decoder_fields(
  hf: dict[str, Any], model_type: str, *, default_theta: float = 10000.0, **defaults
) -> dict[str, Any]:
  """The fields every Llama-like ``config.json`` shares, type-checked (``ModelConfig`` kwargs)."""
  hf = {**defaults, **{k: v for k, v in hf.items() if v is not None or k not in defaults}}
  d = hf_int(hf, "hidden_size")
  h = hf_int(hf, "num_attention_heads")
  kv = hf_int(hf, "num_key_value_heads", h)
  head_dim = hf_int(hf, "head_dim", None)
  if head_dim is None:
    if h <= 0 or d % h:
      raise ValueError(
        f"hidden_size ({d}) is not a multiple of num_attention_heads ({h}) and the config "
        "gives no head_dim"
      )
    head_dim = d // h
  theta, scaling, partial = parse_rope(hf, default_theta)
  eos = hf_ids(hf.get("eos_token_id"))
  return dict(
    arch=model_type,
    vocab_size=hf_int(hf, "vocab_size"),
    hidden_size=d,
    intermediate_size=hf_int(hf, "intermediate_size"),
    num_layers=hf_int(hf, "num_hidden_layers"),
    num_heads=h,
    num_kv_heads=kv,
    head_dim=head_dim,
    max_position_embeddings=hf_int(hf, "max_position_embeddings", 2048),
    norm_eps=hf_float(hf, "rms_norm_eps", 1e-6),
    rope_theta=theta,
    rope_scaling=scaling,
    partial_rotary_factor=partial,
    tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    attention_bias=bool(hf.get("attention_bias", False)),
    mlp_bias=bool(hf.get("mlp_bias", False)),
    bos_token_id=_first(hf_ids(hf.get("bos_token_id"))),
    eos_token_id=_first(eos),
    eos_token_ids=eos,
    pad_token_id=_first(hf_ids(hf.get("pad_token_id"))),
  )


def config_from_json(cls, path: str | pathlib.Path):
  """``cls.from_hf`` of the JSON object in ``path``, with errors that name the file."""
  path = pathlib.Path(path)
  try:
    hf = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"missing config.json: {path}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"corrupt config.json at {path}: {e}") from None
  if not isinstance(hf, dict):
    raise ValueError(f"corrupt config.json at {path}: expected a JSON object")
  for k in _INT_FIELDS:
    v = hf.get(k)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
      raise ValueError(f"config.json at {path}: {k} must be an integer, got {v!r}")
  try:
    return cls.from_hf(hf)
  except KeyError as e:
    raise ValueError(f"config.json at {path} lacks the field {e}") from None
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.json at {path}: {e}") from None


# Integer fields of HF configs (Llama family and GPT-2 names), checked before use.
_INT_FIELDS = (
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "max_position_embeddings",
  "n_embd",
  "n_layer",
  "n_head",
  "n_positions",
  "n_inner",
)


def _first(x):
  if isinstance(x, list | tuple):
    return x[0] if x else None
  return x


class RopeSpec(NamedTuple):
  """RoPE of one layer: inverse frequencies (numpy float64) and the cos/sin factor.

  ``long_inv_freq`` (longrope only) replaces ``inv_freq`` when a forward pass reaches beyond
  ``original_max_position_embeddings`` (transformers decides per call from the largest position).
  """

  inv_freq: Any
  long_inv_freq: Any = None
  original_max: int | None = None
  attention_factor: float = 1.0


def rope_spec(config: ModelConfig, layer: int = 0) -> RopeSpec:
  """The RoPE of decoder layer ``layer`` (local layers of Gemma 3 use their own, unscaled base)."""
  dim = config.rotary_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim
  local = config.rope_local_theta is not None and config.layer_is_sliding(layer)
  theta = config.rope_local_theta if local else config.rope_theta
  inv = 1.0 / (theta**exponents)
  s = None if local else config.rope_scaling_dict
  if s is None:
    return RopeSpec(inv)
  kind = s["rope_type"]
  if kind == "linear":
    return RopeSpec(inv / float(s["factor"]))
  if kind == "longrope":
    orig = int(s["original_max_position_embeddings"])
    factor = float(s["factor"])
    att = s.get("attention_factor")
    if att is None:
      att = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    short = 1.0 / (np.asarray(s["short_factor"], np.float64) * theta**exponents)
    long = 1.0 / (np.asarray(s["long_factor"], np.float64) * theta**exponents)
    return RopeSpec(short, long, orig, float(att))
  # llama3: Meta's wavelength-dependent interpolation (Llama 3.1 / 3.2).
  factor = float(s["factor"])
  low = float(s.get("low_freq_factor", 1.0))
  high = float(s.get("high_freq_factor", 4.0))
  old_ctx = float(s["original_max_position_embeddings"])
  low_wavelen = old_ctx / low
  high_wavelen = old_ctx / high
  wavelen = 2 * math.pi / inv
  out = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_ctx / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * out / factor + smooth * out
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return RopeSpec(np.where(medium, smoothed, out))


def rope_inv_freq(config: ModelConfig, layer: int = 0):
  """Inverse RoPE frequencies (numpy float64) of ``layer``, with scaling applied."""
  return rope_spec(config, layer).inv_freq
