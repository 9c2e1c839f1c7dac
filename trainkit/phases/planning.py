"""Phase 1 (Planning): config, environment, splits, data overview, determinism, reproducibility gate."""

from __future__ import annotations

import html

import numpy as np

from pathlib import Path
from typing import Any

import torch

from trainkit._io import read_json, write_json_atomic
from trainkit.config import config_hash, load_config, save_config
from trainkit.errors import ConfigError, QuarantineError
from trainkit.gates import RED
from trainkit.metrics import advice, target_text
from trainkit.phases.common import run_path, PhaseContext, begin, finish_gate, show_figure, show_html, write_decision
from trainkit.run import (
    GATE,
    PREPROCESS,
    SPLITS,
    TRAINING_CONFIG,
    Phase,
    init_run,
    BUDGET_PLAN_JSON,
    COLUMNS_JSON,
    DETERMINISM_JSON,
    ENVIRONMENT_JSON,
)

__all__ = ["start", "write_environment", "write_splits", "show_data_overview", "check_determinism", "gate"]

PHASE = Phase.PLANNING.value
ARTIFACTS = [TRAINING_CONFIG, ENVIRONMENT_JSON, SPLITS, DETERMINISM_JSON]  # + budget_plan.json when measured


def start(
    run_dir: str | Path,
    config_path: str = "",
    overrides: list[str] | None = None,
    target: float | None = None,
    interactive: bool = True,
    redo: bool = False,
) -> PhaseContext:
    """Validate the config (with overrides and target) and freeze it as training_config.yaml.

    An invalid config is recorded in gate.json (config_valid fails) before ConfigError → GateBlocked.
    A Phase 1 whose gate is already signed is not redone silently (a second "Run All" would reset
    it): RunError unless ``redo``."""
    run_dir = run_path(run_dir)
    _refuse_silent_redo(run_dir, redo)
    ctx = begin(PhaseContext, run_dir, PHASE, 1, interactive)
    try:
        ctx.config = load_config(config_path or None, overrides, target)
    except ConfigError as exc:
        problems = "; ".join(f"{p}: {m}" for p, m in exc.problems)
        results = {
            c: ("fail", "not reached: the config is invalid")
            for c in (
                "seeds_fixed",
                "deterministic_mode",
                "environment_documented",
                "splits_fingerprinted",
                "test_quarantined",
                "determinism_verified",
            )
        }
        results["config_valid"] = ("fail", f"{exc.source}: {problems}")
        finish_gate(ctx, "reproducibility_gate", results, [])
    save_config(ctx.config, ctx.path(TRAINING_CONFIG))
    init_run(ctx.run_dir, config_hash=config_hash(ctx.config))
    show_html(
        f"<p>Config valid → <code>{ctx.rel(TRAINING_CONFIG)}</code> "
        f"(sha256 {config_hash(ctx.config)[:12]}…); target val "
        f"{target_text(ctx.config.target.metric, ctx.config.target.value)}</p>"
    )
    return ctx


def _refuse_silent_redo(run_dir: Path, redo: bool) -> None:
    gate = run_dir / PHASE / GATE
    if redo or not gate.is_file():
        return
    from trainkit._io import read_json
    from trainkit.errors import RunError
    from trainkit.gates import gate_state

    record = read_json(gate)
    if gate_state(record) == "passed":
        by = (record.get("signoff") or {}).get("by", "?")
        raise RunError(
            f"{run_dir}: Phase 1 already passed and was signed by {by}; running it again would reset that "
            "gate (and the basis of every later phase). Continue with the next notebook, start a new run "
            "(another run_dir), or set redo = True to redo Phase 1 on purpose."
        )


