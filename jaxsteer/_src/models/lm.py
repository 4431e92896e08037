"""``LanguageModel``: a loaded Flax causal LM with its tokenizer, jitted forward and generation.

Interception is part of the model object: ``lm.with_intercept(factory, args)`` returns a model whose
every forward (and every generation step) runs inside ``flax.linen.intercept_methods(factory(args))``
entered *inside* the jitted function. ``factory`` is static (hashable); ``args`` is a pytree of
arrays traced as jit arguments, so new steering vectors or strengths recompile nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.models import loading
from jaxsteer._src.models.config import ModelConfig
from jaxsteer._src.models.modules import CausalLM, default_positions
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint
from jaxsteer._src.models.tokenizer import HFTokenizer, Llama2cTokenizer

InterceptFactory = Callable[[Any], Callable]


def _apply(module, factory, params, args, *a, **kw):
  """``module.apply`` inside the interceptor built by ``factory(args)`` (if any)."""
  variables = {"params": params}
  cache = kw.pop("cache", None)
  if cache is not None:
    variables["cache"] = cache
  if factory is None:
    return module.apply(variables, *a, **kw)
  with nn.intercept_methods(factory(args)):
    return module.apply(variables, *a, **kw)


@functools.partial(jax.jit, static_argnames=("module", "factory", "return_hidden"))
def _forward(module, factory, params, args, input_ids, attention_mask, return_hidden=False):
  return _apply(
    module,
    factory,
    params,
    args,
    input_ids,
    attention_mask=attention_mask,
    return_hidden=return_hidden,
  )


@functools.partial(jax.jit, static_argnames=("module",))
def _embed(module, params, input_ids):
  return module.apply({"params": params}, input_ids, method=lambda m, x: m.embed_tokens(x))


def init_cache(module: CausalLM, batch: int, length: int):
  """Zero KV cache for ``batch`` rows and ``length`` slots (shapes from ``eval_shape``)."""
  ids = jnp.zeros((batch, 1), jnp.int32)
  mask = jnp.ones((batch, length), jnp.int32)
  pos = jnp.zeros((batch, 1), jnp.int32)

  def init():
    return module.init(
      jax.random.PRNGKey(0), ids, attention_mask=mask, positions=pos, slots=pos, decode=True
    )["cache"]

  shapes = jax.eval_shape(init)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_token(logits, temperature, top_p, key):
  """Greedy when ``temperature == 0``; otherwise temperature and nucleus (top-p) sampling."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  srt = jnp.sort(scaled, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(srt, axis=-1)
  cum = jnp.cumsum(probs, axis=-1)
  keep = (cum - probs) < top_p  # the most likely token is always kept
  thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
  scaled = jnp.where(scaled < thresh, -jnp.inf, scaled)
  sampled = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)


@functools.partial(jax.jit, static_argnames=("module", "factory", "max_new_tokens", "stop_at_eos"))
def _generate(
  module,
  factory,
  params,
  args,
  input_ids,
  attention_mask,
  temperature,
  top_p,
  key,
  eos_id,
  pad_id,
  max_new_tokens: int,
  stop_at_eos: bool = True,
  inputs_embeds=None,
):
  b, p = input_ids.shape
  length = p + max_new_tokens
  kv_mask = jnp.concatenate(
    [attention_mask.astype(jnp.int32), jnp.ones((b, max_new_tokens), jnp.int32)], axis=1
  )
  positions = default_positions(attention_mask)
  slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
  cache = init_cache(module, b, length)
  # Prefill on the token ids, or on given input embeddings (a VLM's merged image + text sequence);
  # the decode steps embed the sampled tokens.
  prefill = (input_ids,) if inputs_embeds is None else ()
  logits, upd = _apply(
    module,
    factory,
    params,
    args,
    *prefill,
    inputs_embeds=inputs_embeds,
    cache=cache,
    attention_mask=kv_mask,
    positions=positions,
    slots=slots,
    decode=True,
    mutable=["cache"],
  )
  key, sub = jax.random.split(key)
  tok = sample_token(logits[:, -1], temperature, top_p, sub)
  done = (tok == eos_id) & stop_at_eos
  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)

  def step(i, state):
    cache, tok, pos, key, done, out = state
    logits, upd = _apply(
      module,
      factory,
      params,
      args,
      tok[:, None],
      cache=cache,
      attention_mask=kv_mask,
      positions=pos[:, None],
      slots=jnp.full((b, 1), p + i - 1, jnp.int32),
      decode=True,
      mutable=["cache"],
    )
    key, sub = jax.random.split(key)
    new = sample_token(logits[:, -1], temperature, top_p, sub)
    new = jnp.where(done, pad_id, new)
    out = out.at[:, i].set(new)
    done = done | ((new == eos_id) & stop_at_eos)
    return upd["cache"], new, pos + 1, key, done, out

  state = (upd["cache"], tok, positions[:, -1] + 1, key, done, out)
  state = jax.lax.fori_loop(1, max_new_tokens, step, state)
  return state[-1]


