"""Integrated Gradients for any scalar function of a pytree, and contrastive token attribution.

Sundararajan et al. (2017) Integrated Gradients, as used by GrAInS (Nguyen et al., 2025,
"GrAInS: Gradient-based Attribution for Inference-Time Steering of LLMs and VLMs"):

  IG(x) = (x - b) * integral_0^1 grad f(b + a (x - b)) da

The integral is a quadrature over ``steps`` points (Gauss-Legendre by default, as captum), evaluated
in batches with ``jax.lax.map(..., batch_size=chunk_size)`` (vmap in chunks, bounding memory).

``contrastive`` (and ``grains.fit``) never return an unconverged attribution silently: the points
start at ``steps`` and double, up to ``max_steps``, until every sequence's completeness error is at
most 5 % of its objective change (spec section 2.10.2); at the cap ``on_unconverged`` raises,
warns or ignores. Shapes are fixed (batches padded to ``batch_size``, widths to powers of two,
points in chunks of one size), so the doubling compiles nothing new.

  >>> import jax.numpy as jnp
  >>> attr, delta = integrated_gradients(lambda x: jnp.sum(x ** 2), jnp.ones(3), steps=8)
"""

from __future__ import annotations

import dataclasses
import functools
import html
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.compile_options import jit
from jaxsteer._src.distributed import to_host
from jaxsteer._src.images import as_image_list

# ------------------------------------------------------------------------------------------------
# Quadrature rules on [0, 1]: a registry name -> (steps -> (nodes, weights)).


def _gauss_legendre(n):
  x, w = np.polynomial.legendre.leggauss(n)
  return (x + 1) / 2, w / 2


def _riemann(offset):
  def rule(n):
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)

  return rule


def _trapezoid(n):
  if n < 2:
    raise ValueError("the trapezoid rule needs steps >= 2")
  w = np.full(n, 1.0 / (n - 1))
  w[0] = w[-1] = 0.5 / (n - 1)
  return np.linspace(0.0, 1.0, n), w


