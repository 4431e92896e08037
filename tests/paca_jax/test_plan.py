"""Selection registry and plan: determinism, sorting, norms, given indices, errors."""

import jax
import numpy as np
import pytest

import paca_jax
from paca_jax import Plan

TARGETS = r".*_proj"


def test_random_plan_sorted_seeded_and_hashable(tiny):
  _, params, _ = tiny
  a = paca_jax.select(params, TARGETS, 4, jax.random.key(1))
  b = paca_jax.select(params, TARGETS, 4, jax.random.key(1))
  c = paca_jax.select(params, TARGETS, 4, jax.random.key(2))
  assert a == b and hash(a) == hash(b) and a != c
  assert len(a) == 7
  for e in a:
    assert list(e.idx) == sorted(set(e.idx)) and len(e.idx) == 4
  # per-path seeds: different modules of the same width get different rows
  assert a["layers_0/attn/q_proj"].idx != a["layers_0/attn/k_proj"].idx
  assert Plan.from_json(a.to_json()) == a


def test_norm_selectors(tiny):
  _, params, _ = tiny
  k = np.asarray(params["layers_0"]["mlp"]["down_proj"]["kernel"])
  norms = np.linalg.norm(k, axis=1)
  hi = paca_jax.select(params, "layers_0/mlp/down_proj", 3, selector="norm_max")
  lo = paca_jax.select(params, "layers_0/mlp/down_proj", 3, selector="norm_min")
  assert set(hi.entries[0].idx) == set(np.argsort(-norms)[:3].tolist())
  assert set(lo.entries[0].idx) == set(np.argsort(norms)[:3].tolist())


def test_given_and_list_targets(tiny):
  _, params, _ = tiny
  plan = paca_jax.select(
    params,
    ["q_proj", "up_proj"],
    0,
    selector="given",
    indices={"layers_0/attn/q_proj": (7, 3), "layers_0/mlp/up_proj": (0,)},
  )
  assert plan.paths == ("layers_0/attn/q_proj", "layers_0/mlp/up_proj")
  assert plan["layers_0/attn/q_proj"].idx == (3, 7)


def test_registry_extension():
  @paca_jax.register_selector("first_rows_test")
  def first(kernel, shape, rank, key, path, **_):
    return np.arange(rank)

  params = {"d": {"kernel": np.zeros((6, 2), np.float32)}}
  assert paca_jax.select(params, "d", 2, selector="first_rows_test").entries[0].idx == (0, 1)
  with pytest.raises(ValueError, match="already registered"):
    paca_jax.register_selector("first_rows_test")(first)


def test_errors(tiny):
  _, params, _ = tiny
  with pytest.raises(ValueError, match="larger than the input width 16"):
    paca_jax.select(params, TARGETS, 17, jax.random.key(0))
  with pytest.raises(ValueError, match="matches no Dense kernel"):
    paca_jax.select(params, r"nothing_here", 2, jax.random.key(0))
  with pytest.raises(ValueError, match="duplicate"):
    paca_jax.select(
      params, "layers_0/attn/q_proj", 0, selector="given", indices={"layers_0/attn/q_proj": (1, 1)}
    )
  with pytest.raises(ValueError, match="unknown selector"):
    paca_jax.select(params, TARGETS, 2, selector="nope")
  with pytest.raises(ValueError, match="needs key"):
    paca_jax.select(params, TARGETS, 2)
  with pytest.raises(ValueError, match="matches no Dense kernel"):
    paca_jax.lora_plan(params, r"nothing_here", 2)
