"""Phase 5 (Finalization): final training, the one-time test evaluation, export with parity and
latency, deployment guide and model card, the 25-check production_ready gate, deploy or blocked."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit._io import read_json, read_jsonl, sha256_file, write_json_atomic, write_text_atomic
from trainkit.config import config_hash, load_config, save_config, with_overrides
from trainkit.run import GATE, METRICS, TEST_ACCESS_LOG, TRAIN_SUMMARY, TRAINING_CONFIG, Phase
from trainkit.errors import CheckpointError, GateError, QuarantineError
from trainkit.phases.common import (
    run_path,
    FinalizationContext,
    begin,
    clock,
    finish_gate,
    load_run_config,
    require_routed,
    show_figure,
    show_html,
    write_decision,
)
from trainkit.metrics import LABELS, bootstrap_interval as _boot, expected_calibration_error, metric_interval, score
from trainkit.phases.final_numbers import LabelUnits, evaluate_numbers, metric_checks, number_card, number_guide
from trainkit.phases.peers import recall_table, reference_recall
from trainkit.run import PHASES, latest_attempt_dir, load_manifest, phase_dir

__all__ = [
    "start",
    "final_train",
    "evaluate_test",
    "export_models",
    "write_docs",
    "reproduce",
    "decide",
    "gate",
    "expected_calibration_error",
]

PHASE = Phase.FINALIZATION.value
TEST_RECORD = "test_evaluation.json"


def start(run_dir: str | Path, interactive: bool = True) -> FinalizationContext:
    """Open ``05_finalization`` when the previous phase's decision routed here and its gate passed."""
    run_dir = run_path(run_dir)
    _, prev, decision = require_routed(run_dir, PHASE, tuple(p for p in PHASES if p != PHASE))
    ctx = begin(FinalizationContext, run_dir, PHASE, 1, interactive)
    cfg = load_run_config(run_dir)
    f = cfg.final
    ctx.config = with_overrides(
        cfg, {"training.epochs": max(cfg.training.epochs, f.epochs), "training.patience": f.patience}
    )
    ctx.reused = None
    _refit_plan(ctx)
    _fit_in_budget(ctx, cfg)
    save_config(ctx.config, ctx.path("final_config.yaml"))
    write_json_atomic(
        ctx.path("final_config.sha256.json"),
        {"config_hash": config_hash(ctx.config), "file_sha256": sha256_file(ctx.path("final_config.yaml"))},
    )
    what = (
        f"the final model is the best so far, <code>{html.escape(ctx.reused)}</code> (no time for a final training)"
        if ctx.reused
        else f"{ctx.config.training.epochs} epochs, patience {ctx.config.training.patience}"
    )
    if ctx.refit and not ctx.reused:
        what += f"; small data: {html.escape(ctx.refit['summary'])}"
    show_html(
        f"<p>Finalization from <code>{prev.relative_to(run_dir)}</code> ({html.escape(decision['reason'])}): "
        f"{what}.</p>"
    )
    return ctx


REPRO_EPOCHS = 2


def _best_so_far(run_dir: Path) -> tuple[Path, Path] | None:
    """(training folder, its config) of the best model so far: Phase 4's adopted best, else the
    latest baseline attempt with a best checkpoint."""
    if (run_dir / "best.json").is_file():
        b = read_json(run_dir / "best.json")
        return run_dir / b["dir"], run_dir / b["config"]
    d = latest_attempt_dir(run_dir, Phase.BASELINE.value)
    if d is not None and (d / "checkpoints" / "best.pt").is_file() and (d / TRAIN_SUMMARY).is_file():
        return d, d / TRAINING_CONFIG
    return None


def _refit_plan(ctx: FinalizationContext) -> None:
    """Small data: train+val for the folds' epoch count (:func:`trainkit.folds.plan_refit`)."""
    from trainkit.folds import plan_refit, refit_view

    ref = plan_refit(ctx.run_dir, ctx.run.splits(), ctx.config, lambda: _bundle(ctx), clock(ctx).allows)
    if ref is not None:
        ctx.config = with_overrides(ctx.config, {"training.epochs": ref["epochs"], "training.patience": None})
        ctx.refit = ref
        write_json_atomic(ctx.path("refit.json"), ref)
        ctx.bundle = refit_view(_bundle(ctx))


