"""Training / evaluation entry points, exact resume, no recompilation, bad input."""

import dataclasses
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
  summary = train_lib.train_from_argv(["--data", data, "--out", root / "a", *ARGS])
  return root, data, summary


@pytest.mark.entry
def test_train_entry_point_writes_summary_and_checkpoints(tiny):
  root, _, summary = tiny
  assert np.isfinite(summary.test_ppl) and summary.epochs == 1 and summary.finished
  on_disk = json.loads((root / "a" / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary.to_dict()))
  assert (root / "a" / "config.json").is_file()


def test_resumed_run_matches_uninterrupted_run(tiny):
  root, data, ref = tiny
  out = root / "b"
  base = ["--data", str(data), "--out", str(out), *ARGS]
  first = train_lib.train_from_argv([*base, "--max-steps", "3"])
  assert first.global_step == 3 and not first.finished and "test_ppl" not in first.to_dict()
  resumed = train_lib.train_from_argv(base)
  assert resumed.global_step == ref.global_step > 3
  for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  assert resumed.test_ppl == ref.test_ppl


@pytest.mark.entry
def test_evaluate_entry_point_prints_json(tiny, capsys):
  root, _, _ = tiny
  rc = evaluate_lib.main(
    ["--run", str(root / "a"), "--no-progress", "--batch-size", "2", "--variants", "none",
     "surprisal:0.5", "trained", "ensemble_entropy:0.1", "--out", str(root / "eval.json")]
  )  # fmt: skip
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  assert json.loads((root / "eval.json").read_text()) == out
  assert not list(root.glob(".eval.json.*"))  # no temporary file left
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
  opt = train_lib.with_learning_rate(tx.init(params), 1.0)
  params, opt, h, _ = step(params, opt, anchors, h, x, x, jax.random.key(1), jnp.float32(0.1))
  ev(params, h, x, x, jax.random.key(2), jnp.float32(0.1))
  with count_compiles() as c:
    opt = train_lib.with_learning_rate(opt, 0.5)  # what the schedule does after an epoch
    params, opt, h, _ = step(params, opt, anchors, h, x, x, jax.random.key(3), jnp.float32(2.0))
    ev(params, h, x, x, jax.random.key(4), jnp.float32(3.0))
  assert c.count == 0
  assert train_lib.learning_rate(opt) == 0.5


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
             jax.random.key(1), jnp.float32(0.1))  # fmt: skip
  assert np.isfinite(float(out[3]))
  assert np.all(np.isfinite(np.asarray(anchors["decoder_w"])))


def _latest_state(run_dir):
  """The newest ``ckpt`` checkpoint's state (as stored: named tuples become dicts) and metadata,
  read with orbax directly."""
  import orbax.checkpoint as ocp

  mngr = ocp.CheckpointManager(
    run_dir / "ckpt", options=ocp.CheckpointManagerOptions(read_only=True)
  )
  step = mngr.latest_step()
  got = mngr.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
  )
  mngr.close()
  return got["state"], got["meta"]


def test_run_interrupted_after_an_epoch_resumes_with_its_learning_rate_and_plateau(tmp_path):
  # --decay-start 1: the learning rate drops 20 -> 5 after epoch 1, so the resumed epoch 2 only
  # matches when the learning rate comes back from the checkpointed optimizer state.
  # The reference runs through the Python API, the interrupted one through the CLI (same settings).
  data = _write_corpus(tmp_path / "data")
  args = [*ARGS, "--epochs", "2", "--decay-start", "1"]
  config = train_lib.TrainConfig(
    model=train_lib.ModelConfig(emb=8, hidden=8, layers=2, dropout=0.2),
    batch_size=4, bptt=6, eval_batch_size=2, epochs=2, decay_start=1,
  )  # fmt: skip
  options = train_lib.RunOptions(ckpt_every=1000, progress=False)
  ref = train_lib.train(config, recoder.load_corpus(data), tmp_path / "ref", options=options)
  per_epoch = ref.global_step // 2
  base = ["--data", data, "--out", tmp_path / "cut", *args]
  first = train_lib.train_from_argv([*base, "--max-steps", per_epoch])
  assert first.global_step == per_epoch and len(first.history) == 1 and not first.finished
  state, meta = _latest_state(tmp_path / "cut")
  assert meta["epoch"] == 1 and meta["batch"] == 0
  assert float(state["opt_state"]["hyperparams"]["learning_rate"]) == 5.0
  assert float(state["plateau"]["best"]) == first.history[0]["valid_ppl"]  # float64, exact
  resumed = train_lib.train_from_argv(base)
  assert [h["lr"] for h in resumed.history] == [h["lr"] for h in ref.history] == [20.0, 5.0]
  strip = lambda hs: [{k: v for k, v in h.items() if k != "train_seconds"} for h in hs]  # noqa: E731
  assert strip(resumed.history) == strip(ref.history)
  a, _ = _latest_state(tmp_path / "ref")
  b, _ = _latest_state(tmp_path / "cut")
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)  # params, optimizer state with its lr, plateau, hidden
  assert float(a["opt_state"]["hyperparams"]["learning_rate"]) == 1.25
  assert resumed.test_ppl == ref.test_ppl


