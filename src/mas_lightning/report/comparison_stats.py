"""The statistics of a comparison: spread over seeds, Delta_m, and paired differences with t intervals.

Every variant runs on the same seeds (same data, clients and initial draws), so a variant is compared with
the reference seed by seed: the difference on each seed, then a Student t interval over those differences.
That is far tighter than comparing two means whose seed-to-seed spread dominates (README, the comparison).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

CONFIDENCE = 0.95


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); ``None`` when a value is unknown or the std undefined."""
    if not values or any(v is None for v in values):
        return None, None
    numbers = [float(v) for v in values if v is not None]
    return statistics.fmean(numbers), (statistics.stdev(numbers) if len(numbers) > 1 else None)


def t_quantile(level: float, dof: int) -> float:
    """The two-sided Student t quantile, ``scipy.stats.t.ppf((1 + level) / 2, dof)``."""
    from scipy import stats  # imported here: compare's tables are the only users, and scipy is slow to import

    return float(stats.t.ppf((1.0 + level) / 2.0, dof))


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """Mean and the ``level`` t interval of the mean, mean ± t * s / sqrt(n); the bounds are ``None`` below
    two values (no spread to estimate) or without scipy."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    quantile = t_quantile(level, len(values) - 1)
    if quantile is None:
        return mean, None, None
    half = quantile * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_differences(values: Mapping[int, float | None], reference: Mapping[int, float | None]) -> list[float] | None:
    """``values[s] - reference[s]`` for each seed both have, in seed order; ``None`` when a paired value is
    unknown or no seed is shared."""
    seeds = sorted(set(values) & set(reference))
    if not seeds or any(values[s] is None or reference[s] is None for s in seeds):
        return None
    return [float(values[s]) - float(reference[s]) for s in seeds]  # type: ignore[arg-type]


def delta_m(metrics: Mapping[str, float | None], reference: Mapping[str, float | None],
            higher_is_better: Mapping[str, bool]) -> float | None:
    """Delta_m (%): the mean over tasks of the relative change of each task's main metric against the reference,
    signed so that positive is better (Maninis et al. 2019; LibMTL):
    ``100 / T * sum_t (-1)^l_t (M_t - M_ref_t) / M_ref_t``, ``l_t = 1`` where lower is better.

    ``None`` when a metric is unknown or a reference metric is zero (no relative change).
    """
    terms = []
    for task, higher in higher_is_better.items():
        value, base = metrics.get(task), reference.get(task)
        if value is None or base is None or base == 0 or not math.isfinite(value) or not math.isfinite(base):
            return None
        terms.append((1.0 if higher else -1.0) * (value - base) / base)
    return 100.0 * statistics.fmean(terms) if terms else None


FLOP_UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1.0, "FLOP"))


def flops_unit(values: Sequence[float]) -> tuple[float, str]:
    """The largest unit in which the largest of ``values`` reads at least 1, e.g. ``(1e12, "TFLOP")``."""
    top = max((abs(v) for v in values), default=0.0)
    return next(((scale, name) for scale, name in FLOP_UNITS if top >= scale), FLOP_UNITS[-1])
