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
    "overfit_gap_points": 5.0,        # train − val accuracy at the last epoch (points), beyond what label noise explains
    "overfit_gap_with_rise": 2.0,     # ... or this gap while val loss rose ...
    "val_loss_rise": 0.10,            # ... ≥ 10% above its minimum and train loss kept falling
    "underfit_train_margin": 0.02,    # train accuracy below target + this → the model cannot even fit train
    "learning_loss_drop": 0.10,       # "learning" = final train loss ≥ 10% below the loss at init
    "stall_loss_drop": 0.05,          # loss fell < 5% from init → flat from the start
    "lr_far_factor": 30.0,            # configured LR off the LR-finder suggestion by more than 30× (either way)
    "dead_unit_fraction": 0.5,        # ≥ 50% of ReLU units never fire on val data
    "label_noise_rate": 0.05,         # estimated excess label-noise rate (train vs val agreement) at which labels are a cause
    "label_min_kappa": 0.5,           # the label probe's model must beat chance by Cohen's kappa ≥ 0.5 to be trusted ...
    "label_max_shortfall": 0.10,      # ... and score at most 10 points below the baseline's val accuracy
    "near_duplicate_fraction": 0.05,  # ≥ 5% of val samples nearly identical to a train sample
    "imbalance_ratio": 3.0,           # largest / smallest training class count
    "min_per_class": 30,              # label-issue and imbalance verdicts need ≥ 30 training samples per class
    "constant_feature_fraction": 0.5, # ≥ 50% of features constant over train
    "data_wait_fraction": 0.20,       # time blocked on the next batch / epoch time
    "dominant_data_wait": 0.50,       # above this the input pipeline is the bottleneck: its fix is always selected
    "gpu_util_percent": 60.0,         # mean GPU utilisation during training
    "gpu_mem_headroom": 0.25,         # peak memory below 25% of the device's
    "strong_strength": 2.0,           # a finding ≥ 2× its threshold (or the seed noise) is strong: the target missed → optimize
    "min_noise_points": 1.0,          # the seed-noise floor of accuracy effects never counts below 1 point
}
"""Rationale: accuracy effects (gaps, shortfalls) are compared with the larger of their threshold
and twice the seed standard deviation from the seed-variance probe, so a 6-point gap on a run
whose seeds spread by 5 points is not "strong". Infrastructure findings (NaN, crash, leakage,
non-finite inputs) outrank accuracy findings whatever their strength: nothing else can be judged
until they are fixed."""

INFRA_STRENGTH = 10.0  # strength reported for an infrastructure finding (it is a fact, not an effect size)


@dataclass
class Recommendation:
    """A config patch with its case: why, expected gain (points of the target metric), effort 1–3.

    ``kind``: accuracy | speed | fix | advice (advice has no patch: a change to the user's own code).
    ``forced``: selected whatever its score (the fix of a dominant bottleneck)."""

    id: str
    title: str
    patch: dict[str, Any] | None
    rationale: str
    expected_gain_points: float
    effort: int
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: str = "accuracy"  # accuracy | speed | fix | advice
    finding: str = ""
    forced: bool = False

    @property
    def score(self) -> float:
        return (self.expected_gain_points if self.kind != "speed" else 0.5) / self.effort


@dataclass
class Finding:
    """One diagnostic's verdict. ``strength`` is the evidence's size in units of its threshold (or
    of the seed noise, whichever is larger): the ranking key. ``cause`` names the sub-cause."""

    name: str
    fired: bool
    severity: float
    summary: str
    evidence: dict[str, Any]
    thresholds: dict[str, float]
    recommendations: list[Recommendation] = field(default_factory=list)
    infrastructure: bool = False
    strength: float = 0.0
    cause: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guide"] = f"docs/diagnostics/{self.name}.md"
        d["cause"] = self.cause or self.name
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


def _headroom(ev: dict[str, Any]) -> float:
    """Points between the best val accuracy and a perfect score: what any change can win at most."""
    return max(0.0, (1 - ((ev.get("best") or {}).get("val_accuracy") or 0.0)) * 100)


