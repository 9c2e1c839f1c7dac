"""Small data: k-fold cross-validation over train+val instead of one small val split.

When the val split has fewer than :data:`SMALL_VAL_ROWS` rows, one row moves val accuracy by half
a point or more and the seed spread is larger than most gains worth judging. Phase 4 then
compares candidates fold for fold (fold *i* of train+val, stratified, with seed *i*), never on the
test rows, and Phase 5 trains the final model on train+val for the epoch count the folds chose
(the median over folds of the epoch with the lowest val loss). The test split stays quarantined throughout.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Sequence

import numpy as np
from trainkit.run import BASELINE_SEEDS_JSON, BEST_JSON

__all__ = [
    "SMALL_VAL_ROWS",
    "MAX_FOLDS",
    "plan_for",
    "plan_if_small",
    "fold_view",
    "refit_view",
    "chosen_epochs",
    "RULE",
    "known_fold_runs",
    "folds_estimate",
    "fold_metric",
    "run_folds",
    "plan_refit",
    "refit_epochs",
    "TABLE_RULE",
]

SMALL_VAL_ROWS = 200  # one row moves val accuracy by half a point or more; 2 standard errors at 90% exceed 4 points
MAX_FOLDS = 5
RULE = (
    f"val split under {SMALL_VAL_ROWS} rows: comparisons use stratified k-fold cross-validation over train+val "
    f"(k = {MAX_FOLDS}, fewer when a class of at least 2 rows has fewer), never the test rows; the final "
    "model trains on train+val for the median over folds of the epoch with the lowest val loss"
)


TABLE_RULE = (
    "a table whose val split is not small: the final config trains on train with early stopping on val (selection/: "
    "the val numbers), then the final model trains on train+val for that run's epochs to its best val epoch, scaled "
    "by the rows (benchmarks/refit_gain.py)"
)


def refit_epochs(best_epoch: int, n_train: int, n_val: int) -> int:
    """Epochs for a refit on train+val: an early-stopped run's epochs to its best (``best_epoch``
    counts from 0), scaled by the rows it will see per epoch, (train + val) / train."""
    return max(1, round((int(best_epoch) + 1) * (n_train + n_val) / max(1, n_train)))


def plan_for(bundle: Any) -> dict[str, Any] | None:
    """The fold plan when the val split is small (None otherwise): k, the rows, the rule."""
    n_val = len(bundle.splits["val"])
    if n_val >= SMALL_VAL_ROWS:
        return None
    idx = _pool(bundle)
    counts = np.bincount(_labels(bundle, idx), minlength=bundle.num_classes)
    # k is at most the smallest class, so that every fold's val holds every class; a class of one
    # row is in one fold's val whatever k is, and does not cut every fold's train down to half
    split = counts[counts >= 2]
    k = int(min(MAX_FOLDS, max(2, split.min() if len(split) else 2)))
    return {
        "k": k,
        "val_rows": int(n_val),
        "rows": int(len(idx)),
        "one_row_points": round(100 / max(1, n_val), 2),
        "rule": RULE,
    }


def plan_if_small(splits: dict[str, Any] | None, load: Any) -> tuple[dict[str, Any] | None, Any]:
    """(fold plan, the data) from Phase 1's split record, loading the data (``load()``) only when
    the record says the val split is small; (None, None) otherwise."""
    if ((splits or {}).get("sizes") or {}).get("val", SMALL_VAL_ROWS) >= SMALL_VAL_ROWS:
        return None, None
    data = load()
    return plan_for(data), data


def _pool(bundle: Any) -> np.ndarray:
    """The rows of train, then those of val not in train: each row once (a refit view's train
    already holds val), in the order the folds are drawn from."""
    idx = np.concatenate([np.asarray(bundle.splits["train"]), np.asarray(bundle.splits["val"])])
    return idx[np.sort(np.unique(idx, return_index=True)[1])]


def _labels(bundle: Any, idx: np.ndarray) -> np.ndarray:
    """What the folds are stratified on: the classes, or a regression label's deciles."""
    import torch

    y = (bundle.labels if bundle.labels is not None else bundle.source.y)[torch.as_tensor(idx)].numpy()
    if getattr(bundle, "regression", False):  # a number: folds stratified on its deciles
        edges = np.unique(np.quantile(y, np.linspace(0, 1, 11)[1:-1]))
        return np.searchsorted(edges, y, side="right")
    return y


