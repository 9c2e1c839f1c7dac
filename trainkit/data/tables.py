"""Tables: a CSV or Parquet file (or a DataFrame written to one) read raw, its columns' kinds
inferred, and a preprocessing fitted on the train split only that turns rows into a float vector.

Kinds: ``numeric`` and ``boolean`` (median-imputed, a missing indicator where train had gaps,
standardized), ``categorical`` (strings and pandas categories: a vocabulary of the most frequent
train values, one-hot, plus an ``(other)`` bucket for values outside it, unseen ones included,
and a ``(missing)`` bucket), ``datetime`` (expanded to year, month, day of week, and hour when
any row has one, then numeric), and the excluded ``id`` (unique per row) and ``text`` (long
free text). ``data.features`` puts an excluded column back; ``data.categorical`` overrides the
inferred kind. The fitted preprocessing is a plain JSON document (:meth:`Preprocess.to_dict`)
that predicts from raw rows with numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainkit.config import TABLE_SOURCES
from trainkit.data.table_files import read_table
from trainkit.data.table_labels import _labels
from trainkit.errors import DataError
from trainkit.data.table_leaks import (
    ID_DISTINCT_SHARE,
    chance_matches,
    id_overlap,
    records_repeat_by_chance,
    shared_records_verdict,
)

__all__ = [
    "TableData",
    "Preprocess",
    "read_table",
    "load_table",
    "infer_kinds",
    "from_dataframe",
    "records_repeat_by_chance",
    "id_overlap",
    "shared_records_verdict",
    "chance_matches",
    "PREPROCESS_VERSION",
    "TABLE_SOURCES",
]

PREPROCESS_VERSION = 1
MAX_CATEGORIES = 32  # one-hot columns per categorical at most; rarer values share the (other) bucket
TEXT_MIN_LENGTH = 40  # a string column whose values average this many characters and are mostly distinct is free text
OTHER, MISSING = "(other)", "(missing)"


def _is_string_like(s: Any) -> bool:
    import pandas as pd

    return bool(
        pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)
    )


def _datetime_like(s: Any) -> bool:
    import warnings

    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(s):
        return True
    vals = s.dropna().astype(str)
    if len(vals) == 0 or not vals.str.contains(r"\d{1,4}[-/.:]\d{1,2}", regex=True).mean() > 0.95:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(vals.head(500), errors="coerce", format="mixed")
    return bool(parsed.notna().mean() > 0.95)


GAP_MARKERS = frozenset({"?", "-", "--", ".", "*", "n.a.", "#n/a", "#na"})  # placeholders for "no value" in exports


def _numbers_in_text(s: Any) -> tuple[str | None, Any]:
    """What the numbers in a text column say, from one parse of its values:
    ``("gaps", {placeholder: rows})`` for numbers whose only other values are placeholders such as
    ``?`` or ``-`` (as UCI tables and spreadsheets write a gap); ``("formatted", an example)`` for
    numbers written as ``$1,234.50`` or ``12%`` (:mod:`trainkit.data.number_text`); ``("mixed",
    first offender)`` for a column most of whose values are numbers but some are text; ``(None,
    None)`` otherwise."""
    import pandas as pd

    from trainkit.data.number_text import parse_numbers

    vals = s.dropna()
    if len(vals) == 0 or isinstance(s.dtype, pd.CategoricalDtype):
        return None, None
    text = vals.astype(str).str.strip()
    parsed, formatted = parse_numbers(text)
    num = pd.Series(parsed, index=text.index)
    odd = text[num.isna()]
    if num.notna().any() and len(odd) and set(odd.str.lower()) <= GAP_MARKERS:
        return "gaps", {str(k): int(v) for k, v in odd.value_counts().items()}
    if 0.5 <= float(num.notna().mean()) < 1.0:
        return "mixed", str(vals[num.isna()].iloc[0])
    if formatted.any() and num.notna().all():
        return "formatted", str(text[formatted].iloc[0])
    return None, None


def _all_numbers(s: Any) -> bool:
    import numbers

    vals = s.dropna()
    return len(vals) > 0 and all(isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_)) for v in vals)


def infer_kinds(
    df: Any, label: str, cfg: Any, notes: dict[str, str] | None = None
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Each feature column's kind, and the excluded columns with why. ``cfg`` is the data section
    (``features``, ``drop``, ``categorical``). Raises DataError for a column with no value or one
    that mixes numbers and text. ``notes`` receives, per column, what was read unlike its text
    (placeholders read as gaps)."""
    import pandas as pd

    wanted = list(cfg.features) if cfg.features else [c for c in df.columns if c != label and c not in cfg.drop]
    unknown = [c for c in [*wanted, *cfg.drop, *(cfg.categorical or [])] if c not in df.columns]
    if unknown:
        raise DataError(
            f"data.features/drop/categorical name column(s) {unknown} that the table does not have; "
            f"its columns: {list(df.columns)}"
        )
    forced = set(cfg.categorical or [])
    explicit = set(cfg.features or [])
    kinds: dict[str, str] = {}
    excluded: list[dict[str, str]] = [{"column": c, "kind": "dropped", "why": "data.drop"} for c in cfg.drop]
    n = len(df)
    for c in wanted:
        if c == label:
            continue
        s = df[c]
        if s.notna().sum() == 0:
            raise DataError(f"column {c!r}: every value is missing; drop it (data.drop: [{c!r}])")
        if c in forced:
            kinds[c] = "categorical"
            continue
        if pd.api.types.is_bool_dtype(s):
            kinds[c] = "boolean"
        elif pd.api.types.is_numeric_dtype(s):
            kinds[c] = "id" if _numeric_id(s, n) else "numeric"
        elif s.dtype == object and _all_numbers(s):  # Decimal (a database's NUMERIC), Python ints and floats
            kinds[c] = "numeric"
        elif _is_string_like(s):
            verdict, what = _numbers_in_text(s)
            if verdict == "mixed":
                raise DataError(
                    f"column {c!r} mixes numbers and text (e.g. {what!r}); clean the column, or declare "
                    f"it categorical (data.categorical: [{c!r}])"
                )
            kinds[c] = "numeric" if verdict in ("gaps", "formatted") else _string_kind(s, n)
            if verdict == "gaps" and notes is not None:
                notes[c] = "numbers; " + ", ".join(f"{k!r} ({v} rows)" for k, v in what.items()) + " read as missing"
            elif verdict == "formatted" and notes is not None:
                notes[c] = f"numbers written with a currency sign, commas or % (e.g. {what!r}), read as numbers"
        elif pd.api.types.is_datetime64_any_dtype(s):
            kinds[c] = "datetime"
        else:
            raise DataError(
                f"column {c!r} has values of type {s.dtype} that a table source cannot encode; "
                f"drop it (data.drop: [{c!r}])"
            )
        if kinds[c] in ("id", "text") and c not in explicit:
            why = (
                "an identifier (distinct for most rows), which no model should learn from"
                if kinds[c] == "id"
                else "free text (long, mostly distinct strings): not encoded"
            )
            excluded.append({"column": c, "kind": kinds[c], "why": f"{why}; put it back with data.features"})
            del kinds[c]
        elif kinds[c] in ("id", "text"):
            kinds[c] = "categorical" if kinds[c] == "text" or _is_string_like(s) else "numeric"
    if not kinds:
        raise DataError(f"no feature column left (excluded: {excluded}); list the columns to use in data.features")
    return kinds, excluded


