"""Publishes a finished quick run: a commit-ready copy and the README's headline table.

  python -m experiments.reproduce --quick --out runs/reproduce
  python -m experiments.publish runs/reproduce     # -> experiments/results/quick/, README.md

Copies ``REPORT.md``, ``results.json`` and the figures they link (nothing else: no checkpoints)
into ``experiments/results/quick/``, replaces the table between the README's
``<!-- headline-table -->`` markers with ``experiments.report.headline_table`` of that
``results.json`` (one row per claim) and regenerates the study READMEs' tables
(``experiments.tables``); ``tests/experiments`` checks that all of them agree with the JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

from experiments import tables
from experiments.report import atomic_write, headline_table

REPO = pathlib.Path(__file__).resolve().parent.parent
DEST = REPO / "experiments" / "results" / "quick"
BEGIN, END = "<!-- headline-table -->", "<!-- /headline-table -->"


def publish(run_dir: pathlib.Path, dest: pathlib.Path = DEST, readme: pathlib.Path | None = None):
  """Copies the run's report, results and figures to ``dest``; refreshes the README table."""
  run_dir = pathlib.Path(run_dir)
  results = json.loads((run_dir / "results.json").read_text())
  if not results.get("ok"):
    raise ValueError(f"{run_dir} has failed studies; publish only a run where every study passed")
  if dest.exists():
    shutil.rmtree(dest)
  dest.mkdir(parents=True)
  for name in ("REPORT.md", "results.json"):
    shutil.copy2(run_dir / name, dest / name)
  for st in results["studies"].values():
    for fig in st.get("figures", []):
      (dest / fig).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(run_dir / fig, dest / fig)
  readme = readme or REPO / "README.md"
  text = readme.read_text()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{readme} has no {BEGIN} ... {END} block")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  atomic_write(readme, f"{head}{BEGIN}\n{headline_table(results)}{END}{tail}")
  if readme == REPO / "README.md":
    for rel in tables.READMES:
      if (REPO / rel).is_file():
        tables.refresh(REPO / rel, check=False)
  return dest


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("run_dir", type=pathlib.Path, help="--out of a finished quick run")
  a = ap.parse_args(argv)
  print(publish(a.run_dir), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
