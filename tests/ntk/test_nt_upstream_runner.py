"""scripts/nt_upstream.py (NT 0.6.5's own suite under ntk): result parsing, table, source guard.

The suite itself runs in scripts/test.sh (``--mode ci``); these tests need no download.
"""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "nt_upstream.py"


@pytest.fixture(scope="module")
def runner():
  spec = importlib.util.spec_from_file_location("nt_upstream", _PATH)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.empirical_test.EmpiricalTest" name="test_a0" file="tests/empirical_test.py" time="1.5"/>
<testcase classname="tests.empirical_test.EmpiricalTest" name="test_b0" file="tests/empirical_test.py" time="2.0">
  <failure message="AssertionError: Not equal | x">trace</failure></testcase>
<testcase classname="tests.imdb_test" name="imdb_test" file="tests/imdb_test.py" time="0">
  <skipped message="TensorFlow-only">skip</skipped></testcase>
</testsuite></testsuites>
"""


def test_parse_junit_and_table(runner, tmp_path):
  p = tmp_path / "junit.xml"
  p.write_text(JUNIT)
  files = runner.parse_junit(p)
  emp = files["tests/empirical_test.py"]
  assert (emp["passed"], emp["failed"], emp["skipped"]) == (1, 1, 0)
  assert emp["non_pass"] == [
    {"test": "test_b0", "status": "failed", "reason": "AssertionError: Not equal | x"}
  ]
  assert files["tests/imdb_test.py"]["skipped"] == 1
  run = {"x64": False, "cases": 1, "wall_s": 3.5, "loadavg": (1.0, 1.0, 1.0), "files": files}
  other = dict(run, files={"tests/rules_test.py": dict(emp, non_pass=[])}, wall_s=1.0)
  text = runner.table([run, other])  # same (x64, cases): merged into one table
  assert text.count("### float32") == 1
  assert "| tests/empirical_test.py | 1 | 1 | 0 | 4 |" in text
  assert "| tests/rules_test.py |" in text
  assert "AssertionError: Not equal \\| x" in text  # pipes escaped in the reason column
  assert "2 passed, 2 failed, 1 skipped" in text


def test_installed_library_uses_none_of_the_rewritten_names(runner):
  runner.check_library_source()  # raises if a test-file rewrite could stand in for a library fix
  assert {r[0] for r in runner.REWRITES} <= {
    "tests/test_utils.py",
    "tests/predict_test.py",
    "tests/empirical_test.py",
    "tests/rules_test.py",
  }


def test_bad_usage_exits_2(runner, capsys):
  assert runner.main(["--cases", "0"]) == 2
  assert "error" in capsys.readouterr().err
