"""The target metrics (``target.metric``) and their statistics: the score of predictions, what the
majority predictor (or, for a number, the train mean) scores (chance), the bootstrap interval, and
the expected calibration error.

A metric knows its direction: accuracy, balanced accuracy, macro F1, ROC AUC and r2 are higher is
better; rmse and mae lower is better. Every comparison a decision makes goes through
:func:`better`, :func:`reaches`, :func:`gain_points` and :func:`oriented`, never ``>`` on the raw
values (docs/design.md, "Metrics and direction")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "REGRESSION",
    "LABELS",
    "is_regression",
    "higher_is_better",
    "oriented",
    "better",
    "best_of",
    "reaches",
    "gain_points",
    "shortfall_points",
    "target_text",
    "skill",
    "skill_of",
    "headroom_points",
    "regression_scores",
    "constant_score",
    "constant_baseline",
    "check_metric",
    "advice",
    "score",
    "chance_score",
    "prior_loss",
    "row_score",
    "bootstrap_interval",
    "metric_interval",
    "expected_calibration_error",
]

CLASSIFICATION = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
REGRESSION = ("rmse", "mae", "r2")  # a target metric of these makes the run a regression (a number to predict)
METRICS = CLASSIFICATION + REGRESSION
LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "roc_auc": "ROC AUC",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
    "skill": "skill",
}
LOWER_IS_BETTER = ("rmse", "mae")


def is_regression(metric: str) -> bool:
    """Whether ``metric`` is a regression metric (the run predicts a number)."""
    return metric in REGRESSION


def higher_is_better(metric: str) -> bool:
    """The metric's direction: False for rmse and mae (an error: lower is better)."""
    return metric not in LOWER_IS_BETTER


def oriented(metric: str, value: float) -> float:
    """``value`` on a higher-is-better scale (an error negated): the key to sort or max by."""
    return float(value) if higher_is_better(metric) else -float(value)


def better(metric: str, a: float, b: float, by: float = 0.0) -> bool:
    """Whether ``a`` is better than ``b`` by more than ``by`` (metric units) in the metric's direction."""
    return oriented(metric, a) > oriented(metric, b) + by


def best_of(metric: str, values: Any) -> float:
    """The best of ``values`` in the metric's direction (max, or min for an error)."""
    vals = [float(v) for v in values]
    return max(vals) if higher_is_better(metric) else min(vals)


def reaches(metric: str, value: float, target: float) -> bool:
    """Whether ``value`` meets ``target``: at or above it, or for an error at or below it."""
    return oriented(metric, value) >= oriented(metric, target)


