"""Robust summaries of repeated timings: medians and percentiles, never one run.

The build machines are shared, so a single time says little; the median and
the p10–p90 spread over repeats say how much to trust it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict:
    """{"median", "p10", "p90", "min", "max", "n"} of the values."""
    if not len(values):
        raise ValueError("summarize() needs at least one value")
    v = np.asarray(values, dtype=np.float64)
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return {"median": float(med), "p10": float(p10), "p90": float(p90),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
