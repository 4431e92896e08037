"""``python -m jaxsteer`` with ``--image`` on a tiny LLaVA checkpoint saved by transformers."""

import json
import shutil

import pytest
from helpers import tiny_llava_config

from jaxsteer._src import cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.entry
IMAGE_TOKEN = 32000
PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"


def _run(capsys, argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
  sp = data_dir / "llama2_tokenizer" / "tokenizer.model"
  if not sp.is_file():
    pytest.skip(f"Llama-2 tokenizer not found at {sp}")
  tok = transformers.LlamaTokenizer.from_pretrained(str(sp.parent), add_bos_token=True)
  tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
  torch.manual_seed(0)
  cfg = transformers.LlavaConfig(
    **tiny_llava_config(
      text=dict(
        vocab_size=32064, hidden_size=32, intermediate_size=48, max_position_embeddings=256
      ),
      vision=dict(intermediate_size=32, num_hidden_layers=1, image_size=56),
      image_token_id=IMAGE_TOKEN,
    )
  )
  d = tmp_path_factory.mktemp("llava")
  transformers.LlavaForConditionalGeneration(cfg).eval().save_pretrained(d)
  tok.save_pretrained(d)
  return d


@pytest.fixture(scope="module")
def image(data_dir):
  p = data_dir / "images" / "chelsea.png"
  if not p.is_file():
    pytest.skip(f"test image not found: {p}")
  return p


def test_attribute_with_image_writes_the_patch_picture(capsys, model_dir, image, tmp_path):
  png = tmp_path / "patches.png"
  code, out, err = _run(
    capsys,
    ["attribute", "--model", model_dir, "--prompt", PROMPT, "--preferred", "A cat."]
    + ["--dispreferred", "A dog.", "--image", image, "--steps", 2, "--image-png", png],
  )
  assert code == 0, err
  pos = out["image_token_positions"]
  assert len(pos) == 16 and pos == list(range(pos[0], pos[0] + 16))  # 4x4 patches, one run
  assert len(out["scores_pos"]) == len(out["tokens_pos"]) > 16
  assert png.stat().st_size > 5000


def test_generate_fit_and_mmhal_with_images(capsys, model_dir, image, tmp_path):
  code, out, err = _run(
    capsys,
    ["generate", "--model", model_dir, "--prompt", PROMPT, "--image", image]
    + ["--max-new-tokens", 3],
  )
  assert code == 0, err
  assert isinstance(out["completion"], str) and out["image"] == str(image)

  # a pairs file whose images are paths relative to it
  shutil.copy(image, tmp_path / "cat.png")
  pairs = tmp_path / "pairs.jsonl"
  row = {"prompt": PROMPT, "preferred": "A cat.", "dispreferred": "A dog.", "image": "cat.png"}
  pairs.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, preferred="Fur.")) + "\n")
  vecs = tmp_path / "vecs"
  code, out, err = _run(
    capsys,
    ["fit", "--model", model_dir, "--pairs", pairs, "--layers", "1", "--k", 4, "--steps", 2]
    + ["--out", vecs],
  )
  assert code == 0, err
  assert out["mode"] == "both" and out["k"] == 4 and out["num_pairs"] == 2

  mm = tmp_path / "mmhal" / "response_template.json"
  (mm.parent / "images").mkdir(parents=True)
  shutil.copy(image, mm.parent / "images" / "chelsea.png")
  item = dict(
    question_type="attribute",
    question_topic="animal",
    image_id="chelsea",
    image_src="https://example.org/chelsea.png",
    image_content=["Cat"],
    question="What animal is this?",
    gt_answer="A cat.",
    model_answer="",
  )
  mm.write_text(json.dumps([item]))
  report = tmp_path / "mmhal.json"
  code, out, err = _run(
    capsys,
    ["eval", "mmhal", "--model", model_dir, "--data", mm, "--vectors", vecs, "--alpha", 1.0]
    + ["--max-new-tokens", 3, "--out", report, "--no-progress"],
  )
  assert code == 0, err
  assert set(out["methods"]) == {"unsteered", "grains"}
  assert 0 <= out["methods"]["grains"]["hallucination_rate"] <= 1
  assert json.loads(report.read_text())["benchmark"] == "MMHal-Bench"


def test_image_errors(capsys, model_dir, image, tmp_path, stories260k):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG but not really")
  base = ["generate", "--model", model_dir, "--max-new-tokens", 2]
  code, _, err = _run(capsys, base + ["--prompt", PROMPT, "--image", bad])
  assert code == 2 and "cannot decode image" in err
  code, _, err = _run(capsys, base + ["--prompt", "No placeholder here.", "--image", image])
  assert code == 2 and "missing image placeholder" in err
  code, _, err = _run(capsys, base + ["--prompt", PROMPT, "--image", tmp_path / "none.png"])
  assert code == 2 and "image not found" in err
  code, _, err = _run(
    capsys, ["generate", "--model", stories260k[0], "--prompt", "Hi", "--image", image]
  )
  assert code == 2 and "vision-language model" in err


def test_fit_from_spavl_preference_rows(capsys, model_dir, image, tmp_path):
  shutil.copy(image, tmp_path / "cat.png")
  rows = [
    {"image": "cat.png", "question": "What is this?", "chosen": "A cat.", "rejected": "A dog."},
    {"image": "cat.png", "question": "Is it safe?", "chosen": "Yes.", "rejected": "No way."},
  ]
  data = tmp_path / "spavl.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  code, out, err = _run(
    capsys,
    ["fit", "--model", model_dir, "--spavl", data, "--n", 2, "--layers", "2", "--k", 3]
    + ["--steps", 2, "--out", tmp_path / "vecs"],
  )
  assert code == 0, err
  assert out["spavl"] == str(data) and out["num_pairs"] == 2 and out["mode"] == "both"
