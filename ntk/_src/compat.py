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
3. In ``neural_tangents._src.empirical`` only, a few module-level names are rebound (``PATCHES``
   below, each tested on its own in ``tests/ntk/test_compat.py``): proxies of ``jnp``, ``lu``,
   ``ad`` and ``core`` that add what JAX 0.10 changed or removed (``jnp.size`` of shape structs,
   ``jnp.dtype`` of arrays, ``lu.wrap_init`` debug info, the new ``ad.linearize`` signature,
   ``core.DShapedArray``), and ports of three small functions (``_eqn_vjp_fn``,
   ``_write_cotangent``, ``_get_flops``) to JAX 0.10's transpose tables and ``cost_analysis``.
4. In ``neural_tangents._src.predict`` only, the same way (``PREDICT_PATCHES``): ``sp`` becomes a
   proxy whose ``linalg.eigvalsh`` maps SciPy's removed ``eigvals=`` keyword to
   ``subset_by_index=`` (``max_learning_rate``), and ``_get_cho_solve`` / ``_get_fns_in_eigenbasis``
   factorise a traced kernel in its own trace instead of leaking it out of ``eval_context``
   (``gradient_descent_mse`` under ``vmap``/``jit``).

Works afterwards (tested in ``tests/ntk/test_compat.py``, and by NT's own test suite through
``scripts/nt_upstream.py``, table in docs/ntk_upstream.md): ``stax`` layers and their
``kernel_fn``, ``monte_carlo_kernel_fn``, ``empirical_ntk_fn`` / ``empirical_kernel_fn`` with
every implementation (1 Jacobian contraction, 2 NTK-vector products, 3 structured derivatives,
0 AUTO), ``predict``, ``batch``. Not supported: ``neural_tangents.experimental`` (TensorFlow).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

SUPPORTED_NT_VERSION = "0.6.5"
INSTALL_COMMAND = f"pip install --no-deps neural-tangents=={SUPPORTED_NT_VERSION} frozendict"
INSTALL_HINT = (
  f"ntk needs neural-tangents {SUPPORTED_NT_VERSION}, which is not installed; install it with "
  f"`{INSTALL_COMMAND}` (--no-deps: its TensorFlow requirement is only for the TF interop that ntk "
  "never loads)"
)
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
  """``jax.numpy`` whose ``size`` accepts shape structs and whose ``dtype`` accepts arrays.

  NT calls ``jnp.size`` on ``jax.ShapeDtypeStruct`` (implementation 2) and
  ``tree_map(jnp.dtype, params)`` on arrays (every implementation); JAX 0.10 deprecates both with
  a ``DeprecationWarning`` and will turn them into errors.
  """

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

  def dtype(self, a, *args, **kwargs):
    import jax
    import numpy as np

    if not args and not kwargs and isinstance(a, jax.Array | np.ndarray):
      return np.dtype(a.dtype)
    return self._jnp.dtype(a, *args, **kwargs)


class _LuProxy(types.ModuleType):
  """``jax.extend.linear_util`` whose ``wrap_init`` supplies the ``DebugInfo`` JAX 0.10 wants.

  NT's implementation 3 calls ``lu.wrap_init(fn)``; without ``debug_info`` JAX 0.10 warns
  (``DeprecationWarning``, to become an error).
  """

  def __init__(self, lu):
    super().__init__("jax.extend.linear_util")
    self._lu = lu

  def __getattr__(self, name):
    return getattr(self._lu, name)

  def wrap_init(self, f, params=None, *, debug_info=None):
    if debug_info is None:
      import jax.api_util

      debug_info = jax.api_util.debug_info("neural_tangents empirical", f, (), {})
    return self._lu.wrap_init(f, params, debug_info=debug_info)


