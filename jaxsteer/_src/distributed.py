"""Multi-process JAX: initialise a process group, build one global mesh, launch local groups.

The same script runs on a pod (one process per host, the cluster's auto-detection fills in the
coordinator, process count and index) and on one machine (``python -m jaxsteer.launch -n 2
script.py``: N processes of K fake CPU devices each, CPU collectives through gloo). See
docs/multiprocess.md.

Usage (inside the script)::

  from jaxsteer import distributed
  distributed.initialize()                    # env from the launcher, or the cluster's own
  mesh = distributed.global_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  lm = jaxsteer.load(path, mesh=mesh)         # each process reads only its own shards

Launching from Python (what the tests do)::

  results = distributed.launch("worker.py", num_processes=2, devices_per_process=4, timeout=120)

A process that exits non-zero ends the whole group at once (its peers are killed, a
``RuntimeError`` names it and shows the end of its stderr); a group that runs past ``timeout``
is killed and raises ``TimeoutError``. Nothing hangs the caller. A launched process also ends
when its launcher dies without cleaning up (killed by SIGKILL, say): :func:`initialize` starts a
thread that watches the launcher's pid (``$JAXSTEER_LAUNCHER_PID``) and exits the process once it
is gone (no ``PR_SET_PDEATHSIG``: a fork-time hook that JAX warns about).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np

__all__ = [
  "ENV_COORDINATOR",
  "ENV_LAUNCHER_PID",
  "ENV_NUM_PROCESSES",
  "ENV_PROCESS_ID",
  "ProcessResult",
  "free_port",
  "global_mesh",
  "initialize",
  "launch",
  "exit_with_launcher",
  "main",
  "to_host",
]

ENV_COORDINATOR = "JAXSTEER_COORDINATOR"
ENV_NUM_PROCESSES = "JAXSTEER_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSTEER_PROCESS_ID"
ENV_LAUNCHER_PID = "JAXSTEER_LAUNCHER_PID"
# Exit status of a launched process whose launcher died (EX_SOFTWARE-like, not a signal).
ORPHAN_EXIT_CODE = 70


def exit_with_launcher(poll_s: float = 1.0) -> bool:
  """Ends this process (``os._exit``) once the launcher in ``$JAXSTEER_LAUNCHER_PID`` is gone.

  A daemon thread compares ``os.getppid()`` with the launcher's pid every ``poll_s`` seconds: a
  dead parent re-parents this process. Returns whether the watch started (only under
  :func:`launch`). Called by :func:`initialize`.
  """
  pid = os.environ.get(ENV_LAUNCHER_PID)
  if not pid or getattr(exit_with_launcher, "_started", False):
    return False
  pid = int(pid)
  if os.getppid() != pid:  # already orphaned
    os._exit(ORPHAN_EXIT_CODE)

  def watch():
    while True:
      time.sleep(poll_s)
      if os.getppid() != pid:
        os._exit(ORPHAN_EXIT_CODE)

  threading.Thread(target=watch, name="jaxsteer-exit-with-launcher", daemon=True).start()
  exit_with_launcher._started = True
  return True


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  heartbeat_timeout_s: int = 100,
  initialization_timeout_s: int = 300,
) -> None:
  """``jax.distributed.initialize`` with arguments from the launcher's environment, if any.

  Without arguments and without the launcher's variables, JAX's cluster auto-detection runs
  (Cloud TPU, SLURM, Open MPI, Kubernetes ...). On the CPU backend, collectives across processes
  go through gloo (``jax_cpu_collectives_implementation``). Call before anything touches a device.

  Args:
    coordinator_address: ``host:port`` of process 0 (default ``$JAXSTEER_COORDINATOR``).
    num_processes, process_id: default ``$JAXSTEER_NUM_PROCESSES``, ``$JAXSTEER_PROCESS_ID``.
    heartbeat_timeout_s: after this long without a heartbeat a peer is declared dead and every
      process of the group is ended by the coordination service.
    initialization_timeout_s: how long to wait for all processes to connect.
  """
  exit_with_launcher()  # a process of launch() ends with its launcher
  import jax

  env = os.environ
  if coordinator_address is None and ENV_COORDINATOR in env:
    coordinator_address = env[ENV_COORDINATOR]
    num_processes = int(env[ENV_NUM_PROCESSES]) if num_processes is None else num_processes
    process_id = int(env[ENV_PROCESS_ID]) if process_id is None else process_id
  # Only affects the CPU backend (GPU/TPU collectives are NCCL / ICI); harmless on a pod.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=heartbeat_timeout_s,
    initialization_timeout=initialization_timeout_s,
  )


def global_mesh(shape: Sequence[int], names: Sequence[str]):
  """A mesh over every device of every process, processes along the leading axes.

  Devices are ordered by (process index, device id) and reshaped to ``shape``, so with P processes
  the first mesh axes whose sizes multiply to P span the processes and the rest stay inside one
  process: ``global_mesh((2, 4), ("data", "fsdp"))`` on two processes puts ``data`` across them.
  """
  import jax

  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices; there are "
                     f"{len(devices)} ({jax.process_count()} processes)")  # fmt: skip
  arr = np.empty(len(devices), dtype=object)
  arr[:] = devices
  return jax.sharding.Mesh(
    arr.reshape(tuple(shape)),
    tuple(names),
    axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
  )


def to_host(x) -> np.ndarray:
  """``np.asarray(x)``, also for a ``jax.Array`` that spans several processes (all-gathered)."""
  import jax

  if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def free_port() -> int:
  """An unused TCP port on localhost."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class ProcessResult:
  process_id: int
  returncode: int
  stdout: str
  stderr: str