def _numeric_id(s: Any, n: int) -> bool:
    """A numeric column is an ID only when it holds integers, one per row (at least
    ``ID_DISTINCT_SHARE`` of its filled rows distinct, no value repeated in a float column) that
    span (nearly) a run; a measured quantity (a daily rate, a count, a price) repeats and is not."""
    import pandas as pd

    v = s.dropna()
    if n <= 20 or len(v) == 0:
        return False
    integer_dtype = pd.api.types.is_integer_dtype(s)
    if not (integer_dtype or bool((v == v.round()).all())):
        return False
    distinct = v.nunique()
    if distinct < ID_DISTINCT_SHARE * len(v) or (not integer_dtype and distinct < len(v)):
        return False
    return _runs_like_an_id(s)


def _runs_like_an_id(s: Any) -> bool:
    """Integers, distinct for most rows, that span (nearly) a run: 1..N, 1000..1000+N; a measured
    integer quantity rarely does."""
    v = np.unique(s.dropna().to_numpy(dtype=np.float64))
    return len(v) > 1 and (v[-1] - v[0]) <= 1.5 * len(s)


def _string_kind(s: Any, n: int) -> str:
    vals = s.dropna().astype(str)
    distinct = vals.nunique()
    if _datetime_like(s):
        return "datetime"
    if float(vals.str.len().mean()) >= TEXT_MIN_LENGTH and distinct > 0.5 * len(vals):
        return "text"
    if distinct > 0.5 * n and n > 20 and float(vals.str.len().mean()) < TEXT_MIN_LENGTH:
        return "id"
    return "categorical"


