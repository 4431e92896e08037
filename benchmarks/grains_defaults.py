"""Which GrAInS defaults steer the right way: a measurement on stories260K (issue 12).

Pairs share one story opening and differ only in the response (happy vs sad continuation), the
common case of preference pairs. For every combination of ``candidates``, ``aggregate`` and
``mode`` (and CAA) we fit at layer 3 with converged IG and report the change of the mean held-out
margin log P(happy) - log P(sad) over held-out openings at several alphas; vectors are used as the
library returns them (and, second, scaled to the layer's mean residual norm, as the studies do).

  python benchmarks/grains_defaults.py [--data ../shared/data] [--out defaults.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import time

import numpy as np

import jaxsteer
from jaxsteer import grains
from jaxsteer._src.evals.truthfulqa import loglikelihoods

OPENINGS = [
  "Once upon a time, there was a little girl named Lily.",
  "One day, Tom went to the park with his mom.",
  "Once upon a time, there was a big dog named Max.",
  "One day, a little bird sat in a tree.",
  "Once upon a time, there was a boy who had a red ball.",
  "Sue and her friend Ben played in the garden.",
  "Once upon a time, a little cat lived in a small house.",
  "One day, Lily found a shiny rock on the ground.",
  "There was a girl named Amy who liked to sing.",
  "Once upon a time, there was a kind old man.",
  "Tim had a toy car that he loved very much.",
  "One sunny day, Anna went to the beach.",
]
HELD_OUT = [
  "Once upon a time, there was a little boy named Jack.",
  "One day, a small fish swam in the sea.",
  "Mia had a pretty doll with a pink dress.",
  "Once upon a time, there was a happy frog.",
  "Ben and his dad went to the shop.",
  "One morning, a little girl woke up early.",
]
HAPPY = [
  "She was very happy and smiled.",
  "He laughed and felt so happy.",
  "They were happy and played all day.",
]
SAD = [
  "She was very sad and cried.",
  "He cried and felt so sad.",
  "They were sad and went home.",
]


def sentiment_pairs(openings=OPENINGS):
  """Shared-prompt pairs: one opening, a happy (preferred) and a sad (dispreferred) sentence."""
  return [grains.Pair(o, HAPPY[i % len(HAPPY)], SAD[i % len(SAD)]) for i, o in enumerate(openings)]


def held_out_margin(lm, openings=HELD_OUT) -> float:
  """Mean over held-out openings and sentence pairs of log P(happy) - log P(sad)."""
  reqs = []
  for o in openings:
    for h, s in zip(HAPPY, SAD):
      reqs += [(o, " " + h), (o, " " + s)]
  ll = loglikelihoods(lm, reqs, batch_size=len(reqs))
  return float(np.mean(ll[0::2] - ll[1::2]))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default=os.environ.get("JAXSTEER_DATA", "../shared/data"))
  ap.add_argument("--out")
  ap.add_argument("--layer", type=int, default=3)
  args = ap.parse_args(argv)
  root = pathlib.Path(args.data) / "stories260K"
  lm = jaxsteer.load(str(root / "stories260K.bin"), tokenizer=str(root / "tok512.bin"))
  pairs = sentiment_pairs()
  base = held_out_margin(lm)
  alphas = (-2.0, 2.0, 8.0)
  rows = {}
  t0 = time.perf_counter()
  caa = grains.caa(lm, pairs, layers=[args.layer])
  fits = {"caa": caa}
  ig = grains.attribute_pairs(lm, pairs, on_unconverged="warn")
  t_ig = time.perf_counter() - t0
  grid = itertools.product(
    ("prompt", "response", "all"), ("pca", "mean"), ("pooled", "matched"), ("both", "pos")
  )
  for cand, agg, pairing, mode in grid:
    fits[f"{cand}/{agg}/{pairing}/{mode}"] = grains.fit(
      lm, pairs, layers=[args.layer], candidates=cand, aggregate=agg, mode=mode, pairing=pairing,
      progress=False, on_unconverged="warn", attributions=ig,
    )  # fmt: skip
  rnorm = fits["all/mean/matched/both"].metadata["residual_norm"][0]
  for name, v in fits.items():
    unit = v.vectors / max(float(np.linalg.norm(v.vectors)), 1e-12)
    cos_caa = float(unit[0] @ (caa.vectors[0] / np.linalg.norm(caa.vectors[0])))
    raw = {a: held_out_margin(jaxsteer.steer(lm, v, a)) - base for a in alphas}
    scaled_v = grains.SteeringVectors(v.layers, unit * rnorm)
    scaled = {a: held_out_margin(jaxsteer.steer(lm, scaled_v, a / 4)) - base for a in alphas}
    agg = v.metadata.get("aggregation", {})
    rows[name] = dict(
      norm=float(np.linalg.norm(v.vectors)),
      cos_caa=cos_caa,
      margin_change=raw,
      margin_change_scaled=scaled,
      pca=agg,
      ig_rel_error_max=v.metadata.get("ig_relative_delta_max"),
      ig_steps_max=max(v.metadata.get("ig_steps", [0])),
    )
    print(
      f"{name:22s} |v|={rows[name]['norm']:.3f} cos(caa)={cos_caa:+.2f} "
      + " ".join(f"a={a:+g}:{raw[a]:+.3f}" for a in alphas)
      + " | scaled "
      + " ".join(f"{a / 4:+g}|h|:{scaled[a]:+.3f}" for a in alphas),
      flush=True,
    )
  out = dict(
    base_margin=base,
    layer=args.layer,
    n_pairs=len(pairs),
    n_held_out=len(HELD_OUT),
    alphas=alphas,
    residual_norm=rnorm,
    results=rows,
    seconds=time.perf_counter() - t0,
    ig_seconds=t_ig,
    ig_steps=ig.steps.tolist(),
    ig_rel_error=ig.rel_error.tolist(),
    loadavg=os.getloadavg(),
  )
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1, default=str))
  print(json.dumps({"base_margin": base, "loadavg": os.getloadavg()}))


if __name__ == "__main__":
  main()