# ----------------------------------------------------------------- runtime patches (empirical.py)
#
# Each patch rebinds ONE module-level name of ``neural_tangents._src.empirical`` (never JAX, never
# another module), so the edit is visible to NT's empirical-kernel code only. ``PATCHES`` lists them
# in the order applied; ``tests/ntk/test_compat.py`` tests each one on its own.


class _Pval:
  """Stands in for the ``PartialVal`` objects NT reads ``is_known()`` from (known = zero tangent)."""

  __slots__ = ("_known",)

  def __init__(self, known: bool):
    self._known = bool(known)

  def is_known(self) -> bool:
    return self._known


class _AdProxy(types.ModuleType):
  """``jax.interpreters.ad`` with NT 0.6.5's ``linearize(fn_flat, *primals, has_aux)`` signature.

  JAX 0.10's ``ad.linearize(traceable, primals_ft, has_aux, is_vjp)`` takes a plain function and a
  ``FlatTree`` and returns ``(out_primals_ft, out_zeros, jaxpr, consts)``; NT expects a
  ``WrappedFun`` and positional primals and reads ``(out_primals, pvals, jaxpr, consts)`` with
  ``pval.is_known()`` meaning "tangent is symbolically zero". ``source_info_util`` (read by NT's
  ``_backward_pass``) moved to ``jax._src``. Every other attribute passes through.
  """

  def __init__(self, ad):
    super().__init__("jax.interpreters.ad")
    self._ad = ad

  def __getattr__(self, name):
    if name == "source_info_util":
      from jax._src import source_info_util

      return source_info_util
    return getattr(self._ad, name)

  @staticmethod
  def linearize(fn_flat, *primals, has_aux=False):
    from jax._src.interpreters import ad as ad_src
    from jax._src.tree_util import FlatTree

    if has_aux:
      raise NotImplementedError("ntk compat: linearize(has_aux=True) is not used by NT 0.6.5")
    out_ft, out_zeros, jaxpr, consts = ad_src.linearize(
      lambda *xs: fn_flat.call_wrapped(*xs), FlatTree.flatten(tuple(primals)), has_aux=False
    )[:4]
    return list(out_ft.unflatten()), [_Pval(z) for z in out_zeros], jaxpr, consts


class _NoSuchAval:
  """``core.DShapedArray`` (dynamic shapes) was removed; no aval is ever of this type."""


class _CoreProxy(types.ModuleType):
  """``jax.core`` plus the names NT's empirical code reads at run time that JAX 0.10 removed."""

  DShapedArray = _NoSuchAval

  def __init__(self, core):
    super().__init__("jax.core")
    self._core = core

  def __getattr__(self, name):
    if name in ("Var", "Literal", "Primitive", "Jaxpr", "JaxprEqn"):
      import jax.extend.core as ext_core

      return getattr(ext_core, name)
    return getattr(self._core, name)


def _eqn_vjp_fn(eqn, cts_in, *invals):
  """Port of NT's ``_eqn_vjp_fn`` (transpose one equation) to JAX 0.10's transpose tables.

  Changes against NT 0.6.5: ``ad.source_info_util`` is ``jax._src.source_info_util``; the removed
  ``Primitive.map_primitive`` / ``ad.reducing_transposes`` branches are gone; primitives that have
  only an accumulator-style ("fancy") transpose in JAX 0.10 (``slice``, ``dynamic_slice``, call
  primitives, ...) are transposed through that rule with ``ValAccum`` stand-ins for the undefined
  primals, exactly as ``jax._src.interpreters.ad.backward_pass3`` does.
  """
  from jax._src import source_info_util
  from jax._src.interpreters import ad as ad_src

  if eqn is None:
    return (cts_in,)
  prim = eqn.primitive
  name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
  with source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack):
    if prim in ad_src.primitive_transposes and not prim.call_primitive:
      return ad_src.primitive_transposes[prim](cts_in, *invals, **eqn.params)
    accs = [
      ad_src.ValAccum(x.aval.to_ct_aval()) if ad_src.is_undefined_primal(x) else x for x in invals
    ]
    if prim in ad_src.fancy_transposes:
      ad_src.fancy_transposes[prim](cts_in, *accs, **eqn.params)
    elif prim.call_primitive:
      params = dict(eqn.params)
      call_jaxpr = params.pop("call_jaxpr")
      rule = ad_src.get_primitive_transpose(prim)
      cts = cts_in if prim.multiple_results else [cts_in]
      cts_out = rule(params, call_jaxpr, list(invals), cts, [v.aval for v in eqn.outvars])
      for a, ct in zip(accs, cts_out, strict=True):
        if isinstance(a, ad_src.GradAccum):
          a.accum(ct)
    else:
      ad_src.get_primitive_transpose(prim)  # raises NotImplementedError naming the primitive
    return [a.freeze() if isinstance(a, ad_src.GradAccum) else None for a in accs]


