"""The judge registry: ``JUDGES`` maps a name to a judge factory; ``make_judge`` builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxsteer._src.evals.judges.llm import LLMJudge
from jaxsteer._src.evals.judges.rule import RuleJudge

JUDGES: dict[str, Callable[..., Any]] = {"rule": RuleJudge, "llm": LLMJudge}


def make_judge(judge="rule", **kw):
  """A judge from the ``JUDGES`` registry by name (``**kw`` go to its factory), or ``judge`` itself
  when it already is one (has ``score_mmhal`` or ``compare``)."""
  if isinstance(judge, str):
    try:
      factory = JUDGES[judge]
    except KeyError:
      raise ValueError(f"unknown judge {judge!r}; registered: {sorted(JUDGES)}") from None
    return factory(**kw)
  if kw:
    raise ValueError("judge options are only accepted with a judge name")
  if not (hasattr(judge, "score_mmhal") or hasattr(judge, "compare")):
    raise TypeError(f"not a judge: {judge!r} (needs score_mmhal and/or compare)")
  return judge


def judge_name(judge) -> str:
  return getattr(judge, "name", type(judge).__name__)
