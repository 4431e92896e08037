"""SG-NTK study: "A generalized neural tangent kernel for surrogate gradient learning".

Eilers, Memmesheimer, Goedeke, NeurIPS 2024 (arXiv 2405.15539). Reproduces, at CPU scale:

* Figure 1: the empirical NTK of erf_m networks (ordinary gradient descent) against the analytic
  NTK Theta_erf_m (stock ``stax.Erf(1, m, 0)``) for several widths, at initialisation and after
  training; Theta's diagonal diverges as m grows (``naive`` panel, m up to 1e4).
* Figure 2: the empirical SG-NTK J(x) J~(x')^T of erf_m networks trained with surrogate gradients
  (erf surrogate, beta = 1) against the analytic I_erf_m, and I_erf_m -> I_sign.
* Figure 3: ensembles of sign networks trained with surrogate gradients against the Gaussian
  process of the SG-NTK (mean +- 2 sd) and the NNGP (Sigma_sign) regression mean, per width.
* Beyond the paper: scikit-learn's digits (8x8, 10 classes; ships with sklearn): sign networks
  trained with surrogate gradients vs SG-NTK kernel regression at the same time and at t = inf.

Data: unit circle, x = (sin a, cos a), target 4 x1 x2^2 - 0.8 x1^3 + 1.2 x2^2 - 0.8 x1^2 x2,
100 test points a_i = 2 pi i / 100 - pi; 15 training points. Networks 2 -> n -> n -> 1,
sigma_w = 1, sigma_b = 0.1, NTK parametrisation, full-batch GD, lr 0.1, loss 1/2 mean squared.

Usage::

  python -m experiments.sgntk.run --quick --out /tmp/sgntk
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import ntk
from experiments import stats
from experiments.sgntk.config import Config
from jaxsteer._src.fileio import atomic_write_text

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
W_STD, B_STD, LR = 1.0, 0.1, 0.1


# --------------------------------------------------------------------------------------- data


def circle(a):
  a = np.asarray(a, np.float64)
  return np.stack([np.sin(a), np.cos(a)], 1)


def target(x):
  x1, x2 = x[:, 0], x[:, 1]
  return 4 * x1 * x2**2 - 0.8 * x1**3 + 1.2 * x2**2 - 0.8 * x1**2 * x2


def circle_data(seed: int, from_test: bool):
  """100 test points on S^1 and 15 training points (uniform angles or a subset of the test set)."""
  a_test = 2 * np.pi * np.arange(100) / 100 - np.pi
  x_test = circle(a_test)
  rs = np.random.RandomState(seed)
  if from_test:
    idx = np.sort(rs.choice(100, 15, replace=False))
    a_train = a_test[idx]
  else:
    a_train = np.sort(rs.uniform(-np.pi, np.pi, 15))
  x_train = circle(a_train)
  return a_test, x_test, a_train, x_train, target(x_train)


def digits_data(n_train: int, seed: int = 0):
  from sklearn.datasets import load_digits

  d = load_digits()
  x = d.data.astype(np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-8)
  x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(x.shape[1])  # on a sphere
  y = np.eye(10)[d.target] - 0.1
  perm = np.random.RandomState(seed).permutation(len(x))
  tr, te = perm[:n_train], perm[n_train:]
  return x[tr], y[tr], d.target[tr], x[te], y[te], d.target[te]


# ----------------------------------------------------------------------------------- training


def train(init_fn, apply_fn, x, y, keys, steps: int, lr: float = LR, surrogate_weight=1.0):
  """Full-batch GD on 1/2 mean_i |f(x_i) - y_i|^2 for an ensemble (one key per network).

  Returns ``(params0, params_T)`` with a leading ensemble axis. ``surrogate_weight`` = 1 trains
  with the surrogate derivative (SGL), 0 with the true derivative.
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32).reshape(x.shape[0], -1)

  def one(key):
    _, params = init_fn(key, x.shape)

    def loss(p):
      f = apply_fn(p, x, surrogate_weight=surrogate_weight)
      return 0.5 * jnp.mean(jnp.sum((f - y) ** 2, -1))

    def step(p, _):
      g = jax.grad(loss)(p)
      return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), None

    p_t, _ = jax.lax.scan(step, params, None, length=steps)
    return params, p_t

  return jax.jit(jax.vmap(one))(keys)


