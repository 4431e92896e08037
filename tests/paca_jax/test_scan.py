"""PaCA and LoRA on a scanned decoder (``ModelConfig.scan_layers``: stacked ``layers/...``).

Every check is against the unrolled model with the same weights: the plan (the same rows, layer by
layer), one Adam step (loss and every trained leaf, unstacked), with ``remat="full"``, the
quantised bases, a sharded step on a (2, 2, 2) mesh, and the HF / peft / PaCA exports (the same
files as the unrolled model's, and transformers reloads the merged model)."""

import filecmp

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict
from helpers import tiny_llama_config
from jax.sharding import PartitionSpec as P
from tolerances import PARITY_ATOL_F32, assert_close

import paca_jax
from jaxsteer.models import init_random, relayout, unstack_layers
from paca_jax import export

TARGETS = r".*_proj"
IDS = np.random.default_rng(0).integers(0, 48, (8, 9)).astype(np.int32)
BATCH = {"x": IDS[:, :-1], "y": IDS[:, 1:]}

METHODS = {
  "paca": lambda p: paca_jax.Paca(paca_jax.select(p, TARGETS, 3, jax.random.key(1), alpha=6)),
  "lora": lambda p: paca_jax.Lora(paca_jax.lora_plan(p, TARGETS, 2, alpha=4)),
  "paca_int8": lambda p: paca_jax.PacaInt8(paca_jax.select(p, TARGETS, 3, jax.random.key(1))),
}


@pytest.fixture(scope="module")
def unrolled():
  return init_random(tiny_llama_config(num_layers=2), seed=0)  # 2 layers: CI time


def _step(lm, method, mesh=None):
  """One Adam step: (loss, trainable, frozen), both trees unstacked to per-layer names."""
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(lm.module), optax.adam(1e-2), mesh=mesh)
  st = tr.init(lm.params, jax.random.key(3))
  st, loss = tr.step(st, BATCH)
  unstack = paca_jax._src.layers.unstack
  st = jax.device_get(st)
  frozen = st.frozen if "quant" not in st.frozen else {k: unstack(v) for k, v in st.frozen.items()}
  return float(loss), unstack(st.trainable), unstack(frozen)


_STEPS = {}


def _cached_step(unrolled, name, remat, scan):
  """``_step`` of method ``name`` on the unrolled or scanned model (computed once per module)."""
  key = (name, remat, scan)
  if key not in _STEPS:
    lm = relayout(unrolled, scan_layers=True, remat=remat) if scan else unrolled
    _STEPS[key] = _step(lm, METHODS[name](lm.params))
  return _STEPS[key]


def _assert_trees_close(a, b):
  fa, fb = flatten_dict(a, sep="/"), flatten_dict(b, sep="/")
  assert sorted(fa) == sorted(fb)
  for k in fa:
    if np.issubdtype(np.asarray(fa[k]).dtype, np.integer):  # quantised bases: bit for bit
      np.testing.assert_array_equal(fb[k], fa[k], err_msg=k)
    else:
      assert_close(fb[k], fa[k], err_msg=k)


def test_plan_is_the_unrolled_plan_and_rows_land_per_layer(unrolled):
  sc = relayout(unrolled, scan_layers=True)
  plan = paca_jax.select(sc.params, TARGETS, 3, jax.random.key(1))
  assert plan == paca_jax.select(unrolled.params, TARGETS, 3, jax.random.key(1))
  assert len(plan) == 7 * 2 and "layers_1/mlp/down_proj" in plan
  # the layers draw different rows (an independent choice per layer)
  assert len({plan[f"layers_{i}/attn/q_proj"].idx for i in range(2)}) == 2
  method = paca_jax.Paca(plan)
  frozen, rows = method.init(sc.params)
  assert rows["layers"]["attn"]["q_proj"]["rows"].shape == (2, 3, 16)
  bumped = jax.tree.map(lambda r: r + 1.0, rows)
  k1 = method.merge(frozen, bumped)["layers"]["attn"]["q_proj"]["kernel"]
  k0 = sc.params["layers"]["attn"]["q_proj"]["kernel"]
  for i in range(2):
    changed = np.flatnonzero(np.any(np.asarray(k1[i]) != np.asarray(k0[i]), axis=1))
    assert tuple(changed) == plan[f"layers_{i}/attn/q_proj"].idx


