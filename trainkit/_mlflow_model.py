"""Phase 5's model in MLflow: the ONNX file as an MLflow model, and registered versions. Called
inside :func:`trainkit.tracking.push_run`, which points MLflow's global tracking URI at the target
(model logging and the registry's lookup of a logged model read it).

The ONNX flavour, not the PyTorch one: the ONNX file is what Phase 5 checked for parity with the
trained weights and what the deployment guide serves; it loads with onnxruntime alone (no
pickle), while MLflow's PyTorch flavour would need either pickle or ``torch.export`` of the
user's model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def log_onnx_model(uri: str, run_id: str, onnx_path: Path, input_shape: list[int]) -> dict[str, Any]:
    """Log ``onnx_path`` into run ``run_id`` as the MLflow model ``model`` with its signature and an
    input example (one all-zero sample of ``input_shape``); returns its URI and id."""
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import Model, infer_signature

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.zeros((1, *[int(s) for s in input_shape]), dtype=np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    client = mlflow.MlflowClient(tracking_uri=uri)
    before = client.get_run(run_id).info
    # Model.log files the model under the global URI (push_run sets it) and the active run's experiment
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.onnx,
            onnx_model=onnx.load(str(onnx_path)),
            run_id=run_id,
            signature=infer_signature(x, y),
            input_example=x,
            step=-1,  # MLflow re-logs the run's metrics of this step onto the model: no epoch has -1
            pip_requirements=[f"onnxruntime>={ort.__version__.split('+')[0]}"],
        )
    if before.status == "RUNNING":  # leaving the block ended the run: its status is the phase's, put it back
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, before.status, end_time=before.end_time)
    return {"model_uri": info.model_uri, "model_id": getattr(info, "model_id", None), "run_id": run_id}


def register_version(
    client: Any,
    name: str,
    model: dict[str, Any],
    record: dict[str, Any],
    gate_sha256: str,
    run_id: str,
    run_dir: Path,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """A new version of registered model ``name`` from the logged model, tagged with the signed
    production gate: its sha256, signer, time, and every waiver with its reason."""
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="Models signed off through trainkit's production_ready gate.")
    sig = record["signoff"]
    waivers = record.get("waivers") or []
    tags = {
        "trainkit.gate": record["gate"],
        "trainkit.gate_sha256": gate_sha256,
        "trainkit.signed_by": str(sig["by"]),
        "trainkit.signed_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sig["at"])),
        "trainkit.run": run_dir.name,
        "trainkit.run_dir": str(run_dir),
        "trainkit.config_hash": str(manifest.get("config_hash")),
        "trainkit.waived": ", ".join(w["check"] for w in waivers) or "none",
    }
    for w in waivers:
        tags[f"trainkit.waiver.{w['check']}"] = f"{w['reason']} (by {w['by']})"[:7900]
    lines = [
        f"Signed off by {sig['by']} on {tags['trainkit.signed_at']} (gate {record['gate']}, record sha256 "
        f"{gate_sha256[:16]}…), run {run_dir.name}."
    ]
    lines += [f"Waived {w['check']}: {w['reason']} (by {w['by']})" for w in waivers]
    mv = client.create_model_version(
        name,
        source=model["model_uri"],
        run_id=run_id,
        tags=tags,
        description="\n\n".join(lines),
        model_id=model.get("model_id"),
    )
    return {"name": name, "version": str(mv.version), "gate_sha256": gate_sha256}