@dataclasses.dataclass(frozen=True)
class _Intercept:
  factory: InterceptFactory | None = None
  args: Any = None


class LanguageModel:
  """A causal language model: Flax module, parameters, config and tokenizer.

  Attributes:
    module: the ``CausalLM`` Linen module.
    params: its parameter tree (``NamedSharding``-placed when loaded with a mesh).
    config: the ``ModelConfig``.
    tokenizer: ``Llama2cTokenizer``, ``HFTokenizer`` or ``None``.
    mesh: the mesh the parameters live on, or ``None``.

  Example:
    >>> lm = jaxsteer.load("stories260K.bin", tokenizer="tok512.bin")  # doctest: +SKIP
    >>> lm.generate("Once upon a time", max_new_tokens=20)  # doctest: +SKIP
  """

  def __init__(
    self, module, params, config, tokenizer=None, mesh=None, intercept=None, source=None
  ):
    self.source = source
    self.module = module
    self.params = params
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self._intercept = intercept or _Intercept()

  # -- construction helpers ----------------------------------------------------------------------
  def _fields(self) -> dict[str, Any]:
    """Constructor arguments that reproduce this model (subclasses add theirs)."""
    return dict(
      module=self.module,
      params=self.params,
      config=self.config,
      tokenizer=self.tokenizer,
      mesh=self.mesh,
      intercept=self._intercept,
      source=self.source,
    )

  def replace(self, **kw) -> LanguageModel:
    """A copy of this model (of the same class) with some fields replaced."""
    fields = self._fields()
    fields.update(kw)
    return type(self)(**fields)

  def with_intercept(self, factory: InterceptFactory | None, args: Any = None) -> LanguageModel:
    """A model whose forward passes run under ``intercept_methods(factory(args))``.

    ``factory`` must be hashable and stable (a module-level function or a frozen dataclass); it is
    a static jit argument. ``args`` (arrays) are traced, so changing them recompiles nothing.
    """
    return self.replace(intercept=_Intercept(factory, args))

  @property
  def intercept(self) -> tuple[InterceptFactory | None, Any]:
    return self._intercept.factory, self._intercept.args

  @property
  def dtype(self):
    return self.module.dtype

  # -- forward -----------------------------------------------------------------------------------
  def apply(self, params=None, *args, **kwargs):
    """Un-jitted ``module.apply`` under this model's interceptor (for use inside your own jit/grad)."""
    f, a = self.intercept
    return _apply(self.module, f, self.params if params is None else params, a, *args, **kwargs)

  def __call__(self, input_ids, attention_mask=None, *, return_hidden: bool = False):
    """Logits (B, T, V) in float32; with ``return_hidden`` also each layer's residual output."""
    ids = self._check_ids(input_ids)
    attention_mask = self._mask(ids, attention_mask)
    f, a = self.intercept
    return _forward(self.module, f, self.params, a, ids, attention_mask, return_hidden)

  @staticmethod
  def _mask(ids, attention_mask):
    if attention_mask is None:
      return jnp.ones(ids.shape, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.ndim == 1:
      attention_mask = attention_mask[None]
    if attention_mask.shape != ids.shape:
      raise ValueError(
        f"attention_mask shape {attention_mask.shape} does not match input_ids {ids.shape}"
      )
    return attention_mask

  def embed_inputs(self, input_ids, pixel_values=None, image_sizes=None) -> jax.Array:
    """The decoder's input sequence (B, T, D) for ``input_ids``: the space attribution works in.

    For a language model these are the token embeddings; a vision-language model overrides this to
    merge the projected image features into the image-token positions.
    """
    if pixel_values is not None or image_sizes is not None:
      raise ValueError("this is a language model; it takes no images (pixel_values)")
    ids = self._check_ids(input_ids)
    return _embed(self.module, self.params, ids)

  def _check_ids(self, input_ids, allow_empty=False):
    if isinstance(input_ids, jax.core.Tracer):
      return input_ids
    if isinstance(input_ids, jax.Array) and not input_ids.is_fully_addressable:
      # a global array spanning processes (multi-process): checked without gathering it
      ids = input_ids
      if ids.ndim != 2 or ids.dtype.kind not in "iu" or not ids.shape[1]:
        raise ValueError(f"input_ids must be integer ids of shape (batch, length), got {ids.shape}")
      lo, hi = (int(v) for v in jax.jit(lambda a: (a.min(), a.max()), out_shardings=None)(ids))
      if lo < 0 or hi >= self.config.vocab_size:
        raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got {lo}, {hi}")
      return ids
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
      raise ValueError(f"input_ids must be integer ids of shape (batch, length), got {ids.shape}")
    if ids.shape[1] == 0 and not allow_empty:
      raise ValueError("empty prompt: input_ids has no tokens")
    if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
      raise ValueError(
        f"token ids must lie in [0, {self.config.vocab_size}); got min {ids.min()}, max {ids.max()}"
      )
    if ids.shape[1] > self.config.max_position_embeddings:
      raise ValueError(
        f"sequence of {ids.shape[1]} tokens is longer than the model's context of "
        f"{self.config.max_position_embeddings}"
      )
    return jnp.asarray(ids, jnp.int32)

  # -- tokenizer ---------------------------------------------------------------------------------
  def _tok(self):
    if self.tokenizer is None:
      raise ValueError("this model has no tokenizer; pass tokenizer= to jaxsteer.load")
    return self.tokenizer

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    return self._tok().encode(text, add_bos=add_bos)

  def decode(self, ids) -> str:
    return self._tok().decode(np.asarray(ids).reshape(-1).tolist())

  # -- generation --------------------------------------------------------------------------------
  def prepare_batch(self, prompts, pad_multiple: int = 8) -> tuple[jax.Array, jax.Array]:
    """Tokenizes and left-pads prompts: returns ``(input_ids, attention_mask)``.

    The width is rounded up to a multiple of ``pad_multiple`` so that prompts of similar length
    share one compiled program.
    """
    if isinstance(prompts, str) or (
      isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int | np.integer)
    ):
      prompts = [prompts]
    if isinstance(prompts, np.ndarray | jax.Array):
      prompts = [list(r) for r in np.asarray(prompts).reshape(-1, np.shape(prompts)[-1])]
    if not len(prompts):
      raise ValueError("empty prompt: no prompts or token ids given")
    rows = []
    for p in prompts:
      if isinstance(p, str):
        if not p:
          raise ValueError("empty prompt: give text, or token ids such as [bos_id]")
        least = _min_tokens(self.tokenizer, p)
        if least > self.config.max_position_embeddings:  # provably too long: skip tokenising
          raise ValueError(
            f"prompt of {len(p)} characters is at least {least} tokens, longer than the model's "
            f"context of {self.config.max_position_embeddings}"
          )
        p = self.encode(p)
      p = [int(t) for t in p]
      if not p:
        raise ValueError("empty prompt: no token ids")
      rows.append(p)
    width = max(len(r) for r in rows)
    limit = self.config.max_position_embeddings
    if width > limit:
      raise ValueError(f"prompt of {width} tokens is longer than the model's context of {limit}")
    width = max(width, min(-(-width // pad_multiple) * pad_multiple, limit))
    pad = self.pad_id
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      ids[i, width - len(r) :] = r
      mask[i, width - len(r) :] = 1
    self._check_ids(ids)
    return jnp.asarray(ids), jnp.asarray(mask)

  @property
  def pad_id(self) -> int:
    for cand in (
      getattr(self.tokenizer, "pad_id", None),
      self.config.pad_token_id,
      self.config.eos_token_id,
    ):
      if cand is not None:
        return int(cand)
    return 0

  def generate_ids(
    self,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    inputs_embeds=None,
  ) -> np.ndarray:
    """New token ids (B, max_new_tokens) with KV caching; rows that hit EOS are padded.

    ``inputs_embeds`` (B, T, D), if given, replace the token embeddings of ``input_ids`` in the
    prefill (e.g. a VLM's merged image + text sequence); ``input_ids`` still fix the shape.
    """
    ids = self._check_ids(input_ids)
    mask = (
      jnp.ones(ids.shape, jnp.int32)
      if attention_mask is None
      else jnp.asarray(attention_mask, jnp.int32)
    )
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
      raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    real = int(np.asarray(mask).sum(axis=1).max())
    if real + max_new_tokens > self.config.max_position_embeddings:
      raise ValueError(
        f"prompt ({real} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
        f"model's context of {self.config.max_position_embeddings}"
      )
    eos = self.config.eos_token_id if self.config.eos_token_id is not None else -1
    f, a = self.intercept
    out = _generate(
      self.module,
      f,
      self.params,
      a,
      ids,
      mask,
      jnp.float32(temperature),
      jnp.float32(top_p),
      jax.random.PRNGKey(seed),
      jnp.int32(eos),
      jnp.int32(self.pad_id),
      max_new_tokens=int(max_new_tokens),
      stop_at_eos=bool(stop_at_eos),
      inputs_embeds=_check_embeds(inputs_embeds, ids.shape, self.config.hidden_size),
    )
    return np.asarray(out)

  def generate(self, prompt_or_ids, *, max_new_tokens: int = 32, **kw):
    """Generates continuations.

    Args:
      prompt_or_ids: a string, a list of strings, a list of token ids, or a (B, T) id array.
      max_new_tokens: number of tokens to produce.
      **kw: ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop_at_eos``.

    Returns:
      A string for a string, a list of strings for a list of strings, else the new ids (B, N).
    """
    ids, mask = self.prepare_batch(prompt_or_ids)
    out = self.generate_ids(ids, mask, max_new_tokens=max_new_tokens, **kw)
    if isinstance(prompt_or_ids, str):
      return self.decode(_strip(out[0], self.config.eos_token_id))
    if (
      isinstance(prompt_or_ids, list | tuple)
      and prompt_or_ids
      and isinstance(prompt_or_ids[0], str)
    ):
      return [self.decode(_strip(r, self.config.eos_token_id)) for r in out]
    return out


def _check_embeds(inputs_embeds, shape, hidden_size):
  if inputs_embeds is None:
    return None
  inputs_embeds = jnp.asarray(inputs_embeds)
  if inputs_embeds.shape != (*shape, hidden_size):
    raise ValueError(
      f"inputs_embeds shape {inputs_embeds.shape} does not match input_ids {tuple(shape)} "
      f"and hidden size {hidden_size}"
    )
  return inputs_embeds


def _strip(row, eos):
  row = list(row)
  if eos is not None and eos in row:
    row = row[: row.index(eos)]
  return row


def _min_tokens(tok, text: str) -> int:
  """A lower bound on ``len(tok.encode(text))`` for llama2.c tokenizers, else 0.

  Every llama2.c token stands for at most ``max(len(piece))`` bytes of the text (a byte-fallback
  token for one), so there are at least ``ceil(len(utf8) / longest)`` tokens (BOS and the
  dummy-prefix space left out, so the bound holds whatever the encoder does with them).
  """
  pieces = getattr(tok, "pieces", None)
  if not pieces or not isinstance(pieces, list):
    return 0
  longest = getattr(tok, "_longest_piece", None)
  if longest is None:
    longest = max(max(len(x) for x in pieces), 1)
    try:
      tok._longest_piece = longest
    except AttributeError:
      pass
  return -(-len(text.encode("utf-8")) // longest)


# ------------------------------------------------------------------------------------------------
# load()

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = (
  "config.json",
  "generation_config.json",
  "*.safetensors",
  "model.safetensors.index.json",
  "tokenizer*",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "*.model",
  "preprocessor_config.json",
  "chat_template.json",
  "chat_template.jinja",
)


def download(repo_id: str, revision: str | None = None) -> pathlib.Path:
  """Downloads the safetensors files, config and tokenizer of a hub model (never pickles)."""
  from jaxsteer._src import hub

  try:  # bounded wait for an endpoint that never replies (jaxsteer._src.hub)
    return hub.snapshot(repo_id, revision=revision, allow_patterns=list(HUB_PATTERNS))
  except FileNotFoundError as e:  # offline, unknown repo, auth, no reply
    raise FileNotFoundError(
      f"{repo_id!r} is neither a local path nor a downloadable hub model: {e}"
    ) from None


def load(
  source: str | pathlib.Path,
  *,
  dtype=None,
  mesh: jax.sharding.Mesh | None = None,
  tokenizer=None,
  rules=loading.DEFAULT_RULES,
) -> LanguageModel:
  """Loads a causal LM.

  Args:
    source: a Hugging Face model directory (``config.json`` + safetensors, single or sharded;
      ``model_type`` ``llava`` / ``llava_next`` gives a ``VisionLanguageModel``), a hub id
      (downloaded with ``huggingface_hub`` when online), or a llama2.c ``.bin`` checkpoint.
    dtype: parameter and compute dtype (default: the checkpoint's floating dtype).
    mesh: place parameters with ``NamedSharding`` from the logical-axis rule table; each device
      reads only its own shard.
    tokenizer: a tokenizer object, a llama2.c ``tok*.bin`` path or a HF tokenizer directory
      (default: the model directory's tokenizer, or ``tok{vocab}.bin`` beside a ``.bin``).
    rules: logical-axis -> mesh-axis table (``jaxsteer.models.DEFAULT_RULES``).

  Returns:
    A ``LanguageModel`` (a ``VisionLanguageModel`` for LLaVA checkpoints).
  """
  path = pathlib.Path(source)
  if not path.exists():
    if isinstance(source, str) and _HUB_ID.match(source) and not source.startswith((".", "/")):
      path = download(source)
    else:
      raise FileNotFoundError(f"model source not found: {source}")
  if path.is_dir():
    from jaxsteer._src.models import llava  # imports this module

    if llava.is_llava_dir(path):
      return llava.load_llava(
        path, dtype=dtype, mesh=mesh, tokenizer=tokenizer, rules=rules, source=source
      )
    cfg = ModelConfig.from_json(path / "config.json")
    ckpt = SafetensorsCheckpoint(path)
    arrays = loading.hf_arrays(ckpt, cfg)
    if tokenizer is None and any(
      (path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
      tokenizer = path
  else:
    if path.suffix == ".safetensors":
      raise ValueError(
        f"{path} is a bare safetensors file; pass its directory (with config.json) instead"
      )
    cfg, arrays = loading.read_llama2c(path)
    if tokenizer is None:
      cand = path.parent / f"tok{cfg.vocab_size}.bin"
      if cand.is_file():
        tokenizer = cand
  tok = _make_tokenizer(tokenizer, cfg)
  if dtype is None:  # the checkpoint's floating dtype
    dtype = next(iter(arrays.values())).dtype
  dtype = jnp.dtype(dtype)
  params = loading.place(arrays, dtype, mesh, rules)
  module = CausalLM(cfg, dtype=dtype, param_dtype=dtype)
  return LanguageModel(module, params, cfg, tok, mesh, source=str(source))


def _make_tokenizer(tokenizer, cfg):
  if tokenizer is None:
    return None
  if not isinstance(tokenizer, str | pathlib.Path):
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
      raise ValueError(f"tokenizer must be a path or have encode/decode, got {type(tokenizer)}")
    return tokenizer
  p = pathlib.Path(tokenizer)
  if p.is_dir():
    return HFTokenizer.from_dir(p)
  if p.is_file():
    return Llama2cTokenizer(p, vocab_size=cfg.vocab_size)
  raise FileNotFoundError(f"tokenizer not found: {tokenizer}")


def from_params(config: ModelConfig, params, tokenizer=None, dtype=jnp.float32) -> LanguageModel:
  """Wraps existing parameters (e.g. freshly initialised) as a ``LanguageModel``."""
  return LanguageModel(CausalLM(config, dtype=dtype, param_dtype=dtype), params, config, tokenizer)


def init_random(config, seed: int = 0, dtype=jnp.float32, tokenizer=None):
  """A randomly initialised model (for tests and examples): a ``LanguageModel`` for a
  ``ModelConfig``, a ``VisionLanguageModel`` for a ``LlavaConfig``."""
  if not isinstance(config, ModelConfig):
    from jaxsteer._src.models import llava

    if isinstance(config, llava.LlavaConfig):
      return llava.init_random(config, seed=seed, dtype=dtype, tokenizer=tokenizer)
    raise TypeError(f"init_random needs a ModelConfig or LlavaConfig, got {type(config).__name__}")
  module = CausalLM(config, dtype=dtype, param_dtype=dtype)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2), jnp.int32))["params"]
  return LanguageModel(module, params, config, tokenizer)
