"""Suite-wide setup: 8 fake CPU devices before JAX starts, data location, helpers."""

import os

# Must happen before JAX initialises its backends (STYLE.md convention 15).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

_REPO = pathlib.Path(__file__).resolve().parent.parent


def data_root() -> pathlib.Path:
  """Directory of the shared test data (``JAXSTEER_DATA``, default ``../shared/data``)."""
  return pathlib.Path(os.environ.get("JAXSTEER_DATA", _REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  root = data_root()
  if not root.is_dir():
    pytest.skip(f"shared test data not found at {root} (set JAXSTEER_DATA)")
  return root


@pytest.fixture(scope="session")
def stories260k(data_dir):
  ckpt = data_dir / "stories260K" / "stories260K.bin"
  tok = data_dir / "stories260K" / "tok512.bin"
  if not (ckpt.is_file() and tok.is_file()):
    pytest.skip(f"stories260K checkpoint not found under {data_dir}")
  return ckpt, tok


@pytest.fixture(autouse=True)
def _keep_cpu_affinity():
  """A command-line entry point run in-process with ``--threads 1`` (``main(argv)`` of
  ``experiments.bench_models``, ``benchmarks/*_bench.py``; ``set_threads(1, pin_core=True)``)
  pins its process to one core; here that process is the test worker, so the affinity is put
  back after each test (no test may leave a worker on one core)."""
  if not hasattr(os, "sched_getaffinity"):
    yield
    return
  cpus = os.sched_getaffinity(0)
  yield
  if os.sched_getaffinity(0) != cpus:
    os.sched_setaffinity(0, cpus)
