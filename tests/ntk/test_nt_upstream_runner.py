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


def test_table_lists_unfinished_files_and_keeps_the_prose(runner, tmp_path):
  entry = {"passed": 2, "failed": 0, "skipped": 1, "time_s": 9.0, "non_pass": []}
  entry = dict(entry, loadavg=[3.5, 2.0, 1.25], finished_utc="2026-12-02T03:00:00Z")
  run = {"x64": True, "cases": 4, "wall_s": 9.0, "loadavg": (1.0, 1.0, 1.0)}
  run = dict(run, files={"tests/b_test.py": entry}, planned=["tests/a_test.py", "tests/b_test.py"])
  text = runner.table([run])
  assert "| tests/b_test.py | 2 | 0 | 1 | 9 | 2026-12-02 03:00:00 | 3.5/2.0/1.2 | - |" in text
  assert "| tests/a_test.py | not run (time) |" in text
  doc = tmp_path / "doc.md"
  doc.write_text(f"prose before\n{runner.TABLE_BEGIN}\nold\n{runner.TABLE_END}\nprose after\n")
  runner.write_table(doc, text)
  new = doc.read_text()
  assert new.startswith("prose before\n") and new.endswith("prose after\n")
  assert "old" not in new and "| tests/a_test.py | not run (time) |" in new
  doc.write_text("no markers")
  with pytest.raises(runner.UsageError, match="block"):
    runner.write_table(doc, text)
  assert doc.read_text() == "no markers"  # nothing partial written


def test_resume_and_order(runner, tmp_path):
  path = tmp_path / "run.json"
  assert runner.load_resume(path, 4, False) is None  # nothing yet: start afresh
  path.write_text('{"cases": 4, "x64": false, "files": {"tests/a_test.py": {}}}')
  assert set(runner.load_resume(path, 4, False)["files"]) == {"tests/a_test.py"}
  with pytest.raises(runner.UsageError, match="x64"):
    runner.load_resume(path, 4, True)  # another setting's results are never mixed in
  with pytest.raises(runner.UsageError, match="cases"):
    runner.load_resume(path, 1, False)
  every = ["tests/a_test.py", "tests/b_test.py", "tests/c_test.py"]
  assert runner.order_files(every, every, ["tests/c_test.py"]) == [
    "tests/c_test.py",
    "tests/a_test.py",
    "tests/b_test.py",
  ]
  with pytest.raises(runner.UsageError, match="no such"):
    runner.order_files(every, every, ["tests/z_test.py"])


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
