"""GrAInS studies: a controlled synthetic benchmark and sentiment steering of a real model.

GrAInS: Nguyen et al., "GrAInS: Gradient-based Attribution for Inference-Time Steering of LLMs and
VLMs", 2025. Settings: ``experiments/grains/config.py``.

  python -m experiments.grains.run --quick --out runs/grains     # a few minutes on 2 cores
  python -m experiments.grains.run --out runs/grains             # full sweeps (about 30 min on 2 cores)
  python -m experiments.grains.run --quick --model HUB_ID_OR_PATH  # stories part on another model

Writes ``synthetic.json``/``synthetic.png``, ``stories.json``/``stories.png`` and
``attribution.png`` (a contrastive-IG heatmap of one steering pair; see the module docstrings of
``experiments/grains/synthetic.py`` and ``stories.py`` for the designs). Without ``--model`` and
without stories260K in the data directory, the stories part is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib

import numpy as np

from experiments import stats
from experiments.grains import stories, synthetic
from experiments.grains.config import Config
from experiments.report import sanitize


def load_model(model: str | None, tokenizer: str | None, data_dir: pathlib.Path):
  """Loads ``model`` (path or hub id) or stories260K from ``data_dir``; None if neither exists."""
  import jaxsteer

  if model is not None:
    return jaxsteer.load(model, **({"tokenizer": tokenizer} if tokenizer else {})), model
  ckpt = pathlib.Path(data_dir) / "stories260K" / "stories260K.bin"
  if not ckpt.is_file():
    return None, None
  tok = tokenizer or str(ckpt.parent / "tok512.bin")
  return jaxsteer.load(str(ckpt), tokenizer=tok), str(ckpt)


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Runs both experiments; writes JSON and PNGs under ``out_dir``; returns the summary."""
  import jaxsteer

  cfg = config or (Config.quick() if quick else Config.full())
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  syn = synthetic.run(cfg.synthetic, progress=False)
  syn["summary"] = synthetic.summarize(syn)
  (out_dir / "synthetic.json").write_text(json.dumps(sanitize(syn), indent=2))
  synthetic.plot(syn, out_dir / "synthetic.png")
  figures = ["synthetic.png"]
  sm = syn["summary"]
  n_seeds = len(cfg.synthetic.seeds)
  E = lambda d: stats.Estimate(d["value"], d["ci"][0], d["ci"][1], d["n"], d["ci_method"])  # noqa: E731
  claims, head = [], []

  def add(c: stats.Claim, est: stats.Estimate, note=""):
    claims.append(stats.claim(c, est, note))
    head.append(stats.row(c.metric, est, c.paper))

  syn_note = f"{n_seeds} seeds x test items; alpha/layer chosen on validation items"
  add(
    stats.Claim(
      "Contrastive IG finds the input tokens behind the dispreferred answer",
      "synthetic: IG ranks the planted trigger first (recall@1; chance 1/8)",
      "greater", 0.125, "attribution finds the tokens behind the dispreferred answer",
    ),
    E(sm["ig_recall_at_1"]), f"{n_seeds} seeds x 20 pairs",
  )  # fmt: skip
  add(
    stats.Claim(
      "GrAInS steers toward the preferred answer",
      "synthetic: triggered key-A items answered A, GrAInS - unsteered (test)",
      "greater", 0.0, "GrAInS steers toward the preferred answer",
    ),
    E(sm["grains_minus_unsteered_trigger_keyA"]), syn_note,
  )  # fmt: skip
  add(
    stats.Claim(
      "GrAInS steers better than CAA",
      "synthetic: triggered key-A items answered A, GrAInS - CAA (test)",
      "greater", 0.0, "CAA is weaker than GrAInS",
    ),
    E(sm["grains_minus_caa_trigger_keyA"]), syn_note,
  )  # fmt: skip
  add(
    stats.Claim(
      "GrAInS keeps the model's other behaviour (accuracy over all four groups drops < 0.05)",
      "synthetic: mean accuracy over the four groups, GrAInS - unsteered (test)",
      "greater", -0.05, "steering preserves general capability",
    ),
    E(sm["grains_minus_unsteered_mean"]), syn_note,
  )  # fmt: skip
  for method in ("unsteered", "grains", "caa"):
    for g in ("trigger_keyA", "clean_keyB", "mean"):
      head.append(stats.row(f"synthetic: accuracy {g}, {method} (test)", E(sm[f"{method}_{g}"])))
  summary = {
    "synthetic": {
      "summary": sm,
      "validation_sweeps": {s["seed"]: s["validation_sweep"] for s in syn["seeds"]},
      "train_loss_final": {s["seed"]: s["train_loss_final"] for s in syn["seeds"]},
    },
  }
  lm, model_name = (
    (None, None) if cfg.stories is None else load_model(cfg.model, cfg.tokenizer, data_dir)
  )
  if lm is None:
    summary["stories"] = "skipped: no --model and no stories260K in the data directory"
  else:
    pair = stories.make_pairs()[0]
    res = jaxsteer.attribution.contrastive(
      lm, pair.prompt, pair.preferred, pair.dispreferred, steps=cfg.heatmap_steps
    )
    res.plot(str(out_dir / "attribution.png"))
    figures.append("attribution.png")
    st = stories.run(lm, cfg.stories, progress=False)
    st["summary"] = stories.summarize(st)
    (out_dir / "stories.json").write_text(json.dumps(sanitize(st), indent=2))
    stories.plot(st, out_dir / "stories.png")
    figures.append("stories.png")
    ss, test = st["summary"], st["test"]
    n_test = st["n_test_prompts"]
    note = f"{n_test} test prompts (paired); layer/alpha chosen on {st['n_val_prompts']} others"

    def diff(a, b, metric):
      x, y = np.asarray(test[a][metric], float), np.asarray(test[b][metric], float)
      ok = np.isfinite(x) & np.isfinite(y)
      return stats.paired(x[ok], y[ok])

    g = st["chosen"].get("grains", {})
    at = f"layer {g.get('layer')}, alpha {g.get('alpha')}"
    add(
      stats.Claim(
        "Steering with GrAInS raises the target attribute (sentiment)",
        f"stories: margin log P(happy) - log P(sad), GrAInS ({at}) - unsteered",
        "greater", 0.0, "steering raises the target attribute",
      ),
      diff("grains", "unsteered", "margin"), note,
    )  # fmt: skip
    add(
      stats.Claim(
        "Steering with GrAInS raises the target attribute (lexicon score of generated text)",
        "stories: lexicon sentiment per 100 words, GrAInS - unsteered",
        "greater", 0.0, "steering raises the target attribute",
      ),
      diff("grains", "unsteered", "sentiment"), note,
    )  # fmt: skip
    add(
      stats.Claim(
        "GrAInS steers better than CAA",
        "stories: margin, GrAInS - CAA (each at its validation choice)",
        "greater", 0.0, "GrAInS > CAA",
      ),
      diff("grains", "caa", "margin"), note,
    )  # fmt: skip
    add(
      stats.Claim(
        "GrAInS's direction matters (beats a random direction of the same norm)",
        "stories: margin, GrAInS - random direction of equal norm",
        "greater", 0.0, "(control; not in the paper)",
      ),
      diff("grains", "random", "margin"), note,
    )  # fmt: skip
    if "iti" in test:
      add(
        stats.Claim(
          "GrAInS steers better than ITI", "stories: margin, GrAInS - ITI", "greater", 0.0,
          "GrAInS > ITI",
        ),
        diff("grains", "iti", "margin"), note,
      )  # fmt: skip
    add(
      stats.Claim(
        "GrAInS keeps fluency (NLL rises < 0.5 nats per token)",
        "stories: NLL per generated token (unsteered model), GrAInS - unsteered",
        "less", 0.5, "small fluency cost",
      ),
      diff("grains", "unsteered", "nll"), note,
    )  # fmt: skip
    for m in test:
      for metric in stories.METRICS:
        head.append(stats.row(f"stories: {metric}, {m} (test)", E(ss[m][metric])))
    summary["stories"] = {
      "model": model_name,
      "iti": st["iti"],
      "chosen": st["chosen"],
      "unsteered_val": st["unsteered_val"],
      "validation_sweep": st["validation_sweep"],
      "summary": ss,
      "examples": {m: r["example"] for m, r in test.items()},
    }
  summary["claims"] = claims
  summary["headline"] = head
  summary["figures"] = figures
  summary["setting"] = {
    "model": (
      f"synthetic: {cfg.synthetic.layers}-layer width-{cfg.synthetic.hidden} Llama trained here; "
      f"stories: {model_name or 'skipped'}"
    ),
    "data": "generated trigger task; stories260K sentiment templates (experiments/grains/stories.py)",
    "seed": list(cfg.synthetic.seeds),
    "selection": "alpha and layer per method chosen on validation items/prompts; numbers on test",
    "config": dataclasses.asdict(cfg),
  }
  return summary


def main(argv=None) -> dict:
  repo = pathlib.Path(__file__).resolve().parents[2]
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default="runs/grains")
  ap.add_argument(
    "--data", default=os.environ.get("JAXSTEER_DATA", str(repo.parent / "shared" / "data"))
  )
  ap.add_argument("--model", default=None, help="path or hub id for the stories part")
  ap.add_argument("--tokenizer", default=None, help="tokenizer path (llama2.c checkpoints)")
  a = ap.parse_args(argv)
  cfg = Config.quick() if a.quick else Config.full()
  cfg = dataclasses.replace(cfg, model=a.model, tokenizer=a.tokenizer)
  res = run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data), config=cfg)
  print(json.dumps({k: v for k, v in res.items() if k != "setting"}, indent=2, default=str))
  return res


if __name__ == "__main__":
  main()
