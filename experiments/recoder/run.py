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
from experiments import stats
from experiments.recoder.config import Config
from experiments.report import sanitize
from jaxsteer._src.fileio import atomic_path, atomic_write_json
from recoder._src import evaluate as evaluate_lib
from recoder._src import train as train_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# The committed run (2-core CPU shared with other jobs; results/ptb_small_summary.json): launched
# with --epochs 4, stopped at the step-1200 checkpoint, resumed with --epochs 3 and later with
# --epochs 4 for a fourth epoch (the same command otherwise); learning rate 20, 20, 5, 1.25 (x0.25
# after epoch 2); batch 20 for training, 10 for evaluation (what the committed JSON files used).
FULL_RUN_COMMAND = (
  "python -m recoder.train --data $JAXSTEER_DATA/ptb --out runs/ptb_small --emb 200 --hidden 200 "
  "--layers 2 --dropout 0.2 --tied --optimizer sgd --lr 20 --clip 0.25 --bptt 35 --batch-size 20 "
  "--eval-batch-size 10 --epochs 4 --decay-start 2 --lr-decay 0.25 --ckpt-every 300"
)
FULL_EVAL_COMMAND = (
  "python -m recoder.evaluate --run runs/ptb_small --split test --batch-size 10 "
  "--out experiments/recoder/results/ptb_small_test.json --variants none surprisal:0.1 "
  "ptok_ppl:1 entropy:0.03"
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
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)
  return data


def _gp_variants(names=None):
  v = {
    "baseline": (recoder.RecodingConfig(), 0.0),
    "surprisal eta=0.1 (tuned)": (recoder.RecodingConfig(signal="surprisal"), 0.1),
    "surprisal eta=1": (recoder.RecodingConfig(signal="surprisal"), 1.0),
    "entropy eta=0.03": (recoder.RecodingConfig(signal="entropy"), 0.03),
  }
  return {k: v[k] for k in names} if names is not None else v


def _train_runs(out_dir, ptb, cfg: Config, seed: int) -> dict:
  h = str(cfg.hidden)
  common = [
    "--data", str(ptb), "--emb", h, "--hidden", h, "--layers", "2", "--dropout", "0.1",
    "--optimizer", "adam", "--lr", "0.003", "--clip", "1.0", "--bptt", "20", "--batch-size", "32",
    "--eval-batch-size", "10", "--epochs", "1", "--max-train-tokens", str(cfg.max_train_tokens),
    "--max-eval-tokens", str(cfg.max_eval_tokens), "--ckpt-every", "100000", "--no-progress",
    "--seed", str(seed),
  ]  # fmt: skip
  runs = {
    "baseline": ["--tied"],
    "ensemble_k3": ["--members", "3", "--signal", "ensemble_entropy", "--step-size", "0.5"],
    "surprisal_learned": ["--tied", "--signal", "surprisal", "--step-type", "learned"],
  }
  unknown = sorted(set(cfg.runs) - set(runs))
  if unknown:
    raise ValueError(f"unknown recoder-study runs {unknown}; known: {sorted(runs)}")
  out = {}
  for name in [r for r in runs if r in cfg.runs]:
    run_dir = out_dir / f"seed{seed}" / name
    t0 = time.perf_counter()
    s = train_lib.train_from_argv([*common, "--out", str(run_dir), *runs[name]])
    out[name] = {
      "valid_ppl": s.valid_ppl, "test_ppl": s.test_ppl, "wall_s": time.perf_counter() - t0,
      "run_dir": run_dir,
    }  # fmt: skip
  return out


def _variant(signal, step, opts):
  return f"{signal}:{step:g}" + (f":{opts}" if opts else "")


