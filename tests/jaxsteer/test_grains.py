"""GrAInS fit / CAA: selection semantics, aggregation, save/load, bad input."""

import json

import jax
import numpy as np
import pytest
from helpers import tiny_llama_config

import jaxsteer
from jaxsteer import grains
from jaxsteer._src.grains import aggregate_pca
from jaxsteer.models import ModelConfig, init_random

CFG = tiny_llama_config(bos_token_id=1, eos_token_id=2)
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
  assert len(m["ig_delta"]) == 5 and len(m["ig_steps"]) == 5 and len(m["ig_rel_error"]) == 5
  assert all(c for c in m["ig_converged"]) and max(m["ig_rel_error"]) <= 0.05
  assert min(m["ig_steps"]) >= 8 and m["residual_norm"][0] > 0


def test_mode_pos_and_pca_differ(lm, fitted):
  pos = grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, mode="pos", progress=False)
  pca = grains.fit(
    lm, PAIRS, layers=[1, 2], k=2, steps=8, aggregate="pca", mode="pos", progress=False
  )
  assert not np.allclose(pos.vectors, fitted.vectors)
  assert not np.allclose(pca.vectors, pos.vectors)
  # pca vectors per run are unit norm (also when they fall back to the mean), so "pos" is.
  np.testing.assert_allclose(np.linalg.norm(pca.vectors, axis=-1), 1.0, rtol=1e-5)
  for stats in pca.metadata["aggregation"].values():
    assert 0 < stats["explained_variance"] <= 1 and stats["n"] == 5


def test_batching_does_not_change_the_result(lm, fitted):
  one = grains.fit(lm, PAIRS, layers=[1, 2], k=2, steps=8, batch_size=5, progress=False)
  np.testing.assert_allclose(one.vectors, fitted.vectors, rtol=1e-4, atol=1e-5)


def test_pca_falls_back_to_the_mean_when_its_sign_is_noise():
  rng = np.random.default_rng(1)
  # Isotropic deltas with a tiny mean: PC1 is a random direction, its sign a coin flip.
  d = rng.normal(size=(8, 6)) + 0.01
  v, stats = grains.aggregate_pca_checked(d)
  assert stats["fallback"] == "mean" and abs(stats["t"]) < 2
  np.testing.assert_allclose(v, d.mean(0) / np.linalg.norm(d.mean(0)), rtol=1e-5)
  # A strong shared direction: PC1 kept, aligned with the mean.
  d = rng.normal(size=(8, 6)) * 0.1 + np.outer(rng.uniform(1, 3, 8), [1, 0, 0, 0, 0, 0])
  v, stats = grains.aggregate_pca_checked(d)
  assert stats["fallback"] is None and v[0] > 0.9 and stats["explained_variance"] > 0.5


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
  grains.fit(lm, [pair], layers=[1], k=2, steps=8, candidates="prompt", progress=False)
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
  path = fitted.save(tmp_path / "vecs.safetensors")
  assert path.is_file()
  back = grains.SteeringVectors.load(path)
  assert back.layers == fitted.layers and back.metadata["k"] == 2
  np.testing.assert_array_equal(back.vectors, fitted.vectors)
  fitted.save(path)  # overwriting our own file is atomic and leaves no temporary file
  assert sorted(p.name for p in tmp_path.iterdir()) == ["vecs.safetensors"]
  ids = np.array([[1, 5, 9, 13]])
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.steer(lm, back, 2.0)(ids)), np.asarray(jaxsteer.steer(lm, fitted, 2.0)(ids))
  )
  with pytest.raises(FileNotFoundError, match="no saved SteeringVectors"):
    grains.SteeringVectors.load(tmp_path / "nothing")


def test_saved_file_reads_in_pytorch(fitted, tmp_path):
  import torch
  from safetensors import safe_open

  path = fitted.save(tmp_path / "v.safetensors")
  with safe_open(str(path), framework="pt") as fh:
    meta = fh.metadata()
    t = fh.get_tensor("vectors")
    layers = fh.get_tensor("layers")
  assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
  np.testing.assert_array_equal(t.numpy(), fitted.vectors)
  assert layers.tolist() == [1, 2] and json.loads(meta["layers"]) == [1, 2]
  assert meta["format"] == "jaxsteer.SteeringVectors/2"
  assert json.loads(meta["metadata"])["ig_steps"] == fitted.metadata["ig_steps"]


