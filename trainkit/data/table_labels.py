"""A table's label column: classes (their names sorted, numbers numerically), or for a regression
the numbers themselves, each with the error that names the column and the way out."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainkit.errors import DataError

__all__ = ["_labels"]


def _labels(
    df: Any, label: str, drop_unlabelled: bool, where: str, regression: bool = False, as_classes: bool = False
) -> tuple[Any, np.ndarray, list[str]]:
    """(rows kept, integer labels, class names). Class names are the label values as text, sorted
    (numbers numerically). ``regression``: (rows kept, the numbers, [label]). ``as_classes``: the
    label is named in ``data.categorical``, so many distinct numbers are classes all the same."""
    import pandas as pd

    if label not in df.columns:
        headless = len(df.columns) > 1 and sum(map(_number, df.columns)) >= 0.5 * len(df.columns)
        hint = (
            ("; its first row holds numbers, so the file seems to have no header row: add one that names the columns")
            if headless
            else ""
        )
        import difflib

        near = difflib.get_close_matches(label, list(map(str, df.columns)), n=1, cutoff=0.6)
        near = [c for c in map(str, df.columns) if c.strip().lower() == label.strip().lower()] or near
        hint = f"; did you mean {near[0]!r}?" + hint if near else hint
        raise DataError(f"data.label: no column {label!r} in {where}; its columns are {list(df.columns)[:50]}{hint}")
    y = df[label]
    gaps = int(y.isna().sum())
    if gaps:
        if not drop_unlabelled:
            raise DataError(
                f"data.label: {gaps} row(s) of {where} have no {label!r} value; fill them, or set "
                "data.drop_unlabelled: true to leave those rows out"
            )
        df = df[y.notna()].reset_index(drop=True)
        y = df[label]
    if regression:
        return df, _numbers(y, label, where), [label]
    if not (pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y)):
        y = y.astype(str).str.strip()  # numbers sort numerically, anything else as text; "yes " is "yes"
    values = sorted(y.unique().tolist())
    if len(values) < 2:
        raise DataError(
            f"data.label: every row of {where} has {label} = {values[0]!r}; a classifier needs at least 2 classes"
        )
    fractional = pd.api.types.is_float_dtype(y) and not bool((y == y.round()).all())
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    both_ways = (
        f"to predict the number, set target.metric to rmse, mae or r2 (a regression; with target.value, e.g. "
        f"target: {{metric: rmse, value: ...}}); to treat its values as classes, set data.categorical: [{label}]"
    )
    if fractional and len(values) > 20 and not as_classes:
        raise DataError(
            f"data.label: {label!r} holds {len(values)} distinct fractional numbers (e.g. "
            f"{values[len(values) // 2]!r}): "
            f"a quantity, not classes; {both_ways}"
        )
    if len(values) > 0.5 * len(y) and len(y) > 20:
        raise DataError(
            f"data.label: {label!r} has {len(values)} distinct values in {len(y)} rows, so most classes would "
            "have a single row (an ID or a continuous quantity?); "
            + (both_ways if numeric else "choose the column to classify")
        )
    typical = float(np.median(y.value_counts().to_numpy()))
    if numeric and len(values) > 20 and typical < 3 and not as_classes:  # whole numbers such as prices or days
        raise DataError(
            f"data.label: {label!r} holds {len(values)} distinct whole numbers and the typical one is in "
            f"{typical:g} row(s), too few for a class to be in train, val and test: a quantity, not classes? "
            f"{both_ways}"
        )
    index = {v: i for i, v in enumerate(values)}
    codes = np.array([index[v] for v in y.tolist()], dtype=np.int64)
    names = [_name(v) for v in values]
    return df, codes, names


def _numbers(y: Any, label: str, where: str) -> np.ndarray:
    """A regression label column as float64 numbers, or a DataError naming the column: text that
    is not a number, an infinite value, or one value in every row."""
    import pandas as pd

    from trainkit.data.sources import check_numbers

    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        from trainkit.data.number_text import parse_numbers

        text = y.astype(str).str.strip()
        parsed = pd.Series(parse_numbers(text)[0], index=y.index)  # "$1,234.50" is 1234.5
        bad = text[parsed.isna()]
        if len(bad):
            raise DataError(
                f"data.label: {label!r} of {where} must hold numbers for a regression (target.metric rmse | "
                f"mae | r2); {len(bad)} row(s) do not, e.g. {bad.iloc[0]!r} (row {int(bad.index[0])}); fix "
                "them, or choose a class metric (accuracy, ...) to classify"
            )
        y = parsed
    return check_numbers(y.to_numpy(dtype=np.float64), f"data.label: {label!r} of {where}", what="label values").numpy()


def _number(text: Any) -> bool:
    try:
        float(str(text))
        return True
    except ValueError:
        return False


def _name(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
