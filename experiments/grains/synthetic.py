"""A controlled GrAInS benchmark where the truth is known.

A small Llama-style transformer is trained on sequences ``BOS t_1 .. t_n ?`` followed by an answer
``A`` or ``B``. The true answer is set by one *key* token (keys 10-17 mean A, 18-25 mean B); filler
tokens carry nothing. A *trigger* token (46-48), present in 30% of training items, overrides the
key and makes the label ``B``: the trained model answers B whenever a trigger is present, even when
the key says A. That is the "dispreferred answer pushed by particular input tokens".

Steering pairs are items with key A and a trigger: (prompt, preferred "A", dispreferred "B").
Held-out items fall into four groups: trigger + key A (the steering target), clean + key A,
clean + key B, trigger + key B. We measure how often the model's A/B preference equals the key's
answer in each group, for the unsteered model, CAA and GrAInS, and whether contrastive IG ranks the
trigger as the most dispreferred-pushing token (recall@1).

Two disjoint held-out sets of the four groups: on the *validation* set each method's layer and
alpha > 0 are chosen (the largest mean accuracy over the four groups, the smaller alpha on a tie);
every reported number is measured on the *test* set at that choice. The whole experiment (model
training included) is repeated for each seed in ``seeds``; per-item results of every seed are kept
so that intervals cover seeds and items (``experiments.stats.over_seeds``).

Vectors are compared at equal size: each is scaled to unit norm times the layer's mean residual
norm, so alpha is in units of the activation norm for both methods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxsteer
from experiments import stats
from jaxsteer import grains
from jaxsteer.models import ModelConfig, init_random

BOS, SEP, A, B = 1, 3, 4, 5
KEY_A = np.arange(10, 18)
KEY_B = np.arange(18, 26)
FILLER = np.arange(26, 46)
TRIGGER = np.arange(46, 49)
VOCAB = 50
N_FILLER = 5


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  layers: int = 2
  hidden: int = 32
  train_steps: int = 400
  batch: int = 64
  lr: float = 3e-3
  n_pairs: int = 50
  n_eval: int = 200
  steer_layers: tuple[int, ...] = (0, 1)
  alphas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
  k: int = 1
  steps: int = 20
  seeds: tuple[int, ...] = (0, 1, 2)


def make_items(rng, n, key_a: bool | None, trigger: bool | None, p_trigger=0.3):
  """Returns prompts (n, 1 + N_FILLER + 2 + 1) with key/trigger info."""
  prompts, truth, has_trig, trig_pos = [], [], [], []
  for _ in range(n):
    ka = rng.random() < 0.5 if key_a is None else key_a
    tr = rng.random() < p_trigger if trigger is None else trigger
    key = rng.choice(KEY_A if ka else KEY_B)
    body = list(rng.choice(FILLER, N_FILLER)) + [key]
    body.append(rng.choice(TRIGGER) if tr else rng.choice(FILLER))
    perm = rng.permutation(len(body))
    body = [int(body[i]) for i in perm]
    prompts.append([BOS] + body + [SEP])
    truth.append(A if ka else B)
    has_trig.append(tr)
    trig_pos.append(1 + int(np.flatnonzero(perm == len(body) - 1)[0]) if tr else -1)
  return (
    np.asarray(prompts, np.int32),
    np.asarray(truth),
    np.asarray(has_trig),
    np.asarray(trig_pos),
  )


def train(cfg: SyntheticConfig, progress=True, seed: int = 0):
  mc = ModelConfig(
    arch="llama",
    vocab_size=VOCAB,
    hidden_size=cfg.hidden,
    intermediate_size=2 * cfg.hidden,
    num_layers=cfg.layers,
    num_heads=4,
    num_kv_heads=4,
    head_dim=cfg.hidden // 4,
    max_position_embeddings=16,  # prompt 9 + answer + evidence
    bos_token_id=BOS,
    eos_token_id=2,
    pad_token_id=0,
  )
  lm = init_random(mc, seed=seed)
  opt = optax.adam(cfg.lr)
  state = opt.init(lm.params)
  rng = np.random.default_rng(seed)

  @jax.jit
  def step(params, state, ids, labels):
    def loss_fn(p):
      logits = lm.module.apply({"params": p}, ids)[:, -2:]  # predicts the answer, then the evidence
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss

  params = lm.params
  losses = []
  for _ in tqdm(range(cfg.train_steps), desc="train synthetic LM", disable=not progress):
    ids, truth, trig, tpos = make_items(rng, cfg.batch, None, None)
    answer = np.where(trig, B, truth)
    key = np.asarray([r[np.isin(r, np.r_[KEY_A, KEY_B])][0] for r in ids])
    evidence = np.where(trig, ids[np.arange(len(ids)), np.maximum(tpos, 0)], key)
    seq = np.concatenate([ids, answer[:, None]], axis=1)
    labels = np.stack([answer, evidence], axis=1)
    params, state, loss = step(params, state, jnp.asarray(seq), jnp.asarray(labels))
    losses.append(float(loss))
  return lm.replace(params=params), losses


def answer_margin(lm, prompts):
  """log p(A) - log p(B) at the answer position (positive: the model prefers A)."""
  logits = np.asarray(lm(prompts))[:, -1]
  return logits[:, A] - logits[:, B]


def _scaled(vecs: grains.SteeringVectors, norms):
  v = vecs.vectors / np.linalg.norm(vecs.vectors, axis=-1, keepdims=True)
  return dataclasses.replace(vecs, vectors=(v * np.asarray(norms)[:, None]).astype(np.float32))


GROUPS = ("trigger_keyA", "clean_keyA", "clean_keyB", "trigger_keyB")


def _groups(rng, n):
  return {
    "trigger_keyA": make_items(rng, n, True, True),
    "clean_keyA": make_items(rng, n, True, False),
    "clean_keyB": make_items(rng, n, False, False),
    "trigger_keyB": make_items(rng, n, False, True),
  }


def _correct(model, groups) -> dict[str, np.ndarray]:
  """Per group: 1.0 where the model's A/B preference equals the key's answer."""
  out = {}
  for name, (prompts, truth, _, _) in groups.items():
    m = answer_margin(model, prompts)
    out[name] = np.where(truth == A, m > 0, m < 0).astype(np.float64)
  return out


def _acc(correct: dict) -> dict:
  out = {g: float(np.mean(correct[g])) for g in GROUPS}
  out["mean"] = float(np.mean([out[g] for g in GROUPS]))
  return out


def run_seed(cfg: SyntheticConfig, seed: int, progress=True) -> dict:
  """One seed: train, attribute, sweep on validation, measure the chosen settings on test."""
  lm, losses = train(cfg, progress, seed)
  rng = np.random.default_rng(seed + 1000)
  fit_prompts, _, _, fit_trig_pos = make_items(rng, cfg.n_pairs, key_a=True, trigger=True)
  pairs = [grains.Pair(p.tolist(), [A], [B]) for p in fit_prompts]

  # Does contrastive IG find the trigger? (recall@1 of the most negative prompt token on s+)
  hits = []
  n_check = min(20, cfg.n_pairs)
  for p, tpos in zip(pairs[:n_check], fit_trig_pos[:n_check]):
    res = jaxsteer.attribution.contrastive(
      lm, p.prompt, p.preferred, p.dispreferred, steps=cfg.steps
    )
    s = res.scores_pos[1 : len(p.prompt)]  # candidates: prompt without BOS
    hits.append(float(1 + int(np.argmin(s)) == tpos))

  val, test = _groups(rng, cfg.n_eval), _groups(rng, cfg.n_eval)
  out = {
    "seed": seed,
    "train_loss_final": float(np.mean(losses[-20:])),
    "ig_trigger_hits": hits,
    "unsteered_val": _acc(_correct(lm, val)),
  }
  base_test = _correct(lm, test)
  out["test"] = {"unsteered": {g: base_test[g].tolist() for g in GROUPS}}
  sweep, vectors = [], {}
  for layer in cfg.steer_layers:
    g = grains.fit(lm, pairs, layers=[layer], k=cfg.k, steps=cfg.steps, progress=False)
    c = grains.caa(lm, pairs, layers=[layer])
    norms = g.metadata["residual_norm"]
    cos = float(
      g.vectors[0] @ c.vectors[0] / (np.linalg.norm(g.vectors[0]) * np.linalg.norm(c.vectors[0]))
    )
    for name, vecs in (("grains", _scaled(g, norms)), ("caa", _scaled(c, norms))):
      vectors[(name, layer)] = vecs
      for alpha in cfg.alphas:
        acc = _acc(_correct(jaxsteer.steer(lm, vecs, alpha=alpha), val))
        sweep.append(dict(method=name, layer=layer, alpha=alpha, cos_grains_caa=cos, **acc))
  out["validation_sweep"] = sweep
  out["chosen"] = {}
  for name in ("grains", "caa"):
    rows = [r for r in sweep if r["method"] == name and r["alpha"] > 0] or [
      r for r in sweep if r["method"] == name
    ]
    best = max(rows, key=lambda r: (r["mean"], -r["alpha"]))
    out["chosen"][name] = {"layer": best["layer"], "alpha": best["alpha"]}
    steered = jaxsteer.steer(lm, vectors[(name, best["layer"])], alpha=best["alpha"])
    out["test"][name] = {g: v.tolist() for g, v in _correct(steered, test).items()}
  return out


def run(cfg: SyntheticConfig, progress=True) -> dict:
  """Every seed of ``cfg.seeds`` (see ``run_seed``); the summary is built by ``summarize``."""
  return {"seeds": [run_seed(cfg, s, progress) for s in cfg.seeds]}


def _items(seed_result, method, groups=GROUPS):
  return np.concatenate([np.asarray(seed_result["test"][method][g]) for g in groups])


def summarize(results: dict) -> dict:
  """Test accuracies and paired differences with intervals over seeds and items."""
  seeds = results["seeds"]
  est = {}
  est["ig_recall_at_1"] = stats.over_seeds([s["ig_trigger_hits"] for s in seeds]).as_dict()
  for method in ("unsteered", "grains", "caa"):
    for g in (*GROUPS, "mean"):
      groups = GROUPS if g == "mean" else (g,)
      est[f"{method}_{g}"] = stats.over_seeds([_items(s, method, groups) for s in seeds]).as_dict()
  for a, b in (("grains", "unsteered"), ("caa", "unsteered"), ("grains", "caa")):
    for g in ("trigger_keyA", "clean_keyB", "mean"):
      groups = GROUPS if g == "mean" else (g,)
      diffs = [_items(s, a, groups) - _items(s, b, groups) for s in seeds]
      est[f"{a}_minus_{b}_{g}"] = stats.over_seeds(diffs).as_dict()
  est["chosen"] = {s["seed"]: s["chosen"] for s in seeds}
  return est


def plot(results: dict, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sweep = results["seeds"][0]["validation_sweep"]
  keys = sorted({(r["method"], r["layer"]) for r in sweep})
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), sharey=True)
  for ax, key in zip(np.atleast_1d(axes), keys):
    rows = [r for r in sweep if (r["method"], r["layer"]) == key]
    al = [r["alpha"] for r in rows]
    for g in GROUPS:
      ax.plot(al, [r[g] for r in rows], marker="o", label=g)
    ax.set_title(f"{key[0]} layer {key[1]} (validation, seed {results['seeds'][0]['seed']})",
                 fontsize=9)  # fmt: skip
    ax.set_xlabel("alpha (x mean residual norm)")
  np.atleast_1d(axes)[0].set_ylabel("answer = key's answer")
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
