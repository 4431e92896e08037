"""Training of (recoding) LSTM language models with truncated BPTT, orbax checkpoints and resume.

Reference settings (Ulmer's code; Zaremba et al. 2014; PyTorch word_language_model): SGD lr 20,
gradient clipping 0.25 (global norm), BPTT 35, learning rate / 4 after an epoch whose validation
perplexity does not improve. Adam is available with ``--optimizer adam``.

Usage::

  python -m recoder.train --data /work/shared/data/ptb --out runs/ptb_small \
      --emb 200 --hidden 200 --layers 2 --dropout 0.2 --tied --epochs 6 --batch-size 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from recoder._src import data as data_lib
from recoder._src.model import (
  LSTMLM,
  LMConfig,
  check_token_ids,
  init_params,
  lm_forward,
  zero_state,
)
from recoder._src.recode import RecodingConfig, init_step_params

__all__ = [
  "TrainConfig",
  "build_parser",
  "cli",
  "main",
  "train",
  "make_train_step",
  "make_eval_step",
  "restore_latest_intact",
  "CheckpointWarning",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings (static)."""

  optimizer: str = "sgd"
  lr: float = 20.0
  clip: float = 0.25
  weight_decay: float = 0.0
  lr_decay: float = 0.25
  decay_start: int = 0
  bptt: int = 35
  batch_size: int = 64
  eval_batch_size: int = 10
  epochs: int = 8
  step_size: float = 0.0
  prior_scale: float = 0.2855508637554569
  data_noise: float = 0.1
  seed: int = 0

  def __post_init__(self):
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.lr <= 0 or self.clip <= 0 or self.bptt <= 0 or self.batch_size <= 0:
      raise ValueError("lr, clip, bptt and batch_size must be positive")
    if not 0 <= self.weight_decay < 1:
      # The author's ensemble config has 4.815e-0 (a typo for 4.815e-05); refuse such values.
      raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
    if self.step_size < 0 or not math.isfinite(self.step_size):
      raise ValueError(f"step size must be finite and non-negative, got {self.step_size}")


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """clip -> weight decay (LM params only) -> (Adam scaling); the learning rate is applied
  outside so that it can change without recompiling."""

  def decay_mask(p):
    return {
      "lm": jax.tree_util.tree_map(lambda _: True, p["lm"]),
      "step": jax.tree_util.tree_map(lambda _: False, p["step"]),
    }

  parts = [optax.clip_by_global_norm(tc.clip)]
  if tc.weight_decay > 0:
    parts.append(optax.add_decayed_weights(tc.weight_decay, mask=decay_mask))
  if tc.optimizer == "adam":
    parts.append(optax.scale_by_adam())
  return optax.chain(*parts)


def anchor_penalty(lm_params, anchors, tc: TrainConfig, n_train: int):
  """Anchored-ensemble regulariser (Pearce et al. 2018): lambda/N sum_k ||theta_k - a_k||^2."""
  if not anchors:
    return 0.0
  lam = tc.data_noise / tc.prior_scale
  sq = sum(
    jnp.sum((lm_params[k] - anchors[k]) ** 2) for k in ("decoder_w", "decoder_b") if k in anchors
  )
  return lam / n_train * sq


