"""Test seam: tiny configs, datasets and models that make tests fast and self-contained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainkit.config import TrainkitConfig, apply_overrides, validate_config_dict

__all__ = [
    "tiny_config",
    "tiny_config_file",
    "make_npz",
    "make_image_folder",
    "blobs",
    "tiny_model",
    "planted_noise",
    "noisy",
    "tabular",
    "signals",
    "shapes",
    "numbers",
    "price_table",
    "run_phase_inprocess",
]


def tiny_config(overrides: dict[str, Any] | None = None) -> TrainkitConfig:
    """Digits, a small MLP, 3 epochs, no early stopping: a full fit() in well under a second on CPU."""
    base = {
        "data": {"source": "digits", "batch_size": 64},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "training": {"epochs": 3, "patience": None, "seed": 0},
        "target": {"value": 0.9},
    }
    return validate_config_dict(apply_overrides(base, overrides or {}), "tiny_config")


def tiny_config_file(folder: str | Path, overrides: dict[str, Any] | None = None, name: str = "cfg.yaml") -> Path:
    """:func:`tiny_config` with ``overrides`` written as ``folder/name`` (YAML), for ``trainkit run``."""
    import yaml

    p = Path(folder) / name
    p.write_text(yaml.safe_dump(tiny_config(overrides).model_dump(mode="json")))
    return p


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


def make_image_folder(
    root: str | Path,
    classes: int = 3,
    per_class: int = 12,
    size: int = 10,
    corrupt: int = 0,
    mode: str = "L",
    seed: int = 0,
) -> Path:
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
    return nn.Sequential(
        nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.ReLU(), nn.Linear(width, num_classes)
    )


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
    """Arrays served one sample at a time with a sleep per sample."""

    def __init__(self, x: np.ndarray, y: np.ndarray, delay: float) -> None:
        self.x, self.y = x, y
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
    return _SlowDataset(*blobs(400, 3, 16, seed=5), delay)


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


# ---------------------------------------------------------------- planted problems on data that is not digits


def tabular(
    n: int = 1600,
    classes: int = 4,
    dim: int = 16,
    informative: int = 6,
    seed: int = 0,
    imbalance: float = 1.0,
    spread: float = 2.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Generated tabular data (x float32 [n, dim], y int64 [n]): two Gaussian clusters per class in
    ``informative`` dimensions (not linearly separable), the rest noise, every feature on its own
    scale (0.01–100). ``imbalance`` > 1 makes class 0 that many times as frequent as each other;
    ``spread`` is the clusters' scatter around the origin (smaller: classes overlap more)."""
    rng = np.random.default_rng(seed)
    w = np.array([imbalance] + [1.0] * (classes - 1))
    y = rng.choice(classes, size=n, p=w / w.sum())
    y[:classes] = np.arange(classes)
    centers = rng.normal(0, spread, (classes, 2, informative))
    x = rng.normal(0, 1, (n, dim))
    x[:, :informative] += centers[y, rng.integers(0, 2, n)]
    x *= 10 ** rng.uniform(-2, 2, dim)
    return x.astype(np.float32), y.astype(np.int64)