# ------------------------------------------------------------------ preprocessing


@dataclass
class Preprocess:
    """The fitted preprocessing: per column its kind and what was learned on the train split."""

    label: str
    classes: list[str]
    columns: list[dict[str, Any]]
    excluded: list[dict[str, str]] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        """The names of the model's input features, in order."""
        return [f for c in self.columns for f in c["outputs"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PREPROCESS_VERSION,
            "label": self.label,
            "classes": self.classes,
            "columns": self.columns,
            "features": self.features,
            "excluded": self.excluded,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        if d.get("version") != PREPROCESS_VERSION:
            raise DataError(
                f"preprocess.json version {d.get('version')!r}; this trainkit reads version {PREPROCESS_VERSION}"
            )
        return cls(
            label=d["label"], classes=list(d["classes"]), columns=list(d["columns"]), excluded=list(d["excluded"])
        )

    def transform(self, df: Any) -> np.ndarray:
        """Raw rows → float32 features. A missing column is a DataError naming it; unseen categories
        go to (other), gaps are imputed."""
        missing = [c["name"] for c in self.columns if c["name"] not in df.columns]
        if missing:
            raise DataError(
                f"the rows lack column(s) {missing} that the model was trained on; add them "
                f"(the training columns: {[c['name'] for c in self.columns]})"
            )
        parts = [_apply(c, df[c["name"]]) for c in self.columns]
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(df), 0), np.float32)


def _datetime_parts(s: Any) -> dict[str, np.ndarray]:
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = pd.to_datetime(s, errors="coerce", format="mixed") if not pd.api.types.is_datetime64_any_dtype(s) else s
    return {
        "year": t.dt.year.to_numpy(dtype=np.float64),
        "month": t.dt.month.to_numpy(dtype=np.float64),
        "dayofweek": t.dt.day_of_week.to_numpy(dtype=np.float64),
        "hour": t.dt.hour.to_numpy(dtype=np.float64),
    }


def _numeric_values(s: Any) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        s = s.astype("float64")
    elif s.dtype == object or pd.api.types.is_string_dtype(s):
        from trainkit.data.number_text import parse_numbers

        s = s.astype(str).str.strip()  # " 12" is 12; a placeholder ("?") becomes a gap
        low = s.str.lower()
        s = s.mask(low == "true", "1").mask(
            low == "false", "0"
        )  # booleans written out, as the guide's snippet reads them
        return parse_numbers(s)[0]  # "$1,234.50" is 1234.5, "12%" is 12
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)


