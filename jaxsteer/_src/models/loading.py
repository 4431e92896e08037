"""Checkpoint loading: Hugging Face safetensors directories, hub ids, llama2.c ``.bin`` files.

Parameters are produced as lazily sliced numpy views; with a mesh each device reads only its own
shard (``jax.make_array_from_callback``), so the full model is never materialised on one device.
"""

from __future__ import annotations

import math
import pathlib
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from jaxsteer._src import mesh_rules
from jaxsteer._src.mesh_rules import batch_spec, check_rules
from jaxsteer._src.models.config import ModelConfig
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint

# --------------------------------------------------------------------------------------------
# Sharding: two tables of data for the one mechanism in ``jaxsteer._src.mesh_rules`` (shared with
# paca_jax's trainer).

# Logical axes of every parameter, by regex over its '/'-joined path (first match wins).
PARAM_LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
  # Text decoder (top level of a CausalLM, or under ``language_model/`` in a VLM).
  (r"(^|/)embed/embedding$", ("vocab", "embed")),
  (r"(^|/)wpe/embedding$", (None, "embed")),
  (r"/(q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
  (r"/(q_proj|k_proj|v_proj)/bias$", ("heads",)),
  (r"/(o_proj|out_proj)/kernel$", ("heads", "embed")),
  (r"/(gate_proj|up_proj|fc1)/kernel$", ("embed", "mlp")),
  (r"/(gate_proj|up_proj|fc1)/bias$", ("mlp",)),
  (r"/(down_proj|fc2)/kernel$", ("mlp", "embed")),
  (r"(^|/)lm_head/kernel$", ("embed", "vocab")),
  # Vision tower (CLIP) and multimodal projector of a VLM.
  (r"/patch_embedding/kernel$", (None, None, None, "embed")),
  (r"/position_embedding/embedding$", (None, "embed")),
  (r"^multi_modal_projector/linear_1/kernel$", (None, "mlp")),
  (r"^multi_modal_projector/linear_1/bias$", ("mlp",)),
  (r"^multi_modal_projector/linear_2/kernel$", ("mlp", "embed")),
  (r".*", ()),  # norms, class embedding, image_newline and remaining biases: replicated
)

# Logical axis -> mesh axis (or tuple of mesh axes). Mesh axes missing from a mesh, or not dividing
# a dimension, replicate. The batch is ("fsdp", "data"), parameter axis first: ("data", "fsdp")
# makes XLA's SPMD partitioner reorder activation rows without undoing it when |fsdp| == |tensor|
# and |data| > 1 (wrong gradients on a (2, 2, 2) mesh; docs/xla_spmd_bug.md). ``check_rules``
# rejects that pattern before anything is placed.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("batch", ("fsdp", "data")),
)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of the parameter at ``path`` (:data:`PARAM_LOGICAL_AXES`); a scanned decoder's
  stacked ``layers/...`` parameters get a leading, unsharded layer axis."""
  per_layer = _per_layer_path(path)
  if per_layer is not None:
    return (None, *logical_axes(per_layer, ndim - 1))
  return mesh_rules.logical_axes(path, ndim, PARAM_LOGICAL_AXES)


def _per_layer_path(path: str) -> str | None:
  """``layers_0/...`` for a scanned decoder's stacked ``layers/...`` path, else ``None``."""
  if re.search(r"(^|/)layers/", path) is None:
    return None
  return re.sub(r"(^|/)layers/", r"\1layers_0/", path, count=1)


def partition_spec(path: str, shape, mesh, rules=DEFAULT_RULES) -> PartitionSpec:
  """``PartitionSpec`` of the parameter at ``path`` (``mesh_rules.leaf_spec``); the leading layer
  axis of a scanned decoder's stacked parameters is not sharded."""
  per_layer = _per_layer_path(path)
  if per_layer is not None:
    return PartitionSpec(None, *partition_spec(per_layer, tuple(shape)[1:], mesh, rules))
  return mesh_rules.leaf_spec(path, tuple(shape), mesh, rules, PARAM_LOGICAL_AXES)


def param_shardings(params, mesh, rules=DEFAULT_RULES):
  """``NamedSharding`` for every leaf of a parameter tree, from the rule table.

  Raises:
    ValueError: the mesh has an axis the rules do not know, or the rules hit the XLA SPMD bug
      pattern (``jaxsteer._src.mesh_rules.check_rules``).
  """
  check_rules(rules, mesh)
  return mesh_rules.tree_shardings(params, mesh, rules, PARAM_LOGICAL_AXES)


