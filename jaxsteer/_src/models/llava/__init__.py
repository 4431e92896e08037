"""LLaVA vision-language models in Flax: LLaVA-1.5 and LLaVA-NeXT (1.6) any-resolution tiling.

LLaVA (Liu et al., 2023, "Visual Instruction Tuning"; LLaVA-1.5: "Improved Baselines with Visual
Instruction Tuning") feeds the hidden states of a CLIP ViT layer, passed through a two-layer MLP
projector, into a causal LM at the positions of the image tokens. LLaVA-NeXT (Liu et al., 2024,
"LLaVA-NeXT: Improved reasoning, OCR, and world knowledge") tiles a high-resolution image on the
best grid of ``image_grid_pinpoints``, encodes a downscaled base image plus every tile, removes
the padding the resize added ("spatial unpad") and ends each feature row with a learned
``image_newline`` vector. Both follow transformers' ``LlavaForConditionalGeneration`` and
``LlavaNextForConditionalGeneration`` exactly (logits within 1e-4 in float32; see
tests/jaxsteer/test_llava.py).

  >>> import jaxsteer
  >>> lm = jaxsteer.load("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
  >>> prompt = lm.chat_prompt("What is in the picture?")  # "USER: <image>\\n... ASSISTANT:"
  >>> lm.generate(prompt, image="astronaut.png", max_new_tokens=32)  # doctest: +SKIP
  >>> ids, pixels, sizes = lm.encode_multimodal(prompt, ["astronaut.png"])  # doctest: +SKIP
  >>> logits = lm(ids, pixel_values=pixels, image_sizes=sizes)  # doctest: +SKIP
  >>> embeds = lm.embed_inputs(ids, pixels, sizes)  # (1, T, D): attribution's input space

The Flax module ``Llava`` has the submodules ``vision_tower`` (``VisionTower``),
``multi_modal_projector`` and ``language_model`` (the text ``CausalLM``, unchanged: its decoder
layers are the ``DecoderLayer`` modules ``layers_i``, or one scanned ``layers`` with
``jaxsteer.load(..., scan_layers=True)``, so steering and capture interceptors work as for a
language model), plus the ``image_newline`` parameter for NeXT.

Static shapes: the number of tiles, the unpadded feature grid and hence the number of image tokens
of a LLaVA-NeXT image depend on its original size, so ``image_sizes`` are static Python ints (a
jit static argument): a new image size compiles a new program, new pixels of the same sizes do not.

One module per concern:

* ``geometry``: NeXT's any-resolution tiling and unpadding on static sizes.
* ``config``: ``LlavaConfig`` and its parsing of HF ``config.json`` (with transformers' defaults).
* ``modules``: the Flax modules ``MultiModalProjector`` and ``Llava`` and their parameter trees.
* ``weights``: the HF <-> Flax weight map (transformers 4 and 5 names).
* ``processing``: transformers' image processors (images are read by ``jaxsteer._src.images``).
* ``model``: ``VisionLanguageModel`` (prompts with images, forward, generation).
* ``build``: loading, wrapping loaded parts and random initialisation; the architecture registry
  entry (``jaxsteer._src.models.archs.llava``) is built from these pieces.
"""

from jaxsteer._src.images import as_image_list, load_image
from jaxsteer._src.models.llava.build import (
  init_random,
  is_llava_dir,
  load_llava,
  read_chat_template,
  wrap,
)
from jaxsteer._src.models.llava.config import (
  DEFAULT_IMAGE_GRID_PINPOINTS,
  FEATURE_SELECT_STRATEGIES,
  LLAVA_MODEL_TYPES,
  LlavaConfig,
)
from jaxsteer._src.models.llava.geometry import (
  anyres_grid_shape,
  anyres_num_tiles,
  select_best_resolution,
  static_sizes,
  unpad_slices,
)
from jaxsteer._src.models.llava.model import VisionLanguageModel
from jaxsteer._src.models.llava.modules import (
  Llava,
  MultiModalProjector,
  abstract_params,
  check_image_tokens,
  expected_shapes,
  init_params,
)
from jaxsteer._src.models.llava.processing import make_image_processor
from jaxsteer._src.models.llava.weights import llava_arrays, llava_weights

__all__ = [
  "DEFAULT_IMAGE_GRID_PINPOINTS",
  "FEATURE_SELECT_STRATEGIES",
  "LLAVA_MODEL_TYPES",
  "Llava",
  "LlavaConfig",
  "MultiModalProjector",
  "VisionLanguageModel",
  "abstract_params",
  "anyres_grid_shape",
  "anyres_num_tiles",
  "as_image_list",
  "check_image_tokens",
  "expected_shapes",
  "init_params",
  "init_random",
  "is_llava_dir",
  "llava_arrays",
  "llava_weights",
  "load_image",
  "load_llava",
  "make_image_processor",
  "read_chat_template",
  "select_best_resolution",
  "static_sizes",
  "unpad_slices",
  "wrap",
]
