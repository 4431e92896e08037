"""``python -m recoder.train --data DIR --out RUN_DIR ...``, and the training API.

``train(config, corpus, out) -> Summary`` with ``TrainConfig`` / ``ModelConfig`` /
``RunOptions`` (see ``recoder._src.train``); ``cli(argv)`` is the command line.
"""

import sys

from recoder._src.train import (
  ModelConfig,
  RunOptions,
  Summary,
  TrainConfig,
  build_parser,
  cli,
  config_from_args,
  main,
  train,
  train_from_argv,
)

__all__ = [
  "ModelConfig",
  "RunOptions",
  "Summary",
  "TrainConfig",
  "build_parser",
  "cli",
  "config_from_args",
  "main",
  "train",
  "train_from_argv",
]

if __name__ == "__main__":
  sys.exit(cli())
