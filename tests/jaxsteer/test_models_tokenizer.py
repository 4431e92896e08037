"""llama2.c tokenizer: linear-time encode with ids identical to the quadratic reference."""

import shutil
import struct

import numpy as np
import pytest

from jaxsteer.models import Llama2cTokenizer


def reference_encode(tok: Llama2cTokenizer, text: str) -> list[int]:
  """llama2.c's quadratic merge loop, as jaxsteer implemented it before (kept as the oracle)."""
  ids = [tok.bos_id]
  toks = [tok._lookup[b" "]]
  for ch in text:
    b = ch.encode("utf-8")
    tid = tok._lookup.get(b)
    toks.extend([tid] if tid is not None else [byte + 3 for byte in b])
  while True:
    best, best_id, best_i = -1e10, -1, -1
    for i in range(len(toks) - 1):
      tid = tok._lookup.get(tok.pieces[toks[i]] + tok.pieces[toks[i + 1]])
      if tid is not None and tok.scores[tid] > best:
        best, best_id, best_i = tok.scores[tid], tid, i
    if best_i < 0:
      break
    toks[best_i : best_i + 2] = [best_id]
  return ids + toks


@pytest.fixture(scope="module")
def shakespeare(data_dir):
  return (data_dir / "tinyshakespeare" / "input.txt").read_text()


@pytest.fixture(scope="module")
def llama2_bin(data_dir, tmp_path_factory):
  """The Llama 2 ``tokenizer.bin`` alone (no ``tokenizer.model`` beside it: the heap path)."""
  d = tmp_path_factory.mktemp("tok")
  shutil.copy(data_dir / "llama2_tokenizer" / "tokenizer.bin", d / "tokenizer.bin")
  return d / "tokenizer.bin"


def test_heap_merge_equals_reference_long_text(stories260k, shakespeare):
  _, tok_path = stories260k
  tok = Llama2cTokenizer(tok_path, vocab_size=512)
  assert tok.sp is None
  text = shakespeare[:3000] + " naïve café ☃ 日本語"  # byte fallback too
  assert tok.encode(text) == reference_encode(tok, text)


def test_heap_merge_equals_reference_llama2_vocab(llama2_bin, shakespeare):
  tok = Llama2cTokenizer(llama2_bin, vocab_size=32000)
  assert tok.sp is None
  text = shakespeare[5000:7000]
  assert tok.encode(text) == reference_encode(tok, text)


def test_heap_merge_equals_sentencepiece_on_long_text(data_dir, llama2_bin, shakespeare):
  """Where a ``tokenizer.model`` exists it is used; its ids equal the heap merge's (16k chars)."""
  pytest.importorskip("sentencepiece")
  with_sp = Llama2cTokenizer(data_dir / "llama2_tokenizer" / "tokenizer.bin")
  assert with_sp.sp is not None
  heap = Llama2cTokenizer(llama2_bin)
  text = shakespeare[:16000]
  assert heap.encode(text) == with_sp.encode(text)


def test_encode_work_grows_linearly(llama2_bin, shakespeare):
  """The merge's work (pair look-ups + heap pops) for 8x the text is ~8x, far below quadratic."""
  tok = Llama2cTokenizer(llama2_bin)
  tok.encode(shakespeare[:1000])
  w1 = tok.merge_work
  tok.encode(shakespeare[:8000])
  w8 = tok.merge_work
  assert 6 < w8 / w1 < 12  # quadratic would be ~64


def test_more_pieces_than_the_vocabulary_is_an_error(stories260k, tmp_path):
  _, tok_path = stories260k
  with pytest.raises(ValueError, match="512 pieces, more than the model's vocab_size 500"):
    Llama2cTokenizer(tok_path, vocab_size=500)
  extra = tmp_path / "tok513.bin"
  extra.write_bytes(tok_path.read_bytes() + struct.pack("<fi", 0.0, 1) + b"x")
  with pytest.raises(ValueError, match="513 pieces, more than"):
    Llama2cTokenizer(extra, vocab_size=512)
  assert np.asarray(Llama2cTokenizer(extra).scores).shape == (513,)


def test_make_tokenizer_dispatch_and_errors(data_dir, tmp_path):
  """``make_tokenizer``: None stays None, objects pass through, files and bad input as documented."""
  from types import SimpleNamespace

  from jaxsteer._src.models.tokenizer import make_tokenizer

  cfg = SimpleNamespace(vocab_size=512)  # all make_tokenizer reads of the ModelConfig
  assert make_tokenizer(None, cfg) is None

  class Own:
    def encode(self, text):
      return [1]

    def decode(self, ids):
      return ""

  own = Own()
  assert make_tokenizer(own, cfg) is own
  with pytest.raises(ValueError, match="encode/decode"):
    make_tokenizer(object(), cfg)
  with pytest.raises(FileNotFoundError, match="tokenizer not found"):
    make_tokenizer(tmp_path / "nope.bin", cfg)
  tok_bin = data_dir / "stories260K" / "tok512.bin"
  if not tok_bin.is_file():
    pytest.skip(f"stories260K tokenizer not found at {tok_bin}")
  tok = make_tokenizer(str(tok_bin), cfg)
  assert isinstance(tok, Llama2cTokenizer) and len(tok.pieces) == 512
