"""Two JAX processes of 4 CPU devices each (gloo collectives), one global mesh, vs one process.

tests/distributed/mp_worker.py runs in every process (started and ended here through
``jaxsteer.distributed.launch``): sharded ``jaxsteer.load`` (each process reads only its own
shards; the worker asserts it), a batch-sharded forward, ``attribution.contrastive``,
``grains.fit``, two PaCA and two LoRA steps on a mesh whose ``data`` and ``fsdp`` axes both cross
the processes, and an orbax checkpoint written by both processes after step 1, restored and resumed. Here the same
computations run in this single process on one device and must agree.

A peer that dies makes the launch fail with a ``RuntimeError`` naming it (not a hang), and a
hung peer fails by the launcher's timeout; workers whose launcher is killed end by themselves.
``JAXSTEER_MP_PROCESSES=4`` adds 4 processes x 2 devices: the forward and one PaCA step on a
mesh whose data and fsdp axes both cross the 4 processes (``quick``), and the whole group at
4 x 2 devices. Opt-in: the 4-process check alone costs about 60 s of CPU (over CI's budget for
it); its last run is recorded in docs/multiprocess.md.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import assert_close

import jaxsteer
import paca_jax
from jaxsteer import attribution, distributed, grains
from paca_jax.models import CONFIGS, TinyLlama

WORKER = pathlib.Path(__file__).with_name("mp_worker.py")
# Generous: the CI machine is shared; a healthy group takes ~60 s of wall time on 2 idle cores.
TIMEOUT = float(os.environ.get("JAXSTEER_MP_TIMEOUT", "540"))
FOUR = os.environ.get("JAXSTEER_MP_PROCESSES") == "4"
COUNTS = [2] + ([4] if FOUR else [])


# Both sides compile with XLA's default options (jaxsteer.compile_options off): what is compared
# is sharding, and the per-kind CPU options round differently at different per-device shapes
# (1.3e-5 at logits up to 12); the options' own invariance is tests/jaxsteer/test_compile_options.


@pytest.fixture(autouse=True)
def _default_options(monkeypatch):
  monkeypatch.setenv("JAXSTEER_XLA_OPTIONS", "0")


@pytest.fixture(scope="module", params=COUNTS, ids=lambda n: f"{n}proc")
def group(request, data_dir, tmp_path_factory):
  n = request.param
  out = tmp_path_factory.mktemp(f"mp{n}")
  results = distributed.launch(
    WORKER, ["main", str(out), str(data_dir)], num_processes=n,
    devices_per_process=8 // n, timeout=TIMEOUT, env={**os.environ, "JAXSTEER_XLA_OPTIONS": "0"},
  )  # fmt: skip
  assert all(f"process {r.process_id}: ok" in r.stdout for r in results)
  with np.load(out / "results.npz") as f:
    return dict(f)


@pytest.fixture(scope="module")
def quick4(data_dir, tmp_path_factory):
  """4 processes x 2 devices: the sharded forward and one PaCA step only."""
  out = tmp_path_factory.mktemp("mp4quick")
  results = distributed.launch(
    WORKER, ["quick", str(out), str(data_dir)], num_processes=4,
    devices_per_process=2, timeout=TIMEOUT, env={**os.environ, "JAXSTEER_XLA_OPTIONS": "0"},
  )  # fmt: skip
  assert all(f"process {r.process_id}: ok" in r.stdout for r in results)
  with np.load(out / "results.npz") as f:
    return dict(f)


def _reference_logits(stories260k):
  ckpt, tok = stories260k
  lm = jaxsteer.load(str(ckpt), tokenizer=str(tok))
  ids = np.asarray(jax.random.randint(jax.random.key(5), (8, 12), 1, lm.config.vocab_size))
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  return lm, lm(ids.astype(np.int32), mask)


@pytest.mark.skipif(not FOUR, reason="4 processes: opt-in with JAXSTEER_MP_PROCESSES=4")
def test_four_processes_forward_and_paca_step_equal_one_process(quick4, stories260k):
  _, logits = _reference_logits(stories260k)
  assert_close(quick4["logits"], logits)
  losses, leaves = _reference_steps("paca", steps=1)
  assert_close(quick4["paca_loss"], np.float32(losses))
  for i, want in enumerate(leaves):
    assert_close(quick4[f"paca_t{i}"], want, err_msg=f"leaf {i}")


def test_forward_ig_and_fit_equal_one_process(group, stories260k):
  lm, logits = _reference_logits(stories260k)
  assert_close(group["logits"], logits)
  ig = attribution.contrastive(lm, [1, 5, 6, 7], [9, 10], [11], steps=4)
  assert_close(group["ig_pos"], ig.scores_pos, rtol=1e-4, atol=1e-5)
  assert_close(group["ig_neg"], ig.scores_neg, rtol=1e-4, atol=1e-5)
  pairs = [
    grains.Pair([1, 5, 6], [9, 10], [11, 12]),
    grains.Pair([1, 20, 21], [30], [31, 32]),
  ]
  # k = every prompt candidate: no near-tie in the token ranking can change the selection
  vecs = grains.fit(lm, pairs, layers=[2], k=2, steps=4, aggregate="mean", progress=False)
  assert_close(group["fit"], np.asarray(vecs.vectors[0]), rtol=1e-4, atol=1e-5)


def _reference_steps(method, steps=2):
  model = TinyLlama(CONFIGS["nano"])
  p0 = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  toks = np.asarray(jax.random.randint(jax.random.key(2), (8, 9), 0, 64))
  batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
  plan = paca_jax.select(p0, r".*_proj", 4, jax.random.key(1))
  m = (
    paca_jax.Paca(plan)
    if method == "paca"
    else paca_jax.Lora(paca_jax.lora_plan(p0, r".*_proj", 2, alpha=4.0))
  )
  tr = paca_jax.Trainer(m, paca_jax.lm_loss_fn(model), optax.sgd(0.5))
  st = tr.init(p0, jax.random.key(3))
  losses = []
  for _ in range(steps):
    st, loss = tr.step(st, batch)
    losses.append(float(loss))
  return np.asarray(losses), [np.asarray(x) for x in jax.tree.leaves(st.trainable)]


@pytest.mark.parametrize("method", ["paca", "lora"])
def test_train_steps_equal_one_process(group, method):
  losses, leaves = _reference_steps(method)
  assert_close(group[f"{method}_loss"], np.float32(losses))
  for i, want in enumerate(leaves):
    assert_close(group[f"{method}_t{i}"], want, err_msg=f"leaf {i}")


def test_checkpoint_resume_equals_uninterrupted(group):
  # restored from the checkpoint both processes wrote after step 1, then one more step
  assert_close(group["resume_loss"], group["paca_loss"][1])
  i = 0
  while f"resume_t{i}" in group:
    np.testing.assert_array_equal(group[f"resume_t{i}"], group[f"paca_t{i}"])
    i += 1
  assert i > 0


def test_dead_peer_fails_fast_with_a_clear_error():
  with pytest.raises(RuntimeError, match=r"process 1 of 2 exited with code 3; its peers"):
    distributed.launch(WORKER, ["die"], num_processes=2, devices_per_process=1, timeout=TIMEOUT)


def test_hung_peer_fails_by_timeout():
  # The launch lasts exactly the timeout; 15 s is about twice what a 2-process start and
  # ``initialize`` take on one loaded core (a dead peer is reported after ~7 s).
  with pytest.raises(TimeoutError, match=r"still running after 15 s"):
    distributed.launch(WORKER, ["hang"], num_processes=2, devices_per_process=1, timeout=15)


def _gone(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/status") as f:
      return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
  except FileNotFoundError:
    return True


def test_workers_end_when_the_launcher_is_killed(tmp_path):
  # a launcher process (as pytest would be) starts two sleeping workers, then dies by SIGKILL:
  # no cleanup of its own runs, the workers must notice and exit
  code = (
    "import sys; from jaxsteer import distributed; distributed.launch(sys.argv[1], "
    "['sleep', sys.argv[2]], num_processes=2, devices_per_process=1, timeout=600)"
  )
  launcher = subprocess.Popen([sys.executable, "-c", code, str(WORKER), str(tmp_path)])
  try:
    deadline = time.monotonic() + TIMEOUT
    while not all((tmp_path / f"pid_{i}").exists() for i in range(2)):
      assert launcher.poll() is None, "the launcher ended early"
      assert time.monotonic() < deadline, "the workers never started"
      time.sleep(0.2)
    pids = [int((tmp_path / f"pid_{i}").read_text()) for i in range(2)]
    assert not any(_gone(p) for p in pids)
  finally:
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
  deadline = time.monotonic() + 60
  while not all(_gone(p) for p in pids):
    if time.monotonic() > deadline:
      for p in pids:  # do not leave them behind even when the test fails
        if not _gone(p):
          os.kill(p, signal.SIGKILL)
      pytest.fail(f"workers {pids} still alive 60 s after their launcher was killed")
    time.sleep(0.2)


def test_launch_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="script not found"):
    distributed.launch(tmp_path / "nope.py")
  (tmp_path / "s.py").write_text("")
  with pytest.raises(ValueError, match="num_processes >= 1"):
    distributed.launch(tmp_path / "s.py", num_processes=0)
