"""Steering the sentiment of stories260K's stories: GrAInS vs CAA vs ITI vs a random direction.

Pairs: a story opening with a happy (preferred) and a sad (dispreferred) continuation, built from
templates (24 fitting pairs). Three disjoint prompt sets use different names and places: the
fitting pairs, a *validation* set (12 openings) on which each method's layer and alpha are chosen,
and a *test* set (48 openings) on which every reported number is measured.

Metrics, one value per test prompt (so every number has a bootstrap interval over prompts and
every comparison is paired on the same prompts):

- ``margin``: log P(happy continuation) - log P(sad continuation) under the (steered) model,
  averaged over three held-out happy and three held-out sad continuations that appear nowhere in
  the fitting pairs. It reads the model's distribution, not a word list, so it cannot be raised by
  repeating a few lexicon words.
- ``sentiment``: greedy generation scored by a small lexicon (positive minus negative words per
  100 words); ``sentiment_specific`` drops the generic words (play, fun, friend(s), good, nice,
  love*) whose repetition dominated an earlier version of this study.
- ``nll``: mean negative log-likelihood per generated token under the *unsteered* model (fluency),
  and ``distinct2``: distinct bigrams / bigrams of the generated text (repetition).

Methods at equal size: GrAInS and CAA vectors and a random Gaussian direction are each rescaled to
unit norm times the layer's mean residual norm (alpha is in units of it for all three). ITI
(Li et al., 2023) is included when ``jaxsteer.iti`` exists (it is being added in another issue).

Selection on validation: for each method, the (layer, alpha > 0) with the largest validation
margin among those whose validation NLL exceeds the unsteered one by at most ``max_nll_increase``
(if none qualifies, the smallest NLL increase).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

import jaxsteer
from experiments import stats
from jaxsteer import grains

POSITIVE = set(
  "happy smiled smile laughed laugh fun love loved loves glad joy great good nice kind friends "
  "friend hug hugged play played fun excited yummy beautiful best proud thanked thank enjoy".split()
)
NEGATIVE = set(
  "sad cried cry crying angry scared afraid hurt bad mean upset lonely broke broken lost sorry "
  "hate hated mad tears fell sick tired worried frightened ugly".split()
)
GENERIC = set("play played fun friend friends good nice love loved loves".split())

NAMES_FIT = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"]
PLACES_FIT = ["in the park", "at home", "at school", "by the lake"]
NAMES_VAL = ["Kim", "Jack", "Zoe", "Leo"]
PLACES_VAL = ["in the yard", "at the zoo", "in the kitchen"]
NAMES_TEST = ["Anna", "Tim", "Lucy", "Sam", "Ella", "Joe", "Rose", "Dan"]
PLACES_TEST = [
  "in the garden", "at the beach", "in the forest", "on the farm", "in the snow", "at the shop",
]  # fmt: skip
HAPPY = ["was very happy and smiled.", "laughed and had fun with a friend.", "felt glad and loved."]
SAD = ["was very sad and cried.", "was angry and felt hurt.", "felt scared and lonely."]
HAPPY_HELD = ["was so happy and sang a song.", "gave mom a big hug.", "jumped with joy."]
SAD_HELD = ["started to cry.", "was upset and wanted to go home.", "sat alone and was sad."]


@dataclasses.dataclass(frozen=True)
class StoriesConfig:
  """Settings (quick/full in ``experiments/grains/config.py``).

  ``max_nll_increase`` 0.5 nats/token: at alpha 1 the earlier full sweep's stories fell apart
  (NLL +1.4 to +7), at alpha 0.2-0.3 they stayed readable (+0.1 to +0.3).
  """

  layers: tuple[int, ...] = (1, 2, 3, 4)
  alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 1.0)
  iti_alphas: tuple[float, ...] = (1.0, 5.0, 15.0)
  max_new_tokens: int = 48
  k: int = 3
  steps: int = 20
  n_pairs: int | None = None  # first n steering pairs (None: all 24)
  n_val: int | None = None  # first n validation prompts (None: all 12)
  n_test: int | None = None  # first n test prompts (None: all 48)
  max_nll_increase: float = 0.5
  seed: int = 0


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z]+", text.lower())


def sentiment(text: str, exclude: set[str] = frozenset()) -> float:
  words = [w for w in _words(text) if w not in exclude]
  if not words:
    return 0.0
  return (
    100.0 * (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / len(words)
  )


def distinct_n(text: str, n: int = 2) -> float:
  """Distinct n-grams / n-grams of the text's words (1.0: no repetition; 0 words: 1.0)."""
  w = _words(text)
  grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 1.0


