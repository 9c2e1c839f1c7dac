"""Atomic file writes and hashing: nothing half-written is ever left under a final name."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no plain getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename. The
    file gets the mode an ordinary ``open()`` would give it (0666 less the umask), not mkstemp's 0600:
    reports, plots and checkpoints are for colleagues and web servers to read too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, stable (sorted keys, indented) JSON write."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _corrupt(path: str | os.PathLike, exc: ValueError) -> Exception:
    from trainkit.errors import CorruptFileError

    where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)[:200]
    return CorruptFileError(
        f"{path}: not valid JSON ({where}); trainkit writes its files whole, so it was cut short or "
        "edited afterwards: restore it from a copy (a backup, version control)"
    )


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; :class:`~trainkit.errors.CorruptFileError` naming it when it does not parse."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise _corrupt(path, exc) from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync (used for logs that only ever grow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a missing file is an empty list. A last line that does not parse is
    an append that a killed process left half written, and is left out; any other bad line is a
    :class:`~trainkit.errors.CorruptFileError` naming the file."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
    except ValueError as exc:
        raise _corrupt(path, exc) from None
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise _corrupt(path, exc) from None
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> Any:
    """A tqdm bar, or None. ``TRAINKIT_PROGRESS``: ``auto`` (a notebook widget in Jupyter, a console
    bar elsewhere), ``text`` (plain lines on stdout every 5 s: headless runs, whose console streams
    them and whose reports keep them as text rather than red stderr blocks) or ``off``."""
    mode = os.environ.get("TRAINKIT_PROGRESS", "auto")
    if not enabled or mode == "off":
        return None
    if mode == "text":
        import sys

        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=desc,
            mininterval=5.0,
            ascii=True,
            dynamic_ncols=False,
            ncols=100,
            unit=unit,
            file=sys.stdout,
        )
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, mininterval=0.5, unit=unit)


def md_text(text: Any) -> str:
    """Words that came from data or a person (a class name, an approver's reason) as one line of
    Markdown text: line breaks folded (it cannot open a section), ``& < >`` escaped (a viewer that
    renders HTML shows ``<script>`` as text) and ``|`` escaped (it cannot split a table cell)."""
    import html

    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")
