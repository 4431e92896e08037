"""GrAInS: attribution-guided steering vectors (Nguyen et al., 2025, arXiv:2507.18043).

1. Contrastive Integrated Gradients scores every token of ``prompt + preferred`` and
   ``prompt + dispreferred`` for the objective log P(preferred | prompt) - log P(dispreferred | prompt)
   (one IG pass per pair serves both selections below).
2. Per sequence, the k most positive and the k most negative candidate tokens are masked (their
   embeddings replaced by the IG baseline, or their ids by the pad id).
3. The deltas h(s) - h(mask(s)) of the last token's residual stream after each chosen decoder layer,
   captured by interception, are aggregated over pairs (sign-aligned first principal component, or
   the mean) into v+ (positive masks) and v- (negative masks); ``mode="both"`` gives v = v+ - v-.
4. ``jaxsteer.steer(lm, vectors, alpha)`` applies them with the per-token norm preserved.

The corrections of the released code (spec section 2.10) are the defaults: teacher-forced response
log-likelihood (B1), per-token renormalisation (B2), sign-aligned PCA (B4), residual-stream capture
(B6), a single IG pass (B10). ``candidates="all"`` and ``mask_with="pad"`` reproduce the released
candidate set and masking.

  >>> pairs = [Pair("Q: Is the earth flat?\\nA:", "No.", "Yes.")]  # doctest: +SKIP
  >>> vecs = fit(lm, pairs, layers=[3], k=2)  # doctest: +SKIP
  >>> jaxsteer.steer(lm, vecs, alpha=2.0).generate("Q: Is the moon cheese?\\nA:")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsteer._src.attribution import (
  baseline_embeddings,
  batch_contrastive,
  encode_pair,
  input_embeddings,
  pad_rows,
)
from jaxsteer._src.distributed import to_host
from jaxsteer._src.models.lm import _apply
from jaxsteer._src.models.modules import DecoderLayer


@dataclasses.dataclass(frozen=True)
class Pair:
  """A steering example: a prompt with a preferred and a dispreferred response (text or ids).

  ``image`` (VLMs): an image or a list of images, one per image placeholder in the prompt.
  """

  prompt: Any
  preferred: Any
  dispreferred: Any
  image: Any = None


# ------------------------------------------------------------------------------------------------
# Aggregators (registry): (N, D) deltas -> (D,) direction.


def aggregate_mean(deltas: np.ndarray) -> np.ndarray:
  return deltas.mean(axis=0)


def aggregate_pca(deltas: np.ndarray) -> np.ndarray:
  """First principal component of the mean-centred deltas, oriented along the mean delta."""
  centred = deltas - deltas.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
  v = vt[0]
  if float(v @ deltas.mean(axis=0)) < 0:
    v = -v
  return v.astype(np.float32)


AGGREGATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
  "mean": aggregate_mean,
  "pca": aggregate_pca,
}


# ------------------------------------------------------------------------------------------------
# Steering vectors: a small container saved with orbax.


@dataclasses.dataclass(frozen=True)
class SteeringVectors:
  """Steering vectors per decoder layer, with how they were made.

  Attributes:
    layers: decoder-layer indices (sorted).
    vectors: (len(layers), D) float32.
    metadata: JSON-able description (source model, k, steps, method, ...).
  """

  layers: tuple[int, ...]
  vectors: np.ndarray
  metadata: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    v = np.asarray(self.vectors, np.float32)
    if v.ndim != 2 or v.shape[0] != len(self.layers):
      raise ValueError(f"vectors must be (len(layers)={len(self.layers)}, D); got {v.shape}")
    object.__setattr__(self, "vectors", v)
    object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

  def __getitem__(self, layer: int) -> np.ndarray:
    return self.vectors[self.layers.index(layer)]

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``path`` atomically (orbax arrays + ``metadata.json``); overwrites an old one."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
      ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
      tree = {"vectors": self.vectors, "layers": np.asarray(self.layers, np.int32)}
      ckptr.save(tmp / "arrays", args=ocp.args.StandardSave(tree))
      meta = dict(self.metadata, layers=list(self.layers), format="jaxsteer.SteeringVectors/1")
      (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
      if path.exists():
        shutil.rmtree(path)
      os.replace(tmp, path)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> SteeringVectors:
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    meta_file = path / "metadata.json"
    if not meta_file.is_file() or not (path / "arrays").is_dir():
      raise FileNotFoundError(f"no saved SteeringVectors at {path}")
    meta = json.loads(meta_file.read_text())
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    tree = ckptr.restore(path / "arrays")
    layers = tuple(int(x) for x in np.asarray(tree["layers"]))
    meta.pop("format", None)
    meta.pop("layers", None)
    return cls(layers, np.asarray(tree["vectors"]), meta)


def _jsonable(x):
  if isinstance(x, np.generic | np.ndarray):
    return x.tolist()
  return str(x)


# ------------------------------------------------------------------------------------------------
# Capturing residual-stream outputs through interception.


@dataclasses.dataclass(frozen=True)
class CaptureInterceptor:
  """Sows the output of the chosen ``DecoderLayer``s into ``intermediates/layers_i/residual``."""

  layers: tuple[int, ...]

  def __call__(self, _args=None):
    names = {f"layers_{i}" for i in self.layers}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      m = context.module
      if context.method_name == "__call__" and isinstance(m, DecoderLayer) and m.name in names:
        m.sow("intermediates", "residual", out)
      return out

    return interceptor


def _sown_residuals(tree) -> dict:
  """``{"layers_i": residual}`` from an intermediates tree, wherever the decoder sits in it (the
  top level for a ``CausalLM``, ``language_model`` for a VLM)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and "residual" in value:
      out[key] = value["residual"][0]
    elif isinstance(value, dict):
      out.update(_sown_residuals(value))
  return out