def _ensemble_apply(apply_fn, params, x):
  x = jnp.asarray(x, jnp.float32)
  return np.asarray(jax.jit(jax.vmap(lambda p: apply_fn(p, x)))(params))


def _unstack(tree, i):
  return jax.tree_util.tree_map(lambda a: a[i], tree)


def _erf_net(width, m, sg: bool):
  act = ntk.stax.SurrogateErf(m, "erf", beta=1.0) if sg else ntk.nt.stax.Erf(1.0, m, 0.0)
  st = ntk.nt.stax
  return st.serial(
    st.Dense(width, W_STD, B_STD),
    act,
    st.Dense(width, W_STD, B_STD),
    act,
    st.Dense(1, W_STD, B_STD),
  )


# ------------------------------------------------------------------------------- kernel figures


def kernel_study(cfg: Config, sg: bool, out_dir: pathlib.Path, plt) -> dict:
  """Figure 1 (sg=False: NTK of erf_m, GD) or Figure 2 (sg=True: SG-NTK of erf_m, SGL)."""
  a_test, x_test, _, x_train, y_train = circle_data(2, from_test=False)
  x_ref = x_test[50:51]  # alpha = 0
  steps = cfg.fig2_steps if sg else cfg.fig1_steps
  key = jax.random.PRNGKey(10)
  summary = {"steps": steps, "widths": list(cfg.kernel_widths), "mse": {}}
  ncol = len(cfg.kernel_ms) + 1
  fig, axes = plt.subplots(2, ncol, figsize=(4 * ncol, 7), squeeze=False)
  colors = plt.cm.viridis(np.linspace(0, 0.85, len(cfg.kernel_widths)))
  for col, m in enumerate(cfg.kernel_ms):
    _, _, kernel_fn = _erf_net(1, m, sg)
    analytic = np.asarray(kernel_fn(x_test, x_ref, "ntk"))[:, 0]
    ax = axes[0, col]
    ax.plot(a_test, analytic, "k", lw=2, label="analytic")
    mse = {"t0": [], "tT": []}
    for w, color in zip(cfg.kernel_widths, colors):
      init_fn, apply_fn, _ = _erf_net(w, m, sg)
      keys = jax.random.split(jax.random.fold_in(key, w), cfg.kernel_nets)
      p0, pt = train(init_fn, apply_fn, x_train, y_train, keys, steps, surrogate_weight=float(sg))
      if sg:
        emp_fn = jax.jit(ntk.empirical_sg_ntk_fn(apply_fn))
      else:
        emp_fn = jax.jit(ntk.nt.empirical_ntk_fn(apply_fn, vmap_axes=0))
      errs = {"t0": [], "tT": []}
      for i in range(cfg.kernel_nets):
        for name, params in (("t0", p0), ("tT", pt)):
          row = np.asarray(
            emp_fn(x_test.astype(np.float32), x_ref.astype(np.float32), _unstack(params, i))
          )[:, 0]
          errs[name].append(float(np.mean((row - analytic) ** 2)))
          if i == 0:
            ax.plot(
              a_test,
              row,
              color=color,
              lw=0.8,
              ls="-" if name == "t0" else "--",
              label=f"n={w}, t={'0' if name == 't0' else steps}",
            )
      for name in errs:
        mse[name].append(float(np.mean(errs[name])))
        mse.setdefault(f"samples_{name}", []).append(errs[name])
    summary["mse"][f"m={m:g}"] = mse
    for name, ls in (("t0", "-o"), ("tT", "--s")):
      axes[1, col].loglog(
        cfg.kernel_widths, mse[name], ls, label=f"t={'0' if name == 't0' else steps}"
      )
    slope = (
      float(np.polyfit(np.log(cfg.kernel_widths), np.log(mse["t0"]), 1)[0])
      if len(cfg.kernel_widths) > 1
      else float("nan")
    )
    summary["mse"][f"m={m:g}"]["slope_t0"] = slope
    axes[1, col].set(
      xlabel="width n", ylabel="MSE(empirical, analytic)", title=f"m={m:g}, slope {slope:.2f}"
    )
    axes[1, col].legend(fontsize=7)
    ax.set(
      title=f"{'SG-NTK I' if sg else 'NTK Theta'}(x, x'=(0,1)), erf_m, m={m:g}", xlabel="alpha"
    )
    ax.set_yscale("asinh")
    ax.legend(fontsize=6)
  # Last column: the m -> infinity behaviour.
  ax = axes[0, -1]
  limit = {}
  for m in cfg.naive_ms:
    _, _, kernel_fn = _erf_net(1, m, sg)
    row = np.asarray(kernel_fn(x_test, x_ref, "ntk"))[:, 0]
    ax.plot(a_test, row, lw=1, label=f"m={m:g}")
    limit[f"m={m:g}"] = {
      "diag": float(row[50]),
      "off_2pi/7": float(np.interp(2 * np.pi / 7, a_test, row)),
    }
  if sg:
    _, _, kfn = ntk.sg_mlp(1, surrogate="erf", beta=1.0)
    row = np.asarray(kfn(x_test, x_ref, "ntk"))[:, 0]
    ax.plot(a_test, row, "k--", lw=2, label="sign (m=inf)")
    limit["sign"] = {
      "diag": float(row[50]),
      "off_2pi/7": float(np.interp(2 * np.pi / 7, a_test, row)),
    }
  ax.set_yscale("asinh")
  ax.set(title="analytic, m -> infinity", xlabel="alpha")
  ax.legend(fontsize=6)
  axes[1, -1].axis("off")
  summary["m_limit"] = limit
  fig.tight_layout()
  name = "fig2_sg_ntk.png" if sg else "fig1_naive_ntk.png"
  fig.savefig(out_dir / name, dpi=80)
  plt.close(fig)
  summary["figure"] = name
  return summary


