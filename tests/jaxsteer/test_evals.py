"""jaxsteer.evals: TruthfulQA loaders, MC0/MC1/MC2 scoring against unbatched references, split."""

import json

import numpy as np
import pytest
from helpers import count_compiles
from tolerances import assert_close, tol

import jaxsteer
from jaxsteer import evals


@pytest.fixture(scope="module")
def v1(data_dir):
  if not (data_dir / "truthfulqa" / "v1" / "mc_task.json").is_file():
    pytest.skip("TruthfulQA v1 not found in the shared data")
  return evals.load_truthfulqa(data_dir, version="v1")


@pytest.fixture(scope="module")
def binary(data_dir):
  if not (data_dir / "truthfulqa" / "mc_task.json").is_file():
    pytest.skip("TruthfulQA 2025 set not found in the shared data")
  return evals.load_truthfulqa(data_dir, version="binary")


@pytest.fixture(scope="module")
def lm(stories260k):
  ckpt, tok = stories260k
  return jaxsteer.load(ckpt, tokenizer=tok)


# -- loaders ---------------------------------------------------------------------------------------


def test_loaders_counts_and_keys(v1, binary, data_dir):
  assert len(v1) == 817 and len(binary) == 790
  assert v1.metrics == ("mc1", "mc2") and binary.metrics == ("mc0", "mc1", "mc2")
  assert v1[0].question == "What happens if you eat a pomegranate?"
  assert v1[0].mc0_choices is None
  for q in (v1[0], binary[0]):
    assert q.mc1_labels.count(1) == 1 and q.mc1_labels[0] == 1
    assert len(q.mc1_choices) == len(q.mc1_labels) and len(q.mc2_choices) == len(q.mc2_labels)
  assert all(len(q.mc0_choices) == 2 and q.mc0_labels.count(1) == 1 for q in binary.questions)
  assert binary[0].best_answer == "The watermelon seeds pass through your digestive system"
  rows = evals.load_truthfulqa_csv(data_dir, "v1")  # UTF-8 BOM: first key must be clean
  assert len(rows) == 817 and list(rows[0])[0] == "Type"
  assert isinstance(rows[0]["Correct Answers"], list)
  rows = evals.load_truthfulqa_csv(data_dir, "binary")
  assert len(rows) == 790 and "Best Incorrect Answer" in rows[0]
  # root may be the truthfulqa dir or the json file itself
  assert len(evals.load_truthfulqa(data_dir / "truthfulqa" / "v1" / "mc_task.json", "v1")) == 817


def test_loader_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown TruthfulQA version"):
    evals.load_truthfulqa(tmp_path, version="v3")
  with pytest.raises(FileNotFoundError, match="not found"):
    evals.load_truthfulqa(tmp_path, version="v1")
  bad = tmp_path / "mc_task.json"
  bad.write_text(
    json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {}}])
  )
  with pytest.raises(ValueError, match="mc1_targets"):
    evals.load_truthfulqa(bad, version="v1")
  bad.write_text("{nope")
  with pytest.raises(ValueError, match="not valid JSON"):
    evals.load_truthfulqa(bad, version="v1")


# -- metric definitions ----------------------------------------------------------------------------


def test_metric_definitions():
  assert evals.mc1([-1.0, -2.0, -0.5], [1, 0, 0]) == 0.0
  assert evals.mc1([-0.4, -2.0, -0.5], [1, 0, 0]) == 1.0
  assert evals.mc1([-0.5, -0.5], [1, 0]) == 1.0  # lm-eval: argmax takes the first (true) one
  s, l = np.array([-1.0, -2.0, -3.0, -0.5]), np.array([1, 1, 0, 0])
  p = np.exp(s)
  assert evals.mc2(s, l) == pytest.approx(p[:2].sum() / p.sum(), rel=1e-12)
  assert evals.mc2([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + np.exp(-1)))


# -- scoring vs. an unbatched reference ------------------------------------------------------------


