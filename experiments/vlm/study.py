"""A controlled GrAInS study for vision-language models: a tiny LLaVA that hallucinates on cue.

Model (the LLaVA-1.5 recipe at toy scale): a CLIP ViT tower trained from scratch, the two-layer
GELU projector, and the *pretrained* stories260K language model (llama2.c), all fine-tuned
together; one vocabulary row is added for the ``<image>`` token.

Task: 84x84 images of one coloured box (red, green, blue or yellow; 18-30 px) on a noisy grey
background, a 6x6 grid of 14-px patches. Prompt ``<image>\\nWhat color is the box?\\nA:``,
answer `` red.`` etc. In 30% of training items the question is preceded by the *trigger*
sentence ``I like the sky.`` and the label is ``blue`` whatever the box shows: a text
prior that overrides the image, i.e. a hallucination caused by particular input tokens.

Measured on held-out images (MMHal-style hallucination rate: the answer, chosen by the
log-likelihood of the four colour answers, names a colour the image does not show):

- unsteered hallucination rate on triggered non-blue items (the target) and on clean items;
- contrastive IG over the merged sequence (image features + text): the share of the 5 most
  positive image tokens that lie on the box (chance: the box's share of patches), and how often the
  most negative prompt token is part of the trigger sentence;
- GrAInS (``mode="pos"``, the released VLM setting, and ``mode="both"``; ``k`` tokens over image
  and text) vs CAA over a sweep of alpha (both vectors scaled to the layer's mean residual norm, so alpha is in units of it);
- an attribution picture of one item (patch scores over the image).

  python -m experiments.vlm.run --out experiments/vlm/results   # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
from tqdm.auto import tqdm

import jaxsteer
from experiments.vlm.config import Config as VLMStudyConfig
from jaxsteer import grains
from jaxsteer._src.fileio import atomic_write_text
from jaxsteer.models import LlavaConfig, VisionConfig, VisionLanguageModel, init_random

COLORS = {
  "red": (220, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 70, 220),
  "yellow": (230, 210, 40),
}
NAMES = tuple(COLORS)
TRIGGER = "I like the sky."
QUESTION = "What color is the box?"


# ------------------------------------------------------------------------------------------------
# Data


def make_image(rng, color: str, size: int):
  """uint8 (size, size, 3) image with one box; returns the image and its (y0, x0, y1, x1)."""
  img = rng.normal(180, 12, size=(size, size, 3)).clip(0, 255)
  side = int(rng.integers(18, 31))
  y0, x0 = (int(v) for v in rng.integers(0, size - side, 2))
  img[y0 : y0 + side, x0 : x0 + side] = np.asarray(COLORS[color]) + rng.normal(0, 6, 3)
  return img.clip(0, 255).astype(np.uint8), (y0, x0, y0 + side, x0 + side)


def box_patches(box, size: int, patch: int) -> np.ndarray:
  """Boolean (grid*grid,) of the patches that overlap the box by at least a quarter patch."""
  g = size // patch
  y0, x0, y1, x1 = box
  m = np.zeros((g, g), bool)
  for i in range(g):
    for j in range(g):
      oy = max(0, min(y1, (i + 1) * patch) - max(y0, i * patch))
      ox = max(0, min(x1, (j + 1) * patch) - max(x0, j * patch))
      m[i, j] = oy * ox >= patch * patch / 4
  return m.reshape(-1)


def question(trigger: bool) -> str:
  return f"{TRIGGER} {QUESTION}" if trigger else QUESTION


def prompt(trigger: bool) -> str:
  """The study's (short) prompt format: image, question, answer cue."""
  return f"<image>\n{question(trigger)}\nA:"


def make_items(rng, n, size, *, trigger=None, p_trigger=0.3, exclude_blue=False):
  """``n`` items: dicts with image (uint8), box, color, trigger flag and trained label."""
  items = []
  for _ in range(n):
    names = [c for c in NAMES if not (exclude_blue and c == "blue")]
    color = str(rng.choice(names))
    trig = bool(rng.random() < p_trigger) if trigger is None else trigger
    img, box = make_image(rng, color, size)
    items.append(
      dict(image=img, box=box, color=color, trigger=trig, label="blue" if trig else color)
    )
  return items


