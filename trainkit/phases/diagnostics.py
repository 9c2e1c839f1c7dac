"""Phase 3 (Diagnostics): probes and detectors on the baseline (or the best Phase 4 run), ranked
recommendations as config patches, diagnostic_report.md, the diagnostics_complete gate, decision A/B/C."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from trainkit._io import read_json, write_json_atomic
from trainkit.config import config_to_dict, get_dotted, save_config, with_overrides
from trainkit.errors import RunError
from trainkit.phases.common import (
    run_path,
    CURRENT_CONFIG,
    DiagnosticsContext,
    begin,
    clock,
    finish_gate,
    load_run_config,
    require_routed,
    show_figure,
    show_html,
    write_decision,
)
from trainkit.run import (
    DECISION,
    FINDINGS,
    Phase,
    TRAINING_CONFIG,
    RunFolder,
    BEST_JSON,
    DIAGNOSTIC_REPORT_MD,
    EXCLUDE_JSON,
    EXCLUDE_LABELS_JSON,
    FIXED_CONFIG_YAML,
    PROBES_JSON,
    RESIDUALS_PNG,
)
from trainkit.phases.diag_report import guide_path, show_findings, write_report

__all__ = ["start", "diagnose", "show_findings", "write_report", "decide", "gate", "guide_path"]

PHASE = Phase.DIAGNOSTICS.value


def _source(run_dir: Path) -> tuple[Path, dict[str, Any], str]:
    """(folder whose training is diagnosed, its decision, its phase): the Phase 2 attempt (failed
    ones included) or Phase 4 iteration that routed here; for Phase 4, the best adopted run."""
    phase, d, decision = require_routed(
        run_dir, PHASE, (Phase.BASELINE.value, Phase.OPTIMIZATION.value), allow_failed=True
    )
    if phase == Phase.OPTIMIZATION.value:  # diagnose the best config so far: Phase 4's adopted best, else the baseline
        if (run_dir / BEST_JSON).is_file():
            return run_dir / read_json(run_dir / BEST_JSON)["dir"], decision, phase
        base = RunFolder(run_dir).latest(Phase.BASELINE.value)
        if base is None:
            raise RunError(f"{run_dir}: no Phase 2 attempt to diagnose")
        return base, decision, phase
    return d, decision, phase


def start(run_dir: str | Path, round: int = 0, interactive: bool = True) -> DiagnosticsContext:  # noqa: A002
    """Open ``03_diagnostics/round-N`` for the latest baseline (or Phase 4 result) routed here."""
    run_dir = run_path(run_dir)
    source, decision, phase = _source(run_dir)
    n = round or RunFolder(run_dir).next_attempt(PHASE)[0]
    ctx = begin(DiagnosticsContext, run_dir, PHASE, n, interactive)
    ctx.config = load_run_config(run_dir)
    save_config(ctx.config, ctx.path(TRAINING_CONFIG))
    ctx.source, ctx.failed_mode = source, phase == Phase.BASELINE.value and decision["option"] == "C"
    ctx.after_idle_iteration = (
        phase == Phase.OPTIMIZATION.value and (decision.get("evidence") or {}).get("adopted") is False
    )
    show_html(
        f"<p>Diagnosis round {n} of <code>{source.relative_to(run_dir)}</code> "
        f"({'failed baseline' if ctx.failed_mode else 'below target'}): "
        f"{html.escape(decision['reason'])}</p>"
    )
    return ctx


def diagnose(ctx: DiagnosticsContext, label_issues: bool = True) -> dict[str, Any]:
    """Evidence + probes + detectors + ranked recommendations → findings.json (and exclude.json
    when samples should be left out of training)."""
    from trainkit.run import load_run_data
    from trainkit.diagnostics import detect_all, gather_evidence, plan_recommendations, primary_cause

    from trainkit.phases.optimization import realized_gains

    cfg = ctx.config
    ev = gather_evidence(ctx.source, cfg, ctx.failed_mode)
    ev["exclude_path"], ev["label_exclude_path"] = ctx.rel(EXCLUDE_JSON), ctx.rel(EXCLUDE_LABELS_JSON)
    ev["tried"] = realized_gains(ctx.run_dir, cfg)
    bundle = load_run_data(cfg, ctx.run_dir, PHASE)
    ev["probes"] = _probes(ctx, bundle, ev, label_issues)
    if bundle.regression:  # the detectors judge a regression on the skill scale (1 perfect, 0 the train mean)
        from trainkit.diagnostics import skill_probes, skill_view

        scale = bundle.info["mean_predictor_val"][cfg.target.metric]  # the skill scale's zero (Phase 4 uses the same)
        ev = skill_view(ev, cfg.target.metric, scale)
        ev["probes"] = skill_probes(ev["probes"], cfg.target.metric, scale)
        ev["residuals"] = _residuals(ctx, cfg, bundle, ev)
    findings = detect_all(ev)
    if bundle.regression:
        from trainkit.diagnostics import in_metric_terms

        in_metric_terms(findings, ev)
    plan = plan_recommendations(findings, ev)
    primary = primary_cause(findings)
    previous = _previous_exclusions(ctx)
    for name, key, why in (
        (EXCLUDE_JSON, "exclude_indices", "leaked or duplicated training rows"),
        (EXCLUDE_LABELS_JSON, "label_exclude_indices", "leaked, duplicated and likely mislabelled training rows"),
    ):
        rows = sorted({i for f in findings if f.fired for i in f.evidence.get(key, [])})
        if rows:  # each file keeps what earlier rounds excluded: a patch never brings rows back
            write_json_atomic(ctx.path(name), {"indices": sorted(set(rows) | previous), "why": why})
    recovery = None
    if (
        ctx.failed_mode and ev["status"] != "crashed" and _restarts_left(ctx) > 0
    ):  # a crash needs its own fix (code, memory)
        from trainkit.diagnostics.recovery import choose_fix, failed_history

        recovery = choose_fix(cfg, bundle, plan, ev, failed_history(ctx.run_dir), clock=clock(ctx))
    result = {
        "round": ctx.attempt,
        "source": str(Path(ctx.source).relative_to(ctx.run_dir)),
        "failed_mode": ctx.failed_mode,
        "recovery": recovery,
        "primary": primary.name if primary else None,
        "cause": (primary.cause or primary.name) if primary else None,
        "strength": round(primary.strength, 3) if primary else 0.0,
        "findings": [f.to_dict() for f in findings],
        "plan": plan,
        "evidence": {k: v for k, v in ev.items() if k not in ("history", "config", "raw_history")},
    }
    write_json_atomic(ctx.path(FINDINGS), result)
    return result


def _probes(ctx: DiagnosticsContext, bundle: Any, ev: dict[str, Any], label_issues: bool) -> dict[str, Any]:
    """The probes of this round. A round after a Phase 4 iteration that adopted nothing diagnoses
    what the round before it diagnosed (the same folder, the same config, the same rows): its
    probes are seeded and measure the same things, so they are read back from that round's
    ``probes.json`` instead of run again (the evidence says ``probes_from``). Any other round runs
    them and keeps them, when they store as JSON exactly, for the next."""
    import json

    from trainkit._io import write_text_atomic
    from trainkit.diagnostics import fill_probe_evidence, run_probes

    key = {
        "source": str(Path(ctx.source).relative_to(ctx.run_dir)),
        "config": ctx.path(TRAINING_CONFIG).read_text(encoding="utf-8"),
        "label_issues": label_issues,
        "failed_mode": ctx.failed_mode,
    }
    earlier = ctx.run_dir / PHASE / f"round-{ctx.attempt - 1}" / PROBES_JSON
    if ctx.after_idle_iteration and earlier.is_file():
        kept = earlier.read_text(encoding="utf-8")
        saved = json.loads(kept)
        if saved.get("key") == key:
            write_text_atomic(ctx.path(PROBES_JSON), kept)  # a further idle round reads them from here
            fill_probe_evidence(ev, bundle, saved["probes"])
            ev["probes_from"] = str(earlier.parent.relative_to(ctx.run_dir))
            show_html(
                f"<p>Probes read back from <code>{ev['probes_from']}</code>: the last Phase 4 iteration adopted "
                "nothing, so this round diagnoses the same training on the same rows.</p>"
            )
            return saved["probes"]
    label = earlier_label_probe(ctx.run_dir, ctx.attempt, ctx.config, ev) if label_issues else None
    if label is not None:
        show_html(
            f"<p>Label-issue probe read back from <code>{label['reused_from']}</code>: the same rows and labels "
            "(the config's data section and seed are unchanged), and its fold models are still within reach of "
            "the model diagnosed now.</p>"
        )
    probes = run_probes(ctx.config, bundle, ev, label_issues=label_issues, clock=clock(ctx), label_result=label)
    try:  # strict: a value JSON cannot hold exactly (an array, a numpy scalar) means the next round measures again
        text = json.dumps({"key": key, "probes": probes}, sort_keys=True, indent=1)
    except (TypeError, ValueError):
        return probes
    write_text_atomic(ctx.path(PROBES_JSON), text + "\n")
    return probes


def earlier_label_probe(run_dir: Path, attempt: int, cfg: Any, ev: dict[str, Any]) -> dict[str, Any] | None:
    """The label-issue probe of the latest earlier round when it answers this round's question too,
    else None (this round runs it). The probe asks whether some training labels are wrong: a
    property of the rows, which it measures by how much less its out-of-fold models agree with the
    train labels than with the val labels. So it holds for a later round when the rows are the same
    (the config's ``data`` section and ``training.seed``, which draws its folds, are unchanged: an
    excluded row or another split is measured again), it was conclusive, and its fold models are
    still within the probe's own trust margin of the model diagnosed now (a network that has since
    pulled far ahead makes them too weak a judge: measured again). A re-diagnosis after Phase 4
    adopted a change of recipe or capacity so skips the probe's fits (3 folds × 15 epochs)."""
    import json

    import yaml

    from trainkit.diagnostics.data_probes import LABEL_MAX_SHORTFALL

    now = config_to_dict(cfg)
    best_val = (ev.get("best") or {}).get("val_accuracy")
    for n in range(attempt - 1, 0, -1):
        f = run_dir / PHASE / f"round-{n}" / PROBES_JSON
        if not f.is_file():
            continue
        saved = json.loads(f.read_text(encoding="utf-8"))
        then = yaml.safe_load(saved.get("key", {}).get("config") or "") or {}
        res = (saved.get("probes") or {}).get("label_issues") or {}
        same_rows = then.get("data") == now["data"] and (then.get("training") or {}).get("seed") == cfg.training.seed
        if not same_rows or "error" in res or not res.get("trusted"):
            return None  # the latest round that ran it is the one to follow; one on other rows says nothing
        if best_val is None or best_val - res["oof_val_accuracy"] > LABEL_MAX_SHORTFALL:
            return None
        return dict(res, reused_from=res.get("reused_from") or f"{PHASE}/round-{n}", seconds=0.0)
    return None


