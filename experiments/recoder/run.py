"""Recoding study (Ulmer 2021, arXiv:2101.00674) on Mikolov's Penn Treebank.

Quick mode trains a tiny LSTM LM on a slice of PTB for a short while and compares the plain model
with every recoding variant (perplexity and cost per token), plus an anchored ensemble and a
learned-step-size model; it also plots per-token surprisal on garden-path sentences.
Full mode documents the real 2x200 run (its command and results) and re-plots the garden-path
figure from its checkpoint when that is present. Both write ``variants.png`` (test perplexity per
recoding variant). Settings: ``experiments/recoder/config.py``.

Usage::

  python -m experiments.recoder.run --quick --out /tmp/recoder --data /work/shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import recoder
from experiments.recoder.config import Config
from recoder._src import evaluate as evaluate_lib
from recoder._src import train as train_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# The real run (2-core CPU shared with other jobs): launched with --epochs 4, stopped at the
# step-1200 checkpoint and resumed with --epochs 3 (the same command otherwise) to fit the time box;
# learning rate 20, 20, 5 (x0.25 after epoch 2).
FULL_RUN_COMMAND = (
  "python -m recoder.train --data $JAXSTEER_DATA/ptb --out runs/ptb_small --emb 200 --hidden 200 "
  "--layers 2 --dropout 0.2 --tied --optimizer sgd --lr 20 --clip 0.25 --bptt 35 --batch-size 20 "
  "--eval-batch-size 10 --epochs 3 --decay-start 2 --lr-decay 0.25 --ckpt-every 300"
)
FULL_EVAL_COMMAND = (
  "python -m recoder.evaluate --run runs/ptb_small --split test --batch-size 20 "
  "--out experiments/recoder/results/ptb_small_test.json --variants <see results JSON>"
)

GARDEN_PATHS = (
  "the horse raced past the barn fell",
  "the old man the boat",
  "the complex houses married and single soldiers and their families",
  "while the man hunted the deer ran into the woods",
  "the cotton clothing is made of grows in mississippi",
  "the florist sent the flowers was pleased",
  "the man who hunts ducks out on weekends",
  "when fred eats food gets thrown",
)

QUICK_VARIANTS = (
  "none",
  "surprisal:0.5",
  "surprisal:2",
  "ptok_ppl:5",
  "entropy:0.5",
  "mc_entropy:0.5:S=5",
  "mc_variance:5:S=5",
)


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


_PAD = 20


@functools.cache
def _sentence_fn(model, rc):
  def f(params, x, y, step_size):
    return recoder.lm_forward(
      model, params["lm"], x, y, recoder.zero_state(model.cfg, x.shape[0]), recoding=rc,
      step_size=step_size, step_params=params.get("step") or None, key=jax.random.key(0),
    ).nll  # fmt: skip

  return jax.jit(f)


def sentence_surprisal(model, params, vocab, sentence, rc, step_size):
  """Per-word surprisal (bits) of ``sentence`` after ``<eos>``, from a zero state.

  Sentences are padded to a fixed length (the model is causal, so padding after the sentence
  changes nothing before it) so that every sentence reuses one compiled function.
  """
  idx = vocab.index()
  words = sentence.split()
  ids = [idx["<eos>"]] + [idx.get(w, idx.get("<unk>", 0)) for w in words] + [idx["<eos>"]]
  n = len(ids) - 1
  if n > _PAD:
    raise ValueError(f"sentence longer than {_PAD} tokens: {sentence!r}")
  ids = np.asarray(ids + [idx["<eos>"]] * (_PAD - n), np.int32)[None]
  nll = _sentence_fn(model, rc)(params, ids[:, :-1], ids[:, 1:], jnp.float32(step_size))
  return np.asarray(nll[0, :n]) / math.log(2), words + ["<eos>"]


def plot_garden_paths(model, params, vocab, variants, path: pathlib.Path) -> dict:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(GARDEN_PATHS)
  fig, axes = plt.subplots((n + 1) // 2, 2, figsize=(14, 2.6 * ((n + 1) // 2)))
  data = {}
  for ax, sent in zip(axes.ravel(), GARDEN_PATHS):
    data[sent] = {}
    for label, (rc, eta) in variants.items():
      s, words = sentence_surprisal(model, params, vocab, sent, rc, eta)
      data[sent][label] = s.tolist()
      ax.plot(s, marker="o", ms=3, label=label)
    ax.set_xticks(range(len(words)))
    ax.set_xticklabels(words, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("surprisal (bits)")
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=7)
  fig.suptitle("Per-token surprisal with and without recoding (garden-path sentences)")
  fig.tight_layout()
  tmp = path.with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
  return data


def _gp_variants(names=None):
  v = {
    "baseline": (recoder.RecodingConfig(), 0.0),
    "surprisal eta=0.1 (tuned)": (recoder.RecodingConfig(signal="surprisal"), 0.1),
    "surprisal eta=1": (recoder.RecodingConfig(signal="surprisal"), 1.0),
    "entropy eta=0.03": (recoder.RecodingConfig(signal="entropy"), 0.03),
  }
  return {k: v[k] for k in names} if names is not None else v


def _quick(out_dir: pathlib.Path, data_dir: pathlib.Path, cfg: Config) -> dict:
  ptb = data_dir / "ptb"
  h = str(cfg.hidden)
  common = [
    "--data", str(ptb), "--emb", h, "--hidden", h, "--layers", "2", "--dropout", "0.1",
    "--optimizer", "adam", "--lr", "0.003", "--clip", "1.0", "--bptt", "20", "--batch-size", "32",
    "--eval-batch-size", "10", "--epochs", "1", "--max-train-tokens", str(cfg.max_train_tokens),
    "--max-eval-tokens", str(cfg.max_eval_tokens), "--ckpt-every", "100000", "--no-progress",
    "--seed", str(cfg.seed),
  ]  # fmt: skip
  runs = {
    "baseline": ["--tied"],
    "ensemble_k3": ["--members", "3", "--signal", "ensemble_entropy", "--step-size", "0.5"],
    "surprisal_learned": ["--tied", "--signal", "surprisal", "--step-type", "learned"],
  }
  unknown = sorted(set(cfg.runs) - set(runs))
  if unknown:
    raise ValueError(f"unknown recoder-study runs {unknown}; known: {sorted(runs)}")
  summary = {"mode": "quick", "train": {}, "eval": {}}
  corpus = recoder.load_corpus(ptb)
  test_ids = corpus.test[: cfg.test_tokens]
  for name in tqdm([r for r in runs if r in cfg.runs], desc="recoder runs"):
    extra = runs[name]
    run_dir = out_dir / name
    t0 = time.perf_counter()
    s = train_lib.train(
      train_lib.build_parser().parse_args([*common, "--out", str(run_dir), *extra])
    )
    summary["train"][name] = {
      "valid_ppl": s["valid_ppl"], "test_ppl": s["test_ppl"], "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    tcfg, model, trained_rc, params = evaluate_lib.load_run(run_dir)
    variants = cfg.variants if name == "baseline" else ("none", "trained")
    if name == "ensemble_k3":
      variants = ("none", "ensemble_entropy:0.5", "ensemble_entropy:2")
    summary["eval"][name] = evaluate_lib.evaluate_variants(
      model, params, test_ids, variants, batch_size=10, bptt=20, trained=trained_rc,
      trained_step=tcfg["train"]["step_size"], progress=False,
    )  # fmt: skip
    if name == "surprisal_learned":
      summary["eval"][name]["learned_step_sizes"] = {
        k: np.asarray(jax.nn.softplus(v)).tolist() for k, v in params["step"].items()
      }
    if name == "baseline" and cfg.garden_path_variants:
      summary["garden_path"] = plot_garden_paths(
        model,
        params,
        corpus.vocab,
        _gp_variants(cfg.garden_path_variants),
        out_dir / "garden_path_quick.png",
      )
  for runs_eval in summary["eval"].values():
    for v in runs_eval.values():
      if isinstance(v, dict):
        v.pop("config", None)
  return summary


def _full(out_dir: pathlib.Path, data_dir: pathlib.Path) -> dict:
  summary = {"mode": "full", "train_command": FULL_RUN_COMMAND, "eval_command": FULL_EVAL_COMMAND}
  for name in (
    "ptb_small_summary.json", "ptb_small_test.json", "ptb_small_valid_sweep_epoch1.json",
    "ptb_small_epoch2_test.json", "ptb_small_epoch2_test5k.json", "bench.json",
  ):  # fmt: skip
    f = RESULTS / name
    if f.is_file():
      summary[name.removesuffix(".json")] = json.loads(f.read_text())
  run_dir = pathlib.Path(os.environ.get("RECODER_RUN", "runs/ptb_small"))
  which = os.environ.get("RECODER_CHECKPOINT", "best")
  if (run_dir / ("best" if which == "best" else "ckpt")).is_dir():
    cfg, model, _, params = evaluate_lib.load_run(run_dir, which)
    summary["garden_path_checkpoint"] = which
    corpus = recoder.load_corpus(data_dir / "ptb")
    summary["garden_path"] = plot_garden_paths(
      model, params, corpus.vocab, _gp_variants(), out_dir / "garden_path_ptb_small.png"
    )
  return summary


def _variant_ppl(summary: dict) -> dict[str, float]:
  """Test perplexity per recoding variant of the baseline model ({} if not evaluated)."""
  if summary["mode"] == "quick":
    ev = summary["eval"].get("baseline", {})
  else:
    ev = summary.get("ptb_small_test", {}).get("variants", summary.get("ptb_small_test", {}))
  return {k: v["ppl"] for k, v in ev.items() if isinstance(v, dict) and "ppl" in v}


def plot_variants(ppl: dict[str, float], path: pathlib.Path) -> None:
  """Bars of test perplexity per recoding variant (the baseline is ``none``/``baseline``)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 3.6))
  names = list(ppl)
  ax.bar(names, [ppl[n] for n in names], color="tab:green")
  lo, hi = min(ppl.values()), max(ppl.values())
  ax.set_ylim(lo - 0.1 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))
  ax.set_ylabel("test perplexity")
  ax.set_title("recoding variants (baseline model)")
  ax.tick_params(axis="x", rotation=25, labelsize=8)
  fig.tight_layout()
  tmp = path.with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def headline(summary: dict) -> list[dict]:
  """The study's headline numbers (for the reproduction report), from its summary."""
  ppl = _variant_ppl(summary)
  rows = []
  base = ppl.get("none", ppl.get("baseline"))
  if base is not None:
    rows.append({"metric": "test perplexity, no recoding", "value": base, "paper": ""})
  for name, v in ppl.items():
    if name in ("none", "baseline"):
      continue
    claim = "lower perplexity" if name.startswith(("surprisal", "ptok")) else ""
    rows.append({"metric": f"test perplexity, recoding {name}", "value": v, "paper": claim})
  if summary["mode"] == "full" and "ptb_small_summary" in summary:
    rows.append(
      {
        "metric": "2x200 LSTM valid perplexity (committed run)",
        "value": summary["ptb_small_summary"].get("valid_ppl"),
        "paper": "Zaremba small: 120.7 valid",
      }
    )
  return rows


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Runs the study; returns a JSON-able summary (also written to ``out_dir/summary.json``)."""
  cfg = config or (Config.quick() if quick else Config.full())
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  data_dir = pathlib.Path(data_dir)
  if not (data_dir / "ptb" / "ptb.train.txt").is_file():
    raise FileNotFoundError(f"Penn Treebank not found under {data_dir / 'ptb'}")
  summary = _quick(out_dir, data_dir, cfg) if cfg.mode == "quick" else _full(out_dir, data_dir)
  figures = [
    f for f in ("garden_path_quick.png", "garden_path_ptb_small.png") if (out_dir / f).is_file()
  ]
  ppl = _variant_ppl(summary)
  if ppl:
    plot_variants(ppl, out_dir / "variants.png")
    figures.append("variants.png")
  summary["figures"] = figures
  summary["headline"] = headline(summary)
  summary["setting"] = {
    "model": (
      f"2-layer LSTM LM, width {cfg.hidden}, trained here (Adam)"
      if cfg.mode == "quick"
      else "2x200 tied LSTM (committed run; experiments/recoder/results)"
    ),
    "data": f"Mikolov PTB ({data_dir / 'ptb'})"
    + (
      f", first {cfg.max_train_tokens} training and {cfg.test_tokens} test tokens"
      if cfg.mode == "quick"
      else ""
    ),
    "seed": cfg.seed,
    "config": dataclasses.asdict(cfg),
  }
  _atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2))
  return summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="runs/recoder_experiment")
  p.add_argument(
    "--data", default=os.environ.get("JAXSTEER_DATA", "/work/shared/data"),
    help="shared data root (contains ptb/)",
  )  # fmt: skip
  a = p.parse_args(argv)
  s = run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data))
  print(json.dumps({k: v for k, v in s.items() if k != "garden_path"}, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
