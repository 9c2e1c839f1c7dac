"""Phase 4's seeds: training a candidate over seeds with a pruner, the baseline's own seeds (reused where
Phase 2 and 3 trained them), the skill judge of a regression, and the seed statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainkit._io import read_json, write_json_atomic
from trainkit.config import config_hash, load_config, with_overrides
from trainkit.errors import RunError
from trainkit.metrics import LABELS, row_score, skill_of
from trainkit.phases.common import (
    OptimizationContext,
    clock,
    show_figure,
)
from trainkit.run import (
    TRAIN_SUMMARY,
    TRAINING_CONFIG,
    Phase,
    RunFolder,
    BASELINE_SEEDS_JSON,
)

PHASE = Phase.OPTIMIZATION.value


def _round_dir(ctx: OptimizationContext) -> Path:
    d = RunFolder(ctx.run_dir).latest(Phase.DIAGNOSTICS.value)
    if d is None:
        raise RunError(f"{ctx.run_dir}: no Phase 3 round found")
    return d


def _fit_estimate(ctx: OptimizationContext, cfg: Any) -> float:
    """Seconds one fit of ``cfg`` should take: the baseline's training time scaled by epochs."""
    unit = RunFolder(ctx.run_dir).baseline_seconds() or 0.0
    base_dir = RunFolder(ctx.run_dir).latest(Phase.BASELINE.value)
    base_epochs = (
        load_config(base_dir / TRAINING_CONFIG).training.epochs if base_dir is not None else cfg.training.epochs
    )
    return unit * cfg.training.epochs / max(1, base_epochs)


SINGLE_SEED_FLOOR = 0.01  # a single-seed comparison without Phase 3's spread must win by more than 1 point


PRUNE_MARGIN = 0.03  # a seed trailing the best so far by more than this (or 4 seed std) at half time cannot win


def _judge(run_dir: Path, cfg: Any) -> Any:
    """What Phase 4 compares, higher is better: the target metric's value, or a regression's skill
    (:func:`trainkit.metrics.skill`: 1 − error / the train mean's error), so one set of statistics
    serves both directions. The raw value stays in each row's ``best_val_metric``."""
    return skill_of(RunFolder(run_dir).splits() or {}, cfg.target.metric)


