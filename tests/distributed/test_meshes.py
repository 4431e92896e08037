"""Sharded training and inference equal one device on every mesh of 8 devices the rules accept.

The meshes: every factorisation of 8 devices into 1, 2 and 3 named axes (``data``, ``fsdp``,
``tensor`` in that order): (8,) x 3 names, (2, 4) and (4, 2) x 3 pairs, and (2, 2, 2) -- ten.
(2, 2, 2) with the old batch rule ("data", "fsdp") gave wrong gradients for 18/21 leaves
(docs/xla_spmd_bug.md).

Coverage, bounded by compile time (one sharded train step costs ~3 s of XLA CPU compile):

* every mesh x full fine-tuning of ``tiny`` (the shape where the bug showed), whose step
  differentiates every kernel (the bug is in the kernel-gradient matmuls);
* full, PaCA, LoRA and int8 PaCA x both shapes (``nano`` and ``tiny``) on the (2, 2, 2) mesh, the
  one that combines all three axes (and the one where all three were wrong);
* the jaxsteer forward (batch-sharded inputs) on every mesh, IG on (2, 2, 2).

``JAXSTEER_FULL_MESH_SWEEP=1`` runs the full product (all 4 methods x 10 meshes x 2 shapes, and
IG on every mesh; about 15 CPU minutes). All of it passed once in this form except the product
of the 3 adapter methods with the 9 smaller meshes.
"""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from tolerances import assert_close

import jaxsteer
import paca_jax
from jaxsteer import attribution
from jaxsteer._src.mesh_rules import check_rules
from jaxsteer._src.models import loading
from paca_jax.models import CONFIGS, TinyLlama

NAMES = ("data", "fsdp", "tensor")


def _meshes():
  out = [((8,), (n,)) for n in NAMES]
  for pair in itertools.combinations(NAMES, 2):
    out += [((2, 4), pair), ((4, 2), pair)]
  out.append(((2, 2, 2), NAMES))
  return out


MESHES = _meshes()
MESH_IDS = ["x".join(f"{n}{s}" for s, n in zip(shape, names)) for shape, names in MESHES]
FULL_SWEEP = os.environ.get("JAXSTEER_FULL_MESH_SWEEP") == "1"
COMBINED = {"data2xfsdp2xtensor2"}


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


# --------------------------------------------------------------------------------------------
# paca_jax: one SGD step of each method, sharded vs one device.

_MODELS = {}


def _model(name):
  if name not in _MODELS:
    cfg = CONFIGS[name]
    model = TinyLlama(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    toks = jax.random.randint(jax.random.key(2), (8, 17), 0, cfg.vocab)
    batch = {"x": np.asarray(toks[:, :-1]), "y": np.asarray(toks[:, 1:])}
    plan = paca_jax.select(params, r".*_proj", 4, jax.random.key(1))
    methods = {
      "full": paca_jax.Full(),
      "paca": paca_jax.Paca(plan),
      "lora": paca_jax.Lora(paca_jax.lora_plan(params, r".*_proj", 2, alpha=4.0)),
      "int8": paca_jax.PacaInt8(plan),
    }
    refs = {}
    _MODELS[name] = (model, params, batch, methods, refs)
  return _MODELS[name]


def _step(model, params, batch, method, mesh):
  # LoRA's B starts at zero, so its A gradient is zero at step 1: two steps test both factors.
  tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.sgd(0.5), mesh=mesh)
  st = tr.init(params, jax.random.key(3))
  st, l1 = tr.step(st, batch)
  st, l2 = tr.step(st, batch)
  return (float(l1), float(l2)), jax.tree.map(np.asarray, st.trainable), st


TRAIN_CASES = [
  pytest.param(m, shape, names, id=f"{mid}-{m}")
  for (shape, names), mid in zip(MESHES, MESH_IDS)
  for m in ("nano", "tiny")
  if FULL_SWEEP or m == "tiny" or mid in COMBINED
]


@pytest.mark.parametrize(("model_name", "shape", "names"), TRAIN_CASES)
def test_train_step_equals_one_device(model_name, shape, names):
  model, params, batch, methods, refs = _model(model_name)
  mesh = _mesh(shape, names)
  mid = MESH_IDS[MESHES.index((shape, names))]
  for name, method in methods.items():
    if not (name == "full" or FULL_SWEEP or mid in COMBINED):
      continue
    losses, trainable, st = _step(model, params, batch, method, mesh)
    if name not in refs:
      refs[name] = _step(model, params, batch, method, None)
    ref_losses, ref_trainable, _ = refs[name]
    assert_close(np.float32(losses), np.float32(ref_losses), err_msg=name)
    leaves = jax.tree_util.tree_leaves_with_path(trainable)
    for (path, a), b in zip(leaves, jax.tree.leaves(ref_trainable)):
      assert_close(a, b, err_msg=f"{name} {jax.tree_util.keystr(path)} on {dict(mesh.shape)}")
    # the mesh really is used: a trainable leaf spans all 8 devices unless only "data" shards
    if names != ("data",):
      spans = {len(x.sharding.device_set) for x in jax.tree.leaves(st.trainable)}
      assert 8 in spans, name