def make_pairs():
  pairs = []
  for i, name in enumerate(NAMES_FIT):
    for j, place in enumerate(PLACES_FIT):
      prompt = f"{name} was playing {place}. {name}"
      pairs.append(grains.Pair(prompt, HAPPY[(i + j) % 3], SAD[(i + 2 * j) % 3]))
  return pairs


def _openings(names, places):
  return [f"{n} was playing {p}. {n}" for n in names for p in places]


def val_prompts():
  return _openings(NAMES_VAL, PLACES_VAL)


def test_prompts():
  return _openings(NAMES_TEST, PLACES_TEST)


def eval_prompts():  # the test prompts (kept for callers of the earlier version)
  return test_prompts()


def fluency_nll(lm, prompts, continuations) -> np.ndarray:
  """Mean NLL per generated token under the unsteered model, one value per prompt (NaN: none)."""
  out = np.full(len(prompts), np.nan)
  for i, (p, c) in enumerate(zip(prompts, continuations)):
    ids = lm.encode(p)
    cont = lm.encode(p + c)[len(ids) :] if c else []
    if not cont:
      continue
    full = np.asarray([ids + cont])
    lp = np.asarray(jax.nn.log_softmax(lm(full)[0].astype(jnp.float32), -1))
    out[i] = -np.mean([lp[len(ids) + t - 1, tok] for t, tok in enumerate(cont)])
  return out


def continuation_margin(model, lm, prompts) -> np.ndarray:
  """Per prompt: mean log P(held-out happy cont.) - mean log P(held-out sad cont.) under model."""
  rows, meta = [], []
  for i, p in enumerate(prompts):
    n = len(lm.encode(p))
    for sign, conts in ((1.0, HAPPY_HELD), (-1.0, SAD_HELD)):
      for c in conts:
        rows.append(lm.encode(f"{p} {c}"))
        meta.append((i, sign / len(conts), n))
  width = max(len(r) for r in rows)
  ids = np.zeros((len(rows), width), np.int32)  # right padding: causal, never read back
  for r, toks in enumerate(rows):
    ids[r, : len(toks)] = toks
  lp = np.asarray(jax.nn.log_softmax(jnp.asarray(model(ids), jnp.float32), -1))
  out = np.zeros(len(prompts))
  for r, (i, w, n) in enumerate(meta):
    toks = rows[r]
    out[i] += w * sum(lp[r, t - 1, toks[t]] for t in range(n, len(toks)))
  return out


def _scaled(vecs, norms):
  v = vecs.vectors / np.linalg.norm(vecs.vectors, axis=-1, keepdims=True)
  return dataclasses.replace(vecs, vectors=(v * np.asarray(norms)[:, None]).astype(np.float32))


def _random_like(vecs, norms, seed):
  rng = np.random.default_rng(seed)
  rnd = dataclasses.replace(vecs, vectors=rng.normal(size=vecs.vectors.shape).astype(np.float32))
  return _scaled(rnd, norms)


def measure(model, lm, prompts, max_new_tokens, *, generate=True) -> dict:
  """Per-prompt metrics of ``model`` on ``prompts`` (lists; see the module docstring)."""
  out = {"margin": continuation_margin(model, lm, prompts).tolist()}
  if generate:
    texts = model.generate(prompts, max_new_tokens=max_new_tokens)
    out["sentiment"] = [sentiment(t) for t in texts]
    out["sentiment_specific"] = [sentiment(t, GENERIC) for t in texts]
    out["distinct2"] = [distinct_n(t) for t in texts]
    out["nll"] = fluency_nll(lm, prompts, texts).tolist()
    out["example"] = texts[0]
  return out


def _iti_methods(lm, pairs, layer, cfg):
  """ITI steered models per alpha, if ``jaxsteer.iti`` exists; else None and the reason."""
  iti = getattr(jaxsteer, "iti", None)
  if iti is None or not hasattr(iti, "fit"):
    return None, "jaxsteer.iti is not available in this version"
  try:
    fitted = iti.fit(lm, pairs)
    apply = getattr(iti, "steer", None) or jaxsteer.steer
    return {a: apply(lm, fitted, alpha=a) for a in cfg.iti_alphas}, "ok"
  except Exception as e:  # an API this study does not know yet: reported, not hidden
    return None, f"jaxsteer.iti present but not usable here: {type(e).__name__}: {e}"


