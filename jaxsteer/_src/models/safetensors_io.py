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
    header.pop("__metadata__", None)
    self._start = 8 + n
    self._entries = {}
    data_len = size - self._start
    for name, info in header.items():
      try:
        dtype = _DTYPES[info["dtype"]]
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
      except (KeyError, TypeError, ValueError):
        raise ValueError(f"corrupt safetensors file {self.path}: bad entry for {name!r}") from None
      expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      if end - begin != expected or end > data_len or begin < 0:
        raise ValueError(
          f"corrupt safetensors file {self.path}: tensor {name!r} needs {expected} bytes at "
          f"[{begin}, {end}) but the data section has {data_len} bytes (truncated file?)"
        )
      self._entries[name] = (dtype, shape, begin)
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
