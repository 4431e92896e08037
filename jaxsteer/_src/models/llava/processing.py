"""LLaVA image preprocessing: transformers' image processors (the PIL backend).

Images themselves are read by ``jaxsteer._src.images`` (the one image loader).
"""

from __future__ import annotations

import pathlib

from jaxsteer._src.models.llava.config import LlavaConfig


def make_image_processor(cfg: LlavaConfig, directory: str | pathlib.Path | None = None):
  """transformers' image processor (PIL backend) for ``cfg``.

  ``preprocessor_config.json`` in ``directory`` wins; otherwise ``CLIPImageProcessorPil``
  (LLaVA-1.5) or ``LlavaNextImageProcessorPil`` (NeXT) at the tower's resolution with CLIP's
  normalisation.
  """
  if directory is not None and (pathlib.Path(directory) / "preprocessor_config.json").is_file():
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(directory), backend="pil")
  s = cfg.vision.image_size
  kw = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
  if cfg.is_next:
    from transformers.models.llava_next.image_processing_pil_llava_next import (
      LlavaNextImageProcessorPil,
    )

    return LlavaNextImageProcessorPil(
      image_grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints], **kw
    )
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  return CLIPImageProcessorPil(**kw)
