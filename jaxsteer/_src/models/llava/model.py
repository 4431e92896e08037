"""``VisionLanguageModel``: a loaded LLaVA(-NeXT) with its tokenizer and image processor.

The ``LanguageModel`` of the text path plus images: preprocessing, prompts with image
placeholders, the jitted multimodal forward and KV-cache generation on the merged embeddings.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.images import as_image_list, load_image
from jaxsteer._src.models.llava.config import LlavaConfig
from jaxsteer._src.models.llava.geometry import static_sizes
from jaxsteer._src.models.llava.modules import Llava, check_image_tokens
from jaxsteer._src.models.llava.processing import make_image_processor
from jaxsteer._src.models.lm import LanguageModel, apply_intercepted, strip_at_stop

# ------------------------------------------------------------------------------------------------
# Jitted entry points.


@functools.partial(jax.jit, static_argnames=("module", "factory", "image_sizes", "return_hidden"))
def _vlm_forward(
  module, factory, params, args, input_ids, attention_mask, pixel_values, image_sizes, return_hidden
):
  return apply_intercepted(
    module,
    factory,
    params,
    args,
    input_ids,
    attention_mask=attention_mask,
    pixel_values=pixel_values,
    image_sizes=image_sizes,
    return_hidden=return_hidden,
  )


@functools.partial(jax.jit, static_argnames=("module", "image_sizes"))
def _vlm_embed(module, params, input_ids, pixel_values, image_sizes):
  return module.apply(
    {"params": params}, input_ids, pixel_values, image_sizes, method=Llava.embed_multimodal
  )


# ------------------------------------------------------------------------------------------------
# The model object.


class VisionLanguageModel(LanguageModel):
  """A LLaVA(-NeXT) model: ``Llava`` module, parameters, tokenizer and image processor.

  Everything a ``LanguageModel`` offers works on the text path (``lm.config`` is the text
  ``ModelConfig``); the methods below add images.

  Attributes:
    module: the ``Llava`` Linen module.
    vlm_config: the full ``LlavaConfig``.
    image_token_id: id of the image token.
    image_placeholder: the text that marks an image in a prompt (``"<image>"``).
    image_processor: transformers' image processor (created on first use).
  """

  def __init__(
    self,
    module,
    params,
    config=None,
    tokenizer=None,
    mesh=None,
    intercept=None,
    source=None,
    *,
    vlm_config: LlavaConfig | None = None,
    image_processor=None,
    processor_dir: str | pathlib.Path | None = None,
    image_placeholder: str = "<image>",
    chat_template: str | None = None,
  ):
    vlm_config = module.config if vlm_config is None else vlm_config
    config = vlm_config.text if config is None else config
    super().__init__(module, params, config, tokenizer, mesh, intercept, source)
    self.vlm_config = vlm_config
    self._image_processor = image_processor
    self.processor_dir = processor_dir
    self.image_placeholder = image_placeholder
    self.chat_template = chat_template

  def _fields(self) -> dict[str, Any]:
    return dict(
      super()._fields(),
      vlm_config=self.vlm_config,
      image_processor=self._image_processor,
      processor_dir=self.processor_dir,
      image_placeholder=self.image_placeholder,
      chat_template=self.chat_template,
    )

  @property
  def image_token_id(self) -> int:
    return self.vlm_config.image_token_id

  @property
  def image_processor(self):
    if self._image_processor is None:
      self._image_processor = make_image_processor(self.vlm_config, self.processor_dir)
    return self._image_processor

  # -- images --------------------------------------------------------------------------------------
  def load_image(self, image):
    """An RGB ``PIL.Image`` from a path, encoded bytes, a PIL image or an (H, W, 3) uint8 array.

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: ``"<path>: cannot decode image (...)"`` for a file PIL cannot read.
    """
    return load_image(image)

  def preprocess(self, images) -> tuple[np.ndarray, np.ndarray | None]:
    """``(pixel_values, image_sizes)`` of images (paths, PIL images or arrays).

    ``image_sizes`` (N, 2) are the original ``(height, width)`` (NeXT; ``None`` for LLaVA-1.5).
    """
    pils = [self.load_image(im) for im in as_image_list(images)]
    if not pils:
      raise ValueError("no images to preprocess")
    out = self.image_processor(pils, return_tensors="np")
    pixels = np.asarray(out["pixel_values"], np.float32)
    sizes = None
    if self.vlm_config.is_next:
      sizes = np.asarray(out["image_sizes"], np.int64).reshape(-1, 2)
    return pixels, sizes

  def num_image_tokens(self, image=None) -> int:
    """Image tokens one image occupies (NeXT: depends on the image's size).

    Args:
      image: an image (path, PIL image, array) or its ``(height, width)``; LLaVA-1.5 ignores it.
    """
    if not self.vlm_config.is_next:
      return self.vlm_config.num_image_tokens()
    if image is None:
      raise ValueError("LLaVA-NeXT: the number of image tokens depends on the image; pass it")
    if (
      isinstance(image, tuple | list)
      and len(image) == 2
      and all(isinstance(v, int | np.integer) for v in image)
    ):
      size = image
    else:
      im = self.load_image(image)
      size = (im.height, im.width)
    return self.vlm_config.num_image_tokens(size)

  def _features_count(self, pixel_values, sizes) -> int:
    cfg = self.vlm_config
    if not cfg.is_next:
      n = pixel_values.shape[0]
      return n * cfg.num_image_tokens()
    if sizes is None:
      raise ValueError("LLaVA-NeXT needs image_sizes (the original (height, width) of each image)")
    return sum(cfg.num_image_tokens(s) for s in sizes)

  def _prepare_images(self, ids, pixel_values, image_sizes):
    sizes = static_sizes(image_sizes) if self.vlm_config.is_next else None
    pixels = jnp.asarray(pixel_values, jnp.float32)
    if not isinstance(ids, jax.core.Tracer):
      n_tok = int((np.asarray(ids) == self.image_token_id).sum())
      check_image_tokens(n_tok, self._features_count(pixels, sizes), self.image_token_id)
    return pixels, sizes

  # -- text ----------------------------------------------------------------------------------------
  def _bos_text(self) -> str | None:
    tok = getattr(self.tokenizer, "tok", None)
    return getattr(tok, "bos_token", None) if tok is not None else None

  def encode_multimodal(
    self, text: str, images=(), add_bos: bool = True
  ) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
    """Tokenizes a prompt with images: each placeholder becomes its image's image tokens.

    Args:
      text: the prompt, with ``lm.image_placeholder`` once per image (in order).
      images: paths, PIL images or arrays (one per placeholder), or a single image.
      add_bos: prepend BOS.

    Returns:
      ``(ids, pixel_values, image_sizes)``; ``pixel_values`` / ``image_sizes`` are ``None``
      without images (``image_sizes`` is ``None`` for LLaVA-1.5).

    Raises:
      ValueError: images but no placeholder ("missing image placeholder"), or more images than
        placeholders, or more placeholders than images.
    """
    images = as_image_list(images)
    ph = self.image_placeholder
    n_ph = text.count(ph)
    if images and n_ph == 0:
      raise ValueError(
        f"missing image placeholder: {len(images)} image(s) given but the text has no {ph!r}; "
        f"put one {ph!r} where each image goes (lm.chat_prompt does)"
      )
    if len(images) > n_ph:
      raise ValueError(
        f"more images ({len(images)}) than image placeholders {ph!r} ({n_ph}) in the text"
      )
    if n_ph > len(images):
      raise ValueError(
        f"more image placeholders {ph!r} ({n_ph}) than images ({len(images)}) in the text"
      )
    if not images:
      return self.encode(text, add_bos=add_bos), None, None
    pixels, sizes = self.preprocess(images)
    counts = [
      self.vlm_config.num_image_tokens(None if sizes is None else tuple(s))
      for s in (sizes if sizes is not None else [None] * len(images))
    ]
    img = self.image_token_id
    ids = self.encode(text, add_bos=add_bos)
    if sum(t == img for t in ids) != n_ph:
      # The tokenizer does not know the placeholder as the image token: splice the ids.
      ids = []
      for j, part in enumerate(text.split(ph)):
        first = add_bos and j == 0
        if part:
          ids += self.encode(part, add_bos=first)
        elif first and self._tok().bos_id is not None:
          ids.append(int(self._tok().bos_id))
        if j < n_ph:
          ids.append(img)
    out, k = [], 0
    for t in ids:
      if t == img:
        out += [img] * counts[k]
        k += 1
      else:
        out.append(int(t))
    return out, pixels, sizes

  def chat_prompt(self, question: str, with_image: bool = True) -> str:
    """A single-turn user prompt ending where the assistant's answer starts.

    Uses the chat template of the model directory (``chat_template.jinja`` / ``.json``) or of the
    tokenizer if there is one, else LLaVA-1.5's ``"USER: <image>\\n{question} ASSISTANT:"``.

    Args:
      question: the user's text.
      with_image: put one image placeholder before the question.
    """
    ph = self.image_placeholder
    tok = getattr(self.tokenizer, "tok", None)
    template = self.chat_template or getattr(tok, "chat_template", None)
    if template and tok is not None:
      if "image" in template:  # a multimodal template renders typed content parts
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
      else:
        content = (f"{ph}\n" if with_image else "") + question
      return tok.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
      )
    return f"USER: {ph}\n{question} ASSISTANT:" if with_image else f"USER: {question} ASSISTANT:"

  # -- forward -------------------------------------------------------------------------------------
  def embed_inputs(self, input_ids, pixel_values=None, image_sizes=None) -> jax.Array:
    """The decoder's input sequence (B, T, D): the space attribution works in.

    Token embeddings, with the projected image features merged into the image-token positions
    when ``pixel_values`` are given (jitted; ``image_sizes`` are static, new pixels of the same
    shape recompile nothing).
    """
    ids = self._check_ids(input_ids)
    if pixel_values is None:
      return super().embed_inputs(ids)
    pixels, sizes = self._prepare_images(ids, pixel_values, image_sizes)
    return _vlm_embed(self.module, self.params, ids, pixels, sizes)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    *,
    pixel_values=None,
    image_sizes=None,
    return_hidden: bool = False,
  ):
    """Logits (B, T, V) in float32 (and each decoder layer's output with ``return_hidden``)."""
    if pixel_values is None:
      return super().__call__(input_ids, attention_mask, return_hidden=return_hidden)
    ids = self._check_ids(input_ids)
    mask = self._mask(ids, attention_mask)
    pixels, sizes = self._prepare_images(ids, pixel_values, image_sizes)
    f, a = self.intercept
    return _vlm_forward(self.module, f, self.params, a, ids, mask, pixels, sizes, return_hidden)

  # -- generation ----------------------------------------------------------------------------------
  def generate_ids(
    self,
    input_ids,
    attention_mask=None,
    *,
    pixel_values=None,
    image_sizes=None,
    inputs_embeds=None,
    **kw,
  ) -> np.ndarray:
    """New token ids (B, N) with KV caching: prefill on the merged embeddings, then decode."""
    if pixel_values is not None:
      if inputs_embeds is not None:
        raise ValueError("pass pixel_values or inputs_embeds, not both")
      inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
    return super().generate_ids(input_ids, attention_mask, inputs_embeds=inputs_embeds, **kw)

  def generate(
    self,
    prompt,
    *,
    image=None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
  ):
    """Generates a continuation of ``prompt`` about ``image`` (KV cache; steering applies).

    Args:
      prompt: the prompt text with one ``lm.image_placeholder`` per image (see ``chat_prompt``);
        without images, anything ``LanguageModel.generate`` takes.
      image: a path, PIL image or array, or a list of them (one per placeholder).
      max_new_tokens: number of tokens to produce.
      temperature: 0 for greedy decoding.
      top_p: nucleus sampling mass.
      seed: sampling seed.
      stop_at_eos: stop (and pad) a row at EOS.

    Returns:
      The generated text (for a string prompt).
    """
    kw = dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      seed=seed,
      stop_at_eos=stop_at_eos,
    )
    images = as_image_list(image)
    if not isinstance(prompt, str):
      if images:
        raise ValueError("with images, give the prompt as text with image placeholders")
      return super().generate(prompt, **kw)
    bos = self._bos_text()
    add_bos = not (bos and prompt.startswith(bos))
    ids, pixels, sizes = self.encode_multimodal(prompt, images, add_bos=add_bos)
    if pixels is None:
      return self._decode_new(super().generate_ids(*self.prepare_batch([ids]), **kw))
    ids_arr, mask = self.prepare_batch([ids])
    out = self.generate_ids(ids_arr, mask, pixel_values=pixels, image_sizes=sizes, **kw)
    return self._decode_new(out)

  def _decode_new(self, out) -> str:
    return self.decode(strip_at_stop(np.asarray(out)[0], self.config.eos_token_id))
