"""Test-metric statistics for Phase 5: the bootstrap interval of an accuracy and the expected
calibration error."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["bootstrap_interval", "expected_calibration_error"]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins, and the per-bin (confidence, accuracy, count) rows."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece, rows = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc, c = float((pred[m] == y[m]).mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            rows.append({"lo": float(lo), "hi": float(hi), "confidence": c, "accuracy": acc, "count": int(m.sum())})
    return float(ece), rows


def bootstrap_interval(correct: np.ndarray, n: int, seed: int) -> list[float]:
    """95% percentile-bootstrap interval of the accuracy. At 0% or 100% every resample is identical
    and the bootstrap collapses to a point; there the Wilson score interval is used instead (100%
    of 180 val samples is [0.979, 1], not [1, 1])."""
    k, m = float(correct.sum()), len(correct)
    if m and k in (0.0, float(m)):
        z, p = 1.96, k / m
        centre, half = (p + z * z / (2 * m)) / (1 + z * z / m), z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
        return [max(0.0, centre - half), min(1.0, centre + half)]
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
