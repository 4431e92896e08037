"""Reproduces all four papers at small scale and writes a report with tables and plots.

  python -m experiments.reproduce --quick                    # see experiments/results/quick
  python -m experiments.reproduce --smoke --out /tmp/smoke   # one or two steps of everything
  python -m experiments.reproduce --only grains,sgntk --out runs/reproduce   # full settings
  python -m experiments.reproduce --quick --only grains --model meta-llama/Llama-3.2-1B  # online

Studies (the registry ``STUDIES``; each ``experiments/<study>/config.py`` documents its command,
runtime and expected headline, and ``experiments/<study>/run.py`` exposes
``run(*, quick, out_dir, data_dir, config=None) -> dict``):

- ``models``: load the default model (stories260K, llama2.c) and generate (the foundation check).
- ``grains``: GrAInS vs CAA vs unsteered on a controlled synthetic task and on stories260K.
- ``vlm``: GrAInS on a toy LLaVA (CLIP tower + stories260K) that hallucinates on a text trigger.
- ``paca``: PaCA vs LoRA vs full fine-tuning.
- ``sgntk``: the SG-NTK paper's Figures 1-3 and a digits study.
- ``recoder``: recoding LSTM language models on Penn Treebank.

Without network access everything runs on data and models the project generates or trains
itself plus the data directory (``--data``, else ``$JAXSTEER_DATA``, else ``../shared/data``).
A data directory that is named (flag or variable) but missing is an error; when the default one
is missing, the studies that need it are marked skipped. ``--model`` (a path or hub id, loaded
with ``jaxsteer.load``, which downloads hub ids when online) replaces stories260K in the
``models`` and ``grains`` studies.

Outputs in ``--out``: one folder per study (its PNGs and JSON), ``results.json`` (every study's
status, headline numbers, setting, figures and full summary, plus the detected hardware) and
``REPORT.md``, generated from ``results.json`` alone by ``experiments.report.write_report``.
Both are written atomically once every study has finished; an old pair in ``--out`` is removed
when the run starts, so the folder never shows a report of another run. A study that raises is
recorded as failed (with its error) and the report says so instead of showing numbers; the exit
status is then 1. Usage errors (unknown study, missing data directory, unwritable output
directory) exit with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pathlib
import shlex
import shutil
import sys
import tempfile
import time
import traceback

from tqdm.auto import tqdm

from experiments import stats
from experiments.report import atomic_write, environment, sanitize, write_report


def set_threads(threads: int, *, pin_core: bool = False) -> None:
  """Pins XLA (and PyTorch) to ``threads`` CPU threads before JAX starts; 0 leaves defaults.

  With one thread, XLA's CPU reductions run in a fixed order, so a quick run gives the same
  numbers on repeated runs of one machine; across CPUs with other vector units (AVX2 vs AVX-512)
  XLA may still generate different code, which is why every headline carries an interval over
  seeds and items. ``--xla_cpu_multi_thread_eigen=false`` alone does not keep XLA on one thread
  (its runtime still splits work over the intra-op pool: a 1024^3 matmul ran at 285 GFLOP/s with
  the flag, 151 pinned), so the command-line entry points also pin the process to one CPU core.

  Args:
    threads: CPU threads for XLA's Eigen pool, OpenMP/MKL/OpenBLAS and PyTorch.
    pin_core: with ``threads == 1``, also pin the whole process to one CPU core
      (``os.sched_setaffinity``). Only a ``__main__`` entry point should ask for it: a library
      caller's process (a notebook, a test worker) keeps its CPU affinity.
  """
  if threads <= 0:
    return
  if pin_core and threads == 1 and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  flags = os.environ.get("XLA_FLAGS", "")
  if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, str(threads))
  if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class Study:
  """One entry of the registry.

  Attributes:
    name: the package ``experiments/<name>`` (with ``config.py`` and ``run.py``).
    paper: the paper, as cited in the report.
    claim: the paper's claim that the study tests (paraphrased).
    requires: files under the data directory without which the study is skipped.
    takes_model: whether ``--model``/``--tokenizer`` apply (the config has those fields).
  """

  name: str
  paper: str
  claim: str
  requires: tuple[str, ...] = ()
  takes_model: bool = False

  def config_module(self):
    return importlib.import_module(f"experiments.{self.name}.config")

  def run_module(self):
    return importlib.import_module(f"experiments.{self.name}.run")

  def config(self, mode: str):
    """The study's ``Config`` for ``mode`` (smoke, quick or full)."""
    return getattr(self.config_module().Config, mode)()


