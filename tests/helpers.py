"""Test helpers shared by every package's tests."""

import contextlib
import threading

import jax

_lock = threading.Lock()
_compiles = [0]


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == "/jax/core/compile/backend_compile_duration":
    with _lock:
      _compiles[0] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
  count: int = 0


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations inside the block.

  >>> with count_compiles() as c:
  ...   f(x)
  >>> assert c.count == 0
  """
  counter = CompileCounter()
  start = _compiles[0]
  try:
    yield counter
  finally:
    counter.count = _compiles[0] - start


@contextlib.contextmanager
def assert_no_compile():
  with count_compiles() as c:
    yield
  assert c.count == 0, f"expected no compilation, got {c.count}"
