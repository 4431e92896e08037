"""Steering the sentiment of stories260K's generated stories (GrAInS vs CAA vs unsteered).

Pairs: a story opening with a happy (preferred) and a sad (dispreferred) continuation, built from
templates. Held-out openings use other names and places. For each method, layer and alpha we
generate greedily and score the text with a small sentiment lexicon (positive minus negative words
per 100 words), and measure fluency as the mean negative log-likelihood of the generated tokens
under the *unsteered* model. Vectors are scaled to the layer's mean residual norm (alpha is in
units of the activation norm for both methods).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

import jaxsteer
from jaxsteer import grains

POSITIVE = set(
  "happy smiled smile laughed laugh fun love loved loves glad joy great good nice kind friends "
  "friend hug hugged play played fun excited yummy beautiful best proud thanked thank enjoy".split()
)
NEGATIVE = set(
  "sad cried cry crying angry scared afraid hurt bad mean upset lonely broke broken lost sorry "
  "hate hated mad tears fell sick tired worried frightened ugly".split()
)

NAMES_FIT = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"]
NAMES_EVAL = ["Anna", "Tim", "Lucy", "Sam"]
PLACES_FIT = ["in the park", "at home", "at school", "by the lake"]
PLACES_EVAL = ["in the garden", "at the beach", "in the forest"]
HAPPY = ["was very happy and smiled.", "laughed and had fun with a friend.", "felt glad and loved."]
SAD = ["was very sad and cried.", "was angry and felt hurt.", "felt scared and lonely."]


@dataclasses.dataclass(frozen=True)
class StoriesConfig:
  layers: tuple[int, ...] = (1, 2, 3, 4)
  alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
  max_new_tokens: int = 48
  k: int = 3
  steps: int = 20
  n_pairs: int | None = None  # first n steering pairs (None: all 24)
  n_prompts: int | None = None  # first n held-out prompts (None: all 12)


def sentiment(text: str) -> float:
  words = re.findall(r"[a-z]+", text.lower())
  if not words:
    return 0.0
  return (
    100.0 * (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / len(words)
  )


def make_pairs():
  pairs = []
  for i, name in enumerate(NAMES_FIT):
    for j, place in enumerate(PLACES_FIT):
      prompt = f"{name} was playing {place}. {name}"
      pairs.append(grains.Pair(prompt, HAPPY[(i + j) % 3], SAD[(i + 2 * j) % 3]))
  return pairs


def eval_prompts():
  return [f"{n} was playing {p}. {n}" for n in NAMES_EVAL for p in PLACES_EVAL]


def fluency_nll(lm, prompts, continuations) -> float:
  """Mean NLL per generated token under the unsteered model."""
  total, count = 0.0, 0
  for p, c in zip(prompts, continuations):
    ids = lm.encode(p)
    cont = lm.encode(p + c)[len(ids) :] if c else []
    if not cont:
      continue
    full = np.asarray([ids + cont])
    lp = np.asarray(jax.nn.log_softmax(lm(full)[0].astype(jnp.float32), -1))
    total -= sum(lp[len(ids) + t - 1, tok] for t, tok in enumerate(cont))
    count += len(cont)
  return total / max(count, 1)


def _scaled(vecs, norms):
  v = vecs.vectors / np.linalg.norm(vecs.vectors, axis=-1, keepdims=True)
  return dataclasses.replace(vecs, vectors=(v * np.asarray(norms)[:, None]).astype(np.float32))


def run(lm, cfg: StoriesConfig, progress=True) -> dict:
  pairs = make_pairs()[: cfg.n_pairs]
  prompts = eval_prompts()[: cfg.n_prompts]

  def measure(model):
    texts = model.generate(prompts, max_new_tokens=cfg.max_new_tokens)
    return {
      "sentiment": float(np.mean([sentiment(t) for t in texts])),
      "nll": float(fluency_nll(lm, prompts, texts)),
      "example": texts[0],
    }

  results = {"unsteered": measure(lm), "n_pairs": len(pairs), "n_eval_prompts": len(prompts)}
  sweeps = {}
  for layer in cfg.layers:
    g = grains.fit(lm, pairs, layers=[layer], k=cfg.k, steps=cfg.steps, progress=progress)
    c = grains.caa(lm, pairs, layers=[layer])
    norms = g.metadata["residual_norm"]
    for name, vecs in (("grains", _scaled(g, norms)), ("caa", _scaled(c, norms))):
      rows = [dict(alpha=a, **measure(jaxsteer.steer(lm, vecs, alpha=a))) for a in cfg.alphas]
      sweeps[f"{name}_layer{layer}"] = rows
  results["sweeps"] = sweeps
  return results


def plot(results, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  for key, rows in sorted(results["sweeps"].items()):
    al = [r["alpha"] for r in rows]
    style = "-" if key.startswith("grains") else "--"
    a1.plot(al, [r["sentiment"] for r in rows], style, marker="o", label=key)
    a2.plot(al, [r["nll"] for r in rows], style, marker="o", label=key)
  a1.axhline(results["unsteered"]["sentiment"], color="k", lw=0.8)
  a2.axhline(results["unsteered"]["nll"], color="k", lw=0.8)
  a1.set_xlabel("alpha (x mean residual norm)")
  a1.set_ylabel("sentiment (pos - neg words per 100)")
  a2.set_xlabel("alpha")
  a2.set_ylabel("NLL of generated tokens (unsteered model)")
  a1.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
