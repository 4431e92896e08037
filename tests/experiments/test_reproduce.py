"""``python -m experiments.reproduce``: the smoke run of every study, the report and its errors."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import reproduce, stats
from experiments.report import NUMBER, headline_table, numbers_in, render, write_report

REPO = reproduce.REPO
LIBRARIES = ("jaxsteer", "paca_jax", "ntk", "recoder")


@pytest.mark.slow
def test_smoke_run_and_report(tmp_path, data_dir):
  """One smoke run of every study (2-3 minutes on 2 quiet cores) and checks of its outputs.

  A single test on purpose: pytest-xdist would otherwise run the smoke once per worker.
  """
  out = tmp_path / "smoke"
  rc = reproduce.main(["--smoke", "--out", str(out), "--data", str(data_dir)])
  results = json.loads((out / "results.json").read_text())
  _check_studies(rc, out, results)
  _check_report_numbers(out, results)
  _check_report_from_results_alone(out, results, tmp_path / "again")
  _check_sgntk_values(out, results)
  _check_paca_selection(results)


def _check_studies(rc, out, results):
  failed = {k: v.get("error") for k, v in results["studies"].items() if v["status"] != "ok"}
  assert rc == 0 and not failed, failed
  assert list(results["studies"]) == list(reproduce.STUDIES)
  for name, st in results["studies"].items():
    assert st["headline"], name
    assert {"model", "data", "seed", "config", "selection"} <= set(st["setting"]), name
    for row in st["headline"] + st["claims"]:  # every number carries its interval
      lo, hi = row["ci"]
      assert lo <= row["value"] <= hi or row["ci_method"] == "bca", (name, row)
    for c in st["claims"]:
      assert c["verdict"] == stats.verdict(c, c["direction"], c["threshold"]), (name, c)
    assert st["claims"] or name == "models", name
    for fig in st["figures"]:
      assert (out / fig).stat().st_size > 1000, fig
  # The figures the issue asks for.
  figures = {f for st in results["studies"].values() for f in st["figures"]}
  for f in (
    "grains/attribution.png",
    "grains/synthetic.png",
    "grains/stories.png",
    "vlm/vlm_attribution.png",
    "vlm/vlm_sweep.png",
    "paca/time_memory.png",
    "paca/loss_curves.png",
    "sgntk/fig2_sg_ntk.png",
    "sgntk/fig3_sgl_vs_gp.png",
    "recoder/variants.png",
    "recoder/garden_path_quick.png",
  ):
    assert f in figures, f


def _check_report_numbers(out, results):
  report = (out / "REPORT.md").read_text()
  allowed = numbers_in(json.loads((out / "results.json").read_text()))
  shown = set(NUMBER.findall(report))
  assert shown, "the report shows no numbers"
  assert shown <= allowed, sorted(shown - allowed)
  # The setting of each paper: claim, hardware as detected, jax version, figures linked.
  env = results["environment"]
  assert env["summary"] in report and f"jax {env['jax']}" in report
  assert f"{env['cpu_cores']} cores" in report
  for name, st in results["studies"].items():
    assert st["claim"] in report and f"(`{name}`)" in report
    for fig in st["figures"]:
      assert f"]({fig})" in report


def _check_report_from_results_alone(out, results, again):
  again.mkdir()
  write_report(results, again)
  assert (again / "REPORT.md").read_text() == (out / "REPORT.md").read_text()


def _check_paca_selection(results):
  """Each method's learning rate is the validation argmin, and validation is not the test set."""
  summary = results["studies"]["paca"]["result"]
  first = str(results["studies"]["paca"]["setting"]["seed"]["fine-tuning"][0])
  for name, sel in summary["selection"].items():
    grid = {float(lr): v for lr, v in sel["validation_loss"].items()}
    assert sel["chosen_lr"] == min(grid, key=lambda lr: (grid[lr], lr)), (name, sel)
    test = np.mean(summary["per_seed"][first][name]["eval_loss_per_sequence"])
    assert abs(grid[sel["chosen_lr"]] - test) > 1e-6, (name, "validation loss equals test loss")


