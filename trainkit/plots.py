"""matplotlib figures for notebooks and reports (Agg backend; PNGs embedded as base64)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt

__all__ = [
    "class_counts_figure",
    "sample_grid_figure",
    "curves_figure",
    "save_figure",
    "figure_png_html",
    "lr_range_figure",
    "seed_variance_figure",
    "throughput_figure",
    "comparison_figure",
    "seed_points_figure",
    "reference_figure",
    "label_histogram_figure",
    "residual_figure",
]


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save as PNG (atomic) and close."""
    from trainkit._io import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def figure_png_html(fig: Any) -> str:
    """An <img> tag with the figure embedded (closes the figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"


def class_counts_figure(counts: dict[str, Sequence[int]], class_names: Sequence[str]) -> Any:
    """Grouped bars: samples per class in each split."""
    fig, ax = plt.subplots(figsize=(7, 3))
    n = len(class_names)
    width = 0.8 / max(1, len(counts))
    for i, (split, c) in enumerate(counts.items()):
        ax.bar([j + i * width for j in range(n)], c, width=width, label=split)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(n)], [str(c) for c in class_names], rotation=45 if n > 12 else 0)
    ax.set_ylabel("samples")
    ax.set_title("class counts per split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)  # beside the bars, never on one
    fig.tight_layout()
    return fig


def label_histogram_figure(values: dict[str, Any], label: str) -> Any:
    """A regression label's distribution per split (histograms on shared bins, in the label's units)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3))
    allv = np.concatenate([np.asarray(v, dtype=float) for v in values.values()])
    bins = np.histogram_bin_edges(allv, bins=min(40, max(5, len(allv) // 20)))
    for split, v in values.items():
        ax.hist(np.asarray(v, dtype=float), bins=bins, alpha=0.55, density=True, label=f"{split} ({len(v)})")
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.set_title(f"label {label} per split")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def residual_figure(y: Any, pred: Any, label: str, split: str, metrics: dict[str, float] | None = None) -> Any:
    """A regression's predictions: predicted against actual (with the diagonal), and the residuals
    (actual − predicted) against the prediction, in the label's units."""
    import numpy as np

    y, pred = np.asarray(y, dtype=float).reshape(-1), np.asarray(pred, dtype=float).reshape(-1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.scatter(y, pred, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    a1.plot([lo, hi], [lo, hi], color="tab:red", lw=1, label="predicted = actual")
    a1.set_xlabel(f"actual {label}")
    a1.set_ylabel(f"predicted {label}")
    a1.legend(fontsize=8, frameon=False)
    a2.scatter(pred, y - pred, s=6, alpha=0.5)
    a2.axhline(0, color="tab:red", lw=1)
    a2.set_xlabel(f"predicted {label}")
    a2.set_ylabel("residual (actual − predicted)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
    fig.suptitle(f"{split} predictions" + (f" ({shown})" if shown else ""))
    fig.tight_layout()
    return fig


def sample_grid_figure(x: Any, y: Any, class_names: Sequence[str] | None, n: int = 24) -> Any:
    """A grid of training samples with their labels: images, signal traces (C, L), or a feature
    strip (vectors). ``class_names`` None: the labels are numbers, shown as they are."""
    import numpy as np

    def name(lab: Any) -> str:
        return f"{float(lab):.3g}" if class_names is None else str(class_names[int(lab)])

    x = np.asarray(x[:n])
    cols = 8
    rows = max(1, (len(x) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.2))
    for ax, img, lab in zip(np.ravel(axes), x, np.asarray(y[:n])):
        if img.ndim == 3:
            img = (
                img[0]
                if img.shape[0] == 1
                else np.clip((img.transpose(1, 2, 0) - img.min()) / (np.ptp(img) + 1e-9), 0, 1)
            )
        elif img.ndim == 2:  # a (C, L) signal: one line per channel
            for ch in img[:4]:
                ax.plot(ch, lw=0.8)
            ax.set_title(name(lab), fontsize=8)
            continue
        elif img.ndim == 1:
            img = img.reshape(1, -1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(name(lab), fontsize=8)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle("training samples")
    return fig


def curves_figure(history: Sequence[dict[str, Any]], title: str = "learning curves") -> Any:
    """Loss (left) and accuracy (right) per epoch, train and validation; a regression (records
    without an accuracy) shows its target metric (``train_score``/``val_score``) on the right."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch"] + 1 for r in history]
    right = "accuracy" if not history or history[0].get("val_accuracy") is not None else "score"
    for key, ax in (("loss", a1), (right, a2)):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", ms=3, label="train")
        ax.plot(ep, [r[f"val_{key}"] for r in history], "o-", ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def lr_range_figure(probe: dict[str, Any]) -> Any:
    """Smoothed loss against LR (log axis) with the minimum and the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(probe["lrs"], probe["losses"])
    ax.set_xscale("log")
    if probe.get("suggested_lr"):
        ax.axvline(probe["suggested_lr"], color="tab:green", ls="--", label=f"suggested {probe['suggested_lr']:.3g}")
        ax.axvline(probe["min_loss_lr"], color="tab:red", ls=":", label=f"min loss {probe['min_loss_lr']:.3g}")
    else:  # a flat or noisy curve: no suggestion, and the plot says why
        ax.text(
            0.02,
            0.05,
            f"no suggestion: {str(probe.get('reason', 'inconclusive'))[:70]}",
            transform=ax.transAxes,
            fontsize=8,
            color="tab:red",
        )
    if probe.get("configured_lr"):
        ax.axvline(probe["configured_lr"], color="gray", ls="-.", label=f"configured {probe['configured_lr']:.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed train loss")
    ax.set_title(f"LR range test ({probe.get('optimizer', '')})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def seed_variance_figure(probe: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar([str(s) for s in probe["seeds"]], probe["val_accuracy"], color="tab:blue")
    ax.axhline(probe["mean"], color="k", ls="--", lw=1, label=f"mean {probe['mean']:.3f} ± {probe['std']:.3f}")
    lo = min(probe["val_accuracy"])
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(probe["val_accuracy"]) + 0.02))
    ax.set_xlabel("seed")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"seed variance ({probe['epochs']} epochs)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def throughput_figure(probe: dict[str, Any]) -> Any:
    pts = probe["points"]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([p["batch_size"] for p in pts], [p["samples_per_s"] for p in pts], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("train samples/s")
    ax.set_title(f"throughput (configured batch {probe['configured_batch_size']})")
    ax.grid(alpha=0.3)
    return fig


def reference_figure(probe: dict[str, Any]) -> Any:
    """The network's val target metric beside the reference models' (horizontal bars, values at the ends)."""
    names = {"logistic_regression": "logistic regression", "boosted_trees": "boosted trees"}
    metric = probe.get("metric", "accuracy")
    bars = [(names.get(k, k), v.get("val_score", v["val_accuracy"]), "tab:gray") for k, v in probe["models"].items()]
    net = probe.get("network_val_score", probe.get("network_val_accuracy"))
    if net is not None:
        bars.append(("the network", net, "tab:blue"))
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(bars)))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.text(b[1], i, f" {b[1]:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("val " + metric.replace("_", " "))
    ax.set_title("a simpler model is not better: same rows, same split")
    ax.invert_yaxis()
    return fig


def comparison_figure(runs: dict[str, Sequence[Sequence[dict[str, Any]]]], title: str = "baseline vs optimized") -> Any:
    """Val accuracy per epoch of every seed, one colour per config (overlaid learning curves); a
    regression (records without an accuracy) shows its target metric, ``val_score``."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    first = next((h[0] for hs in runs.values() for h in hs if h), {})
    key = "val_accuracy" if first.get("val_accuracy") is not None or not first else "val_score"
    for (label, histories), color in zip(runs.items(), ["tab:gray", "tab:blue", "tab:orange", "tab:green"]):
        for i, h in enumerate(histories):
            ep = [r["epoch"] + 1 for r in h]
            a1.plot(ep, [r["val_loss"] for r in h], color=color, alpha=0.7, label=label if i == 0 else None)
            a2.plot(ep, [r.get(key) for r in h], color=color, alpha=0.7, label=label if i == 0 else None)
    for ax, k in ((a1, "val loss"), (a2, "val accuracy" if key == "val_accuracy" else "val target metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def seed_points_figure(values: dict[str, Sequence[float]], target: float | None = None) -> Any:
    """Final val metric per seed for each config, with the mean."""
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for i, (label, vals) in enumerate(values.items()):
        ax.scatter([i] * len(vals), vals, zorder=3)
        ax.hlines(sum(vals) / len(vals), i - 0.2, i + 0.2, color="k")
    if target is not None:
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(values)), list(values))
    ax.set_ylabel("best val accuracy")
    ax.set_title("per-seed results")
    ax.grid(alpha=0.3, axis="y")
    return fig
