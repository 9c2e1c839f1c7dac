"""Phase 2 (Baseline): train the conservative baseline, report it, decide A/B/C, post_baseline gate."""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any

from trainkit._io import write_json_atomic, write_text_atomic
from trainkit.config import save_config
from trainkit.decisions import after_baseline, learning_verdict
from trainkit.errors import CheckpointError
from trainkit.gates import RED
from trainkit.metrics import LABELS, chance_score, constant_baseline, prior_loss, row_score, target_text
from trainkit.phases.common import (
    run_path,
    PhaseContext,
    begin,
    clock,
    finish_gate,
    load_run_config,
    require_gate,
    show_figure,
    show_html,
    write_decision,
)
from trainkit.run import (
    DECISION,
    METRICS,
    Phase,
    TRAINING_CONFIG,
    RunFolder,
    BASELINE_RESULTS_MD,
    CHECKPOINTS_BEST_PT,
    CRASH_JSON,
    CURVES_PNG,
)

__all__ = ["start", "train", "write_results", "decide", "gate"]

PHASE = Phase.BASELINE.value


def start(run_dir: str | Path, attempt: int = 0, interactive: bool = True) -> PhaseContext:
    """Check Phase 1's gate, open ``02_baseline/attempt-N`` and load the config in force."""
    run_dir = run_path(run_dir)
    require_gate(run_dir, Phase.PLANNING.value)
    n = attempt or RunFolder(run_dir).next_attempt(PHASE)[0]
    ctx = begin(PhaseContext, run_dir, PHASE, n, interactive)
    ctx.config = load_run_config(run_dir)
    save_config(ctx.config, ctx.path(TRAINING_CONFIG))
    show_html(
        f"<p>Baseline attempt {n}: {ctx.config.model.name}, {ctx.config.optimizer.name} lr "
        f"{ctx.config.optimizer.lr:g}, {ctx.config.training.epochs} epochs, target val "
        f"{target_text(ctx.config.target.metric, ctx.config.target.value)}</p>"
    )
    return ctx


def train(ctx: PhaseContext, resume: bool = False, live: bool | None = None) -> dict[str, Any]:
    """Train with a live plot (continuing from ``checkpoints/last.pt`` when ``resume``); a crash or
    non-finite loss is recorded, not raised. The live plot is on when the notebook is interactive
    (headless runs draw the curves once, in write_results)."""
    live = ctx.interactive if live is None else live
    from trainkit.run import load_run_data
    from trainkit.train import fit

    t0 = time.perf_counter()
    outcome: dict[str, Any] = {"status": "crashed", "result": None, "error": None}
    try:
        bundle = load_run_data(ctx.config, ctx.run_dir, PHASE)
        if bundle.regression:  # the bar: predicting the train mean for every val row, and a val score's noise
            outcome["chance"], outcome["chance_noise"] = constant_baseline(
                ctx.config.target.metric, bundle.to_label_units(bundle.split_labels("val")), bundle.label_scale["mean"]
            )
        else:
            outcome["chance"] = chance_score(ctx.config.target.metric, bundle.info["class_counts"]["val"])
            outcome["prior_loss"] = prior_loss(bundle.info["class_counts"]["train"], bundle.info["class_counts"]["val"])
        outcome["num_classes"] = bundle.num_classes
        hook = None
        if live:
            from trainkit.widgets import LiveCurves

            hook = LiveCurves()
        result = fit(ctx.config, bundle, ctx.dir, resume=resume, on_epoch=hook, deadline=clock(ctx).deadline)
        if result.status == "time_budget":
            clock(ctx).cut(
                f"baseline epochs {len(result.history) + 1}-{ctx.config.training.epochs}",
                f"stopped after {len(result.history)} epoch(s): the next would end past Phase 2's share",
            )
        outcome.update(status=result.status, result=result.to_dict())
    except Exception as exc:  # a failed baseline is evidence for Phase 3, not a notebook crash
        cause = exc.__cause__ or exc
        outcome["error"] = {
            "type": type(exc).__name__,
            "cause_type": type(cause).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc()[-4000:],
        }
        write_json_atomic(ctx.path(CRASH_JSON), outcome["error"])
        show_html(f"<p style='color:{RED}'><b>Baseline crashed</b>: {type(exc).__name__}: {exc}</p>")
    outcome["wall_time_s"] = time.perf_counter() - t0
    write_json_atomic(ctx.path("outcome.json"), {k: v for k, v in outcome.items() if k != "result"})
    return outcome


