"""What a table's new rows hold that its training never saw: text in a numeric column, infinities,
numbers beyond the train range, categories outside the vocabulary, dates that do not parse.

:meth:`trainkit.data.tables.Preprocess.transform` encodes all of them without a word (a gap is
imputed, an unseen category is ``(other)``), which is what a deployed model must do; but a person
predicting a file wants to know when ``"MALE"`` was read as an unknown category where training
saw ``"male"``, or when ``"abc"`` in ``age`` became the train median. :func:`unexpected_values`
says so, one line per column, with examples; ``trainkit predict`` prints the lines and returns
them as ``notes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["unexpected_values"]

EXAMPLES = 3  # values quoted per column


def _examples(values: Any) -> str:
    seen = list(dict.fromkeys(str(v) for v in values))
    more = f" and {len(seen) - EXAMPLES} more" if len(seen) > EXAMPLES else ""
    return ", ".join(repr(v) for v in seen[:EXAMPLES]) + more


def _given(s: Any) -> np.ndarray:
    """Rows where the column holds something (not a gap, not blank text)."""
    return (~s.isna() & (s.astype(str).str.strip() != "")).to_numpy()


def _numeric(c: dict[str, Any], s: Any) -> list[str]:
    from trainkit.data.tables import _numeric_values

    v = _numeric_values(s)
    bad = _given(s) & ~np.isfinite(v)
    out = []
    if bad.any():
        out.append(
            f"{c['name']}: {int(bad.sum())} row(s) not a finite number ({_examples(s[bad])}), "
            f"predicted as if missing (the train median {c['median']:.4g})"
        )
    lo, hi = c.get("min"), c.get("max")  # absent in a run saved before the range was kept
    if lo is not None and hi is not None:
        ok = np.isfinite(v)
        far = ok & ((v < lo) | (v > hi))
        if far.any():
            out.append(
                f"{c['name']}: {int(far.sum())} row(s) outside the train range [{lo:.4g}, {hi:.4g}] "
                f"({_examples(s[far])}): the model extrapolates there"
            )
    return out


def _categorical(c: dict[str, Any], s: Any, block: np.ndarray) -> list[str]:
    """``block``: this column's one-hot inputs as transform encoded them (the vocabulary, then
    ``(other)``, then ``(missing)``), so the match of each value is not made a second time."""
    k = len(c["vocabulary"])
    text = s.astype(str).to_numpy()
    other = _given(s) & (block[:, k] == 1)
    if not other.any():
        return []
    folded = {v.lower(): v for v in c["vocabulary"]}
    odd = {t.strip() for t in text[other]}
    near = sorted(f"{t!r} ~ {folded[t.lower()]!r}" for t in odd if t.lower() in folded)
    hint = ""
    if near:
        hint = f"; they differ from trained values only in case ({', '.join(near[:EXAMPLES])}): write them as trained"
    rare = " or too rare in train to get their own" if c.get("train_distinct", 0) > k else ""
    return [
        f"{c['name']}: {int(other.sum())} row(s) hold categories the model has no column for "
        f"({_examples(text[other])}; never seen in training{rare}), encoded as (other){hint}"
    ]


def _datetime(c: dict[str, Any], s: Any) -> list[str]:
    from trainkit.data.tables import _datetime_parts

    year = _datetime_parts(s)["year"]
    bad = _given(s) & ~np.isfinite(year)
    if not bad.any():
        return []
    return [f"{c['name']}: {int(bad.sum())} row(s) not a date ({_examples(s[bad])}), predicted as if missing"]


def unexpected_values(preprocess: Any, df: Any, x: np.ndarray) -> list[str]:
    """One line per column of ``df`` whose values the fitted ``preprocess`` encodes as a gap or as
    ``(other)`` although the row gave one, or that fall outside the train range; [] when none.
    ``x`` is ``preprocess.transform(df)``, whose one-hot blocks say which categories went to
    ``(other)``."""
    out: list[str] = []
    start = 0
    for c in preprocess.columns:
        s, width = df[c["name"]], len(c["outputs"])
        if c["kind"] in ("numeric", "boolean"):
            out += _numeric(c, s)
        elif c["kind"] == "datetime":
            out += _datetime(c, s)
        else:
            out += _categorical(c, s, x[:, start : start + width])
        start += width
    return out
