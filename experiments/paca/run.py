"""PaCA vs LoRA vs full fine-tuning on a small Llama-shaped model (tinyshakespeare bytes).

PaCA: Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning", ICLR 2025.
A ``tiny`` model is first pre-trained (full, Adam) on the first half of the text, then fine-tuned
from that checkpoint on the second half with PaCA (r = 2k), LoRA (r = k), int8 PaCA (r = 2k) and
full fine-tuning, all 7 projections adapted. Reports eval losses, trainable parameter counts,
step-time ratios against LoRA (same process, same machine), PNGs of the loss curves
(``loss_curves.png``) and of step time and held memory per method (``time_memory.png``).
Settings: ``experiments/paca/config.py``.

  python -m experiments.paca.run --quick --out results/paca --data ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
from experiments import stats
from experiments.paca.config import Config
from paca_jax.models import CONFIGS, TinyLlama

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = r".*(q|k|v|o|gate|up|down)_proj"


def _batches(tokens, batch, seq, seed):
  """Random windows of ``seq + 1`` bytes, forever."""
  rng = np.random.default_rng(seed)
  while True:
    s = rng.integers(0, len(tokens) - seq - 1, size=batch)
    x = np.stack([tokens[i : i + seq + 1] for i in s])
    yield {"x": x[:, :-1], "y": x[:, 1:]}


def split(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Pre-training (first half), then fine-tuning train (80%), validation (10%), test (10%).

  The four ranges are disjoint; windows drawn from one never cross into another.
  """
  half = len(tokens) // 2
  pre, ft = tokens[:half], tokens[half:]
  a, b = int(0.8 * len(ft)), int(0.9 * len(ft))
  return pre, ft[:a], ft[a:b], ft[b:]


def choose_lr(validation_loss: dict[float, float]) -> float:
  """The learning rate with the lowest validation loss (the smaller rate on a tie).

  A rate whose run diverged (non-finite loss) is never chosen; it stays in the recorded grid.

  Raises:
    ValueError: no rate, or every run diverged (named with its losses).
  """
  finite = {lr: v for lr, v in validation_loss.items() if np.isfinite(v)}
  if not finite:
    raise ValueError(f"no learning rate with a finite validation loss: {validation_loss}")
  return min(finite, key=lambda lr: (finite[lr], lr))


def _trainer(model, method) -> paca_jax.Trainer:
  """Adam with the learning rate in its state: one compiled step serves every rate tried."""
  opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  return paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), opt)


