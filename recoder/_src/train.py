"""Training of (recoding) LSTM language models with truncated BPTT, orbax checkpoints and resume.

Reference settings (Ulmer's code; Zaremba et al. 2014; PyTorch word_language_model): SGD lr 20,
gradient clipping 0.25 (global norm), BPTT 35, learning rate / 4 after an epoch whose validation
perplexity does not improve. Adam is available with ``--optimizer adam``.

The learning rate is an ``optax.inject_hyperparams`` hyper-parameter of the optimizer, so it lives
in the optimizer state and is checkpointed with it; after every epoch a ``PlateauRule`` (state
``PlateauState``, checkpointed too) reads the validation perplexity and multiplies it by
``lr_decay`` when the perplexity did not improve (or, with ``decay_start``, after every epoch from
that one on). A run interrupted after any step and resumed equals the uninterrupted run.

Usage::

  python -m recoder.train --data /work/shared/data/ptb --out runs/ptb_small \
      --emb 200 --hidden 200 --layers 2 --dropout 0.2 --tied --epochs 6 --batch-size 20

  # or from Python
  config = TrainConfig(model=ModelConfig(emb=200, hidden=200, tied=True), epochs=6, batch_size=20)
  summary = train(config, recoder.load_corpus("/work/shared/data/ptb"), "runs/ptb_small")
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from jaxsteer._src.fileio import atomic_write_json
from recoder._src import data as data_lib
from recoder._src.checkpoints import (
  CHECKPOINT_FORMAT,
  SHAPE_SETTINGS,
  CheckpointWarning,
  check_format,
  check_resume_settings,
  newest_meta,
  open_managers,
  restore_latest_intact,
  restore_params,
  save_checkpoint,
)
from recoder._src.model import (
  LSTMLM,
  check_token_ids,
  init_params,
  lm_forward,
  zero_state,
)
from recoder._src.recode import RecodingConfig, init_step_params
from recoder._src.schedule import (
  PlateauRule,
  PlateauState,
  learning_rate,
  make_optimizer,
  with_learning_rate,
)
from recoder._src.train_config import ModelConfig, RunOptions, Summary, TrainConfig

__all__ = [
  "CHECKPOINT_FORMAT",
  "SHAPE_SETTINGS",
  "check_resume_settings",
  "CheckpointWarning",
  "ModelConfig",
  "PlateauRule",
  "PlateauState",
  "Run",
  "RunOptions",
  "Summary",
  "TrainConfig",
  "build_parser",
  "cli",
  "config_from_args",
  "end_epoch",
  "finish",
  "init_state",
  "learning_rate",
  "main",
  "make_eval_step",
  "make_optimizer",
  "make_train_step",
  "prepare",
  "restore_latest_intact",
  "restore_params",
  "resume",
  "train",
  "train_epoch",
  "train_from_argv",
  "with_learning_rate",
]

# --- model steps --------------------------------------------------------------------------------


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
  """``(tx, step)``: the optimizer and the jitted
  ``step(params, opt_state, anchors, hidden, x, y, key, step_size) -> (params, opt_state, hidden,
  nll)`` (the learning rate is read from ``opt_state``; params, opt_state and hidden are donated).
  """
  tx = make_optimizer(tc)

  def train_step(params, opt_state, anchors, hidden, x, y, key, step_size):
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
    params = optax.apply_updates(params, updates)
    return params, opt_state, jax.lax.stop_gradient(new_hidden), nll

  return tx, jax.jit(train_step, donate_argnums=(0, 1, 3))


def make_eval_step(model, rc: RecodingConfig, *, closed_form: bool = True):
  """Jitted ``(params, hidden, x, y, key, step_size) -> (nll (B, T), state)``.

  ``closed_form=False`` takes the surprisal gradient with ``jax.grad`` (for comparison).
  """

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
      closed_form=closed_form,
    )
    return out.nll, out.state

  return jax.jit(eval_step)


def evaluate_ids(eval_step, model, params, ids, *, batch_size, bptt, step_size, key, desc=None):
  """Perplexity of a 1-d id stream cut into ``batch_size`` streams (state carried over).

  Every window has length ``bptt`` (the last one is padded and masked), so ``eval_step``
  compiles once. Raises ``FloatingPointError`` when the NLL is not finite (a diverged model).
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
  if not math.isfinite(total):
    raise FloatingPointError(f"non-finite NLL ({total}) over {count} tokens: the model diverged")
  return math.exp(total / count), count


def init_train_state(model, rc, tc, key):
  """``(params, anchors)``: fresh parameters ``{"lm", "step"}`` and the ensemble's anchors."""
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


