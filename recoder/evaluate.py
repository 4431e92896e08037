"""Entry point: ``python -m recoder.evaluate --run RUN_DIR ...`` (see recoder._src.evaluate)."""

import sys

from recoder._src.evaluate import main


def cli(argv=None) -> int:
  """``main`` with bad input reported in one line and exit code 2 (no traceback)."""
  from jaxsteer._src.cliutil import run_main

  return run_main("python -m recoder.evaluate", lambda: main(argv))


if __name__ == "__main__":
  sys.exit(cli())
