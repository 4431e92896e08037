"""GrAInS defaults measured on the three GrAInS studies' validation data (issue 12, item 2).

``benchmarks/grains_defaults.py`` chose ``candidates="all", aggregate="mean", pairing="matched",
mode="both"`` on a stories260K sentiment task of its own. This script measures the same choices on
the studies' own validation items, with each study's own metric and a bootstrap interval
(``experiments.stats``) of the paired difference to the unsteered model:

- ``stories`` (``experiments/grains/stories.py``): the 24 fitting pairs, the 12 validation
  openings, the margin log P(held-out happy) - log P(held-out sad) per opening (higher is better),
  at the quick setting's layers and alphas; intervals over the validation openings.
- ``synthetic`` (``experiments/grains/synthetic.py``): the model trained per seed as in the study,
  its fitting pairs and validation groups; accuracy (answer = key's answer) averaged over the four
  groups (higher is better); intervals over seeds and validation items.
- ``vlm`` (``experiments/vlm/study.py``): the toy LLaVA trained as in the quick study, its fitting
  pairs and validation items; hallucination rate over triggered and clean validation items
  together (lower is better); intervals over items (one seed: the model takes minutes to train).

Grid: ``candidates`` in {prompt, all} x ``aggregate`` in {pca, mean} x ``mode`` in {both, pos}
(``pairing="matched"``, the default), plus CAA; IG is computed once per model
(``grains.attribute_pairs``) and shared by every setting. Vectors are scaled to the layer's mean
residual norm as the studies do, so alpha means the same for every setting. Validation data only:
no test item of any study is touched.

  python benchmarks/grains_defaults_studies.py --out benchmarks/results/grains_defaults_studies.json
  python benchmarks/grains_defaults_studies.py --only stories --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import time

import numpy as np

import jaxsteer
from experiments import stats
from experiments.grains import config as grains_config
from experiments.grains import stories, synthetic
from experiments.vlm import config as vlm_config
from experiments.vlm import study as vlm_study
from jaxsteer import grains

SETTINGS = tuple(itertools.product(("prompt", "all"), ("pca", "mean"), ("both", "pos")))
DEFAULT = "all/mean/both"


def _fits(lm, pairs, layer, ig, k, images=None):
  """Every setting's vectors (and CAA's) at ``layer``, scaled to the mean residual norm."""
  out, cos = {}, {}
  c = grains.caa(lm, pairs, layers=[layer], images=images)
  for cand, agg, mode in SETTINGS:
    v = grains.fit(
      lm, pairs, layers=[layer], k=k, candidates=cand, aggregate=agg, mode=mode, images=images,
      attributions=ig, on_unconverged="warn", progress=False,
    )  # fmt: skip
    name = f"{cand}/{agg}/{mode}"
    out[name] = v
    cos[name] = float(
      v.vectors[0] @ c.vectors[0] / (np.linalg.norm(v.vectors[0]) * np.linalg.norm(c.vectors[0]))
    )
  out["caa"] = c
  norms = out[DEFAULT].metadata["residual_norm"]
  return {n: stories._scaled(v, norms) for n, v in out.items()}, cos


def _cell(steered, base, better):
  """The paired difference (steered - unsteered) with its interval, and its sign's reading."""
  est = stats.paired(np.asarray(steered, np.float64), np.asarray(base, np.float64))
  d = est.as_dict()
  lo, hi = d["ci"]
  good, bad = (lo > 0, hi < 0) if better == "higher" else (hi < 0, lo > 0)
  d["reading"] = "improves" if good else "worsens" if bad else "inconclusive"
  return d


def run_stories(data_dir: pathlib.Path) -> dict:
  cfg = grains_config.Config.quick().stories
  root = data_dir / "stories260K"
  lm = jaxsteer.load(str(root / "stories260K.bin"), tokenizer=str(root / "tok512.bin"))
  pairs, val = stories.make_pairs(), stories.val_prompts()
  base = stories.continuation_margin(lm, lm, val)
  ig = grains.attribute_pairs(lm, pairs, steps=cfg.steps, on_unconverged="warn")
  cells, cosines = {}, {}
  for layer in cfg.layers:
    vecs, cos = _fits(lm, pairs, layer, ig, cfg.k)
    cosines[f"layer {layer}"] = cos
    for name, v in vecs.items():
      for a in cfg.alphas:
        m = stories.continuation_margin(jaxsteer.steer(lm, v, alpha=a), lm, val)
        cells.setdefault(name, {})[f"layer {layer}, alpha {a:g}"] = _cell(m, base, "higher")
  return dict(
    metric="validation margin change (nats), higher is better",
    unit="validation openings",
    n_pairs=len(pairs),
    n_val=len(val),
    unsteered=float(base.mean()),
    ig_steps_max=int(np.max(ig.steps)),
    ig_rel_error_max=float(np.max(ig.rel_error)),
    cos_with_caa=cosines,
    cells=cells,
  )