QUADRATURE: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {
  "gauss_legendre": _gauss_legendre,
  "riemann_left": _riemann(0.0),
  "riemann_right": _riemann(1.0),
  "riemann_middle": _riemann(0.5),
  "riemann_trapezoid": _trapezoid,
}


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes and weights on [0, 1] of a registered rule."""
  if method not in QUADRATURE:
    raise ValueError(f"unknown IG method {method!r}; known: {', '.join(QUADRATURE)}")
  if int(steps) < 1:
    raise ValueError(f"steps must be positive, got {steps}")
  return QUADRATURE[method](int(steps))


def integrated_path_gradients(
  grad_fn, x, baseline, *, steps=20, method="gauss_legendre", chunk_size=None
):
  """Quadrature of ``grad_fn`` along the straight path from ``baseline`` to ``x``."""
  nodes, weights = quadrature(method, steps)
  diff = jax.tree.map(lambda a, b: a - b, x, baseline)

  def point(alpha_w):
    alpha, w = alpha_w
    xa = jax.tree.map(lambda b, d: b + alpha.astype(d.dtype) * d, baseline, diff)
    return jax.tree.map(lambda g: w * g.astype(jnp.float32), grad_fn(xa))

  per_point = jax.lax.map(
    point,
    (jnp.asarray(nodes, jnp.float32), jnp.asarray(weights, jnp.float32)),
    batch_size=len(nodes) if chunk_size is None else chunk_size,
  )
  avg = jax.tree.map(lambda g: jnp.sum(g, axis=0), per_point)
  return jax.tree.map(lambda d, g: d.astype(jnp.float32) * g, diff, avg)


def integrated_gradients(
  f: Callable,
  x,
  baseline=None,
  *,
  steps: int = 20,
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
):
  """Integrated Gradients of a scalar function of a pytree.

  Args:
    f: scalar function of a pytree like ``x``.
    x: the input pytree.
    baseline: the reference input (default: zeros).
    steps: number of quadrature points.
    method: ``gauss_legendre`` or ``riemann_left|right|middle|trapezoid``.
    chunk_size: evaluate this many points at once (default: all at once, vmapped).

  Returns:
    ``(attributions, delta)``: attributions shaped like ``x`` (float32) and the completeness error
    ``sum(attributions) - (f(x) - f(baseline))``. Pure and jittable.
  """
  if baseline is None:
    baseline = jax.tree.map(jnp.zeros_like, x)
  attr = integrated_path_gradients(
    jax.grad(f), x, baseline, steps=steps, method=method, chunk_size=chunk_size
  )
  total = sum(jnp.sum(a) for a in jax.tree.leaves(attr))
  delta = total - (f(x) - f(baseline)).astype(jnp.float32)
  return attr, delta


# ------------------------------------------------------------------------------------------------
# Teacher-forced log-probabilities and the contrastive objective.


def response_logprob(logits, ids, response_mask, reduce: str = "sum"):
  """Teacher-forced log P(response | prompt) per row: the library's one sequence log-prob.

  ``sum over t of mask[t] * log softmax(logits[t - 1])[ids[t]]``, in float32. Positions with mask 0
  contribute exactly 0 (also where their log-prob is -inf, e.g. padding), so the TruthfulQA scorer
  (``evals.loglikelihoods``, which jits this function) and the attribution objectives share it.

  Args:
    logits: (B, T, V) logits; position t predicts token t + 1.
    ids: (B, T) token ids.
    response_mask: (B, T), 1 at response tokens (never at position 0).
    reduce: ``sum`` or ``mean`` (per response token).
  """
  m = response_mask[:, 1:].astype(jnp.float32)
  return selected_logprob(logits[:, :-1], ids[:, 1:], m, reduce)


def split_response(tokenizer, prompt, response, separator=" "):
  """Token ids of ``prompt + separator + response`` and the index where the response starts.

  Tokenises the whole text (so merges across the boundary match what the model sees) when the
  prompt's own tokens are a prefix of it; otherwise concatenates the two tokenisations.
  Token-id lists are accepted as well (no tokenizer needed).
  """
  if not isinstance(prompt, str):
    p, r = [int(t) for t in prompt], [int(t) for t in response]
    return p + r, len(p)
  p = tokenizer.encode(prompt)
  full = tokenizer.encode(prompt + separator + response)
  if full[: len(p)] == p and len(full) > len(p):
    return full, len(p)
  return p + tokenizer.encode(response, add_bos=False), len(p)


@dataclasses.dataclass(frozen=True)
class ImageInputs:
  """Preprocessed images of one sequence: ``pixel_values`` and ``image_sizes`` as the VLM takes them."""

  pixel_values: np.ndarray
  image_sizes: np.ndarray | None = None


def check_ids(lm, ids) -> None:
  """NumPy-only validation of one token-id row (``lm._check_ids`` without a device transfer,
  which would compile a conversion per sequence length)."""
  ids = np.asarray(ids)
  if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
    raise ValueError(f"token ids must be a 1-D integer sequence, got shape {ids.shape}")
  if not ids.size:
    raise ValueError("empty prompt: input_ids has no tokens")
  v = lm.config.vocab_size
  if ids.min() < 0 or ids.max() >= v:
    raise ValueError(f"token ids must lie in [0, {v}); got min {ids.min()}, max {ids.max()}")
  limit = lm.config.max_position_embeddings
  if ids.shape[0] > limit:
    raise ValueError(
      f"sequence of {ids.shape[0]} tokens is longer than the model's context of {limit}"
    )


def encode_pair(lm, prompt, response, images=None, separator=" "):
  """``(ids, prompt_len, image_inputs)`` of ``prompt + separator + response``.

  Without images this is ``split_response``. With images the prompt must be text with one image
  placeholder per image (``lm.image_placeholder``); the VLM expands each placeholder into its image
  tokens, so every image patch token gets its own position (and its own attribution score).
  """
  images = as_image_list(images)
  if not images:
    if isinstance(prompt, str) and lm.tokenizer is None:
      raise ValueError("text prompts need a model with a tokenizer; pass token ids instead")
    ids, n = split_response(lm.tokenizer, prompt, response, separator)
    return ids, n, None
  if not hasattr(lm, "encode_multimodal"):
    raise ValueError(f"images were given but {type(lm).__name__} is not a vision-language model")
  if not isinstance(prompt, str) or not isinstance(response, str):
    raise ValueError(
      "image inputs need a text prompt (with the image placeholder) and text responses"
    )
  p, pixel_values, image_sizes = lm.encode_multimodal(prompt, images)
  full, _, _ = lm.encode_multimodal(prompt + separator + response, images)
  if not (full[: len(p)] == p and len(full) > len(p)):
    full = list(p) + lm.tokenizer.encode(response, add_bos=False)
  return full, len(p), ImageInputs(pixel_values, image_sizes)


@dataclasses.dataclass
class ContrastiveAttribution:
  """Per-token contrastive IG scores for the preferred (pos) and dispreferred (neg) sequences.

  Positive scores support the preferred answer on both sequences (the objective carries a minus
  sign on the dispreferred one). ``delta`` is the joint completeness error.
  """

  ids_pos: np.ndarray
  ids_neg: np.ndarray
  tokens_pos: list[str]
  tokens_neg: list[str]
  scores_pos: np.ndarray
  scores_neg: np.ndarray
  prompt_len_pos: int
  prompt_len_neg: int
  objective: float
  baseline_objective: float
  delta: float
  rel_error: float = float("nan")
  steps: int = 0
  converged: bool = True
  image_token_id: int | None = None
  image_inputs: ImageInputs | None = None
  image_layout: dict | None = None

  def image_scores(self, which: str = "neg") -> list[np.ndarray]:
    """Per image, the (grid, grid) scores of its base patch grid (``pos`` or ``neg`` sequence).

    For LLaVA-1.5 that is every image token (the CLS token of the ``full`` strategy is left out);
    for LLaVA-NeXT it is the base (whole-image) grid that precedes the high-resolution tiles.
    """
    if self.image_layout is None:
      raise ValueError("this attribution has no image")
    ids, scores = (
      (self.ids_pos, self.scores_pos) if which == "pos" else (self.ids_neg, self.scores_neg)
    )
    g, off = self.image_layout["grid"], self.image_layout["offset"]
    out = []
    for start, _ in _runs(np.asarray(ids) == self.image_token_id):
      out.append(np.asarray(scores[start + off : start + off + g * g]).reshape(g, g))
    return out

  def plot_image(self, path=None, which: str = "neg", index: int = 0):
    """Overlays the image-patch scores on the (preprocessed) image; saved as PNG with ``path``.

    Green patches support the preferred answer, red ones the dispreferred (the patches GrAInS
    masks in ``pos`` mode are the most positive ones).
    """
    import matplotlib

    if path is not None:
      matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = self.image_scores(which)[index]
    img = self.image_layout["display"][index]
    m = float(np.abs(grid).max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(img)
    axes[0].set_title("image (as the model sees it)", fontsize=9)
    axes[1].imshow(img)
    h, w = img.shape[:2]
    im = axes[1].imshow(
      grid, cmap="RdYlGn", vmin=-m, vmax=m, alpha=0.55, extent=(0, w, h, 0), interpolation="nearest"
    )
    axes[1].set_title(f"patch attributions ({which}; delta {self.delta:.1e})", fontsize=9)
    for ax in axes:
      ax.set_axis_off()
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    if path is not None:
      fig.savefig(path, dpi=120)
      plt.close(fig)
    return fig

  def to_html(self) -> str:
    """Tokens coloured by score (green supports the preferred answer, red opposes it)."""

    def row(tokens, scores, n_prompt, title):
      m = float(np.abs(scores).max()) or 1.0
      spans = []
      for i, (t, s) in enumerate(zip(tokens, scores)):
        a = min(abs(float(s)) / m, 1.0)
        rgb = "0,160,0" if s > 0 else "200,0,0"
        border = "border-bottom:2px solid #444;" if i >= n_prompt else ""
        spans.append(
          f'<span title="{s:+.4f}" style="background:rgba({rgb},{a:.2f});{border}'
          f'padding:1px;margin:1px;font-family:monospace">{html.escape(t)}</span>'
        )
      return f"<div><b>{html.escape(title)}</b><br>{''.join(spans)}</div>"

    return (
      row(self.tokens_pos, self.scores_pos, self.prompt_len_pos, "preferred")
      + row(self.tokens_neg, self.scores_neg, self.prompt_len_neg, "dispreferred")
      + f"<div>objective {self.objective:.4f}, completeness delta {self.delta:.2e}</div>"
    )

  def _repr_html_(self):
    return self.to_html()

  def plot(self, path=None):
    """A matplotlib heatmap of both sequences' scores; saved as PNG when ``path`` is given."""
    import matplotlib

    if path is not None:
      matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.5 * max(len(self.tokens_pos), 8)), 3.2))
    m = float(max(np.abs(self.scores_pos).max(), np.abs(self.scores_neg).max())) or 1.0
    for ax, toks, sc, title in (
      (axes[0], self.tokens_pos, self.scores_pos, "preferred"),
      (axes[1], self.tokens_neg, self.scores_neg, "dispreferred"),
    ):
      ax.imshow(sc[None], cmap="RdYlGn", vmin=-m, vmax=m, aspect="auto")
      ax.set_xticks(
        range(len(toks)), [t.replace("\n", "\\n") for t in toks], rotation=60, fontsize=7
      )
      ax.set_yticks([])
      ax.set_title(title, fontsize=9)
    fig.suptitle(f"contrastive IG (delta {self.delta:.1e})", fontsize=9)
    fig.tight_layout()
    if path is not None:
      fig.savefig(path, dpi=120)
      plt.close(fig)
    return fig