STUDIES: dict[str, Study] = {
  s.name: s
  for s in (
    Study(
      "models",
      "jaxsteer model zoo (foundation check)",
      "Llama-family, Mistral, Qwen2 and GPT-2 checkpoints (Hugging Face safetensors, llama2.c) "
      "load into Flax and generate with a KV cache; stories260K decodes as llama2.c does.",
      requires=("stories260K/stories260K.bin",),
      takes_model=True,
    ),
    Study(
      "grains",
      "GrAInS (Nguyen et al., 2025)",
      "Contrastive integrated gradients find the input tokens that push a model toward a "
      "dispreferred answer; the activation change from masking them gives steering vectors that, "
      "added with each token's norm preserved, steer better than CAA-style mean differences and "
      "fine-tuning (e.g. +13.22 points of TruthfulQA accuracy on Llama-3.1-8B) while keeping "
      "fluency.",
      takes_model=True,
    ),
    Study(
      "vlm",
      "GrAInS for vision-language models (Nguyen et al., 2025)",
      "Contrastive integrated gradients over the merged image-and-text input of a LLaVA model "
      "find the tokens behind a hallucinated answer; steering with the resulting vectors lowers "
      "the MMHal-Bench hallucination rate of LLaVA-1.6-7B from 0.624 to 0.514.",
      requires=("stories260K/stories260K.bin", "stories260K/tok512.bin"),
    ),
    Study(
      "paca",
      "PaCA (Woo et al., ICLR 2025)",
      "Fine-tuning a random subset of the frozen weights' input connections (no adapter on the "
      "forward path, only those rows' activations kept for backward) matches LoRA's accuracy "
      "while cutting training time by about 22% and memory by about 16%.",
      requires=("tinyshakespeare/input.txt",),
    ),
    Study(
      "sgntk",
      "SG-NTK (Eilers, Memmesheimer, Goedeke, NeurIPS 2024)",
      "The NTK of networks with jump activations (sign) is ill-defined: the NTK of erf_m diverges "
      "as m grows. The surrogate-gradient NTK is well defined, the empirical SG-NTK converges to "
      "it with width, and sign networks trained with surrogate gradients follow its Gaussian "
      "process.",
    ),
    Study(
      "recoder",
      "Recoding (Ulmer, 2021)",
      "Correcting an LSTM language model's hidden state by a gradient step on an error signal "
      "(surprisal, predictive entropy, MC-dropout or ensemble uncertainty) lowers perplexity; "
      "gains are small and depend on the signal.",
      requires=("ptb/ptb.train.txt",),
    ),
  )
}
MODES = ("smoke", "quick", "full")
REPO = pathlib.Path(__file__).resolve().parent.parent