def _seed_probe_converged(ev: dict[str, Any]) -> bool:
    """The seed-variance probe trained at least as many epochs as the baseline needed for its best
    epoch: only then is its spread the baseline's noise (shorter runs measure convergence speed)."""
    sv = ev["probes"].get("seed_variance") or {}
    best_epoch = (ev.get("best") or {}).get("epoch")
    h = ev.get("history") or []
    climbing = len(h) >= 2 and h[-1]["val_accuracy"] - max(r["val_accuracy"] for r in h[:-1]) > 0.01
    long_enough = bool(sv.get("full_runs")) or int(sv.get("epochs") or 0) >= int(best_epoch or 0) + 1
    return bool(sv) and best_epoch is not None and long_enough and not climbing


def _noise_points(ev: dict[str, Any]) -> float:
    """Twice the seed standard deviation of val accuracy (points), at least ``min_noise_points``;
    just the floor when the seed probe ran shorter than the baseline's convergence."""
    sv = ev["probes"].get("seed_variance") or {}
    std = float(sv.get("std") or 0.0) if _seed_probe_converged(ev) else 0.0
    return max(THRESHOLDS["min_noise_points"], 2 * 100 * std)


def _suggested_lr(ev: dict[str, Any]) -> float | None:
    """The LR range test's suggestion, or None when its curve was flat or noisy (inconclusive)."""
    return (ev["probes"].get("lr_range") or {}).get("suggested_lr")


def _label_noise(ev: dict[str, Any]) -> float:
    """The label probe's estimated excess noise rate when it is trusted and significant, else 0."""
    li = ev["probes"].get("label_issues") or {}
    return float(li.get("noise_rate") or 0.0) if li.get("significant") else 0.0


def _is_image(ev: dict[str, Any]) -> bool:
    return len(ev.get("input_shape") or []) == 3


def _learned(ev: dict[str, Any]) -> bool:
    h = ev.get("history") or []
    init = ev.get("init_loss")
    return bool(h) and init is not None and math.isfinite(init) and \
        h[-1]["train_loss"] < init * (1 - THRESHOLDS["learning_loss_drop"])


def _dropout_rec(finding: str, cfg: dict[str, Any], why: str, gain: float) -> list[Recommendation]:
    """Dropout 0.3 for a built-in model that has less (a user's model cannot be patched this way)."""
    kw = dict(cfg["model"]["kwargs"])
    if cfg["model"]["name"] not in ("mlp", "cnn", "cnn1d") or float(kw.get("dropout", 0.0)) >= 0.3:
        return []
    return [_rec(finding, "dropout", "Dropout 0.3", {"model.kwargs": {**kw, "dropout": 0.3}}, why, gain, 1,
                 current_dropout=kw.get("dropout", 0.0))]


def _smoothing_rec(finding: str, cfg: dict[str, Any], why: str, gain: float) -> list[Recommendation]:
    """Label smoothing 0.1 when the config has none."""
    if cfg["training"]["label_smoothing"] != 0:
        return []
    return [_rec(finding, "label_smoothing", "Label smoothing 0.1", {"training.label_smoothing": 0.1}, why, gain, 1)]


def _family_recs(finding: str, ev: dict[str, Any], gain: float) -> list[Recommendation]:
    """Model-family moves: a built-in MLP on images or signals → the matching conv net; a user's own
    model → advice saying what to change (no patch can rewrite their code)."""
    from trainkit.models import family_for

    cfg, shape = ev["config"], ev.get("input_shape") or []
    fam = family_for(shape)
    if fam is None:
        return []
    name = cfg["model"]["name"]
    what = "images" if fam == "cnn" else "signals"
    if name == "mlp":
        kw = {"channels": [32, 64]}
        if float(cfg["model"]["kwargs"].get("dropout", 0.0)):
            kw["dropout"] = cfg["model"]["kwargs"]["dropout"]
        patch: dict[str, Any] = {"model.name": fam, "model.kwargs": kw}
        if cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["lr"] < 0.01:
            patch["optimizer.lr"] = 0.05  # batch-normed conv nets train at SGD's usual 0.01–0.1
        return [_rec(finding, "model_family", f"Convolutional model for {what}: {fam} {kw['channels']}", patch,
                     f"the inputs are {what} {list(shape)}: convolutions share weights across positions, so they fit "
                     "better and generalise better than a flattening MLP", gain, 2, input_shape=list(shape))]
    if ":" in name and not any(k in str(cfg["model"]["kwargs"]) for k in ("conv", "channels")):
        return [_rec(finding, "model_family_advice", f"Your model {name}: consider convolutions over the {what}", None,
                     f"inputs are {what} {list(shape)}; if {name} flattens them, a Conv{2 if fam == 'cnn' else 1}d "
                     "stack with pooling usually fits and generalises better", gain, 3, "advice")]
    return []