def _write_cotangent(prim, ct_env, v, ct):
  """Port of NT's ``_write_cotangent``: the ``jax_enable_checks`` branch used the removed
  ``core.get_aval`` / ``core.lattice_join`` / ``strip_named_shape``; it now checks that the
  accumulated cotangent has the variable's shape and dtype (weak type ignored)."""
  import jax
  import jax.extend.core as ext_core
  from jax._src.interpreters import ad as ad_src

  assert ct is not ad_src.Zero, (prim, v.aval)
  if ct is None or type(v) is ext_core.Literal or type(ct) is ad_src.Zero:
    return
  ct_env[v] = ad_src.add_tangents(ct_env[v], ct) if v in ct_env else ct
  if jax.config.jax_enable_checks:
    got = jax.typeof(ct_env[v])
    assert (got.shape, got.dtype) == (v.aval.shape, v.aval.dtype), (prim, v.aval, got)


def _get_flops(f, optimize: bool, *a, **kw) -> float:
  """Port of NT's ``_get_flops``: ``Compiled.cost_analysis()`` returns a dict in JAX 0.10, not a
  one-element list of dicts (``NtkImplementation.AUTO`` failed with ``KeyError: 0``)."""
  import jax

  lowered = jax.jit(f).lower(*a, **kw)
  analysis = lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
  if isinstance(analysis, list | tuple):  # older JAX: one dict per device program
    analysis = analysis[0]
  return analysis["flops"]


def _patch_jnp(empirical):
  if not isinstance(empirical.jnp, _JnpProxy):
    empirical.jnp = _JnpProxy(empirical.jnp)


def _patch_lu(empirical):
  if not isinstance(empirical.lu, _LuProxy):
    empirical.lu = _LuProxy(empirical.lu)


def _patch_ad(empirical):
  if not isinstance(empirical.ad, _AdProxy):
    empirical.ad = _AdProxy(empirical.ad)


def _patch_core(empirical):
  if not isinstance(empirical.core, _CoreProxy):
    empirical.core = _CoreProxy(empirical.core)


def _setter(name, value):
  def patch(empirical):
    setattr(empirical, name, value)

  return patch


# (name rebound in neural_tangents._src.empirical, what it fixes, apply function)
PATCHES: tuple[tuple[str, str, object], ...] = (
  ("jnp", "jnp.size of shape structs (implementation 2), jnp.dtype of arrays", _patch_jnp),
  ("lu", "lu.wrap_init without DebugInfo (implementation 3)", _patch_lu),
  ("ad", "ad.linearize signature (implementation 3)", _patch_ad),
  ("core", "core.DShapedArray / core.Var removed (implementation 3)", _patch_core),
  ("_eqn_vjp_fn", "transpose tables, source_info_util (implementation 3)", None),
  ("_write_cotangent", "core.get_aval / lattice_join removed (implementation 3)", None),
  ("_get_flops", "cost_analysis() returns a dict (AUTO)", None),
)
_FUNCTION_PORTS = {
  "_eqn_vjp_fn": _eqn_vjp_fn,
  "_write_cotangent": _write_cotangent,
  "_get_flops": _get_flops,
}


