"""The LR range test (Smith's): the loss over an exponential LR sweep, its suggestion read from the
smoothed curve, and the shapes of curve that make a suggestion untrustworthy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainkit.config import TrainkitConfig, with_overrides
from trainkit.data import DataBundle
from trainkit.diagnostics._fits import _model
from trainkit.losses import loss_of
from trainkit.train import make_optimizer, resolve_device


def lr_range_test(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    lr_min: float = 1e-6,
    lr_max: float = 10.0,
    steps: int = 100,
    beta: float = 0.9,
    diverge: float = 4.0,
    longer: int = 300,
) -> dict[str, Any]:
    """Exponential LR sweep with the config's optimizer from a fresh initialization: smoothed loss
    per LR, stop on divergence.

    Suggestion: the LR of the lowest smoothed loss divided by 10 (the usual "min / 10" rule: the
    minimum sits at the edge of instability; a tenth of it trains fast and stays stable). The curve
    is read by its shape against its own noise (:func:`_lr_curve_problem`); when a ``steps`` sweep
    is flat, it sweeps again over ``longer`` steps (more batches, a slower ramp) before it says
    "inconclusive"."""
    out = _lr_sweep(cfg, bundle, lr_min, lr_max, steps, beta, diverge)
    if out.get("flat") and longer > steps:
        again = _lr_sweep(cfg, bundle, lr_min, lr_max, longer, beta, diverge)
        again["first_sweep"] = {"steps": steps, "reason": out.get("reason")}
        out = again
    out.pop("flat", None)
    return out


def _lr_sweep(
    cfg: TrainkitConfig, bundle: DataBundle, lr_min: float, lr_max: float, steps: int, beta: float, diverge: float
) -> dict[str, Any]:
    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device)
    opt = make_optimizer(with_overrides(cfg, {"optimizer.lr": lr_min}), model.parameters())
    factor = (lr_max / lr_min) ** (1 / max(1, steps - 1))
    lrs, losses, raws, avg, best = [], [], [], 0.0, math.inf
    it, epoch = iter(()), 0
    for i in range(steps):
        try:
            xb, yb, _ = next(it)
        except StopIteration:
            it = iter(
                bundle.batches(
                    "train", cfg.data.batch_size, shuffle=True, seed=cfg.training.seed + 7, epoch=epoch, device=device
                )
            )
            epoch += 1
            xb, yb, _ = next(it)
        lr = lr_min * factor**i
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        raw = float(loss.detach())
        if not math.isfinite(raw):
            break
        avg = beta * avg + (1 - beta) * raw
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        raws.append(raw)
        best = min(best, smooth)
        if i > 5 and smooth > diverge * best:
            break
    if not losses:
        return {
            "lrs": [],
            "losses": [],
            "suggested_lr": None,
            "min_loss_lr": None,
            "ok": False,
            "inconclusive": True,
            "reason": "the loss was non-finite from the first step",
            "steps": steps,
        }
    k = int(np.argmin(losses))
    diverged = len(lrs) < steps
    out = {
        "lrs": lrs,
        "losses": losses,
        "min_loss_lr": lrs[k],
        "suggested_lr": lrs[k] / 10,
        "configured_lr": cfg.optimizer.lr,
        "optimizer": cfg.optimizer.name,
        "stopped_at_lr": lrs[-1],
        "diverged": diverged,
        "ok": True,
        "inconclusive": False,
        "steps": steps,
    }
    why, stats = _lr_curve_problem(losses, raws, k, diverged)
    out["shape"] = stats
    if why:  # a flat or noisy curve has no minimum worth trusting: suggest nothing rather than a guess
        out.update(suggested_lr=None, ok=False, inconclusive=True, reason=why, flat=why.startswith("flat"))
    return out


LR_CURVE_Z = 4.0  # the fall to the minimum must exceed this many standard errors of the curve's own noise


LR_CURVE_MIN_FALL = 0.01  # ... and 1% of the starting loss (a noiseless curve makes any wiggle "significant")


def _lr_curve_problem(
    losses: list[float], raws: list[float], k: int, diverged: bool
) -> tuple[str | None, dict[str, Any]]:
    """Why a range-test curve cannot be read (None when it can), judged by its shape against its
    own noise, not a fixed fall: the step-to-step noise of the raw losses (a robust estimate from
    successive differences) gives the standard error of the starting level (the first tenth of the
    sweep) and of the smoothed minimum; the fall from start to minimum must exceed
    ``LR_CURVE_Z`` of those errors (and ``LR_CURVE_MIN_FALL``). A curve that fell and then
    diverged has a clear minimum; one whose minimum sits in the first tenth of the sweep has none."""
    n = len(losses)
    n0 = max(3, n // 10)
    start = float(np.mean(raws[:n0]))
    diffs = np.diff(np.asarray(raws, dtype=float))
    sigma = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2)) if len(diffs) >= 3 else 0.0
    se = sigma * math.sqrt(1 / n0 + 0.1 / 1.9)  # the EMA's variance is σ²(1 − β)/(1 + β) at β = 0.9
    fall = start - losses[k]
    stats = {
        "start_loss": round(start, 5),
        "min_loss": round(losses[k], 5),
        "fall": round(fall, 5),
        "noise_sd": round(sigma, 5),
        "fall_in_se": round(fall / se, 2) if se > 0 else None,
        "diverged_after_min": diverged,
    }
    need = max(LR_CURVE_Z * se, LR_CURVE_MIN_FALL * abs(start))
    if fall < need:
        return (
            f"flat curve: the smoothed loss fell {fall:.4g} ({fall / start if start else 0.0:.1%}) across the sweep, "
            "within "
            f"{LR_CURVE_Z:g} standard errors of its own noise (needs {need:.4g}); no LR range where this model learns "
            "(dead units, detached inputs or labels?)"
        ), stats
    if k < n // 10:
        return "noisy curve: the lowest loss comes before the LR has grown; no trustworthy minimum", stats
    return None, stats
