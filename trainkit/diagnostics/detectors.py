"""One detector per seed diagnostic. Each is a pure function of the evidence dict and returns a
:class:`Finding` saying whether it fired, how strongly, on which numbers, and what to change.

The evidence dict (built by :func:`trainkit.diagnostics.gather_evidence`) holds the baseline's
``history`` (metrics.jsonl rows), ``status``, ``best``, ``init_loss``, ``nonfinite``, ``crash``,
``target``, ``num_classes``, ``input_shape``, the ``config`` as a dict, and the ``probes``.
Thresholds live in :data:`THRESHOLDS`; ``docs/diagnostics/<name>.md`` explains each.
"""

from __future__ import annotations

from typing import Any, Callable

from trainkit.diagnostics.data_quality import detect_data_quality
from trainkit.diagnostics.reference import NAMES, detect_reference_gap
from trainkit.diagnostics.findings import (
    THRESHOLDS,
    Finding,
    Recommendation,
    _dropout_rec,
    _family_recs,
    _gap_to_target,
    _headroom,
    _is_image,
    _label_noise,
    _learned,
    _noise_points,
    _quiet,
    _recommend,
    _seed_probe_converged,
    _smoothing_rec,
    _suggested_lr,
    _tabm_wider_rec,
    _thresholds,
)
from trainkit.diagnostics.run_detectors import (
    classify_crash,
    detect_convergence_stall,
    detect_crashes,
    detect_nan_loss,
    detect_resource_inefficiency,
)

__all__ = ["Finding", "Recommendation", "THRESHOLDS", "DETECTORS", "detect_all", "classify_crash"]

# ----------------------------------------------------------------------------- detectors