def _runs(flags):
  """``(start, length)`` of each run of True in a 1-D boolean array."""
  out, start = [], None
  for i, f in enumerate(list(flags) + [False]):
    if f and start is None:
      start = i
    elif not f and start is not None:
      out.append((start, i - start))
      start = None
  return out


def image_layout(lm, im: ImageInputs) -> dict:
  """Where each image's base patch grid sits in its run of image tokens, and the image to show."""
  cfg = lm.vlm_config
  grid = cfg.vision.image_size // cfg.vision.patch_size
  # LLaVA-1.5 with the "full" strategy keeps the CLS feature first; NeXT's base grid has no CLS.
  offset = int(cfg.vision_feature_select_strategy == "full" and not cfg.is_next)
  proc = lm.image_processor
  pv = np.asarray(im.pixel_values, np.float32)
  base = pv[:, 0] if pv.ndim == 5 else pv  # LLaVA-NeXT: the first crop is the whole image
  mean = np.asarray(getattr(proc, "image_mean", 0.0), np.float32).reshape(-1, 1, 1)
  std = np.asarray(getattr(proc, "image_std", 1.0), np.float32).reshape(-1, 1, 1)
  display = [np.clip((b * std + mean).transpose(1, 2, 0), 0, 1) for b in base]
  return dict(grid=grid, offset=offset, display=display)


def embed(lm, ids):
  """Token embeddings of ``ids`` under ``lm``'s parameters."""
  return lm.module.apply({"params": lm.params}, ids, method=lambda m, x: m.embed_tokens(x))


BASELINES = ("pad", "zeros", "mean")


