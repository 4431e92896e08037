"""Test helpers shared by every package's tests."""

import contextlib
import threading

import jax

_lock = threading.Lock()
_compiles = [0]


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == "/jax/core/compile/backend_compile_duration":
    with _lock:
      _compiles[0] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
  count: int = 0


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations inside the block.

  >>> with count_compiles() as c:
  ...   f(x)
  >>> assert c.count == 0
  """
  counter = CompileCounter()
  start = _compiles[0]
  try:
    yield counter
  finally:
    counter.count = _compiles[0] - start


@contextlib.contextmanager
def assert_no_compile():
  with count_compiles() as c:
    yield
  assert c.count == 0, f"expected no compilation, got {c.count}"


def tiny_llama_config(**overrides):
  """The 3-layer, 16-wide Llama the jaxsteer unit tests share (random weights via ``init_random``).

  Keyword arguments override fields (e.g. ``bos_token_id=1, eos_token_id=2``).
  """
  from jaxsteer.models import ModelConfig

  fields = dict(
    arch="llama",
    vocab_size=48,
    hidden_size=16,
    intermediate_size=24,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    max_position_embeddings=64,
  )
  return ModelConfig(**{**fields, **overrides})


def tiny_llava_config(*, text=None, vision=None, **overrides):
  """Keyword arguments for a tiny random ``transformers.LlavaConfig`` (or ``LlavaNextConfig``).

  A 3-layer, 16-wide Llama language model and a 2-layer, 16-wide CLIP tower on 28-pixel images
  (2x2 patches of 14), image token 64 of a 70-token vocabulary. ``text`` / ``vision`` override
  fields of ``text_config`` / ``vision_config``; other keywords override or add top-level fields
  (e.g. ``image_grid_pinpoints``).

  >>> cfg = transformers.LlavaConfig(**tiny_llava_config(vision=dict(image_size=56)))
  """
  text_config = dict(
    model_type="llama",
    vocab_size=70,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
  )
  vision_config = dict(
    model_type="clip_vision_model",
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
  )
  return dict(
    text_config={**text_config, **(text or {})},
    vision_config={**vision_config, **(vision or {})},
    **{"image_token_id": 64, **overrides},
  )
