"""Phase 3 diagnostics: gather the baseline's evidence, run the probes, run the detectors, turn
their recommendations into ranked config patches.

    ev = gather_evidence(run_dir, cfg)            # baseline history, crash, non-finite info
    ev["probes"] = run_probes(cfg, bundle, ev)    # cheap experiments, each returning numbers
    findings = detect_all(ev)                     # one Finding per seed diagnostic
    plan = plan_recommendations(findings, ev)     # ranked, 3-5 selected, fixes kept apart
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainkit._io import read_json, read_jsonl
from trainkit.config import TrainkitConfig, config_to_dict
from trainkit.diagnostics.detectors import (
    DETECTORS,
    THRESHOLDS,
    Finding,
    Recommendation,
    classify_crash,
    detect_all,
    rows_ceiling,
)
from trainkit.diagnostics.findings import STANDARD_LR, best_score, patch_already_in
from trainkit.metrics import row_score
from trainkit.run import (
    METRICS,
    PhaseFolder,
    CRASH_JSON,
    EXCLUDE_JSON,
)
from trainkit.diagnostics.probe_runner import fill_probe_evidence, run_probes

__all__ = [
    "gather_evidence",
    "skill_view",
    "skill_probes",
    "in_metric_terms",
    "run_probes",
    "fill_probe_evidence",
    "detect_all",
    "plan_recommendations",
    "combine_patches",
    "DETECTORS",
    "THRESHOLDS",
    "Finding",
    "Recommendation",
    "classify_crash",
    "primary_cause",
    "patch_already_in",
    "move_family",
]


def gather_evidence(source_dir: str | Path, cfg: TrainkitConfig, failed_mode: bool = False) -> dict[str, Any]:
    """The evidence of one training folder (a Phase 2 attempt or a Phase 4 run): history, status,
    best epoch, loss at init, the non-finite record, the crash record."""
    d = Path(source_dir)
    summary = PhaseFolder(d).train_summary() or {}
    if summary:
        history = summary.get("history") or []
    else:  # crashed or killed: whatever epochs were logged
        rows = read_jsonl(d / METRICS) if (d / METRICS).is_file() else []
        history = [r for r in rows if "train_loss" in r and "val_loss" in r]
    crash = read_json(d / CRASH_JSON) if (d / CRASH_JSON).is_file() else None
    status = "crashed" if crash and not summary else summary.get("status", "crashed" if crash else "unknown")
    init = summary.get("init_loss")
    return {
        "source_dir": str(d),
        "status": status,
        "history": history,
        "best": summary.get("best"),
        "init_loss": init if init is None or math.isfinite(init) else None,
        "nonfinite": summary.get("nonfinite"),
        "crash": crash,
        "target": cfg.target.value,
        "config": config_to_dict(cfg),
        "device": summary.get("device", "cpu"),
        "failed_mode": failed_mode,
        "exclude_path": EXCLUDE_JSON,
        "probes": {},
    }


def skill_view(ev: dict[str, Any], metric: str, scale: float) -> dict[str, Any]:
    """A regression's evidence as the detectors read it: every score of the target metric on the
    skill scale (:func:`trainkit.metrics.skill`, higher is better, 1 perfect, 0 the train mean's
    prediction), written into the fields a class metric fills (``train_accuracy``,
    ``val_accuracy``, ``val_score``; the best epoch, the target, the seed-variance and reference
    probes). So one set of detectors judges both directions; ``ev["skill"]`` says how it was made.
    The raw rows are kept as ``raw_history``."""
    from trainkit.metrics import skill

    def row(h: dict[str, Any]) -> dict[str, Any]:
        v = skill(metric, h.get("val_score"), scale)
        return dict(h, train_accuracy=skill(metric, h.get("train_score"), scale), val_accuracy=v, val_score=v)

    ev = dict(ev, raw_history=ev.get("history"), raw_best=ev.get("best"))
    ev["history"] = [row(h) for h in ev.get("history") or []]
    ev["best"] = row(ev["best"]) if ev.get("best") else None
    ev["target"] = skill(metric, ev["target"], scale)
    ev["skill"] = {
        "metric": metric,
        "scale": scale,
        "what": (f"1 − {metric} / {scale:.4g} ({metric} of predicting the train mean on val)")
        if metric in ("rmse", "mae")
        else "r2",
    }
    return ev


def in_metric_terms(findings: list[Finding], ev: dict[str, Any]) -> None:
    """A regression's fit findings say their numbers in the metric itself too (the train/val gap in
    rmse, the label's units), beside the skill scale they were judged on."""
    from trainkit.metrics import LABELS

    raw, sk = ev.get("raw_history") or [], ev.get("skill") or {}
    if not raw or not sk:
        return
    m, last = sk["metric"], raw[-1]
    best = ev.get("raw_best") or {}
    for f in findings:  # the detectors' words for a class metric, said as what the numbers are here
        f.summary = f.summary.replace("accuracy", "skill")
        for r in f.recommendations:
            r.rationale = r.rationale.replace("accuracy", "skill")
        if (
            f.name in ("overfitting", "underfitting", "high_variance", "reference_gap")
            and last.get("train_score") is not None
        ):
            f.summary += (
                f" [in {LABELS[m]}: train {last['train_score']:.4g} vs val {last['val_score']:.4g} at the last epoch"
                + (f", best val {best['val_score']:.4g}" if best.get("val_score") is not None else "")
                + "]"
            )
            f.evidence.update({f"train_{m}": last["train_score"], f"val_{m}": last["val_score"]})


