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

from experiments.grains import stories, synthetic
from experiments.grains.config import Config


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
  syn = synthetic.run(cfg.synthetic)
  (out_dir / "synthetic.json").write_text(json.dumps(syn, indent=2, default=float))
  synthetic.plot(syn, out_dir / "synthetic.png")
  figures = ["synthetic.png"]
  best = max(
    (r for k, s in syn["sweeps"].items() if k.startswith("grains") for r in s["sweep"]),
    key=lambda r: (r["alpha"] > 0, r["trigger_keyA"], -r["alpha"]),  # the smallest alpha > 0
  )
  caa_best = max(
    (r for k, s in syn["sweeps"].items() if k.startswith("caa") for r in s["sweep"]),
    key=lambda r: (r["alpha"] > 0, r["trigger_keyA"], -r["alpha"]),
  )
  head = [
    {
      "metric": "synthetic: contrastive IG ranks the trigger first (recall@1; chance 1/8)",
      "value": syn["ig_trigger_recall_at_1"],
      "paper": "attribution finds the tokens behind the dispreferred answer",
    },
    {
      "metric": "synthetic: triggered key-A items answered A, unsteered",
      "value": syn["unsteered"]["trigger_keyA"],
      "paper": "",
    },
    {
      "metric": f"synthetic: same, best GrAInS (alpha {best['alpha']:g})",
      "value": best["trigger_keyA"],
      "paper": "GrAInS steers toward the preferred answer",
    },
    {
      "metric": "synthetic: clean key-B items still answered B at that alpha",
      "value": best["clean_keyB"],
      "paper": "(not measured in the paper)",
    },
    {
      "metric": f"synthetic: triggered key-A items answered A, best CAA (alpha {caa_best['alpha']:g})",
      "value": caa_best["trigger_keyA"],
      "paper": "CAA is weaker than GrAInS",
    },
  ]
  summary = {
    "synthetic": {
      "unsteered": syn["unsteered"],
      "ig_trigger_recall_at_1": syn["ig_trigger_recall_at_1"],
      "train_loss_final": syn["train_loss_final"],
      "sweeps": syn["sweeps"],
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
    (out_dir / "stories.json").write_text(json.dumps(st, indent=2, default=float))
    stories.plot(st, out_dir / "stories.png")
    figures.append("stories.png")
    summary["stories"] = {
      "model": model_name,
      "unsteered": st["unsteered"],
      "sweeps": {k: [{kk: vv for kk, vv in r.items() if kk != "example"} for r in rows]
                 for k, rows in st["sweeps"].items()},
    }  # fmt: skip
    head.append(
      {
        "metric": "stories: sentiment (lexicon points per 100 words), unsteered",
        "value": st["unsteered"]["sentiment"],
        "paper": "",
      }
    )
    for key, rows in sorted(st["sweeps"].items()):
      r = max(rows, key=lambda r: r["alpha"] if r["alpha"] <= 0.3 else -1)
      head.append(
        {
          "metric": f"stories: sentiment, {key}, alpha {r['alpha']:g} (NLL {r['nll']:.3g})",
          "value": r["sentiment"],
          "paper": "steering raises the target attribute at a small fluency cost",
        }
      )
  summary["headline"] = head
  summary["figures"] = figures
  summary["setting"] = {
    "model": (
      f"synthetic: {cfg.synthetic.layers}-layer width-{cfg.synthetic.hidden} Llama trained here; "
      f"stories: {model_name or 'skipped'}"
    ),
    "data": "generated trigger task; stories260K sentiment templates (experiments/grains/stories.py)",
    "seed": cfg.synthetic.seed,
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
