"""matplotlib figures for notebooks and reports (Agg backend; PNGs embedded as base64)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt

__all__ = ["class_counts_figure", "sample_grid_figure", "curves_figure", "save_figure", "figure_png_html"]


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
    ax.legend()
    return fig


def sample_grid_figure(x: Any, y: Any, class_names: Sequence[str], n: int = 24) -> Any:
    """A grid of training samples with their labels (images), or a feature heatmap (vectors)."""
    import numpy as np

    x = np.asarray(x[:n])
    cols = 8
    rows = max(1, (len(x) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.2))
    for ax, img, lab in zip(np.ravel(axes), x, np.asarray(y[:n])):
        if img.ndim == 3:
            img = img[0] if img.shape[0] == 1 else np.clip((img.transpose(1, 2, 0) - img.min()) / (np.ptp(img) + 1e-9), 0, 1)
        elif img.ndim == 1:
            img = img.reshape(1, -1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(str(class_names[int(lab)]), fontsize=8)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle("training samples")
    return fig


def curves_figure(history: Sequence[dict[str, Any]], title: str = "learning curves") -> Any:
    """Loss (left) and accuracy (right) per epoch, train and validation."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch"] + 1 for r in history]
    for key, ax in (("loss", a1), ("accuracy", a2)):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", ms=3, label="train")
        ax.plot(ep, [r[f"val_{key}"] for r in history], "o-", ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig
