"""conftest.py for neural-tangents 0.6.5's own test suite, run under ``ntk`` (scripts/nt_upstream.py).

``scripts/nt_upstream.py`` copies this file to the root of the unpacked sdist as ``conftest.py``.
It imports ``ntk`` FIRST, so every ``neural_tangents`` import in the suite goes through ntk's
compatibility layer (ntk/_src/compat.py) exactly as user code does. Beyond that it adds only
test-infrastructure shims; each is listed in ``SHIMS`` with the reason it cannot hide a gap in the
library. (The source rewrites of the test files are listed in scripts/nt_upstream.py, REWRITES.)
"""

import os
import signal

import pytest

# One CPU device, as in upstream CI: the suite's pmap stub (test_utils.stub_out_pmap) no longer
# reaches NT 0.6.5's jax.local_device_count(), so fake devices would change the batch sizes the
# tests were written for. (The project's own tests/conftest.py uses 8 fake devices.)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ntk  # noqa: E402,F401  -- the compatibility layer, before any test module imports NT

SHIMS = {
  "absl flags marked parsed": (
    "upstream runs each file with absltest.main(), which parses absl flags; under pytest nothing "
    "does, and tests/test_utils.py reads FLAGS.nt_num_generated_cases at class-definition time. "
    "Marking the flags parsed gives every flag its default (NT_NUM_GENERATED_CASES from the "
    "environment). Flags only steer the test harness; the library reads none."
  ),
  "jax_threefry_partitionable=False": (
    "the random-bit stream the suite was written against (JAX's default before 0.5). Several "
    "tests draw x1 and x2 from ONE key with different shapes (e.g. batching_test's "
    "_test_analytic_kernel_composition: normal(rng, (8, ...)) and normal(rng, (2, ...))); under "
    "the partitionable stream x2 equals the first rows of x1, so a batch of x1 coincides with x2 "
    "and the batched kernel's x1_is_x2 flag differs from the unbatched one. Both streams draw from "
    "the same distribution; the library never depends on which stream produced its inputs or "
    "its initial parameters."
  ),
  "per-test time limit (NT_TEST_TIMEOUT_S)": (
    "a SIGALRM that turns a test running longer than the limit into a failure reported as a "
    "time-out; it never turns a failure into a pass."
  ),
  "per-test CPU-time limit (NT_TEST_CPU_LIMIT_S)": (
    "as above, but counting the CPU time of the test process (all threads, SIGPROF), so that on "
    "a loaded machine a time-out means the test needed that much work, not that it waited for a "
    "core; it never turns a failure into a pass."
  ),
}


def pytest_configure(config):
  import jax
  from absl import flags

  jax.config.update("jax_threefry_partitionable", False)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class TestTimeout(Exception):
  """A test exceeded NT_TEST_TIMEOUT_S."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
  limit = int(os.environ.get("NT_TEST_TIMEOUT_S", "0"))
  cpu_limit = int(os.environ.get("NT_TEST_CPU_LIMIT_S", "0"))
  if limit <= 0 and cpu_limit <= 0:
    yield
    return

  def on_alarm(signum, frame):
    raise TestTimeout(f"time-out: test ran longer than NT_TEST_TIMEOUT_S={limit} s")

  def on_prof(signum, frame):
    raise TestTimeout(f"time-out: test used more than NT_TEST_CPU_LIMIT_S={cpu_limit} CPU-s")

  old = signal.signal(signal.SIGALRM, on_alarm)
  old_prof = signal.signal(signal.SIGPROF, on_prof)
  if limit > 0:
    signal.alarm(limit)
  if cpu_limit > 0:
    signal.setitimer(signal.ITIMER_PROF, cpu_limit)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.signal(signal.SIGALRM, old)
    signal.signal(signal.SIGPROF, old_prof)
