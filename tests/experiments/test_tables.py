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


def test_recoder_documented_command_matches_the_committed_run():
  import math
  import shlex

  from experiments.recoder import run as rrun
  from recoder._src import train as train_lib

  argv = shlex.split(rrun.FULL_RUN_COMMAND)[3:]
  args = train_lib.build_parser().parse_args(argv)
  summary = json.loads((REPO / "experiments/recoder/results/ptb_small_summary.json").read_text())
  assert args.epochs == summary["epochs"] == len(summary["history"])
  lrs = [
    args.lr * (args.lr_decay ** max(0, e - args.decay_start)) for e in range(1, args.epochs + 1)
  ]
  assert lrs == pytest.approx([h["lr"] for h in summary["history"]])
  train_tokens = 929589  # Mikolov PTB training tokens incl. <eos>
  per_epoch = (train_tokens // args.batch_size - 1) / args.bptt
  assert summary["global_step"] == pytest.approx(args.epochs * per_epoch, abs=args.epochs * 2)
  assert "--batch-size 10" in rrun.FULL_EVAL_COMMAND  # what ptb_small_test.json used
  assert math.isfinite(summary["test_ppl"])


def test_committed_quick_run_used_the_documented_quick_settings():
  import dataclasses

  from experiments import reproduce
  from experiments.report import sanitize

  path = REPO / "experiments" / "results" / "quick" / "results.json"
  results = json.loads(path.read_text())
  assert results["mode"] == "quick"
  ran = {n: st for n, st in results["studies"].items() if st["status"] == "ok"}
  assert len(ran) >= 5, sorted(ran)
  for name, st in ran.items():
    want = json.loads(
      json.dumps(sanitize(dataclasses.asdict(reproduce.STUDIES[name].config("quick"))))
    )
    assert st["setting"]["config"] == want, name