def _tail(text: str, n: int = 2000) -> str:
  return text if len(text) <= n else "..." + text[-n:]


def launch(
  script: str | os.PathLike,
  args: Sequence[str] = (),
  *,
  num_processes: int = 2,
  devices_per_process: int = 4,
  timeout: float = 300.0,
  env: dict[str, str] | None = None,
  poll_s: float = 0.2,
) -> list[ProcessResult]:
  """Runs ``python script args`` as ``num_processes`` JAX processes on localhost.

  Each process gets ``devices_per_process`` fake CPU devices and the launcher's variables
  (coordinator on a free localhost port, process count, index); the script calls
  :func:`initialize`. Returns one :class:`ProcessResult` per process, in order.

  Raises:
    ValueError: ``num_processes`` or ``devices_per_process`` below 1, or a missing script.
    RuntimeError: a process exited non-zero (its peers are killed at once; the message names it).
    TimeoutError: the group ran past ``timeout`` seconds (every process is killed).
  """
  script = pathlib.Path(script)
  if not script.is_file():
    raise ValueError(f"script not found: {script}")
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(
      f"need num_processes >= 1 and devices_per_process >= 1, got {num_processes}, "
      f"{devices_per_process}"
    )
  base = dict(os.environ if env is None else env)
  flags = " ".join(
    f for f in base.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
  )
  base["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}"
  base.setdefault("JAX_PLATFORMS", "cpu")
  base[ENV_COORDINATOR] = f"127.0.0.1:{free_port()}"
  base[ENV_NUM_PROCESSES] = str(num_processes)
  base[ENV_LAUNCHER_PID] = str(os.getpid())
  procs, files = [], []
  with tempfile.TemporaryDirectory(prefix="jaxsteer-launch-") as tmp:
    try:
      for i in range(num_processes):
        out = open(pathlib.Path(tmp) / f"{i}.out", "w+")  # noqa: SIM115
        err = open(pathlib.Path(tmp) / f"{i}.err", "w+")  # noqa: SIM115
        files.append((out, err))
        procs.append(
          subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            env={**base, ENV_PROCESS_ID: str(i)},
            stdout=out,
            stderr=err,
            start_new_session=True,  # own process group: killing it ends its children too
          )
        )
      deadline = time.monotonic() + timeout
      failed = None
      while True:
        codes = [p.poll() for p in procs]
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
          failed = bad[0]
          break
        if all(c == 0 for c in codes):
          break
        if time.monotonic() > deadline:
          break
        time.sleep(poll_s)
      running = [i for i, p in enumerate(procs) if p.poll() is None]
    finally:
      for p in procs:
        _kill(p)
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, files)):
      out.seek(0)
      err.seek(0)
      results.append(ProcessResult(i, p.returncode, out.read(), err.read()))
      out.close()
      err.close()
  if failed is not None:
    r = results[failed]
    raise RuntimeError(
      f"process {failed} of {num_processes} exited with code {r.returncode}; its peers were "
      f"stopped. stderr of process {failed}:\n{_tail(r.stderr)}"
    )
  if running:
    raise TimeoutError(
      f"processes {running} of {num_processes} still running after {timeout:.0f} s (a hung "
      f"peer?); all were killed. stderr of process {running[0]}:\n"
      f"{_tail(results[running[0]].stderr)}"
    )
  return results


def _kill(p: subprocess.Popen) -> None:
  if p.poll() is not None:
    return
  try:
    os.killpg(p.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  p.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m jaxsteer.launch [-n N] [-d K] [--timeout S] script.py [args...]``."""
  import argparse

  ap = argparse.ArgumentParser(
    prog="python -m jaxsteer.launch",
    description="Run a JAX script as N local processes (K fake CPU devices each, gloo).",
  )
  ap.add_argument("-n", "--num-processes", type=int, default=2)
  ap.add_argument("-d", "--devices-per-process", type=int, default=4)
  ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole group")
  ap.add_argument("script")
  ap.add_argument("args", nargs=argparse.REMAINDER)
  a = ap.parse_args(argv)
  try:
    results = launch(
      a.script,
      a.args,
      num_processes=a.num_processes,
      devices_per_process=a.devices_per_process,
      timeout=a.timeout,
    )
  except (ValueError, RuntimeError, TimeoutError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, ValueError) else 1
  for r in results:
    for line in r.stdout.splitlines():
      print(f"[{r.process_id}] {line}")
  return 0