def _train(tr, params, lr, steps, tokens, eval_batches, seed, desc, cfg):
  state = tr.init(params, jax.random.key(seed))
  hp = dict(state.opt_state.hyperparams)
  hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
  state = state._replace(opt_state=state.opt_state._replace(hyperparams=hp))
  losses, times = [], []
  it = _batches(tokens, cfg.batch, cfg.seq, seed)
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
    "trainable_params": tr.method.num_trainable(state.trainable),
    "median_step_s": statistics.median(times[2:]) if len(times) > 3 else None,
    # Memory of what the step holds: frozen base (int8 for PaCA-int8) and trainable + Adam.
    "frozen_MiB": sum(a.nbytes for a in jax.tree.leaves(state.frozen)) / 2**20,
    "trainable_and_opt_MiB": sum(
      a.nbytes for a in jax.tree.leaves((state.trainable, state.opt_state))
    )
    / 2**20,
    "merged": tr.merged_params(state),
    "step_s": times[2:],
  }


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Pre-trains, fine-tunes with every method; writes PNGs and ``summary.json``; returns it."""
  cfg = config or (Config.quick() if quick else Config.full())
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = pathlib.Path(data_dir) / "tinyshakespeare" / "input.txt"
  if not path.is_file():
    raise FileNotFoundError(f"tinyshakespeare not found at {path}")
  tokens = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int32)
  pre, ft_train, ft_val, ft_eval = split(tokens)
  pre_steps, ft_steps, k = cfg.pretrain_steps, cfg.finetune_steps, cfg.k

  model = TinyLlama(CONFIGS["tiny"])
  params = jax.jit(model.init)(jax.random.key(cfg.seed), jnp.zeros((1, 8), jnp.int32))["params"]
  eval_it = _batches(ft_eval, cfg.batch, cfg.seq, 123)
  eval_batches = [next(eval_it) for _ in range(cfg.eval_batches)]
  val_it = _batches(ft_val, cfg.batch, cfg.seq, 456)
  val_batches = [next(val_it) for _ in range(cfg.eval_batches)]
  base = _train(
    _trainer(model, paca_jax.Full()), params, 3e-3, pre_steps, pre, eval_batches, cfg.seed,
    "pretrain", cfg,
  )  # fmt: skip
  base_params = base.pop("merged")

  methods = {  # display name, factory (PaCA's factories depend on the seed: see ``make``)
    "lora": (f"lora_r{k}", lambda: paca_jax.Lora(paca_jax.lora_plan(base_params, TARGETS, k, alpha=2 * k))),
    "paca": (f"paca_r{2 * k}", None),
    "paca_int8": (f"paca_int8_r{2 * k}", None),
    "paca_rk": (f"paca_r{k}", None),
    "full": ("full", paca_jax.Full),
  }  # fmt: skip
  unknown = sorted(set(cfg.methods) - set(methods))
  if unknown:
    raise ValueError(f"unknown PaCA-study methods {unknown}; known: {sorted(methods)}")
  loss_one = jax.jit(paca_jax.lm_loss_fn(model))

  def rows(batches):
    return [{"x": b["x"][i : i + 1], "y": b["y"][i : i + 1]} for b in batches
            for i in range(len(b["x"]))]  # fmt: skip

  test_rows, val_rows = rows(eval_batches), rows(val_batches)

  def per_sequence(params, which):
    return [float(loss_one(params, r)) for r in which]

  def make(key, seed):
    """The method ``key`` for fine-tuning seed ``seed`` (PaCA's rows depend on the seed)."""
    if key in ("paca", "paca_int8", "paca_rk"):
      plan = paca_jax.select(
        base_params, TARGETS, k if key == "paca_rk" else 2 * k, jax.random.key(1 + seed)
      )
      return paca_jax.PacaInt8(plan) if key == "paca_int8" else paca_jax.Paca(plan)
    return methods[key][1]()

  # Learning rates: each method's is chosen on the validation windows (mean loss per sequence)
  # with the first fine-tuning seed; every seed is then trained at that rate and reported on the
  # disjoint test windows (the first seed's run is reused).
  results, per_seed, selection = {}, {s: {} for s in cfg.seeds}, {}
  first = cfg.seeds[0]
  for key in tqdm([m for m in methods if m in cfg.methods], desc="paca methods"):
    name = methods[key][0]
    grid, runs = {}, {}
    tr = _trainer(model, make(key, first))
    for lr in cfg.lrs:
      r = _train(tr, base_params, lr, ft_steps, ft_train, eval_batches, 1 + first,
                 f"{name} lr={lr:g}", cfg)  # fmt: skip
      grid[lr] = float(np.mean(per_sequence(r["merged"], val_rows)))
      runs[lr] = r
    lr = choose_lr(grid)
    selection[name] = {
      "validation_loss": {f"{g:g}": v if np.isfinite(v) else None for g, v in grid.items()},
      "chosen_lr": lr,
      # A rate at the end of the grid may not be the best one: the grid would need extending.
      "at_grid_edge": bool(lr in (min(cfg.lrs), max(cfg.lrs)) and len(cfg.lrs) > 1),
      "seed": first,
    }
    for seed in cfg.seeds:  # fine-tuning seeds: data order, adapter init, PaCA's row choice
      if seed != first and key in ("paca", "paca_int8", "paca_rk"):
        tr = _trainer(model, make(key, seed))  # other rows: another compiled step
      r = runs[lr] if seed == first else _train(
        tr, base_params, lr, ft_steps, ft_train, eval_batches, 1 + seed, f"{name} seed={seed}", cfg
      )  # fmt: skip
      merged = r.pop("merged")
      per_seed[seed][name] = {"eval_loss_per_sequence": per_sequence(merged, test_rows),
                              "step_s": r.pop("step_s")}  # fmt: skip
      if seed == first:
        results[name] = r
  base_eval = float(
    np.mean([float(paca_jax.lm_loss_fn(model)(base_params, b)) for b in eval_batches])
  )
  lora_t = results[f"lora_r{k}"]["median_step_s"] if f"lora_r{k}" in results else None
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
        "step_time_vs_lora": (r["median_step_s"] / lora_t)
        if lora_t and r["median_step_s"]
        else None,
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
  plot_time_memory(summary, out_dir / "time_memory.png")
  summary["figure"] = str(out_dir / "loss_curves.png")
  summary["figures"] = ["loss_curves.png", "time_memory.png"]
  summary["per_seed"] = per_seed
  summary["claims"], summary["headline"] = claims_and_headline(summary, per_seed, k)
  summary["selection"] = selection
  summary["setting"] = {
    "model": "paca_jax TinyLlama 'tiny' (byte vocabulary), pre-trained here (full, Adam)",
    "data": f"tinyshakespeare bytes: first half pre-training, second half fine-tuning ({path})",
    "seed": {"pretraining": cfg.seed, "fine-tuning": list(cfg.seeds)},
    "selection": "each method's learning rate chosen from "
    f"{', '.join(f'{g:g}' for g in cfg.lrs)} on validation windows (80-90% of the fine-tuning "
    f"half; seed {first}), chosen: "
    + ", ".join(
      f"{n} {v['chosen_lr']:g}" + (" (edge of the grid)" if v["at_grid_edge"] else "")
      for n, v in selection.items()
    )
    + "; every reported loss on disjoint test windows (last 10%); pre-training lr fixed 3e-3",
    "config": dataclasses.asdict(cfg),
  }
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def plot_time_memory(summary: dict, path: pathlib.Path) -> None:
  """Bars of median step time and of the bytes each method holds (frozen; trainable + Adam)."""
  names = list(summary["methods"])
  m = summary["methods"]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  a1.bar(names, [m[n]["median_step_s"] or 0.0 for n in names], color="tab:blue")
  a1.set_ylabel("median step time (s)")
  a1.set_title("step time (same process)")
  a2.bar(names, [m[n]["frozen_MiB"] for n in names], label="frozen base", color="lightgray")
  a2.bar(
    names,
    [m[n]["trainable_and_opt_MiB"] for n in names],
    bottom=[m[n]["frozen_MiB"] for n in names],
    label="trainable + Adam",
    color="tab:orange",
  )
  a2.set_ylabel("MiB held by the train state")
  a2.set_title("train-state memory (activations: paca_bench)")
  a2.legend(fontsize=8)
  for ax in (a1, a2):
    ax.tick_params(axis="x", rotation=20, labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def claims_and_headline(summary: dict, per_seed: dict, k: int) -> tuple[list, list]:
  """Claims with verdicts and rows with intervals (over fine-tuning seeds and eval sequences)."""
  seeds = list(per_seed.values())
  lora, paca, q = f"lora_r{k}", f"paca_r{2 * k}", f"paca_int8_r{2 * k}"
  claims, head = [], []
  note = f"{len(seeds)} fine-tuning seeds x held-out sequences"

  def add(c, est, extra=""):
    claims.append(stats.claim(c, est, extra or note))
    head.append(stats.row(c.metric, est, c.paper))

  def loss(name):
    return [np.asarray(s[name]["eval_loss_per_sequence"]) for s in seeds]

  def diff(a, b):
    return stats.over_seeds([x - y for x, y in zip(loss(a), loss(b))])

  names = list(seeds[0])
  if paca in names and lora in names:
    add(
      stats.Claim(
        "PaCA matches LoRA's accuracy (eval loss within 0.05 nats/byte)",
        f"eval loss {paca} - {lora} (nats per byte)", "within", 0.05,
        "accuracy comparable to LoRA",
      ),
      diff(paca, lora),
    )  # fmt: skip
    tp = np.concatenate([s[paca]["step_s"] for s in seeds])
    tl = np.concatenate([s[lora]["step_s"] for s in seeds])
    n = min(len(tp), len(tl))
    if n >= 2:
      add(
        stats.Claim(
          "PaCA trains faster than LoRA (paper: about -22% time)",
          f"median step time {paca} / {lora}", "less", 1.0,
          "training time -22% vs LoRA (the paper's LLM fine-tuning)",
        ),
        stats.bootstrap(tp[:n], tl[:n], statistic=lambda a, b: float(np.median(a) / np.median(b)),
                        method="percentile"),
        f"steps paired by index over {len(seeds)} seeds; timings on a shared machine",
      )  # fmt: skip
    m = summary["methods"]
    head.append(stats.row(
      f"trainable parameters {paca} / {lora}",
      stats.exact(m[paca]["trainable_params"] / m[lora]["trainable_params"]),
      "about the same at rank 2r vs r",
    ))  # fmt: skip
  if q in names and paca in names:
    add(
      stats.Claim(
        "QPaCA (int8 base) matches PaCA's accuracy (within 0.05 nats/byte)",
        f"eval loss {q} - {paca} (nats per byte)", "within", 0.05, "QPaCA: comparable to QLoRA",
      ),
      diff(q, paca),
    )  # fmt: skip
  for name in names:
    head.append(stats.row(f"eval loss after fine-tuning: {name}", stats.over_seeds(loss(name))))
  return claims, head


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="results/paca")
  p.add_argument(
    "--data",
    default=os.environ.get(
      "JAXSTEER_DATA", str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data")
    ),
  )
  a = p.parse_args(argv)
  print(
    json.dumps(
      run(quick=a.quick, out_dir=pathlib.Path(a.out), data_dir=pathlib.Path(a.data)), indent=1
    )
  )


if __name__ == "__main__":
  main()
