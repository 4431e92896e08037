"""Tokenizers behind one small interface: llama2.c ``tok*.bin`` files and Hugging Face tokenizers."""

from __future__ import annotations

import heapq
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

  def __init__(
    self, path: str | pathlib.Path, vocab_size: int | None = None, use_sentencepiece: bool = True
  ):
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
    while off < len(data):
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
      more = "more" if len(pieces) > vocab_size else "fewer"
      raise ValueError(
        f"tokenizer {path} has {len(pieces)} pieces, {more} than the model's vocab_size "
        f"{vocab_size}: it does not belong to this model"
      )
    self.path = path
    self.pieces = pieces
    self.scores = np.asarray(scores, np.float32)
    self._lookup = {p: i for i, p in enumerate(pieces)}
    self.bos_id, self.eos_id, self.unk_id = 1, 2, 0
    self.pad_id = None
    self.merge_work = 0  # pair look-ups + heap pops of the last encode (its complexity, measured)
    self.sp = _matching_sentencepiece(path, pieces) if use_sentencepiece else None

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    """Token ids of ``text``; O(n log n) in its length.

    With a matching sentencepiece ``tokenizer.model`` beside the file, sentencepiece encodes;
    otherwise llama2.c's merge order (highest-scoring adjacent pair first, leftmost on ties) is
    replayed with a priority queue over a linked list of symbols instead of rescanning the whole
    sequence after every merge (quadratic: 8,000 characters took 37.7 s).
    """
    ids: list[int] = [self.bos_id] if add_bos else []
    if not text:
      return ids
    if self.sp is not None:
      return ids + list(self.sp.encode(text))
    toks: list[int] = [self._lookup[b" "]]
    for ch in text:
      b = ch.encode("utf-8")
      tid = self._lookup.get(b)
      if tid is not None:
        toks.append(tid)
      else:
        toks.extend(byte + 3 for byte in b)
    return ids + self._merge(toks)

  def _merge(self, toks: list[int]) -> list[int]:
    n = len(toks)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    version = [0] * n
    alive = [True] * n
    pieces, lookup, scores = self.pieces, self._lookup, self.scores
    heap: list[tuple[float, int, int, int, int, int]] = []
    work = 0

    def push(left):
      nonlocal work
      right = nxt[left]
      if left < 0 or right < 0:
        return
      work += 1
      tid = lookup.get(pieces[toks[left]] + pieces[toks[right]])
      if tid is not None:
        # Highest score first; among equal scores the leftmost pair (node index = text order).
        heapq.heappush(heap, (-float(scores[tid]), left, right, version[left], version[right], tid))

    for i in range(n - 1):
      push(i)
    while heap:
      work += 1
      _, left, right, vl, vr, tid = heapq.heappop(heap)
      if not (alive[left] and alive[right] and nxt[left] == right):
        continue
      if version[left] != vl or version[right] != vr:
        continue
      toks[left] = tid
      version[left] += 1
      alive[right] = False
      nxt[left] = nxt[right]
      if nxt[right] >= 0:
        prv[nxt[right]] = left
      push(left)
      if prv[left] >= 0:
        push(prv[left])
    self.merge_work = work
    out, i = [], 0
    while i >= 0:
      out.append(toks[i])
      i = nxt[i]
    return out

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


def _matching_sentencepiece(path: pathlib.Path, pieces: list[bytes]):
  """The sentencepiece model beside a llama2.c tokenizer file, if it has the same pieces."""
  model = path.with_name("tokenizer.model")
  if not model.is_file():
    return None
  try:
    import sentencepiece
  except ImportError:
    return None
  sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
  if sp.get_piece_size() != len(pieces):
    return None
  # llama2.c's export writes "▁" as " "; byte pieces keep their "<0xNN>" text.
  for i in range(len(pieces)):
    if sp.id_to_piece(i).replace("▁", " ").encode("utf-8") != pieces[i] and not (
      sp.is_control(i) or sp.is_unknown(i)
    ):
      return None
  return sp


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


def make_tokenizer(tokenizer, cfg):
  """The tokenizer of a model from what the user passed.

  Args:
    tokenizer: ``None``; an object with ``encode`` and ``decode`` (returned as is); a HF tokenizer
      directory (``HFTokenizer``); or a llama2.c ``tok*.bin`` file (``Llama2cTokenizer``).
    cfg: the text ``ModelConfig`` (its ``vocab_size`` bounds the tokenizer's).

  Raises:
    FileNotFoundError: a path that does not exist.
    ValueError: an object without ``encode``/``decode``, or a HF tokenizer with more tokens than
      the model's vocabulary.
  """
  if tokenizer is None:
    return None
  if not isinstance(tokenizer, str | pathlib.Path):
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
      raise ValueError(f"tokenizer must be a path or have encode/decode, got {type(tokenizer)}")
    return tokenizer
  p = pathlib.Path(tokenizer)
  if p.is_dir():
    tok = HFTokenizer.from_dir(p)
    if tok.vocab_size > cfg.vocab_size:
      raise ValueError(
        f"tokenizer {p} has {tok.vocab_size} tokens, more than the model's vocab_size "
        f"{cfg.vocab_size}: it does not belong to this model"
      )
    return tok
  if p.is_file():
    return Llama2cTokenizer(p, vocab_size=cfg.vocab_size)
  raise FileNotFoundError(f"tokenizer not found: {tokenizer}")