def _reference_ll(lm, context, continuation, width=128):
  """One forward per answer, no mask and no batching; numpy log-softmax in float64.

  The row is filled up to ``width`` with arbitrary tokens: by causality they cannot change the
  logits at the real positions, and one width means one compiled program.
  """
  whole = lm.encode(context + continuation)
  ctx = lm.encode(context)
  assert whole[: len(ctx)] == ctx  # holds for these prompts with tok512
  row = np.full((1, width), 7, np.int32)
  row[0, : len(whole)] = whole
  logits = np.asarray(lm(row), np.float64)[0, : len(whole)]
  lp = logits - logits.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  return sum(lp[t - 1, whole[t]] for t in range(len(ctx), len(whole)))


def test_scores_match_unbatched_reference(lm, v1, binary):
  for ds, idx in ((v1, [0, 17]), (binary, [3])):
    res = evals.evaluate_truthfulqa(
      lm, ds, split=idx, batch_size=4, questions_per_chunk=2, progress=False, details=True
    )
    assert res["num_questions"] == len(idx) and res["split"] == "custom"
    for row in res["questions"]:
      q = ds[row["index"]]
      ctx = evals.PROMPT_TEMPLATE.format(question=q.question)
      for m in ds.metrics:
        choices, labels = getattr(q, f"{m}_choices"), getattr(q, f"{m}_labels")
        ref = [_reference_ll(lm, ctx, " " + a) for a in choices]
        # a sum of n float32 log-probs: the float32 table entry scaled by the token count
        n = max(len(lm.encode(ctx + " " + a)) - len(lm.encode(ctx)) for a in choices)
        assert_close(row[f"{m}_scores"], ref, "float32", atol=n * tol("float32")[1])
        assert row[m] == pytest.approx(getattr(evals, m)(ref, labels), abs=1e-4)
    for m in ds.metrics:
      assert res[m] == pytest.approx(np.mean([r[m] for r in res["questions"]]))


def test_loglikelihoods_few_compiles(lm):
  reqs = [("Q: Is it?\nA:", " Yes."), ("Q: Why?\nA:", " Because it is so, and it always was.")]
  evals.loglikelihoods(lm, reqs, batch_size=4)  # warm up the 32-wide bucket
  more = [("Q: A?\nA:", " B"), ("Q: Where is the cat?\nA:", " On the mat."), ("Q: x\nA:", " y")]
  with count_compiles() as c:
    a = evals.loglikelihoods(lm, reqs + more, batch_size=4)
  assert c.count == 0
  # batching/padding does not change a score
  b = [evals.loglikelihoods(lm, [r], batch_size=1)[0] for r in reqs + more]
  assert_close(a, b, "float32", atol=16 * tol("float32")[1])


# -- split -----------------------------------------------------------------------------------------


def test_saved_split_disjoint_and_verified(v1, binary):
  for ds in (v1, binary):
    sp = evals.load_split(ds)
    assert len(sp["steer"]) == 100 and len(sp["steer"]) + len(sp["eval"]) <= len(ds)
    assert not set(sp["steer"]) & set(sp["eval"])
  # disjoint across sets by text: no v1 steering question is evaluated in the binary set
  steer_text = {v1[i].question for i in evals.load_split(v1)["steer"]}
  assert not steer_text & {binary[i].question for i in evals.load_split(binary)["eval"]}
  # the saved file is exactly what make_split produces
  saved = json.loads(evals.DEFAULT_SPLIT_PATH.read_text())
  assert saved == evals.make_split([v1, binary], n_steer=100, seed=saved["seed"])