def _pruner(cfg: Any, reference: list[dict[str, Any]] | None, margin: float, judge: Any = None) -> Any:
    """An on_epoch hook that stops a run which, from half its epochs on, trails the best-so-far
    run on the same seed at the same epoch (its best val target metric up to there) by more than
    ``margin``; None without a reference."""
    if not reference:
        return None
    half = max(1, (cfg.training.epochs + 1) // 2)
    best = [-math.inf]
    J = judge or (lambda v: v)

    def hook(rec: dict[str, Any]) -> bool:
        best[0] = max(best[0], J(row_score(rec)))
        e = rec["epoch"]
        if e + 1 < half:
            return False
        ref = max(J(row_score(h)) for h in reference[: e + 1])
        return best[0] < ref - margin

    return hook


def _train_seeds(
    cfg: Any,
    bundle: Any,
    out: Path | None,
    seeds: list[int],
    ctx: OptimizationContext | None = None,
    what: str = "",
    always_first: bool = False,
    reference: dict[int, list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """One fit per seed (:func:`train_fits` with one spec per seed)."""
    return train_fits([FitSpec(cfg, bundle, out, s, what, reference) for s in seeds], ctx, always_first)


@dataclass
class FitSpec:
    """One fit of Phase 4: ``cfg`` on ``seed``, in ``out/seed-N``; ``reference`` (seed → the
    best-so-far run's history on that seed) prunes it."""

    cfg: Any
    bundle: Any
    out: Path | None
    seed: int
    what: str = ""
    reference: dict[int, list[dict[str, Any]]] | None = None


def train_fits(
    specs: list[FitSpec], ctx: OptimizationContext | None = None, always_first: bool = False
) -> list[dict[str, Any]]:
    """The fits' rows, in order, side by side where :func:`trainkit.workers.fits_side_by_side` holds.
    With ``ctx`` each fit starts only when the phase's time budget allows it (``always_first``:
    the first one starts regardless, so the iteration has a result; one beside another asks for
    its time too) and stops at the phase's deadline; the list ends at the first fit not started.
    With a reference a seed that cannot beat it is stopped at half time (status ``pruned``; its
    best so far counts, so it lowers the candidate's mean as it should)."""
    from trainkit.workers import fits_side_by_side, run_jobs

    if not specs:
        return []
    c = clock(ctx) if ctx is not None else None
    judges: dict[Any, Any] = {}  # read once per run folder, not per seed
    prepared = [_prepare(sp, ctx, judges) for sp in specs]

    def allow(i: int, running: int) -> bool:
        if c is None or (always_first and i == 0):
            return True
        est = _fit_estimate(ctx, specs[i].cfg) * (1 + running) if ctx is not None else 0.0
        return c.allows(est, f"{specs[i].what or 'fit'} on seed {specs[i].seed}")

    parallel = all(fits_side_by_side(sp.cfg, sp.bundle) for sp in specs)
    results = run_jobs([p[0] for p in prepared], [p[1] for p in prepared], parallel, allow)
    rows = []
    for sp, (_, name, J, d, src), r in zip(specs, prepared, results):
        raw = row_score(r["best"]) if r["best"] else float("nan")
        print(
            f"  {name}: {r['status']} after {len(r['history'])} epoch(s), best val "
            f"{LABELS[sp.cfg.target.metric]} {raw:.4f} ({r['wall_time_s']:.1f} s)",
            flush=True,
        )
        rows.append(
            {
                "seed": sp.seed,
                "status": r["status"],
                "best_val_accuracy": (r["best"] or {}).get("val_accuracy", float("nan")),
                "best_val_score": J(raw),
                "best_val_metric": raw,
                "best_epoch": (r["best"] or {}).get("epoch"),
                "train_time_s": r["train_time_s"],
                "history": r["history"],
                "dir": str(d.relative_to(sp.bundle.store.root)) if d is not None and sp.bundle.store else None,
            }
            | ({"continued_from": str(src.relative_to(ctx.run_dir))} if src is not None and ctx is not None else {})
        )
    return rows


def _prepare(sp: FitSpec, ctx: OptimizationContext | None, judges: dict[Any, Any]) -> tuple[Any, str, Any, Any, Any]:
    """(the fit as a job, its name, the judge, its folder, the run it continues or None): a run it
    only extends (:func:`shorter_run`) is copied in when the job starts."""
    from trainkit.train import fit

    c = clock(ctx) if ctx is not None else None
    folds = ctx.folds if ctx is not None else None
    root = sp.bundle.store.root if sp.bundle.store is not None else None
    if root not in judges:
        judges[root] = _judge(root, sp.cfg) if root is not None else (lambda v: v)
    J = judges[root]
    d = sp.out / f"seed-{sp.seed}" if sp.out is not None else None
    margin = max(PRUNE_MARGIN, 4 * _phase3_seed_std(ctx)) if ctx else PRUNE_MARGIN
    hook = _pruner(sp.cfg, (sp.reference or {}).get(sp.seed), margin, J)
    data = sp.bundle
    if folds is not None:  # small data: run i trains on fold i of train+val (seed i), fold for fold with the others
        from trainkit.folds import fold_view

        data = fold_view(sp.bundle, sp.seed - folds["s0"], folds["k"], seed=folds["s0"])
    cfg_s = with_overrides(sp.cfg, {"training.seed": sp.seed})
    src = shorter_run(ctx.run_dir, cfg_s, folds) if ctx is not None and d is not None else None

    def job() -> dict[str, Any]:
        if src is not None and d is not None:
            _continue_from(src, d)
        r = fit(
            cfg_s,
            data,
            d,
            progress=False,
            deadline=c.deadline if c else None,
            on_epoch=hook,
            resume=src is not None,
        )
        keep = ("status", "history", "best", "wall_time_s", "train_time_s")
        return {k: getattr(r, k) for k in keep}

    name = f"{sp.what or 'fit'} {'fold' if folds else 'seed'} {sp.seed}"
    return job, name, J, d, src


CONTINUABLE_SCHEDULES = ("constant", "step")  # the LR at a step does not depend on how many epochs the run has


def shorter_run(run_dir: Path, cfg: Any, folds: dict[str, Any] | None = None) -> Path | None:
    """A run this fit would only extend: ``cfg`` (seed included) with fewer epochs, that ran all of
    them (Phase 2's run, or the best so far and its seeds). Up to its end a fit of ``cfg`` trains
    exactly as it did (the same seed and rows on a CPU; neither the LR schedule, constant or step,
    nor early stopping, whose count the checkpoint carries, depends on the epoch count), so the fit
    continues from its last checkpoint instead of training those epochs again. None with folds (each
    seed on other rows) or a schedule shaped by the run's length (cosine, one-cycle)."""
    from trainkit.run import BEST_JSON, LAST_PT, read_fit

    if folds is not None or cfg.schedule.name not in CONTINUABLE_SCHEDULES:
        return None
    rf = RunFolder(run_dir)
    dirs = [rf.latest(Phase.BASELINE.value)]
    if (run_dir / BEST_JSON).is_file():
        best = run_dir / read_json(run_dir / BEST_JSON)["dir"]
        dirs += [best, *sorted(best.parent.glob("seed-*"))]
    want = config_hash(cfg)
    for d in dirs:
        if d is None or not (d / "checkpoints" / LAST_PT).is_file():
            continue
        fit_dir = read_fit(d)
        if fit_dir is None:  # a folder half written: not one to continue
            continue
        theirs, summary = fit_dir
        e = theirs.training.epochs
        if e >= cfg.training.epochs or summary.get("status") != "completed" or len(summary.get("history") or []) != e:
            continue
        if config_hash(with_overrides(theirs, {"training.epochs": cfg.training.epochs})) == want:
            return d
    return None


def _continue_from(src: Path, d: Path) -> None:
    """``d`` starts as ``src`` ended: its checkpoints (the last one to resume from, the best one
    the extension may not beat); the resumed fit rewrites the metrics from the checkpoint."""
    from trainkit.checkpoints import copy_checkpoints
    from trainkit.run import BEST_PT, LAST_PT

    copy_checkpoints(src / "checkpoints", d / "checkpoints", (LAST_PT, BEST_PT))


def seed_stats(a: list[float], b: list[float], conf: float = 0.95, floor: float = 0.0) -> dict[str, Any]:
    """Mean ± std of each, the difference b − a with a Welch t confidence interval. ``floor``: a
    seed spread measured elsewhere (Phase 3), used when either side has a single seed."""
    from scipy import stats

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    sa, sb = (a_.std(ddof=1) if len(a_) > 1 else 0.0), (b_.std(ddof=1) if len(b_) > 1 else 0.0)
    diff = float(b_.mean() - a_.mean())
    se = math.sqrt(sa**2 / len(a_) + sb**2 / len(b_))
    if se > 0:
        df = se**4 / ((sa**2 / len(a_)) ** 2 / max(1, len(a_) - 1) + (sb**2 / len(b_)) ** 2 / max(1, len(b_) - 1))
        half = float(stats.t.ppf(0.5 + conf / 2, df) * se)
    else:
        half = 0.0
    spread = float(max(sa, sb, floor if min(len(a_), len(b_)) < 2 else 0.0))
    return {
        "mean_a": float(a_.mean()),
        "std_a": float(sa),
        "mean_b": float(b_.mean()),
        "std_b": float(sb),
        "diff": diff,
        "ci": [diff - half, diff + half],
        "conf": conf,
        "spread": spread,
        "exceeds_spread": bool(diff > spread),
    }


def _baseline_rows(ctx: OptimizationContext, seeds: list[int], train: bool) -> list[dict[str, Any]]:
    """The baseline config's runs (its own data and ``data.exclude``, not the candidate's) on
    ``seeds``, in order, cached by config hash in ``04_optimization/baseline_seeds.json``. No fit is
    run twice: Phase 2's run is the first seed and Phase 3's seed-variance runs (same config) the
    next ones. With ``train`` a seed still missing is trained when the time budget allows (Phase 4
    asks for each seed just before a candidate trains on it, so the pairs stay matched)."""
    from trainkit.run import load_run_data

    cache = ctx.run_dir / PHASE / BASELINE_SEEDS_JSON
    base_dir = RunFolder(ctx.run_dir).latest(Phase.BASELINE.value)
    base_cfg = load_config(base_dir / TRAINING_CONFIG)
    h = config_hash(base_cfg)
    if ctx.folds is not None:  # fold runs are not the runs Phase 2 and 3 made on the one split
        h = f"{h}:folds-{ctx.folds['k']}"
    rec = read_json(cache) if cache.is_file() else {}
    if rec.get("config_hash") != h or not isinstance(rec.get("runs"), dict):
        rec = {
            "config_hash": h,
            "config": str((base_dir / TRAINING_CONFIG).relative_to(ctx.run_dir)),
            "runs": {},
            "reused": {},
        }
    known = (
        _known_baseline_runs(ctx.run_dir, base_dir, base_cfg, _judge(ctx.run_dir, base_cfg))
        if ctx.folds is None
        else {}
    )
    for seed, row in known.items():
        if str(seed) not in rec["runs"]:
            rec["runs"][str(seed)] = row
            rec["reused"][str(seed)] = row["reused"]
    missing = [s for s in seeds if str(s) not in rec["runs"]]
    if train and missing:
        have = any(str(s) in rec["runs"] for s in seeds)
        for row in _train_seeds(
            base_cfg,
            load_run_data(base_cfg, ctx.run_dir, PHASE),
            None,
            missing,
            ctx,
            "baseline re-run",
            always_first=not have,
        ):
            rec["runs"][str(row["seed"])] = row
    write_json_atomic(cache, rec)
    return [rec["runs"][str(s)] for s in seeds if str(s) in rec["runs"]]


def _known_baseline_runs(run_dir: Path, base_dir: Path, base_cfg: Any, J: Any) -> dict[int, dict[str, Any]]:
    """Whole runs of the baseline config already trained: Phase 2's own, and Phase 3's seed-variance
    runs of that same config (by config hash). Seed → row; ``J`` (:func:`_judge`) makes the value compared."""
    out: dict[int, dict[str, Any]] = {}
    summary = base_dir / TRAIN_SUMMARY
    if summary.is_file():
        r = read_json(summary)
        if r.get("best") and r.get("status") in ("completed", "early_stopped", "time_budget"):  # the baseline as it ran
            out[base_cfg.training.seed] = {
                "seed": base_cfg.training.seed,
                "status": r["status"],
                "best_val_accuracy": r["best"]["val_accuracy"],
                "best_val_score": J(row_score(r["best"])),
                "best_val_metric": row_score(r["best"]),
                "best_epoch": r["best"]["epoch"],
                "train_time_s": r.get("train_time_s"),
                "history": r.get("history") or [],
                "dir": str(base_dir.relative_to(run_dir)),
                "reused": str(base_dir.relative_to(run_dir)),
            }
    want = config_hash(base_cfg)
    for rd in sorted((run_dir / Phase.DIAGNOSTICS.value).glob("round-*")):
        sv = (RunFolder(run_dir).findings(rd) or {}).get("evidence", {}).get("probes", {}).get("seed_variance", {})
        if sv.get("config_hash") != want or not (sv.get("full_runs") or sv.get("mirrors_baseline")):
            continue  # short seed runs (the budget allowed only their first epochs) are not baseline runs
        for r in sv.get("runs") or []:  # whole runs, or runs mirroring a baseline the budget cut (same length)
            if r.get("status") in ("completed", "early_stopped", "time_budget"):
                out.setdefault(
                    int(r["seed"]),
                    dict(
                        r,
                        dir=None,
                        reused=f"{rd.relative_to(run_dir)} seed-variance probe",
                        best_val_score=J(r["best_val_score"]),
                        best_val_metric=r["best_val_score"],
                    ),
                )
    return out


def _seed_list(ctx: OptimizationContext, seeds: int) -> list[int]:
    """``seeds`` seeds starting at the baseline's own seed (so seed one is Phase 2's run)."""
    base_dir = RunFolder(ctx.run_dir).latest(Phase.BASELINE.value)
    s0 = load_config(base_dir / TRAINING_CONFIG).training.seed if base_dir is not None else ctx.config.training.seed
    return [s0 + i for i in range(max(1, seeds))]


def _phase3_seed_std(ctx: OptimizationContext) -> float:
    """The seed standard deviation Phase 3 measured (of the val target metric), 0 when it did not."""
    sv = (ctx.run.findings(_round_dir(ctx)) or {}).get("evidence", {}).get("probes", {}).get("seed_variance", {})
    return float(sv.get("std") or 0.0) if "error" not in sv else 0.0


def _figures(ctx: OptimizationContext, out: dict[str, Any]) -> None:
    from trainkit.plots import comparison_figure, seed_points_figure

    show_figure(
        comparison_figure(
            {
                "baseline": [r["history"] for r in out["baseline"]],
                f"iteration {ctx.attempt}": [r["history"] for r in out["candidate"]],
            }
        ),
        ctx.path("comparison.png"),
    )
    pts = {"baseline": [r["best_val_score"] for r in out["baseline"]]}
    if out["best_before"].get("label") != "baseline":
        pts["best before"] = out["best_before"]["per_seed"]
    pts[f"iter {ctx.attempt}"] = [r["best_val_score"] for r in out["candidate"]]
    show_figure(
        seed_points_figure(pts, _judge(ctx.run_dir, ctx.config)(ctx.config.target.value)), ctx.path("seeds.png")
    )