def decide(ctx: PhaseContext, outcome: dict[str, Any]) -> dict[str, Any]:
    """Option A (val ≥ target → Phase 5), B (below → Phase 3), C (failed → Phase 3 failed mode):
    :func:`trainkit.decisions.after_baseline`."""
    cfg = ctx.config
    r = outcome.get("result") or {}
    state = "failed"
    if outcome["status"] == "crashed":
        ok, why = False, "crashed"
    else:
        state, why = learning_verdict(
            r.get("init_loss", float("nan")),
            r.get("history") or [],
            outcome.get("chance", 0.0),
            cfg.target.metric,
            outcome.get("prior_loss"),
            outcome.get("chance_noise"),
        )
        ok = state == "learned"
    best = row_score(r["best"]) if r.get("best") else None
    evidence = {
        "status": outcome["status"],
        "best_val_accuracy": (r.get("best") or {}).get("val_accuracy"),
        "metric": cfg.target.metric,
        "best_val_score": best,
        "target": cfg.target.value,
        "learning": why,
        "nonfinite": r.get("nonfinite"),
        "error": (outcome.get("error") or {}).get("message"),
    }
    option, nxt, reason = after_baseline(
        status=outcome["status"],
        learned=ok,
        best=best,
        target=cfg.target.value,
        attempt=ctx.attempt,
        max_restarts=cfg.budget.max_baseline_restarts,
        epochs=len(r.get("history") or []),
        metric=cfg.target.metric,
        inconclusive=why if state == "inconclusive" else None,
    )
    return write_decision(ctx, option, nxt, reason, evidence)


def _resource_lines(r: dict[str, Any]) -> list[str]:
    hist = r.get("history") or []
    if not hist:
        return ["(no completed epoch)"]
    mean = lambda k: sum(h.get(k, 0.0) for h in hist) / len(hist)  # noqa: E731
    lines = [
        f"- device: {r['device']} ({r['precision']}), processes: {r['world_size']}",
        f"- throughput: {mean('samples_per_s'):.0f} samples/s (mean over epochs)",
        f"- data-wait fraction: {mean('data_wait_fraction'):.3f} (time blocked on the next batch / epoch time)",
        f"- epoch time: {mean('epoch_time_s'):.3f} s mean",
    ]
    if any("gpu_util_mean" in h for h in hist):
        lines.append(
            f"- GPU utilisation: {mean('gpu_util_mean'):.0f}% mean; peak memory "
            f"{max(h.get('gpu_mem_max_mib', 0) for h in hist):.0f} MiB"
        )
    else:
        lines.append("- GPU utilisation: not measured (no GPU)")
    return lines


def write_results(ctx: PhaseContext, outcome: dict[str, Any], decision: dict[str, Any]) -> Path:
    """baseline_results.md with the metrics table, curves, resource profile and wall time."""
    from trainkit.plots import curves_figure

    r = outcome.get("result") or {}
    hist = r.get("history") or []
    lines = [
        f"# Baseline results (attempt {ctx.attempt})",
        "",
        f"Decision: **option {decision['option']}** → `{decision['next']}` — {decision['reason']}",
        "",
    ]
    if hist:
        show_figure(curves_figure(hist, "baseline learning curves"), ctx.path(CURVES_PNG))
        best = r["best"]
        metric = ctx.config.target.metric
        lines += ["![learning curves](curves.png)", ""] + _epoch_table(hist, metric)
        shown = "" if metric == "accuracy" else f"val {LABELS[metric]} **{row_score(best):.4f}** (the target metric), "
        also = (
            f"val RMSE {best['val_rmse']:.4g}, MAE {best['val_mae']:.4g}, R² {best['val_r2']:.4f}"
            if best.get("val_accuracy") is None
            else f"val accuracy **{best['val_accuracy']:.4f}**"
        )
        lines += [
            "",
            f"Best: {shown}{also} at epoch {best['epoch'] + 1} "
            f"(checkpoint `checkpoints/best.pt`); status {r['status']}.",
        ]
    if r.get("nonfinite"):
        nf = r["nonfinite"]
        lines += [
            "",
            f"**Non-finite** at epoch {nf['epoch']} step {nf['step']}: first bad gradient in "
            f"`{nf['parameter']}`, last finite loss {nf['last_finite_loss']:.4g}.",
        ]
    if outcome.get("error"):
        lines += ["", f"**Crashed**: `{outcome['error']['type']}: {outcome['error']['message'][:500]}`"]
    lines += [
        "",
        "## Resource profile",
        *_resource_lines(r),
        "",
        f"Wall time: {outcome['wall_time_s']:.2f} s (training {r.get('train_time_s', 0.0):.2f} s)",
    ]
    return write_text_atomic(ctx.path(BASELINE_RESULTS_MD), "\n".join(lines) + "\n")


