"""GrAInS studies: a controlled synthetic benchmark and sentiment steering of stories260K.

  python -m experiments.grains.run --quick --out runs/grains     # a few minutes on 2 cores
  python -m experiments.grains.run --out runs/grains             # full sweeps (about 30 min on 2 cores)

Writes ``synthetic.json``/``synthetic.png`` and ``stories.json``/``stories.png`` (see the module
docstrings of ``experiments/grains/synthetic.py`` and ``stories.py`` for the designs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

from experiments.grains import stories, synthetic


def run(*, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path) -> dict:
  import jaxsteer

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if quick:
    scfg = synthetic.SyntheticConfig(
      train_steps=200, n_pairs=16, n_eval=64, steer_layers=(1,), alphas=(0.0, 4.0, 16.0), steps=10
    )
    tcfg = stories.StoriesConfig(layers=(3,), alphas=(0.0, 1.0), max_new_tokens=24, steps=10)
  else:
    scfg, tcfg = synthetic.SyntheticConfig(), stories.StoriesConfig()
  syn = synthetic.run(scfg)
  (out_dir / "synthetic.json").write_text(json.dumps(syn, indent=2, default=float))
  synthetic.plot(syn, out_dir / "synthetic.png")
  lm = jaxsteer.load(
    str(data_dir / "stories260K" / "stories260K.bin"),
    tokenizer=str(data_dir / "stories260K" / "tok512.bin"),
  )
  st = stories.run(lm, tcfg)
  (out_dir / "stories.json").write_text(json.dumps(st, indent=2, default=float))
  stories.plot(st, out_dir / "stories.png")
  return {
    "synthetic": {
      "unsteered": syn["unsteered"],
      "ig_trigger_recall_at_1": syn["ig_trigger_recall_at_1"],
    },
    "stories_unsteered_sentiment": st["unsteered"]["sentiment"],
  }


def main(argv=None) -> dict:
  repo = pathlib.Path(__file__).resolve().parents[2]
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default="runs/grains")
  ap.add_argument(
    "--data", default=os.environ.get("JAXSTEER_DATA", str(repo.parent / "shared" / "data"))
  )
  a = ap.parse_args(argv)
  res = run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data))
  print(json.dumps(res, indent=2))
  return res


if __name__ == "__main__":
  main()