def _fit_numeric(name: str, v: np.ndarray, out_name: str | None = None) -> dict[str, Any]:
    ok = np.isfinite(v)
    median = float(np.median(v[ok])) if ok.any() else 0.0
    filled = np.where(ok, v, median)
    mean, std = float(filled.mean()), float(filled.std())
    base = out_name or name
    indicator = bool((~ok).any())
    return {
        "median": median,
        "mean": mean,
        "std": std if std > 1e-12 else 1.0,
        "min": float(v[ok].min()) if ok.any() else None,  # the train range (trainkit.data.new_rows)
        "max": float(v[ok].max()) if ok.any() else None,
        "indicator": indicator,
        "outputs": [base] + ([f"{base} (missing)"] if indicator else []),
    }


def _fit_column(name: str, kind: str, s: Any) -> dict[str, Any]:
    """What one column learns from the train rows ``s``."""
    if kind in ("numeric", "boolean"):
        return {"name": name, "kind": kind, **_fit_numeric(name, _numeric_values(s))}
    if kind == "datetime":
        parts = _datetime_parts(s)
        keep = ["year", "month", "dayofweek"] + (["hour"] if np.nanmax(np.nan_to_num(parts["hour"])) > 0 else [])
        fitted = [
            {"part": p, **_fit_numeric(name, parts[p], f"{name}.{p}")} for p in keep
        ]  # a list: order is the layout
        return {"name": name, "kind": kind, "parts": fitted, "outputs": [o for f in fitted for o in f["outputs"]]}
    vals = s.dropna().astype(str).str.strip()  # "north " is "north"
    counts = vals.value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [v for v, k in ranked if k >= 2][:MAX_CATEGORIES] or [v for v, _ in ranked][:MAX_CATEGORIES]
    return {
        "name": name,
        "kind": "categorical",
        "vocabulary": vocab,
        "train_distinct": int(len(counts)),
        "outputs": [f"{name}={v}" for v in vocab] + [f"{name} {OTHER}", f"{name} {MISSING}"],
    }


def _apply_numeric(p: dict[str, Any], v: np.ndarray) -> list[np.ndarray]:
    ok = np.isfinite(v)
    cols = [(np.where(ok, v, p["median"]) - p["mean"]) / p["std"]]
    if p["indicator"]:
        cols.append((~ok).astype(np.float64))
    return cols


def _apply(c: dict[str, Any], s: Any) -> np.ndarray:
    if c["kind"] in ("numeric", "boolean"):
        return np.stack(_apply_numeric(c, _numeric_values(s)), axis=1)
    if c["kind"] == "datetime":
        parts = _datetime_parts(s)
        return np.stack([col for f in c["parts"] for col in _apply_numeric(f, parts[f["part"]])], axis=1)
    vocab = {v: i for i, v in enumerate(c["vocabulary"])}
    k = len(vocab)
    out = np.zeros((len(s), k + 2), dtype=np.float64)
    isna = s.isna().to_numpy()
    text = s.astype(str).to_numpy()
    for r in range(len(s)):
        out[r, k + 1 if isna[r] else _category_index(vocab, text[r], k)] = 1.0
    return out


def _category_index(vocab: dict[str, int], text: str, other: int) -> int:
    """The vocabulary entry of ``text``; a number matches however it was written (a column with
    gaps reads 7 as "7.0", the same column without them as "7") and a text however it is padded
    with spaces; anything else is ``other``."""
    for key in (text, text.strip()):
        if key in vocab:
            return vocab[key]
    try:
        f = float(text)
    except ValueError:
        return other
    for key in (str(f), str(int(f)) if f.is_integer() else None):
        if key is not None and key in vocab:
            return vocab[key]
    return other


def fit_preprocess(
    df: Any, kinds: dict[str, str], train: np.ndarray, label: str, classes: list[str], excluded: list[dict[str, str]]
) -> Preprocess:
    """Fit every column on the train rows only."""
    rows = df.iloc[np.asarray(train, dtype=np.int64)]
    return Preprocess(
        label=label, classes=classes, excluded=excluded, columns=[_fit_column(c, k, rows[c]) for c, k in kinds.items()]
    )


# ------------------------------------------------------------------ the source