def gain_points(metric: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old``, in points: for a fraction-valued metric (accuracy,
    r2, ...) 100 × the difference; for an error (rmse, mae) the percent by which it fell (an error
    has no fixed scale: 5 points is an rmse 5% lower). Negative when ``new`` is worse."""
    if higher_is_better(metric):
        return 100.0 * (float(new) - float(old))
    old = float(old)
    return 100.0 * (old - float(new)) / max(abs(old), 1e-12)


def shortfall_points(metric: str, best: float, target: float) -> float:
    """How far ``best`` is from ``target`` in points (:func:`gain_points` from best to target), 0 when met."""
    return max(0.0, gain_points(metric, target, best))


def headroom_points(metric: str, best: float) -> float:
    """The points a perfect model would add to ``best`` (1.0 for a fraction; an error of 0: 100)."""
    return max(0.0, gain_points(metric, 1.0 if higher_is_better(metric) else 0.0, best))


def target_text(metric: str, value: float) -> str:
    """The target as a person reads it: ``accuracy ≥ 0.9``, ``rmse ≤ 2.5``."""
    return f"{metric} {'≥' if higher_is_better(metric) else '≤'} {value:g}"


def skill(metric: str, value: float | None, scale: float) -> float | None:
    """A regression score on a higher-is-better, fraction-like scale (a skill score): an error
    (rmse, mae) as 1 − value / ``scale``, where ``scale`` is the error of predicting the train mean
    (0: no better than the mean; 1: perfect); r2 and any class metric as they are. Phase 3's
    detectors judge a regression on it, so their points are shares of the mean predictor's error."""
    if value is None or higher_is_better(metric):
        return value
    return 1.0 - float(value) / max(float(scale), 1e-12)


def skill_of(split_info: dict[str, Any], metric: str) -> Any:
    """The function value → :func:`skill` of a run (its split record: the mean predictor's val
    error is the scale); the identity for a class metric."""
    base = split_info.get("mean_predictor_val") if split_info.get("task") == "regression" else None
    if not base or higher_is_better(metric):
        return lambda v: v
    return lambda v: skill(metric, v, base[metric])


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """rmse, mae and r2 of predictions against numbers (one unit: the label's). r2 is 1 − SSE/SST
    about the mean of ``y`` (0 for a constant ``y``, where it is undefined)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    err = p - y
    sst = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1.0 - (err**2).sum() / sst) if sst > 0 else 0.0,
    }


def constant_baseline(metric: str, y: np.ndarray, constant: float, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """What predicting ``constant`` (the train mean) scores on ``y`` (r2: 0, by definition of a
    constant), and the noise of a val score here: the bootstrap standard deviation of that score
    over resamples of the rows. A regression that learned beats the first by more than the second."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return float("nan"), 0.0
    rng = np.random.default_rng(seed)
    vals = [constant_score(metric, y[i], constant) for i in rng.integers(0, len(y), (n, len(y)))]
    if metric == "r2":  # the noise of an r2 near 0: the spread of the squared error's share of the variance
        vals = [
            1.0 - v
            for v in (
                constant_score("rmse", y[i], constant) ** 2 / max(float(y[i].var()), 1e-12)
                for i in rng.integers(0, len(y), (n, len(y)))
            )
        ]
        return 0.0, float(np.std(vals))
    return constant_score(metric, y, constant), float(np.std(vals))


def constant_score(metric: str, y: np.ndarray, constant: float) -> float:
    """What predicting ``constant`` (the train mean) for every row scores on numbers ``y``: the bar a
    regression that learned must clear."""
    return regression_scores(y, np.full(len(np.asarray(y).reshape(-1)), float(constant)))[metric]


def check_metric(metric: str, num_classes: int) -> None:
    """Refuse a target metric the problem cannot have (ROC AUC of more than two classes), naming the
    field, what it is for and the choices that work. A regression (``num_classes`` 1) has its own
    metrics, checked by the config."""
    if num_classes == 1:
        return
    if metric == "roc_auc" and num_classes != 2:
        from trainkit.errors import ConfigError

        raise ConfigError(
            [
                (
                    "target.metric",
                    f"roc_auc is for two classes only; this data has {num_classes} classes. Use "
                    "balanced_accuracy or macro_f1 (or accuracy)",
                )
            ],
            "config",
        )


def advice(metric: str, counts: list[int] | np.ndarray, share: float = 0.8) -> str | None:
    """Phase 1's advice when the classes are imbalanced (the majority share ≥ ``share``) and the
    target is accuracy: predicting the majority everywhere already scores the share. None otherwise."""
    c = np.asarray(counts, dtype=np.float64)
    if metric != "accuracy" or c.sum() <= 0 or c.max() / c.sum() < share:
        return None
    p = c.max() / c.sum()
    alt = "roc_auc or balanced_accuracy" if len(c) == 2 else "balanced_accuracy or macro_f1"
    return (
        f"imbalanced classes: the majority class is {p:.0%} of the rows, so predicting it everywhere scores accuracy "
        f"{p:.3f}; set target.metric to {alt} so that the decisions can tell a model from that"
    )


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
    if is_regression(metric):  # probs: the predicted numbers, in the label's units
        return regression_scores(y, probs)[metric]
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
    :func:`bootstrap_interval`, which handles 0% and 100%). For a regression ``probs`` holds the
    predicted numbers."""
    if is_regression(metric):
        yf, pf = np.asarray(y, dtype=np.float64).reshape(-1), np.asarray(probs, dtype=np.float64).reshape(-1)
        rng = np.random.default_rng(seed)
        vals = [regression_scores(yf[i], pf[i])[metric] for i in rng.integers(0, len(yf), (n, len(yf)))]
        return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
    y = np.asarray(y, dtype=np.int64)
    if metric == "accuracy":
        return bootstrap_interval((np.asarray(probs).argmax(1) == y).astype(np.float64), n, seed)
    rng = np.random.default_rng(seed)
    vals = []
    for idx in rng.integers(0, len(y), (n, len(y))):
        vals.append(score(metric, y[idx], probs[idx]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def expected_calibration_error(
    probs: np.ndarray, y: np.ndarray, bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
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
        centre, half = (
            (p + z * z / (2 * m)) / (1 + z * z / m),
            z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m),
        )
        return [max(0.0, centre - half), min(1.0, centre + half)]
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
