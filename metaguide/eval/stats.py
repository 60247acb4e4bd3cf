"""Mean and 95% confidence interval: the one summary every evaluation reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean and the half-width of its 95% CI (normal approximation), rounded to 4 places."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 0:
        return {"mean": float("nan"), "ci95": float("nan")}
    half = 1.96 * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return {"mean": round(float(arr.mean()), 4), "ci95": round(float(half), 4)}
