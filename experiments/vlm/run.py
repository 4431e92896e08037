"""The vision-language GrAInS study as a ``reproduce`` entry (see ``config.py`` and ``study.py``).

python -m experiments.vlm.run --out runs/vlm [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

from experiments.vlm import study
from experiments.vlm.config import Config

FIGURES = ("vlm_attribution.png", "vlm_sweep.png")


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Trains the toy LLaVA, attributes, steers; writes JSON and PNGs under ``out_dir``."""
  cfg = config or (Config.quick() if quick else Config.full())
  res = study.run(cfg, data_dir, out_dir, progress=False)
  head = [
    {
      "metric": "toy LLaVA: trigger is the most negative text token (IG over image + text)",
      "value": res["trigger_is_most_negative_text_token"],
      "paper": "attribution finds the tokens behind the dispreferred answer",
    },
    {
      "metric": f"toy LLaVA: share of the 5 most positive image tokens on the box (chance "
      f"{res['box_patch_share']:.3g})",
      "value": res["top5_image_tokens_on_box"],
      "paper": "image patches are attributed too",
    },
    {
      "metric": "toy LLaVA: hallucination rate on triggered items, unsteered",
      "value": res["unsteered"]["target"],
      "paper": "MMHal-Bench hallucination rate 0.624 (LLaVA-1.6-7B)",
    },
  ]
  for name, label in (("grains", "GrAInS (pos)"), ("caa", "CAA")):
    r = max(res["sweeps"][name], key=lambda r: r["alpha"])
    head.append(
      {
        "metric": f"toy LLaVA: hallucination on triggered / clean items, {label}, alpha "
        f"{r['alpha']:g} (clean: {r['clean']:.3g})",
        "value": r["target"],
        "paper": "0.514 with GrAInS" if name == "grains" else "",
      }
    )
  setting = res.pop("setting")
  return {**res, "headline": head, "setting": setting, "figures": list(FIGURES)}


def main(argv=None) -> dict:
  repo = pathlib.Path(__file__).resolve().parents[2]
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default="runs/vlm")
  ap.add_argument(
    "--data", default=os.environ.get("JAXSTEER_DATA", str(repo.parent / "shared" / "data"))
  )
  a = ap.parse_args(argv)
  res = run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data))
  print(json.dumps({k: v for k, v in res.items() if k != "setting"}, indent=2, default=str))
  return res


if __name__ == "__main__":
  main()