def default_data_dir() -> pathlib.Path:
  """``$JAXSTEER_DATA``, else ``../shared/data`` beside the checkout."""
  return pathlib.Path(os.environ.get("JAXSTEER_DATA", REPO.parent / "shared" / "data"))


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_study(
  study: Study, mode: str, out_dir: pathlib.Path, data_dir: pathlib.Path, **overrides
) -> dict:
  """Runs one study and returns its entry of ``results.json`` (status ok, failed or skipped)."""
  entry = {"paper": study.paper, "claim": study.claim, "mode": mode}
  model_given = study.takes_model and overrides.get("model")
  missing = [r for r in study.requires if not (data_dir / r).is_file()]
  if missing and not model_given:
    return {**entry, "status": "skipped", "reason": f"data not found: {data_dir / missing[0]}"}
  t0 = time.perf_counter()
  try:
    cfg = study.config(mode)
    if study.takes_model:
      cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    result = study.run_module().run(
      quick=mode != "full", out_dir=out_dir / study.name, data_dir=data_dir, config=cfg
    )
  except Exception as e:  # record the failure, run the other studies, exit 1 at the end
    traceback.print_exc()
    return {
      **entry,
      "status": "failed",
      "seconds": round(time.perf_counter() - t0, 1),
      "error": f"{type(e).__name__}: {e}",
    }
  result = dict(result)
  claims = [
    {**c, "verdict": stats.verdict(c, c["direction"], c["threshold"])}
    for c in result.pop("claims", [])
  ]  # the verdict always follows from the interval, whatever the study wrote
  return {
    **entry,
    "status": "ok",
    "seconds": round(time.perf_counter() - t0, 1),
    "claims": claims,
    "headline": result.pop("headline", []),
    "setting": result.pop("setting", {}),
    "figures": [f"{study.name}/{f}" for f in result.pop("figures", [])],
    "result": result,
  }


def merge(
  run_dirs,
  out: pathlib.Path,
  missing_reason: str = "not in the merged runs",
  allow_dirty: bool = False,
) -> dict:
  """One ``results.json``/``REPORT.md`` in ``out`` from runs of disjoint studies.

  The runs must share the mode, the data directory and the git commit (clean: no uncommitted
  changes); each study's folder is copied into ``out``; verdicts are recomputed from the
  intervals. Used to run the studies of one quick run as parallel processes on a shared machine.
  A registry study that none of the runs holds is recorded as skipped with ``missing_reason``; a
  study one run skipped and another ran is taken from the run that ran it.
  ``allow_dirty`` accepts runs whose checkout had uncommitted changes when they started (the
  commit is then recorded with that note, per study, in the report).
  """
  full_runs = [pathlib.Path(d) for d in run_dirs if (pathlib.Path(d) / "results.json").is_file()]
  study_dirs = [pathlib.Path(d) for d in run_dirs if pathlib.Path(d) not in full_runs]
  runs = [json.loads((d / "results.json").read_text()) for d in full_runs]
  if not runs:
    raise ValueError("at least one run directory with a results.json is needed")
  for key in ("mode", "data_dir"):
    if len({r[key] for r in runs}) != 1:
      raise ValueError(f"runs differ in {key}: {sorted({r[key] for r in runs})}")
  commits = {r["environment"]["git_commit"] for r in runs}
  if not allow_dirty and any("uncommitted" in c for c in commits):
    raise ValueError(f"runs must come from clean commits; got {sorted(commits)}")
  found = {}
  for d, r in zip(full_runs, runs):
    for name, st in r["studies"].items():
      if st.get("status") == "skipped":
        continue  # a run that skipped a study yields to a run that has it (added below if none)
      if name in found:
        raise ValueError(f"study {name} is in more than one run")
      # A study of an already merged run keeps its own commit.
      found[name] = (d, {**st, "git_commit": st.get("git_commit", r["environment"]["git_commit"])})
  for d, r in zip(full_runs, runs):
    for name, st in r["studies"].items():
      if st.get("status") == "skipped" and name not in found:
        found[name] = (d, {**st, "git_commit": r["environment"]["git_commit"]})
  for d in study_dirs:  # a study of a run stopped after that study finished: its summary.json
    name = d.name
    if name not in STUDIES or not (d / "summary.json").is_file() or name in found:
      raise ValueError(f"{d} is neither a run directory nor a finished, new study's folder")
    summ = json.loads((d / "summary.json").read_text())
    study = STUDIES[name]
    found[name] = (d.parent, {
      "paper": study.paper, "claim": study.claim, "mode": runs[0]["mode"], "status": "ok",
      "seconds": None, "claims": summ.pop("claims", []), "headline": summ.pop("headline", []),
      "setting": summ.pop("setting", {}),
      "figures": [f"{name}/{f}" for f in summ.pop("figures", [])], "result": summ,
      "git_commit": runs[0]["environment"]["git_commit"],
      "note": "entry assembled from the study's summary.json (its run was stopped after it)",
    })  # fmt: skip
  out = pathlib.Path(out)
  _check_writable(out)
  studies = {}
  for name in [n for n in STUDIES if n not in found]:
    study = STUDIES[name]
    found[name] = (out, {"paper": study.paper, "claim": study.claim, "mode": runs[0]["mode"],
                         "status": "skipped", "reason": missing_reason,
                         "git_commit": runs[0]["environment"]["git_commit"]})  # fmt: skip
  for name in [n for n in STUDIES if n in found] + [n for n in found if n not in STUDIES]:
    d, st = found[name]
    if (d / name).is_dir() and d.resolve() != out.resolve():
      shutil.copytree(d / name, out / name, dirs_exist_ok=True)
    st = dict(st)
    if "claims" in st:
      st["claims"] = [
        {**c, "verdict": stats.verdict(c, c["direction"], c["threshold"])} for c in st["claims"]
      ]
    studies[name] = st
  env = dict(runs[0]["environment"])
  env["load_average_start"] = max(r["environment"]["load_average_start"] for r in runs)
  env["load_average_finish"] = max(r["environment"]["load_average_finish"] for r in runs)
  env["parallel_runs"] = len(runs) + len(study_dirs)
  env["git_commit"] = ", ".join(
    f"{c} ({', '.join(n for n, (_, st) in found.items() if st['git_commit'] == c and st['status'] == 'ok')})"
    for c in sorted({st["git_commit"] for _, st in found.values()})
  )
  env["load_average_windows_min"] = [1, 5, 15]
  results = sanitize(
    {
      "schema": 1,
      "mode": runs[0]["mode"],
      "command": " & ".join(r["command"] for r in runs) + " (in parallel; merged by "
      "python -m experiments.reproduce --merge"
      + (f"; {', '.join(d.name for d in study_dirs)} from summary.json" if study_dirs else "")
      + ")",
      "started": min(r["started"] for r in runs),
      "finished": max(r["finished"] for r in runs),
      "data_dir": runs[0]["data_dir"],
      "environment": env,
      "ci_level_percent": round(100 * stats.LEVEL),
      "ok": all(st["status"] != "failed" for st in studies.values()),
      "studies": studies,
    }
  )
  atomic_write(out / "results.json", json.dumps(results, indent=2))
  write_report(results, out)
  return results