def run_synthetic() -> dict:
  cfg = grains_config.Config.quick().synthetic
  per_seed = []
  for seed in cfg.seeds:
    lm, _ = synthetic.train(cfg, False, seed)
    rng = np.random.default_rng(seed + 1000)  # the study's draws, in its order
    fit_prompts, _, _, _ = synthetic.make_items(rng, cfg.n_pairs, key_a=True, trigger=True)
    pairs = [grains.Pair(p.tolist(), [synthetic.A], [synthetic.B]) for p in fit_prompts]
    val = synthetic._groups(rng, cfg.n_eval)
    ig = grains.attribute_pairs(lm, pairs, steps=cfg.steps, on_unconverged="warn")

    def correct(model, val=val):
      c = synthetic._correct(model, val)
      return np.concatenate([c[g] for g in synthetic.GROUPS])

    seed_out = {"unsteered": correct(lm), "cos": {}}
    for layer in cfg.steer_layers:
      vecs, cos = _fits(lm, pairs, layer, ig, cfg.k)
      seed_out["cos"][f"layer {layer}"] = cos
      for name, v in vecs.items():
        for a in cfg.alphas:
          seed_out[(name, f"layer {layer}, alpha {a:g}")] = correct(jaxsteer.steer(lm, v, alpha=a))
    per_seed.append(seed_out)
  cells = {}
  for key in [k for k in per_seed[0] if isinstance(k, tuple)]:
    diffs = [s[key] - s["unsteered"] for s in per_seed]
    d = stats.over_seeds(diffs).as_dict()
    lo, hi = d["ci"]
    d["reading"] = "improves" if lo > 0 else "worsens" if hi < 0 else "inconclusive"
    cells.setdefault(key[0], {})[key[1]] = d
  return dict(
    metric="validation accuracy change (mean of the four groups), higher is better",
    unit="seeds x validation items",
    seeds=list(cfg.seeds),
    n_val_items_per_seed=int(len(per_seed[0]["unsteered"])),
    unsteered=float(np.mean([s["unsteered"].mean() for s in per_seed])),
    cos_with_caa={f"seed {sd}": s["cos"] for sd, s in zip(cfg.seeds, per_seed)},
    cells=cells,
  )


def run_vlm(data_dir: pathlib.Path) -> dict:
  cfg = vlm_config.Config.quick()
  cfg = dataclasses.replace(cfg, seed=cfg.seeds[0])
  lm = vlm_study.build_model(cfg, data_dir)
  lm, _ = vlm_study.train(lm, cfg, False)
  rng = np.random.default_rng(cfg.seed + 1)  # the study's draws, in its order
  n_val = max(2, cfg.n_eval // 2)
  vlm_study.make_items(rng, cfg.n_eval, cfg.image_size, trigger=True, exclude_blue=True)
  vlm_study.make_items(rng, cfg.n_eval, cfg.image_size, trigger=False)
  fit_items = vlm_study.make_items(rng, cfg.n_pairs, cfg.image_size, trigger=True,
                                   exclude_blue=True)  # fmt: skip
  target_val = vlm_study.make_items(rng, n_val, cfg.image_size, trigger=True, exclude_blue=True)
  clean_val = vlm_study.make_items(rng, n_val, cfg.image_size, trigger=False)
  from PIL import Image

  pairs = [
    grains.Pair(vlm_study.prompt(True), f"{it['color']}.", "blue.", Image.fromarray(it["image"]))
    for it in fit_items
  ]
  items = list(target_val) + list(clean_val)

  def halluc(model):
    return np.asarray(vlm_study.hallucinated(model, items), np.float64)

  base = halluc(lm)
  ig = grains.attribute_pairs(lm, pairs, steps=cfg.steps, on_unconverged="warn")
  vecs, cos = _fits(lm, pairs, cfg.steer_layer, ig, cfg.k)
  cells = {}
  for name, v in vecs.items():
    for a in cfg.alphas:
      h = halluc(jaxsteer.steer(lm, v, alpha=a))
      cells.setdefault(name, {})[f"layer {cfg.steer_layer}, alpha {a:g}"] = _cell(h, base, "lower")
  return dict(
    metric="validation hallucination-rate change (triggered + clean items), lower is better",
    unit="validation items",
    seed=cfg.seed,
    n_val_items=len(items),
    unsteered=float(base.mean()),
    unsteered_target=float(base[: len(target_val)].mean()),
    unsteered_clean=float(base[len(target_val) :].mean()),
    ig_steps_max=int(np.max(ig.steps)),
    ig_rel_error_max=float(np.max(ig.rel_error)),
    cos_with_caa=cos,
    cells=cells,
  )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default=os.environ.get("JAXSTEER_DATA", "../shared/data"))
  ap.add_argument("--only", default="stories,synthetic,vlm")
  ap.add_argument("--out")
  args = ap.parse_args(argv)
  data = pathlib.Path(args.data)
  names = [n for n in args.only.split(",") if n]
  unknown = sorted(set(names) - {"stories", "synthetic", "vlm"})
  if unknown or not names:
    ap.error(f"unknown studies {unknown}; known: stories, synthetic, vlm")
  out = {"settings": [f"{c}/{a}/{m}" for c, a, m in SETTINGS], "default": DEFAULT,
         "pairing": "matched", "ci_level_percent": round(100 * stats.LEVEL), "studies": {},
         "loadavg_start": list(os.getloadavg())}  # fmt: skip
  for name in names:
    t0 = time.perf_counter()
    res = {"stories": lambda: run_stories(data), "synthetic": run_synthetic,
           "vlm": lambda: run_vlm(data)}[name]()  # fmt: skip
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out["studies"][name] = res
    print(name, json.dumps(summary_lines(res)), flush=True)
  out["loadavg_finish"] = list(os.getloadavg())
  if args.out:
    from jaxsteer._src.fileio import atomic_write_json

    atomic_write_json(pathlib.Path(args.out), out)


def summary_lines(res: dict) -> dict:
  """Per setting: each cell's estimate [interval] in one string (for the console and docs)."""
  return {
    name: {k: f"{c['value']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" for k, c in cells.items()}
    for name, cells in res["cells"].items()
  }


if __name__ == "__main__":
  main()
