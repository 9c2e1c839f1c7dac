"""The bundle: one source split, normalized with train statistics, its test rows quarantined.
``load_data`` builds it; where a run keeps its records is the caller's :class:`DataStore`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit._io import append_jsonl, read_json, write_json_atomic
from trainkit.data.batches import BatchIterable, IndexBatches
from trainkit.data.images import ImageFolderData, class_folders, load_image_folder
from trainkit.data.quarantine import Quarantine, seal_test_rows
from trainkit.data.sources import SOURCES, Source, custom_source
from trainkit.data.splits import fit_normalization, label_scale, normalize, split_record, strata, stratified_split
from trainkit.data.table_leaks import row_keys
from trainkit.data.tables import TABLE_SOURCES, load_table, records_repeat_by_chance
from trainkit.errors import DataError, QuarantineError
from trainkit.metrics import check_metric

__all__ = ["DataBundle", "DataStore", "load_data", "load_source", "check_source"]


@dataclass(frozen=True)
class DataStore:
    """Where a run keeps what the data layer records; its caller (a run folder) names the files.

    ``root``: relative ``data.exclude`` paths resolve against it. ``splits``: the split record,
    written by the first load (``write_splits``) and checked by every later one. ``manifest``: an
    image folder's file list. ``loads``: one JSON line per load (who, seconds, whether it scanned);
    None records nothing."""

    root: Path
    splits: Path
    manifest: Path
    loads: Path | None = None
    preprocess: Path | None = None  # a table's fitted preprocessing (written with the split record, used after)


@dataclass
class DataBundle:
    """Splits of one source, normalized with train statistics; the test split is quarantined."""

    source: Source
    splits: dict[str, np.ndarray]
    mean: torch.Tensor
    std: torch.Tensor
    quarantine: Quarantine = field(default_factory=Quarantine)
    store: DataStore | None = None
    labels: torch.Tensor | None = None  # training labels after a planted source's label noise
    info: dict[str, Any] = field(default_factory=dict)
    _x: torch.Tensor | None = None

    @property
    def phase(self) -> str | None:
        """Who loaded this bundle (the quarantine's reader)."""
        return self.quarantine.who

    @property
    def num_classes(self) -> int:
        """The model's outputs: the classes, or 1 for a regression (one number)."""
        return len(self.source.class_names)

    @property
    def regression(self) -> bool:
        """Whether the label is a number to predict (``target.metric`` rmse, mae or r2)."""
        return self.source.regression

    @property
    def label_scale(self) -> dict[str, float] | None:
        """A regression label's train mean and std (the model sees the label standardized by them)."""
        return self.info.get("label_scale")

    def to_label_units(self, z: Any) -> np.ndarray:
        """A regression's standardized outputs or labels back in the label's units."""
        s = self.label_scale or {"mean": 0.0, "std": 1.0}
        z = z.detach().cpu().numpy() if torch.is_tensor(z) else np.asarray(z)
        return z.astype(np.float64).reshape(len(z), -1)[:, 0] * s["std"] + s["mean"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.source.input_shape

    def split_labels(self, split: str) -> torch.Tensor:
        """Labels of a train or val split (never the quarantined test split)."""
        if split == "test":
            raise QuarantineError(f"test labels are read only through the accessors of {self.quarantine.opens}")
        return (self.labels if self.labels is not None else self.source.y)[torch.as_tensor(self.splits[split])]

    def class_counts(self, split: str = "train") -> torch.Tensor:
        if self.regression:
            raise DataError("class counts: this run is a regression (its label is a number), it has no classes")
        return torch.bincount(self.split_labels(split), minlength=self.num_classes)

    def _check_split(self, split: str, reason: str, forced: bool = False) -> None:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
        if split != "test":
            return
        self.quarantine.check(reason, forced)

    def arrays(
        self, split: str, device: str | torch.device = "cpu", reason: str = "", forced: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) tensors of a split, normalized; test only when the quarantine is open (logged,
        ``forced`` when the user forced a re-evaluation)."""
        self._check_split(split, reason, forced)
        idx = torch.as_tensor(self.splits[split])
        y = (self.labels if self.labels is not None else self.source.y)[idx]
        if self._x is not None:
            x = self._x[idx]
        else:
            ds = self.source.dataset
            x = torch.stack([torch.as_tensor(ds[int(i)][0]).float() for i in idx])
        return x.to(device), y.to(device)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world: int = 1,
        device: str | torch.device = "cpu",
        workers: int = 0,
        reason: str = "",
        balanced: bool = False,
    ) -> "BatchIterable":
        """An iterable of ``(x, y, global_n)`` batches for one epoch; ``balanced`` draws every
        class equally often (with replacement)."""
        self._check_split(split, reason)
        weights = None
        if balanced:
            counts = self.class_counts(split).clamp_min(1).double()
            weights = 1.0 / counts[self.split_labels(split)]
        plan = IndexBatches(self.splits[split], batch_size, shuffle, seed, epoch, rank, world, weights)
        return BatchIterable(self, plan, torch.device(device), workers)


def check_source(cfg: Any) -> None:
    """Check that the configured data can be read, before a run folder is made: an image folder's
    layout (class folders, none empty; images are decoded in Phase 1), any other source by loading
    it. ``cfg`` is a whole TrainkitConfig (then the target metric must suit the classes too) or its
    ``data`` section. Raises DataError (or ConfigError) naming the field or file."""
    target, cfg = getattr(cfg, "target", None), getattr(cfg, "data", cfg)
    if cfg.source == "image_folder":
        classes = len(class_folders(cfg)[1])
        if target is not None:
            check_metric(target.metric, classes)
        return
    source = load_source(cfg, regression=bool(getattr(target, "regression", False)))
    if target is not None:
        check_metric(target.metric, len(source.class_names))
    if source.table is not None:  # a table: the rows must split and encode too (a class with one row, say)
        splits = stratified_split(strata(source), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        check_splits(splits, len(source.y), len(source.class_names))
        source.table.fit(splits["train"])


def load_source(
    cfg: Any, manifest: Path | None = None, write_manifest: bool = False, *, regression: bool = False
) -> Source:
    """Load ``cfg`` (a DataConfig) into a :class:`Source`; raises DataError naming the field. An
    image folder is listed through ``manifest`` (see :func:`~trainkit.data.images.load_image_folder`).
    ``regression`` (``target.metric`` rmse, mae or r2): the label is a number to predict."""
    if cfg.source == "image_folder":
        if regression:
            raise DataError(
                "data.source: an image_folder's labels are its class folders, not numbers; a regression "
                "(target.metric rmse | mae | r2) reads a csv / parquet table or an npz with float y"
            )
        return load_image_folder(cfg, manifest, write_manifest)
    if cfg.source in TABLE_SOURCES:
        return _table_source(cfg, regression)
    if cfg.source in SOURCES:
        return SOURCES[cfg.source](cfg, regression)
    if ":" in cfg.source:
        return custom_source(cfg, regression)
    valid = ", ".join([*SOURCES, "image_folder", *TABLE_SOURCES])
    raise DataError(f"data.source: unknown source {cfg.source!r}; valid: {valid} or 'package.module:function'")


def _table_source(cfg: Any, regression: bool = False) -> Source:
    """A table as a Source: labels and raw rows now; x once the preprocessing is fitted on the train
    split (:func:`_encode_table`). Content keys hash each row's raw feature values."""
    table, y = load_table(cfg, regression)
    return Source(
        y=torch.as_tensor(y),
        class_names=table.classes,
        input_shape=(0,),
        regression=regression,
        description=f"{cfg.source} {cfg.root} (label {cfg.label!r}, {len(table.kinds)} columns)",
        sample_keys=row_keys(table.frame, list(table.kinds)),
        table=table,
        duplicates_by_chance=records_repeat_by_chance(table.frame, list(table.kinds)),
    )


def _encode_table(source: Source, train: np.ndarray, store: DataStore | None, write: bool) -> None:
    """Fit the table's preprocessing on the train rows (the first load, which saves it) or apply the
    saved one (every later load: the model always sees the transform it was trained with). A
    regression's label statistics are saved with it (``target``: the label's train mean and std)."""
    saved = store.preprocess if store is not None else None
    if saved is not None and saved.is_file() and not write:
        x = source.table.use(read_json(saved))
    else:
        x = source.table.fit(train)
        if saved is not None and write:
            scale = label_scale(source, train)  # a regression's label statistics (None for classes: no key)
            write_json_atomic(saved, {**source.table.preprocess.to_dict(), **({"target": scale} if scale else {})})
    source.x = torch.as_tensor(x)
    source.input_shape = (int(x.shape[1]),)


def check_splits(splits: dict[str, np.ndarray], n: int, classes: int) -> None:
    """DataError when a split came out empty, saying why (each class is split in proportion, so
    classes of a few rows put none in val or test)."""
    empty = [k for k, v in splits.items() if len(v) == 0]
    if not empty:
        return
    why = (
        (
            f" in {classes} classes (~{n / classes:.0f} rows a class; each class is split in proportion, so none in "
            f"{'/'.join(empty)})"
        )
        if n / max(1, classes) < 10 and classes > 1
        else f" (none in {'/'.join(empty)})"
    )
    raise DataError(
        f"data: a split is empty with {n} samples{why}; add data, {'merge rare classes, ' if classes > 1 else ''}or "
        "change "
        "data.val_fraction / data.test_fraction"
    )


def load_data(
    cfg: Any, store: DataStore | None = None, quarantine: Quarantine | None = None, *, write_splits: bool = False
) -> DataBundle:
    """Load the configured data, split it, and check it against the split record in ``store``.

    ``cfg`` is a whole TrainkitConfig (or its ``data`` section). With ``write_splits`` the split
    record is written to ``store.splits``; otherwise an existing record is checked and a change in
    the data since it was written raises DataError. ``quarantine`` (closed by default) says whether
    the test split may be read; while closed its rows are overwritten in every object handed out.
    A run folder builds both: :meth:`trainkit.run.RunFolder.load_data`.
    """
    t_load = time.perf_counter()
    dcfg = getattr(cfg, "data", cfg)
    policy = quarantine or Quarantine()
    regression = bool(getattr(getattr(cfg, "target", None), "regression", False))
    source = load_source(dcfg, store.manifest if store is not None else None, write_splits, regression=regression)
    if getattr(cfg, "target", None) is not None:
        check_metric(cfg.target.metric, len(source.class_names))
    splits = stratified_split(strata(source), dcfg.val_fraction, dcfg.test_fraction, dcfg.split_seed)
    check_splits(splits, len(source.y), len(source.class_names))
    if dcfg.subset:
        rng = np.random.default_rng(dcfg.split_seed + 1)
        splits["train"] = np.sort(rng.permutation(splits["train"])[: dcfg.subset])
    if source.table is not None:
        _encode_table(source, splits["train"], store, write_splits)
    labels = _planted_noise(source, splits["train"], dcfg.split_seed)
    if store is not None and store.splits.is_file() and not write_splits and source.x is None:
        norm = read_json(store.splits)[
            "normalization"
        ]  # streamed data: the first load's statistics (fingerprints checked below)
        mean, std = torch.tensor(norm["mean"]), torch.tensor(norm["std"])
    else:
        mean, std = fit_normalization(source, splits["train"])
    record = split_record(source, splits, dcfg, mean, std)
    if labels is not None:
        record["label_noise_flipped"] = sorted(int(i) for i in np.flatnonzero((labels != source.y).numpy()))
    if store is not None:
        _keep_split_record(store.splits, record, write_splits)
    if dcfg.exclude:
        splits["train"] = _exclude(splits["train"], dcfg.exclude, store.root if store else None, record)
    if isinstance(source.dataset, ImageFolderData):
        source.dataset.mean, source.dataset.std = mean, std
    if not policy.open:  # while the quarantine is closed the test rows are not in any object handed out
        seal_test_rows(source, splits["test"], policy)
        if labels is not None:
            labels[torch.as_tensor(splits["test"])] = -1
    if source.regression:  # the model learns the label standardized on train (a sealed test row stays 0)
        scale = record["label_scale"]
        labels = ((source.y.double() - scale["mean"]) / scale["std"]).float()
        if not policy.open:
            labels[torch.as_tensor(splits["test"])] = 0.0
    if store is not None and store.loads is not None:  # what each load cost (benchmarks read it)
        append_jsonl(
            store.loads,
            {
                "time": time.time(),
                "phase": policy.who,
                "seconds": round(time.perf_counter() - t_load, 4),
                "scan": bool(write_splits),
                "source": dcfg.source,
            },
        )
    bundle = DataBundle(
        source=source, splits=splits, mean=mean, std=std, quarantine=policy, store=store, labels=labels, info=record
    )
    if source.x is not None:
        bundle._x = normalize(source.x, mean, std)
        if not policy.open and len(splits["test"]):
            bundle._x[torch.as_tensor(splits["test"])] = 0.0
    return bundle


def _planted_noise(source: Source, train: np.ndarray, split_seed: int) -> torch.Tensor | None:
    """The training labels of a planted source (``Source.train_label_noise``, set only by
    :mod:`trainkit.testing`): that fraction of the train split flipped to another class, seeded."""
    if not source.train_label_noise:
        return None
    rng = np.random.default_rng(split_seed + 2)
    labels = source.y.clone()
    flip = torch.as_tensor(rng.choice(train, size=int(round(len(train) * source.train_label_noise)), replace=False))
    k = len(source.class_names)
    labels[flip] = (labels[flip] + torch.as_tensor(rng.integers(1, k, len(flip)))) % k
    return labels


def _keep_split_record(path: Path, record: dict[str, Any], write: bool) -> None:
    """Write the split record (the first load), or check it: a change in the data is a DataError."""
    if write:
        write_json_atomic(path, record)
    elif path.exists():
        old = read_json(path)["fingerprints"]
        changed = [k for k in old if old[k] != record["fingerprints"][k]]
        if changed:
            raise DataError(
                f"data changed since Phase 1: split(s) {changed} no longer match {path}; "
                "restore the data or start a new run"
            )


def _exclude(train: np.ndarray, spec: str, root: Path | None, record: dict[str, Any]) -> np.ndarray:
    """Drop the listed sample indices from training (after the Phase 1 fingerprint check: the
    splits are unchanged, training just skips them). ``record['excluded']`` says how many."""
    path = Path(spec)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise DataError(
            f'data.exclude: {path} not found; expected a JSON file {{"indices": [...]}} '
            "(Phase 3 writes one as exclude.json) or remove data.exclude"
        )
    try:
        drop = {int(i) for i in read_json(path)["indices"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f'data.exclude: {path} is not {{"indices": [integers]}} ({exc})') from None
    kept = np.array([i for i in train if int(i) not in drop], dtype=train.dtype)
    if len(kept) == 0:
        raise DataError(f"data.exclude: {path} removes every training sample")
    record["excluded"] = int(len(train) - len(kept))
    return kept
