"""The foundation check: load the default model with ``jaxsteer.load`` and generate greedily.

Loads stories260K (llama2.c format) from the data directory, or any checkpoint path or hub id
given with ``--model``, and generates from "Once upon a time" with the KV cache. Settings:
``experiments/models/config.py``.

  python -m experiments.models.run --quick --out runs/models
  python -m experiments.models.run --model meta-llama/Llama-3.2-1B --out runs/models  # online
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from experiments import stats
from experiments.models.config import Config


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Loads the model and generates; writes ``generation.json``; returns the summary."""
  import jaxsteer

  cfg = config or (Config.quick() if quick else Config.full())
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if cfg.model is None:
    ckpt = pathlib.Path(data_dir) / "stories260K" / "stories260K.bin"
    if not ckpt.is_file():
      raise FileNotFoundError(f"stories260K not found at {ckpt} (or pass --model)")
    model, kwargs = str(ckpt), {"tokenizer": cfg.tokenizer or str(ckpt.parent / "tok512.bin")}
  else:
    model, kwargs = cfg.model, ({"tokenizer": cfg.tokenizer} if cfg.tokenizer else {})
  t0 = time.perf_counter()
  lm = jaxsteer.load(model, **kwargs)
  load_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  text = lm.generate(cfg.prompt, max_new_tokens=cfg.max_new_tokens)
  gen_s = time.perf_counter() - t0
  warm = []
  for _ in range(3):
    t0 = time.perf_counter()
    lm.generate(cfg.prompt, max_new_tokens=cfg.max_new_tokens)
    warm.append(time.perf_counter() - t0)
  n_params = sum(int(x.size) for x in __import__("jax").tree.leaves(lm.params))
  out = {
    "model": model,
    "prompt": cfg.prompt,
    "generated": text,
    "parameters": n_params,
    "load_seconds": load_s,
    "generate_seconds_first_call": gen_s,
    "generate_seconds_warm": warm,
    "load_average": list(os.getloadavg()),
    "figures": [],
    "headline": [
      stats.row("parameters", stats.exact(n_params)),
      stats.row(
        f"seconds to generate {cfg.max_new_tokens} greedy tokens (warm; 3 repeats)",
        stats.bootstrap(warm, statistic=np.median, method="percentile"),
      ),
    ],
    "setting": {
      "model": model,
      "data": f"prompt {cfg.prompt!r}",
      "seed": "greedy decoding (deterministic)",
      "selection": "nothing is tuned (a load-and-generate check)",
      "config": dataclasses.asdict(cfg),
    },
  }
  (out_dir / "generation.json").write_text(json.dumps(out, indent=2))
  return out


def main(argv=None) -> dict:
  repo = pathlib.Path(__file__).resolve().parents[2]
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default="runs/models")
  ap.add_argument(
    "--data", default=os.environ.get("JAXSTEER_DATA", str(repo.parent / "shared" / "data"))
  )
  ap.add_argument("--model", default=None, help="checkpoint path or hub id")
  ap.add_argument("--tokenizer", default=None, help="tokenizer path (llama2.c checkpoints)")
  a = ap.parse_args(argv)
  cfg = dataclasses.replace(
    Config.quick() if a.quick else Config.full(), model=a.model, tokenizer=a.tokenizer
  )
  res = run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data), config=cfg)
  print(json.dumps(res, indent=2))
  return res


if __name__ == "__main__":
  main()
