"""Phase 5 for a number to predict (``target.metric`` rmse, mae or r2), and the metric checks of
the production gate for both kinds of run.

A regression's final model is evaluated once on the test rows in the label's own units: rmse, mae
and r2, each with a 95% bootstrap interval, the residual plot, and the reference models (ridge and
boosted trees fitted on the train+val rows) on the same test rows. It is exported wrapped in
:class:`LabelUnits`, so ONNX, TorchScript and ``trainkit predict`` all give numbers in the label's
units. The per-class and calibration checks do not apply (``na``, with the reason: no waiver
needed); the target check works in the metric's direction."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from trainkit._io import write_json_atomic, write_text_atomic
from trainkit.losses import as_logits
from trainkit.metrics import LABELS, metric_interval, reaches, regression_scores, target_text
from trainkit.phases.peers import floor_evidence, target_evidence
from trainkit.run import RESIDUALS_PNG, TEST_RESULTS_MD

__all__ = ["LabelUnits", "evaluate_numbers", "metric_checks", "number_guide", "number_card"]


class LabelUnits(nn.Module):
    """A regression model whose output is in the label's units: the network's standardized output
    (an ensemble's mean) × the label's train std + its train mean, shape ``(B, 1)``."""

    def __init__(self, model: nn.Module, scale: dict[str, float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(float(scale["mean"])))
        self.register_buffer("std", torch.tensor(float(scale["std"])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = as_logits(self.model(x)).float()
        return z.reshape(z.shape[0], -1)[:, :1] * self.std + self.mean


def _numbers(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().numpy().reshape(-1)


def _scores(y: np.ndarray, p: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    s = regression_scores(y, p)
    return {**s, **{f"{k}_ci": metric_interval(k, y, p, n, seed) for k in s}}


def _peers(bundle: Any, xt: np.ndarray, yt: np.ndarray) -> dict[str, Any]:
    """Ridge and boosted trees fitted on the train+val rows (standardized label), scored on the
    test rows in the label's units; ``{}`` for inputs that are not table rows."""
    from trainkit.diagnostics.reference import reference_regressions
    from trainkit.folds import refit_view

    if xt.ndim != 2:
        return {}
    x, y = (t.numpy() for t in refit_view(bundle).arrays("train"))  # each train and val row once
    return {
        name: {**regression_scores(yt, bundle.to_label_units(pred)), "seconds": sec}
        for name, pred, sec in reference_regressions(x, y, xt, True)
    }


def folds_val(ctx: Any, metric: str = "accuracy") -> dict[str, Any] | None:
    """Small data's val numbers for the test record (:func:`trainkit.folds.folds_estimate`): its
    final model is the refit on train+val, so its own val numbers estimate nothing. None when the
    final model is not that refit (a table, or the best so far reused when time ran out)."""
    from trainkit.folds import folds_estimate

    if getattr(ctx, "reused", None):
        return None
    return folds_estimate(getattr(ctx, "refit", None) or {}, metric)


def evaluate_numbers(
    ctx: Any, bundle: Any, model: nn.Module, force: bool, model_sha: str, rec_path: Any, val_model: Any = None
) -> dict[str, Any]:
    """The one test evaluation of a regression (see the module docstring); test_evaluation.json,
    residuals.png and test_results.md."""
    from trainkit.phases.common import show_figure
    from trainkit.plots import residual_figure

    f, metric = ctx.config.final, ctx.config.target.metric
    wrapped = LabelUnits(model, bundle.label_scale).eval()
    xv, yv = bundle.arrays("val")
    xt, yt = bundle.arrays("test", reason="forced re-evaluation" if force else "final test evaluation", forced=force)
    pt = _numbers(wrapped, xt)
    yt_ = bundle.to_label_units(yt)
    est = folds_val(ctx, metric)  # small data: the refit trained on the val rows
    test = _scores(yt_, pt, f.bootstrap, 0)
    if est:
        val = {metric: est["val_score"], f"{metric}_ci": est["val_score_ci"]}
    else:  # the val rows through the model that never trained on them (a refit table's early-stopped run)
        pv = _numbers(wrapped if val_model is None else LabelUnits(val_model, bundle.label_scale).eval(), xv)
        val = _scores(bundle.to_label_units(yv), pv, f.bootstrap, 1)
    g = torch.Generator().manual_seed(ctx.config.training.seed)
    noisy = regression_scores(yt_, _numbers(wrapped, xt + f.noise_std * torch.randn(xt.shape, generator=g)))
    mean = bundle.label_scale["mean"]
    rec = {
        "time": time.time(),
        "model_sha256": model_sha,
        "forced": force,
        "n": int(len(yt_)),
        "regression": True,
        "label": bundle.source.class_names[0],
        "metric": metric,
        "score": test[metric],
        "score_ci": test[f"{metric}_ci"],
        "val_score": val[metric],
        "val_score_ci": val[f"{metric}_ci"],
        "test": test,
        "val": val,
        "mean_predictor_test": regression_scores(yt_, np.full(len(yt_), mean)),
        "reference_test": _peers(bundle, xt.numpy(), yt_),
        "noise_std": f.noise_std,
        "noisy": noisy,
        "robustness_drop": test["r2"] - noisy["r2"],
        "predicted": pt.tolist(),
        "per_class": [],
        "ece": float("nan"),
        "accuracy": None,
        "units": f"the units of the label {bundle.source.class_names[0]!r}",
        **({"val_source": est["val_source"]} if est else {}),
    }
    write_json_atomic(rec_path, rec)
    show_figure(
        residual_figure(yt_, pt, rec["label"], "test", {k: test[k] for k in ("rmse", "mae", "r2")}),
        ctx.path(RESIDUALS_PNG),
    )
    _write_md(ctx, rec)
    return rec


def _line(name: str, s: dict[str, Any], k: str, what: str = "95% bootstrap CI") -> str:
    lo, hi = s[f"{k}_ci"]
    return f"{name} {s[k]:.4g} ({what} [{lo:.4g}, {hi:.4g}])"


def _write_md(ctx: Any, rec: dict[str, Any]) -> None:
    t, v = rec["test"], rec["val"]
    L = [
        "# Test results",
        "",
        f"Evaluated once on {rec['n']} quarantined test rows "
        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec['time']))})"
        + (" — **forced re-evaluation**" if rec["forced"] else "")
        + f". A number to predict: `{rec['label']}`; every "
        f"value below is in {rec['units']} (R² is a fraction).",
        "",
        f"- test {LABELS[rec['metric']]} **{rec['score']:.4g}** (the target metric; CI [{rec['score_ci'][0]:.4g}, "
        f"{rec['score_ci'][1]:.4g}]); val {rec['val_score']:.4g}",
        f"- test {_line('RMSE', t, 'rmse')}; {_line('MAE', t, 'mae')}; {_line('R²', t, 'r2')}",
        (
            f"- val {_line(LABELS[rec['metric']], v, rec['metric'], '95% CI')}: {rec['val_source']}"
            if rec.get("val_source")
            else f"- val {_line('RMSE', v, 'rmse')}; {_line('MAE', v, 'mae')}; {_line('R²', v, 'r2')}"
        ),
        f"- predicting the train mean for every test row: RMSE {rec['mean_predictor_test']['rmse']:.4g}, MAE "
        f"{rec['mean_predictor_test']['mae']:.4g}",
        f"- robustness: R² {rec['noisy']['r2']:.4f} with Gaussian noise σ={rec['noise_std']} on normalized inputs "
        f"(drop {rec['robustness_drop'] * 100:.2f} points)",
        "",
    ]
    if rec["reference_test"]:
        L += [
            "Reference models fitted on the same train+val rows, on the same test rows:",
            "",
            "| model | RMSE | MAE | R² |",
            "|---|---:|---:|---:|",
            f"| **the network** | {t['rmse']:.4g} | {t['mae']:.4g} | {t['r2']:.4f} |",
        ]
        L += [f"| {n} | {p['rmse']:.4g} | {p['mae']:.4g} | {p['r2']:.4f} |" for n, p in rec["reference_test"].items()]
    L += ["", "![residuals](residuals.png)"]
    write_text_atomic(ctx.path(TEST_RESULTS_MD), "\n".join(L) + "\n")


def metric_checks(cfg: Any, test: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The production gate's checks of the test metrics: the target (in the metric's direction),
    val and test agreeing, per-class recall, calibration, robustness under input noise."""
    f, metric = cfg.final, test.get("metric", "accuracy")
    name, acc, reg = LABELS[metric], metric == "accuracy", bool(test.get("regression"))
    t_s, v_s = (test["accuracy"], test["val_accuracy"]) if acc else (test["score"], test["val_score"])
    met = reaches(metric, t_s, cfg.target.value)
    res = {
        "test_meets_target": (
            "pass" if met else "fail",
            f"test {name} {t_s:.4f} vs target {target_text(metric, cfg.target.value)} "
            "(waive with the documented shortfall)" + ("" if met else target_evidence(test, metric, cfg.target.value)),
        )
    }
    (tl, th), (vl, vh) = (
        (test["accuracy_ci"], test["val_accuracy_ci"]) if acc else (test["score_ci"], test["val_score_ci"])
    )
    overlap = tl <= vh and vl <= th
    res["val_test_agree"] = (
        "pass" if overlap else "fail",
        f"val {name} {v_s:.4f} [{vl:.4f}, {vh:.4f}]"
        + (f" ({test['val_source']})" if test.get("val_source") else "")
        + f" and test {t_s:.4f} [{tl:.4f}, {th:.4f}]: 95% "
        + ("intervals " if test.get("val_source") else "bootstrap intervals ")
        + ("overlap" if overlap else "do not overlap (val was optimistic, or the splits differ)"),
    )
    drop = test["robustness_drop"]
    what = "R²" if reg else "accuracy"
    res["robustness_smoke"] = (
        "pass" if drop <= f.robustness_tolerance else "fail",
        f"{what} drop {drop * 100:.2f} points under σ={f.noise_std} noise (tolerance "
        f"{f.robustness_tolerance * 100:.1f})",
    )
    if reg:
        res["per_class_reported"] = ("na", "a regression has no classes: per-class recall does not apply")
        res["calibration_measured"] = (
            "na",
            "a regression predicts numbers, not class probabilities: calibration "
            "(ECE) does not apply; the residual plot is in test_results.md",
        )
        return res
    # a class with no test row has no recall to judge (scikit-learn reports 0): named, not failed
    seen = [c for c in test["per_class"] if c.get("support", 1) > 0]
    absent = [c["class"] for c in test["per_class"] if c.get("support", 1) == 0]
    unjudged = f"; not judged, no test rows: {absent}" if absent else ""
    low = [c for c in seen if c["recall"] < f.per_class_floor]
    res["per_class_reported"] = (
        (
            "fail",
            f"below the floor {f.per_class_floor}: {[c['class'] for c in low]}" + floor_evidence(test, low) + unjudged,
        )
        if low
        else (
            "pass",
            f"{len(test['per_class'])} classes reported; lowest recall "
            f"{min((c['recall'] for c in seen), default=float('nan')):.3f}" + unjudged,
        )
    )
    res["calibration_measured"] = (
        ("pass", f"ECE {test['ece']:.4f}")
        if math.isfinite(test.get("ece", float("nan")))
        else ("fail", "ECE not measured")
    )
    return res


NUMBER_GUIDE = """# Deployment guide