def skill_probes(probes: dict[str, Any], metric: str, scale: float) -> dict[str, Any]:
    """The seed-variance and reference probes of a regression on the skill scale (:func:`skill_view`)."""
    from trainkit.metrics import higher_is_better, skill

    out = dict(probes)
    sv = probes.get("seed_variance") or {}
    if "mean" in sv and not higher_is_better(metric):
        vals = [skill(metric, v, scale) for v in sv.get("val_accuracy") or []]
        out["seed_variance"] = dict(
            sv,
            raw=sv,
            val_accuracy=vals,
            mean=skill(metric, sv["mean"], scale),
            std=sv["std"] / scale,
            range=sv["range"] / scale,
        )
    ref = probes.get("reference") or {}
    if "models" in ref:
        models = {
            k: dict(
                m, val_score=skill(metric, m["val_score"], scale), val_accuracy=skill(metric, m["val_score"], scale)
            )
            for k, m in ref["models"].items()
        }
        net = skill(metric, ref.get("network_val_score"), scale)
        top = models[ref["best"]]["val_score"]
        out["reference"] = dict(
            ref,
            models=models,
            best_val_score=top,
            network_val_score=net,
            raw=ref,
            gap_points=None if net is None else round(100 * (top - net), 2),
        )
    return out


def _generic(ev: dict[str, Any], reach: float | None = None) -> list[Recommendation]:
    """Low-gain, always-applicable moves used to fill the selection up to three, each expecting a
    share of the gap to the target, or of ``reach`` (points) when that is smaller: when boosted
    trees fitted on the same rows stop at the network's level short of the target, the rows cap
    every model and a training move can expect at most the noise around that level."""
    cfg = ev["config"]
    need = max(0.0, (ev["target"] - best_score(ev)) * 100)
    if reach is not None:
        need = min(need, reach)
    sug = (ev["probes"].get("lr_range") or {}).get("suggested_lr")
    lr = cfg["optimizer"]["lr"]
    recs = []
    if sug and (sug > 2 * lr or sug < lr / 2):
        recs.append(
            Recommendation(
                "lr_to_finder",
                f"LR {lr:g} → {sug:.3g} (LR finder)",
                {"optimizer.lr": float(f"{sug:.3g}")},
                "the LR range test suggests a different LR",
                round(0.2 * need, 2),
                1,
                {"suggested_lr": sug},
                "accuracy",
                "generic",
            )
        )
    if cfg["schedule"]["name"] == "constant":
        recs.append(
            Recommendation(
                "schedule",
                "Cosine schedule with 1 warmup epoch",
                {"schedule.name": "cosine", "schedule.warmup_epochs": 1.0},
                "decaying the LR usually settles into a better minimum",
                round(0.1 * need, 2),
                1,
                {},
                "accuracy",
                "generic",
            )
        )
    recs.append(_longer(ev, need))
    std = STANDARD_LR[cfg["optimizer"]["name"]]
    if (
        std / 30 <= lr <= std * 30
    ):  # a local LR search around a plausible LR, a factor of 3 either way (never of an absurd one)
        for rid, f, why in (
            ("lr_x3", 3.0, "a larger step may reach a better region"),
            ("lr_div3", 1 / 3, "a smaller step may settle into a sharper minimum"),
        ):
            recs.append(
                Recommendation(
                    rid,
                    f"LR {lr:g} → {lr * f:.3g}",
                    {"optimizer.lr": float(f"{lr * f:.3g}")},
                    why,
                    round(0.05 * need, 2),
                    1,
                    {},
                    "accuracy",
                    "generic",
                )
            )
    return recs