def _residuals(ctx: DiagnosticsContext, cfg: Any, bundle: Any, ev: dict[str, Any]) -> dict[str, Any] | None:
    """A regression's diagnosed model on val: predicted against actual and the residuals against the
    prediction (residuals.png), in the label's units; the residuals' summary for the report."""
    import numpy as np

    from trainkit.diagnostics.probe_runner import _trained_model
    from trainkit.metrics import regression_scores
    from trainkit.plots import residual_figure
    import torch

    from trainkit.train import predict_numbers

    model = _trained_model(cfg, bundle, ev)
    if model is None:
        return None
    z, y = predict_numbers(model, bundle, "val", torch.device("cpu"))
    truth, pred = bundle.to_label_units(y), bundle.to_label_units(z)
    scores = regression_scores(truth, pred)
    label = bundle.source.class_names[0]
    show_figure(residual_figure(truth, pred, label, "val (diagnosed model)", scores), ctx.path(RESIDUALS_PNG))
    r = truth - pred
    return {
        "figure": RESIDUALS_PNG,
        **scores,
        "residual_mean": float(r.mean()),
        "residual_p05": float(np.percentile(r, 5)),
        "residual_p95": float(np.percentile(r, 95)),
    }


def _previous_exclusions(ctx: DiagnosticsContext) -> set[int]:
    spec = ctx.config.data.exclude
    if not spec:
        return set()
    p = Path(spec) if Path(spec).is_absolute() else ctx.run_dir / spec
    return {int(i) for i in read_json(p)["indices"]} if p.is_file() else set()


