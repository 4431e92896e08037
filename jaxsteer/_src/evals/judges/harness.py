"""The generation harness of the VLM evaluations: generate responses with a model (resumable
through an ``EvalLog``), and call a judge per item with caching and an error policy
(``JudgeRunner``)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from jaxsteer._src.evals.io import append_jsonl, read_jsonl
from jaxsteer._src.evals.judges.base import JudgeError

GenerateFn = Callable[[str, Any], str]


def generate_responses(
  generate: GenerateFn,
  items: Sequence[Any],
  *,
  desc: str = "generate",
  progress: bool = True,
  log: EvalLog | None = None,
  method: str | None = None,
) -> list[str]:
  """Runs ``generate(item.question, item.image())`` over ``items`` with a tqdm progress bar.

  Args:
    generate: a ``(prompt, PIL image) -> str`` callable, e.g. ``model_generator(lm)``.
    items: dataset items with a ``question`` string and an ``image()`` method.
    desc: progress-bar label (usually the method name).
    progress: show the progress bar.
    log: an ``EvalLog``: responses already in it are reused, new ones are appended as they are
      made (so a crash loses at most the item in progress).
    method: the method name under which ``log`` keeps the responses (default ``desc``).

  Returns:
    One response string per item, in order.
  """
  method = method or desc
  out = []
  for i, item in enumerate(tqdm(items, desc=desc, disable=not progress, leave=False)):
    index = getattr(item, "index", i)
    r = log.response(method, index) if log is not None else None
    if r is None:
      r = generate(item.question, item.image())
      if not isinstance(r, str):
        raise TypeError(f"{desc}: generate returned {type(r).__name__} for item {i}; expected str")
      if log is not None:
        log.add_response(method, index, r)
    out.append(r)
  return out


class EvalLog:
  """An append-only JSONL record of one evaluation's generations and judgements, for resuming.

  The first line is a header (``{"kind": "header", ...settings}``); then one line per generated
  response (``{"kind": "response", "method", "index", "text"}``), per judgement
  (``{"kind": "judgement", "key", "value"}``) and per failed judgement (``{"kind": "error", "key",
  "message"}``; failed items are judged again on resume). Every line is flushed and fsynced when
  written, so a killed run loses at most the line in progress (a torn last line is ignored).

  Args:
    path: the log file (created with its folder if missing).
    header: the evaluation's settings (benchmark, items, model, vectors, ...); resuming with other
      settings raises ``ValueError`` naming the keys that differ.
  """

  def __init__(self, path, header: dict[str, Any]):
    self.path = pathlib.Path(path)
    self.header = json.loads(json.dumps(header))  # JSON-normalised (tuples -> lists)
    self.responses: dict[str, dict[int, str]] = {}
    self.judgements: dict[str, Any] = {}
    self.errors: dict[str, str] = {}
    if self.path.exists():
      self._read()
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._append({"kind": "header", **self.header})

  def _read(self):
    rows = read_jsonl(self.path, what="evaluation log", torn_tail=True)  # a killed run's last line
    if not rows or not isinstance(rows[0], dict) or rows[0].get("kind") != "header":
      raise ValueError(f"{self.path} is not an evaluation log (no header line); move it away")
    old = {k: v for k, v in rows[0].items() if k != "kind"}
    diff = sorted(k for k in set(old) | set(self.header) if old.get(k) != self.header.get(k))
    if diff:
      raise ValueError(
        f"evaluation log {self.path} was written with other settings ({', '.join(diff)}); "
        "resume with the same ones or move the log away"
      )
    for r in rows[1:]:
      kind = r.get("kind") if isinstance(r, dict) else None
      if kind == "response":
        self.responses.setdefault(r["method"], {})[int(r["index"])] = r["text"]
      elif kind == "judgement":
        self.judgements[r["key"]] = r["value"]
        self.errors.pop(r["key"], None)
      elif kind == "error":
        self.errors[r["key"]] = r["message"]

  def _append(self, row: dict[str, Any]) -> None:
    append_jsonl(self.path, row)

  def response(self, method: str, index: int) -> str | None:
    return self.responses.get(method, {}).get(int(index))

  def add_response(self, method: str, index: int, text: str) -> None:
    self.responses.setdefault(method, {})[int(index)] = text
    self._append({"kind": "response", "method": method, "index": int(index), "text": text})

  def judgement(self, key: str):
    return self.judgements.get(key)

  def add_judgement(self, key: str, value) -> None:
    self.judgements[key] = value
    self.errors.pop(key, None)
    self._append({"kind": "judgement", "key": key, "value": value})

  def add_error(self, key: str, message: str) -> None:
    self.errors[key] = message
    self._append({"kind": "error", "key": key, "message": message})


# Judge failures recorded per item (HTTP errors, unparsable replies) rather than ending the run.
JUDGE_ERRORS = (RuntimeError, ValueError)


class JudgeRunner:
  """Calls a judge per item with caching in an ``EvalLog`` and an error policy.

  ``on_error="raise"`` re-raises the first failure; ``"record"`` records it (in the log and in
  ``errors``) and goes on, but still raises after ``max_consecutive_errors`` failures in a row (an
  endpoint that is down), naming the log so that the run can be resumed.
  """

  def __init__(self, log: EvalLog | None, on_error: str = "raise", max_consecutive_errors=5):
    if on_error not in ("raise", "record"):
      raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    self.log, self.on_error, self.max_consecutive = log, on_error, max_consecutive_errors
    self.errors: dict[str, str] = {}
    self._streak = 0

  def __call__(self, key: str, fn: Callable[[], Any]):
    """``fn()``'s JSON-able value (cached under ``key``), or ``None`` after a recorded error."""
    if self.log is not None and self.log.judgement(key) is not None:
      return self.log.judgement(key)
    try:
      value = fn()
    except JUDGE_ERRORS as e:
      msg = f"{type(e).__name__}: {e}"
      if self.log is not None:
        self.log.add_error(key, msg)
      if self.on_error == "raise":
        raise
      self.errors[key] = msg
      self._streak += 1
      if self._streak >= self.max_consecutive:
        where = f"; generations and judgements so far are in {self.log.path}" if self.log else ""
        raise JudgeError(
          f"the judge failed {self._streak} times in a row (last: {msg}){where}; fix the judge "
          "and run the same command again to resume"
        ) from None
      return None
    self._streak = 0
    if self.log is not None:
      self.log.add_judgement(key, value)
    return value


