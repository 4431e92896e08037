"""One process of the multi-process tests (started by ``jaxsteer.distributed.launch``).

``python mp_worker.py main OUT_DIR DATA_DIR``: two meshes of 2 x 2 x 2 devices over every
process, one with ``data`` across the processes, one with ``fsdp`` across them. On them: a
sharded ``jaxsteer.load`` of stories260K in which each process reads only its own shards, a
batch-sharded forward, ``attribution.contrastive`` and ``grains.fit``; then, on a (2, 2, 2) mesh
whose data and fsdp axes both cross the processes, two PaCA and two LoRA train steps of the
paca_jax ``nano`` model, and an orbax checkpoint written by every process after step 1,
restored and resumed. Process 0 writes ``OUT_DIR/results.npz``.

``python mp_worker.py quick OUT_DIR DATA_DIR``: only the sharded forward and one PaCA step, on
meshes that put fsdp (forward) and both data and fsdp (PaCA) across the processes (the 4-process
check).

``python mp_worker.py die`` / ``hang``: process 1 exits with code 3 / sleeps, after
``initialize``, while process 0 waits in a collective (the launcher's failure paths).
``python mp_worker.py sleep OUT_DIR``: every process writes ``OUT_DIR/pid_<i>`` and sleeps (the
test that kills the launcher and expects its workers to end).
"""

import os
import sys
import time

import numpy as np

from jaxsteer import distributed

MODE = sys.argv[1]
distributed.initialize(heartbeat_timeout_s=20, initialization_timeout_s=60)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

PID = jax.process_index()

if MODE == "sleep":
  with open(os.path.join(sys.argv[2], f"pid_{PID}.tmp"), "w") as f:
    f.write(str(os.getpid()))
  os.replace(os.path.join(sys.argv[2], f"pid_{PID}.tmp"), os.path.join(sys.argv[2], f"pid_{PID}"))
  time.sleep(3600)
  sys.exit(0)

if MODE in ("die", "hang"):
  if PID == 1:
    if MODE == "die":
      os._exit(3)
    time.sleep(3600)
  multihost_utils.sync_global_devices("never reached by process 1")
  sys.exit(0)

import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import jaxsteer  # noqa: E402
import paca_jax  # noqa: E402
from jaxsteer import attribution, grains  # noqa: E402
from jaxsteer._src.models import loading  # noqa: E402
from paca_jax.models import CONFIGS, TinyLlama  # noqa: E402

