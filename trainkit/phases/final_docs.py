"""Phase 5's export and documents: ONNX and TorchScript with parity and latency, the deployment guide
(its snippets run), the model card."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from trainkit._io import md_text, read_json, sha256_file, write_json_atomic, write_text_atomic
from trainkit.config import config_hash
from trainkit.metrics import LABELS
from trainkit.phases.common import (
    FinalizationContext,
    show_html,
)
from trainkit.phases.final_model import _bundle, _load_final
from trainkit.phases.final_numbers import LabelUnits, number_card, number_guide
from trainkit.run import (
    Phase,
    DEPLOYMENT_GUIDE_MD,
    ENVIRONMENT_JSON,
    EXPORT_JSON,
    MODEL_CARD_MD,
    MODEL_ONNX,
    MODEL_TS,
    SNIPPETS_JSON,
)


def export_models(ctx: FinalizationContext) -> dict[str, Any]:
    """model.onnx and model.ts, parity in a fresh process on held-out (val) inputs, latency table."""
    from trainkit.export import ExportError, check_parity, export_onnx, export_torchscript, measure_latency

    bundle = _bundle(ctx)
    model = _load_final(ctx, bundle)
    if bundle.regression:  # exported in the label's units; parity to parity_atol × the label's std
        model, atol = (
            LabelUnits(model, bundle.label_scale).eval(),
            ctx.config.final.parity_atol * max(1.0, bundle.label_scale["std"]),
        )
    out: dict[str, Any] = {
        "input_shape": list(bundle.input_shape),
        "parity_atol": atol if bundle.regression else ctx.config.final.parity_atol,
    }
    for name, fn in (("onnx", export_onnx), ("torchscript", export_torchscript)):
        try:
            fn(model, bundle.input_shape, ctx.path(MODEL_ONNX if name == "onnx" else MODEL_TS))
            out[f"{name}_exported"] = True
        except (ExportError, RuntimeError) as exc:
            out[f"{name}_exported"], out[f"{name}_error"] = False, str(exc)[:500]
    xv, _ = bundle.arrays("val")
    x = xv[:256]
    with torch.no_grad():
        ref = model(x).numpy()
    if out["onnx_exported"] and out["torchscript_exported"]:
        out["parity"] = check_parity(ctx.dir, x.numpy(), ref, atol=out["parity_atol"])
        out["latency"] = measure_latency(model, ctx.path(MODEL_ONNX), ctx.path(MODEL_TS), bundle.input_shape)
        out["onnx_sha256"], out["torchscript_sha256"] = (
            sha256_file(ctx.path(MODEL_ONNX)),
            sha256_file(ctx.path(MODEL_TS)),
        )
        rows = "".join(
            f"<tr><td>{r['runtime']}</td><td>{r['batch']}</td><td>{r['p50_ms']:.3f}</td><td>{r['p95_ms']:.3f}</td></tr>"
            for r in out["latency"]
        )
        show_html(
            f"<p>Parity (max abs diff): ONNX {out['parity']['onnx'].get('max_abs_diff')}, TorchScript "
            f"{out['parity']['torchscript'].get('max_abs_diff')}</p><table><tr><th>runtime</th><th>batch</th>"
            f"<th>p50 ms</th><th>p95 ms</th></tr>{rows}</table>"
        )
    write_json_atomic(ctx.path(EXPORT_JSON), out)
    return out


_GUIDE = """# Deployment guide

The model classifies inputs of shape `{shape}` (float32, batch first) into {k} classes:
`{names}`. Inputs must be normalized with the training statistics: `x = (raw - mean) / std` with
mean `{mean}` and std `{std}` ({how}). Outputs are logits; apply softmax for probabilities.

Artifacts in this folder: `model.onnx` (sha256 `{onnx_sha}`), `model.ts` (sha256 `{ts_sha}`),
`checkpoints/best.pt` (the trainkit checkpoint, loaded with `weights_only=True`).

## ONNX Runtime

```python
import numpy as np
import onnxruntime as ort

sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
mean, std = np.array({mean}, dtype=np.float32), np.array({std}, dtype=np.float32)
raw = np.random.default_rng(0).random((3, {shape_csv})).astype(np.float32)
x = ((raw - mean.reshape({bshape})) / std.reshape({bshape})).astype(np.float32)
logits = sess.run(None, {{"input": x}})[0]
assert logits.shape == (3, {k}), logits.shape
print("onnx predictions:", logits.argmax(1))
```

## TorchScript

```python
import torch

model = torch.jit.load("model.ts").eval()
mean, std = torch.tensor({mean}), torch.tensor({std})
raw = torch.rand(3, {shape_csv})
x = (raw - mean.reshape({bshape})) / std.reshape({bshape})
with torch.no_grad():
    logits = model(x)
assert logits.shape == (3, {k})
print("torchscript predictions:", logits.argmax(1).tolist())
```

## Batch size

