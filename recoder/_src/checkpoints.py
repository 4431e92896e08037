"""Checkpoints of ``recoder.train`` runs: orbax managers, the format version, the settings check
on resume (issue 17) and the fallback past a damaged newest checkpoint.

A checkpoint step holds ``state`` (a pytree: params, optimizer state with the learning rate,
plateau state, LSTM state, anchors) and ``meta`` (JSON: progress, history, settings, format).
Orbax writes each step to a temporary folder and renames it when complete, so a crash never
leaves a step that looks complete but is not; a torn one (a full disk) is skipped with a warning.

Usage::

  mngr, best = open_managers(run_dir)
  save_checkpoint(mngr, step, state, meta)
  params = restore_params(run_dir)  # the best checkpoint's {"lm", "step"}
"""

from __future__ import annotations

import pathlib
import warnings

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

__all__ = [
  "CHECKPOINT_FORMAT",
  "SHAPE_SETTINGS",
  "CheckpointWarning",
  "check_format",
  "check_resume_settings",
  "newest_meta",
  "open_managers",
  "restore_latest_intact",
  "restore_params",
  "save_checkpoint",
]

# Version of what a checkpoint holds. 1 (no "format" in its metadata): the learning rate and the
# best validation perplexity in the JSON metadata, the optimizer state without them. 2: the
# learning rate in the optimizer state (inject_hyperparams), the plateau state beside it.
CHECKPOINT_FORMAT = 2


# Settings that fix the shapes of the stored state: a resume with others cannot work.
SHAPE_SETTINGS = frozenset(
  "batch_size emb hidden layers members mlp_hidden optimizer prefix signal step_type tied".split()
)


def check_resume_settings(stored: dict, now: dict, *, override: bool, where) -> list[str]:
  """Names of the settings that differ; raises ``ValueError`` unless they may be overridden."""
  diff = sorted(k for k in set(stored) | set(now) if stored.get(k, "?") != now.get(k, "?"))
  if not diff:
    return []
  desc = ", ".join(f"--{k.replace('_', '-')} {stored.get(k)!r} -> {now.get(k)!r}" for k in diff)
  shape = [k for k in diff if k in SHAPE_SETTINGS]
  if shape:
    raise ValueError(
      f"the checkpoint in {where} was written with other model settings ({desc}); they fix "
      "the shapes of the saved state, so resume with the original values or use a new --out"
    )
  if not override:
    raise ValueError(
      f"the checkpoint in {where} was written with other settings ({desc}); resume with the "
      "original values, use a new --out, or pass --override-settings"
    )
  return diff


class CheckpointWarning(UserWarning):
  """A damaged checkpoint was skipped."""


def restore_latest_intact(mngr, restore, where) -> tuple[int | None, object]:
  """``(step, restore(step))`` for the newest checkpoint of ``mngr`` that restores.

  A damaged (torn) newer checkpoint is reported with a ``CheckpointWarning`` and deleted (the
  library wrote it and nothing can read it); ``(None, None)`` when there is none. Raises
  ``ValueError`` when every checkpoint is damaged.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      return step, restore(step)
    except Exception as e:  # orbax raises many types for damaged files
      nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
      warnings.warn(
        f"checkpoint step {step} in {where} is damaged ({type(e).__name__}: {str(e)[:200]}); {nxt}",
        CheckpointWarning,
        stacklevel=2,
      )
  if steps:
    raise ValueError(f"every checkpoint in {where} (steps {steps}) is damaged; use a new --out")
  return None, None


def newest_meta(mngr) -> dict | None:
  """The JSON metadata of the newest checkpoint whose metadata reads (damaged ones skipped)."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # a damaged step: restore_latest_intact reports it
      continue
    if isinstance(meta, dict):
      return meta
  return None


def check_format(meta: dict, where) -> None:
  fmt = meta.get("format", 1)
  if fmt != CHECKPOINT_FORMAT:
    raise ValueError(
      f"the checkpoint in {where} has format {fmt} (written by an older recoder.train, with the "
      f"learning rate outside the optimizer state); this version writes format "
      f"{CHECKPOINT_FORMAT} and cannot resume it: use a new --out (recoder.evaluate still reads "
      "its parameters)"
    )


def restore_params(run_dir, like=None, *, which: str = "best"):
  """Parameters ``{"lm", "step"}`` of the ``best`` (or ``latest``) checkpoint of ``run_dir``.

  Reads checkpoints of every format (only the parameters are restored).
  """
  del like  # kept for callers that pass it; the stored structure is restored as saved
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  run_dir = pathlib.Path(run_dir).resolve()
  sub = run_dir / ("best" if which == "best" else "ckpt")
  mngr = ocp.CheckpointManager(sub, options=ocp.CheckpointManagerOptions(read_only=True))

  def restore(step):
    return mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )

  step, restored = restore_latest_intact(mngr, restore, sub)
  mngr.close()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {sub}")
  return jax.tree_util.tree_map(jnp.asarray, restored["state"]["params"])


def open_managers(out: pathlib.Path):
  opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  return ocp.CheckpointManager(out / "ckpt", options=opts), ocp.CheckpointManager(
    out / "best", options=opts
  )


def save_checkpoint(mngr, step: int, state: dict, meta: dict) -> None:
  """Saves (replacing) ``step``; orbax writes a temporary folder and renames it when complete."""
  if step in mngr.all_steps():
    mngr.delete(step)
  mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )
  mngr.wait_until_finished()
