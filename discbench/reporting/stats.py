"""Statistics of the leaderboards, from scipy.stats and statsmodels (imported on first use: ``discbench leaderboard
--help`` and the record reader load neither).

- ``welch``: the difference of two means with its 95 % confidence interval from Welch's unequal-variances t-test
  (``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval``), seeds unpaired;
- ``paired``: the mean of per-seed differences with its 95 % interval from the paired t-test
  (``scipy.stats.ttest_rel``), for two rows whose seed k provably shares its initial network and data order (the
  records' fingerprints, ``discbench.seeding``);
- ``pooled_std``: the seed standard deviation pooled over a table's rows; ``detectable`` and ``seeds_for``: the
  smallest difference a two-sample t-test detects at n seeds per row, and the seeds per row a difference needs, at
  80 % power and a two-sided 5 % level (``statsmodels.stats.power.TTestIndPower``);
- ``kendall``: Kendall's tau-b between two rankings (``scipy.stats.kendalltau``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
POWER = 0.8
ALPHA = 0.05
MARK = "†"  # a difference whose 95 % interval excludes zero


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its Welch interval (NaN bounds when either side has fewer than 2 runs or neither
    varies)."""

    diff: float
    low: float
    high: float
    n_a: int
    n_b: int

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def significant(self) -> bool:
        return self.has_interval and (self.low > 0 or self.high < 0)

    def short(self) -> str:
        """``Δ +0.52 [-0.31, +1.35]`` (``†`` when the interval excludes 0); ``Δ +0.52 (no CI: n=1)``."""
        if not self.has_interval:
            why = "n<2" if min(self.n_a, self.n_b) < 2 else "no variance"
            return f"Δ {self.diff:+.2f} (no CI: {why})"
        return f"Δ {self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]" + (MARK if self.significant else "")


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """mean(a) - mean(b) and Welch's ``confidence`` interval for it (two-sided)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):  # no spread: no interval to give
        return Difference(diff, math.nan, math.nan, len(a), len(b))
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance on both sides: NaN, reported as such
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return Difference(diff, float(ci.low), float(ci.high), len(a), len(b))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """mean(a - b) over paired seeds and the paired t-test's ``confidence`` interval for it (NaN bounds below two
    pairs or without spread of the differences)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths: {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    diff = sum(diffs) / len(diffs) if diffs else math.nan
    if len(diffs) < 2 or len(set(diffs)) == 1:
        return Difference(diff, math.nan, math.nan, len(a), len(b))
    from scipy.stats import ttest_rel

    ci = ttest_rel([float(x) for x in a], [float(y) for y in b]).confidence_interval(confidence)
    return Difference(diff, float(ci.low), float(ci.high), len(a), len(b))


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The standard deviation pooled over ``groups`` (each a row's per-seed values): sqrt(sum (n_i - 1) s_i^2 /
    sum (n_i - 1)), and its degrees of freedom; NaN and 0 when no group has two values."""
    ss, dof = 0.0, 0
    for values in groups:
        values = [float(v) for v in values]
        if len(values) < 2:
            continue
        m = sum(values) / len(values)
        ss += sum((v - m) ** 2 for v in values)
        dof += len(values) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def detectable(sigma: float, n: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest difference of means (in the units of ``sigma``'s values) that a two-sided two-sample t-test at
    level ``alpha`` detects with probability ``power`` with ``n`` seeds per row and seed standard deviation ``sigma``
    (NaN when it cannot be computed: n < 2 or no sigma)."""
    if not (n >= 2 and math.isfinite(sigma) and sigma > 0):
        return math.nan
    from statsmodels.stats.power import TTestIndPower

    effect = TTestIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0,
                                         alternative="two-sided")
    return float(effect) * sigma


def seeds_for(difference: float, sigma: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """Seeds per row that a two-sided two-sample t-test needs to detect ``difference`` with probability ``power``
    at level ``alpha`` (rounded up; NaN when sigma is unknown, 2 when sigma is 0)."""
    if not math.isfinite(sigma):
        return math.nan
    if sigma == 0:
        return 2.0
    from statsmodels.stats.power import TTestIndPower

    n = TTestIndPower().solve_power(effect_size=difference / sigma, nobs1=None, alpha=alpha, power=power, ratio=1.0,
                                    alternative="two-sided")
    return float(max(2, math.ceil(n)))


def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of two paired sequences and its two-sided p-value (NaN with fewer than 2 pairs)."""
    if len(x) < 2:
        return math.nan, math.nan
    from scipy.stats import kendalltau

    res = kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)
