"""ONNX and TorchScript export, parity checked in a fresh process, and latency.

export_onnx(model, input_shape, "model.onnx")      # one file, dynamic batch axis, onnx.checker
export_torchscript(model, input_shape, "model.ts")
check_parity(dir, x, expected)                     # a new interpreter loads both and compares
measure_latency(model, onnx_path, ts_path, shape)  # p50/p95 ms at batch 1 and 64
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainkit.errors import TrainkitError
from trainkit.run import MODEL_ONNX, MODEL_TS

__all__ = ["ExportError", "export_onnx", "export_torchscript", "check_parity", "measure_latency"]


class ExportError(TrainkitError):
    """Raised when a model cannot be exported, or an exported file is invalid."""


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17) -> Path:
    """Export to ONNX as one file with a dynamic batch axis; validated with ``onnx.checker``."""
    import onnx

    path = Path(path)
    model = model.eval().cpu()
    x = torch.zeros((2, *input_shape))
    tmp = path.with_suffix(".onnx.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {exc}") from exc
    tmp.replace(path)
    return path


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Trace to TorchScript (scripting first, tracing when the model cannot be scripted)."""
    path = Path(path)
    model = model.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ts = torch.jit.script(model)
        except Exception:
            ts = torch.jit.trace(model, torch.zeros((2, *input_shape)))
    tmp = path.with_suffix(".ts.tmp")
    ts.save(str(tmp))
    tmp.replace(path)
    return path


def check_parity(
    folder: str | Path,
    x: np.ndarray,
    expected: np.ndarray,
    onnx_name: str = MODEL_ONNX,
    ts_name: str = MODEL_TS,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Load both artifacts in a fresh Python process and compare their logits with the eager
    model's ``expected`` on inputs ``x`` (the full batch and batch 1)."""
    folder = Path(folder)
    np.save(folder / "parity_inputs.npy", x.astype(np.float32))
    np.save(folder / "parity_expected.npy", expected.astype(np.float32))
    r = subprocess.run(
        [sys.executable, "-m", "trainkit.export", str(folder), onnx_name, ts_name, str(atol)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for f in ("parity_inputs.npy", "parity_expected.npy"):
        (folder / f).unlink(missing_ok=True)
    if r.returncode != 0:
        raise ExportError(f"parity process failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _parity_main(folder: str, onnx_name: str, ts_name: str, atol: str) -> None:
    import onnxruntime as ort

    d = Path(folder)
    x, ref = np.load(d / "parity_inputs.npy"), np.load(d / "parity_expected.npy")
    out: dict[str, Any] = {"atol": float(atol), "n": int(len(x))}
    try:
        sess = ort.InferenceSession(str(d / onnx_name), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x})[0]
        one = sess.run(None, {"input": x[:1]})[0]
        out["onnx"] = {
            "max_abs_diff": float(np.abs(got - ref).max()),
            "batch_1": list(one.shape),
            "batch_n": list(got.shape),
            "batch1_diff": float(np.abs(one - ref[:1]).max()),
        }
    except Exception as exc:  # an altered or broken file is a parity failure, not a crash
        out["onnx"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    try:
        ts = _jit_load(d / ts_name)
        with torch.no_grad():
            got = ts(torch.from_numpy(x)).numpy()
            one = ts(torch.from_numpy(x[:1])).numpy()
        out["torchscript"] = {
            "max_abs_diff": float(np.abs(got - ref).max()),
            "batch_1": list(one.shape),
            "batch_n": list(got.shape),
            "batch1_diff": float(np.abs(one - ref[:1]).max()),
        }
    except Exception as exc:
        out["torchscript"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    for k in ("onnx", "torchscript"):
        o = out[k]
        o["ok"] = "error" not in o and max(o["max_abs_diff"], o["batch1_diff"]) <= float(atol)
    print(json.dumps(out))


def _timed(fn: Any, reps: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def measure_latency(
    model: nn.Module,
    onnx_path: str | Path,
    ts_path: str | Path,
    input_shape: tuple[int, ...],
    batches: tuple[int, ...] = (1, 64),
    reps: int = 50,
) -> list[dict[str, Any]]:
    """p50/p95 latency (ms) per runtime and batch size, single process, CPU."""
    import onnxruntime as ort

    model = model.eval().cpu()
    ts = _jit_load(ts_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = []
    for b in batches:
        x = torch.randn((b, *input_shape))
        xn = x.numpy()
        with torch.no_grad():
            for name, fn in (
                ("eager", lambda: model(x)),
                ("torchscript", lambda: ts(x)),
                ("onnxruntime", lambda: sess.run(None, {"input": xn})),
            ):
                rows.append({"runtime": name, "batch": b, **_timed(fn, reps)})
    return rows


def _jit_load(path: Path) -> Any:
    """torch.jit.load without its deprecation warning in every report (TorchScript is one of the
    two export formats the workflow asks for; the warning is about torch's roadmap, not this file)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*jit.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path))


if __name__ == "__main__":
    _parity_main(*sys.argv[1:5])
