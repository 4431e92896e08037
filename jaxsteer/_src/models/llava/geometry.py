"""LLaVA-NeXT any-resolution geometry: pure Python on static sizes (transformers' formulas).

An image of ``(height, width)`` is resized onto the best of ``image_grid_pinpoints``
(``select_best_resolution``), cut into tiles of the tower's resolution (``anyres_grid_shape``,
``anyres_num_tiles``), and the padding the resize added is cut from the tile features
(``unpad_slices``). Everything here is static: it fixes the shapes of a jitted program.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def select_best_resolution(
  original_size: Sequence[int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
  """The ``(height, width)`` of ``possible_resolutions`` that keeps most of the image, least waste.

  Args:
    original_size: ``(height, width)`` of the image.
    possible_resolutions: ``[(height, width), ...]`` (``image_grid_pinpoints``).
  """
  oh, ow = (int(v) for v in original_size)
  best, best_eff, best_waste = None, 0, float("inf")
  for h, w in possible_resolutions:
    scale = min(w / ow, h / oh)
    dw, dh = int(ow * scale), int(oh * scale)
    eff = min(dw * dh, ow * oh)
    waste = w * h - eff
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (int(h), int(w)), eff, waste
  if best is None:
    raise ValueError(
      f"no resolution in {possible_resolutions} fits an image of size {original_size}"
    )
  return best


def anyres_grid_shape(image_size, grid_pinpoints, tile_size: int) -> tuple[int, int]:
  """``(rows, cols)`` of tiles of an image of ``(height, width)`` ``image_size``."""
  h, w = select_best_resolution(image_size, grid_pinpoints)
  return h // tile_size, w // tile_size


def anyres_num_tiles(image_size, grid_pinpoints, tile_size: int) -> int:
  """Number of vision-tower inputs of one image: the tiles plus the base image."""
  h, w = select_best_resolution(image_size, grid_pinpoints)
  return -(-h // tile_size) * -(-w // tile_size) + 1


def unpad_slices(original_size, current_size) -> tuple[slice, slice]:
  """Row and column slices that remove the padding of a resized image (HF ``unpad_image``)."""
  oh, ow = (int(v) for v in original_size)
  ch, cw = current_size
  if ow / oh > cw / ch:
    new_h = int(round(oh * (cw / ow), 7))
    pad = (ch - new_h) // 2
    return slice(pad, ch - pad), slice(0, cw)
  new_w = int(round(ow * (ch / oh), 7))
  pad = (cw - new_w) // 2
  return slice(0, ch), slice(pad, cw - pad)


def static_sizes(image_sizes) -> tuple[tuple[int, int], ...] | None:
  """``image_sizes`` as a hashable tuple of ``(height, width)`` Python ints."""
  if image_sizes is None:
    return None
  if isinstance(image_sizes, jax.core.Tracer):
    raise ValueError(
      "image_sizes must be static (numpy array, list or tuple of (height, width)), not traced: "
      "they fix the LLaVA-NeXT feature shapes"
    )
  arr = np.asarray(image_sizes)
  if arr.ndim == 1 and arr.shape == (2,):
    arr = arr[None]
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(f"image_sizes must have shape (num_images, 2), got {arr.shape}")
  return tuple((int(h), int(w)) for h, w in arr)
