"""The jitted, donated, sharded train step shared by PaCA, int8 PaCA, LoRA and full fine-tuning.

PaCA (Woo et al., ICLR 2025) writes its trainable rows into the frozen kernels once per optimizer
step. The step here does that write *first* (``method.prepare``), so forward and backward read the
scatter's output and XLA updates the donated kernel buffers in place; the returned kernels are one
update behind, and :meth:`Trainer.flush` (also jitted and donated) writes the final rows before
eval, export or checkpointing.

Sharding is jaxsteer's logical-axis mechanism (``jaxsteer._src.mesh_rules``, also used by
``jaxsteer.load``) with paca_jax's two tables: :data:`PARAM_LOGICAL_AXES` gives every leaf logical
axes from its name (``kernel`` -> ``("in", "out")``, PaCA ``rows`` -> ``("rank", "out")``, ...) and
:data:`DEFAULT_RULES` maps them to mesh axes; a dimension that the mesh axes do not divide stays
replicated.

Usage::

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  trainer = Trainer(paca_jax.Paca(plan), lm_loss_fn(model), optax.adam(1e-3), mesh=mesh)
  state = trainer.init(params)
  for batch in batches:
    state, loss = trainer.step(state, batch)
  state = trainer.flush(state)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxsteer._src import mesh_rules
from jaxsteer._src.mesh_rules import batch_spec, check_rules
from paca_jax._src.models import lm_loss

__all__ = [
  "DEFAULT_RULES",
  "PARAM_LOGICAL_AXES",
  "TrainState",
  "Trainer",
  "logical_axes",
  "tree_shardings",
  "lm_loss_fn",
  "make_mesh",
]

# One table: logical axis name -> mesh axis (or tuple of axes, or None = replicated).
# The batch is ("fsdp", "data"), not ("data", "fsdp"): with the parameter axis "fsdp" minor behind
# "data", XLA's SPMD partitioner (jax 0.7.2 - 0.10.2) returns wrong weight gradients whenever
# |fsdp| == |tensor| and |data| > 1, e.g. on (2, 2, 2) (docs/xla_spmd_bug.md); the Trainer
# rejects tables with that pattern (jaxsteer._src.mesh_rules.check_rules).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("fsdp", "data")),
  ("in", "fsdp"),
  ("out", "tensor"),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("rank", None),
  ("norm", None),
  ("seq", None),
)

# Leaf -> logical axes of its first dims (the rest are None), by regex over the leaf's path (the
# last component is the leaf's name; optimizer states mirror the parameter paths). Leaves matched
# by no pattern are replicated.
PARAM_LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
  (r"(^|/)kernel$", ("in", "out")),
  (r"(^|/)q$", ("in", "out")),
  (r"(^|/)embedding$", ("vocab", "embed")),
  (r"(^|/)bias$", ("out",)),
  (r"(^|/)qscale$", ("out",)),
  (r"(^|/)rows$", ("rank", "out")),
  (r"(^|/)a$", ("in", "rank")),
  (r"(^|/)b$", ("rank", "out")),
  (r"(^|/)scale$", ("norm",)),
)


# A scanned decoder's stacked leaves (``layers/attn/q_proj/kernel`` ``(L, in, out)``, the stacked
# adapters ``layers/.../rows`` ``(L, r, out)``, and the optimizer states mirroring them): their
# leading layer axis is never sharded (every device runs every layer of the scan), the remaining
# dimensions follow the per-layer leaf's axes.
_STACKED = re.compile(r"(^|/)layers/")


def logical_axes(name: str, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of a leaf called ``name`` (or at path ``name``) with ``ndim`` dimensions; a
  stacked ``layers/...`` leaf gets an unsharded leading layer axis."""
  if _STACKED.search(name) and ndim >= 1:
    return (None, *mesh_rules.logical_axes(name, ndim - 1, PARAM_LOGICAL_AXES))
  return mesh_rules.logical_axes(name, ndim, PARAM_LOGICAL_AXES)