# ----------------------------------------------------------------------------- detectors

def detect_overfitting(ev: dict[str, Any]) -> Finding:
    h = ev.get("history") or []
    if not h or ev["status"] in ("crashed", "nonfinite"):
        return _quiet("overfitting", "no completed training to judge")
    last = h[-1]
    gap = (last["train_accuracy"] - last["val_accuracy"]) * 100
    explained = 100 * _label_noise(ev)  # memorising wrong labels shows as a gap of about the noise rate
    resid = gap - explained
    i_min = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    rise = last["val_loss"] / h[i_min]["val_loss"] - 1 if h[i_min]["val_loss"] > 0 else 0.0
    train_falling = last["train_loss"] < h[i_min]["train_loss"]
    fired = resid >= THRESHOLDS["overfit_gap_points"] or (
        resid >= THRESHOLDS["overfit_gap_with_rise"] and rise >= THRESHOLDS["val_loss_rise"] and train_falling)
    strength = max(0.0, resid) / max(THRESHOLDS["overfit_gap_points"], _noise_points(ev))
    evd = {"train_accuracy": last["train_accuracy"], "val_accuracy": last["val_accuracy"], "gap_points": round(gap, 2),
           "gap_explained_by_label_noise_points": round(explained, 2), "val_loss_min_epoch": h[i_min]["epoch"] + 1,
           "val_loss_rise": round(rise, 4), "train_loss_still_falling": train_falling, "noise_points": _noise_points(ev)}
    f = Finding("overfitting", fired, min(1.0, gap / 20), f"train {last['train_accuracy']:.3f} vs val "
                f"{last['val_accuracy']:.3f} (gap {gap:.1f} points" + (f", {explained:.1f} explained by label noise"
                                                                        if explained else "")
                + f"); val loss {rise:+.0%} from its minimum at epoch {h[i_min]['epoch'] + 1}", evd,
                _t("overfit_gap_points", "overfit_gap_with_rise", "val_loss_rise"), strength=strength if fired else 0.0)
    if not fired:
        return f
    cfg = ev["config"]
    room = min(max(resid, 0.0), _headroom(ev))  # what closing the gap can win, not capped by the target's distance
    if cfg["optimizer"]["name"] == "sgd":
        f.recommendations.append(_rec("overfitting", "weight_decay", "Add weight decay 5e-4",
                                      {"optimizer.weight_decay": 5e-4}, "L2 regularisation shrinks the train/val gap",
                                      0.15 * room, 1, gap_points=gap))
    else:
        f.recommendations.append(_rec("overfitting", "weight_decay", "AdamW with decoupled weight decay 0.05",
                                      {"optimizer.name": "adamw", "optimizer.weight_decay": 0.05},
                                      "decoupled weight decay regularises without fighting Adam's scaling", 0.15 * room, 1,
                                      gap_points=gap))
    f.recommendations += _dropout_rec("overfitting", cfg, "dropout stops co-adapted features that memorise the training set",
                                      0.25 * room)
    if cfg["data"]["augment"] == "none":
        shape = ev.get("input_shape") or []
        big_image = _is_image(ev) and min(shape[1:]) >= 16
        signal = len(shape) == 2 and shape[1] >= 16
        kind = ("flip_crop" if shape[0] == 3 else "crop") if big_image else ("crop" if signal else "noise")
        f.recommendations.append(_rec("overfitting", "augment", f"Augment: {kind}" + (" (random shifts)" if signal else ""),
                                      {"data.augment": kind},
                                      "more effective training data at no labelling cost" + (
                                          "" if big_image or signal else " (small inputs: Gaussian noise; crops would cut too much)"),
                                      (0.3 if big_image or signal else 0.1) * room, 1, input_shape=shape))
    f.recommendations += _smoothing_rec("overfitting", cfg, "softer targets discourage over-confident fits", 0.1 * room)
    f.recommendations += _family_recs("overfitting", ev, 0.3 * room)
    return f


