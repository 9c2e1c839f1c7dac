"""The data-quality detector: leakage, duplicates, non-finite inputs, label noise, imbalance,
near-duplicates across splits and constant features, each judged on its own and ranked by strength."""

from __future__ import annotations

from typing import Any

from trainkit.diagnostics.findings import (
    INFRA_STRENGTH,
    THRESHOLDS,
    Finding,
    Recommendation,
    _dropout_rec,
    _headroom,
    _label_noise,
    _quiet,
    _recommend,
    _smoothing_rec,
    _thresholds,
)
from trainkit.run import EXCLUDE_JSON, EXCLUDE_LABELS_JSON

__all__ = ["detect_data_quality"]


def detect_data_quality(evidence: dict[str, Any]) -> Finding:
    """Each data problem judged on its own numbers; the strongest named as the cause."""
    d = evidence["probes"].get("data") or {}
    label_probe = evidence["probes"].get("label_issues") or {}
    if not d:
        return _quiet("data_quality", "data probe did not run")
    n = _numbers(evidence, d, label_probe)
    problems = _problems(n, d)
    found = [k for k, v in problems.items() if v]
    strengths = _strengths(n)
    leak_rows = sorted(set(n["leaked"]) | set(n["dups"]))
    record = {
        "problems": found,
        "leaked_train_samples": len(n["leaked"]),
        "duplicates_within_train": len(n["dups"]),
        "label_issues_flagged": len(n["flagged"]),
        "label_probe": label_probe.get("verdict", "did not run"),
        "label_noise_rate": label_probe.get("noise_rate"),
        "label_noise_rate_ci": label_probe.get("noise_rate_ci"),
        "label_probe_inconclusive": label_probe.get("inconclusive"),
        "smallest_class_count": n["per_class"],
        "imbalance_ratio": n["ratio"],
        "val_recall_per_class": n["recall"].get("recall"),
        "min_class_recall": n["min_rec"],
        "mean_class_recall": n["mean_rec"],
        "constant_features": d.get("constant_features"),
        "features": n["feats"],
        "non_finite_values": d.get("non_finite_values"),
        "near_duplicate_val_fraction": round(n["near_frac"], 4),
        "phase1_duplicates": d.get("duplicates"),
        "exclude_indices": leak_rows,
        "leaky_columns": n["leaky_cols"],
        "constant_columns": n["table"].get("constant_columns"),
        "unseen_categories": n["unseen"],
        "label_exclude_indices": sorted(set(n["flagged"]) | set(leak_rows)) if problems["label_issues"] else [],
    }
    infra = problems["leakage"] or problems["non_finite"]
    f = Finding(
        "data_quality",
        bool(found),
        1.0 if infra else min(1.0, 4 * n["noise"]),
        "; ".join(found) or "no data problem found",
        record,
        _thresholds(
            "label_noise_rate",
            "label_min_kappa",
            "label_max_shortfall",
            "near_duplicate_fraction",
            "imbalance_ratio",
            "constant_feature_fraction",
            "min_per_class",
        ),
        infrastructure=infra,
        strength=max((strengths[k] for k in found), default=0.0),
        cause=max(found, key=lambda k: strengths[k]) if found else "",
    )
    f.recommendations += _moves(evidence, n, problems, leak_rows, d)
    return f


def _numbers(evidence: dict[str, Any], d: dict[str, Any], label_probe: dict[str, Any]) -> dict[str, Any]:
    """What the data and label probes measured, in the units the problems are judged in."""
    recall = evidence["probes"].get("per_class") or {}
    min_rec, mean_rec = recall.get("min_recall"), recall.get("mean_recall")
    table = d.get("table") or {}  # a table's checks by column name (none for arrays and images)
    unseen = table.get("unseen_categories") or {}
    return {
        "leaked": d.get("leaked_train_indices", []),
        "dups": d.get("duplicate_train_indices", []),
        "flagged": label_probe.get("flagged", []),
        "feats": d.get("features") or 0,
        "near_frac": d.get("near_duplicates_train_val", 0) / max(1, evidence.get("val_size", 1)),
        "per_class": min(d.get("class_counts_train") or [0]),
        "noise": _label_noise(evidence),
        "recall": recall,
        "min_rec": min_rec,
        "mean_rec": mean_rec,
        "ratio": d.get("imbalance_ratio", 1.0),
        "ci": label_probe.get("noise_rate_ci") or [0.0, 0.0],
        "table": table,
        "leaky_cols": list(table.get("leaky_columns") or []),
        "unseen": unseen,
        "unseen_frac": max([u["fraction"] for u in unseen.values()] or [0.0]),
        "minority_hurt": min_rec is not None
        and mean_rec is not None
        and min_rec < THRESHOLDS["minority_recall_ratio"] * mean_rec,
    }