Both artifacts accept any batch size (the ONNX batch axis is dynamic); the latency table in
`export.json` gives p50/p95 at batch 1 and 64.
"""


def _snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run_snippets(folder: Path, text: str) -> list[dict[str, Any]]:
    """Execute every python block of a guide, as written, in a fresh interpreter in ``folder``."""
    out = []
    for i, code in enumerate(_snippets(text)):
        r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
        out.append({"snippet": i, "ok": r.returncode == 0, "stdout": r.stdout[-500:], "stderr": r.stderr[-800:]})
    return out


def write_docs(ctx: FinalizationContext, test: dict[str, Any], exp: dict[str, Any]) -> dict[str, Any]:
    """deployment_guide.md (its snippets executed and recorded in snippets.json) and model_card.md."""
    splits = ctx.run.splits()
    guide = number_guide(splits, exp) if splits.get("task") == "regression" else _class_guide(splits, exp)
    bundle = _bundle(ctx)
    if bundle.source.table is not None:  # a table: the guide predicts from raw rows too
        from trainkit.phases.raw_rows import raw_rows_section

        guide += raw_rows_section(ctx.dir, ctx.run_dir / Phase.PLANNING.value, bundle, _load_final(ctx, bundle))
    write_text_atomic(ctx.path(DEPLOYMENT_GUIDE_MD), guide)
    snippets = run_snippets(ctx.dir, guide)
    write_json_atomic(ctx.path(SNIPPETS_JSON), snippets)
    env = read_json(ctx.run_dir / Phase.PLANNING.value / ENVIRONMENT_JSON)
    card = number_card(ctx, splits, test, env) if bundle.regression else _class_card(ctx, splits, test, env)
    write_text_atomic(ctx.path(MODEL_CARD_MD), card)
    return {"snippets": snippets}


def _class_guide(splits: dict[str, Any], exp: dict[str, Any]) -> str:
    """The deployment guide of a classifier: its input, normalization, classes and exports."""
    shape = splits["input_shape"]
    mean, std = splits["normalization"]["mean"], splits["normalization"]["std"]
    per_channel = len(shape) == 3 and len(mean) == shape[0]
    bshape = (1, -1, 1, 1) if per_channel else (1, -1) if len(shape) == 1 else (1,) * (len(shape) + 1)
    if not per_channel and len(mean) == 1:
        bshape = tuple([1] * (len(shape) + 1))
    return _GUIDE.format(
        shape=tuple(shape),
        k=len(splits["class_names"]),
        names=splits["class_names"],
        mean=mean,
        std=std,
        how="per channel" if per_channel else "one scalar over all features",
        onnx_sha=exp.get("onnx_sha256"),
        ts_sha=exp.get("torchscript_sha256"),
        shape_csv=", ".join(str(s) for s in shape),
        bshape=bshape,
    )


def _class_card(ctx: FinalizationContext, splits: dict[str, Any], test: dict[str, Any], env: dict[str, Any]) -> str:
    """The model card of a classifier: intended use, model, data, test metrics per class, limits."""
    shape = splits["input_shape"]
    pcs = "\n".join(
        f"| {md_text(c['class'])} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in test["per_class"]
    )
    worst = min(test["per_class"], key=lambda c: c["recall"])
    classes, weakest = ", ".join(md_text(n) for n in splits["class_names"]), md_text(worst["class"])
    metric_line = (
        ""
        if test.get("metric", "accuracy") == "accuracy"
        else (
            f"{LABELS[test['metric']]} (the target metric) {test['score']:.4f} (95% CI [{test['score_ci'][0]:.4f}, "
            f"{test['score_ci'][1]:.4f}]); val {test['val_score']:.4f}.\n"
        )
    )
    return f"""# Model card

## Intended use
Classifying inputs like the training data ({splits["source"]}; shape {tuple(shape)}) into the classes
{classes}. Out of scope: inputs from another distribution (other sensors, resolutions, preprocessing),
classes not listed, and any decision where an error is costly without a person reviewing it.

## Model
`{ctx.config.model.name}` {ctx.config.model.kwargs}; optimizer {ctx.config.optimizer.name}
lr {ctx.config.optimizer.lr:g}; {ctx.config.training.epochs} epochs max (patience {ctx.config.training.patience});
config hash `{config_hash(ctx.config)[:16]}`.

## Data
Splits (stratified, seed {splits["seed"]}): {splits["sizes"]}; fingerprints in `01_planning/splits.json`.
The test split was quarantined until this phase and evaluated once.

## Metrics (test)
{metric_line}Accuracy {test["accuracy"]:.4f} (95% CI [{test["accuracy_ci"][0]:.4f}, {test["accuracy_ci"][1]:.4f}]);
val {test["val_accuracy"]:.4f}; ECE {test["ece"]:.4f};
accuracy under noise σ={test["noise_std"]}: {test["noisy_accuracy"]:.4f}.

| class | precision | recall | F1 | support |
|---|---:|---:|---:|---:|
{pcs}

## Limitations
Weakest class: {weakest} (recall {worst["recall"]:.3f}). The test set has {test["n"]} samples: the interval
above is the honest uncertainty. Robustness was smoke-tested with Gaussian noise only.

## Environment
Python {env.get("python")}, torch {env.get("packages", {}).get("torch")}, platform {env.get("platform")}; see
`01_planning/environment.json`.
"""