def _select(model, params, valid_ids, sweeps, cfg, trained=None, trained_step=0.0):
  """Per signal: the step size with the lowest validation perplexity (batch ``eval_batch``)."""
  chosen, table = {}, {}
  for signal, steps, opts in sweeps:
    specs = [_variant(signal, st, opts) for st in steps]
    res = evaluate_lib.evaluate_variants(
      model, params, valid_ids, specs, batch_size=cfg.eval_batch, bptt=20, trained=trained,
      trained_step=trained_step, progress=False,
    )  # fmt: skip
    table.update({k: v["ppl"] for k, v in res.items() if "ppl" in v})
    ok = [k for k in specs if "ppl" in res[k] and math.isfinite(res[k]["ppl"])]
    if ok:
      chosen[signal] = min(ok, key=lambda k: res[k]["ppl"])
  return chosen, table


def _units(r):
  return np.c_[r["unit_nll"], r["unit_tokens"]]


def _ppl(rows):
  return float(np.exp(rows[:, 0].sum() / rows[:, 1].sum()))


def _ppl_diff(rows):  # columns: nll of a, nll of b, tokens
  return float(
    np.exp(rows[:, 0].sum() / rows[:, 2].sum()) - np.exp(rows[:, 1].sum() / rows[:, 2].sum())
  )


def _timing(test_ids, vocab_size, cfg: Config) -> dict:
  """Per-token cost of surprisal recoding vs both baselines at each batch size (2x``timing_hidden``
  LSTM, random weights: the cost does not depend on the weights)."""
  lm_cfg = recoder.LMConfig(
    vocab_size=vocab_size, embed_dim=cfg.timing_hidden, hidden_dim=cfg.timing_hidden,
    num_layers=2, dropout=0.0, tie_weights=True,
  )  # fmt: skip
  model = recoder.LSTMLM(lm_cfg)
  params = {"lm": recoder.init_params(model, jax.random.key(0)), "step": {}}
  out = {}
  variants = ("none", evaluate_lib.IN_SCAN, cfg.timing_variant)
  for batch in cfg.timing_batches:
    n = batch * 35 * cfg.timing_windows.get(batch, 2) + 1
    load0 = os.getloadavg()[0]
    t = evaluate_lib.time_variants(
      model, params, test_ids[:n], variants, batch_size=batch, bptt=35, repeats=cfg.timing_repeats
    )
    out[str(batch)] = {
      "us_per_token": t,
      "tokens": n - 1,
      "load_avg_1min": [load0, os.getloadavg()[0]],
    }
  return out


def _quick(out_dir: pathlib.Path, data_dir: pathlib.Path, cfg: Config) -> dict:
  ptb = data_dir / "ptb"
  corpus = recoder.load_corpus(ptb)
  test_ids = corpus.test[: cfg.test_tokens]
  valid_ids = corpus.valid[: cfg.max_eval_tokens]
  summary = {"mode": "quick", "seeds": {}}
  for seed in tqdm(cfg.seeds, desc="recoder seeds"):
    trained = _train_runs(out_dir, ptb, cfg, seed)
    rec = {
      "train": {k: {kk: vv for kk, vv in v.items() if kk != "run_dir"} for k, v in trained.items()}
    }
    if "baseline" in trained:
      tcfg, model, trained_rc, params = evaluate_lib.load_run(trained["baseline"]["run_dir"])
      chosen, table = _select(model, params, valid_ids, cfg.sweeps, cfg)
      rec["validation_ppl"] = table
      rec["chosen"] = chosen
      specs = ["none", *chosen.values()]
      rec["test"] = evaluate_lib.evaluate_variants(
        model, params, test_ids, specs, batch_size=cfg.eval_batch, bptt=20, progress=False,
        keep_units=True,
      )  # fmt: skip
      rec["test_other_batches"] = {}
      for b in cfg.reference_batches:
        ref = ["none"] + ([chosen["surprisal"]] if "surprisal" in chosen else [])
        rec["test_other_batches"][str(b)] = evaluate_lib.evaluate_variants(
          model, params, test_ids, ref, batch_size=b, bptt=20, progress=False, keep_units=True
        )
      if seed == cfg.seeds[0] and cfg.garden_path_variants:
        summary["garden_path"] = plot_garden_paths(
          model, params, corpus.vocab, _gp_variants(cfg.garden_path_variants),
          out_dir / "garden_path_quick.png",
        )  # fmt: skip
    if "ensemble_k3" in trained:
      tcfg, model, trained_rc, params = evaluate_lib.load_run(trained["ensemble_k3"]["run_dir"])
      ch, table = _select(model, params, valid_ids, (("ensemble_entropy", (0.5, 2.0), ""),), cfg)
      rec["ensemble_chosen"], rec["ensemble_validation_ppl"] = ch, table
      rec["ensemble_test"] = evaluate_lib.evaluate_variants(
        model, params, test_ids, ["none", *ch.values()], batch_size=cfg.eval_batch, bptt=20,
        progress=False, keep_units=True,
      )  # fmt: skip
    if "surprisal_learned" in trained:
      tcfg, model, trained_rc, params = evaluate_lib.load_run(
        trained["surprisal_learned"]["run_dir"]
      )
      rec["learned_test"] = evaluate_lib.evaluate_variants(
        model, params, test_ids, ["none", "trained"], batch_size=cfg.eval_batch, bptt=20,
        trained=trained_rc, trained_step=tcfg["train"]["step_size"], progress=False,
        keep_units=True,
      )  # fmt: skip
      rec["learned_step_sizes"] = {
        k: np.asarray(jax.nn.softplus(v)).tolist() for k, v in params["step"].items()
      }
    for key in ("test", "ensemble_test", "learned_test"):
      for v in rec.get(key, {}).values():
        v.pop("config", None)
    for v in rec.get("test_other_batches", {}).values():
      for r in v.values():
        r.pop("config", None)
    summary["seeds"][str(seed)] = rec
  if cfg.timing_batches:
    summary["timing"] = _timing(corpus.test, corpus.vocab.size, cfg)
  return summary