def _fit_in_budget(ctx: FinalizationContext, cfg: Any) -> None:
    """Bound the final training by the time left (Phase 5's deadline less its tail reserve): all
    of it when it fits; fewer epochs when at least the recipe's own epochs fit; otherwise the best
    model so far becomes the final model (copied with its config, metrics and checkpoints, so the
    test, export and reproduction run on exactly it). Each cut is recorded."""
    src = _best_so_far(ctx.run_dir)
    if src is None:
        return
    hist = read_json(src[0] / TRAIN_SUMMARY).get("history") or [] if (src[0] / TRAIN_SUMMARY).is_file() else []
    times = [h["epoch_time_s"] for h in hist if h.get("epoch_time_s")]
    if not times:
        return
    epoch_s, c = sum(times) / len(times), clock(ctx)
    planned = ctx.config.training.epochs
    fits = int(c.left() // epoch_s) - REPRO_EPOCHS
    if fits >= planned:
        return
    if fits >= cfg.training.epochs:
        c.cut(f"final training epochs {fits + 1}-{planned}", f"{fits} epochs of ~{epoch_s:.2f} s fit in the time left")
        ctx.config = with_overrides(ctx.config, {"training.epochs": fits})
        return
    from trainkit.checkpoints import load_checkpoint, save_checkpoint

    c.cut(
        f"final training ({planned} epochs of ~{epoch_s:.2f} s)",
        f"{max(0.0, c.left()):.1f} s left; the final model is the best so far, {src[0].relative_to(ctx.run_dir)}",
    )
    ctx.config = load_config(src[1])
    for name in ("best.pt", "last.pt"):
        if (src[0] / "checkpoints" / name).is_file():
            save_checkpoint(load_checkpoint(src[0] / "checkpoints" / name), ctx.path(f"checkpoints/{name}"))
    for name in (METRICS, TRAIN_SUMMARY):
        write_text_atomic(ctx.path(name), (src[0] / name).read_text())
    ctx.reused = str(src[0].relative_to(ctx.run_dir))


def _bundle(ctx: FinalizationContext) -> Any:
    """The phase's data, loaded once (the fingerprint check and the split run once per phase)."""
    if getattr(ctx, "bundle", None) is None:
        from trainkit.run import load_run_data

        ctx.bundle = load_run_data(ctx.config, ctx.run_dir, PHASE)
    return ctx.bundle


def final_train(ctx: FinalizationContext, resume: bool = False) -> dict[str, Any]:
    """Train the final model (checkpoints/best.pt is what is exported and deployed)."""
    from trainkit.plots import curves_figure
    from trainkit.train import fit

    if getattr(ctx, "reused", None):  # the time budget left no room: the best model so far is the final one
        out = read_json(ctx.path(TRAIN_SUMMARY))
        out["reused_from"] = ctx.reused
        if out.get("history"):
            show_figure(
                curves_figure(out["history"], f"final model = best so far ({ctx.reused})"), ctx.path("curves.png")
            )
        return out
    bundle = _bundle(ctx)
    r = fit(
        ctx.config,
        bundle,
        ctx.dir,
        resume=resume,
        deadline=clock(ctx).deadline,
        select="last" if getattr(ctx, "refit", None) else "best",
    )
    if r.status == "time_budget":
        clock(ctx).cut(
            f"final training epochs {len(r.history) + 1}-{ctx.config.training.epochs}", "stopped at Phase 5's deadline"
        )
    if r.history:
        show_figure(curves_figure(r.history, "final training"), ctx.path("curves.png"))
    return r.to_dict()


def _load_final(ctx: FinalizationContext, bundle: Any) -> torch.nn.Module:
    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model

    m = ctx.config.model
    model = build_model(m.name, bundle.input_shape, bundle.num_classes, m.kwargs, m.init)
    model.load_state_dict(load_checkpoint(ctx.path("checkpoints/best.pt"))["model"])
    return model.eval()


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x).float(), 1).numpy()


