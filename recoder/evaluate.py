"""Entry point: ``python -m recoder.evaluate --run RUN_DIR ...`` (see recoder._src.evaluate)."""

import sys

from recoder._src.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
