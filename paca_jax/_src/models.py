"""A small Llama-shaped Flax Linen language model to fine-tune with PaCA / LoRA / full FT.

Module names follow the Llama convention used across this repository (``layers_0/attn/q_proj``,
``layers_0/mlp/gate_proj``, ...), and every projection is a plain ``nn.Dense`` with a ``(in, out)``
kernel, so PaCA and LoRA reach it through ``flax.linen.intercept_methods`` without any edit.

Usage::

  cfg = paca_jax.models.CONFIGS["tiny"]
  model = paca_jax.models.TinyLlama(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  logits = model.apply({"params": params}, tokens)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LMConfig", "CONFIGS", "TinyLlama", "lm_loss"]


@dataclasses.dataclass(frozen=True)
class LMConfig:
  vocab: int = 256
  dim: int = 32
  n_layers: int = 2
  n_heads: int = 4
  ffn: int = 64
  dtype: str = "float32"  # activation / compute dtype
  param_dtype: str = "float32"


CONFIGS: dict[str, LMConfig] = {
  # Unit tests.
  "nano": LMConfig(vocab=64, dim=16, n_layers=1, n_heads=2, ffn=24),
  # The CLI smoke test and the quick experiment (bytes as tokens).
  "tiny": LMConfig(),
  # The CPU benchmark.
  "small": LMConfig(vocab=256, dim=256, n_layers=2, n_heads=4, ffn=688),
  # GPU benchmark shapes (LLaMA-7B widths, few layers; random weights, bf16).
  "7b-2layers": LMConfig(32000, 4096, 2, 32, 11008, "bfloat16", "bfloat16"),
  "7b-4layers": LMConfig(32000, 4096, 4, 32, 11008, "bfloat16", "bfloat16"),
}


def _rope(x, positions):
  # x: (B, T, H, Dh)
  half = x.shape[-1] // 2
  freqs = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  ang = positions[:, None].astype(jnp.float32) * freqs[None, :]
  cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  cfg: LMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    b, t, _ = x.shape
    hd = cfg.dim // cfg.n_heads
    dense = lambda n, name: nn.Dense(
      n, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name
    )
    q = dense(cfg.dim, "q_proj")(x).reshape(b, t, cfg.n_heads, hd)
    k = dense(cfg.dim, "k_proj")(x).reshape(b, t, cfg.n_heads, hd)
    v = dense(cfg.dim, "v_proj")(x).reshape(b, t, cfg.n_heads, hd)
    pos = jnp.arange(t)
    q, k = _rope(q, pos), _rope(k, pos)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(hd)
    att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1).astype(v.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, cfg.dim)
    return dense(cfg.dim, "o_proj")(o)


class MLP(nn.Module):
  cfg: LMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dense = lambda n, name: nn.Dense(
      n, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name
    )
    h = nn.silu(dense(cfg.ffn, "gate_proj")(x)) * dense(cfg.ffn, "up_proj")(x)
    return dense(cfg.dim, "down_proj")(h)


class Block(nn.Module):
  cfg: LMConfig

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.RMSNorm(dtype=self.cfg.dtype, param_dtype=jnp.float32, name=name)
    x = x + Attention(self.cfg, name="attn")(norm("attn_norm")(x))
    return x + MLP(self.cfg, name="mlp")(norm("mlp_norm")(x))


class TinyLlama(nn.Module):
  """Pre-norm decoder: embed, ``n_layers`` x (RMSNorm, RoPE attention, SwiGLU MLP), lm_head."""

  cfg: LMConfig

  @nn.compact
  def __call__(self, tokens):
    cfg = self.cfg
    x = nn.Embed(cfg.vocab, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="embed")(
      tokens
    )
    for i in range(cfg.n_layers):
      x = Block(cfg, name=f"layers_{i}")(x)
    x = nn.RMSNorm(dtype=cfg.dtype, param_dtype=jnp.float32, name="norm")(x)
    logits = nn.Dense(
      cfg.vocab, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="lm_head"
    )(x)
    return logits.astype(jnp.float32)


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy (float32)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
