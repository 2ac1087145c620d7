"""Small-sample statistics for the reports: Student-t quantiles and intervals, binomial standard errors.

The grids run three seeds, so intervals use Student's t with n − 1 degrees of freedom (t₀.₉₇₅ is 4.30 for
n = 3, not 1.96). The quantile is computed here from the t density (standard library only; SciPy is not a
dependency of the harness).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

from open_instruct.paper.summarize import mean_std


def t_cdf(x: float, df: int) -> float:
    """P(T ≤ x) for Student's t with `df` degrees of freedom (Simpson's rule on the density, from 0 to |x|)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    if x == 0:
        return 0.5
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    # substitute t = tan(θ): the tail is heavy for small df, and θ runs over a finite range
    theta, steps = math.atan(abs(x)), 2000
    h = theta / steps
    area = sum((1 if i in (0, steps) else 4 if i % 2 else 2) * density(math.tan(i * h)) / math.cos(i * h) ** 2
               for i in range(steps + 1)) * h / 3
    return 0.5 + math.copysign(area, x)


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The x with P(T ≤ x) = p (bisection on `t_cdf`, to about 1e-9)."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    target = max(p, 1 - p)
    while t_cdf(hi, df) < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < target else (lo, mid)
    return math.copysign((lo + hi) / 2, p - 0.5)


@dataclass(frozen=True)
class Interval:
    """Mean, sample std and a two-sided t-interval of the mean (None where one value cannot give them)."""

    mean: float
    std: Optional[float]
    n: int
    low: Optional[float]
    high: Optional[float]

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n−1} · std / √n over `values` (at least one)."""
    mean, std = mean_std(list(values))
    n = len(values)
    if std is None:
        return Interval(mean, None, n, None, None)
    half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def binomial_se(p: float, trials: int) -> float:
    """Standard error of a proportion `p` (a fraction) measured on `trials` independent trials."""
    return math.sqrt(p * (1 - p) / trials)
