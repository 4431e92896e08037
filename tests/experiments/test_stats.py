"""``experiments.stats``: bootstrap intervals against analytic ones, and the verdict logic."""

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats


def test_percentile_interval_of_a_normal_mean_matches_the_t_interval():
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, size=400)
  e = stats.bootstrap(x, method="percentile", n_boot=4000)
  se = x.std(ddof=1) / np.sqrt(len(x))
  t = sps.t.ppf(0.975, len(x) - 1)
  assert e.value == pytest.approx(x.mean())
  # The bootstrap SE is the plug-in one (ddof 0): within 6% of the analytic half-width.
  assert (e.hi - e.lo) / 2 == pytest.approx(t * se, rel=0.06)
  assert e.lo < x.mean() < e.hi


def test_bca_interval_of_an_exponential_mean_matches_the_exact_chi2_interval():
  # For x ~ Exp(mean m), 2 n xbar / m ~ chi2(2n): the exact 95% interval of m is skewed right.
  rng = np.random.default_rng(0)
  n = 40
  x = rng.exponential(5.0, size=n)
  s = 2 * n * x.mean()
  lo_exact, hi_exact = s / sps.chi2.ppf(0.975, 2 * n), s / sps.chi2.ppf(0.025, 2 * n)
  bca = stats.bootstrap(x, method="bca", n_boot=6000)
  pct = stats.bootstrap(x, method="percentile", n_boot=6000)
  assert bca.lo == pytest.approx(lo_exact, rel=0.05)
  assert bca.hi == pytest.approx(hi_exact, rel=0.05)
  # BCa follows the skew of the exact interval better than the percentile interval.
  assert abs(bca.hi - hi_exact) < abs(pct.hi - hi_exact)


def test_paired_difference_uses_matched_items():
  rng = np.random.default_rng(2)
  item = rng.normal(0, 5, size=200)  # large item effect shared by both methods
  a = item + 0.5 + rng.normal(0, 0.3, size=200)
  b = item + rng.normal(0, 0.3, size=200)
  d = stats.paired(a, b, method="percentile", n_boot=3000)
  se = (a - b).std(ddof=1) / np.sqrt(200)
  assert d.value == pytest.approx(np.mean(a - b))
  assert (d.hi - d.lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
  assert d.lo > 0  # an unpaired interval (SE ~ 0.5) would straddle 0


def test_paired_ratio_statistic_perplexity():
  rng = np.random.default_rng(3)
  counts = np.full(50, 20.0)
  nll_a = rng.normal(100, 5, 50)
  nll_b = nll_a + 1.0
  ppl = lambda rows: float(np.exp(rows[:, 0].sum() / rows[:, 1].sum()))  # noqa: E731
  d = stats.paired(np.c_[nll_a, counts], np.c_[nll_b, counts], statistic=ppl)
  assert d.value == pytest.approx(ppl(np.c_[nll_a, counts]) - ppl(np.c_[nll_b, counts]))
  assert d.hi < 0


def test_over_seeds_widens_with_seed_spread():
  rng = np.random.default_rng(4)
  same = [rng.normal(0, 1, 100) for _ in range(3)]
  spread = [rng.normal(m, 1, 100) for m in (-2, 0, 2)]
  a, b = stats.over_seeds(same), stats.over_seeds(spread)
  assert (b.hi - b.lo) > 3 * (a.hi - a.lo)
  assert a.method == "seeds+items" and a.n == 300


def test_degenerate_and_bad_input():
  e = stats.bootstrap(np.ones(10))
  assert (e.lo, e.hi) == (1.0, 1.0)
  with pytest.raises(ValueError, match=">= 2 items"):
    stats.bootstrap([1.0])
  with pytest.raises(ValueError, match="method"):
    stats.bootstrap([1.0, 2.0], method="normal")


@pytest.mark.parametrize(
  ("ci", "direction", "thr", "want"),
  [
    ((0.1, 0.5), "greater", 0.0, "supported"),
    ((-0.5, -0.1), "greater", 0.0, "contradicted"),  # the interval on the wrong side
    ((-0.1, 0.5), "greater", 0.0, "inconclusive"),
    ((-0.5, -0.1), "less", 0.0, "supported"),
    ((0.1, 0.5), "less", 0.0, "contradicted"),
    ((-0.02, 0.03), "within", 0.05, "supported"),
    ((0.06, 0.2), "within", 0.05, "contradicted"),
    ((0.0, 0.2), "within", 0.05, "inconclusive"),
    ((0.0, 0.0), "greater", 0.0, "contradicted"),  # exactly zero does not raise anything
    ((-0.5, 0.0), "greater", 0.0, "inconclusive"),  # touching the threshold is not resolved
    ((0.0, 0.5), "less", 0.0, "inconclusive"),
  ],
)
def test_verdict(ci, direction, thr, want):
  est = stats.Estimate(sum(ci) / 2, ci[0], ci[1], 10, "percentile")
  assert stats.verdict(est, direction, thr) == want
  assert stats.verdict(est.as_dict(), direction, thr) == want


def test_claim_with_interval_on_the_wrong_side_is_contradicted():
  c = stats.Claim("steering raises the target attribute", "sentiment gain", "greater")
  steered, unsteered = np.full(48, 3.0), np.full(48, 10.0)
  steered[::2] += 1.0
  row = stats.claim(c, stats.paired(steered, unsteered))
  assert row["verdict"] == "contradicted" and row["ci"][1] < 0
