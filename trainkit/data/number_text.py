"""Numbers as spreadsheets and reports write them: ``$1,234.50``, ``-€ 80``, ``12.5%``, ``1,000,000``.

An export from Excel, a BI tool or a finance system formats its quantities; read as text they
would be a categorical of thousands of levels, or an ID, and the quantity would be lost. A value
counts as a formatted number when it is, in full: an optional sign, an optional currency symbol
(``$ € £ ¥``), digits either plain or grouped by commas in threes (``1,234,567``), an optional
decimal part, and an optional trailing ``%`` or currency symbol (``80 €``). The number is what is
left without the symbols and the commas (``12.5%`` is 12.5: a column is standardized, so its scale
does not matter).
A comma followed by other than three digits (``1,5``: a decimal comma) is not a formatted number.

:func:`parse_numbers` is the one reader: column kinds (``trainkit.data.tables``), transform and
``trainkit predict`` read numbers through it, and the deployment guide's raw-row snippet
(``trainkit.phases.raw_rows``) carries :data:`PATTERN` to read them the same way.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["PATTERN", "parse_numbers", "formatted_number"]

PATTERN = r"([-+]?)\s*[$€£¥]?\s*([-+]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*[%$€£¥]?"
_FORMATTED = re.compile(PATTERN)


def formatted_number(text: str) -> float | None:
    """``text`` (already stripped) as a formatted number, or None when it is not one in full."""
    m = _FORMATTED.fullmatch(text)
    if m is None:
        return None
    sign = "-" if (m.group(1) == "-") != (m.group(2) == "-") else ""
    return float(sign + m.group(3).replace(",", "") + (m.group(4) or ""))


def parse_numbers(text: Any) -> tuple[np.ndarray, np.ndarray]:
    """A pandas Series of stripped strings as float64, and which rows needed the formatted reading
    (``$1,234``, ``12%``); a value that is neither a plain nor a formatted number is NaN."""
    import pandas as pd

    plain = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    retry = np.isnan(plain) & text.notna().to_numpy()
    formatted = np.zeros(len(plain), dtype=bool)
    if retry.any():
        values = text.to_numpy()
        for i in np.flatnonzero(retry):
            f = formatted_number(str(values[i]))
            if f is not None:
                plain[i], formatted[i] = f, True
    return plain, formatted
