"""Leak checks that know a table: which columns are IDs (one integer or string per row, never a
measurement), IDs and records shared across splits, and how many equal records chance explains
when the columns are discrete."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def records_repeat_by_chance(df: Any, columns: list[str], factor: float = 20.0) -> bool:
    """True when the table's possible records (the product of the columns' distinct values, a gap
    counting as one) are fewer than ``factor`` times its rows: identical records then happen by
    chance (a few discrete columns), and a record shared across splits proves no leak. A table with
    a continuous column has far more possible records than rows, and a shared record is a copy."""
    space = 1.0
    for c in columns:
        space *= max(1, int(df[c].nunique(dropna=False)))
        if space >= factor * len(df):
            return False
    return True


def id_overlap(table: Any, splits: dict[str, Any]) -> dict[str, int]:
    """Per excluded ID column: how many test rows' IDs appear in train or val (the same entity, say a
    customer with several rows, on both sides). A number is an ID only when it is one integer per row
    in a run (:func:`_numeric_id`): a measurement that repeats (a daily rate) is a feature, never here."""
    out = {}
    for e in table.excluded:
        c = e["column"]
        if c not in table.frame.columns or e.get("kind") != "id":
            continue
        col = table.frame[c].astype(str).to_numpy()
        test = set(col[np.asarray(splits["test"], dtype=np.int64)])
        seen = set(col[np.asarray(splits["train"], dtype=np.int64)]) | set(
            col[np.asarray(splits["val"], dtype=np.int64)]
        )
        out[c] = len(test & seen)
    return out


ID_DISTINCT_SHARE = 0.9  # a numeric ID is distinct for at least 90% of its filled rows


HANDFUL = 3  # this many shared records, or as many as chance explains (below), are reported, not blocked


def chance_matches(df: Any, columns: list[str], rows: int, others: int) -> float:
    """How many of ``rows`` records chance alone would give an equal among ``others`` records, if the
    columns were independent: ``rows × others × Π_c Σ_v p_c(v)²`` (a gap counts as one value)."""
    p = 1.0
    for c in columns:
        freq = df[c].value_counts(normalize=True, dropna=False).to_numpy(dtype=np.float64)
        p *= float((freq**2).sum())
    return rows * others * p


def shared_records_verdict(
    df: Any, columns: list[str], shared: int, rows: int, others: int, by_chance: bool = False
) -> tuple[bool, str]:
    """(acceptable, why) for ``shared`` of ``rows`` records that equal one of ``others`` records in
    another split. Acceptable when the columns are discrete enough that equal records happen by
    chance (``by_chance``, :func:`records_repeat_by_chance`), or when they are a handful: at most
    ``HANDFUL`` whatever the split's size, or no more than chance explains: what independent columns
    predict (``expected``) plus three Poisson standard deviations and one. A copied table (rows
    exported twice, then split) shares far more than chance does."""
    if shared == 0:
        return True, "no shared record"
    expected = chance_matches(df, columns, rows, others)
    if by_chance:
        return True, (
            f"{shared} of {rows} records equal a record of another split; this table's columns are discrete "
            f"enough that equal records happen by chance (independent columns predict {expected:.1f})"
        )
    limit = max(HANDFUL, expected + 3 * expected**0.5 + 1)
    why = (
        f"{shared} of {rows} records ({100 * shared / max(1, rows):.2f}%) equal a record of another split; independent "
        f"columns predict {expected:.2g} by chance; a handful, or as many as chance explains (at most {HANDFUL}, or "
        f"chance + 3 standard deviations + 1: {limit:.0f} here) is "
    )
    if shared <= limit:
        return True, why + "reported as a chance repeat (two people with the same recorded values), not a leak"
    return False, why + "acceptable; this many are copies, a leak"


def row_keys(df: Any, columns: list[str]) -> list[str]:
    """A content hash per row of the raw values of ``columns`` (the whole record a model sees)."""
    values = df[columns].to_numpy(dtype=object)
    return [hashlib.sha256("\x1f".join(map(str, row)).encode()).hexdigest() for row in values]