def tree_shardings(tree, mesh, rules=DEFAULT_RULES):
  """A ``NamedSharding`` for every leaf of ``tree`` (arrays or ShapeDtypeStructs)."""

  def one(key_path, leaf):
    shape = tuple(np.shape(leaf))
    axes = logical_axes(mesh_rules.key_path_str(key_path), len(shape))
    return NamedSharding(mesh, mesh_rules.logical_spec(axes, shape, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(batch, mesh, rules=DEFAULT_RULES):
  """Leading dimension on the ``batch`` mesh axes; raises ``ValueError`` if they do not divide it."""
  return jax.tree.map(lambda a: NamedSharding(mesh, batch_spec(rules, mesh, np.shape(a))), batch)


def make_mesh(shape: Sequence[int], names: Sequence[str] = ("data", "fsdp", "tensor")):
  return jax.make_mesh(
    tuple(shape), tuple(names), axis_types=(jax.sharding.AxisType.Auto,) * len(shape)
  )


def lm_loss_fn(model) -> Callable:
  """``loss(params, batch)`` for a causal LM: ``batch = {"x": tokens, "y": next tokens}``."""

  def loss(params, batch):
    return lm_loss(model.apply({"params": params}, batch["x"]), batch["y"])

  return loss


class TrainState(NamedTuple):
  frozen: object
  trainable: object
  opt_state: object
  step: jax.Array


class Trainer:
  """Builds the jitted step/flush/eval for one method, optimizer and (optional) mesh.

  Args:
    method: ``Paca``, ``PacaInt8``, ``Lora`` or ``Full`` (a frozen dataclass, static).
    loss_fn: ``loss_fn(params, batch) -> scalar``; called under ``method.context``.
    optimizer: an optax transformation over the trainable tree only.
    mesh: a ``Mesh``; None runs on the default device without explicit shardings.
    rules: the logical-axis rule table.

  Raises:
    ValueError: the mesh has an axis the rules do not know, or the rules put a parameter axis
      minor in the batch tuple (the XLA SPMD bug, docs/xla_spmd_bug.md).
  """

  def __init__(self, method, loss_fn, optimizer, *, mesh=None, rules=DEFAULT_RULES):
    if mesh is not None:
      check_rules(rules, mesh)
    self.method = method
    self.loss_fn = loss_fn
    self.optimizer = optimizer
    self.mesh = mesh
    self.rules = rules
    self._step = None
    self._flush = None
    self._eval = None

  # -- state

  def init(self, params, key=None) -> TrainState:
    """Splits ``params`` into frozen/trainable, places them on the mesh, builds the optimizer."""
    frozen, trainable = self.method.init(params, key)
    # Copies: the step donates its state, and the caller's ``params`` must stay valid.
    frozen, trainable = jax.tree.map(lambda a: jnp.array(a, copy=True), (frozen, trainable))
    if self.mesh is None:
      # Committed placement, so that states restored from a checkpoint (committed) hit the same
      # compiled step as fresh ones.
      frozen, trainable = jax.device_put((frozen, trainable), jax.devices()[0])
    else:
      sh = (tree_shardings(frozen, self.mesh, self.rules),)
      sh += (tree_shardings(trainable, self.mesh, self.rules),)
      frozen, trainable = jax.device_put((frozen, trainable), sh)
    opt_abs = jax.eval_shape(self.optimizer.init, trainable)
    opt_sh = None if self.mesh is None else tree_shardings(opt_abs, self.mesh, self.rules)
    opt_state = jax.jit(self.optimizer.init, out_shardings=opt_sh)(trainable)
    step = jnp.zeros((), jnp.int32)
    if self.mesh is not None:
      step = jax.device_put(step, NamedSharding(self.mesh, PartitionSpec()))
    else:
      opt_state, step = jax.device_put((opt_state, step), jax.devices()[0])
    return TrainState(frozen, trainable, opt_state, step)

  def state_shardings(self, state):
    if self.mesh is None:
      return None
    return TrainState(
      tree_shardings(state.frozen, self.mesh, self.rules),
      tree_shardings(state.trainable, self.mesh, self.rules),
      tree_shardings(state.opt_state, self.mesh, self.rules),
      NamedSharding(self.mesh, PartitionSpec()),
    )

  def shard_batch(self, batch):
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, batch)
    return jax.device_put(batch, batch_sharding(batch, self.mesh, self.rules))

  # -- compiled functions

  def _loss(self, frozen, trainable, batch):
    with self.method.context(frozen, trainable):
      return self.loss_fn(self.method.model_params(frozen, trainable), batch)

  def _build(self, state, batch):
    method, opt = self.method, self.optimizer

    def step(state, batch):
      frozen = method.prepare(state.frozen, state.trainable)  # rows in, at the start (sec. 7.2)
      loss, grads = jax.value_and_grad(lambda t: self._loss(frozen, t, batch))(state.trainable)
      updates, opt_state = opt.update(grads, state.opt_state, state.trainable)
      trainable = optax.apply_updates(state.trainable, updates)
      return TrainState(frozen, trainable, opt_state, state.step + 1), loss

    def evaluate(state, batch):
      return self._loss(state.frozen, state.trainable, batch)

    if self.mesh is None:
      self._step = jax.jit(step, donate_argnums=(0,))
      self._eval = jax.jit(evaluate)
    else:
      s_sh = self.state_shardings(state)
      b_sh = batch_sharding(batch, self.mesh, self.rules)
      rep = NamedSharding(self.mesh, PartitionSpec())
      self._step = jax.jit(
        step, in_shardings=(s_sh, b_sh), out_shardings=(s_sh, rep), donate_argnums=(0,)
      )
      self._eval = jax.jit(evaluate, in_shardings=(s_sh, b_sh), out_shardings=rep)

  def lower_step(self, state, batch):
    """The lowered step (for HLO / memory inspection); does not run it."""
    batch = self.shard_batch(batch)
    if self._step is None:
      self._build(state, batch)
    return self._step.lower(state, batch)

  def step(self, state: TrainState, batch) -> tuple[TrainState, jax.Array]:
    """One optimizer step. Donates ``state``: do not reuse the argument afterwards."""
    batch = self.shard_batch(batch)
    if self._step is None:
      self._build(state, batch)
    return self._step(state, batch)

  def flush(self, state: TrainState) -> TrainState:
    """Writes the current PaCA rows into the (donated) kernels; a no-op for other methods."""
    if self._flush is None:
      method = self.method

      def flush(state):
        return state._replace(frozen=method.prepare(state.frozen, state.trainable))

      if self.mesh is None:
        self._flush = jax.jit(flush, donate_argnums=(0,))
      else:
        s_sh = self.state_shardings(state)
        self._flush = jax.jit(flush, in_shardings=(s_sh,), out_shardings=s_sh, donate_argnums=(0,))
    return self._flush(state)

  def eval_loss(self, state: TrainState, batch) -> jax.Array:
    """Loss on ``batch``; ``state`` must be flushed (``flush``) after its last step."""
    batch = self.shard_batch(batch)
    if self._eval is None:
      self._build(state, batch)
    return self._eval(state, batch)

  def merged_params(self, state: TrainState):
    """A plain params tree with the adapter merged (a fresh copy; ``state`` stays valid)."""
    return jax.jit(self.method.merge)(state.frozen, state.trainable)
