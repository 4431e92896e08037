"""Exporting a PaCA / LoRA fine-tune to the Hugging Face world.

PaCA (Woo et al., ICLR 2025) changes only rows ``idx`` of each kernel, so its update is exactly a
rank-``r`` LoRA: ``K' - K0 = s * A @ B`` with ``A`` ``(in, r)`` the one-hot selector
(``A[idx[j], j] = 1``), ``B = delta = (rows - K0[idx]) / s`` ``(r, out)`` and ``s = alpha / r``.

Three exports, each an atomically written directory (``jaxsteer._src.fileio.atomic_directory``:
built in a temporary sibling, then renamed into place; an existing directory is only replaced when
it is empty or was written by this module, recognised by its ``paca_jax_export.json`` marker):

* :func:`save_merged`: a model directory that ``transformers.AutoModelForCausalLM.from_pretrained``
  and ``jaxsteer.load`` both read: ``config.json``, HF tensor names and ``(out, in)`` layouts, the
  source dtype (bf16 stays bf16), tokenizer files copied from the source, and
  ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json`` above ``max_shard_bytes``.
* :func:`save_peft_adapter`: ``adapter_config.json`` + ``adapter_model.safetensors`` that
  ``peft.PeftModel.from_pretrained(hf_model, dir)`` loads (HF module names, ``r``, ``lora_alpha``,
  ``target_modules``), for LoRA trained here or PaCA in its exact LoRA form (:func:`to_lora`).
* :func:`save_paca_adapter` / :func:`load_paca_adapter`: PaCA's own form, in the spirit of
  upstream PEFT's PaCA buffers. ``paca_config.json`` (``peft_type`` ``"PACA"``, ``r``,
  ``paca_alpha``, ``target_modules``, ``base_model_name_or_path``, ``format``) and
  ``paca_model.safetensors`` holding, for every adapted HF module ``M``,
  ``base_model.model.M.paca_indices`` (int64 ``(r,)``, sorted input-channel indices) and
  ``base_model.model.M.paca_delta`` (float32 ``(out, r)``), with the adapted weight
  ``W[:, idx] = W0[:, idx] + (paca_alpha / r) * paca_delta`` in PyTorch's ``(out, in)`` layout.

Usage::

  save_merged(trainer.merged_params(state), "out/merged", config=lm.config, source=model_dir)
  save_peft_adapter(to_lora(method, base_params, state.trainable), "out/lora_adapter")
  save_paca_adapter(method, base_params, state.trainable, "out/paca_adapter")
  method, trainable = load_paca_adapter("out/paca_adapter", base_params)

A scanned decoder's stacked parameters and adapters (``ModelConfig.scan_layers``) are unstacked to
the per-layer names first, so every export is the unrolled model's, file for file.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from jaxsteer._src import fileio
from paca_jax._src import hf_names
from paca_jax._src.adapters import Lora, LoraNf4, Paca, PacaInt8, PacaNf4, row_values
from paca_jax._src.layers import is_stacked, stack, unstack
from paca_jax._src.ops import take_rows
from paca_jax._src.plan import find_kernels, select
from paca_jax._src.plan import unwrap_params as _unwrap

__all__ = [
  "DEFAULT_MAX_SHARD_BYTES",
  "MARKER",
  "TOKENIZER_FILES",
  "apply_lora",
  "hf_state_dict",
  "load_paca_adapter",
  "save_merged",
  "save_paca_adapter",
  "save_peft_adapter",
  "to_lora",
]

MARKER = "paca_jax_export.json"
# transformers' own default shard size (`save_pretrained(max_shard_size="5GB")`).
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "tokenizer.model",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "generation_config.json",
  "chat_template.jinja",
)
PACA_FORMAT = "paca_jax.PacaAdapter/1"

# ------------------------------------------------------------------------------ file writing

_ST_DTYPES = {
  "float64": "F64",
  "float32": "F32",
  "float16": "F16",
  "bfloat16": "BF16",
  "int64": "I64",
  "int32": "I32",
  "int8": "I8",
  "uint8": "U8",
}


def _write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
  """A safetensors file (bfloat16 included, via ml_dtypes), ``__metadata__`` format ``pt``."""
  header, offset, arrays = {"__metadata__": {"format": "pt"}}, 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype.name not in _ST_DTYPES:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
    header[name] = {
      "dtype": _ST_DTYPES[arr.dtype.name],
      "shape": list(arr.shape),
      "data_offsets": [offset, offset + arr.nbytes],
    }
    offset += arr.nbytes
    arrays.append(arr)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for arr in arrays:
      f.write(arr.tobytes())


def _atomic_dir(directory, write, kind: str) -> pathlib.Path:
  """Calls ``write(tmp_dir)``, then moves ``tmp_dir`` to ``directory`` atomically
  (``jaxsteer._src.fileio.atomic_directory``).

  An existing ``directory`` is replaced only if it is empty or carries this module's marker;
  anything else is refused (``ValueError``) before anything is written.
  """
  out = pathlib.Path(directory).absolute()
  if out.exists() and not out.is_dir():
    raise ValueError(f"export target {out} exists and is not a directory")
  if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
    raise ValueError(
      f"refusing to replace {out}: it is not empty and was not written by paca_jax's export "
      f"(no {MARKER}); choose another directory"
    )
  with fileio.atomic_directory(out) as tmp:
    write(tmp)
    (tmp / MARKER).write_text(json.dumps({"written_by": "paca_jax.export", "kind": kind}))
  return out


# ---------------------------------------------------------------------------------- merged


def hf_state_dict(params) -> dict[str, np.ndarray]:
  """HF tensor names and layouts of a Llama-family params tree (see ``hf_names.hf_tensors``);
  a scanned decoder's stacked layers are unstacked to per-layer names."""
  return hf_names.hf_tensors(unstack(jax.device_get(_unwrap(params))))


