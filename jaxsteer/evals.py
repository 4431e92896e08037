"""Evaluations: TruthfulQA (Lin et al., 2022) MC0/MC1/MC2 by log-likelihood, and GrAInS steering pairs.

>>> from jaxsteer import evals
>>> tqa = evals.load_truthfulqa(data_dir, version="v1")  # doctest: +SKIP
>>> evals.evaluate_truthfulqa(lm, tqa)  # doctest: +SKIP
>>> pairs = evals.steering_pairs(tqa, n=50)  # doctest: +SKIP
"""

from jaxsteer._src.evals.judges import COMPLETE_BACKENDS as COMPLETE_BACKENDS
from jaxsteer._src.evals.judges import JUDGES as JUDGES
from jaxsteer._src.evals.judges import MMHAL_PROMPT as MMHAL_PROMPT
from jaxsteer._src.evals.judges import PAIRWISE_PROMPT as PAIRWISE_PROMPT
from jaxsteer._src.evals.judges import EvalLog as EvalLog
from jaxsteer._src.evals.judges import JudgeError as JudgeError
from jaxsteer._src.evals.judges import JudgeRunner as JudgeRunner
from jaxsteer._src.evals.judges import LLMJudge as LLMJudge
from jaxsteer._src.evals.judges import Rating as Rating
from jaxsteer._src.evals.judges import RuleJudge as RuleJudge
from jaxsteer._src.evals.judges import check_judge_url as check_judge_url
from jaxsteer._src.evals.judges import content_words as content_words
from jaxsteer._src.evals.judges import generate_responses as generate_responses
from jaxsteer._src.evals.judges import make_judge as make_judge
from jaxsteer._src.evals.judges import model_generator as model_generator
from jaxsteer._src.evals.judges import openai_complete as openai_complete
from jaxsteer._src.evals.judges import parse_rating as parse_rating
from jaxsteer._src.evals.judges import parse_verdict as parse_verdict
from jaxsteer._src.evals.judges import save_json as save_json
from jaxsteer._src.evals.mmhal import MMHalItem as MMHalItem
from jaxsteer._src.evals.mmhal import MMHalReport as MMHalReport
from jaxsteer._src.evals.mmhal import download_mmhal as download_mmhal
from jaxsteer._src.evals.mmhal import evaluate_mmhal as evaluate_mmhal
from jaxsteer._src.evals.mmhal import load_mmhal as load_mmhal
from jaxsteer._src.evals.spavl import SPAVLItem as SPAVLItem
from jaxsteer._src.evals.spavl import SPAVLReport as SPAVLReport
from jaxsteer._src.evals.spavl import evaluate_spavl as evaluate_spavl
from jaxsteer._src.evals.spavl import load_spavl as load_spavl
from jaxsteer._src.evals.spavl import spavl_steering_pairs as spavl_steering_pairs
from jaxsteer._src.evals.spavl import win_stats as win_stats
from jaxsteer._src.evals.truthfulqa import DEFAULT_SPLIT_PATH as DEFAULT_SPLIT_PATH
from jaxsteer._src.evals.truthfulqa import PROMPT_TEMPLATE as PROMPT_TEMPLATE
from jaxsteer._src.evals.truthfulqa import TEMPLATES as TEMPLATES
from jaxsteer._src.evals.truthfulqa import Question as Question
from jaxsteer._src.evals.truthfulqa import TruthfulQA as TruthfulQA
from jaxsteer._src.evals.truthfulqa import evaluate_truthfulqa as evaluate_truthfulqa
from jaxsteer._src.evals.truthfulqa import load_split as load_split
from jaxsteer._src.evals.truthfulqa import load_truthfulqa as load_truthfulqa
from jaxsteer._src.evals.truthfulqa import load_truthfulqa_csv as load_truthfulqa_csv
from jaxsteer._src.evals.truthfulqa import loglikelihoods as loglikelihoods
from jaxsteer._src.evals.truthfulqa import make_split as make_split
from jaxsteer._src.evals.truthfulqa import mc0 as mc0
from jaxsteer._src.evals.truthfulqa import mc1 as mc1
from jaxsteer._src.evals.truthfulqa import mc2 as mc2
from jaxsteer._src.evals.truthfulqa import question_sha as question_sha
from jaxsteer._src.evals.truthfulqa import save_split as save_split
from jaxsteer._src.evals.truthfulqa import steering_pairs as steering_pairs
from jaxsteer._src.evals.truthfulqa import tokenize_request as tokenize_request
from jaxsteer._src.evals.truthfulqa import tokenizer_adds_bos as tokenizer_adds_bos

__all__ = [
  "EvalLog",
  "JudgeError",
  "JudgeRunner",
  "check_judge_url",
  "TEMPLATES",
  "tokenizer_adds_bos",
  "DEFAULT_SPLIT_PATH",
  "PROMPT_TEMPLATE",
  "Question",
  "TruthfulQA",
  "evaluate_truthfulqa",
  "load_split",
  "load_truthfulqa",
  "load_truthfulqa_csv",
  "loglikelihoods",
  "make_split",
  "mc0",
  "mc1",
  "mc2",
  "question_sha",
  "save_split",
  "steering_pairs",
  "tokenize_request",
  "COMPLETE_BACKENDS",
  "JUDGES",
  "LLMJudge",
  "MMHAL_PROMPT",
  "PAIRWISE_PROMPT",
  "Rating",
  "RuleJudge",
  "content_words",
  "generate_responses",
  "make_judge",
  "model_generator",
  "openai_complete",
  "parse_rating",
  "parse_verdict",
  "save_json",
  "MMHalItem",
  "MMHalReport",
  "download_mmhal",
  "evaluate_mmhal",
  "load_mmhal",
  "SPAVLItem",
  "SPAVLReport",
  "evaluate_spavl",
  "load_spavl",
  "spavl_steering_pairs",
  "win_stats",
]
