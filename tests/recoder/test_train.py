"""Training / evaluation entry points, exact resume, no recompilation, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

import recoder
from recoder._src import evaluate as evaluate_lib
from recoder._src import train as train_lib

WORDS = "the cat sat on a mat dog ran to big red house <unk>".split()


def _write_corpus(d, n_lines=(60, 10, 10), seed=0):
  rng = np.random.default_rng(seed)
  d.mkdir(parents=True, exist_ok=True)
  for split, n in zip(("train", "valid", "test"), n_lines):
    lines = [" " + " ".join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(n)]
    if split == "train":
      lines.append(" " + " ".join(WORDS))  # every word occurs in training
    (d / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
  return d


ARGS = [
  "--emb", "8", "--hidden", "8", "--layers", "2", "--batch-size", "4", "--bptt", "6",
  "--eval-batch-size", "2", "--epochs", "1", "--dropout", "0.2", "--ckpt-every", "1000",
  "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("recoder")
  data = _write_corpus(root / "data")
  args = train_lib.build_parser().parse_args(["--data", str(data), "--out", str(root / "a"), *ARGS])
  summary = train_lib.train(args)
  return root, data, summary


@pytest.mark.entry
def test_train_entry_point_writes_summary_and_checkpoints(tiny):
  root, _, summary = tiny
  assert np.isfinite(summary["test_ppl"]) and summary["epochs"] == 1
  on_disk = json.loads((root / "a" / "summary.json").read_text())
  assert on_disk["test_ppl"] == pytest.approx(summary["test_ppl"])
  assert (root / "a" / "config.json").is_file()


def test_resumed_run_matches_uninterrupted_run(tiny):
  root, data, ref = tiny
  out = root / "b"
  base = ["--data", str(data), "--out", str(out), *ARGS]
  first = train_lib.train(train_lib.build_parser().parse_args([*base, "--max-steps", "3"]))
  assert first["global_step"] == 3 and "test_ppl" not in first
  resumed = train_lib.train(train_lib.build_parser().parse_args(base))
  assert resumed["global_step"] == ref["global_step"] > 3
  for a, b in zip(
    jax.tree_util.tree_leaves(ref["params"]), jax.tree_util.tree_leaves(resumed["params"])
  ):
    np.testing.assert_array_equal(a, b)
  assert resumed["test_ppl"] == ref["test_ppl"]


@pytest.mark.entry
def test_evaluate_entry_point_prints_json(tiny, capsys):
  root, _, _ = tiny
  rc = evaluate_lib.main(
    ["--run", str(root / "a"), "--no-progress", "--batch-size", "2", "--variants", "none",
     "surprisal:0.5", "trained", "ensemble_entropy:0.1"]
  )  # fmt: skip
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  v = out["variants"]
  assert np.isfinite(v["none"]["ppl"]) and np.isfinite(v["surprisal:0.5"]["ppl"])
  assert v["trained"]["config"]["signal"] == "none"
  assert "skipped" in v["ensemble_entropy:0.1"]


def test_bad_variant_and_signal_raise():
  with pytest.raises(ValueError, match="non-negative"):
    evaluate_lib.parse_variant("surprisal:-1")
  with pytest.raises(ValueError, match="unknown error signal"):
    evaluate_lib.parse_variant("bogus:1")
  with pytest.raises(SystemExit):
    train_lib.build_parser().parse_args(["--data", "x", "--out", "y", "--step-type", "nope"])


def test_train_cli_rejects_unknown_signal_and_negative_step(tmp_path):
  data = _write_corpus(tmp_path / "d")
  base = ["--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"]
  with pytest.raises(ValueError, match="unknown error signal"):
    train_lib.main([*base, "--signal", "bogus"])
  with pytest.raises(ValueError, match="non-negative"):
    train_lib.main([*base, "--signal", "surprisal", "--step-size", "-1"])


def test_empty_and_missing_corpus_files_raise(tmp_path):
  d = _write_corpus(tmp_path / "d")
  (d / "ptb.valid.txt").write_text("\n\n")
  with pytest.raises(ValueError, match="empty"):
    recoder.load_corpus(d)
  (d / "ptb.valid.txt").unlink()
  with pytest.raises(FileNotFoundError, match="ptb.valid.txt"):
    recoder.load_corpus(d)
  with pytest.raises(FileNotFoundError):
    recoder.load_corpus(tmp_path / "nowhere")


def test_no_recompile_with_new_step_size_or_lr():
  cfg = recoder.LMConfig(vocab_size=9, embed_dim=4, hidden_dim=4, dropout=0.1)
  model = recoder.LSTMLM(cfg)
  rc = recoder.RecodingConfig(signal="surprisal")
  tc = train_lib.TrainConfig(batch_size=2, bptt=3)
  params, anchors = train_lib.init_train_state(model, rc, tc, jax.random.key(0))
  tx, step = train_lib.make_train_step(model, rc, tc, 100)
  ev = train_lib.make_eval_step(model, rc)
  x = np.ones((2, 3), np.int32)
  h = recoder.zero_state(cfg, 2)
  params, opt, h, _ = step(params, tx.init(params), anchors, h, x, x, jax.random.key(1),
                           jnp.float32(1.0), jnp.float32(0.1))  # fmt: skip
  ev(params, h, x, x, jax.random.key(2), jnp.float32(0.1))
  with count_compiles() as c:
    params, opt, h, _ = step(params, opt, anchors, h, x, x, jax.random.key(3), jnp.float32(0.5),
                             jnp.float32(2.0))  # fmt: skip
    ev(params, h, x, x, jax.random.key(4), jnp.float32(3.0))
  assert c.count == 0


def test_anchored_ensemble_penalty_uses_stored_anchors():
  cfg = recoder.LMConfig(vocab_size=9, embed_dim=4, hidden_dim=4, num_members=3)
  model = recoder.LSTMLM(cfg)
  rc = recoder.RecodingConfig(signal="ensemble_entropy")
  tc = train_lib.TrainConfig(weight_decay=4.815e-5)
  params, anchors = jax.jit(lambda k: train_lib.init_train_state(model, rc, tc, k))(
    jax.random.key(0)
  )
  assert anchors["decoder_w"].shape == (3, 4, 9)
  penalty = jax.jit(lambda p: train_lib.anchor_penalty(p, anchors, tc, 100))
  assert float(penalty(params["lm"])) == 0.0  # members start at their anchors
  moved = {**params["lm"], "decoder_w": params["lm"]["decoder_w"] + 1.0}
  lam = tc.data_noise / tc.prior_scale
  assert float(penalty(moved)) == pytest.approx(lam / 100 * 3 * 4 * 9, rel=1e-5)
  with pytest.raises(ValueError, match="weight_decay"):
    train_lib.TrainConfig(weight_decay=4.815)  # the author's typo


def test_ensemble_train_step_runs_with_donated_params():
  # Regression: the members start at their anchors; they must not share buffers (donation).
  cfg = recoder.LMConfig(vocab_size=9, embed_dim=4, hidden_dim=4, num_members=2, dropout=0.0)
  model = recoder.LSTMLM(cfg)
  rc = recoder.RecodingConfig(signal="ensemble_entropy")
  tc = train_lib.TrainConfig(batch_size=2, bptt=3)
  params, anchors = train_lib.init_train_state(model, rc, tc, jax.random.key(0))
  tx, step = train_lib.make_train_step(model, rc, tc, 100)
  x = np.ones((2, 3), np.int32)
  out = step(params, tx.init(params), anchors, recoder.zero_state(cfg, 2), x, x,
             jax.random.key(1), jnp.float32(1.0), jnp.float32(0.1))  # fmt: skip
  assert np.isfinite(float(out[3]))
  assert np.all(np.isfinite(np.asarray(anchors["decoder_w"])))