def model_generator(lm, max_new_tokens: int = 256, **kw) -> GenerateFn:
  """Adapts a VLM to the harness's ``generate(prompt, image) -> str`` contract.

  The model must provide ``lm.chat_prompt(question) -> str`` (the chat-formatted prompt with the
  image placeholder) and ``lm.generate(prompt, image=..., max_new_tokens=..., **kw) -> str``; a
  steered model (``jaxsteer.steer(lm, vecs, alpha=...)``) works the same way.

  Args:
    lm: the vision-language model (or a steered wrapper of it).
    max_new_tokens: generation length (the GrAInS scripts use 256).
    **kw: passed to ``lm.generate`` (e.g. ``temperature=0.1``, ``seed=0``).

  Returns:
    ``generate(question, image) -> str`` (the response, stripped).
  """

  def generate(prompt: str, image) -> str:
    out = lm.generate(lm.chat_prompt(prompt), image=image, max_new_tokens=max_new_tokens, **kw)
    if isinstance(out, list | tuple):
      if len(out) != 1:
        raise ValueError(f"model_generator: expected one generation, got {len(out)}")
      out = out[0]
    if not isinstance(out, str):
      raise TypeError(f"model_generator: lm.generate returned {type(out).__name__}; expected str")
    return out.strip()

  return generate