The model predicts `{label}`, a number, from inputs of shape `{shape}` (float32, batch first). Its
output has shape `(batch, 1)` and is **in the label's own units** (the label's train mean and
standard deviation, {mean_y:.6g} and {std_y:.6g}, are inside the exported model). Inputs must be
normalized with the training statistics: `x = (raw - mean) / std` with mean `{mean}` and std `{std}`.

Artifacts in this folder: `model.onnx` (sha256 `{onnx_sha}`), `model.ts` (sha256 `{ts_sha}`),
`checkpoints/best.pt` (the trainkit checkpoint, loaded with `weights_only=True`).

## ONNX Runtime

```python
import numpy as np
import onnxruntime as ort

sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
mean, std = np.array({mean}, dtype=np.float32), np.array({std}, dtype=np.float32)
raw = np.random.default_rng(0).random((3, {shape_csv})).astype(np.float32)
x = ((raw - mean) / std).astype(np.float32)
pred = sess.run(None, {{"input": x}})[0]
assert pred.shape == (3, 1), pred.shape
print("onnx predictions ({label}):", pred[:, 0])
```

## TorchScript

```python
import torch

model = torch.jit.load("model.ts").eval()
mean, std = torch.tensor({mean}), torch.tensor({std})
x = (torch.rand(3, {shape_csv}) - mean) / std
with torch.no_grad():
    pred = model(x)
assert pred.shape == (3, 1)
print("torchscript predictions ({label}):", pred[:, 0].tolist())
```

