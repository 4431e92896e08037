"""Prefill and decode tokens/s of every jaxsteer.models architecture vs. transformers, as JSON,
each next to the machine's physical bound measured in the same run.

Model zoo behind GrAInS (Nguyen et al., 2025) steering: for each registered text architecture
(Llama, Llama 3.2, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 text, GPT-2) the same random
weights are built in transformers at one small shape, saved with ``save_pretrained`` and read back
with ``jaxsteer.load``; both run on this machine in one process on the same threads. Ratios are
jaxsteer tokens/s over transformers tokens/s (> 1: jaxsteer faster). Compile time (first call) is
reported apart from the steady-state timings; every JAX timing ends with ``block_until_ready``.
Steady-state times are the minimum over ``--repeats`` calls (the least disturbed one), the two
frameworks' calls (and both generation lengths) alternated so that a host whose speed drifts
affects them alike.

* prefill: one forward over ``batch x prompt_len`` tokens (logits for all positions).
* decode: greedy generation with a KV cache; decode tokens/s is
  ``batch * (new_tokens - 1) / (time to generate new_tokens - time to generate 1)`` for both
  frameworks (the prompt prefill cancels out).
* bounds (measured here, single thread): ``read_GBps`` streams a 1 GiB float32 array (DRAM);
  ``read_GBps_working_set`` reads, warm, an array as large as one decode step's bytes (the step
  re-reads the same weights, which may fit the last-level cache: 300 MiB on this workplace's
  CPU); ``matmul_GFLOPs`` is the best of XLA's and PyTorch's 1024^3 float32 matmul, probed before
  and after the models (``matmul_GFLOPs_probes``; the larger is the peak). Decode's bound
  is ``batch / (bytes of weights + KV cache read per step / max(read_GBps, working set))``
  (a fraction above 1 against DRAM alone showed that DRAM was not the limit); prefill's is
  ``tokens / (FLOPs of the forward / matmul_GFLOPs)``. ``fraction_of_bound`` = rate / bound.
* the decode step's matmuls alone (``decode_matmuls``: every weight a step multiplies, at
  ``batch`` rows, in a loop, nothing else), timed in the same alternation as the generations
  together with the read probe over the same bytes: ``decode_matmuls_only_fraction_of_read`` is
  how fast XLA's CPU matmul reads the weights relative to a plain streaming read, the ceiling of
  any JAX decode on this machine short of a custom kernel; ``decode_fraction_of_matmuls_only``
  is the decode rate over that ceiling (what attention over the KV cache, norms, RoPE, the cache
  update and the loop cost).
* ``load_average`` (``os.getloadavg``) is recorded: above the core count the machine was shared
  (``shared_machine``), the bounds and rates are low by unknown factors, every fraction is
  indicative only, and a decode rate lost in the noise is ``None``. Rerun on a quiet machine
  before quoting a number.

Published runs (Llama, small shape, one pinned core, load average 0.1-1.1, calls alternated):
``benchmarks/results/bench_models_llama_small.json`` (64-token prompts: prefill 0.75 of the FLOP
bound, 1.15x transformers; decode 0.60 of the read bound, 1.60x transformers, 0.81 of the
matmuls-only rate) and ``bench_models_llama_small_prompt256.json`` (prefill 0.69, 0.91x
transformers; decode 0.63, 1.47x, 0.51 of the matmuls-only rate). Greedy decoding skips the
vocabulary sort and random draws of sampling (``lax.cond`` on the temperature), the KV cache is
kept in the layouts the attention dots read, and forwards and the decode loop compile without
YNNPACK (``jaxsteer.compile_options``). The decode ceiling is XLA's CPU matmul at 4 rows: alone, it
reads the weights at 0.72-0.84 of a streaming read of the same bytes over seven runs
(``decode_matmuls``). Tried and not kept: the weights stored transposed (``W @ x^T``: 1.1-1.6x
faster in alternated microbenchmarks, which would need a second copy of every kernel); the weights
in transparent huge pages (``madvise(MADV_COLLAPSE)``: 1.02-1.07x, within this host's noise); the
attention of a decode step as multiply-and-reduce or with YNNPACK reductions (faster alone, not in
the step). Runs before December 2026 let XLA use both cores; this host's speed varies 1.3-1.6x
between sessions and from call to call.

Usage::

  python -m experiments.bench_models            # all architectures at the small shape
  python -m experiments.bench_models --quick    # tiny shape, fewer repeats
  # the issue-16 speed check: Llama only, small shape (31.6M parameters, batch 4, prompt 64,
  # 32 new tokens), 1 thread, min of 7; about 2 minutes on the quiet 2-core machine
  # (add --out benchmarks/results/bench_models_llama_small.json to publish the JSON)
  python -m experiments.bench_models --arch llama --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from experiments._bench_common import alternated_times
from jaxsteer._src.fileio import atomic_write_text

SHAPES = {
  "tiny": dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=512,
  ),
  "small": dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=1024,
  ),
}


def hf_cases(kw: dict) -> dict[str, tuple[str, str, dict]]:
  """(transformers config class, model class, kwargs) of every text architecture at one shape."""
  hd = kw["hidden_size"] // kw["num_attention_heads"]
  llama3 = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0)
  short = [1.0] * (hd // 2)
  return {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(kw)),
    "llama3.2": (
      "LlamaConfig",
      "LlamaForCausalLM",
      dict(
        kw,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=dict(llama3, original_max_position_embeddings=128),
      ),
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(kw, sliding_window=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(kw)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(kw, head_dim=hd)),
    "phi3": (
      "Phi3Config",
      "Phi3ForCausalLM",
      dict(
        kw,
        original_max_position_embeddings=256,
        rope_scaling=dict(type="longrope", short_factor=short, long_factor=[2.0] * (hd // 2)),
      ),
    ),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(kw, head_dim=hd, sliding_window=32)),
    "gemma3_text": (
      "Gemma3TextConfig",
      "Gemma3ForCausalLM",
      dict(kw, head_dim=hd, sliding_window=32, sliding_window_pattern=2),
    ),
    "gpt2": (
      "GPT2Config",
      "GPT2LMHeadModel",
      dict(
        vocab_size=kw["vocab_size"],
        n_embd=kw["hidden_size"],
        n_layer=kw["num_hidden_layers"],
        n_head=kw["num_attention_heads"],
        n_positions=kw["max_position_embeddings"],
      ),
    ),
  }


def _interleaved(fns: dict, repeats: int) -> dict:
  """``{name: (first-call seconds, minimum steady-state seconds, every steady-state second)}``,
  the calls of all ``fns`` alternated (``_bench_common.alternated_times``)."""
  first = {}
  for k, fn in fns.items():
    t0 = time.perf_counter()
    fn()
    first[k] = time.perf_counter() - t0
  times = alternated_times(fns, repeats)
  return {k: (first[k], float(np.min(times[k]["wall"])), np.asarray(times[k]["wall"])) for k in fns}


def _ratio(a, b):
  return None if a is None or b is None else a / b


def read_bandwidth(nbytes: int, repeats: int = 7) -> float:
  """Single-thread read bandwidth (GB/s) over a float32 array of ``nbytes``, read once to warm
  it (so a working set that fits the last-level cache is measured from there, as the decode step
  reads its weights), then the fastest of ``repeats`` full reads."""
  a = np.ones(max(nbytes // 4, 1 << 16), np.float32)
  best = float("inf")
  # numpy's pairwise sum and BLAS's dot (same array twice: each element read once) are the
  # fastest single-thread streaming reads measured here; the best of them is the bound.
  for read in (np.add.reduce, lambda x: x.dot(x)):
    read(a)
    for _ in range(repeats):
      t0 = time.perf_counter()
      read(a)
      best = min(best, time.perf_counter() - t0)
  return a.nbytes / best / 1e9


def set_prefill_bound(result: dict, tokens: int, matmul_gflops: float) -> None:
  """Fill ``result``'s prefill bound (``tokens`` over the forward's FLOPs at ``matmul_gflops``)
  and both frameworks' fractions of it, in place."""
  bound = tokens / (result["costs"]["prefill_flops"] / (matmul_gflops * 1e9))
  result["bounds"]["prefill_tokens_per_s"] = bound
  for fw in ("jaxsteer", "transformers"):
    result[fw]["prefill_fraction_of_bound"] = result[fw]["prefill_tokens_per_s"] / bound


