"""``python -m jaxsteer``: generate, attribute, fit and evaluate GrAInS steering from the shell.

GrAInS (Nguyen et al., 2025): contrastive Integrated Gradients pick the prompt tokens that drive a
preferred vs. dispreferred answer; masking them gives activation deltas whose principal directions
steer the residual stream. Every subcommand prints one JSON object on stdout; errors go to stderr
with exit code 2.

  python -m jaxsteer generate --model stories260K.bin --prompt "Once upon a time" --max-new-tokens 32
  python -m jaxsteer attribute --model M --prompt "Q: ...\\nA:" --preferred Yes --dispreferred No
  python -m jaxsteer fit --model M --pairs pairs.jsonl --layers 3,4 --out vecs.safetensors
  python -m jaxsteer fit --model M --truthfulqa v1 --n 50 --data ../shared/data --layers 3 --out v.safetensors
  python -m jaxsteer generate --model M --prompt "..." --vectors vecs/ --alpha 4
  python -m jaxsteer eval truthfulqa --model M --vectors vecs/ --alpha 4 --set v1 --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from jaxsteer._src.cliutil import (
  OneLineParser,
  UsageError,
  check_writable_dir,
  check_writable_file,
  finite_float,
  non_negative_float,
  non_negative_int,
  positive_float,
  positive_int,
  probability,
  run_main,
)
from jaxsteer._src.evals import judges
from jaxsteer._src.fileio import atomic_write_text

CLIError = UsageError  # a user error: printed on stderr, exit code 2
_positive_int = positive_int
DTYPES = ("float32", "bfloat16", "float16")


def _parse_layers(text: str) -> list[int]:
  try:
    layers = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--layers must be comma-separated integers, got {text!r}"
    ) from None
  if not layers:
    raise argparse.ArgumentTypeError("--layers is empty")
  return layers


def _add_model(p: argparse.ArgumentParser, steer: bool = False) -> None:
  p.add_argument("--model", required=True, help="HF model dir, hub id or llama2.c .bin")
  p.add_argument("--tokenizer", help="tokenizer path (default: found beside the model)")
  p.add_argument("--dtype", choices=DTYPES, help="parameter/compute dtype (default: the model's)")
  if steer:
    p.add_argument("--vectors", help="directory of saved SteeringVectors (from `fit`)")
    p.add_argument(
      "--alpha", type=finite_float, help="steering strength (needs --vectors; default 1)"
    )


def _add_image(p, help_text=None) -> None:
  p.add_argument(
    "--image",
    help=help_text
    or "an image file for a vision-language model (the prompt needs the image placeholder)",
  )


def build_parser() -> argparse.ArgumentParser:
  parser = OneLineParser(
    prog="python -m jaxsteer", description="GrAInS steering in JAX; every command prints JSON."
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  g = sub.add_parser("generate", help="generate text (optionally steered)")
  _add_model(g, steer=True)
  g.add_argument("--prompt", required=True)
  _add_image(g)
  g.add_argument("--max-new-tokens", type=_positive_int, default=64)
  g.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
  g.add_argument("--top-p", type=probability, default=1.0)
  g.add_argument("--seed", type=int, default=0)

  a = sub.add_parser("attribute", help="contrastive Integrated Gradients of one preference pair")
  _add_model(a)
  a.add_argument("--prompt", required=True)
  a.add_argument("--preferred", required=True)
  a.add_argument("--dispreferred", required=True)
  _add_image(a)
  a.add_argument("--steps", type=_positive_int, default=20)
  a.add_argument("--html", help="write the coloured-token HTML here")
  a.add_argument("--png", help="write a heatmap PNG here")
  a.add_argument("--image-png", help="with --image: write the patch scores over the image here")

  f = sub.add_parser("fit", help="fit GrAInS steering vectors and save them")
  _add_model(f)
  src = f.add_mutually_exclusive_group(required=True)
  src.add_argument(
    "--pairs",
    help='JSONL: {"prompt": ..., "preferred": ..., "dispreferred": ...[, "image": PATH]}',
  )
  src.add_argument(
    "--truthfulqa",
    choices=["v1", "binary"],
    help="use TruthfulQA steering pairs from the saved split (with --data, --n)",
  )
  src.add_argument(
    "--spavl", help="SPA-VL preference rows (JSON/JSONL/folder): chosen vs rejected, with images"
  )
  f.add_argument("--n", type=_positive_int, default=50, help="TruthfulQA/SPA-VL pairs (default 50)")
  f.add_argument("--data", help="shared data dir for --truthfulqa (default $JAXSTEER_DATA)")
  f.add_argument("--split-file", help="TruthfulQA split file (default: the saved one)")
  f.add_argument("--layers", type=_parse_layers, required=True, help="e.g. 3,4")
  _add_image(f, "one image for every pair (pairs files may instead give an image per pair)")
  f.add_argument(
    "--k", type=_positive_int, help="tokens masked per sequence (default 10; 50 with images)"
  )
  f.add_argument(
    "--steps", type=_positive_int, default=16, help="starting IG points (doubled to converge)"
  )
  f.add_argument(
    "--max-steps", type=_positive_int, default=512, help="cap on the IG points (default 512)"
  )
  f.add_argument(
    "--on-unconverged",
    choices=["raise", "warn", "ignore"],
    default="raise",
    help="IG above 5%% completeness error at the cap: fail (default), warn or ignore",
  )
  f.add_argument("--baseline", choices=["pad", "zeros", "mean"], default="pad", help="IG baseline")
  f.add_argument(
    "--candidates", choices=["all", "prompt", "response"], default="all", help="maskable tokens"
  )
  f.add_argument(
    "--pairing", choices=["matched", "pooled"], default="matched", help="deltas for v+ / v-"
  )
  f.add_argument("--mask-with", choices=["baseline", "pad"], default="baseline")
  f.add_argument("--reduce", choices=["sum", "mean"], default="sum", help="response log-lik.")
  f.add_argument("--aggregate", choices=["pca", "mean"], default="mean")
  f.add_argument("--mode", choices=["both", "pos"], default="both")
  f.add_argument("--batch-size", type=_positive_int, default=8, help="pairs per IG batch")
  f.add_argument("--seed", type=int, default=0, help="seed of the TruthfulQA false answers")
  f.add_argument(
    "--allow-outside-paths",
    action="store_true",
    help="let --pairs/--spavl files name images outside their own folder",
  )
  f.add_argument(
    "--out", required=True, help="output file (safetensors; replaces only an earlier save)"
  )

  e = sub.add_parser("eval", help="benchmarks")
  esub = e.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
  t = esub.add_parser("truthfulqa", help="TruthfulQA MC by log-likelihood (MC0/MC1/MC2)")
  _add_model(t, steer=True)
  t.add_argument("--set", choices=["v1", "binary"], default="v1")
  t.add_argument("--limit", type=_positive_int)
  t.add_argument("--split", choices=["eval", "steer", "all"], default="eval")
  t.add_argument("--split-file", help="split file (default: the packaged one)")
  t.add_argument("--metrics", help="comma-separated subset of mc0,mc1,mc2")
  t.add_argument("--data", help="shared data dir (default $JAXSTEER_DATA)")
  t.add_argument("--batch-size", type=_positive_int, default=16)
  t.add_argument(
    "--template",
    choices=["qa", "lm-eval"],
    default="qa",
    help="prompt: qa (Q: ...\\nA:) or lm-eval (its six-example preamble; comparable numbers)",
  )
  t.add_argument(
    "--bos",
    choices=["auto", "always", "never"],
    default="always",
    help="BOS before the prompt; auto follows the tokenizer's default (as lm-eval)",
  )
  t.add_argument("--details", help="write per-question log-likelihoods (JSON) to this file")
  t.add_argument("--no-progress", action="store_true")

  for name, helptext in (
    ("mmhal", "MMHal-Bench hallucination rate of a VLM (unsteered, and steered with --vectors)"),
    ("spavl", "SPA-VL pairwise win rate of steered (--vectors) against unsteered answers"),
  ):
    v = esub.add_parser(name, help=helptext)
    _add_model(v, steer=True)
    v.add_argument(
      "--data",
      required=True,
      help="MMHal: response_template.json or its folder; SPA-VL: a JSON/JSONL file or folder",
    )
    v.add_argument("--caa-vectors", help="also evaluate these (CAA) vectors at --alpha")
    v.add_argument("--judge", choices=["rule", "llm"], default="rule")
    v.add_argument("--judge-url", help="OpenAI-compatible http(s) endpoint of the LLM judge")
    v.add_argument("--judge-model", help="model name at --judge-url")
    v.add_argument(
      "--judge-backend",
      choices=sorted(judges.COMPLETE_BACKENDS),
      default="http",
      help="judge client: the standard library's (http) or the openai package's (openai)",
    )
    v.add_argument(
      "--judge-connect-timeout", type=positive_float, default=judges.JUDGE_CONNECT_TIMEOUT
    )
    v.add_argument(
      "--judge-read-timeout",
      type=positive_float,
      default=judges.JUDGE_READ_TIMEOUT,
      help="seconds the judge may stay silent",
    )
    v.add_argument(
      "--judge-total-timeout",
      type=positive_float,
      default=judges.JUDGE_TOTAL_TIMEOUT,
      help="seconds one judge call may take in all, retries included",
    )
    v.add_argument("--judge-retries", type=non_negative_int, default=2)
    v.add_argument(
      "--judge-max-bytes",
      type=positive_int,
      default=judges.JUDGE_MAX_RESPONSE_BYTES,
      help="refuse longer judge replies",
    )
    v.add_argument(
      "--allow-outside-paths",
      action="store_true",
      help="let data files name images outside their own folder",
    )
    v.add_argument("--limit", type=_positive_int)
    v.add_argument("--max-new-tokens", type=_positive_int, default=128)
    v.add_argument(
      "--out",
      help="write the full report (JSON) here; OUT.log.jsonl keeps generations and judgements "
      "as they are made, so the same command resumes after a failure",
    )
    v.add_argument("--no-progress", action="store_true")
  return parser


# ------------------------------------------------------------------------------------------------


def _load_model(args):
  import jaxsteer

  if not os.path.exists(args.model) and not _looks_like_hub_id(args.model):
    raise FileNotFoundError(f"model not found: {args.model}")
  if args.tokenizer and not os.path.exists(args.tokenizer):
    raise FileNotFoundError(f"tokenizer not found: {args.tokenizer}")
  lm = jaxsteer.load(args.model, tokenizer=args.tokenizer, dtype=args.dtype)
  if lm.tokenizer is None:
    raise CLIError(f"no tokenizer found for {args.model}; pass --tokenizer")
  return lm


def _looks_like_hub_id(s: str) -> bool:
  import re

  return bool(re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", s)) and not s.startswith((".", "/"))


def _maybe_steer(lm, args) -> tuple[Any, dict]:
  if args.vectors is None:
    if args.alpha is not None:
      raise CLIError("--alpha needs --vectors")
    return lm, {}
  import jaxsteer

  vecs = _load_vectors(args.vectors, "--vectors")
  bad = [lay for lay in vecs.layers if not 0 <= lay < lm.config.num_layers]
  if bad or vecs.vectors.shape[1] != lm.config.hidden_size:
    raise CLIError(
      f"steering vectors in {args.vectors} (layers {list(vecs.layers)}, width "
      f"{vecs.vectors.shape[1]}) do not fit this model ({lm.config.num_layers} layers, hidden "
      f"size {lm.config.hidden_size})"
    )
  alpha = 1.0 if args.alpha is None else args.alpha
  info = {"vectors": str(args.vectors), "alpha": alpha, "layers": list(vecs.layers)}
  return jaxsteer.steer(lm, vecs, alpha), info


def _load_vectors(path, flag: str):
  """``SteeringVectors.load`` with every malformed save reported as one line."""
  from jaxsteer.grains import SteeringVectors

  try:
    vecs = SteeringVectors.load(path)
  except (KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
    raise CLIError(
      f"{flag} {path}: not a valid SteeringVectors save ({type(e).__name__}: {e})"
    ) from None
  if not np.isfinite(vecs.vectors).all():
    raise CLIError(f"{flag} {path}: the steering vectors contain NaN or inf")
  return vecs


def _check_fit_out(path) -> None:
  """``fit --out`` (one safetensors file) must be new, an empty directory or an earlier
  SteeringVectors save (file, or directory of the orbax format): checked before any compute, and
  anything else is never replaced."""
  from jaxsteer.grains import is_steering_vectors_save

  path = pathlib.Path(path)
  empty_dir = path.is_dir() and not any(path.iterdir())
  if path.exists() and not empty_dir and not is_steering_vectors_save(path):
    raise CLIError(
      f"--out {path} exists and is not a SteeringVectors save; refusing to replace it "
      "(pass a new file path)"
    )
  if path.is_dir():
    check_writable_dir(path)
  else:
    check_writable_file(path)


def _data_dir(args) -> pathlib.Path:
  d = args.data or os.environ.get("JAXSTEER_DATA")
  if not d:
    raise CLIError("where is the data? pass --data DIR or set JAXSTEER_DATA")
  d = pathlib.Path(d)
  if not d.exists():
    raise FileNotFoundError(f"data directory not found: {d}")
  return d


def cmd_generate(args) -> dict:
  lm = _load_model(args)
  lm, info = _maybe_steer(lm, args)
  kw = {"image": _image_arg(lm, args.image)} if args.image else {}
  text = lm.generate(
    args.prompt,
    max_new_tokens=args.max_new_tokens,
    temperature=args.temperature,
    top_p=args.top_p,
    seed=args.seed,
    **kw,
  )
  return {"prompt": args.prompt, "image": args.image, "completion": text, "steering": info or None}


def _image_arg(lm, path):
  """Checks an ``--image`` path against the model; returns the path."""
  if not hasattr(lm, "encode_multimodal"):
    raise CLIError(f"--image needs a vision-language model; {lm.source} is a language model")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  lm.load_image(path)  # a clear error now for a file that is not an image
  return path


def cmd_attribute(args) -> dict:
  from jaxsteer import attribution

  if args.image_png and not args.image:
    raise CLIError("--image-png needs --image")
  for flag in ("html", "png", "image_png"):
    if getattr(args, flag):
      check_writable_file(getattr(args, flag), "--" + flag.replace("_", "-"))
  lm = _load_model(args)
  image = _image_arg(lm, args.image) if args.image else None
  res = attribution.contrastive(
    lm, args.prompt, args.preferred, args.dispreferred, steps=args.steps, image=image
  )
  out = {
    "objective": float(res.objective),
    "baseline_objective": float(res.baseline_objective),
    "delta": float(res.delta),
    "tokens_pos": list(res.tokens_pos),
    "scores_pos": np.asarray(res.scores_pos, np.float64).tolist(),
    "tokens_neg": list(res.tokens_neg),
    "scores_neg": np.asarray(res.scores_neg, np.float64).tolist(),
  }
  if args.html:
    _write_text(args.html, res.to_html())
    out["html"] = args.html
  if args.png:
    pathlib.Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    res.plot(args.png)
    out["png"] = args.png
  if image is not None:
    out["image"] = image
    out["image_token_positions"] = np.flatnonzero(res.ids_pos == res.image_token_id).tolist()
  if args.image_png:
    pathlib.Path(args.image_png).parent.mkdir(parents=True, exist_ok=True)
    res.plot_image(args.image_png)
    out["image_png"] = args.image_png
  return out


def _write_text(path, text: str) -> None:
  atomic_write_text(path, text)


def confined(path: pathlib.Path, root: pathlib.Path, where: str) -> pathlib.Path:
  """``path`` if it resolves (links followed) inside ``root``; else a ``ValueError``."""
  real, base = path.resolve(), root.resolve()
  if not real.is_relative_to(base):
    raise ValueError(
      f"{where}: {path} lies outside {base}; data files may only name files in their own folder "
      "(pass --allow-outside-paths to allow others)"
    )
  return path


def read_pairs(path, *, allow_outside: bool = False) -> list:
  """Reads ``Pair``s from a JSONL file of ``{"prompt", "preferred", "dispreferred"}`` objects.

  Image paths are relative to the pairs file and must stay inside its folder unless
  ``allow_outside``.
  """
  from jaxsteer.grains import Pair

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"pairs file not found: {path}")
  pairs = []
  for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} line {n}: not valid JSON ({e})") from None
    keys = ("prompt", "preferred", "dispreferred")
    if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
      raise ValueError(f"{path} line {n}: need string fields {', '.join(keys)}")
    image = row.get("image")
    if image is not None:
      if not isinstance(image, str):
        raise ValueError(f"{path} line {n}: image must be a file path")
      image = path.parent / image  # relative paths are relative to the pairs file
      if not allow_outside:
        confined(image, path.parent, f"{path} line {n}: image")
      if not image.is_file():
        raise FileNotFoundError(f"{path} line {n}: image not found: {image}")
      image = str(image)
    pairs.append(Pair(row["prompt"], row["preferred"], row["dispreferred"], image))
  if not pairs:
    raise ValueError(f"{path}: no pairs")
  return pairs


def cmd_fit(args) -> dict:
  from jaxsteer import evals, grains

  _check_fit_out(args.out)
  if args.pairs:
    pairs = read_pairs(args.pairs, allow_outside=args.allow_outside_paths)
    source = {"pairs": str(args.pairs)}
  elif args.spavl:
    rows = evals.load_spavl(args.spavl, kind="preference", allow_outside=args.allow_outside_paths)
    source = {"spavl": str(args.spavl), "n": args.n, "seed": args.seed}
  else:
    ds = evals.load_truthfulqa(_data_dir(args), args.truthfulqa)
    pairs = evals.steering_pairs(ds, n=args.n, seed=args.seed, split=args.split_file)
    source = {"truthfulqa": args.truthfulqa, "n": args.n, "seed": args.seed}
  lm = _load_model(args)
  if args.spavl:
    if not hasattr(lm, "encode_multimodal"):
      raise CLIError("--spavl needs a vision-language model")
    pairs = evals.spavl_steering_pairs(rows, n=min(args.n, len(rows)), prompt=lm.chat_prompt)
  bad = [lay for lay in args.layers if not 0 <= lay < lm.config.num_layers]
  if bad:
    raise CLIError(f"--layers {bad} out of range: the model has {lm.config.num_layers} layers")
  images = None
  if args.image:
    if any(p.image is not None for p in pairs):
      raise CLIError("--image and per-pair images in the pairs file: give one or the other")
    images = [_image_arg(lm, args.image)] * len(pairs)
  elif any(p.image is not None for p in pairs):
    for p in pairs:
      if isinstance(p.image, str | os.PathLike):  # SPA-VL pairs carry decoded images
        _image_arg(lm, p.image)
  vecs = grains.fit(
    lm,
    pairs,
    layers=args.layers,
    images=images,
    k=args.k,
    steps=args.steps,
    max_steps=args.max_steps,
    on_unconverged=args.on_unconverged,
    baseline=args.baseline,
    candidates=args.candidates,
    pairing=args.pairing,
    mask_with=args.mask_with,
    reduce=args.reduce,
    aggregate=args.aggregate,
    mode=args.mode,
    batch_size=args.batch_size,
  )
  path = vecs.save(args.out)
  return {
    "out": str(path),
    "num_pairs": len(pairs),
    "layers": list(vecs.layers),
    "k": vecs.metadata["k"],
    "mode": vecs.metadata["mode"],
    "ig_steps_max": max(vecs.metadata["ig_steps"]),
    "ig_rel_error_max": vecs.metadata["ig_relative_delta_max"],
    "norms": [float(np.linalg.norm(v)) for v in vecs.vectors],
    **source,
  }


def cmd_eval_truthfulqa(args) -> dict:
  from jaxsteer import evals

  ds = evals.load_truthfulqa(_data_dir(args), args.set)
  metrics = args.metrics.split(",") if args.metrics else None
  lm = _load_model(args)
  lm, info = _maybe_steer(lm, args)
  res = evals.evaluate_truthfulqa(
    lm,
    ds,
    split=args.split,
    split_path=args.split_file,
    metrics=metrics,
    limit=args.limit,
    batch_size=args.batch_size,
    progress=not args.no_progress,
    template=args.template,
    bos=args.bos,
    details=bool(args.details),
  )
  res["model"] = str(args.model)
  res["steering"] = info or None
  if args.details:
    questions = res.pop("questions")
    _write_text(args.details, json.dumps(dict(res, questions=questions), indent=1))
    res["details"] = str(args.details)
  return res


def cmd_eval_vlm(args) -> dict:
  import jaxsteer
  from jaxsteer import evals

  if args.out:
    check_writable_file(args.out)
  if args.judge == "llm":
    if not (args.judge_url and args.judge_model):
      raise CLIError("--judge llm needs --judge-url and --judge-model")
    try:
      judges.check_judge_url(args.judge_url)
    except ValueError as e:
      raise CLIError(f"--judge-url: {e}") from None
    try:
      judge = evals.make_judge(
        "llm",
        base_url=args.judge_url,
        model=args.judge_model,
        connect_timeout=args.judge_connect_timeout,
        read_timeout=args.judge_read_timeout,
        total_timeout=args.judge_total_timeout,
        retries=args.judge_retries,
        max_response_bytes=args.judge_max_bytes,
        backend=args.judge_backend,
      )
    except ImportError as e:  # --judge-backend openai without the openai package
      raise CLIError(f"--judge-backend: {e}") from None
  else:
    judge = evals.make_judge("rule")
  if args.caa_vectors and not args.vectors:
    raise CLIError("--caa-vectors needs --vectors (the GrAInS vectors) as well")
  outside = args.allow_outside_paths
  if args.benchmark == "mmhal":
    items = evals.load_mmhal(args.data, limit=args.limit)
  else:
    items = evals.load_spavl(args.data, limit=args.limit, allow_outside=outside)
  caa_vecs = _load_vectors(args.caa_vectors, "--caa-vectors") if args.caa_vectors else None
  lm = _load_model(args)
  if not hasattr(lm, "encode_multimodal"):
    raise CLIError(f"eval {args.benchmark} needs a vision-language model; {args.model} is not one")
  steered, info = _maybe_steer(lm, args)
  kw = dict(max_new_tokens=args.max_new_tokens)
  generators = {"unsteered": evals.model_generator(lm, **kw)}
  if info:
    generators["grains"] = evals.model_generator(steered, **kw)
  if caa_vecs is not None:
    caa = jaxsteer.steer(lm, caa_vecs, info["alpha"])
    generators["caa"] = evals.model_generator(caa, **kw)
  log = None
  if args.out:
    header = {
      "benchmark": args.benchmark,
      "data": str(pathlib.Path(args.data).resolve()),
      "limit": args.limit,
      "questions": [it.question for it in items],
      "model": str(args.model),
      "dtype": args.dtype,
      "vectors": str(args.vectors) if args.vectors else None,
      "caa_vectors": str(args.caa_vectors) if args.caa_vectors else None,
      "alpha": info.get("alpha"),
      "max_new_tokens": args.max_new_tokens,
    }
    log = evals.EvalLog(str(args.out) + ".log.jsonl", header)
  run = evals.evaluate_mmhal if args.benchmark == "mmhal" else evals.evaluate_spavl
  try:
    report = run(
      generators,
      items,
      judge,
      progress=not args.no_progress,
      log=log,
      on_error="record" if log is not None else "raise",
    )
  except judges.JudgeError as e:  # the endpoint is down or misbehaves: one line, exit 2
    raise CLIError(str(e)) from None
  if args.out:
    report.save_json(args.out)
  n_err = sum(("error" in r or "errors" in r) for recs in report.records.values() for r in recs)
  if n_err:
    print(
      f"{n_err} judgements failed (recorded in {args.out} and {log.path}); run the same "
      "command again to retry them",
      file=sys.stderr,
    )
  return {
    "benchmark": args.benchmark,
    "model": str(args.model),
    "n": len(items),
    "judge": report.judge,
    "methods": report.methods,
    "steering": info or None,
    "out": args.out,
    "judge_errors": n_err,
  }


def cmd_eval(args) -> dict:
  if args.benchmark in ("mmhal", "spavl"):
    return cmd_eval_vlm(args)
  return cmd_eval_truthfulqa(args)


COMMANDS = {"generate": cmd_generate, "attribute": cmd_attribute, "fit": cmd_fit, "eval": cmd_eval}


def main(argv=None) -> int:
  """Entry point; returns the exit code (0 ok, 2 usage or input error)."""
  parser = build_parser()
  args = parser.parse_args(argv)  # exits 2 with a one-line message on bad arguments
  result = {}

  def run():
    result["out"] = COMMANDS[args.command](args)

  code = run_main(f"{parser.prog} {args.command}", run)
  if code == 0:
    print(json.dumps(result["out"], ensure_ascii=False))
  return code