## Batch size

Both artifacts accept any batch size (the ONNX batch axis is dynamic); the latency table in
`export.json` gives p50/p95 at batch 1 and 64.
"""


def number_guide(splits: dict[str, Any], exp: dict[str, Any]) -> str:
    """The deployment guide of a regression (its snippets run as written, like every guide's)."""
    shape, norm, scale = splits["input_shape"], splits["normalization"], splits["label_scale"]
    return NUMBER_GUIDE.format(
        label=splits["class_names"][0],
        shape=tuple(shape),
        mean=norm["mean"],
        std=norm["std"],
        mean_y=scale["mean"],
        std_y=scale["std"],
        onnx_sha=exp.get("onnx_sha256"),
        ts_sha=exp.get("torchscript_sha256"),
        shape_csv=", ".join(str(s) for s in shape),
    )


def number_card(ctx: Any, splits: dict[str, Any], test: dict[str, Any], env: dict[str, Any]) -> str:
    """The model card of a regression: what it predicts and in which units, the test metrics with
    their intervals, the references, and what it does not cover."""
    from trainkit.config import config_hash

    t, cfg, mp = test["test"], ctx.config, test["mean_predictor_test"]
    summary = splits.get("label_summary", {}).get("train", {})
    peers = "".join(
        f"\n| {n} | {p['rmse']:.4g} | {p['mae']:.4g} | {p['r2']:.4f} |" for n, p in test["reference_test"].items()
    )
    return f"""# Model card

## Intended use
Predicting `{test["label"]}` (a number) for inputs like the training data ({splits["source"]}; shape
{tuple(splits["input_shape"])}). **Predictions are in {test["units"]}**, on the scale the training labels had
(train: mean {summary.get("mean", float("nan")):.4g}, std {summary.get("std", float("nan")):.4g}, range
[{summary.get("min", float("nan")):.4g}, {summary.get("max", float("nan")):.4g}]). Out of scope: inputs from another
distribution, values far outside that range (a network extrapolates poorly), and any decision where an error is
costly without a person reviewing it.

## Model
`{cfg.model.name}` {cfg.model.kwargs}; loss {cfg.training.regression_loss} on the label standardized on train;
optimizer {cfg.optimizer.name} lr {cfg.optimizer.lr:g}; {cfg.training.epochs} epochs max (patience
{cfg.training.patience}); config hash `{config_hash(cfg)[:16]}`.

## Data
Splits (stratified on the label's deciles, seed {splits["seed"]}): {splits["sizes"]}; fingerprints in
`01_planning/splits.json`. The test split was quarantined until this phase and evaluated once.

## Metrics (test, {test["units"]}; R² a fraction)
{LABELS[test["metric"]]} (the target metric) {test["score"]:.4g}
(95% CI [{test["score_ci"][0]:.4g}, {test["score_ci"][1]:.4g}]); val {test["val_score"]:.4g}.

| model | RMSE | MAE | R² |
|---|---:|---:|---:|
| **this model** | {t["rmse"]:.4g} | {t["mae"]:.4g} | {t["r2"]:.4f} |
| predicting the train mean | {mp["rmse"]:.4g} | {mp["mae"]:.4g} | 0 |{peers}

## Limitations
The test set has {test["n"]} rows: the intervals above are the honest uncertainty. Errors are not uniform: see the
residual plot in `test_results.md`. Robustness was smoke-tested with Gaussian noise only (R² {test["noisy"]["r2"]:.4f}
under σ={test["noise_std"]}).

## Environment
Python {env.get("python")}, torch {env.get("packages", {}).get("torch")}, platform {env.get("platform")}; see
`01_planning/environment.json`.
"""