def batch_sharding(shape, mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of an input array (ids, mask, embeddings) whose leading dimension is the batch.

  Raises:
    ValueError: the batch mesh axes do not divide the leading dimension.
  """
  return NamedSharding(mesh, batch_spec(rules, mesh, tuple(shape)))


def shard_batch(x, mesh, rules=DEFAULT_RULES) -> jax.Array:
  """``x`` placed with :func:`batch_sharding`. With several processes, ``x`` is this process's
  global value (every process passes the same array); each device keeps only its rows."""
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  sh = batch_sharding(x.shape, mesh, rules)
  if isinstance(x, jax.Array):
    return jax.device_put(x, sh)
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def place(arrays: dict[str, np.ndarray], dtype, mesh=None, rules=DEFAULT_RULES):
  """Turns a flat ``{path: numpy view}`` into a parameter tree of jax arrays.

  With a mesh, each device's shard is read from the (memory-mapped) view by itself.
  """
  if mesh is not None:
    check_rules(rules, mesh)
  out = {}
  for path, view in arrays.items():
    target = np.dtype(dtype) if dtype is not None else view.dtype
    if mesh is None:
      out[path] = jnp.asarray(np.asarray(view, dtype=target))
    else:
      sharding = NamedSharding(mesh, partition_spec(path, view.shape, mesh, rules))
      out[path] = jax.make_array_from_callback(
        view.shape, sharding, lambda idx, v=view, t=target: np.asarray(v[idx], dtype=t)
      )
  return traverse_util.unflatten_dict(out, sep="/")


class StackedView:
  """Lazy ``np.stack`` of equally shaped views along a new leading axis: indexing reads only the
  selected slices (so a device's shard of a scanned decoder's parameters reads only its own)."""

  def __init__(self, views):
    self.views = list(views)
    self.dtype = np.dtype(self.views[0].dtype)
    self.shape = (len(self.views), *self.views[0].shape)
    self.ndim = len(self.shape)

  def __getitem__(self, idx):
    idx = idx if isinstance(idx, tuple) else (idx,)
    head, rest = (idx[0], idx[1:]) if idx else (slice(None), ())
    rows = range(self.shape[0])[head]
    if isinstance(rows, int):
      return np.asarray(self.views[rows][rest])
    return np.stack([np.asarray(self.views[i][rest]) for i in rows])

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)


def stack_views(arrays: dict[str, np.ndarray], num_layers: int) -> dict[str, object]:
  """Flat per-layer views (``layers_i/...``) -> flat stacked views (``layers/...``) of a scanned
  decoder (``ModelConfig.scan_layers``), lazily; other entries unchanged. Works wherever the layers
  sit (``language_model/layers_i/...`` too)."""
  out, groups = {}, {}
  for path, view in arrays.items():
    m = re.match(r"^(.*?)(?:^|(?<=/))layers_(\d+)/(.*)$", path)
    if m is None:
      out[path] = view
      continue
    groups.setdefault(f"{m.group(1)}layers/{m.group(3)}", {})[int(m.group(2))] = view
  for path, by_layer in groups.items():
    if sorted(by_layer) != list(range(num_layers)):
      raise ValueError(f"{path}: layers {sorted(by_layer)} present, expected 0..{num_layers - 1}")
    out[path] = StackedView(by_layer[i] for i in range(num_layers))
  return out


# --------------------------------------------------------------------------------------------
# Hugging Face layout -> Flax layout (lazy numpy views).


def hf_arrays(
  ckpt: SafetensorsCheckpoint,
  cfg: ModelConfig,
  *,
  prefix: str = "model.",
  lm_head: str = "lm_head.weight",
) -> dict[str, np.ndarray]:
  """Flax-layout views of a text model's tensors, through its registry weight map."""
  from jaxsteer._src.models import registry

  kw = {} if cfg.is_gpt2 else dict(prefix=prefix, lm_head=lm_head)
  entries = registry.get(cfg.arch).weights(cfg, frozenset(ckpt.keys()), **kw)
  out = registry.hf_to_flax(entries, ckpt)
  check_shapes(out, cfg)
  return out


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """The Flax parameter shapes of a config (without initialising anything)."""
  from jaxsteer._src.models.modules import CausalLM

  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda x: CausalLM(cfg).init(jax.random.PRNGKey(0), x), ids)
  flat = traverse_util.flatten_dict(shapes["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_shapes(arrays, cfg, want=None):
  """``ValueError`` unless ``arrays`` hold every parameter of ``want`` (default: the shapes of
  ``cfg``'s ``CausalLM``) with its shape."""
  want = expected_shapes(cfg) if want is None else want
  missing = sorted(set(want) - set(arrays))
  if missing:
    raise ValueError(f"checkpoint lacks parameters: {', '.join(missing[:5])}")
  for k, shape in want.items():
    if tuple(arrays[k].shape) != shape:
      raise ValueError(
        f"parameter {k} has shape {tuple(arrays[k].shape)} in the checkpoint, "
        f"but the config implies {shape}"
      )


# --------------------------------------------------------------------------------------------
# llama2.c legacy (version 0) checkpoints.


def _looks_like_pickle(head: bytes) -> bool:
  """A zip archive (``torch.save``) or a pickle stream: PROTO 2-5 opcode, then a pickle opcode."""
  if head.startswith(b"PK\x03\x04"):
    return True
  return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] in b"}]()cK\x95"


def refuse_pickle(path: pathlib.Path) -> None:
  """Refuses a pickle; called only once a file failed the llama2.c structure check (a llama2.c
  header may start with 0x80, e.g. dim = 128 mod 256)."""
  with open(path, "rb") as f:
    head = f.read(4)
  if _looks_like_pickle(head):
    raise ValueError(
      f"{path} is a pickle (PyTorch) checkpoint; jaxsteer refuses to unpickle files because that "
      "runs arbitrary code. Use a safetensors export or a llama2.c legacy .bin export."
    )


def read_llama2c(path: str | pathlib.Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Reads a llama2.c legacy ``.bin`` checkpoint into a config and Flax-layout numpy arrays.

  llama2.c rotates adjacent pairs (2i, 2i+1) of each head; our RoPE uses HF's ``rotate_half``
  layout, so the rows of ``wq`` and ``wk`` are permuted within each head (the same permutation
  HF's conversion script applies), which leaves every attention score unchanged.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"missing llama2.c checkpoint: {path}")
  size = path.stat().st_size
  if size < 28:
    refuse_pickle(path)
    raise ValueError(f"corrupt llama2.c checkpoint {path}: shorter than its 28-byte header")
  with open(path, "rb") as f:
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", f.read(28))
  shared = vocab > 0
  vocab = abs(vocab)
  if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads:
    refuse_pickle(path)
    raise ValueError(
      f"corrupt llama2.c checkpoint {path}: implausible header "
      f"(dim={dim}, hidden={hidden}, layers={n_layers}, heads={n_heads}, kv_heads={n_kv}, "
      f"vocab={vocab}, seq_len={seq_len})"
    )
  hd = dim // n_heads
  kv_dim = n_kv * hd
  layout = [
    ("emb", (vocab, dim)),
    ("rms_att", (n_layers, dim)),
    ("wq", (n_layers, dim, dim)),
    ("wk", (n_layers, kv_dim, dim)),
    ("wv", (n_layers, kv_dim, dim)),
    ("wo", (n_layers, dim, dim)),
    ("rms_ffn", (n_layers, dim)),
    ("w1", (n_layers, hidden, dim)),
    ("w2", (n_layers, dim, hidden)),
    ("w3", (n_layers, hidden, dim)),
    ("rms_final", (dim,)),
    ("freq_cis", (seq_len, hd)),  # real and imaginary halves, unused
  ]
  if not shared:
    layout.append(("wcls", (vocab, dim)))
  n_floats = sum(math.prod(s) for _, s in layout)  # Python ints: no overflow
  if size != 28 + 4 * n_floats:
    refuse_pickle(path)  # the structure decides; the first bytes only name the likely cause
    raise ValueError(
      f"corrupt llama2.c checkpoint {path}: the header implies {28 + 4 * n_floats} bytes, "
      f"the file has {size} (truncated or not a llama2.c legacy export)"
    )
  mm = np.memmap(path, dtype="<f4", mode="r", offset=28)
  t, off = {}, 0
  for name, shape in layout:
    n = int(np.prod(shape))
    t[name] = mm[off : off + n].reshape(shape)
    off += n

  def rope_perm(w, heads):  # (out, in) -> same, rotate_half row order within each head
    return w.reshape(heads, hd // 2, 2, dim).transpose(0, 2, 1, 3).reshape(heads * hd, dim)

  cfg = ModelConfig(
    arch="llama",
    vocab_size=vocab,
    hidden_size=dim,
    intermediate_size=hidden,
    num_layers=n_layers,
    num_heads=n_heads,
    num_kv_heads=n_kv,
    head_dim=hd,
    max_position_embeddings=seq_len,
    norm_eps=1e-5,
    tie_word_embeddings=shared,
    bos_token_id=1,
    eos_token_id=2,
  )
  out = {"embed/embedding": t["emb"], "norm/scale": t["rms_final"]}
  for i in range(n_layers):
    q = f"layers_{i}/"
    out[q + "attn/q_proj/kernel"] = rope_perm(t["wq"][i], n_heads).T
    out[q + "attn/k_proj/kernel"] = rope_perm(t["wk"][i], n_kv).T
    out[q + "attn/v_proj/kernel"] = t["wv"][i].T
    out[q + "attn/o_proj/kernel"] = t["wo"][i].T
    out[q + "mlp/gate_proj/kernel"] = t["w1"][i].T
    out[q + "mlp/down_proj/kernel"] = t["w2"][i].T
    out[q + "mlp/up_proj/kernel"] = t["w3"][i].T
    out[q + "input_norm/scale"] = t["rms_att"][i]
    out[q + "post_attention_norm/scale"] = t["rms_ffn"][i]
  if not shared:
    out["lm_head/kernel"] = t["wcls"].T
  return cfg, out
