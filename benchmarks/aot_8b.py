"""Ahead-of-time compile at Llama-3.1-8B shape without weights: compile time and XLA memory.

``jax.jit(f).lower(ShapeDtypeStruct...).compile()`` on whatever backend is present (the CPU here)
for: IG of 512 tokens with 20 Gauss-Legendre points in chunks of 5, GrAInS-steered greedy decode
with a KV cache at batch 1 and 8 (128-token prompt, 128 new tokens: the prefill program and the
``lax.while_loop`` decode program that ``LanguageModel.generate_ids`` runs), and one PaCA Adam
step of a LLaMA-7B-shaped model (rank 8 on every projection, batch 4 x 2048 tokens), and the same
step with LoRA (rank 8, every projection). Nothing is
allocated: parameter shapes come from ``jax.eval_shape``. ``memory_analysis()`` gives argument,
output, temporary and aliased bytes; ``peak_estimate_GB`` = arguments + outputs + temporaries -
aliased (for decode: the larger of its two programs), checked against the 80 GB (H100) and 141 GB
(H200) budgets. CPU temporaries only estimate the GPU's (other fusion and scheduling).

IG, decode and the PaCA / LoRA steps run the decoder through ``nn.scan``
(``ModelConfig.scan_layers``), so compile time does not grow with depth; ``--no-scan`` unrolls the
layers instead. The PaCA / LoRA steps rematerialise every layer (``--paca-remat``, default
``full``): without remat the activations of 32 layers at 8k tokens do not fit. (The CPU compiler
ignored remat in the *unrolled* 32-layer program, estimating 294 GB; under ``nn.scan`` the remat
boundary is the scan body, which it keeps.)

Usage::

  nice -n 19 python benchmarks/aot_8b.py --out aot_8b.json      # 32 layers
  python benchmarks/aot_8b.py --layers 2 --out aot_8b_2l.json   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.fileio import atomic_write_json

BUDGETS_GB = {"H100_80GB": 80.0, "H200_141GB": 141.0}
LLAMA31_8B = dict(
  arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
  num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=8192, rope_theta=500000.0,
  norm_eps=1e-5,
)  # fmt: skip
LLAMA2_7B = dict(
  arch="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
  num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096, norm_eps=1e-5,
)  # fmt: skip


def sds(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def report(name, lowered_fn) -> dict:
  t0 = time.perf_counter()
  lowered = lowered_fn()
  lower_s = time.perf_counter() - t0
  if isinstance(lowered, dict):  # several programs (decode: prefill + loop)
    parts = {k: report(f"{name}/{k}", lambda v=v: v) for k, v in lowered.items()}
    out = {"programs": parts, "lower_s": lower_s}
    out["compile_s"] = sum(p["compile_s"] for p in parts.values())
    peaks = [p["peak_estimate_GB"] for p in parts.values() if "peak_estimate_GB" in p]
    if peaks:
      peak = max(peaks)
      out.update(peak_estimate_GB=peak, fits={k: peak <= v for k, v in BUDGETS_GB.items()})
    print(f"{name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gb = 1e9
  out = {"lower_s": lower_s, "compile_s": compile_s}
  if m is not None:
    args, outs = m.argument_size_in_bytes / gb, m.output_size_in_bytes / gb
    temp, alias = m.temp_size_in_bytes / gb, m.alias_size_in_bytes / gb
    peak = args + outs + temp - alias
    out.update(
      argument_GB=args, output_GB=outs, temp_GB=temp, alias_GB=alias, peak_estimate_GB=peak,
      fits={k: peak <= v for k, v in BUDGETS_GB.items()},
    )  # fmt: skip
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else None
  if cost:
    out["flops"] = float(cost.get("flops", float("nan")))
  print(f"{name}: {json.dumps(out)}", file=sys.stderr, flush=True)
  return out


def lm_shapes(layers: int, scan: bool = True, remat: str | None = None, shape=LLAMA31_8B):
  from jaxsteer.models import CausalLM, ModelConfig, from_params

  cfg = ModelConfig(**{**shape, "num_layers": layers, "scan_layers": scan, "remat": remat})
  module = CausalLM(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params = jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  )
  return from_params(cfg, params, dtype=jnp.bfloat16)


def aot_ig(lm, tokens=512, points=20, chunk=5):
  from jaxsteer._src import attribution

  ids_s = jax.ShapeDtypeStruct((1, tokens), jnp.int32)
  x_s = jax.ShapeDtypeStruct((1, tokens, lm.config.hidden_size), jnp.bfloat16)

  def ig(params, ids, x, base):
    resp = (jnp.arange(tokens) >= tokens - tokens // 8).astype(jnp.float32)[None]

    def f(e):
      logits = lm.apply(params, inputs_embeds=e, attention_mask=jnp.ones_like(ids))
      lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
      tok = jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
      return jnp.sum(tok * resp[:, 1:])

    attr, delta = attribution.integrated_gradients(f, x, base, steps=points, chunk_size=chunk)
    return jnp.sum(attr, -1), delta

  return lambda: jax.jit(ig).lower(lm.params, ids_s, x_s, x_s)


def aot_decode(lm, batch, prompt=128, new=128):
  import jaxsteer
  from jaxsteer._src.models import lm as lm_lib
  from jaxsteer.grains import SteeringVectors

  layer = lm.config.num_layers // 2
  v = np.ones((1, lm.config.hidden_size), np.float32) / np.sqrt(lm.config.hidden_size)
  steered = jaxsteer.steer(lm, SteeringVectors((layer,), v), 4.0)
  f, a = steered.intercept
  i32 = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
  scalar = lambda d: jax.ShapeDtypeStruct((), d)  # noqa: E731
  f32, key = scalar(jnp.float32), jax.ShapeDtypeStruct((2,), jnp.uint32)
  stop, pad = jax.ShapeDtypeStruct((4,), jnp.int32), scalar(jnp.int32)
  static = dict(budget=new, stop_at_eos=False)

  def lower():
    pre = lm_lib._prefill.lower(lm.module, f, lm.params, sds(a), i32, i32, f32, f32, key, stop,
                                pad, **static)  # fmt: skip
    state = jax.eval_shape(
      lambda *xs: lm_lib._prefill_impl(lm.module, f, *xs, new, False),
      lm.params, sds(a), i32, i32, f32, f32, key, stop, pad,
    )  # fmt: skip
    loop = lm_lib._decode.lower(lm.module, f, lm.params, sds(a), state, i32, f32, f32, stop, pad,
                                scalar(jnp.int32), stop_at_eos=False)  # fmt: skip
    return {"prefill": pre, "decode_loop": loop}

  return lower


def aot_paca(layers, batch=4, seq=2048, rank=8, remat="full", scan=True, method="paca"):
  import optax

  import paca_jax

  lm = lm_shapes(layers, scan=scan, remat=remat, shape=LLAMA2_7B)
  params = lm.params
  if method == "paca":
    plan = paca_jax.select(params, r".*_proj", rank, jax.random.key(1))
    m = paca_jax.Paca(plan)
  else:
    plan = paca_jax.lora_plan(params, r".*_proj", rank)
    m = paca_jax.Lora(plan)
  tr = paca_jax.Trainer(m, paca_jax.lm_loss_fn(lm.module), optax.adam(1e-4))
  state = jax.eval_shape(tr.init, params)
  b = {"x": jax.ShapeDtypeStruct((batch, seq), jnp.int32)}
  b["y"] = b["x"]

  def lower():
    tr._build(state, b)
    return tr._step.lower(state, b)

  layout = "scanned" if scan else "unrolled"
  return lower, {"config": f"LLaMA-2-7B shape (jaxsteer CausalLM, {layout})", "method": method,
                 "layers": layers, "scan_layers": scan, "batch": batch, "seq": seq, "rank": rank,
                 "remat": remat, "trainable": plan.num_trainable()}  # fmt: skip


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=32, help="decoder layers (8B: 32)")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("aot_8b.json"))
  p.add_argument(
    "--only", nargs="+", default=["ig", "decode1", "decode8", "paca", "lora"],
    choices=["ig", "decode1", "decode8", "paca", "lora"],
  )  # fmt: skip
  p.add_argument("--no-scan", action="store_true", help="unroll the layers (all programs)")
  p.add_argument("--remat", default=None, help="remat policy of IG and decode (default none)")
  p.add_argument("--paca-remat", default="full", help="remat policy of the PaCA / LoRA steps")
  a = p.parse_args(argv)
  if not 1 <= a.layers <= 32:
    print("error: --layers must be in 1..32", file=sys.stderr)
    return 2
  res = {
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "layers": a.layers,
    "full_depth": a.layers == 32,
    "scan_layers": not a.no_scan,
    "remat": a.remat,
    "loadavg_start": os.getloadavg(),
    "cpu_count": os.cpu_count(),
    "budgets_GB": BUDGETS_GB,
    "note": "CPU temporaries estimate the GPU's; compile time on a shared CPU machine",
    "programs": {},
  }
  if a.paca_remat in ("none", "None", ""):
    a.paca_remat = None
  lm = lm_shapes(a.layers, scan=not a.no_scan, remat=a.remat)
  jobs = {
    "ig": lambda: report("ig", aot_ig(lm)),
    "decode1": lambda: report("decode1", aot_decode(lm, 1)),
    "decode8": lambda: report("decode8", aot_decode(lm, 8)),
  }
  for name in a.only:
    if name in ("paca", "lora"):
      lower, info = aot_paca(a.layers, remat=a.paca_remat, scan=not a.no_scan, method=name)
      res["programs"][name] = {**info, **report(name, lower)}
    else:
      res["programs"][name] = jobs[name]()
  res["loadavg_end"] = os.getloadavg()
  atomic_write_json(a.out, res)
  print(json.dumps(res, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
