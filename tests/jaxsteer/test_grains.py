"""GrAInS fit / CAA: selection semantics, aggregation, save/load, bad input."""

import json

import numpy as np
import pytest

import jaxsteer
from jaxsteer import grains
from jaxsteer._src.grains import aggregate_pca
from jaxsteer.models import ModelConfig, init_random

CFG = ModelConfig(
  arch="llama",
  vocab_size=48,
  hidden_size=16,
  intermediate_size=24,
  num_layers=3,
  num_heads=4,
  num_kv_heads=2,
  head_dim=4,
  max_position_embeddings=64,
  bos_token_id=1,
  eos_token_id=2,
)
PAIRS = [grains.Pair([1, 5 + i, 9, 13 + i, 17], [20 + i, 21], [30 + i, 31 - i]) for i in range(5)]


@pytest.fixture(scope="module")
def lm():
  return init_random(CFG, seed=0)


@pytest.fixture(scope="module")
def fitted(lm):
  return grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, batch_size=3, progress=False)


def test_fit_shapes_and_metadata(fitted):
  assert fitted.layers == (1, 2)
  assert fitted.vectors.shape == (2, 16) and np.isfinite(fitted.vectors).all()
  m = fitted.metadata
  assert m["method"] == "grains" and m["k"] == 2 and m["n_pairs"] == 5 and m["mode"] == "both"
  assert len(m["ig_delta"]) == 5


def test_mode_pos_and_mean_differ(lm, fitted):
  pos = grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, mode="pos", progress=False)
  mean = grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, aggregate="mean", progress=False)
  assert not np.allclose(pos.vectors, fitted.vectors)
  assert not np.allclose(mean.vectors, fitted.vectors)
  # pca vectors per run are unit norm, so "pos" is unit norm.
  np.testing.assert_allclose(np.linalg.norm(pos.vectors, axis=-1), 1.0, rtol=1e-5)


def test_batching_does_not_change_the_result(lm, fitted):
  one = grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, batch_size=5, progress=False)
  np.testing.assert_allclose(one.vectors, fitted.vectors, rtol=1e-4, atol=1e-5)


def test_pca_is_sign_aligned_with_the_mean():
  rng = np.random.default_rng(0)
  d = rng.normal(size=(40, 6)) + np.array([3.0, 0, 0, 0, 0, 0]) * rng.normal(size=(40, 1))
  d[:, 0] += 0.5
  for flip in (1, -1):
    v = aggregate_pca(flip * d)
    assert v @ (flip * d).mean(0) > 0
    np.testing.assert_allclose(abs(v[0]), 1.0, atol=0.05)


def test_selection_masks_the_top_tokens(lm, monkeypatch):
  """The k highest (pos) / lowest (neg) scored prompt tokens, never BOS or response tokens."""
  from jaxsteer._src import grains as g

  calls = []
  orig = g._capture_variants

  def spy(lm_, rows, layers, mask_sets, *a, **k):
    calls.extend((rows, masks) for masks in mask_sets if masks is not None)
    return orig(lm_, rows, layers, mask_sets, *a, **k)

  monkeypatch.setattr(g, "_capture_variants", spy)
  pair = PAIRS[0]
  grains.fit(lm, [pair], layers=[1], k=2, steps=8, progress=False)
  res = jaxsteer.attribution.contrastive(
    lm, pair.prompt, pair.preferred, pair.dispreferred, steps=8
  )
  (rows, m_pos), (_, m_neg) = calls
  prompt_len = len(pair.prompt)
  for _seq, scores, mp, mn in (
    (0, res.scores_pos, m_pos[0], m_neg[0]),
    (1, res.scores_neg, m_pos[1], m_neg[1]),
  ):
    cand = np.arange(1, prompt_len)  # BOS excluded, response excluded
    s = scores[cand]
    assert set(np.flatnonzero(mp)) == set(cand[np.argsort(-s)[:2]])
    assert set(np.flatnonzero(mn)) == set(cand[np.argsort(s)[:2]])


def test_caa_is_mean_difference(lm):
  v = grains.caa(lm, PAIRS[:3], layers=[2])
  want = np.mean(
    [
      grains.hidden_last(lm, [p.prompt + p.preferred], (2,))[0, 0]
      - grains.hidden_last(lm, [p.prompt + p.dispreferred], (2,))[0, 0]
      for p in PAIRS[:3]
    ],
    axis=0,
  )
  np.testing.assert_allclose(v[2], want, rtol=1e-5, atol=1e-6)
  assert v.metadata["method"] == "caa"


def test_save_load_roundtrip(fitted, tmp_path, lm):
  path = fitted.save(tmp_path / "vecs")
  assert json.loads((path / "metadata.json").read_text())["k"] == 2
  back = grains.SteeringVectors.load(path)
  assert back.layers == fitted.layers and back.metadata["k"] == 2
  np.testing.assert_array_equal(back.vectors, fitted.vectors)
  fitted.save(tmp_path / "vecs")  # overwriting is atomic and leaves no temporary directory
  assert sorted(p.name for p in tmp_path.iterdir()) == ["vecs"]
  ids = np.array([[1, 5, 9, 13]])
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.steer(lm, back, 2.0)(ids)), np.asarray(jaxsteer.steer(lm, fitted, 2.0)(ids))
  )
  with pytest.raises(FileNotFoundError, match="no saved SteeringVectors"):
    grains.SteeringVectors.load(tmp_path / "nothing")


def test_text_pairs_on_real_model(stories260k):
  ckpt, tok = stories260k
  lm = jaxsteer.load(str(ckpt), tokenizer=str(tok))
  pairs = [
    grains.Pair("Lily was very", "happy and smiled.", "sad and cried."),
    grains.Pair("Tom felt so", "glad to play.", "angry at his mom."),
  ]
  v = grains.fit(lm, pairs, layers=[3], k=2, steps=10, progress=False)
  assert v.vectors.shape == (1, 64) and np.isfinite(v.metadata["ig_relative_delta_max"])
  out = jaxsteer.steer(lm, v, alpha=4.0).generate("Once upon a time", max_new_tokens=8)
  assert isinstance(out, str)


def test_bad_input(lm):
  with pytest.raises(ValueError, match="no steering pairs"):
    grains.fit(lm, [], layers=[1])
  with pytest.raises(ValueError, match="out of range"):
    grains.fit(lm, PAIRS, layers=[3])
  with pytest.raises(ValueError, match="larger than the candidate count"):
    grains.fit(lm, PAIRS, layers=[1], k=5)
  with pytest.raises(ValueError, match="unknown aggregate"):
    grains.fit(lm, PAIRS, layers=[1], aggregate="median")
  with pytest.raises(ValueError, match="context"):
    grains.fit(lm, [grains.Pair([1] * 70, [2], [3])], layers=[1])
  with pytest.raises(ValueError, match="mode"):
    grains.fit(lm, PAIRS, layers=[1], mode="neg")
