"""One-command GPU benchmark suite (issue 14), writing one JSON file.

Sections (random weights, bf16 on GPU):

* ``ig``: Integrated Gradients of a Llama-3.1-8B-shaped model, 512 tokens, 20 Gauss-Legendre
  points evaluated in chunks (target <= 0.55 s; PyTorch 0.70 s on one H200).
* ``decode``: greedy decode with KV cache at batch 1 and 8, unsteered and GrAInS-steered
  (targets >= 150 tok/s at batch 1, >= 1,000 at batch 8; HF generate 18 and 151).
* ``finetune``: PaCA vs LoRA vs full fine-tuning steps of a 4-layer LLaMA-7B-width model at 16k
  tokens per step (target PaCA <= 110 ms; PyTorch PaCA 156 ms, peft LoRA 225 ms).
* ``lstm``: the recoder LSTM LM (2 x 650, batch 64, BPTT 35) train step against PyTorch's cuDNN
  ``nn.LSTM`` when torch with CUDA is importable (target >= 0.8x cuDNN's 6.5 ms/step).

Compile time is reported apart from step time. The whole run is bounded by ``--budget-s``
(default 480 s): a section that would start past the budget is recorded as skipped, and the JSON
is rewritten (atomically) after every section, so a partial run still leaves its numbers.

Usage::

  python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite_h200.json   # on a GPU
  python benchmarks/gpu_suite.py --dry-run --out /tmp/suite.json               # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

SECTIONS = ("ig", "decode", "finetune", "lstm")
TARGETS = {
  "ig_s": 0.55,
  "decode_tok_per_s_batch1": 150.0,
  "decode_tok_per_s_batch8": 1000.0,
  "paca_step_ms": 110.0,
  "lstm_speed_vs_cudnn": 0.8,
}
PYTORCH_REFERENCE_H200 = {
  "ig_s": 0.70,
  "hf_generate_tok_per_s_batch1": 18.0,
  "hf_generate_tok_per_s_batch8": 151.0,
  "pytorch_paca_step_ms": 156.0,
  "peft_lora_step_ms": 225.0,
  "cudnn_lstm_step_ms": 6.5,
}


@dataclasses.dataclass(frozen=True)
class Shapes:
  """Every size the suite uses; ``full()`` for a GPU, ``dry()`` for a CPU smoke run."""

  llm: dict
  ig_tokens: int
  ig_points: int
  ig_chunk: int
  decode_prompt: int
  decode_new: int
  decode_batches: tuple[int, ...]
  ft_config: str
  ft_batch: int
  ft_seq: int
  lstm_vocab: int
  lstm_hidden: int
  lstm_batch: int
  lstm_bptt: int
  repeats: int
  dtype: str

  @classmethod
  def full(cls) -> Shapes:
    llama31_8b = dict(
      arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
      num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=8192,
      rope_theta=500000.0, norm_eps=1e-5, scan_layers=True,
    )  # fmt: skip
    return cls(llama31_8b, 512, 20, 5, 128, 128, (1, 8), "7b-4layers", 8, 2048,
               10000, 650, 64, 35, 5, "bfloat16")  # fmt: skip

  @classmethod
  def dry(cls) -> Shapes:
    tiny = dict(
      arch="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64, scan_layers=True,
    )  # fmt: skip
    return cls(tiny, 16, 4, 2, 8, 4, (2,), "nano", 2, 8, 50, 16, 4, 5, 1, "float32")


def _timed(fn, repeats):
  """(first call s, median of ``repeats`` later calls s); ``fn`` blocks until ready."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return first, statistics.median(ts)


def _random_lm(s: Shapes):
  import jax
  import jax.numpy as jnp

  from jaxsteer.models import CausalLM, ModelConfig, from_params

  cfg = ModelConfig(**s.llm)
  dtype = jnp.dtype(s.dtype)
  module = CausalLM(cfg, dtype=dtype, param_dtype=dtype)
  init = jax.jit(lambda k: module.init(k, jnp.zeros((1, 2), jnp.int32))["params"])
  params = init(jax.random.key(0))
  return from_params(cfg, params, dtype=dtype)


