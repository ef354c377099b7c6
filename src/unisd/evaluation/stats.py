"""Confidence intervals and paired comparisons for per-item scores.

Every reported number carries n and a 95% interval. The bootstrap here resamples items (the
unit that varies between benchmark draws); it is seeded, so a report rebuilt anywhere gives
the same interval. It does not pool across seeds: `paired_bootstrap` compares two systems on
the same items.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_ci(values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> dict[str, float]:
    """Mean with a percentile-bootstrap interval: {"mean", "lo", "hi", "n"}. Empty input gives
    NaNs and n=0 rather than an error, so an empty split is visible in a table."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {"mean": float(x.mean()), "lo": float(np.quantile(boots, alpha)),
            "hi": float(np.quantile(boots, 1 - alpha)), "n": int(x.size)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 5000, seed: int = 0
                     ) -> dict[str, float]:
    """Difference of means a - b on the same items, with a 95% interval and the one-sided
    bootstrap probability that the difference is <= 0."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired comparison needs the same items: {x.shape} vs {y.shape}")
    diff = x - y
    ci = mean_ci(diff, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 1)
    boots = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    return {"diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"],
            "p_not_better": float((boots <= 0).mean())}