def baseline_embeddings(lm, ids, kind: str = "pad"):
  """IG baseline (and masking value) for every position of ``ids`` (B, T).

  ``pad``: the embedding of the pad token (EOS where the model has none), i.e. every token masked
  as the released GrAInS code masks them; ``zeros``: the all-zero embedding (the paper's IG
  baseline); ``mean``: the mean token embedding.

  With RMSNorm/LayerNorm models the zero baseline makes the path integrand vary over many decades
  of the interpolation coefficient (the norms rescale alpha * x), and Gauss-Legendre IG does not
  converge: on stories260K the completeness error stays above the objective itself at 1000
  steps, while the pad and mean baselines converge to 1e-5 by 100 steps (tests/jaxsteer).
  """
  if kind == "pad":
    return embed(lm, jnp.full(jnp.shape(ids), lm.pad_id, jnp.int32))
  if kind == "zeros":
    return jnp.zeros(jnp.shape(ids) + (lm.config.hidden_size,), lm.dtype)
  if kind == "mean":
    mean = lm.module.apply({"params": lm.params}, method=lambda m: m.mean_token_embedding())
    return jnp.broadcast_to(mean, jnp.shape(ids) + mean.shape)
  raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


def input_embeddings(lm, ids, images=None):
  """The decoder's input sequence (B, T, D) of right-padded ``ids``, in float32.

  ``images`` (optional) gives one ``ImageInputs`` or ``None`` per row: such rows get their projected
  image features at the image-token positions (``lm.embed_inputs``), so attribution, masking and
  residual capture all see the image (the released GrAInS code never passes the pixels: bug B5).
  """
  ids = np.asarray(ids)
  if images is None or all(im is None for im in images):
    return embed(lm, jnp.asarray(ids)).astype(jnp.float32)
  if len(images) != ids.shape[0]:
    raise ValueError(f"{len(images)} image entries for {ids.shape[0]} sequences")
  rows = []
  for i, im in enumerate(images):
    row = ids[i : i + 1]
    if im is None:
      e = embed(lm, jnp.asarray(row))
    else:
      e = lm.embed_inputs(row, im.pixel_values, im.image_sizes)
    rows.append(e.astype(jnp.float32))
  return jnp.concatenate(rows)


# ------------------------------------------------------------------------------------------------
# Contrastive IG with adaptive quadrature: fixed shapes, chunks of points, doubling to convergence.

ON_UNCONVERGED = ("raise", "warn", "ignore")
DEFAULT_STEPS = 16
DEFAULT_MAX_STEPS = 512
DEFAULT_RTOL = 0.05  # spec section 2.10.2: |delta| <= 5 % of |F(x) - F(baseline)| per sequence
DEFAULT_ATOL = 1e-3  # nats: a floor for sequences whose objective barely moves along the path
DEFAULT_CHUNK = 16  # IG points evaluated together (one vmapped forward + backward)


class IGConvergenceError(ValueError):
  """Integrated Gradients did not reach the completeness tolerance within ``max_steps`` points."""


class IGConvergenceWarning(RuntimeWarning):
  """``on_unconverged="warn"``: some attributions are returned above the completeness tolerance."""


def response_positions(ids, response_mask, n: int):
  """The logit positions (B, n) that predict response tokens, their targets and weights.

  Row i's response tokens sit where ``response_mask[i, t] != 0`` (t >= 1); the logits at t - 1
  predict them. Slots past a row's response count get position 0 and weight 0, so ``n`` must be
  at least every row's number of response tokens (``contrastive_batches`` checks it on the host).
  """
  m = response_mask[:, 1:]
  sel = jax.vmap(lambda r: jnp.nonzero(r != 0, size=n, fill_value=0)[0])(m).astype(jnp.int32)
  valid = jnp.arange(n)[None] < jnp.sum(m != 0, axis=-1, keepdims=True)
  w = jnp.where(valid, jnp.take_along_axis(m, sel, axis=1).astype(jnp.float32), 0.0)
  return sel, jnp.take_along_axis(ids[:, 1:], sel, axis=1), w


def _selected_logits(m, e, mask, sel):
  """Logits at the positions ``sel`` (B, n) only: the other positions never reach the vocabulary
  projection (the full logits that ``__call__`` also returns are unused, and XLA drops them).

  ``_selected_logits_pruned``: on an unrolled ``CausalLM`` the last decoder layer itself runs
  its queries, attention output and MLP at ``sel`` only (``last_layer_positions``; keys and
  values at every position), which removes most of one layer's work from the forward and the
  backward of IG (for the 6-layer model of ``benchmarks/grains_bench.py``, 13 % of the FLOPs).
  """
  _, hidden = m(inputs_embeds=e, attention_mask=mask, return_hidden=True)
  h = jnp.take_along_axis(hidden[-1], sel[..., None], axis=1)
  return getattr(m, "language_model", m).head(h)


def _selected_logits_pruned(m, e, mask, sel):
  """``_selected_logits`` with the last layer run at ``sel`` only (no interceptor may see a layer
  output of another shape, so only for a plain unrolled ``CausalLM``)."""
  _, hidden = m(inputs_embeds=e, attention_mask=mask, return_hidden=True, last_layer_positions=sel)
  return m.head(hidden[-1])