def fold_view(bundle: Any, i: int, k: int, seed: int = 0) -> Any:
    """The same data with fold ``i`` of ``k`` (stratified over train+val) as val and the rest as train;
    the test split is untouched (and still quarantined)."""
    from sklearn.model_selection import StratifiedKFold

    idx = _pool(bundle)
    y = _labels(bundle, idx)
    with warnings.catch_warnings():  # a class of one row is val in one fold and train in the others, as planned
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        tr, va = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y))[i % k]
    view = copy.copy(bundle)
    view.splits = dict(bundle.splits, train=np.sort(idx[tr]), val=np.sort(idx[va]))
    return view


def refit_view(bundle: Any) -> Any:
    """Train on train+val (val is still evaluated each epoch, as a monitor of rows it trains on)."""
    view = copy.copy(bundle)
    view.splits = dict(bundle.splits, train=np.sort(_pool(bundle)))
    return view


def chosen_epochs(rows: Sequence[dict[str, Any]]) -> int | None:
    """The epoch count the folds chose: the median over folds of the epoch (1-based) with the
    lowest val loss (a small val split's accuracy plateaus early and would pick the first epoch
    that reached it), else of the best epoch."""
    best = []
    for r in rows:
        h = [e for e in r.get("history") or [] if np.isfinite(e.get("val_loss", np.nan))]
        if h:
            best.append(min(range(len(h)), key=lambda i: h[i]["val_loss"]) + 1)
        elif r.get("best_epoch") is not None:
            best.append(int(r["best_epoch"]) + 1)
    return int(np.median(best)) if best else None


def known_fold_runs(run_dir: Any) -> tuple[list[dict[str, Any]], str] | None:
    """The fold runs Phase 4 made of the config being finalized: the adopted best's (``best.json``),
    else the baseline's; None when Phase 4 ran no folds."""
    from pathlib import Path

    from trainkit._io import read_json
    from trainkit.run import COMPARISON, Phase

    run_dir = Path(run_dir)
    if (run_dir / BEST_JSON).is_file():
        label = read_json(run_dir / BEST_JSON)["label"]
        cmp_path = run_dir / label / COMPARISON
        if cmp_path.is_file():
            cmp = read_json(cmp_path)
            if cmp.get("folds"):
                return [_with_history(run_dir, r) for r in cmp["candidate"]], label
        return None
    cache = run_dir / Phase.OPTIMIZATION.value / BASELINE_SEEDS_JSON
    if cache.is_file():
        rec = read_json(cache)
        if ":folds-" in str(rec.get("config_hash")) and rec.get("runs"):
            return [
                _with_history(run_dir, rec["runs"][k]) for k in sorted(rec["runs"], key=int)
            ], "the baseline's fold runs (Phase 4)"
    return None


