"""Study READMEs' tables are generated from the JSON they cite (``experiments.tables``)."""

import json
import shutil

import pytest

from experiments import tables

REPO = tables.REPO


@pytest.mark.parametrize("rel", tables.READMES)
def test_readme_tables_agree_with_their_json(rel):
  path = REPO / rel
  text = path.read_text()
  assert tables.BLOCK.search(text), f"{rel} has no generated table"
  assert tables.refresh(path, check=True) == [], "run `python -m experiments.tables`"


def _copy(tmp_path):
  rel_json = "experiments/recoder/results/ptb_small_test.json"
  (tmp_path / rel_json).parent.mkdir(parents=True)
  shutil.copy(REPO / rel_json, tmp_path / rel_json)
  readme = tmp_path / "README.md"
  body = tables.render("variants", rel_json, [], tmp_path)
  readme.write_text(f"intro\n<!-- table variants {rel_json} -->\n{body}<!-- /table -->\ntail\n")
  return readme, tmp_path / rel_json


def test_check_fails_when_a_readme_number_is_edited(tmp_path):
  readme, _ = _copy(tmp_path)
  assert tables.refresh(readme, check=True, root=tmp_path) == []
  text = readme.read_text()
  data_row = next(line for line in text.splitlines() if line.startswith("| none"))
  readme.write_text(text.replace(data_row, data_row.replace("115.2", "120.6")))  # hand-copied
  stale = tables.refresh(readme, check=True, root=tmp_path)
  assert len(stale) == 1 and "ptb_small_test.json" in stale[0]
  tables.refresh(readme, check=False, root=tmp_path)  # regenerate: agrees again
  assert tables.refresh(readme, check=True, root=tmp_path) == []
  assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("tail\n")


def test_check_fails_when_the_json_changes(tmp_path):
  readme, js = _copy(tmp_path)
  data = json.loads(js.read_text())
  data["variants"]["none"]["ppl"] = 999.0
  js.write_text(json.dumps(data))
  assert tables.refresh(readme, check=True, root=tmp_path)


def test_unknown_renderer_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="unknown table renderer"):
    tables.render("nope", "x.json", [], tmp_path)
