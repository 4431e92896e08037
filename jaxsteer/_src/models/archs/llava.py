"""LLaVA-1.5 (``llava``) and LLaVA-NeXT (``llava_next``): CLIP tower, projector and a text LM.

The pieces live in ``jaxsteer._src.models.llava``; this entry ties them to the registry.
"""

from jaxsteer._src.models import registry
from jaxsteer._src.models.llava.build import wrap
from jaxsteer._src.models.llava.config import LlavaConfig
from jaxsteer._src.models.llava.modules import Llava, expected_shapes, init_params
from jaxsteer._src.models.llava.weights import llava_weights


def module(cfg: LlavaConfig, dtype) -> Llava:
  return Llava(cfg, dtype=dtype, param_dtype=dtype)


def text_config(cfg: LlavaConfig):
  return cfg.text


ARCH = registry.register(
  registry.Architecture(
    "llava",
    LlavaConfig.from_hf,
    module,
    llava_weights,
    aliases=("llava_next",),
    text=False,
    wrap=wrap,
    init_params=init_params,
    text_config=text_config,
    shapes=expected_shapes,
    config_type=LlavaConfig,
  )
)
