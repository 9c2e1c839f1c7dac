"""Phase 5's production gate checks: the quarantine, disjoint splits, earlier gates unchanged, the
target and its interval, robustness, export parity, documents, reproduction."""

from __future__ import annotations

from typing import Any

import torch

from trainkit._io import read_json, read_jsonl, sha256_file
from trainkit.config import config_hash, load_config
from trainkit.errors import CheckpointError, GateError
from trainkit.phases.common import (
    FinalizationContext,
)
from trainkit.phases.final_model import PHASE, _bundle
from trainkit.phases.final_numbers import metric_checks
from trainkit.run import (
    GATE,
    METRICS,
    TEST_ACCESS_LOG,
    Phase,
    CHECKPOINTS_BEST_PT,
    DEPLOYMENT_GUIDE_MD,
    ENVIRONMENT_JSON,
    EXPORT_JSON,
    FINAL_CONFIG_YAML,
    MODEL_CARD_MD,
    MODEL_ONNX,
    MODEL_TS,
    REPRODUCE_JSON,
    SNIPPETS_JSON,
    TEST_EVALUATION_JSON,
    TEST_RESULTS_MD,
)


def _earlier_gates(ctx: FinalizationContext) -> tuple[str, str]:
    from trainkit.gates import verify_gate

    seen, bad = 0, []
    for e in ctx.run.entries():
        if e.phase == PHASE:
            continue
        d = e.folder(ctx.run_dir)
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


def _disjoint(bundle: Any, overlap: int, pool_rows: int) -> tuple[str, str]:
    """No test sample has a train/val sample's content (``overlap`` test samples equal one of the
    ``pool_rows`` train and val rows). In a table, what chance cannot explain
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
            ok, why = shared_records_verdict(
                table.frame,
                list(table.kinds),
                overlap,
                len(bundle.splits["test"]),
                pool_rows,
                bool(bundle.source.duplicates_by_chance),
            )
            return ("warn" if ok else "fail"), f"train/val and test: {why}"
    if overlap == 0:
        return "pass", "no train/val sample has a test sample's content"
    return "fail", f"{overlap} test samples share content with train/val samples"


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
    from trainkit.folds import refit_view

    keys = bundle.source.sample_keys
    pool = refit_view(bundle).splits["train"]  # the train and val rows, each once (a refit's train holds val)
    seen = {keys[i] for i in pool}
    shared = sum(keys[i] in seen for i in bundle.splits["test"])  # test records equal to a train/val one
    res["test_disjoint"] = _disjoint(bundle, shared, len(pool))
    final_reads = [r for r in log if r.get("phase") == PHASE and r.get("allowed")]
    forced = [r for r in final_reads if r.get("forced")]
    res["test_evaluated_once"] = (
        ("pass", "one test evaluation, on the final model")
        if len(final_reads) == 1 and not forced
        else ("fail", f"{len(final_reads)} test reads in Phase 5 ({len(forced)} forced)")
    )
    return res


def _results(
    ctx: FinalizationContext, train: dict[str, Any], test: dict[str, Any], exp: dict[str, Any], repro: dict[str, Any]
) -> dict[str, tuple[str, Any]]:
    """Every automatic check of the production gate: id → (status, evidence)."""
    bundle = _bundle(ctx)
    res = _quarantine_checks(ctx, bundle)
    res.update(metric_checks(ctx.config, test))
    res.update(_model_checks(ctx, train, repro))
    res["earlier_gates_valid"] = _earlier_gates(ctx)
    from trainkit.predict import raw_rows_parity

    res["raw_rows_predict"] = raw_rows_parity(ctx.run_dir, bundle, test.get("predicted"))
    res.update(_export_checks(ctx, exp))
    snips = read_json(ctx.path(SNIPPETS_JSON)) if ctx.path(SNIPPETS_JSON).is_file() else []
    ok = ctx.path(DEPLOYMENT_GUIDE_MD).is_file() and snips and all(s["ok"] for s in snips)
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
        ("pass", MODEL_CARD_MD) if ctx.path(MODEL_CARD_MD).is_file() else ("fail", "model_card.md missing")
    )
    return res


def _model_checks(ctx: FinalizationContext, train: dict[str, Any], repro: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The final training ended cleanly, its weights are finite and verified, the config is frozen,
    the first epochs reproduce, the environment is recorded."""
    from trainkit.checkpoints import load_checkpoint, verify_checkpoint

    res: dict[str, tuple[str, Any]] = {}
    res["final_training_finite"] = (
        ("pass", f"{train['status']} after {len(train['history'])} epochs")
        if train["status"] in ("completed", "early_stopped", "time_budget") and not train.get("nonfinite")
        else ("fail", f"status {train['status']}")
    )
    try:
        verify_checkpoint(ctx.path(CHECKPOINTS_BEST_PT))
        state = load_checkpoint(ctx.path(CHECKPOINTS_BEST_PT))
        finite = all(
            torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point()
        )
        res["weights_finite"] = ("pass", "every weight finite") if finite else ("fail", "non-finite weights in best.pt")
        res["checkpoint_verified"] = (
            "pass",
            f"weights_only load, sha256 {sha256_file(ctx.path(CHECKPOINTS_BEST_PT))[:12]}… matches",
        )
    except CheckpointError as exc:
        res["weights_finite"] = ("fail", f"cannot read weights: {exc}")
        res["checkpoint_verified"] = ("fail", str(exc)[:300])
    frozen = read_json(ctx.path("final_config.sha256.json"))
    same = (
        sha256_file(ctx.path(FINAL_CONFIG_YAML)) == frozen["file_sha256"]
        and config_hash(load_config(ctx.path(FINAL_CONFIG_YAML))) == frozen["config_hash"]
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
        if (ctx.run_dir / Phase.PLANNING.value / ENVIRONMENT_JSON).is_file()
        else ("fail", "environment.json missing")
    )
    return res


def _export_checks(ctx: FinalizationContext, exp: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """ONNX valid, both exports at parity and batch-flexible, the latency measured (and in budget)."""
    f, res = ctx.config.final, {}
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
        ("pass", MODEL_TS)
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
    return res


ARTIFACTS = (
    FINAL_CONFIG_YAML,
    CHECKPOINTS_BEST_PT,
    METRICS,
    TEST_EVALUATION_JSON,
    TEST_RESULTS_MD,
    MODEL_ONNX,
    MODEL_TS,
    EXPORT_JSON,
    DEPLOYMENT_GUIDE_MD,
    MODEL_CARD_MD,
    SNIPPETS_JSON,
    REPRODUCE_JSON,
)