def apply_empirical_patches(empirical, names=None) -> None:
  """Applies the runtime patches (all, or those in ``names``) to NT's empirical module."""
  for name, _, fn in PATCHES:
    if names is not None and name not in names:
      continue
    if fn is None:
      setattr(empirical, name, _FUNCTION_PORTS[name])
    else:
      fn(empirical)


# ------------------------------------------------------------------ runtime patches (predict.py)
#
# The same rule for ``neural_tangents._src.predict``: each patch rebinds ONE module-level name of
# that module (``PREDICT_PATCHES``), tested on its own in ``tests/ntk/test_compat.py``. Both gaps
# were found by NT's own ``tests/predict_test.py`` (docs/ntk_upstream.md).


class _ScipyLinalgProxy(types.ModuleType):
  """``scipy.linalg`` whose ``eigvalsh`` still takes NT's ``eigvals=(lo, hi)`` keyword.

  SciPy 1.14 removed the keyword (deprecated since 1.5) in favour of ``subset_by_index=[lo, hi]``,
  the same inclusive index range, so ``nt.predict.max_learning_rate`` raised ``TypeError`` on CPU.
  """

  def __init__(self, linalg):
    super().__init__("scipy.linalg")
    self._linalg = linalg

  def __getattr__(self, name):
    return getattr(self._linalg, name)

  def eigvalsh(self, a, b=None, *args, eigvals=None, **kwargs):
    if eigvals is not None:
      if kwargs.get("subset_by_index") is not None:
        raise TypeError("eigvalsh: give eigvals or subset_by_index, not both")
      kwargs["subset_by_index"] = list(eigvals)
    return self._linalg.eigvalsh(a, b, *args, **kwargs)


class _ScipyProxy(types.ModuleType):
  """``scipy`` as NT's predict module sees it: ``sp.linalg`` is ``_ScipyLinalgProxy``."""

  def __init__(self, sp):
    super().__init__("scipy")
    self._sp = sp
    import scipy.linalg

    self.linalg = _ScipyLinalgProxy(scipy.linalg)

  def __getattr__(self, name):
    return getattr(self._sp, name)


def _patch_sp(predict):
  if not isinstance(predict.sp, _ScipyProxy):
    predict.sp = _ScipyProxy(predict.sp)


def _in_operand_trace(fn):
  """Runs ``fn(matrix, ...)`` in the trace ``matrix`` belongs to, as NT 0.6.5 relied on.

  ``gradient_descent_mse`` factorises the train-train kernel once, inside
  ``jax.core.eval_context()`` (so that a solver ``lru_cache``d on first use never holds tracers of
  a ``jit`` it happened to be called in), through ``_get_cho_solve`` / ``_get_fns_in_eigenbasis``.
  Before JAX's stackless tracing (0.4.36) an operation on a tracer ran in that tracer's own trace
  even inside ``eval_context``; now it runs in the ambient eval trace and JAX raises
  ``UnexpectedTracerError`` whenever the kernel itself is a tracer (``gradient_descent_mse`` under
  ``vmap``/``jit``/``grad``, e.g. NT's ``testNTKMeanCovPrediction``). The wrapper restores the
  old rule: a traced matrix is factorised in its own trace; a concrete one exactly as before
  (eagerly, under NT's ``eval_context``). The returned solver closes over values of the kernel's
  trace, as it did in NT 0.6.5 on older JAX.
  """
  import functools

  if getattr(fn, "_ntk_compat_wrapped", False):
    return fn

  @functools.wraps(fn)
  def wrapped(matrix, *args, **kwargs):
    import jax
    from jax._src import core as core_src

    if not isinstance(matrix, jax.core.Tracer):
      return fn(matrix, *args, **kwargs)
    with core_src.set_current_trace(matrix._trace):
      out = fn(matrix, *args, **kwargs)
      # _get_fns_in_eigenbasis returns a generator: build its functions here, in this trace.
      return tuple(out) if isinstance(out, types.GeneratorType) else out

  wrapped._ntk_compat_wrapped = True
  return wrapped