# --- the training run, step by step -------------------------------------------------------------


def run_settings(config: TrainConfig, corpus: data_lib.Corpus) -> dict:
  """The run's settings, flat and keyed by CLI flag name (JSON-able; stored with checkpoints)."""
  out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  out.update(dataclasses.asdict(out.pop("model")), **dataclasses.asdict(out.pop("recoding")))
  out["prefix"] = corpus.prefix
  return json.loads(json.dumps(dict(sorted(out.items()))))  # tuples -> lists, as when stored


@dataclasses.dataclass(frozen=True)
class Run:
  """What stays fixed during one ``train`` call (built by ``prepare``; writes nothing)."""

  config: TrainConfig
  options: RunOptions
  out: pathlib.Path
  corpus: data_lib.Corpus
  model: LSTMLM
  streams: np.ndarray  # (batch_size, N) training streams
  n_batches: int
  valid: np.ndarray
  test: np.ndarray
  train_step: Any
  eval_step: Any
  tx: optax.GradientTransformation
  rule: PlateauRule
  settings: dict
  key: jax.Array  # the run's root key: initialisation, and folded with the step for dropout

  def evaluate(self, params, ids, desc=None) -> float:
    c = self.config
    return evaluate_ids(
      self.eval_step,
      self.model,
      params,
      ids,
      batch_size=c.eval_batch_size,
      bptt=c.bptt,
      step_size=jnp.float32(c.step_size),
      key=jax.random.key(c.seed + 1),
      desc=desc if self.options.progress else None,
    )[0]


def _prefix(ids, n):
  return ids[:n] if n > 0 else ids


def prepare(config: TrainConfig, corpus, out, options: RunOptions | None = None) -> Run:
  """Checks the data against the settings and builds the model and steps; writes nothing."""
  options = RunOptions() if options is None else options
  lm_cfg = config.model.lm_config(corpus.vocab.size)
  model = LSTMLM(lm_cfg)
  train_ids = _prefix(corpus.train, config.max_train_tokens)
  check_token_ids(train_ids, lm_cfg.vocab_size, "training ids")
  valid = _prefix(corpus.valid, config.max_eval_tokens)
  test = _prefix(corpus.test, config.max_eval_tokens)
  check_token_ids(valid, lm_cfg.vocab_size, "validation ids")
  check_token_ids(test, lm_cfg.vocab_size, "test ids")
  streams = data_lib.batchify(train_ids, config.batch_size)
  tx, train_step = make_train_step(model, config.recoding, config, int(train_ids.shape[0]))
  return Run(
    config=config,
    options=options,
    out=pathlib.Path(out).resolve(),
    corpus=corpus,
    model=model,
    streams=streams,
    n_batches=data_lib.num_bptt_batches(streams, config.bptt, drop_last=True),
    valid=valid,
    test=test,
    train_step=train_step,
    eval_step=make_eval_step(model, config.recoding),
    tx=tx,
    rule=PlateauRule.from_config(config),
    settings=run_settings(config, corpus),
    key=jax.random.key(config.seed),
  )


def init_state(run: Run) -> tuple[dict, dict]:
  """``(state, meta)`` of a fresh run: state = params, opt_state (with the learning rate),
  plateau, hidden, anchors (device arrays; plateau on the host); meta = JSON progress record."""
  params, anchors = init_train_state(run.model, run.config.recoding, run.config, run.key)
  state = {
    "params": params,
    "opt_state": with_learning_rate(run.tx.init(params), run.config.lr),
    "plateau": run.rule.init(),
    "hidden": zero_state(run.model.cfg, run.config.batch_size),
    "anchors": anchors,
  }
  meta = {
    "format": CHECKPOINT_FORMAT,
    "global_step": 0,
    "epoch": 0,
    "batch": 0,
    "history": [],
    "train_seconds": 0.0,
    "train_tokens": 0,
    "settings": run.settings,
  }
  return state, meta


def _on_device(state: dict) -> dict:
  return {
    k: v if k == "plateau" else jax.tree_util.tree_map(jnp.asarray, v) for k, v in state.items()
  }