def _check_writable(out: pathlib.Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  fd, probe = tempfile.mkstemp(dir=out, prefix=".probe")
  os.close(fd)
  os.unlink(probe)


def _jax_backend_started() -> bool:
  """Whether a JAX backend has started in this process (XLA reads ``XLA_FLAGS`` when it starts).

  Importing jax (as ``jaxsteer`` and ``experiments.report`` do) starts none; running anything
  does (tests). JAX has no public query, so this asks its ``xla_bridge``; if that ever goes away,
  a started backend is assumed (threads then stay at the frameworks' defaults, as recorded).
  """
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return True


def main(argv=None) -> int:
  """Parses the command line, runs the studies, writes ``results.json`` and ``REPORT.md``."""
  from jaxsteer._src.cliutil import OneLineParser  # one-line errors, exit 2

  # Threads are pinned only for the command line: an in-process call (tests) keeps the process's
  # settings, and once a backend has started XLA would ignore the flags anyway.
  pin_reason = (
    "default (JAX was already running)" if _jax_backend_started()
    else "default (called in-process)" if argv is not None
    else None
  )  # fmt: skip

  ap = OneLineParser(
    prog="python -m experiments.reproduce",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  g = ap.add_mutually_exclusive_group()
  g.add_argument("--smoke", action="store_true", help="one or two steps of everything (tests)")
  g.add_argument("--quick", action="store_true", help="small settings (minutes on 2 CPU cores)")
  g.add_argument("--full", action="store_true", help="full settings (the default)")
  ap.add_argument("--only", default=",".join(STUDIES), help="comma-separated subset of studies")
  ap.add_argument("--out", default="runs/reproduce", help="output directory")
  ap.add_argument("--data", default=None, help="data directory (default: $JAXSTEER_DATA)")
  ap.add_argument("--model", default=None, help="path or hub id for the models/grains studies")
  ap.add_argument("--tokenizer", default=None, help="tokenizer path for a llama2.c --model")
  ap.add_argument(
    "--threads",
    type=int,
    default=1,
    help="CPU threads for XLA's Eigen and PyTorch (1: single-threaded, reproducible reductions; "
    "0: the frameworks' defaults). Takes effect only if JAX is not yet initialised.",
  )
  ap.add_argument(
    "--merge", nargs="+", default=None, metavar="RUN_DIR",
    help="merge finished runs of disjoint studies (one commit) into --out instead of running",
  )  # fmt: skip
  ap.add_argument(
    "--missing-reason", default="not in the merged runs",
    help="with --merge: why a study that no run holds is missing (recorded as skipped)",
  )  # fmt: skip
  ap.add_argument(
    "--allow-dirty", action="store_true",
    help="with --merge: accept runs started from a checkout with uncommitted changes",
  )  # fmt: skip
  args = ap.parse_args(argv)
  if args.merge:
    try:
      merge(
        [pathlib.Path(d) for d in args.merge],
        pathlib.Path(args.out),
        args.missing_reason,
        args.allow_dirty,
      )
    except (OSError, ValueError, KeyError) as e:
      ap.error(f"cannot merge: {e}")
    return 0
  threads = args.threads if pin_reason is None else pin_reason
  if pin_reason is None:  # the command line (argv from sys.argv): this process is ours
    set_threads(args.threads, pin_core=True)
  mode = "smoke" if args.smoke else "quick" if args.quick else "full"
  only = [s.strip() for s in args.only.split(",") if s.strip()]
  unknown = [s for s in only if s not in STUDIES]
  if unknown or not only:
    ap.error(f"unknown studies {unknown}; known: {', '.join(STUDIES)}")
  named = args.data or os.environ.get("JAXSTEER_DATA")
  data_dir = pathlib.Path(named) if named else default_data_dir()
  if not data_dir.is_dir():
    if named:
      ap.error(
        f"data directory not found: {data_dir} "
        f"(from {'--data' if args.data else 'JAXSTEER_DATA'}; point it at the shared data)"
      )
    print(
      f"warning: default data directory {data_dir} not found; studies that need data are skipped",
      file=sys.stderr,
    )
  out = pathlib.Path(args.out)
  try:
    _check_writable(out)
  except OSError as e:
    ap.error(f"output directory {out} is not writable: {e}")
  for stale in ("REPORT.md", "results.json"):
    (out / stale).unlink(missing_ok=True)

  started = _now()
  load_start = [round(x, 2) for x in os.getloadavg()]
  env = environment()
  overrides = {"model": args.model, "tokenizer": args.tokenizer}
  studies = {}
  bar = tqdm(only, desc=f"reproduce ({mode})", unit="study")
  for name in bar:
    bar.set_postfix_str(name)
    print(f"\n== {name} ({mode})", file=sys.stderr, flush=True)
    studies[name] = run_study(STUDIES[name], mode, out, data_dir, **overrides)
  results = sanitize(
    {
      "schema": 1,
      "mode": mode,
      "command": "python -m experiments.reproduce "
      + shlex.join(list(argv) if argv is not None else sys.argv[1:]),
      "started": started,
      "finished": _now(),
      "data_dir": str(data_dir),
      "environment": {
        **env,
        "threads": threads,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "load_average_start": load_start,
        "load_average_finish": [round(x, 2) for x in os.getloadavg()],
        "load_average_windows_min": [1, 5, 15],
      },
      "ci_level_percent": round(100 * stats.LEVEL),
      "ok": all(s["status"] != "failed" for s in studies.values()),
      "studies": studies,
    }
  )
  atomic_write(out / "results.json", json.dumps(results, indent=2))
  report = write_report(results, out)
  print(
    json.dumps(
      {k: {"status": v["status"], "seconds": v.get("seconds")} for k, v in studies.items()}
    )
  )
  print(f"report: {report}", file=sys.stderr)
  return 0 if results["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