def make_train_step(model, rc: RecodingConfig, tc: TrainConfig, n_train: int):
  tx = make_optimizer(tc)

  def train_step(params, opt_state, anchors, hidden, x, y, key, lr, step_size):
    def loss_fn(p):
      out = lm_forward(
        model,
        p["lm"],
        x,
        y,
        hidden,
        recoding=rc,
        step_size=step_size,
        step_params=p["step"],
        key=key,
        train=True,
      )
      nll = jnp.mean(out.nll)
      return nll + anchor_penalty(p["lm"], anchors, tc, n_train), (nll, out.state)

    (_, (nll, new_hidden)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state, jax.lax.stop_gradient(new_hidden), nll

  return tx, jax.jit(train_step, donate_argnums=(0, 1, 3))


def make_eval_step(model, rc: RecodingConfig):
  def eval_step(params, hidden, x, y, key, step_size):
    out = lm_forward(
      model,
      params["lm"],
      x,
      y,
      hidden,
      recoding=rc,
      step_size=step_size,
      step_params=params["step"],
      key=key,
      train=False,
    )
    return out.nll, out.state

  return jax.jit(eval_step)


def evaluate_ids(eval_step, model, params, ids, *, batch_size, bptt, step_size, key, desc=None):
  """Perplexity of a 1-d id stream cut into ``batch_size`` streams (state carried over).

  Every window has length ``bptt`` (the last one is padded and masked), so ``eval_step``
  compiles once.
  """
  check_token_ids(ids, model.cfg.vocab_size)
  streams = data_lib.batchify(ids, batch_size)
  hidden = zero_state(model.cfg, streams.shape[0])
  total, count = 0.0, 0
  it = data_lib.bptt_batches(streams, bptt)
  n = data_lib.num_bptt_batches(streams, bptt)
  for i, (x, y) in enumerate(tqdm(it, total=n, desc=desc, disable=desc is None, leave=False)):
    t = x.shape[1]
    if t < bptt:  # pad the last window (causal model: padding never changes earlier positions)
      x = np.pad(x, ((0, 0), (0, bptt - t)))
      y = np.pad(y, ((0, 0), (0, bptt - t)))
    nll, hidden = eval_step(params, hidden, x, y, jax.random.fold_in(key, i), step_size)
    total += float(jnp.sum(nll[:, :t]))
    count += t * x.shape[0]
  return math.exp(total / count), count


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  from jaxsteer._src.cliutil import (
    OneLineParser,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
  )

  def dropout(text):
    v = finite_float(text)
    if not 0 <= v < 1:
      raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return v

  p = OneLineParser(prog="python -m recoder.train", description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True, help="directory with ptb.{train,valid,test}.txt")
  p.add_argument("--out", required=True, help="run directory (checkpoints, config, log)")
  p.add_argument("--prefix", default="ptb.", help="corpus file prefix")
  p.add_argument("--emb", type=positive_int, default=200)
  p.add_argument("--hidden", type=positive_int, default=200)
  p.add_argument("--layers", type=positive_int, default=2)
  p.add_argument("--dropout", type=dropout, default=0.2)
  p.add_argument("--tied", action="store_true")
  p.add_argument("--members", type=positive_int, default=1, help="anchored-ensemble decoders K")
  p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
  p.add_argument("--lr", type=positive_float, default=20.0)
  p.add_argument("--clip", type=positive_float, default=0.25)
  p.add_argument("--weight-decay", type=finite_float, default=0.0)
  p.add_argument("--lr-decay", type=positive_float, default=0.25)
  p.add_argument(
    "--decay-start",
    type=non_negative_int,
    default=0,
    help="also multiply the lr by --lr-decay after every epoch >= this one (0 = plateau only)",
  )
  p.add_argument("--bptt", type=positive_int, default=35)
  p.add_argument("--batch-size", type=positive_int, default=64)
  p.add_argument("--eval-batch-size", type=positive_int, default=10)
  p.add_argument("--epochs", type=positive_int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--signal", default="none", help="recoding error signal (none = plain LSTM)")
  p.add_argument("--step-type", default="fixed", choices=["fixed", "learned", "mlp"])
  p.add_argument("--step-size", type=float, default=0.0)
  p.add_argument("--num-samples", type=positive_int, default=10)
  p.add_argument("--mc-dropout", type=dropout, default=0.2)
  p.add_argument("--target", default="gold", choices=["gold", "argmax"])
  p.add_argument("--second-order", action="store_true")
  p.add_argument("--prior-scale", type=positive_float, default=0.2855508637554569)
  p.add_argument("--data-noise", type=positive_float, default=0.1)
  p.add_argument(
    "--max-train-tokens", type=non_negative_int, default=0, help="use only a prefix (0 = all)"
  )
  p.add_argument(
    "--max-eval-tokens", type=non_negative_int, default=0, help="valid/test prefix (0 = all)"
  )
  p.add_argument(
    "--max-steps", type=non_negative_int, default=0, help="stop after this global step (0 = off)"
  )
  p.add_argument("--ckpt-every", type=positive_int, default=200, help="checkpoint every N steps")
  p.add_argument(
    "--override-settings",
    action="store_true",
    help="resume a run although training settings (lr, epochs, ...) differ from its checkpoint; "
    "settings that change the model's shape are refused regardless",
  )
  p.add_argument("--no-progress", action="store_true")
  return p


# Arguments that do not change what a run computes (where it stops, how often it saves, where
# the data lives): free to differ on resume. Every other argument is a stored run setting.
NON_SETTINGS = frozenset(
  {"data", "out", "max_steps", "ckpt_every", "no_progress", "override_settings"}
)
# Settings that fix the shapes of the stored state: a resume with others cannot work.
SHAPE_SETTINGS = frozenset(
  {"emb", "hidden", "layers", "tied", "members", "signal", "step_type", "batch_size", "prefix"}
)


def run_settings(args) -> dict:
  """The run's settings: every argument but ``NON_SETTINGS`` (JSON-able)."""
  return {k: v for k, v in sorted(vars(args).items()) if k not in NON_SETTINGS}


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


def configs_from_args(args, vocab_size):
  lm = LMConfig(
    vocab_size=vocab_size,
    embed_dim=args.emb,
    hidden_dim=args.hidden,
    num_layers=args.layers,
    dropout=args.dropout,
    tie_weights=args.tied,
    num_members=args.members,
  )
  rc = RecodingConfig(
    signal=args.signal,
    step_type=args.step_type,
    num_samples=args.num_samples,
    mc_dropout=args.mc_dropout,
    target=args.target,
    second_order=args.second_order,
  )
  tc = TrainConfig(
    optimizer=args.optimizer,
    lr=args.lr,
    clip=args.clip,
    weight_decay=args.weight_decay,
    lr_decay=args.lr_decay,
    decay_start=args.decay_start,
    bptt=args.bptt,
    batch_size=args.batch_size,
    eval_batch_size=args.eval_batch_size,
    epochs=args.epochs,
    step_size=args.step_size,
    prior_scale=args.prior_scale,
    data_noise=args.data_noise,
    seed=args.seed,
  )
  return lm, rc, tc


def _slice(ids, n):
  return ids[:n] if n and n > 0 else ids


def load_data(args):
  corpus = data_lib.load_corpus(args.data, prefix=args.prefix)
  return (
    corpus,
    _slice(corpus.train, args.max_train_tokens),
    _slice(corpus.valid, args.max_eval_tokens),
    _slice(corpus.test, args.max_eval_tokens),
  )


def init_train_state(model, rc, tc, key):
  k_lm, k_step, k_anchor = jax.random.split(key, 3)
  lm = init_params(model, k_lm)
  cfg = model.cfg
  anchors = {}
  if cfg.num_members > 1:
    std = math.sqrt(tc.prior_scale)
    ka, kb = jax.random.split(k_anchor)
    anchors = {
      "decoder_w": std * jax.random.normal(ka, lm["decoder_w"].shape),
      "decoder_b": std * jax.random.normal(kb, lm["decoder_b"].shape),
    }
    # Members start at their anchors (Pearce et al. 2018); copies, since params are donated.
    lm = {**lm, **jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), anchors)}
  params = {"lm": lm, "step": init_step_params(k_step, rc, cfg.num_layers, cfg.hidden_dim)}
  return params, anchors