def _restarts_left(ctx: DiagnosticsContext) -> int:
    from trainkit.decisions import restarts_left

    attempts = len([e for e in ctx.run.entries(Phase.BASELINE.value) if e.status != "running"])
    return restarts_left(ctx.config.budget.max_baseline_restarts, attempts)


def _stale_families(ctx: DiagnosticsContext, plan: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """(families this round proposes, families the last Phase 4 iteration measured) when that
    iteration adopted nothing; None otherwise. A move's family is what its patch changes
    (:func:`trainkit.diagnostics.move_family`)."""
    if not ctx.after_idle_iteration or ctx.attempt < 2:
        return None
    from trainkit.diagnostics import move_family
    from trainkit.run import COMPARISON

    it = RunFolder(ctx.run_dir).latest(Phase.OPTIMIZATION.value)
    earlier = ctx.run_dir / PHASE / f"round-{ctx.attempt - 1}" / FINDINGS
    if it is None or not (it / COMPARISON).is_file() or not earlier.is_file():
        return None
    patches = {r["id"]: r.get("patch") or {} for r in read_json(earlier)["plan"]["ranked"]}
    measured = {
        move_family(patches.get(rid) or {})
        for c in read_json(it / COMPARISON).get("candidates") or []
        for rid in c["recommendations"]
    }
    proposed = {move_family(r.get("patch") or {}) for r in plan["selected"] if r["kind"] == "accuracy"}
    return sorted(proposed), sorted(measured)


def decide(ctx: DiagnosticsContext, result: dict[str, Any]) -> dict[str, Any]:
    """A/B/C from the expected gain and the fixes; for C with a known patch, write the fixed config
    as the run's current config (with provenance) so Phase 2 restarts on it."""
    from trainkit.decisions import after_diagnostics
    from trainkit.diagnostics import THRESHOLDS, combine_patches

    plan, cfg = result["plan"], ctx.config
    fixes = [r for r in plan["fixes"] if r["patch"]]
    needs_fix = bool(plan["fixes"]) or result["failed_mode"]
    fix_recs = fixes or (plan["selected"] if result["failed_mode"] else [])
    manual = "; ".join(r["rationale"] for r in plan["fixes"] if not r["patch"]) or None
    recovery = result.get("recovery")
    if recovery is not None:  # a failed baseline: only a fix whose trial fit learned is worth a restart
        fix_recs = [recovery["chosen"]] if recovery["chosen"] else []
        if not fix_recs:
            tried = ", ".join(f"{t['id']} ({t['why']})" for t in recovery["trials"]) or "none fitted in the time left"
            manual = (
                f"no candidate fix learned in a {recovery['steps']}-step trial fit (tried: {tried}); "
                "check the data and the model by hand"
            )
    patch, prov = combine_patches(fix_recs) if fix_recs else ({}, [])
    left = _restarts_left(ctx)
    strong = None
    # strong evidence overrules a low gain estimate only when Phase 4 can act on it: a move of its own is selected
    if (
        result["primary"]
        and result["strength"] >= THRESHOLDS["strong_strength"]
        and plan["gap_to_target_points"] > 0
        and any(r.get("finding") == result["primary"] for r in plan["selected"])
    ):
        strong = f"{result['cause']} (strength {result['strength']:.1f})"
    decided = after_diagnostics(
        expected_gain=plan["expected_gain_points"],
        fix=patch or None,
        needs_fix=needs_fix,
        manual_fix=manual,
        restarts_left=left,
        budget=cfg.budget,
        strong=strong,
        gap=plan["gap_to_target_points"],
        stale=_stale_families(ctx, plan),
    )
    option, nxt, reason = decided
    measured = sorted(result["evidence"].get("tried") or {})
    if option == "B" and measured and not any(r["kind"] == "accuracy" for r in plan["selected"]):
        reason += (
            f"; every move proposed for this config is measured already ({', '.join(measured)}: a loss or a near-tie)"
        )
    evidence = {
        "primary": result["primary"],
        "cause": result.get("cause"),
        "strength": result.get("strength"),
        "expected_gain_points": plan["expected_gain_points"],
        "selected": [r["id"] for r in plan["selected"]],
        "fixes": [r["id"] for r in plan["fixes"]],
        "fix_ids": [r["id"] for r in fix_recs],
        "marginal": decided.marginal,
    }
    if option == "C" and nxt == Phase.BASELINE.value:
        fixed = with_overrides(cfg, patch)
        old = config_to_dict(cfg)
        evidence["patch"] = patch
        new = config_to_dict(fixed)
        evidence["provenance"] = [
            dict(p, old=get_dotted(old, p["field"]), new=get_dotted(new, p["field"])) for p in prov
        ]
        save_config(fixed, ctx.path(FIXED_CONFIG_YAML))
        save_config(fixed, ctx.run_dir / CURRENT_CONFIG)
    return write_decision(ctx, option, nxt, reason, evidence)


def _results(ctx: DiagnosticsContext, result: dict[str, Any], decision: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    ev, plan = result["evidence"], result["plan"]
    probes = ev["probes"]
    res: dict[str, tuple[str, Any]] = {}
    has = bool(ev.get("best") or ev.get("crash") or ev.get("nonfinite"))
    res["evidence_loaded"] = (
        ("pass", f"status {ev['status']} from {result['source']}")
        if has
        else ("fail", f"no metrics or crash record in {result['source']}")
    )
    ran = [k for k, v in probes.items() if isinstance(v, dict) and "error" not in v]
    failed = [k for k, v in probes.items() if isinstance(v, dict) and "error" in v]
    res["probes_ran"] = (
        "pass" if ran else "fail",
        f"{len(ran)}/{len(probes)} ran" + (f"; could not run: {failed}" if failed else ""),
    )
    sane = [probes.get("overfit_batch", {}).get("ok"), probes.get("input_independent", {}).get("ok")]
    res["pipeline_sane"] = (
        ("pass", "one batch memorised; real inputs beat zeroed inputs")
        if all(sane)
        else ("warn", f"overfit-one-batch ok={sane[0]}, input-independent ok={sane[1]}")
    )
    if result["primary"]:
        res["root_cause"] = ("pass", f"{result['primary']}")
    else:
        res["root_cause"] = (
            ("warn", "no detector fired: the setup looks near-optimal")
            if decision["option"] == "B"
            else (
                "warn",
                f"no detector fired; optimizing the generic moves (expected gain {plan['expected_gain_points']:.1f} "
                "points): read the probes before trusting the gain",
            )
            if decision["option"] == "A" and plan["selected"]
            else ("fail", "no detector fired, yet the decision is not to finalize")
        )
    n = len(plan["selected"])
    if decision["option"] == "C":
        res["recommendations"] = ("pass", f"infrastructure fix: {decision['reason']}")
    elif 3 <= n <= 5 and all("expected_gain_points" in r and "effort" in r for r in plan["selected"]):
        res["recommendations"] = ("pass", f"{n} selected, expected gain {plan['expected_gain_points']:.1f} points")
    elif 1 <= n < 3 and len(plan["ranked"]) == n:  # earlier rounds measured the rest without gain: all that is left
        res["recommendations"] = (
            "warn",
            f"only {n} untried move(s) left after earlier rounds; expected gain "
            f"{plan['expected_gain_points']:.1f} points",
        )
    elif n == 0 and decision["option"] == "B":
        res["recommendations"] = ("warn", "no untried move left: finalize with the best so far")
    else:
        res["recommendations"] = ("fail", f"{n} selected; need 3-5 with expected gain and effort")
    present = all(ctx.path(p).is_file() for p in (DIAGNOSTIC_REPORT_MD, FINDINGS))
    res["report_present"] = (
        "pass" if present else "fail",
        "diagnostic_report.md, findings.json" if present else "missing",
    )
    fired = [f["name"] for f in result["findings"] if f["fired"]]
    missing = [n for n in fired if not ctx.path(f"guides/{n}.md").is_file()]
    res["guides_linked"] = (
        ("fail", f"missing guides: {missing}") if missing else ("pass", f"guides for {fired or 'all'}")
    )
    return res


def gate(
    ctx: DiagnosticsContext,
    result: dict[str, Any],
    decision: dict[str, Any],
    approvals: Any = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    arts = [
        ctx.rel(n)
        for n in (
            FINDINGS,
            DIAGNOSTIC_REPORT_MD,
            DECISION,
            EXCLUDE_JSON,
            EXCLUDE_LABELS_JSON,
            FIXED_CONFIG_YAML,
        )
        if ctx.path(n).is_file()
    ]
    return finish_gate(
        ctx, "diagnostics_complete", _results(ctx, result, decision), arts, approvals, auto_signoff, waivers, decision
    )
