"""The reference detector, "a simpler model is not better": when the models a data scientist would
otherwise pick (a logistic regression, and for tables gradient-boosted trees, fitted by
:func:`trainkit.diagnostics.probes.reference_probe` on the same train rows) beat the network on val
by more than the noise, the network has headroom it has not reached. The gap, in points of the
target metric, is what the moves that close it can win: their expected gains are shares of it."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from trainkit.diagnostics.findings import (
    STANDARD_LR,
    THRESHOLDS,
    Finding,
    Recommendation,
    _dropout_rec,
    _learned,
    _tabm_rec,
    _tabm_wider_rec,
    _gap_to_target,
    _noise_points,
    _quiet,
    _recommend,
    _seed_probe_converged,
    best_score,
)

__all__ = ["detect_reference_gap", "sampling_points", "reference_predictions", "reference_regressions", "class_recall"]


def reference_regressions(
    x: np.ndarray, y: np.ndarray, xq: np.ndarray, tabular: bool, seed: int = 0
) -> list[tuple[str, np.ndarray, float]]:
    """A regression's reference models, fitted on ``(x, y)`` (y standardized): ridge regression,
    and for tables gradient-boosted trees. Per model: (name, predictions of ``xq``, seconds)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    models: dict[str, Any] = {"ridge": Ridge(alpha=1.0)}
    if tabular:
        models["boosted_trees"] = HistGradientBoostingRegressor(random_state=seed)
    return _fit_each(models, x, y, lambda model: np.asarray(model.predict(xq), dtype=np.float64))


def _fit_each(models: dict[str, Any], x: np.ndarray, y: np.ndarray, answer: Any) -> list[tuple[str, np.ndarray, float]]:
    """Fit each model on ``(x, y)`` and take ``answer(model)``: (name, answer, fit-and-predict seconds)."""
    out = []
    for name, model in models.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the score says how well it did
            model.fit(x, y)
            got = answer(model)
        out.append((name, got, round(time.perf_counter() - t0, 3)))
    return out