def write_environment(ctx: PhaseContext) -> dict[str, Any]:
    """Seed everything, set deterministic mode, capture environment.json."""
    from trainkit.repro import capture_environment, seed_everything, set_deterministic

    tr = ctx.config.training
    seed_everything(tr.seed)
    env = capture_environment()
    env["seeding"] = {
        "seed": tr.seed,
        "split_seed": ctx.config.data.split_seed,
        "torch_initial_seed": torch.initial_seed(),
    }
    env["deterministic"] = set_deterministic(tr.deterministic)
    write_json_atomic(ctx.path(ENVIRONMENT_JSON), env)
    gpu = env["gpu"]["devices"][0]["name"] if env["gpu"]["devices"] else "no GPU"
    show_html(
        f"<p>Environment: Python {env['python']}, torch {env['torch']}, {gpu}, "
        f"{env['cpu']['count']} CPU cores, git "
        f"{str(env['git']['commit'])[:10]}{' (dirty)' if env['git']['dirty'] else ''}</p>"
    )
    return env


def write_splits(ctx: PhaseContext) -> Any:
    """Load the data, write splits.json (indices, fingerprints, duplicates); return the bundle."""
    from trainkit.run import load_run_data

    bundle = load_run_data(ctx.config, ctx.run_dir, PHASE, write_splits=True)
    info = bundle.info
    what = (
        (
            f"a number to predict ({html.escape(str(info['class_names'][0]))}: train mean "
            f"{info['label_scale']['mean']:.4g}, "
            f"std {info['label_scale']['std']:.4g})"
        )
        if bundle.regression
        else f"{len(info['class_names'])} classes"
    )
    show_html(
        f"<p>{info['source']}: sizes {info['sizes']}, input {tuple(info['input_shape'])}, "
        f"{what}; exact duplicates across splits: {info['duplicates']['across_splits']}</p>"
    )
    return bundle


def show_data_overview(ctx: PhaseContext, bundle: Any) -> None:
    """Class counts per split (bars), or a regression label's histogram per split, and a grid of
    training samples; saved as PNGs too."""
    from trainkit.plots import class_counts_figure, label_histogram_figure, sample_grid_figure

    info = bundle.info
    if bundle.regression:
        values = {k: bundle.to_label_units(bundle.split_labels(k)) for k in ("train", "val")}
        show_figure(label_histogram_figure(values, info["class_names"][0]), ctx.path("label_histogram.png"))
    else:
        counts = {k: v for k, v in info["class_counts"].items() if k != "test"}
        show_figure(class_counts_figure(counts, info["class_names"]), ctx.path("class_counts.png"))
    tip = None if bundle.regression else advice(ctx.config.target.metric, info["class_counts"]["train"])
    if tip:
        show_html(f"<p style='color:{RED}'><b>Metric advice</b>: {html.escape(tip)}.</p>")
    table = bundle.source.table
    if table is not None:  # a table: its columns, not a grid of samples
        _show_columns(ctx, table, bundle)
        return
    x, y = bundle.arrays("train")
    shown = (bundle.to_label_units(y), None) if bundle.regression else (y.numpy(), info["class_names"])
    show_figure(sample_grid_figure(x.numpy(), *shown), ctx.path("samples.png"))


