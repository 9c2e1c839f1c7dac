"""What a tracker is told, as plain data: the target, and the rows and params read from a run
folder's files. A leaf (it imports nothing of trainkit), shared by the tracking front
(:mod:`trainkit.tracking`) and the MLflow pusher (:mod:`trainkit._mlflow`)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Target", "redact", "numeric_items", "complete_lines", "parse_rows", "flatten"]


@dataclass(frozen=True)
class Target:
    """Where a run is pushed: the tracking URI, the experiment, the registry name."""

    uri: str
    experiment: str = "trainkit"
    registered_model: str = "trainkit"
    artifact_root: str | None = None  # a local database store keeps artifacts beside it
    live_interval_s: float = 30.0

    @property
    def key(self) -> str:
        return redact(self.uri)


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:***@host``): what run folders and messages show."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def numeric_items(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numeric fields of a metrics.jsonl row (booleans as 0/1)."""
    return ((k, float(v)) for k, v in row.items() if isinstance(v, (bool, int, float)))


def complete_lines(path: Path) -> bytes:
    """The bytes of a metrics.jsonl being written up to its last newline (a line without its
    newline is not there yet)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def parse_rows(data: bytes) -> list[dict[str, Any]]:
    """The JSON rows of JSON-lines bytes (a line that does not parse is skipped)."""
    rows = []
    for line in data.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.001}}`` → ``{"optimizer.lr": "0.001"}`` (lists as JSON)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out