def _epoch_table(hist: list[dict[str, Any]], metric: str) -> list[str]:
    """The per-epoch metrics table: accuracy, or a regression's target metric (train and val)."""
    if hist[0].get("val_accuracy") is not None:
        head, cols = (
            "train acc | val loss | val acc",
            lambda h: f"{h['train_accuracy']:.4f} | {h['val_loss']:.4f} | {h['val_accuracy']:.4f}",
        )
    else:
        name = LABELS[metric]
        head, cols = (
            f"train {name} | val loss | val {name}",
            lambda h: f"{h['train_score']:.4g} | {h['val_loss']:.4f} | {h['val_score']:.4g}",
        )
    return [f"| epoch | train loss | {head} | lr | grad-norm p50 |", "|---:|---:|---:|---:|---:|---:|---:|"] + [
        f"| {h['epoch'] + 1} | {h['train_loss']:.4f} | {cols(h)} | {h['lr']:.2e} | "
        f"{h.get('grad_norm_p50', float('nan')):.3f} |"
        for h in hist
    ]


def _results(ctx: PhaseContext, outcome: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    from trainkit.checkpoints import verify_checkpoint

    r, b = outcome.get("result") or {}, ctx.config.budget
    hist = r.get("history") or []
    res: dict[str, tuple[str, Any]] = {}
    res["training_completed"] = (
        ("pass", f"{r['status']} after {len(hist)} epoch(s)")
        if outcome["status"] in ("completed", "early_stopped", "time_budget")
        else ("fail", outcome["status"] + (f": {outcome['error']['message'][:300]}" if outcome.get("error") else ""))
    )
    finite = (
        hist
        and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in hist)
        and not r.get("nonfinite")
    )
    res["losses_finite"] = (
        ("pass", "every epoch's train and val loss finite")
        if finite
        else ("fail", f"non-finite: {r.get('nonfinite')}" if r.get("nonfinite") else "no finite epoch recorded")
    )
    state, why = (
        learning_verdict(
            r["init_loss"],
            hist,
            outcome.get("chance", 0.0),
            ctx.config.target.metric,
            outcome.get("prior_loss"),
            outcome.get("chance_noise"),
        )
        if hist
        else ("failed", "no completed epoch")
    )
    ok = state == "learned"
    if not ok and outcome["status"] == "time_budget" and hist:  # too few epochs to tell: the decision says so (B)
        res["learning_happened"] = (
            "warn",
            f"inconclusive: the budget stopped training after {len(hist)} epoch(s); {why}",
        )
    elif state == "inconclusive":  # the class prior learned, not clearly more: B, as the decision says
        res["learning_happened"] = ("warn", f"inconclusive: {why}")
    else:
        res["learning_happened"] = ("pass" if ok else "fail", why)
    utils = [h["gpu_util_mean"] for h in hist if "gpu_util_mean" in h]
    if not r.get("device", "cpu").startswith("cuda"):
        res["gpu_utilisation"] = ("na", f"CPU run ({r.get('device', 'cpu')}): no GPU to utilise")
    elif not utils:
        res["gpu_utilisation"] = ("warn", "CUDA run but NVML gave no samples (pynvml unavailable?)")
    else:
        u = sum(utils) / len(utils)
        res["gpu_utilisation"] = (
            "fail" if u < b.gpu_util_block else "warn" if u < b.gpu_util_warn else "pass",
            f"mean {u:.0f}% (block < {b.gpu_util_block:.0f}%, warn < {b.gpu_util_warn:.0f}%)",
        )
    waits = [h["data_wait_fraction"] for h in hist if "data_wait_fraction" in h]
    res["data_wait_reported"] = (
        ("pass", f"data-wait fraction mean {sum(waits) / len(waits):.3f}")
        if waits
        else ("fail", "no data-wait measurement")
    )
    try:
        digest = verify_checkpoint(ctx.path(CHECKPOINTS_BEST_PT))
        res["best_checkpoint"] = ("pass", f"checkpoints/best.pt sha256 {digest[:12]}… verified")
    except CheckpointError as exc:
        res["best_checkpoint"] = ("fail", str(exc))
    res["results_document"] = (
        ("pass", "baseline_results.md written")
        if ctx.path(BASELINE_RESULTS_MD).is_file()
        else ("fail", "baseline_results.md missing")
    )
    return res


def gate(
    ctx: PhaseContext,
    outcome: dict[str, Any],
    decision: dict[str, Any],
    approvals: Any = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate post_baseline. A failed baseline (option C) records its block and routes to Phase 3
    instead of raising, so the notebook completes and the diagnosis has its evidence."""
    arts = [
        ctx.rel(n)
        for n in (TRAINING_CONFIG, METRICS, BASELINE_RESULTS_MD, DECISION, CHECKPOINTS_BEST_PT)
        if ctx.path(n).is_file()
    ]
    return finish_gate(
        ctx,
        "post_baseline",
        _results(ctx, outcome),
        arts,
        approvals,
        auto_signoff,
        waivers,
        decision,
        raise_on_block=decision["option"] != "C",
    )