def _show_columns(ctx: PhaseContext, table: Any, bundle: Any) -> None:
    """Per column: the inferred kind (or why it is left out), share missing, cardinality and how
    well it alone predicts the label (on the train rows); then the label's class balance. Saved as
    columns.json; a column that alone predicts the label almost perfectly is named a possible leak."""
    train = bundle.splits["train"]
    y = bundle.split_labels("train").numpy()
    rows = table.overview_of(train, y, bundle.splits["val"], bundle.split_labels("val").numpy())
    write_json_atomic(
        ctx.path(COLUMNS_JSON),
        {"columns": rows, "features": table.preprocess.features, "excluded": table.excluded, "read": table.read_notes},
    )
    cells = "".join(
        f"<tr><td><code>{html.escape(r['column'])}</code></td><td>{html.escape(r['kind'])}</td>"
        f"<td>{r['missing']:.1%}</td><td>{r['distinct']}</td><td>{_share(r['label_score'])}</td>"
        f"<td>{html.escape(r['note'])}</td></tr>"
        for r in rows
    )
    if bundle.regression:
        v = bundle.to_label_units(y)
        balance = (
            f"a number: mean {v.mean():.4g}, std {v.std():.4g}, min {v.min():.4g}, median {np.median(v):.4g}, "
            f"max {v.max():.4g}"
        )
        alone = "val R² of this column alone"
    else:
        counts = np.bincount(y, minlength=len(bundle.source.class_names))
        balance = ", ".join(
            f"{html.escape(n)} {c} ({c / max(1, counts.sum()):.1%})" for n, c in zip(bundle.source.class_names, counts)
        )
        alone = "val accuracy of this column alone"
    leaks = [r["column"] for r in rows if r["possible_leak"]]
    warn = (
        (
            f"<p style='color:{RED}'><b>Possible target leak</b>: {', '.join(html.escape(c) for c in leaks)} alone "
            "predicts the label almost perfectly on val. A column recorded after the outcome (or derived from it) "
            "makes "
            "a model that cannot work in production: drop it (data.drop) and start a new run.</p>"
        )
        if leaks
        else ""
    )
    read = (f"<p>Read as: {html.escape('; '.join(table.read_notes))}.</p>") if table.read_notes else ""
    show_html(
        warn
        + f"<h4>Columns of {html.escape(table.path)}</h4>{read}<table><tr><th>column</th><th>kind</th><th>missing</th>"
        f"<th>distinct</th><th>{alone}</th><th>note</th></tr>{cells}</table>"
        f"<p>{len(table.preprocess.features)} model inputs. Label <code>{html.escape(table.label)}</code> "
        f"(train): {balance}. Override a kind with <code>data.categorical</code>, leave a column out with "
        f"<code>data.drop</code>, put an excluded one back with <code>data.features</code>.</p>"
    )


def _leak_check(ctx: PhaseContext) -> tuple[str, str]:
    """Advisory: no single table column predicts the label almost perfectly (columns.json)."""
    p = ctx.path(COLUMNS_JSON)
    if not p.is_file():
        return "pass", "not a table: no single column that could give the label away"
    leaks = [c for c in read_json(p)["columns"] if c.get("possible_leak")]
    if leaks:
        return "warn", (
            "possible target leak: "
            + ", ".join(
                f"{c['column']} alone gets val {c.get('label_metric', 'accuracy')} {c['label_score']:.3f}"
                for c in leaks
            )
            + "; drop it (data.drop) unless it is known at prediction time"
        )
    return "pass", "no column alone predicts the label almost perfectly on val"