def _check_sgntk_values(out, results):
  """Moved from tests/ntk/test_experiment_smoke.py: the SG-NTK study's qualitative checks."""
  summary = results["studies"]["sgntk"]["result"]
  assert json.loads((out / "sgntk" / "summary.json").read_text())["quick"] is True
  naive = summary["fig1_naive_ntk"]["m_limit"]
  assert naive["m=100"]["diag"] > 10 * naive["m=2"]["diag"]
  sg = summary["fig2_sg_ntk"]["m_limit"]
  assert abs(sg["m=100"]["diag"] - sg["sign"]["diag"]) < 0.05
  assert 0.0 <= summary["digits"]["acc_sgntk_gp_mean_inf"] <= 1.0


@pytest.mark.parametrize("name", list(reproduce.STUDIES))
def test_study_config_documents_itself(name):
  study = reproduce.STUDIES[name]
  mod = study.config_module()
  doc = mod.__doc__
  assert "python -m experiments." in doc and "Expected headline" in doc, name
  assert re.search(r"\d+(-\d+)? (minutes|s) on 2 CPU cores", doc), name
  for mode in reproduce.MODES:
    cfg = study.config(mode)
    assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen
    hash(cfg)  # static: configs are hashable
  assert callable(study.run_module().run)


def _err(capsys):
  return capsys.readouterr().err


def test_unknown_study_is_a_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    reproduce.main(["--smoke", "--only", "grains,nope", "--out", str(tmp_path)])
  assert e.value.code == 2
  err = _err(capsys)
  assert "unknown studies ['nope']" in err and "grains" in err
  assert not (tmp_path / "REPORT.md").exists()


