"""Fine-tuning CLI for PaCA (Woo et al., ICLR 2025), LoRA and full fine-tuning.

  python -m paca_jax.train --model tiny --data input.txt --method paca --rank 8 --steps 200 \
      --out runs/paca
  python -m paca_jax.train --model $JAXSTEER_DATA/stories260K/stories260K.bin \
      --data $JAXSTEER_DATA/tinyshakespeare/input.txt --method lora --rank 4 --out runs/lora

``--model`` is a built-in config name (``paca_jax.models.CONFIGS``: byte-level tokens, random
init) or anything ``jaxsteer.load`` reads (its tokenizer encodes the data). Batches are a pure
function of (seed, step), and an orbax ``CheckpointManager`` in ``OUT/ckpt`` stores the trainable
tree, the optimizer state, the step and the plan, so killing and re-running the same command
continues with the same losses. A checkpoint whose plan differs from the requested one is
refused. At the end the run writes ``OUT/merged`` (the adapter merged into the base: a model
directory that ``transformers.AutoModelForCausalLM.from_pretrained`` and ``jaxsteer.load`` read,
in the source's dtype, with its tokenizer files), for PaCA and LoRA an exact peft LoRA adapter
``OUT/lora_adapter`` (``peft.PeftModel.from_pretrained``), for PaCA methods ``OUT/paca_adapter``
(indices + deltas keyed by HF module names), plus ``OUT/summary.json``.

``--alpha`` is LoRA's ``lora_alpha`` and PaCA's ``paca_alpha`` alike (scale ``alpha / rank``;
default ``rank``, i.e. scale 1). ``paca_nf4`` / ``lora_nf4`` train on a 4-bit NormalFloat base
(QLoRA's NF4, ``--nf4-block``, ``--double-quant``).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import paca_jax
from jaxsteer._src import fileio
from paca_jax._src.export import save_merged, save_paca_adapter, save_peft_adapter, to_lora
from paca_jax.models import CONFIGS, TinyLlama

DEFAULT_TARGETS = r".*(q|k|v|o|gate|up|down)_proj"
METHODS = ("paca", "paca_int8", "paca_nf4", "lora", "lora_nf4", "full")


def _load_model(src: str, seed: int):
  """(module, params, encode, config) for a built-in config name or a jaxsteer-loadable path."""
  if src in CONFIGS:
    cfg = CONFIGS[src]
    model = TinyLlama(cfg)
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]

    def encode(text):
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) % cfg.vocab

    return model, params, encode, cfg
  if not pathlib.Path(src).exists():
    raise FileNotFoundError(f"--model: {src!r} is neither a config in {sorted(CONFIGS)} nor a path")
  import jaxsteer

  lm = jaxsteer.load(src, dtype=jnp.float32)
  encode = lambda text: np.asarray(lm.encode(text, add_bos=False), np.int32)
  return lm.module, lm.params, encode, lm.config


def _batch(tokens: np.ndarray, batch: int, seq: int, seed: int, step: int):
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
  x = np.stack([tokens[s : s + seq + 1] for s in starts])
  return {"x": x[:, :-1], "y": x[:, 1:]}


def make_method(
  name: str, params, *, rank, alpha, targets, selector, seed, nf4_block=64, double_quant=False
):
  """The method ``name`` (one of :data:`METHODS`); ``alpha`` scales PaCA rows and LoRA alike."""
  if name in ("paca", "paca_int8", "paca_nf4"):
    plan = paca_jax.select(
      params, targets, rank, jax.random.key(seed), selector=selector, alpha=alpha
    )
    if name == "paca_nf4":
      return paca_jax.PacaNf4(plan, nf4_block, double_quant)
    return paca_jax.Paca(plan) if name == "paca" else paca_jax.PacaInt8(plan)
  if name in ("lora", "lora_nf4"):
    plan = paca_jax.lora_plan(params, targets, rank, alpha)
    if name == "lora_nf4":
      return paca_jax.LoraNf4(plan, nf4_block, double_quant)
    return paca_jax.Lora(plan)
  if name == "full":
    return paca_jax.Full()
  raise ValueError(f"unknown method {name!r}")


def _plan_json(method) -> str:
  plan = getattr(method, "plan", None)
  if plan is None:
    return json.dumps({"method": method.name})
  extra = {}
  if hasattr(method, "block_size"):
    extra = {"block_size": method.block_size, "double_quant": method.double_quant}
  if isinstance(plan, paca_jax.Plan):
    return json.dumps(
      {"method": method.name, "plan": json.loads(plan.to_json()), **extra}, sort_keys=True
    )
  return json.dumps(
    {
      "method": method.name,
      "paths": list(plan.paths),
      "rank": plan.rank,
      "alpha": plan.alpha,
      **extra,
    },
    sort_keys=True,
  )


def build_parser():
  from jaxsteer._src.cliutil import OneLineParser, non_negative_int, positive_float, positive_int

  p = OneLineParser(prog="python -m paca_jax.train", description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True)
  p.add_argument("--data", required=True, help="a UTF-8 text file")
  p.add_argument("--method", choices=METHODS, default="paca")
  p.add_argument("--rank", type=positive_int, default=8)
  p.add_argument(
    "--alpha",
    type=positive_float,
    default=None,
    help="LoRA / PaCA alpha: scale alpha/rank (default: rank)",
  )
  p.add_argument(
    "--targets", default=DEFAULT_TARGETS, help="regex over module paths or HF module names"
  )
  p.add_argument("--nf4-block", type=positive_int, default=64, help="NF4 block size (QLoRA: 64)")
  p.add_argument("--double-quant", action="store_true", help="NF4 double quantisation")
  p.add_argument("--selector", default="random")
  p.add_argument(
    "--max-chars", type=non_negative_int, default=0, help="use only the first N characters (0: all)"
  )
  p.add_argument("--steps", type=positive_int, default=100)
  p.add_argument("--batch", type=positive_int, default=8)
  p.add_argument("--seq", type=positive_int, default=64)
  p.add_argument("--lr", type=positive_float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  p.add_argument("--ckpt-every", type=positive_int, default=50)
  p.add_argument("--eval-every", type=non_negative_int, default=0, help="0: only at the end")
  p.add_argument("--eval-batches", type=positive_int, default=4)
  p.add_argument("--export", choices=["all", "merged", "lora", "paca", "none"], default="all")
  p.add_argument(
    "--max-shard-bytes",
    type=positive_int,
    default=5 * 10**9,
    help="shard the merged model above this size (with an index)",
  )
  p.add_argument(
    "--stop-after", type=positive_int, default=None, help="exit after this step (testing)"
  )
  p.add_argument(
    "--override-settings",
    action="store_true",
    help="resume although --lr/--batch/--seq/--max-chars/--model differ from the checkpoint's",
  )
  p.add_argument("--no-progress", action="store_true")
  return p


# Stored with every checkpoint and compared on resume (the plan covers method/rank/targets/...).
RESUME_SETTINGS = ("model", "lr", "batch", "seq", "max_chars", "alpha")


def _check_settings(stored: dict, now: dict, override: bool, where) -> None:
  diff = [k for k in RESUME_SETTINGS if stored.get(k) != now.get(k)]
  if not diff:
    return
  desc = ", ".join(f"--{k.replace('_', '-')} {stored.get(k)!r} -> {now.get(k)!r}" for k in diff)
  if not override:
    raise ValueError(
      f"checkpoint in {where} was written with other settings ({desc}); resume with the "
      "original values, use another --out, or pass --override-settings"
    )
  print(f"warning: resuming {where} with changed settings ({desc})", file=sys.stderr)


class CheckpointWarning(UserWarning):
  """A damaged checkpoint was skipped."""


def _restore_intact(mngr, restore, where):
  """(step, restore(step)) of the newest checkpoint that restores; damaged newer ones warned
  about and deleted (the run wrote them; nothing can read them)."""
  steps = sorted(mngr.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      got = restore(step)
    except ValueError as e:
      if "different plan" in str(e) or "other settings" in str(e):
        raise
      err = e
    except Exception as e:  # orbax raises many types for damaged files
      err = e
    else:
      for newer in steps[:i]:
        mngr.delete(newer)
      return step, got
    nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
    warnings.warn(
      f"checkpoint step {step} in {where} is damaged ({type(err).__name__}: {str(err)[:200]}); "
      f"{nxt}",
      CheckpointWarning,
      stacklevel=2,
    )
  if steps:
    raise ValueError(f"every checkpoint in {where} (steps {steps}) is damaged; use another --out")
  return None, None


def run(args) -> dict:
  import orbax.checkpoint as ocp

  data_path = pathlib.Path(args.data)
  if not data_path.is_file():
    raise FileNotFoundError(f"--data: no such file {data_path}")
  out = pathlib.Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  model, params, encode, model_cfg = _load_model(args.model, args.seed)
  text = data_path.read_text(encoding="utf-8")
  tokens = encode(text[: args.max_chars] if args.max_chars else text)
  split = int(0.9 * len(tokens))
  train_toks, eval_toks = tokens[:split], tokens[split:]
  if min(len(train_toks), len(eval_toks)) < args.seq + 2:
    raise ValueError(f"--data: too few tokens ({len(tokens)}) for --seq {args.seq}")
  method = make_method(
    args.method,
    params,
    rank=args.rank,
    alpha=args.alpha,
    targets=args.targets,
    selector=args.selector,
    seed=args.seed,
    nf4_block=args.nf4_block,
    double_quant=args.double_quant,
  )
  trainer = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(args.lr))
  state = trainer.init(params, jax.random.key(args.seed + 1))
  plan_json = _plan_json(method)

  mngr = ocp.CheckpointManager(
    out / "ckpt",
    options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False),
  )
  start = 0
  settings = {k: getattr(args, k) for k in RESUME_SETTINGS}
  target = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

  def restore(step):
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta["plan"] != plan_json:
      raise ValueError(
        f"checkpoint in {out / 'ckpt'} (step {step}) was written with a different plan or method;"
        " use another --out or the original --method/--rank/--targets/--selector/--seed"
      )
    if "settings" in meta:  # checkpoints from before settings were stored: plan check only
      _check_settings(meta["settings"], settings, args.override_settings, out / "ckpt")
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))

  latest, got = _restore_intact(mngr, restore, out / "ckpt")
  if latest is not None:
    # Same dtypes and placement as a fresh state, so the jitted step is not recompiled.
    got = jax.tree.map(
      lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
      got["state"],
      target,
    )
    state = state._replace(trainable=got["trainable"], opt_state=got["opt_state"], step=got["step"])
    start = int(latest)

  def save(step):
    tree = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step}
    mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave({"plan": plan_json, "settings": settings}),
      ),
      force=True,
    )
    mngr.wait_until_finished()

  def eval_loss():
    nonlocal state
    state = trainer.flush(state)
    ls = [
      float(trainer.eval_loss(state, _batch(eval_toks, args.batch, args.seq, 10_000 + i, 0)))
      for i in range(args.eval_batches)
    ]
    return float(np.mean(ls))

  losses, evals, times = {}, {}, []
  end = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
  bar = tqdm(range(start, end), initial=start, total=args.steps, disable=args.no_progress)
  for i in bar:
    b = _batch(train_toks, args.batch, args.seq, args.seed, i)
    t0 = time.perf_counter()
    state, loss = trainer.step(state, b)
    loss = float(loss)
    times.append(time.perf_counter() - t0)
    losses[i + 1] = loss
    bar.set_postfix(loss=f"{loss:.4f}")
    if args.eval_every and (i + 1) % args.eval_every == 0:
      evals[i + 1] = eval_loss()
    if (i + 1) % args.ckpt_every == 0 or i + 1 == end:
      save(i + 1)
  log = out / "losses.jsonl"  # appended across resumed runs, each time rewritten atomically
  lines = "".join(json.dumps({"step": k, "loss": v}) + "\n" for k, v in losses.items())
  fileio.atomic_write_text(log, (log.read_text() if log.is_file() else "") + lines)
  summary = {
    "method": method.name,
    "start_step": start,
    "end_step": end,
    "losses": losses,
    "trainable_params": method.num_trainable(state.trainable),
    "median_step_s": float(np.median(times[1:])) if len(times) > 1 else None,
  }
  if end < args.steps:
    mngr.close()
    return summary
  evals[end] = eval_loss()
  summary["eval_losses"] = evals
  summary["eval_loss"] = evals[end]
  source = None if args.model in CONFIGS else args.model
  if args.export in ("all", "merged"):
    summary["merged"] = str(
      save_merged(
        trainer.merged_params(state),
        out / "merged",
        config=model_cfg,
        source=source,
        max_shard_bytes=args.max_shard_bytes,
      )
    )
  if args.export in ("all", "lora") and args.method in ("paca", "lora", "lora_nf4"):
    adapters = to_lora(method, params, state.trainable)
    summary["lora_adapter"] = str(
      save_peft_adapter(adapters, out / "lora_adapter", base_model=args.model)
    )
  if args.export in ("all", "paca") and args.method.startswith("paca"):
    summary["paca_adapter"] = str(
      save_paca_adapter(
        method, params, state.trainable, out / "paca_adapter", base_model=args.model
      )
    )
  fileio.atomic_write_json(out / "summary.json", summary, indent=1)
  mngr.close()
  return summary


def main(argv=None) -> dict:
  return run(build_parser().parse_args(argv))


def cli(argv=None) -> int:
  """``python -m paca_jax.train``: bad input reported in one line with exit code 2."""
  from jaxsteer._src.cliutil import run_main

  return run_main("python -m paca_jax.train", lambda: main(argv))


if __name__ == "__main__":
  sys.exit(cli())