def _share(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def check_determinism(ctx: PhaseContext, bundle: Any) -> dict[str, Any]:
    """Two short same-seed trainings; bitwise-identical losses on CPU → determinism.json."""
    from trainkit.diagnostics.probes import determinism_probe

    from trainkit.errors import TrainingError

    try:
        result = determinism_probe(ctx.config, bundle)
    except TrainingError as exc:  # the model cannot train at all: Phase 2 records the crash, Phase 3 diagnoses it
        result = {"passed": None, "error": str(exc)[:1000], "device": ctx.config.training.device, "epochs": 0}
        write_json_atomic(ctx.path(DETERMINISM_JSON), result)
        show_html(
            f"<p>Determinism probe could not train the model: {html.escape(str(exc)[:400])}. Phase 2 records "
            "the crash and Phase 3 classifies it with a fix.</p>"
        )
        return result
    write_json_atomic(ctx.path(DETERMINISM_JSON), result)
    verdict = "identical (bitwise)" if result["identical"] else f"max |diff| {result['max_abs_diff']:.3g}"
    show_html(f"<p>Determinism probe on {result['device']}: {result['epochs']} epochs twice → {verdict}</p>")
    write_budget_plan(ctx, bundle, result["timing"])
    return result


def write_budget_plan(ctx: PhaseContext, bundle: Any, timing: dict[str, Any]) -> dict[str, Any]:
    """budget_plan.json: the baseline's time extrapolated from the determinism probe (the first
    run's cost outside its epochs, i.e. the process's cold start and setup, or only the warm run's
    setup when the phases share this process (:func:`_warm_phases`), plus the warm run's
    epoch time scaled from the probe's train+val samples to the full split's, plus a measured
    checkpoint write per epoch, times the configured epochs), each phase's share of
    ``budget.total_hours``, its planned fits in baseline units and their estimated time."""
    from trainkit.plan import compute_plan

    cfg = ctx.config
    n_train, n_val = len(bundle.splits["train"]), timing["val_samples"]
    first = timing["wall_s"] if _warm_phases() else timing.get("cold_wall_s", timing["wall_s"])
    fixed = max(0.0, first - timing["epochs_s"])  # cold start (a kernel per phase) + setup, paid once
    epoch = timing["epochs_s"] / max(1, timing["epochs"]) * (n_train + n_val) / max(1, timing["train_samples"] + n_val)
    save = _checkpoint_seconds(ctx, bundle)  # fit writes last.pt (and best.pt when val improves) every epoch
    baseline_s = fixed + (epoch + 2 * save) * cfg.training.epochs
    plan = compute_plan(
        cfg,
        baseline_s,
        dict(
            timing,
            fixed_s=round(fixed, 4),
            epoch_s=round(epoch, 4),
            checkpoint_s=round(save, 4),
            full_train_samples=int(n_train),
            epochs_planned=cfg.training.epochs,
        ),
    )
    write_json_atomic(ctx.path(BUDGET_PLAN_JSON), plan)
    rows = "".join(
        f"<tr><td>{k}</td><td>{v['share']:.0%} = {v['share_s'] / 3600:.2f} h</td><td>{v['planned_units']:g}</td>"
        f"<td>{v['estimated_s']:.1f} s</td><td>{html.escape(v['fits'])}</td></tr>"
        for k, v in plan["phases"].items()
    )
    show_html(
        f"<p>Compute plan: baseline ≈ {baseline_s:.1f} s (extrapolated from the timed probe); the single-optimization "
        f"path plans {plan['planned_units_total']:g} baseline units ≈ {plan['estimated_total_s'] / 3600:.2f} h of the "
        f"{cfg.budget.total_hours:g} h budget ({'fits' if plan['fits'] else 'does NOT fit'}).</p>"
        "<table><tr><th>phase</th><th>share of the budget</th><th>planned (× baseline)</th><th>estimated</th>"
        f"<th>fits</th></tr>{rows}</table>"
    )
    return plan


def _warm_phases() -> bool:
    """The phases run in this process (``TRAINKIT_EXECUTOR=inprocess``): the baseline pays no cold
    start of its own, so its estimate leaves it out. A kernel per phase (papermill, JupyterLab) pays it."""
    from trainkit.errors import PipelineError
    from trainkit.executor import executor_kind

    try:
        return executor_kind() == "inprocess"
    except PipelineError:  # an unknown executor is refused when a phase is run, not here
        return False


def _checkpoint_seconds(ctx: PhaseContext, bundle: Any) -> float:
    """Seconds one atomic, fsynced checkpoint of this model (weights, optimizer state) takes here."""
    import time

    from trainkit.checkpoints import save_checkpoint
    from trainkit.models import build_model
    from trainkit.train import make_optimizer

    cfg = ctx.config
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.kwargs, cfg.model.init)
    opt = make_optimizer(cfg, model.parameters())
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "moments": [p.detach().clone() for p in model.parameters()],
    }  # stands in for Adam/momentum buffers
    path = ctx.path(".checkpoint_probe.pt")
    try:
        t0 = time.perf_counter()
        save_checkpoint(state, path)
        return time.perf_counter() - t0
    finally:
        for p in (path, path.with_name(path.name + ".sha256")):
            p.unlink(missing_ok=True)


