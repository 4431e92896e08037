"""Logical-axis sharding: the one mechanism jaxsteer (model loading) and paca_jax (training) use.

Two tables, both plain data, say how a parameter tree is laid out on a mesh:

* an **axes table** ``((regex, (logical axis | None, ...)), ...)`` gives each leaf logical axes
  from its ``/``-joined path (``layers_0/attn/q_proj/kernel``; inside optimizer states the path
  of the parameter it mirrors, e.g. ``mu/layers_0/attn/q_proj/kernel``): the first pattern that
  ``re.search`` finds wins, and its axes name the leading dimensions (truncated to the leaf's
  rank; the rest ``None``). jaxsteer's is ``jaxsteer.models.PARAM_LOGICAL_AXES`` (module
  paths), paca_jax's is ``paca_jax.PARAM_LOGICAL_AXES`` (leaf names: kernel, rows, a, b, ...);
* a **rule table** ``((logical axis, mesh axis | (mesh axes...) | None), ...)`` (the format of
  Flax's ``nn.logical_axis_rules``, one entry per logical axis) maps logical axes (``"batch"``,
  ``"embed"``, ``"mlp"``, ...) to mesh axes: ``jaxsteer.models.DEFAULT_RULES``,
  ``paca_jax.DEFAULT_RULES``.

:func:`tree_shardings` / :func:`leaf_spec` turn both into ``NamedSharding``s / ``PartitionSpec``s;
mesh axes missing from the mesh, already used by an earlier dimension of the same leaf, or not
dividing the dimension leave it replicated. :func:`batch_spec` shards an input's leading dimension
on the ``batch`` rule. :func:`check_rules` rejects, before anything is compiled:

* a mesh axis of size > 1 that no rule maps to (everything would silently replicate over it);
* the known-bad XLA SPMD pattern (docs/xla_spmd_bug.md): an activation dimension sharded on a
  tuple of mesh axes ``(A, B)`` with ``|A| > 1`` whose *minor* axis ``B`` also shards a parameter
  dimension. XLA's SPMD partitioner (jax/jaxlib 0.7.2 - 0.10.2, GSPMD and Shardy) reorders the
  activation rows of ``x @ w`` with ``x: P((A, B), C)``, ``w: P(C, B)`` through a
  collective-permute that it never undoes when ``|B| = |C|``: the loss is right, the gradients are
  wrong (18 of 21 leaves for full fine-tuning on a (2, 2, 2) mesh). Writing the batch as
  ``("fsdp", "data")`` (the parameter axis major) avoids it; that is what the default tables do.

The check is deliberately wider than the measured trigger (it ignores ``|B| = |C|``): the
reordered tuple is always available and shards the same rows over the same devices, so rejecting
a table costs the user nothing but a swap, while accepting a bad one gives silently wrong training.

Usage::

  check_rules(DEFAULT_RULES, mesh)                 # raises ValueError naming the problem
  shardings = tree_shardings(params, mesh, DEFAULT_RULES, PARAM_LOGICAL_AXES)
  batch_spec(DEFAULT_RULES, mesh, (16, 128))       # PartitionSpec for a (16, 128) batch array
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = [
  "ACTIVATION_AXES",
  "axes_of",
  "batch_spec",
  "check_rules",
  "key_path_str",
  "leaf_spec",
  "logical_axes",
  "logical_spec",
  "safe_batch_rule",
  "tree_shardings",
]

# Rule tables and axes tables (see the module docstring).
Rules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]
AxesTable = Sequence[tuple[str, tuple["str | None", ...]]]

# Logical axes that name activation (input) dimensions rather than parameter dimensions.
ACTIVATION_AXES = ("batch", "seq", "length")


def axes_of(target) -> tuple[str, ...]:
  """The mesh axes of one rule's right-hand side (``None``, a name or a tuple of names)."""
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def _param_mesh_axes(rules) -> set[str]:
  return {a for name, t in rules if name not in ACTIVATION_AXES for a in axes_of(t)}


def safe_batch_rule(rules) -> tuple[tuple[str, object], ...]:
  """``rules`` with every activation rule's mesh axes reordered: parameter axes first.

  A tuple rule ``("batch", ("data", "fsdp"))`` becomes ``("batch", ("fsdp", "data"))``, which
  shards the same dimension over the same devices (in another row order) and avoids the XLA bug.
  """
  params = _param_mesh_axes(rules)
  out = []
  for name, target in rules:
    if name in ACTIVATION_AXES and not isinstance(target, str | None):
      t = tuple(target)
      target = tuple([a for a in t if a in params] + [a for a in t if a not in params])
    out.append((name, target))
  return tuple(out)