def detect_underfitting(ev: dict[str, Any]) -> Finding:
    h = ev.get("history") or []
    if not h or ev["status"] in ("crashed", "nonfinite") or not _learned(ev):
        return _quiet("underfitting", "no learning to judge (see convergence_stall / nan_loss / crashes)")
    best_val = ev["best"]["val_accuracy"]
    train_acc = max(r["train_accuracy"] for r in h)
    noise = _label_noise(ev)  # wrong labels cap train accuracy at about 1 − noise: judge the fit against that
    train_adj = min(1.0, train_acc / (1 - noise)) if noise < 1 else train_acc
    gap = (h[-1]["train_accuracy"] - h[-1]["val_accuracy"]) * 100
    ceiling = min(ev["target"] + THRESHOLDS["underfit_train_margin"], 0.995)  # a model at ~100% on train fits it
    shortfall = (ceiling - train_adj) * 100
    fired = best_val < ev["target"] and gap < THRESHOLDS["overfit_gap_points"] and \
        shortfall >= max(100 * THRESHOLDS["underfit_train_margin"], _noise_points(ev))  # short by more than the noise
    sug0, lr0 = _suggested_lr(ev), ev["config"]["optimizer"]["lr"]
    spread = 100 * float((ev["probes"].get("seed_variance") or {}).get("range") or 0.0)
    if fired and sug0 and lr0 > 3 * sug0 and spread > 2 * THRESHOLDS["min_noise_points"]:
        return _quiet("underfitting", f"train accuracy {train_acc:.3f} is low, but the LR {lr0:g} is {lr0 / sug0:.0f}× the range "
                      f"test's suggestion and seeds spread {spread:.1f} points: unstable training, not too little capacity "
                      "(see high_variance)", best_train_accuracy=train_acc, configured_lr=lr0, suggested_lr=sug0)
    best_epoch = ev["best"]["epoch"]
    still_improving = best_epoch >= len(h) - 2
    evd = {"best_val_accuracy": best_val, "best_train_accuracy": train_acc, "train_accuracy_noise_adjusted": round(train_adj, 4),
           "label_noise_rate": noise, "target": ev["target"], "train_ceiling": round(ceiling, 4),
           "still_improving_at_end": still_improving, "epochs_run": len(h), "noise_points": _noise_points(ev)}
    f = Finding("underfitting", fired, min(1.0, _gap_to_target(ev) / 20),
                f"best val {best_val:.3f} < target {ev['target']}; train accuracy only {train_acc:.3f}" if fired else
                f"best val {best_val:.3f}, train {train_acc:.3f} (target {ev['target']}): not underfitting", evd,
                _t("underfit_train_margin", "learning_loss_drop"),
                strength=shortfall / max(2 * THRESHOLDS["underfit_train_margin"] * 100, _noise_points(ev)) if fired else 0.0)
    if not fired:
        return f
    cfg = ev["config"]
    need = _headroom(ev)  # headroom to a perfect score: what better fitting can win
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
        if len(hidden) < 2:
            hidden = hidden + [hidden[-1] if hidden else 128]
        f.recommendations.append(_rec("underfitting", "capacity", f"Bigger MLP: hidden {hidden}",
                                      {"model.kwargs": {**kw, "hidden": hidden}}, "more capacity to fit the training set",
                                      0.3 * need, 1, current_hidden=kw.get("hidden", [128])))
    elif cfg["model"]["name"] in ("cnn", "cnn1d"):
        ch = [min(512, 2 * c) for c in kw.get("channels", [32, 64])]
        f.recommendations.append(_rec("underfitting", "capacity", f"Wider {cfg['model']['name']}: channels {ch}",
                                      {"model.kwargs": {**kw, "channels": ch}}, "more capacity to fit the training set",
                                      0.25 * need, 1))
    elif ":" in cfg["model"]["name"]:
        f.recommendations.append(_rec("underfitting", "capacity_advice", f"Your model {cfg['model']['name']}: more capacity",
                                      None, "train accuracy is low: widen or deepen the layers of your model builder "
                                      "(or expose a width argument in model.kwargs so trainkit can tune it)", 0.25 * need, 3,
                                      "advice"))
    f.recommendations += _family_recs("underfitting", ev, 0.4 * need)
    if cfg["schedule"]["name"] == "constant":
        f.recommendations.append(_rec("underfitting", "schedule", "Cosine schedule with 1 warmup epoch",
                                      {"schedule.name": "cosine", "schedule.warmup_epochs": 1.0},
                                      "a decaying LR settles into a better minimum", 0.1 * need, 1))
    if cfg["optimizer"]["weight_decay"] > 0 or float(kw.get("dropout", 0.0)) > 0:
        patch = {"optimizer.weight_decay": 0.0}
        if float(kw.get("dropout", 0.0)) > 0 and cfg["model"]["name"] in ("mlp", "cnn", "cnn1d"):
            patch["model.kwargs"] = {**kw, "dropout": 0.0}
        f.recommendations.append(_rec("underfitting", "less_decay", "Remove weight decay and dropout", patch,
                                      "regularisation is the wrong direction when train accuracy is low", 0.15 * need, 1))
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
                infrastructure=True, strength=INFRA_STRENGTH)
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
    lr_probe = ev["probes"].get("lr_range") or {}
    sug, lr = _suggested_lr(ev), ev["config"]["optimizer"]["lr"]
    ratio = (lr / sug) if sug else None
    flat = drop < THRESHOLDS["stall_loss_drop"]
    dead_many = dead is not None and dead >= THRESHOLDS["dead_unit_fraction"]
    fired = flat or dead_many
    far = ratio is not None and (ratio < 1 / THRESHOLDS["lr_far_factor"] or ratio > THRESHOLDS["lr_far_factor"])
    evd = {"init_loss": init, "final_train_loss": final, "loss_drop": round(drop, 4), "configured_lr": lr,
           "suggested_lr": sug, "lr_over_suggested": ratio, "lr_far_off": far, "dead_unit_fraction": dead,
           "lr_finder": lr_probe.get("reason") or ("trusted" if sug else "did not run")}
    why = (f"train loss {init:.3f} → {final:.3f} ({drop:.1%} drop)" + (f"; LR {lr:g} vs suggested {sug:.3g}" if sug else
                                                                       "; LR finder inconclusive" if lr_probe else "")
           + (f"; {dead:.0%} dead ReLU units" if dead is not None else ""))
    strength = (INFRA_STRENGTH if flat else 0.0) + (dead / THRESHOLDS["dead_unit_fraction"] if dead_many else 0.0)
    f = Finding("convergence_stall", fired, 1.0 if flat else (dead or 0.0), why, evd,
                _t("stall_loss_drop", "lr_far_factor", "dead_unit_fraction"), strength=strength if fired else 0.0,
                cause="dead_units" if dead_many else "stall")
    if not fired:
        return f
    kind = "fix" if ev.get("failed_mode") else "accuracy"
    gain = 0.8 * (_gap_to_target(ev) or 10.0)
    cfg = ev["config"]
    if dead_many:  # units that never fire get no gradient: re-initialise, let negatives leak, keep a sane LR
        patch: dict[str, Any] = {"model.init": "kaiming"}
        if cfg["model"]["name"] in ("mlp", "cnn", "cnn1d"):
            patch["model.kwargs"] = {**cfg["model"]["kwargs"], "activation": "leaky_relu"}
        if sug and lr > THRESHOLDS["lr_far_factor"] * sug:  # an LR that large kills units: bring it into range
            patch["optimizer.lr"] = float(f"{sug:.3g}")
        f.recommendations.append(_rec("convergence_stall", "revive_units",
                                      "Re-initialise (He-normal, zero biases)" + (" with leaky ReLU" if "model.kwargs" in patch
                                                                                else "") +
                                      (f", LR {lr:g} → {patch['optimizer.lr']:.3g}" if "optimizer.lr" in patch else ""),
                                      patch, f"{dead:.0%} of ReLU units never fire, so they get no gradient: lowering the LR "
                                      "cannot revive them; a fresh init (and a leaky activation) can", gain, 1, kind,
                                      dead_fraction=dead, configured_lr=lr, suggested_lr=sug))
    elif sug:
        f.recommendations.append(_rec("convergence_stall", "lr_to_suggested", f"LR {lr:g} → {sug:.3g} (LR finder)",
                                      {"optimizer.lr": float(f"{sug:.3g}")},
                                      "the loss did not move: the LR is far from the range where this model learns",
                                      gain, 1, kind, configured_lr=lr, suggested_lr=sug))
    return f