@pytest.mark.parametrize(
  "name,remat",
  [("paca", None), ("paca", "full"), ("lora", "full"), ("paca_int8", "full")],
)  # fmt: skip
def test_scanned_step_equals_unrolled(unrolled, name, remat):
  want = _cached_step(unrolled, name, None, scan=False)
  sc = relayout(unrolled, scan_layers=True, remat=remat)
  assert METHODS[name](sc.params).plan == METHODS[name](unrolled.params).plan
  got = _cached_step(unrolled, name, remat, scan=True)
  assert_close(got[0], want[0], dtype=np.float32)
  _assert_trees_close(want[1], got[1])  # every trained leaf (rows, or a and b), per layer
  _assert_trees_close(want[2], got[2])  # the frozen side (PaCA: rows written into kernels)
  init = jax.device_get(METHODS[name](unrolled.params).init(unrolled.params, jax.random.key(3))[1])
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), init, want[1])
  assert max(jax.tree.leaves(moved)) > 1e-4  # the step trained something


@pytest.mark.parametrize("name", ["paca", "lora"])
def test_sharded_scanned_step_on_three_axis_mesh_equals_single_device(unrolled, name):
  sc = relayout(unrolled, scan_layers=True)
  mesh = paca_jax.make_mesh((2, 2, 2))
  want = _cached_step(unrolled, name, None, scan=False)  # unrolled, one device
  got = _step(sc, METHODS[name](sc.params), mesh=mesh)
  assert_close(got[0], want[0], dtype=np.float32)
  _assert_trees_close(want[1], got[1])
  _assert_trees_close(want[2], got[2])


def test_stacked_leaves_never_shard_the_layer_axis():
  mesh = paca_jax.make_mesh((2, 2, 2))
  tree = {
    "layers": {"mlp": {"up_proj": {"kernel": jnp.zeros((3, 16, 24)), "rows": jnp.zeros((3, 2, 24))}}},
    "layers_0": {"mlp": {"up_proj": {"kernel": jnp.zeros((16, 24))}}},
  }  # fmt: skip
  sh = paca_jax.tree_shardings(tree, mesh)
  assert sh["layers"]["mlp"]["up_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["layers"]["mlp"]["up_proj"]["rows"].spec == P(None, None, "tensor")
  assert sh["layers_0"]["mlp"]["up_proj"]["kernel"].spec == P("fsdp", "tensor")
  assert paca_jax.logical_axes("mu/layers/attn/q_proj/kernel", 3) == (None, "in", "out")


def test_some_layers_only_is_refused_on_a_scanned_tree(unrolled):
  sc = relayout(unrolled, scan_layers=True)
  plan = paca_jax.select(sc.params, r"layers_0/.*_proj", 2, jax.random.key(0))
  with pytest.raises(ValueError, match="adapted in layers \\[0\\] only"):
    paca_jax.Paca(plan).init(sc.params)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_scanned_exports_are_the_unrolled_exports(hf_llama_dir, hf_tools, tmp_path):
  import transformers

  import jaxsteer

  lm = relayout(jaxsteer.load(hf_llama_dir), scan_layers=True, remat="full")
  b = hf_tools.batch()
  method = paca_jax.Paca(paca_jax.select(lm.params, r".*_proj", 4, jax.random.key(0), alpha=8))
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(lm.module), optax.sgd(0.5))
  st = tr.init(lm.params)
  st, _ = tr.step(st, b)
  st = tr.flush(st)
  merged = tr.merged_params(st)
  assert "layers" in merged and "layers" in st.trainable
  want = np.asarray(lm.module.apply({"params": merged}, b["x"]))
  base = np.asarray(lm.module.apply({"params": lm.params}, b["x"]))
  assert np.abs(want - base).max() > 1e-3  # training changed the model
  # the same state in the unrolled layout, exported by the per-layer code path
  flat_params, flat_rows = unstack_layers(lm.params), unstack_layers(st.trainable)
  writes = {
    "merged": lambda p, t, out: export.save_merged(
      method.merge(p, t), out, config=lm.config, source=hf_llama_dir
    ),
    "peft": lambda p, t, out: export.save_peft_adapter(export.to_lora(method, p, t), out),
    "paca": lambda p, t, out: export.save_paca_adapter(method, p, t, out),
  }
  for kind, write in writes.items():
    a = write(lm.params, st.trainable, tmp_path / f"scan_{kind}")
    u = write(flat_params, flat_rows, tmp_path / f"flat_{kind}")
    cmp = filecmp.dircmp(a, u)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only, kind
    for f in cmp.common_files:
      assert filecmp.cmp(a / f, u / f, shallow=False), (kind, f)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "scan_merged").eval()
  assert_close(hf_tools.logits(hf, b["x"]), want, atol=PARITY_ATOL_F32, rtol=0)
  # the PaCA form reloads onto the scanned params as stacked rows
  method2, rows2 = export.load_paca_adapter(tmp_path / "scan_paca", lm.params)
  assert method2.plan.paths == method.plan.paths
  assert_close(method2.merge(lm.params, rows2)["layers"]["mlp"]["down_proj"]["kernel"],
               merged["layers"]["mlp"]["down_proj"]["kernel"])  # fmt: skip