def selected_logprob(logits, targets, weights, reduce: str = "sum"):
  """``response_logprob`` on logits already gathered at the response positions (B, n, V)."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
  s = jnp.sum(jnp.where(weights != 0, tok * weights, 0.0), axis=-1)
  if reduce == "sum":
    return s
  if reduce == "mean":
    return s / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
  raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def _logp(module, factory, params, args, reduce, n_resp=None):
  from jaxsteer._src.models.lm import apply_intercepted
  from jaxsteer._src.models.modules import CausalLM

  pruned = factory is None and isinstance(module, CausalLM) and not module.config.scan_layers
  selected = _selected_logits_pruned if pruned else _selected_logits

  def logp(e, ids, mask, resp):
    if n_resp is None:
      logits = apply_intercepted(
        module, factory, params, args, inputs_embeds=e, attention_mask=mask
      )
      return response_logprob(logits, ids, resp, reduce)
    sel, tgt, w = response_positions(ids, resp, n_resp)
    logits = apply_intercepted(module, factory, params, args, e, mask, sel, method=selected)
    return selected_logprob(logits, tgt, w, reduce)

  return logp


def response_width(response_masks, width: int) -> int:
  """The static number of projected positions for these (B, T) response masks: the largest
  response token count, rounded up to a power of two (at least 8) so batches share programs."""
  n = max(int(np.max(np.sum(np.asarray(r)[:, 1:] != 0, axis=-1))) for r in response_masks)
  return pow2_width(max(n, 1), max(width - 1, 1), smallest=8)


def sequence_logprob(lm, embeds, ids, attention_mask, response_mask, *, reduce="sum", n_resp=None):
  """log P(response | prompt) per row of the decoder input ``embeds`` (B, T, D) under ``lm``.

  With ``n_resp`` (static; at least every row's response token count, see ``response_width``)
  only the response positions are projected onto the vocabulary, which is what IG runs: for a
  short response this removes most of the vocabulary projection and its gradient. Jittable, and
  meant to run under ``jax.jit``: XLA then drops the unused full-sequence projection.
  """
  f, a = lm.intercept
  return _logp(lm.module, f, lm.params, a, reduce, n_resp)(
    embeds, ids, attention_mask, response_mask
  )


@functools.partial(jit, kind="forward", static_argnames=("module", "factory", "reduce", "n_resp"))
def contrastive_objectives(module, factory, params, args, batch, *, reduce, n_resp=None):
  """``(log P(y+) at x, log P(y-) at x, log P(y+) at baseline, log P(y-) at baseline)`` (B,) each.

  ``batch`` holds ``ids_pos, ids_neg, mask_pos, mask_neg, resp_pos, resp_neg`` (B, T) and
  ``x_pos, x_neg, base_pos, base_neg`` (B, T, D): the decoder's input sequences and the baselines.
  ``n_resp``: project only this many response positions onto the vocabulary (``response_width``).
  """
  logp = _logp(module, factory, params, args, reduce, n_resp)
  b = batch
  return (
    logp(b["x_pos"], b["ids_pos"], b["mask_pos"], b["resp_pos"]),
    logp(b["x_neg"], b["ids_neg"], b["mask_neg"], b["resp_neg"]),
    logp(b["base_pos"], b["ids_pos"], b["mask_pos"], b["resp_pos"]),
    logp(b["base_neg"], b["ids_neg"], b["mask_neg"], b["resp_neg"]),
  )


@functools.partial(jit, kind="ig", static_argnames=("module", "factory", "reduce", "n_resp"))
def contrastive_ig_chunk(
  module, factory, params, args, batch, nodes, weights, *, reduce, n_resp=None
):
  """Per-token IG scores (B, T) of both sequences from the quadrature points ``nodes``/``weights``.

  Objective per pair: log P(y+ | x) - log P(y- | x), so positive scores support the preferred
  response on both sequences. The points are evaluated together (one vmapped forward + backward);
  a full quadrature is the sum of its chunks (the scores are linear in the weights), so any number
  of points runs through one compiled program. ``n_resp`` as in ``contrastive_objectives``.
  """
  logp = _logp(module, factory, params, args, reduce, n_resp)
  b = batch

  def f(es):
    e_pos, e_neg = es
    return jnp.sum(logp(e_pos, b["ids_pos"], b["mask_pos"], b["resp_pos"])) - jnp.sum(
      logp(e_neg, b["ids_neg"], b["mask_neg"], b["resp_neg"])
    )

  x = (b["x_pos"].astype(jnp.float32), b["x_neg"].astype(jnp.float32))
  base = (b["base_pos"].astype(jnp.float32), b["base_neg"].astype(jnp.float32))
  diff = jax.tree.map(jnp.subtract, x, base)
  grad = jax.grad(f)

  def point(a, w):
    xa = jax.tree.map(lambda z, d: z + a * d, base, diff)
    return jax.tree.map(lambda g: w * g, grad(xa))

  g = jax.tree.map(lambda t: jnp.sum(t, axis=0), jax.vmap(point)(nodes, weights))
  s_pos = jnp.sum(diff[0] * g[0], axis=-1) * b["mask_pos"]
  s_neg = jnp.sum(diff[1] * g[1], axis=-1) * b["mask_neg"]
  return s_pos, s_neg


def pow2_width(n: int, limit: int, smallest: int = 16) -> int:
  """The smallest power of two >= ``n`` (at least ``smallest``), capped at ``limit``."""
  w = smallest
  while w < n:
    w *= 2
  return max(min(w, limit), n)


@dataclasses.dataclass
class IGResult:
  """Contrastive IG of a list of pairs, converged (or not) per pair.

  Attributes:
    scores_pos, scores_neg: per pair, the per-token scores (trimmed to the sequence length).
    objective, baseline_objective: per pair, F at the input and at the baseline.
    delta: per pair, the joint completeness error (both sequences).
    rel_error: per pair, the larger of the two sequences' relative completeness errors
      ``|delta_s| / |F_s(x) - F_s(baseline)|``.
    steps: per pair, the number of quadrature points of the returned scores.
    converged: per pair, whether ``|delta_s| <= rtol |F_s(x) - F_s(b)| + atol`` for both sequences.
  """

  scores_pos: list
  scores_neg: list
  objective: np.ndarray
  baseline_objective: np.ndarray
  delta: np.ndarray
  rel_error: np.ndarray
  steps: np.ndarray
  converged: np.ndarray


def check_ig_options(steps, max_steps, rtol, on_unconverged):
  if int(steps) < 1:
    raise ValueError(f"steps must be positive, got {steps}")
  if max_steps is not None and int(max_steps) < int(steps):
    raise ValueError(f"max_steps ({max_steps}) must be at least steps ({steps})")
  if not (np.isfinite(rtol) and rtol > 0):
    raise ValueError(f"rtol must be a positive number, got {rtol}")
  if on_unconverged not in ON_UNCONVERGED:
    raise ValueError(
      f"on_unconverged must be one of {', '.join(ON_UNCONVERGED)}; got {on_unconverged!r}"
    )


def _pad_batch(rows, n_rows, width, pad_id):
  """(n_rows, width) ids and mask of ``rows``; missing rows repeat the last one (discarded)."""
  rows = list(rows) + [rows[-1]] * (n_rows - len(rows))
  ids = np.full((n_rows, width), pad_id, np.int32)
  mask = np.zeros((n_rows, width), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
    mask[i, : len(r)] = 1
  return ids, mask


def contrastive_batches(
  lm,
  pos,
  neg,
  *,
  images=None,
  steps: int = DEFAULT_STEPS,
  max_steps: int | None = DEFAULT_MAX_STEPS,
  rtol: float = DEFAULT_RTOL,
  atol: float = DEFAULT_ATOL,
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
  reduce: str = "sum",
  baseline: str = "pad",
  batch_size: int = 8,
  on_unconverged: str = "raise",
  labels=None,
  progress=None,
) -> IGResult:
  """Contrastive IG of ``(ids, prompt_len)`` rows, doubling the points until each pair converges.

  Batches have exactly ``batch_size`` rows (a short last batch is padded with copies) and widths
  that are powers of two, and the quadrature points run in chunks of a fixed size, so a fit
  compiles one IG program per width, whatever the number of points.

  Per batch the points start at ``steps`` and double (up to ``max_steps``) while a pair has a
  sequence whose completeness error exceeds ``rtol |F_s(x) - F_s(baseline)| + atol``; each pair
  keeps the scores of the first point count at which it converged. At the cap,
  ``on_unconverged`` decides: ``raise`` an ``IGConvergenceError`` naming the pair, its error and
  the points, ``warn`` (``IGConvergenceWarning``) or ``ignore``.
  """
  max_steps = int(steps) if max_steps is None else int(max_steps)
  check_ig_options(steps, max_steps, rtol, on_unconverged)
  n = len(pos)
  labels = labels or [f"pair {i}" for i in range(n)]
  images = images if images is not None else [None] * n
  limit = lm.config.max_position_embeddings
  # Points per program: all of ``steps`` up to 2 * DEFAULT_CHUNK (every doubling is then a whole
  # number of chunks: no zero-weight padding points, e.g. 20 points run as one chunk, not 16 + 16
  # with 12 wasted), else chunks of DEFAULT_CHUNK.
  chunk = int(chunk_size or (steps if steps <= 2 * DEFAULT_CHUNK else DEFAULT_CHUNK))
  chunk = min(chunk, int(steps))
  f, a = lm.intercept
  res = IGResult([None] * n, [None] * n, *(np.zeros(n) for _ in range(4)),
                 np.zeros(n, np.int64), np.zeros(n, bool))  # fmt: skip
  for b0 in range(0, n, batch_size):
    idx = list(range(b0, min(n, b0 + batch_size)))
    rows_p = [pos[i][0] for i in idx]
    rows_n = [neg[i][0] for i in idx]
    width = pow2_width(max(len(r) for r in rows_p + rows_n), limit)
    ids_p, m_p = _pad_batch(rows_p, batch_size, width, lm.pad_id)
    ids_n, m_n = _pad_batch(rows_n, batch_size, width, lm.pad_id)
    r_p, r_n = m_p.copy(), m_n.copy()
    for j in range(batch_size):
      i = idx[min(j, len(idx) - 1)]
      r_p[j, : pos[i][1]] = 0
      r_n[j, : neg[i][1]] = 0
    ims = [images[i] for i in idx]
    ims = ims + [ims[-1]] * (batch_size - len(ims))
    batch = dict(
      ids_pos=jnp.asarray(ids_p),
      ids_neg=jnp.asarray(ids_n),
      mask_pos=jnp.asarray(m_p),
      mask_neg=jnp.asarray(m_n),
      resp_pos=jnp.asarray(r_p),
      resp_neg=jnp.asarray(r_n),
      x_pos=input_embeddings(lm, ids_p, ims),
      x_neg=input_embeddings(lm, ids_n, ims),
      base_pos=baseline_embeddings(lm, ids_p, baseline).astype(jnp.float32),
      base_neg=baseline_embeddings(lm, ids_n, baseline).astype(jnp.float32),
    )
    n_resp = response_width((r_p, r_n), width)  # only response positions reach the vocabulary
    lp_x, ln_x, lp_b, ln_b = (
      to_host(t).astype(np.float64)
      for t in contrastive_objectives(
        lm.module, f, lm.params, a, batch, reduce=reduce, n_resp=n_resp
      )  # fmt: skip
    )
    dF_p, dF_n = lp_x - lp_b, -(ln_x - ln_b)  # each sequence's share of F(x) - F(b)
    done = np.zeros(batch_size, bool)
    done[len(idx) :] = True
    s = int(steps)
    while True:
      nodes, weights = quadrature(method, s)
      pad = -len(nodes) % chunk
      nodes = np.concatenate([nodes, np.full(pad, 0.5)])
      weights = np.concatenate([weights, np.zeros(pad)])
      sp = np.zeros((batch_size, width))
      sn = np.zeros((batch_size, width))
      for c in range(0, len(nodes), chunk):
        cp, cn = contrastive_ig_chunk(
          lm.module, f, lm.params, a, batch,
          jnp.asarray(nodes[c : c + chunk], jnp.float32),
          jnp.asarray(weights[c : c + chunk], jnp.float32),
          reduce=reduce, n_resp=n_resp,
        )  # fmt: skip
        sp += to_host(cp).astype(np.float64)  # to_host: may span processes
        sn += to_host(cn).astype(np.float64)
      d_p = sp.sum(-1) - dF_p
      d_n = sn.sum(-1) - dF_n
      rel = np.maximum(
        np.abs(d_p) / np.maximum(np.abs(dF_p), 1e-30), np.abs(d_n) / np.maximum(np.abs(dF_n), 1e-30)
      )
      ok = (np.abs(d_p) <= rtol * np.abs(dF_p) + atol) & (np.abs(d_n) <= rtol * np.abs(dF_n) + atol)
      for j, i in enumerate(idx):
        if done[j]:
          continue
        res.scores_pos[i] = sp[j, : len(pos[i][0])].astype(np.float32)
        res.scores_neg[i] = sn[j, : len(neg[i][0])].astype(np.float32)
        res.objective[i] = dF_p[j] + dF_n[j] + (lp_b[j] - ln_b[j])
        res.baseline_objective[i] = lp_b[j] - ln_b[j]
        res.delta[i] = d_p[j] + d_n[j]
        res.rel_error[i] = rel[j]
        res.steps[i] = s
        res.converged[i] = ok[j]
        done[j] = ok[j]
      if done.all() or s >= max_steps:
        break
      s = min(2 * s, max_steps)
    if progress is not None:
      progress.update(1)
  bad = np.flatnonzero(~res.converged)
  if len(bad) and on_unconverged != "ignore":
    worst = bad[np.argmax(res.rel_error[bad])]
    msg = (
      f"Integrated Gradients did not converge for {len(bad)} of {n} pairs; worst: "
      f"{labels[worst]} with relative completeness error {res.rel_error[worst]:.3g} "
      f"(tolerance {rtol:g}) at {int(res.steps[worst])} points (max_steps={max_steps}). "
      "Raise max_steps, try baseline='pad' or 'mean', or pass on_unconverged='warn'."
    )
    if on_unconverged == "raise":
      raise IGConvergenceError(msg)
    import warnings

    warnings.warn(msg, IGConvergenceWarning, stacklevel=3)
  return res


def preference_margins(lm, pos, neg, *, images=None, reduce: str = "sum", batch_size: int = 8):
  """log P(preferred) - log P(dispreferred) per pair of ``(ids, prompt_len)`` rows under ``lm``
  (steered models and VLMs included: ``images`` gives one ``ImageInputs`` or ``None`` per pair)."""
  n = len(pos)
  images = images if images is not None else [None] * n
  f, a = lm.intercept
  out = np.zeros(n)
  limit = lm.config.max_position_embeddings
  for b0 in range(0, n, batch_size):
    idx = list(range(b0, min(n, b0 + batch_size)))
    ids_p, m_p = _pad_batch([pos[i][0] for i in idx], batch_size,
                            pow2_width(max(len(pos[i][0]) for i in idx), limit), lm.pad_id)  # fmt: skip
    ids_n, m_n = _pad_batch([neg[i][0] for i in idx], batch_size,
                            pow2_width(max(len(neg[i][0]) for i in idx), limit), lm.pad_id)  # fmt: skip
    r_p, r_n = m_p.copy(), m_n.copy()
    for j in range(batch_size):
      i = idx[min(j, len(idx) - 1)]
      r_p[j, : pos[i][1]] = 0
      r_n[j, : neg[i][1]] = 0
    ims = [images[i] for i in idx]
    ims = ims + [ims[-1]] * (batch_size - len(ims))
    xp, xn = input_embeddings(lm, ids_p, ims), input_embeddings(lm, ids_n, ims)
    batch = dict(
      ids_pos=jnp.asarray(ids_p), ids_neg=jnp.asarray(ids_n), mask_pos=jnp.asarray(m_p),
      mask_neg=jnp.asarray(m_n), resp_pos=jnp.asarray(r_p), resp_neg=jnp.asarray(r_n),
      x_pos=xp, x_neg=xn, base_pos=xp, base_neg=xn,
    )  # fmt: skip
    lp, ln, _, _ = contrastive_objectives(lm.module, f, lm.params, a, batch, reduce=reduce)
    out[idx] = (np.asarray(lp, np.float64) - np.asarray(ln, np.float64))[: len(idx)]
  return out


def pad_rows(rows: Sequence[Sequence[int]], multiple: int = 16, pad_id: int = 0):
  """Right-pads id rows to a common width (rounded up to ``multiple``); returns ids and mask."""
  width = max(len(r) for r in rows)
  width = -(-width // multiple) * multiple
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
    mask[i, : len(r)] = 1
  return ids, mask


def contrastive(
  lm,
  prompt,
  preferred,
  dispreferred,
  *,
  image=None,
  steps: int = DEFAULT_STEPS,
  max_steps: int | None = DEFAULT_MAX_STEPS,
  rtol: float = DEFAULT_RTOL,
  on_unconverged: str = "raise",
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
  reduce: str = "sum",
  separator: str = " ",
  baseline: str = "pad",
) -> ContrastiveAttribution:
  """Contrastive Integrated Gradients of log P(preferred | prompt) - log P(dispreferred | prompt).

  Args:
    lm: a ``LanguageModel`` or ``VisionLanguageModel`` (steered models work too).
    prompt, preferred, dispreferred: strings (tokenised by ``lm``) or token-id lists.
    image: for a VLM, an image (path, PIL image, HxWx3 array) or a list of them, one per image
      placeholder in ``prompt``. Every image patch token is then scored alongside the text tokens:
      IG runs over the merged sequence of projected image features and text embeddings.
    steps: the starting number of quadrature points; doubled until each sequence's completeness
      error is at most ``rtol`` of its objective change (spec section 2.10.2), up to ``max_steps``
      (``max_steps=steps`` gives a fixed count).
    on_unconverged: at the cap, ``raise`` (``IGConvergenceError``), ``warn`` or ``ignore``.
    method, chunk_size: the quadrature rule and how many points run together (default: all of
      ``steps`` up to 32, else 16).
    reduce: ``sum`` (log-likelihood) or ``mean`` (per response token).
    separator: text between prompt and response.
    baseline: ``pad`` (default), ``zeros`` (the paper's) or ``mean``; see ``baseline_embeddings``.
      An image token's baseline is the same vector as a text token's.

  Returns:
    A ``ContrastiveAttribution`` with per-token scores of both sequences, the completeness delta,
    the relative error and the number of points used.
  """
  ip, np_, im = encode_pair(lm, prompt, preferred, image, separator)
  iN, nn_, _ = encode_pair(lm, prompt, dispreferred, image, separator)
  for ids in (ip, iN):
    check_ids(lm, ids)
  r = contrastive_batches(
    lm, [(ip, np_)], [(iN, nn_)], images=[im], steps=steps, max_steps=max_steps, rtol=rtol,
    method=method, chunk_size=chunk_size, reduce=reduce, baseline=baseline, batch_size=1,
    on_unconverged=on_unconverged,
  )  # fmt: skip

  image_token = getattr(lm, "image_token_id", None)

  def pieces(ids):
    tok, out, j = lm.tokenizer, [], 0
    for i in ids:
      if im is not None and i == image_token:
        out.append(f"<img{j}>")  # the j-th image token (patch) of the sequence
        j += 1
      else:
        out.append(tok.id_to_piece(i) if tok is not None else str(i))
    return out

  return ContrastiveAttribution(
    ids_pos=np.asarray(ip),
    ids_neg=np.asarray(iN),
    tokens_pos=pieces(ip),
    tokens_neg=pieces(iN),
    scores_pos=r.scores_pos[0],
    scores_neg=r.scores_neg[0],
    prompt_len_pos=np_,
    prompt_len_neg=nn_,
    objective=float(r.objective[0]),
    baseline_objective=float(r.baseline_objective[0]),
    delta=float(r.delta[0]),
    rel_error=float(r.rel_error[0]),
    steps=int(r.steps[0]),
    converged=bool(r.converged[0]),
    image_token_id=image_token if im is not None else None,
    image_inputs=im,
    image_layout=image_layout(lm, im) if im is not None else None,
  )