def bench_ig(s: Shapes, lm) -> dict:
  import jax
  import jax.numpy as jnp

  from jaxsteer._src import attribution

  rng = np.random.default_rng(0)
  t = s.ig_tokens
  ids = jnp.asarray(rng.integers(3, lm.config.vocab_size, (1, t)), jnp.int32)
  resp = jnp.zeros((1, t), jnp.float32).at[:, t - t // 8 :].set(1.0)
  mask = jnp.ones_like(ids)

  def f(e):
    logits = lm.apply(None, inputs_embeds=e, attention_mask=mask)
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
    return jnp.sum(tok * resp[:, 1:])

  @jax.jit
  def ig(x, base):
    attr, delta = attribution.integrated_gradients(
      f, x, base, steps=s.ig_points, chunk_size=s.ig_chunk
    )
    return jnp.sum(attr, -1), delta

  x = attribution.embed(lm, ids)
  base = attribution.baseline_embeddings(lm, ids, "pad").astype(x.dtype)
  first, step = _timed(lambda: jax.block_until_ready(ig(x, base)), s.repeats)
  _, delta = ig(x, base)
  return {
    "tokens": t,
    "points": s.ig_points,
    "chunk": s.ig_chunk,
    "s_per_attribution": step,
    "compile_s": first - step,
    "completeness_delta": float(delta),
    "target_s": TARGETS["ig_s"],
    "meets_target": step <= TARGETS["ig_s"],
  }


def bench_decode(s: Shapes, lm) -> dict:
  import jax

  import jaxsteer
  from jaxsteer.grains import SteeringVectors

  rng = np.random.default_rng(1)
  layer = lm.config.num_layers // 2
  v = rng.standard_normal((1, lm.config.hidden_size)).astype(np.float32)
  steered = jaxsteer.steer(lm, SteeringVectors((layer,), v / np.linalg.norm(v)), 4.0)
  out = {"prompt": s.decode_prompt, "new_tokens": s.decode_new, "steered_layer": layer}
  for b in s.decode_batches:
    ids = jax.device_put(rng.integers(3, lm.config.vocab_size, (b, s.decode_prompt)))
    ids = ids.astype(np.int32)
    mask = jax.device_put(np.ones((b, s.decode_prompt), np.int32))
    row = {}
    for name, m in (("unsteered", lm), ("steered", steered)):

      def gen(m=m, ids=ids, mask=mask):
        return m.generate_ids(ids, mask, max_new_tokens=s.decode_new, stop_at_eos=False)

      first, step = _timed(gen, s.repeats)
      row[name] = {
        "tok_per_s": b * s.decode_new / step,
        "s_per_generate": step,
        "compile_s": first - step,
      }
    row["steering_overhead_pct"] = 100 * (
      row["steered"]["s_per_generate"] / row["unsteered"]["s_per_generate"] - 1
    )
    target = TARGETS.get(f"decode_tok_per_s_batch{b}")
    if target is not None:
      row["target_tok_per_s"] = target
      row["meets_target"] = row["unsteered"]["tok_per_s"] >= target
    out[f"batch{b}"] = row
  return out


def bench_finetune(s: Shapes) -> dict:
  import jax
  import jax.numpy as jnp
  import optax

  import paca_jax
  from paca_jax.models import CONFIGS, TinyLlama

  cfg = CONFIGS[s.ft_config]
  model = TinyLlama(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  toks = np.random.default_rng(2).integers(0, cfg.vocab, (s.ft_batch, s.ft_seq + 1))
  batch = {"x": jnp.asarray(toks[:, :-1], jnp.int32), "y": jnp.asarray(toks[:, 1:], jnp.int32)}
  targets = r".*(q|k|v|o|gate|up|down)_proj"
  rank = 8 if s.ft_config == "nano" else 64
  methods = {
    "paca": lambda: paca_jax.Paca(paca_jax.select(params, targets, rank, jax.random.key(1))),
    "lora": lambda: paca_jax.Lora(paca_jax.lora_plan(params, targets, rank, alpha=2.0 * rank)),
    "full": lambda: paca_jax.Full(),
  }
  out = {"config": s.ft_config, "tokens_per_step": s.ft_batch * s.ft_seq, "rank": rank}
  for name, make in methods.items():
    method = make()
    tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adamw(1e-4))
    state = tr.init(params, jax.random.key(3))
    t0 = time.perf_counter()
    compiled = tr.lower_step(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    sb = tr.shard_batch(batch)
    holder = [state]

    def step(compiled=compiled, sb=sb, holder=holder):
      holder[0], loss = compiled(holder[0], sb)
      jax.block_until_ready(loss)

    _, ms = _timed(step, s.repeats)
    out[name] = {
      "step_ms": 1e3 * ms,
      "compile_s": compile_s,
      "trainable_params": method.num_trainable(holder[0].trainable),
      "temp_GiB": mem.temp_size_in_bytes / 2**30 if mem else None,
      "argument_GiB": mem.argument_size_in_bytes / 2**30 if mem else None,
    }
    del holder[0], state
  out["target_paca_step_ms"] = TARGETS["paca_step_ms"]
  out["meets_target"] = out["paca"]["step_ms"] <= TARGETS["paca_step_ms"]
  return out


def bench_lstm(s: Shapes) -> dict:
  import jax
  import jax.numpy as jnp

  import recoder
  from recoder._src import train as train_lib

  cfg = recoder.LMConfig(
    vocab_size=s.lstm_vocab, embed_dim=s.lstm_hidden, hidden_dim=s.lstm_hidden,
    tie_weights=True, dropout=0.0,
  )  # fmt: skip
  model = recoder.LSTMLM(cfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, s.lstm_vocab, (s.lstm_batch, s.lstm_bptt)), jnp.int32)
  y = jnp.asarray(rng.integers(0, s.lstm_vocab, (s.lstm_batch, s.lstm_bptt)), jnp.int32)
  rc = recoder.RecodingConfig(signal="none")
  tc = train_lib.TrainConfig(batch_size=s.lstm_batch, bptt=s.lstm_bptt)
  params, anchors = train_lib.init_train_state(model, rc, tc, jax.random.key(0))
  tx, step = train_lib.make_train_step(model, rc, tc, 10**6)
  state = [params, train_lib.with_learning_rate(tx.init(params), 1.0)]
  key, eta = jax.random.key(1), jnp.float32(0.0)

  def jax_step():
    h = recoder.zero_state(cfg, s.lstm_batch)
    out = step(state[0], state[1], anchors, h, x, y, key, eta)
    state[0], state[1] = out[0], out[1]
    jax.block_until_ready(out[3])

  first, t = _timed(jax_step, max(s.repeats, 3) * 4)
  out = {
    "hidden": s.lstm_hidden, "layers": 2, "batch": s.lstm_batch, "bptt": s.lstm_bptt,
    "vocab": s.lstm_vocab, "jax_step_ms": 1e3 * t, "jax_compile_s": first - t,
  }  # fmt: skip
  try:
    import torch
  except ImportError:
    out["torch"] = "not installed"
    return out
  if not torch.cuda.is_available():
    out["torch"] = "no CUDA device (cuDNN comparison skipped)"
    return out
  dev = torch.device("cuda")

  class TorchLM(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.emb = torch.nn.Embedding(s.lstm_vocab, s.lstm_hidden)
      self.lstm = torch.nn.LSTM(s.lstm_hidden, s.lstm_hidden, 2, batch_first=True)
      self.out = torch.nn.Linear(s.lstm_hidden, s.lstm_vocab)
      self.out.weight = self.emb.weight

    def forward(self, ids):
      return self.out(self.lstm(self.emb(ids))[0])

  tm = TorchLM().to(dev)
  opt = torch.optim.SGD(tm.parameters(), lr=1.0)
  tx_ = torch.as_tensor(np.asarray(x), device=dev).long()
  ty_ = torch.as_tensor(np.asarray(y), device=dev).long()

  def torch_step():
    opt.zero_grad(set_to_none=True)
    logits = tm(tx_)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s.lstm_vocab), ty_.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.25)
    opt.step()
    torch.cuda.synchronize()

  _, tt = _timed(torch_step, max(s.repeats, 3) * 4)
  out.update(
    torch_cudnn_step_ms=1e3 * tt,
    speed_vs_cudnn=tt / t,
    target_speed_vs_cudnn=TARGETS["lstm_speed_vs_cudnn"],
    meets_target=tt / t >= TARGETS["lstm_speed_vs_cudnn"],
  )
  return out


