"""GrAInS costs, as JSON: Integrated Gradients throughput vs. captum, and steering overhead.

GrAInS (Nguyen et al., 2025) attributes a preference objective to token embeddings with IG
(20 Gauss-Legendre points, all in one batch, as the released code runs captum) and then steers
generation with a norm-preserving vector addition at one decoder layer. This benchmark measures,
in one run on one machine:

1. IG: ``jaxsteer.attribution.integrated_gradients`` on the token embeddings of a random
   Llama vs. captum ``LayerIntegratedGradients`` on the *same* weights in transformers (saved
   with ``save_pretrained``, read with ``jaxsteer.load``). Objective: the teacher-forced
   log-likelihood of the last ``response_len`` tokens; baseline: the pad-token embedding (captum:
   pad ids as the layer baseline); ``steps`` Gauss-Legendre points, all in one vmapped program.
   Two objectives, each run by both frameworks: ``response_only`` (what ``grains.fit`` runs: only
   the positions that predict response tokens are projected onto the vocabulary) and
   ``full_vocab`` (every position projected, as the released GrAInS code runs captum). Reports
   fastest-of-N wall and process-CPU seconds per attribution, the ratio (> 1: jaxsteer faster),
   compile time and compile counts, and the agreement of the token scores. The FLOP bound of the
   same work: XLA's cost analysis of the compiled IG program over the machine's measured
   single-thread float32 matmul peak (512^3, near the core's FMA throughput: a physical bound;
   ``ratio_to_bound`` = time / bound, for jaxsteer and captum; the goal is at least captum's
   throughput and within 1.3x). To explain the gap, ``matmul_alone_cpu_s`` times every dot of the
   program alone at its own shape: the rest of the time goes to non-matmul work (norms, RoPE,
   softmax, SiLU, layout copies). The top-level keys compare jaxsteer's own path
   (``response_only``) with captum as the released code runs it (``full_vocab``).
2. ``grains.fit`` cold and warm: 8 pairs of mixed lengths (token ids), time and XLA compile
   counts with ``batch_size`` 8 and 3 (batches padded to ``batch_size``, widths to powers of two,
   IG points in fixed-size chunks, so the warm fit compiles nothing).
3. Steering overhead: greedy KV-cache generation tokens/s of ``jaxsteer.steer(lm, v, alpha)`` vs.
   the unsteered model (interleaved repeats, medians); the goal is under 3 %.

Usage::

  python benchmarks/grains_bench.py            # needs captum (pip install captum)
  python benchmarks/grains_bench.py --quick
  python benchmarks/grains_bench.py --only ig --out benchmarks/results/grains_bench_ig_quiet.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np

from experiments._bench_common import alternated_times
from experiments.bench_models import set_threads

CONFIG = dict(
  vocab_size=4096,
  hidden_size=256,
  intermediate_size=688,
  num_hidden_layers=6,
  num_attention_heads=8,
  num_key_value_heads=4,
  max_position_embeddings=512,
)
QUICK_CONFIG = dict(CONFIG, hidden_size=64, intermediate_size=172, num_hidden_layers=4)


def _min_times(fn, repeats):
  """Fastest wall time and fastest process CPU time of ``repeats`` calls (the machine is shared:
  the minimum is the least disturbed run; CPU time excludes time spent descheduled)."""
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return float(np.min(wall)), float(np.min(cpu)), float(np.median(wall))


def _min_times_interleaved(fns: dict, repeats: int) -> dict:
  """``_min_times`` of every function in ``fns``, their calls alternated
  (``_bench_common.alternated_times``)."""
  t = alternated_times(fns, repeats)
  return {
    k: (float(np.min(v["wall"])), float(np.min(v["cpu"])), float(np.median(v["wall"])))
    for k, v in t.items()
  }


_COMPILES = [0]


def _count_compiles():
  import jax

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      _COMPILES[0] += 1

  if not getattr(_count_compiles, "registered", False):
    jax.monitoring.register_event_duration_secs_listener(listener)
    _count_compiles.registered = True
  return _COMPILES


def build(kw):
  import torch
  import transformers

  import jaxsteer

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(**kw, tie_word_embeddings=False, eos_token_id=None, pad_token_id=0)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    lm = jaxsteer.load(d, dtype="float32")
  return hf, lm


def _dot_signatures(hlo: str):
  """``(lhs shape, rhs shape, dimension numbers) -> count`` of every dot in optimised HLO text."""
  import collections
  import re

  shapes = {
    m.group(1): tuple(int(v) for v in m.group(2).split(",") if v)
    for m in re.finditer(r"%([\w.\-]+) = f32\[([\d,]*)\]", hlo)
  }
  sigs = collections.Counter()
  for line in hlo.splitlines():
    if " dot(" not in line:
      continue
    names = re.findall(r"%([\w.\-]+)", re.search(r" dot\(([^)]*)\)", line).group(1))

    def dims(key, line=line):
      m = re.search(key + r"=\{([\d,]*)\}", line)
      return tuple(int(v) for v in m.group(1).split(",") if v) if m else ()

    sigs[
      (shapes[names[0]], shapes[names[1]])
      + tuple(dims(k) for k in ("lhs_contracting_dims", "rhs_contracting_dims",
                                "lhs_batch_dims", "rhs_batch_dims"))
    ] += 1  # fmt: skip
  return sigs


def matmul_floor(hlo: str, repeats: int = 9) -> dict:
  """Every dot of the program timed alone at its own shape (fastest CPU time of ``repeats``).

  Not a physical bound (it measures XLA's matmul at those shapes, e.g. 1280 x 256 @ 256 x 256,
  which runs below the square-matmul peak): it says how much of the program's time its matmuls
  alone would take, and so how much goes to everything else (norms, RoPE, softmax, SiLU, layout
  copies).
  """
  import jax
  from jax import lax

  total_s = total_f = 0.0
  for (ls, rs, lc, rc, lb, rb), count in _dot_signatures(hlo).items():
    a, b = jnp_ones(ls), jnp_ones(rs)
    fn = jax.jit(lambda a, b, d=((lc, rc), (lb, rb)): lax.dot_general(a, b, d))
    out = jax.block_until_ready(fn(a, b))
    t = _min_times(lambda fn=fn, a=a, b=b: jax.block_until_ready(fn(a, b)), repeats)[1]
    total_s += count * t
    total_f += count * 2.0 * out.size * float(np.prod([ls[i] for i in lc]))
  return {
    "dot_flops": total_f,
    "matmul_alone_cpu_s": total_s,
    "matmul_alone_flops_per_s": total_f / total_s,
  }


def jnp_ones(shape):
  import jax.numpy as jnp

  return jnp.full(shape, 0.5, jnp.float32)


def bench_ig(
  hf, lm, *, seq_len: int, response_len: int, steps: int, repeats: int, floor: bool = True
) -> dict:
  """IG of the response log-likelihood: jaxsteer's two objectives vs captum's two forwards.

  ``response_only``: what ``grains.fit`` / ``attribution.contrastive`` run
  (``attribution.sequence_logprob`` with ``n_resp``): only the positions that predict response
  tokens are projected onto the vocabulary. ``full_vocab``: every position is projected and the
  response positions are picked after the log-softmax, as the released GrAInS code runs captum.
  Each jaxsteer program's bound is its own XLA FLOP count over the measured matmul peak; captum's
  forward of the same kind is compared with the same bound (the same work).
  """
  import jax
  import jax.numpy as jnp
  import torch
  from captum.attr import LayerIntegratedGradients

  from jaxsteer import attribution, compile_options

  rng = np.random.default_rng(0)
  ids = rng.integers(3, lm.config.vocab_size, size=(1, seq_len)).astype(np.int32)
  resp = np.zeros((1, seq_len), np.int32)
  resp[:, seq_len - response_len :] = 1
  pad = 0
  j_ids, j_resp = jnp.asarray(ids), jnp.asarray(resp)
  mask = jnp.ones_like(j_ids)
  n_resp = attribution.response_width([resp], seq_len)
  x = jnp.asarray(lm.params["embed"]["embedding"], jnp.float32)[j_ids]
  base = attribution.baseline_embeddings(lm, j_ids, "pad").astype(jnp.float32)
  peak = matmul_peak_flops()
  compiles = _count_compiles()

  # Token ids, mask and response mask are arguments of the program, as in the library's own
  # (attribution.contrastive_ig_chunk): closed over as constants, they would let XLA fold the
  # response positions into static slices, which no real fit can rely on.
  args = (x, base, j_ids, mask, j_resp)

  def jax_program(n):
    # the options the library's own IG program (attribution.contrastive_ig_chunk) compiles with
    @functools.partial(jax.jit, compiler_options=compile_options.options("ig") or None)
    def jax_ig(x, base, ids, mask, resp):
      def f(e):
        return jnp.sum(attribution.sequence_logprob(lm, e, ids, mask, resp, n_resp=n))

      attr, delta = attribution.integrated_gradients(f, x, base, steps=steps)
      return jnp.sum(attr, -1), delta

    return jax_ig

  # -- captum LayerIntegratedGradients on the embedding layer of the HF model
  t_ids = torch.tensor(ids, dtype=torch.long)
  t_resp = torch.tensor(resp, dtype=torch.float32)

  def forward_full(input_ids):  # every position through lm_head (the released GrAInS code)
    logits = hf(input_ids=input_ids, use_cache=False).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tok = lp.gather(-1, input_ids[:, 1:, None])[..., 0]
    return (tok * t_resp[:, 1:]).sum(-1)

  def forward_response(input_ids):  # only the positions predicting the response
    h = hf.model(input_ids=input_ids, use_cache=False).last_hidden_state
    lp = torch.log_softmax(hf.lm_head(h[:, seq_len - response_len - 1 : -1]).float(), -1)
    return lp.gather(-1, input_ids[:, seq_len - response_len :, None])[..., 0].sum(-1)

  base_ids = torch.full_like(t_ids, pad)

  def captum_ig(forward):
    lig = LayerIntegratedGradients(forward, hf.model.embed_tokens)

    def run():
      attr, delta = lig.attribute(
        t_ids, baselines=base_ids, n_steps=steps, method="gausslegendre",
        return_convergence_delta=True,
      )  # fmt: skip
      return attr.sum(-1).detach().numpy(), float(delta.detach().numpy().reshape(-1)[0])

    return run

  out = {
    "seq_len": seq_len,
    "response_len": response_len,
    "steps": steps,
    "quadrature": "gauss_legendre",
    "xla_compiler_options": compile_options.options("ig"),
    "rows_per_attribution": steps * seq_len,
    "matmul_peak_flops_per_s": peak,
    "matmul_peak_shape": "512 x 512 @ 512 x 512, float32, one thread (jitted, fastest of 100)",
    "timing": (
      f"fastest of {repeats} calls (wall and process CPU time), jaxsteer and captum alternated; "
      "medians for reference"
    ),
  }
  for name, n, fwd in (
    ("response_only", n_resp, forward_response),
    ("full_vocab", None, forward_full),
  ):
    jax_ig = jax_program(n)
    c0, t0 = compiles[0], time.perf_counter()
    jax.block_until_ready(jax_ig(*args))
    j_first = time.perf_counter() - t0
    first_compiles = compiles[0] - c0
    compiled = jax_ig.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", np.nan))
    hlo = compiled.as_text()
    j_scores, j_delta = (np.asarray(a) for a in jax_ig(*args))
    run = captum_ig(fwd)
    t0 = time.perf_counter()
    run()
    c_first = time.perf_counter() - t0
    c1 = compiles[0]
    timed = _min_times_interleaved(
      {"jax": lambda g=jax_ig: jax.block_until_ready(g(*args)), "captum": run}, repeats
    )
    warm_compiles = compiles[0] - c1
    (j_wall, j_cpu, j_med), (c_wall, c_cpu, c_med) = timed["jax"], timed["captum"]
    c_scores, c_delta = run()
    bound = flops / peak
    row = {
      "n_vocab_positions": seq_len - 1 if n is None else n,
      "jaxsteer_s_per_attribution": j_wall,
      "jaxsteer_cpu_s_per_attribution": j_cpu,
      "jaxsteer_median_s": j_med,
      "captum_s_per_attribution": c_wall,
      "captum_cpu_s_per_attribution": c_cpu,
      "captum_median_s": c_med,
      "jaxsteer_attributions_per_s": 1 / j_wall,
      "captum_attributions_per_s": 1 / c_wall,
      "ratio_throughput": c_wall / j_wall,
      "ratio_throughput_cpu": c_cpu / j_cpu,
      "jaxsteer_compile_s": j_first - j_wall,
      "jaxsteer_compiles_first_call": first_compiles,
      "jaxsteer_compiles_warm_calls": warm_compiles,
      "captum_first_call_overhead_s": c_first - c_wall,
      "token_scores_max_abs_diff": float(np.abs(j_scores - c_scores).max()),
      "token_scores_max_abs": float(np.abs(c_scores).max()),
      "completeness_delta_jaxsteer": float(j_delta),
      "completeness_delta_captum": c_delta,
      "xla_flops": flops,
      "dots_in_program": int(sum(_dot_signatures(hlo).values())),
      "flop_bound_s": bound,
      "ratio_to_bound": j_wall / bound,
      "captum_ratio_to_bound": c_wall / bound,
      "ratio_to_bound_cpu": j_cpu / bound,
      "captum_ratio_to_bound_cpu": c_cpu / bound,
    }
    if floor:
      fl = matmul_floor(hlo)
      row.update(fl)
      row["dot_share_of_flops"] = fl["dot_flops"] / flops
      row["matmul_alone_share_of_cpu_time"] = fl["matmul_alone_cpu_s"] / j_cpu
    out[name] = row
  # The library's own path first; the earlier flat keys keep their meaning (jaxsteer's default
  # objective vs the released GrAInS captum forward).
  r, fv = out["response_only"], out["full_vocab"]
  out.update(
    jaxsteer_s_per_attribution=r["jaxsteer_s_per_attribution"],
    captum_s_per_attribution=fv["captum_s_per_attribution"],
    ratio_throughput=fv["captum_s_per_attribution"] / r["jaxsteer_s_per_attribution"],
    ratio_to_bound=r["ratio_to_bound"],
    captum_ratio_to_bound=fv["captum_s_per_attribution"] / r["flop_bound_s"],
    flop_bound_s=r["flop_bound_s"],
    xla_flops=r["xla_flops"],
  )
  return out


def matmul_peak_flops(n: int = 512, repeats: int = 100) -> float:
  """Measured float32 matmul FLOP/s of a jitted (n, n) @ (n, n) on this machine's threads.

  At n = 512 XLA's matmul runs at the core's FMA throughput (about 165 GFLOP/s on one thread of
  this workplace's AVX-512 CPU, quiet), so flops / peak is a physical lower bound on any program.
  Fastest of ``repeats`` calls, each timed by the smaller of wall and process CPU time (on a
  shared machine wall time would lower the peak and flatter every ratio to the bound); see
  ``experiments._bench_common.matmul_peak``.
  """
  from experiments._bench_common import matmul_peak

  return matmul_peak(n, repeats)["xla"]


def bench_fit(lm) -> dict:
  """Cold and warm ``grains.fit`` on 8 pairs of mixed lengths: seconds and compile counts."""

  from jaxsteer import grains

  count = _count_compiles()
  rng = np.random.default_rng(2)
  v = lm.config.vocab_size

  def pairs(seed):
    r = np.random.default_rng(seed)
    return [
      grains.Pair([1] + r.integers(3, v, 6 + 3 * i).tolist(), r.integers(3, v, 2 + i % 3).tolist(),
                  r.integers(3, v, 3).tolist())
      for i in range(8)
    ]  # fmt: skip

  out = {}
  del rng
  for bs in (8, 3):
    row = {}
    for name, seed in (("cold", 0), ("warm", 1)):
      c0, t0 = count[0], time.perf_counter()
      grains.fit(lm, pairs(seed), layers=[1], k=2, steps=16, max_steps=16, batch_size=bs,
                 on_unconverged="ignore", progress=False)  # fmt: skip
      row[f"{name}_s"] = time.perf_counter() - t0
      row[f"{name}_compiles"] = count[0] - c0
    out[f"batch_size_{bs}"] = row
  return out


def bench_steering(lm, *, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  import jax

  import jaxsteer
  from jaxsteer.grains import SteeringVectors

  rng = np.random.default_rng(1)
  layer = lm.config.num_layers - 1
  v = rng.standard_normal((1, lm.config.hidden_size)).astype(np.float32)
  steered = jaxsteer.steer(lm, SteeringVectors((layer,), v / np.linalg.norm(v)), 4.0)
  ids = jax.device_put(rng.integers(3, lm.config.vocab_size, (batch, prompt_len)).astype(np.int32))
  mask = jax.device_put(np.ones((batch, prompt_len), np.int32))

  def gen(m):
    return lambda: m.generate_ids(ids, mask, max_new_tokens=new_tokens, stop_at_eos=False)

  def fwd(m):
    return lambda: jax.block_until_ready(m(ids, mask))

  out = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "layer": layer}
  for name, mk in (("generate", gen), ("prefill", fwd)):
    fns = {"base": mk(lm), "steered": mk(steered)}
    compile_s = {}
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      compile_s[k] = time.perf_counter() - t0
    ts = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
      for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        ts[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(t)) for k, t in ts.items()}
    best = {k: float(np.min(t)) for k, t in ts.items()}
    ntok = batch * (new_tokens if name == "generate" else prompt_len)
    out[name] = {
      "base_tokens_per_s": ntok / med["base"],
      "steered_tokens_per_s": ntok / med["steered"],
      "overhead_pct": 100.0 * (med["steered"] / med["base"] - 1.0),
      # fastest of the repeats: less sensitive to other jobs on a shared machine
      "overhead_pct_min_time": 100.0 * (best["steered"] / best["base"] - 1.0),
      "base_compile_s": compile_s["base"] - med["base"],
      "steered_compile_s": compile_s["steered"] - med["steered"],
    }
  out["xla_cost"] = _xla_cost_overhead(lm, steered, ids, mask, new_tokens)
  changed = not np.array_equal(gen(lm)(), gen(steered)())
  out["steering_changes_output"] = bool(changed)
  return out


def _xla_cost_overhead(lm, steered, ids, mask, new_tokens) -> dict:
  """Load-independent overhead: XLA's cost analysis of the compiled steered vs. base programs.

  ``generate`` is the prefill program plus the decode-loop program (``LanguageModel.generate_ids``
  runs the two); XLA counts the loop body once, so it is prefill + one decode step.
  """
  import jax
  import jax.numpy as jnp

  from jaxsteer._src.models import lm as lm_lib

  def flops_bytes(low):
    c = low.compile().cost_analysis()
    c = c[0] if isinstance(c, list | tuple) else c
    return np.array([float(c.get("flops", np.nan)), float(c.get("bytes accessed", np.nan))])

  def cost(m, which):
    f, a = m.intercept
    if which == "prefill":
      return flops_bytes(lm_lib._forward.lower(m.module, f, m.params, a, ids, mask, False))
    stop, pad = jnp.full((4,), -1, jnp.int32), jnp.int32(0)
    temp, top_p = jnp.float32(0), jnp.float32(1)
    pre = lm_lib._prefill.lower(
      m.module, f, m.params, a, ids, mask, temp, top_p, jax.random.PRNGKey(0), stop, pad,
      budget=new_tokens, stop_at_eos=False,
    )  # fmt: skip
    state = jax.eval_shape(
      lambda: lm_lib._prefill_impl(
        m.module, f, m.params, a, ids, mask, temp, top_p, jax.random.PRNGKey(0), stop, pad,
        new_tokens, False,
      )
    )  # fmt: skip
    dec = lm_lib._decode.lower(
      m.module, f, m.params, a, state, mask, temp, top_p, stop, pad, jnp.int32(new_tokens),
      stop_at_eos=False,
    )  # fmt: skip
    return flops_bytes(pre) + flops_bytes(dec)

  out = {}
  for which in ("prefill", "generate"):
    (fb, bb), (fs, bs) = cost(lm, which), cost(steered, which)
    out[which] = {
      "flops_overhead_pct": 100.0 * (fs / fb - 1.0),
      "bytes_overhead_pct": 100.0 * (bs / bb - 1.0),
    }
  return out


def run(quick: bool = False, threads: int = 1, only: str = "all", repeats: int = 0,
        floor: bool = True) -> dict:  # fmt: skip
  set_threads(threads)
  import captum
  import jax
  import torch

  load_start = os.getloadavg()
  kw = QUICK_CONFIG if quick else CONFIG
  hf, lm = build(kw)
  ig = st = fit = None
  if only in ("all", "ig"):
    ig = bench_ig(hf, lm, seq_len=32 if quick else 64, response_len=8, steps=20,
                  repeats=repeats or (3 if quick else 7), floor=floor)  # fmt: skip
  if only in ("all", "fit"):
    fit = bench_fit(lm)
  if only in ("all", "steering"):
    st = bench_steering(
      lm, batch=4, prompt_len=32, new_tokens=32 if quick else 64, repeats=5 if quick else 15
    )
  return {
    "benchmark": "GrAInS: IG (jaxsteer vs captum LayerIntegratedGradients) and steering overhead",
    "config": kw,
    "machine": {
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "captum": captum.__version__,
      "threads_per_framework": threads,
    },
    "integrated_gradients": ig,
    "fit": fit,
    "steering": st,
    "loadavg_start": load_start,
    "loadavg": os.getloadavg(),
    "note": "load average above ~1.5 on this 2-core machine: timings are indicative only",
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="smaller model, fewer repeats")
  p.add_argument("--threads", type=int, default=1, help="CPU threads per framework (0: defaults)")
  p.add_argument("--only", choices=["all", "ig", "fit", "steering"], default="all")
  p.add_argument("--repeats", type=int, default=0, help="IG timing repeats (default 7; quick 3)")
  p.add_argument("--no-floor", action="store_true", help="skip timing each IG matmul alone")
  p.add_argument("--out", help="also write the JSON here")
  args = p.parse_args(argv)
  set_threads(args.threads, pin_core=True)  # the command line: this process is ours to pin
  res = run(quick=args.quick, threads=args.threads, only=args.only, repeats=args.repeats,
            floor=not args.no_floor)  # fmt: skip
  print(json.dumps(res, indent=2))
  if args.out:
    from jaxsteer._src.fileio import atomic_write_json

    atomic_write_json(args.out, res)


if __name__ == "__main__":
  main()