def detect_data_quality(ev: dict[str, Any]) -> Finding:
    d = ev["probes"].get("data") or {}
    li = ev["probes"].get("label_issues") or {}
    if not d:
        return _quiet("data_quality", "data probe did not run")
    leaked = d.get("leaked_train_indices", [])
    dups = d.get("duplicate_train_indices", [])
    flagged = li.get("flagged", [])
    feats = d.get("features") or 0
    near_frac = d.get("near_duplicates_train_val", 0) / max(1, ev.get("val_size", 1))
    per_class = min(d.get("class_counts_train") or [0])
    reliable = per_class >= THRESHOLDS["min_per_class"]
    noise = _label_noise(ev)
    recall = (ev["probes"].get("per_class") or {})
    ratio = d.get("imbalance_ratio", 1.0)
    problems = {
        "leakage": len(leaked) > 0,
        "non_finite": d.get("non_finite_values", 0) > 0,
        "label_issues": reliable and noise >= THRESHOLDS["label_noise_rate"] and bool(flagged),
        "imbalance": reliable and ratio >= THRESHOLDS["imbalance_ratio"],
        "near_duplicates": near_frac >= THRESHOLDS["near_duplicate_fraction"],
        "constant_features": feats > 0 and d.get("constant_features", 0) / feats >= THRESHOLDS["constant_feature_fraction"],
    }
    ci = li.get("noise_rate_ci") or [0.0, 0.0]
    min_rec, mean_rec = recall.get("min_recall"), recall.get("mean_recall")
    minority_hurt = min_rec is not None and mean_rec is not None and min_rec < 0.8 * mean_rec
    strengths = {"leakage": INFRA_STRENGTH, "non_finite": INFRA_STRENGTH,
                 "label_issues": noise / max(THRESHOLDS["label_noise_rate"], (ci[1] - ci[0]) / 2 if len(ci) == 2 else 0.0),
                 "imbalance": (ratio / THRESHOLDS["imbalance_ratio"]) * (1.0 if minority_hurt else 0.5),
                 "near_duplicates": near_frac / THRESHOLDS["near_duplicate_fraction"] * 0.5,
                 "constant_features": 0.5}
    fired = any(problems.values())
    found = [k for k, v in problems.items() if v]
    cause = max(found, key=lambda k: strengths[k]) if found else ""
    leak_rows = sorted(set(leaked) | set(dups))
    evd = {"problems": found, "leaked_train_samples": len(leaked),
           "duplicates_within_train": len(dups), "label_issues_flagged": len(flagged),
           "label_probe": li.get("verdict", "did not run"), "label_noise_rate": li.get("noise_rate"),
           "label_noise_rate_ci": li.get("noise_rate_ci"), "label_probe_inconclusive": li.get("inconclusive"),
           "smallest_class_count": per_class, "imbalance_ratio": ratio,
           "val_recall_per_class": recall.get("recall"), "min_class_recall": min_rec, "mean_class_recall": mean_rec,
           "constant_features": d.get("constant_features"), "features": feats,
           "non_finite_values": d.get("non_finite_values"), "near_duplicate_val_fraction": round(near_frac, 4),
           "phase1_duplicates": d.get("duplicates"), "exclude_indices": leak_rows,
           "label_exclude_indices": sorted(set(flagged) | set(leak_rows)) if problems["label_issues"] else []}
    infra = problems["leakage"] or problems["non_finite"]
    f = Finding("data_quality", fired, 1.0 if infra else min(1.0, 4 * noise), "; ".join(found) or "no data problem found", evd,
                _t("label_noise_rate", "label_min_kappa", "label_max_shortfall", "near_duplicate_fraction", "imbalance_ratio",
                   "constant_feature_fraction", "min_per_class"),
                infrastructure=infra, strength=max((strengths[k] for k in found), default=0.0), cause=cause)
    if problems["leakage"] or dups:
        f.recommendations.append(_rec("data_quality", "exclude_leaked",
                                      f"Leave the {len(leak_rows)} leaked or duplicated training rows out (exclude.json)",
                                      {"data.exclude": ev.get("exclude_path", "exclude.json")},
                                      "copies of val/test rows inflate the val metric; only the copies are dropped", 0.0, 1,
                                      "fix" if problems["leakage"] else "accuracy", leaked=len(leaked), duplicates=len(dups)))
    if problems["label_issues"]:
        need = _headroom(ev)
        f.recommendations.append(_rec("data_quality", "exclude_mislabelled",
                                      f"Leave {len(flagged)} likely mislabelled training rows out (exclude_labels.json)",
                                      {"data.exclude": ev.get("label_exclude_path", "exclude_labels.json")},
                                      f"train labels disagree with a trusted model {noise:.1%} more often than val labels "
                                      "do; the rows it is surest about go", min(need, 100 * noise) * 0.5, 1,
                                      noise_rate=noise, noise_rate_ci=ci, flagged=len(flagged)))
        cfg = ev["config"]
        f.recommendations += _smoothing_rec("data_quality", cfg, "soft targets limit how far wrong labels pull",
                                            min(need, 100 * noise) * 0.2)
        f.recommendations += _dropout_rec("data_quality", cfg, "a regularised model memorises the wrong labels that "
                                          "exclusion misses", min(need, 100 * noise) * 0.2)
    if problems["imbalance"]:
        hurt = (mean_rec - min_rec) * 100 if minority_hurt else 0.0
        f.recommendations.append(_rec("data_quality", "class_weighting", "Class-weighted loss (balanced)",
                                      {"training.class_weighting": "balanced"},
                                      f"{ratio:.0f}:1 imbalance; the rarest class's val recall is "
                                      + (f"{min_rec:.2f} vs mean {mean_rec:.2f}" if min_rec is not None else "unknown"),
                                      0.2 * hurt, 1, imbalance_ratio=ratio, min_recall=min_rec))
        f.recommendations.append(_rec("data_quality", "balanced_sampler", "Balanced sampler (every class equally often)",
                                      {"data.sampler": "balanced"}, "rare classes seen as often as common ones",
                                      0.15 * hurt, 1, imbalance_ratio=ratio))
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
    strength = max((dw or 0.0) / THRESHOLDS["data_wait_fraction"] if problems["data_wait"] else 0.0,
                   (THRESHOLDS["gpu_util_percent"] / max(util, 1.0)) if problems["gpu_util"] else 0.0,
                   1.0 if problems["batch_small"] else 0.0)
    dominant = dw is not None and dw >= THRESHOLDS["dominant_data_wait"]
    f = Finding("resource_inefficiency", fired, max(dw or 0.0, 1 - (util or 100) / 100), why, evd,
                _t("data_wait_fraction", "dominant_data_wait", "gpu_util_percent", "gpu_mem_headroom"),
                strength=strength, cause="input_bound" if problems["data_wait"] else ("gpu_util" if problems["gpu_util"]
                                                                                     else "batch_small"))
    if not fired:
        return f
    cfg = ev["config"]
    if problems["data_wait"] and cfg["data"]["workers"] < 2:
        n = max(2, min(4, (os.cpu_count() or 2)))
        r = _rec("resource_inefficiency", "workers", f"DataLoader workers {cfg['data']['workers']} → {n}",
                 {"data.workers": n}, "load the next batches in parallel with the training step"
                 + (f" (data wait is {dw:.0%} of each epoch: the dominant cost)" if dominant else ""),
                 0.0, 1, "speed", data_wait_fraction=dw)
        r.forced = dominant
        f.recommendations.append(r)
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
    f = Finding("crashes", True, 1.0, f"{c['category']}: {c['message'][:200]}", c, {}, infrastructure=True,
                strength=INFRA_STRENGTH, cause=c["category"])
    f.recommendations.append(_rec("crashes", f"crash_{c['category']}", f"Fix the {c['category'].replace('_', ' ')}",
                                  c["patch"], c["fix"], _gap_to_target(ev) or 10.0, 1 if c["patch"] else 2, "fix"))
    return f


