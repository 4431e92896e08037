"""Tokenizers behind one small interface: llama2.c ``tok*.bin`` files and Hugging Face tokenizers."""

from __future__ import annotations

import pathlib
import struct

import numpy as np


class Llama2cTokenizer:
  """Reader and BPE encoder for llama2.c tokenizer files (``tok512.bin``, ``tokenizer.bin``).

  Encoding follows llama2.c's ``encode``: optional BOS, the sentencepiece dummy-prefix piece
  ``" "`` for non-empty text, one piece per UTF-8 code point with byte fallback (``byte + 3``),
  then greedy merging of the adjacent pair with the highest score. Decoding maps ``<0xNN>`` pieces
  to raw bytes and drops the leading space of the first piece after BOS.
  """

  def __init__(self, path: str | pathlib.Path, vocab_size: int | None = None):
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"missing llama2.c tokenizer file: {path}")
    data = path.read_bytes()
    if len(data) < 4:
      raise ValueError(f"corrupt llama2.c tokenizer {path}: too short")
    (self.max_token_length,) = struct.unpack_from("<i", data, 0)
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data) and (vocab_size is None or len(pieces) < vocab_size):
      if off + 8 > len(data):
        raise ValueError(f"corrupt llama2.c tokenizer {path}: truncated entry {len(pieces)}")
      score, n = struct.unpack_from("<fi", data, off)
      off += 8
      if n < 0 or off + n > len(data):
        raise ValueError(
          f"corrupt llama2.c tokenizer {path}: bad piece length at entry {len(pieces)}"
        )
      pieces.append(data[off : off + n])
      scores.append(score)
      off += n
    if vocab_size is not None and len(pieces) != vocab_size:
      raise ValueError(
        f"tokenizer {path} has {len(pieces)} pieces but the model's vocab_size is {vocab_size}"
      )
    self.path = path
    self.pieces = pieces
    self.scores = np.asarray(scores, np.float32)
    self._lookup = {p: i for i, p in enumerate(pieces)}
    self.bos_id, self.eos_id, self.unk_id = 1, 2, 0
    self.pad_id = None

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids: list[int] = [self.bos_id] if add_bos else []
    if not text:
      return ids
    toks: list[int] = [self._lookup[b" "]]
    for ch in text:
      b = ch.encode("utf-8")
      tid = self._lookup.get(b)
      if tid is not None:
        toks.append(tid)
      else:
        toks.extend(byte + 3 for byte in b)
    while True:
      best, best_id, best_i = -1e10, -1, -1
      for i in range(len(toks) - 1):
        tid = self._lookup.get(self.pieces[toks[i]] + self.pieces[toks[i + 1]])
        if tid is not None and self.scores[tid] > best:
          best, best_id, best_i = self.scores[tid], tid, i
      if best_i < 0:
        break
      toks[best_i : best_i + 2] = [best_id]
    return ids + toks

  def piece_bytes(self, token: int, prev: int | None) -> bytes:
    p = self.pieces[token]
    if prev == self.bos_id and p.startswith(b" "):
      p = p[1:]
    if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
      try:
        return bytes([int(p[3:5], 16)])
      except ValueError:
        return p
    return p

  def decode(self, ids) -> str:
    out = bytearray()
    prev = None
    for t in (int(i) for i in ids):
      if t in (self.bos_id, self.eos_id):
        prev = t
        continue
      out += self.piece_bytes(t, prev)
      prev = t
    # A leading space is the dummy prefix when BOS was not part of the ids.
    text = out.decode("utf-8", errors="replace")
    return text[1:] if text.startswith(" ") and not ids_start_with_bos(ids, self.bos_id) else text

  def id_to_piece(self, i: int) -> str:
    return self.pieces[int(i)].decode("utf-8", errors="replace")


def ids_start_with_bos(ids, bos) -> bool:
  ids = list(ids)
  return bool(ids) and int(ids[0]) == bos


class HFTokenizer:
  """Adapter around a ``transformers`` tokenizer with the same interface as ``Llama2cTokenizer``."""

  def __init__(self, tok):
    self.tok = tok
    self.bos_id = tok.bos_token_id
    self.eos_id = tok.eos_token_id
    self.pad_id = tok.pad_token_id

  @classmethod
  def from_dir(cls, path) -> HFTokenizer:
    from transformers import AutoTokenizer

    return cls(AutoTokenizer.from_pretrained(str(path)))

  @property
  def vocab_size(self) -> int:
    return len(self.tok)

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids = list(self.tok.encode(text, add_special_tokens=False))
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    return self.tok.convert_ids_to_tokens(int(i))
