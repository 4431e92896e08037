"""Uncertainty and verdicts for the studies: bootstrap intervals over items, paired differences,
seeds, and a verdict per claim computed from an interval.

Every headline number of a study is an :class:`Estimate` (value and 95 % interval, the method and
the number of units it was resampled over). ``bootstrap`` resamples items (prompts, test items,
evaluation windows) with replacement; ``paired`` resamples the same items for two methods, so a
difference between methods is measured on matched items; ``over_seeds`` resamples seeds and then
items within each seed (a two-level bootstrap), so the interval includes the spread of training.

Intervals are percentile or BCa (bias-corrected and accelerated, Efron 1987; the default: it is
second-order accurate, ``tests/experiments/test_stats.py`` checks it against the exact interval of
an exponential mean). A statistic that is constant over resamples (a rate of 0 or 1 on every item)
gets the degenerate interval [v, v]; that is reported, not hidden.

``verdict`` maps an interval and the claimed direction to supported / contradicted / inconclusive:

  supported     the whole interval is on the claimed side of the threshold;
  contradicted  the whole interval is strictly on the other side, or it is the single point of the
                threshold itself (no effect in any resample, against a claim of an effect);
  inconclusive  the interval straddles the threshold (not resolved at this scale).

  from experiments import stats
  e = stats.bootstrap(per_prompt_scores)                   # mean and 95 % BCa interval
  d = stats.paired(steered, unsteered)                     # mean difference on matched prompts
  stats.verdict(d, "greater")                              # 'supported' if d.lo > 0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
  "LEVEL",
  "Estimate",
  "Claim",
  "bootstrap",
  "paired",
  "over_seeds",
  "exact",
  "verdict",
  "claim",
  "row",
  "VERDICTS",
]

LEVEL = 0.95
N_BOOT = 2000
VERDICTS = ("supported", "contradicted", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A number with its interval.

  Attributes:
    value: the statistic on the data as observed.
    lo, hi: the interval's ends (``level``, 95 % unless stated).
    n: units resampled (items, windows, prompts; seeds x items for ``over_seeds``).
    method: "bca", "percentile", "seeds+items" or "exact" (no sampling: an analytic value, a count
      of parameters; the interval is [value, value]).
  """

  value: float
  lo: float
  hi: float
  n: int
  method: str
  level: float = LEVEL

  def as_dict(self) -> dict:
    num = lambda v: v if isinstance(v, int) and not isinstance(v, bool) else float(v)  # noqa: E731
    return {
      "value": num(self.value),
      "ci": [num(self.lo), num(self.hi)],
      "n": int(self.n),
      "ci_method": self.method,
    }


def exact(value: float) -> Estimate:
  """A number that involves no sampling (interval [value, value], method ``exact``)."""
  v = value if isinstance(value, int) and not isinstance(value, bool) else float(value)
  return Estimate(v, v, v, 1, "exact")


def _as_stat(statistic):
  return statistic or (lambda *a: float(np.mean(a[0])))


def _resampled(data, idx, statistic):
  return np.asarray([statistic(*(d[i] for d in data)) for i in idx], np.float64)


def _norm_ppf(p):
  from scipy.stats import norm

  return norm.ppf(p)


def _norm_cdf(x):
  from scipy.stats import norm

  return norm.cdf(x)


def bootstrap(
  *data: Sequence,
  statistic: Callable[..., float] | None = None,
  method: str = "bca",
  level: float = LEVEL,
  n_boot: int = N_BOOT,
  seed: int = 0,
) -> Estimate:
  """A bootstrap interval of ``statistic(*data)`` over items.

  Args:
    data: one or more arrays whose first axis indexes the same items (resampled together).
    statistic: a function of the arrays (default: the mean of the first).
    method: "bca" or "percentile".
    level: coverage of the interval.
    n_boot: resamples.
    seed: resampling seed (the interval is deterministic given the data).
  """
  if method not in ("bca", "percentile"):
    raise ValueError(f"method must be 'bca' or 'percentile', got {method!r}")
  data = tuple(np.asarray(d) for d in data)
  if not data:
    raise ValueError("bootstrap needs at least one array")
  n = len(data[0])
  if n < 2 or any(len(d) != n for d in data):
    raise ValueError(f"bootstrap needs >= 2 items and arrays of equal length; got {n}")
  stat = _as_stat(statistic)
  theta = float(stat(*data))
  if not math.isfinite(theta):
    raise ValueError(f"the statistic is not finite on the data ({theta})")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(n_boot, n))
  boot = _resampled(data, idx, stat)
  alpha = (1 - level) / 2
  if np.ptp(boot) == 0:
    return Estimate(theta, float(boot[0]), float(boot[0]), n, method, level)
  if method == "percentile":
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return Estimate(theta, float(lo), float(hi), n, method, level)
  # BCa: bias correction z0 from the share of resamples below theta, acceleration from the
  # jackknife (Efron & Tibshirani 1993, eq. 14.9-14.15).
  prop = (np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / n_boot
  prop = min(max(prop, 1.0 / n_boot), 1 - 1.0 / n_boot)
  z0 = _norm_ppf(prop)
  keep = ~np.eye(n, dtype=bool)
  jack = np.asarray([stat(*(d[keep[i]] for d in data)) for i in range(n)], np.float64)
  u = jack.mean() - jack
  denom = 6.0 * np.sum(u**2) ** 1.5
  acc = float(np.sum(u**3) / denom) if denom > 0 else 0.0
  z = _norm_ppf(np.asarray([alpha, 1 - alpha]))
  adj = _norm_cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))
  lo, hi = np.quantile(boot, adj)
  return Estimate(theta, float(lo), float(hi), n, method, level)


