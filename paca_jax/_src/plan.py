"""Which rows PaCA trains: a registry of selection rules and the static plan they produce.

PaCA (Woo et al., ICLR 2025) picks ``r`` input channels of every adapted linear layer once, at
adapter creation, and keeps them fixed. In a Flax kernel ``(in, out)`` these are rows.

Usage::

  plan = paca_jax.select(params, targets=r".*(q|k|v|o|gate|up|down)_proj", rank=16,
                         key=jax.random.key(0))            # uniform, sorted, seeded per path
  plan = paca_jax.select(params, targets=..., rank=16, selector="norm_max")
  plan = paca_jax.select(params, targets=..., rank=2, selector="given",
                         indices={"layers_0/attn/q_proj": (3, 7)})

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
  """A static (hashable) adapter plan: the adapted modules and, for PaCA, their rows."""

  entries: tuple[PlanEntry, ...]
  selector: str = "random"

  def __post_init__(self):
    paths = [e.path for e in self.entries]
    if len(set(paths)) != len(paths):
      raise ValueError("Plan: duplicate module paths")

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
    return json.dumps(
      {
        "selector": self.selector,
        "entries": [{"path": e.path, "idx": list(e.idx), "shape": list(e.shape)} for e in self],
      },
      sort_keys=True,
    )

  @classmethod
  def from_json(cls, text: str) -> Plan:
    d = json.loads(text)
    return cls(
      tuple(PlanEntry(e["path"], tuple(e["idx"]), tuple(e["shape"])) for e in d["entries"]),
      d.get("selector", "random"),
    )

  def __iter__(self):
    return iter(self.entries)

  def __len__(self) -> int:
    return len(self.entries)


def _unwrap(params):
  if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def find_kernels(params) -> dict[str, jax.Array]:
  """All ``kernel`` leaves of a Flax params tree with ndim >= 2, keyed by their module path."""
  out = {}

  def walk(node, prefix):
    if isinstance(node, Mapping):
      for k, v in node.items():
        if k == "kernel" and hasattr(v, "ndim") and v.ndim >= 2:
          out["/".join(prefix)] = v
        else:
          walk(v, (*prefix, str(k)))

  walk(_unwrap(params), ())
  return out


def match_targets(paths: Sequence[str], targets) -> list[str]:
  """Module paths matched by ``targets``.

  ``targets`` is either a regex (``re.fullmatch`` against the whole ``a/b/c`` path) or a sequence
  of module names matched against the last path component (PEFT's ``target_modules`` list).
  """
  if isinstance(targets, str):
    pat = re.compile(targets)
    return [p for p in paths if pat.fullmatch(p)]
  names = set(targets)
  return [p for p in paths if p.split("/")[-1] in names]


def select(
  params,
  targets,
  rank: int,
  key: jax.Array | None = None,
  *,
  selector: str = "random",
  indices: Mapping[str, Sequence[int]] | None = None,
) -> Plan:
  """Chooses the rows PaCA trains in every targeted Dense/DenseGeneral kernel.

  Args:
    params: a Flax params tree (``{"params": ...}`` or its inner dict); arrays or
      ``jax.ShapeDtypeStruct`` (only norm-based selectors need values).
    targets: regex over module paths (full match), or a list of module names.
    rank: rows per module (``r``). Must not exceed any targeted module's input width.
    key: PRNG key for ``selector="random"``; each module uses ``fold_in(key, crc32(path))``.
    selector: a name in :data:`SELECTORS` ("random", "norm_max", "norm_min", "given").
    indices: for ``selector="given"``, a mapping from module path to its row indices.

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
  if selector != "given" and (not isinstance(rank, int | np.integer) or rank <= 0):
    raise ValueError(f"rank must be a positive integer, got {rank!r}")
  if indices is not None:
    unknown = set(indices) - set(paths)
    if unknown:
      raise ValueError(f"indices given for modules not matched by targets: {sorted(unknown)}")
  entries = []
  for path in paths:
    k = kernels[path]
    shape = tuple(int(s) for s in k.shape)
    if selector != "given" and rank > shape[0]:
      raise ValueError(f"rank {rank} is larger than the input width {shape[0]} of module {path!r}")
    kernel_np = None if selector in ("random", "given") else np.asarray(k, np.float64)
    raw = SELECTORS[selector](kernel_np, shape, rank, key, path, indices=indices)
    idx = validate_indices(np.asarray(raw), shape[0], where=f"select({path!r})")
    entries.append(PlanEntry(path, tuple(int(i) for i in np.sort(idx)), shape))
  return Plan(tuple(entries), selector)