def test_earlier_orbax_saves_still_load_and_are_replaced(fitted, tmp_path):
  old = fitted._save_orbax(tmp_path / "old")
  back = grains.SteeringVectors.load(old)
  np.testing.assert_array_equal(back.vectors, fitted.vectors)
  assert back.layers == fitted.layers and back.metadata["k"] == 2
  fitted.save(old)  # our own earlier save may be replaced by the new format
  assert old.is_file() and grains.SteeringVectors.load(old).layers == fitted.layers


def test_save_never_deletes_what_it_did_not_write(fitted, tmp_path):
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not a SteeringVectors save"):
    fitted.save(foreign)
  assert (foreign / "notes.txt").read_text() == "keep me"
  other = tmp_path / "model.safetensors"
  other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
  with pytest.raises(FileExistsError, match="not a SteeringVectors save"):
    fitted.save(other)
  assert other.read_bytes().startswith(b"\x08")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model.safetensors"]


def test_vector_arithmetic(fitted):
  a = fitted
  b = grains.SteeringVectors(a.layers, np.arange(32, dtype=np.float32).reshape(2, 16))
  np.testing.assert_array_equal((a + b).vectors, a.vectors + b.vectors)
  np.testing.assert_array_equal((a - b).vectors, a.vectors - b.vectors)
  np.testing.assert_array_equal((2.5 * a).vectors, 2.5 * a.vectors)
  np.testing.assert_array_equal((a * -1).vectors, -a.vectors)
  np.testing.assert_allclose((b / 4).vectors, b.vectors / 4)
  u = b.normalized()
  np.testing.assert_allclose(np.linalg.norm(u.vectors, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(u.vectors[1], b.vectors[1] / np.linalg.norm(b.vectors[1]), rtol=1e-6)
  with pytest.raises(ValueError, match="cannot add"):
    a + grains.SteeringVectors((1,), np.ones((1, 16)))
  with pytest.raises(ValueError, match="zero steering vector"):
    grains.SteeringVectors((1,), np.zeros((1, 16))).normalized()
  with pytest.raises(ValueError, match="cannot scale"):
    a * float("nan")


def test_non_finite_vectors_rejected():
  with pytest.raises(ValueError, match="NaN or infinite"):
    grains.SteeringVectors((0, 1), np.array([[0.0, 1.0], [np.nan, 0.0]]))
  with pytest.raises(ValueError, match="NaN or infinite"):
    grains.SteeringVectors((0,), np.array([[np.inf, 1.0]]))


def test_fit_compiles_nothing_new_for_other_pairs(lm):
  """The last batch is padded to batch_size and widths to powers of two: a second fit on other
  pairs of mixed lengths (same width bucket) compiles nothing."""
  from helpers import count_compiles

  mixed = [grains.Pair([1] + [5 + i] * (2 + i), [20 + i], [30, 31 + i]) for i in range(5)]
  grains.fit(lm, mixed, layers=[1], k=2, steps=4, batch_size=3, progress=False)
  other = [grains.Pair([1] + [9 + i] * (3 + 2 * i), [21, 22], [33 + i]) for i in range(4)]
  with count_compiles() as c:
    grains.fit(lm, other, layers=[1], k=2, steps=4, batch_size=3, progress=False)
  assert c.count == 0


def test_several_eos_ids_are_never_candidates(lm, monkeypatch):
  import dataclasses

  from jaxsteer._src import grains as g

  lm2 = lm.replace(config=dataclasses.replace(CFG, eos_token_ids=(2, 7), pad_token_id=0))
  assert {1, 2, 7} <= grains.special_ids(lm2)
  masks = []
  orig = g._capture_variants

  def spy(lm_, rows, layers, mask_sets, *a, **k):
    masks.extend((rows, m) for m in mask_sets if m is not None)
    return orig(lm_, rows, layers, mask_sets, *a, **k)

  monkeypatch.setattr(g, "_capture_variants", spy)
  pair = grains.Pair([1, 7, 5, 2, 9], [7, 20, 2], [7, 30])
  grains.fit(lm2, [pair], layers=[1], k=10, steps=8, progress=False)
  for rows, ms in masks:
    for ids, m in zip(rows, ms):
      picked = np.asarray(ids)[np.asarray(m)]
      assert picked.size and not np.isin(picked, [1, 2, 7]).any()


def test_planted_direction_is_recovered():
  """A model built by hand: one attention layer copies a trigger token's embedding into the
  residual stream along a planted unit direction u, and the output head reads u as "answer A".
  Masking the trigger (the top-attributed token) changes the last state by exactly c * u, and no
  other token moves it along anything, so the fitted vector must be parallel to u: cosine 1 up to
  float32 noise. A random direction in 16 dimensions has |cosine| ~ 0.25 (1/sqrt(16)); the
  threshold 0.95 cannot be reached by chance, and a flipped sign gives about -1."""
  import jax.numpy as jnp

  cfg = ModelConfig(
    arch="llama", vocab_size=24, hidden_size=16, intermediate_size=8, num_layers=1, num_heads=2,
    num_kv_heads=2, head_dim=8, max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
  )  # fmt: skip
  rng = np.random.default_rng(0)
  u = rng.normal(size=16)
  u /= np.linalg.norm(u)
  trigger, a_tok, b_tok = 3, 4, 5
  emb = rng.normal(size=(24, 16)) * 0.5
  emb[:, 0] = 0.0
  emb[trigger] = 0.0
  emb[trigger, 0] = 1.0  # only the trigger has a component on input coordinate 0
  p = jax.tree.map(np.asarray, init_random(cfg, seed=0).params)
  p = jax.tree.map(np.array, p)
  p["embed"]["embedding"] = emb
  lay = p["layers_0"]
  lay["attn"]["q_proj"]["kernel"][:] = 0.0  # uniform attention over the prefix
  lay["attn"]["k_proj"]["kernel"][:] = 0.0
  lay["attn"]["v_proj"]["kernel"][:] = 0.0
  lay["attn"]["v_proj"]["kernel"][0, 0] = 1.0  # value = input coordinate 0
  lay["attn"]["o_proj"]["kernel"][:] = 0.0
  lay["attn"]["o_proj"]["kernel"][0] = 8.0 * u  # ... written along u
  lay["mlp"]["down_proj"]["kernel"][:] = 0.0
  head = rng.normal(size=(16, 24)) * 0.1
  head[:, a_tok], head[:, b_tok] = 3.0 * u, -3.0 * u
  p["lm_head"]["kernel"] = head
  lm = init_random(cfg, seed=0).replace(params=jax.tree.map(jnp.asarray, p))
  pairs = []
  for _ in range(8):
    body = list(rng.integers(6, 24, size=5))
    body.insert(int(rng.integers(0, 6)), trigger)
    pairs.append(grains.Pair([1] + body, [a_tok], [b_tok]))
  v = grains.fit(lm, pairs, layers=[0], k=1, progress=False)
  cos = float(v.vectors[0] @ u / np.linalg.norm(v.vectors[0]))
  assert cos > 0.95, cos


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
  with pytest.raises(ValueError, match="unknown candidates"):
    grains.fit(lm, PAIRS, layers=[1], candidates="some")
  with pytest.raises(ValueError, match="pairing"):
    grains.fit(lm, PAIRS, layers=[1], pairing="crossed")
  with pytest.raises(ValueError, match="no candidate tokens"):
    grains.fit(lm, [grains.Pair([1], [2], [3])], layers=[1])
  with pytest.raises(ValueError, match="unknown aggregate"):
    grains.fit(lm, PAIRS, layers=[1], aggregate="median")
  with pytest.raises(ValueError, match="context"):
    grains.fit(lm, [grains.Pair([1] * 70, [2], [3])], layers=[1])
  with pytest.raises(ValueError, match="mode"):
    grains.fit(lm, PAIRS, layers=[1], mode="neg")