def _source_dir(source) -> pathlib.Path | None:
  if source is None:
    return None
  p = pathlib.Path(source)
  return p if p.is_dir() else None


def _source_dtype(src: pathlib.Path | None, hf_cfg: dict | None):
  if hf_cfg is not None:
    name = hf_cfg.get("dtype") or hf_cfg.get("torch_dtype")
    if isinstance(name, str) and name in ("float32", "bfloat16", "float16"):
      return np.dtype(getattr(ml_dtypes, name) if name == "bfloat16" else name)
  if src is not None:
    names = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    for f in sorted(src.glob("*.safetensors")):
      for info in _read_header(f).values():
        if isinstance(info, dict) and info.get("dtype") in names:
          return np.dtype(names[info["dtype"]])
  return None


def _read_header(path) -> dict:
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n))


def save_merged(
  params,
  directory,
  *,
  config,
  source=None,
  dtype=None,
  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> pathlib.Path:
  """Writes a merged model as an HF model directory (see the module docstring).

  Args:
    params: the merged Flax params (``Trainer.merged_params``) of a Llama-family model.
    directory: the output directory (replaced only if empty or a previous export).
    config: the model's ``jaxsteer`` ``ModelConfig`` or ``paca_jax.models.LMConfig``.
    source: the source model (an HF directory or a llama2.c ``.bin``): its ``config.json`` is
      kept (dtype updated), its dtype is the default, its tokenizer files are copied.
    dtype: the tensors' dtype (default: the source's, else the params' floating dtype).
    max_shard_bytes: above this total size the weights are sharded with an index.

  Raises:
    ValueError: the architecture has no HF mapping, or ``directory`` is not ours to replace.
  """
  src = _source_dir(source)
  src_cfg = None
  if src is not None and (src / "config.json").is_file():
    src_cfg = json.loads((src / "config.json").read_text())
  tensors = hf_state_dict(params)
  if dtype is None:
    dtype = _source_dtype(src, src_cfg)
  if dtype is None:
    floats = [a.dtype for a in tensors.values() if jnp.issubdtype(a.dtype, jnp.floating)]
    dtype = max(floats, key=lambda d: d.itemsize)  # norms may be f32 in a bf16 TinyLlama
  dtype = np.dtype(jnp.dtype(dtype))
  cfg = hf_names.hf_config(config, dtype, src_cfg)
  tensors = {k: np.asarray(v).astype(dtype) for k, v in tensors.items()}
  if max_shard_bytes <= 0:
    raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes

  def write(tmp: pathlib.Path):
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if len(shards) == 1:
      _write_safetensors(tmp / "model.safetensors", shards[0])
    else:
      n = len(shards)
      weight_map = {}
      for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _write_safetensors(tmp / fname, shard)
        weight_map.update(dict.fromkeys(shard, fname))
      index = {
        "metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
        "weight_map": dict(sorted(weight_map.items())),
      }
      (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if src is not None:
      for name in TOKENIZER_FILES:
        if (src / name).is_file():
          shutil.copy2(src / name, tmp / name)

  return _atomic_dir(directory, write, "merged")


# ------------------------------------------------------------------------------------ LoRA


def _base_kernel(base, e):
  return find_kernels(base)[e.path].reshape(e.in_features, e.out_features)


def to_lora(method, base_params, trainable) -> dict[str, dict]:
  """An exact LoRA adapter ``{path: {"a": (in, r), "b": (r, out), "scale": float}}``.

  For PaCA, ``base_params`` must be the original (pre-fine-tuning) weights; ``a`` is the one-hot
  selector, ``b`` the delta ``(rows - K0[idx]) / s`` and ``scale`` ``s = alpha / r``.
  Keys are per-layer module paths, also for a scanned decoder's stacked trainable tree.
  """
  out = {}
  trainable = unstack(trainable)
  if isinstance(method, PacaInt8 | PacaNf4):
    raise ValueError(
      f"to_lora: a {method.name} fine-tune has no exact LoRA form (its base is quantised); "
      "export the merged model, or the PaCA form against the float base (save_paca_adapter)"
    )
  if isinstance(method, Paca):
    for e in method.plan:
      s = method.plan.scale(e.path)
      rows = np.asarray(row_values(method.plan, trainable, e.path), np.float32)
      a = np.zeros((e.in_features, e.rank), np.float32)
      a[list(e.idx), np.arange(e.rank)] = 1.0
      k0 = np.asarray(take_rows(_base_kernel(base_params, e), e.idx), np.float32)
      out[e.path] = {"a": a, "b": (rows - k0) / np.float32(s), "scale": s}
  elif isinstance(method, Lora | LoraNf4):
    flat = traverse_util.flatten_dict(trainable, sep="/")
    for e in method.plan:
      ab = {"a": flat[e.path + "/a"], "b": flat[e.path + "/b"]}
      out[e.path] = {
        "a": np.asarray(ab["a"], np.float32),
        "b": np.asarray(ab["b"], np.float32),
        "scale": method.plan.scale,
      }
  else:
    raise ValueError(f"to_lora: method {getattr(method, 'name', method)!r} has no LoRA form")
  return out


def apply_lora(base_params, adapters):
  """``kernel + scale * a @ b`` for every adapter (float32 accumulation, base dtype out).

  A scanned decoder's stacked ``base_params`` are unstacked, updated and stacked again.
  """
  base_params = _unwrap(base_params)
  if is_stacked(base_params):
    layers = _num_layers(base_params)
    return stack(apply_lora(unstack(base_params), adapters), layers)
  flat = traverse_util.flatten_dict(base_params, keep_empty_nodes=True, sep="/")
  for path, ad in adapters.items():
    k = flat[path + "/kernel"]
    d = (ad["scale"] * (jnp.asarray(ad["a"]) @ jnp.asarray(ad["b"]))).reshape(k.shape)
    flat[path + "/kernel"] = (k.astype(jnp.float32) + d).astype(k.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def _num_layers(params) -> int:
  flat = traverse_util.flatten_dict(params, sep="/")
  return int(next(v.shape[0] for k, v in flat.items() if "/layers/" in "/" + k))


def _hf_linear_name(path: str, what: str) -> str:
  name = hf_names.hf_module_name(path)
  if name is None or not hf_names.is_linear(path):
    raise ValueError(
      f"{what}: module {path!r} is not a linear layer of a Hugging Face Llama-family model "
      f"(adaptable: {', '.join(hf_names.LINEAR_MODULES)}, lm_head)"
    )
  return name


def save_peft_adapter(adapters, directory, *, base_model: str = "") -> pathlib.Path:
  """A peft LoRA adapter directory for ``peft.PeftModel.from_pretrained(hf_model, directory)``.

  Keys are ``base_model.model.<HF module>.lora_A.weight`` ``(r, in)`` and ``...lora_B.weight``
  ``(out, r)`` (float32); ``lora_alpha = scale * r``, so peft's ``lora_alpha / r`` is the scale.

  Raises:
    ValueError: a module that is not an HF linear layer, mixed ranks or scales, or a directory
      that is not ours to replace; nothing is written then.
  """
  sd, ranks, scales, names = {}, set(), set(), []
  for path, ad in adapters.items():
    name = _hf_linear_name(path, "save_peft_adapter")
    a, b = np.asarray(ad["a"], np.float32), np.asarray(ad["b"], np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
      raise ValueError(f"save_peft_adapter: module {path!r} has a {a.shape} / b {b.shape}")
    ranks.add(a.shape[1])
    scales.add(float(ad["scale"]))
    names.append(name)
    sd[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
    sd[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(b.T)
  if not adapters:
    raise ValueError("save_peft_adapter: no adapters")
  if len(ranks) != 1 or len(scales) != 1:
    raise ValueError(
      f"adapters of different ranks {sorted(ranks)} or scales {sorted(scales)} cannot share one "
      "adapter_config.json"
    )
  (r,), (scale,) = ranks, scales
  cfg = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "r": r,
    "lora_alpha": scale * r,
    "target_modules": sorted(names),
    "base_model_name_or_path": str(base_model),
    "fan_in_fan_out": False,
    "bias": "none",
    "lora_dropout": 0.0,
    "use_rslora": False,
    "inference_mode": True,
  }

  def write(tmp: pathlib.Path):
    _write_safetensors(tmp / "adapter_model.safetensors", sd)
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))

  return _atomic_dir(directory, write, "peft_lora")


# ------------------------------------------------------------------------------- PaCA form


def save_paca_adapter(method, base_params, trainable, directory, *, base_model: str = ""):
  """PaCA's own export: indices and zero-based deltas keyed by HF module names.

  ``base_params`` are the original float weights (for a quantised PaCA, the adapter then applies
  to the float base, as a QLoRA adapter does).

  Raises:
    ValueError: not a PaCA method, a module without an HF linear name, or a directory that is
      not ours to replace.
  """
  if not isinstance(method, Paca | PacaInt8 | PacaNf4):
    raise ValueError(f"save_paca_adapter: method {getattr(method, 'name', method)!r} is not PaCA")
  plan = method.plan
  r = plan.rank
  trainable = unstack(trainable)
  sd, names = {}, []
  for e in plan:
    name = _hf_linear_name(e.path, "save_paca_adapter")
    s = plan.scale(e.path)
    rows = np.asarray(row_values(plan, trainable, e.path), np.float32)
    k0 = np.asarray(take_rows(_base_kernel(base_params, e), e.idx), np.float32)
    sd[f"base_model.model.{name}.paca_indices"] = np.asarray(e.idx, np.int64)
    sd[f"base_model.model.{name}.paca_delta"] = np.ascontiguousarray(((rows - k0) / s).T)
    names.append(name)
  cfg = {
    "format": PACA_FORMAT,
    "peft_type": "PACA",
    "r": r,
    "paca_alpha": float(r if plan.alpha is None else plan.alpha),
    "target_modules": sorted(names),
    "base_model_name_or_path": str(base_model),
    "selector": plan.selector,
    "layout": "W[:, idx] = W0[:, idx] + (paca_alpha / r) * paca_delta; W (out, in), "
    "paca_indices int64 (r,), paca_delta float32 (out, r)",
  }

  def write(tmp: pathlib.Path):
    _write_safetensors(tmp / "paca_model.safetensors", sd)
    (tmp / "paca_config.json").write_text(json.dumps(cfg, indent=2))

  return _atomic_dir(directory, write, "paca")


def load_paca_adapter(directory, base_params):
  """Reads :func:`save_paca_adapter`'s directory: ``(Paca(plan), trainable)`` on ``base_params``.

  ``method.merge(base_params, trainable)`` is then the fine-tuned model.

  Raises:
    FileNotFoundError: missing files. ValueError: wrong format, modules the params do not have,
    bad indices (wrong count, duplicates, out of range) or delta shapes.
  """
  from safetensors.numpy import load_file

  d = pathlib.Path(directory)
  cfg_path, st_path = d / "paca_config.json", d / "paca_model.safetensors"
  for p in (cfg_path, st_path):
    if not p.is_file():
      raise FileNotFoundError(f"not a PaCA adapter directory: missing {p}")
  cfg = json.loads(cfg_path.read_text())
  if cfg.get("format") != PACA_FORMAT:
    raise ValueError(f"{cfg_path}: format {cfg.get('format')!r}, expected {PACA_FORMAT!r}")
  sd = load_file(st_path)
  r, alpha = int(cfg["r"]), float(cfg["paca_alpha"])
  indices = {m: sd[f"base_model.model.{m}.paca_indices"] for m in cfg["target_modules"]}
  kernels = find_kernels(base_params)
  plan = select(
    base_params,
    [p for p in kernels if hf_names.hf_module_name(p) in indices],
    r,
    selector="given",
    indices=indices,
    alpha=None if alpha == r else alpha,
  )
  if len(plan) != len(indices):
    raise ValueError(f"{st_path}: the params lack modules of {sorted(indices)}")
  trainable = {}  # {"path/rows": rows}, nested below
  for e in plan:
    name = hf_names.hf_module_name(e.path)
    delta = sd[f"base_model.model.{name}.paca_delta"]
    if delta.shape != (e.out_features, r):
      raise ValueError(
        f"{st_path}: paca_delta of {name} has shape {delta.shape}, expected {(e.out_features, r)}"
      )
    s = plan.scale(e.path)
    k0 = np.asarray(take_rows(_base_kernel(base_params, e), e.idx), np.float32)
    rows = k0 + np.float32(s) * delta.T.astype(np.float32)
    trainable[e.path + "/rows"] = jnp.asarray(rows if s == 1.0 else rows / np.float32(s))
  trainable = traverse_util.unflatten_dict(trainable, sep="/")
  if is_stacked(_unwrap(base_params)):  # a scanned decoder: stack the rows like the params
    trainable = stack(trainable, _num_layers(_unwrap(base_params)))
  return Paca(plan), trainable