def detect_high_variance(ev: dict[str, Any]) -> Finding:
    sv = ev["probes"].get("seed_variance") or {}
    if not sv or "error" in sv or not ev.get("best"):
        return _quiet("high_variance", "no seed-variance measurement" + (f" ({sv['error']})" if "error" in sv else ""))
    if not _seed_probe_converged(ev):
        return _quiet("high_variance", f"not judged: the baseline was still climbing, or the seed probe's {sv.get('epochs')} "
                      f"epochs are fewer than the {ev['best']['epoch'] + 1} it needed: the spread measures convergence speed",
                      seed_range_points=round(sv["range"] * 100, 2))
    spread = sv["range"] * 100
    gap = _gap_to_target(ev)
    fired = gap > 0 and spread > max(gap, THRESHOLDS["min_noise_points"])
    strength = spread / max(gap, 2 * THRESHOLDS["min_noise_points"]) if fired else 0.0
    f = Finding("high_variance", fired, min(1.0, spread / 10), f"val accuracy over seeds {sv['seeds']}: "
                f"{', '.join(f'{a:.3f}' for a in sv['val_accuracy'])} (range {spread:.1f} points) vs gap to target "
                f"{gap:.1f} points", {"seed_range_points": round(spread, 2), "seed_std_points": round(sv["std"] * 100, 2),
                                       "gap_to_target_points": round(gap, 2), "epochs": sv["epochs"]}, {}, strength=strength)
    if fired:
        cfg = ev["config"]
        patch: dict[str, Any] = {"schedule.name": "cosine"}
        sug, lr = _suggested_lr(ev), cfg["optimizer"]["lr"]
        if lr > 0:
            patch["optimizer.lr"] = float(f"{min(lr * 0.5, sug) if sug and sug < lr else lr * 0.5:.3g}")
        f.recommendations.append(_rec("high_variance", "stabilise", f"LR {lr:g} → {patch.get('optimizer.lr', lr):g} "
                                      "with a cosine decay", patch,
                                      "a decaying, smaller LR ends closer to the same minimum from every seed; judge "
                                      "changes on ≥ 3 seeds (Phase 4 does)", 0.5 * spread, 1, seed_range=spread))
        bs = cfg["data"]["batch_size"]
        f.recommendations.append(_rec("high_variance", "bigger_batch", f"Batch size {bs} → {2 * bs}", {"data.batch_size": 2 * bs},
                                      "larger batches average out gradient noise", 0.2 * spread, 1))
        kw = dict(cfg["model"]["kwargs"])
        if cfg["model"]["name"] == "mlp":  # wider nets have fewer poor minima for a seed to land in
            hidden = [min(2048, max(4 * w, 32)) for w in kw.get("hidden", [128])]
            f.recommendations.append(_rec("high_variance", "capacity", f"Wider MLP: hidden {hidden}",
                                          {"model.kwargs": {**kw, "hidden": hidden}},
                                          "seeds land in different minima; an over-parameterised net has fewer poor ones",
                                          0.5 * spread, 1))
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
