"""PaCA vs LoRA vs full fine-tuning on a small Llama-shaped model (tinyshakespeare bytes).

PaCA: Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning", ICLR 2025.
A ``tiny`` model is first pre-trained (full, Adam) on the first half of the text, then fine-tuned
from that checkpoint on the second half with PaCA (r = 2k), LoRA (r = k), int8 PaCA (r = 2k) and
full fine-tuning, all 7 projections adapted. Reports eval losses, trainable parameter counts,
step-time ratios against LoRA (same process, same machine) and a PNG of the loss curves.

  python -m experiments.paca.run --quick --out results/paca --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm import tqdm

import paca_jax
from paca_jax.models import CONFIGS, TinyLlama

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = r".*(q|k|v|o|gate|up|down)_proj"


def _batches(tokens, batch, seq, seed):
  rng = np.random.default_rng(seed)
  while True:
    s = rng.integers(0, len(tokens) - seq - 1, size=batch)
    x = np.stack([tokens[i : i + seq + 1] for i in s])
    yield {"x": x[:, :-1], "y": x[:, 1:]}


def _train(model, params, method, lr, steps, tokens, eval_batches, seed, desc):
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(lr))
  state = tr.init(params, jax.random.key(seed))
  losses, times = [], []
  it = _batches(tokens, 8, 64, seed)
  for _ in tqdm(range(steps), desc=desc, leave=False):
    t0 = time.perf_counter()
    state, loss = tr.step(state, next(it))
    losses.append(float(loss))  # float() blocks until the step is done
    times.append(time.perf_counter() - t0)
  state = tr.flush(state)
  ev = float(np.mean([float(tr.eval_loss(state, b)) for b in eval_batches]))
  return {
    "losses": losses,
    "eval_loss": ev,
    "trainable_params": method.num_trainable(state.trainable),
    "median_step_s": statistics.median(times[2:]) if len(times) > 3 else None,
    # Memory of what the step holds: frozen base (int8 for PaCA-int8) and trainable + Adam.
    "frozen_MiB": sum(a.nbytes for a in jax.tree.leaves(state.frozen)) / 2**20,
    "trainable_and_opt_MiB": sum(
      a.nbytes for a in jax.tree.leaves((state.trainable, state.opt_state))
    )
    / 2**20,
    "merged": tr.merged_params(state),
  }


def run(*, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path) -> dict:
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = pathlib.Path(data_dir) / "tinyshakespeare" / "input.txt"
  if not path.is_file():
    raise FileNotFoundError(f"tinyshakespeare not found at {path}")
  tokens = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int32)
  half = len(tokens) // 2
  pre, ft = tokens[:half], tokens[half:]
  ft_train, ft_eval = ft[: int(0.9 * len(ft))], ft[int(0.9 * len(ft)) :]
  pre_steps, ft_steps, k = (60, 40, 4) if quick else (600, 300, 8)

  model = TinyLlama(CONFIGS["tiny"])
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  eval_it = _batches(ft_eval, 8, 64, 123)
  eval_batches = [next(eval_it) for _ in range(4)]
  base = _train(model, params, paca_jax.Full(), 3e-3, pre_steps, pre, eval_batches, 0, "pretrain")
  base_params = base.pop("merged")

  plan_2k = paca_jax.select(base_params, TARGETS, 2 * k, jax.random.key(1))
  methods = {
    f"lora_r{k}": (paca_jax.Lora(paca_jax.lora_plan(base_params, TARGETS, k, alpha=2 * k)), 3e-3),
    f"paca_r{2 * k}": (paca_jax.Paca(plan_2k), 1e-3),
    f"paca_int8_r{2 * k}": (paca_jax.PacaInt8(plan_2k), 1e-3),
    f"paca_r{k}": (
      paca_jax.Paca(paca_jax.select(base_params, TARGETS, k, jax.random.key(1))),
      1e-3,
    ),
    "full": (paca_jax.Full(), 1e-3),
  }
  results = {}
  for name, (m, lr) in methods.items():
    r = _train(model, base_params, m, lr, ft_steps, ft_train, eval_batches, 1, name)
    r.pop("merged")
    results[name] = r
  base_eval = float(
    np.mean([float(paca_jax.lm_loss_fn(model)(base_params, b)) for b in eval_batches])
  )
  lora_t = results[f"lora_r{k}"]["median_step_s"]
  summary = {
    "quick": quick,
    "machine": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
    "pretrain_steps": pre_steps,
    "finetune_steps": ft_steps,
    "base_eval_loss": base_eval,
    "methods": {
      name: {
        "eval_loss": r["eval_loss"],
        "final_train_loss": r["losses"][-1],
        "trainable_params": r["trainable_params"],
        "median_step_s": r["median_step_s"],
        "step_time_vs_lora": (r["median_step_s"] / lora_t) if lora_t else None,
        "frozen_MiB": r["frozen_MiB"],
        "trainable_and_opt_MiB": r["trainable_and_opt_MiB"],
      }
      for name, r in results.items()
    },
  }
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, r in results.items():
    ax.plot(np.arange(1, len(r["losses"]) + 1), r["losses"], label=name, lw=1)
  ax.axhline(base_eval, color="gray", ls="--", lw=0.8, label="base eval")
  ax.set_xlabel("fine-tuning step")
  ax.set_ylabel("train loss (bytes, nats)")
  ax.set_title("PaCA vs LoRA vs full fine-tuning (tiny Llama, tinyshakespeare)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_dir / "loss_curves.png", dpi=120)
  plt.close(fig)
  summary["figure"] = str(out_dir / "loss_curves.png")
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="results/paca")
  p.add_argument(
    "--data", default=str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data")
  )
  a = p.parse_args(argv)
  print(
    json.dumps(
      run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data)), indent=1
    )
  )


if __name__ == "__main__":
  main()
