"""Datasets, stratified splits, fingerprints, in-memory index batching, and the test quarantine.

Sources: ``digits`` (built in, scikit-learn), ``image_folder``, ``mnist`` / ``fashion_mnist`` /
``cifar10`` (torchvision, local files only), ``npz`` (arrays ``x``, ``y``) and a user's
``package.module:function``. Data that fits in memory is held as tensors and batched by index;
folder data streams through a DataLoader with workers. The test split can only be read in
Phase 5 (``05_finalization``); every attempt, allowed or refused, is logged to the run folder.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainkit._io import append_jsonl, read_json, write_json_atomic
from trainkit.errors import DataError, QuarantineError

__all__ = ["Source", "DataBundle", "load_source", "check_source", "check_labels", "stratified_split", "load_data", "IndexBatches",
           "FINAL_PHASE", "TEST_ACCESS_LOG"]

FINAL_PHASE = "05_finalization"
TEST_ACCESS_LOG = "test_access.jsonl"
DATA_LOADS = "data_loads.jsonl"  # one line per load_data in a run: phase, seconds, whether it was Phase 1's scan
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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

    @property
    def in_memory(self) -> bool:
        return self.x is not None


# ---------------------------------------------------------------- sources

def _row_keys(x: torch.Tensor) -> list[str]:
    flat = x.reshape(len(x), -1).to(torch.float32).contiguous().numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def _in_memory(x: Any, y: Any, names: list[str] | None, desc: str, add_channel: bool = False) -> Source:
    """Arrays as a Source. The sample shape is kept as given: ``(N, F)`` tabular, ``(N, C, L)``
    signals, ``(N, C, H, W)`` images; only built-in sources whose files hold ``(N, H, W)`` grey
    images ask for the channel axis (``add_channel``)."""
    y = check_labels(y, desc, names)
    try:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{desc}: x must be numeric ({type(exc).__name__}: {str(exc)[:160]})") from None
    if len(x) != len(y):
        raise DataError(f"{desc}: x has {len(x)} samples but y has {len(y)}; they must match")
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1) if x.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise DataError(f"{desc}: {int(bad.sum())} sample(s) have NaN or Inf features (first rows {rows}); "
                        "impute or drop them before training")
    if add_channel and x.ndim == 3:  # N, H, W grey images
        x = x.unsqueeze(1)
    if x.ndim == 1:
        raise DataError(f"{desc}: x has shape {tuple(x.shape)}; expected (N, F) tabular, (N, C, L) signals or "
                        "(N, C, H, W) images")
    k = int(y.max()) + 1
    return Source(y=y, x=x, class_names=names or [str(i) for i in range(k)],
                  input_shape=tuple(x.shape[1:]), description=desc, sample_keys=_row_keys(x))


def check_labels(y: Any, desc: str, names: list[str] | None = None) -> torch.Tensor:
    """Labels as a 1-D long tensor, or a DataError that says what is wrong: not integers (strings,
    fractional floats), negative, fewer than 2 classes, or a class in 0..K-1 with no sample (a
    stray label 1000 would otherwise make a 1001-class model)."""
    arr = np.asarray(y).reshape(-1)
    if arr.size == 0:
        raise DataError(f"{desc}: no samples")
    if arr.dtype.kind in "USO":
        raise DataError(f"{desc}: labels must be integers 0..K-1, found {arr.dtype.kind == 'O' and 'objects' or 'strings'} "
                        f"such as {arr[:3].tolist()}; map each class to an integer (class names can go in 'class_names')")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise DataError(f"{desc}: labels must be integers 0..K-1, found fractional or non-finite values such as "
                            f"{arr[(arr != np.round(arr)) | ~np.isfinite(arr)][:3].tolist()}")
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
        raise DataError(f"{desc}: labels must be 0..K-1 with every class present; {len(empty)} of 0..{k - 1} have no "
                        f"sample ({shown}; largest label {int(lab.max())}); renumber the classes")
    return torch.as_tensor(lab)


def _digits(_: Any) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0
    return _in_memory(x, d.target, [str(c) for c in d.target_names], "digits (scikit-learn, 8x8 grey)")


def _npz(cfg: Any) -> Source:
    if not cfg.root:
        raise DataError("data.root: the npz source needs data.root set to a .npz file with arrays 'x' and 'y'")
    path = Path(cfg.root)
    if not path.is_file():
        raise DataError(f"data.root: npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; found {z.files}; save with np.savez(path, x=..., y=...)")
            x, y = z["x"], z["y"]
            names = [str(n) for n in z["class_names"]] if "class_names" in z.files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz file without pickles ({type(exc).__name__}: {str(exc)[:200]}); "
                        "save it with np.savez(path, x=..., y=...)") from None
    return _in_memory(x, y, names, f"npz {path}")


_TV = {"mnist": ("MNIST", "MNIST/raw/train-images-idx3-ubyte (and the other 3 idx files)"),
       "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/train-images-idx3-ubyte (and the other 3 idx files)"),
       "cifar10": ("CIFAR10", "cifar-10-batches-py/data_batch_1 ... test_batch")}


def _torchvision(cfg: Any) -> Source:
    import torchvision.datasets as tvd

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
    return _in_memory(x, y, list(parts[0].classes), f"{cls_name} ({root})", add_channel=True)


class ImageFolderData(Dataset):
    """Streams images from disk; resize, convert to 1 or 3 channels, scale to [0, 1], normalize."""

    own_normalization = True  # its samples come normalized (BatchIterable must not normalize them again)

    def __init__(self, paths: list[str], labels: list[int], size: tuple[int, int], mode: str) -> None:
        self.paths, self.labels, self.size, self.mode = paths, labels, size, mode
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert(self.mode).resize((self.size[1], self.size[0]))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr)
        return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.raw(i)
        if self.mean is not None:
            x = (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)
        return x, self.labels[i]


def _class_folders(cfg: Any) -> tuple[Path, list[str]]:
    """(root, class folder names) of an image folder, checked without decoding anything: the root
    exists, holds at least 2 class folders, and none of them is empty."""
    root = Path(cfg.root or "")
    if not cfg.root or not root.is_dir():
        raise DataError(f"data.root: image folder not found: {root!s}; expected one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s); need at least 2 sub-folders, one per class")
    empty = [n for n in classes if not any(p.suffix.lower() in _IMAGE_EXT and p.is_file() for p in (root / n).rglob("*"))]
    if empty:
        raise DataError(f"{root}: class folder(s) {empty} hold no images ({sorted(_IMAGE_EXT)}); add images or remove "
                        "the folder (an empty class cannot be learned or evaluated)")
    return root, classes


IMAGE_MANIFEST = "01_planning/data_manifest.json"


def _inspect_image(p: Path) -> dict[str, Any]:
    """One file's manifest entry: size, mtime, sha256 of its bytes, and its header (width, height,
    mode), read without decoding the pixels; ``error`` when PIL cannot open or verify it."""
    from PIL import Image

    st = p.stat()
    data = p.read_bytes()
    out: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest()}
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            out.update(w=im.width, h=im.height, mode=im.mode)
            im.verify()  # structure and checksums, no decode
    except Exception as exc:  # PIL raises many types for corrupt files
        out["error"] = type(exc).__name__
    return out


def _image_entries(folder: str, rel: str) -> Iterator[tuple[str, Any]]:
    """(relative path, scandir entry) of every image file under ``folder``, recursively."""
    import os

    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir():
                yield from _image_entries(e.path, f"{rel}/{e.name}")
            elif os.path.splitext(e.name)[1].lower() in _IMAGE_EXT and e.is_file():
                yield f"{rel}/{e.name}", e


def scan_image_folder(root: Path, classes: list[str], previous: dict[str, Any] | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """The folder's manifest: every image (relative path, label, size, mtime, sha256, header).
    Files are hashed in parallel threads with a progress bar; with ``previous`` (an earlier
    manifest) a file whose size and mtime are unchanged keeps its entry: only what changed is read."""
    from concurrent.futures import ThreadPoolExecutor

    import os

    old = {e["path"]: e for e in (previous or {}).get("files", [])}
    listed: list[tuple[str, int, str]] = []
    stats: list[os.stat_result] = []
    for label, name in enumerate(classes):
        # sorted as paths compare (part by part: "/" sorts before every other character)
        found = sorted(_image_entries(os.path.join(str(root), name), name), key=lambda t: t[0].replace("/", "\x00"))
        for rel, entry in found:  # plain strings and scandir entries: pathlib costs more than the stat itself
            listed.append((rel, label, entry.path))
            stats.append(entry.stat())
    entries: list[dict[str, Any] | None] = [None] * len(listed)
    todo = []
    for i, (rel, label, _) in enumerate(listed):
        e = old.get(rel)
        if e is not None and e["size"] == stats[i].st_size and e["mtime_ns"] == stats[i].st_mtime_ns:
            entries[i] = dict(e, label=label)
            continue
        todo.append(i)
    from trainkit._io import progress_bar

    bar = progress_bar(len(todo), f"scanning {root.name}", progress and len(todo) > 200, unit="img")

    with ThreadPoolExecutor(max_workers=max(2, min(16, 2 * (os.cpu_count() or 1)))) as pool:
        for i, info in zip(todo, pool.map(lambda i: _inspect_image(Path(listed[i][2])), todo)):
            entries[i] = {"path": listed[i][0], "label": listed[i][1], **info}
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"root": str(root), "classes": classes, "files": entries, "rehashed": len(todo)}


def _image_folder(cfg: Any, manifest: Path | None = None, write: bool = False) -> Source:
    """An image folder as a streamed Source. Listing uses the manifest: Phase 1 scans the folder into
    ``01_planning/data_manifest.json`` (``write``); later loads only ``stat`` the files against it and
    read what changed. Unreadable files are reported once, all together, before any training."""
    root, classes = _class_folders(cfg)
    previous = read_json(manifest) if manifest is not None and manifest.is_file() and not write else None
    if previous is not None and previous.get("classes") != classes:
        previous = None
    scan = scan_image_folder(root, classes, previous, progress=write or previous is None)
    files = scan["files"]
    bad = [f"{root / f['path']} ({f['error']})" for f in files if f.get("error")]
    if bad:
        if manifest is not None and write:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            (manifest.parent / "unreadable_images.txt").write_text("\n".join(bad) + "\n")
        more = f" … and {len(bad) - 20} more (all listed in {manifest.parent / 'unreadable_images.txt'})" \
            if len(bad) > 20 and manifest is not None and write else ""
        raise DataError(f"{root}: {len(bad)} unreadable image(s), found before training: " + "; ".join(bad[:20]) + more
                        + ". Remove or replace them, then run again.")
    if not files:
        raise DataError(f"{root}: no images with extensions {sorted(_IMAGE_EXT)}")
    first = files[0]
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (first["h"], first["w"])
    mode = "L" if first["mode"] in ("L", "1", "I", "I;16") else "RGB"
    if manifest is not None and write:
        write_json_atomic(manifest, scan)
    ds = ImageFolderData([f"{root}/{f['path']}" for f in files], [f["label"] for f in files], size, mode)
    return Source(y=torch.tensor([f["label"] for f in files]), dataset=ds, class_names=classes,
                  input_shape=(1 if mode == "L" else 3, *size), description=f"image folder {root}",
                  sample_keys=[f["sha256"] for f in files])


def _custom(cfg: Any) -> Source:
    spec = cfg.source
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"data.source={spec!r}: cannot import ({exc}); expected 'package.module:function' on sys.path") from None
    out = fn(cfg.root) if cfg.root else fn()
    if isinstance(out, tuple) and len(out) == 2:
        return _in_memory(out[0], out[1], None, f"custom {spec}")
    if isinstance(out, Dataset):
        ys = getattr(out, "targets", None)
        ys = [out[i][1] for i in range(len(out))] if ys is None else ys
        ys = check_labels([int(v) if torch.is_tensor(v) and v.numel() == 1 else v for v in ys], f"custom {spec}")
        first = out[0][0]
        keys = [hashlib.sha256(torch.as_tensor(out[i][0]).float().numpy().tobytes()).hexdigest() for i in range(len(out))]
        return Source(y=ys, dataset=out, class_names=[str(i) for i in range(int(ys.max()) + 1)],
                      input_shape=tuple(torch.as_tensor(first).shape), description=f"custom {spec}", sample_keys=keys)
    raise DataError(f"data.source={spec!r} returned {type(out).__name__}; expected a torch Dataset or a pair (x, y)")


_SOURCES = {"digits": _digits, "npz": _npz, "image_folder": _image_folder,
            "mnist": _torchvision, "fashion_mnist": _torchvision, "cifar10": _torchvision}


def check_source(cfg: Any) -> None:
    """Check that the configured data can be read, before a run folder is made: an image folder's
    layout (class folders, none empty; images are decoded in Phase 1), any other source by loading
    it. Raises DataError naming the field or file."""
    if cfg.source == "image_folder":
        _class_folders(cfg)
        return
    load_source(cfg)


def load_source(cfg: Any, manifest: Path | None = None, write_manifest: bool = False) -> Source:
    """Load ``cfg`` (a DataConfig) into a :class:`Source`; raises DataError naming the field. An
    image folder is listed through ``manifest`` (see _image_folder)."""
    if cfg.source == "image_folder":
        return _image_folder(cfg, manifest, write_manifest)
    if cfg.source in _SOURCES:
        return _SOURCES[cfg.source](cfg)
    if ":" in cfg.source:
        return _custom(cfg)
    raise DataError(f"data.source: unknown source {cfg.source!r}; valid: {', '.join(_SOURCES)} or 'package.module:function'")


# ---------------------------------------------------------------- splits

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
        out["val"] += idx[n_test:n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val:].tolist()
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in out.items()}


def _fingerprint(keys: list[str], y: np.ndarray, idx: np.ndarray) -> str:
    lines = sorted(f"{keys[i]}:{int(y[i])}" for i in idx)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _duplicates(keys: list[str], splits: dict[str, np.ndarray]) -> dict[str, int]:
    sets = {k: {keys[i] for i in v} for k, v in splits.items()}
    within = sum(len(v) - len(sets[k]) for k, v in splits.items())
    return {"within_splits": within,
            "across_splits": len((sets["train"] & sets["val"]) | (sets["train"] & sets["test"]) | (sets["val"] & sets["test"])),
            "train_test": len(sets["train"] & sets["test"]), "train_val": len(sets["train"] & sets["val"]),
            "val_test": len(sets["val"] & sets["test"])}


# ---------------------------------------------------------------- batching

class IndexBatches:
    """Batches of indices drawn from a per-epoch seeded permutation, sharded across ranks.

    Each global batch holds ``batch_size * world`` indices; rank r takes its slice. ``global_n``
    is the size of the global batch, so a summed loss divided by it equals the full-batch mean.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
                 epoch: int = 0, rank: int = 0, world: int = 1, weights: torch.Tensor | None = None) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.rank, self.world, self.weights = rank, world, weights

    def __len__(self) -> int:
        g = self.batch_size * self.world
        return (len(self.indices) + g - 1) // g

    def global_sizes(self) -> list[int]:
        """Size of each global batch, in order (independent of the shuffle; no permutation drawn)."""
        g, n = self.batch_size * self.world, len(self.indices)
        return [min(g, n - start) for start in range(0, n, g)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            if self.weights is not None:  # balanced: draw with replacement by per-sample weight
                idx = idx[torch.multinomial(self.weights, len(idx), replacement=True, generator=g)]
            else:
                idx = idx[torch.randperm(len(idx), generator=g)]
        gsize = self.batch_size * self.world
        for start in range(0, len(idx), gsize):
            chunk = idx[start:start + gsize]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield mine, len(chunk)


class _BatchSampler:
    def __init__(self, batches: IndexBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for mine, _ in self.batches:
            yield mine.tolist()


# ---------------------------------------------------------------- the bundle

@dataclass
class DataBundle:
    """Splits of one source, normalized with train statistics; the test split is quarantined."""

    source: Source
    splits: dict[str, np.ndarray]
    mean: torch.Tensor
    std: torch.Tensor
    phase: str | None = None
    run_dir: Path | None = None
    labels: torch.Tensor | None = None  # training labels after optional label noise
    info: dict[str, Any] = field(default_factory=dict)
    _x: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.source.input_shape

    def split_labels(self, split: str) -> torch.Tensor:
        """Labels of a train or val split (never the quarantined test split)."""
        if split == "test":
            raise QuarantineError("test labels are read only through the Phase 5 accessors")
        return (self.labels if self.labels is not None else self.source.y)[torch.as_tensor(self.splits[split])]

    def class_counts(self, split: str = "train") -> torch.Tensor:
        return torch.bincount(self.split_labels(split), minlength=self.num_classes)

    def _check_split(self, split: str, reason: str) -> None:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
        if split != "test":
            return
        allowed = self.phase == FINAL_PHASE
        if self.run_dir is not None:
            append_jsonl(Path(self.run_dir) / TEST_ACCESS_LOG, {"time": time.time(), "phase": self.phase,
                                                                "allowed": allowed, "reason": reason})
        if not allowed:
            raise QuarantineError(
                f"the test split is quarantined until Phase 5 ({FINAL_PHASE}); current phase: {self.phase or 'none'}. "
                "Use the validation split for every decision before finalization."
            )

    def arrays(self, split: str, device: str | torch.device = "cpu", reason: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) tensors of a split, normalized; test only in Phase 5 (logged)."""
        self._check_split(split, reason)
        idx = torch.as_tensor(self.splits[split])
        y = (self.labels if self.labels is not None else self.source.y)[idx]
        if self._x is not None:
            x = self._x[idx]
        else:
            ds = self.source.dataset
            x = torch.stack([torch.as_tensor(ds[int(i)][0]).float() for i in idx])
        return x.to(device), y.to(device)

    def batches(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                rank: int = 0, world: int = 1, device: str | torch.device = "cpu", workers: int = 0,
                reason: str = "", balanced: bool = False) -> "BatchIterable":
        """An iterable of ``(x, y, global_n)`` batches for one epoch; ``balanced`` draws every
        class equally often (with replacement)."""
        self._check_split(split, reason)
        weights = None
        if balanced:
            counts = self.class_counts(split).clamp_min(1).double()
            weights = 1.0 / counts[self.split_labels(split)]
        plan = IndexBatches(self.splits[split], batch_size, shuffle, seed, epoch, rank, world, weights)
        return BatchIterable(self, plan, torch.device(device), workers)


class BatchIterable:
    """One epoch of batches: tensor indexing for in-memory data, a DataLoader for streamed data."""

    def __init__(self, bundle: DataBundle, plan: IndexBatches, device: torch.device, workers: int) -> None:
        self.bundle, self.plan, self.device, self.workers = bundle, plan, device, workers

    def __len__(self) -> int:
        return len(self.plan)

    def _loader(self) -> DataLoader:
        """The bundle's DataLoader for this kind of pass (training or evaluation), made once: with
        workers they persist across epochs (no process start per epoch); each epoch hands the
        loader's batch sampler its own plan (the sampler runs in this process)."""
        from trainkit.repro import seed_worker

        b = self.bundle
        key = (id(b.source.dataset), self.workers, self.device.type, self.plan.shuffle)
        cache = b.__dict__.setdefault("_loaders", {})
        if key not in cache:
            sampler = _BatchSampler(self.plan)
            cache[key] = (DataLoader(b.source.dataset, batch_sampler=sampler, num_workers=self.workers,
                                     pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker,
                                     persistent_workers=self.workers > 0), sampler)
        loader, sampler = cache[key]
        sampler.batches = self.plan
        return loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        b = self.bundle
        labels = (b.labels if b.labels is not None else b.source.y).to(self.device)
        if b._x is not None:
            x_all = b._x if b._x.device == self.device else b._x.to(self.device)
            b._x = x_all
            on_cpu = self.device.type == "cpu"
            for mine, n in self.plan:
                mine = mine if on_cpu else mine.to(self.device, non_blocking=True)
                yield x_all[mine], labels[mine], n
            return
        loader = self._loader()
        own_norm = getattr(b.source.dataset, "own_normalization", False)
        mean, std = b.mean.to(self.device), b.std.to(self.device)
        for (x, _), (mine, n) in zip(loader, self.plan):
            x = x.to(self.device, non_blocking=True).float()
            yield (x if own_norm else normalize(x, mean, std)), labels[mine.to(self.device)], n


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with per-channel statistics for images (N, C, ...) and scalars for vectors."""
    if x.ndim > 2:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.view(shape), std.view(shape)
    return (x - mean) / std


def _normalization(source: Source, train_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if source.x is not None:
        xt = source.x[torch.as_tensor(train_idx)]
        dims = [0] + list(range(2, xt.ndim)) if xt.ndim >= 3 else [0]
        mean, std = xt.mean(dim=dims), xt.std(dim=dims)
    else:
        ds = source.dataset
        pick = train_idx[:: max(1, len(train_idx) // 256)]
        xt = torch.stack([ds.raw(int(i)) if hasattr(ds, "raw") else torch.as_tensor(ds[int(i)][0]).float() for i in pick])
        dims = [0] + list(range(2, xt.ndim)) if xt.ndim >= 3 else [0]
        mean, std = xt.mean(dim=dims), xt.std(dim=dims)
    if xt.ndim == 2:  # tabular: per feature; a constant feature keeps scale 1 (stays finite on unseen values)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean, std.clamp_min(1e-6)


def _splits_record(source: Source, splits: dict[str, np.ndarray], cfg: Any, mean: torch.Tensor,
                   std: torch.Tensor) -> dict[str, Any]:
    y = source.y.numpy()
    counts = {k: np.bincount(y[v], minlength=len(source.class_names)).tolist() for k, v in splits.items()}
    return {
        "source": source.description, "seed": cfg.split_seed,
        "fractions": {"val": cfg.val_fraction, "test": cfg.test_fraction},
        "sizes": {k: int(len(v)) for k, v in splits.items()}, "class_counts": counts,
        "class_names": source.class_names, "input_shape": list(source.input_shape),
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "fingerprints": {k: _fingerprint(source.sample_keys, y, v) for k, v in splits.items()},
        "duplicates": _duplicates(source.sample_keys, splits),
        "indices": {k: v.tolist() for k, v in splits.items()},
    }


def load_data(cfg: Any, run_dir: str | Path | None = None, phase: str | None = None,
              write_splits: bool = False) -> DataBundle:
    """Load the configured data, split it, check it against Phase 1's ``splits.json`` when present.

    ``cfg`` is a whole TrainkitConfig (or its ``data`` section). With ``write_splits`` the split
    record is written to ``run_dir/01_planning/splits.json``; otherwise an existing record is
    checked and a change in the data since Phase 1 raises DataError.
    """
    t_load = time.perf_counter()
    dcfg = getattr(cfg, "data", cfg)
    source = load_source(dcfg, Path(run_dir) / IMAGE_MANIFEST if run_dir is not None else None, write_splits)
    splits = stratified_split(source.y.numpy(), dcfg.val_fraction, dcfg.test_fraction, dcfg.split_seed)
    if any(len(v) == 0 for v in splits.values()):
        raise DataError(f"data: a split is empty with {len(source.y)} samples; add data or change val/test fractions")
    labels = None
    if dcfg.subset:
        rng = np.random.default_rng(dcfg.split_seed + 1)
        splits["train"] = np.sort(rng.permutation(splits["train"])[: dcfg.subset])
    if dcfg.label_noise > 0:
        rng = np.random.default_rng(dcfg.split_seed + 2)
        labels = source.y.clone()
        tr = splits["train"]
        flip = rng.choice(tr, size=int(round(len(tr) * dcfg.label_noise)), replace=False)
        k = len(source.class_names)
        labels[torch.as_tensor(flip)] = (labels[torch.as_tensor(flip)] + torch.as_tensor(rng.integers(1, k, len(flip)))) % k
    split_file = Path(run_dir) / "01_planning" / "splits.json" if run_dir is not None else None
    if split_file is not None and split_file.is_file() and not write_splits and source.x is None:
        norm = read_json(split_file)["normalization"]  # streamed data: Phase 1's statistics (fingerprints checked below)
        mean, std = torch.tensor(norm["mean"]), torch.tensor(norm["std"])
    else:
        mean, std = _normalization(source, splits["train"])
    record = _splits_record(source, splits, dcfg, mean, std)
    if labels is not None:
        record["label_noise_flipped"] = sorted(int(i) for i in np.flatnonzero((labels != source.y).numpy()))
    if run_dir is not None:
        path = Path(run_dir) / "01_planning" / "splits.json"
        if write_splits:
            write_json_atomic(path, record)
        elif path.exists():
            old = read_json(path)["fingerprints"]
            changed = [k for k in old if old[k] != record["fingerprints"][k]]
            if changed:
                raise DataError(f"data changed since Phase 1: split(s) {changed} no longer match {path}; "
                                "restore the data or start a new run")
    if dcfg.exclude:
        splits["train"] = _exclude(splits["train"], dcfg.exclude, run_dir, record)
    phase = effective_phase(run_dir, phase)
    if isinstance(source.dataset, ImageFolderData):
        source.dataset.mean, source.dataset.std = mean, std
    if phase != FINAL_PHASE:  # before Phase 5 the test rows are not in any object handed out
        _seal_test_rows(source, splits["test"])
        if labels is not None:
            labels[torch.as_tensor(splits["test"])] = -1
    if run_dir is not None and (Path(run_dir) / "run.json").is_file():  # what each phase's load cost (benchmarks read it)
        append_jsonl(Path(run_dir) / DATA_LOADS, {"time": time.time(), "phase": phase, "seconds": round(time.perf_counter() - t_load, 4),
                                                  "scan": bool(write_splits), "source": dcfg.source})
    bundle = DataBundle(source=source, splits=splits, mean=mean, std=std, phase=phase,
                        run_dir=Path(run_dir) if run_dir else None, labels=labels, info=record)
    if source.x is not None:
        bundle._x = normalize(source.x, mean, std)
        if phase != FINAL_PHASE and len(splits["test"]):
            bundle._x[torch.as_tensor(splits["test"])] = 0.0
    return bundle


def effective_phase(run_dir: str | Path | None, requested: str | None) -> str | None:
    """The phase whose rules apply to a data load: the one the run's own manifest says is running
    (not whatever a caller passes); without a run folder, never the final phase (a test read must
    be logged in a run)."""
    path = Path(run_dir) / "run.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None if requested == FINAL_PHASE else requested
    running = [e["phase"] for e in read_json(path).get("phases", []) if e.get("status") == "running"]
    if requested == FINAL_PHASE and (not running or running[-1] != FINAL_PHASE):
        return running[-1] if running else None
    return requested


def _seal_test_rows(source: Source, test_idx: np.ndarray) -> None:
    """Overwrite the test rows' samples (zeros) and labels (-1) in memory, and wrap a streamed
    dataset so that reading a test index raises QuarantineError. Fingerprints and content hashes
    were computed before this, from the real rows."""
    idx = torch.as_tensor(np.asarray(test_idx, dtype=np.int64))
    if len(idx) == 0:
        return
    if source.x is not None:
        source.x = source.x.clone()
        source.x[idx] = 0.0
    source.y = source.y.clone()
    source.y[idx] = -1
    if source.dataset is not None:
        source.dataset = SealedDataset(source.dataset, set(int(i) for i in test_idx))


class SealedDataset(Dataset):
    """A streamed dataset whose test indices cannot be read before Phase 5."""

    def __init__(self, inner: Dataset, sealed: set[int]) -> None:
        self._inner, self._sealed = inner, frozenset(sealed)
        self.mean, self.std = getattr(inner, "mean", None), getattr(inner, "std", None)
        self.own_normalization = getattr(inner, "own_normalization", False)

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]

    def _check(self, i: int) -> None:
        if int(i) in self._sealed:
            raise QuarantineError(f"sample {int(i)} belongs to the quarantined test split; it can be read only in "
                                  f"Phase 5 ({FINAL_PHASE})")

    def __getitem__(self, i: int) -> Any:
        self._check(i)
        return self._inner[i]

    def raw(self, i: int) -> torch.Tensor:
        self._check(i)
        return self._inner.raw(i)  # type: ignore[attr-defined]


def _exclude(train: np.ndarray, spec: str, run_dir: str | Path | None, record: dict[str, Any]) -> np.ndarray:
    """Drop the listed sample indices from training (after the Phase 1 fingerprint check: the
    splits are unchanged, training just skips them). ``record['excluded']`` says how many."""
    path = Path(spec)
    if not path.is_absolute() and run_dir is not None:
        path = Path(run_dir) / path
    if not path.is_file():
        raise DataError(f"data.exclude: {path} not found; expected a JSON file {{\"indices\": [...]}} "
                        "(Phase 3 writes one as exclude.json) or remove data.exclude")
    try:
        drop = {int(i) for i in read_json(path)["indices"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"data.exclude: {path} is not {{\"indices\": [integers]}} ({exc})") from None
    kept = np.array([i for i in train if int(i) not in drop], dtype=train.dtype)
    if len(kept) == 0:
        raise DataError(f"data.exclude: {path} removes every training sample")
    record["excluded"] = int(len(train) - len(kept))
    return kept


def augment_batch(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Training-time augmentation with torch's global RNG: images (N, C, H, W) get flips and
    crops, signals (N, C, L) random shifts, any input Gaussian noise."""
    if kind == "none":
        return x
    if kind == "noise":  # inputs are normalized: 0.1 is a tenth of a feature's spread
        return x + 0.1 * torch.randn_like(x)
    if x.ndim == 3:  # signals: a random shift along the time axis (crop of the zero-padded signal)
        n, _, length = x.shape
        pad = max(1, length // 8)
        shift = int(torch.randint(0, 2 * pad + 1, (1,)))
        return torch.nn.functional.pad(x, (pad, pad))[:, :, shift:shift + length]
    if x.ndim != 4:
        return x
    n, _, h, w = x.shape
    if kind == "flip_crop":
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    return padded[:, :, dy:dy + h, dx:dx + w]
