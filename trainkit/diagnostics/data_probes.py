"""Probes of the data rather than the training: repeats and near-duplicates across splits (with the
chance they occur), and label issues found by cross-validated out-of-fold predictions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.config import TrainkitConfig, with_overrides
from trainkit.data import DataBundle
from trainkit.diagnostics._fits import _short_train


def _chance_repeats(bundle: DataBundle, shared: int, within: int) -> tuple[bool, str]:
    """Whether a table's train rows that equal another split's (``shared``) or another train row
    (``within``) are chance repeats (:func:`trainkit.data.tables.shared_records_verdict`)."""
    table = getattr(bundle.source, "table", None)
    if bundle.source.duplicates_by_chance:
        return True, "the columns are discrete enough that equal records happen by chance"
    if table is None or not (shared or within):
        return False, ""
    from trainkit.data.tables import shared_records_verdict

    n_train = len(bundle.splits["train"])
    others = sum(len(v) for v in bundle.info["indices"].values()) - n_train
    seen = table.frame.iloc[np.concatenate([np.asarray(bundle.splits[s], dtype=np.int64) for s in ("train", "val")])]
    ok_shared, why = shared_records_verdict(seen, list(table.kinds), shared, n_train, others)
    ok_within, why_within = shared_records_verdict(seen, list(table.kinds), within, n_train, n_train)
    return ok_shared and ok_within, why if shared else why_within


def data_probe(bundle: DataBundle, near_threshold: float = 0.995, max_rows: int = 20000) -> dict[str, Any]:
    """Duplicates (exact, from content hashes over all splits; near, by cosine similarity between
    train and val), class balance, constant and non-finite features. Test content enters only
    through the hashes Phase 1 recorded; no test sample is read here."""
    info, keys = bundle.info, bundle.source.sample_keys
    y = bundle.source.y.numpy()
    splits = {k: np.asarray(v) for k, v in info["indices"].items()}
    out: dict[str, Any] = {"duplicates": dict(info.get("duplicates", {}))}
    if keys:
        key_split: dict[str, set[str]] = {}
        for name, idx in splits.items():
            for i in idx:
                key_split.setdefault(keys[i], set()).add(name)
        leaked = [int(i) for i in bundle.splits["train"] if len(key_split.get(keys[i], ())) > 1]
        seen: dict[str, int] = {}
        within = []
        for i in bundle.splits["train"]:
            if keys[i] in seen:
                within.append(int(i))
            seen.setdefault(keys[i], int(i))
        chance, why = _chance_repeats(bundle, len(leaked), len(within))
        if chance:  # equal records that are different rows (discrete columns, or a handful), not copies
            out["shared_records_by_chance"] = {
                "train_rows_shared_across_splits": len(leaked),
                "within_train": len(within),
                "why": why,
            }
            leaked, within = [], []
        out["leaked_train_indices"] = leaked
        out["duplicate_train_indices"] = within
    if not bundle.regression:  # a number to predict has no classes to balance
        counts = np.bincount(y[bundle.splits["train"]], minlength=bundle.num_classes)
        out["class_counts_train"] = counts.tolist()
        out["imbalance_ratio"] = float(counts.max() / max(1, counts.min()))
    if bundle.source.x is not None:
        xt = bundle.source.x[torch.as_tensor(bundle.splits["train"][:max_rows])].reshape(
            len(bundle.splits["train"][:max_rows]), -1
        )
        out["features"] = int(xt.shape[1])
        out["non_finite_values"] = int((~torch.isfinite(xt)).sum())
        out["constant_features"] = int((xt.std(0) == 0).sum())
        # a table's records are compared whole, by their content hashes, above: rows that are merely close
        # (the same categories, near numbers) are neighbours, different customers, not copies
        out["near_duplicates_train_val"] = (
            0
            if bundle.source.duplicates_by_chance or getattr(bundle.source, "table", None) is not None
            else _near_duplicates(bundle, near_threshold, max_rows)
        )
    table = getattr(bundle.source, "table", None)
    if table is not None:  # by column name, on train and val only
        tr, va = np.asarray(bundle.splits["train"]), np.asarray(bundle.splits["val"])
        yy = y.astype(np.float64) if bundle.regression else y
        out["table"] = table.checks(tr, yy[tr], va, yy[va])
    return out


def _near_duplicates(bundle: DataBundle, threshold: float, max_rows: int) -> int:
    """Val samples with a train sample at cosine similarity ≥ threshold (not counting exact copies)."""
    xs = bundle._x if bundle._x is not None else bundle.source.x  # normalized: no feature's scale dominates the cosine
    tr = torch.as_tensor(bundle.splits["train"][:max_rows])
    va = torch.as_tensor(bundle.splits["val"][:max_rows])
    a = F.normalize(xs[tr].reshape(len(tr), -1).double(), dim=1)
    b = F.normalize(xs[va].reshape(len(va), -1).double(), dim=1)
    count = 0
    for i in range(0, len(b), 1024):
        sim = b[i : i + 1024] @ a.T
        best = sim.max(1).values
        count += int(((best >= threshold) & (best < 1 - 1e-12)).sum())
    return count


LABEL_MAX_SHORTFALL = 0.10  # the label probe's fold models may fall this far below the diagnosed model's val accuracy


def label_issue_probe(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    folds: int = 3,
    epochs: int = 15,
    max_rows: int = 20000,
    baseline_val: float | None = None,
    min_kappa: float = 0.5,
    max_shortfall: float = LABEL_MAX_SHORTFALL,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Likely label errors by confident learning on out-of-fold predicted probabilities, judged
    only when the out-of-fold model can be trusted.

    The training split is cut into ``folds``; a model (the config's architecture, Adam 1e-3) trained
    on the other folds predicts each held-out sample and the val split. Trust: its val accuracy
    must beat chance (the majority class) by Cohen's kappa ≥ ``min_kappa`` and fall at most
    ``max_shortfall`` below the baseline's own val accuracy; otherwise the probe is
    ``inconclusive`` and flags nothing (a weak model disagrees with clean labels too).

    Noise rate: the model agrees with the given train labels less often than with the val labels
    by ``excess = acc_val − acc_oof``; ``noise_rate = excess / acc_val`` with a 95% interval. Only
    when that interval excludes 0 (train labels are measurably worse than the labels the metric is
    judged on, so leaving rows out can raise it) are samples flagged: confident learning's
    off-diagonal ones (per class j the threshold t_j is the mean p_j over samples labelled j; a
    sample labelled i is off-diagonal when the most probable class among those above their
    threshold is not i), lowest self-confidence first, at most ``noise_rate × N`` of them.

    At most ``max_rows`` train rows (a seeded random subsample: folders list their classes in
    order) and val rows are read; the fold models stop at ``deadline``."""
    train, val_idx, probs, val_probs = _out_of_fold(cfg, bundle, folds, epochs, max_rows, deadline)
    labels, k = (bundle.labels if bundle.labels is not None else bundle.source.y), bundle.num_classes
    given = labels[torch.as_tensor(train)].numpy()
    y_val = labels[torch.as_tensor(val_idx)].numpy()
    acc_oof = float((probs.argmax(1) == given).mean())
    acc_val = float((val_probs.argmax(1) == y_val).mean())
    chance = float(np.bincount(y_val, minlength=k).max() / max(1, len(y_val)))
    kappa = (acc_val - chance) / (1 - chance) if chance < 1 else 0.0
    short = (baseline_val - acc_val) if baseline_val is not None else 0.0
    trusted = kappa >= min_kappa and short <= max_shortfall
    excess = acc_val - acc_oof
    se = math.sqrt(acc_val * (1 - acc_val) / max(1, len(y_val)) + acc_oof * (1 - acc_oof) / max(1, len(given)))
    a = max(acc_val, 1e-9)
    rate = [max(0.0, min(1.0, v / a)) for v in (excess, excess - 1.96 * se, excess + 1.96 * se)]
    thresholds = np.array([probs[given == j, j].mean() if (given == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds[None, :]
    conf_class = np.where(above, probs, -1.0).argmax(1)
    off = np.flatnonzero(above.any(1) & (conf_class != given))
    self_conf = probs[np.arange(len(train)), given]
    significant = trusted and rate[1] > 0
    n_flag = min(len(off), int(round(rate[0] * len(train)))) if significant else 0
    pick = off[np.argsort(self_conf[off], kind="stable")[:n_flag]]
    flagged = sorted(int(train[i]) for i in pick)
    verdict = _label_verdict(trusted, significant, acc_val, acc_oof, kappa, min_kappa, baseline_val, rate, flagged)
    return {
        "folds": folds,
        "epochs": epochs,
        "checked": int(len(train)),
        "flagged": flagged,
        "flagged_fraction": len(flagged) / max(1, len(train)),
        "inconclusive": not trusted,
        "trusted": trusted,
        "significant": significant,
        "verdict": verdict,
        "noise_rate": rate[0],
        "noise_rate_ci": rate[1:],
        "oof_accuracy_vs_given": acc_oof,
        "oof_val_accuracy": acc_val,
        "chance": chance,
        "kappa": kappa,
        "baseline_val_accuracy": baseline_val,
        "confident_learning_candidates": int(len(off)),
        "thresholds": thresholds.tolist(),
        "mean_self_confidence_flagged": float(self_conf[pick].mean()) if len(pick) else None,
    }


def _label_verdict(
    trusted: bool,
    significant: bool,
    acc_val: float,
    acc_oof: float,
    kappa: float,
    min_kappa: float,
    baseline_val: float | None,
    rate: list[float],
    flagged: list[int],
) -> str:
    """The label probe's verdict in words: inconclusive, no excess noise, or the estimated rate."""
    if not trusted:
        return (
            f"inconclusive: the out-of-fold model is too weak to judge labels (val accuracy {acc_val:.3f}, "
            f"kappa {kappa:.2f} < {min_kappa}"
            + (f", baseline {baseline_val:.3f}" if baseline_val is not None else "")
            + ")"
        )
    elif not significant:
        return (
            f"no excess label noise: the model agrees with train labels ({acc_oof:.3f}) as well as with val "
            f"labels ({acc_val:.3f}) within the 95% interval"
        )
    else:
        return f"estimated label-noise rate {rate[0]:.1%} (95% CI {rate[1]:.1%}–{rate[2]:.1%}); {len(flagged)} flagged"


def _out_of_fold(
    cfg: TrainkitConfig, bundle: DataBundle, folds: int, epochs: int, max_rows: int, deadline: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train rows, val rows, out-of-fold class probabilities of the train rows, the fold models'
    mean probabilities of the val rows): at most ``max_rows`` of each, seeded by the config."""
    rng = np.random.default_rng(cfg.training.seed)
    train = _subsample(np.asarray(bundle.splits["train"]), max_rows, rng)
    order = rng.permutation(len(train))
    k = bundle.num_classes
    probs = np.zeros((len(train), k))
    val_idx = _subsample(np.asarray(bundle.splits["val"]), max_rows, rng)
    val_probs = np.zeros((len(val_idx), k))
    base = with_overrides(cfg, {"optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.0})
    held = [order[f::folds] for f in range(folds)]

    def job(f: int) -> Any:
        def run() -> list[Any]:
            sub = _sub_bundle(bundle, train[np.setdiff1d(np.arange(len(train)), held[f])], train[held[f]])
            model, _, _ = _short_train(base, sub, epochs, cfg.training.seed + f, deadline=deadline)
            return [_predict(model, sub, train[held[f]]).tolist(), _predict(model, sub, val_idx).tolist()]

        return run

    from trainkit.workers import fits_side_by_side, run_jobs

    names = [f"label probe fold {f + 1} of {folds}" for f in range(folds)]
    outs = run_jobs([job(f) for f in range(folds)], names, fits_side_by_side(cfg, bundle))
    for f, (p_held, p_val) in enumerate(outs):  # in fold order: the sum is the same whichever way they ran
        probs[held[f]] = np.asarray(p_held, dtype=np.float32)
        val_probs += np.asarray(p_val, dtype=np.float32) / folds
    return train, val_idx, probs, val_probs


def _subsample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` of ``idx``, drawn at random (sorted); all of them when there are no more."""
    return idx if len(idx) <= n else np.sort(rng.choice(idx, size=n, replace=False))


def _predict(model: nn.Module, bundle: DataBundle, idx: np.ndarray) -> np.ndarray:
    """Softmax probabilities of ``model`` on the samples ``idx`` of ``bundle`` (train or val rows only)."""
    sub = _sub_bundle(bundle, np.asarray(bundle.splits["train"]), idx)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for xb, _, _ in sub.batches("val", 1024, shuffle=False, device=device):
            parts.append(torch.softmax(model(xb).float(), 1).cpu())
    return torch.cat(parts).numpy()


def _sub_bundle(bundle: DataBundle, train_idx: np.ndarray, val_idx: np.ndarray) -> DataBundle:
    """The same data with other train/val index sets (the test split is dropped)."""
    import copy

    sub = copy.copy(bundle)
    sub.splits = {"train": np.sort(train_idx), "val": np.asarray(val_idx)}
    return sub
