"""One detector per seed diagnostic. Each is a pure function of the evidence dict and returns a
:class:`Finding` saying whether it fired, how strongly, on which numbers, and what to change.

The evidence dict (built by :func:`trainkit.diagnostics.gather_evidence`) holds the baseline's
``history`` (metrics.jsonl rows), ``status``, ``best``, ``init_loss``, ``nonfinite``, ``crash``,
``target``, ``num_classes``, ``input_shape``, the ``config`` as a dict, and the ``probes``.
Thresholds live in :data:`THRESHOLDS`; ``docs/diagnostics/<name>.md`` explains each.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

__all__ = ["Finding", "Recommendation", "THRESHOLDS", "DETECTORS", "detect_all", "classify_crash"]

THRESHOLDS: dict[str, float] = {
    "overfit_gap_points": 5.0,        # train − val accuracy at the last epoch (points) → overfitting
    "overfit_gap_with_rise": 2.0,     # ... or this gap while val loss rose ...
    "val_loss_rise": 0.10,            # ... ≥ 10% above its minimum and train loss kept falling
    "underfit_train_margin": 0.02,    # train accuracy below target + this → the model cannot even fit train
    "learning_loss_drop": 0.10,       # "learning" = final train loss ≥ 10% below the loss at init
    "stall_loss_drop": 0.05,          # loss fell < 5% from init → flat from the start
    "lr_far_factor": 30.0,            # configured LR off the LR-finder suggestion by more than 30× (either way)
    "dead_unit_fraction": 0.5,        # ≥ 50% of ReLU units never fire on val data
    "label_issue_fraction": 0.05,     # ≥ 5% of training labels flagged by confident learning
    "near_duplicate_fraction": 0.05,  # ≥ 5% of val samples nearly identical to a train sample
    "imbalance_ratio": 3.0,           # largest / smallest training class count
    "min_per_class": 30,              # label-issue and imbalance verdicts need ≥ 30 training samples per class
    "constant_feature_fraction": 0.5, # ≥ 50% of features constant over train
    "data_wait_fraction": 0.20,       # time blocked on the next batch / epoch time
    "gpu_util_percent": 60.0,         # mean GPU utilisation during training
    "gpu_mem_headroom": 0.25,         # peak memory below 25% of the device's
}


@dataclass
class Recommendation:
    """A config patch with its case: why, expected gain (points of the target metric), effort 1–3."""

    id: str
    title: str
    patch: dict[str, Any] | None
    rationale: str
    expected_gain_points: float
    effort: int
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: str = "accuracy"  # accuracy | speed | fix
    finding: str = ""

    @property
    def score(self) -> float:
        return (self.expected_gain_points if self.kind != "speed" else 0.5) / self.effort


@dataclass
class Finding:
    name: str
    fired: bool
    severity: float
    summary: str
    evidence: dict[str, Any]
    thresholds: dict[str, float]
    recommendations: list[Recommendation] = field(default_factory=list)
    infrastructure: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guide"] = f"docs/diagnostics/{self.name}.md"
        return d


def _t(*names: str) -> dict[str, float]:
    return {n: THRESHOLDS[n] for n in names}


def _quiet(name: str, why: str, **evidence: Any) -> Finding:
    return Finding(name, False, 0.0, why, evidence, {})


def _rec(finding: str, rid: str, title: str, patch: dict[str, Any] | None, why: str, gain: float, effort: int,
         kind: str = "accuracy", **evidence: Any) -> Recommendation:
    return Recommendation(rid, title, patch, why, round(max(0.0, gain), 2), effort, evidence, kind, finding)


def _gap_to_target(ev: dict[str, Any]) -> float:
    best = (ev.get("best") or {}).get("val_accuracy", 0.0)
    return max(0.0, (ev["target"] - best) * 100)


def _suggested_lr(ev: dict[str, Any]) -> float | None:
    return (ev["probes"].get("lr_range") or {}).get("suggested_lr")


def _is_image(ev: dict[str, Any]) -> bool:
    return len(ev.get("input_shape") or []) == 3


def _learned(ev: dict[str, Any]) -> bool:
    h = ev.get("history") or []
    init = ev.get("init_loss")
    return bool(h) and init is not None and math.isfinite(init) and \
        h[-1]["train_loss"] < init * (1 - THRESHOLDS["learning_loss_drop"])


# ----------------------------------------------------------------------------- detectors

def detect_overfitting(ev: dict[str, Any]) -> Finding:
    h = ev.get("history") or []
    if not h or ev["status"] in ("crashed", "nonfinite"):
        return _quiet("overfitting", "no completed training to judge")
    last = h[-1]
    gap = (last["train_accuracy"] - last["val_accuracy"]) * 100
    i_min = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    rise = last["val_loss"] / h[i_min]["val_loss"] - 1 if h[i_min]["val_loss"] > 0 else 0.0
    train_falling = last["train_loss"] < h[i_min]["train_loss"]
    fired = gap >= THRESHOLDS["overfit_gap_points"] or (
        gap >= THRESHOLDS["overfit_gap_with_rise"] and rise >= THRESHOLDS["val_loss_rise"] and train_falling)
    evd = {"train_accuracy": last["train_accuracy"], "val_accuracy": last["val_accuracy"], "gap_points": round(gap, 2),
           "val_loss_min_epoch": h[i_min]["epoch"] + 1, "val_loss_rise": round(rise, 4), "train_loss_still_falling": train_falling}
    f = Finding("overfitting", fired, min(1.0, gap / 20), f"train {last['train_accuracy']:.3f} vs val "
                f"{last['val_accuracy']:.3f} (gap {gap:.1f} points); val loss {rise:+.0%} from its minimum at epoch "
                f"{h[i_min]['epoch'] + 1}", evd, _t("overfit_gap_points", "overfit_gap_with_rise", "val_loss_rise"))
    if not fired:
        return f
    cfg = ev["config"]
    room = min(gap, _gap_to_target(ev) or gap)
    if cfg["optimizer"]["name"] == "sgd":
        f.recommendations.append(_rec("overfitting", "weight_decay", "Add weight decay 5e-4",
                                      {"optimizer.weight_decay": 5e-4}, "L2 regularisation shrinks the train/val gap",
                                      0.2 * room, 1, gap_points=gap))
    else:
        f.recommendations.append(_rec("overfitting", "weight_decay", "AdamW with decoupled weight decay 0.05",
                                      {"optimizer.name": "adamw", "optimizer.weight_decay": 0.05},
                                      "decoupled weight decay regularises without fighting Adam's scaling", 0.2 * room, 1,
                                      gap_points=gap))
    kw = dict(cfg["model"]["kwargs"])
    if cfg["model"]["name"] in ("mlp", "cnn") and float(kw.get("dropout", 0.0)) < 0.3:
        f.recommendations.append(_rec("overfitting", "dropout", "Dropout 0.3", {"model.kwargs": {**kw, "dropout": 0.3}},
                                      "dropout stops co-adapted features that memorise the training set", 0.3 * room, 1,
                                      current_dropout=kw.get("dropout", 0.0)))
    if cfg["data"]["augment"] == "none":
        shape = ev.get("input_shape") or []
        big_image = _is_image(ev) and min(shape[1:]) >= 16
        kind = ("flip_crop" if shape[0] == 3 else "crop") if big_image else "noise"
        f.recommendations.append(_rec("overfitting", "augment", f"Augment: {kind}", {"data.augment": kind},
                                      "more effective training data at no labelling cost" + (
                                          "" if big_image else " (small inputs: Gaussian noise; crops would cut too much)"),
                                      (0.35 if big_image else 0.1) * room, 1, input_shape=shape))
    if cfg["training"]["label_smoothing"] == 0:
        f.recommendations.append(_rec("overfitting", "label_smoothing", "Label smoothing 0.1",
                                      {"training.label_smoothing": 0.1}, "softer targets discourage over-confident fits",
                                      0.15 * room, 1))
    return f


def detect_underfitting(ev: dict[str, Any]) -> Finding:
    h = ev.get("history") or []
    if not h or ev["status"] in ("crashed", "nonfinite") or not _learned(ev):
        return _quiet("underfitting", "no learning to judge (see convergence_stall / nan_loss / crashes)")
    best_val = ev["best"]["val_accuracy"]
    train_acc = max(r["train_accuracy"] for r in h)
    gap = (h[-1]["train_accuracy"] - h[-1]["val_accuracy"]) * 100
    ceiling = ev["target"] + THRESHOLDS["underfit_train_margin"]
    noisy = (ev["probes"].get("label_issues") or {}).get("flagged_fraction", 0.0)
    if noisy >= THRESHOLDS["label_issue_fraction"]:  # wrong labels cap train accuracy: fix the data, then re-judge
        return _quiet("underfitting", f"not judged: {noisy:.0%} of training labels look wrong, which caps train "
                      f"accuracy (see data_quality)", label_issue_fraction=noisy, best_train_accuracy=train_acc)
    fired = best_val < ev["target"] and train_acc < ceiling and gap < THRESHOLDS["overfit_gap_points"]
    best_epoch = ev["best"]["epoch"]
    still_improving = best_epoch >= len(h) - 2
    evd = {"best_val_accuracy": best_val, "best_train_accuracy": train_acc, "target": ev["target"],
           "train_ceiling": round(ceiling, 4), "still_improving_at_end": still_improving, "epochs_run": len(h)}
    f = Finding("underfitting", fired, min(1.0, _gap_to_target(ev) / 20),
                f"best val {best_val:.3f} < target {ev['target']}; train accuracy only {train_acc:.3f}" if fired else
                f"best val {best_val:.3f}, train {train_acc:.3f} (target {ev['target']}): not underfitting", evd,
                _t("underfit_train_margin", "learning_loss_drop"))
    if not fired:
        return f
    cfg = ev["config"]
    need = max(0.0, (1 - best_val) * 100)  # headroom to a perfect score: what better fitting can win
    sug, lr = _suggested_lr(ev), cfg["optimizer"]["lr"]
    if sug and sug > 2 * lr:
        f.recommendations.append(_rec("underfitting", "lr_up", f"Raise LR {lr:g} → {sug:.3g} (LR finder)",
                                      {"optimizer.lr": float(f"{sug:.3g}")}, "the LR range test shows a much larger stable LR",
                                      0.5 * need, 1, configured_lr=lr, suggested_lr=sug))
    if still_improving:
        f.recommendations.append(_rec("underfitting", "longer", f"Train longer: {cfg['training']['epochs']} → "
                                      f"{2 * cfg['training']['epochs']} epochs", {"training.epochs": 2 * cfg["training"]["epochs"]},
                                      "val accuracy was still improving at the last epoch", 0.25 * need, 2, best_epoch=best_epoch + 1))
    kw = dict(cfg["model"]["kwargs"])
    if cfg["model"]["name"] == "mlp":
        hidden = [min(2048, 2 * w) for w in kw.get("hidden", [128])]
        f.recommendations.append(_rec("underfitting", "capacity", f"Wider MLP: hidden {hidden}",
                                      {"model.kwargs": {**kw, "hidden": hidden}}, "more capacity to fit the training set",
                                      0.25 * need, 1, current_hidden=kw.get("hidden", [128])))
    elif cfg["model"]["name"] == "cnn":
        ch = [min(512, 2 * c) for c in kw.get("channels", [32, 64])]
        f.recommendations.append(_rec("underfitting", "capacity", f"Wider CNN: channels {ch}",
                                      {"model.kwargs": {**kw, "channels": ch}}, "more capacity to fit the training set",
                                      0.25 * need, 1))
    if cfg["schedule"]["name"] == "constant":
        f.recommendations.append(_rec("underfitting", "schedule", "Cosine schedule with 1 warmup epoch",
                                      {"schedule.name": "cosine", "schedule.warmup_epochs": 1.0},
                                      "a decaying LR settles into a better minimum", 0.1 * need, 1))
    if cfg["optimizer"]["weight_decay"] > 0:
        f.recommendations.append(_rec("underfitting", "less_decay", "Remove weight decay", {"optimizer.weight_decay": 0.0},
                                      "regularisation is the wrong direction when train accuracy is low", 0.1 * need, 1))
    return f


def detect_nan_loss(ev: dict[str, Any]) -> Finding:
    nf = ev.get("nonfinite")
    h = ev.get("history") or []
    bad_epoch = next((r["epoch"] for r in h if not (math.isfinite(r.get("train_loss", 0.0))
                                                     and math.isfinite(r.get("val_loss", 0.0)))), None)
    fired = nf is not None or ev["status"] == "nonfinite" or bad_epoch is not None
    if not fired:
        return _quiet("nan_loss", "every loss and gradient finite")
    nf = nf or {}
    cfg = ev["config"]
    sug, lr = _suggested_lr(ev), cfg["optimizer"]["lr"]
    new_lr = min(sug, lr / 10) if sug else lr / 10
    f = Finding("nan_loss", True, 1.0, f"non-finite at epoch {nf.get('epoch', bad_epoch)} step {nf.get('step')}; first "
                f"bad gradient in {nf.get('parameter')!r}; last finite loss {nf.get('last_finite_loss')}",
                {"nonfinite": nf, "first_bad_epoch": bad_epoch, "configured_lr": lr, "suggested_lr": sug}, {},
                infrastructure=True)
    patch = {"optimizer.lr": float(f"{new_lr:.3g}"), "training.grad_clip": 1.0}
    if cfg["training"]["precision"] == "fp16":
        patch["training.precision"] = "bf16"
    f.recommendations.append(_rec("nan_loss", "nan_fix", f"LR {lr:g} → {new_lr:.3g} and clip gradients at norm 1",
                                  patch, "the loss diverged; the LR range test's stable LR plus clipping keeps updates bounded",
                                  _gap_to_target(ev) or 10.0, 1, "fix", configured_lr=lr, suggested_lr=sug))
    return f


def detect_convergence_stall(ev: dict[str, Any]) -> Finding:
    h = ev.get("history") or []
    if not h or ev["status"] in ("crashed", "nonfinite"):
        return _quiet("convergence_stall", "no completed training to judge")
    init, final = ev.get("init_loss"), h[-1]["train_loss"]
    drop = 1 - final / init if init else 0.0
    dead = (ev["probes"].get("dead_units") or {}).get("dead_fraction")
    sug, lr = _suggested_lr(ev), ev["config"]["optimizer"]["lr"]
    ratio = (lr / sug) if sug else None
    flat = drop < THRESHOLDS["stall_loss_drop"]
    dead_many = dead is not None and dead >= THRESHOLDS["dead_unit_fraction"]
    fired = flat or dead_many
    far = ratio is not None and (ratio < 1 / THRESHOLDS["lr_far_factor"] or ratio > THRESHOLDS["lr_far_factor"])
    evd = {"init_loss": init, "final_train_loss": final, "loss_drop": round(drop, 4), "configured_lr": lr,
           "suggested_lr": sug, "lr_over_suggested": ratio, "lr_far_off": far, "dead_unit_fraction": dead}
    why = (f"train loss {init:.3f} → {final:.3f} ({drop:.1%} drop)" + (f"; LR {lr:g} vs suggested {sug:.3g}" if sug else "")
           + (f"; {dead:.0%} dead ReLU units" if dead is not None else ""))
    f = Finding("convergence_stall", fired, 1.0 if flat else (dead or 0.0), why, evd,
                _t("stall_loss_drop", "lr_far_factor", "dead_unit_fraction"))
    if fired and sug:
        patch: dict[str, Any] = {"optimizer.lr": float(f"{sug:.3g}")}
        if dead_many:
            patch["schedule.warmup_epochs"] = 1.0
        f.recommendations.append(_rec("convergence_stall", "lr_to_suggested", f"LR {lr:g} → {sug:.3g} (LR finder)", patch,
                                      "the loss did not move: the LR is far from the range where this model learns",
                                      0.8 * (_gap_to_target(ev) or 10.0), 1, "fix" if ev.get("failed_mode") else "accuracy",
                                      configured_lr=lr, suggested_lr=sug))
    return f


def detect_data_quality(ev: dict[str, Any]) -> Finding:
    d = ev["probes"].get("data") or {}
    li = ev["probes"].get("label_issues") or {}
    if not d:
        return _quiet("data_quality", "data probe did not run")
    leaked = d.get("leaked_train_indices", [])
    dups = d.get("duplicate_train_indices", [])
    flagged = li.get("flagged", [])
    frac = li.get("flagged_fraction", 0.0)
    feats = d.get("features") or 0
    near_frac = d.get("near_duplicates_train_val", 0) / max(1, ev.get("val_size", 1))
    per_class = min(d.get("class_counts_train") or [0])
    reliable = per_class >= THRESHOLDS["min_per_class"]
    problems = {
        "leakage": len(leaked) > 0,
        "label_issues": reliable and frac >= THRESHOLDS["label_issue_fraction"],
        "non_finite": d.get("non_finite_values", 0) > 0,
        "imbalance": reliable and d.get("imbalance_ratio", 1.0) >= THRESHOLDS["imbalance_ratio"],
        "constant_features": feats > 0 and d.get("constant_features", 0) / feats >= THRESHOLDS["constant_feature_fraction"],
        "near_duplicates": near_frac >= THRESHOLDS["near_duplicate_fraction"],
    }
    fired = any(problems.values())
    evd = {"problems": [k for k, v in problems.items() if v], "leaked_train_samples": len(leaked),
           "duplicates_within_train": len(dups), "label_issues_flagged": len(flagged),
           "label_issue_fraction": round(frac, 4), "smallest_class_count": per_class, "imbalance_ratio": d.get("imbalance_ratio"),
           "constant_features": d.get("constant_features"), "features": feats,
           "non_finite_values": d.get("non_finite_values"), "near_duplicate_val_fraction": round(near_frac, 4),
           "phase1_duplicates": d.get("duplicates"), "exclude_indices": sorted(set(leaked) | set(dups) |
                                                                               (set(flagged) if problems["label_issues"] else set()))}
    f = Finding("data_quality", fired, 1.0 if problems["leakage"] or problems["non_finite"] else min(1.0, 4 * frac),
                "; ".join(f"{k}" for k, v in problems.items() if v) or "no data problem found", evd,
                _t("label_issue_fraction", "near_duplicate_fraction", "imbalance_ratio", "constant_feature_fraction",
                   "min_per_class"),
                infrastructure=problems["leakage"] or problems["non_finite"])
    if fired and evd["exclude_indices"]:
        kind = "fix" if f.infrastructure else "accuracy"
        gain = 0.0 if problems["leakage"] and not problems["label_issues"] else 50 * frac
        f.recommendations.append(_rec("data_quality", "exclude_bad_samples",
                                      f"Leave {len(evd['exclude_indices'])} suspect training samples out (exclude.json)",
                                      {"data.exclude": ev.get("exclude_path", "exclude.json")},
                                      "leaked copies of val/test rows inflate the val metric; mislabelled rows teach the "
                                      "wrong answer", gain, 1, kind, leaked=len(leaked), label_issues=len(flagged),
                                      duplicates=len(dups)))
    if problems["non_finite"]:
        f.recommendations.append(_rec("data_quality", "fix_non_finite", "Replace or drop non-finite feature values at the "
                                      "source", None, f"{d['non_finite_values']} NaN/Inf values reach the model", 0.0, 2, "fix"))
    return f


def detect_resource_inefficiency(ev: dict[str, Any]) -> Finding:
    prof = ev["probes"].get("resource") or {}
    dw, util = prof.get("data_wait_fraction"), prof.get("gpu_util_mean")
    mem, total = prof.get("gpu_mem_max_mib"), prof.get("gpu_mem_total_mib")
    headroom = (mem / total) if mem and total else None
    problems = {"data_wait": dw is not None and dw > THRESHOLDS["data_wait_fraction"],
                "gpu_util": util is not None and util < THRESHOLDS["gpu_util_percent"],
                "batch_small": headroom is not None and headroom < THRESHOLDS["gpu_mem_headroom"]}
    fired = any(problems.values())
    evd = {"problems": [k for k, v in problems.items() if v], "data_wait_fraction": dw, "gpu_util_mean": util,
           "gpu_mem_used_fraction": headroom, "device": prof.get("device"),
           "throughput": (ev["probes"].get("throughput") or {}).get("points")}
    why = (f"data-wait {dw:.0%}" if dw is not None else "data-wait n/a") + (
        f"; GPU utilisation {util:.0f}%" if util is not None else "; GPU utilisation not measured (no GPU)")
    f = Finding("resource_inefficiency", fired, max(dw or 0.0, 1 - (util or 100) / 100), why, evd,
                _t("data_wait_fraction", "gpu_util_percent", "gpu_mem_headroom"))
    if not fired:
        return f
    cfg = ev["config"]
    if problems["data_wait"] and cfg["data"]["workers"] < 2:
        n = max(2, min(4, (os.cpu_count() or 2)))
        f.recommendations.append(_rec("resource_inefficiency", "workers", f"DataLoader workers {cfg['data']['workers']} → {n}",
                                      {"data.workers": n}, "load the next batches in parallel with the training step",
                                      0.0, 1, "speed", data_wait_fraction=dw))
    if problems["gpu_util"] or problems["batch_small"] or (problems["data_wait"] and cfg["data"]["workers"] >= 2):
        bs = cfg["data"]["batch_size"]
        f.recommendations.append(_rec("resource_inefficiency", "batch_size", f"Batch size {bs} → {2 * bs} (LR ×2, linear scaling)",
                                      {"data.batch_size": 2 * bs, "optimizer.lr": 2 * cfg["optimizer"]["lr"]},
                                      "fewer, larger steps keep the device busy", 0.0, 1, "speed",
                                      gpu_util=util, mem_used_fraction=headroom))
    return f


_CRASH_PATTERNS: list[tuple[str, str]] = [
    ("out_of_memory", r"out of memory|OutOfMemoryError|can't allocate memory|DefaultCPUAllocator"),
    ("shape_mismatch", r"shapes cannot be multiplied|size mismatch|mat1 and mat2|Expected input batch_size|"
                       r"expected input\[.*\] to have|must match the size|Given groups=|shape '.*' is invalid|"
                       r"Target .* is out of bounds"),
    ("dtype_device", r"Expected all tensors to be on the same device|expected scalar type|Input type .* weight type|"
                     r"dtype|device-side|found at least two devices"),
    ("data_error", r"DataError|No such file|not found|cannot identify image|labels must|QuarantineError"),
]


def classify_crash(crash: dict[str, Any], ev: dict[str, Any] | None = None) -> dict[str, Any]:
    """Classify a Phase 2 exception (crash.json) and say how to fix it."""
    text = f"{crash.get('type', '')} {crash.get('cause_type', '')}: {crash.get('message', '')}"
    kind = next((k for k, pat in _CRASH_PATTERNS if re.search(pat, text, re.I)), "other")
    cfg = (ev or {}).get("config") or {}
    shape = (ev or {}).get("input_shape")
    fixes = {
        "out_of_memory": "halve data.batch_size and double training.accumulation (same effective batch), or a smaller model",
        "shape_mismatch": f"the model does not accept the data's input shape {shape} or class count "
                          f"{(ev or {}).get('num_classes')}: make model.name's builder use the input_shape and num_classes "
                          "arguments it is given (first layer, flatten size, output units)",
        "dtype_device": "move inputs and model to one device and dtype (let trainkit place them: no .to()/.cuda() "
                        "inside the model), or set training.precision: fp32",
        "data_error": "fix the data source named in the message (path, file format, labels 0..K-1), then start Phase 2 again",
        "other": "read the traceback in crash.json; fix the config or the model it names",
    }
    patch = None
    if kind == "out_of_memory" and cfg:
        patch = {"data.batch_size": max(1, cfg["data"]["batch_size"] // 2),
                 "training.accumulation": cfg["training"]["accumulation"] * 2}
    elif kind == "dtype_device" and cfg:
        patch = {"training.precision": "fp32"}
    return {"category": kind, "fix": fixes[kind], "patch": patch, "message": crash.get("message", "")[:600]}


def detect_crashes(ev: dict[str, Any]) -> Finding:
    crash = ev.get("crash")
    if not crash:
        return _quiet("crashes", "Phase 2 did not crash")
    c = classify_crash(crash, ev)
    f = Finding("crashes", True, 1.0, f"{c['category']}: {c['message'][:200]}", c, {}, infrastructure=True)
    f.recommendations.append(_rec("crashes", f"crash_{c['category']}", f"Fix the {c['category'].replace('_', ' ')}",
                                  c["patch"], c["fix"], _gap_to_target(ev) or 10.0, 1 if c["patch"] else 2, "fix"))
    return f


def detect_high_variance(ev: dict[str, Any]) -> Finding:
    sv = ev["probes"].get("seed_variance") or {}
    if not sv or not ev.get("best"):
        return _quiet("high_variance", "no seed-variance measurement")
    spread = sv["range"] * 100
    gap = _gap_to_target(ev)
    fired = gap > 0 and spread > gap
    f = Finding("high_variance", fired, min(1.0, spread / 10), f"val accuracy over seeds {sv['seeds']}: "
                f"{', '.join(f'{a:.3f}' for a in sv['val_accuracy'])} (range {spread:.1f} points) vs gap to target "
                f"{gap:.1f} points", {"seed_range_points": round(spread, 2), "seed_std_points": round(sv["std"] * 100, 2),
                                       "gap_to_target_points": round(gap, 2), "epochs": sv["epochs"]}, {})
    if fired:
        cfg = ev["config"]
        patch: dict[str, Any] = {"schedule.name": "cosine"}
        if cfg["optimizer"]["lr"] > 0:
            patch["optimizer.lr"] = float(f"{cfg['optimizer']['lr'] * 0.5:.3g}")
        f.recommendations.append(_rec("high_variance", "stabilise", "Halve the LR with a cosine decay", patch,
                                      "a decaying, smaller LR ends closer to the same minimum from every seed; judge "
                                      "changes on ≥ 3 seeds (Phase 4 does)", 0.3 * min(spread, gap), 1, seed_range=spread))
    return f


DETECTORS: dict[str, Callable[[dict[str, Any]], Finding]] = {
    "overfitting": detect_overfitting, "underfitting": detect_underfitting, "nan_loss": detect_nan_loss,
    "convergence_stall": detect_convergence_stall, "data_quality": detect_data_quality,
    "resource_inefficiency": detect_resource_inefficiency, "crashes": detect_crashes, "high_variance": detect_high_variance,
}


def detect_all(ev: dict[str, Any]) -> list[Finding]:
    """Run every detector; a detector that trips over missing evidence reports itself as not run."""
    out = []
    for name, fn in DETECTORS.items():
        try:
            out.append(fn(ev))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            out.append(_quiet(name, f"could not evaluate: {type(exc).__name__}: {exc}"))
    return out