# ------------------------------------------------------------------------------ Figure 3 (GP)


def gp_study(cfg: Config, out_dir: pathlib.Path, plt) -> dict:
  a_test, x_test, a_train, x_train, y_train = circle_data(3, from_test=True)
  _, _, kernel_fn = ntk.sg_mlp(1, surrogate="erf", beta=1.0)
  with jax.enable_x64(True):
    predict_fn = ntk.predict.gradient_descent_mse_sg_ensemble(
      kernel_fn, x_train, y_train, learning_rate=LR
    )
    mu_inf, cov_inf = predict_fn(None, x_test)
    mu_t, cov_t = predict_fn(cfg.gp_steps, x_test)
    nngp_mean = ntk.nt.predict.gp_inference(
      kernel_fn(x_train, None, "nngp"), y_train[:, None], diag_reg=1e-10
    )(get="nngp", k_test_train=kernel_fn(x_test, x_train, "nngp"))[:, 0]
  mu_t, sd_t = np.asarray(mu_t), np.sqrt(np.maximum(np.diag(np.asarray(cov_t)), 0))
  nngp_mean = np.asarray(nngp_mean)
  summary = {
    "steps": cfg.gp_steps,
    "ensemble": cfg.gp_ensemble,
    "gp_mean_sd": float(sd_t.mean()),
    "rmse_gp_t_vs_gp_inf": float(np.sqrt(np.mean((mu_t - np.asarray(mu_inf)) ** 2))),
    "widths": {},
  }
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = plt.cm.plasma(np.linspace(0, 0.8, len(cfg.gp_widths)))
  for w, color in zip(cfg.gp_widths, colors):
    init_fn, apply_fn, _ = ntk.sg_mlp(w, surrogate="erf", beta=1.0)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(10), w), cfg.gp_ensemble)
    t0 = time.perf_counter()
    _, pt = train(init_fn, apply_fn, x_train, y_train, keys, cfg.gp_steps)
    out = _ensemble_apply(apply_fn, pt, x_test)[..., 0]
    train_out = _ensemble_apply(apply_fn, pt, x_train)[..., 0]
    ens_mean, ens_sd = out.mean(0), out.std(0)
    se = ens_sd / np.sqrt(cfg.gp_ensemble)
    summary["widths"][str(w)] = {
      "train_seconds": time.perf_counter() - t0,
      "final_train_loss": float(np.mean(0.5 * (train_out - y_train) ** 2)),
      "rmse_ensemble_vs_sgntk_mean": float(np.sqrt(np.mean((ens_mean - mu_t) ** 2))),
      "rmse_ensemble_vs_nngp_mean": float(np.sqrt(np.mean((ens_mean - nngp_mean) ** 2))),
      "mean_ensemble_sd": float(ens_sd.mean()),
      "median_abs_z": float(np.median(np.abs(ens_mean - mu_t) / np.maximum(se, 1e-12))),
      "frac_ensemble_within_2sd": float(np.mean(np.abs(out - mu_t) <= 2 * sd_t)),
      # per network outputs and both GP means: intervals over networks (run.claims_and_headline)
      "ensemble_outputs": np.asarray(out).tolist(),
      "sgntk_gp_mean": np.asarray(mu_t).tolist(),
      "nngp_mean": np.asarray(nngp_mean).tolist(),
    }
    axes[1].plot(a_test, ens_mean, color=color, lw=1.2, label=f"SGL ensemble mean, n={w}")
    if w == cfg.gp_widths[-1]:
      for k in range(min(cfg.gp_ensemble, 30)):
        axes[0].plot(a_test, out[k], color="tab:blue", lw=0.3, alpha=0.4)
      axes[0].plot(
        a_test, ens_mean, color="tab:blue", lw=2, label=f"SGL mean (n={w}, E={cfg.gp_ensemble})"
      )
  for ax in axes:
    ax.plot(a_test, mu_t, "k", lw=2, label="SG-NTK GP mean")
    ax.plot(a_test, nngp_mean, "k:", lw=1.5, label="Sigma_sign regression")
    ax.plot(a_train, y_train, "rx", ms=7, label="training data")
    ax.set(xlabel="alpha", ylabel="f")
  axes[0].fill_between(
    a_test, mu_t - 2 * sd_t, mu_t + 2 * sd_t, color="gray", alpha=0.3, label="+- 2 sd"
  )
  axes[0].set_title("sign networks trained with surrogate gradients vs SG-NTK GP")
  axes[1].set_title("ensemble means by width")
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_dir / "fig3_sgl_vs_gp.png", dpi=80)
  plt.close(fig)
  summary["figure"] = "fig3_sgl_vs_gp.png"
  return summary


