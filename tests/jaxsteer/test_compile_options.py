"""Per-program XLA compiler options: they reach XLA, change no result, and can be turned off."""

import re
import warnings

import jax
import numpy as np
import pytest
from helpers import tiny_llama_config
from tolerances import assert_close

from jaxsteer import attribution, compile_options
from jaxsteer._src import attribution as attr_src
from jaxsteer._src import compile_options as co
from jaxsteer._src.models import lm as lm_lib
from jaxsteer.models import init_random

TINY = tiny_llama_config(
  vocab_size=40, num_layers=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2
)
PROMPT, POS, NEG = [1, 5, 6, 7, 8, 9], [9, 10, 4], [11, 12, 13]

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-backend options")


@pytest.fixture(scope="module")
def tiny():
  return init_random(TINY, seed=3)


@pytest.fixture
def options_off(monkeypatch):
  monkeypatch.setenv(compile_options.ENV_VAR, "0")


def _ynn_fusions(hlo: str) -> list[str]:
  """The bodies of the fused computations that XLA handed to YNNPACK."""
  bodies = {}
  for m in re.finditer(r"^(?:%)?(\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S):
    bodies[m.group(1)] = m.group(2)
  out = []
  for line in hlo.splitlines():
    if "ynn" in line and "kind=kCustom" in line:
      name = re.search(r"calls=%?([\w.\-]+)", line).group(1)
      out.append(bodies.get(name, ""))
  return out


def _forward_hlo(tiny):
  ids = np.array([PROMPT + POS], np.int32)
  f, a = tiny.intercept
  low = lm_lib._forward.lower(tiny.module, f, tiny.params, a, ids, np.ones_like(ids), False)
  return low.compile().as_text()


@cpu_only
def test_forward_programs_compile_without_ynnpack_and_defaults_with_it(tiny, monkeypatch):
  # What the "forward" kind asks for reaches XLA: no YNNPACK fusion at all...
  assert _ynn_fusions(_forward_hlo(tiny)) == []
  # ...while XLA's defaults (the switch off) do use YNNPACK here: the check above can fail.
  monkeypatch.setenv(compile_options.ENV_VAR, "0")
  assert _ynn_fusions(_forward_hlo(tiny)) != []


@cpu_only
def test_ig_program_sends_only_dots_to_ynnpack(tiny, monkeypatch):
  real, calls = attr_src.contrastive_ig_chunk, []

  def spy(*a, **kw):
    calls.append((a, kw))
    return real(*a, **kw)

  monkeypatch.setattr(attr_src, "contrastive_ig_chunk", spy)
  attribution.contrastive(tiny, PROMPT, POS, NEG, steps=4, max_steps=4, on_unconverged="ignore")
  a, kw = calls[0]
  bodies = _ynn_fusions(real.lower(*a, **kw).compile().as_text())
  assert bodies and all(" dot(" in b for b in bodies), "a YNNPACK fusion without a dot"
  # XLA's defaults also give YNNPACK the reductions: the check above can fail.
  monkeypatch.setenv(compile_options.ENV_VAR, "0")
  default = _ynn_fusions(real.lower(*a, **kw).compile().as_text())
  assert any(" dot(" not in b for b in default), "XLA's defaults no longer fuse reductions"


def test_options_change_no_result(tiny, monkeypatch):
  """IG scores, objectives and logits with each kind's options equal XLA's defaults (float32)."""
  on = attribution.contrastive(
    tiny, PROMPT, POS, NEG, steps=8, max_steps=8, on_unconverged="ignore"
  )
  ids = np.array([PROMPT + POS], np.int32)
  logits_on = np.asarray(tiny(ids))
  monkeypatch.setenv(compile_options.ENV_VAR, "0")
  off = attribution.contrastive(
    tiny, PROMPT, POS, NEG, steps=8, max_steps=8, on_unconverged="ignore"
  )
  assert_close(on.scores_pos, off.scores_pos, rtol=1e-5, atol=1e-6)
  assert_close(on.scores_neg, off.scores_neg, rtol=1e-5, atol=1e-6)
  assert_close(on.objective, off.objective, rtol=1e-6, atol=1e-6)
  assert_close(logits_on, np.asarray(tiny(ids)), rtol=1e-5, atol=1e-5)


def test_env_switch_and_kinds(options_off):
  assert compile_options.options("ig") == {} and compile_options.options("forward") == {}
  with pytest.raises(ValueError, match=r"unknown program kind 'train'.*'forward'"):
    compile_options.options("train")
  with pytest.raises(ValueError, match="unknown program kind"):
    compile_options.jit(lambda x: x, kind="train")


@cpu_only
def test_refused_options_warn_and_fall_back(monkeypatch):
  monkeypatch.setitem(co.PROGRAMS, "bogus", {"xla_cpu_no_such_option_anywhere": "1"})
  co._accepted.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match="refused the XLA options.*'bogus'"):
      assert compile_options.options("bogus") == {}
    f = compile_options.jit(lambda x: x + 1, kind="bogus")
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # cached: warned once, then XLA's defaults silently
      assert float(f(np.float32(1))) == 2.0
  finally:
    co._accepted.cache_clear()