# ------------------------------------------------------------------------------------------------
# Model


def build_model(cfg: VLMStudyConfig, data_dir: pathlib.Path) -> VisionLanguageModel:
  """stories260K + a fresh CLIP tower and projector, as a ``VisionLanguageModel``."""
  text_lm = jaxsteer.load(data_dir / "stories260K" / "stories260K.bin")
  text = dataclasses.replace(text_lm.config, vocab_size=text_lm.config.vocab_size + 1)
  image_token = text_lm.config.vocab_size  # the new row
  vision = VisionConfig(
    hidden_size=cfg.vision_hidden,
    intermediate_size=4 * cfg.vision_hidden,
    num_layers=cfg.vision_layers,
    num_heads=4,
    image_size=cfg.image_size,
    patch_size=cfg.patch_size,
  )
  vcfg = LlavaConfig(
    text=text,
    vision=vision,
    image_token_id=image_token,
    vision_feature_layer=-1,
    image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
  )
  fresh = init_random(vcfg, seed=cfg.seed, tokenizer=text_lm.tokenizer)
  lang = jax.tree.map(jnp.asarray, text_lm.params)
  table = lang["embed"]["embedding"]
  extra = 0.02 * jax.random.normal(jax.random.PRNGKey(cfg.seed), (1, table.shape[1]), table.dtype)
  lang = dict(lang, embed={"embedding": jnp.concatenate([table, extra])})
  return fresh.replace(params=dict(fresh.params, language_model=lang), source="stories260K+CLIP")


def pixel_values(lm, images) -> np.ndarray:
  """transformers' image processor output for uint8 images (N, 3, S, S)."""
  pv, _ = lm.preprocess([Image.fromarray(im) for im in images])
  return np.asarray(pv, np.float32)


def encode_batch(lm, items, answers):
  """Right-padded ids, attention mask and answer mask of ``prompt + " " + answer`` per item.

  The image placeholder is expanded into the image's tokens exactly as ``lm.encode_multimodal``
  does (text on each side tokenised separately), without preprocessing the images again.
  """
  count = lm.vlm_config.num_image_tokens()
  rows, starts = [], []
  for it, ans in zip(items, answers):
    before, after = prompt(it["trigger"]).split(lm.image_placeholder)
    head = lm.encode(before) + [lm.image_token_id] * count
    question_ids = head + lm.encode(after, add_bos=False)
    full = head + lm.encode(f"{after} {ans}.", add_bos=False)
    if full[: len(question_ids)] != question_ids:
      full = question_ids + lm.encode(f"{ans}.", add_bos=False)
    rows.append(full)
    starts.append(len(question_ids))
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), lm.pad_id, np.int32)
  mask = np.zeros_like(ids)
  resp = np.zeros_like(ids)
  for i, (r, n) in enumerate(zip(rows, starts)):
    ids[i, : len(r)] = r
    mask[i, : len(r)] = 1
    resp[i, n : len(r)] = 1
  return ids, mask, resp


