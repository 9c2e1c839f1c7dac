"""The deployment guide's raw-row section for a table run: a snippet that predicts from raw CSV
rows with onnxruntime, numpy, the standard library and ``preprocess.json`` alone (no trainkit, no
pandas), executed by Phase 5 like every other snippet. It asserts that its probabilities are the
ones trainkit's own path (``Preprocess.transform``, the normalization, the model) gives on the same
rows, so the guide cannot drift from the preprocessing it documents."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trainkit.run import PREPROCESS

__all__ = ["raw_rows_section", "SAMPLE_ROWS"]

SAMPLE_ROWS = "sample_rows.csv"

_SECTION = """
## From raw rows (ONNX Runtime, numpy and preprocess.json; no trainkit)

`preprocess.json` (a copy of `01_planning/preprocess.json`) holds what the train split taught each
column: numbers get their train median for a gap (plus a 0/1 "missing" input where train had gaps)
and are standardized; a category is one-hot over its vocabulary, plus an `(other)` input for any
other value and a `(missing)` input; a date becomes year, month, day of week (Monday 0) and hour.
Then every input is normalized with the training statistics above. `{rows}` holds {n} raw
validation rows as a CSV export would have them.

```python
import csv
import json
import re

import numpy as np
import onnxruntime as ort

pre = json.load(open("preprocess.json"))
mean = np.array({mean}, dtype=np.float64)
std = np.array({std}, dtype=np.float64)
NA = {{"", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "null", "NULL", "None", "<NA>", "#N/A", "#NA"}}
FORMATTED = re.compile({pattern})  # "$1,234.50", "-€ 80", "12.5%": the number without sign, commas, %


def number(text):
    text = text.strip()
    if text in NA:
        return np.nan
    if text.lower() in ("true", "false"):
        return float(text.lower() == "true")
    try:
        return float(text)
    except ValueError:
        pass
    m = FORMATTED.fullmatch(text)
    if m is None:
        return np.nan
    sign = "-" if (m.group(1) == "-") != (m.group(2) == "-") else ""
    return float(sign + m.group(3).replace(",", "") + (m.group(4) or ""))


def numeric(p, v):
    gap = not np.isfinite(v)  # a gap, or inf: imputed as trainkit does
    out = [((p["median"] if gap else v) - p["mean"]) / p["std"]]
    return out + ([float(gap)] if p["indicator"] else [])


def date_parts(text):
    try:
        t = np.datetime64(text.strip().replace(" ", "T"), "s")
    except ValueError:
        return dict.fromkeys(("year", "month", "dayofweek", "hour"), np.nan)
    day = t.astype("datetime64[D]")
    return {{"year": float(day.astype("datetime64[Y]").astype(int) + 1970),
            "month": float(day.astype("datetime64[M]").astype(int) % 12 + 1),
            "dayofweek": float((day.astype(int) + 3) % 7),
            "hour": float((t - day).astype("timedelta64[h]").astype(int))}}


def category(c, text):
    onehot = [0.0] * (len(c["vocabulary"]) + 2)
    if text in NA:
        onehot[-1] = 1.0
        return onehot
    vocab = {{v: i for i, v in enumerate(c["vocabulary"])}}
    keys = [text]
    try:
        f = float(text)
        keys += [str(f)] + ([str(int(f))] if f.is_integer() else [])
    except ValueError:
        pass
    onehot[next((vocab[k] for k in keys if k in vocab), len(vocab))] = 1.0  # unseen: (other)
    return onehot


def encode(row):
    x = []
    for c in pre["columns"]:
        text = row[c["name"]]
        if c["kind"] in ("numeric", "boolean"):
            x += numeric(c, number(text))
        elif c["kind"] == "datetime":
            parts = date_parts(text)
            x += [v for p in c["parts"] for v in numeric(p, parts[p["part"]])]
        else:
            x += category(c, text)
    return x


with open("{rows}", newline="") as f:
    rows = list(csv.DictReader(f, skipinitialspace=True))  # as trainkit reads a CSV
x = ((np.array([encode(r) for r in rows]) - mean) / std).astype(np.float32)
sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
{tail}
```
"""

_CLASSES = '''logits = sess.run(None, {{"input": x}})[0]
probs = np.exp(logits - logits.max(1, keepdims=True))
probs /= probs.sum(1, keepdims=True)
print("raw-row predictions:", [pre["classes"][i] for i in probs.argmax(1)])
assert np.allclose(probs, {expected}, atol=1e-3), "these probabilities differ from trainkit's on the same rows"'''

_NUMBERS = '''pred = sess.run(None, {{"input": x}})[0][:, 0]  # in the label's own units
print("raw-row predictions ({label}):", pred.round(4).tolist())
assert np.allclose(pred, {expected}, rtol=1e-4, atol={atol}), "these numbers differ from trainkit's on the same rows"'''


def raw_rows_section(folder: Path, run_planning: Path, bundle: Any, model: torch.nn.Module, n: int = 5) -> str:
    """Write ``preprocess.json`` and ``sample_rows.csv`` (``n`` raw val rows) into ``folder`` and
    return the guide's section, with trainkit's probabilities on those rows to assert against."""

    table = bundle.source.table
    pre = table.preprocess
    shutil.copyfile(run_planning / PREPROCESS, folder / PREPROCESS)
    rows = table.frame.iloc[bundle.splits["val"][:n]][[c["name"] for c in pre.columns]]
    rows.to_csv(folder / SAMPLE_ROWS, index=False)
    x = torch.as_tensor(pre.transform(rows), dtype=torch.float32)
    mean = [float(v) for v in bundle.mean.reshape(-1)]
    std = [float(v) for v in bundle.std.reshape(-1)]
    if bundle.regression:  # the exported model gives the label's units
        from trainkit.phases.final_numbers import LabelUnits

        with torch.no_grad():
            values = LabelUnits(model, bundle.label_scale).eval()((x - bundle.mean) / bundle.std).double().numpy()[:, 0]
        tail = _NUMBERS.format(
            label=table.label,
            expected=[float(f"{v:.7g}") for v in values],
            atol=f"{1e-4 * max(1.0, bundle.label_scale['std']):.3g}",
        )
    else:
        with torch.no_grad():
            probs = torch.softmax(model.eval()((x - bundle.mean) / bundle.std).float(), 1).numpy()
        tail = _CLASSES.format(expected=np.round(probs, 5).tolist())
    from trainkit.data.number_text import PATTERN

    return _SECTION.format(rows=SAMPLE_ROWS, n=len(rows), mean=mean, std=std, tail=tail, pattern=repr(PATTERN))
