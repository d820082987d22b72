"""Paired statistics over seeds: method vs baseline on the same seeds.

Runs of one seed share the dense model, the data order and the head, so a method and a baseline
are compared seed by seed (a paired difference), which removes the seed-to-seed variance both
share. With the 3-5 seeds a grid can afford, two 95% intervals of the mean difference are given:
Student's t (exact under normality) and a seeded percentile bootstrap (no normality assumption,
but too narrow with few seeds); a difference counts as detected only when both exclude 0.
Pure numpy/scipy: no torch, no run folders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LOWER_IS_BETTER = ("mse", "mae", "rmse", "loss")
EQUAL_TOLERANCE = 1e-12  # relative: per-seed differences closer than this are equal


def higher_is_better(metric: str, mode: str | None = None) -> bool:
    """Whether a larger value of ``metric`` wins: the monitor mode when known (``min``/``max``),
    else by name (mse/loss-like metrics are errors, everything else a score)."""
    if mode in ("min", "max"):
        return mode == "max"
    name = str(metric).lower()
    return not any(name == m or name.endswith(("_" + m, "/" + m)) for m in LOWER_IS_BETTER)


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def t_halfwidth(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t-interval of a mean from its sample std (ddof=1); NaN below 2 values."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(st.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean, ``mean ± t_{n-1} s / sqrt(n)``; (NaN, NaN) below 2 values."""
    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    mean, half = float(x.mean()), t_halfwidth(float(x.std(ddof=1)), len(x), confidence)
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: ``resamples`` resamples with replacement drawn
    as ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))`` (a fresh generator per
    call, so every cell of a report is reproducible on its own); (NaN, NaN) below 2 values."""
    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def count_wins(diffs: Sequence[float], higher_better: bool = True) -> int:
    """Seeds where the method strictly beats the baseline (ties are not wins)."""
    x = _finite(diffs)
    return int((x > 0).sum() if higher_better else (x < 0).sum())


def _seeds(seeds: Sequence[int]) -> str:
    return f"{len(seeds)} seed" + ("" if len(seeds) == 1 else "s")


@dataclass
class Paired:
    """The paired comparison of one method against one baseline over their common seeds."""

    seeds: list[int]  # paired seeds (present and finite on both sides)
    unpaired: list[int]  # seeds on one side only (or NaN on one side); compare.pair names its own
    diffs: list[float] = field(repr=False)  # method - baseline, per paired seed
    higher_better: bool = True
    mean: float = math.nan
    t_low: float = math.nan
    t_high: float = math.nan
    boot_low: float = math.nan
    boot_high: float = math.nan
    wins: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def constant(self) -> bool:
        """Whether every paired seed has the same difference (2 seeds or more): zero variance,
        so no interval can be given (a t-interval would have width 0)."""
        return self.n >= 2 and max(self.diffs) - min(self.diffs) <= EQUAL_TOLERANCE * max(1.0, abs(self.mean))

    @property
    def covers_zero(self) -> bool | None:
        """True when either 95% interval contains 0 (no difference detected); None without one
        (fewer than 2 seeds, or all seeds equal)."""
        if self.n < 2 or self.constant:
            return None
        return bool(self.t_low <= 0 <= self.t_high or self.boot_low <= 0 <= self.boot_high)

    def verdict(self, method: str = "the method", baseline: str = "the baseline") -> str:
        """The comparison in words, as the report prints it; seeds left out (missing or NaN on
        one side, e.g. a collapsed STS-B model) are named, never dropped silently."""
        text = self._verdict(method, baseline)
        if self.unpaired:
            text += f"; seed(s) {', '.join(map(str, self.unpaired))} left out (missing or NaN on one side)"
        return text

    def _verdict(self, method: str, baseline: str) -> str:
        if self.n == 0:
            return "no seed in common with the baseline: not paired"
        if self.n == 1:
            return "1 paired seed: no interval (needs at least 2)"
        if self.constant:
            if self.mean == 0:
                return f"all seeds equal: no difference in any of the {_seeds(self.seeds)} (zero variance, no interval)"
            better = (self.mean > 0) == self.higher_better
            return (f"all seeds equal: {method} {'better' if better else 'worse'} by exactly "
                    f"{self.mean:+.4g} in each of the {_seeds(self.seeds)} (zero variance, no interval; "
                    "not a detected difference)")
        if self.covers_zero:
            text = f"the 95% interval covers 0: no difference detected with {_seeds(self.seeds)}"
            t_covers = self.t_low <= 0 <= self.t_high
            boot_covers = self.boot_low <= 0 <= self.boot_high
            if t_covers != boot_covers:
                text += (" (the t-interval excludes 0, the bootstrap one does not)" if boot_covers
                         else " (the bootstrap interval excludes 0, the t-interval does not)")
            return text
        better = (self.mean > 0) == self.higher_better
        return (f"the 95% interval excludes 0: {method} {'better' if better else 'worse'} than "
                f"{baseline} with {_seeds(self.seeds)}")


def paired(method: Mapping[int, float], baseline: Mapping[int, float],
           higher_better: bool = True) -> Paired:
    """Pair per-seed values by seed (only seeds present and finite in both) and summarise
    ``method - baseline``: mean, t and bootstrap 95% intervals, wins."""
    def ok(v: float) -> bool:
        return v is not None and math.isfinite(float(v))

    common = sorted(s for s in set(method) & set(baseline) if ok(method[s]) and ok(baseline[s]))
    unpaired = sorted((set(method) | set(baseline)) - set(common))
    diffs = [float(method[s]) - float(baseline[s]) for s in common]
    out = Paired(seeds=common, unpaired=unpaired, diffs=diffs, higher_better=higher_better)
    if diffs:
        out.mean = float(np.mean(diffs))
        out.wins = count_wins(diffs, higher_better)
    if len(diffs) >= 2 and not out.constant:
        out.t_low, out.t_high = t_interval(diffs)
        out.boot_low, out.boot_high = bootstrap_interval(diffs)
    return out
