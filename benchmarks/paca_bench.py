"""PaCA vs LoRA vs full fine-tuning: step time and XLA temp memory, in one run, as ratios.

PaCA: Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning", ICLR 2025.
All methods train the same model (all 7 Llama projections adapted) with Adam, the jitted step
donating its state. Pairs follow the paper: PaCA 2r vs LoRA r (about parameter-matched) and the
equal-r point. Compile time is reported separately; step time is the median of ``--iters`` steps
after ``--warmup``, each ended by ``block_until_ready``. Memory is ``compiled.memory_analysis()``.

  python benchmarks/paca_bench.py --size small --tokens 1024 --rank 8       # CPU
  python benchmarks/paca_bench.py --size 7b-4layers --tokens 16384 --rank 8 # one GPU (bf16)
  python benchmarks/paca_bench.py --size small --nf4 --no-full --out benchmarks/results/x.json

``--nf4`` adds 4-bit NormalFloat bases (QLoRA's NF4, block 64): PaCA 2r on an NF4 base (with and
without double quantisation) against PaCA 2r on a bf16 and an int8 base, and LoRA r on the NF4
base (QLoRA-style) against LoRA r on the bf16 base. Every row reports ``adapted_base_bytes`` (the
frozen storage of the adapted kernels: kernels, or quantised codes plus scales) and the whole
frozen tree's bytes.

Prints one JSON object: per-method numbers plus ratios against LoRA r measured in the same run,
and the load average (the machine may be shared).

``--study DATA_DIR`` instead runs the accuracy comparison of the PaCA study's quick setting
(``experiments/paca``: ``tiny`` model pre-trained 60 full steps on the first half of
tinyshakespeare's bytes, then 40 fine-tuning steps on the second half, k = 4, batch 8 x 64, Adam,
LoRA lr 3e-3 and PaCA lr 1e-3, 4 held-out eval batches) for PaCA 2k on float32, bf16, int8 and
NF4 bases and LoRA k on the float32 and NF4 bases (QLoRA-style)::

  python benchmarks/paca_bench.py --study ../shared/data --out benchmarks/results/paca_nf4_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict

import paca_jax
from paca_jax.models import CONFIGS, TinyLlama

TARGETS = r".*(q|k|v|o|gate|up|down)_proj"


def bench_one(model, params, method, batch, warmup, iters, lr=1e-4):
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(lr))
  state = tr.init(params, jax.random.key(1))
  adapted = _adapted_base_bytes(method, state.frozen)
  frozen_bytes = sum(a.nbytes for a in jax.tree.leaves(state.frozen))
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
    "adapted_base_bytes": adapted,
    "frozen_MiB": round(frozen_bytes / 2**20, 3),
  }
  del state
  return out


def _adapted_base_bytes(method, frozen):
  """Bytes the frozen base of the adapted kernels occupies (None for full fine-tuning)."""
  plan = getattr(method, "plan", None)
  if plan is None:
    return None
  if isinstance(frozen, dict) and "quant" in frozen:
    return int(sum(a.nbytes for a in jax.tree.leaves(frozen["quant"])))
  return int(sum(flatten_dict(frozen, sep="/")[p + "/kernel"].nbytes for p in plan.paths))


def _study_batches(tokens, batch, seq, seed):
  rng = np.random.default_rng(seed)
  while True:
    s = rng.integers(0, len(tokens) - seq - 1, size=batch)
    x = np.stack([tokens[i : i + seq + 1] for i in s])
    yield {"x": x[:, :-1], "y": x[:, 1:]}


def study(data_dir, pretrain_steps=60, finetune_steps=40, k=4, batch=8, seq=64, seed=0):
  """Eval losses of PaCA / LoRA on float32, bf16, int8 and NF4 bases (see the module docstring)."""
  path = pathlib.Path(data_dir) / "tinyshakespeare" / "input.txt"
  if not path.is_file():
    raise FileNotFoundError(f"tinyshakespeare not found at {path}")
  tokens = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int32)
  half = len(tokens) // 2
  pre, ft = tokens[:half], tokens[half:]
  ft_train, ft_eval = ft[: int(0.9 * len(ft))], ft[int(0.9 * len(ft)) :]
  model = TinyLlama(CONFIGS["tiny"])
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  it = _study_batches(ft_eval, batch, seq, 123)
  evals = [next(it) for _ in range(4)]

  def train(params, method, lr, steps, toks, key):
    tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(lr))
    st = tr.init(params, jax.random.key(key))
    it = _study_batches(toks, batch, seq, key)
    losses = []
    for _ in range(steps):
      st, loss = tr.step(st, next(it))
      losses.append(float(loss))
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f"{method.name}: non-finite training loss {losses}")
    st = tr.flush(st)
    ev = float(np.mean([float(tr.eval_loss(st, b)) for b in evals]))
    return tr, st, ev, losses

  tr, st, base_eval, _ = train(params, paca_jax.Full(), 3e-3, pretrain_steps, pre, seed)
  base = tr.merged_params(st)
  base16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), base)
  plan = paca_jax.select(base, TARGETS, 2 * k, jax.random.key(1))
  lplan = paca_jax.lora_plan(base, TARGETS, k, alpha=2 * k)
  runs = {
    f"paca_f32_r{2 * k}": (base, paca_jax.Paca(plan), 1e-3),
    f"paca_bf16_r{2 * k}": (base16, paca_jax.Paca(plan), 1e-3),
    f"paca_int8_r{2 * k}": (base, paca_jax.PacaInt8(plan), 1e-3),
    f"paca_nf4_r{2 * k}": (base, paca_jax.PacaNf4(plan), 1e-3),
    f"paca_nf4dq_r{2 * k}": (base, paca_jax.PacaNf4(plan, double_quant=True), 1e-3),
    f"lora_f32_r{k}": (base, paca_jax.Lora(lplan), 3e-3),
    f"lora_nf4_r{k}": (base, paca_jax.LoraNf4(lplan), 3e-3),
  }
  out = {}
  for name, (p, method, lr) in runs.items():
    tr, st, ev, losses = train(p, method, lr, finetune_steps, ft_train, 1)
    out[name] = {
      "eval_loss": round(ev, 4),
      "first_train_loss": round(losses[0], 4),
      "final_train_loss": round(losses[-1], 4),
      "adapted_base_bytes": _adapted_base_bytes(method, st.frozen),
    }
  pre_eval = float(np.mean([float(paca_jax.lm_loss_fn(model)(base, b)) for b in evals]))
  return {
    "benchmark": "paca_nf4_study",
    "setting": dict(
      pretrain_steps=pretrain_steps, finetune_steps=finetune_steps, k=k, batch=batch, seq=seq
    ),
    "base_eval_loss": round(pre_eval, 4),
    "results": out,
  }


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
  p.add_argument(
    "--nf4", action="store_true", help="NF4 bases vs bf16 / int8 PaCA and LoRA (implies --int8)"
  )
  p.add_argument("--out", default=None, help="also write the JSON here")
  p.add_argument("--study", default=None, metavar="DATA_DIR", help="NF4 accuracy comparison")
  args = p.parse_args(argv)
  if args.study:
    res = study(args.study)
    res.update(
      loadavg=[round(x, 2) for x in os.getloadavg()],
      device=str(jax.devices()[0].device_kind),
      jax=jax.__version__,
    )
    return _emit(json.dumps(res, indent=1), args.out)

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
  if args.int8 or args.nf4:
    plan = paca_jax.select(params, TARGETS, 2 * r, jax.random.key(0))
    methods.append(("paca_int8_2r", paca_jax.PacaInt8(plan)))
  bf16_methods = []
  if args.nf4:
    plan = paca_jax.select(params, TARGETS, 2 * r, jax.random.key(0))
    lplan = paca_jax.lora_plan(params, TARGETS, r, alpha=2 * r)
    methods += [
      ("paca_nf4_2r", paca_jax.PacaNf4(plan)),
      ("paca_nf4dq_2r", paca_jax.PacaNf4(plan, double_quant=True)),
      ("lora_nf4_r", paca_jax.LoraNf4(lplan)),
    ]
    bf16_methods = [("paca_bf16_2r", paca_jax.Paca(plan)), ("lora_bf16_r", paca_jax.Lora(lplan))]
  if not args.no_full:
    methods.append(("full", paca_jax.Full()))
  results = {}
  for label, m in methods:
    results[label] = bench_one(model, params, m, batch, args.warmup, args.iters)
  if bf16_methods:
    # The same weights stored in bfloat16 (the model computes in its config dtype).
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    for label, m in bf16_methods:
      results[label] = bench_one(model, params16, m, batch, args.warmup, args.iters)
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
  report = json.dumps(
    {
      "benchmark": "paca_bench",
      "loadavg": [round(x, 2) for x in os.getloadavg()],
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
  _emit(report, args.out)


def _emit(report: str, out):
  print(report)
  if out:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(report)
    os.replace(tmp, out)


if __name__ == "__main__":
  main()
