"""The one logical-axis mechanism (``jaxsteer._src.mesh_rules``) with jaxsteer's and paca_jax's
tables: the expected PartitionSpecs are written out by hand here, leaf by leaf (no compile)."""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

import paca_jax
from jaxsteer._src import mesh_rules
from jaxsteer._src.models import loading


def _mesh(shape=(2, 2, 2), names=("data", "fsdp", "tensor")):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _specs(shardings):
  return jax.tree.map(lambda s: tuple(s.spec), shardings)


def _sd(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_paca_tables_give_the_expected_specs_for_params_and_adam_state():
  mesh = _mesh()
  params = {
    "embed": {"embedding": _sd(64, 16)},
    "layers_0": {
      "attn": {"q_proj": {"kernel": _sd(16, 32), "bias": _sd(32)}},
      "mlp": {"down_proj": {"kernel": _sd(15, 16)}},  # |fsdp| = 2 does not divide 15 rows
      "norm": {"scale": _sd(16)},
    },
    "odd": {"kernel": _sd(16, 3)},  # 3 columns: |tensor| = 2 does not divide them
  }
  want = {
    "embed": {"embedding": ("tensor", "fsdp")},
    "layers_0": {
      "attn": {"q_proj": {"kernel": ("fsdp", "tensor"), "bias": ("tensor",)}},
      "mlp": {"down_proj": {"kernel": (None, "tensor")}},
      "norm": {"scale": (None,)},
    },
    "odd": {"kernel": ("fsdp", None)},
  }
  assert _specs(paca_jax.tree_shardings(params, mesh)) == want
  # Adam's mu / nu mirror the params (attribute names are part of the path), count is replicated.
  opt = jax.eval_shape(optax.adam(1e-3).init, params)
  specs = _specs(paca_jax.tree_shardings(opt, mesh))
  assert specs[0].mu == want and specs[0].nu == want and specs[0].count == ()
  # trainable trees of PaCA and LoRA
  trainable = {"q_proj": {"rows": _sd(4, 32), "a": _sd(16, 4), "b": _sd(4, 32)}}
  assert _specs(paca_jax.tree_shardings(trainable, mesh)) == {
    "q_proj": {"rows": (None, "tensor"), "a": ("fsdp", None), "b": (None, "tensor")}
  }


def test_jaxsteer_tables_give_the_expected_specs():
  mesh = _mesh((2, 4), ("fsdp", "tensor"))
  params = {
    "embed": {"embedding": _sd(64, 16)},
    "layers_0": {
      "attn": {"q_proj": {"kernel": _sd(16, 32)}, "o_proj": {"kernel": _sd(32, 16)}},
      "mlp": {"up_proj": {"kernel": _sd(16, 6)}},  # 6 % |tensor| = 6 % 4 != 0
      "input_norm": {"scale": _sd(16)},
    },
    "lm_head": {"kernel": _sd(16, 64)},
  }
  assert _specs(loading.param_shardings(params, mesh)) == {
    "embed": {"embedding": ("tensor", "fsdp")},
    "layers_0": {
      "attn": {"q_proj": {"kernel": ("fsdp", "tensor")}, "o_proj": {"kernel": ("tensor", "fsdp")}},
      "mlp": {"up_proj": {"kernel": ("fsdp", None)}},
      "input_norm": {"scale": (None,)},
    },
    "lm_head": {"kernel": ("fsdp", "tensor")},
  }
  assert loading.partition_spec("layers_3/attn/k_proj/kernel", (16, 32), mesh) == P(
    "fsdp", "tensor"
  )


def test_logical_axes_pads_truncates_and_falls_back():
  table = ((r"(^|/)kernel$", ("in", "out")), (r"/conv/", (None, None, None, "out")))
  assert mesh_rules.logical_axes("a/kernel", 3, table) == ("in", "out", None)
  assert mesh_rules.logical_axes("kernel", 1, table) == ("in",)
  assert mesh_rules.logical_axes("a/conv/w", 4, table) == (None, None, None, "out")
  assert mesh_rules.logical_axes("a/kernel_x", 2, table) == (None, None)  # anchored: no match
  assert paca_jax.logical_axes("kernel", 2) == ("in", "out")
  assert paca_jax.logical_axes("rows", 3) == ("rank", "out", None)
  assert loading.logical_axes("layers_0/mlp/down_proj/kernel", 2) == ("mlp", "embed")


def test_a_mesh_axis_shards_only_one_dimension_of_a_leaf():
  mesh = _mesh((2, 4), ("fsdp", "tensor"))
  rules = (("in", ("fsdp", "tensor")), ("out", "tensor"))
  assert mesh_rules.logical_spec(("in", "out"), (16, 16), mesh, rules) == P(
    ("fsdp", "tensor"), None
  )
  assert mesh_rules.logical_spec(("out", "in"), (16, 16), mesh, rules) == P("tensor", "fsdp")


def test_key_path_str_keeps_dict_keys_and_attribute_names():
  opt = optax.adam(1e-3).init({"layers_0": {"kernel": jnp.zeros((2, 2))}})
  paths = [mesh_rules.key_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt)]
  assert paths == ["count", "mu/layers_0/kernel", "nu/layers_0/kernel"]


def test_both_default_tables_pass_the_plan_time_check_and_the_bad_order_fails():
  mesh = _mesh()
  mesh_rules.check_rules(paca_jax.DEFAULT_RULES, mesh)
  mesh_rules.check_rules(loading.DEFAULT_RULES, mesh)
  for rules in (paca_jax.DEFAULT_RULES, loading.DEFAULT_RULES):
    bad = tuple(("batch", ("data", "fsdp")) if r[0] == "batch" else r for r in rules)
    with pytest.raises(ValueError, match="docs/xla_spmd_bug.md"):
      mesh_rules.check_rules(bad, mesh)