def resume(run: Run, mngr, state: dict, meta: dict) -> tuple[dict, dict]:
  """Restores the newest intact checkpoint of ``mngr`` into ``(state, meta)`` (unchanged when
  there is none) and writes ``config.json``.

  Before anything is written: a checkpoint of another format, or with other settings (unless
  ``options.override_settings``; never shape settings), raises ``ValueError``. An overridden
  ``lr`` restarts the schedule from the new value; the plateau's best value is kept.
  """
  where = run.out / "ckpt"
  changed = []
  if mngr.all_steps():
    stored = newest_meta(mngr)
    if stored is not None:
      check_format(stored, where)
      changed = check_resume_settings(
        stored.get("settings", {}),
        run.settings,
        override=run.options.override_settings,
        where=where,
      )
      if changed:
        print(f"warning: resuming {run.out} with changed settings {changed}", file=sys.stderr)
  save_run_config(run)
  like = jax.tree_util.tree_map(np.asarray, state)

  def restore(step):
    return mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()),
    )

  latest, restored = restore_latest_intact(mngr, restore, where)
  if latest is None:
    return state, meta
  for step in mngr.all_steps():  # damaged newer steps (warned about above)
    if step > latest:
      mngr.delete(step)
  restored_meta = restored["meta"]
  check_format(restored_meta, where)
  state = _on_device(restored["state"])
  state["plateau"] = PlateauState(*(np.asarray(x)[()] for x in state["plateau"]))
  meta = {**restored_meta, "settings": run.settings}
  print(f"resumed from step {latest} (epoch {meta['epoch']}, batch {meta['batch']})")
  if "lr" in changed:
    state["opt_state"] = with_learning_rate(state["opt_state"], run.config.lr)
  return state, meta


def train_epoch(run: Run, state: dict, meta: dict, mngr) -> tuple[dict, dict]:
  """Trains from ``meta["batch"]`` to the end of epoch ``meta["epoch"]``, or until the global
  step reaches ``options.max_steps``, saving to ``mngr`` every ``options.ckpt_every`` steps.

  Returns ``(state, meta)``; when ``max_steps`` stopped the epoch early (``meta["batch"] <
  run.n_batches``) that step's checkpoint is saved.
  """
  c, o = run.config, run.options
  bar = tqdm(
    total=run.n_batches,
    initial=meta["batch"],
    desc=f"epoch {meta['epoch'] + 1}/{c.epochs}",
    disable=not o.progress,
    mininterval=5.0,
    file=sys.stderr,
  )
  step_size = jnp.float32(c.step_size)
  t0, tokens = time.perf_counter(), 0
  losses = []
  for b, (x, y) in enumerate(data_lib.bptt_batches(run.streams, c.bptt, drop_last=True)):
    if b < meta["batch"]:
      continue
    k = jax.random.fold_in(run.key, meta["global_step"] + 1)
    p, opt, h, nll = run.train_step(
      state["params"], state["opt_state"], state["anchors"], state["hidden"], x, y, k, step_size
    )
    state = {**state, "params": p, "opt_state": opt, "hidden": h}
    meta["global_step"] += 1
    meta["batch"] = b + 1
    tokens += y.size
    losses.append(nll)
    if len(losses) >= 50 or b == run.n_batches - 1:
      ls = float(jnp.mean(jnp.stack(losses)))
      losses = []
      bar.set_postfix(ppl=f"{math.exp(min(ls, 50)):.1f}", lr=f"{learning_rate(opt):.3g}")
    bar.update(1)
    if meta["global_step"] % o.ckpt_every == 0:
      meta["train_seconds"] += time.perf_counter() - t0
      meta["train_tokens"] += tokens
      t0, tokens = time.perf_counter(), 0
      save_checkpoint(mngr, meta["global_step"], state, meta)
    if _reached_max_steps(run, meta):
      break
  bar.close()
  meta["train_seconds"] += time.perf_counter() - t0
  meta["train_tokens"] += tokens
  if meta["batch"] < run.n_batches:
    save_checkpoint(mngr, meta["global_step"], state, meta)
  return state, meta


def _reached_max_steps(run: Run, meta: dict) -> bool:
  return bool(run.options.max_steps) and meta["global_step"] >= run.options.max_steps


def end_epoch(run: Run, state: dict, meta: dict, val_ppl: float) -> tuple[dict, dict, bool]:
  """The schedule: records the epoch, lets the plateau rule decide on ``val_ppl`` and reduces
  the learning rate in the optimizer state. Returns ``(state, meta, improved)``."""
  lr = learning_rate(state["opt_state"])
  meta["history"].append(
    {
      "epoch": meta["epoch"] + 1,
      "valid_ppl": val_ppl,
      "lr": lr,  # the float32 the epoch's steps applied
      "train_seconds": meta["train_seconds"],
    }
  )
  plateau, improved, reduce = run.rule.update(state["plateau"], val_ppl)
  state = {**state, "plateau": plateau}
  if reduce:
    state["opt_state"] = with_learning_rate(state["opt_state"], lr * run.rule.factor)
  meta["epoch"] += 1
  meta["batch"] = 0
  return state, meta, improved