def _problems(n: dict[str, Any], d: dict[str, Any]) -> dict[str, bool]:
    reliable = n["per_class"] >= THRESHOLDS["min_per_class"]
    return {
        "leakage": len(n["leaked"]) > 0,
        "non_finite": d.get("non_finite_values", 0) > 0,
        "label_issues": reliable and n["noise"] >= THRESHOLDS["label_noise_rate"] and bool(n["flagged"]),
        "imbalance": reliable and n["ratio"] >= THRESHOLDS["imbalance_ratio"],
        "near_duplicates": n["near_frac"] >= THRESHOLDS["near_duplicate_fraction"],
        "constant_features": n["feats"] > 0
        and d.get("constant_features", 0) / n["feats"] >= THRESHOLDS["constant_feature_fraction"],
        "leaky_column": bool(n["leaky_cols"]),
        "unseen_categories": n["unseen_frac"] >= THRESHOLDS["unseen_category_fraction"],
    }


def _strengths(n: dict[str, Any]) -> dict[str, float]:
    """Each problem's strength in units of its threshold (the ranking key; infrastructure first)."""
    ci, t = n["ci"], THRESHOLDS
    return {
        "leakage": INFRA_STRENGTH,
        "non_finite": INFRA_STRENGTH,
        "label_issues": n["noise"] / max(t["label_noise_rate"], (ci[1] - ci[0]) / 2 if len(ci) == 2 else 0.0),
        "imbalance": (n["ratio"] / t["imbalance_ratio"])
        * (1.0 if n["minority_hurt"] else t["imbalance_unhurt_weight"]),
        "near_duplicates": n["near_frac"] / t["near_duplicate_fraction"] * t["near_duplicate_weight"],
        "constant_features": t["constant_feature_strength"],
        "leaky_column": t["leaky_column_strength"],  # a person must say whether it is known before the outcome
        "unseen_categories": n["unseen_frac"] / t["unseen_category_fraction"] * t["constant_feature_strength"],
    }


def _table_moves(n: dict[str, Any], problems: dict[str, bool], d: dict[str, Any]) -> list[Recommendation]:
    """Advice on a table's columns (a column that gives the label away, categories only val has)
    and the fix for non-finite values."""
    out: list[Recommendation] = []
    if problems["leaky_column"]:
        cols = n["leaky_cols"]
        out.append(
            _recommend(
                "data_quality",
                "drop_leaky_columns",
                f"Check column(s) {cols}: alone they give the label away",
                None,
                f"each of {cols} alone predicts val almost perfectly (Phase 1's one-column test); if it "
                f"is recorded after the outcome it leaks, and val cannot show it: set data.drop: {cols}",
                0.0,
                1,
                "advice",
                columns=cols,
            )
        )
    if problems["unseen_categories"]:
        u = n["unseen"]
        out.append(
            _recommend(
                "data_quality",
                "unseen_categories",
                f"Categories only val has: {sorted(u)}",
                None,
                "val rows whose category train never had are encoded as (other): the model knows "
                "nothing about them; more training rows of those categories, or coarser categories, help",
                0.0,
                2,
                "advice",
                columns=sorted(u),
            )
        )
    if problems["non_finite"]:
        out.append(
            _recommend(
                "data_quality",
                "fix_non_finite",
                "Replace or drop non-finite feature values at the source",
                None,
                f"{d['non_finite_values']} NaN/Inf values reach the model",
                0.0,
                2,
                "fix",
            )
        )
    return out


def _moves(
    evidence: dict[str, Any], n: dict[str, Any], problems: dict[str, bool], leak_rows: list[int], d: dict[str, Any]
) -> list[Recommendation]:
    """The recommendations of the problems found."""
    out: list[Recommendation] = []
    leaked, dups, flagged, noise = n["leaked"], n["dups"], n["flagged"], n["noise"]
    if problems["leakage"] or dups:
        out.append(
            _recommend(
                "data_quality",
                "exclude_leaked",
                f"Leave the {len(leak_rows)} leaked or duplicated training rows out (exclude.json)",
                {"data.exclude": evidence.get("exclude_path", EXCLUDE_JSON)},
                "copies of val/test rows inflate the val metric; only the copies are dropped",
                0.0,
                1,
                "fix" if problems["leakage"] else "accuracy",
                leaked=len(leaked),
                duplicates=len(dups),
            )
        )
    if problems["label_issues"]:
        need = min(_headroom(evidence), 100 * noise)
        out.append(
            _recommend(
                "data_quality",
                "exclude_mislabelled",
                f"Leave {len(flagged)} likely mislabelled training rows out (exclude_labels.json)",
                {"data.exclude": evidence.get("label_exclude_path", EXCLUDE_LABELS_JSON)},
                f"train labels disagree with a trusted model {noise:.1%} more often than val labels "
                "do; the rows it is surest about go",
                need * 0.5,
                1,
                noise_rate=noise,
                noise_rate_ci=n["ci"],
                flagged=len(flagged),
            )
        )
        cfg = evidence["config"]
        out += _smoothing_rec("data_quality", cfg, "soft targets limit how far wrong labels pull", need * 0.2)
        out += _dropout_rec(
            "data_quality", cfg, "a regularised model memorises the wrong labels that exclusion misses", need * 0.2
        )
    if problems["imbalance"] and _imbalance_moves_pay(evidence, n):
        out += _imbalance_moves(n, _rare_share(evidence, n, d))
    out += _table_moves(n, problems, d)
    return out


