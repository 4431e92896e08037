"""A validating, memory-mapped safetensors reader (lazy slices, bfloat16 via ml_dtypes).

Reading only the slice a device needs is what lets ``jaxsteer.load(..., mesh=...)`` place a model
without materialising it on one device.
"""

from __future__ import annotations

import json
import pathlib
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def parse_header(header, data_len: int, where: str) -> dict[str, tuple]:
  """Validates a parsed safetensors JSON header; ``{name: (dtype, shape, begin)}``.

  Refused (``ValueError`` naming the file and tensor), before any tensor byte is read: a header
  that is not a JSON object, a ``__metadata__`` that is not string -> string, an unknown dtype,
  dimensions or offsets that are not non-negative integers, a byte range that does not match
  dtype x shape or lies past the data section, and tensors whose byte ranges overlap.
  """
  bad = f"corrupt safetensors file {where}"
  if not isinstance(header, dict):
    raise ValueError(f"{bad}: the header is a JSON {type(header).__name__}, not an object")
  meta = header.get("__metadata__")
  if meta is not None and not (
    isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
  ):
    raise ValueError(f"{bad}: __metadata__ must map strings to strings")
  entries, spans = {}, []
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if not isinstance(info, dict):
      raise ValueError(f"{bad}: entry for {name!r} is not an object")
    dtype = _DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
      raise ValueError(f"{bad}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
      raise ValueError(f"{bad}: tensor {name!r} has shape {shape!r}; need non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
      raise ValueError(f"{bad}: tensor {name!r} has data_offsets {offsets!r}; need [begin, end]")
    begin, end = offsets
    expected = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if begin < 0 or end - begin != expected or end > data_len:
      raise ValueError(
        f"{bad}: tensor {name!r} needs {expected} bytes at [{begin}, {end}) but the data "
        f"section has {data_len} bytes (truncated file?)"
      )
    entries[name] = (dtype, tuple(shape), begin)
    if end > begin:
      spans.append((begin, end, name))
  spans.sort()
  for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
    if b1 < e0:
      raise ValueError(f"{bad}: tensors {n0!r} [{b0}, {e0}) and {n1!r} (from {b1}) overlap")
  return entries


class SafetensorsFile:
  """Index of one ``.safetensors`` file; ``file[name]`` is a read-only memory-mapped array."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"missing safetensors file: {self.path}")
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"corrupt safetensors file {self.path}: shorter than its 8-byte header")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8 or n > 100_000_000:
        raise ValueError(
          f"corrupt safetensors file {self.path}: header length {n} exceeds the file"
        )
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt safetensors file {self.path}: bad JSON header ({e})") from None
    self._start = 8 + n
    self._entries = parse_header(header, size - self._start, str(self.path))
    self._mmap = None

  def keys(self):
    return self._entries.keys()

  def __contains__(self, name):
    return name in self._entries

  def shape(self, name):
    return self._entries[name][1]

  def __getitem__(self, name) -> np.ndarray:
    dtype, shape, begin = self._entries[name]
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=self._start + begin).reshape(
      shape
    )


def check_shard_name(fname, index) -> None:
  """A shard named by an index must be a plain relative path inside the model directory.

  Checked on the name itself (no absolute path, drive, backslash or ``..``), so a hub cache whose
  files are symlinks into its ``blobs/`` folder still loads.
  """
  if not isinstance(fname, str) or not fname:
    raise ValueError(f"safetensors index {index} names a shard {fname!r}; expected a file name")
  parts = pathlib.PurePosixPath(fname).parts
  if (
    fname.startswith(("/", "~"))
    or "\\" in fname
    or ":" in fname
    or any(p in ("..", ".") for p in parts)
    or not fname.endswith(".safetensors")
  ):
    raise ValueError(
      f"safetensors index {index} names {fname!r}; shards must be .safetensors files inside the "
      "model directory (no absolute paths or '..')"
    )


class SafetensorsCheckpoint:
  """One or more safetensors files (sharded with ``model.safetensors.index.json``) as one mapping."""

  def __init__(self, directory: pathlib.Path):
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    self.files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, str] = {}
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt safetensors index {index}: {e}") from None
      if not isinstance(weight_map, dict):
        raise ValueError(f"corrupt safetensors index {index}: weight_map is not an object")
      for fname in weight_map.values():
        check_shard_name(fname, index)
      for name, fname in weight_map.items():
        if fname not in self.files:
          self.files[fname] = SafetensorsFile(directory / fname)
        if name not in self.files[fname]:
          raise ValueError(f"safetensors index {index} lists {name!r} in {fname}, which lacks it")
        self._where[name] = fname
    elif single.is_file():
      self.files["model.safetensors"] = SafetensorsFile(single)
      self._where = {k: "model.safetensors" for k in self.files["model.safetensors"].keys()}
    else:
      found = sorted(p.name for p in directory.iterdir())
      pickles = [n for n in found if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
      if pickles:
        raise ValueError(
          f"{directory} holds only pickle checkpoints ({', '.join(pickles)}); jaxsteer loads "
          "safetensors only, because unpickling runs arbitrary code. Convert with "
          "`transformers` (save_pretrained(..., safe_serialization=True))."
        )
      raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {directory}"
      )

  def keys(self):
    return self._where.keys()

  def __contains__(self, name):
    return name in self._where

  def __getitem__(self, name) -> np.ndarray:
    try:
      return self.files[self._where[name]][name]
    except KeyError:
      raise KeyError(f"checkpoint lacks tensor {name!r}") from None
