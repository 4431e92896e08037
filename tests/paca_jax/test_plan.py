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
  assert "alpha" not in a.to_json()  # plans without alpha serialise as before
  s = paca_jax.select(params, TARGETS, 4, jax.random.key(1), alpha=16)
  assert Plan.from_json(s.to_json()) == s and s.scale("layers_0/attn/q_proj") == 4.0


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
    2,
    selector="given",
    indices={"layers_0/attn/q_proj": (7, 3), "layers_0/mlp/up_proj": (0, 5)},
  )
  assert plan.paths == ("layers_0/attn/q_proj", "layers_0/mlp/up_proj")
  assert plan["layers_0/attn/q_proj"].idx == (3, 7)


def test_hf_module_names_in_targets_and_given(tiny):
  _, params, _ = tiny
  by_hf = paca_jax.select(
    params,
    ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"],
    2,
    selector="given",
    indices={"model.layers.0.self_attn.q_proj": (7, 3), "layers_0/mlp/up_proj": (0, 5)},
  )
  by_flax = paca_jax.select(
    params,
    ["layers_0/attn/q_proj", "up_proj"],
    2,
    selector="given",
    indices={"layers_0/attn/q_proj": (3, 7), "model.layers.0.mlp.up_proj": (5, 0)},
  )
  assert by_hf == by_flax and by_hf.paths == ("layers_0/attn/q_proj", "layers_0/mlp/up_proj")
  # a regex over HF names selects the same modules as one over Flax paths
  a = paca_jax.select(params, r"model\.layers\.\d+\.self_attn\.(q|v)_proj", 2, jax.random.key(0))
  b = paca_jax.select(params, r"layers_\d+/attn/(q|v)_proj", 2, jax.random.key(0))
  assert a == b and len(a) == 2
  assert paca_jax.hf_module_name("layers_3/mlp/down_proj") == "model.layers.3.mlp.down_proj"
  assert paca_jax.flax_module_path("model.layers.3.self_attn.o_proj") == "layers_3/attn/o_proj"


def test_given_indices_are_validated(tiny):
  _, params, _ = tiny
  q = "model.layers.0.self_attn.q_proj"

  def given(indices, rank=2):
    return paca_jax.select(params, [q], rank, selector="given", indices=indices)

  with pytest.raises(ValueError, match="duplicate indices \\[1\\]"):
    given({q: (1, 1)})
  with pytest.raises(ValueError, match="must lie in \\[0, 16\\)"):
    given({q: (3, 16)})
  with pytest.raises(ValueError, match="3 indices for rank 2"):
    given({q: (1, 2, 3)})
  with pytest.raises(ValueError, match="no indices for module 'layers_0/attn/q_proj'"):
    given({})
  with pytest.raises(
    ValueError, match="not matched by targets: \\['model.layers.0.mlp.up_proj'\\]"
  ):
    given({q: (1, 2), "model.layers.0.mlp.up_proj": (1, 2)})
  with pytest.raises(ValueError, match="named twice"):
    given({q: (1, 2), "layers_0/attn/q_proj": (1, 2)})
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    given({q: ()}, rank=0)
  with pytest.raises(ValueError, match="alpha must be a positive"):
    paca_jax.select(params, [q], 2, jax.random.key(0), alpha=float("nan"))


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
      params, "layers_0/attn/q_proj", 2, selector="given", indices={"layers_0/attn/q_proj": (1, 1)}
    )
  with pytest.raises(ValueError, match="unknown selector"):
    paca_jax.select(params, TARGETS, 2, selector="nope")
  with pytest.raises(ValueError, match="needs key"):
    paca_jax.select(params, TARGETS, 2)
  with pytest.raises(ValueError, match="matches no Dense kernel"):
    paca_jax.lora_plan(params, r"nothing_here", 2)