def claims_and_headline(summary: dict, cfg: Config) -> tuple[list, list]:
  """Claims with verdicts and headline rows (intervals over seeds and test windows)."""
  seeds = list(summary["seeds"].values())
  claims, head = [], []
  note = f"{len(seeds)} seeds x (window, stream) units; step sizes chosen on validation"

  def add(c, est, extra=""):
    claims.append(stats.claim(c, est, extra or note))
    head.append(stats.row(c.metric, est, c.paper))

  if seeds and "test" in seeds[0]:
    head.append(stats.row(
      f"test perplexity, no recoding (batch {cfg.eval_batch})",
      stats.over_seeds([_units(s["test"]["none"]) for s in seeds], statistic=_ppl),
    ))  # fmt: skip
    signals = sorted(set.intersection(*(set(s["chosen"]) for s in seeds)))
    for signal in signals:
      d = stats.over_seeds(
        [np.c_[s["test"][s["chosen"][signal]]["unit_nll"], s["test"]["none"]["unit_nll"],
               s["test"]["none"]["unit_tokens"]] for s in seeds],
        statistic=_ppl_diff,
      )  # fmt: skip
      steps = ", ".join(s["chosen"][signal].split(":")[1] for s in seeds)
      add(
        stats.Claim(
          f"Recoding with {signal} lowers perplexity",
          f"test perplexity, {signal} recoding (step {steps} per seed) - none",
          "less", 0.0, "lower perplexity (small gains that depend on the signal)",
        ),
        d,
      )  # fmt: skip
      head.append(stats.row(
        f"test perplexity, {signal} recoding",
        stats.over_seeds([_units(s["test"][s["chosen"][signal]]) for s in seeds], statistic=_ppl),
      ))  # fmt: skip
    for b in cfg.reference_batches:
      head.append(stats.row(
        f"test perplexity, no recoding, batch {b} (reference)",
        stats.over_seeds([_units(s["test_other_batches"][str(b)]["none"]) for s in seeds],
                         statistic=_ppl),
      ))  # fmt: skip
  if seeds and "ensemble_test" in seeds[0] and all(s["ensemble_chosen"] for s in seeds):
    d = stats.over_seeds(
      [np.c_[s["ensemble_test"][s["ensemble_chosen"]["ensemble_entropy"]]["unit_nll"],
             s["ensemble_test"]["none"]["unit_nll"], s["ensemble_test"]["none"]["unit_tokens"]]
       for s in seeds],
      statistic=_ppl_diff,
    )  # fmt: skip
    add(
      stats.Claim(
        "Recoding with anchored-ensemble uncertainty lowers perplexity",
        "test perplexity, ensemble_entropy recoding - none (3-member ensemble)",
        "less", 0.0, "lower perplexity",
      ),
      d,
    )  # fmt: skip
  if seeds and "learned_test" in seeds[0]:
    d = stats.over_seeds(
      [np.c_[s["learned_test"]["trained"]["unit_nll"], s["learned_test"]["none"]["unit_nll"],
             s["learned_test"]["none"]["unit_tokens"]] for s in seeds],
      statistic=_ppl_diff,
    )  # fmt: skip
    head.append(
      stats.row("test perplexity, learned-step surprisal recoding - none (same model)", d)
    )
  for batch, t in summary.get("timing", {}).items():
    us = {k: np.asarray(v) for k, v in t["us_per_token"].items()}
    var = cfg.timing_variant
    for base, label in (
      ("none", "decode after the scan"),
      (evaluate_lib.IN_SCAN, "decode in the scan"),
    ):
      ratio = us[var] / us[base]
      est = (
        stats.bootstrap(ratio, statistic=np.median, method="percentile")
        if len(ratio) > 1
        else stats.exact(float(ratio[0]))
      )
      metric = f"cost per token, {var} / no recoding ({label}), batch {batch}"
      if int(batch) == 64:
        add(
          stats.Claim(
            f"Surprisal recoding costs at most 2x the plain LSTM per token at batch 64 ({label})",
            metric, "less", 2.0, "(engineering target of this project, not the paper's)",
          ),
          est,
          f"median over {len(ratio)} interleaved timings; load average {t['load_avg_1min']}",
        )  # fmt: skip
      else:
        head.append(stats.row(metric, est))
  return claims, head


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
    seeds = [x for x in summary["seeds"].values() if "test" in x]
    if not seeds:
      return {}
    out = {"none": float(np.mean([x["test"]["none"]["ppl"] for x in seeds]))}
    for signal in seeds[0]["chosen"]:
      if all(signal in x["chosen"] for x in seeds):
        out[signal] = float(np.mean([x["test"][x["chosen"][signal]]["ppl"] for x in seeds]))
    return out
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
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


