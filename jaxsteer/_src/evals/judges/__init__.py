"""Judges and generation harness for the GrAInS VLM evaluations (MMHal-Bench and SPA-VL).

GrAInS (Nguyen et al., 2025) reports, on LLaVA-1.6-7B, the MMHal-Bench hallucination rate
(Sun et al., 2023, "Aligning Large Multimodal Models with Factually Augmented RLHF": a judge rates
each answer 0-6 against the image-content description and the standard answer; a rating below 3
is a hallucination) and the SPA-VL win rate (Zhang et al., 2024: a judge picks the more helpful and
harmless of two answers). This package holds what both benchmarks share, one concern a module:

* ``registry``: ``JUDGES``, a string-keyed registry of judge factories, and ``make_judge``.

  - ``"rule"`` (``rule.RuleJudge``): deterministic content-word overlap heuristics, for tests and
    offline smoke runs. Its numbers are not comparable to the paper's.
  - ``"llm"`` (``llm.LLMJudge``): an LLM judge with this library's own prompts. It takes a
    ``complete(prompt) -> str`` callable, or builds one for an OpenAI-compatible chat-completions
    endpoint (``backends.openai_complete``) on the standard library (``backend="http"``,
    ``http_backend``) or on the official ``openai`` client (``backend="openai"``,
    ``openai_backend``), both with the limits of ``client`` (timeouts, retries, a reply cap).

  Every judge has ``score_mmhal(item, response) -> Rating`` and
  ``compare(item, a, b) -> float`` (1.0: ``a`` is better, 0.0: ``b`` is better, 0.5: tie).

* ``base``: ``Rating``, ``parse_rating``, ``parse_verdict``, ``JudgeError``.

* ``harness``: a method is a ``generate(prompt: str, image: PIL.Image) -> str`` callable (the
  harness passes the benchmark question as ``prompt``); ``model_generator(lm)`` adapts a VLM with
  ``chat_prompt``/``generate``; ``generate_responses`` runs one over a dataset with a tqdm bar;
  ``EvalLog`` and ``JudgeRunner`` make a run resumable.

* File IO: ``save_json`` in ``jaxsteer._src.evals.io``; ``decode_image``/``open_image`` (re-exported
  here) are the library's one image loader, ``jaxsteer._src.images``.

  >>> from jaxsteer import evals
  >>> judge = evals.make_judge("rule")
  >>> judge = evals.make_judge(
  ...   "llm", base_url="http://localhost:8000/v1", model="judge-model", api_key_env="OPENAI_API_KEY"
  ... )  # doctest: +SKIP
  >>> gen = evals.model_generator(lm, max_new_tokens=256)  # doctest: +SKIP
  >>> gen("What is in the image?", pil_image)  # doctest: +SKIP
"""

from jaxsteer._src.evals.io import save_json as save_json
from jaxsteer._src.evals.judges.backends import COMPLETE_BACKENDS as COMPLETE_BACKENDS
from jaxsteer._src.evals.judges.backends import openai_complete as openai_complete
from jaxsteer._src.evals.judges.base import MMHAL_HALLUCINATION_BELOW as MMHAL_HALLUCINATION_BELOW
from jaxsteer._src.evals.judges.base import CompleteFn as CompleteFn
from jaxsteer._src.evals.judges.base import JudgeError as JudgeError
from jaxsteer._src.evals.judges.base import Rating as Rating
from jaxsteer._src.evals.judges.base import parse_rating as parse_rating
from jaxsteer._src.evals.judges.base import parse_verdict as parse_verdict
from jaxsteer._src.evals.judges.client import JUDGE_CONNECT_TIMEOUT as JUDGE_CONNECT_TIMEOUT
from jaxsteer._src.evals.judges.client import JUDGE_MAX_BACKOFF as JUDGE_MAX_BACKOFF
from jaxsteer._src.evals.judges.client import JUDGE_MAX_RESPONSE_BYTES as JUDGE_MAX_RESPONSE_BYTES
from jaxsteer._src.evals.judges.client import JUDGE_READ_TIMEOUT as JUDGE_READ_TIMEOUT
from jaxsteer._src.evals.judges.client import JUDGE_TOTAL_TIMEOUT as JUDGE_TOTAL_TIMEOUT
from jaxsteer._src.evals.judges.client import check_judge_url as check_judge_url
from jaxsteer._src.evals.judges.harness import JUDGE_ERRORS as JUDGE_ERRORS
from jaxsteer._src.evals.judges.harness import EvalLog as EvalLog
from jaxsteer._src.evals.judges.harness import GenerateFn as GenerateFn
from jaxsteer._src.evals.judges.harness import JudgeRunner as JudgeRunner
from jaxsteer._src.evals.judges.harness import generate_responses as generate_responses
from jaxsteer._src.evals.judges.harness import model_generator as model_generator
from jaxsteer._src.evals.judges.llm import MMHAL_PROMPT as MMHAL_PROMPT
from jaxsteer._src.evals.judges.llm import PAIRWISE_PROMPT as PAIRWISE_PROMPT
from jaxsteer._src.evals.judges.llm import LLMJudge as LLMJudge
from jaxsteer._src.evals.judges.registry import JUDGES as JUDGES
from jaxsteer._src.evals.judges.registry import judge_name as judge_name
from jaxsteer._src.evals.judges.registry import make_judge as make_judge
from jaxsteer._src.evals.judges.rule import RuleJudge as RuleJudge
from jaxsteer._src.evals.judges.rule import content_words as content_words
from jaxsteer._src.images import decode_image as decode_image  # the one image loader
from jaxsteer._src.images import open_image as open_image

__all__ = [
  "COMPLETE_BACKENDS",
  "JUDGES",
  "JUDGE_CONNECT_TIMEOUT",
  "JUDGE_ERRORS",
  "JUDGE_MAX_BACKOFF",
  "JUDGE_MAX_RESPONSE_BYTES",
  "JUDGE_READ_TIMEOUT",
  "JUDGE_TOTAL_TIMEOUT",
  "MMHAL_HALLUCINATION_BELOW",
  "MMHAL_PROMPT",
  "PAIRWISE_PROMPT",
  "CompleteFn",
  "EvalLog",
  "GenerateFn",
  "JudgeError",
  "JudgeRunner",
  "LLMJudge",
  "Rating",
  "RuleJudge",
  "check_judge_url",
  "content_words",
  "decode_image",
  "generate_responses",
  "judge_name",
  "make_judge",
  "model_generator",
  "open_image",
  "openai_complete",
  "parse_rating",
  "parse_verdict",
  "save_json",
]