def paired(
  a: Sequence,
  b: Sequence,
  *,
  statistic: Callable[..., float] | None = None,
  method: str = "bca",
  level: float = LEVEL,
  n_boot: int = N_BOOT,
  seed: int = 0,
) -> Estimate:
  """``statistic(a) - statistic(b)`` with an interval from resampling the *same* items.

  ``a`` and ``b`` hold one value (or one row) per item for two methods on the same items; the
  default statistic is the mean, so this is the mean paired difference. A statistic that takes
  several columns (e.g. perplexity from per-window NLL sums and token counts) is applied to
  ``a`` and ``b`` column-wise: pass 2-d arrays (items, columns) and a function of one such array.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired needs equal shapes, got {a.shape} and {b.shape}")
  stat = statistic or (lambda x: float(np.mean(x)))
  return bootstrap(
    a, b, statistic=lambda x, y: stat(x) - stat(y), method=method, level=level, n_boot=n_boot,
    seed=seed,
  )  # fmt: skip


def over_seeds(
  per_seed: Sequence[Sequence],
  *,
  statistic: Callable[[np.ndarray], float] | None = None,
  level: float = LEVEL,
  n_boot: int = N_BOOT,
  seed: int = 0,
) -> Estimate:
  """The mean over seeds of ``statistic(items)`` with a two-level (seeds, then items) interval.

  ``per_seed[s]`` holds the per-item values (or rows) of seed ``s``. Each resample draws seeds
  with replacement and items with replacement within each drawn seed (percentile interval), so
  training noise and item noise both widen it. With one seed this is the item bootstrap.
  """
  arrays = [np.asarray(x, np.float64) for x in per_seed]
  if not arrays or any(len(x) < 2 for x in arrays):
    raise ValueError("over_seeds needs >= 1 seed with >= 2 items each")
  stat = statistic or (lambda x: float(np.mean(x)))
  theta = float(np.mean([stat(x) for x in arrays]))
  rng = np.random.default_rng(seed)
  k = len(arrays)
  boot = np.empty(n_boot)
  for i in range(n_boot):
    seeds = rng.integers(0, k, k) if k > 1 else [0]
    boot[i] = np.mean([stat(arrays[s][rng.integers(0, len(arrays[s]), len(arrays[s]))])
                       for s in seeds])  # fmt: skip
  alpha = (1 - level) / 2
  lo, hi = np.quantile(boot, [alpha, 1 - alpha])
  return Estimate(theta, float(lo), float(hi), sum(len(x) for x in arrays), "seeds+items", level)


def verdict(est: Estimate | dict, direction: str, threshold: float = 0.0) -> str:
  """supported / contradicted / inconclusive for the claim ``value <direction> threshold``.

  Args:
    est: an :class:`Estimate` or its ``as_dict()``.
    direction: "greater" (the claim: above the threshold), "less" (below), or "within" (the
      claim: equivalence, |value| <= threshold; contradicted when the interval lies entirely
      outside [-threshold, threshold]).
    threshold: the claim's boundary (0 for "method A beats method B" on a difference).
  """
  lo, hi = (est.lo, est.hi) if isinstance(est, Estimate) else est["ci"]
  if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
    raise ValueError(f"invalid interval [{lo}, {hi}]")
  point = lo == hi == threshold
  if direction == "greater":
    if lo > threshold:
      return "supported"
    return "contradicted" if hi < threshold or point else "inconclusive"
  if direction == "less":
    if hi < threshold:
      return "supported"
    return "contradicted" if lo > threshold or point else "inconclusive"
  if direction == "within":
    if threshold < 0:
      raise ValueError("an equivalence margin must be >= 0")
    if -threshold <= lo and hi <= threshold:
      return "supported"
    if lo > threshold or hi < -threshold:
      return "contradicted"
    return "inconclusive"
  raise ValueError(f"direction must be 'greater', 'less' or 'within', got {direction!r}")


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim of a paper, tested by one estimate of a study.

  Attributes:
    claim: the paper's claim, paraphrased.
    metric: what is measured (the headline row that carries it has the same text).
    direction, threshold: see :func:`verdict`.
    paper: the paper's number or wording for comparison.
  """

  claim: str
  metric: str
  direction: str
  threshold: float = 0.0
  paper: str = ""


def claim(c: Claim, est: Estimate, note: str = "") -> dict:
  """A claim row for ``results.json``: the claim, its estimate with interval and its verdict."""
  return {
    "claim": c.claim,
    "metric": c.metric,
    **est.as_dict(),
    "direction": c.direction,
    "threshold": c.threshold,
    "verdict": verdict(est, c.direction, c.threshold),
    "paper": c.paper,
    "note": note,
  }


def row(metric: str, est: Estimate, paper: str = "") -> dict:
  """A headline row with its interval (``value``, ``ci``, ``n``, ``ci_method``)."""
  return {"metric": metric, **est.as_dict(), "paper": paper}