def _mean(x):
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def run(lm, cfg: StoriesConfig, progress=True) -> dict:
  pairs = make_pairs()[: cfg.n_pairs]
  val = val_prompts()[: cfg.n_val]
  test = test_prompts()[: cfg.n_test]
  T = cfg.max_new_tokens
  base_val = measure(lm, lm, val, T)
  results = {
    "n_pairs": len(pairs), "n_val_prompts": len(val), "n_test_prompts": len(test),
    "unsteered_val": {k: _mean(v) for k, v in base_val.items() if k != "example"},
  }  # fmt: skip
  # Validation sweep: every method, layer and alpha (models kept to re-use on test).
  sweep, models = {}, {}
  iti_status = "not tried"
  for layer in cfg.layers:
    g = grains.fit(lm, pairs, layers=[layer], k=cfg.k, steps=cfg.steps, progress=progress)
    c = grains.caa(lm, pairs, layers=[layer])
    norms = g.metadata["residual_norm"]
    vecs = {
      "grains": _scaled(g, norms),
      "caa": _scaled(c, norms),
      "random": _random_like(g, norms, cfg.seed + layer),
    }
    cands = {(n, layer, a): (lambda v=v, a=a: jaxsteer.steer(lm, v, alpha=a))
             for n, v in vecs.items() for a in cfg.alphas}  # fmt: skip
    if layer == cfg.layers[0]:
      iti_models, iti_status = _iti_methods(lm, pairs, layer, cfg)
      for a, m in (iti_models or {}).items():
        cands[("iti", -1, a)] = lambda m=m: m
    for key, make in cands.items():
      m = make()
      r = measure(m, lm, val, T)
      sweep[key] = {k: _mean(v) for k, v in r.items() if k != "example"}
      models[key] = m
  results["iti"] = iti_status
  base_nll = results["unsteered_val"]["nll"]
  chosen = {}
  for method in sorted({k[0] for k in sweep}):
    keys = [k for k in sweep if k[0] == method]
    ok = [k for k in keys if sweep[k]["nll"] - base_nll <= cfg.max_nll_increase]
    best = (
      max(ok, key=lambda k: sweep[k]["margin"]) if ok else min(keys, key=lambda k: sweep[k]["nll"])
    )
    chosen[method] = best
  results["validation_sweep"] = [
    {"method": k[0], "layer": k[1], "alpha": k[2], **v} for k, v in sweep.items()
  ]
  results["chosen"] = {
    m: {"layer": k[1], "alpha": k[2], "within_nll_budget": sweep[k]["nll"] - base_nll
        <= cfg.max_nll_increase}
    for m, k in chosen.items()
  }  # fmt: skip
  # Test: unsteered and each method at its validation choice, per prompt.
  test_rows = {"unsteered": measure(lm, lm, test, T)}
  for m, k in chosen.items():
    test_rows[m] = measure(models[k], lm, test, T)
  results["test"] = test_rows
  return results


METRICS = ("margin", "sentiment", "sentiment_specific", "nll", "distinct2")


def summarize(results: dict) -> dict:
  """Per method and metric: the test mean with its interval, and the paired difference to the
  unsteered model (both over test prompts)."""
  test = results["test"]
  out = {}
  for m, rows in test.items():
    out[m] = {}
    for metric in METRICS:
      x = np.asarray(rows[metric], np.float64)
      ok = np.isfinite(x) & np.isfinite(np.asarray(test["unsteered"][metric], np.float64))
      out[m][metric] = stats.bootstrap(x[ok]).as_dict()
      if m != "unsteered":
        base = np.asarray(test["unsteered"][metric], np.float64)[ok]
        out[m][f"{metric}_minus_unsteered"] = stats.paired(x[ok], base).as_dict()
  return out


def plot(results, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  summ = summarize(results)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
  rows = results["validation_sweep"]
  for key in sorted({(r["method"], r["layer"]) for r in rows}):
    rr = [r for r in rows if (r["method"], r["layer"]) == key]
    style = "-" if key[0] == "grains" else "--" if key[0] == "caa" else ":"
    lbl = f"{key[0]} L{key[1]}" if key[1] >= 0 else key[0]
    axes[0].plot([r["alpha"] for r in rr], [r["margin"] for r in rr], style, marker="o", label=lbl)
    axes[1].plot([r["alpha"] for r in rr], [r["nll"] for r in rr], style, marker="o", label=lbl)
  axes[0].axhline(results["unsteered_val"]["margin"], color="k", lw=0.8)
  axes[1].axhline(results["unsteered_val"]["nll"], color="k", lw=0.8)
  axes[0].set(xlabel="alpha (validation)", ylabel="margin log P(happy) - log P(sad)")
  axes[1].set(xlabel="alpha (validation)", ylabel="NLL of generated tokens (unsteered)")
  axes[0].legend(fontsize=6, ncol=2)
  names = list(summ)
  vals = [summ[n]["margin"]["value"] for n in names]
  err = np.abs(np.asarray([summ[n]["margin"]["ci"] for n in names]).T - np.asarray(vals))
  axes[2].bar(names, vals, yerr=err, capsize=4, color="tab:blue")
  axes[2].set(ylabel="test margin (95% CI)", title="test prompts, validation-chosen settings")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