def _wrapper_setter(name):
  def patch(predict):
    setattr(predict, name, _in_operand_trace(getattr(predict, name)))

  return patch


# (name rebound in neural_tangents._src.predict, what it fixes, apply function)
PREDICT_PATCHES: tuple[tuple[str, str, object], ...] = (
  ("sp", "scipy.linalg.eigvalsh(eigvals=) removed in SciPy 1.14 (max_learning_rate)", _patch_sp),
  (
    "_get_cho_solve",
    "traced kernel factorised under eval_context: UnexpectedTracerError (gradient_descent_mse)",
    _wrapper_setter("_get_cho_solve"),
  ),
  (
    "_get_fns_in_eigenbasis",
    "as _get_cho_solve, for finite-time predictions (gradient_descent_mse)",
    _wrapper_setter("_get_fns_in_eigenbasis"),
  ),
)


def apply_predict_patches(predict, names=None) -> None:
  """Applies the runtime patches (all, or those in ``names``) to NT's predict module."""
  for name, _, fn in PREDICT_PATCHES:
    if names is None or name in names:
      fn(predict)


# The JAX versions ntk is tested with; the same range as the ``ntk`` extra in pyproject.toml
# (tests/ntk/test_compat.py checks both agree). scripts/ntk_newest_jax.sh runs the ntk tests
# against the newest JAX on the package registry.
TESTED_JAX = (">=0.10.0", "<0.11")


def check_jax_version() -> None:
  """Warns (``UserWarning``) if the installed JAX is outside ``TESTED_JAX``."""
  import warnings

  import jax

  def key(v):
    return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

  lo, hi = key(TESTED_JAX[0][2:]), key(TESTED_JAX[1][1:])
  if not (lo <= key(jax.__version__) < hi):
    warnings.warn(
      f"ntk's compatibility layer is tested with jax {','.join(TESTED_JAX)}, found "
      f"{jax.__version__}; run scripts/ntk_newest_jax.sh to see what breaks",
      stacklevel=3,
    )


def import_neural_tangents() -> types.ModuleType:
  """Imports neural-tangents under the compatibility layer (idempotent) and returns it.

  Raises:
    ImportError: neural-tangents is not installed (the message names the install command), or
      its version is not the supported one.
  """
  if "neural_tangents" in sys.modules and "neural_tangents.stax" in sys.modules:
    return sys.modules["neural_tangents"]
  check_jax_version()
  if _EXPERIMENTAL not in sys.modules:
    sys.modules[_EXPERIMENTAL] = _ExperimentalStub(_EXPERIMENTAL)
  with _temporary_jax_names() as placeholder:
    try:
      nt = importlib.import_module("neural_tangents")
    except ModuleNotFoundError as e:
      if e.name != "neural_tangents":
        raise
      sys.modules.pop(_EXPERIMENTAL, None)
      raise ImportError(INSTALL_HINT, name="neural_tangents") from e
    importlib.import_module("neural_tangents.stax")
    importlib.import_module("neural_tangents.predict")
    rules = importlib.import_module("neural_tangents._src.utils.rules")
    for table in (rules.STRUCTURE_RULES, rules.JACOBIAN_RULES):
      table.pop(placeholder, None)
  version = getattr(nt, "__version__", "?")
  if version != SUPPORTED_NT_VERSION:
    raise ImportError(
      f"ntk's compatibility layer targets neural-tangents {SUPPORTED_NT_VERSION}, found {version}; "
      f"{INSTALL_COMMAND}"
    )
  apply_empirical_patches(importlib.import_module("neural_tangents._src.empirical"))
  apply_predict_patches(importlib.import_module("neural_tangents._src.predict"))
  return nt
