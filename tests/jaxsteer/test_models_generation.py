"""Generation that stops: several stop ids, early exit of the device loop, per-row lengths,
bucketed shapes (no recompiles), non-finite logits detected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

from jaxsteer.models import ModelConfig, init_random

CFG = ModelConfig(
  arch="llama",
  vocab_size=61,
  hidden_size=16,
  intermediate_size=24,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=4,
  max_position_embeddings=128,
  eos_token_id=None,
)
PROMPTS = np.array([[3, 9, 27, 22, 5], [7, 1, 44, 13, 8]])
N = 24


@pytest.fixture(scope="module")
def lm():
  return init_random(CFG, seed=3)


@pytest.fixture(scope="module")
def free_run(lm):
  """Greedy continuations without any stop id (the reference the stopped runs are cut from)."""
  return lm.generate_ids(PROMPTS, max_new_tokens=N, stop_at_eos=False)


def _first_stop(row, stops):
  """Index of the first stop id in ``row`` (written out independently of the library)."""
  for i, t in enumerate(row):
    if t in stops:
      return i
  return None


def _pick_stops(free_run):
  """One stop id per row: a token that row produces at step >= 2 but not before; ids that the
  other row would hit earlier are skipped."""
  stops = []
  for r, row in enumerate(free_run.tolist()):
    for j in range(2, N):
      cand = stops + [row[j]]
      if all(_first_stop(x, cand) is not None for x in free_run.tolist()[: r + 1]) and (
        _first_stop(row, cand) == j
      ):
        stops.append(row[j])
        break
  return stops


def test_several_stop_ids_end_rows(lm, free_run):
  stops = _pick_stops(free_run)
  assert len(stops) == 2 and stops[0] != stops[1]
  out, lengths = lm.generate_ids(
    PROMPTS, max_new_tokens=N, eos_token_ids=stops, return_lengths=True
  )
  for r, row in enumerate(free_run.tolist()):
    k = _first_stop(row, stops)
    assert k is not None
    assert lengths[r] == k + 1  # the stop token is counted
    assert out[r, : k + 1].tolist() == row[: k + 1]
    assert (out[r, k + 1 :] == lm.pad_id).all()
  # One stop id alone leaves the other row running to its own first occurrence (or the end).
  out1, len1 = lm.generate_ids(
    PROMPTS, max_new_tokens=N, eos_token_ids=stops[0], return_lengths=True
  )
  for r, row in enumerate(free_run.tolist()):
    k = _first_stop(row, stops[:1])
    assert len1[r] == (N if k is None else k + 1)


def test_loop_ends_when_every_row_has_ended(lm, free_run):
  """The device loop runs max(lengths) steps, not max_new_tokens."""
  from jaxsteer._src.models import lm as lm_lib

  stops = _pick_stops(free_run)
  ids = jnp.asarray(PROMPTS, jnp.int32)
  mask = jnp.ones_like(ids)
  stop_ids = jnp.asarray(stops, jnp.int32)
  args = (jnp.float32(0), jnp.float32(1))
  state = lm_lib._prefill(
    lm.module, None, lm.params, None, ids, mask, *args, jax.random.PRNGKey(0), stop_ids,
    jnp.int32(0), budget=32, stop_at_eos=True,
  )  # fmt: skip
  state = lm_lib._decode(
    lm.module, None, lm.params, None, state, mask, *args, stop_ids, jnp.int32(0), jnp.int32(N),
    stop_at_eos=True,
  )  # fmt: skip
  steps, lengths = int(state[8]), np.asarray(state[7])
  want = [_first_stop(row, stops) + 1 for row in free_run.tolist()]
  assert lengths.tolist() == want
  assert steps == max(want) < N


def test_no_stop_id_runs_to_the_budget(lm, free_run):
  out, lengths = lm.generate_ids(PROMPTS, max_new_tokens=N, return_lengths=True)
  assert lengths.tolist() == [N, N]
  np.testing.assert_array_equal(out, free_run)


def test_similar_prompt_lengths_share_programs(lm):
  lm.generate_ids(np.array([[1, 2, 3]]), max_new_tokens=5)
  with count_compiles() as c:
    for n, stops in ((4, None), (7, 9), (11, [7, 9]), (16, (1, 2, 3))):
      lm.generate_ids(np.arange(1, n + 1)[None], max_new_tokens=5 + n % 3, eos_token_ids=stops)
  assert c.count == 0


def test_bucketed_padding_changes_nothing(lm):
  """A prompt alone equals the same prompt left-padded by the caller (the bucketing is exact)."""
  p = np.array([[5, 6, 7, 8, 9]])
  alone = lm.generate_ids(p, max_new_tokens=8, stop_at_eos=False)
  padded = np.concatenate([np.zeros((1, 20), int), p], axis=1)
  mask = (np.arange(25) >= 20)[None].astype(int)
  np.testing.assert_array_equal(
    lm.generate_ids(padded, mask, max_new_tokens=8, stop_at_eos=False), alone
  )


def test_non_finite_logits_raise(lm):
  params = jax.tree.map(lambda x: x, lm.params)
  params["norm"]["scale"] = params["norm"]["scale"].at[0].set(jnp.nan)
  bad = lm.replace(params=params)
  with pytest.raises(FloatingPointError, match=r"non-finite logits .* rows \[0, 1\]"):
    bad.generate_ids(PROMPTS, max_new_tokens=4)


def test_config_stop_ids_from_generation_config(tmp_path):
  """generation_config.json's several EOS ids (Llama 3 instruct) become the config's stop ids."""
  transformers = pytest.importorskip("transformers")
  import json

  import jaxsteer

  cfg = transformers.LlamaConfig(
    vocab_size=50, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
    num_attention_heads=2, max_position_embeddings=32, eos_token_id=7,
  )  # fmt: skip
  d = tmp_path / "m"
  transformers.LlamaForCausalLM(cfg).save_pretrained(d)
  (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9, 11]}))
  lm = jaxsteer.load(str(d))
  assert lm.config.stop_ids == (7, 9, 11)


def _nucleus_numpy(logits, temperature, top_p):
  """Next-token distribution of temperature + top-p sampling, written out in float64 numpy."""
  z = np.asarray(logits, np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  before = np.cumsum(p[order]) - p[order]
  keep = np.zeros_like(p, bool)
  keep[order[before < top_p]] = True
  q = np.where(keep, p, 0.0)
  return q / q.sum()


def test_sample_token_greedy_and_nucleus_match_numpy():
  """Greedy (temperature 0, which skips the sampling branch) is the argmax; temperature and top-p
  draw from the float64 numpy nucleus distribution (never outside it); a vmapped temperature
  (a select between both branches) gives the same tokens as the scalar calls."""
  from jaxsteer.models import sample_token

  logits = jnp.asarray([[0.3, 2.0, -1.0, 1.5, 0.0, 1.9], [3.0, -2.0, 0.5, 0.4, 2.2, -0.1]])
  keys = jax.random.split(jax.random.key(0), 2000)
  greedy = sample_token(logits, jnp.float32(0.0), jnp.float32(0.9), keys[0])
  np.testing.assert_array_equal(np.asarray(greedy), np.argmax(np.asarray(logits), -1))
  draw = jax.jit(jax.vmap(lambda k, t, p: sample_token(logits, t, p, k), in_axes=(0, None, None)))
  for t, p in [(1.0, 1.0), (0.7, 0.6)]:
    toks = np.asarray(draw(keys, jnp.float32(t), jnp.float32(p)))
    for r in range(logits.shape[0]):
      want = _nucleus_numpy(logits[r], t, p)
      freq = np.bincount(toks[:, r], minlength=logits.shape[1]) / len(keys)
      assert np.all(freq[want == 0] == 0)
      np.testing.assert_allclose(freq, want, atol=0.04)  # 4 sigma at n = 2000
  temps = jnp.asarray([0.0, 0.7], jnp.float32)
  both = jax.vmap(lambda t: sample_token(logits, t, jnp.float32(0.6), keys[1]))(temps)
  one = [sample_token(logits, t, jnp.float32(0.6), keys[1]) for t in temps]
  np.testing.assert_array_equal(np.asarray(both), np.stack([np.asarray(o) for o in one]))