# ----------------------------------------------------------------------------------- digits


def digits_study(cfg: Config, out_dir: pathlib.Path, plt) -> dict:
  xtr, ytr, ltr, xte, yte, lte = digits_data(cfg.digits_train)
  if cfg.digits_test is not None:
    xte, yte, lte = xte[: cfg.digits_test], yte[: cfg.digits_test], lte[: cfg.digits_test]
  _, _, kernel_fn = ntk.sg_mlp(1, surrogate="erf", beta=1.0, out_dim=10)
  with jax.enable_x64(True):
    predict_fn = ntk.predict.gradient_descent_mse_sg_ensemble(
      kernel_fn, xtr, ytr, learning_rate=cfg.digits_lr
    )
    mu_t = np.asarray(predict_fn(cfg.digits_steps, xte, compute_cov=False))
    mu_inf = np.asarray(predict_fn(None, xte, compute_cov=False))
    nngp = np.asarray(
      ntk.nt.predict.gp_inference(kernel_fn(xtr, None, "nngp"), ytr, diag_reg=1e-8)(
        get="nngp", k_test_train=kernel_fn(xte, xtr, "nngp")
      )
    )
    kxx = np.asarray(kernel_fn(xtr, xtr, "ntk"))
  init_fn, apply_fn, _ = ntk.sg_mlp(cfg.digits_width, surrogate="erf", beta=1.0, out_dim=10)
  keys = jax.random.split(jax.random.PRNGKey(0), cfg.digits_ensemble)
  t0 = time.perf_counter()
  _, pt = train(init_fn, apply_fn, xtr, ytr, keys, cfg.digits_steps, lr=cfg.digits_lr)
  secs = time.perf_counter() - t0
  out = _ensemble_apply(apply_fn, pt, xte)
  acc = lambda f: float(np.mean(np.argmax(f, -1) == lte))
  summary = {
    "n_train": int(len(xtr)),
    "n_test": int(len(xte)),
    "width": cfg.digits_width,
    "steps": cfg.digits_steps,
    "lr": cfg.digits_lr,
    "tau": cfg.digits_lr * cfg.digits_steps / len(xtr),
    "train_seconds": secs,
    "acc_sgl_networks": [acc(o) for o in out],
    "acc_sgl_ensemble_mean": acc(out.mean(0)),
    "acc_sgntk_gp_mean_t": acc(mu_t),
    "acc_sgntk_gp_mean_inf": acc(mu_inf),
    "correct_sgntk_gp_mean_inf": (np.argmax(mu_inf, -1) == lte).astype(float).tolist(),
    "correct_sgl_ensemble_mean": (np.argmax(out.mean(0), -1) == lte).astype(float).tolist(),
    "acc_nngp_regression": acc(np.asarray(nngp)),
    "rmse_ensemble_vs_sgntk_mean_t": float(np.sqrt(np.mean((out.mean(0) - mu_t) ** 2))),
    "sgntk_min_eig_real": float(np.min(np.linalg.eigvals(kxx).real)),
    "sgntk_asymmetry": float(np.max(np.abs(kxx - kxx.T))),
  }
  fig, ax = plt.subplots(figsize=(6, 4))
  names = [
    "SGL nets (mean acc)",
    "SGL ensemble mean",
    "SG-NTK GP (t)",
    "SG-NTK GP (inf)",
    "NNGP reg.",
  ]
  vals = [
    float(np.mean(summary["acc_sgl_networks"])),
    summary["acc_sgl_ensemble_mean"],
    summary["acc_sgntk_gp_mean_t"],
    summary["acc_sgntk_gp_mean_inf"],
    summary["acc_nngp_regression"],
  ]
  ax.bar(range(len(vals)), vals, color=["tab:blue", "tab:blue", "k", "gray", "tab:orange"])
  ax.set_xticks(range(len(vals)), names, rotation=20, fontsize=8)
  ax.set_ylim(min(vals) - 0.05, 1.0)
  ax.set_title(f"digits, {len(xtr)} train / {len(xte)} test, sign nets width {cfg.digits_width}")
  fig.tight_layout()
  fig.savefig(out_dir / "digits.png", dpi=80)
  plt.close(fig)
  summary["figure"] = "digits.png"
  return summary