@functools.partial(jax.jit, static_argnames=("module", "factory", "layers"))
def capture_last(module, factory, params, args, embeds, mask, last, layers):
  """Residual stream (B, len(layers), D) after each layer in ``layers`` at position ``last``."""
  with nn.intercept_methods(CaptureInterceptor(layers)()):
    _, state = _apply(
      module,
      factory,
      params,
      args,
      inputs_embeds=embeds,
      attention_mask=mask,
      mutable=["intermediates"],
    )
  found = _sown_residuals(state["intermediates"])
  h = jnp.stack([found[f"layers_{i}"] for i in layers], axis=1)  # (B, L, T, D)
  return h[jnp.arange(h.shape[0]), :, last].astype(jnp.float32)


def hidden_last(
  lm,
  rows: Sequence[Sequence[int]],
  layers,
  masks=None,
  mask_with="baseline",
  baseline="pad",
  images=None,
):
  """Last-token residual outputs (N, L, D) of ``rows`` with optional masked positions.

  Masked positions get the IG baseline's vector (``mask_with="baseline"``) or the pad token's
  embedding (``mask_with="pad"``, the released code's choice); for a VLM a masked image token's
  projected feature is replaced the same way. ``images``: one ``ImageInputs`` or ``None`` per row.
  """
  return _capture_variants(lm, rows, layers, [masks], mask_with, baseline, images)[0]


def _capture_variants(lm, rows, layers, mask_sets, mask_with, baseline, images):
  """``hidden_last`` of ``rows`` under each entry of ``mask_sets`` (``None``: unmasked).

  The input sequence (for a VLM: the vision tower and projector) and the masking vector are
  computed once and shared by every variant.
  """
  ids, attn = pad_rows(rows, 16, lm.pad_id)
  emb = input_embeddings(lm, ids, images)
  base = None
  last = jnp.asarray([len(r) - 1 for r in rows], jnp.int32)
  f, a = lm.intercept
  out = []
  for masks in mask_sets:
    x = emb
    if masks is not None:
      drop = np.zeros(ids.shape, bool)
      for i, m in enumerate(masks):
        drop[i, : len(m)] = m
      if base is None:
        kind = "pad" if mask_with == "pad" else baseline
        base = baseline_embeddings(lm, ids, kind).astype(emb.dtype)
      x = jnp.where(jnp.asarray(drop)[..., None], base, emb)
    out.append(  # to_host: the output may span processes (multi-process meshes)
      to_host(capture_last(lm.module, f, lm.params, a, x, jnp.asarray(attn), last, tuple(layers)))
    )
  return out


# ------------------------------------------------------------------------------------------------
# fit / caa


