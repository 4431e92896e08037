"""Perplexity of a trained run for the plain LSTM and for every recoding variant.

Each variant is ``signal:step_size[:key=value,...]`` (keys: ``S`` = MC samples, ``p`` = MC dropout,
``target`` = gold|argmax, ``redecode`` = 0|1), e.g. ``surprisal:0.5`` or ``mc_entropy:0.01:S=10``.
The variant ``trained`` uses the run's own recoding configuration and step size.

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

from recoder._src import data as data_lib
from recoder._src.model import LSTMLM, LMConfig
from recoder._src.recode import RecodingConfig
from recoder._src.train import evaluate_ids, make_eval_step, restore_params

__all__ = ["DEFAULT_VARIANTS", "parse_variant", "evaluate_variants", "load_run", "main"]

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
  if parts[0] == "none":
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
) -> dict:
  """Perplexity and seconds per token of every variant on the id stream ``ids``."""
  results = {}
  base_cost = None
  for spec in variants:
    rc, step = parse_variant(spec, trained, trained_step)
    if rc.enabled and rc.signal == "ensemble_entropy" and model.cfg.num_members < 2:
      results[spec] = {"skipped": "ensemble_entropy needs a model trained with --members K>1"}
      continue
    p = params if rc.step_type != "fixed" or not rc.enabled else {**params, "step": {}}
    eval_step = make_eval_step(model, rc)
    key = jax.random.key(seed)
    # Compile (and warm up) on a slice, so that the timing below is steady-state.
    t0 = time.perf_counter()
    evaluate_ids(
      eval_step,
      model,
      p,
      ids[: batch_size * (bptt + 1) + 1],
      batch_size=batch_size,
      bptt=bptt,
      step_size=jnp.float32(step),
      key=key,
    )
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppl, n = evaluate_ids(
      eval_step,
      model,
      p,
      ids,
      batch_size=batch_size,
      bptt=bptt,
      step_size=jnp.float32(step),
      key=key,
      desc=spec if progress else None,
    )
    sec = time.perf_counter() - t0
    cost = sec / n
    if not rc.enabled and base_cost is None:
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
  if base_cost:
    for r in results.values():
      if "us_per_token" in r:
        r["cost_ratio"] = r["us_per_token"] / (1e6 * base_cost)
  return results


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
  p.add_argument("--batch-size", type=positive_int, default=10)
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
    path = pathlib.Path(args.out)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