def _environment_checks(cfg: Any, env: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Seeds applied, deterministic mode on, the environment documented (environment.json)."""
    r: dict[str, tuple[str, Any]] = {}
    seeding = env.get("seeding", {})
    r["seeds_fixed"] = (
        (
            "pass",
            f"seed {cfg.training.seed} applied (torch initial seed {seeding.get('torch_initial_seed')}), "
            f"split seed {cfg.data.split_seed}",
        )
        if seeding.get("torch_initial_seed") == cfg.training.seed
        else ("fail", "seeds were not applied; run write_environment() first")
    )
    det = env.get("deterministic", {})
    r["deterministic_mode"] = (
        (
            "pass",
            f"deterministic algorithms {det.get('deterministic_algorithms')}, cuDNN "
            f"deterministic {det.get('cudnn_deterministic')}",
        )
        if det.get("deterministic_algorithms")
        else ("fail", "training.deterministic is false; set it true or waive with a reason")
    )
    r["environment_documented"] = (
        ("pass", f"environment.json: python {env.get('python')}, torch {env.get('torch')}")
        if env.get("python") and env.get("torch")
        else ("fail", "environment.json missing or incomplete")
    )
    return r


def _results(ctx: PhaseContext, bundle: Any) -> dict[str, tuple[str, Any]]:
    cfg, r = ctx.config, {}
    env_path, splits_path, det_path = (ctx.path(n) for n in (ENVIRONMENT_JSON, SPLITS, DETERMINISM_JSON))
    r.update(_environment_checks(cfg, read_json(env_path) if env_path.exists() else {}))
    tip = None if bundle.regression else advice(cfg.target.metric, bundle.info["class_counts"]["train"])
    r["config_valid"] = (
        "pass",
        f"training_config.yaml sha256 {config_hash(cfg)[:12]}…; target val "
        f"{target_text(cfg.target.metric, cfg.target.value)}" + (f". Advice: {tip}" if tip else ""),
    )
    r["no_leaky_column"] = _leak_check(ctx)
    splits = read_json(splits_path) if splits_path.exists() else {}
    fp = splits.get("fingerprints", {})
    r["splits_fingerprinted"] = (
        ("pass", f"sizes {splits['sizes']}, exact duplicates across splits {splits['duplicates']['across_splits']}")
        if len(fp) == 3
        else ("fail", "splits.json missing or without 3 fingerprints")
    )
    try:
        bundle.arrays("test", reason="reproducibility_gate quarantine probe")
        r["test_quarantined"] = ("fail", "the test split was readable in Phase 1")
    except QuarantineError:
        r["test_quarantined"] = ("pass", "reading the test split in Phase 1 raised QuarantineError; access logged")
    plan_path = ctx.path(BUDGET_PLAN_JSON)
    if plan_path.is_file():
        plan = read_json(plan_path)
        r["compute_plan"] = (
            "pass" if plan["fits"] else "warn",
            f"baseline ≈ {plan['baseline_estimate_s']:.1f} s; path ≈ {plan['planned_units_total']:g} baseline "
            f"units ≈ {plan['estimated_total_s'] / 3600:.2f} h of {plan['budget_hours']:g} h"
            + ("" if plan["fits"] else ": raise budget.total_hours or shorten the baseline"),
        )
    else:
        r["compute_plan"] = ("na", "no plan: the model could not train, so its time cannot be measured")
    det_r = read_json(det_path) if det_path.exists() else {}
    if det_r.get("error"):
        r["determinism_verified"] = (
            "na",
            f"the model could not train, so determinism cannot be measured: "
            f"{det_r['error'][:300]} (Phase 2 records the crash; Phase 3 diagnoses it)",
        )
        return r
    r["determinism_verified"] = (
        (
            "pass",
            f"{det_r['epochs']} epochs twice on {det_r['device']}: "
            + (
                "bitwise identical"
                if det_r["identical"]
                else f"max diff {det_r['max_abs_diff']:.2g} ≤ {det_r['tolerance']}"
            ),
        )
        if det_r.get("passed")
        else (
            "fail",
            f"two same-seed runs differ (max |diff| {det_r.get('max_abs_diff')})" if det_r else "probe not run",
        )
    )
    return r


def gate(
    ctx: PhaseContext,
    bundle: Any,
    approvals: Any = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the reproducibility gate (records gate.json, then raises GateBlocked if blocked)."""
    from trainkit.decisions import after_planning

    decision = write_decision(ctx, *after_planning(), {})
    optional = [BUDGET_PLAN_JSON, PREPROCESS]  # the compute plan; a table's preprocessing (covered by the hashes)
    arts = [f"{PHASE}/{a}" for a in ARTIFACTS] + [f"{PHASE}/{a}" for a in optional if ctx.path(a).is_file()]
    return finish_gate(
        ctx, "reproducibility_gate", _results(ctx, bundle), arts, approvals, auto_signoff, waivers, decision
    )