def check_rules(rules: Sequence[tuple[str, object]], mesh) -> None:
  """Raises ``ValueError`` if ``rules`` cannot shard correctly on ``mesh`` (see module docstring).

  Args:
    rules: ``((logical_axis, mesh_axis | (mesh_axes...) | None), ...)``.
    mesh: a ``jax.sharding.Mesh`` (or anything with a ``shape`` mapping of axis name -> size).
  """
  shape = dict(mesh.shape)
  known = {a for _, t in rules for a in axes_of(t)}
  unknown = [a for a, n in shape.items() if n > 1 and a not in known]
  if unknown:
    raise ValueError(
      f"mesh axes {unknown} are not used by any sharding rule (the rules know "
      f"{sorted(known)}); rename the mesh axes or pass rules that map a logical axis to them"
    )
  params = _param_mesh_axes(rules)
  for name, target in rules:
    if name not in ACTIVATION_AXES:
      continue
    present = [a for a in axes_of(target) if a in shape]
    for i, b in enumerate(present):
      major = int(np.prod([shape[a] for a in present[:i]])) if i else 1
      if b in params and shape[b] > 1 and major > 1:
        good = tuple([a for a in present if a in params] + [a for a in present if a not in params])
        raise ValueError(
          f"rule {name!r} -> {tuple(present)} puts the parameter axis {b!r} minor behind "
          f"{tuple(present[:i])} (size {major}); XLA's SPMD partitioner computes wrong gradients "
          f"for this layout (docs/xla_spmd_bug.md). Write {name!r} -> {good} instead"
        )


def batch_spec(rules, mesh, shape: Sequence[int], name: str = "batch") -> PartitionSpec:
  """``PartitionSpec`` of an activation array whose leading dimension is ``name``.

  Raises:
    ValueError: the leading dimension is not divisible by the product of the batch mesh axes.
  """
  mshape = dict(mesh.shape)
  axes = tuple(a for a in axes_of(dict(rules).get(name)) if a in mshape and mshape[a] > 1)
  rest = (None,) * (len(shape) - 1)
  if not axes or not len(shape):
    return PartitionSpec(*((None,) + rest if len(shape) else ()))
  size = int(np.prod([mshape[a] for a in axes]))
  if shape[0] % size:
    raise ValueError(
      f"batch of {shape[0]} rows is not divisible by the {size} devices of the batch mesh axes "
      f"{axes} (mesh {mshape}); use a multiple of {size} rows"
    )
  return PartitionSpec(axes[0] if len(axes) == 1 else axes, *rest)


# --------------------------------------------------------------------------------------------
# From the tables to PartitionSpecs / NamedShardings.


def logical_axes(path: str, ndim: int, table: AxesTable) -> tuple[str | None, ...]:
  """Logical axes of the leaf at ``path`` (``a/b/c``; a bare leaf name works too) of rank ``ndim``.

  The first ``(regex, axes)`` of ``table`` that ``re.search`` finds in ``path`` gives the axes of
  the leading dimensions (cut to ``ndim``); the remaining dimensions, and leaves no pattern
  matches, get ``None``.
  """
  for pattern, axes in table:
    if re.search(pattern, path):
      axes = tuple(axes)[:ndim]
      return axes + (None,) * (ndim - len(axes))
  return (None,) * ndim


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules):
  """``PartitionSpec`` of an array of ``shape`` whose dimensions have logical ``axes``.

  Each dimension takes the mesh axes its rule names that are in ``mesh`` and not used by an
  earlier dimension; it stays replicated if there are none or their size does not divide it.
  """
  table = dict(rules)
  spec, used = [], set()
  for dim, name in zip(shape, axes):
    names = tuple(a for a in axes_of(table.get(name) if name else None) if a in mesh.shape)
    names = tuple(a for a in names if a not in used)
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    if not names or dim % size:
      spec.append(None)
      continue
    used.update(names)
    spec.append(names[0] if len(names) == 1 else names)
  return PartitionSpec(*spec)


def leaf_spec(path: str, shape: Sequence[int], mesh, rules: Rules, table: AxesTable):
  """``PartitionSpec`` of the leaf at ``path`` with ``shape``: :func:`logical_axes`, then
  :func:`logical_spec`."""
  return logical_spec(logical_axes(path, len(shape), table), shape, mesh, rules)


def key_path_str(key_path) -> str:
  """``a/b/c`` from a ``jax.tree_util`` key path: dict keys and attribute names (optimizer state
  fields such as ``mu``); sequence indices are left out, so a leaf keeps its parameter's name."""
  parts = []
  for k in key_path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
  return "/".join(parts)


def tree_shardings(tree, mesh, rules: Rules, table: AxesTable):
  """A ``NamedSharding`` for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s; nested
  dicts, optimizer states, any pytree), from its path (:func:`key_path_str`) and shape."""

  def one(key_path, leaf):
    shape = tuple(np.shape(leaf))
    return NamedSharding(mesh, leaf_spec(key_path_str(key_path), shape, mesh, rules, table))

  return jax.tree_util.tree_map_with_path(one, tree)
