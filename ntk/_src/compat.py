"""Compatibility layer: neural-tangents 0.6.5 on current JAX (0.10.x), without TensorFlow.

Paper context: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024) builds on neural-tangents (NT). NT 0.6.5 (the last release)
fails to import on JAX >= 0.7 and pulls TensorFlow through ``neural_tangents.experimental``.

Usage::

  import ntk                      # applies the layer, then imports neural_tangents
  import neural_tangents as nt    # now works; TensorFlow is never loaded

What the layer does (and nothing else). NT is *not* modified on disk; all edits are names that
exist only while NT's modules execute their import statements, plus one stub module:

1. ``neural_tangents.experimental`` (TF/tf2jax interop only) is replaced by a stub module whose
   attributes raise ``ImportError`` with an explanation, so ``import neural_tangents`` never
   imports TensorFlow.
2. While NT is imported, ``jax.core`` temporarily gains ``Jaxpr, JaxprEqn, Literal, Var,
   Primitive`` (from ``jax.extend.core``), a ``jax.util`` module with strict ``safe_map`` /
   ``safe_zip`` is temporarily registered, and ``jax.interpreters.ad`` temporarily gains a
   placeholder ``zeros_like_p`` primitive (the primitive was removed from JAX; NT only registers
   rules for it) and an empty ``reducing_transposes`` table. All of these are removed again after
   the import, so other code sees an unmodified JAX. The placeholder's rule entries are dropped
   from NT's rule tables.
3. In ``neural_tangents._src.empirical`` only, the module-level name ``jnp`` is rebound to a proxy
   of ``jax.numpy`` whose ``size`` also accepts ``jax.ShapeDtypeStruct`` (NT calls
   ``jnp.size`` on shape structs in implementation 2, which JAX 0.10 deprecates with a warning
   and will turn into an error).

Works afterwards (tested in ``tests/ntk/test_compat.py``): ``stax`` layers and their
``kernel_fn`` (Dense, Erf, Sign, Relu, serial, parallel, ...), ``monte_carlo_kernel_fn``,
``empirical_ntk_fn`` with implementations 1 (Jacobian contraction) and 2 (NTK-vector products),
``predict``, ``batch``. Not supported: implementation 3 (structured derivatives; uses JAX
internals whose signatures changed) and ``neural_tangents.experimental`` (TensorFlow).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

SUPPORTED_NT_VERSION = "0.6.5"
_EXPERIMENTAL = "neural_tangents.experimental"


def _strict_map(f, *args):
  n = len(args[0])
  for a in args[1:]:
    if len(a) != n:
      raise ValueError(f"length mismatch: {[len(a) for a in args]}")
  return list(map(f, *args))


def _strict_zip(*args):
  n = len(args[0])
  for a in args[1:]:
    if len(a) != n:
      raise ValueError(f"length mismatch: {[len(a) for a in args]}")
  return list(zip(*args))


class _ExperimentalStub(types.ModuleType):
  """Stands in for ``neural_tangents.experimental`` (TensorFlow interop, unsupported here)."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    raise ImportError(
      f"neural_tangents.experimental.{name} needs TensorFlow and tf2jax, which `ntk` does not "
      "load; it is unavailable under ntk's compatibility layer (ntk/_src/compat.py)."
    )


@contextlib.contextmanager
def _temporary_jax_names():
  """Adds the removed JAX names NT imports, for the duration of the import only."""
  import jax
  import jax.core
  import jax.extend.core as ext_core
  from jax.interpreters import ad

  added: list[tuple[object, str]] = []

  def add(obj, name, value):
    if not hasattr(obj, name):
      setattr(obj, name, value)
      added.append((obj, name))

  for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
    add(jax.core, name, getattr(ext_core, name))
  placeholder = ext_core.Primitive("ntk_compat_zeros_like_placeholder")
  add(ad, "zeros_like_p", placeholder)
  add(ad, "reducing_transposes", {})

  util_added = "jax.util" not in sys.modules
  if util_added:
    util = types.ModuleType("jax.util")
    util.safe_map = _strict_map
    util.safe_zip = _strict_zip
    sys.modules["jax.util"] = util
    add(jax, "util", util)
  try:
    yield placeholder
  finally:
    for obj, name in reversed(added):
      delattr(obj, name)
    if util_added:
      sys.modules.pop("jax.util", None)


class _JnpProxy(types.ModuleType):
  """``jax.numpy`` with a ``size`` that accepts objects exposing ``.shape`` (shape structs)."""

  def __init__(self, jnp):
    super().__init__("jax.numpy")
    self._jnp = jnp

  def __getattr__(self, name):
    return getattr(self._jnp, name)

  def size(self, a, axis=None):
    import math

    if axis is None and hasattr(a, "shape") and not hasattr(a, "__jax_array__"):
      return math.prod(a.shape)
    return self._jnp.size(a, axis)


def import_neural_tangents() -> types.ModuleType:
  """Imports neural-tangents under the compatibility layer (idempotent) and returns it."""
  if "neural_tangents" in sys.modules and "neural_tangents.stax" in sys.modules:
    return sys.modules["neural_tangents"]
  if _EXPERIMENTAL not in sys.modules:
    sys.modules[_EXPERIMENTAL] = _ExperimentalStub(_EXPERIMENTAL)
  with _temporary_jax_names() as placeholder:
    nt = importlib.import_module("neural_tangents")
    importlib.import_module("neural_tangents.stax")
    importlib.import_module("neural_tangents.predict")
    rules = importlib.import_module("neural_tangents._src.utils.rules")
    for table in (rules.STRUCTURE_RULES, rules.JACOBIAN_RULES):
      table.pop(placeholder, None)
  empirical = importlib.import_module("neural_tangents._src.empirical")
  if not isinstance(empirical.jnp, _JnpProxy):
    empirical.jnp = _JnpProxy(empirical.jnp)
  version = getattr(nt, "__version__", "?")
  if version != SUPPORTED_NT_VERSION:
    raise ImportError(
      f"ntk's compatibility layer targets neural-tangents {SUPPORTED_NT_VERSION}, found {version}"
    )
  return nt