def _check_common(lm, pairs, layers, images=None):
  """Validates and tokenises ``pairs``: a list of ``((ids, n), (ids, n), ImageInputs | None)``."""
  if not pairs:
    raise ValueError("no steering pairs given")
  if not layers:
    raise ValueError("no layers given")
  if images is not None and len(images) != len(pairs):
    raise ValueError(f"{len(images)} images for {len(pairs)} pairs; give one (or None) per pair")
  n = lm.config.num_layers
  for lay in layers:
    if not 0 <= int(lay) < n:
      raise ValueError(f"layer {lay} is out of range for a model with {n} layers")
  rows = []
  for i, p in enumerate(pairs):
    if not isinstance(p, Pair):
      p = Pair(*p)
    image = p.image if images is None else images[i]
    if image is not None and p.image is not None and images is not None:
      raise ValueError(f"pair {i} has an image and images= gives another; give one of them")
    pos = encode_pair(lm, p.prompt, p.preferred, image)
    neg = encode_pair(lm, p.prompt, p.dispreferred, image)
    for ids, start, _ in (pos, neg):
      if start >= len(ids):
        raise ValueError(f"pair {i}: empty response")
      lm._check_ids(np.asarray([ids]))
    rows.append((pos[:2], neg[:2], pos[2]))
  return rows


def _candidates(ids, prompt_len, rule, specials):
  c = np.zeros(len(ids), bool)
  if rule == "prompt":
    c[:prompt_len] = True
    c &= ~np.isin(np.asarray(ids), list(specials))
  elif rule == "all":
    c[:] = True
  else:
    raise ValueError(f"candidates must be 'prompt' or 'all', got {rule!r}")
  return c


def _top(scores, cand, k, largest):
  s = np.where(cand, scores, -np.inf if largest else np.inf)
  order = np.argsort(-s if largest else s, kind="stable")[:k]
  m = np.zeros(len(scores), bool)
  m[order] = True
  return m


