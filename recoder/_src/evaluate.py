"""Perplexity of a trained run for the plain LSTM and for every recoding variant.

Each variant is ``signal:step_size[:key=value,...]`` (keys: ``S`` = MC samples, ``p`` = MC dropout,
``target`` = gold|argmax, ``redecode`` = 0|1), e.g. ``surprisal:0.5`` or ``mc_entropy:0.01:S=10``.
The variant ``trained`` uses the run's own recoding configuration and step size; ``none:in_scan``
is the plain model with its decoder inside the time scan (the second baseline for the cost of
recoding, which must decode inside the scan; ``none`` decodes all steps in one matmul after it).

Evaluation keeps the NLL of every (window, stream) unit (``unit_nll``, ``unit_tokens``), so that
perplexity differences between variants get paired bootstrap intervals over the same units
(``experiments.stats.paired``). With more streams (``--batch-size``) each stream is shorter, so
more of the text is read from a fresh zero state; compare perplexities at one batch size.

Usage::

  python -m recoder.evaluate --run runs/ptb_small --split test \
      --variants none surprisal:0.5 entropy:0.1 mc_entropy:0.1:S=10
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.fileio import atomic_write_text
from recoder._src import data as data_lib
from recoder._src.model import LSTMLM, LMConfig, check_token_ids, zero_state
from recoder._src.recode import RecodingConfig
from recoder._src.train import make_eval_step, restore_params

__all__ = [
  "DEFAULT_VARIANTS",
  "IN_SCAN",
  "parse_variant",
  "make_in_scan_eval_step",
  "window_nll",
  "evaluate_variants",
  "time_variants",
  "load_run",
  "main",
]

IN_SCAN = "none:in_scan"

DEFAULT_VARIANTS = (
  "none",
  "surprisal:0.5",
  "ptok_ppl:5",
  "entropy:0.5",
  "mc_entropy:0.5:S=10",
  "mc_variance:5:S=10",
)


def parse_variant(spec: str, trained: RecodingConfig | None = None, trained_step: float = 0.0):
  """``"signal:step[:k=v,...]"`` -> ``(RecodingConfig, step_size)``."""
  if spec == "trained":
    if trained is None:
      raise ValueError("variant 'trained' needs the run's recoding configuration")
    return trained, trained_step
  parts = spec.split(":")
  if spec in ("none", IN_SCAN):
    return RecodingConfig(), 0.0
  if len(parts) < 2:
    raise ValueError(f"variant {spec!r} must be 'signal:step_size[:k=v,...]'")
  try:
    step = float(parts[1])
  except ValueError:
    raise ValueError(f"variant {spec!r}: step size {parts[1]!r} is not a number") from None
  if step < 0 or not math.isfinite(step):
    raise ValueError(f"variant {spec!r}: step size must be finite and non-negative")
  kw = {}
  for item in ",".join(parts[2:]).split(","):
    if not item:
      continue
    k, _, val = item.partition("=")
    if k == "S":
      kw["num_samples"] = int(val)
    elif k == "p":
      kw["mc_dropout"] = float(val)
    elif k == "target":
      kw["target"] = val
    elif k == "redecode":
      kw["redecode"] = bool(int(val))
    else:
      raise ValueError(f"variant {spec!r}: unknown option {k!r} (S, p, target, redecode)")
  return RecodingConfig(signal=parts[0], **kw), step


def load_run(run_dir, which: str = "best"):
  run_dir = pathlib.Path(run_dir)
  cfg_path = run_dir / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"no config.json in run directory {run_dir}")
  cfg = json.loads(cfg_path.read_text())
  lm = LMConfig(**cfg["lm"])
  rc = cfg["recoding"]
  rc["mlp_hidden"] = tuple(rc["mlp_hidden"])
  params = restore_params(run_dir, which=which)
  params.setdefault("step", {})
  return cfg, LSTMLM(lm), RecodingConfig(**rc), params


def make_in_scan_eval_step(model):
  """The plain LSTM with the decoder and log-softmax inside the ``lax.scan`` over time.

  Same numbers as ``make_eval_step(model, RecodingConfig())`` (which decodes all steps after the
  scan in one matmul); it is the like-for-like baseline for recoding, whose decoder must run
  inside the scan.
  """

  def eval_step(params, hidden, x, y, key, step_size):
    del key, step_size
    v = {"params": params["lm"]}
    emb = model.apply(v, jnp.asarray(x).T, method=LSTMLM.embed)
    L = model.cfg.num_layers

    def step(carry, xs):
      e, t = xs
      hs, cs, inp = [], [], e
      for layer in range(L):
        z = model.apply(v, layer, inp, carry["h"][layer], method=LSTMLM.gates)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry["c"][layer] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        hs.append(h)
        cs.append(c)
        inp = h
      logp = jax.nn.log_softmax(model.apply(v, inp, method=LSTMLM.decode), axis=-1)
      nll = -jnp.take_along_axis(logp, t[:, None], axis=-1)[:, 0]
      return {"h": jnp.stack(hs), "c": jnp.stack(cs)}, nll

    state, nll = jax.lax.scan(step, hidden, (emb, jnp.asarray(y).T))
    return nll.T, state

  return jax.jit(eval_step)


def window_nll(eval_step, model, params, ids, *, batch_size, bptt, step_size, key):
  """NLL sums and token counts per (window, stream) unit of a 1-d id stream (state carried).

  Every window has length ``bptt`` (the last one padded and masked), so ``eval_step`` compiles
  once. Perplexity is ``exp(unit_nll.sum() / unit_tokens.sum())``.
  """
  check_token_ids(ids, model.cfg.vocab_size)
  streams = data_lib.batchify(ids, batch_size)
  hidden = zero_state(model.cfg, streams.shape[0])
  nlls, counts = [], []
  for i, (x, y) in enumerate(data_lib.bptt_batches(streams, bptt)):
    t = x.shape[1]
    if t < bptt:  # causal model: padding never changes earlier positions
      x = np.pad(x, ((0, 0), (0, bptt - t)))
      y = np.pad(y, ((0, 0), (0, bptt - t)))
    nll, hidden = eval_step(params, hidden, x, y, jax.random.fold_in(key, i), step_size)
    nll = np.asarray(nll, np.float64)[:, :t]
    if not np.isfinite(nll).all():
      raise FloatingPointError(f"non-finite NLL in evaluation window {i}")
    nlls.append(nll.sum(axis=1))
    counts.append(np.full(x.shape[0], t))
  return np.concatenate(nlls), np.concatenate(counts)


def _step_for(model, rc, spec):
  return make_in_scan_eval_step(model) if spec == IN_SCAN else make_eval_step(model, rc)


def evaluate_variants(
  model,
  params,
  ids,
  variants,
  *,
  batch_size=10,
  bptt=35,
  seed=0,
  trained=None,
  trained_step=0.0,
  progress=True,
  keep_units=False,
) -> dict:
  """Perplexity and seconds per token of every variant on the id stream ``ids``.

  ``keep_units`` adds ``unit_nll``/``unit_tokens`` (per window and stream; see ``window_nll``).
  ``cost_ratio`` is the time per token over that of ``none`` measured in the same call (one timed
  pass each: for overheads with intervals use ``time_variants``).
  """
  results = {}
  base_cost = None
  for spec in variants:
    rc, step = parse_variant(spec, trained, trained_step)
    if rc.enabled and rc.signal == "ensemble_entropy" and model.cfg.num_members < 2:
      results[spec] = {"skipped": "ensemble_entropy needs a model trained with --members K>1"}
      continue
    p = params if rc.step_type != "fixed" or not rc.enabled else {**params, "step": {}}
    eval_step = _step_for(model, rc, spec)
    key = jax.random.key(seed)
    kw = dict(batch_size=batch_size, bptt=bptt, step_size=jnp.float32(step), key=key)
    # Compile (and warm up) on a slice, so that the timing below is steady-state.
    t0 = time.perf_counter()
    window_nll(eval_step, model, p, ids[: batch_size * (bptt + 1) + 1], **kw)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    unit_nll, unit_tok = window_nll(eval_step, model, p, ids, **kw)
    sec = time.perf_counter() - t0
    n = int(unit_tok.sum())
    ppl = math.exp(unit_nll.sum() / n)
    cost = sec / n
    if spec == "none" and base_cost is None:
      base_cost = cost
    results[spec] = {
      "signal": rc.signal,
      "step_size": step,
      "ppl": ppl,
      "tokens": n,
      "tokens_per_s": n / sec,
      "us_per_token": 1e6 * cost,
      "compile_s": compile_s,
      "config": dataclasses.asdict(rc),
    }
    if keep_units:
      results[spec]["unit_nll"] = unit_nll.tolist()
      results[spec]["unit_tokens"] = unit_tok.tolist()
  if base_cost:
    for r in results.values():
      if "us_per_token" in r:
        r["cost_ratio"] = r["us_per_token"] / (1e6 * base_cost)
  return results


def time_variants(model, params, ids, variants, *, batch_size, bptt=35, repeats=5, seed=0):
  """Microseconds per token of each variant, ``repeats`` interleaved timed passes each.

  Variants are timed in turn within each repeat (so a change in machine load hits all of them),
  after one untimed compile pass each. Returns ``{spec: [us_per_token per repeat]}``.
  """
  steps = {}
  kw = dict(batch_size=batch_size, bptt=bptt, key=jax.random.key(seed))
  for spec in variants:
    rc, step = parse_variant(spec)
    steps[spec] = (_step_for(model, rc, spec), jnp.float32(step))
    window_nll(steps[spec][0], model, params, ids, step_size=steps[spec][1], **kw)
  out = {spec: [] for spec in variants}
  for _ in range(repeats):
    for spec, (fn, step) in steps.items():
      t0 = time.perf_counter()
      _, tok = window_nll(fn, model, params, ids, step_size=step, **kw)
      out[spec].append(1e6 * (time.perf_counter() - t0) / tok.sum())
  return out


def build_parser():
  from jaxsteer._src.cliutil import OneLineParser, non_negative_int, positive_int

  p = OneLineParser(prog="python -m recoder.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--run", required=True, help="run directory written by recoder.train")
  p.add_argument("--data", default=None, help="corpus directory (default: the run's)")
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  p.add_argument(
    "--checkpoint",
    default="best",
    choices=["best", "latest"],
    help="best validation checkpoint, or the latest training checkpoint",
  )
  p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
  p.add_argument(
    "--max-tokens", type=non_negative_int, default=0, help="evaluate a prefix only (0 = all)"
  )
  p.add_argument(
    "--batch-size", type=positive_int, default=64, help="streams (64: see experiments/recoder)"
  )
  p.add_argument("--bptt", type=positive_int, default=35)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the JSON here")
  p.add_argument("--no-progress", action="store_true")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  cfg, model, trained_rc, params = load_run(args.run, args.checkpoint)
  data_dir = args.data or cfg["args"]["data"]
  corpus = data_lib.load_corpus(data_dir, prefix=cfg["args"].get("prefix", "ptb."))
  if corpus.vocab.size != model.cfg.vocab_size:
    raise ValueError(
      f"vocabulary of {data_dir} has {corpus.vocab.size} words, the run has {model.cfg.vocab_size}"
    )
  ids = getattr(corpus, args.split)
  if args.max_tokens:
    ids = ids[: args.max_tokens]
  res = evaluate_variants(
    model,
    params,
    ids,
    args.variants,
    batch_size=args.batch_size,
    bptt=args.bptt,
    seed=args.seed,
    trained=trained_rc,
    trained_step=cfg["train"]["step_size"],
    progress=not args.no_progress,
  )
  out = {
    "run": str(args.run),
    "checkpoint": args.checkpoint,
    "split": args.split,
    "tokens": int(ids.shape[0]),
    "variants": res,
  }
  text = json.dumps(out, indent=2)
  if args.out:
    atomic_write_text(args.out, text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
