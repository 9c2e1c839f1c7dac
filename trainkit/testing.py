"""Test seam: tiny configs, datasets and models that make tests fast and self-contained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainkit.config import TrainkitConfig, apply_overrides, validate_config_dict

__all__ = ["tiny_config", "make_npz", "make_image_folder", "blobs", "tiny_model"]


def tiny_config(overrides: dict[str, Any] | None = None) -> TrainkitConfig:
    """Digits, a small MLP, 3 epochs, no early stopping: a full fit() in well under a second on CPU."""
    base = {"data": {"source": "digits", "batch_size": 64},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "training": {"epochs": 3, "patience": None, "seed": 0},
            "target": {"value": 0.9}}
    return validate_config_dict(apply_overrides(base, overrides or {}), "tiny_config")


def blobs(n: int = 300, classes: int = 3, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (x float32 [n, dim], y int64 [n]); also usable as data.source 'trainkit.testing:blobs'."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, dim))
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(0, 1, (n, dim))
    return x.astype(np.float32), y.astype(np.int64)


def make_npz(path: str | Path, n: int = 300, classes: int = 3, dim: int = 8, seed: int = 0) -> Path:
    x, y = blobs(n, classes, dim, seed)
    np.savez(path, x=x, y=y)
    return Path(path)


def make_image_folder(root: str | Path, classes: int = 3, per_class: int = 12, size: int = 10,
                      corrupt: int = 0, mode: str = "L", seed: int = 0) -> Path:
    """One sub-folder per class of small PNGs whose brightness depends on the class; ``corrupt``
    extra files that are not images are planted in the first class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 80 * c
            shape = (size, size) if mode == "L" else (size, size, 3)
            arr = np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr, mode=mode).save(d / f"img_{i}.png")
    for j in range(corrupt):
        (root / "class_0" / f"broken_{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def tiny_model(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """A user-style model builder reachable as 'trainkit.testing:tiny_model'."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.ReLU(), nn.Linear(width, num_classes))


def shape_mismatch_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A deliberately broken model: its first layer expects the wrong number of features."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)) + 7, num_classes))


def torch_dataset() -> torch.utils.data.Dataset:
    """A small torch Dataset, for the 'package.module:function' data source returning a Dataset."""
    x, y = blobs(120, 3, 6, seed=3)
    return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


class SlowNet(nn.Module):
    """A small MLP that sleeps ``delay`` seconds per forward pass: slow enough to interrupt mid-epoch."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, delay: float = 0.01) -> None:
        super().__init__()
        self.delay = delay
        self.net = tiny_model(input_shape, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.delay)
        return self.net(x)


class _SlowDataset(torch.utils.data.Dataset):
    def __init__(self, delay: float) -> None:
        self.x, self.y = blobs(400, 3, 16, seed=5)
        self.targets = self.y.tolist()
        self.delay = delay

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import time

        time.sleep(self.delay)
        return torch.from_numpy(self.x[i]), int(self.y[i])


def slow_dataset(delay: float = 0.0015) -> torch.utils.data.Dataset:
    """A streamed dataset that sleeps per sample: data loading dominates the step (data.source
    'trainkit.testing:slow_dataset')."""
    return _SlowDataset(delay)


def duplicated_digits() -> tuple[np.ndarray, np.ndarray]:
    """Digits with its first 150 samples appended again: copies land across the splits (leakage)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0
    return np.concatenate([x, x[:150]]), np.concatenate([d.target, d.target[:150]])


def dies_once_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Kills its own process (``os._exit``) on the Nth model build, once: a kernel dying mid-phase.
    ``TRAINKIT_TEST_DIE_DIR`` holds the counter; ``TRAINKIT_TEST_DIE_AT`` is N (default 3)."""
    import os

    d = Path(os.environ["TRAINKIT_TEST_DIE_DIR"])
    count = len(list(d.glob("build-*"))) + 1
    (d / f"build-{count}").touch()
    if count == int(os.environ.get("TRAINKIT_TEST_DIE_AT", "3")):
        os._exit(17)
    return tiny_model(input_shape, num_classes)
