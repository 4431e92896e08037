"""``python -m jaxsteer.launch -n 2 [-d 4] [--timeout S] script.py [args...]``: a local JAX group.

Starts N processes of the script on localhost (K fake CPU devices each, gloo collectives); the
script calls ``jaxsteer.distributed.initialize()``. See docs/multiprocess.md.
"""

import sys

from jaxsteer._src.distributed import main

if __name__ == "__main__":
  sys.exit(main())
