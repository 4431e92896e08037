"""Runs every study of the project and writes one JSON summary.

  python -m experiments.reproduce --quick            # minutes on 2 CPU cores
  python -m experiments.reproduce --only grains,sgntk --out runs/reproduce

Studies (each ``experiments/<study>/run.py`` exposes ``run(*, quick, out_dir, data_dir) -> dict``):

- ``models``: load the default model (stories260K, llama2.c) and generate (the foundation check).
- ``grains``: GrAInS vs CAA vs unsteered on a controlled synthetic task and on stories260K.
- ``paca``: PaCA vs LoRA vs full fine-tuning.
- ``sgntk``: the SG-NTK paper's Figures 1-3 and a digits study.
- ``recoder``: recoding LSTM language models on Penn Treebank.

Results land in ``--out`` (PNGs, JSON) and ``summary.json`` there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
import time
import traceback

STUDIES = ("models", "grains", "paca", "sgntk", "recoder")


def default_data_dir() -> pathlib.Path:
  repo = pathlib.Path(__file__).resolve().parent.parent
  return pathlib.Path(os.environ.get("JAXSTEER_DATA", repo.parent / "shared" / "data"))


def run_models(*, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path) -> dict:
  """Loads stories260K and generates greedily: the foundation's smoke run."""
  import jaxsteer

  ckpt = data_dir / "stories260K" / "stories260K.bin"
  tok = data_dir / "stories260K" / "tok512.bin"
  t0 = time.perf_counter()
  lm = jaxsteer.load(str(ckpt), tokenizer=str(tok))
  text = lm.generate("Once upon a time", max_new_tokens=32 if quick else 128)
  out = {"model": str(ckpt), "prompt": "Once upon a time", "generated": text}
  out["seconds"] = round(time.perf_counter() - t0, 2)
  (out_dir / "generation.json").write_text(json.dumps(out, indent=2))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="small settings (minutes on 2 CPU cores)")
  ap.add_argument("--only", default=",".join(STUDIES), help="comma-separated subset of studies")
  ap.add_argument("--out", default="runs/reproduce", help="output directory")
  ap.add_argument("--data", default=str(default_data_dir()), help="shared data directory")
  args = ap.parse_args(argv)
  only = [s.strip() for s in args.only.split(",") if s.strip()]
  unknown = sorted(set(only) - set(STUDIES))
  if unknown:
    ap.error(f"unknown studies {unknown}; known: {', '.join(STUDIES)}")
  data_dir = pathlib.Path(args.data)
  if not data_dir.is_dir():
    ap.error(f"data directory not found: {data_dir} (set --data or JAXSTEER_DATA)")
  out = pathlib.Path(args.out)
  summary, failed = {}, []
  for name in only:
    study_dir = out / name
    study_dir.mkdir(parents=True, exist_ok=True)
    print(f"== {name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
      fn = (
        run_models if name == "models" else importlib.import_module(f"experiments.{name}.run").run
      )
      result = fn(quick=args.quick, out_dir=study_dir, data_dir=data_dir)
      summary[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "result": result}
    except Exception as e:  # report every study, then fail at the end
      traceback.print_exc()
      failed.append(name)
      summary[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
  (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  print(json.dumps({k: {"ok": v["ok"], "seconds": v.get("seconds")} for k, v in summary.items()}))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