def test_missing_data_directory_is_a_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    reproduce.main(["--smoke", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
  assert e.value.code == 2
  assert f"data directory not found: {tmp_path / 'absent'}" in _err(capsys)
  assert not (tmp_path / "o" / "REPORT.md").exists()


def test_unwritable_output_directory_is_a_usage_error(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(SystemExit) as e:
    reproduce.main(["--smoke", "--out", str(blocker / "out"), "--data", str(tmp_path)])
  assert e.value.code == 2
  assert f"output directory {blocker / 'out'} is not writable" in _err(capsys)


class _Failing(reproduce.Study):
  def run_module(self):
    class M:
      @staticmethod
      def run(**kw):
        raise RuntimeError("boom in the study")

    return M


def test_failed_study_is_marked_failed_not_claimed(tmp_path, monkeypatch, capsys):
  study = reproduce.STUDIES["sgntk"]
  monkeypatch.setitem(
    reproduce.STUDIES,
    "sgntk",
    _Failing(**{f.name: getattr(study, f.name) for f in dataclasses.fields(study)}),
  )
  (tmp_path / "REPORT.md").write_text("stale report claiming results 0.99\n")
  rc = reproduce.main(
    ["--smoke", "--only", "sgntk", "--out", str(tmp_path), "--data", str(tmp_path)]
  )
  assert rc == 1
  results = json.loads((tmp_path / "results.json").read_text())
  st = results["studies"]["sgntk"]
  assert results["ok"] is False and st["status"] == "failed"
  assert st["error"] == "RuntimeError: boom in the study" and "headline" not in st
  report = (tmp_path / "REPORT.md").read_text()
  assert "**FAILED**" in report and "No numbers are claimed" in report and "boom" in report
  assert "0.99" not in report
  assert set(NUMBER.findall(report)) <= numbers_in(results)


def test_missing_default_data_skips_studies_that_need_it(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXSTEER_DATA", raising=False)
  monkeypatch.setattr(reproduce, "default_data_dir", lambda: tmp_path / "no_data")
  rc = reproduce.main(["--smoke", "--only", "paca,recoder", "--out", str(tmp_path / "o")])
  assert rc == 0
  results = json.loads((tmp_path / "o" / "results.json").read_text())
  for name in ("paca", "recoder"):
    assert results["studies"][name]["status"] == "skipped"
    assert "data not found" in results["studies"][name]["reason"]
  assert "skipped" in (tmp_path / "o" / "REPORT.md").read_text()


def test_library_packages_never_import_experiments():
  pattern = re.compile(r"^\s*(from|import)\s+experiments\b|import_module\([\"']experiments", re.M)
  offenders = [
    str(p.relative_to(REPO))
    for lib in LIBRARIES
    for p in (REPO / lib).rglob("*.py")
    if pattern.search(p.read_text())
  ]
  assert not offenders, offenders
  code = (
    "import sys, jaxsteer, paca_jax, ntk, recoder; "
    "bad = [m for m in sys.modules if m == 'experiments' or m.startswith('experiments.')]; "
    "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_readme_headline_table_is_generated_from_committed_results():
  path = REPO / "experiments" / "results" / "quick" / "results.json"
  if not path.is_file():
    pytest.skip(f"no committed quick run at {path}")
  results = json.loads(path.read_text())
  assert headline_table(results) in (REPO / "README.md").read_text()
  report = (path.parent / "REPORT.md").read_text()
  assert set(NUMBER.findall(report)) <= numbers_in(results)
  for st in results["studies"].values():
    for fig in st.get("figures", []):
      assert (path.parent / fig).is_file(), fig


def _fake_results():
  def claim(metric, lo, hi, direction="greater"):
    est = stats.Estimate((lo + hi) / 2, lo, hi, 48, "bca")
    return stats.claim(stats.Claim(f"claim on {metric}", metric, direction, 0.0, "paper"), est)

  rows = [stats.row(f"row {i}", stats.Estimate(i, i - 0.5, i + 0.5, 10, "bca")) for i in range(5)]
  study = {
    "paper": "P", "claim": "C", "status": "ok", "seconds": 1.0, "figures": [],
    "setting": {"model": "m", "data": "d", "seed": 0, "config": {}},
    "headline": rows,
    # a claim whose interval lies on the wrong side of its threshold, stated after other rows
    "claims": [claim("steering gain", -3.0, -1.0), claim("other gain", 0.5, 2.0)],
  }  # fmt: skip
  env = {"summary": "cpu", "platform": "linux", "git_commit": "abc"}
  return {
    "mode": "quick", "command": "c", "started": "s", "finished": "f", "data_dir": "d",
    "environment": env, "studies": {"grains": study},
  }  # fmt: skip


def test_report_shows_verdicts_first_and_marks_a_contradicted_claim():
  results = _fake_results()
  c = results["studies"]["grains"]["claims"]
  assert [x["verdict"] for x in c] == ["contradicted", "supported"]
  text = render(results)
  verdicts, study = text.index("## Verdicts"), text.index("(`grains`)")
  assert verdicts < study
  line = next(x for x in text.splitlines()[:study] if "steering gain" in x)
  assert "**CONTRADICTED**" in line and "-2 [-3, -1]" in line
  assert "supported" in next(x for x in text.splitlines() if "other gain" in x)


def test_readme_table_is_chosen_per_claim_not_by_position():
  table = headline_table(_fake_results())
  assert "steering gain" in table and "**CONTRADICTED**" in table and "other gain" in table
  assert "row 0" not in table  # headline rows by position are not what the README shows


def _run_dir(path, studies, commit="abc1234"):
  path.mkdir()
  res = _fake_results()
  st = res["studies"].pop("grains")
  res["environment"] |= {"git_commit": commit, "load_average_start": [1.0, 1.0, 1.0],
                         "load_average_finish": [2.0, 2.0, 2.0]}  # fmt: skip
  res["studies"] = {n: {**st, "paper": n} for n in studies}
  for n in studies:
    (path / n).mkdir()
    (path / n / "x.json").write_text("{}")
  (path / "results.json").write_text(json.dumps(res))
  return path


def test_merge_combines_disjoint_runs_and_recomputes_verdicts(tmp_path):
  a = _run_dir(tmp_path / "a", ["recoder"])
  b = _run_dir(tmp_path / "b", ["grains", "vlm"])
  data = json.loads((b / "results.json").read_text())
  data["studies"]["grains"]["claims"][0]["verdict"] = "supported"  # a wrong stored verdict
  (b / "results.json").write_text(json.dumps(data))
  assert reproduce.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
  merged = json.loads((tmp_path / "m" / "results.json").read_text())
  assert list(merged["studies"]) == list(reproduce.STUDIES)  # registry order
  assert merged["studies"]["paca"]["status"] == "skipped"
  assert merged["studies"]["grains"]["claims"][0]["verdict"] == "contradicted"
  assert (tmp_path / "m" / "recoder" / "x.json").is_file()
  assert "**CONTRADICTED**" in (tmp_path / "m" / "REPORT.md").read_text()


def test_merge_takes_a_study_from_the_run_that_ran_it(tmp_path):
  """A run that skipped a study (recoder) merges with a later run of only that study."""
  a = _run_dir(tmp_path / "a", ["grains", "recoder"])
  data = json.loads((a / "results.json").read_text())
  kept = {k: v for k, v in data["studies"]["recoder"].items() if k in ("paper", "claim", "mode")}
  data["studies"]["recoder"] = {**kept, "status": "skipped", "reason": "too slow here"}
  (a / "results.json").write_text(json.dumps(data))
  b = _run_dir(tmp_path / "b", ["recoder"])
  assert reproduce.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
  merged = json.loads((tmp_path / "m" / "results.json").read_text())
  assert merged["studies"]["recoder"]["status"] != "skipped"
  assert merged["studies"]["grains"]["status"] != "skipped"
  c = _run_dir(tmp_path / "c", ["grains", "recoder"])  # both ran recoder: still refused
  with pytest.raises(ValueError, match="more than one run"):
    reproduce.merge([b, c], tmp_path / "m2")


def test_merge_of_a_merged_run_keeps_each_study_commit(tmp_path):
  """Republishing one study into a merged run leaves the other studies' commits as they were."""
  a = _run_dir(tmp_path / "a", ["grains"], commit="aaa1111")
  b = _run_dir(tmp_path / "b", ["recoder"], commit="bbb2222")
  reproduce.merge([a, b], tmp_path / "m")
  data = json.loads((tmp_path / "m" / "results.json").read_text())
  kept = {k: v for k, v in data["studies"]["recoder"].items() if k in ("paper", "claim", "mode")}
  data["studies"]["recoder"] = {**kept, "status": "skipped", "reason": "rerun below"}
  (tmp_path / "m" / "results.json").write_text(json.dumps(data))
  c = _run_dir(tmp_path / "c", ["recoder"], commit="ccc3333")
  merged = reproduce.merge([tmp_path / "m", c], tmp_path / "m2")
  assert merged["studies"]["grains"]["git_commit"] == "aaa1111"
  assert merged["studies"]["recoder"]["git_commit"] == "ccc3333"
  assert "aaa1111 (grains)" in merged["environment"]["git_commit"]
  assert "ccc3333 (recoder)" in merged["environment"]["git_commit"]


def test_merge_refuses_overlapping_or_dirty_runs(tmp_path, capsys):
  a = _run_dir(tmp_path / "a", ["grains"])
  b = _run_dir(tmp_path / "b", ["grains"])
  with pytest.raises(SystemExit) as e:
    reproduce.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m")])
  assert e.value.code == 2 and "more than one run" in _err(capsys)
  c = _run_dir(tmp_path / "c", ["vlm"], commit="abc (uncommitted changes)")
  with pytest.raises(SystemExit):
    reproduce.main(["--merge", str(a), str(c), "--out", str(tmp_path / "m")])
  assert "clean commits" in _err(capsys)


def test_cli_pins_threads_when_jax_has_not_started(tmp_path):
  """``--threads 1`` (the default) reaches XLA: the CLI's own jaxsteer import must not disable it."""
  (tmp_path / "data").mkdir()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAXSTEER_DATA"] = str(tmp_path / "data")
  out = tmp_path / "o"
  cmd = [sys.executable, "-m", "experiments.reproduce", "--smoke", "--only", "models", "--out",
         str(out)]  # fmt: skip
  subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env=env, timeout=300)
  environment = json.loads((out / "results.json").read_text())["environment"]
  assert environment["threads"] == 1
  assert "--xla_cpu_multi_thread_eigen=false" in environment["xla_flags"]


@pytest.mark.parametrize("bench", [False, True])
def test_set_threads_pins_the_core_only_when_asked(monkeypatch, bench):
  """An in-process caller (a benchmark's ``run``, a notebook) keeps its CPU affinity; only the
  command-line entry points ask ``set_threads`` to pin the process to one core."""
  torch = pytest.importorskip("torch")
  from experiments import bench_models

  calls = []
  monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: calls.append(set(cpus)))
  monkeypatch.setattr(os, "environ", dict(os.environ))  # XLA_FLAGS / OMP_* changes stay here
  before = torch.get_num_threads()
  set_threads = bench_models.set_threads if bench else reproduce.set_threads
  try:
    set_threads(1)
    set_threads(2, pin_core=True)
    assert calls == []
    assert "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"]
    set_threads(1, pin_core=True)
    assert calls == [{min(os.sched_getaffinity(0))}]
  finally:
    torch.set_num_threads(before)