def fit(
  lm,
  pairs: Sequence[Pair],
  *,
  layers: Sequence[int],
  images: Sequence[Any] | None = None,
  k: int | None = None,
  steps: int = 20,
  aggregate: str = "pca",
  mode: str | None = None,
  candidates: str = "prompt",
  mask_with: str = "baseline",
  baseline: str = "pad",
  reduce: str = "sum",
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
  batch_size: int = 8,
  progress: bool = True,
) -> SteeringVectors:
  """Fits GrAInS steering vectors.

  Args:
    lm: a ``LanguageModel``.
    pairs: ``Pair(prompt, preferred, dispreferred[, image])`` items (text, or token ids).
    layers: decoder layers whose residual output gets a vector.
    images: for a VLM, one image (or list of images, or ``None``) per pair, instead of
      ``Pair.image``. Image patch tokens are attributed, selected and masked like text tokens; a
      masked image token's projected feature is replaced by the baseline.
    k: tokens masked per sequence and sign (default 10 for language models; 50 when the pairs have
      images, the paper's VLM setting, as VLM sequences hold hundreds of image tokens).
    steps, method, chunk_size: the IG quadrature.
    aggregate: ``pca`` (sign-aligned first PC) or ``mean``.
    mode: ``both`` (v+ - v-) or ``pos`` (v+); default ``both``, or ``pos`` with images (the
      released VLM scripts).
    candidates: ``prompt`` (prompt tokens without special tokens) or ``all`` (every token, as the
      released code).
    mask_with: ``baseline`` (the IG baseline's embedding) or ``pad`` (the pad id, as released).
    baseline: the IG baseline, ``pad`` (default: the pad/EOS embedding, so IG attributes exactly
      the change that masking makes), ``zeros`` (the paper's) or ``mean``.
    reduce: response log-likelihood ``sum`` or per-token ``mean``.
    batch_size: pairs per IG batch.
    progress: show a progress bar.

  Returns:
    ``SteeringVectors`` with metadata (including the per-pair IG completeness errors).
  """
  if aggregate not in AGGREGATORS:
    raise ValueError(f"unknown aggregate {aggregate!r}; known: {', '.join(AGGREGATORS)}")
  layers = tuple(sorted(int(x) for x in layers))
  rows = _check_common(lm, pairs, layers, images)
  multimodal = any(im is not None for _, _, im in rows)
  if k is None:
    k = 50 if multimodal else 10
  if mode is None:
    mode = "pos" if multimodal else "both"
  if mode not in ("both", "pos"):
    raise ValueError(f"mode must be 'both' or 'pos', got {mode!r}")
  if mask_with not in ("baseline", "pad"):
    raise ValueError(f"mask_with must be 'baseline' or 'pad', got {mask_with!r}")
  if int(k) < 1:
    raise ValueError(f"k must be positive, got {k}")
  specials = {
    t
    for t in (lm.config.bos_token_id, lm.config.eos_token_id, lm.config.pad_token_id)
    if t is not None
  }
  cands = []
  for i, (pos, neg, _) in enumerate(rows):
    cs = [_candidates(ids, n, candidates, specials) for ids, n in (pos, neg)]
    for c in cs:
      if c.sum() < k:
        raise ValueError(
          f"k={k} is larger than the candidate count {int(c.sum())} of pair {i} "
          f"(candidates={candidates!r}); lower k or use candidates='all'"
        )
    cands.append(cs)

  d_pos, d_neg, ig_delta, ig_obj = [], [], [], []
  batches = range(0, len(rows), batch_size)
  for b in tqdm(batches, desc="GrAInS fit", disable=not progress, unit="batch"):
    chunk = rows[b : b + batch_size]
    s_pos, s_neg, fx, fb, delta = (
      np.asarray(a)
      for a in batch_contrastive(
        lm,
        [p for p, _, _ in chunk],
        [n for _, n, _ in chunk],
        steps,
        method,
        chunk_size,
        reduce,
        baseline=baseline,
        images=[im for _, _, im in chunk],
      )
    )
    ig_delta.extend(delta.tolist())
    ig_obj.extend((fx - fb).tolist())
    seqs, ims, m_pos, m_neg = [], [], [], []
    for j, ((pi, ni, im), (cp, cn)) in enumerate(zip(chunk, cands[b : b + batch_size])):
      for (ids, _), sc, c in ((pi, s_pos[j], cp), (ni, s_neg[j], cn)):
        sc = sc[: len(ids)]
        seqs.append(ids)
        ims.append(im)
        m_pos.append(_top(sc, c, k, largest=True))
        m_neg.append(_top(sc, c, k, largest=False))
    variants = [None, m_pos] + ([m_neg] if mode == "both" else [])
    h, *masked = _capture_variants(lm, seqs, layers, variants, mask_with, baseline, ims)
    d_pos.append(h - masked[0])
    if mode == "both":
      d_neg.append(h - masked[1])
  d_pos = np.concatenate(d_pos)  # (2N, L, D)
  agg = AGGREGATORS[aggregate]
  v_pos = np.stack([agg(d_pos[:, j]) for j in range(len(layers))])
  vecs = v_pos
  if mode == "both":
    d_neg = np.concatenate(d_neg)
    vecs = v_pos - np.stack([agg(d_neg[:, j]) for j in range(len(layers))])
  rel = np.abs(np.asarray(ig_delta)) / np.maximum(np.abs(np.asarray(ig_obj)), 1e-12)
  meta = dict(
    method="grains",
    source=_source(lm),
    k=int(k),
    steps=int(steps),
    quadrature=method,
    aggregate=aggregate,
    mode=mode,
    candidates=candidates,
    mask_with=mask_with,
    baseline=baseline,
    reduce=reduce,
    n_pairs=len(rows),
    multimodal=multimodal,
    ig_delta=[float(x) for x in ig_delta],
    ig_relative_delta_max=float(rel.max()),
    residual_norm=[float(x) for x in np.linalg.norm(h, axis=-1).mean(axis=0)],
  )
  return SteeringVectors(layers, vecs.astype(np.float32), meta)


def caa(
  lm,
  pairs: Sequence[Pair],
  *,
  layers: Sequence[int],
  images: Sequence[Any] | None = None,
  batch_size: int = 16,
) -> SteeringVectors:
  """Contrastive Activation Addition / mean-difference vectors from the same pairs.

  v = mean_i [h(prompt_i + preferred_i) - h(prompt_i + dispreferred_i)] at the last token of the
  residual stream after each chosen layer (Rimsky et al., 2024; Turner et al., 2023). Pairs with
  images (``Pair.image`` or ``images=``) run with the image features merged in.
  """
  layers = tuple(sorted(int(x) for x in layers))
  rows = _check_common(lm, pairs, layers, images)
  diffs = []
  for b in range(0, len(rows), batch_size):
    chunk = rows[b : b + batch_size]
    ims = [im for _, _, im in chunk]
    hp = hidden_last(lm, [p[0] for p, _, _ in chunk], layers, images=ims)
    hn = hidden_last(lm, [n[0] for _, n, _ in chunk], layers, images=ims)
    diffs.append(hp - hn)
  d = np.concatenate(diffs)
  meta = dict(method="caa", source=_source(lm), n_pairs=len(rows))
  return SteeringVectors(layers, d.mean(axis=0).astype(np.float32), meta)


def _source(lm) -> str:
  return str(getattr(lm, "source", None) or lm.config.arch)
