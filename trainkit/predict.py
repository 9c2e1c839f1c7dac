"""``trainkit predict RUN INPUT``: predictions from new raw inputs with a run's model.

A table (CSV or Parquet with the training columns; extra columns are ignored, a missing one is a
clear error, unseen categories go to ``(other)``, gaps are imputed) goes through the run's
``01_planning/preprocess.json``; an ``.npz`` (array ``x``) or an image folder goes through the
source's own reading. Then the training normalization, the model, a softmax. Each row gets its
predicted class name and one probability per class.

The model is Phase 5's (``05_finalization/checkpoints/best.pt``) when the run has one, else the
best baseline so far (said so on the console); the checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainkit.errors import DataError, RunError
from trainkit.run import (
    PREPROCESS,
    Phase,
    RunFolder,
    BEST_PT,
)

__all__ = ["predict", "write_predictions", "model_checkpoint"]


def model_checkpoint(run: RunFolder) -> tuple[Path, str]:
    """(checkpoint, which model it is): Phase 5's final model, else the latest baseline's best."""
    final = run.phase_dir(Phase.FINALIZATION.value) / "checkpoints" / BEST_PT
    if final.is_file():
        return final, "the final model (05_finalization)"
    d = run.latest(Phase.BASELINE.value)
    if d is not None and (d / "checkpoints" / BEST_PT).is_file():
        return (
            d / "checkpoints" / BEST_PT,
            f"the baseline's best ({d.relative_to(run.path)}; the run has no final model yet)",
        )
    raise RunError(
        f"{run.path}: no trained model (no 05_finalization or 02_baseline checkpoint); run the pipeline first"
    )


def _inputs(
    run: RunFolder, source: str, path: Path, shape: tuple[int, ...], notes: list[str]
) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """The raw input as model features (before normalization), and the columns that identify each
    row; a table's values that training never saw are appended to ``notes``
    (:func:`trainkit.data.new_rows.unexpected_values`)."""
    if source in ("csv", "parquet"):
        from trainkit.data.new_rows import unexpected_values
        from trainkit.data.tables import Preprocess, read_table

        saved = run.planning / PREPROCESS
        if not saved.is_file():
            raise RunError(f"{saved}: missing; this run's table preprocessing was never saved (rerun Phase 1)")
        from trainkit._io import read_json

        kind = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
        frame = read_table(path, kind, field="the rows to predict")
        pre = Preprocess.from_dict(read_json(saved))
        x = pre.transform(frame)
        notes += unexpected_values(pre, frame, x)
        return x, {"row": list(range(len(frame)))}
    if path.is_dir():
        return _images(path, shape)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array 'x' (found {z.files}); save the inputs with np.savez(path, x=...)")
            x = np.asarray(z["x"], dtype=np.float32)
        if tuple(x.shape[1:]) != tuple(shape):
            raise DataError(f"{path}: x has samples of shape {tuple(x.shape[1:])}; the model takes {tuple(shape)}")
        return x, {"row": list(range(len(x)))}
    raise DataError(
        f"{path}: expected a .csv / .parquet table (a table run), an .npz with array 'x', or an image folder"
    )


def _images(folder: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, list[Any]]]:
    from PIL import Image

    from trainkit.data.images import IMAGE_EXT

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXT and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({sorted(IMAGE_EXT)})")
    c, h, w = shape
    out = np.zeros((len(files), c, h, w), dtype=np.float32)
    for i, p in enumerate(files):
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L" if c == 1 else "RGB").resize((w, h)), dtype=np.float32) / 255.0
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out, {"file": [str(p.relative_to(folder)) for p in files]}


def predict(run_dir: str | Path, input_path: str | Path, say: Any = None) -> dict[str, Any]:
    """Predict every row (file) of ``input_path`` with the run's model: ``{"ids": {...}, "classes":
    [...], "probabilities": (N, K) array, "predicted": [class names], "model": which one, "notes":
    [a table's values that training never saw, one line per column]}`` (``say`` gets each note). A
    regression run: ``predicted`` holds the numbers in the label's units (``classes`` is the
    label's name, ``probabilities`` None, ``units`` says so)."""
    import torch

    from trainkit.checkpoints import load_checkpoint
    from trainkit.config import validate_config_dict
    from trainkit.data import normalize
    from trainkit.models import build_model

    run = RunFolder(run_dir)
    if not run.is_run:
        raise RunError(f"{run.path}: not a trainkit run folder (no run.json)")
    ckpt, which = model_checkpoint(run)
    if say is not None:
        say(f"trainkit: predicting with {which}")
    state = load_checkpoint(ckpt)
    cfg = validate_config_dict(state["config"], str(ckpt))
    shape = tuple(state["input_shape"])
    notes: list[str] = []
    x, ids = _inputs(run, cfg.data.source, Path(input_path), shape, notes)
    for line in notes if say is not None else ():
        say(f"trainkit: note: {line}")
    mean, std = (torch.tensor(state["normalization"][k]) for k in ("mean", "std"))
    model = build_model(cfg.model.name, shape, len(state["class_names"]), cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(state["model"])
    model.eval()
    names = list(state["class_names"])
    if state.get("label_scale"):  # a regression: the model's standardized output back in the label's units
        from trainkit.losses import as_logits

        scale = state["label_scale"]
        with torch.no_grad():
            z = (
                as_logits(model(normalize(torch.as_tensor(x), mean, std)))
                .float()
                .reshape(len(x), -1)[:, 0]
                .double()
                .numpy()
            )
        values = z * scale["std"] + scale["mean"]
        return {
            "ids": ids,
            "classes": names,
            "probabilities": None,
            "predicted": values.tolist(),
            "model": which,
            "units": f"the units of the label {names[0]!r}",
            "notes": notes,
        }
    with torch.no_grad():
        probs = torch.softmax(model(normalize(torch.as_tensor(x), mean, std)).float(), dim=1).numpy()
    return {
        "ids": ids,
        "classes": names,
        "probabilities": probs,
        "predicted": [names[i] for i in probs.argmax(1)],
        "model": which,
        "notes": notes,
    }


def check_output(out: str | Path, input_path: str | Path, run_dir: str | Path) -> Path:
    """Where the predictions may go, checked before any work: a DataError when ``out`` is a folder,
    is the very file being predicted (it would be replaced by its predictions), or is a file the
    run already holds (a gate's hashes cover it)."""
    out, src, run = Path(out).resolve(), Path(input_path).resolve(), Path(run_dir).resolve()
    if out.is_dir():
        raise DataError(f"-o {out}: a folder; give the predictions' file, e.g. -o {out / 'predictions.csv'}")
    if out == src:
        raise DataError(f"-o {out}: the input itself (its rows would become their predictions); name another file")
    if out.is_file() and run in out.parents:
        raise DataError(f"-o {out}: a file of the run {run}; write the predictions outside it, or to a new file")
    return out


def write_predictions(result: dict[str, Any], out: str | Path) -> Path:
    """The predictions as a CSV: the row (or file), ``prediction``, then ``p(CLASS)`` per class."""
    import pandas as pd

    from trainkit._io import write_text_atomic

    frame = pd.DataFrame(result["ids"])
    frame["prediction"] = result["predicted"]
    if result["probabilities"] is None:  # a regression: the number, in the label's units
        return write_text_atomic(out, frame.to_csv(index=False))
    for j, name in enumerate(result["classes"]):
        frame[f"p({name})"] = result["probabilities"][:, j]
    return write_text_atomic(out, frame.to_csv(index=False))


RAW_PARITY_ROWS = 500  # test rows the production gate sends through the deployment path


def raw_rows_parity(run_dir: str | Path, bundle: Any, expected: list[int] | None) -> tuple[str, str]:
    """Production check for a table run: the raw test rows (as the user's file has them, up to
    :data:`RAW_PARITY_ROWS`), written to a CSV and sent through :func:`predict` (preprocess.json,
    the normalization, the final checkpoint), must get exactly the classes the test evaluation
    gave them. No label is read: only the evaluation's recorded predictions are compared."""
    import tempfile

    table = getattr(bundle.source, "table", None)
    if table is None:
        return "na", f"not a table run ({type(bundle.source).__name__}): inputs arrive as arrays, not raw rows"
    if expected is None:
        return "fail", "the test evaluation recorded no predictions to compare with"
    test = np.asarray(bundle.splits["test"])
    take = np.linspace(0, len(test) - 1, min(len(test), RAW_PARITY_ROWS)).astype(int) if len(test) else test
    rows = table.frame.iloc[test[take]].drop(columns=[table.label])
    with tempfile.TemporaryDirectory(prefix="trainkit-raw-") as tmp:
        path = Path(tmp) / "raw_test_rows.csv"
        rows.to_csv(path, index=False)
        got = predict(run_dir, path)
    names = got["classes"]
    if got["probabilities"] is None:  # a regression: the numbers, to float32 precision in the label's units
        want_v, got_v = np.asarray([expected[i] for i in take], dtype=np.float64), np.asarray(got["predicted"])
        tol = 1e-4 * max(1.0, float(np.abs(want_v).max()) if len(want_v) else 1.0)
        worst = float(np.abs(got_v - want_v).max()) if len(want_v) else 0.0
        if worst > tol:
            return "fail", (
                f"raw test rows predicted differently through `trainkit predict` than in the evaluation (max abs "
                f"difference {worst:.3g} > {tol:.3g}, in the label's units)"
            )
        return "pass", (
            f"{len(want_v)} raw test rows (CSV, no label column) through `trainkit predict`: every number as "
            f"evaluated (max abs difference {worst:.2g}, label units)"
        )
    want = [names[expected[i]] for i in take]
    bad = [i for i, (a, b) in enumerate(zip(got["predicted"], want)) if a != b]
    if bad:
        return "fail", (
            f"{len(bad)} of {len(want)} raw test rows predicted differently through `trainkit predict` than in "
            f"the evaluation (first: row {int(test[take][bad[0]])}: {got['predicted'][bad[0]]!r} vs {want[bad[0]]!r})"
        )
    return (
        "pass",
        f"{len(want)} raw test rows (CSV, no label column) through `trainkit predict`: every class as evaluated",
    )
