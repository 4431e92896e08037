"""GrAInS: attribution-guided steering vectors (Nguyen et al., 2025, arXiv:2507.18043).

1. Contrastive Integrated Gradients scores every token of ``prompt + preferred`` and
   ``prompt + dispreferred`` for the objective log P(preferred | prompt) - log P(dispreferred | prompt)
   (one IG pass per pair serves both selections below).
2. Per sequence, the k most positive and the k most negative candidate tokens are masked (their
   embeddings replaced by the IG baseline, or their ids by the pad id).
3. The deltas h(s) - h(mask(s)) of the last token's residual stream after each chosen decoder layer,
   captured by interception, are aggregated over pairs (the mean, or the sign-aligned first
   principal component) into v+ (preferred sequences, positive masks) and v- (dispreferred
   sequences, negative masks); ``mode="both"`` gives v = v+ - v-.
4. ``jaxsteer.steer(lm, vectors, alpha)`` applies them with the per-token norm preserved.

The corrections of the released code (spec section 2.10) are the defaults: teacher-forced response
log-likelihood (B1), per-token renormalisation (B2), sign-aligned PCA (B4), residual-stream capture
(B6), a single IG pass (B10), IG run to convergence (section 2.10.2). The selection and aggregation
defaults come from a measurement (see ``fit``); ``pairing="pooled"``, ``aggregate="pca"`` and
``mask_with="pad"`` give the released code's aggregation and masking.

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
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsteer._src.attribution import (
  DEFAULT_MAX_STEPS,
  DEFAULT_RTOL,
  DEFAULT_STEPS,
  IGResult,
  baseline_embeddings,
  check_ids,
  check_ig_options,
  contrastive_batches,
  encode_pair,
  input_embeddings,
  pow2_width,
)
from jaxsteer._src.compile_options import jit
from jaxsteer._src.distributed import to_host
from jaxsteer._src.fileio import atomic_path
from jaxsteer._src.models.lm import apply_intercepted
from jaxsteer._src.models.modules import DecoderLayer, layer_of


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


PCA_MIN_T = 2.0  # |t| of the mean projection on PC1 below this: the PC's sign is a coin flip


def aggregate_pca_checked(deltas: np.ndarray) -> tuple[np.ndarray, dict]:
  """``aggregate_pca`` with a check that its sign can be trusted, and its statistics.

  The first principal component of the centred deltas is oriented along the mean delta. With few
  pairs (or deltas whose mean is small against their spread) the projection of the mean on PC1 is
  not significant and the orientation is arbitrary: when ``|t| < 2`` for
  ``t = mean(p) / (std(p) / sqrt(N))``, ``p`` the deltas' projections on PC1, the unit-normalised
  mean is returned instead (``fallback: "mean"``). The explained-variance ratio of PC1 is recorded.
  """
  d = np.asarray(deltas, np.float64)
  n = d.shape[0]
  mean = d.mean(axis=0)
  centred = d - mean
  _, sv, vt = np.linalg.svd(centred, full_matrices=False)
  total = float(np.sum(sv**2))
  evr = float(sv[0] ** 2 / total) if total > 0 else 0.0
  v = vt[0]
  if float(v @ mean) < 0:
    v = -v
  p = d @ v
  sd = float(np.std(p, ddof=1)) if n > 1 else 0.0
  t = float(np.mean(p) / (sd / np.sqrt(n))) if sd > 0 else (np.inf if np.mean(p) > 0 else 0.0)
  stats = dict(explained_variance=evr, t=t, n=int(n), fallback=None)
  if not abs(t) >= PCA_MIN_T:
    norm = float(np.linalg.norm(mean))
    if norm > 0:
      v = mean / norm
      stats["fallback"] = "mean"
  return v.astype(np.float32), stats


AGGREGATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
  "mean": aggregate_mean,
  "pca": aggregate_pca,
}


# ------------------------------------------------------------------------------------------------
# Steering vectors: a small container saved as one safetensors file.

FORMAT = "jaxsteer.SteeringVectors/2"
_LEGACY_FORMAT = "jaxsteer.SteeringVectors/1"  # a directory: orbax arrays + metadata.json


def _is_legacy_save(path: pathlib.Path) -> bool:
  """Whether ``path`` is a directory written by the orbax-based ``save`` (format 1)."""
  meta = path / "metadata.json"
  if not (path.is_dir() and meta.is_file() and (path / "arrays").is_dir()):
    return False
  try:
    return json.loads(meta.read_text()).get("format") == _LEGACY_FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def _is_safetensors_save(path: pathlib.Path) -> bool:
  """Whether ``path`` is a file written by ``save`` (its header names our format)."""
  if not path.is_file():
    return False
  try:
    with open(path, "rb") as fh:
      n = int.from_bytes(fh.read(8), "little")
      if not 0 < n <= 1 << 24:
        return False
      header = json.loads(fh.read(n))
    return header.get("__metadata__", {}).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def is_steering_vectors_save(path) -> bool:
  """Whether ``path`` holds a ``SteeringVectors`` save (safetensors file or legacy directory)."""
  path = pathlib.Path(path)
  return _is_safetensors_save(path) or _is_legacy_save(path)


@dataclasses.dataclass(frozen=True)
class SteeringVectors:
  """Steering vectors per decoder layer, with how they were made.

  Attributes:
    layers: decoder-layer indices (sorted).
    vectors: (len(layers), D) float32, finite.
    metadata: JSON-able description (source model, k, steps, method, ...).

  Vectors combine: ``a + b``, ``a - b`` (same layers and width), ``c * a``, ``-a``, ``a / c`` and
  ``a.normalized()`` (unit norm per layer).
  """

  layers: tuple[int, ...]
  vectors: np.ndarray
  metadata: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    v = np.asarray(self.vectors, np.float32)
    if v.ndim != 2 or v.shape[0] != len(self.layers):
      raise ValueError(f"vectors must be (len(layers)={len(self.layers)}, D); got {v.shape}")
    bad = ~np.isfinite(v).all(axis=-1)
    if bad.any():
      raise ValueError(
        "steering vectors contain NaN or infinite values (layers "
        f"{[int(x) for x in np.asarray(self.layers)[bad]]})"
      )
    object.__setattr__(self, "vectors", v)
    object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
    if len(set(self.layers)) != len(self.layers):
      raise ValueError(f"duplicate layers {self.layers}")

  def __getitem__(self, layer: int) -> np.ndarray:
    return self.vectors[self.layers.index(layer)]

  # -- arithmetic --------------------------------------------------------------------------------
  def _combine(self, other, sign: float, op: str) -> SteeringVectors:
    if not isinstance(other, SteeringVectors):
      return NotImplemented
    if other.layers != self.layers or other.vectors.shape != self.vectors.shape:
      raise ValueError(
        f"cannot {op} steering vectors of layers {self.layers} (width {self.vectors.shape[1]}) "
        f"and layers {other.layers} (width {other.vectors.shape[1]})"
      )
    meta = dict(method=op, operands=[self.metadata, other.metadata])
    return SteeringVectors(self.layers, self.vectors + sign * other.vectors, meta)

  def __add__(self, other):
    return self._combine(other, 1.0, "add")

  def __sub__(self, other):
    return self._combine(other, -1.0, "subtract")

  def __mul__(self, c):
    if isinstance(c, SteeringVectors) or not np.isscalar(c) and np.ndim(c) != 0:
      return NotImplemented
    c = float(c)
    if not np.isfinite(c):
      raise ValueError(f"cannot scale steering vectors by {c}")
    meta = dict(method="scale", factor=c, operands=[self.metadata])
    return SteeringVectors(self.layers, self.vectors * np.float32(c), meta)

  __rmul__ = __mul__

  def __truediv__(self, c):
    c = float(c)
    if c == 0 or not np.isfinite(c):
      raise ValueError(f"cannot divide steering vectors by {c}")
    return self * (1.0 / c)

  def __neg__(self):
    return self * -1.0

  def normalized(self) -> SteeringVectors:
    """Each layer's vector scaled to unit L2 norm (a zero vector is an error)."""
    n = np.linalg.norm(self.vectors.astype(np.float64), axis=-1, keepdims=True)
    if (n == 0).any():
      zero = [lay for lay, z in zip(self.layers, (n[:, 0] == 0)) if z]
      raise ValueError(f"cannot normalise a zero steering vector (layers {zero})")
    meta = dict(method="normalized", operands=[self.metadata])
    return SteeringVectors(self.layers, (self.vectors / n).astype(np.float32), meta)

  # -- persistence -------------------------------------------------------------------------------
  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes one safetensors file at ``path`` (atomically, with ``fileio.atomic_path``).

    Tensors ``vectors`` (L, D) float32 and ``layers`` (L,) int32; the header's ``__metadata__``
    holds ``format``, ``layers`` and ``metadata`` (JSON), so PyTorch's
    ``safetensors.safe_open(path, "pt").metadata()`` reads it. An existing ``path`` is replaced only
    when it is itself a ``SteeringVectors`` save (a file, or a directory of the earlier orbax
    format) or an empty directory; anything else is refused with ``FileExistsError`` and left untouched.
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(path).absolute()
    empty_dir = path.is_dir() and not any(path.iterdir())
    if path.exists() and not empty_dir and not is_steering_vectors_save(path):
      kind = "directory" if path.is_dir() else "file"
      raise FileExistsError(
        f"{path} exists and is not a SteeringVectors save ({kind}); refusing to overwrite it"
      )
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
      "format": FORMAT,
      "layers": json.dumps(list(self.layers)),
      "metadata": json.dumps(self.metadata, default=_jsonable),
    }
    tensors = {"vectors": self.vectors, "layers": np.asarray(self.layers, np.int32)}
    with atomic_path(path) as tmp:
      save_file(tensors, str(tmp), metadata=header)
      if path.is_dir():  # an earlier orbax save (ours to replace) or an empty directory
        shutil.rmtree(path) if not empty_dir else path.rmdir()
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> SteeringVectors:
    """Reads a ``save`` file, or a directory written by the earlier orbax-based ``save``."""
    path = pathlib.Path(path).absolute()
    if path.is_file():
      if not _is_safetensors_save(path):
        raise FileNotFoundError(f"no saved SteeringVectors at {path} (not our safetensors file)")
      from safetensors import safe_open

      with safe_open(str(path), "numpy") as fh:
        header = fh.metadata()
        vectors = fh.get_tensor("vectors")
      return cls(tuple(json.loads(header["layers"])), vectors, json.loads(header["metadata"]))
    if _is_legacy_save(path):
      return cls._load_orbax(path)
    raise FileNotFoundError(f"no saved SteeringVectors at {path}")

  @classmethod
  def _load_orbax(cls, path: pathlib.Path) -> SteeringVectors:
    import orbax.checkpoint as ocp

    meta = json.loads((path / "metadata.json").read_text())
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    tree = ckptr.restore(path / "arrays")
    layers = tuple(int(x) for x in np.asarray(tree["layers"]))
    meta.pop("format", None)
    meta.pop("layers", None)
    return cls(layers, np.asarray(tree["vectors"]), meta)

  def _save_orbax(self, path) -> pathlib.Path:
    """The earlier (format 1) directory save; kept to test that old saves still load."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    path.mkdir(parents=True)
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    tree = {"vectors": self.vectors, "layers": np.asarray(self.layers, np.int32)}
    ckptr.save(path / "arrays", args=ocp.args.StandardSave(tree))
    meta = dict(self.metadata, layers=list(self.layers), format=_LEGACY_FORMAT)
    (path / "metadata.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
    return path


def _jsonable(x):
  if isinstance(x, np.generic | np.ndarray):
    return x.tolist()
  return str(x)


# ------------------------------------------------------------------------------------------------
# Capturing residual-stream outputs through interception.


@dataclasses.dataclass(frozen=True)
class CaptureInterceptor:
  """Sows the output of the chosen ``DecoderLayer``s into ``intermediates/layers_i/residual``.

  Scanned layers (``ModelConfig.scan_layers``) sow every layer's output into
  ``intermediates/layers/residual`` with a leading layer axis; ``_sown_residuals`` splits it.
  """

  layers: tuple[int, ...]

  def __call__(self, _args=None):
    chosen = set(self.layers)

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      m = context.module
      if context.method_name == "__call__" and isinstance(m, DecoderLayer):
        layer = layer_of(m, args, kwargs)
        if layer is not None and (not isinstance(layer, int) or layer in chosen):
          m.sow("intermediates", "residual", out)
      return out

    return interceptor


def _sown_residuals(tree) -> dict:
  """``{"layers_i": residual}`` from an intermediates tree, wherever the decoder sits in it (the
  top level for a ``CausalLM``, ``language_model`` for a VLM; ``layers`` holds a scanned
  decoder's stacked outputs)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and "residual" in value:
      if key == "layers":  # scanned: (L, B, T, D)
        stacked = value["residual"][0]
        out.update({f"layers_{i}": stacked[i] for i in range(stacked.shape[0])})
      else:
        out[key] = value["residual"][0]
    elif isinstance(value, dict):
      out.update(_sown_residuals(value))
  return out


@functools.partial(jit, kind="forward", static_argnames=("module", "factory", "layers"))
def capture_last(module, factory, params, args, embeds, mask, last, layers):
  """Residual stream (B, len(layers), D) after each layer in ``layers`` at position ``last``."""
  with nn.intercept_methods(CaptureInterceptor(layers)()):
    _, state = apply_intercepted(
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


def _capture_variants(lm, rows, layers, mask_sets, mask_with, baseline, images, batch_rows=None):
  """``hidden_last`` of ``rows`` under each entry of ``mask_sets`` (``None``: unmasked).

  Rows run in batches of exactly ``batch_rows`` (default: all at once; a short batch is padded
  with copies) at power-of-two widths, so repeated calls compile nothing new. The input sequence
  (for a VLM: the vision tower and projector) and the masking vector are computed once per batch
  and shared by every variant.
  """
  n = len(rows)
  batch_rows = int(batch_rows or n)
  images = list(images) if images is not None else [None] * n
  f, a = lm.intercept
  out = [[] for _ in mask_sets]
  for b0 in range(0, n, batch_rows):
    sel = list(range(b0, min(n, b0 + batch_rows)))
    sel = sel + [sel[-1]] * (batch_rows - len(sel))
    width = pow2_width(max(len(rows[i]) for i in sel), lm.config.max_position_embeddings)
    ids = np.full((batch_rows, width), lm.pad_id, np.int32)
    attn = np.zeros((batch_rows, width), np.int32)
    for j, i in enumerate(sel):
      ids[j, : len(rows[i])] = rows[i]
      attn[j, : len(rows[i])] = 1
    emb = input_embeddings(lm, ids, [images[i] for i in sel])
    base = None
    last = jnp.asarray([len(rows[i]) - 1 for i in sel], jnp.int32)
    for v, masks in enumerate(mask_sets):
      x = emb
      if masks is not None:
        drop = np.zeros(ids.shape, bool)
        for j, i in enumerate(sel):
          drop[j, : len(masks[i])] = masks[i]
        if base is None:
          kind = "pad" if mask_with == "pad" else baseline
          base = baseline_embeddings(lm, ids, kind).astype(emb.dtype)
        x = jnp.where(jnp.asarray(drop)[..., None], base, emb)
      h = capture_last(lm.module, f, lm.params, a, x, jnp.asarray(attn), last, tuple(layers))
      # to_host: the output may span processes (multi-process meshes)
      out[v].append(to_host(h)[: min(batch_rows, n - b0)])
  return [np.concatenate(o) for o in out]


# ------------------------------------------------------------------------------------------------
# fit / caa

# Chosen from the measurement quoted in ``fit``'s docstring.
DEFAULT_CANDIDATES = "all"
DEFAULT_AGGREGATE = "mean"
DEFAULT_PAIRING = "matched"
PAIRINGS = ("pooled", "matched")


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
      check_ids(lm, ids)
    rows.append((pos[:2], neg[:2], pos[2]))
  return rows


def special_ids(lm) -> set[int]:
  """BOS, pad and every EOS id of ``lm`` (config and tokenizer; ``eos_token_id`` may be a list)."""
  out = set()
  cfg, tok = lm.config, getattr(lm, "tokenizer", None)
  for src, names in (
    (cfg, ("bos_token_id", "eos_token_id", "eos_token_ids", "pad_token_id")),
    (tok, ("bos_id", "eos_id", "eos_ids", "pad_id")),
  ):
    for name in names:
      v = getattr(src, name, None) if src is not None else None
      if v is None:
        continue
      for t in np.atleast_1d(np.asarray(v, dtype=object)).tolist():
        if t is not None and int(t) >= 0:
          out.add(int(t))
  return out


def _cand_prompt(ids, prompt_len):
  c = np.zeros(len(ids), bool)
  c[:prompt_len] = True
  return c


def _cand_response(ids, prompt_len):
  c = np.zeros(len(ids), bool)
  c[prompt_len:] = True
  return c


def _cand_all(ids, prompt_len):
  return np.ones(len(ids), bool)


# Candidate rules (registry): (ids, prompt_len) -> bool mask; special tokens are always excluded.
CANDIDATES: dict[str, Callable[[Sequence[int], int], np.ndarray]] = {
  "prompt": _cand_prompt,
  "response": _cand_response,
  "all": _cand_all,
}


def _candidates(ids, prompt_len, rule, specials):
  if rule not in CANDIDATES:
    raise ValueError(f"unknown candidates rule {rule!r}; known: {', '.join(CANDIDATES)}")
  c = CANDIDATES[rule](ids, prompt_len)
  return c & ~np.isin(np.asarray(ids), sorted(specials))


def _top(scores, cand, k, largest):
  s = np.where(cand, scores, -np.inf if largest else np.inf)
  order = np.argsort(-s if largest else s, kind="stable")[: min(k, int(cand.sum()))]
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
  steps: int = DEFAULT_STEPS,
  max_steps: int | None = DEFAULT_MAX_STEPS,
  rtol: float = DEFAULT_RTOL,
  on_unconverged: str = "raise",
  aggregate: str = DEFAULT_AGGREGATE,
  mode: str | None = None,
  candidates: str = DEFAULT_CANDIDATES,
  mask_with: str = "baseline",
  baseline: str = "pad",
  reduce: str = "sum",
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
  batch_size: int = 8,
  progress: bool = True,
  attributions: IGResult | None = None,
  pairing: str = DEFAULT_PAIRING,
) -> SteeringVectors:
  """Fits GrAInS steering vectors.

  Defaults from a measurement (``benchmarks/grains_defaults.py``; README "Choosing GrAInS
  defaults"): stories260K, 12 pairs that share a story opening and differ only in the response
  (happy vs sad sentence), layer 3, converged IG (16-128 points, error <= 4.6 %), change of the
  held-out margin log P(happy) - log P(sad) over 6 other openings (base +1.15 nats) at alpha
  -2 / +2 / +8 (a right-signed vector gives - / + / ++), and the cosine with CAA's vector:

    candidates/aggregate/pairing/mode   cos(CAA)   alpha -2    +2      +8
    all/mean/matched/both  (default)     +0.91     -4.13    +3.15   +11.18
    prompt/mean/matched/both             +0.68     -1.18    +1.00    +3.48
    prompt/mean/pooled/both              +0.64     -0.57    +0.58    +2.34
    prompt/pca/matched/both              +0.21     -0.53    +0.37    +1.38
    all/pca/pooled/both    (earlier)     -0.71     +0.82    -0.84    -3.54
    response/pca/pooled/both             -0.84     +0.55    -0.55    -2.20
    prompt/pca/pooled/both (earlier)     -0.03     +1.29    -0.80    -1.65
    any mode=pos (v+ alone)              <= -0.06   wrong sign at +2 or +8 in all 12 settings
    CAA (same pairs)                     +1.00     -6.11    +4.53   +13.07

  ``pooled`` takes v+ and v- over both sequences of each pair; on shared-prompt pairs the
  dispreferred sequence's "positive" tokens and the preferred one's "negative" tokens carry
  little, and their deltas turned the vector around. ``matched`` takes v+ from the preferred
  sequences (their most positive tokens masked) and v- from the dispreferred ones (their most
  negative tokens masked). v+ alone (``mode="pos"``) is dominated by what masking any tokens does
  and steered the wrong way in every setting.

  Re-measured on the GrAInS studies' own validation data (``benchmarks/grains_defaults_studies.py``,
  ``benchmarks/results/grains_defaults_studies.json``; ``pairing="matched"``, vectors scaled to the
  layer's mean residual norm as the studies do; change against unsteered with a 95 % paired
  bootstrap interval):

  - stories260K study (24 fitting pairs, 12 validation openings, held-out-continuation margin):
    ``all/mean/both`` (the default) moves the margin most at every layer (2, 3) and alpha (0.1,
    0.3, 0.5), e.g. +3.86 [3.65, 4.10] nats at layer 3, alpha 0.3 (``prompt/mean/both`` +3.35,
    CAA +3.63, ``prompt/pca/both`` -0.12, ``all/pca/both`` -2.84); every ``mode="pos"`` setting
    lowers it (-0.2 to -7.3). The intervals are against unsteered, not paired between settings.
  - synthetic trigger task (2 seeds x 256 validation items, accuracy over four groups, unsteered
    0.75): no setting, and not CAA, raises it; all eight settings change it by -0.125
    [-0.30, 0.00] at alpha 4 and 8; at 16 ``pca/both`` loses least (-0.125) and the default
    ``mean/both`` most (-0.25 [-0.32, -0.18]; ``pos`` -0.23). The task does not favour the
    default; at the alphas the study chooses from, it does not separate the settings.
  - toy LLaVA study (one seed, 24 triggered + 24 clean validation items, hallucination rate over
    both, unsteered 0.5: 1.0 triggered, 0.0 clean; lower is better): at alpha 1
    ``prompt/pca/pos`` lowers it most, -0.35 [-0.50, -0.23], then CAA -0.21 [-0.33, -0.10] and
    ``prompt/pca/both`` -0.17 [-0.31, -0.08]; the default ``all/mean/both`` changes it by +0.06
    [-0.10, +0.23] (no help), and at alpha 2-3 nothing helps. This study prefers another
    setting (the released VLM scripts' ``mode="pos"``, prompt tokens, PCA).

  The defaults stay: they are best where the settings separate on text (stories), the synthetic
  task separates nothing, and the VLM study's preference rests on one seed and 48 items; for
  image + text pairs, try ``candidates="prompt", aggregate="pca", mode="pos"`` on validation data.

  Args:
    lm: a ``LanguageModel``.
    pairs: ``Pair(prompt, preferred, dispreferred[, image])`` items (text, or token ids).
    layers: decoder layers whose residual output gets a vector.
    images: for a VLM, one image (or list of images, or ``None``) per pair, instead of
      ``Pair.image``. Image patch tokens are attributed, selected and masked like text tokens; a
      masked image token's projected feature is replaced by the baseline.
    k: tokens masked per sequence and sign (default 10 for language models; 50 when the pairs have
      images, the paper's VLM setting, as VLM sequences hold hundreds of image tokens); a sequence
      with fewer candidates masks all of them.
    steps: the starting number of IG points, doubled per batch up to ``max_steps`` until every
      sequence's completeness error is at most ``rtol`` of its objective change.
    on_unconverged: at the cap, ``raise`` (``IGConvergenceError`` naming the pair, its error and
      the points), ``warn`` or ``ignore``. Points and errors per pair go into the metadata.
    method, chunk_size: the quadrature rule and the points evaluated together (default: all of
      ``steps`` up to 32, else 16).
    aggregate: ``mean`` (default) or ``pca`` (sign-aligned first PC, unit norm; falls back to the
      normalised mean when the PC's sign is not significant, see ``aggregate_pca_checked``; the
      explained variance is recorded in ``metadata["aggregation"]``).
    mode: ``both`` (v+ - v-, default, also with images) or ``pos`` (v+, the released VLM
      scripts' choice, wrong-signed in the measurement above).
    candidates: ``all`` (default), ``prompt`` or ``response`` tokens; special tokens (BOS, pad,
      every EOS id) are never candidates.
    pairing: ``matched`` (default: v+ from the preferred sequences, v- from the dispreferred) or
      ``pooled`` (both from both sequences, the earlier behaviour).
    mask_with: ``baseline`` (the IG baseline's embedding) or ``pad`` (the pad id, as released).
    baseline: the IG baseline, ``pad`` (default: the pad/EOS embedding, so IG attributes exactly
      the change that masking makes), ``zeros`` (the paper's) or ``mean``.
    reduce: response log-likelihood ``sum`` or per-token ``mean``.
    batch_size: pairs per IG batch (the last batch is padded to it: no recompiles).
    progress: show a progress bar.
    attributions: the ``IGResult`` of an earlier fit on the same pairs and IG settings
      (``fit(...).metadata`` does not hold it; see ``attribute_pairs``), to try several selection
      and aggregation settings without recomputing IG.

  Returns:
    ``SteeringVectors`` with metadata (per-pair IG points and completeness errors, PCA explained
    variance, the mean residual norm over all pairs).
  """
  if aggregate not in AGGREGATORS:
    raise ValueError(f"unknown aggregate {aggregate!r}; known: {', '.join(AGGREGATORS)}")
  if candidates not in CANDIDATES:
    raise ValueError(f"unknown candidates rule {candidates!r}; known: {', '.join(CANDIDATES)}")
  check_ig_options(steps, steps if max_steps is None else max_steps, rtol, on_unconverged)
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  layers = tuple(sorted(int(x) for x in layers))
  rows = _check_common(lm, pairs, layers, images)
  multimodal = any(im is not None for _, _, im in rows)
  if k is None:
    k = 50 if multimodal else 10
  if mode is None:
    mode = "both"
  if mode not in ("both", "pos"):
    raise ValueError(f"mode must be 'both' or 'pos', got {mode!r}")
  if mask_with not in ("baseline", "pad"):
    raise ValueError(f"mask_with must be 'baseline' or 'pad', got {mask_with!r}")
  if pairing not in PAIRINGS:
    raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}")
  if int(k) < 1:
    raise ValueError(f"k must be positive, got {k}")
  specials = special_ids(lm)
  cands = []
  for i, (pos, neg, _) in enumerate(rows):
    cs = [_candidates(ids, n, candidates, specials) for ids, n in (pos, neg)]
    if any(c.sum() == 0 for c in cs):
      raise ValueError(
        f"pair {i} has no candidate tokens under candidates={candidates!r} (special tokens are "
        "never candidates); use another rule"
      )
    cands.append(cs)

  batch_size = int(min(batch_size, len(rows)))
  ig = attributions
  if ig is None:
    ig = _attribute_rows(
      lm, rows, steps=steps, max_steps=max_steps, rtol=rtol, method=method,
      chunk_size=chunk_size, reduce=reduce, baseline=baseline, batch_size=batch_size,
      on_unconverged=on_unconverged, progress=progress,
    )  # fmt: skip
  elif len(ig.steps) != len(rows):
    raise ValueError(f"attributions cover {len(ig.steps)} pairs, not {len(rows)}")

  seqs, ims, m_pos, m_neg = [], [], [], []
  for i, ((pi, ni, im), (cp, cn)) in enumerate(zip(rows, cands)):
    for (ids, _), sc, c in ((pi, ig.scores_pos[i], cp), (ni, ig.scores_neg[i], cn)):
      seqs.append(ids)
      ims.append(im)
      m_pos.append(_top(sc, c, k, largest=True))
      m_neg.append(_top(sc, c, k, largest=False))
  variants = [None, m_pos] + ([m_neg] if mode == "both" else [])
  h, *masked = _capture_variants(
    lm, seqs, layers, variants, mask_with, baseline, ims, batch_rows=2 * batch_size
  )
  d_pos = h - masked[0]  # (2N, L, D): rows alternate preferred, dispreferred sequence
  d_neg = h - masked[1] if mode == "both" else None
  if pairing == "matched":  # v+ from the preferred sequences, v- from the dispreferred ones
    d_pos = d_pos[0::2]
    d_neg = d_neg[1::2] if d_neg is not None else None
  agg = AGGREGATORS[aggregate]
  info = {}
  v_pos = np.stack([_agg(agg, d_pos[:, j], info, f"pos/{lay}") for j, lay in enumerate(layers)])
  vecs = v_pos
  if mode == "both":
    v_neg = np.stack([_agg(agg, d_neg[:, j], info, f"neg/{lay}") for j, lay in enumerate(layers)])
    vecs = v_pos - v_neg
  meta = dict(
    method="grains",
    source=_source(lm),
    k=int(k),
    steps=int(steps),
    max_steps=int(steps if max_steps is None else max_steps),
    rtol=float(rtol),
    quadrature=method,
    aggregate=aggregate,
    mode=mode,
    candidates=candidates,
    pairing=pairing,
    mask_with=mask_with,
    baseline=baseline,
    reduce=reduce,
    n_pairs=len(rows),
    multimodal=multimodal,
    ig_steps=[int(x) for x in ig.steps],
    ig_rel_error=[float(x) for x in ig.rel_error],
    ig_converged=[bool(x) for x in ig.converged],
    ig_delta=[float(x) for x in ig.delta],
    ig_relative_delta_max=float(ig.rel_error.max()),
    aggregation=info,
    residual_norm=[float(x) for x in np.linalg.norm(h, axis=-1).mean(axis=0)],
  )
  return SteeringVectors(layers, vecs.astype(np.float32), meta)


