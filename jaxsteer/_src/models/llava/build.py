"""Building a ``VisionLanguageModel``: from a model directory, loaded parts or random weights."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp

from jaxsteer._src.models import loading
from jaxsteer._src.models.llava.config import LLAVA_MODEL_TYPES, LlavaConfig
from jaxsteer._src.models.llava.model import VisionLanguageModel
from jaxsteer._src.models.llava.modules import Llava, init_params


def is_llava_dir(path: pathlib.Path) -> bool:
  """Whether ``path/config.json`` names a LLaVA ``model_type``."""
  try:
    hf = json.loads((path / "config.json").read_text())
  except (OSError, json.JSONDecodeError):
    return False
  return isinstance(hf, dict) and hf.get("model_type") in LLAVA_MODEL_TYPES


def read_chat_template(path: pathlib.Path) -> str | None:
  """The chat template of a model directory (``chat_template.jinja`` or ``.json``), or ``None``."""
  jinja = path / "chat_template.jinja"
  if jinja.is_file():
    return jinja.read_text()
  js = path / "chat_template.json"
  if js.is_file():
    try:
      return json.loads(js.read_text()).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
      raise ValueError(f"corrupt chat template file {js}") from None
  return None


def load_llava(
  path: str | pathlib.Path,
  *,
  dtype=None,
  mesh: jax.sharding.Mesh | None = None,
  tokenizer=None,
  rules=loading.DEFAULT_RULES,
  source=None,
) -> VisionLanguageModel:
  """Loads a LLaVA / LLaVA-NeXT safetensors directory (what ``jaxsteer.load`` does for one)."""
  from jaxsteer._src.models import loader

  lm = loader.load(path, dtype=dtype, mesh=mesh, tokenizer=tokenizer, rules=rules)
  if not isinstance(lm, VisionLanguageModel):
    raise ValueError(f"{path} is not a LLaVA model directory")
  return lm if source is None else lm.replace(source=str(source))


def wrap(module, params, cfg, tok, mesh, source, path) -> VisionLanguageModel:
  """The registry's ``wrap``: loaded parts (and the model directory ``path``) -> the model."""
  return VisionLanguageModel(
    module,
    params,
    cfg.text,
    tok,
    mesh,
    source=source if source is not None else (None if path is None else str(path)),
    vlm_config=cfg,
    processor_dir=path,
    chat_template=None if path is None else read_chat_template(pathlib.Path(path)),
  )


def init_random(
  config: LlavaConfig, seed: int = 0, dtype=jnp.float32, tokenizer=None, image_processor=None
) -> VisionLanguageModel:
  """A randomly initialised ``VisionLanguageModel`` (for tests and examples)."""
  module = Llava(config, dtype=dtype, param_dtype=dtype)
  params = init_params(module, seed)
  return VisionLanguageModel(
    module, params, config.text, tokenizer, vlm_config=config, image_processor=image_processor
  )
