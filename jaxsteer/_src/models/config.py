"""Model configuration: one frozen dataclass for every supported decoder-only architecture."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pathlib
from typing import Any

# Architectures that `ModelConfig.from_hf` understands, keyed by HF `model_type`.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a causal LM (hashable, so it can be a jit static argument).

  Attributes:
    arch: one of ``SUPPORTED_ARCHITECTURES``.
    vocab_size: number of token ids.
    hidden_size: residual-stream width D.
    intermediate_size: MLP width F.
    num_layers: number of decoder layers.
    num_heads: query heads H.
    num_kv_heads: key/value heads (H for MHA, fewer for grouped-query attention).
    head_dim: width of one head.
    max_position_embeddings: the context length.
    norm_eps: epsilon of RMSNorm / LayerNorm.
    rope_theta: RoPE base (Llama family).
    rope_scaling: RoPE scaling as a sorted tuple of ``(key, value)`` pairs (``rope_type`` ``default``,
      ``linear`` or ``llama3``), or ``None``.
    tie_word_embeddings: the output projection is the transposed input embedding.
    attention_bias: biases on q/k/v (Qwen2, GPT-2).
    attention_out_bias: bias on the output projection (GPT-2).
    mlp_bias: biases in the MLP (GPT-2).
    sliding_window: Mistral's local attention window, or ``None``.
    bos_token_id, eos_token_id, pad_token_id: special ids (``None`` where absent).
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

  def __post_init__(self):
    if self.arch not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
        f"unknown architecture {self.arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
      )
    for name in (
      "vocab_size",
      "hidden_size",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "intermediate_size",
      "max_position_embeddings",
    ):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"config field {name} must be a positive integer, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
      )

  @property
  def is_gpt2(self) -> bool:
    return self.arch == "gpt2"

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
    """Builds a config from a Hugging Face ``config.json`` dictionary (transformers 4 or 5)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
        f"unknown architecture model_type={model_type!r} in config.json; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
      )
    if model_type == "gpt2":
      d = hf["n_embd"]
      h = hf["n_head"]
      return cls(
        arch="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=d,
        intermediate_size=hf.get("n_inner") or 4 * d,
        num_layers=hf["n_layer"],
        num_heads=h,
        num_kv_heads=h,
        head_dim=d // h,
        max_position_embeddings=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        attention_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_first(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
      )
    d = hf["hidden_size"]
    h = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or h
    head_dim = hf.get("head_dim") or d // h
    # transformers 5 keeps RoPE settings in `rope_parameters`; transformers 4 in
    # `rope_theta` + `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling")
    if scaling:
      rope.update(scaling)
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope.pop("type", None)
    rope["rope_type"] = rope_type
    if rope_type not in ("default", "linear", "llama3"):
      raise ValueError(f"unsupported rope_type {rope_type!r} (supported: default, linear, llama3)")
    factor = rope.get("factor")
    if rope_type != "default" and (
      isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 0
    ):
      raise ValueError(f"rope_type {rope_type!r} needs a positive number 'factor', got {factor!r}")
    rope_scaling = None if rope_type == "default" else tuple(sorted(rope.items()))
    sliding = hf.get("sliding_window") if model_type == "mistral" else None
    if model_type == "qwen2" and hf.get("use_sliding_window"):
      raise ValueError("Qwen2 with use_sliding_window=True is not supported")
    return cls(
      arch=model_type,
      vocab_size=hf["vocab_size"],
      hidden_size=d,
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=h,
      num_kv_heads=kv,
      head_dim=head_dim,
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(theta),
      rope_scaling=rope_scaling,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
      mlp_bias=bool(hf.get("mlp_bias", False)),
      sliding_window=sliding,
      bos_token_id=_first(hf.get("bos_token_id")),
      eos_token_id=_first(hf.get("eos_token_id")),
      pad_token_id=_first(hf.get("pad_token_id")),
    )

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> ModelConfig:
    return config_from_json(cls, path)


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
  except TypeError as e:  # a field of the wrong type not caught above
    raise ValueError(f"config.json at {path} has a field of the wrong type ({e})") from None


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


def rope_inv_freq(config: ModelConfig):
  """Inverse RoPE frequencies (numpy float64), with ``linear`` or ``llama3`` scaling applied."""
  import numpy as np

  dim = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim))
  s = config.rope_scaling_dict
  if s is None:
    return inv
  if s["rope_type"] == "linear":
    return inv / float(s["factor"])
  # llama3: Meta's wavelength-dependent interpolation (Llama 3.1).
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
  return np.where(medium, smoothed, out)