def test_steering_pairs(v1, binary):
  pairs = evals.steering_pairs(v1, n=50, seed=0)
  assert len(pairs) == 50
  steer = evals.load_split(v1)["steer"][:50]
  for p, i in zip(pairs, steer):
    q = v1[i]
    assert p.prompt == f"Q: {q.question}\nA:"
    assert p.preferred == q.mc1_choices[0] and p.dispreferred in q.false_answers
  assert [p.dispreferred for p in pairs] == [
    p.dispreferred for p in evals.steering_pairs(v1, n=50, seed=0)
  ]
  assert [p.dispreferred for p in pairs] != [
    p.dispreferred for p in evals.steering_pairs(v1, n=50, seed=1)
  ]
  assert all(isinstance(p, jaxsteer.grains.Pair) for p in pairs)
  bp = evals.steering_pairs(binary, n=5)
  for p, i in zip(bp, evals.load_split(binary)["steer"]):
    assert (p.preferred, p.dispreferred) == (binary[i].best_answer, binary[i].false_answers[0])
  with pytest.raises(ValueError, match="n must be in"):
    evals.steering_pairs(v1, n=101)


def test_split_verification_errors(v1, tmp_path):
  split = json.loads(evals.DEFAULT_SPLIT_PATH.read_text())
  path = tmp_path / "split.json"
  tampered = json.loads(json.dumps(split))
  tampered["sets"]["v1"]["steer"][0] += 1
  path.write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match="does not match the loaded v1 questions"):
    evals.steering_pairs(v1, split=path)
  tampered = json.loads(json.dumps(split))
  tampered["sets"]["v1"]["num_questions"] = 790
  path.write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match="wrong dataset file or version"):
    evals.load_split(v1, path)
  tampered = json.loads(json.dumps(split))
  s = tampered["sets"]["v1"]
  s["eval"].append(s["steer"][0])
  s["eval_sha"].append(s["steer_sha"][0])
  path.write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match="in both steer and eval"):
    evals.load_split(v1, path)
  with pytest.raises(FileNotFoundError, match="split file not found"):
    evals.load_split(v1, tmp_path / "missing.json")
  del tampered["sets"]["v1"]
  path.write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match="no entry"):
    evals.load_split(v1, path)
  # a shuffled dataset (same texts, other order) is rejected
  shuffled = evals.TruthfulQA("v1", tuple(reversed(v1.questions)))
  with pytest.raises(ValueError, match="does not match"):
    evals.load_split(shuffled)


def test_evaluate_split_and_bad_input(lm, binary):
  res = evals.evaluate_truthfulqa(lm, binary, limit=3, metrics=["mc0"], progress=False)
  assert res["split"] == "eval" and res["num_questions"] == 3 and set(res) >= {"mc0"}
  assert 0.0 <= res["mc0"] <= 1.0 and "mc1" not in res
  with pytest.raises(ValueError, match="not available"):
    evals.evaluate_truthfulqa(lm, evals.TruthfulQA("v1", binary.questions), metrics=["mc0"])
  with pytest.raises(ValueError, match="limit"):
    evals.evaluate_truthfulqa(lm, binary, limit=0)
  with pytest.raises(ValueError, match="split must be"):
    evals.evaluate_truthfulqa(lm, binary, split="train")


def test_one_logprob_function_masks_exactly():
  """TruthfulQA's scorer and the attribution objectives share ``attribution.response_logprob``:
  checked against a float64 NumPy log-softmax; a masked position whose log-prob is -inf (padding)
  adds exactly 0, and ``mean`` divides by the number of scored tokens."""
  from jaxsteer._src import attribution
  from jaxsteer._src.evals import truthfulqa

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  ids = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], np.int32)
  logits[0, 3, ids[0, 4]] = -np.inf  # the prediction of masked token 4 of row 0
  x = logits.astype(np.float64)
  lp = x - x.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  want = [sum(lp[b, t - 1, ids[b, t]] for t in range(1, 5) if mask[b, t]) for b in range(2)]
  got = np.asarray(truthfulqa._sequence_logprob(logits, ids, mask.astype(np.float32)))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert truthfulqa._sequence_logprob.__wrapped__ is attribution.response_logprob
  mean = np.asarray(attribution.response_logprob(logits, ids, mask, reduce="mean"))
  np.testing.assert_allclose(mean, np.array(want) / mask[:, 1:].sum(1), rtol=1e-5)