# --------------------------------------------------------------------------------------------
# jaxsteer: forward (batch-sharded inputs) and IG on a sharded model, vs one device.

_LM = {}


def _lm():
  if not _LM:
    cfg = jaxsteer.models.ModelConfig(
      arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    lm = jaxsteer.models.init_random(cfg, seed=0)
    ids = np.asarray(jax.random.randint(jax.random.key(5), (8, 12), 0, 64), np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    ig = attribution.contrastive(lm, [1, 5, 6, 7], [9, 10], [11], steps=4)
    _LM.update(lm=lm, ids=ids, mask=mask, logits=np.asarray(lm(ids, mask)), ig=ig)
  return _LM


@pytest.mark.parametrize(("shape", "names"), MESHES, ids=MESH_IDS)
def test_forward_and_ig_equal_one_device(shape, names):
  ref = _lm()
  lm, mesh = ref["lm"], _mesh(shape, names)
  sharded = lm.replace(params=jax.device_put(lm.params, loading.param_shardings(lm.params, mesh)))
  ids = loading.shard_batch(ref["ids"], mesh)
  mask = loading.shard_batch(ref["mask"], mesh)
  assert_close(sharded(ids, mask), ref["logits"])
  if not (FULL_SWEEP or MESH_IDS[MESHES.index((shape, names))] in COMBINED):
    return
  ig = attribution.contrastive(sharded, [1, 5, 6, 7], [9, 10], [11], steps=4)
  assert_close(ig.scores_pos, ref["ig"].scores_pos, rtol=1e-4, atol=1e-5)
  assert_close(ig.scores_neg, ref["ig"].scores_neg, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input and the plan-time check.


def test_rules_reject_the_xla_bug_pattern():
  mesh = _mesh((2, 2, 2), NAMES)
  bad = (("batch", ("data", "fsdp")),) + tuple(r for r in paca_jax.DEFAULT_RULES if r[0] != "batch")
  with pytest.raises(ValueError, match=r"'fsdp' minor behind \('data',\).*\('fsdp', 'data'\)"):
    check_rules(bad, mesh)
  model, params, batch, methods, _ = _model("nano")
  with pytest.raises(ValueError, match="docs/xla_spmd_bug.md"):
    paca_jax.Trainer(methods["full"], paca_jax.lm_loss_fn(model), optax.sgd(0.1), mesh=mesh,
                     rules=bad)  # fmt: skip
  # a mesh with |data| == 1 cannot reorder anything, so the same table is fine there
  check_rules(bad, _mesh((1, 4, 2), NAMES))
  check_rules(paca_jax.DEFAULT_RULES, mesh)
  check_rules(loading.DEFAULT_RULES, mesh)


def test_mesh_with_unknown_axis_is_rejected():
  mesh = _mesh((2, 4), ("data", "model"))
  with pytest.raises(ValueError, match=r"mesh axes \['model'\] are not used by any sharding rule"):
    loading.param_shardings(_lm()["lm"].params, mesh)
  model, params, _, methods, _ = _model("nano")
  with pytest.raises(ValueError, match="'model'"):
    paca_jax.Trainer(methods["full"], paca_jax.lm_loss_fn(model), optax.sgd(0.1), mesh=mesh)


def test_batch_not_divisible_by_data_axes():
  mesh = _mesh((2, 4), ("data", "fsdp"))
  with pytest.raises(ValueError, match=r"batch of 6 rows is not divisible by the 8 devices"):
    loading.shard_batch(np.zeros((6, 4), np.int32), mesh)
  model, params, batch, methods, _ = _model("nano")
  tr = paca_jax.Trainer(methods["full"], paca_jax.lm_loss_fn(model), optax.sgd(0.1), mesh=mesh)
  st = tr.init(params)
  with pytest.raises(ValueError, match="batch of 6 rows"):
    tr.step(st, {"x": batch["x"][:6], "y": batch["y"][:6]})


def test_plain_matmul_reproduction_is_right_with_the_default_order():
  """The issue's 20-line reproduction, with the batch tuple as the default rules write it."""
  mesh = _mesh((2, 2, 2), NAMES)
  s = lambda *p: NamedSharding(mesh, PartitionSpec(*p))  # noqa: E731
  x = jax.random.normal(jax.random.key(1), (128, 32))
  w = jax.random.normal(jax.random.key(2), (32, 64))
  b = dict(paca_jax.DEFAULT_RULES)["batch"]
  f = jax.jit(jnp.matmul, in_shardings=(s(b, "tensor"), s("tensor", "fsdp")),
              out_shardings=s(b, "tensor"))  # fmt: skip
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(np.asarray(f(x, w)), want, rtol=1e-4, atol=1e-4)
