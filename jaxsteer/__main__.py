"""``python -m jaxsteer``: see ``jaxsteer._src.cli``."""

import sys

from jaxsteer._src.cli import main

if __name__ == "__main__":
  sys.exit(main())
