"""neural-tangents 0.6.5 on current JAX through ntk's compatibility layer (ntk/_src/compat.py)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close, tol

import ntk

nt = ntk.nt  # neural_tangents, imported by ntk under the compatibility layer
stax = nt.stax


def enable_x64():
  """Scoped float64 references (``jax.experimental.enable_x64`` is ``jax.enable_x64`` now)."""
  return jax.enable_x64(True)


def _x(n, d=3, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, d))


def test_import_loads_no_tensorflow_and_leaves_jax_clean():
  code = (
    "import sys, time; t = time.perf_counter(); import ntk; dt = time.perf_counter() - t\n"
    "import jax.core, jax.interpreters.ad as ad\n"
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    "assert 'neural_tangents' in sys.modules\n"
    "assert not hasattr(jax.core, 'Jaxpr') and 'jax.util' not in sys.modules\n"
    "assert not hasattr(ad, 'zeros_like_p')\n"
    "print(dt)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  print(f"import ntk: {float(out.stdout.strip()):.2f} s")
  assert "tensorflow" not in sys.modules


def test_import_without_neural_tangents_names_the_install_command():
  code = (
    "import sys, importlib.abc\n"
    "class Hide(importlib.abc.MetaPathFinder):\n"
    "  def find_spec(self, name, path, target=None):\n"
    "    if name.split('.')[0] == 'neural_tangents':\n"
    "      raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Hide())\n"
    "try:\n"
    "  import ntk\n"
    "except ImportError as e:\n"
    "  print(type(e).__name__, e)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("ImportError")
  assert "pip install --no-deps neural-tangents==0.6.5" in out.stdout


def test_declared_jax_range_matches_pyproject_and_installed_jax():
  import pathlib
  import tomllib

  root = pathlib.Path(__file__).resolve().parents[2]
  extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  jax_req = [r for r in extra["ntk"] if r.replace(" ", "").startswith("jax>")]
  assert jax_req == ["jax" + ",".join(ntk._compat.TESTED_JAX)]
  ntk._compat.check_jax_version()  # warnings are errors: the installed JAX is in the range


def test_experimental_stub_explains():
  with pytest.raises(ImportError, match="TensorFlow"):
    nt.experimental.empirical_ntk_fn_tf  # noqa: B018


@pytest.mark.parametrize(
  "act",
  [stax.Erf(), stax.Sign(), stax.Relu()],
  ids=["erf", "sign", "relu"],
)
def test_kernel_fn_serial_parallel(act):
  x1, x2 = _x(4), _x(3, seed=1)
  _, _, kernel_fn = stax.serial(
    stax.FanOut(2),
    stax.parallel(
      stax.serial(stax.Dense(8, 1.0, 0.1), act, stax.Dense(1, 1.0, 0.1)),
      stax.Dense(1, 1.0, 0.1),
    ),
  )
  kernel_fn = jax.jit(kernel_fn, static_argnums=2)
  ks = kernel_fn(x1, x2, ("nngp", "ntk"))
  assert isinstance(ks, list | tuple) and len(ks) == 2
  k = ks[0]
  assert k.nngp.shape == k.ntk.shape == (4, 3)
  assert np.all(np.isfinite(np.asarray(k.ntk)))
  k_lin = ks[1].nngp
  assert_close(k_lin, x1 @ x2.T / 3 + 0.01, dtype=k_lin.dtype)
  # The x2=None path equals passing x2 = x1.
  k11 = kernel_fn(x1, None, "ntk")[0]
  assert_close(k11, kernel_fn(x1, x1, "ntk")[0], dtype=k11.dtype)


def test_erf_kernel_closed_form():
  x = _x(3)
  _, _, kernel_fn = stax.serial(stax.Dense(1, 1.0, 0.0), stax.Erf())
  q = jnp.sum(x * x, -1) / 3
  c = x @ x.T / 3
  expect = 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt(jnp.outer(1 + 2 * q, 1 + 2 * q)))
  got = kernel_fn(x, None, "nngp")
  r, a = tol(got.dtype)
  np.testing.assert_allclose(got, expect, rtol=r, atol=30 * a)  # arcsin near 1 in float32


def test_monte_carlo_kernel_fn_matches_analytic():
  x = _x(3)
  width, n_samples = 256, 8
  init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(width, 1.0, 0.1), stax.Erf())
  mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), n_samples)
  est = np.asarray(mc(x, None, "nngp"), np.float64)
  exact = np.asarray(kernel_fn(x, None, "nngp"), np.float64)
  # The estimate averages width * n_samples i.i.d. products erf(u_k) erf(v_k), each of variance
  # <= E[erf(u)^2] E[erf(v)^2] + K12^2 (Isserlis bound for Gaussian-like variables). Its standard
  # error is therefore se_ij = sqrt((K_ii K_jj + K_ij^2) / (width * n_samples)); allow 5 se.
  d = np.diag(exact)
  se = np.sqrt((np.outer(d, d) + exact**2) / (width * n_samples))
  assert np.all(np.abs(est - exact) < 5 * se), (est - exact) / se


@pytest.mark.parametrize(
  "net, implementation",
  [("mlp", 1), ("mlp", 2), ("mlp", 3), ("mlp", 0), ("cnn", 3)],
  ids=["mlp-jac", "mlp-ntvp", "mlp-structured", "mlp-auto", "cnn-structured"],
)
def test_empirical_ntk_fn_implementations(net, implementation):
  """Every NT implementation (3 = structured derivatives, NT's default; 0 = AUTO) against an
  explicit Jacobian product; the CNN exercises conv / reshape structure rules."""
  if net == "mlp":
    x1, x2 = _x(3), _x(2, seed=1)
    layers = [stax.Dense(16), stax.Erf(), stax.Dense(1)]
  else:
    x1 = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 2))
    layers = [stax.Conv(3, (2, 2)), stax.Relu(), stax.Flatten(), stax.Dense(1)]
  init_fn, apply_fn, _ = stax.serial(*layers)
  _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
  fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=implementation))
  got = fn(x1, x2, params)
  j1, j2 = jax.jit(lambda p: (jax.jacobian(apply_fn)(p, x1), jax.jacobian(apply_fn)(p, x2)))(params)
  flat = lambda j, n: jnp.concatenate(
    [leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(j)], axis=1
  )
  expect = flat(j1, 3) @ flat(j2, 2).T
  r, _ = tol(got.dtype)
  np.testing.assert_allclose(got, expect, rtol=10 * r, atol=10 * r * np.max(np.abs(expect)))


# ------------------------------------------- the runtime patches of compat.py, one test each


def _empirical():
  import neural_tangents._src.empirical as empirical

  return empirical


def test_patch_list_is_applied_in_full():
  empirical = _empirical()
  names = [p[0] for p in ntk._compat.PATCHES]
  assert names == ["jnp", "lu", "ad", "core", "_eqn_vjp_fn", "_write_cotangent", "_get_flops"]
  ports = {"_eqn_vjp_fn", "_write_cotangent", "_get_flops"}
  for name in ports:
    assert getattr(empirical, name) is getattr(ntk._compat, name), name
  # JAX itself is left alone: the removed names stay removed outside NT's empirical module.
  assert not hasattr(jax.core, "DShapedArray")
  assert not hasattr(jax.interpreters.ad, "source_info_util")


def test_patch_jnp_size_of_shape_struct_and_dtype_of_array():
  jnp_ = _empirical().jnp
  assert jnp_.size(jax.ShapeDtypeStruct((3, 5, 2), jnp.float32)) == 30
  assert jnp_.size(jnp.ones((2, 3)), 1) == 3
  assert jnp_.dtype(jnp.ones(2, jnp.int32)) == np.dtype("int32")  # warnings are errors here
  assert jnp_.dtype("float32") == np.dtype("float32")


def test_patch_lu_wrap_init_supplies_debug_info():
  wrapped = _empirical().lu.wrap_init(lambda a, b: (a * b,))  # no DeprecationWarning (= error)
  assert wrapped.debug_info is not None
  assert wrapped.call_wrapped(3.0, 4.0) == (12.0,)


def test_patch_ad_linearize_matches_jvp():
  empirical = _empirical()

  def f(a, b):
    return [jnp.sin(a) * b, jnp.ones(2)]  # second output does not depend on the inputs

  a, b = jnp.array([0.3, -1.2]), jnp.array([2.0, 0.5])
  fn = empirical.lu.wrap_init(f)
  outs, pvals, jaxpr, consts = empirical.ad.linearize(fn, a, b)
  assert_close(outs[0], jnp.sin(a) * b)
  assert [p.is_known() for p in pvals] == [False, True]
  ta, tb = jnp.array([1.0, 2.0]), jnp.array([-0.5, 0.25])
  got = jax.core.eval_jaxpr(jaxpr, consts, ta, tb)
  _, expect = jax.jvp(lambda a, b: jnp.sin(a) * b, (a, b), (ta, tb))
  assert len(got) == 1
  assert_close(got[0], expect)


def _eqns(f, *args):
  return jax.make_jaxpr(f)(*args).jaxpr


def test_patch_core_read_primal():
  from jax.interpreters.ad import UndefinedPrimal

  empirical = _empirical()
  jaxpr = _eqns(lambda x: x * 2.0, jnp.ones(3))
  v = jaxpr.invars[0]
  got = empirical._read_primal({}, v)
  assert isinstance(got, UndefinedPrimal) and got.aval.shape == (3,)
  assert empirical._read_primal({v: 7.0}, v) == 7.0


@pytest.mark.parametrize(
  "f",
  [
    lambda x: jax.lax.slice(x, (1,), (3,)),  # only an accumulator ("fancy") transpose in JAX 0.10
    lambda x: x * jnp.array([1.0, 2.0, 3.0, 4.0]),  # mul: bilinear transpose
    lambda x: jnp.array([[1.0, 2.0, 0.0, 1.0], [0.5, -1.0, 2.0, 3.0]]) @ x,  # dot_general
  ],
  ids=["slice", "mul", "dot_general"],
)
def test_patch_eqn_vjp_fn_matches_vjp(f):
  from jax.interpreters.ad import UndefinedPrimal

  empirical = _empirical()
  x = jnp.array([0.5, -1.0, 2.0, 3.0])
  closed = jax.make_jaxpr(f)(x)
  (eqn,) = closed.jaxpr.eqns
  env = dict(zip(closed.jaxpr.constvars, closed.consts, strict=True))
  invals = [
    UndefinedPrimal(v.aval)
    if v is closed.jaxpr.invars[0]
    else (v.val if type(v).__name__ == "Literal" else env[v])
    for v in eqn.invars
  ]
  y, vjp = jax.vjp(f, x)
  ct = jnp.arange(1.0, 1.0 + y.size).reshape(y.shape)
  cts = empirical._eqn_vjp_fn(eqn, ct, *invals)
  i = [k for k, v in enumerate(eqn.invars) if v is closed.jaxpr.invars[0]][0]
  assert_close(cts[i], vjp(ct)[0])


def test_patch_write_cotangent_accumulates_and_checks():
  empirical = _empirical()
  v = _eqns(lambda x: x, jnp.ones(3)).invars[0]
  env = {}
  with jax.enable_checks(True):
    empirical._write_cotangent("p", env, v, jnp.ones(3))
    empirical._write_cotangent("p", env, v, 2 * jnp.ones(3))
    assert_close(env[v], 3 * jnp.ones(3))
    with pytest.raises(AssertionError):
      empirical._write_cotangent("p", {}, v, jnp.ones(4))


def test_patch_get_flops_reads_cost_analysis_dict():
  f = lambda a: a @ a.T
  a = jnp.ones((8, 5))
  flops = _empirical()._get_flops(f, True, a)
  expect = jax.jit(f).lower(a).compile().cost_analysis()["flops"]
  assert flops == expect and flops >= 2 * 8 * 8 * 5 - 8 * 8


def _predict_module():
  import neural_tangents._src.predict as predict

  return predict


def test_patch_list_predict_is_applied_in_full():
  predict = _predict_module()
  names = [p[0] for p in ntk._compat.PREDICT_PATCHES]
  assert names == ["sp", "_get_cho_solve", "_get_fns_in_eigenbasis"]
  assert isinstance(predict.sp, ntk._compat._ScipyProxy)
  for name in names[1:]:
    assert getattr(predict, name)._ntk_compat_wrapped, name
  import scipy.linalg

  assert "eigvals" not in scipy.linalg.eigvalsh.__code__.co_varnames  # SciPy itself untouched


def test_patch_sp_eigvalsh_keyword_max_learning_rate():
  import scipy.linalg

  rng = np.random.default_rng(3)
  a = rng.normal(size=(7, 7))
  k = a @ a.T + 0.1 * np.eye(7)
  evals = np.linalg.eigh(k)[0]  # independent reference: numpy's LAPACK driver, float64
  with pytest.raises(TypeError, match="eigvals"):  # the gap: SciPy >= 1.14 has no such keyword
    scipy.linalg.eigvalsh(k, eigvals=(6, 6))
  sp_ = _predict_module().sp
  np.testing.assert_allclose(sp_.linalg.eigvalsh(k, eigvals=(0, 2)), evals[:3], rtol=1e-12)
  np.testing.assert_allclose(sp_.linalg.eigvalsh(k), evals, rtol=1e-12)  # pass-through
  # NT's max_learning_rate: 2 (1 + momentum) * y_size / (lambda_max + eps); the top eigenvalue
  # taken from numpy, the kernel given as NT's 4-D (n, n, 1, 1) layout and as a 2-D matrix.
  for kernel, y_size, m in ((k, None, 0.0), (k[:, :, None, None], 14, 0.9)):
    with enable_x64():  # NT's make_2d goes through jnp
      lr = nt.predict.max_learning_rate(kernel, y_train_size=y_size, momentum=m)
    expect = 2 * (1 + m) * (y_size or 7) / (evals[-1] + 1e-12)
    np.testing.assert_allclose(lr, expect, rtol=1e-12)


def _gd_mse_closed_form(k_dd, k_td, y, f0_train, f0_test, t):
  """Gradient-descent MSE dynamics of a linearised model, float64 numpy/scipy (no eigh, no NT):
  f_train(t) = y + exp(-K t / n) (f0 - y), f_test(t) = f0_test + K_td K^-1 (f_train(t) - f0)
  (NT's normalisation: the loss is averaged over the n = y.size outputs; t = None: t = inf)."""
  import scipy.linalg

  n = y.size
  decay = np.zeros_like(k_dd) if t is None else scipy.linalg.expm(-k_dd * t / n)
  f_train = y + decay @ (f0_train - y)
  f_test = f0_test + k_td @ np.linalg.solve(k_dd, f_train - f0_train)
  return f_train, f_test


@pytest.mark.parametrize("t", [2.5, None], ids=["finite_t", "t_inf"])
def test_patch_predict_factorises_a_traced_kernel(t):
  # NT's testNTKMeanCovPrediction builds gradient_descent_mse from kernels computed inside
  # vmap; without the patch the factorisation leaks a tracer out of eval_context.
  rng = np.random.default_rng(0)
  n_ens, n, m, c = 3, 5, 2, 2
  a = rng.normal(size=(n_ens, n + m, 6))
  k_all = a @ a.transpose(0, 2, 1) / 6 + 0.5 * np.eye(n + m)
  k_dd, k_td = k_all[:, :n, :n], k_all[:, n:, :n]
  y = rng.normal(size=(n, c))
  f0_train, f0_test = rng.normal(size=(n_ens, n, c)), rng.normal(size=(n_ens, m, c))
  with enable_x64():

    def member(k_dd, k_td, f0_train, f0_test):
      fn = nt.predict.gradient_descent_mse(k_dd, jnp.asarray(y), diag_reg=0.0)
      return fn(t, f0_train, f0_test, k_td)

    for transform in (jax.vmap(member), jax.jit(jax.vmap(member))):
      got_train, got_test = transform(k_dd, k_td, f0_train, f0_test)
      for i in range(n_ens):
        exp_train, exp_test = _gd_mse_closed_form(k_dd[i], k_td[i], y, f0_train[i], f0_test[i], t)
        np.testing.assert_allclose(got_train[i], exp_train, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got_test[i], exp_test, rtol=1e-9, atol=1e-9)


def test_patch_predict_concrete_kernel_still_cached_outside_jit():
  # A concrete kernel is factorised eagerly as in NT (eval_context): the solver cached on a first
  # call inside jit holds no tracer of that jit, so a later call outside it works.
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4))
  with enable_x64():
    k = jnp.asarray(a @ a.T + np.eye(4))
    y = jnp.asarray(rng.normal(size=(4, 1)))
    fn = nt.predict.gradient_descent_mse(k, y)
    f0 = jnp.zeros_like(y)
    inside = jax.jit(lambda f: fn(1.0, f))(f0)
    outside = fn(1.0, f0)
    exp_train, _ = _gd_mse_closed_form(
      np.asarray(k), np.zeros((0, 4)), np.asarray(y), 0 * y, 0, 1.0
    )
    np.testing.assert_allclose(inside, exp_train, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outside, exp_train, rtol=1e-9, atol=1e-9)


def test_predict_and_batch():
  x_train, x_test = _x(6), _x(4, seed=1)
  y = jnp.sin(x_train[:, :1])
  _, _, kernel_fn = stax.serial(stax.Dense(8, 1.0, 0.1), stax.Relu(), stax.Dense(1, 1.0, 0.1))
  mean = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, diag_reg=1e-4)(
    None, x_test, "ntk"
  )
  assert mean.shape == (4, 1) and np.all(np.isfinite(np.asarray(mean)))
  batched = nt.batch(kernel_fn, batch_size=2, device_count=0)
  k = batched(x_test, x_train, "ntk")
  assert_close(k, kernel_fn(x_test, x_train, "ntk"), dtype=k.dtype)