def _atomic_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  os.replace(tmp, path)


def save_run_config(out: pathlib.Path, args, lm, rc, tc):
  _atomic_json(
    out / "config.json",
    {
      "args": {k: v for k, v in vars(args).items() if k != "override_settings"},
      "lm": dataclasses.asdict(lm),
      "recoding": dataclasses.asdict(rc),
      "train": dataclasses.asdict(tc),
    },
  )


def train(args) -> dict:
  """Runs (or resumes) training; returns a summary dict (also written to ``out/summary.json``)."""
  out = pathlib.Path(args.out).resolve()
  corpus, train_ids, valid_ids, test_ids = load_data(args)  # bad data: fail before any write
  out.mkdir(parents=True, exist_ok=True)
  lm_cfg, rc, tc = configs_from_args(args, corpus.vocab.size)
  model = LSTMLM(lm_cfg)

  key = jax.random.key(tc.seed)
  params, anchors = init_train_state(model, rc, tc, key)
  tx, train_step = make_train_step(model, rc, tc, int(train_ids.shape[0]))
  eval_step = make_eval_step(model, rc)
  opt_state = tx.init(params)
  check_token_ids(train_ids, lm_cfg.vocab_size, "training ids")
  streams = data_lib.batchify(train_ids, tc.batch_size)
  n_batches = data_lib.num_bptt_batches(streams, tc.bptt, drop_last=True)
  hidden = zero_state(lm_cfg, tc.batch_size)
  meta = {
    "global_step": 0,
    "epoch": 0,
    "batch": 0,
    "lr": tc.lr,
    "best_valid_ppl": None,
    "history": [],
    "train_seconds": 0.0,
    "train_tokens": 0,
  }

  opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  mngr = ocp.CheckpointManager(out / "ckpt", options=opts)
  best_mngr = ocp.CheckpointManager(out / "best", options=opts)
  state = {"params": params, "opt_state": opt_state, "hidden": hidden, "anchors": anchors}
  settings = run_settings(args)
  changed = []
  if mngr.all_steps():  # resuming: the stored settings must match (checked before restoring)
    stored = _stored_settings(mngr, out)
    if stored is not None:
      changed = check_resume_settings(
        stored, settings, override=args.override_settings, where=out / "ckpt"
      )
      if changed:
        print(f"warning: resuming {out} with changed settings {changed}", file=sys.stderr)
  save_run_config(out, args, lm_cfg, rc, tc)
  like = jax.tree_util.tree_map(np.asarray, state)

  def restore(step):
    return mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()),
    )

  latest, restored = restore_latest_intact(mngr, restore, out / "ckpt")
  if latest is not None:
    for step in mngr.all_steps():  # damaged newer steps (warned about above)
      if step > latest:
        mngr.delete(step)
    state = jax.tree_util.tree_map(jnp.asarray, restored["state"])
    meta = restored["meta"]
    print(f"resumed from step {latest} (epoch {meta['epoch']}, batch {meta['batch']})")
    if "lr" in changed:  # an overridden --lr restarts the schedule from the new value
      meta["lr"] = tc.lr
  meta["settings"] = settings

  def save(m, step):
    if step in m.all_steps():
      m.delete(step)
    m.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    m.wait_until_finished()

  eval_key = jax.random.key(tc.seed + 1)
  step_size = jnp.float32(tc.step_size)
  ev = dict(batch_size=tc.eval_batch_size, bptt=tc.bptt, step_size=step_size, key=eval_key)
  done = False
  while meta["epoch"] < tc.epochs and not done:
    epoch = meta["epoch"]
    bar = tqdm(
      total=n_batches,
      initial=meta["batch"],
      desc=f"epoch {epoch + 1}/{tc.epochs}",
      disable=args.no_progress,
      mininterval=5.0,
      file=sys.stderr,
    )
    t0, tok0 = time.perf_counter(), 0
    losses = []
    for b, (x, y) in enumerate(data_lib.bptt_batches(streams, tc.bptt, drop_last=True)):
      if b < meta["batch"]:
        continue
      k = jax.random.fold_in(key, meta["global_step"] + 1)
      p, o, h, nll = train_step(
        state["params"],
        state["opt_state"],
        state["anchors"],
        state["hidden"],
        x,
        y,
        k,
        jnp.float32(meta["lr"]),
        step_size,
      )
      state = {"params": p, "opt_state": o, "hidden": h, "anchors": state["anchors"]}
      meta["global_step"] += 1
      meta["batch"] = b + 1
      tok0 += y.size
      losses.append(nll)
      if len(losses) >= 50 or b == n_batches - 1:
        ls = float(jnp.mean(jnp.stack(losses)))
        losses = []
        bar.set_postfix(ppl=f"{math.exp(min(ls, 50)):.1f}", lr=f"{meta['lr']:.3g}")
      bar.update(1)
      if meta["global_step"] % args.ckpt_every == 0:
        meta["train_seconds"] += time.perf_counter() - t0
        meta["train_tokens"] += tok0
        t0, tok0 = time.perf_counter(), 0
        save(mngr, meta["global_step"])
      if args.max_steps and meta["global_step"] >= args.max_steps:
        done = True
        break
    bar.close()
    meta["train_seconds"] += time.perf_counter() - t0
    meta["train_tokens"] += tok0
    if done and meta["batch"] < n_batches:
      save(mngr, meta["global_step"])
      break
    # End of epoch: validate, maybe decay the learning rate, keep the best parameters.
    val_ppl, _ = evaluate_ids(
      eval_step,
      model,
      state["params"],
      valid_ids,
      desc=None if args.no_progress else "valid",
      **ev,
    )
    improved = meta["best_valid_ppl"] is None or val_ppl < meta["best_valid_ppl"]
    meta["history"].append(
      {
        "epoch": epoch + 1,
        "valid_ppl": val_ppl,
        "lr": meta["lr"],
        "train_seconds": meta["train_seconds"],
      }
    )
    print(json.dumps(meta["history"][-1]), flush=True)
    if improved:
      meta["best_valid_ppl"] = val_ppl
    if not improved or (tc.decay_start and epoch + 1 >= tc.decay_start):
      meta["lr"] *= tc.lr_decay
    meta["epoch"] = epoch + 1
    meta["batch"] = 0
    if improved:
      save(best_mngr, meta["global_step"])
    save(mngr, meta["global_step"])

  # Final evaluation of the best parameters.
  best_step = best_mngr.latest_step()
  summary = {"run": str(out), "global_step": meta["global_step"], "history": meta["history"]}
  if best_step is not None and meta["epoch"] >= tc.epochs:
    params = restore_params(out, state["params"])
    val_ppl, _ = evaluate_ids(eval_step, model, params, valid_ids, **ev)
    test_ppl, _ = evaluate_ids(eval_step, model, params, test_ids, **ev)
    summary.update(
      valid_ppl=val_ppl,
      test_ppl=test_ppl,
      epochs=meta["epoch"],
      train_seconds=meta["train_seconds"],
      train_tokens_per_s=meta["train_tokens"] / max(meta["train_seconds"], 1e-9),
    )
    _atomic_json(out / "summary.json", summary)
    print(json.dumps(summary), flush=True)
  mngr.close()
  best_mngr.close()
  summary["params"] = state["params"]
  return summary


def _stored_settings(mngr, out: pathlib.Path) -> dict | None:
  """Settings stored with the newest readable checkpoint's metadata, else ``config.json``'s."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # a damaged step: restore_latest_intact reports it
      continue
    if isinstance(meta, dict) and isinstance(meta.get("settings"), dict):
      return meta["settings"]
    break
  try:
    args = json.loads((out / "config.json").read_text())["args"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return {k: v for k, v in sorted(args.items()) if k not in NON_SETTINGS}


def restore_params(run_dir, like=None, *, which: str = "best"):
  """Parameters ``{"lm", "step"}`` of the ``best`` (or ``latest``) checkpoint of ``run_dir``."""
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


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  train(args)
  return 0


def cli(argv=None) -> int:
  """``python -m recoder.train``: ``main`` with bad input reported in one line, exit code 2."""
  from jaxsteer._src.cliutil import run_main

  return run_main("python -m recoder.train", lambda: main(argv))