# ---------------------------------------------------------------------------------- driver


def _write_json(path: pathlib.Path, obj) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2))


def run(
  *, quick: bool, out_dir: pathlib.Path, data_dir: pathlib.Path, config: Config | None = None
) -> dict:
  """Runs every study; writes PNGs and ``summary.json`` under ``out_dir``; returns the summary.

  ``data_dir`` is unused (all data is synthetic or ships with scikit-learn). ``config``
  overrides the sizes (tests use tiny ones).
  """
  del data_dir
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = config or (Config.quick() if quick else Config.full())
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  summary = {
    "quick": quick,
    "config": dataclasses.asdict(cfg),
    "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}",
  }
  studies = [
    ("fig1_naive_ntk", lambda: kernel_study(cfg, False, out_dir, plt)),
    ("fig2_sg_ntk", lambda: kernel_study(cfg, True, out_dir, plt)),
    ("fig3_sgl_vs_gp", lambda: gp_study(cfg, out_dir, plt)),
    ("digits", lambda: digits_study(cfg, out_dir, plt)),
  ]
  for name, fn in tqdm(studies, desc="sgntk studies"):
    t0 = time.perf_counter()
    summary[name] = fn()
    summary[name]["seconds"] = time.perf_counter() - t0
    _write_json(out_dir / "summary.json", summary)
  summary["claims"], summary["headline"] = claims_and_headline(summary)
  summary["figures"] = [summary[name]["figure"] for name, _ in studies]
  summary["setting"] = {
    "model": "2 -> n -> n -> 1 erf_m / sign networks, sigma_w 1, sigma_b 0.1, NTK parametrisation",
    "data": "unit circle (15 train, 100 test points); scikit-learn digits",
    "seed": "jax PRNGKey 10 (kernel, GP ensembles), 0 (digits); numpy seeds 2, 3 (circle data)",
    "selection": "nothing is tuned: widths, m, learning rates and steps are the paper's or fixed "
    "a priori; test points are disjoint from training points",
    "config": dataclasses.asdict(cfg),
  }
  _write_json(out_dir / "summary.json", summary)
  return summary


