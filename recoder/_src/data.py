"""Word-level corpora for language modelling (Mikolov's Penn Treebank layout).

Each line of ``ptb.{train,valid,test}.txt`` is one sentence; ``<eos>`` is appended at every
newline, the splits are concatenated into one id stream and cut into ``B`` parallel streams
(truncated BPTT, as in Zaremba et al. 2014 and the PyTorch word-language-model example).

Usage::

  corpus = load_corpus(data_dir / "ptb")
  streams = batchify(corpus.train, batch_size=20)      # (B, N) int32
  for x, y in bptt_batches(streams, bptt=35): ...
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

EOS = "<eos>"

__all__ = ["Corpus", "Vocab", "batchify", "bptt_batches", "load_corpus", "read_tokens", "encode"]


@dataclasses.dataclass(frozen=True)
class Vocab:
  """A word <-> id map (ids in order of first appearance in the training split)."""

  words: tuple[str, ...]

  @property
  def size(self) -> int:
    return len(self.words)

  def index(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.words)}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Id streams of the three splits; ``directory`` and ``prefix`` say where they were read from
  (``None`` for a corpus built in memory)."""

  vocab: Vocab
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  directory: str | None = None
  prefix: str | None = None


def read_tokens(path: str | pathlib.Path) -> list[str]:
  """Reads a whitespace-tokenised file, one sentence per line, appending ``<eos>`` per line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"corpus file not found: {path}")
  tokens: list[str] = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      words = line.split()
      if words:
        tokens.extend(words)
        tokens.append(EOS)
  if not tokens:
    raise ValueError(f"corpus file is empty (no tokens): {path}")
  return tokens


def encode(tokens: list[str], vocab: Vocab, *, unk: str | None = "<unk>") -> np.ndarray:
  """Maps words to ids; unknown words go to ``unk`` if it is in the vocabulary, else raise."""
  idx = vocab.index()
  unk_id = idx.get(unk) if unk is not None else None
  out = np.empty(len(tokens), np.int32)
  for i, w in enumerate(tokens):
    j = idx.get(w, unk_id)
    if j is None:
      raise ValueError(f"word {w!r} (token {i}) is not in the vocabulary and there is no <unk>")
    out[i] = j
  return out


def load_corpus(directory: str | pathlib.Path, *, prefix: str = "ptb.") -> Corpus:
  """Loads ``{prefix}train.txt``, ``{prefix}valid.txt``, ``{prefix}test.txt`` from ``directory``."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"corpus directory not found: {directory}")
  train_tok = read_tokens(directory / f"{prefix}train.txt")
  words = tuple(dict.fromkeys(train_tok))
  vocab = Vocab(words)
  return Corpus(
    vocab=vocab,
    train=encode(train_tok, vocab),
    valid=encode(read_tokens(directory / f"{prefix}valid.txt"), vocab),
    test=encode(read_tokens(directory / f"{prefix}test.txt"), vocab),
    directory=str(directory.resolve()),
    prefix=prefix,
  )


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts a 1-d id stream into ``batch_size`` contiguous streams, dropping the tail: (B, N)."""
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"expected a 1-d id stream, got shape {ids.shape}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = ids.shape[0] // batch_size
  if n < 2:
    raise ValueError(f"corpus of {ids.shape[0]} tokens is too short for batch size {batch_size}")
  return ids[: n * batch_size].reshape(batch_size, n)


def bptt_batches(streams: np.ndarray, bptt: int, *, drop_last: bool = False):
  """Yields ``(inputs, targets)`` windows of shape (B, T) with targets shifted by one."""
  if bptt <= 0:
    raise ValueError(f"bptt must be positive, got {bptt}")
  n = streams.shape[1] - 1
  for i in range(0, n, bptt):
    t = min(bptt, n - i)
    if drop_last and t < bptt:
      return
    yield streams[:, i : i + t], streams[:, i + 1 : i + 1 + t]


def num_bptt_batches(streams: np.ndarray, bptt: int, *, drop_last: bool = False) -> int:
  n = streams.shape[1] - 1
  return n // bptt if drop_last else -(-n // bptt)
