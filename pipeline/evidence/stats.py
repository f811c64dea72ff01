"""Paired comparisons over seeds: the mean difference with its 95 % t interval, and a verdict from it.

A claim about a method is a paired comparison: the same seed (same initial weights, same batches) trained with
and without the change, the difference taken per seed, then its mean and Student-t interval over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..30; larger df use the normal 1.96 (error < 2 %).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95 % Student-t quantile for `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Paired:
    """Mean of per-seed differences (treatment − reference) with its 95 % interval; `seeds` the pairs used."""

    mean: float
    low: float
    high: float
    n: int
    seeds: tuple[int, ...]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n, "seeds": list(self.seeds)}


def paired(treatment: dict[int, float], reference: dict[int, float]) -> Paired | None:
    """Paired difference over the seeds both sides have (seed → value); None with fewer than two pairs, as one
    pair has no interval."""
    seeds = tuple(sorted(seed for seed in treatment if seed in reference
                         and treatment[seed] is not None and reference[seed] is not None))
    if len(seeds) < 2:
        return None
    differences = [treatment[seed] - reference[seed] for seed in seeds]
    n = len(differences)
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n, seeds)


def direction(difference: Paired | None) -> str:
    """'higher' / 'lower' when the interval excludes zero, 'unclear' when it contains it, 'missing' without one."""
    if difference is None:
        return "missing"
    if difference.low > 0:
        return "higher"
    if difference.high < 0:
        return "lower"
    return "unclear"


def format_paired(difference: Paired | None, scale: float = 100, digits: int = 1) -> str:
    """'+3.1 [+0.4, +5.8] (n=5)' in points (scale 100 for fractions); '—' without enough pairs."""
    if difference is None:
        return "—"
    mean, low, high = (scale * value for value in (difference.mean, difference.low, difference.high))
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] (n={difference.n})"
