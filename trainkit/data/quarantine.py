"""The test quarantine: before the phase that may read it, the test rows are overwritten in memory
and a streamed dataset refuses their indices. Which phase may read them is the caller's policy
(:class:`Quarantine`); this module knows no phase names."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit.data.sources import Source
from trainkit.errors import QuarantineError

__all__ = ["Quarantine", "SealedDataset", "seal_test_rows"]


@dataclass(frozen=True)
class Quarantine:
    """A phase's rule for the test split, handed to :func:`~trainkit.data.load_data` by its caller.

    ``open``: the test split may be read now. ``who``: the reader, as the access log and messages
    name it. ``opens``: where it opens, for the refusal message. ``log``: the JSON-lines file every
    attempt (allowed or refused) is appended to; None logs nothing."""

    open: bool = False
    who: str | None = None
    opens: str = "the final phase"
    log: Path | None = None

    def check(self, reason: str = "", forced: bool = False) -> None:
        """Log one attempt to read the test split (``forced``: a re-evaluation the user forced, which
        the production gate counts as such); raise QuarantineError unless it is open."""
        if self.log is not None:
            from trainkit._io import append_jsonl

            append_jsonl(
                self.log,
                {"time": time.time(), "phase": self.who, "allowed": self.open, "reason": reason, "forced": forced},
            )
        if not self.open:
            raise QuarantineError(
                f"the test split is quarantined until {self.opens}; current phase: {self.who or 'none'}. "
                "Use the validation split for every decision before finalization."
            )

    def refusal(self, what: str) -> str:
        return f"{what} belongs to the quarantined test split; it can be read only in {self.opens}"


def seal_test_rows(source: Source, test_idx: np.ndarray, policy: Quarantine) -> None:
    """Overwrite the test rows' samples (zeros), labels (-1) and, for a table, raw values (blank) in
    memory, and wrap a streamed dataset so that reading a test index raises QuarantineError. Fingerprints and content
    hashes
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
        source.dataset = SealedDataset(source.dataset, set(int(i) for i in test_idx), policy)
    if source.table is not None:  # a table's raw rows too: every value of a test row (its label included) is blanked
        source.table.frame = blank_rows(source.table.frame, idx.numpy())


def blank_rows(frame: Any, rows: np.ndarray) -> Any:
    """A copy of ``frame`` whose ``rows`` (positions) hold a gap in every column, each column keeping
    its kind: numbers stay numbers (integers become floats, or stay nullable integers), booleans
    become nullable booleans, text, categories and dates keep their type. (Turning the frame into
    objects made every number a distinct value to the table checks.)"""
    import pandas as pd

    keep = np.ones(len(frame), dtype=bool)
    keep[np.asarray(rows, dtype=np.int64)] = False
    out = {}
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s) and not isinstance(s.dtype, pd.BooleanDtype):
            s = s.astype("boolean")
        out[c] = s.where(keep)
    return pd.DataFrame(out, index=frame.index)


class SealedDataset(Dataset):
    """A streamed dataset whose test indices cannot be read while the quarantine is closed."""

    def __init__(self, inner: Any, sealed: set[int], policy: Quarantine | None = None) -> None:
        self._inner: Any
        self._inner, self._sealed, self._policy = inner, frozenset(sealed), policy or Quarantine()
        self.mean, self.std = getattr(inner, "mean", None), getattr(inner, "std", None)
        self.own_normalization = getattr(inner, "own_normalization", False)

    def __len__(self) -> int:
        return len(self._inner)

    def _check(self, i: int) -> None:
        if int(i) in self._sealed:
            raise QuarantineError(self._policy.refusal(f"sample {int(i)}"))

    def __getitem__(self, i: int) -> Any:
        self._check(i)
        return self._inner[i]

    def raw(self, i: int) -> torch.Tensor:
        self._check(i)
        return self._inner.raw(i)