def detect_overfitting(evidence: dict[str, Any]) -> Finding:
    h = evidence.get("history") or []
    if not h or evidence["status"] in ("crashed", "nonfinite"):
        return _quiet("overfitting", "no completed training to judge")
    last = h[-1]
    gap = (last["train_accuracy"] - last["val_accuracy"]) * 100
    explained = 100 * _label_noise(evidence)  # memorising wrong labels shows as a gap of about the noise rate
    resid = gap - explained
    i_min = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    rise = last["val_loss"] / h[i_min]["val_loss"] - 1 if h[i_min]["val_loss"] > 0 else 0.0
    train_falling = last["train_loss"] < h[i_min]["train_loss"]
    fired = resid >= THRESHOLDS["overfit_gap_points"] or (
        resid >= THRESHOLDS["overfit_gap_with_rise"] and rise >= THRESHOLDS["val_loss_rise"] and train_falling
    )
    strength = max(0.0, resid) / max(THRESHOLDS["overfit_gap_points"], _noise_points(evidence))
    evd = {
        "train_accuracy": last["train_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "gap_points": round(gap, 2),
        "gap_explained_by_label_noise_points": round(explained, 2),
        "val_loss_min_epoch": h[i_min]["epoch"] + 1,
        "val_loss_rise": round(rise, 4),
        "train_loss_still_falling": train_falling,
        "noise_points": _noise_points(evidence),
    }
    f = Finding(
        "overfitting",
        fired,
        min(1.0, gap / 20),
        f"train {last['train_accuracy']:.3f} vs val "
        f"{last['val_accuracy']:.3f} (gap {gap:.1f} points"
        + (f", {explained:.1f} explained by label noise" if explained else "")
        + f"); val loss {rise:+.0%} from its minimum at epoch {h[i_min]['epoch'] + 1}",
        evd,
        _thresholds("overfit_gap_points", "overfit_gap_with_rise", "val_loss_rise"),
        strength=strength if fired else 0.0,
    )
    if not fired:
        return f
    f.recommendations += _overfit_recs(evidence, resid, gap)
    return f


def _overfit_recs(evidence: dict[str, Any], resid: float, gap: float) -> list[Recommendation]:
    """Overfitting's moves: weight decay, dropout, augmentation, label smoothing, another model family;
    each expected to win a share of the gap that label noise does not explain."""
    recs: list[Recommendation] = []
    cfg = evidence["config"]
    room = min(
        max(resid, 0.0), _headroom(evidence)
    )  # what closing the gap can win, not capped by the target's distance
    if cfg["optimizer"]["name"] == "sgd":
        recs.append(
            _recommend(
                "overfitting",
                "weight_decay",
                "Add weight decay 5e-4",
                {"optimizer.weight_decay": 5e-4},
                "L2 regularisation shrinks the train/val gap",
                0.15 * room,
                1,
                gap_points=gap,
            )
        )
    else:
        recs.append(
            _recommend(
                "overfitting",
                "weight_decay",
                "AdamW with decoupled weight decay 0.05",
                {"optimizer.name": "adamw", "optimizer.weight_decay": 0.05},
                "decoupled weight decay regularises without fighting Adam's scaling",
                0.15 * room,
                1,
                gap_points=gap,
            )
        )
    recs += _dropout_rec(
        "overfitting", cfg, "dropout stops co-adapted features that memorise the training set", 0.25 * room
    )
    if cfg["data"]["augment"] == "none":
        shape = evidence.get("input_shape") or []
        big_image = _is_image(evidence) and min(shape[1:]) >= 16
        signal = len(shape) == 2 and shape[1] >= 16
        kind = ("flip_crop" if shape[0] == 3 else "crop") if big_image else ("crop" if signal else "noise")
        recs.append(
            _recommend(
                "overfitting",
                "augment",
                f"Augment: {kind}" + (" (random shifts)" if signal else ""),
                {"data.augment": kind},
                "more effective training data at no labelling cost"
                + ("" if big_image or signal else " (small inputs: Gaussian noise; crops would cut too much)"),
                (0.3 if big_image or signal else 0.1) * room,
                1,
                input_shape=shape,
            )
        )
    recs += _smoothing_rec("overfitting", cfg, "softer targets discourage over-confident fits", 0.1 * room)
    recs += _family_recs("overfitting", evidence, 0.3 * room)
    return recs


def detect_underfitting(evidence: dict[str, Any]) -> Finding:
    h = evidence.get("history") or []
    if not h or evidence["status"] in ("crashed", "nonfinite") or not _learned(evidence):
        return _quiet("underfitting", "no learning to judge (see convergence_stall / nan_loss / crashes)")
    best_val = evidence["best"]["val_accuracy"]
    train_acc = max(r["train_accuracy"] for r in h)
    noise = _label_noise(evidence)  # wrong labels cap train accuracy at about 1 − noise: judge the fit against that
    train_adj = min(1.0, train_acc / (1 - noise)) if noise < 1 else train_acc
    gap = (h[-1]["train_accuracy"] - h[-1]["val_accuracy"]) * 100
    ceiling = min(evidence["target"] + THRESHOLDS["underfit_train_margin"], 0.995)  # a model at ~100% on train fits it
    shortfall = (ceiling - train_adj) * 100
    fired = (
        best_val < evidence["target"]
        and gap < THRESHOLDS["overfit_gap_points"]
        and shortfall >= max(100 * THRESHOLDS["underfit_train_margin"], _noise_points(evidence))
    )  # short by more than the noise
    sug0, lr0 = _suggested_lr(evidence), evidence["config"]["optimizer"]["lr"]
    spread = 100 * float((evidence["probes"].get("seed_variance") or {}).get("range") or 0.0)
    if fired and sug0 and lr0 > 3 * sug0 and spread > 2 * THRESHOLDS["min_noise_points"]:
        return _quiet(
            "underfitting",
            f"train accuracy {train_acc:.3f} is low, but the LR {lr0:g} is {lr0 / sug0:.0f}× the range "
            f"test's suggestion and seeds spread {spread:.1f} points: unstable training, not too little capacity "
            "(see high_variance)",
            best_train_accuracy=train_acc,
            configured_lr=lr0,
            suggested_lr=sug0,
        )
    best_epoch = evidence["best"]["epoch"]
    still_improving = best_epoch >= len(h) - 2
    evd = {
        "best_val_accuracy": best_val,
        "best_train_accuracy": train_acc,
        "train_accuracy_noise_adjusted": round(train_adj, 4),
        "label_noise_rate": noise,
        "target": evidence["target"],
        "train_ceiling": round(ceiling, 4),
        "still_improving_at_end": still_improving,
        "epochs_run": len(h),
        "noise_points": _noise_points(evidence),
    }
    f = Finding(
        "underfitting",
        fired,
        min(1.0, _gap_to_target(evidence) / 20),
        f"best val {best_val:.3f} < target {evidence['target']}; train accuracy only {train_acc:.3f}"
        if fired
        else f"best val {best_val:.3f}, train {train_acc:.3f} (target {evidence['target']}): not underfitting",
        evd,
        _thresholds("underfit_train_margin", "learning_loss_drop"),
        strength=shortfall / max(2 * THRESHOLDS["underfit_train_margin"] * 100, _noise_points(evidence))
        if fired
        else 0.0,
    )
    if not fired:
        return f
    f.recommendations += _underfit_recs(evidence, still_improving, best_epoch)
    return f


def _underfit_recs(evidence: dict[str, Any], still_improving: bool, best_epoch: int) -> list[Recommendation]:
    """Underfitting's moves: a larger LR (the finder's), longer training, capacity, another model
    family, a schedule, less regularisation; each expected to win a share of the headroom."""
    cfg = evidence["config"]
    need = _headroom(evidence)  # headroom to a perfect score: what better fitting can win
    recs: list[Recommendation] = []
    sug, lr = _suggested_lr(evidence), cfg["optimizer"]["lr"]
    if sug and sug > 2 * lr:
        recs.append(
            _recommend(
                "underfitting",
                "lr_up",
                f"Raise LR {lr:g} → {sug:.3g} (LR finder)",
                {"optimizer.lr": float(f"{sug:.3g}")},
                "the LR range test shows a much larger stable LR",
                0.5 * need,
                1,
                configured_lr=lr,
                suggested_lr=sug,
            )
        )
    if still_improving:
        recs.append(
            _recommend(
                "underfitting",
                "longer",
                f"Train longer: {cfg['training']['epochs']} → {2 * cfg['training']['epochs']} epochs",
                {"training.epochs": 2 * cfg["training"]["epochs"]},
                "val accuracy was still improving at the last epoch",
                0.25 * need,
                2,
                best_epoch=best_epoch + 1,
            )
        )
    kw = dict(cfg["model"]["kwargs"])
    recs += _capacity_recs(cfg["model"]["name"], kw, need)
    recs += _family_recs("underfitting", evidence, 0.4 * need)
    if cfg["schedule"]["name"] == "constant":
        recs.append(
            _recommend(
                "underfitting",
                "schedule",
                "Cosine schedule with 1 warmup epoch",
                {"schedule.name": "cosine", "schedule.warmup_epochs": 1.0},
                "a decaying LR settles into a better minimum",
                0.1 * need,
                1,
            )
        )
    if cfg["optimizer"]["weight_decay"] > 0 or float(kw.get("dropout", 0.0)) > 0:
        patch = {"optimizer.weight_decay": 0.0}
        if float(kw.get("dropout", 0.0)) > 0 and cfg["model"]["name"] in ("mlp", "cnn", "cnn1d"):
            patch["model.kwargs"] = {**kw, "dropout": 0.0}
        recs.append(
            _recommend(
                "underfitting",
                "less_decay",
                "Remove weight decay and dropout",
                patch,
                "regularisation is the wrong direction when train accuracy is low",
                0.15 * need,
                1,
            )
        )
    return recs


def _capacity_recs(name: str, kw: dict[str, Any], need: float) -> list[Recommendation]:
    """More capacity for the model family ``name`` (kwargs ``kw``): an MLP's hidden widths, TabM's
    blocks, a CNN's channels, or advice for a user's builder."""
    recs: list[Recommendation] = []
    if name == "mlp":
        hidden = [min(2048, 2 * w) for w in kw.get("hidden", [128])]
        if len(hidden) < 2:
            hidden = hidden + [hidden[-1] if hidden else 128]
        recs.append(
            _recommend(
                "underfitting",
                "capacity",
                f"Bigger MLP: hidden {hidden}",
                {"model.kwargs": {**kw, "hidden": hidden}},
                "more capacity to fit the training set",
                0.3 * need,
                1,
                current_hidden=kw.get("hidden", [128]),
            )
        )
    elif name == "tabm":
        recs += _tabm_wider_rec("underfitting", "capacity", kw, "more capacity to fit the training set", 0.3 * need)
    elif name in ("cnn", "cnn1d"):
        ch = [min(512, 2 * c) for c in kw.get("channels", [32, 64])]
        recs.append(
            _recommend(
                "underfitting",
                "capacity",
                f"Wider {name}: channels {ch}",
                {"model.kwargs": {**kw, "channels": ch}},
                "more capacity to fit the training set",
                0.25 * need,
                1,
            )
        )
    elif ":" in name:
        recs.append(
            _recommend(
                "underfitting",
                "capacity_advice",
                f"Your model {name}: more capacity",
                None,
                "train accuracy is low: widen or deepen the layers of your model builder "
                "(or expose a width argument in model.kwargs so trainkit can tune it)",
                0.25 * need,
                3,
                "advice",
            )
        )
    return recs


def detect_high_variance(evidence: dict[str, Any]) -> Finding:
    sv = evidence["probes"].get("seed_variance") or {}
    if not sv or "error" in sv or not evidence.get("best"):
        return _quiet("high_variance", "no seed-variance measurement" + (f" ({sv['error']})" if "error" in sv else ""))
    if not _seed_probe_converged(evidence):
        return _quiet(
            "high_variance",
            f"not judged: the baseline was still climbing, or the seed probe's {sv.get('epochs')} "
            f"epochs are fewer than the {evidence['best']['epoch'] + 1} it needed: the spread measures convergence "
            "speed",
            seed_range_points=round(sv["range"] * 100, 2),
        )
    spread = sv["range"] * 100
    gap = _gap_to_target(evidence)
    fired = gap > 0 and spread > max(gap, THRESHOLDS["min_noise_points"])
    strength = spread / max(gap, 2 * THRESHOLDS["min_noise_points"]) if fired else 0.0
    f = Finding(
        "high_variance",
        fired,
        min(1.0, spread / 10),
        f"val accuracy over seeds {sv['seeds']}: "
        f"{', '.join(f'{a:.3f}' for a in sv['val_accuracy'])} (range {spread:.1f} points) vs gap to target "
        f"{gap:.1f} points",
        {
            "seed_range_points": round(spread, 2),
            "seed_std_points": round(sv["std"] * 100, 2),
            "gap_to_target_points": round(gap, 2),
            "epochs": sv["epochs"],
        },
        {},
        strength=strength,
    )
    if fired:
        cfg = evidence["config"]
        patch: dict[str, Any] = {"schedule.name": "cosine"}
        sug, lr = _suggested_lr(evidence), cfg["optimizer"]["lr"]
        if lr > 0:
            patch["optimizer.lr"] = float(f"{min(lr * 0.5, sug) if sug and sug < lr else lr * 0.5:.3g}")
        f.recommendations.append(
            _recommend(
                "high_variance",
                "stabilise",
                f"LR {lr:g} → {patch.get('optimizer.lr', lr):g} with a cosine decay",
                patch,
                "a decaying, smaller LR ends closer to the same minimum from every seed; judge "
                "changes on ≥ 3 seeds (Phase 4 does)",
                0.5 * spread,
                1,
                seed_range=spread,
            )
        )
        bs = cfg["data"]["batch_size"]
        f.recommendations.append(
            _recommend(
                "high_variance",
                "bigger_batch",
                f"Batch size {bs} → {2 * bs}",
                {"data.batch_size": 2 * bs},
                "larger batches average out gradient noise",
                0.2 * spread,
                1,
            )
        )
        kw = dict(cfg["model"]["kwargs"])
        if cfg["model"]["name"] == "mlp":  # wider nets have fewer poor minima for a seed to land in
            hidden = [min(2048, max(4 * w, 32)) for w in kw.get("hidden", [128])]
            f.recommendations.append(
                _recommend(
                    "high_variance",
                    "capacity",
                    f"Wider MLP: hidden {hidden}",
                    {"model.kwargs": {**kw, "hidden": hidden}},
                    "seeds land in different minima; an over-parameterised net has fewer poor ones",
                    0.5 * spread,
                    1,
                )
            )
    return f


DETECTORS: dict[str, Callable[[dict[str, Any]], Finding]] = {
    "overfitting": detect_overfitting,
    "underfitting": detect_underfitting,
    "nan_loss": detect_nan_loss,
    "convergence_stall": detect_convergence_stall,
    "data_quality": detect_data_quality,
    "resource_inefficiency": detect_resource_inefficiency,
    "crashes": detect_crashes,
    "high_variance": detect_high_variance,
    "reference_gap": detect_reference_gap,
}


SHARED_WITH_REFERENCE = (
    "imbalance",
    "label_issues",
    "near_duplicates",
    "constant_features",
    "unseen_categories",
    "leaky_column",
)  # properties of the rows: the reference models are fitted on the same ones


def shared_with_reference(f: Finding) -> bool:
    """A fired data finding whose every problem the reference models share (the same rows, the same
    imbalance, the same label noise, the same features): it cannot explain why they do better."""
    problems = f.evidence.get("problems") or []
    return (
        f.name == "data_quality"
        and f.fired
        and not f.infrastructure
        and bool(problems)
        and all(p in SHARED_WITH_REFERENCE for p in problems)
    )


def rows_ceiling(findings: list[Finding]) -> Finding | None:
    """The reference gap when boosted trees stop at the network's level short of the target (its
    ``level_short_of_target``): the rows cap every model. None otherwise."""
    return next((f for f in findings if f.name == "reference_gap" and f.evidence.get("level_short_of_target")), None)


def _shared_underfit(f: Finding, level: Finding) -> Finding:
    """Underfitting is a claim about capacity: the network fits the train rows too little to reach
    the target. Boosted trees fitted on the same rows have capacity to spare, so when they stop
    where the network stops, short of the target, the rows cap every model (noise in the labels
    that no probe can tell from signal, features that do not carry the answer): a cause the
    reference shares, quiet, with its numbers kept."""
    e = level.evidence
    top = NAMES.get(e["reference"], e["reference"])
    return Finding(
        f.name,
        False,
        0.0,
        f"{f.summary}; but the {top}, fitted on the same rows, stops at the same level ({e['reference_val_score']:.3f} "
        f"against the network's {e['network_val_score']:.3f}, within the noise of {e['noise_points']:.1f} points): "
        "the rows cap both short of the target, not the network's capacity",
        {**f.evidence, "shared_with_reference": True, "strength_before_control": round(f.strength, 3)},
        f.thresholds,
    )


def _capped_overfit(f: Finding, level: Finding) -> Finding:
    """Overfitting is a claim that closing the train/val gap raises val. Boosted trees fitted on the
    same rows stop at the network's level (within the noise) short of the target, so the rows cap
    every model near that level: closing the gap is expected to win at most up to the trees' level
    plus the noise, not a share of the whole gap. The finding still fires (the network does
    overfit); its moves' gains and its strength are scaled to that room."""
    e = level.evidence
    room = max(0.0, 100 * e["reference_val_score"] + e["noise_points"] - 100 * e["network_val_score"])
    gap = max(0.0, f.evidence["gap_points"] - f.evidence["gap_explained_by_label_noise_points"])
    if gap <= room:
        return f
    scale = room / gap
    top = NAMES.get(e["reference"], e["reference"])
    for r in f.recommendations:
        if r.kind == "accuracy":
            r.expected_gain_points = round(r.expected_gain_points * scale, 2)
    f.evidence = {
        **f.evidence,
        "capped_by_reference": True,
        "room_points": round(room, 2),
        "strength_before_control": round(f.strength, 3),
    }
    f.strength = round(f.strength * scale, 3)
    f.summary += (
        f"; but the {top}, fitted on the same rows, stops at the same level ({e['reference_val_score']:.3f} against "
        f"the network's {e['network_val_score']:.3f}, within the noise of {e['noise_points']:.1f} points): the rows "
        f"cap both short of the target, so closing the gap is expected to win at most {room:.1f} points, not a "
        "share of the whole gap"
    )
    return f


def detect_all(evidence: dict[str, Any]) -> list[Finding]:
    """Run every detector; a detector that trips over missing evidence reports itself as not run.

    The reference is a control. When it beats the network beyond the noise, a cause it shares (a
    data finding about the rows both were fitted on) cannot explain the gap: the reference gap is
    the primary finding (the model family or its capacity), and the shared finding stays as
    evidence with no strength of its own. A cause of the network's own (under- or overfitting, a
    stall, seed variance, infrastructure) comes first, and the gap is kept as that cause's symptom
    (its numbers, its summary) without firing or adding moves; a shared finding has no strength
    then either (underfitting on a table offers TabM itself, :func:`findings._family_recs`). Underfitting
    itself is shared when boosted trees fitted on the same rows stop at the network's level short of
    the target (:func:`_shared_underfit`), and overfitting's gains are capped then at the room the
    trees' level and the noise leave (:func:`_capped_overfit`)."""
    out = []
    for name, fn in DETECTORS.items():
        try:
            out.append(fn(evidence))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            out.append(_quiet(name, f"could not evaluate: {type(exc).__name__}: {exc}"))
    level = rows_ceiling(out)
    for i, f in enumerate(out):
        if level is not None and f.name == "underfitting" and f.fired:
            out[i] = _shared_underfit(f, level)
        elif level is not None and f.name == "overfitting" and f.fired:
            out[i] = _capped_overfit(f, level)
    ref = next((f for f in out if f.name == "reference_gap" and f.fired), None)
    causes = [f.name for f in out if f.fired and f.name != "reference_gap" and not (ref and shared_with_reference(f))]
    for i, f in enumerate(out):
        if f is ref and causes:
            out[i] = Finding(
                f.name,
                False,
                0.0,
                f"{f.summary}; explained by {', '.join(causes)}, which comes first",
                f.evidence,
                f.thresholds,
            )
        elif ref is not None and shared_with_reference(f):
            f.evidence = {**f.evidence, "shared_with_reference": True, "strength_before_control": round(f.strength, 3)}
            top = ref.evidence["reference"]
            f.summary += (
                f"; the {NAMES.get(top, top)} is fitted on the same rows and is still "
                f"{ref.evidence['gap_points']:.1f} points ahead, so this does not explain the gap"
            )
            f.strength = 0.0
    return out