def _write(path: pathlib.Path, res: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    json.dump(res, f, indent=2, default=float)
  os.replace(tmp, path)


def run(*, dry_run: bool, out: pathlib.Path, sections=SECTIONS, budget_s: float = 480.0) -> dict:
  """Runs the suite and writes ``out`` (after every section). Returns the result dict."""
  import jax

  t_start = time.perf_counter()
  s = Shapes.dry() if dry_run else Shapes.full()
  dev = jax.devices()[0]
  res = {
    "suite": "gpu_suite",
    "dry_run": dry_run,
    "device": getattr(dev, "device_kind", str(dev)),
    "platform": dev.platform,
    "host": platform.node(),
    "jax": jax.__version__,
    "loadavg": os.getloadavg(),
    "shapes": dataclasses.asdict(s),
    "targets": TARGETS,
    "pytorch_reference_h200": PYTORCH_REFERENCE_H200,
    "budget_s": budget_s,
    "sections": {},
  }
  if not dry_run and dev.platform != "gpu":
    raise ValueError("no GPU found; use --dry-run for the CPU smoke run")
  lm = None
  for name in sections:
    elapsed = time.perf_counter() - t_start
    if elapsed > budget_s:
      res["sections"][name] = {"skipped": f"budget of {budget_s:.0f} s spent ({elapsed:.0f} s)"}
      continue
    t0 = time.perf_counter()
    if name in ("ig", "decode") and lm is None:
      lm = _random_lm(s)
    if name == "ig":
      r = bench_ig(s, lm)
    elif name == "decode":
      r = bench_decode(s, lm)
    elif name == "finetune":
      lm = None  # free the 8B model before the fine-tuning section
      r = bench_finetune(s)
    else:
      r = bench_lstm(s)
    r["section_wall_s"] = time.perf_counter() - t0
    res["sections"][name] = r
    res["total_wall_s"] = time.perf_counter() - t_start
    _write(out, res)
  res["total_wall_s"] = time.perf_counter() - t_start
  _write(out, res)
  return res


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (CI smoke run)")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("gpu_suite.json"))
  p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
  p.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after")
  a = p.parse_args(argv)
  if a.budget_s <= 0:
    print("error: --budget-s must be positive", file=sys.stderr)
    return 2
  try:
    res = run(dry_run=a.dry_run, out=a.out, sections=tuple(a.sections), budget_s=a.budget_s)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: v for k, v in res.items() if k != "shapes"}, indent=2, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