def _with_history(run_dir: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A fold run's row with its per-epoch val losses (from its train_summary.json when it was saved)."""
    from trainkit._io import read_json
    from trainkit.run import TRAIN_SUMMARY

    if row.get("history") or not row.get("dir"):
        return row
    p = run_dir / row["dir"] / TRAIN_SUMMARY
    hist = (read_json(p).get("history") or []) if p.is_file() else []
    return dict(row, history=[{"epoch": h["epoch"], "val_loss": h["val_loss"]} for h in hist])


def run_folds(cfg: Any, bundle: Any, plan: dict[str, Any], allows: Any = None) -> list[dict[str, Any]]:
    """Fit ``cfg`` on each fold (seed s0 + i on fold i), while ``allows(seconds, what)`` lets the next start."""
    import time

    from trainkit.config import with_overrides
    from trainkit.metrics import row_score
    from trainkit.train import fit

    rows: list[dict[str, Any]] = []
    s0, each = cfg.training.seed, 0.0
    for i in range(plan["k"]):
        if allows is not None and rows and not allows(each, f"fold {i + 1} of {plan['k']} (epochs for the refit)"):
            break
        t0 = time.perf_counter()
        r = fit(
            with_overrides(cfg, {"training.seed": s0 + i}),
            fold_view(bundle, i, plan["k"], seed=s0),
            None,
            progress=False,
        )
        each = time.perf_counter() - t0
        rows.append(
            {
                "seed": s0 + i,
                "status": r.status,
                "best_val_accuracy": (r.best or {}).get("val_accuracy"),
                "best_val_score": row_score(r.best) if r.best else None,
                "best_epoch": (r.best or {}).get("epoch"),
                "history": [{"epoch": h["epoch"], "val_loss": h["val_loss"]} for h in r.history],
            }
        )
    return rows


def plan_refit(
    run_dir: Any, splits: dict[str, Any] | None, cfg: Any, bundle: Any, allows: Any = None
) -> dict[str, Any] | None:
    """Phase 5 on small data: the refit record (k, the epoch count, where the fold runs came from,
    a one-line summary for the reports), or None when the val split is not small. ``bundle`` is a
    callable that loads the data (only called when the val split is small)."""
    plan, data = plan_if_small(splits, bundle)
    if plan is None:
        return None
    known = known_fold_runs(run_dir)
    rows, source = known if known else (run_folds(cfg, data, plan, allows), "folds run in Phase 5")
    epochs = chosen_epochs(rows)
    if epochs is None:
        return None
    return dict(
        plan,
        folds_used=len(rows),
        epochs=epochs,
        source=source,
        fold_runs=rows,
        summary=(
            f"trained on train+val ({plan['rows']} rows) for {epochs} epochs, the median lowest-val-loss epoch of "
            f"{len(rows)} folds "
            f"({source}); its val rows are training rows, so the val accuracy below estimates nothing: the folds' and "
            "the "
            "test's do"
        ),
    )


def folds_estimate(refit: dict[str, Any], metric: str = "accuracy") -> dict[str, Any] | None:
    """Small data's val numbers for Phase 5's record (``refit``, :func:`plan_refit`'s): the final model
    trained on the val rows, so its own val numbers estimate nothing; the folds' cross-validated
    estimate does (each train+val row is val in one fold). Per number: the mean over the folds of
    their best val value, with a 95% interval of ±1.96 standard errors of their spread; an accuracy's
    at least a proportion's over the ``refit["rows"]`` rows, a regression's ``metric`` (rmse, mae,
    r2, in the label's units) within its range. None without two folds that scored."""
    regression = metric in ("rmse", "mae", "r2")
    key = fold_metric if regression else (lambda r: r.get("best_val_accuracy"))
    rows = [r for r in refit.get("fold_runs") or [] if key(r) is not None]
    if not refit.get("k") or len(rows) < 2:
        return None
    source = f"the {len(rows)} folds' cross-validated estimate, since the final model trained on the val rows"

    def estimate(values: list[float], floor: bool = True) -> tuple[float, list[float]]:
        m = float(np.mean(values))
        se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
        half = 1.96 * (max(se, _binomial_se(m, refit["rows"])) if floor else se)
        lo, hi = m - half, m + half
        if regression:  # errors are never negative, R² never above 1
            return m, [max(0.0, lo) if metric != "r2" else lo, min(1.0, hi) if metric == "r2" else hi]
        return m, [max(0.0, lo), min(1.0, hi)]

    if regression:
        score = estimate([float(fold_metric(r)) for r in rows], floor=False)
        return {"val_score": score[0], "val_score_ci": score[1], "val_source": source}
    acc = estimate([float(r["best_val_accuracy"]) for r in rows])
    scores = [fold_metric(r) for r in rows]
    score = estimate([float(v) for v in scores]) if all(v is not None for v in scores) else acc
    return {
        "val_accuracy": acc[0],
        "val_accuracy_ci": acc[1],
        "val_score": score[0],
        "val_score_ci": score[1],
        "val_source": source,
    }


def fold_metric(row: dict[str, Any]) -> float | None:
    """A fold run's best val value of the target metric: Phase 4's rows keep it in
    ``best_val_metric`` (their ``best_val_score`` is what Phase 4 compares: a regression's skill),
    Phase 5's in ``best_val_score``."""
    v = row.get("best_val_metric")
    return v if v is not None else row.get("best_val_score")


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(1, n))