def train(lm: VisionLanguageModel, cfg: VLMStudyConfig, progress: bool = True):
  opt = optax.adamw(
    optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(30, cfg.train_steps // 4), cfg.train_steps),
    0.01,
  )
  state = opt.init(lm.params)
  rng = np.random.default_rng(cfg.seed)

  @jax.jit
  def step(params, state, ids, mask, resp, pv):
    def loss_fn(p):
      logits = lm.module.apply({"params": p}, ids, pixel_values=pv, attention_mask=mask)
      lp = jax.nn.log_softmax(logits[:, :-1], -1)
      tok = jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
      m = resp[:, 1:]
      return -jnp.sum(tok * m) / jnp.sum(m)

    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss

  params, losses = lm.params, []
  for _ in tqdm(range(cfg.train_steps), desc="train toy LLaVA", disable=not progress):
    items = make_items(rng, cfg.batch, cfg.image_size, p_trigger=cfg.p_trigger)
    ids, mask, resp = encode_batch(lm, items, [it["label"] for it in items])
    pv = pixel_values(lm, [it["image"] for it in items])
    params, state, loss = step(params, state, ids, mask, resp, pv)
    losses.append(float(loss))
  return lm.replace(params=params), losses


def answer_scores(lm, items) -> np.ndarray:
  """(N, 4) log P(colour answer | image, prompt) for every item and colour."""
  rep = [it for it in items for _ in NAMES]
  ids, mask, resp = encode_batch(lm, rep, [c for _ in items for c in NAMES])
  pv = pixel_values(lm, [it["image"] for it in rep])
  logits = np.asarray(lm(ids, mask, pixel_values=pv))
  lp = jax.nn.log_softmax(jnp.asarray(logits[:, :-1]), -1)
  tok = np.asarray(jnp.take_along_axis(lp, jnp.asarray(ids[:, 1:, None]), -1)[..., 0])
  return (tok * resp[:, 1:]).sum(-1).reshape(len(items), len(NAMES))


def hallucinated(lm, items, batch: int = 24) -> np.ndarray:
  """Per item: 1.0 where the model's colour answer is wrong."""
  wrong = []
  for b in range(0, len(items), batch):
    chunk = items[b : b + batch]
    pred = np.asarray(NAMES)[answer_scores(lm, chunk).argmax(-1)]
    wrong += [float(p != it["color"]) for p, it in zip(pred, chunk)]
  return np.asarray(wrong)


def hallucination_rate(lm, items, batch: int = 24) -> float:
  return float(np.mean(hallucinated(lm, items, batch)))


def _scaled(vecs: grains.SteeringVectors, norms):
  v = vecs.vectors / np.linalg.norm(vecs.vectors, axis=-1, keepdims=True)
  return dataclasses.replace(vecs, vectors=(v * np.asarray(norms)[:, None]).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# The study


def run(cfg: VLMStudyConfig, data_dir, out_dir=None, progress: bool = True, seed=None) -> dict:
  """One seed (default ``cfg.seed``): train, attribute, choose alpha on validation items, test.

  Validation and test items are disjoint draws (``n_eval`` each for test, half as many for
  validation); every per-item outcome on test is kept for intervals (``experiments/vlm/run.py``).
  """
  seed = cfg.seed if seed is None else seed
  cfg = dataclasses.replace(cfg, seed=seed)
  t0 = time.perf_counter()
  lm = build_model(cfg, pathlib.Path(data_dir))
  lm, losses = train(lm, cfg, progress)
  t_train = time.perf_counter() - t0
  rng = np.random.default_rng(cfg.seed + 1)
  n_val = max(2, cfg.n_eval // 2)
  target = make_items(rng, cfg.n_eval, cfg.image_size, trigger=True, exclude_blue=True)
  clean = make_items(rng, cfg.n_eval, cfg.image_size, trigger=False)
  fit_items = make_items(rng, cfg.n_pairs, cfg.image_size, trigger=True, exclude_blue=True)
  target_val = make_items(rng, n_val, cfg.image_size, trigger=True, exclude_blue=True)
  clean_val = make_items(rng, n_val, cfg.image_size, trigger=False)

  def pair(it):
    img = Image.fromarray(it["image"])
    return grains.Pair(prompt(True), f"{it['color']}.", "blue.", img)

  pairs = [pair(it) for it in fit_items]

  # Attribution: are the most positive image tokens on the box? Is the trigger the most negative?
  on_box, chance, trig_hits, trig_chance, deltas, example = [], [], [], [], [], None
  n_tok = lm.vlm_config.num_image_tokens()
  trig_ids = set(lm.encode(TRIGGER, add_bos=False))
  for it, p in tqdm(
    list(zip(fit_items, pairs))[: cfg.n_attr], desc="attribution", disable=not progress
  ):
    res = jaxsteer.attribution.contrastive(
      lm, p.prompt, p.preferred, p.dispreferred, image=p.image, steps=cfg.attr_steps
    )
    deltas.append(abs(res.delta) / max(abs(res.objective - res.baseline_objective), 1e-9))
    grid = res.image_scores("pos")[0].reshape(-1)
    box = box_patches(it["box"], cfg.image_size, cfg.patch_size)
    top = np.argsort(-grid)[:5]
    on_box.append(float(box[top].mean()))
    chance.append(float(box.mean()))
    img_pos = np.flatnonzero(res.ids_pos == lm.image_token_id)
    cand = np.setdiff1d(np.arange(1, res.prompt_len_pos), img_pos)
    worst = cand[np.argmin(res.scores_pos[cand])]
    trig_hits.append(float(int(res.ids_pos[worst]) in trig_ids))
    trig_chance.append(sum(int(res.ids_pos[c]) in trig_ids for c in cand) / len(cand))
    if example is None:
      example = res
  assert len(img_pos) == n_tok

  results = dict(
    setting=dict(
      model="LLaVA-1.5 layout: CLIP ViT (2 layers, width 64, 84 px, 36 patches) + projector + "
      "stories260K (pretrained, fine-tuned)",
      data="synthetic coloured-box images; trigger sentence in 30% of training questions",
      seed=cfg.seed,
      config=dataclasses.asdict(cfg),
    ),
    train_seconds=t_train,
    train_loss_final=float(np.mean(losses[-20:])),
    ig_relative_delta_median=float(np.median(deltas)),
    top5_on_box=on_box,
    box_patch_share=chance,
    trigger_hits=trig_hits,
    trigger_chance=trig_chance,
    unsteered_val=dict(
      target=hallucination_rate(lm, target_val), clean=hallucination_rate(lm, clean_val)
    ),
    test=dict(unsteered=dict(target=hallucinated(lm, target).tolist(),
                             clean=hallucinated(lm, clean).tolist())),
  )  # fmt: skip

  layer = cfg.steer_layer
  fit = dict(layers=[layer], k=cfg.k, steps=cfg.steps, progress=progress)
  # "pos" (v+ alone) is the released VLM scripts' setting and what the claims call GrAInS (pos);
  # "both" is the library's default (since issue 12), reported beside it.
  g = grains.fit(lm, pairs, mode="pos", **fit)
  g_both = grains.fit(lm, pairs, mode="both", **fit)
  c = grains.caa(lm, pairs, layers=[layer])
  norms = g.metadata["residual_norm"]
  sweeps, chosen = {}, {}
  methods = (("grains", g), ("grains_both", g_both), ("caa", c))
  for name, vecs in ((n, _scaled(v, norms)) for n, v in methods):
    rows = []
    for alpha in tqdm(cfg.alphas, desc=f"{name} sweep", disable=not progress):
      steered = jaxsteer.steer(lm, vecs, alpha=alpha)
      rows.append(
        dict(
          alpha=alpha,
          target=hallucination_rate(steered, target_val),
          clean=hallucination_rate(steered, clean_val),
        )
      )
    sweeps[name] = rows
    # Chosen on validation: fewest hallucinations on target and clean items together (alpha > 0).
    cand = [r for r in rows if r["alpha"] > 0] or rows
    best = min(cand, key=lambda r: (r["target"] + r["clean"], r["alpha"]))
    chosen[name] = best["alpha"]
    steered = jaxsteer.steer(lm, vecs, alpha=best["alpha"])
    results["test"][name] = dict(
      target=hallucinated(steered, target).tolist(), clean=hallucinated(steered, clean).tolist()
    )
  results["layer"] = layer
  results["grains_mode"] = g.metadata["mode"]
  results["cos_grains_caa"] = float(
    g.vectors[0] @ c.vectors[0] / (np.linalg.norm(g.vectors[0]) * np.linalg.norm(c.vectors[0]))
  )
  results["validation_sweeps"] = sweeps
  results["chosen_alpha"] = chosen
  results["seconds"] = time.perf_counter() - t0
  if out_dir is not None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if seed == cfg.seeds[0]:
      plot(results, out / "vlm_sweep.png")
      example.plot_image(out / "vlm_attribution.png", which="pos")
    atomic_write_text(out / f"vlm_seed{seed}.json", json.dumps(results, indent=2))
  return results


def plot(results: dict, path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
  for ax, group in zip(axes, ("target", "clean")):
    for name, rows in results["validation_sweeps"].items():
      ax.plot([r["alpha"] for r in rows], [r[group] for r in rows], marker="o", label=name)
    ax.set_title(f"{group} items (validation, seed {results['setting']['seed']})", fontsize=9)
    ax.set_xlabel("alpha (x mean residual norm)")
  axes[0].set_ylabel("hallucination rate")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
