"""Detectors of runs that went wrong or ran poorly: NaN losses, stalls (and dead units), crashes by
their message, and resource use (throughput, memory, data loading)."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from trainkit.diagnostics.findings import (
    INFRA_STRENGTH,
    STANDARD_LR,
    THRESHOLDS,
    Finding,
    Recommendation,
    _gap_to_target,
    _quiet,
    _recommend,
    _suggested_lr,
    _thresholds,
)


def detect_nan_loss(evidence: dict[str, Any]) -> Finding:
    nf = evidence.get("nonfinite")
    h = evidence.get("history") or []
    bad_epoch = next(
        (
            r["epoch"]
            for r in h
            if not (math.isfinite(r.get("train_loss", 0.0)) and math.isfinite(r.get("val_loss", 0.0)))
        ),
        None,
    )
    fired = nf is not None or evidence["status"] == "nonfinite" or bad_epoch is not None
    if not fired:
        return _quiet("nan_loss", "every loss and gradient finite")
    nf = nf or {}
    cfg = evidence["config"]
    sug, lr = _suggested_lr(evidence), cfg["optimizer"]["lr"]
    std = STANDARD_LR[cfg["optimizer"]["name"]]  # absolute values, never a fixed fraction of an absurd LR
    new_lr = sug if sug and sug < lr else std if std < lr else lr / 10
    f = Finding(
        "nan_loss",
        True,
        1.0,
        f"non-finite at epoch {nf.get('epoch', bad_epoch)} step {nf.get('step')}; first "
        f"bad gradient in {nf.get('parameter')!r}; last finite loss {nf.get('last_finite_loss')}",
        {"nonfinite": nf, "first_bad_epoch": bad_epoch, "configured_lr": lr, "suggested_lr": sug},
        {},
        infrastructure=True,
        strength=INFRA_STRENGTH,
    )
    patch = {"optimizer.lr": float(f"{new_lr:.3g}"), "training.grad_clip": 1.0}
    if cfg["training"]["precision"] == "fp16":
        patch["training.precision"] = "bf16"
    f.recommendations.append(
        _recommend(
            "nan_loss",
            "nan_fix",
            f"LR {lr:g} → {new_lr:.3g} and clip gradients at norm 1",
            patch,
            "the loss diverged; the LR range test's stable LR plus clipping keeps updates bounded",
            _gap_to_target(evidence) or 10.0,
            1,
            "fix",
            configured_lr=lr,
            suggested_lr=sug,
        )
    )
    return f


def detect_convergence_stall(evidence: dict[str, Any]) -> Finding:
    h = evidence.get("history") or []
    if not h or evidence["status"] in ("crashed", "nonfinite"):
        return _quiet("convergence_stall", "no completed training to judge")
    init, final = evidence.get("init_loss"), h[-1]["train_loss"]
    drop = 1 - final / init if init else 0.0
    dead = (evidence["probes"].get("dead_units") or {}).get("dead_fraction")
    lr_probe = evidence["probes"].get("lr_range") or {}
    sug, lr = _suggested_lr(evidence), evidence["config"]["optimizer"]["lr"]
    ratio = (lr / sug) if sug else None
    flat = drop < THRESHOLDS["stall_loss_drop"]
    dead_many = dead is not None and dead >= THRESHOLDS["dead_unit_fraction"]
    fired = flat or dead_many
    far = ratio is not None and (ratio < 1 / THRESHOLDS["lr_far_factor"] or ratio > THRESHOLDS["lr_far_factor"])
    evd = {
        "init_loss": init,
        "final_train_loss": final,
        "loss_drop": round(drop, 4),
        "configured_lr": lr,
        "suggested_lr": sug,
        "lr_over_suggested": ratio,
        "lr_far_off": far,
        "dead_unit_fraction": dead,
        "lr_finder": lr_probe.get("reason") or ("trusted" if sug else "did not run"),
    }
    why = (
        f"train loss {init:.3f} → {final:.3f} ({drop:.1%} drop)"
        + (f"; LR {lr:g} vs suggested {sug:.3g}" if sug else "; LR finder inconclusive" if lr_probe else "")
        + (f"; {dead:.0%} dead ReLU units" if dead is not None else "")
    )
    strength = (INFRA_STRENGTH if flat else 0.0) + (dead / THRESHOLDS["dead_unit_fraction"] if dead_many else 0.0)
    f = Finding(
        "convergence_stall",
        fired,
        1.0 if flat else (dead or 0.0),
        why,
        evd,
        _thresholds("stall_loss_drop", "lr_far_factor", "dead_unit_fraction"),
        strength=strength if fired else 0.0,
        cause="dead_units" if dead_many else "stall",
    )
    if not fired:
        return f
    f.recommendations += _stall_recs(evidence, dead_many, far, sug, lr, ratio, dead, drop)
    return f


def _stall_recs(
    evidence: dict[str, Any],
    dead_many: bool,
    far: bool,
    sug: float | None,
    lr: float,
    ratio: float | None,
    dead: float | None,
    drop: float,
) -> list[Recommendation]:
    """A stall's fixes: re-initialisation and a leaky activation for dead units, the LR finder's LR
    when the configured one is far off, a warmup."""
    recs: list[Recommendation] = []
    kind = "fix" if evidence.get("failed_mode") else "accuracy"
    gain = 0.8 * (_gap_to_target(evidence) or 10.0)
    cfg = evidence["config"]
    if dead_many:  # units that never fire get no gradient: re-initialise, let negatives leak, keep a sane LR
        patch: dict[str, Any] = {"model.init": "kaiming"}
        if cfg["model"]["name"] in ("mlp", "cnn", "cnn1d"):
            patch["model.kwargs"] = {**cfg["model"]["kwargs"], "activation": "leaky_relu"}
        if sug and lr > THRESHOLDS["lr_far_factor"] * sug:  # an LR that large kills units: bring it into range
            patch["optimizer.lr"] = float(f"{sug:.3g}")
        recs.append(
            _recommend(
                "convergence_stall",
                "revive_units",
                "Re-initialise (He-normal, zero biases)"
                + (" with leaky ReLU" if "model.kwargs" in patch else "")
                + (f", LR {lr:g} → {patch['optimizer.lr']:.3g}" if "optimizer.lr" in patch else ""),
                patch,
                f"{dead:.0%} of ReLU units never fire, so they get no gradient: lowering the LR "
                "cannot revive them; a fresh init (and a leaky activation) can",
                gain,
                1,
                kind,
                dead_fraction=dead,
                configured_lr=lr,
                suggested_lr=sug,
            )
        )
    elif sug:
        recs.append(
            _recommend(
                "convergence_stall",
                "lr_to_suggested",
                f"LR {lr:g} → {sug:.3g} (LR finder)",
                {"optimizer.lr": float(f"{sug:.3g}")},
                "the loss did not move: the LR is far from the range where this model learns",
                gain,
                1,
                kind,
                configured_lr=lr,
                suggested_lr=sug,
            )
        )
    else:  # the finder cannot tell: the optimizer's standard starting point, the safe choice
        std = STANDARD_LR[cfg["optimizer"]["name"]]
        if not (std / THRESHOLDS["lr_far_factor"] < lr < std * THRESHOLDS["lr_far_factor"]):
            recs.append(
                _recommend(
                    "convergence_stall",
                    "lr_standard",
                    f"LR {lr:g} → {std:g} (standard start)",
                    {"optimizer.lr": std},
                    "the loss did not move and the LR range test is "
                    f"inconclusive: {cfg['optimizer']['name']}'s usual starting LR",
                    gain,
                    1,
                    kind,
                    configured_lr=lr,
                    standard_lr=std,
                )
            )
    return recs


def detect_resource_inefficiency(evidence: dict[str, Any]) -> Finding:
    prof = evidence["probes"].get("resource") or {}
    dw, util = prof.get("data_wait_fraction"), prof.get("gpu_util_mean")
    mem, total = prof.get("gpu_mem_max_mib"), prof.get("gpu_mem_total_mib")
    headroom = (mem / total) if mem and total else None
    problems = {
        "data_wait": dw is not None and dw > THRESHOLDS["data_wait_fraction"],
        "gpu_util": util is not None and util < THRESHOLDS["gpu_util_percent"],
        "batch_small": headroom is not None and headroom < THRESHOLDS["gpu_mem_headroom"],
    }
    fired = any(problems.values())
    evd = {
        "problems": [k for k, v in problems.items() if v],
        "data_wait_fraction": dw,
        "gpu_util_mean": util,
        "gpu_mem_used_fraction": headroom,
        "device": prof.get("device"),
        "throughput": (evidence["probes"].get("throughput") or {}).get("points"),
    }
    why = (f"data-wait {dw:.0%}" if dw is not None else "data-wait n/a") + (
        f"; GPU utilisation {util:.0f}%" if util is not None else "; GPU utilisation not measured (no GPU)"
    )
    strength = max(
        (dw or 0.0) / THRESHOLDS["data_wait_fraction"] if problems["data_wait"] else 0.0,
        (THRESHOLDS["gpu_util_percent"] / max(util, 1.0)) if problems["gpu_util"] else 0.0,
        1.0 if problems["batch_small"] else 0.0,
    )
    dominant = dw is not None and dw >= THRESHOLDS["dominant_data_wait"]
    f = Finding(
        "resource_inefficiency",
        fired,
        max(dw or 0.0, 1 - (util or 100) / 100),
        why,
        evd,
        _thresholds("data_wait_fraction", "dominant_data_wait", "gpu_util_percent", "gpu_mem_headroom"),
        strength=strength,
        cause="input_bound" if problems["data_wait"] else ("gpu_util" if problems["gpu_util"] else "batch_small"),
    )
    if not fired:
        return f
    cfg = evidence["config"]
    if problems["data_wait"] and cfg["data"]["workers"] < 2:
        n = max(2, min(4, (os.cpu_count() or 2)))
        r = _recommend(
            "resource_inefficiency",
            "workers",
            f"DataLoader workers {cfg['data']['workers']} → {n}",
            {"data.workers": n},
            "load the next batches in parallel with the training step"
            + (f" (data wait is {dw:.0%} of each epoch: the dominant cost)" if dominant else ""),
            0.0,
            1,
            "speed",
            data_wait_fraction=dw,
        )
        r.forced = dominant
        f.recommendations.append(r)
    if problems["gpu_util"] or problems["batch_small"] or (problems["data_wait"] and cfg["data"]["workers"] >= 2):
        bs = cfg["data"]["batch_size"]
        f.recommendations.append(
            _recommend(
                "resource_inefficiency",
                "batch_size",
                f"Batch size {bs} → {2 * bs} (LR ×2, linear scaling)",
                {"data.batch_size": 2 * bs, "optimizer.lr": 2 * cfg["optimizer"]["lr"]},
                "fewer, larger steps keep the device busy",
                0.0,
                1,
                "speed",
                gpu_util=util,
                mem_used_fraction=headroom,
            )
        )
    return f


_CRASH_PATTERNS: list[tuple[str, str]] = [
    ("out_of_memory", r"out of memory|OutOfMemoryError|can't allocate memory|DefaultCPUAllocator"),
    (
        "shape_mismatch",
        r"shapes cannot be multiplied|size mismatch|mat1 and mat2|Expected input batch_size|"
        r"expected input\[.*\] to have|must match the size|Given groups=|shape '.*' is invalid|"
        r"Target .* is out of bounds",
    ),
    (
        "dtype_device",
        r"Expected all tensors to be on the same device|expected scalar type|Input type .* weight type|"
        r"dtype|device-side|found at least two devices",
    ),
    ("data_error", r"DataError|No such file|not found|cannot identify image|labels must|QuarantineError"),
]


def classify_crash(crash: dict[str, Any], evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Classify a Phase 2 exception (crash.json) and say how to fix it."""
    text = f"{crash.get('type', '')} {crash.get('cause_type', '')}: {crash.get('message', '')}"
    kind = next((k for k, pat in _CRASH_PATTERNS if re.search(pat, text, re.I)), "other")
    cfg = (evidence or {}).get("config") or {}
    shape = (evidence or {}).get("input_shape")
    fixes = {
        "out_of_memory": "halve data.batch_size and double training.accumulation (same effective batch), or a smaller "
        "model",
        "shape_mismatch": f"the model does not accept the data's input shape {shape} or class count "
        f"{(evidence or {}).get('num_classes')}: make model.name's builder use the input_shape and num_classes "
        "arguments it is given (first layer, flatten size, output units)",
        "dtype_device": "move inputs and model to one device and dtype (let trainkit place them: no .to()/.cuda() "
        "inside the model), or set training.precision: fp32",
        "data_error": "fix the data source named in the message (path, file format, labels 0..K-1), then start Phase "
        "2 again",
        "other": "read the traceback in crash.json; fix the config or the model it names",
    }
    patch = None
    if kind == "out_of_memory" and cfg:
        patch = {
            "data.batch_size": max(1, cfg["data"]["batch_size"] // 2),
            "training.accumulation": cfg["training"]["accumulation"] * 2,
        }
    elif kind == "dtype_device" and cfg:
        patch = {"training.precision": "fp32"}
    return {"category": kind, "fix": fixes[kind], "patch": patch, "message": crash.get("message", "")[:600]}


def detect_crashes(evidence: dict[str, Any]) -> Finding:
    crash = evidence.get("crash")
    if not crash:
        return _quiet("crashes", "Phase 2 did not crash")
    c = classify_crash(crash, evidence)
    f = Finding(
        "crashes",
        True,
        1.0,
        f"{c['category']}: {c['message'][:200]}",
        c,
        {},
        infrastructure=True,
        strength=INFRA_STRENGTH,
        cause=c["category"],
    )
    f.recommendations.append(
        _recommend(
            "crashes",
            f"crash_{c['category']}",
            f"Fix the {c['category'].replace('_', ' ')}",
            c["patch"],
            c["fix"],
            _gap_to_target(evidence) or 10.0,
            1 if c["patch"] else 2,
            "fix",
        )
    )
    return f
