"""Plan-time checks of a logical-axis -> mesh-axis rule table (shared by jaxsteer and paca_jax).

A rule table maps logical axes (``"batch"``, ``"embed"``, ``"mlp"``, ...) to a mesh axis, a tuple
of mesh axes, or ``None``. :func:`check_rules` rejects, before anything is compiled:

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
  batch_spec(DEFAULT_RULES, mesh, (16, 128))       # PartitionSpec for a (16, 128) batch array
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax.sharding import PartitionSpec

__all__ = ["ACTIVATION_AXES", "axes_of", "check_rules", "batch_spec", "safe_batch_rule"]

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
