"""Prefill and decode tokens/s of jaxsteer.models vs. HF transformers (PyTorch CPU), as JSON.

Model zoo behind GrAInS (Nguyen et al., 2025) steering: the same random Llama weights are built in
transformers, saved with ``save_pretrained`` and read back with ``jaxsteer.load``, then both run
on this machine in one process. Ratios are jaxsteer tokens/s over transformers tokens/s (> 1:
jaxsteer faster). Compile time (first call) is reported apart from the steady-state timings;
every JAX timing ends with ``block_until_ready``.

* prefill: one forward over ``batch x prompt_len`` tokens (logits for all positions).
* decode: greedy generation with a KV cache; decode tokens/s is
  ``batch * (new_tokens - 1) / (time to generate new_tokens - time to generate 1)`` for both
  frameworks (the prompt prefill cancels out).

Usage::

  python -m experiments.bench_models            # tiny and small configs
  python -m experiments.bench_models --quick    # tiny only, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

CONFIGS = {
  "tiny": dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=5,
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


def _timeit(fn, repeats: int) -> tuple[float, float]:
  """(first-call seconds, median steady-state seconds)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return first, float(np.median(ts))


def bench_config(
  name: str, kw: dict, *, batch: int, prompt_len: int, new_tokens: int, repeats: int
):
  import jax
  import torch
  import transformers

  import jaxsteer

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(**kw, tie_word_embeddings=False, eos_token_id=None, pad_token_id=0)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    lm = jaxsteer.load(d, dtype="float32")

  rng = np.random.default_rng(0)
  ids = rng.integers(3, kw["vocab_size"], size=(batch, prompt_len)).astype(np.int32)
  mask = np.ones_like(ids)
  t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  j_ids, j_mask = jax.device_put(ids), jax.device_put(mask)

  # -- prefill
  jax_prefill = lambda: jax.block_until_ready(lm(j_ids, j_mask))

  def hf_prefill():
    with torch.inference_mode():
      return hf(input_ids=t_ids, attention_mask=t_mask, use_cache=False).logits

  j_first, j_pre = _timeit(jax_prefill, repeats)
  h_first, h_pre = _timeit(hf_prefill, repeats)
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

  r = max(1, repeats // 2)
  j_gfirst, j_gen = _timeit(jax_gen(new_tokens), r)
  j_1first, j_gen1 = _timeit(jax_gen(1), r)
  h_gfirst, h_gen = _timeit(hf_gen(new_tokens), r)
  _, h_gen1 = _timeit(hf_gen(1), r)
  same = bool(np.array_equal(jax_gen(new_tokens)(), hf_gen(new_tokens)()[:, prompt_len:].numpy()))

  pre_tokens = batch * prompt_len
  dec_tokens = batch * (new_tokens - 1)
  j_dec = dec_tokens / max(j_gen - j_gen1, 1e-9)
  h_dec = dec_tokens / max(h_gen - h_gen1, 1e-9)
  return {
    "config": dict(kw, name=name),
    "batch": batch,
    "prompt_len": prompt_len,
    "new_tokens": new_tokens,
    "params_millions": round(sum(p.numel() for p in hf.parameters()) / 1e6, 3),
    "max_abs_logit_diff": diff,
    "greedy_tokens_identical": same,
    "jaxsteer": {
      "prefill_tokens_per_s": pre_tokens / j_pre,
      "decode_tokens_per_s": j_dec,
      "prefill_compile_s": j_first - j_pre,
      "generate_compile_s": j_gfirst - j_gen,
      "generate_1_token_compile_s": j_1first - j_gen1,
      "prefill_s": j_pre,
      "generate_s": j_gen,
      "generate_1_token_s": j_gen1,
    },
    "transformers": {
      "prefill_tokens_per_s": pre_tokens / h_pre,
      "decode_tokens_per_s": h_dec,
      "first_call_overhead_s": h_first - h_pre,
      "prefill_s": h_pre,
      "generate_s": h_gen,
      "generate_1_token_s": h_gen1,
    },
    "ratio_prefill": (pre_tokens / j_pre) / (pre_tokens / h_pre),
    "ratio_decode": j_dec / h_dec,
  }


def set_threads(threads: int) -> None:
  """Both frameworks on ``threads`` CPU threads (call before JAX initialises its backend).

  On a shared, loaded machine multi-threaded PyTorch spin-waits badly, so the default is 1 thread
  for both; ``0`` leaves each framework's default.
  """
  if threads <= 0:
    return
  import torch

  torch.set_num_threads(threads)
  if threads == 1:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def run(quick: bool = False, threads: int = 1) -> dict:
  set_threads(threads)
  import jax
  import torch

  sizes = ["tiny"] if quick else ["tiny", "small"]
  shape = dict(batch=4, prompt_len=64, new_tokens=32, repeats=3 if quick else 5)
  results = [bench_config(n, CONFIGS[n], **shape) for n in sizes]
  return {
    "benchmark": "jaxsteer.models vs transformers (PyTorch CPU), float32",
    "machine": {
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "jax_backend": jax.default_backend(),
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "jax_single_threaded": threads == 1,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
    },
    "results": results,
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny config only, fewer repeats")
  p.add_argument("--threads", type=int, default=1, help="CPU threads per framework (0: defaults)")
  args = p.parse_args(argv)
  print(json.dumps(run(quick=args.quick, threads=args.threads), indent=2))


if __name__ == "__main__":
  main()