OUT, DATA = sys.argv[2], sys.argv[3]
QUICK = MODE == "quick"
assert jax.process_count() >= 2 and jax.device_count() == 8, (jax.process_count(), jax.devices())
n_proc = jax.process_count()
MESHES = {
  "data": distributed.global_mesh((n_proc, 8 // n_proc, 1), ("data", "fsdp", "tensor")),
  "fsdp": distributed.global_mesh((n_proc, 8 // n_proc // 2, 2), ("fsdp", "data", "tensor")),
}


def crossed_mesh():
  """(data, fsdp, tensor) = (2, 2, 2) with BOTH data and fsdp crossing the processes: on 2
  processes device (d, f, t) belongs to process (d + f) % 2; on 4 to process 2 d + f."""
  if n_proc == 4:
    return distributed.global_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  by_proc = [sorted((x for x in jax.devices() if x.process_index == p), key=lambda x: x.id)
             for p in range(2)]  # fmt: skip
  grid = np.empty((2, 2, 2), dtype=object)
  used = [0, 0]
  for d, f, t in np.ndindex(2, 2, 2):
    p = (d + f) % 2
    grid[d, f, t] = by_proc[p][used[p]]
    used[p] += 1
  return jax.sharding.Mesh(grid, ("data", "fsdp", "tensor"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)  # fmt: skip


res = {}


def gather(x):
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# -- sharded load: each process reads only the slices of its own devices ----------------------
ckpt = os.path.join(DATA, "stories260K", "stories260K.bin")
tok = os.path.join(DATA, "stories260K", "tok512.bin")
mesh = MESHES["fsdp"]
cfg, arrays = loading.read_llama2c(ckpt)
reads = {}


class Recording:
  """A numpy view that records which slices are read from it."""

  def __init__(self, path, view):
    self.path, self.view, self.shape, self.dtype = path, view, view.shape, view.dtype

  def __getitem__(self, idx):
    reads.setdefault(self.path, []).append(idx)
    return self.view[idx]


params = loading.place({k: Recording(k, v) for k, v in arrays.items()}, np.float32, mesh)
flat = dict(jax.tree_util.tree_leaves_with_path(params))
for path, arr in flat.items():
  key = "/".join(str(k.key) for k in path)
  mine = {
    tuple((s.start, s.stop) for s in idx) for idx in arr.sharding.addressable_devices_indices_map(
      arr.shape).values()
  }  # fmt: skip
  got = {tuple((s.start, s.stop) for s in idx) for idx in reads[key]}
  assert got <= mine, (key, got, mine)
  if arr.sharding.spec and arr.sharding.spec[0] == "fsdp":
    # fsdp spans the processes: this process never touched the other half of the rows
    assert all(s[0] != (None, None) for s in got), (key, got)
emb = params["embed"]["embedding"]
assert not emb.is_fully_addressable and len(emb.addressable_shards) == 8 // n_proc

lm = jaxsteer.load(ckpt, tokenizer=tok, mesh=mesh)
assert jax.tree.all(jax.tree.map(lambda a, b: a.sharding == b.sharding, lm.params, params))

# -- forward with a batch sharded over (fsdp, data) ----------------------------------------------
ids = np.asarray(jax.random.randint(jax.random.key(5), (8, 12), 1, cfg.vocab_size), np.int32)
mask = np.ones_like(ids)
mask[1, :3] = 0
g_ids, g_mask = loading.shard_batch(ids, mesh), loading.shard_batch(mask, mesh)
assert not g_ids.is_fully_addressable
res["logits"] = gather(lm(g_ids, g_mask))

# -- contrastive IG and GrAInS fit on the sharded model -------------------------------------------
if not QUICK:
  ig = attribution.contrastive(lm, [1, 5, 6, 7], [9, 10], [11], steps=4)
  res["ig_pos"], res["ig_neg"] = ig.scores_pos, ig.scores_neg
  pairs = [grains.Pair([1, 5, 6], [9, 10], [11, 12]), grains.Pair([1, 20, 21], [30], [31, 32])]
  # k = every prompt candidate: no near-tie in the token ranking can change the selection
  vecs = grains.fit(lm, pairs, layers=[2], k=2, steps=4, aggregate="mean", progress=False)
  res["fit"] = np.asarray(vecs.vectors[0])

# -- PaCA and LoRA steps, data or fsdp across the processes; orbax checkpoint and resume ----------
model = TinyLlama(CONFIGS["nano"])
p0 = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
toks = np.asarray(jax.random.randint(jax.random.key(2), (8, 9), 0, 64))
batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
plan = paca_jax.select(p0, r".*_proj", 4, jax.random.key(1))
methods = {
  "paca": paca_jax.Paca(plan),
  "lora": paca_jax.Lora(paca_jax.lora_plan(p0, r".*_proj", 2, alpha=4.0)),
}
# data and fsdp both cross the process boundary on one mesh (2 or 4 processes)
TRAIN_MESH = crossed_mesh() if n_proc in (2, 4) else MESHES["fsdp"]
if QUICK:
  methods.pop("lora")
for mname, m in methods.items():
  tr = paca_jax.Trainer(m, paca_jax.lm_loss_fn(model), optax.sgd(0.5), mesh=TRAIN_MESH)
  st = tr.init(p0, jax.random.key(3))
  st, l1 = tr.step(st, batch)
  if QUICK:
    res[f"{mname}_loss"] = np.asarray([float(l1)], np.float32)
    for i, leaf in enumerate(jax.tree.leaves(st.trainable)):
      res[f"{mname}_t{i}"] = gather(leaf)
    continue
  if mname == "paca":
    ckdir = os.path.join(OUT, "ckpt")
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(ckdir, st)
      ckptr.wait_until_finished()
  st, l2 = tr.step(st, batch)
  res[f"{mname}_loss"] = np.asarray([float(l1), float(l2)], np.float32)
  for i, leaf in enumerate(jax.tree.leaves(st.trainable)):
    res[f"{mname}_t{i}"] = gather(leaf)
  if mname == "paca":
    # resume: a fresh state restored from step 1 (every process reads its shards), one more step
    # through the same compiled step
    fresh = tr.init(p0, jax.random.key(3))
    target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), fresh
    )
    del fresh
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(ckdir, target)
    assert int(restored.step) == 1
    st2, l2b = tr.step(restored, batch)
    res["resume_loss"] = np.asarray(float(l2b), np.float32)
    for i, leaf in enumerate(jax.tree.leaves(st2.trainable)):
      res[f"resume_t{i}"] = gather(leaf)

if PID == 0:
  tmp = os.path.join(OUT, "results.tmp.npz")
  np.savez(tmp, **res)
  os.replace(tmp, os.path.join(OUT, "results.npz"))
multihost_utils.sync_global_devices("done")
print(f"process {PID}: ok")
