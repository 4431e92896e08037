"""Which rows PaCA trains: a registry of selection rules and the static plan they produce.

PaCA (Woo et al., ICLR 2025) picks ``r`` input channels of every adapted linear layer once, at
adapter creation, and keeps them fixed. In a Flax kernel ``(in, out)`` these are rows.

Usage::

  plan = paca_jax.select(params, targets=r".*(q|k|v|o|gate|up|down)_proj", rank=16,
                         key=jax.random.key(0))            # uniform, sorted, seeded per path
  plan = paca_jax.select(params, targets=..., rank=16, selector="norm_max")
  plan = paca_jax.select(params, targets=..., rank=2, selector="given",
                         indices={"model.layers.0.self_attn.q_proj": (3, 7)})  # or a Flax path
  plan = paca_jax.select(params, targets=["q_proj", "v_proj"], rank=16, alpha=32, key=key)

Modules are named by their Flax path (``layers_0/attn/q_proj``) or, for Llama-family models, by
their Hugging Face module name (``model.layers.0.self_attn.q_proj``), in ``targets`` and in the
``given`` indices alike.

``alpha`` is upstream PEFT's ``paca_alpha``: the trained rows are ``W0[idx] + (alpha / r) * delta``
with ``delta`` starting at zero, so under Adam the rows move about ``(alpha / r) * lr`` per step.
It is implemented as trainable rows stored divided by ``s = alpha / r`` (the original PaCA code's
``paca_w = W[:, idx] / s``), which gives the same updates for any optimizer without weight decay;
``alpha=None`` or ``alpha == r`` is scale 1, computed on the same code path as before (no
multiplication at all), so it reproduces the numbers of plans without alpha bit for bit.

On a scanned decoder (``jaxsteer`` ``ModelConfig.scan_layers``: kernels stacked under ``layers/``)
the plan is the same per-layer plan as on the unrolled model (``find_kernels`` lists every layer's
kernel under ``layers_i/...``), so the same key selects the same rows, independently per layer;
the methods stack them (``paca_jax._src.layers``).

A plan is a frozen, hashable dataclass (usable as a ``jax.jit`` static argument) holding, per
adapted module path, its sorted indices and kernel shape. ``plan.to_json()`` / ``Plan.from_json``
round-trip it so checkpoints can store and verify it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from paca_jax._src.hf_names import hf_module_name
from paca_jax._src.layers import per_layer_kernels
from paca_jax._src.ops import validate_indices

__all__ = [
  "PlanEntry",
  "Plan",
  "SELECTORS",
  "register_selector",
  "select",
  "find_kernels",
  "match_targets",
  "path_seed",
  "resolve_module_keys",
  "unwrap_params",
]

# A selector: (kernel as float64 numpy or None, kernel shape, rank, key, path, **options) -> indices.
# Kernel values are only loaded for selectors not named "random" or "given".
Selector = Callable[..., np.ndarray]
SELECTORS: dict[str, Selector] = {}


def register_selector(name: str):
  """Decorator adding a selection rule to :data:`SELECTORS` under ``name``."""

  def deco(fn: Selector) -> Selector:
    if name in SELECTORS:
      raise ValueError(f"selector {name!r} is already registered")
    SELECTORS[name] = fn
    return fn

  return deco


def path_seed(path: str) -> int:
  """A stable 32-bit seed for a module path (as upstream PEFT: seed + crc32(name))."""
  return zlib.crc32(path.encode("utf-8")) & 0x7FFFFFFF


@register_selector("random")
def _random(kernel, shape, rank, key, path, **_):
  if key is None:
    raise ValueError("selector 'random' needs key=jax.random.key(seed)")
  sub = jax.random.fold_in(key, path_seed(path))
  idx = jax.random.choice(sub, shape[0], (rank,), replace=False)
  return np.asarray(idx)


def _row_norms(kernel):
  return np.linalg.norm(kernel.reshape(kernel.shape[0], -1), axis=1)


@register_selector("norm_max")
def _norm_max(kernel, shape, rank, key, path, **_):
  # Stable sort so ties resolve to the lowest index.
  return np.argsort(-_row_norms(kernel), kind="stable")[:rank]


@register_selector("norm_min")
def _norm_min(kernel, shape, rank, key, path, **_):
  return np.argsort(_row_norms(kernel), kind="stable")[:rank]


@register_selector("given")
def _given(kernel, shape, rank, key, path, indices=None, **_):
  if indices is None or path not in indices:
    raise ValueError(f"selector 'given': no indices for module {path!r}")
  return np.asarray(indices[path])


@dataclasses.dataclass(frozen=True)
class PlanEntry:
  """One adapted module: its path (``a/b/c``), sorted row indices and kernel shape."""

  path: str
  idx: tuple[int, ...]
  shape: tuple[int, ...]

  @property
  def rank(self) -> int:
    return len(self.idx)

  @property
  def in_features(self) -> int:
    return self.shape[0]

  @property
  def out_features(self) -> int:
    return int(np.prod(self.shape[1:]))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A static (hashable) adapter plan: the adapted modules and, for PaCA, their rows.

  ``alpha`` (``None``: scale 1) sets the scale ``alpha / r`` of the trained rows (see the module
  docstring); :meth:`scale` gives it per module.
  """

  entries: tuple[PlanEntry, ...]
  selector: str = "random"
  alpha: float | None = None

  def __post_init__(self):
    paths = [e.path for e in self.entries]
    if len(set(paths)) != len(paths):
      raise ValueError("Plan: duplicate module paths")
    if self.alpha is not None:
      a = float(self.alpha)
      if not np.isfinite(a) or a <= 0:
        raise ValueError(f"PaCA alpha must be a positive finite number, got {self.alpha!r}")
      object.__setattr__(self, "alpha", a)

  def scale(self, path: str) -> float:
    """``alpha / r`` of module ``path`` (1.0 without alpha)."""
    return 1.0 if self.alpha is None else self.alpha / self[path].rank

  @property
  def rank(self) -> int:
    """The common rank of all modules (``ValueError`` if they differ)."""
    ranks = {e.rank for e in self.entries}
    if len(ranks) != 1:
      raise ValueError(f"plan has modules of different ranks {sorted(ranks)}")
    return ranks.pop()

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(e.path for e in self.entries)

  def __getitem__(self, path: str) -> PlanEntry:
    for e in self.entries:
      if e.path == path:
        return e
    raise KeyError(path)

  def __contains__(self, path: str) -> bool:
    return any(e.path == path for e in self.entries)

  def num_trainable(self) -> int:
    """Trainable PaCA parameters: ``r * out`` per module."""
    return sum(e.rank * e.out_features for e in self.entries)

  def to_json(self) -> str:
    d = {
      "selector": self.selector,
      "entries": [{"path": e.path, "idx": list(e.idx), "shape": list(e.shape)} for e in self],
    }
    if self.alpha is not None:  # absent for scale-1 plans, as before alpha existed
      d["alpha"] = self.alpha
    return json.dumps(d, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> Plan:
    d = json.loads(text)
    return cls(
      tuple(PlanEntry(e["path"], tuple(e["idx"]), tuple(e["shape"])) for e in d["entries"]),
      d.get("selector", "random"),
      d.get("alpha"),
    )

  def __iter__(self):
    return iter(self.entries)

  def __len__(self) -> int:
    return len(self.entries)


def unwrap_params(params):
  """``params["params"]`` when given a Flax variables dict with only a params collection."""
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def find_kernels(params) -> dict[str, jax.Array]:
  """All ``kernel`` leaves of a Flax params tree with ndim >= 2, keyed by their module path.

  A scanned decoder's stacked kernels (``layers/attn/q_proj``, leading layer axis; ``jaxsteer``
  ``ModelConfig.scan_layers``) appear once per layer under the unrolled model's paths
  (``layers_0/attn/q_proj`` ...) as read-only views (``paca_jax._src.layers``), so plans are
  per-layer and equal for both layouts.
  """
  flat = traverse_util.flatten_dict(unwrap_params(params))
  kernels = {
    "/".join(path[:-1]): v
    for path, v in flat.items()
    if path[-1] == "kernel" and hasattr(v, "ndim") and v.ndim >= 2
  }
  return per_layer_kernels(kernels)


def match_targets(paths: Sequence[str], targets) -> list[str]:
  """Module paths matched by ``targets``.

  ``targets`` is either a regex (``re.fullmatch`` against the whole ``a/b/c`` path or against the
  module's Hugging Face name ``model.layers.0.self_attn.q_proj``) or a sequence of names, each
  matching the last path component (PEFT's ``target_modules`` list: ``"q_proj"``), a whole Flax
  path, or a whole HF module name.
  """
  if isinstance(targets, str):
    pat = re.compile(targets)
    return [p for p in paths if pat.fullmatch(p) or pat.fullmatch(hf_module_name(p) or "")]
  names = set(targets)
  return [p for p in paths if p.split("/")[-1] in names or p in names or hf_module_name(p) in names]


def resolve_module_keys(mapping: Mapping[str, object], paths: Sequence[str], *, what: str):
  """``mapping`` re-keyed by Flax path; its keys may be Flax paths or HF module names.

  Raises:
    ValueError: a key names no module in ``paths``, or two keys name the same module.
  """
  by_hf = {hf_module_name(p): p for p in paths if hf_module_name(p)}
  out: dict[str, object] = {}
  unknown = []
  for k, v in mapping.items():
    path = k if k in paths else by_hf.get(str(k).removeprefix("base_model.model."))
    if path is None:
      unknown.append(k)
      continue
    if path in out:
      raise ValueError(f"{what}: module {path!r} is named twice (as a Flax path and an HF name)")
    out[path] = v
  if unknown:
    raise ValueError(
      f"{what} for modules not matched by targets: {sorted(map(str, unknown))}; "
      f"matched modules: {list(paths)}"
    )
  return out


def select(
  params,
  targets,
  rank: int,
  key: jax.Array | None = None,
  *,
  selector: str = "random",
  indices: Mapping[str, Sequence[int]] | None = None,
  alpha: float | None = None,
) -> Plan:
  """Chooses the rows PaCA trains in every targeted Dense/DenseGeneral kernel.

  Args:
    params: a Flax params tree (``{"params": ...}`` or its inner dict); arrays or
      ``jax.ShapeDtypeStruct`` (only norm-based selectors need values).
    targets: regex over module paths or HF module names (full match), or a list of module names
      (last component, Flax path or HF module name).
    rank: rows per module (``r``). Must not exceed any targeted module's input width.
    key: PRNG key for ``selector="random"``; each module uses ``fold_in(key, crc32(path))``.
    selector: a name in :data:`SELECTORS` ("random", "norm_max", "norm_min", "given").
    indices: for ``selector="given"``, a mapping from module path or HF module name to its row
      indices: exactly ``rank`` distinct indices in ``[0, in_features)`` for every matched module.
    alpha: PEFT's ``paca_alpha`` (scale ``alpha / rank`` of the trained rows); ``None``: scale 1.

  Returns:
    A :class:`Plan` with sorted indices.

  Raises:
    ValueError: unknown selector, nothing matched, rank out of range, bad given indices.
  """
  if selector not in SELECTORS:
    raise ValueError(f"unknown selector {selector!r}; registered: {sorted(SELECTORS)}")
  kernels = find_kernels(params)
  paths = match_targets(sorted(kernels), targets)
  if not paths:
    raise ValueError(
      f"target pattern {targets!r} matches no Dense kernel; module paths are: {sorted(kernels)}"
    )
  if not isinstance(rank, int | np.integer) or isinstance(rank, bool) or rank <= 0:
    raise ValueError(f"rank must be a positive integer, got {rank!r}")
  if indices is not None:
    indices = resolve_module_keys(indices, paths, what="indices given")
  entries = []
  for path in paths:
    k = kernels[path]
    shape = tuple(int(s) for s in k.shape)
    if rank > shape[0]:
      raise ValueError(f"rank {rank} is larger than the input width {shape[0]} of module {path!r}")
    kernel_np = None if selector in ("random", "given") else np.asarray(k).astype(np.float64)
    raw = SELECTORS[selector](kernel_np, shape, rank, key, path, indices=indices)
    idx = validate_indices(np.asarray(raw), shape[0], where=f"select({path!r})")
    if idx.shape != (rank,):
      raise ValueError(
        f"select({path!r}): {idx.size} indices for rank {rank}; every module needs exactly rank "
        "distinct indices"
      )
    entries.append(PlanEntry(path, tuple(int(i) for i in np.sort(idx)), shape))
  return Plan(tuple(entries), selector, alpha)
