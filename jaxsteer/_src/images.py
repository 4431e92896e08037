"""Image input: the one place that turns files, bytes and arrays into RGB ``PIL`` images.

* ``decode_image(data, where)``: encoded image bytes (PNG, JPEG, ...) -> RGB image.
* ``open_image(path, where)``: an image file -> RGB image (the file loader).
* ``load_image(image)``: anything a model accepts as an image (a path, bytes, a PIL image or an
  (H, W[, 3|4]) uint8 array) -> RGB image.
* ``as_image_list(image)``: ``None``, one image or a list of images -> a list.

Errors name their source: a missing file raises ``FileNotFoundError``, bytes or a file PIL cannot
decode raise ``ValueError("<where>: cannot decode image (<error>)")``. PIL is imported lazily (it
is only needed when images are used).
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import numpy as np

__all__ = ["as_image_list", "decode_image", "load_image", "open_image"]

# What PIL raises for data it cannot decode (``UnidentifiedImageError`` is an ``OSError``;
# truncated or malformed headers raise ``SyntaxError`` or ``ValueError`` in some plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)


def decode_image(data: bytes, where: str) -> Any:
  """Decodes image bytes to an RGB ``PIL.Image``; ``where`` names the source in errors.

  Raises:
    ValueError: the bytes are not an image PIL can decode.
  """
  from PIL import Image

  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except _DECODE_ERRORS as e:
    raise ValueError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
  return img.convert("RGB")


def open_image(path: str | os.PathLike, where: str | None = None) -> Any:
  """Reads an image file to an RGB ``PIL.Image``.

  Args:
    path: the image file.
    where: what the file belongs to (a dataset item, a CLI argument), prefixed to error messages.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not an image PIL can decode (the message names the file).
  """
  path = pathlib.Path(path)
  prefix = f"{where}: " if where else ""
  if not path.is_file():
    raise FileNotFoundError(f"{prefix}image file not found: {path}")
  return decode_image(path.read_bytes(), f"{prefix}{path}")


def load_image(image: Any) -> Any:
  """An RGB ``PIL.Image`` from a path, encoded bytes, a PIL image or an (H, W[, 3|4]) uint8 array.

  Raises:
    FileNotFoundError: a path that does not exist (``"image not found: <path>"``).
    ValueError: a file or bytes PIL cannot decode (``"<path>: cannot decode image (...)"``), or an
      array that is not uint8 of shape (H, W), (H, W, 3) or (H, W, 4).
  """
  from PIL import Image

  if isinstance(image, Image.Image):
    return image.convert("RGB")
  if isinstance(image, str | os.PathLike):
    path = pathlib.Path(image)
    if not path.is_file():
      raise FileNotFoundError(f"image not found: {path}")
    return open_image(path)
  if isinstance(image, bytes | bytearray | memoryview):
    return decode_image(bytes(image), "image bytes")
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
    raise ValueError(
      f"an image array must be uint8 of shape (H, W, 3), (H, W, 4) or (H, W); got {arr.dtype} "
      f"{arr.shape}"
    )
  return Image.fromarray(arr).convert("RGB")


def as_image_list(image: Any) -> list:
  """``None`` -> ``[]``; one image (path, bytes, PIL image or array) -> ``[image]``; a list stays."""
  if image is None:
    return []
  if isinstance(image, list | tuple):
    return list(image)
  return [image]
