"""The target metrics (``target.metric``) and their statistics: the score of predictions, what the
majority predictor scores (chance), the bootstrap interval, and the expected calibration error."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["METRICS", "LABELS", "check_metric", "advice", "score", "chance_score", "prior_loss", "row_score", "bootstrap_interval", "metric_interval",
           "expected_calibration_error"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "roc_auc": "ROC AUC"}


def check_metric(metric: str, num_classes: int) -> None:
    """Refuse a target metric the problem cannot have (ROC AUC of more than two classes), naming the
    field, what it is for and the choices that work."""
    if metric == "roc_auc" and num_classes != 2:
        from trainkit.errors import ConfigError

        raise ConfigError([("target.metric", f"roc_auc is for two classes only; this data has {num_classes} classes. Use "
                                             "balanced_accuracy or macro_f1 (or accuracy)")], "config")


def advice(metric: str, counts: list[int] | np.ndarray, share: float = 0.8) -> str | None:
    """Phase 1's advice when the classes are imbalanced (the majority share ≥ ``share``) and the
    target is accuracy: predicting the majority everywhere already scores the share. None otherwise."""
    c = np.asarray(counts, dtype=np.float64)
    if metric != "accuracy" or c.sum() <= 0 or c.max() / c.sum() < share:
        return None
    p = c.max() / c.sum()
    alt = "roc_auc or balanced_accuracy" if len(c) == 2 else "balanced_accuracy or macro_f1"
    return (f"imbalanced classes: the majority class is {p:.0%} of the rows, so predicting it everywhere scores accuracy "
            f"{p:.3f}; set target.metric to {alt} so that the decisions can tell a model from that")


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _auc(y: np.ndarray, p1: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; 0.5 when one class is absent (nothing to rank)."""
    pos, n = int(y.sum()), len(y)
    if pos in (0, n):
        return 0.5
    order = np.argsort(p1, kind="mergesort")
    ranks = np.empty(n, dtype=np.float64)
    sp = p1[order]
    # average ranks over ties
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * (n - pos)))


def score(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    """``metric`` of class probabilities ``probs`` (N×K) against labels ``y``. Balanced accuracy and
    macro F1 average over the classes present in ``y`` (sklearn's convention for recall; for F1 a
    class absent from both ``y`` and the predictions is left out)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    k = probs.shape[1]
    pred = probs.argmax(1)
    if metric == "accuracy":
        return float((pred == y).mean())
    if metric == "roc_auc":
        if k != 2:
            raise ValueError(f"target.metric roc_auc is for two classes only; this problem has {k}")
        return _auc(y, probs[:, 1])
    cm = _confusion(y, pred, k)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    if metric == "balanced_accuracy":
        present = support > 0
        return float((tp[present] / support[present]).mean())
    if metric == "macro_f1":
        used = (support + predicted) > 0
        return float((2 * tp[used] / (support[used] + predicted[used])).mean())
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def chance_score(metric: str, counts: list[int] | np.ndarray) -> float:
    """What predicting the majority class everywhere scores on a split with these class counts: the
    bar a model that learned must clear (accuracy: the majority share; balanced accuracy: 1/K over
    the classes present; macro F1: the majority class's F1 over K; ROC AUC: 0.5)."""
    c = np.asarray(counts, dtype=np.float64)
    n, present = c.sum(), int((c > 0).sum())
    if n <= 0 or present == 0:
        return 0.0
    p = c.max() / n
    if metric == "accuracy":
        return float(p)
    if metric == "balanced_accuracy":
        return 1.0 / present
    if metric == "macro_f1":
        return float(2 * p / (1 + p)) / present
    if metric == "roc_auc":
        return 0.5
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def prior_loss(train_counts: list[int] | np.ndarray, val_counts: list[int] | np.ndarray) -> float:
    """The val cross-entropy of the best constant predictor: the train class frequencies (smoothed
    by one row per class) for every val row. A model whose val loss is well below it has learned
    something beyond the class prior, whatever its accuracy (on 6% positives accuracy cannot
    beat the majority share, the loss can)."""
    tr = np.asarray(train_counts, dtype=np.float64) + 1.0
    va = np.asarray(val_counts, dtype=np.float64)
    if va.sum() <= 0:
        return float("nan")
    return float(-(va / va.sum() * np.log(tr / tr.sum())).sum())


def row_score(row: dict) -> float:
    """The target metric of an epoch record (``val_score``); records written before the metric
    was configurable carry only ``val_accuracy``."""
    v = row.get("val_score")
    return float(row["val_accuracy"] if v is None else v)


def metric_interval(metric: str, y: np.ndarray, probs: np.ndarray, n: int, seed: int) -> list[float]:
    """95% percentile-bootstrap interval of ``metric`` (accuracy goes through
    :func:`bootstrap_interval`, which handles 0% and 100%)."""
    y = np.asarray(y, dtype=np.int64)
    if metric == "accuracy":
        return bootstrap_interval((np.asarray(probs).argmax(1) == y).astype(np.float64), n, seed)
    rng = np.random.default_rng(seed)
    vals = []
    for idx in rng.integers(0, len(y), (n, len(y))):
        vals.append(score(metric, y[idx], probs[idx]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


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
