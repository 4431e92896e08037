"""Steering goes the right way: library defaults on stories260K with this test's own pairs.

Pairs share a story opening and differ only in the continuation (happy vs sad sentence), the
common case of preference pairs. On held-out openings, positive alpha must raise the mean margin
log P(happy) - log P(sad) and negative alpha lower it, for GrAInS and CAA. A vector with the
wrong sign (e.g. ``masked - h`` for ``h - masked`` in ``grains.fit``) fails both directions.
"""

import numpy as np
import pytest

import jaxsteer
from jaxsteer import grains
from jaxsteer._src.evals.truthfulqa import loglikelihoods

OPENINGS = [
  "Lily went to the park.",
  "Tom had a red ball.",
  "A little dog ran home.",
  "Sue saw a big tree.",
  "Ben played with his car.",
  "Amy sat by the sea.",
  "A cat sat on the mat.",
  "Max found a shiny box.",
]
HELD_OUT = ["Jack went to the shop.", "A bird sang in a tree.", "Mia had a pretty doll."]
HAPPY = ["She was happy and smiled.", "He laughed and felt happy."]
SAD = ["She was sad and cried.", "He cried and felt sad."]


@pytest.fixture(scope="module")
def lm(stories260k):
  ckpt, tok = stories260k
  return jaxsteer.load(str(ckpt), tokenizer=str(tok))


def margin(model) -> float:
  reqs = []
  for o in HELD_OUT:
    for h, s in zip(HAPPY, SAD):
      reqs += [(o, " " + h), (o, " " + s)]
  ll = loglikelihoods(model, reqs, batch_size=len(reqs))
  return float(np.mean(ll[0::2] - ll[1::2]))


@pytest.fixture(scope="module")
def pairs():
  return [grains.Pair(o, HAPPY[i % 2], SAD[i % 2]) for i, o in enumerate(OPENINGS)]


@pytest.mark.parametrize("method", ["grains", "caa"])
def test_positive_alpha_raises_the_held_out_margin(lm, pairs, method):
  if method == "grains":
    vecs = grains.fit(lm, pairs, layers=[3], progress=False)
    assert all(vecs.metadata["ig_converged"])
  else:
    vecs = grains.caa(lm, pairs, layers=[3])
  base = margin(lm)
  up = margin(jaxsteer.steer(lm, vecs, alpha=2.0))
  down = margin(jaxsteer.steer(lm, vecs, alpha=-2.0))
  # 0.25 nats: well above float noise, below the +-1 to +-4 nats the measurement gives at alpha 2.
  assert up > base + 0.25, (base, up)
  assert down < base - 0.25, (base, down)
