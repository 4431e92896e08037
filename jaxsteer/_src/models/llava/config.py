"""``LlavaConfig``: the static description of a LLaVA(-NeXT) model and its HF ``config.json``."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from jaxsteer._src.models.config import ModelConfig, config_from_json
from jaxsteer._src.models.llava.geometry import anyres_grid_shape, anyres_num_tiles, unpad_slices
from jaxsteer._src.models.vision import VisionConfig, activation

LLAVA_MODEL_TYPES = ("llava", "llava_next")
FEATURE_SELECT_STRATEGIES = ("default", "full")
DEFAULT_IMAGE_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# transformers' text-config defaults, which the published llava-hf configs leave out.
_TEXT_DEFAULTS = {
  "llama": dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
  ),
  "mistral": dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-6,
    sliding_window=4096,
    bos_token_id=1,
    eos_token_id=2,
  ),
  "qwen2": dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
  ),
}


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  """Static description of a LLaVA(-NeXT) model (hashable, a jit static argument).

  Attributes:
    text: the language model's ``ModelConfig``.
    vision: the CLIP tower's ``VisionConfig``.
    model_type: ``"llava"`` (1.5) or ``"llava_next"`` (1.6, any-resolution tiling).
    image_token_id: id of the image placeholder token (HF ``image_token_id``, formerly
      ``image_token_index``).
    projector_hidden_act: activation between the projector's two linear layers.
    vision_feature_layer: index into the tower's hidden states (entry 0: embeddings), or a tuple
      of indices whose features are concatenated.
    vision_feature_select_strategy: ``"default"`` drops the CLS token, ``"full"`` keeps it
      (LLaVA-1.5 only; transformers' NeXT cannot unpad CLS features).
    image_grid_pinpoints: NeXT's candidate ``(height, width)`` resolutions.
    multimodal_projector_bias: biases on the projector's linear layers.
    image_seq_length: HF's nominal image length (informational).
  """

  text: ModelConfig
  vision: VisionConfig
  model_type: str = "llava"
  image_token_id: int = 32000
  projector_hidden_act: str = "gelu"
  vision_feature_layer: int | tuple[int, ...] = -2
  vision_feature_select_strategy: str = "default"
  image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None
  multimodal_projector_bias: bool = True
  image_seq_length: int = 576

  def __post_init__(self):
    if self.model_type not in LLAVA_MODEL_TYPES:
      raise ValueError(
        f"unknown model_type {self.model_type!r}; supported: {', '.join(LLAVA_MODEL_TYPES)}"
      )
    if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
      raise ValueError(
        f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}; "
        f"supported: {', '.join(FEATURE_SELECT_STRATEGIES)}"
      )
    if self.is_next and self.vision_feature_select_strategy == "full":
      raise ValueError(
        "LLaVA-NeXT with vision_feature_select_strategy='full' is not supported: the CLS token "
        "breaks the tile grid (transformers reshapes it into garbage)"
      )
    if self.is_next and not self.image_grid_pinpoints:
      raise ValueError("LLaVA-NeXT needs image_grid_pinpoints")
    n = self.vision.num_layers + 1
    for layer in self.feature_layers:
      if not -n <= layer < n:
        raise ValueError(
          f"vision_feature_layer {layer} is out of range for a tower with {n} hidden states"
        )
    if not 0 <= self.image_token_id < self.text.vocab_size:
      raise ValueError(
        f"image_token_id {self.image_token_id} lies outside the vocabulary "
        f"[0, {self.text.vocab_size})"
      )
    activation(self.projector_hidden_act)

  @property
  def is_next(self) -> bool:
    return self.model_type == "llava_next"

  @property
  def feature_layers(self) -> tuple[int, ...]:
    if isinstance(self.vision_feature_layer, int):
      return (self.vision_feature_layer,)
    return tuple(self.vision_feature_layer)

  @property
  def tokens_per_tile(self) -> int:
    """Features per vision-tower input: its patches (+1 CLS with ``"full"``)."""
    return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

  def num_tiles(self, image_size=None) -> int:
    """Vision-tower inputs of one image (1 for LLaVA-1.5; tiles + base for NeXT)."""
    if not self.is_next:
      return 1
    if image_size is None:
      raise ValueError("LLaVA-NeXT needs the image size (height, width) to count its tiles")
    return anyres_num_tiles(image_size, self.image_grid_pinpoints, self.vision.image_size)

  def unpadded_grid(self, image_size) -> tuple[int, int]:
    """NeXT: ``(rows, cols)`` of the tile features after spatial unpadding."""
    rows, cols = anyres_grid_shape(image_size, self.image_grid_pinpoints, self.vision.image_size)
    side = self.vision.patches_per_side
    rs, cs = unpad_slices(image_size, (rows * side, cols * side))
    return rs.stop - rs.start, cs.stop - cs.start

  def num_image_tokens(self, image_size=None) -> int:
    """Image tokens one image occupies in the sequence.

    LLaVA-1.5: ``patches`` (+1 with ``"full"``). NeXT: the base image's patches plus the unpadded
    tile grid with one ``image_newline`` per row (transformers' processor formula).

    Args:
      image_size: ``(height, width)`` of the original image (needed for NeXT).
    """
    if not self.is_next:
      return self.tokens_per_tile
    h, w = self.unpadded_grid(image_size)
    return self.vision.num_patches + h * (w + 1)

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> LlavaConfig:
    """Builds a config from a HF LLaVA / LLaVA-NeXT ``config.json`` dict (transformers 4 or 5)."""
    model_type = hf.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
      raise ValueError(
        f"model_type={model_type!r} is not a LLaVA model; supported: {', '.join(LLAVA_MODEL_TYPES)}"
      )
    text = {k: v for k, v in dict(hf.get("text_config") or {}).items() if v is not None}
    text.setdefault("model_type", "llama")
    if text["model_type"] == "gpt2":
      raise ValueError("LLaVA with a GPT-2 text model is not supported")
    text = {**_TEXT_DEFAULTS.get(text["model_type"], {}), **text}
    if "tie_word_embeddings" in hf:  # transformers ties on the top-level flag
      text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    text_cfg = ModelConfig.from_hf(text)
    vision = dict(hf.get("vision_config") or {})
    layer = hf.get("vision_feature_layer", -2)
    layer = int(layer) if isinstance(layer, int) else tuple(int(v) for v in layer)
    pins = hf.get("image_grid_pinpoints")
    if model_type == "llava_next" and pins is None:
      pins = DEFAULT_IMAGE_GRID_PINPOINTS
    pins = None if pins is None else tuple((int(h), int(w)) for h, w in pins)
    token = hf.get("image_token_id", hf.get("image_token_index", 32000))
    return cls(
      text=text_cfg,
      vision=VisionConfig.from_hf(vision),
      model_type=model_type,
      image_token_id=int(token),
      projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
      vision_feature_layer=layer,
      vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
      image_grid_pinpoints=pins if model_type == "llava_next" else None,
      multimodal_projector_bias=bool(hf.get("multimodal_projector_bias", True)),
      image_seq_length=int(hf.get("image_seq_length", 576)),
    )

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> LlavaConfig:
    return config_from_json(cls, path)
