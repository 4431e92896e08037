"""GrAInS costs, as JSON: Integrated Gradients throughput vs. captum, and steering overhead.

GrAInS (Nguyen et al., 2025) attributes a preference objective to token embeddings with IG
(20 Gauss-Legendre points, all in one batch, as the released code runs captum) and then steers
generation with a norm-preserving vector addition at one decoder layer. This benchmark measures,
in one run on one machine:

1. IG: ``jaxsteer.attribution.integrated_gradients`` on the token embeddings of a random
   Llama vs. captum ``LayerIntegratedGradients`` on the *same* weights in transformers (saved
   with ``save_pretrained``, read with ``jaxsteer.load``). Objective: the teacher-forced
   log-likelihood of the last ``response_len`` tokens; baseline: the pad-token embedding (captum:
   pad ids as the layer baseline); ``steps`` Gauss-Legendre points. Reports attributions/s, the
   ratio (> 1: jaxsteer faster), compile time apart, and the agreement of the token scores.
   Also the FLOP bound of the same work: XLA's cost analysis of the compiled IG program over the
   machine's measured single-thread float32 matmul peak (``flop_bound_s``; ``ratio_to_bound`` is
   the measured time over it; the goal is at least captum's throughput and within 1.3x of it).
2. ``grains.fit`` cold and warm: 8 pairs of mixed lengths (token ids), time and XLA compile
   counts with ``batch_size`` 8 and 3 (batches padded to ``batch_size``, widths to powers of two,
   IG points in fixed-size chunks, so the warm fit compiles nothing).
3. Steering overhead: greedy KV-cache generation tokens/s of ``jaxsteer.steer(lm, v, alpha)`` vs.
   the unsteered model (interleaved repeats, medians); the goal is under 3 %.

Usage::

  python benchmarks/grains_bench.py            # needs captum (pip install captum)
  python benchmarks/grains_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

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


def _median_time(fn, repeats):
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


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


def bench_ig(hf, lm, *, seq_len: int, response_len: int, steps: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  from captum.attr import LayerIntegratedGradients

  from jaxsteer import attribution

  rng = np.random.default_rng(0)
  ids = rng.integers(3, lm.config.vocab_size, size=(1, seq_len)).astype(np.int32)
  resp = np.zeros((1, seq_len), np.float32)
  resp[:, seq_len - response_len :] = 1
  pad = 0

  # -- jaxsteer: IG of f(embeddings) = sum of response-token log-probs
  j_ids, j_resp = jnp.asarray(ids), jnp.asarray(resp)
  mask = jnp.ones_like(j_ids)

  def f(e):
    logits = lm.apply(None, inputs_embeds=e, attention_mask=mask)
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(lp, j_ids[:, 1:, None], -1)[..., 0]
    return jnp.sum(tok * j_resp[:, 1:])

  @jax.jit
  def jax_ig(params_unused, x, base):
    del params_unused
    attr, delta = attribution.integrated_gradients(f, x, base, steps=steps)
    return jnp.sum(attr, -1), delta

  x = jnp.asarray(lm.params["embed"]["embedding"], jnp.float32)[j_ids]
  base = attribution.baseline_embeddings(lm, j_ids, "pad").astype(jnp.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(jax_ig(None, x, base))
  j_first = time.perf_counter() - t0
  cost = jax_ig.lower(None, x, base).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", np.nan))
  peak = matmul_peak_flops()
  j_t = _median_time(lambda: jax.block_until_ready(jax_ig(None, x, base)), repeats)
  j_scores, j_delta = (np.asarray(a) for a in jax_ig(None, x, base))

  # -- captum LayerIntegratedGradients on the embedding layer of the HF model
  t_ids = torch.tensor(ids, dtype=torch.long)
  t_resp = torch.tensor(resp)

  def forward(input_ids):
    logits = hf(input_ids=input_ids, use_cache=False).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tok = lp.gather(-1, input_ids[:, 1:, None])[..., 0]
    return (tok * t_resp[:, 1:]).sum(-1)

  lig = LayerIntegratedGradients(forward, hf.model.embed_tokens)
  base_ids = torch.full_like(t_ids, pad)

  def captum_ig():
    attr, delta = lig.attribute(
      t_ids, baselines=base_ids, n_steps=steps, method="gausslegendre",
      return_convergence_delta=True,
    )  # fmt: skip
    return attr.sum(-1).detach().numpy(), float(delta.detach().numpy().reshape(-1)[0])

  t0 = time.perf_counter()
  captum_ig()
  c_first = time.perf_counter() - t0
  c_t = _median_time(captum_ig, repeats)
  c_scores, c_delta = captum_ig()
  scale = float(np.abs(c_scores).max()) or 1.0
  return {
    "seq_len": seq_len,
    "response_len": response_len,
    "steps": steps,
    "quadrature": "gauss_legendre",
    "jaxsteer_s_per_attribution": j_t,
    "captum_s_per_attribution": c_t,
    "jaxsteer_attributions_per_s": 1 / j_t,
    "captum_attributions_per_s": 1 / c_t,
    "ratio_throughput": c_t / j_t,
    "jaxsteer_compile_s": j_first - j_t,
    "captum_first_call_overhead_s": c_first - c_t,
    "token_scores_max_abs_diff": float(np.abs(j_scores - c_scores).max()),
    "token_scores_max_abs": scale,
    "completeness_delta_jaxsteer": float(j_delta),
    "completeness_delta_captum": c_delta,
    "xla_flops": flops,
    "matmul_peak_flops_per_s": peak,
    "flop_bound_s": flops / peak,
    "ratio_to_bound": j_t / (flops / peak),
    "captum_ratio_to_bound": c_t / (flops / peak),
  }


def matmul_peak_flops(n: int = 512, repeats: int = 5) -> float:
  """Measured float32 matmul FLOP/s of a jitted (n, n) @ (n, n) on this machine's threads."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  jax.block_until_ready(mm(a))
  t = min(_median_time(lambda: jax.block_until_ready(mm(a)), 1) for _ in range(repeats))
  return 2.0 * n**3 / t


def bench_fit(lm) -> dict:
  """Cold and warm ``grains.fit`` on 8 pairs of mixed lengths: seconds and compile counts."""
  import jax

  from jaxsteer import grains

  count = [0]

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
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


def run(quick: bool = False, threads: int = 1, only: str = "all") -> dict:
  set_threads(threads)
  import captum
  import jax
  import torch

  kw = QUICK_CONFIG if quick else CONFIG
  hf, lm = build(kw)
  ig = st = fit = None
  if only in ("all", "ig"):
    ig = bench_ig(hf, lm, seq_len=32 if quick else 64, response_len=8, steps=20, repeats=3)
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
    "loadavg": os.getloadavg(),
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="smaller model, fewer repeats")
  p.add_argument("--threads", type=int, default=1, help="CPU threads per framework (0: defaults)")
  p.add_argument("--only", choices=["all", "ig", "fit", "steering"], default="all")
  p.add_argument("--out", help="also write the JSON here")
  args = p.parse_args(argv)
  text = json.dumps(run(quick=args.quick, threads=args.threads, only=args.only), indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as fh:
      fh.write(text)


if __name__ == "__main__":
  main()
