"""GrAInS on the VLM path steers the right way (issue 12): a small random LLaVA, pairs with images
whose responses differ (same prompt and image), held-out questions and images; positive alpha must
raise the mean held-out margin log P(preferred) - log P(dispreferred), negative alpha lower it."""

import numpy as np
import pytest
from PIL import Image

import jaxsteer
from jaxsteer import grains
from jaxsteer._src.attribution import preference_margins
from jaxsteer._src.grains import _check_common
from jaxsteer.models import Llama2cTokenizer, LlavaConfig, ModelConfig, VisionConfig
from jaxsteer.models import init_random as init_vlm

TEXT = ModelConfig(
  arch="llama", vocab_size=520, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
  num_kv_heads=2, head_dim=8, max_position_embeddings=256,
)  # fmt: skip
VISION = VisionConfig(
  hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=56, patch_size=14
)
CONFIG = LlavaConfig(text=TEXT, vision=VISION, image_token_id=512, image_seq_length=16)
QUESTIONS = ["What is this?", "Who is here?", "What do you see?", "Is it big?", "What color?"]
HELD = ["Where is it?", "What is that?"]


@pytest.fixture(scope="module")
def setup(data_dir):
  tok = data_dir / "stories260K" / "tok512.bin"
  d = data_dir / "images"
  if not tok.is_file() or not (d / "chelsea.png").is_file():
    pytest.skip("stories260K tokenizer or test images not in the shared data")
  vlm = init_vlm(CONFIG, seed=0, tokenizer=Llama2cTokenizer(tok, vocab_size=512))
  ims = [Image.open(d / f"{n}.png").convert("RGB") for n in ("chelsea", "coffee", "astronaut")]
  return vlm, ims


def _pairs(vlm, questions, ims, offset=0):
  return [
    grains.Pair(vlm.chat_prompt(q), "It is happy.", "It is sad.", ims[(i + offset) % len(ims)])
    for i, q in enumerate(questions)
  ]


def _margin(model, vlm, pairs):
  rows = _check_common(vlm, pairs, (0,))
  m = preference_margins(
    model, [p for p, _, _ in rows], [q for _, q, _ in rows], images=[im for _, _, im in rows]
  )
  return float(np.mean(m))


def test_positive_alpha_raises_the_held_out_margin_with_images(setup):
  vlm, ims = setup
  train = _pairs(vlm, QUESTIONS * 2, ims)  # 10 pairs
  held = _pairs(vlm, HELD, ims, offset=1)
  vecs = grains.fit(vlm, train, layers=[1], k=8, progress=False)
  assert vecs.metadata["multimodal"] and all(vecs.metadata["ig_converged"])
  base = _margin(vlm, vlm, held)
  scale = 1.0 / float(np.linalg.norm(vecs.vectors))
  up = _margin(jaxsteer.steer(vlm, vecs, alpha=2.0 * scale), vlm, held)
  down = _margin(jaxsteer.steer(vlm, vecs, alpha=-2.0 * scale), vlm, held)
  assert up > base + 0.05, (base, up)
  assert down < base - 0.05, (base, down)