def evaluate_test(ctx: FinalizationContext, force: bool = False) -> dict[str, Any]:
    """The one test evaluation of the final model. A second one is refused (QuarantineError) unless
    ``force``, and then recorded as forced; a rerun of this phase on the same model reuses the record."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rec_path = ctx.path(TEST_RECORD)
    model_sha = sha256_file(ctx.path("checkpoints/best.pt"))
    if rec_path.is_file():
        old = read_json(rec_path)
        if old["model_sha256"] == model_sha and not force:
            show_html("<p>Test evaluation already done on this model: showing the record (no new read).</p>")
            return old
        if not force:
            raise QuarantineError(
                f"the test split was already evaluated on {time_str(old['time'])} (model "
                f"{old['model_sha256'][:12]}); a second evaluation is refused. Pass force=True to "
                "re-evaluate; it is recorded and check test_evaluated_once will fail unless waived"
            )
    bundle = _bundle(ctx)
    model = _load_final(ctx, bundle)
    if bundle.regression:  # numbers in the label's units, each metric with its interval (final_numbers)
        return evaluate_numbers(ctx, bundle, model, force, model_sha, rec_path)
    xv, yv = bundle.arrays("val")
    xt, yt = bundle.arrays("test", reason="forced re-evaluation" if force else "final test evaluation")
    pt, pv = _predict(model, xt), _predict(model, xv)
    yt_, yv_ = yt.numpy(), yv.numpy()
    correct_t, correct_v = (pt.argmax(1) == yt_).astype(float), (pv.argmax(1) == yv_).astype(float)
    f = ctx.config.final
    p, r, f1, s = precision_recall_fscore_support(
        yt_, pt.argmax(1), labels=list(range(bundle.num_classes)), zero_division=0
    )
    ece, bins = expected_calibration_error(pt, yt_)
    g = torch.Generator().manual_seed(ctx.config.training.seed)
    noisy = _predict(model, xt + f.noise_std * torch.randn(xt.shape, generator=g))
    rec = {
        "time": time.time(),
        "model_sha256": model_sha,
        "forced": force,
        "n": int(len(yt_)),
        "accuracy": float(correct_t.mean()),
        "accuracy_ci": _boot(correct_t, f.bootstrap, 0),
        "val_accuracy": float(correct_v.mean()),
        "val_accuracy_ci": _boot(correct_v, f.bootstrap, 1),
        "per_class": [
            {
                "class": bundle.source.class_names[k],
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f1[k]),
                "support": int(s[k]),
            }
            for k in range(bundle.num_classes)
        ],
        "confusion": confusion_matrix(yt_, pt.argmax(1), labels=list(range(bundle.num_classes))).tolist(),
        "ece": ece,
        "reliability": bins,
        "noise_std": f.noise_std,
        "noisy_accuracy": float((noisy.argmax(1) == yt_).mean()),
        "predicted": pt.argmax(1).tolist(),
    }
    rec["robustness_drop"] = rec["accuracy"] - rec["noisy_accuracy"]
    rec["reference_recall"] = reference_recall(bundle, xt.numpy(), yt_)
    metric = ctx.config.target.metric  # the target metric beside accuracy (the same numbers when it is accuracy)
    rec.update(
        metric=metric,
        score=score(metric, yt_, pt),
        score_ci=metric_interval(metric, yt_, pt, f.bootstrap, 0),
        val_score=score(metric, yv_, pv),
        val_score_ci=metric_interval(metric, yv_, pv, f.bootstrap, 1),
    )
    write_json_atomic(rec_path, rec)
    _test_figures(ctx, rec, bundle.source.class_names)
    _write_test_md(ctx, rec)
    return rec


def time_str(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _test_figures(ctx: FinalizationContext, rec: dict[str, Any], names: list[str]) -> None:
    import matplotlib.pyplot as plt

    cm = np.asarray(rec["confusion"])
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * k + 2), max(4.0, 0.45 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:  # the counts themselves, dark on light cells and light on dark ones
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8 if k > 12 else 10,
                    color="white" if cm[i, j] > 0.5 * cm.max() else "black",
                )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (acc {rec['accuracy']:.3f})")
    show_figure(fig, ctx.path("confusion.png"))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b["confidence"] for b in rec["reliability"]], [b["accuracy"] for b in rec["reliability"]], "o-")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {rec['ece']:.3f})")
    show_figure(fig, ctx.path("reliability.png"))


def _write_test_md(ctx: FinalizationContext, rec: dict[str, Any]) -> None:
    lo, hi = rec["accuracy_ci"]
    L = [
        "# Test results",
        "",
        f"Evaluated once on {rec['n']} quarantined test samples ({time_str(rec['time'])})"
        + (" — **forced re-evaluation**" if rec["forced"] else "")
        + ".",
        "",
        *(
            [
                f"- test {LABELS[rec['metric']]} **{rec['score']:.4f}** (the target metric; 95% bootstrap CI "
                f"[{rec['score_ci'][0]:.4f}, {rec['score_ci'][1]:.4f}]); val {rec['val_score']:.4f}"
            ]
            if rec.get("metric", "accuracy") != "accuracy"
            else []
        ),
        f"- test accuracy **{rec['accuracy']:.4f}** (95% bootstrap CI [{lo:.4f}, {hi:.4f}])",
        f"- val accuracy {rec['val_accuracy']:.4f} (CI [{rec['val_accuracy_ci'][0]:.4f}, "
        f"{rec['val_accuracy_ci'][1]:.4f}])",
        f"- expected calibration error {rec['ece']:.4f} (15 bins)",
        *(
            [f"- small data: {refit['summary']}"]
            if (refit := getattr(ctx, "refit", None)) and not getattr(ctx, "reused", None)
            else []
        ),
        f"- robustness: accuracy {rec['noisy_accuracy']:.4f} with Gaussian noise σ={rec['noise_std']} on normalized "
        "inputs "
        f"(drop {rec['robustness_drop'] * 100:.2f} points)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    L += [
        f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in rec["per_class"]
    ]
    L += recall_table(rec) + ["", "![confusion matrix](confusion.png)", "", "![reliability diagram](reliability.png)"]
    write_text_atomic(ctx.path("test_results.md"), "\n".join(L) + "\n")


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
            fn(model, bundle.input_shape, ctx.path("model.onnx" if name == "onnx" else "model.ts"))
            out[f"{name}_exported"] = True
        except (ExportError, RuntimeError) as exc:
            out[f"{name}_exported"], out[f"{name}_error"] = False, str(exc)[:500]
    xv, _ = bundle.arrays("val")
    x = xv[:256]
    with torch.no_grad():
        ref = model(x).numpy()
    if out["onnx_exported"] and out["torchscript_exported"]:
        out["parity"] = check_parity(ctx.dir, x.numpy(), ref, atol=out["parity_atol"])
        out["latency"] = measure_latency(model, ctx.path("model.onnx"), ctx.path("model.ts"), bundle.input_shape)
        out["onnx_sha256"], out["torchscript_sha256"] = (
            sha256_file(ctx.path("model.onnx")),
            sha256_file(ctx.path("model.ts")),
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
    write_json_atomic(ctx.path("export.json"), out)
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
    shape = splits["input_shape"]
    mean, std = splits["normalization"]["mean"], splits["normalization"]["std"]
    per_channel = len(shape) == 3 and len(mean) == shape[0]
    bshape = (1, -1, 1, 1) if per_channel else (1, -1) if len(shape) == 1 else (1,) * (len(shape) + 1)
    if not per_channel and len(mean) == 1:
        bshape = tuple([1] * (len(shape) + 1))
    guide = (
        number_guide(splits, exp)
        if splits.get("task") == "regression"
        else _GUIDE.format(
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
    )
    bundle = _bundle(ctx)
    if bundle.source.table is not None:  # a table: the guide predicts from raw rows too
        from trainkit.phases.raw_rows import raw_rows_section

        guide += raw_rows_section(ctx.dir, ctx.run_dir / Phase.PLANNING.value, bundle, _load_final(ctx, bundle))
    write_text_atomic(ctx.path("deployment_guide.md"), guide)
    snippets = run_snippets(ctx.dir, guide)
    write_json_atomic(ctx.path("snippets.json"), snippets)
    env = read_json(ctx.run_dir / Phase.PLANNING.value / "environment.json")
    if bundle.regression:
        write_text_atomic(ctx.path("model_card.md"), number_card(ctx, splits, test, env))
        return {"snippets": snippets}
    pcs = "\n".join(
        f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in test["per_class"]
    )
    worst = min(test["per_class"], key=lambda c: c["recall"])
    metric_line = (
        ""
        if test.get("metric", "accuracy") == "accuracy"
        else (
            f"{LABELS[test['metric']]} (the target metric) {test['score']:.4f} (95% CI [{test['score_ci'][0]:.4f}, "
            f"{test['score_ci'][1]:.4f}]); val {test['val_score']:.4f}.\n"
        )
    )
    card = f"""# Model card

