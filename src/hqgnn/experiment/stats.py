"""Statistics of the reports: the spread over seeds and paired tests between cells."""

from __future__ import annotations

import math

import numpy as np


def seed_std(values) -> float:
    """The spread over seeds the reports show: the sample standard deviation (0 for one seed)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_test(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value (nan with fewer than 2 pairs or no variance)."""
    from scipy import stats

    if len(a) < 2 or len(a) != len(b):
        return float("nan")
    diff = np.asarray(a) - np.asarray(b)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def gain_with_p(mine: list[float], theirs: list[float]) -> str:
    """Relative gain of the mean of ``mine`` over ``theirs`` (paired by seed), with the p-value."""
    gain = (np.mean(mine) / np.mean(theirs) - 1) * 100
    p = paired_test(mine, theirs)
    return f"{gain:+.1f}% (p={p:.3g})" if not math.isnan(p) else f"{gain:+.1f}% ({len(mine)} seed)"