def claims_and_headline(summary: dict) -> tuple[list, list]:
  """Claims with verdicts; rows with intervals (exact for analytic kernels; bootstrap over
  random networks for empirical kernels and ensembles; over test digits for accuracies)."""
  fig1, fig2, fig3, dig = (
    summary[k] for k in ("fig1_naive_ntk", "fig2_sg_ntk", "fig3_sgl_vs_gp", "digits")
  )
  claims, head = [], []

  def add(c, est, note=""):
    claims.append(stats.claim(c, est, note))
    head.append(stats.row(c.metric, est, c.paper))

  ms = summary["config"]["naive_ms"]
  finite = [m for m in ms if np.isfinite(fig1["m_limit"][f"m={m:g}"]["diag"] or np.inf)]
  m_first, m_last = f"m={finite[0]:g}", f"m={finite[-1]:g}"  # float32 overflows at m = 1e4
  add(
    stats.Claim(
      "The NTK of erf_m diverges as m grows (the NTK of sign is ill-defined)",
      f"naive NTK Theta_erf_m(x, x): {m_last} / {m_first} (analytic)", "greater", 10.0,
      "diverges as m -> inf (Fig. 1)",
    ),
    stats.exact(fig1["m_limit"][m_last]["diag"] / fig1["m_limit"][m_first]["diag"]),
    "analytic kernels: no sampling",
  )  # fmt: skip
  m2 = fig2["m_limit"]
  mk = [k for k in m2 if k != "sign"][-1]
  add(
    stats.Claim(
      "The SG-NTK is well defined: I_erf_m -> I_sign as m grows",
      f"analytic |I_erf_m(x, x) - I_sign(x, x)| at {mk}", "less", 0.01,
      "I_erf_m -> I_sign as m -> inf (Fig. 2)",
    ),
    stats.exact(abs(m2[mk]["diag"] - m2["sign"]["diag"])),
    "analytic kernels: no sampling",
  )  # fmt: skip
  widths = np.log(np.asarray(summary["config"]["kernel_widths"], float))
  m_fit = next(iter(fig2["mse"]))
  samples = fig2["mse"][m_fit].get("samples_t0")
  if samples and len(widths) > 1 and min(len(x) for x in samples) > 1:
    rng = np.random.default_rng(0)
    arr = [np.asarray(x) for x in samples]
    slope = lambda ys: float(np.polyfit(widths, np.log([y.mean() for y in ys]), 1)[0])  # noqa: E731
    boot = [slope([y[rng.integers(0, len(y), len(y))] for y in arr]) for _ in range(2000)]
    est = stats.Estimate(slope(arr), *np.quantile(boot, [0.025, 0.975]), sum(map(len, arr)),
                         "percentile")  # fmt: skip
    add(
      stats.Claim(
        "The empirical SG-NTK converges to the analytic one with width",
        f"empirical SG-NTK vs analytic: log-log MSE slope in width ({m_fit}, t=0)", "less", 0.0,
        "MSE -> 0 as width grows (Fig. 2)",
      ),
      est, "bootstrap over random networks within each width",
    )  # fmt: skip
  w_last = list(fig3["widths"])[-1]
  fw = fig3["widths"][w_last]
  if "ensemble_outputs" in fw:
    out = np.asarray(fw["ensemble_outputs"])
    mu, nn = np.asarray(fw["sgntk_gp_mean"]), np.asarray(fw["nngp_mean"])
    rmse = lambda e, ref: float(np.sqrt(np.mean((e.mean(0) - ref) ** 2)))  # noqa: E731
    add(
      stats.Claim(
        "Sign networks trained with surrogate gradients follow the SG-NTK GP (closer to its mean "
        "than to the NNGP's)",
        f"RMSE of SGL ensemble mean (n={w_last}) to SG-NTK GP mean - to NNGP mean", "less", 0.0,
        "SGL networks agree with the SG-NTK GP (Fig. 3)",
      ),
      stats.bootstrap(out, statistic=lambda e: rmse(e, mu) - rmse(e, nn), method="percentile"),
      f"bootstrap over the {len(out)} trained networks",
    )  # fmt: skip
    head.append(stats.row(
      f"RMSE of SGL ensemble mean (n={w_last}) to the SG-NTK GP mean",
      stats.bootstrap(out, statistic=lambda e: rmse(e, mu), method="percentile"),
    ))  # fmt: skip
  head.append(stats.row("analytic I_sign(x, x)", stats.exact(m2["sign"]["diag"])))
  for key, label in (("sgntk_gp_mean_inf", "SG-NTK GP mean at t = inf"),
                     ("sgl_ensemble_mean", "SGL ensemble mean")):  # fmt: skip
    if f"correct_{key}" in dig:
      head.append(stats.row(f"digits accuracy: {label}", stats.bootstrap(dig[f"correct_{key}"]),
                            "not in the paper"))  # fmt: skip
  return claims, head


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output directory")
  parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path("."), help="unused")
  args = parser.parse_args(argv)
  summary = run(quick=args.quick, out_dir=args.out, data_dir=args.data)
  print(json.dumps(summary, indent=1))
  return summary


if __name__ == "__main__":
  main()