def save_run_config(run: Run) -> None:
  """``config.json``: the settings (``args``, as the CLI flags), the model, recoding and train
  configs (``recoder.evaluate`` reads it)."""
  o = run.options
  args = {
    **run.settings,
    "data": run.corpus.directory,
    "out": str(run.out),
    "max_steps": o.max_steps,
    "ckpt_every": o.ckpt_every,
    "no_progress": not o.progress,
  }
  c = run.config
  atomic_write_json(
    run.out / "config.json",
    {
      "args": args,
      "lm": dataclasses.asdict(run.model.cfg),
      "recoding": dataclasses.asdict(c.recoding),
      "train": dataclasses.asdict(c),
    },
  )


def finish(run: Run, state: dict, meta: dict, best_mngr) -> Summary:
  """The summary; when every epoch ran, the best checkpoint's validation and test perplexity
  (also written to ``summary.json``)."""
  summary = Summary(
    run=str(run.out),
    global_step=meta["global_step"],
    history=meta["history"],
    params=state["params"],
  )
  if best_mngr.latest_step() is None or meta["epoch"] < run.config.epochs:
    return summary
  params = restore_params(run.out)
  summary = dataclasses.replace(
    summary,
    valid_ppl=run.evaluate(params, run.valid),
    test_ppl=run.evaluate(params, run.test),
    epochs=meta["epoch"],
    train_seconds=meta["train_seconds"],
    train_tokens_per_s=meta["train_tokens"] / max(meta["train_seconds"], 1e-9),
  )
  atomic_write_json(run.out / "summary.json", summary.to_dict())
  print(json.dumps(summary.to_dict()), flush=True)
  return summary


def train(
  config: TrainConfig, corpus: data_lib.Corpus, out, *, options: RunOptions | None = None
) -> Summary:
  """Runs (or resumes) training in ``out``; returns its ``Summary``.

  Bad data or settings raise ``ValueError`` before anything is written. ``out`` holds
  ``ckpt/`` (latest checkpoints), ``best/`` (best validation perplexity), ``config.json`` and,
  once every epoch ran, ``summary.json``.
  """
  run = prepare(config, corpus, out, options)
  run.out.mkdir(parents=True, exist_ok=True)
  mngr, best_mngr = open_managers(run.out)
  try:
    state, meta = resume(run, mngr, *init_state(run))
    while meta["epoch"] < config.epochs:
      state, meta = train_epoch(run, state, meta, mngr)
      if meta["batch"] < run.n_batches:  # stopped by max_steps within the epoch (saved)
        break
      # End of epoch: validate, let the schedule decide, keep the best parameters.
      val_ppl = run.evaluate(state["params"], run.valid, desc="valid")
      state, meta, improved = end_epoch(run, state, meta, val_ppl)
      print(json.dumps(meta["history"][-1]), flush=True)
      if improved:
        save_checkpoint(best_mngr, meta["global_step"], state, meta)
      save_checkpoint(mngr, meta["global_step"], state, meta)
      if _reached_max_steps(run, meta):
        break
    return finish(run, state, meta, best_mngr)
  finally:
    mngr.close()
    best_mngr.close()


# --- command line -------------------------------------------------------------------------------


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


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, RunOptions]:
  """The ``TrainConfig`` and ``RunOptions`` of parsed ``build_parser()`` arguments."""
  fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
  a = vars(args)
  model = ModelConfig(**{k: a[k] for k in fields(ModelConfig)})
  recoding = RecodingConfig(**{k: a[k] for k in fields(RecodingConfig) if k in a})
  flat = fields(TrainConfig) - {"model", "recoding"}
  config = TrainConfig(model=model, recoding=recoding, **{k: a[k] for k in flat})
  options = RunOptions(
    max_steps=args.max_steps,
    ckpt_every=args.ckpt_every,
    progress=not args.no_progress,
    override_settings=args.override_settings,
  )
  return config, options


def train_from_argv(argv: Sequence[str] | None = None) -> Summary:
  """``python -m recoder.train ARGV`` in-process: parse, build the configs, load, train."""
  args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
  config, options = config_from_args(args)
  corpus = data_lib.load_corpus(args.data, prefix=args.prefix)
  return train(config, corpus, args.out, options=options)


def main(argv=None) -> int:
  train_from_argv(argv)
  return 0


def cli(argv=None) -> int:
  """``python -m recoder.train``: ``main`` with bad input reported in one line, exit code 2."""
  from jaxsteer._src.cliutil import run_main

  return run_main("python -m recoder.train", lambda: main(argv))
