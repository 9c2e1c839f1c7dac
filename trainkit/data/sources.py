"""Sources: what a ``data:`` section names, loaded into a :class:`Source` (labels in memory;
samples in memory as tensors, or streamed through a torch ``Dataset``).

``digits`` (built in, scikit-learn), ``npz`` (arrays ``x``, ``y``), ``mnist`` / ``fashion_mnist`` /
``cifar10`` (torchvision, local files only), ``image_folder`` (see :mod:`trainkit.data.images`) and a
user's ``package.module:function``.
"""

from __future__ import annotations

import hashlib
import importlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit.errors import DataError

__all__ = ["Source", "check_labels", "check_numbers", "in_memory_source", "custom_source", "SOURCES"]


@dataclass
class Source:
    """A loaded data source: labels always in memory; samples in memory (x) or streamed (dataset)."""

    y: torch.Tensor
    class_names: list[str]
    input_shape: tuple[int, ...]
    description: str
    x: torch.Tensor | None = None
    dataset: Dataset | None = None
    sample_keys: list[str] = field(default_factory=list)
    train_label_noise: float = 0.0  # planted: the fraction of training labels flipped (set only by trainkit.testing)
    table: Any = None  # a table read raw (trainkit.data.tables.TableData): x is made once its preprocessing is fitted
    # identical samples are expected by chance (a table of a few discrete columns: two passengers of the same age, sex
    # and class are two people): a shared record across splits is then reported, not taken for a leak
    duplicates_by_chance: bool = False
    regression: bool = (
        False  # the label is a number (y float, in the label's units; class_names holds the label's name)
    )

    @property
    def in_memory(self) -> bool:
        return self.x is not None


def _row_keys(x: torch.Tensor) -> list[str]:
    flat = x.reshape(len(x), -1).to(torch.float32).contiguous().numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def in_memory_source(
    x: Any, y: Any, names: list[str] | None, desc: str, add_channel: bool = False, regression: bool = False
) -> Source:
    """Arrays as a Source. The sample shape is kept as given: ``(N, F)`` tabular, ``(N, C, L)``
    signals, ``(N, C, H, W)`` images; only built-in sources whose files hold ``(N, H, W)`` grey
    images ask for the channel axis (``add_channel``). ``regression``: ``y`` holds numbers to
    predict (:func:`check_numbers`), not classes."""
    y = check_numbers(y, desc) if regression else check_labels(y, desc, names)
    if np.iscomplexobj(x):  # a cast to float would drop the imaginary part with only a warning
        raise DataError(f"{desc}: x holds complex numbers; give real ones (the real and imaginary parts as features)")
    try:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{desc}: x must be numeric ({type(exc).__name__}: {str(exc)[:160]})") from None
    if len(x) != len(y):
        raise DataError(f"{desc}: x has {len(x)} samples but y has {len(y)}; they must match")
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1) if x.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise DataError(
            f"{desc}: {int(bad.sum())} sample(s) have NaN or Inf features (first rows {rows}); "
            "impute or drop them before training"
        )
    if add_channel and x.ndim == 3:  # N, H, W grey images
        x = x.unsqueeze(1)
    if x.ndim == 1:
        raise DataError(
            f"{desc}: x has shape {tuple(x.shape)}; expected (N, F) tabular, (N, C, L) signals or (N, C, H, W) images"
        )
    if regression:
        return Source(
            y=y,
            x=x,
            class_names=["y"],
            input_shape=tuple(x.shape[1:]),
            description=desc,
            sample_keys=_row_keys(x),
            regression=True,
        )
    k = int(y.max()) + 1
    return Source(
        y=y,
        x=x,
        class_names=names or [str(i) for i in range(k)],
        input_shape=tuple(x.shape[1:]),
        description=desc,
        sample_keys=_row_keys(x),
    )


