"""PaCA vs LoRA vs full fine-tuning: step time and XLA temp memory, in one run, as ratios.

PaCA: Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning", ICLR 2025.
All methods train the same model (all 7 Llama projections adapted) with Adam, the jitted step
donating its state. Pairs follow the paper: PaCA 2r vs LoRA r (about parameter-matched) and the
equal-r point. Compile time is reported separately; step time is the median of ``--iters`` steps
after ``--warmup``, each ended by ``block_until_ready``. Memory is ``compiled.memory_analysis()``.

  python benchmarks/paca_bench.py --size small --tokens 1024 --rank 8       # CPU
  python benchmarks/paca_bench.py --size 7b-4layers --tokens 16384 --rank 8 # one GPU (bf16)

Prints one JSON object: per-method numbers plus ratios against LoRA r measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import paca_jax
from paca_jax.models import CONFIGS, TinyLlama

TARGETS = r".*(q|k|v|o|gate|up|down)_proj"


def bench_one(model, params, method, batch, warmup, iters, lr=1e-4):
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(lr))
  state = tr.init(params, jax.random.key(1))
  t0 = time.perf_counter()
  compiled = tr.lower_step(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  batch = tr.shard_batch(batch)
  for _ in range(warmup):
    state, loss = compiled(state, batch)
  jax.block_until_ready((state, loss))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, loss = compiled(state, batch)
    jax.block_until_ready((state, loss))
    times.append(time.perf_counter() - t0)
  out = {
    "method": method.name,
    "trainable_params": method.num_trainable(state.trainable),
    "compile_s": round(compile_s, 3),
    "step_ms_median": round(1e3 * statistics.median(times), 3),
    "step_ms_min": round(1e3 * min(times), 3),
    "temp_MiB": round(mem.temp_size_in_bytes / 2**20, 3) if mem else None,
    "argument_MiB": round(mem.argument_size_in_bytes / 2**20, 3) if mem else None,
    "alias_MiB": round(mem.alias_size_in_bytes / 2**20, 3) if mem else None,
    "final_loss": float(loss),
  }
  del state
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="small", choices=sorted(CONFIGS))
  p.add_argument("--tokens", type=int, default=1024, help="tokens per step (batch x seq)")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--rank", type=int, default=8, help="LoRA r; PaCA runs at 2r and r")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--no-full", action="store_true", help="skip full fine-tuning (large models)")
  p.add_argument("--int8", action="store_true", help="also time int8 PaCA at 2r")
  args = p.parse_args(argv)

  cfg = CONFIGS[args.size]
  model = TinyLlama(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  b = max(1, args.tokens // args.seq)
  toks = jax.random.randint(jax.random.key(2), (b, args.seq + 1), 0, cfg.vocab)
  batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
  r = args.rank
  methods = [
    ("lora_r", paca_jax.Lora(paca_jax.lora_plan(params, TARGETS, r, alpha=2 * r))),
    ("paca_2r", paca_jax.Paca(paca_jax.select(params, TARGETS, 2 * r, jax.random.key(0)))),
    ("paca_r", paca_jax.Paca(paca_jax.select(params, TARGETS, r, jax.random.key(0)))),
  ]
  if args.int8:
    plan = paca_jax.select(params, TARGETS, 2 * r, jax.random.key(0))
    methods.append(("paca_int8_2r", paca_jax.PacaInt8(plan)))
  if not args.no_full:
    methods.append(("full", paca_jax.Full()))
  results = {}
  for label, m in methods:
    results[label] = bench_one(model, params, m, batch, args.warmup, args.iters)
  base = results["lora_r"]
  ratios = {
    label: {
      "step_time_vs_lora_r": round(res["step_ms_median"] / base["step_ms_median"], 3),
      "temp_mem_vs_lora_r": round(res["temp_MiB"] / base["temp_MiB"], 3)
      if base["temp_MiB"]
      else None,
      "params_vs_lora_r": round(res["trainable_params"] / base["trainable_params"], 3),
    }
    for label, res in results.items()
  }
  print(
    json.dumps(
      {
        "benchmark": "paca_bench",
        "size": args.size,
        "config": vars(cfg) if hasattr(cfg, "__dict__") else str(cfg),
        "tokens_per_step": b * args.seq,
        "batch": b,
        "seq": args.seq,
        "rank_lora": r,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "results": results,
        "ratios": ratios,
      },
      indent=1,
    )
  )


if __name__ == "__main__":
  main()
