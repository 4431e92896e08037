"""SPA-VL (Zhang et al., 2024, "SPA-VL: A Comprehensive Safety Preference Alignment Dataset for
Vision Language Model"): preference data and the pairwise win-rate evaluation.

The release (``sqrti/SPA-VL`` on the Hugging Face hub) has preference rows
``(image, question, chosen, rejected)`` (``default``/``validation`` configs, plus ``image_name``
and ``class1..3``) and the evaluation splits ``harm`` and ``help`` of the ``test`` config
(265 rows each: ``image``, ``question``, ``class1..3``). GrAInS (Nguyen et al., 2025) fits its
VLM steering vectors on 50 preference rows (prompt = chat template with the image and the
question, preferred = ``chosen``, dispreferred = ``rejected``) and reports the win rate of
LLaVA-1.6-7B rising from 40.24% to 48.35% with steering.

Files: parquet (needs ``pyarrow``), JSON (a list of rows) or JSONL (one row per line). ``image``
is a path (absolute, or relative to the data file or ``image_root``) or an object with ``bytes``
(raw bytes from parquet; base64 text in JSON) and/or ``path``, as the ``datasets`` image feature
stores it. Evaluation rows may carry a reference answer (``reference``, ``answer`` or ``chosen``).

  >>> from jaxsteer import evals
  >>> prefs = evals.load_spavl("spavl/train.jsonl", kind="preference", limit=1000)  # doctest: +SKIP
  >>> pairs = evals.spavl_steering_pairs(prefs, n=50, prompt=lm.chat_prompt)  # doctest: +SKIP
  >>> vecs = grains.fit(lm, pairs, layers=[31], k=50)  # doctest: +SKIP
  >>> harm = evals.load_spavl("spavl/test", split="harm")  # doctest: +SKIP
  >>> gens = {"unsteered": evals.model_generator(lm), "grains": evals.model_generator(steered)}  # doctest: +SKIP
  >>> judge = evals.make_judge("llm", base_url="http://localhost:8000/v1", model="m")  # doctest: +SKIP
  >>> report = evals.evaluate_spavl(gens, harm, judge, baseline="unsteered")  # doctest: +SKIP
  >>> report.methods["grains"]["vs_baseline"]["win_rate"]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import pathlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from jaxsteer._src.evals.io import read_json, read_jsonl, save_json
from jaxsteer._src.evals.judges.harness import EvalLog, GenerateFn, JudgeRunner, generate_responses
from jaxsteer._src.evals.judges.registry import judge_name, make_judge
from jaxsteer._src.images import decode_image, open_image

SPAVL_REPO = "sqrti/SPA-VL"
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
REFERENCE_KEYS = ("reference", "answer", "chosen")
META_KEYS = ("image_name", "class1", "class2", "class3")


@dataclasses.dataclass(frozen=True, eq=False)
class SPAVLItem:
  """One SPA-VL row. The image is kept as encoded bytes or a file path; ``image()`` decodes it.

  ``chosen``/``rejected`` are set for preference rows; ``reference`` is an optional reference
  answer of an evaluation row (``chosen`` when present). ``source`` names file and row in errors.
  """

  index: int
  question: str
  chosen: str | None = None
  rejected: str | None = None
  reference: str | None = None
  image_bytes: bytes | None = dataclasses.field(default=None, repr=False)
  image_path: pathlib.Path | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: str = ""

  def image(self):
    """The image as an RGB ``PIL.Image``."""
    if self.image_bytes is not None:
      return decode_image(self.image_bytes, self.source or f"SPA-VL item {self.index}")
    return open_image(self.image_path, self.source or None)


def _files(path: pathlib.Path, split: str | None) -> list[pathlib.Path]:
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"SPA-VL data not found: {path}")
  files = sorted(
    p
    for p in path.rglob("*")
    if p.is_file()
    and p.suffix in DATA_SUFFIXES
    and (split is None or p.name == split + p.suffix or p.name.startswith(split + "-"))
  )
  if not files:
    what = f"split {split!r} " if split else ""
    raise FileNotFoundError(
      f"no SPA-VL {what}data files ({'/'.join(DATA_SUFFIXES)}) under {path}"
      + ("; expected e.g. harm.jsonl or harm-00000-of-00001.parquet" if split else "")
    )
  return files


def _read_rows(path: pathlib.Path) -> list[Any]:
  if path.suffix == ".parquet":
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ImportError(
        f"reading {path} needs the 'pyarrow' package, which is not installed: "
        f"`pip install pyarrow`, or convert the file to JSONL"
      ) from None
    return pq.read_table(path).to_pylist()
  if path.suffix == ".jsonl":
    return read_jsonl(path)
  rows = read_json(path)
  if not isinstance(rows, list):
    raise ValueError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
  return rows


def _image(value, base: pathlib.Path, image_root, where: str, allow_outside: bool = False):
  """(bytes, path) from an ``image`` field value; a path must resolve inside ``base`` or
  ``image_root`` unless ``allow_outside``."""
  roots = [base] + ([pathlib.Path(image_root)] if image_root is not None else [])

  def find(p: str) -> pathlib.Path:
    p = pathlib.Path(p)
    if p.is_absolute():
      cands = [p]
    else:
      cands = [base / p] + ([pathlib.Path(image_root) / p] if image_root is not None else [])
    if not allow_outside:
      inside = [c for c in cands if any(c.resolve().is_relative_to(r.resolve()) for r in roots)]
      if not inside:
        raise ValueError(
          f"{where}: image path {str(p)!r} lies outside {' and '.join(map(str, roots))}; data "
          "files may only name images in their own folder (allow_outside=True, or the CLI's "
          "--allow-outside-paths, allows others)"
        )
      cands = inside
    for c in cands:
      if c.is_file():
        return c
    raise FileNotFoundError(f"{where}: image file not found: {' or '.join(map(str, cands))}")

  if isinstance(value, str):
    return None, find(value)
  if isinstance(value, dict):
    data = value.get("bytes")
    if isinstance(data, str):
      try:
        data = base64.b64decode(data, validate=True)
      except (binascii.Error, ValueError):
        raise ValueError(f"{where}: image 'bytes' is text but not valid base64") from None
    elif isinstance(data, list):
      data = bytes(data)
    if isinstance(data, bytes | bytearray) and data:
      return bytes(data), None
    if value.get("path"):
      return None, find(value["path"])
    raise ValueError(f"{where}: 'image' object has neither non-empty 'bytes' nor 'path'")
  raise ValueError(
    f"{where}: 'image' must be a path or an object with 'bytes'/'path', got {type(value).__name__}"
  )


def load_spavl(
  path,
  *,
  split: str | None = None,
  kind: str = "auto",
  image_root=None,
  check_images: bool = True,
  limit: int | None = None,
  allow_outside: bool = False,
) -> list[SPAVLItem]:
  """Loads SPA-VL rows (preference data or an evaluation split) from parquet, JSON or JSONL.

  Args:
    path: a data file, or a directory searched recursively for ``.parquet``/``.jsonl``/``.json``
      files (all of them, or those of ``split``).
    split: with a directory, only files named ``{split}.{ext}`` or ``{split}-*.{ext}`` (the hub's
      ``harm-00000-of-00001.parquet``), e.g. ``"harm"``, ``"help"``, ``"train"``.
    kind: ``"preference"`` (every row needs ``chosen`` and ``rejected``), ``"eval"`` (``image`` and
      ``question``; reference answer optional) or ``"auto"`` (preference when the first row has
      ``chosen`` and ``rejected``).
    image_root: extra directory against which relative image paths are resolved.
    check_images: decode every image now, so a broken one fails here and not mid-generation.
    limit: keep only the first ``limit`` rows.
    allow_outside: let image paths point outside the data file's folder and ``image_root``
      (refused by default: a data file from elsewhere must not read arbitrary files).

  Returns:
    The items in file order.

  Raises:
    FileNotFoundError: no data file, or an image file is missing.
    ImportError: a parquet file without ``pyarrow`` installed.
    ValueError: malformed file or row (missing key, wrong type, undecodable image); the message
      names the file and the row.
  """
  if kind not in ("auto", "preference", "eval"):
    raise ValueError(f"unknown SPA-VL kind {kind!r}; use 'auto', 'preference' or 'eval'")
  items: list[SPAVLItem] = []
  for f in _files(pathlib.Path(path), split):
    rows = _read_rows(f)
    for i, r in enumerate(rows):
      if limit is not None and len(items) >= limit:
        return items
      where = f"{f} row {i}"
      if not isinstance(r, dict):
        raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
      if kind == "auto":
        kind = "preference" if "chosen" in r and "rejected" in r else "eval"
      required = ("image", "question") + (("chosen", "rejected") if kind == "preference" else ())
      missing = [k for k in required if r.get(k) is None]
      if missing:
        raise ValueError(f"{where}: missing key(s) {missing} for SPA-VL {kind} data")
      for k in required[1:]:
        if not isinstance(r[k], str):
          raise ValueError(f"{where}: {k!r} must be a string, got {type(r[k]).__name__}")
      data, img_path = _image(r["image"], f.parent, image_root, where, allow_outside)
      ref = next((r[k] for k in REFERENCE_KEYS if isinstance(r.get(k), str) and r[k]), None)
      item = SPAVLItem(
        index=len(items),
        question=r["question"],
        chosen=r.get("chosen") if kind == "preference" else None,
        rejected=r.get("rejected") if kind == "preference" else None,
        reference=ref,
        image_bytes=data,
        image_path=img_path,
        meta={k: r[k] for k in META_KEYS if r.get(k) is not None},
        source=where,
      )
      if check_images:
        item.image()
      items.append(item)
  return items


def spavl_steering_pairs(
  items: Sequence[SPAVLItem],
  n: int | None = 50,
  *,
  prompt: Callable[[str], str] | None = None,
  seed: int | None = None,
) -> list:
  """GrAInS steering pairs from SPA-VL preference rows: ``Pair(prompt, chosen, rejected, image)``.

  The records are ``jaxsteer.grains.Pair`` (fields ``prompt``, ``preferred`` = ``chosen``,
  ``dispreferred`` = ``rejected``, ``image`` = the decoded PIL image), ready for ``grains.fit``.

  Args:
    items: preference rows from ``load_spavl``.
    n: number of pairs (``None``: all rows). The GrAInS scripts use 50.
    prompt: maps the question to the model prompt, e.g. ``lm.chat_prompt`` (chat template with the
      image placeholder); default: the question itself.
    seed: ``None`` takes the first ``n`` rows; otherwise ``n`` rows drawn with this seed.

  Raises:
    ValueError: a row has no ``chosen``/``rejected``, or fewer than ``n`` rows.
  """
  from jaxsteer._src.grains import Pair

  rows = list(items)
  for it in rows:
    if not (it.chosen and it.rejected):
      raise ValueError(f"{it.source or it.index}: not a preference row (needs chosen and rejected)")
  if n is not None:
    if n > len(rows):
      raise ValueError(f"asked for {n} steering pairs but only {len(rows)} preference rows given")
    rows = random.Random(seed).sample(rows, n) if seed is not None else rows[:n]
  fmt = prompt or (lambda q: q)
  return [Pair(fmt(it.question), it.chosen, it.rejected, image=it.image()) for it in rows]


@dataclasses.dataclass
class SPAVLReport:
  """SPA-VL pairwise results.

  ``methods[name]["vs_baseline"]`` (every method but the baseline): ``n``, ``wins``, ``ties``,
  ``losses`` and ``win_rate = (wins + ties / 2) / n`` of the method against the baseline's answer
  to the same item. ``methods[name]["vs_reference"]`` (every method, when all items carry a
  reference answer): the same against the reference. ``records[name]``: per item ``index``,
  ``response``, ``vs_baseline``, ``vs_reference`` (1 win, 0.5 tie, 0 loss).
  """

  judge: str
  baseline: str
  methods: dict[str, dict[str, Any]]
  records: dict[str, list[dict[str, Any]]]

  def to_dict(self) -> dict[str, Any]:
    return {"benchmark": "SPA-VL", **dataclasses.asdict(self)}

  def save_json(self, path) -> pathlib.Path:
    """Writes ``to_dict()`` atomically."""
    return save_json(self.to_dict(), path)


def win_stats(outcomes: Sequence[float | None]) -> dict[str, Any]:
  """``n``, ``wins``, ``ties``, ``losses`` and ``win_rate = mean(outcomes)`` (1 win, 0.5 tie);
  ``None`` outcomes (failed judgements) are left out and counted in ``errors``."""
  errors = sum(o is None for o in outcomes)
  outcomes = [o for o in outcomes if o is not None]
  n = len(outcomes)
  out = {
    "n": n,
    "wins": sum(o > 0.5 for o in outcomes),
    "ties": sum(o == 0.5 for o in outcomes),
    "losses": sum(o < 0.5 for o in outcomes),
    "win_rate": sum(outcomes) / n if n else float("nan"),
  }
  if errors:
    out["errors"] = errors
  return out


def evaluate_spavl(
  generators: Mapping[str, GenerateFn],
  items: Sequence[SPAVLItem],
  judge,
  *,
  baseline: str = "unsteered",
  reference: bool | None = None,
  responses: Mapping[str, Sequence[str]] | None = None,
  progress: bool = True,
  log: EvalLog | None = None,
  on_error: str = "raise",
) -> SPAVLReport:
  """Pairwise win rates of each method against ``baseline`` (and a reference answer).

  ``vs_baseline`` compares each steered method's answers with the unsteered ones. The paper's numbers (40.24% unsteered -> 48.35% GrAInS) give the *unsteered* model a
  win rate too, so they are against a fixed opponent; ``vs_reference`` (against each item's
  reference answer) is that form.

  Args:
    generators: method name -> ``generate(question, image) -> str``; must include ``baseline``
      (unless its responses are given).
    items: from ``load_spavl``.
    judge: a judge object or a ``JUDGES`` name (``"rule"`` needs preference rows).
    baseline: the method the others are compared against (the paper: the unsteered model).
    reference: also compare every method against the items' reference answers; ``None``: when
      every item has one.
    responses: precomputed responses per method; those methods are not generated.
    progress: show tqdm progress bars.
    log: an ``EvalLog``: its responses and verdicts are reused, new ones appended as made
      (every method is generated before any judging, so a failing judge loses no generation).
    on_error: ``"raise"`` or ``"record"`` (a failed comparison is recorded in the item's
      ``errors`` and left out of the win rates; see ``JudgeRunner``).

  Returns:
    An ``SPAVLReport``.
  """
  judge = make_judge(judge)
  responses = {k: list(v) for k, v in (responses or {}).items()}
  names = list(generators) + [m for m in responses if m not in generators]
  if baseline not in names:
    raise ValueError(f"baseline method {baseline!r} is not among the methods {names}")
  if reference is None:
    reference = bool(items) and all(it.reference for it in items)
  elif reference and not all(it.reference for it in items):
    raise ValueError("reference=True but some SPA-VL items have no reference answer")
  for name in names:
    if name not in responses:
      responses[name] = generate_responses(
        generators[name], items, desc=f"SPA-VL {name}", progress=progress, log=log, method=name
      )
    if len(responses[name]) != len(items):
      raise ValueError(f"method {name!r}: {len(responses[name])} responses for {len(items)} items")
  run = JudgeRunner(log, on_error)
  methods, records = {}, {}
  for name in names:
    recs = []
    for i, item in enumerate(tqdm(items, desc=f"judge {name}", disable=not progress, leave=False)):
      r = responses[name][i]
      rec = {"index": item.index, "response": r, "vs_baseline": None, "vs_reference": None}
      errors = {}
      todo = [("vs_baseline", responses[baseline][i])] if name != baseline else []
      todo += [("vs_reference", item.reference)] if reference else []
      for what, other in todo:
        key = f"spavl/{name}/{item.index}/{what}"
        rec[what] = run(key, lambda item=item, r=r, other=other: judge.compare(item, r, other))
        if rec[what] is None:
          errors[what] = run.errors[key]
      if errors:
        rec["errors"] = errors
      recs.append(rec)
    summary = {}
    if name != baseline:
      summary["vs_baseline"] = win_stats([rec["vs_baseline"] for rec in recs])
    if reference:
      summary["vs_reference"] = win_stats([rec["vs_reference"] for rec in recs])
    methods[name], records[name] = summary, recs
  return SPAVLReport(judge=judge_name(judge), baseline=baseline, methods=methods, records=records)
