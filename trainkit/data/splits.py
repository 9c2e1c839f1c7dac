"""Splits and fingerprints: seeded stratified train/val/test indices, the normalization fitted on
the train split, and the split record (sizes, class counts, content fingerprints, duplicates)
that later loads are checked against."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from trainkit.data.sources import Source

__all__ = ["stratified_split", "strata", "label_scale", "normalize", "fit_normalization", "split_record"]


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test indices (each class split in the same proportions)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in out.items()}


def strata(source: Source, bins: int = 10) -> np.ndarray:
    """What the split is stratified on: the classes, or for a regression the label's deciles (each
    split then spans the label's range in the same proportions; fewer bins under 200 rows, at
    least 20 rows each)."""
    y = source.y.numpy()
    if not source.regression:
        return y
    bins = max(1, min(bins, len(y) // 20))  # each bin large enough to give val and test their rows
    edges = np.unique(np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right")


def label_scale(source: Source, train: np.ndarray) -> dict[str, float] | None:
    """A regression label's mean and standard deviation on the train rows (None for classes): the
    model trains on the standardized label, and predictions are given back in the label's units."""
    if not source.regression:
        return None
    y = source.y.numpy()[np.asarray(train, dtype=np.int64)].astype(np.float64)
    std = float(y.std())
    return {"mean": float(y.mean()), "std": std if std > 1e-12 else 1.0}


def _fingerprint(keys: list[str], y: np.ndarray, idx: np.ndarray) -> str:
    lines = sorted(f"{keys[i]}:{y[i]:.9g}" if y.dtype.kind == "f" else f"{keys[i]}:{int(y[i])}" for i in idx)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _duplicates(keys: list[str], splits: dict[str, np.ndarray]) -> dict[str, int]:
    sets = {k: {keys[i] for i in v} for k, v in splits.items()}
    within = sum(len(v) - len(sets[k]) for k, v in splits.items())
    return {
        "within_splits": within,
        "across_splits": len(
            (sets["train"] & sets["val"]) | (sets["train"] & sets["test"]) | (sets["val"] & sets["test"])
        ),
        "train_test": len(sets["train"] & sets["test"]),
        "train_val": len(sets["train"] & sets["val"]),
        "val_test": len(sets["val"] & sets["test"]),
    }


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with per-channel statistics for images (N, C, ...) and scalars for vectors."""
    if x.ndim > 2:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.view(shape), std.view(shape)
    return (x - mean) / std


def fit_normalization(source: Source, train_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if source.x is not None:
        xt = source.x[torch.as_tensor(train_idx)]
        dims = [0] + list(range(2, xt.ndim)) if xt.ndim >= 3 else [0]
        mean, std = xt.mean(dim=dims), xt.std(dim=dims)
    else:
        ds = source.dataset
        pick = train_idx[:: max(1, len(train_idx) // 256)]
        xt = torch.stack(
            [ds.raw(int(i)) if hasattr(ds, "raw") else torch.as_tensor(ds[int(i)][0]).float() for i in pick]
        )
        dims = [0] + list(range(2, xt.ndim)) if xt.ndim >= 3 else [0]
        mean, std = xt.mean(dim=dims), xt.std(dim=dims)
    if xt.ndim == 2:  # tabular: per feature; a constant feature keeps scale 1 (stays finite on unseen values)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean, std.clamp_min(1e-6)


def split_record(
    source: Source, splits: dict[str, np.ndarray], cfg: Any, mean: torch.Tensor, std: torch.Tensor
) -> dict[str, Any]:
    y = source.y.numpy()
    if source.regression:  # numbers: each split's count (one "class": the label), and the label's spread per split
        counts = {k: [int(len(v))] for k, v in splits.items()}
        from trainkit.metrics import regression_scores

        scale = label_scale(source, splits["train"])
        val = y[splits["val"]].astype(np.float64)
        extra: dict[str, Any] = {
            "task": "regression",
            "label_scale": scale,
            # what predicting the train mean scores on val: the skill scale's zero (trainkit.metrics.skill)
            "mean_predictor_val": regression_scores(val, np.full(len(val), scale["mean"])) if len(val) else None,
            "label_summary": {
                k: {
                    "mean": float(y[v].mean()),
                    "std": float(y[v].std()),
                    "min": float(y[v].min()),
                    "max": float(y[v].max()),
                }
                for k, v in splits.items()
                if len(v)
            },
        }
    else:
        counts = {k: np.bincount(y[v], minlength=len(source.class_names)).tolist() for k, v in splits.items()}
        extra = {"task": "classification"}
    return {
        **extra,
        "source": source.description,
        "seed": cfg.split_seed,
        "fractions": {"val": cfg.val_fraction, "test": cfg.test_fraction},
        "sizes": {k: int(len(v)) for k, v in splits.items()},
        "class_counts": counts,
        "class_names": source.class_names,
        "input_shape": list(source.input_shape),
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "fingerprints": {k: _fingerprint(source.sample_keys, y, v) for k, v in splits.items()},
        "duplicates": _duplicates(source.sample_keys, splits),
        "indices": {k: v.tolist() for k, v in splits.items()},
    }