REWARDS_RARE_CLASSES = ("balanced_accuracy", "macro_f1")  # metrics that weigh every class alike


def reference_fails_rare_classes(evidence: dict[str, Any]) -> bool | None:
    """Whether the best reference model fails the classes the network recalls worst (its val recall
    of the network's worst class below ``minority_recall_ratio`` × its own mean recall); None when no
    reference recall was measured."""
    ref = evidence["probes"].get("reference") or {}
    net = (evidence["probes"].get("per_class") or {}).get("recall")
    top = (ref.get("models") or {}).get(ref.get("best") or "", {}).get("val_recall")
    if not net or not top or len(net) != len(top):
        return None
    pairs = [(a, b) for a, b in zip(net, top) if a is not None and b is not None]
    if not pairs:
        return None
    worst = min(range(len(pairs)), key=lambda i: pairs[i][0])
    mean = sum(b for _, b in pairs) / len(pairs)
    return pairs[worst][1] < THRESHOLDS["minority_recall_ratio"] * mean


def _imbalance_moves_pay(evidence: dict[str, Any], n: dict[str, Any]) -> bool:
    """Class weighting and a balanced sampler trade majority-class hits for rare-class hits: worth
    proposing when the target metric rewards that trade (balanced accuracy, macro F1), or when the
    reference model, trained on the same imbalanced rows, fails the same classes too (then the
    imbalance, not the network, is what holds them back). Without a reference measurement, a
    minority the network recalls badly is the evidence, as before."""
    if evidence["config"]["target"]["metric"] in REWARDS_RARE_CLASSES:
        return True
    fails = reference_fails_rare_classes(evidence)
    return n["minority_hurt"] if fails is None else fails


def _rare_share(evidence: dict[str, Any], n: dict[str, Any], d: dict[str, Any]) -> float:
    """How far the worst-recalled class's recall moves the target metric: fully for a metric that
    weighs every class alike; for accuracy (and any other) at most by that class's share of the
    rows, since each of its rows is one row of the whole (10 recall points of a 6% class are 0.6
    accuracy points at best, before the majority hits a weighting costs)."""
    if evidence["config"]["target"]["metric"] in REWARDS_RARE_CLASSES:
        return 1.0
    recall, counts = n["recall"].get("recall"), d.get("class_counts_train")
    if not recall or not counts or len(recall) != len(counts) or not sum(counts):
        return 1.0
    seen = [i for i, r in enumerate(recall) if r is not None]
    if not seen:
        return 1.0
    worst = min(seen, key=lambda i: recall[i])
    return counts[worst] / sum(counts)


def _imbalance_moves(n: dict[str, Any], share: float = 1.0) -> list[Recommendation]:
    min_rec, mean_rec, ratio = n["min_rec"], n["mean_rec"], n["ratio"]
    hurt = (mean_rec - min_rec) * 100 * share if n["minority_hurt"] else 0.0
    recall = f"{min_rec:.2f} vs mean {mean_rec:.2f}" if min_rec is not None else "unknown"
    return [
        _recommend(
            "data_quality",
            "class_weighting",
            "Class-weighted loss (balanced)",
            {"training.class_weighting": "balanced"},
            f"{ratio:.0f}:1 imbalance; the rarest class's val recall is {recall}",
            0.2 * hurt,
            1,
            imbalance_ratio=ratio,
            min_recall=min_rec,
        ),
        _recommend(
            "data_quality",
            "balanced_sampler",
            "Balanced sampler (every class equally often)",
            {"data.sampler": "balanced"},
            "rare classes seen as often as common ones",
            0.15 * hurt,
            1,
            imbalance_ratio=ratio,
        ),
    ]