def _longer(ev: dict[str, Any], need: float) -> Recommendation:
    """Train longer (twice the epochs, twice the patience). Its expected gain is the recent rate of
    val-accuracy improvement when the run was still improving as it stopped (val loss at or near
    its minimum in the last epochs), else a token amount."""
    cfg, h = ev["config"], ev.get("history") or []
    epochs, patience = cfg["training"]["epochs"], cfg["training"]["patience"]
    patch: dict[str, Any] = {"training.epochs": 2 * epochs}
    if patience is not None:
        patch["training.patience"] = max(10, 2 * patience)
    i_min = min(range(len(h)), key=lambda i: h[i]["val_loss"]) if h else 0
    improving = len(h) >= 4 and i_min >= len(h) - 2
    k = len(h) // 2  # over the second half of the run: the best accuracy reached against where the half began
    rate = 100 * (max(row_score(r) for r in h[-k:]) - row_score(h[-k - 1])) / k if improving and k > 0 else 0.0
    headroom = max(0.0, (1 - best_score(ev)) * 100)
    gain = min(0.5 * headroom, 0.25 * max(0.0, rate) * len(h)) if improving else 0.05 * need
    why = (
        f"val loss was still falling when training stopped (+{rate:.1f} points of val accuracy per epoch lately)"
        if improving
        else "more steps at the same settings"
    )
    return Recommendation(
        "longer",
        f"Train longer: {epochs} → {2 * epochs} epochs"
        + (f", patience {patience} → {patch['training.patience']}" if "training.patience" in patch else ""),
        patch,
        why,
        round(gain, 2),
        1 if improving else 2,
        {"still_improving": improving, "recent_rate_points_per_epoch": round(rate, 2)},
        "accuracy",
        "generic",
    )


FAMILIES = (
    ("model.", "architecture"),
    ("optimizer.", "optimization"),
    ("schedule.", "optimization"),
    ("training.epochs", "length"),
    ("training.patience", "length"),
    ("data.exclude", "data"),
    ("data.", "sampling"),
    ("training.class_weighting", "sampling"),
    ("training.label_smoothing", "regularization"),
    ("training.grad_clip", "optimization"),
)


def move_family(patch: dict[str, Any]) -> str:
    """What a move changes, by the first field its patch sets (in :data:`FAMILIES` order):
    architecture (``model.*``, dropout inside the model included), optimization (optimizer,
    schedule, clipping), length (epochs, patience), sampling (the data's batches, class weights),
    data (excluded rows), regularization (weight decay alone, label smoothing); ``other`` else."""
    keys = sorted(patch)
    if keys == ["optimizer.weight_decay"]:
        return "regularization"
    for prefix, family in FAMILIES:
        if any(k.startswith(prefix) for k in keys):
            return family
    return "other"


