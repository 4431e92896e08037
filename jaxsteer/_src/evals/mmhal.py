"""MMHal-Bench (Sun et al., 2023, "Aligning Large Multimodal Models with Factually Augmented RLHF").

96 image-question pairs over OpenImages photos, 8 question types (attribute, adversarial,
comparison, counting, relation, environment, holistic, other). A judge rates each answer 0-6 from
the question, a description of the image contents and a standard answer; a rating below 3 counts
as a hallucination. GrAInS (Nguyen et al., 2025) reports the hallucination rate of LLaVA-1.6-7B
falling from 0.624 to 0.514 with steering.

The release (``Shengcao1006/MMHal-Bench`` on the Hugging Face hub) is ``response_template.json``,
a list of 96 objects with keys ``question_type``, ``question_topic``, ``image_id``, ``image_src``,
``image_content`` (list of strings), ``question``, ``gt_answer`` and ``model_answer``, plus the
images in ``images/`` next to it. An item's image is the file named like the last path segment of
``image_src``, else the file whose stem is ``image_id``.

  >>> from jaxsteer import evals
  >>> items = evals.load_mmhal(evals.download_mmhal())  # doctest: +SKIP
  >>> items = evals.load_mmhal("MMHal-Bench/response_template.json")  # doctest: +SKIP
  >>> gens = {"unsteered": evals.model_generator(lm), "grains": evals.model_generator(steered)}  # doctest: +SKIP
  >>> report = evals.evaluate_mmhal(gens, items, evals.make_judge("rule"))  # doctest: +SKIP
  >>> report.methods["grains"]["hallucination_rate"]  # doctest: +SKIP
  >>> report.save_json("runs/mmhal.json")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import pathlib
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from jaxsteer._src.evals.io import read_json, save_json
from jaxsteer._src.evals.judges.harness import EvalLog, GenerateFn, JudgeRunner, generate_responses
from jaxsteer._src.evals.judges.registry import judge_name, make_judge
from jaxsteer._src.images import open_image

MMHAL_REPO = "Shengcao1006/MMHal-Bench"
MMHAL_FILE = "response_template.json"
MMHAL_KEYS = (
  "question_type",
  "question_topic",
  "image_id",
  "image_src",
  "image_content",
  "question",
  "gt_answer",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class MMHalItem:
  """One MMHal-Bench question with the path of its image (``image()`` decodes it)."""

  index: int
  question_type: str
  question_topic: str
  image_id: str
  image_src: str
  image_content: tuple[str, ...]
  question: str
  gt_answer: str
  image_path: pathlib.Path
  model_answer: str = ""

  def image(self):
    """The image as an RGB ``PIL.Image``."""
    return open_image(self.image_path, f"MMHal item {self.index} ({self.image_id})")


def _resolve_json(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / MMHAL_FILE
  if not path.is_file():
    raise FileNotFoundError(f"MMHal-Bench file not found: {path}")
  return path


def _index_images(image_dir: pathlib.Path) -> tuple[dict[str, pathlib.Path], dict]:
  by_name, by_stem = {}, {}
  for p in sorted(image_dir.iterdir()):
    if p.is_file():
      by_name[p.name] = p
      if p.suffix.lower() in IMAGE_SUFFIXES:
        by_stem.setdefault(p.stem, p)
  return by_name, by_stem


def load_mmhal(
  path, image_dir=None, *, check_images: bool = True, limit: int | None = None
) -> list[MMHalItem]:
  """Loads MMHal-Bench from ``response_template.json`` and matches each item to its image file.

  Args:
    path: ``response_template.json`` or the directory holding it.
    image_dir: the image directory; default ``images/`` next to the JSON file.
    check_images: decode every image now, so a broken file fails here and not mid-generation.
    limit: keep only the first ``limit`` items.

  Returns:
    The items in file order.

  Raises:
    FileNotFoundError: the JSON file, the image directory or an item's image is missing.
    ValueError: the JSON is malformed (not a list of objects, a missing or ill-typed key) or an
      image cannot be decoded; the message names the file and the item.
  """
  path = _resolve_json(path)
  image_dir = pathlib.Path(image_dir) if image_dir is not None else path.parent / "images"
  if not image_dir.is_dir():
    raise FileNotFoundError(
      f"MMHal-Bench image directory not found: {image_dir} (for {path}; pass image_dir=...)"
    )
  rows = read_json(path)
  if not isinstance(rows, list):
    raise ValueError(
      f"{path}: expected a JSON list of MMHal-Bench items, got {type(rows).__name__}"
    )
  if limit is not None:
    rows = rows[:limit]
  by_name, by_stem = _index_images(image_dir)
  items = []
  for i, r in enumerate(rows):
    where = f"{path} item {i}"
    if not isinstance(r, dict):
      raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
    missing = [k for k in MMHAL_KEYS if k not in r]
    if missing:
      raise ValueError(f"{where}: missing key(s) {missing} (expected keys {list(MMHAL_KEYS)})")
    for k in MMHAL_KEYS:
      if k != "image_content" and not isinstance(r[k], str):
        raise ValueError(f"{where}: {k!r} must be a string, got {type(r[k]).__name__}")
    content = r["image_content"]
    if isinstance(content, str):
      content = [content]
    if isinstance(content, list):  # the hub loading script's form: [{"class": "..."}, ...]
      content = [c.get("class") if isinstance(c, dict) else c for c in content]
    if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
      raise ValueError(f"{where}: 'image_content' must be a list of strings")
    src_name = pathlib.PurePosixPath(urllib.parse.urlparse(r["image_src"]).path).name
    img = by_name.get(src_name) or by_name.get(r["image_id"]) or by_stem.get(r["image_id"])
    if img is None:
      raise FileNotFoundError(
        f"{where}: image not found in {image_dir} (looked for {src_name!r} from image_src and "
        f"{r['image_id']!r}.* from image_id)"
      )
    item = MMHalItem(
      index=i,
      question_type=r["question_type"],
      question_topic=r["question_topic"],
      image_id=r["image_id"],
      image_src=r["image_src"],
      image_content=tuple(content),
      question=r["question"],
      gt_answer=r["gt_answer"],
      image_path=img,
      model_answer=r.get("model_answer") or "",
    )
    if check_images:
      open_image(img, where)
    items.append(item)
  return items


def download_mmhal(local_dir=None, *, cache_dir=None, revision: str | None = None) -> pathlib.Path:
  """Downloads MMHal-Bench from the Hugging Face hub (``huggingface_hub.snapshot_download``).

  Args:
    local_dir: copy the files here instead of the hub cache.
    cache_dir: hub cache directory (default: the hub's).
    revision: a branch, tag or commit of the dataset repository.

  Returns:
    The directory holding ``response_template.json`` and ``images/`` (pass it to ``load_mmhal``).

  Raises:
    FileNotFoundError: the download failed (offline, ``HF_HUB_OFFLINE=1``, no network or no
      access) and no cached copy exists.
  """
  from jaxsteer._src.hub import snapshot

  try:
    root = snapshot(
      MMHAL_REPO,
      repo_type="dataset",
      revision=revision,
      local_dir=local_dir,
      cache_dir=cache_dir,
      allow_patterns=[MMHAL_FILE, "images/*"],
    )
  except Exception as e:  # hub errors differ by version (offline, connection, gated, ...)
    raise FileNotFoundError(
      f"could not download MMHal-Bench ({MMHAL_REPO}, repo_type='dataset') and no cached copy "
      f"was found: {type(e).__name__}: {e}. On a machine with network access run "
      f"download_mmhal() (or `hf download {MMHAL_REPO} --repo-type dataset`), then pass the "
      f"folder with {MMHAL_FILE} and images/ to load_mmhal."
    ) from None
  root = pathlib.Path(root)
  if not (root / MMHAL_FILE).is_file():
    raise FileNotFoundError(f"the MMHal-Bench download at {root} has no {MMHAL_FILE}")
  return root


@dataclasses.dataclass
class MMHalReport:
  """MMHal-Bench results per method.

  ``methods[name]``: ``n``, ``hallucination_rate`` (fraction of ratings < 3), ``mean_score``
  (0-6) and ``by_type[question_type]`` with the same three numbers. ``records[name]``: one
  dict per item (``index``, ``image_id``, ``question_type``, ``response``, ``score``,
  ``hallucination``, ``judge_reply``).
  """

  judge: str
  methods: dict[str, dict[str, Any]]
  records: dict[str, list[dict[str, Any]]]

  def to_dict(self) -> dict[str, Any]:
    return {"benchmark": "MMHal-Bench", **dataclasses.asdict(self)}

  def save_json(self, path) -> pathlib.Path:
    """Writes ``to_dict()`` atomically."""
    return save_json(self.to_dict(), path)


def _summary(scores: Sequence[int | None]) -> dict[str, Any]:
  errors = sum(s is None for s in scores)
  scores = [s for s in scores if s is not None]
  n = len(scores)
  out = {
    "n": n,
    "hallucination_rate": sum(s < 3 for s in scores) / n if n else float("nan"),
    "mean_score": sum(scores) / n if n else float("nan"),
  }
  if errors:
    out["errors"] = errors
  return out


def evaluate_mmhal(
  generators: Mapping[str, GenerateFn],
  items: Sequence[MMHalItem],
  judge,
  *,
  responses: Mapping[str, Sequence[str]] | None = None,
  progress: bool = True,
  log: EvalLog | None = None,
  on_error: str = "raise",
) -> MMHalReport:
  """Generates an answer per item with each method and rates it with ``judge``.

  Every method's responses are generated before any judging, so a judge that fails loses no
  generation (with ``log`` they are also on disk, and a rerun resumes).

  Args:
    generators: method name -> ``generate(question, image) -> str`` (e.g. ``{"unsteered": ...,
      "caa": ..., "grains": ...}``).
    items: from ``load_mmhal``.
    judge: a judge object or a ``JUDGES`` name (built with default options).
    responses: precomputed responses per method (one per item); those methods are not generated.
    progress: show tqdm progress bars.
    log: an ``EvalLog`` of this evaluation: its responses and ratings are reused, new ones are
      appended as they are made.
    on_error: ``"raise"`` (default) or ``"record"``: a failed rating (HTTP error, unparsable
      reply) is recorded in the item's record (``score`` ``None``, ``error``) and counted in
      ``errors``, and left out of the rates (see ``JudgeRunner``).

  Returns:
    An ``MMHalReport``.
  """
  judge = make_judge(judge)
  responses = dict(responses or {})
  names = list(generators) + [m for m in responses if m not in generators]
  for name in names:
    if responses.get(name) is None:
      responses[name] = generate_responses(
        generators[name], items, desc=f"MMHal {name}", progress=progress, log=log, method=name
      )
    if len(responses[name]) != len(items):
      raise ValueError(f"method {name!r}: {len(responses[name])} responses for {len(items)} items")
  run = JudgeRunner(log, on_error)
  methods, records = {}, {}
  for name in names:
    resp = responses[name]
    recs = []
    for item, r in zip(
      items, tqdm(resp, desc=f"judge {name}", disable=not progress, leave=False), strict=True
    ):
      key = f"mmhal/{name}/{item.index}"

      def rate(item=item, r=r):
        rating = judge.score_mmhal(item, r)
        return {"score": rating.score, "reply": rating.reply}

      got = run(key, rate)
      rec = {
        "index": item.index,
        "image_id": item.image_id,
        "question_type": item.question_type,
        "response": r,
        "score": None if got is None else got["score"],
        "hallucination": None if got is None else got["score"] < 3,
        "judge_reply": None if got is None else got["reply"],
      }
      if got is None:
        rec["error"] = run.errors[key]
      recs.append(rec)
    types = sorted({rec["question_type"] for rec in recs})
    methods[name] = {
      **_summary([rec["score"] for rec in recs]),
      "by_type": {
        t: _summary([rec["score"] for rec in recs if rec["question_type"] == t]) for t in types
      },
    }
    records[name] = recs
  return MMHalReport(judge=judge_name(judge), methods=methods, records=records)
