"""The reference models beside the final network at the production gate: a logistic regression and
gradient-boosted trees (tables only), fitted on the train and val rows Phase 5's model saw and
scored on the same test rows, class by class. When the per-class recall floor fails, the person
signing sees whether any model does better on those classes (the floor stays)."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainkit._io import md_text

__all__ = ["reference_recall", "floor_evidence", "target_evidence", "recall_table"]

NAMES = {"logistic_regression": "logistic regression", "boosted_trees": "boosted trees"}
MAX_ROWS = 20000  # the references' training rows at most (a seeded sample beyond)


def reference_recall(bundle: Any, xt: np.ndarray, yt: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Per-class test recall (and accuracy) of each reference
    (:func:`trainkit.diagnostics.reference.reference_predictions`), fitted on the train+val rows of a
    table (``(N, F)`` inputs); ``{}`` for images and signals."""
    from trainkit.diagnostics.reference import class_recall, reference_predictions
    from trainkit.folds import refit_view

    if xt.ndim != 2:
        return {}
    x, y = (t.numpy() for t in refit_view(bundle).arrays("train"))  # each train and val row once
    if len(x) > MAX_ROWS:
        pick = np.random.default_rng(seed).choice(len(x), MAX_ROWS, replace=False)
        x, y = x[pick], y[pick]
    out: dict[str, Any] = {}
    for name, probs, seconds in reference_predictions(x, y, xt, bundle.num_classes, True, seed):
        pred = probs.argmax(1)
        out[name] = {
            "accuracy": float((pred == yt).mean()),
            "seconds": seconds,
            "recall": class_recall(yt, pred, bundle.num_classes),
        }
    return out


def floor_evidence(rec: dict[str, Any], low: list[dict[str, Any]]) -> str:
    """What the references recall of the classes under the floor, for the gate's evidence."""
    peers = rec.get("reference_recall") or {}
    if not peers or not low:
        return ""
    names = [c["class"] for c in rec["per_class"]]
    parts = []
    for c in low:
        k = names.index(c["class"])
        best = max((p["recall"][k] or 0.0, n) for n, p in peers.items())
        parts.append(
            f"{c['class']}: network {c['recall']:.3f}, best reference {best[0]:.3f} ({NAMES.get(best[1], best[1])})"
        )
    beaten = any(max(p["recall"][names.index(c["class"])] or 0.0 for p in peers.values()) > c["recall"] for c in low)
    return (
        "; per-class test recall beside the references fitted on the same rows: "
        + "; ".join(parts)
        + ("" if beaten else " (no reference does better on these classes)")
    )


def _peer_scores(rec: dict[str, Any], metric: str) -> dict[str, float]:
    """Each reference's test value of ``metric`` where the record holds it: accuracy, balanced
    accuracy (the mean of the class recalls) or, for a regression, any of its errors and r2."""
    if rec.get("regression"):
        return {n: float(p[metric]) for n, p in (rec.get("reference_test") or {}).items() if metric in p}
    out = {}
    for n, p in (rec.get("reference_recall") or {}).items():
        if metric == "accuracy":
            out[n] = float(p["accuracy"])
        elif metric == "balanced_accuracy" and p.get("recall"):
            seen = [r for r in p["recall"] if r is not None]
            if seen:
                out[n] = float(np.mean(seen))
    return out


def target_evidence(rec: dict[str, Any], metric: str, target: float) -> str:
    """For a missed target, the references' test value of the same metric on the same test rows
    (fitted on the same train+val rows), so the person signing sees whether any model reaches it:
    when none does, the target asks more than these rows give."""
    from trainkit.metrics import oriented, reaches

    peers = _peer_scores(rec, metric)
    if not peers:
        return ""
    best = max(peers.items(), key=lambda kv: oriented(metric, kv[1]))
    listed = ", ".join(f"{NAMES.get(n, n)} {v:.4f}" for n, v in peers.items())
    verdict = (
        f"the {NAMES.get(best[0], best[0])} reaches it: the network's family falls short"
        if reaches(metric, best[1], target)
        else "no reference reaches it either: the target asks more than these rows give"
    )
    return f"; the references fitted on the same train+val rows score {listed} on these test rows ({verdict})"


def recall_table(rec: dict[str, Any]) -> list[str]:
    """Markdown rows: each class's test recall for the network and each reference."""
    peers = rec.get("reference_recall") or {}
    if not peers:
        return []
    head = " | ".join(NAMES.get(n, n) for n in peers)
    rows = [
        "",
        "Per-class test recall beside the reference models (fitted on the same train+val rows):",
        "",
        f"| class | network | {head} |",
        "|---|---:|" + "---:|" * len(peers),
    ]
    for k, c in enumerate(rec["per_class"]):
        vals = " | ".join("—" if p["recall"][k] is None else f"{p['recall'][k]:.3f}" for p in peers.values())
        rows.append(f"| {md_text(c['class'])} | {c['recall']:.3f} | {vals} |")
    acc = " | ".join(f"{p['accuracy']:.3f}" for p in peers.values())
    return rows + [f"| (accuracy) | {rec['accuracy']:.3f} | {acc} |"]
