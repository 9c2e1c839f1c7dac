"""Checkpoints as plain self-describing dicts: atomic save with a sha256 beside, verified load.

A checkpoint holds ``model``, ``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``epoch``,
``step``, ``rng`` (every RNG state), ``config``, ``metrics`` (the epoch history), ``format`` and
``trainkit_version``. Loading checks the sha256 sidecar before anything is unpickled and then
unpickles with ``weights_only=True`` only, so a foreign or crafted file never executes code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from trainkit._io import sha256_bytes, sha256_file, write_bytes_atomic, write_text_atomic
from trainkit.errors import CheckpointError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "verify_checkpoint",
    "remove_stale_temps",
    "copy_checkpoints",
    "FORMAT",
]

FORMAT = "trainkit-checkpoint/1"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> str:
    """Serialize ``state`` to ``path`` atomically (temp, fsync, rename) and write its sha256 beside it.

    The previous file stays intact until the new one is complete. Returns the sha256.
    """
    from trainkit import __version__

    path = Path(path)
    state = {**state, "format": FORMAT, "trainkit_version": __version__}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = sha256_bytes(data)
    side = _sidecar(path)
    previous = _digests(side)[:1] if path.is_file() else []
    # crash-consistent pair: the sidecar names the new digest (and the old one) before the data is
    # renamed into place, so a kill at any point leaves a file whose digest the sidecar lists
    write_text_atomic(side, "".join(f"{d}  {path.name}\n" for d in [digest, *previous]))
    write_bytes_atomic(path, data)
    write_text_atomic(side, f"{digest}  {path.name}\n")
    return digest


def _digests(side: Path) -> list[str]:
    """The sha256 digests a sidecar lists (the current one first)."""
    try:
        return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temp files an interrupted atomic write left in ``folder`` (``.NAME.*.tmp``)."""
    gone = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink()
            gone.append(p)
    return gone


def verify_checkpoint(path: str | Path) -> str:
    """Check that ``path`` exists and matches its sha256 sidecar; return the sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(
            f"{path}: no {side.name} beside it, so it was not written by trainkit; refusing to load it"
        )
    expected = _digests(side)
    actual = sha256_file(path)
    if actual not in expected:
        raise CheckpointError(
            f"{path}: sha256 {actual[:12]}… does not match {side.name} "
            f"({(expected or [''])[0][:12]}…); the file is truncated or was altered; restore it or retrain"
        )
    return actual


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the hash, then load with ``weights_only=True``; any failure is a CheckpointError."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: refused: not a weights-only trainkit checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a trainkit checkpoint (format "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}, expected {FORMAT!r})"
        )
    return state


def copy_checkpoints(src: str | Path, dst: str | Path, names: tuple[str, ...]) -> None:
    """The checkpoints ``names`` that folder ``src`` holds, into folder ``dst``: each loaded (its
    digest checked, weights only) and saved atomically with its own sidecar."""
    for name in names:
        if (Path(src) / name).is_file():
            save_checkpoint(load_checkpoint(Path(src) / name), Path(dst) / name)