def reference_predictions(
    x: np.ndarray, y: np.ndarray, xq: np.ndarray, k: int, tabular: bool, seed: int = 0
) -> list[tuple[str, np.ndarray, float]]:
    """The reference models a data scientist would otherwise pick, fitted on ``(x, y)``: a logistic
    regression, and for tables gradient-boosted trees. Per model: (name, class probabilities of
    ``xq`` as ``(len(xq), k)``, fit-and-predict seconds); a class absent from ``y`` keeps 0."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    models: dict[str, Any] = {"logistic_regression": LogisticRegression(max_iter=1000)}
    if tabular:
        models["boosted_trees"] = HistGradientBoostingClassifier(random_state=seed)

    def probs(model: Any) -> np.ndarray:
        p = np.zeros((len(xq), k))
        p[:, model.classes_] = model.predict_proba(xq)
        return p

    return _fit_each(models, x, y, probs)


def class_recall(y: np.ndarray, pred: np.ndarray, k: int) -> list[float | None]:
    """Recall of each of ``k`` classes (None for a class with no row in ``y``)."""
    support = np.bincount(y, minlength=k)
    hits = np.bincount(y[pred == y], minlength=k)
    return [None if n == 0 else float(h / n) for h, n in zip(hits, support)]


NAMES = {  # each one model, so sentences read "the gradient-boosted trees model is ... ahead"
    "logistic_regression": "logistic regression",
    "boosted_trees": "gradient-boosted trees model",
    "ridge": "ridge regression",
}


def sampling_points(p: float, n: int) -> float:
    """Two binomial standard errors (points) of a score near ``p`` on ``n`` val rows: below this a
    difference between two models on the same rows is not told from the luck of the split."""
    if n <= 0:
        return math.inf
    q = min(max(p, 0.02), 0.98)
    return 200 * math.sqrt(q * (1 - q) / n)


def detect_reference_gap(evidence: dict[str, Any]) -> Finding:
    ref = evidence["probes"].get("reference") or {}
    if "models" not in ref:
        return _quiet(
            "reference_gap", f"not judged: the reference models did not run ({ref.get('error', 'no result')})"
        )
    if not evidence.get("best") or not _learned(evidence):
        return _quiet("reference_gap", "not judged: the network has not learned (see nan_loss / convergence_stall)")
    net = best_score(evidence)
    top_name = ref["best"]
    top = float(ref["models"][top_name].get("val_score", ref["models"][top_name]["val_accuracy"]))
    gap = 100 * (top - net)
    seeds = _noise_points(evidence) if _seed_probe_converged(evidence) else THRESHOLDS["min_noise_points"]
    luck = sampling_points(max(top, net), int(ref.get("val_rows") or 0))
    noise = max(seeds, luck)
    numbers = {
        "reference": top_name,
        "reference_val_score": round(top, 4),
        "network_val_score": round(net, 4),
        "gap_points": round(gap, 2),
        "noise_points": round(noise, 2),
        "seed_noise_points": round(seeds, 2),
        "sampling_points": round(luck, 2),
        "val_rows": ref.get("val_rows"),
        "metric": ref.get("metric", "accuracy"),
        "leads": bool(gap > noise and _gap_to_target(evidence) > 0),
        # boosted trees and the network, fitted on the same rows, stop at the same level (within the
        # noise) and short of the target by more than the noise: the rows cap both (detect_all)
        "level_short_of_target": bool(
            "boosted_trees" in ref["models"] and abs(gap) <= noise and 100 * (evidence["target"] - top) > noise
        ),
    }  # architecture moves first (plan_recommendations)
    if gap > noise and _gap_to_target(evidence) <= 0:
        return Finding(
            "reference_gap",
            False,
            0.0,
            f"the {NAMES.get(top_name, top_name)} is {gap:.1f} points ahead, but the "
            "target is met: headroom, not a shortfall",
            numbers,
            {"min_noise_points": THRESHOLDS["min_noise_points"]},
        )
    if gap <= noise:
        why = (
            f"the network ({net:.3f}) is at or above the best reference ({NAMES.get(top_name, top_name)} {top:.3f})"
            if gap <= 0
            else f"the {NAMES.get(top_name, top_name)} is {gap:.1f} points ahead, within the noise "
            f"({noise:.1f} points: seeds {seeds:.1f}, {ref.get('val_rows')} val rows {luck:.1f}): inconclusive"
        )
        return Finding("reference_gap", False, 0.0, why, numbers, {"min_noise_points": THRESHOLDS["min_noise_points"]})
    f = Finding(
        "reference_gap",
        True,
        min(1.0, gap / 20),
        f"the {NAMES.get(top_name, top_name)} scores {top:.3f} on val against the network's {net:.3f}: {gap:.1f} "
        f"points of headroom on the same rows, beyond the noise ({noise:.1f} points): the model family or its "
        "capacity",
        numbers,
        {"min_noise_points": THRESHOLDS["min_noise_points"]},
        strength=gap / noise,
        cause="model_family",
    )
    # strength in units of the noise; a cause of the network's own still comes first (detect_all)
    f.recommendations = _moves(evidence, gap)
    return f


def _moves(evidence: dict[str, Any], gap: float) -> list[Recommendation]:
    """The moves that close a gap to a simpler model, each expected to win a share of it."""
    cfg, h = evidence["config"], evidence.get("history") or []
    name, kw = cfg["model"]["name"], dict(cfg["model"]["kwargs"])
    out: list[Recommendation] = _architecture_moves(name, kw, gap, evidence)
    if name == "mlp":
        out += _mlp_moves(kw, gap)
    out += [
        replace(r, id="ref_dropout")
        for r in _dropout_rec(
            "reference_gap",
            cfg,
            "regularization lets a wider network reach the reference without memorizing",
            0.15 * gap,
        )
    ]
    opt, sched = cfg["optimizer"]["name"], cfg["schedule"]["name"]
    if opt != "adamw" or sched != "cosine":
        patch: dict[str, Any] = {
            "optimizer.name": "adamw",
            "schedule.name": "cosine",
            "optimizer.weight_decay": max(0.01, float(cfg["optimizer"].get("weight_decay") or 0.0)),
        }
        if opt == "sgd":
            patch["optimizer.lr"] = STANDARD_LR["adamw"]
        out.append(
            _recommend(
                "reference_gap",
                "ref_adamw_cosine",
                "AdamW (weight decay 0.01) with a cosine schedule",
                patch,
                "the standard recipe for tables: decoupled weight decay, and a decaying LR that settles in a minimum",
                0.3 * gap,
                1,
            )
        )
    epochs = cfg["training"]["epochs"]
    best_epoch = (evidence.get("best") or {}).get("epoch", 0)
    late = bool(h) and best_epoch >= len(h) - 3
    longer = {"training.epochs": 2 * epochs}
    if cfg["training"].get("patience") is not None:
        longer["training.patience"] = max(10, 2 * int(cfg["training"]["patience"]))
    out.append(
        _recommend(
            "reference_gap",
            "ref_longer",
            f"Train longer: {epochs} → {2 * epochs} epochs",
            longer,
            "the best epoch was near the end" if late else "more steps at the same settings",
            (0.25 if late else 0.1) * gap,
            2,
            best_epoch=best_epoch + 1,
        )
    )
    return out


def _mlp_moves(kw: dict[str, Any], gap: float) -> list[Recommendation]:
    """A plain MLP behind the reference: wider layers, batch normalization."""
    out: list[Recommendation] = []
    hidden = [min(1024, 2 * int(w)) for w in kw.get("hidden", [128])] or [128]
    if len(hidden) < 2:
        hidden = hidden + [hidden[-1]]
    out.append(
        _recommend(
            "reference_gap",
            "ref_capacity",
            f"Wider MLP: hidden {hidden}",
            {"model.kwargs": {**kw, "hidden": hidden}},
            "the reference fits structure (interactions, thresholds) a small network cannot hold",
            0.4 * gap,
            1,
            current_hidden=kw.get("hidden", [128]),
        )
    )
    if not kw.get("batch_norm"):
        out.append(
            _recommend(
                "reference_gap",
                "ref_batch_norm",
                "Batch normalization in the MLP",
                {"model.kwargs": {**kw, "batch_norm": True}},
                "normalized hidden layers train faster and more evenly on mixed-scale table inputs",
                0.2 * gap,
                1,
            )
        )
    return out


def _architecture_moves(name: str, kw: dict[str, Any], gap: float, evidence: dict[str, Any]) -> list[Recommendation]:
    """The first moves against a reference that wins: the tabular family (TabM, for a table whose
    network is something else) or, for TabM itself, numeric embeddings, width and depth."""
    shape = evidence.get("input_shape") or []
    if name != "tabm" and len(shape) == 1 and ":" not in name:
        return [
            _tabm_rec(
                "reference_gap",
                "ref_tabm",
                "piecewise-linear embeddings represent thresholds and the ensemble "
                "averages out a single network's variance: the structure boosted trees find",
                0.6 * gap,
                current=name,
            )
        ]
    if name != "tabm":
        return []
    out = []
    if kw.get("embeddings", "piecewise") == "none":
        out.append(
            _recommend(
                "reference_gap",
                "ref_embeddings",
                "Piecewise-linear embeddings of the inputs",
                {"model.kwargs": {**kw, "embeddings": "piecewise"}},
                "a number's threshold is a step for a tree and a bend for embeddings, not for a plain linear layer",
                0.4 * gap,
                1,
            )
        )
    elif int(kw.get("n_bins", 16)) < 48:
        bins = min(48, 2 * int(kw.get("n_bins", 16)))
        out.append(
            _recommend(
                "reference_gap",
                "ref_bins",
                f"Finer embeddings: {kw.get('n_bins', 16)} → {bins} bins",
                {"model.kwargs": {**kw, "n_bins": bins}},
                "finer bins place a threshold closer to where the trees put it",
                0.25 * gap,
                1,
            )
        )
    out += _tabm_wider_rec("reference_gap", "ref_width", kw, "more units per block hold more interactions", 0.3 * gap)
    depth = int(kw.get("n_blocks", 2))
    if depth < 4:
        out.append(
            _recommend(
                "reference_gap",
                "ref_depth",
                f"Deeper TabM: {depth} → {depth + 1} blocks",
                {"model.kwargs": {**kw, "n_blocks": depth + 1}},
                "another block composes interactions of interactions",
                0.2 * gap,
                1,
            )
        )
    return out