def measure_peak() -> dict:
  """Single-thread float32 matmul peak (GFLOP/s): the best of XLA's and PyTorch's 1024^3."""
  from experiments._bench_common import matmul_peak

  peak = matmul_peak(1024, repeats=40, torch=True)
  return {
    "matmul_GFLOPs": peak["best"] / 1e9,
    "matmul_GFLOPs_xla": peak["xla"] / 1e9,
    "matmul_GFLOPs_torch": peak["torch"] / 1e9,
  }


def measure_bounds() -> dict:
  """Single-thread read bandwidth (GB/s) and float32 matmul peak (GFLOP/s) of this machine."""
  dram = read_bandwidth(2**30, repeats=5)  # 1 GiB: beyond any last-level cache here (300 MiB)
  return {"read_GBps": dram, **measure_peak()}


class DecodeMatmuls(NamedTuple):
  call: Callable[[], object]
  lower: Callable[[], object]
  steps: int
  nbytes: int


def decode_matmuls(lm, batch: int, steps: int = 8) -> DecodeMatmuls:
  """A jitted program of the decode step's matrix products alone: every 2-D weight of ``lm`` that
  a step multiplies (each kernel, and the tied token embedding as the output projection) times a
  ``(batch, in)`` activation, ``steps`` times in a ``lax.fori_loop`` as the decode loop runs
  (the activation changes each step, so nothing is hoisted out of the loop), compiled with the
  decode loop's options (``jaxsteer.compile_options``); no attention, norms, RoPE or cache.

  ``batch * steps / time`` is the decode rate if everything but XLA's CPU matmuls at ``batch``
  rows were free: the ceiling a JAX program reaches on this machine without a custom kernel.
  Returns ``DecodeMatmuls(call, lower, steps, nbytes)``: ``call()`` runs the ``steps`` and
  waits, ``lower()`` lowers the same program, ``nbytes`` is what one step's weights weigh.
  """
  import jax

  from jaxsteer import compile_options

  mats = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(lm.params)[0]:
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 2 and name.endswith("['kernel']"):
      mats.append((leaf, False))  # (in, out): x @ W
    elif name == "['embed']['embedding']" and lm.config.tie_word_embeddings:
      mats.append((leaf, True))  # (vocab, d): x @ E^T, the tied output projection
  width = max(w.shape[1] if t else w.shape[0] for w, t in mats)
  x = jax.device_put(np.random.default_rng(1).standard_normal((batch, width), np.float32))
  weights = [w for w, _ in mats]

  def run_steps(x, weights):
    def step(_, x):
      outs = [
        x[:, : w.shape[1]] @ w.T if tied else x[:, : w.shape[0]] @ w
        for w, (_, tied) in zip(weights, mats)
      ]
      # every output feeds the next step: no product is dead code
      return x + 1e-6 * sum(o.sum(-1, keepdims=True) for o in outs)

    return jax.lax.fori_loop(0, steps, step, x)

  fn = compile_options.jit(run_steps, kind="decode")
  return DecodeMatmuls(
    call=lambda: jax.block_until_ready(fn(x, weights)),
    lower=lambda: fn.lower(x, weights),
    steps=steps,
    nbytes=sum(w.nbytes for w in weights),
  )