## Intended use
Classifying inputs like the training data ({splits["source"]}; shape {tuple(shape)}) into the classes
{splits["class_names"]}. Out of scope: inputs from another distribution (other sensors, resolutions, preprocessing),
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
Weakest class: {worst["class"]} (recall {worst["recall"]:.3f}). The test set has {test["n"]} samples: the interval
above is the honest uncertainty. Robustness was smoke-tested with Gaussian noise only.

## Environment
Python {env.get("python")}, torch {env.get("packages", {}).get("torch")}, platform {env.get("platform")}; see
`01_planning/environment.json`.
"""
    write_text_atomic(ctx.path("model_card.md"), card)
    return {"snippets": snippets}


def reproduce(ctx: FinalizationContext, epochs: int = REPRO_EPOCHS) -> dict[str, Any]:
    """Re-run the first epochs of the final training and compare the logged metrics exactly."""
    from trainkit.train import fit

    logged = [r for r in read_jsonl(ctx.path(METRICS)) if "train_loss" in r][:epochs]
    seen: list[dict[str, Any]] = []

    def stop(rec: dict[str, Any]) -> bool:  # True ends the rerun once it has as many epochs as were compared
        seen.append(rec)
        return len(seen) >= min(epochs, len(logged))

    fit(ctx.config, _bundle(ctx), None, progress=False, on_epoch=stop)
    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    same = len(seen) == len(logged) > 0 and all(a[k] == b[k] for a, b in zip(logged, seen) for k in keys)
    out = {
        "epochs": len(seen),
        "identical": bool(same),
        "logged": [{k: r[k] for k in keys} for r in logged],
        "rerun": [{k: r[k] for k in keys} for r in seen],
    }
    write_json_atomic(ctx.path("reproduce.json"), out)
    return out


def decide(ctx: FinalizationContext, record: dict[str, Any]) -> dict[str, Any]:
    """deploy when production_ready passed and is signed; blocked otherwise (what is missing, how to
    finish): :func:`trainkit.decisions.after_finalization`."""
    from trainkit.decisions import after_finalization
    from trainkit.gates import gate_state

    state = gate_state(record)
    missing = [
        f"{c['id']} ({c['status']}): {c['evidence']}"
        for c in record["checks"]
        if c["mandatory"] and c["status"] not in ("pass", "na", "waived", "warn")
    ]
    how = (
        f"sign off with `trainkit signoff {ctx.run_dir} --phase 5 --by NAME --check stakeholder_approval` "
        f"then `trainkit run --resume --name {ctx.run_dir.name}`"
    )
    option, nxt, reason = after_finalization(gate=state, missing=missing, how=how)
    return write_decision(
        ctx, option, nxt, reason, {"gate": state} if nxt == "deploy" else {"gate": state, "missing": missing}
    )


def _earlier_gates(ctx: FinalizationContext) -> tuple[str, str]:
    from trainkit.gates import verify_gate

    seen, bad = 0, []
    for e in load_manifest(ctx.run_dir)["phases"]:
        if e["phase"] == PHASE:
            continue
        d = phase_dir(ctx.run_dir, e["phase"], e["attempt"])
        rec = ctx.run.gate(d)
        if rec is None:
            bad.append(f"{d.relative_to(ctx.run_dir)}: no gate record")
            continue
        dec = ctx.run.decision(d) or {}
        if rec["state"] == "blocked" and dec.get("option") == "C":
            continue  # a failed baseline routed to diagnosis: its block is the record of that
        try:
            verify_gate(d / GATE, ctx.run_dir)
            seen += 1
        except GateError as exc:
            bad.append(str(exc)[:300])
    return ("fail", "; ".join(bad)) if bad else ("pass", f"{seen} earlier gate(s) signed, artifacts unchanged")


def _disjoint(bundle: Any, overlap: int) -> tuple[str, str]:
    """No train/val sample has a test sample's content. In a table, what chance cannot explain
    blocks (a shared ID; more shared records than chance gives); records that repeat by chance (a
    few discrete columns, or a handful: :func:`trainkit.data.tables.shared_records_verdict`) are
    reported, not blocked."""
    table = bundle.source.table
    if table is not None:
        from trainkit.data.tables import id_overlap, shared_records_verdict

        ids = {c: n for c, n in id_overlap(table, bundle.splits).items() if n}
        if ids:
            return "fail", f"test rows share IDs with train/val rows: {ids} (the same entity in both)"
        if overlap:
            n = {k: len(v) for k, v in bundle.splits.items()}
            ok, why = shared_records_verdict(
                table.frame,
                list(table.kinds),
                overlap,
                n["test"],
                n["train"] + n["val"],
                bool(bundle.source.duplicates_by_chance),
            )
            return ("warn" if ok else "fail"), f"train/val and test: {why}"
    if overlap == 0:
        return "pass", "no train/val sample has a test sample's content"
    return "fail", f"{overlap} train/val samples share content with test samples"


def _quarantine_checks(ctx: FinalizationContext, bundle: Any) -> dict[str, tuple[str, Any]]:
    """Checks 1-3: the test split never read before Phase 5, disjoint by content, read once."""
    res: dict[str, tuple[str, Any]] = {}
    log = read_jsonl(ctx.run_dir / TEST_ACCESS_LOG) if (ctx.run_dir / TEST_ACCESS_LOG).is_file() else []
    early = [r for r in log if r.get("phase") != PHASE and r.get("allowed")]
    refused = [r for r in log if r.get("phase") != PHASE and not r.get("allowed")]
    res["test_never_read_before"] = (
        ("fail", f"{len(early)} test read(s) before Phase 5: {early[:3]}")
        if early
        else (
            "pass",
            f"test_access.jsonl: no read before Phase 5 ({len(refused)} attempt(s) refused by the quarantine)",
        )
    )
    keys = bundle.source.sample_keys
    test_keys = {keys[i] for i in bundle.splits["test"]}
    overlap = sum(keys[i] in test_keys for s in ("train", "val") for i in bundle.splits[s])
    res["test_disjoint"] = _disjoint(bundle, overlap)
    final_reads = [r for r in log if r.get("phase") == PHASE and r.get("allowed")]
    forced = [r for r in final_reads if "forced" in str(r.get("reason"))]
    res["test_evaluated_once"] = (
        ("pass", "one test evaluation, on the final model")
        if len(final_reads) == 1 and not forced
        else ("fail", f"{len(final_reads)} test reads in Phase 5 ({len(forced)} forced)")
    )
    return res


def _results(
    ctx: FinalizationContext, train: dict[str, Any], test: dict[str, Any], exp: dict[str, Any], repro: dict[str, Any]
) -> dict[str, tuple[str, Any]]:
    from trainkit.checkpoints import load_checkpoint, verify_checkpoint

    f, bundle = ctx.config.final, _bundle(ctx)
    res = _quarantine_checks(ctx, bundle)
    res.update(metric_checks(ctx.config, test))
    res["final_training_finite"] = (
        ("pass", f"{train['status']} after {len(train['history'])} epochs")
        if train["status"] in ("completed", "early_stopped", "time_budget") and not train.get("nonfinite")
        else ("fail", f"status {train['status']}")
    )
    try:
        verify_checkpoint(ctx.path("checkpoints/best.pt"))
        state = load_checkpoint(ctx.path("checkpoints/best.pt"))
        finite = all(
            torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point()
        )
        res["weights_finite"] = ("pass", "every weight finite") if finite else ("fail", "non-finite weights in best.pt")
        res["checkpoint_verified"] = (
            "pass",
            f"weights_only load, sha256 {sha256_file(ctx.path('checkpoints/best.pt'))[:12]}… matches",
        )
    except CheckpointError as exc:
        res["weights_finite"] = ("fail", f"cannot read weights: {exc}")
        res["checkpoint_verified"] = ("fail", str(exc)[:300])
    frozen = read_json(ctx.path("final_config.sha256.json"))
    same = (
        sha256_file(ctx.path("final_config.yaml")) == frozen["file_sha256"]
        and config_hash(load_config(ctx.path("final_config.yaml"))) == frozen["config_hash"]
    )
    res["config_frozen"] = (
        ("pass", f"final_config.yaml hash {frozen['config_hash'][:12]}…")
        if same
        else ("fail", "final_config.yaml changed after it was frozen")
    )
    res["reproducible"] = (
        ("pass", f"first {repro['epochs']} epochs re-run: identical metrics")
        if repro["identical"]
        else ("fail", f"re-run differs: {repro['logged']} vs {repro['rerun']}")
    )
    res["environment_recorded"] = (
        ("pass", "01_planning/environment.json")
        if (ctx.run_dir / Phase.PLANNING.value / "environment.json").is_file()
        else ("fail", "environment.json missing")
    )
    res["earlier_gates_valid"] = _earlier_gates(ctx)
    from trainkit.predict import raw_rows_parity

    res["raw_rows_predict"] = raw_rows_parity(ctx.run_dir, bundle, test.get("predicted"))
    par = exp.get("parity", {})
    on, ts = par.get("onnx", {}), par.get("torchscript", {})
    res["onnx_valid"] = (
        ("pass", "model.onnx passes onnx.checker (full check)")
        if exp.get("onnx_exported")
        else ("fail", exp.get("onnx_error", "not exported"))
    )
    atol = exp.get("parity_atol", f.parity_atol)
    res["onnx_parity"] = (
        "pass" if on.get("ok") else "fail",
        f"max abs diff {on.get('max_abs_diff', on.get('error'))} (≤ {atol:g})",
    )
    res["torchscript_exported"] = (
        ("pass", "model.ts")
        if exp.get("torchscript_exported")
        else ("fail", exp.get("torchscript_error", "not exported"))
    )
    res["torchscript_parity"] = (
        "pass" if ts.get("ok") else "fail",
        f"max abs diff {ts.get('max_abs_diff', ts.get('error'))} (≤ {atol:g})",
    )
    flex = all(o.get("batch_1", [0])[0] == 1 and o.get("batch_n", [0])[0] == par.get("n") for o in (on, ts)) and bool(
        par
    )
    res["batch_flexible"] = (
        ("pass", f"batch 1 and {par.get('n')} accepted by both") if flex else ("fail", "a batch size was refused")
    )
    lat = exp.get("latency") or []
    p95 = next((r["p95_ms"] for r in lat if r["runtime"] == "onnxruntime" and r["batch"] == 1), None)
    if p95 is None:
        res["latency_measured"] = ("fail", "no latency measured")
    elif f.latency_budget_ms is not None and p95 > f.latency_budget_ms:
        res["latency_measured"] = ("fail", f"ONNX p95 at batch 1 {p95:.3f} ms > budget {f.latency_budget_ms} ms")
    else:
        res["latency_measured"] = (
            "pass",
            f"ONNX p95 at batch 1 {p95:.3f} ms"
            + (f" ≤ budget {f.latency_budget_ms} ms" if f.latency_budget_ms else " (no budget set)"),
        )
    snips = read_json(ctx.path("snippets.json")) if ctx.path("snippets.json").is_file() else []
    ok = ctx.path("deployment_guide.md").is_file() and snips and all(s["ok"] for s in snips)
    res["deployment_guide"] = (
        ("pass", f"deployment_guide.md; {len(snips)} snippets ran")
        if ok
        else (
            "fail",
            "deployment guide missing or a snippet failed: "
            + "; ".join(s["stderr"][-200:] for s in snips if not s["ok"]),
        )
    )
    res["model_card"] = (
        ("pass", "model_card.md") if ctx.path("model_card.md").is_file() else ("fail", "model_card.md missing")
    )
    return res


ARTIFACTS = (
    "final_config.yaml",
    "checkpoints/best.pt",
    METRICS,
    "test_evaluation.json",
    "test_results.md",
    "model.onnx",
    "model.ts",
    "export.json",
    "deployment_guide.md",
    "model_card.md",
    "snippets.json",
    "reproduce.json",
)


def gate(
    ctx: FinalizationContext,
    train: dict[str, Any],
    test: dict[str, Any],
    exp: dict[str, Any],
    repro: dict[str, Any],
    approvals: Any = None,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """production_ready: 25 mandatory checks (24 automatic, the stakeholder's approval manual).
    Never signed automatically; a block is recorded and returned (the decision says what is missing)."""
    arts = [ctx.rel(n) for n in ARTIFACTS if ctx.path(n).is_file()]
    if (ctx.run_dir / TEST_ACCESS_LOG).is_file():  # a test read after sign-off invalidates the gate
        arts.append(TEST_ACCESS_LOG)
    return finish_gate(
        ctx,
        "production_ready",
        _results(ctx, train, test, exp, repro),
        arts,
        approvals,
        False,
        waivers,
        None,
        raise_on_block=False,
    )


assert PHASE == PHASES[-1]
