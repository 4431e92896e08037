"""The LSTM LM forward pass with recoding: baseline equivalence, leakage, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

import recoder

V, E, H, L, B, T = 11, 6, 6, 2, 2, 7
SIGNALS = sorted(recoder.SIGNALS)


@functools.cache
def _setup(members=1, tied=False):
  cfg = recoder.LMConfig(
    vocab_size=V,
    embed_dim=E,
    hidden_dim=H,
    num_layers=L,
    dropout=0.3,
    num_members=members,
    tie_weights=tied,
  )
  model = recoder.LSTMLM(cfg)
  params = recoder.init_params(model, jax.random.key(0))
  # Larger weights than the default init, so that recoding visibly changes predictions.
  params = jax.tree_util.tree_map(lambda p: 4.0 * p, params)
  return model, params


def _fwd(model, params, x, y, rc, step, *, step_params=None, train=False, key=None):
  return recoder.lm_forward(
    model,
    params,
    x,
    y,
    recoder.zero_state(model.cfg, x.shape[0]),
    recoding=rc,
    step_size=step,
    step_params=step_params,
    key=jax.random.key(5) if key is None else key,
    train=train,
    return_logprobs=True,
  )


def _tokens(seed, n=T + 1):
  s = np.asarray(jax.random.randint(jax.random.key(seed), (B, n), 0, V), np.int32)
  return s[:, :-1], s[:, 1:]


def _rc(name, **kw):
  return recoder.RecodingConfig(signal=name, num_samples=3, mc_dropout=0.3, **kw)


@pytest.mark.parametrize("name", SIGNALS)
def test_step_size_zero_gives_the_baseline(name):
  model, params = _setup(members=3 if name == "ensemble_entropy" else 1)
  x, y = _tokens(1)
  fwd = jax.jit(_fwd, static_argnums=(0, 4))
  base = fwd(model, params, x, y, recoder.RecodingConfig(), 0.0)
  out = fwd(model, params, x, y, _rc(name), 0.0)
  assert_close(out.logprobs, base.logprobs, dtype=jnp.float32)
  assert_close(out.state["h"], base.state["h"], dtype=jnp.float32)
  moved = fwd(model, params, x, y, _rc(name), 2.0)
  assert not np.allclose(moved.logprobs, base.logprobs, atol=1e-4)


def test_model_recoding_equals_public_recode_on_one_step():
  # The scan body differentiates w.r.t. additive perturbations of every (h, c) node; this must
  # agree with recode() applied to the step's state with the error written as a function of it.
  model, params = _setup()
  x, y = _tokens(2, n=2)
  rc = _rc("surprisal")
  fwd = jax.jit(_fwd, static_argnums=(0, 4))
  out = fwd(model, params, x, y, rc, 0.7)
  base = fwd(model, params, x, y, recoder.RecodingConfig(), 0.0)
  v = {"params": params}

  def error_fn(nodes):
    # Recompute the step with the given nodes substituted: layer-1 input is layer-0's h.
    eps = jax.tree_util.tree_map(lambda a, b: a - jax.lax.stop_gradient(b), nodes, base.state)
    z0 = recoder.zero_state(model.cfg, B)
    emb = model.apply(v, x[:, 0], method=recoder.LSTMLM.embed)
    inp = emb
    for l in range(L):
      zz = model.apply(v, l, inp, z0["h"][l], method=recoder.LSTMLM.gates)
      i, f, g, o = jnp.split(zz, 4, axis=-1)
      c = jax.nn.sigmoid(i) * jnp.tanh(g) + eps["c"][l]
      h = jax.nn.sigmoid(o) * jnp.tanh(c) + eps["h"][l]
      inp = h
    logits = model.apply(v, inp, method=recoder.LSTMLM.decode)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, :1], -1)[:, 0]

  ref = jax.jit(lambda s: recoder.recode(s, error_fn, 0.7))(base.state)
  assert_close(out.state["h"], ref["h"])
  assert_close(out.state["c"], ref["c"])


@pytest.mark.parametrize("name,step_type", [(s, "fixed") for s in SIGNALS] + [("surprisal", "mlp")])
def test_no_leakage_future_tokens_do_not_move_past_predictions(name, step_type):
  """p(token t+1 | ...) must depend on tokens <= t only, for every signal.

  Perturbing tokens k0.. may change predictions from position k0 on; the full predictive
  distributions at positions < k0 (which include the one that scores token k0) must not move.
  """
  model, params = _setup(members=3 if name == "ensemble_entropy" else 1)
  rc = _rc(name, step_type=step_type, mlp_hidden=(4,))
  sp = recoder.init_step_params(jax.random.key(3), rc, L, H)
  seq = np.asarray(jax.random.randint(jax.random.key(4), (B, T + 1), 0, V), np.int32)
  fwd = jax.jit(
    lambda m, p, x, y, rc, eta, sp, train: _fwd(m, p, x, y, rc, eta, step_params=sp, train=train),
    static_argnums=(0, 4, 7),
  )
  for k0 in (2, 5):
    pert = seq.copy()
    pert[:, k0:] = (pert[:, k0:] + 1 + np.arange(T + 1 - k0)) % V
    for train in (False, True) if (name, step_type) == ("surprisal", "fixed") else (False,):
      a = fwd(model, params, seq[:, :-1], seq[:, 1:], rc, 1.5, sp, train)
      b = fwd(model, params, pert[:, :-1], pert[:, 1:], rc, 1.5, sp, train)
      np.testing.assert_array_equal(a.logprobs[:, :k0], b.logprobs[:, :k0])
      np.testing.assert_array_equal(a.nll[:, : k0 - 1], b.nll[:, : k0 - 1])
      assert not np.allclose(a.logprobs[:, k0:], b.logprobs[:, k0:])


def test_no_leakage_across_bptt_segments():
  # Evaluation carries the (recoded) state from one BPTT window to the next.
  model, params = _setup()
  ids = np.asarray(jax.random.randint(jax.random.key(7), (2 * 20 + 1,), 0, V), np.int32)
  pert = ids.copy()
  pert[12:] = (pert[12:] + 3) % V  # stream 0 holds tokens 0..19, its windows are 0..5, 5..10, ..
  rc = _rc("surprisal")
  ev = jax.jit(
    lambda p, h, x, y: recoder.lm_forward(
      model, p, x, y, h, recoding=rc, step_size=1.0, return_logprobs=True
    )
  )
  outs = []
  for s in (ids, pert):
    streams = recoder.batchify(s, 2)
    h = recoder.zero_state(model.cfg, 2)
    lp = []
    for x, y in recoder.bptt_batches(streams, 5):
      o = ev(params, h, x, y)
      h = o.state
      lp.append(o.logprobs)
    outs.append(np.concatenate(lp, axis=1))
  np.testing.assert_array_equal(outs[0][0, :12], outs[1][0, :12])
  assert not np.allclose(outs[0][0, 12:], outs[1][0, 12:])


def test_tied_weights_share_the_embedding():
  model, params = _setup(tied=True)
  assert "decoder_w" not in params
  x, y = _tokens(3)
  out = _fwd(model, params, x, y, recoder.RecodingConfig(), 0.0)
  assert out.nll.shape == (B, T) and np.all(np.isfinite(out.nll))


def test_token_ids_outside_vocabulary_raise():
  model, params = _setup()
  x, y = _tokens(4)
  bad = x.copy()
  bad[0, 3] = V
  with pytest.raises(ValueError, match="outside the vocabulary"):
    _fwd(model, params, bad, y, recoder.RecodingConfig(), 0.0)
  bad[0, 3] = -1
  with pytest.raises(ValueError, match="outside the vocabulary"):
    _fwd(model, params, x, bad, recoder.RecodingConfig(), 0.0)


def test_negative_step_size_and_missing_key_raise():
  model, params = _setup()
  x, y = _tokens(5)
  with pytest.raises(ValueError, match="non-negative"):
    _fwd(model, params, x, y, _rc("surprisal"), -1.0)
  with pytest.raises(ValueError, match="PRNG key"):
    recoder.lm_forward(model, params, x, y, recoder.zero_state(model.cfg, B), train=True)


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="tie_weights"):
    recoder.LMConfig(vocab_size=5, embed_dim=3, hidden_dim=4, tie_weights=True)
  with pytest.raises(ValueError, match="dropout"):
    recoder.LMConfig(vocab_size=5, dropout=1.0)


@pytest.mark.parametrize(
  "members,tied,target,train,step_type,batch",
  [
    (1, False, "gold", False, "fixed", B),
    (1, True, "argmax", True, "fixed", B),
    (3, False, "gold", True, "fixed", B),
    (1, False, "gold", False, "mlp", B),
    (1, True, "gold", False, "fixed", 64),  # from 64 streams: the (H, V) copy of the decoder
  ],
)
def test_closed_form_surprisal_step_equals_jax_grad_float64(
  members, tied, target, train, step_type, batch
):
  # The default surprisal step takes d surprisal / d h_top as W^T (softmax - onehot) and
  # back-propagates it through the LSTM cells only; closed_form=False differentiates the whole
  # error with jax.grad. Same recoded states, NLL, error and log-probabilities at every step.
  with jax.enable_x64(True):
    cfg = recoder.LMConfig(
      vocab_size=V, embed_dim=H, hidden_dim=H, num_layers=L, dropout=0.3,
      num_members=members, tie_weights=tied,
    )  # fmt: skip
    model = recoder.LSTMLM(cfg)
    params = recoder.init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: 4.0 * p.astype(jnp.float64), params)
    rc = _rc("surprisal", target=target, step_type=step_type)
    step_params = recoder.init_step_params(jax.random.key(3), rc, L, H, jnp.float64)
    toks = np.asarray(jax.random.randint(jax.random.key(7), (batch, T + 1), 0, V), np.int32)
    x, y = toks[:, :-1], toks[:, 1:]
    state = jax.tree_util.tree_map(
      lambda a: a.astype(jnp.float64), recoder.zero_state(cfg, batch)
    )  # fmt: skip
    outs = [
      recoder.lm_forward(
        model,
        params,
        x,
        y,
        state,
        recoding=rc,
        step_size=0.7,
        step_params=step_params,
        key=jax.random.key(2),
        train=train,
        return_logprobs=True,
        closed_form=cf,
      )  # fmt: skip
      for cf in (True, False)
    ]
    base = recoder.lm_forward(model, params, x, y, state, return_logprobs=True)
    assert outs[0].state["h"].dtype == jnp.float64
    # Recoding moved the states (the comparison below is not between two unrecoded runs).
    assert not np.allclose(outs[1].state["h"], base.state["h"], atol=1e-3)
    for a, b in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(outs[1])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
