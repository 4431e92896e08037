"""Smoke test of experiments/sgntk/run.py (quick mode, with tiny sizes)."""

import json

import pytest

from experiments.sgntk import run as sgntk_run

TINY = sgntk_run.Config(
  kernel_widths=(8,),
  kernel_ms=(2.0,),
  kernel_nets=1,
  fig1_steps=3,
  fig2_steps=3,
  gp_widths=(8,),
  gp_ensemble=2,
  gp_steps=5,
  digits_train=40,
  digits_width=16,
  digits_ensemble=2,
  digits_steps=3,
  digits_test=50,
  naive_ms=(2.0, 100.0),
)


@pytest.mark.entry
def test_run_quick_tiny(tmp_path):
  summary = sgntk_run.run(quick=True, out_dir=tmp_path, data_dir=tmp_path, config=TINY)
  assert json.loads((tmp_path / "summary.json").read_text())["quick"] is True
  for study in ("fig1_naive_ntk", "fig2_sg_ntk", "fig3_sgl_vs_gp", "digits"):
    assert (tmp_path / summary[study]["figure"]).stat().st_size > 1000
  # The naive NTK grows on the diagonal with m; the SG-NTK approaches the sign limit.
  naive = summary["fig1_naive_ntk"]["m_limit"]
  assert naive["m=100"]["diag"] > 10 * naive["m=2"]["diag"]
  sg = summary["fig2_sg_ntk"]["m_limit"]
  assert abs(sg["m=100"]["diag"] - sg["sign"]["diag"]) < 0.05
  assert 0.0 <= summary["digits"]["acc_sgntk_gp_mean_inf"] <= 1.0
