"""Per-program XLA compiler options for the library's jitted programs on the CPU backend.

XLA's CPU backend (jaxlib 0.10) hands dots, reductions and elementwise fusions to YNNPACK by
default. Which split is fastest depends on the program, so each jitted program of the library names
its kind and gets the options measured best for that kind (a registry, ``PROGRAMS``). The options
are ``DebugOptions`` fields passed through ``jax.jit(..., compiler_options=...)``: they change
which kernels run, not what is computed (results agree to float32 rounding; tests check it), and
they touch nothing outside the library's own programs (no ``XLA_FLAGS``).

Evidence (this workplace's 2-core Intel Xeon, one pinned core, December 2026; each variant a
separately jitted copy of the same program in one process, calls alternated, fastest of 8-10;
load average 1.3-2.5 because the other core was busy, so the ratios, not the times, are the claim):

* ``"ig"`` (Integrated Gradients: a vmapped forward + backward over the quadrature points;
  ``benchmarks/grains_bench.py``'s 6-layer Llama, 20 points x 64 tokens): YNNPACK for dots only
  took 0.388 s vs 0.431 s with the default (0.90x) and 0.401 vs 0.532 s in a second run (0.75x);
  no YNNPACK at all: 0.463 s (worse than dots only). In separate processes (3 rounds each, min):
  0.358-0.364 s vs 0.415-0.419 s (0.86x). The default's YNNPACK reductions (softmax and RMSNorm
  backward sums) were the slow part in the profile.
* ``"forward"`` (one forward pass: prefill, log-likelihoods, hidden-state capture;
  ``experiments.bench_models``' 31.6M Llama, batch 4 x 64 tokens): without YNNPACK 2277 / 2326 /
  2165 tokens/s vs 2102 / 1566 / 1765 with the default (three runs, each alternated in one
  process); YNNPACK for dots only: 1974 vs 2121 (worse).
* ``"decode"`` (the greedy KV-cache loop, same model, 32 new tokens): without YNNPACK 274 / 301 /
  226 / 228 tokens/s vs 256 / 230 / 172 / 218 with the default (64- and 256-token prompts, four
  alternated runs; two earlier loaded runs were mixed: 261 vs 243, 233 vs 245).

``options(kind)`` returns the kind's options when the default backend is the CPU and this jaxlib
accepts them (checked once per kind by compiling a one-line program; a refusal is a warning and the
defaults are used, never a silent change of behaviour), else ``{}``. ``JAXSTEER_XLA_OPTIONS=0``
in the environment turns every kind off (XLA's defaults everywhere). ``jit(fun, kind=...)`` is
``jax.jit`` with the kind's options chosen at the first call or ``lower`` (importing the library
does not start a JAX backend, so ``jax.distributed.initialize`` can still come first).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["PROGRAMS", "ENV_VAR", "options", "jit"]

_YNN = "xla_cpu_experimental_ynn_fusion_type"

PROGRAMS: dict[str, dict[str, str]] = {
  "ig": {_YNN: "LIBRARY_FUSION_TYPE_DOT"},
  "forward": {_YNN: ""},
  "decode": {_YNN: ""},
}
ENV_VAR = "JAXSTEER_XLA_OPTIONS"


def _enabled() -> bool:
  return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


@functools.cache
def _accepted(kind: str) -> dict[str, str]:
  opts = PROGRAMS[kind]
  if not opts or jax.default_backend() != "cpu":
    return {}
  try:
    jax.jit(lambda x: x * 2.0, compiler_options=dict(opts)).lower(jnp.zeros(2)).compile()
  except Exception as e:  # noqa: BLE001 -- any refusal means: fall back to XLA's defaults
    warnings.warn(
      f"jaxsteer: this jaxlib refused the XLA options {opts} of {kind!r} programs "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); they compile with XLA's defaults",
      RuntimeWarning,
      stacklevel=3,
    )
    return {}
  return dict(opts)


def options(kind: str) -> dict[str, str]:
  """The XLA compiler options for a ``kind`` of program (see the module docstring): a new dict,
  ``{}`` off the CPU backend, with ``JAXSTEER_XLA_OPTIONS=0``, or where this jaxlib refuses them."""
  if kind not in PROGRAMS:
    raise ValueError(f"unknown program kind {kind!r}; known: {sorted(PROGRAMS)}")
  return dict(_accepted(kind)) if _enabled() else {}


class _LazyJit:
  """``jax.jit(fun, compiler_options=options(kind), **kw)``, built at the first call or ``lower``
  and rebuilt if the options change (the environment switch)."""

  def __init__(self, fun: Callable, kind: str, kw: dict):
    if kind not in PROGRAMS:
      raise ValueError(f"unknown program kind {kind!r}; known: {sorted(PROGRAMS)}")
    self._fun, self._kind, self._kw = fun, kind, kw
    self._built: tuple[tuple, Callable] | None = None
    functools.update_wrapper(self, fun)

  def _jitted(self):
    opts = options(self._kind)
    key = tuple(sorted(opts.items()))
    if self._built is None or self._built[0] != key:
      self._built = (key, jax.jit(self._fun, compiler_options=opts or None, **self._kw))
    return self._built[1]

  def __call__(self, *args, **kwargs):
    return self._jitted()(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._jitted().lower(*args, **kwargs)

  def eval_shape(self, *args, **kwargs):
    return self._jitted().eval_shape(*args, **kwargs)

  def trace(self, *args, **kwargs):
    return self._jitted().trace(*args, **kwargs)


def jit(fun: Callable | None = None, *, kind: str, **jit_kwargs):
  """``jax.jit`` with the compiler options of ``kind`` (``"ig"``, ``"forward"``, ``"decode"``).

  Usable as ``jit(f, kind="forward", static_argnames=...)`` or as a decorator
  ``@functools.partial(jit, kind="ig", static_argnames=...)``.
  """
  if fun is None:
    return functools.partial(jit, kind=kind, **jit_kwargs)
  return _LazyJit(fun, kind, jit_kwargs)
