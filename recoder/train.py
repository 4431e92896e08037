"""Entry point: ``python -m recoder.train --data DIR --out RUN_DIR ...`` (see recoder._src.train)."""

import sys

from recoder._src.train import cli

if __name__ == "__main__":
  sys.exit(cli())
