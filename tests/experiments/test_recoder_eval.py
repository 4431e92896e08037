"""``recoder.evaluate``'s per-unit NLLs and the decode-in-scan baseline (used by the study)."""

import math

import jax
import numpy as np
import pytest
import torch

from recoder._src import evaluate as ev
from recoder._src.model import LSTMLM, LMConfig, init_params


@pytest.fixture(scope="module")
def tiny():
  cfg = LMConfig(vocab_size=23, embed_dim=8, hidden_dim=8, num_layers=2, dropout=0.0)
  model = LSTMLM(cfg)
  params = {"lm": init_params(model, jax.random.key(0)), "step": {}}
  ids = np.random.default_rng(0).integers(0, 23, size=131).astype(np.int32)
  return model, params, ids


def _torch_ppl(params, ids, batch, bptt):
  """Reference: the same LSTM written in PyTorch, float64, state carried across windows."""
  p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), params)
  emb = p["embedding"]
  w_ih, w_hh, b = ([p[f"{k}_{i}"] for i in range(2)] for k in ("w_ih", "w_hh", "b"))
  n = len(ids) // batch
  streams = torch.tensor(ids[: n * batch].reshape(batch, n).astype(np.int64))
  h = torch.zeros(2, batch, 8, dtype=torch.float64)
  c = torch.zeros_like(h)
  total, count = 0.0, 0
  for t in range(n - 1):
    inp = emb[streams[:, t]]
    for layer in range(2):
      z = inp @ w_ih[layer] + h[layer] @ w_hh[layer] + b[layer]
      i, f, g, o = z.chunk(4, dim=-1)
      c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
      h[layer] = torch.sigmoid(o) * torch.tanh(c[layer].clone())
      inp = h[layer]
    logits = inp @ p["decoder_w"][0] + p["decoder_b"][0]
    lp = torch.log_softmax(logits, -1)
    total -= lp[torch.arange(batch), streams[:, t + 1]].sum().item()
    count += batch
  return math.exp(total / count), count


def test_after_scan_and_in_scan_baselines_agree_with_pytorch(tiny):
  model, params, ids = tiny
  res = ev.evaluate_variants(
    model, params, ids, ["none", ev.IN_SCAN], batch_size=4, bptt=7, progress=False, keep_units=True
  )
  want, count = _torch_ppl(params["lm"], ids, 4, 7)
  for spec in ("none", ev.IN_SCAN):
    r = res[spec]
    assert r["tokens"] == count == sum(r["unit_tokens"])
    assert r["ppl"] == pytest.approx(want, rel=1e-4), spec
    assert math.exp(sum(r["unit_nll"]) / count) == pytest.approx(r["ppl"], rel=1e-9)
  # units: one per (window, stream): 4 streams x ceil(31 / 7) windows
  assert len(res["none"]["unit_nll"]) == 4 * 5
  np.testing.assert_allclose(res["none"]["unit_nll"], res[ev.IN_SCAN]["unit_nll"], rtol=1e-4)


def test_time_variants_returns_one_time_per_repeat(tiny):
  model, params, ids = tiny
  t = ev.time_variants(
    model, params, ids, ["none", "surprisal:0.5"], batch_size=4, bptt=7, repeats=2
  )
  assert set(t) == {"none", "surprisal:0.5"} and all(len(v) == 2 and min(v) > 0 for v in t.values())
