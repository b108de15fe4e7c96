"""Statistics of the leaderboards, from scipy.stats (imported on first use: ``discbench leaderboard --help`` and the
record reader never load scipy).

- ``welch``: the difference of two means with its 95 % confidence interval from Welch's unequal-variances t-test
  (``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval``). Seeds are *unpaired*: nothing proves that
  seed k of two rows shares its initial network and data order (the plugins' heads draw from the same generator),
  so a paired test would be unjustified.
- ``kendall``: Kendall's tau-b between two rankings (``scipy.stats.kendalltau``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
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


def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of two paired sequences and its two-sided p-value (NaN with fewer than 2 pairs)."""
    if len(x) < 2:
        return math.nan, math.nan
    from scipy.stats import kendalltau

    res = kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)
