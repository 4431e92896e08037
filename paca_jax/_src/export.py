"""Exporting a PaCA / LoRA fine-tune: merged weights (safetensors) or an exact LoRA adapter.

PaCA (Woo et al., ICLR 2025) changes only rows ``idx`` of each kernel, so its update is exactly a
rank-``r`` LoRA: ``K' - K0 = A @ B`` with ``A`` ``(in, r)`` the one-hot selector
(``A[idx[j], j] = 1``) and ``B = rows - K0[idx]`` ``(r, out)``.

Usage::

  adapters = to_lora(method, base_params, trainable)   # {path: {"a", "b", "scale"}}
  params = apply_lora(base_params, adapters)           # == method.merge(...)
  save_safetensors(params, "out/merged/model.safetensors")
  save_peft_adapter(adapters, "out/lora_adapter")
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from paca_jax._src.adapters import Lora, Paca, PacaInt8
from paca_jax._src.ops import take_rows
from paca_jax._src.tree import get_path, iter_paths, set_path
from paca_jax._src.tree import unwrap as _unwrap

__all__ = ["to_lora", "apply_lora", "save_safetensors", "hf_state_dict", "save_peft_adapter"]


def _base_kernel(method, base, path):
  if isinstance(method, PacaInt8):
    raise ValueError(
      "to_lora: an int8 PaCA delta is relative to the dequantised base; merge instead"
    )
  return get_path(_unwrap(base), path)["kernel"]


def to_lora(method, base_params, trainable) -> dict[str, dict]:
  """An exact LoRA adapter ``{path: {"a": (in, r), "b": (r, out), "scale": float}}``.

  For PaCA ``base_params`` must be the original (pre-fine-tuning) weights.
  """
  out = {}
  if isinstance(method, Paca | PacaInt8):
    for e in method.plan:
      k0 = _base_kernel(method, base_params, e.path).reshape(e.in_features, e.out_features)
      rows = get_path(trainable, e.path)["rows"]
      a = np.zeros((e.in_features, e.rank), np.float32)
      a[list(e.idx), np.arange(e.rank)] = 1.0
      b = np.asarray(rows, np.float32) - np.asarray(take_rows(k0, e.idx), np.float32)
      out[e.path] = {"a": a, "b": b, "scale": 1.0}
  elif isinstance(method, Lora):
    for e in method.plan:
      ab = get_path(trainable, e.path)
      out[e.path] = {
        "a": np.asarray(ab["a"], np.float32),
        "b": np.asarray(ab["b"], np.float32),
        "scale": method.plan.scale,
      }
  else:
    raise ValueError(f"to_lora: method {getattr(method, 'name', method)!r} has no LoRA form")
  return out


def apply_lora(base_params, adapters):
  """``kernel + scale * a @ b`` for every adapter (float32 accumulation, base dtype out)."""
  params = _unwrap(base_params)
  for path, ad in adapters.items():
    k = get_path(params, path)["kernel"]
    d = (ad["scale"] * (jnp.asarray(ad["a"]) @ jnp.asarray(ad["b"]))).reshape(k.shape)
    params = set_path(params, path + "/kernel", (k.astype(jnp.float32) + d).astype(k.dtype))
  return params


def hf_state_dict(params) -> dict[str, np.ndarray]:
  """Flat ``a.b.c.weight`` names in PyTorch orientation (2-D kernels transposed to (out, in))."""
  out = {}
  for path, leaf in iter_paths(_unwrap(params)):
    parts = path.split("/")
    name, leaf_name = ".".join(parts[:-1]), parts[-1]
    arr = np.asarray(jax.device_get(leaf))
    if leaf_name == "kernel" and arr.ndim == 2:
      out[f"{name}.weight"] = np.ascontiguousarray(arr.T)
    elif leaf_name in ("embedding", "scale", "kernel"):
      out[f"{name}.weight"] = arr
    else:
      out[f"{name}.{leaf_name}"] = arr
  return out


def _atomic_write(path: pathlib.Path, write):
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_safetensors(params, path) -> pathlib.Path:
  """Writes ``hf_state_dict(params)`` to ``path`` atomically."""
  from safetensors.numpy import save_file

  path = pathlib.Path(path)
  sd = {
    k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v)
    for k, v in hf_state_dict(params).items()
  }
  _atomic_write(path, lambda tmp: save_file(sd, tmp))
  return path


def save_peft_adapter(adapters, directory, *, base_model: str = "") -> pathlib.Path:
  """A PEFT-style LoRA adapter: ``adapter_model.safetensors`` + ``adapter_config.json``.

  Keys are ``base_model.model.<a.b.c>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r),
  with ``lora_B`` pre-multiplied by ``scale * r / lora_alpha`` so that ``lora_alpha = r``.
  """
  from safetensors.numpy import save_file

  directory = pathlib.Path(directory)
  sd = {}
  ranks = set()
  for path, ad in adapters.items():
    name = "base_model.model." + path.replace("/", ".")
    r = ad["a"].shape[1]
    ranks.add(r)
    sd[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ad["a"], np.float32).T)
    sd[f"{name}.lora_B.weight"] = np.ascontiguousarray((ad["scale"] * np.asarray(ad["b"])).T)
  if len(ranks) != 1:
    raise ValueError(f"adapters of different ranks {sorted(ranks)} cannot share one config")
  (r,) = ranks
  cfg = {
    "peft_type": "LORA",
    "r": r,
    "lora_alpha": r,
    "target_modules": sorted({p.split("/")[-1] for p in adapters}),
    "base_model_name_or_path": base_model,
    "fan_in_fan_out": False,
    "bias": "none",
  }
  _atomic_write(directory / "adapter_model.safetensors", lambda tmp: save_file(sd, tmp))
  _atomic_write(
    directory / "adapter_config.json",
    lambda tmp: pathlib.Path(tmp).write_text(json.dumps(cfg, indent=1)),
  )
  return directory