def model_costs(cfg, batch: int, prompt_len: int, new_tokens: int) -> dict:
  """Bytes read per decode step and FLOPs of the prefill of a ``ModelConfig`` (float32)."""
  d, f, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer = d * (h + 2 * kv) * dh + h * dh * d + (2 if cfg.is_gpt2 else 3) * d * f
  matmul_params = L * per_layer + V * d  # the output projection (tied or not)
  # Decode: every weight once per step (the embedding rows read are negligible), plus the KV
  # cache read at the mean length of the generated part.
  mean_len = prompt_len + new_tokens / 2
  kv_bytes = 2 * L * batch * mean_len * kv * dh * 4
  step_bytes = matmul_params * 4 + kv_bytes
  tokens = batch * prompt_len
  attn_flops = 4 * L * batch * prompt_len**2 * h * dh  # QK^T and PV, full (unmasked) tiles
  return {
    "matmul_params": matmul_params,
    "decode_step_bytes": step_bytes,
    "prefill_flops": 2 * matmul_params * tokens + attn_flops,
  }


def bench_arch(
  arch: str, case, *, batch: int, prompt_len: int, new_tokens: int, repeats: int, bounds
):
  import jax
  import torch
  import transformers

  import jaxsteer

  cfg_cls, model_cls, kw = case
  torch.manual_seed(0)
  extra = {} if arch == "gpt2" else dict(eos_token_id=None, pad_token_id=0)
  cfg = getattr(transformers, cfg_cls)(**kw, **extra)
  hf = getattr(transformers, model_cls)(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    lm = jaxsteer.load(d, dtype="float32")

  rng = np.random.default_rng(0)
  vocab = lm.config.vocab_size
  ids = rng.integers(3, vocab, size=(batch, prompt_len)).astype(np.int32)
  mask = np.ones_like(ids)
  t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  j_ids, j_mask = jax.device_put(ids), jax.device_put(mask)

  # -- prefill
  jax_prefill = lambda: jax.block_until_ready(lm(j_ids, j_mask))

  def hf_prefill():
    with torch.inference_mode():
      return hf(input_ids=t_ids, attention_mask=t_mask, use_cache=False).logits

  pre = _interleaved({"jax": jax_prefill, "hf": hf_prefill}, repeats)
  (j_first, j_pre, _), (h_first, h_pre, _) = pre["jax"], pre["hf"]
  diff = float(np.abs(np.asarray(lm(j_ids, j_mask)) - hf_prefill().numpy()).max())

  # -- decode (greedy, KV cache, no early stop): time(new_tokens) - time(1) = new_tokens - 1 steps
  def jax_gen(n):
    return lambda: lm.generate_ids(
      j_ids, j_mask, max_new_tokens=n, temperature=0.0, stop_at_eos=False
    )

  def hf_gen(n):
    def go():
      with torch.inference_mode():
        return hf.generate(
          input_ids=t_ids,
          attention_mask=t_mask,
          max_new_tokens=n,
          min_new_tokens=n,
          do_sample=False,
          use_cache=True,
          pad_token_id=0,
        )

    return go

  mm = decode_matmuls(lm, batch, steps=new_tokens)
  mm_steps, matmul_bytes = mm.steps, mm.nbytes
  # the read probe over the same bytes, alternated with the matmuls: their ratio is immune to
  # the host's drift (BLAS's dot of an array with itself: each element read once)
  probe = np.ones(matmul_bytes // 4, np.float32)
  gen = _interleaved(
    {
      "jN": jax_gen(new_tokens),
      "j1": jax_gen(1),
      "hN": hf_gen(new_tokens),
      "h1": hf_gen(1),
      "mm": mm.call,
      "read": lambda: probe.dot(probe),
    },
    repeats,
  )
  (j_gfirst, j_gen, _), (_, j_gen1, _) = gen["jN"], gen["j1"]
  mm_step_s = gen["mm"][1] / mm_steps
  mm_ceiling = batch / mm_step_s
  (_, h_gen, _), (_, h_gen1, _) = gen["hN"], gen["h1"]
  same = bool(np.array_equal(jax_gen(new_tokens)(), hf_gen(new_tokens)()[:, prompt_len:].numpy()))

  pre_tokens = batch * prompt_len
  dec_tokens = batch * (new_tokens - 1)
  # On a loaded machine the two generate timings can differ by noise alone: no rate then (None),
  # rather than a huge or negative one.
  j_dec = dec_tokens / (j_gen - j_gen1) if j_gen > 1.05 * j_gen1 else None
  h_dec = dec_tokens / (h_gen - h_gen1) if h_gen > 1.05 * h_gen1 else None
  j_prefill = pre_tokens / j_pre
  costs = model_costs(lm.config, batch, prompt_len, new_tokens)
  # The decode step re-reads the same weights every step: where they fit the last-level cache
  # (300 MiB on this workplace's CPU vs 115 MB at the small shape) the bound is the read
  # bandwidth at that working set, not DRAM's; the larger of the two is the honest bound.
  ws_gbps = read_bandwidth(int(costs["decode_step_bytes"]))
  read_gbps = max(bounds["read_GBps"], ws_gbps)
  decode_bound = batch / (costs["decode_step_bytes"] / (read_gbps * 1e9))
  result = {
    "arch": arch,
    "params_millions": round(sum(p.numel() for p in hf.parameters()) / 1e6, 3),
    "max_abs_logit_diff": diff,
    "greedy_tokens_identical": same,
    "costs": costs,
    "bounds": {
      "decode_tokens_per_s": decode_bound,
      "read_GBps_dram": bounds["read_GBps"],
      "read_GBps_working_set": ws_gbps,
      # the decode step's matmuls alone, XLA at ``batch`` rows (``decode_matmuls``)
      "decode_matmuls_only_tokens_per_s": mm_ceiling,
      "decode_matmuls_only_fraction_of_bound": mm_ceiling / decode_bound,
      "decode_matmuls_only_GBps": matmul_bytes / mm_step_s / 1e9,
      # the same bytes streamed by the read probe, in the same alternation
      # median over the alternation's rounds of (read time / matmul time per step): each round's
      # pair ran back to back, so the host's drift cancels
      "decode_matmuls_only_fraction_of_read": float(
        np.median(gen["read"][2] / (gen["mm"][2] / mm_steps))
      ),
      "decode_matmuls_only_bytes": matmul_bytes,
    },
    "jaxsteer": {
      "prefill_tokens_per_s": j_prefill,
      "decode_tokens_per_s": j_dec,
      "decode_fraction_of_bound": _ratio(j_dec, decode_bound),
      "decode_fraction_of_matmuls_only": _ratio(j_dec, mm_ceiling),
      "prefill_compile_s": j_first - j_pre,
      "generate_compile_s": j_gfirst - j_gen,
      "prefill_s": j_pre,
      "generate_s": j_gen,
      "generate_1_token_s": j_gen1,
    },
    "transformers": {
      "prefill_tokens_per_s": pre_tokens / h_pre,
      "decode_tokens_per_s": h_dec,
      "decode_fraction_of_bound": _ratio(h_dec, decode_bound),
      "first_call_overhead_s": h_first - h_pre,
      "prefill_s": h_pre,
      "generate_s": h_gen,
      "generate_1_token_s": h_gen1,
    },
    "ratio_prefill": j_prefill / (pre_tokens / h_pre),
    "ratio_decode": _ratio(j_dec, h_dec),
  }
  set_prefill_bound(result, pre_tokens, bounds["matmul_GFLOPs"])
  return result


def set_threads(threads: int, *, pin_core: bool = False) -> None:
  """Both frameworks on ``threads`` CPU threads (call before JAX initialises its backend):
  ``experiments.reproduce.set_threads`` (with ``pin_core``, one thread pins the process, bounds
  included, to one core: ``main`` asks for it, an in-process ``run`` keeps the caller's CPU
  affinity), and PyTorch's own pool.

  On a shared, loaded machine multi-threaded PyTorch spin-waits badly, so the default is 1 thread
  for both; ``0`` leaves each framework's default.
  """
  if threads <= 0:
    return
  import torch

  from experiments.reproduce import set_threads as pin

  pin(threads, pin_core=pin_core)
  torch.set_num_threads(threads)


def run(
  quick: bool = False,
  threads: int = 1,
  archs=None,
  repeats: int | None = None,
  prompt_len: int = 64,
) -> dict:
  set_threads(threads)
  import jax
  import torch

  from jaxsteer import compile_options

  name = "tiny" if quick else "small"
  kw = SHAPES[name]
  repeats = repeats or (3 if quick else 5)
  shape = dict(batch=4, prompt_len=prompt_len, new_tokens=32, repeats=repeats)
  load_before = os.getloadavg()
  bounds = measure_bounds()
  cases = hf_cases(kw)
  results = []
  for arch in archs or list(cases):
    results.append(bench_arch(arch, cases[arch], bounds=bounds, **shape))
    print(f"{arch}: done", file=sys.stderr, flush=True)
  # The matmul peak probed again after the models: on this host a probe can read 20 % low for a
  # while (128 vs 158 GFLOP/s minutes apart), which would flatter every prefill fraction; the
  # peak is the larger probe and the prefill bounds follow it.
  late = measure_peak()
  bounds["matmul_GFLOPs_probes"] = [bounds["matmul_GFLOPs"], late["matmul_GFLOPs"]]
  bounds.update({k: max(bounds[k], v) for k, v in late.items()})
  for r in results:
    set_prefill_bound(r, shape["batch"] * shape["prompt_len"], bounds["matmul_GFLOPs"])
  load_after = os.getloadavg()
  return {
    "benchmark": "jaxsteer.models vs transformers (PyTorch CPU), float32, every architecture",
    "shape": dict(kw, name=name, **shape),
    "bounds": bounds,
    "load_average": {"before": load_before, "after": load_after},
    "shared_machine": max(load_before[0], load_after[0]) > (os.cpu_count() or 1),
    "machine": {
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "jax_backend": jax.default_backend(),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "jax_single_threaded": threads == 1 and len(os.sched_getaffinity(0)) == 1,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # per-program options the library's jitted programs compile with (jaxsteer.compile_options)
      "xla_compiler_options": {k: compile_options.options(k) for k in compile_options.PROGRAMS},
    },
    "results": results,
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    prog="python -m experiments.bench_models",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--quick", action="store_true", help="tiny shape, fewer repeats")
  p.add_argument("--threads", type=int, default=1, help="CPU threads per framework (0: defaults)")
  p.add_argument(
    "--arch",
    action="append",
    help="only these architectures (repeatable): " + ", ".join(hf_cases(SHAPES["tiny"])),
  )
  p.add_argument("--repeats", type=int, help="timed calls per measurement (default 5; 3 quick)")
  p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per row (default 64)")
  p.add_argument("--out", help="also write the JSON here")
  args = p.parse_args(argv)
  known = hf_cases(SHAPES["tiny"])
  bad = [a for a in args.arch or [] if a not in known]
  if bad or (args.repeats is not None and args.repeats < 1) or not 1 <= args.prompt_len <= 512:
    what = (
      f"unknown architecture {bad[0]!r}"
      if bad
      else "--repeats must be at least 1"
      if args.repeats is not None and args.repeats < 1
      else "--prompt-len must be in [1, 512]"
    )
    p.exit(2, f"bench_models: {what}; known: {', '.join(known)}\n")
  set_threads(args.threads, pin_core=True)  # the command line: this process is ours to pin
  res = run(
    quick=args.quick,
    threads=args.threads,
    archs=args.arch,
    repeats=args.repeats,
    prompt_len=args.prompt_len,
  )
  out = json.dumps(res, indent=2)
  print(out)
  if args.out:
    atomic_write_text(args.out, out + "\n")


if __name__ == "__main__":
  main()
