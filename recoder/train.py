"""Entry point: ``python -m recoder.train --data DIR --out RUN_DIR ...`` (see recoder._src.train)."""

import sys

from recoder._src.train import main

if __name__ == "__main__":
  sys.exit(main())
