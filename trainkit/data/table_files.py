"""Table files as exports write them: a CSV (its delimiter, encoding and decimal mark detected) or
a Parquet file, read into a pandas DataFrame; a file that is not a table is a DataError naming it."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import Any

from trainkit.errors import DataError

__all__ = ["read_table", "ENCODINGS"]


def read_table(path: str | Path, source: str, field: str = "data.root") -> Any:
    """The file as a pandas DataFrame; DataError naming the file (and ``field``, where it was given)
    and what to do when it is not a readable CSV / Parquet table or holds no rows."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{field}: table file not found: {p}; expected a .csv or .parquet file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty; expected a header row and at least one data row")
    _refuse_workbook(p)
    notes: list[str] = []
    try:
        if source == "parquet":
            df = pd.read_parquet(p)
        else:
            df = _read_csv(p, notes)
    except DataError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for a file that is not what it claims
        other = "parquet" if source == "csv" else "csv"
        raise DataError(
            f"{p}: not a readable {source.upper()} table ({type(exc).__name__}: {str(exc)[:200]}); "
            f"check the file, or set data.source: {other} if it is one"
        ) from None
    if len(df.columns) == 0 or len(df) == 0:
        raise DataError(f"{p}: no data rows (columns: {list(map(str, df.columns))[:20]}); add rows to the table")
    df.columns = [str(c) for c in df.columns]
    df.attrs["trainkit_read"] = notes
    return df


ENCODINGS = ("utf-8", "cp1252", "latin-1")  # latin-1 decodes any byte: the last resort
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # compressed CSVs pandas reads by their suffix


def _refuse_workbook(p: Path) -> None:
    """An Excel workbook (by its suffix, or an .xls's / .xlsx's first bytes) is no CSV or Parquet:
    say how to make it one."""
    with p.open("rb") as f:
        magic = f.read(8)
    xlsx = magic[:4] == b"PK\x03\x04" and p.suffix.lower() in (".xlsx", ".xlsm", ".csv", ".parquet", "")
    if p.suffix.lower() in (".xlsx", ".xlsm", ".xls") or xlsx or magic == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise DataError(
            f"{p}: an Excel workbook, not a CSV or Parquet table; save the sheet as CSV, or in a notebook "
            f"trainkit.from_dataframe(pandas.read_excel({str(p)!r}), label=..., path='data/table.parquet')"
        )


def _read_csv(p: Path, notes: list[str]) -> Any:
    """A CSV as written by Excel, R, pandas or a database export: the delimiter (``,`` unless the
    first lines split consistently only on ``;``, a tab or ``|``), the encoding (UTF-8, else
    Windows-1252, else Latin-1) and spaces after a delimiter. What was not the default goes in
    ``notes``."""
    import pandas as pd

    sep = _delimiter(p)
    if sep != ",":
        notes.append(f"columns separated by {'a tab' if sep == chr(9) else repr(sep)}")
    for i, enc in enumerate(ENCODINGS):
        try:
            df = pd.read_csv(p, sep=sep, low_memory=False, skipinitialspace=True, encoding=enc)
        except UnicodeDecodeError:
            continue
        if i:
            notes.append(f"read as {enc} (the file is not valid UTF-8)")
        if sep != "," and _decimal_commas(df):
            df = pd.read_csv(p, sep=sep, low_memory=False, skipinitialspace=True, encoding=enc, decimal=",")
            notes.append("decimal commas (1,5 = 1.5)")
        return df
    raise DataError(f"{p}: cannot decode the file as text")  # unreachable: latin-1 decodes any byte


def _decimal_commas(df: Any) -> bool:
    """True when some text column holds only numbers written with a decimal comma (``-1,25``),
    as a ``;``-separated export from a European locale has them."""
    import pandas as pd

    for c in df.columns:
        if (pd.api.types.is_string_dtype(df[c]) or pd.api.types.is_object_dtype(df[c])) and not isinstance(
            df[c].dtype, pd.CategoricalDtype
        ):
            v = df[c].dropna().astype(str).str.strip()
            if len(v) and v.str.fullmatch(r"-?\d+(,\d+)?").all() and v.str.contains(",", regex=False).any():
                return True
    return False


def _delimiter(p: Path) -> str:
    """``,``, or the one other delimiter on which the file's first lines (quotes respected) all
    split into the same number (> 1) of fields where ``,`` does not."""
    import csv
    import io

    opener = _OPENERS.get(p.suffix.lower())
    with opener(p, "rb") if opener else p.open("rb") as f:
        raw = f.read(1 << 16)
    text = raw.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(raw) == 1 << 16 and len(lines) > 1:
        lines = lines[:-1]  # the sample may end inside a line
    lines = [ln for ln in lines[:50] if ln.strip()]
    if not lines:
        return ","

    def widths(sep: str) -> list[int]:
        try:
            return [len(r) for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=sep)]
        except csv.Error:
            return []

    def consistent(w: list[int]) -> bool:
        return len(w) > 0 and w[0] > 1 and all(x == w[0] for x in w)

    comma = widths(",")
    if comma and comma[0] > 1:  # the header splits on commas
        return ","
    found = [sep for sep in (";", "\t", "|") if consistent(widths(sep))]
    return found[0] if len(found) == 1 else ","