def test_checkpoint_of_the_old_format_is_refused_naming_the_reason(tmp_path):
  data = _write_corpus(tmp_path / "data")
  out = tmp_path / "run"
  base = ["--data", data, "--out", out, *ARGS, "--ckpt-every", "1"]
  train_lib.train_from_argv([*base, "--max-steps", "2"])
  # Adam's state has another structure than SGD's: refused like a shape setting, not overridden.
  with pytest.raises(ValueError, match=r"other model settings \(--optimizer 'sgd' -> 'adam'\)"):
    train_lib.train_from_argv([*base, "--optimizer", "adam", "--override-settings"])
  # A checkpoint of the previous recoder.train: its metadata has no "format" (and holds the lr).
  for meta_file in (out / "ckpt").glob("*/meta/metadata"):
    meta = json.loads(meta_file.read_text())
    del meta["format"]
    meta["lr"] = 20.0
    meta_file.write_text(json.dumps(meta))
  config = (out / "config.json").read_text()
  with pytest.raises(ValueError, match=r"format 1 .*learning rate outside the optimizer state"):
    train_lib.train_from_argv(base)
  assert (out / "config.json").read_text() == config  # refused before anything is written
  # its parameters stay readable
  params = train_lib.restore_params(out, which="latest")
  assert params["lm"]["embedding"].shape[1] == 8


def test_bad_corpus_is_refused_before_anything_is_written(tmp_path):
  vocab = recoder.Vocab(tuple("abcde"))
  ids = np.arange(40, dtype=np.int32) % 5
  bad = recoder.Corpus(vocab, train=ids, valid=ids + 1, test=ids)  # id 5 is not in the vocabulary
  config = train_lib.TrainConfig(model=train_lib.ModelConfig(emb=4, hidden=4), batch_size=2)
  with pytest.raises(ValueError, match=r"validation ids outside the vocabulary \[0, 5\)"):
    train_lib.train(config, bad, tmp_path / "run")
  with pytest.raises(ValueError, match="too short for batch size 64"):
    train_lib.train(train_lib.TrainConfig(), recoder.Corpus(vocab, ids, ids, ids), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_cli_flags_build_the_config_dataclasses():
  argv = [
    "--data", "d", "--out", "o", "--prefix", "x.", "--emb", "3", "--hidden", "5", "--layers", "1",
    "--dropout", "0.3", "--tied", "--members", "2", "--optimizer", "adam", "--lr", "0.5",
    "--clip", "2", "--weight-decay", "0.01", "--lr-decay", "0.5", "--decay-start", "3",
    "--bptt", "7", "--batch-size", "9", "--eval-batch-size", "4", "--epochs", "6", "--seed", "11",
    "--signal", "surprisal", "--step-type", "learned", "--step-size", "0.7", "--num-samples", "3",
    "--mc-dropout", "0.4", "--target", "argmax", "--second-order", "--prior-scale", "0.5",
    "--data-noise", "0.2", "--max-train-tokens", "100", "--max-eval-tokens", "50",
    "--max-steps", "13", "--ckpt-every", "17", "--override-settings", "--no-progress",
  ]  # fmt: skip
  config, options = train_lib.config_from_args(train_lib.build_parser().parse_args(argv))
  assert config.model == train_lib.ModelConfig(
    emb=3, hidden=5, layers=1, dropout=0.3, tied=True, members=2
  )
  assert config.recoding == recoder.RecodingConfig(
    signal="surprisal", step_type="learned", num_samples=3, mc_dropout=0.4, target="argmax",
    second_order=True,
  )  # fmt: skip
  want = dict(
    optimizer="adam", lr=0.5, clip=2.0, weight_decay=0.01, lr_decay=0.5, decay_start=3, bptt=7,
    batch_size=9, eval_batch_size=4, epochs=6, step_size=0.7, prior_scale=0.5, data_noise=0.2,
    seed=11, max_train_tokens=100, max_eval_tokens=50,
  )  # fmt: skip
  assert {k: getattr(config, k) for k in want} == want
  assert options == train_lib.RunOptions(
    max_steps=13, ckpt_every=17, progress=False, override_settings=True
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.lr = 1.0
  # every flag lands in a config (or names the data): nothing the parser reads is dropped
  defaults = train_lib.config_from_args(
    train_lib.build_parser().parse_args(["--data", "d", "--out", "o"])
  )
  assert defaults == (train_lib.TrainConfig(), train_lib.RunOptions())


def test_non_finite_validation_nll_raises_instead_of_steering_the_schedule():
  cfg = recoder.LMConfig(vocab_size=9, embed_dim=4, hidden_dim=4, dropout=0.0)
  model = recoder.LSTMLM(cfg)
  rc = recoder.RecodingConfig()
  params, _ = train_lib.init_train_state(model, rc, train_lib.TrainConfig(), jax.random.key(0))
  ev = train_lib.make_eval_step(model, rc)
  ids = np.arange(40, dtype=np.int32) % 9
  kw = dict(batch_size=2, bptt=5, step_size=jnp.float32(0.0), key=jax.random.key(1))
  ppl, n = train_lib.evaluate_ids(ev, model, params, ids, **kw)
  assert np.isfinite(ppl) and n == 2 * 19
  params["lm"]["decoder_b"] = params["lm"]["decoder_b"].at[..., 0].set(jnp.nan)
  with pytest.raises(FloatingPointError, match="non-finite NLL"):
    train_lib.evaluate_ids(ev, model, params, ids, **kw)
