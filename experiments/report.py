"""The reproduction report: ``REPORT.md`` generated from ``results.json`` alone.

``python -m experiments.reproduce`` collects every study's headline numbers, setting and figures
into one results dict, writes it as ``results.json`` and then calls ``write_report`` on that
dict. Every number on the report page is formatted from a value in the dict (``fmt``), so the page
never states a number that ``results.json`` does not hold; ``tests/experiments`` checks this.

  import json, pathlib
  from experiments.report import write_report
  write_report(json.loads(pathlib.Path("runs/reproduce/results.json").read_text()), "runs/reproduce")
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import re
import subprocess

from jaxsteer._src.fileio import atomic_write_text

NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def fmt(v) -> str:
  """Formats a results value for the page (4 significant digits for floats)."""
  if v is None:
    return "n/a"
  if isinstance(v, bool):
    return str(v).lower()
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    return "n/a" if not math.isfinite(v) else f"{v:.4g}"
  return str(v)


def numbers_in(obj) -> set[str]:
  """Every number a report may show for ``obj``: formatted numeric leaves and digits in strings."""
  out: set[str] = set()

  def walk(o):
    if isinstance(o, dict):
      for k, v in o.items():
        out.update(NUMBER.findall(str(k)))
        walk(v)
    elif isinstance(o, list | tuple):
      for v in o:
        walk(v)
    elif isinstance(o, bool) or o is None:
      pass
    elif isinstance(o, int | float):  # as ``fmt`` shows it, or verbatim inside a JSON config
      out.update(NUMBER.findall(fmt(o)) + NUMBER.findall(json.dumps(o)))
    else:
      out.update(NUMBER.findall(str(o)))

  walk(obj)
  return out


def sanitize(obj):
  """A strictly JSON-able copy: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
  if isinstance(obj, dict):
    return {str(k): sanitize(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [sanitize(v) for v in obj]
  if isinstance(obj, bool) or obj is None or isinstance(obj, str):
    return obj
  if isinstance(obj, int):
    return int(obj)
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
    return sanitize(obj.item())
  if hasattr(obj, "tolist"):
    return sanitize(obj.tolist())
  return str(obj)


def environment() -> dict:
  """The hardware and software a run used, as detected (CPU model and cores, devices, versions)."""
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  backend = jax.default_backend()
  try:
    repo = pathlib.Path(__file__).resolve().parents[1]
    commit = subprocess.run(
      ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
    commit = (commit + (" (uncommitted changes)" if dirty else "")) if commit else "unknown"
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  env = {
    "cpu": cpu,
    "cpu_cores": cores,
    "backend": backend,
    "devices": f"{len(devices)} x {', '.join(kinds)}",
    "gpu": ", ".join(kinds) if backend == "gpu" else None,
    "jax": jax.__version__,
    "python": platform.python_version(),
    "platform": platform.platform(),
    "git_commit": commit,
  }
  accel = f"; accelerator: {env['gpu']}" if env["gpu"] else "; no accelerator"
  env["summary"] = (
    f"{cpu}, {cores} cores{accel}; JAX devices: {env['devices']} ({backend}); "
    f"jax {env['jax']}, Python {env['python']}"
  )
  return env


def atomic_write(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (``jaxsteer._src.fileio.atomic_write_text``)."""
  atomic_write_text(path, text)


def _cell(s) -> str:
  return fmt(s).replace("|", "\\|").replace("\n", " ")


def _value(row: dict) -> str:
  """``value [lo, hi]`` (the 95 % interval) as the page shows it; ``(exact)`` when no sampling."""
  v = _cell(row.get("value"))
  ci = row.get("ci")
  if not ci:
    return v
  if row.get("ci_method") == "exact":
    return f"{v} (exact)"
  return f"{v} [{_cell(ci[0])}, {_cell(ci[1])}]"


VERDICT_MARK = {
  "supported": "supported",
  "contradicted": "**CONTRADICTED**",
  "inconclusive": "inconclusive",
}


def _verdict(c: dict) -> str:
  return VERDICT_MARK.get(c.get("verdict"), _cell(c.get("verdict")))


def _claims_table(items: list[tuple[str, dict]], with_study: bool, ci: str = "CI") -> list[str]:
  head = (
    f"| study | claim | measured | ours [{ci}] | verdict | paper |"
    if with_study
    else f"| claim | measured | ours [{ci}] | verdict | paper |"
  )
  lines = [head, "|---" * (6 if with_study else 5) + "|"]
  for name, c in items:
    cells = [f"`{name}`"] if with_study else []
    cells += [_cell(c["claim"]), _cell(c["metric"]), _value(c), _verdict(c), _cell(c.get("paper"))]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _section(name: str, st: dict, env_summary: str) -> list[str]:
  lines = [f"## {st['paper']} (`{name}`)", "", f"**Paper's claim.** {st['claim']}", ""]
  status = st["status"]
  if status == "failed":
    lines += [
      f"**Status: FAILED** after {fmt(st.get('seconds'))} s: `{_cell(st.get('error'))}`. "
      "No numbers are claimed for this study; see the traceback in the run's log.",
      "",
    ]
    return lines
  if status == "skipped":
    lines += [f"**Status: skipped** ({_cell(st.get('reason'))}). No numbers are claimed.", ""]
    return lines
  lines += [f"**Status:** ok in {fmt(st.get('seconds'))} s.", ""]
  claims = st.get("claims", [])
  if claims:
    lines += ["**Verdicts.**", ""] + _claims_table([(name, c) for c in claims], False) + [""]
  lines += ["| metric | ours [CI] | n | paper |", "|---|---:|---:|---|"]
  for row in st.get("headline", []):
    lines.append(
      f"| {_cell(row['metric'])} | {_value(row)} | {_cell(row.get('n'))} | "
      f"{_cell(row.get('paper'))} |"
    )
  lines.append("")
  setting = st.get("setting", {})
  lines += [
    "**Setting.**",
    "",
    f"- model: {fmt(setting.get('model'))}",
    f"- data: {fmt(setting.get('data'))}",
    f"- seed: {fmt(setting.get('seed'))}",
    f"- selection: {fmt(setting.get('selection'))}",
    f"- hardware: {env_summary}",
    f"- config: `{json.dumps(setting.get('config'), separators=(',', ':'))}`",
    "",
  ]
  for fig in st.get("figures", []):
    lines += [f"![{fig}]({fig})", ""]
  return lines


def all_claims(results: dict) -> list[tuple[str, dict]]:
  """(study, claim row) for every claim of every study that ran, in registry order."""
  return [
    (name, c)
    for name, st in results["studies"].items()
    if st["status"] == "ok"
    for c in st.get("claims", [])
  ]


def render(results: dict) -> str:
  """The Markdown text of the report for ``results`` (see ``write_report``)."""
  env = results["environment"]
  studies = results["studies"]
  claims = all_claims(results)
  lines = [
    "# Reproduction report",
    "",
    f"Mode **{results['mode']}**, written by `{results['command']}` "
    f"(started {results['started']}, finished {results['finished']}). "
    "Every number on this page is read from `results.json` beside it. CI: the "
    f"{fmt(results.get('ci_level_percent'))} % bootstrap interval (over items, prompts or "
    "windows; over seeds and items where a model is trained here; paired for differences "
    "between methods). Hyper-parameters (alpha, layer, step size) were chosen on a validation "
    "split disjoint from the test items the numbers are measured on (each study's *selection*).",
    "",
    "## Verdicts",
    "",
    "A claim is *supported* when its whole interval lies on the claimed side, **CONTRADICTED** "
    "when it lies on the other side, and *inconclusive* (not resolved at this scale) otherwise.",
    "",
  ]
  lines += _claims_table(claims, True) if claims else ["No claims were tested in this run."]
  lines += [
    "",
    f"**Hardware.** {env['summary']}; {env['platform']}; git commit {env['git_commit']}; "
    f"threads {fmt(env.get('threads'))}; load average "
    f"(over {fmt(env.get('load_average_windows_min'))} min) at start "
    f"{fmt(env.get('load_average_start'))}, at finish {fmt(env.get('load_average_finish'))} "
    "(a shared machine when above the core count: timings are then pessimistic).",
    "",
    f"**Data directory.** `{results['data_dir']}`.",
    "",
    "| study | paper | status | seconds |",
    "|---|---|---|---:|",
  ]
  for name, st in studies.items():
    status = {"ok": "ok", "failed": "**FAILED**", "skipped": "skipped"}[st["status"]]
    lines.append(f"| `{name}` | {_cell(st['paper'])} | {status} | {_cell(st.get('seconds'))} |")
  lines.append("")
  for name, st in studies.items():
    lines += _section(name, st, env["summary"])
  return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict, out_dir) -> pathlib.Path:
  """Writes ``out_dir/REPORT.md`` (atomically) from ``results`` alone; returns its path.

  Args:
    results: the dict that ``python -m experiments.reproduce`` writes as ``results.json``
      (keys ``mode``, ``command``, ``started``, ``finished``, ``data_dir``, ``environment`` and
      ``studies``: name -> ``status`` (ok/failed/skipped), ``paper``, ``claim``, ``seconds``,
      ``headline`` rows, ``setting``, ``figures``, ``error``/``reason``).
    out_dir: the run's output directory (figures are linked relative to it).
  """
  path = pathlib.Path(out_dir) / "REPORT.md"
  atomic_write(path, render(results))
  return path


def headline_table(results: dict) -> str:
  """The README's table: one row per claim of each study (chosen by claim, never by position).

  A study that did not run shows its status; a study without claims shows none.
  """
  lines = [
    "| study | claim | measured | ours [95% CI] | verdict | paper |",
    "|---|---|---|---:|---|---|",
  ]
  for name, st in results["studies"].items():
    if st["status"] != "ok":
      lines.append(f"| `{name}` | {st['status']} | | | | |")
      continue
    lines += _claims_table([(name, c) for c in st.get("claims", [])], True)[2:]
  return "\n".join(lines) + "\n"