def signals(
    n: int = 1200, classes: int = 4, channels: int = 2, length: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generated 1-D signals (x float32 [n, channels, length]): each class a burst of its own
    frequency at a random position with random phase, in noise. Position varies, so a flattening
    MLP struggles where a 1-D CNN does not."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    t = np.arange(length)
    freq = 0.05 + 0.07 * np.arange(classes)
    x = rng.normal(0, 0.6, (n, channels, length))
    for i in range(n):
        c0, width = rng.integers(length // 4, 3 * length // 4), length // 4
        env = np.exp(-0.5 * ((t - c0) / (width / 2)) ** 2)
        for ch in range(channels):
            x[i, ch] += env * np.sin(2 * np.pi * freq[y[i]] * t + rng.uniform(0, 2 * np.pi))
    return x.astype(np.float32), y.astype(np.int64)


def shapes(n: int = 1200, classes: int = 4, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated small grey images (x float32 [n, 1, size, size]): a square, a cross, a ring or a
    bar (by class) at a random position, in noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 0.35, (n, 1, size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cy, cx = rng.integers(4, size - 4, 2)
        c = y[i] % 4
        if c == 0:
            m = (abs(yy - cy) <= 2) & (abs(xx - cx) <= 2)
        elif c == 1:
            m = ((abs(yy - cy) <= 3) & (xx == cx)) | ((abs(xx - cx) <= 3) & (yy == cy))
        elif c == 2:
            r = np.hypot(yy - cy, xx - cx)
            m = (r >= 1.5) & (r <= 3.0)
        else:
            m = (abs(yy - cy) <= 0) & (abs(xx - cx) <= 3) | (abs(yy - cy - 1) <= 0) & (abs(xx - cx) <= 3)
        x[i, 0][m] += 1.0
    return x.astype(np.float32), y.astype(np.int64)


def tree_table(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tree-shaped table (data.source 'trainkit.testing:tree_table'): 8 numbers and a 40-level
    category (one-hot); the label is an OR of a two-threshold rule, an XOR of two thresholds and a
    category set active above a threshold, with 5% of labels flipped. Boosted trees find it; a small
    plain MLP trails by several points."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    c = rng.integers(0, 40, n)
    rule = (
        ((x[:, 0] > 0.5) & (x[:, 1] < 0))
        | ((x[:, 2] > 1.0) ^ (x[:, 3] > -0.3))
        | (np.isin(c, [3, 7, 11, 19, 23, 31]) & (x[:, 4] > 0))
    )
    y = (rule ^ (rng.random(n) < 0.05)).astype(np.int64)
    return np.hstack([x, np.eye(40)[c]]).astype(np.float32), y


def numbers(n: int = 1200, dim: int = 8, seed: int = 0, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A regression problem (x, y): y a smooth nonlinear function of the first 4 of ``dim`` features
    (a product, a sine, a threshold, a square) plus Gaussian noise of ``noise`` standard deviations,
    in units far from 0/1 (mean 50, spread ~10): predictions must come back in the label's units."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    f = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + (x[:, 3] > 0.5) * 1.5 + 0.5 * x[:, 0] ** 2
    y = 50 + 10 * (f + noise * rng.normal(size=n))
    return x, y.astype(np.float64)


def price_table(n: int = 1500, seed: int = 0) -> Any:
    """A table whose label is a price (a DataFrame): numbers, a category, a flag; the price is a
    threshold and interaction of them plus noise."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 200, n)
    rooms = rng.integers(1, 7, n)
    city = rng.choice(["north", "south", "east", "west"], n)
    garden = rng.random(n) < 0.4
    base = {"north": 3.0, "south": 2.2, "east": 1.6, "west": 2.6}
    price = (
        np.array([base[c] for c in city]) * area * (1 + 0.25 * garden)
        + 15 * rooms
        + 40 * (area > 120)
        + rng.normal(0, 20, n)
    )
    return pd.DataFrame(
        {"area": area.round(1), "rooms": rooms, "city": city, "garden": garden, "price": price.round(2)}
    )


def imbalanced_tabular() -> tuple[np.ndarray, np.ndarray]:
    """Tabular data with class 0 twenty times as frequent as each other class
    (data.source 'trainkit.testing:imbalanced_tabular')."""
    return tabular(n=4000, classes=3, imbalance=20.0, seed=4)


def overlapping_imbalanced_tabular() -> tuple[np.ndarray, np.ndarray]:
    """Class 0 twenty times as frequent as each other class, and the classes overlap: any model
    fitted to the rows as they are (logistic regression, boosted trees, an MLP) buys accuracy
    with the rare classes' recall, so a metric that weighs every class alike is held back by the
    imbalance itself (data.source 'trainkit.testing:overlapping_imbalanced_tabular')."""
    return tabular(n=4000, classes=3, dim=12, imbalance=20.0, seed=11, spread=0.9)


def leaky_shapes() -> tuple[np.ndarray, np.ndarray]:
    """Shapes with 15% of the rows appended again: copies land across the splits (leakage)."""
    x, y = shapes(seed=6)
    k = int(0.15 * len(y))
    return np.concatenate([x, x[:k]]), np.concatenate([y, y[:k]])


def slow_tabular(delay: float = 0.002) -> torch.utils.data.Dataset:
    """Streamed tabular data that sleeps per sample: input-bound training."""
    return _SlowDataset(*tabular(n=600, seed=7), delay)


def dead_relu_model(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """A user-style MLP whose hidden biases start at -20: every ReLU unit is dead from the first step."""
    first = nn.Linear(int(np.prod(input_shape)), width)
    second = nn.Linear(width, width)
    with torch.no_grad():
        first.bias.fill_(-20.0)
        second.bias.fill_(-20.0)
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second, nn.ReLU(), nn.Linear(width, num_classes))


def signal_conv_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A user's own Conv1d model for (C, L) signals: it fails on any other input rank."""
    c, _ = input_shape
    return nn.Sequential(
        nn.Conv1d(c, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, num_classes)
    )


SLOW_FILE_ENV = "TRAINKIT_SLOW_FILE"


class _Sleepy(nn.Module):
    """trainkit's CNN that sleeps, per training batch, the seconds written in the file that
    ``TRAINKIT_SLOW_FILE`` names, once that file exists (read at most once a second)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._checked, self._delay = 0.0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        if self.training:
            now = time.time()
            if now - self._checked > 1.0:
                self._checked = now
                f = os.environ.get(SLOW_FILE_ENV)
                self._delay = float(Path(f).read_text()) if f and Path(f).is_file() else 0.0
            if self._delay:
                time.sleep(self._delay)
        return self.net(x)


def sleepy_cnn(input_shape: tuple[int, ...], num_classes: int, channels: list[int] | None = None) -> nn.Module:
    """A CNN whose training slows down on cue (benchmarks/phase_cost.py --slow-baseline: the baseline
    really takes longer than Phase 1 estimated, as on a machine that got busy)."""
    from trainkit.models import build_model

    return _Sleepy(build_model("cnn", input_shape, num_classes, {"channels": channels or [32, 64]}))


# ---------------------------------------------------------------- the phase notebooks, in this process


def run_phase_inprocess(phase: str, run_dir: str | Path, **params: Any) -> dict[str, Any]:
    """Execute a phase notebook's own cells in this process (:func:`trainkit.executor.run_cells`):
    its parameters cell, then ``params`` (``run_dir``, ``interactive=False`` and ``auto_signoff=True``
    by default), then the rest, with no kernel start: for tests and benchmarks. A blocked gate stops
    the cells (it is recorded in gate.json); another error is raised; the namespace is returned."""
    import nbformat

    from trainkit.errors import GateBlocked
    from trainkit.executor import notebook_path, run_cells

    nb = nbformat.read(notebook_path(phase), as_version=4)
    ns, error = run_cells(
        nb, {"run_dir": str(run_dir), "interactive": False, "auto_signoff": True, **params}, phase, stop=(GateBlocked,)
    )
    if error is not None:
        raise error
    return ns


def planted_noise(spec: str) -> Any:
    """A planted problem: wrong training labels. ``data: {source: "trainkit.testing:planted_noise",
    root: "MAKER:RATE"}``: MAKER is ``digits`` or an ``(x, y)`` maker of this module (``tabular``,
    ``signals``, ``shapes``, ...), RATE the fraction of the train split whose labels are flipped to
    another class (seeded by ``data.split_seed``; val and test keep their true labels). The bundle
    lists the flipped rows in ``info["label_noise_flipped"]``."""
    from trainkit.data import in_memory_source, load_source
    from trainkit.config import DataConfig

    maker, _, rate = str(spec).partition(":")
    try:
        noise = float(rate)
    except ValueError:
        raise ValueError(f"planted_noise: data.root {spec!r} must be 'MAKER:RATE', e.g. 'tabular:0.3'") from None
    if maker == "digits":
        source = load_source(DataConfig(source="digits"))
    else:
        x, y = globals()[maker]()
        source = in_memory_source(x, y, None, f"planted {maker}")
    source.train_label_noise = noise
    return source


def noisy(maker: str, rate: float) -> dict[str, Any]:
    """The ``data`` overrides of :func:`planted_noise` (for :func:`tiny_config` and benchmarks)."""
    return {"data.source": "trainkit.testing:planted_noise", "data.root": f"{maker}:{rate}"}