def combine_patches(recs: list[dict[str, Any]] | list[Recommendation]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Merge recommendation patches in rank order: ``model.kwargs`` dicts merge (unless one
    recommendation changes ``model.name``: then only its kwargs count); for any other key the
    higher-ranked recommendation wins. Returns (patch, provenance rows per field)."""
    patch: dict[str, Any] = {}
    prov: list[dict[str, Any]] = []
    rows = [r if isinstance(r, dict) else _rec_dict(r) for r in recs]
    family = next((r for r in rows if "model.name" in (r.get("patch") or {})), None)
    for r in rows:
        for key, value in (r.get("patch") or {}).items():
            if key == "model.kwargs" and family is not None and r is not family:
                continue  # kwargs written for the old model family do not fit the new one
            if key in patch and isinstance(patch[key], dict) and isinstance(value, dict):
                new = {k: v for k, v in value.items() if patch[key].get(k) != v}
                patch[key] = {**value, **patch[key]}
                for k in new:
                    prov.append({"field": f"{key}.{k}", "recommendation": r["id"], "finding": r.get("finding")})
                continue
            if key in patch:
                continue
            patch[key] = value
            prov.append({"field": key, "recommendation": r["id"], "finding": r.get("finding")})
    return patch, prov


def _rec_dict(r: Recommendation) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(r)
    d["score"] = round(r.score, 3)
    return d


def plan_recommendations(findings: list[Finding], ev: dict[str, Any], lo: int = 3, hi: int = 5) -> dict[str, Any]:
    """Rank every fired finding's recommendations by expected gain / effort; select 3-5 actionable
    ones (config patches; filled up with generic moves when the detectors offer fewer); keep
    infrastructure fixes and advice (changes to the user's own code) apart.

    What earlier Phase 4 iterations taught is used (``ev["tried"]``: recommendation id → realized
    gain in points, measured on this config): every one of them is dropped, a near-tie as much as a
    loss (had it won beyond the seed spread, it would have been adopted and the config would differ),
    so no iteration repeats a measured candidate set; a patch the config already holds is dropped. The fix of a
    dominant bottleneck (``forced``) is always selected. When a reference model leads beyond the
    noise (the reference gap's ``leads``, whether it is the primary finding or a cause's symptom),
    architecture moves (:func:`move_family`) rank first: the model family or its capacity is what
    the reference shows to be short. The combined expected gain assumes the
    changes overlap: headroom × (1 − Π(1 − gain_i / headroom)); the moves of a finding capped by
    the reference (its ``room_points``) overlap within that room first."""
    tried: dict[str, float] = ev.get("tried") or {}
    by_id: dict[str, Recommendation] = {}
    for f in findings:
        if f.fired:
            for r in f.recommendations:
                if r.id not in by_id or r.expected_gain_points > by_id[r.id].expected_gain_points:
                    by_id[r.id] = r
    for rid in tried:  # measured on this very config and not adopted: a loss or a near-tie; never proposed again
        if rid in by_id and by_id[rid].kind == "accuracy":
            del by_id[rid]
    cfg = ev["config"]
    by_id = {k: r for k, r in by_id.items() if not (r.patch and patch_already_in(cfg, r.patch))}
    fixes = [r for r in by_id.values() if r.kind == "fix"]
    advice = [r for r in by_id.values() if r.kind == "advice"]
    actionable = [r for r in by_id.values() if r.kind not in ("fix", "advice") and r.patch]
    if sum(r.kind == "accuracy" for r in actionable) < lo:
        have = {r.id for r in actionable} | {r.id for r in fixes} | set(tried)
        patched = {k for r in actionable + fixes for k in (r.patch or {})}
        level = rows_ceiling(findings)
        for g in _generic(ev, level.evidence["noise_points"] if level else None):
            if (
                g.id not in have
                and not (set(g.patch) & patched)
                and not patch_already_in(cfg, g.patch)
                and sum(r.kind == "accuracy" for r in actionable) < lo
            ):
                actionable.append(g)
    leads = any(f.name == "reference_gap" and f.evidence.get("leads") for f in findings)
    ranked = sorted(
        actionable,
        key=lambda r: (
            not r.forced,
            not (leads and move_family(r.patch or {}) == "architecture"),
            -r.score,
            r.effort,
            r.id,
        ),
    )
    selected = ranked[:hi]
    headroom = _headroom_points(ev)
    rooms = {f.name: f.evidence["room_points"] for f in findings if f.fired and f.evidence.get("capped_by_reference")}
    acc = [r for r in selected if r.kind == "accuracy"]
    gains = [r.expected_gain_points for r in acc if r.finding not in rooms]
    for name, room in rooms.items():  # a capped finding's moves overlap within its room (detectors._capped_overfit)
        gains.append(_combined([r.expected_gain_points for r in acc if r.finding == name], room))
    total = _combined(gains, headroom)
    return {
        "ranked": [_rec_dict(r) for r in ranked],
        "selected": [_rec_dict(r) for r in selected],
        "fixes": [_rec_dict(r) for r in fixes],
        "advice": [_rec_dict(r) for r in advice],
        "expected_gain_points": round(total, 2),
        "headroom_points": round(headroom, 2),
        "gap_to_target_points": round(max(0.0, (ev["target"] - _best_val(ev)) * 100), 2),
    }


def _combined(gains: list[float], room: float) -> float:
    """Gains that overlap within ``room`` points: room × (1 − Π(1 − gain_i / room))."""
    keep = 1.0
    for g in gains:
        if room > 0:
            keep *= max(0.0, 1 - min(g, room) / room)
    return room * (1 - keep)


def _best_val(ev: dict[str, Any]) -> float:
    return best_score(ev)


def _headroom_points(ev: dict[str, Any]) -> float:
    return max(0.0, (1 - _best_val(ev)) * 100)


def primary_cause(findings: list[Finding]) -> Finding | None:
    """The fired finding that explains most: infrastructure first, then a dominant bottleneck (a
    finding whose fix is forced: everything else waits on it), then by evidence strength."""
    fired = [f for f in findings if f.fired]
    if not fired:
        return None
    return sorted(
        fired,
        key=lambda f: (
            not f.infrastructure,
            not any(r.forced for r in f.recommendations),
            -f.strength,
            list(DETECTORS).index(f.name),
        ),
    )[0]