def check_numbers(y: Any, desc: str, what: str = "labels") -> torch.Tensor:
    """A regression's labels as a 1-D float tensor, or a DataError that says what is wrong: not
    numbers, NaN or Inf (which rows), or one value for every row (nothing to learn)."""
    arr = np.asarray(y).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{desc}: no samples")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(
                f"{desc}: a regression's {what} must be numbers, found {arr.dtype} values such as "
                f"{arr[:3].tolist()}; for classes set target.metric to accuracy (or another class metric)"
            ) from None
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise DataError(
            f"{desc}: {int(bad.sum())} of the {what} are NaN or Inf (first rows {rows}, e.g. "
            f"{float(arr[bad][0])!r}); a regression needs a finite number for every row: fix or drop those rows"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        spread = float(np.std(arr))
    if not np.isfinite(spread) or np.abs(arr).max() > 1e150:
        raise DataError(
            f"{desc}: the {what} reach {np.abs(arr).max():.3g}, too large to standardize; rescale them "
            "(e.g. to thousands or millions of the unit) and predict in that unit"
        )
    if float(arr.max() - arr.min()) <= 1e-12 * max(1.0, abs(float(arr.mean()))):
        raise DataError(
            f"{desc}: every one of the {what} is {float(arr[0])!r}; a constant is nothing to learn (a regression "
            "needs labels that vary)"
        )
    return torch.as_tensor(arr)  # float64: a price keeps its cents (the model trains on the standardized float32)


def check_labels(y: Any, desc: str, names: list[str] | None = None) -> torch.Tensor:
    """Labels as a 1-D long tensor, or a DataError that says what is wrong: not integers (strings,
    fractional floats), negative, fewer than 2 classes, or a class in 0..K-1 with no sample (a
    stray label 1000 would otherwise make a 1001-class model)."""
    arr = np.asarray(y).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{desc}: no samples")
    if arr.dtype.kind in "USO":
        raise DataError(
            f"{desc}: labels must be integers 0..K-1, found {arr.dtype.kind == 'O' and 'objects' or 'strings'} "
            f"such as {arr[:3].tolist()}; map each class to an integer (class names can go in 'class_names')"
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise DataError(
                f"{desc}: labels must be integers 0..K-1, found fractional or non-finite values such as "
                f"{arr[(arr != np.round(arr)) | ~np.isfinite(arr)][:3].tolist()}; if y is a quantity to "
                "predict, set a regression metric (target.metric: rmse | mae | r2)"
            )
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{desc}: labels must be integers 0..K-1, found dtype {arr.dtype}")
    lab = arr.astype(np.int64)
    if lab.min() < 0:
        raise DataError(f"{desc}: labels must be integers 0..K-1, found {int(lab.min())}")
    k = max(int(lab.max()) + 1, len(names or []))
    present = np.bincount(lab, minlength=k)
    if (present > 0).sum() < 2:
        raise DataError(f"{desc}: every sample has label {int(lab[0])}; a classifier needs at least 2 classes")
    empty = np.flatnonzero(present == 0)
    if len(empty):
        shown = ", ".join(str(int(e)) for e in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise DataError(
            f"{desc}: labels must be 0..K-1 with every class present; {len(empty)} of 0..{k - 1} have no "
            f"sample ({shown}; largest label {int(lab.max())}); renumber the classes"
        )
    return torch.as_tensor(lab)


def _digits(_: Any, regression: bool = False) -> Source:
    from sklearn.datasets import load_digits

    if regression:
        raise DataError(
            "data.source: digits has classes (the digit in each image), not a number to predict; "
            "a regression (target.metric rmse | mae | r2) reads a csv / parquet table or an npz with float y"
        )
    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0
    return in_memory_source(x, d.target, [str(c) for c in d.target_names], "digits (scikit-learn, 8x8 grey)")


def _npz(cfg: Any, regression: bool = False) -> Source:
    if not cfg.root:
        raise DataError("data.root: the npz source needs data.root set to a .npz file with arrays 'x' and 'y'")
    path = Path(cfg.root)
    if not path.is_file():
        raise DataError(f"data.root: npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {missing}; found {z.files}; save with np.savez(path, x=..., y=...)"
                )
            x, y = z["x"], z["y"]
            names = [str(n) for n in z["class_names"]] if "class_names" in z.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(
            f"{path}: not a readable .npz file without pickles ({type(exc).__name__}: {str(exc)[:200]}); "
            "save it with np.savez(path, x=..., y=...)"
        ) from None
    return in_memory_source(x, y, names, f"npz {path}", regression=regression)


_TV = {
    "mnist": ("MNIST", "MNIST/raw/train-images-idx3-ubyte (and the other 3 idx files)"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/train-images-idx3-ubyte (and the other 3 idx files)"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/data_batch_1 ... test_batch"),
}


def _torchvision(cfg: Any, regression: bool = False) -> Source:
    import torchvision.datasets as tvd

    if regression:
        raise DataError(
            f"data.source: {cfg.source} has classes, not a number to predict; a regression (target.metric "
            "rmse | mae | r2) reads a csv / parquet table or an npz with float y"
        )
    cls_name, files = _TV[cfg.source]
    root = Path(cfg.root or "data")
    cls = getattr(tvd, cls_name)
    try:
        parts = [cls(str(root), train=t, download=False) for t in (True, False)]
    except RuntimeError:
        raise DataError(
            f"data.source={cfg.source}: files not found under {root.resolve()}; expected {root}/{files}. "
            "trainkit never downloads: fetch them on a machine with network access and copy them there, "
            "or set data.root to where they are."
        ) from None
    xs = [torch.as_tensor(np.asarray(p.data)) for p in parts]
    x = torch.cat(xs).float() / 255.0
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    y = torch.cat([torch.as_tensor(np.asarray(p.targets)) for p in parts])
    return in_memory_source(x, y, list(parts[0].classes), f"{cls_name} ({root})", add_channel=True)


def custom_source(cfg: Any, regression: bool = False) -> Source:
    """A user's ``package.module:function`` (called with ``data.root`` when set): a pair ``(x, y)``
    of arrays, a torch Dataset, or a :class:`Source`. ``regression``: its labels are numbers."""
    spec = cfg.source
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(
            f"data.source={spec!r}: cannot import ({exc}); expected 'package.module:function' on sys.path"
        ) from None
    out = fn(cfg.root) if cfg.root else fn()
    if isinstance(out, Source):  # a planted source of trainkit.testing, or a user's own ready Source
        if out.regression != regression:
            raise DataError(
                f"data.source={spec!r} returned a Source of {'numbers' if out.regression else 'classes'}, "
                f"but target.metric makes this run {'a regression' if regression else 'a classifier'}"
            )
        return out
    if isinstance(out, tuple) and len(out) == 2:
        return in_memory_source(out[0], out[1], None, f"custom {spec}", regression=regression)
    if isinstance(out, Dataset) and regression:
        raise DataError(
            f"data.source={spec!r}: a streamed Dataset is for classes; return arrays (x, y) for a regression"
        )
    if isinstance(out, Dataset):
        ys = getattr(out, "targets", None)
        ys = [out[i][1] for i in range(len(out))] if ys is None else ys
        ys = check_labels([int(v) if torch.is_tensor(v) and v.numel() == 1 else v for v in ys], f"custom {spec}")
        first = out[0][0]
        keys = [
            hashlib.sha256(torch.as_tensor(out[i][0]).float().numpy().tobytes()).hexdigest() for i in range(len(out))
        ]
        return Source(
            y=ys,
            dataset=out,
            class_names=[str(i) for i in range(int(ys.max()) + 1)],
            input_shape=tuple(torch.as_tensor(first).shape),
            description=f"custom {spec}",
            sample_keys=keys,
        )
    raise DataError(f"data.source={spec!r} returned {type(out).__name__}; expected a torch Dataset or a pair (x, y)")


SOURCES = {
    "digits": _digits,
    "npz": _npz,
    "mnist": _torchvision,
    "fashion_mnist": _torchvision,
    "cifar10": _torchvision,
}