@dataclass
class TableData:
    """A table read raw: the rows, the inferred kinds and what was excluded. ``preprocess`` is
    set once :meth:`fit` (train rows only) or :meth:`use` (a saved one) ran."""

    frame: Any
    kinds: dict[str, str]
    excluded: list[dict[str, str]]
    label: str
    classes: list[str]
    path: str
    preprocess: Preprocess | None = None
    notes: dict[str, str] = field(default_factory=dict)  # per column: what was read unlike its text
    read_notes: list[str] = field(default_factory=list)  # the file's format where it was not the default

    def fit(self, train: np.ndarray) -> np.ndarray:
        self.preprocess = fit_preprocess(self.frame, self.kinds, train, self.label, self.classes, self.excluded)
        return self.preprocess.transform(self.frame)

    def use(self, saved: dict[str, Any]) -> np.ndarray:
        self.preprocess = Preprocess.from_dict(saved)
        return self.preprocess.transform(self.frame)

    def overview_of(self, train: np.ndarray, y: np.ndarray, val: np.ndarray, y_val: np.ndarray) -> list[dict[str, Any]]:
        """Per column (kind, share missing and distinct values on the train rows) and its relation
        to the label (``label_score``, of ``label_metric``): the val accuracy of predicting the
        label from this column alone (each value, or a small tree on a number, votes the majority
        class it had on train), or for a number to predict (float ``y``) the val r2 of that
        column's own prediction. ``possible_leak`` marks a column that alone gets val almost right
        (accuracy ≥ 0.99 where the majority class does not; r2 ≥ 0.99)."""
        tr = self.frame.iloc[np.asarray(train, dtype=np.int64)]
        va = self.frame.iloc[np.asarray(val, dtype=np.int64)]
        numbers = np.asarray(y).dtype.kind == "f"
        majority = 0.0 if numbers else float(np.bincount(y_val).max() / max(1, len(y_val)))
        out = []
        for c in tr.columns:
            if c == self.label:
                continue
            why = next((e["why"] for e in self.excluded if e["column"] == c), self.notes.get(c, ""))
            acc = round(one_column_score(tr[c], y, va[c], y_val), 4) if c in self.kinds else None
            out.append(
                {
                    "column": c,
                    "kind": self.kinds.get(c, "excluded"),
                    "note": why,
                    "missing": round(float(tr[c].isna().mean()), 4),
                    "distinct": int(tr[c].nunique()),
                    "label_score": acc,
                    "label_metric": "r2" if numbers else "accuracy",
                    "possible_leak": bool(acc is not None and acc >= 0.99 and majority < 0.95),
                }
            )
        return out

    def checks(self, train: np.ndarray, y: np.ndarray, val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
        """Table problems by column name, on the train and val rows only (the test rows are never
        read): columns that alone give the label away (``possible_leak``), columns constant on the
        train rows, and per categorical column the val rows whose category train never had."""
        rows = self.overview_of(train, y, val, y_val)
        tr = self.frame.iloc[np.asarray(train, dtype=np.int64)]
        va = self.frame.iloc[np.asarray(val, dtype=np.int64)]
        unseen = {}
        for c, kind in self.kinds.items():
            if kind == "categorical":
                seen = set(tr[c].dropna().astype(str).str.strip())
                v = va[c].dropna().astype(str).str.strip()
                k = int((~v.isin(seen)).sum())
                if k:
                    unseen[c] = {
                        "val_rows": k,
                        "fraction": round(k / max(1, len(va)), 4),
                        "examples": sorted(set(v[~v.isin(seen)]))[:5],
                    }
        return {
            "leaky_columns": [r["column"] for r in rows if r["possible_leak"]],
            "one_column_score": {r["column"]: r["label_score"] for r in rows if r["label_score"] is not None},
            "constant_columns": [c for c in self.kinds if tr[c].nunique(dropna=True) <= 1],
            "unseen_categories": unseen,
        }


def one_column_score(s: Any, y: np.ndarray, s_val: Any, y_val: np.ndarray) -> float:
    """How well one column alone predicts the label, out of sample: each value gets the majority
    class it had on train (a number with many values: a decision tree of at most 12 leaves on it,
    so a column that one threshold separates scores what it gives away, where decile bins would
    straddle the threshold); scored on val (an unseen value gets the overall majority class). For
    a number to predict (float ``y``): the same with the train mean of each value (or leaf), scored
    as the val r2."""
    import pandas as pd

    from trainkit.metrics import regression_scores

    if not len(y_val):
        return float("nan")
    numbers = np.asarray(y).dtype.kind == "f"
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 20:
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        def cols(v: Any) -> np.ndarray:
            x = v.to_numpy(dtype=np.float64, na_value=np.nan)
            gap = ~np.isfinite(x)
            return np.stack([np.where(gap, 0.0, x), gap.astype(np.float64)], axis=1)

        tree = (DecisionTreeRegressor if numbers else DecisionTreeClassifier)(
            max_leaf_nodes=12, min_samples_leaf=max(1, len(y) // 200), random_state=0
        )
        guess = tree.fit(cols(s), y).predict(cols(s_val))
        return regression_scores(y_val, guess)["r2"] if numbers else float((guess == y_val).mean())
    keys = [v.astype(str).where(v.notna(), MISSING).reset_index(drop=True) for v in (s, s_val)]
    frame = pd.DataFrame({"k": keys[0].to_numpy(), "y": y}).groupby("k")["y"]
    if numbers:
        guess = keys[1].map(frame.mean()).fillna(float(np.mean(y))).to_numpy(dtype=np.float64)
        return regression_scores(y_val, guess)["r2"]
    votes = frame.agg(lambda v: v.value_counts().index[0])
    fallback = int(np.bincount(y).argmax())
    guess = keys[1].map(votes).fillna(fallback).to_numpy(dtype=np.int64)
    return float((guess == y_val).mean())


def load_table(cfg: Any, regression: bool = False) -> tuple[TableData, np.ndarray]:
    """Read ``cfg.root`` (``data.source: csv | parquet``), check the label, infer the kinds.
    ``regression``: the label is a number to predict."""
    if not cfg.label:
        raise DataError(f"data.label: the {cfg.source} source needs data.label, the column to predict")
    if not cfg.root:
        raise DataError(f"data.root: the {cfg.source} source needs data.root set to the table file")
    df = read_table(cfg.root, cfg.source)
    read_notes = list(df.attrs.get("trainkit_read", []))
    df, y, names = _labels(
        df, cfg.label, cfg.drop_unlabelled, str(cfg.root), regression, as_classes=cfg.label in (cfg.categorical or [])
    )
    notes: dict[str, str] = {}
    kinds, excluded = infer_kinds(df, cfg.label, cfg, notes)
    return TableData(
        frame=df,
        kinds=kinds,
        excluded=excluded,
        label=cfg.label,
        classes=names,
        path=str(cfg.root),
        notes=notes,
        read_notes=read_notes,
    ), y


def from_dataframe(df: Any, label: str, path: str | Path, **data: Any) -> dict[str, Any]:
    """Write a pandas DataFrame to ``path`` (``.parquet``, or ``.csv``) and return the ``data:``
    section that reads it (``source``, ``root``, ``label``, and any other ``data`` fields given).
    Under papermill each phase runs in its own kernel, so a table must live in a file."""
    p = Path(path)
    if label not in df.columns:
        raise DataError(f"from_dataframe: no column {label!r}; the frame's columns are {list(map(str, df.columns))}")
    source = "csv" if p.suffix.lower() == ".csv" else "parquet"
    if source == "parquet" and p.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(f"from_dataframe: path {str(p)!r} should end in .parquet or .csv")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        if source == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    except Exception as exc:  # pyarrow refuses e.g. a column of mixed Python types
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"from_dataframe: cannot write {p} ({type(exc).__name__}: {str(exc)[:200]}); give each column "
            "one type (df[col] = df[col].astype(str) for a mixed one), or write a .csv"
        ) from None
    tmp.replace(p)
    return {"source": source, "root": str(p), "label": label, **data}
