"""Evaluations: TruthfulQA (Lin et al., 2022) MC0/MC1/MC2 by log-likelihood, and GrAInS steering pairs.

>>> from jaxsteer import evals
>>> tqa = evals.load_truthfulqa(data_dir, version="v1")  # doctest: +SKIP
>>> evals.evaluate_truthfulqa(lm, tqa)  # doctest: +SKIP
>>> pairs = evals.steering_pairs(tqa, n=50)  # doctest: +SKIP
"""

from jaxsteer._src.evals.truthfulqa import DEFAULT_SPLIT_PATH as DEFAULT_SPLIT_PATH
from jaxsteer._src.evals.truthfulqa import PROMPT_TEMPLATE as PROMPT_TEMPLATE
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

__all__ = [
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
]