def _attribute_rows(lm, rows, *, batch_size, progress, **kw):
  bar = tqdm(
    total=-(-len(rows) // batch_size), desc="GrAInS IG", disable=not progress, unit="batch"
  )
  try:
    return contrastive_batches(
      lm, [p for p, _, _ in rows], [q for _, q, _ in rows], images=[im for _, _, im in rows],
      batch_size=batch_size, progress=bar, **kw,
    )  # fmt: skip
  finally:
    bar.close()


def attribute_pairs(
  lm,
  pairs: Sequence[Pair],
  *,
  images=None,
  steps: int = DEFAULT_STEPS,
  max_steps: int | None = DEFAULT_MAX_STEPS,
  rtol: float = DEFAULT_RTOL,
  on_unconverged: str = "raise",
  baseline: str = "pad",
  reduce: str = "sum",
  method: str = "gauss_legendre",
  chunk_size: int | None = None,
  batch_size: int = 8,
  progress: bool = False,
) -> IGResult:
  """The converged contrastive IG of ``pairs`` that ``fit`` computes (for ``fit(attributions=)``)."""
  check_ig_options(steps, steps if max_steps is None else max_steps, rtol, on_unconverged)
  rows = _check_common(lm, pairs, (0,), images)
  return _attribute_rows(
    lm, rows, steps=steps, max_steps=max_steps, rtol=rtol, method=method, chunk_size=chunk_size,
    reduce=reduce, baseline=baseline, batch_size=int(min(batch_size, len(rows))),
    on_unconverged=on_unconverged, progress=progress,
  )  # fmt: skip


def _agg(agg, deltas, info, key):
  if agg is aggregate_pca:
    v, stats = aggregate_pca_checked(deltas)
    info[key] = stats
    return v
  return agg(deltas)


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