NO_CI = (
  "none: the committed 2x200 run stored no per-window NLLs and its checkpoint is not in the "
  "repository; rerun `python -m recoder.evaluate --batch-size 64` on the checkpoint for intervals"
)


def headline_full(summary: dict) -> list[dict]:
  """Full mode's rows (the committed 2x200 run): values without intervals, said so per row."""
  ppl = _variant_ppl(summary)
  rows = []
  for name, v in ppl.items():
    label = "no recoding" if name in ("none", "baseline") else f"recoding {name}"
    rows.append({"metric": f"2x200 test perplexity, {label} (batch 10)", "value": v, "ci": None,
                 "ci_method": NO_CI, "paper": ""})  # fmt: skip
  if "ptb_small_summary" in summary:
    rows.append({"metric": "2x200 LSTM valid perplexity (committed run)",
                 "value": summary["ptb_small_summary"].get("valid_ppl"), "ci": None,
                 "ci_method": NO_CI, "paper": "Zaremba small: 120.7 valid"})  # fmt: skip
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
  if cfg.mode == "quick":
    summary["claims"], summary["headline"] = claims_and_headline(summary, cfg)
  else:
    summary["claims"], summary["headline"] = [], headline_full(summary)
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
    "seed": list(cfg.seeds),
    "selection": "step size per signal chosen on the first "
    f"{cfg.max_eval_tokens} validation tokens; perplexity on test tokens",
    "config": dataclasses.asdict(cfg),
  }
  summary = sanitize(summary)
  atomic_write_json(out_dir / "summary.json", summary)
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
