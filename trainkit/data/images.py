"""Image folders: one sub-folder per class, listed once into a manifest (size, mtime, sha256,
header) and streamed from disk through :class:`ImageFolderData`. Later loads only ``stat`` the
files against the manifest and read what changed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit._io import read_json, write_json_atomic
from trainkit.data.sources import Source
from trainkit.errors import DataError

__all__ = ["ImageFolderData", "scan_image_folder", "class_folders", "load_image_folder", "IMAGE_EXT"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def class_folders(cfg: Any) -> tuple[Path, list[str]]:
    """(root, class folder names) of an image folder, checked without decoding anything: the root
    exists, holds at least 2 class folders, and none of them is empty."""
    root = Path(cfg.root or "")
    if not cfg.root or not root.is_dir():
        raise DataError(f"data.root: image folder not found: {root!s}; expected one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s); need at least 2 sub-folders, one per class")
    empty = [
        n for n in classes if not any(p.suffix.lower() in IMAGE_EXT and p.is_file() for p in (root / n).rglob("*"))
    ]
    if empty:
        raise DataError(
            f"{root}: class folder(s) {empty} hold no images ({sorted(IMAGE_EXT)}); add images or remove "
            "the folder (an empty class cannot be learned or evaluated)"
        )
    return root, classes


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
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXT and e.is_file():
                yield f"{rel}/{e.name}", e


def scan_image_folder(
    root: Path, classes: list[str], previous: dict[str, Any] | None = None, progress: bool = True
) -> dict[str, Any]:
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


def load_image_folder(cfg: Any, manifest: Path | None = None, write: bool = False) -> Source:
    """An image folder as a streamed Source. Listing uses the manifest: Phase 1 scans the folder into
    the run's manifest file (``write``); later loads only ``stat`` the files against it and
    read what changed. Unreadable files are reported once, all together, before any training."""
    root, classes = class_folders(cfg)
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
        more = (
            f" … and {len(bad) - 20} more (all listed in {manifest.parent / 'unreadable_images.txt'})"
            if len(bad) > 20 and manifest is not None and write
            else ""
        )
        raise DataError(
            f"{root}: {len(bad)} unreadable image(s), found before training: "
            + "; ".join(bad[:20])
            + more
            + ". Remove or replace them, then run again."
        )
    if not files:
        raise DataError(f"{root}: no images with extensions {sorted(IMAGE_EXT)}")
    first = files[0]
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (first["h"], first["w"])
    mode = "L" if first["mode"] in ("L", "1", "I", "I;16") else "RGB"
    if manifest is not None and write:
        write_json_atomic(manifest, scan)
    ds = ImageFolderData([f"{root}/{f['path']}" for f in files], [f["label"] for f in files], size, mode)
    return Source(
        y=torch.tensor([f["label"] for f in files]),
        dataset=ds,
        class_names=classes,
        input_shape=(1 if mode == "L" else 3, *size),
        description=f"image folder {root}",
        sample_keys=[f["sha256"] for f in files],
    )
