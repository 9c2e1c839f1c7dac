"""Phase 4 (Optimization): apply Phase 3's recommendations to the best config so far, train it and
the baseline on the same seeds, adopt it only when its gain exceeds the seed spread, iterate.

Run-level files: ``best.json`` (the best adopted config, its per-seed results and its seed-0
folder) and ``current_config.yaml`` (that config; the one later phases load)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from trainkit._io import read_json, write_json_atomic, write_text_atomic
from trainkit.config import config_hash, config_to_dict, get_dotted, load_config, save_config, with_overrides
from trainkit.errors import RunError
from trainkit.metrics import LABELS, row_score, skill_of
from trainkit.phases.common import (
    run_path,
    CURRENT_CONFIG,
    OptimizationContext,
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
    COMPARISON,
    DECISION,
    FINDINGS,
    TRAIN_SUMMARY,
    TRAINING_CONFIG,
    Phase,
    RunFolder,
    latest_attempt_dir,
    load_manifest,
    next_attempt_dir,
    phase_dir,
)

__all__ = ["start", "apply", "compare", "sweep", "write_results", "decide", "gate", "seed_stats"]

PHASE = Phase.OPTIMIZATION.value
BEST = "best.json"


def start(run_dir: str | Path, iteration: int = 0, interactive: bool = True) -> OptimizationContext:
    """Open ``04_optimization/iter-N`` after a Phase 3 decision A or a Phase 4 decision B."""
    run_dir = run_path(run_dir)
    require_routed(run_dir, PHASE, (Phase.DIAGNOSTICS.value, Phase.OPTIMIZATION.value))
    n = iteration or next_attempt_dir(run_dir, PHASE)[0]
    ctx = begin(OptimizationContext, run_dir, PHASE, n, interactive)
    ctx.config = load_run_config(run_dir)
    show_html(
        f"<p>Optimization iteration {n}: starting from the best config so far "
        f"({'Phase 4 best' if (run_dir / BEST).is_file() else 'the baseline'}).</p>"
    )
    return ctx


def _round_dir(ctx: OptimizationContext) -> Path:
    d = latest_attempt_dir(ctx.run_dir, Phase.DIAGNOSTICS.value)
    if d is None:
        raise RunError(f"{ctx.run_dir}: no Phase 3 round found")
    return d


def realized_gains(run_dir: str | Path, base: Any | None = None) -> dict[str, float]:
    """What Phase 4 learned so far: recommendation id → realized gain (points over the best config
    it was tried on, seed-matched). A recommendation tried only inside a combination gets the
    combination's gain; a later measurement replaces an earlier one. With ``base`` (a config),
    only what was measured on that config counts: a move that lost before the LR was fixed may
    win after it."""
    out: dict[str, float] = {}
    want = config_hash(base) if base is not None else None
    for d in sorted((Path(run_dir) / PHASE).glob("iter-*"), key=lambda p: int(p.name.split("-")[-1])):
        if not (d / COMPARISON).is_file():
            continue
        cmp = read_json(d / COMPARISON)
        if want is not None and cmp.get("base_config_hash") != want:
            continue
        for c in sorted(
            cmp.get("candidates") or [], key=lambda c: -len(c["recommendations"])
        ):  # singles last: they overwrite
            for rid in c["recommendations"]:
                out[rid] = float(c["gain_points"])
    return out


def _untried(ctx: OptimizationContext, cfg: Any) -> list[dict[str, Any]]:
    """This diagnosis round's recommendations still worth trying on ``cfg``: selected ones first,
    then the rest by rank; not those ``cfg`` already holds, nor those measured on it (a near-tie
    is measured too: what beat ``cfg`` beyond the seed spread was adopted, so ``cfg`` would differ)."""
    from trainkit.diagnostics import patch_already_in

    rd = _round_dir(ctx)
    plan = read_json(rd / FINDINGS)["plan"]
    have, lost = config_to_dict(cfg), set(realized_gains(ctx.run_dir, cfg))  # measured on cfg: a loss or a near-tie
    diagnosed = load_config(rd / TRAINING_CONFIG).model.name if (rd / TRAINING_CONFIG).is_file() else None
    out, seen = [], set()
    for r in plan["selected"] + plan["ranked"]:
        if r["id"] in seen or not r.get("patch") or r["id"] in lost or patch_already_in(have, r["patch"]):
            continue
        if (
            "model.kwargs" in r["patch"]
            and "model.name" not in r["patch"]
            and diagnosed
            and diagnosed != cfg.model.name
        ):
            continue  # kwargs written for the model that was diagnosed, not for the family adopted since
        seen.add(r["id"])
        out.append(r)
    return out


def _provenance(
    ctx: OptimizationContext, base: Any, recs: list[dict[str, Any]], round_no: int
) -> tuple[Any, dict[str, Any]]:
    """(config, provenance record) of ``recs`` applied onto ``base``; the record traces every field."""
    from trainkit.diagnostics import combine_patches

    patch, prov = combine_patches(recs)
    cfg = with_overrides(base, patch)
    old, new = config_to_dict(base), config_to_dict(cfg)
    by_id = {r["id"]: r for r in recs}
    rows = [
        dict(
            p,
            old=get_dotted(old, p["field"]),
            new=get_dotted(new, p["field"]),
            round=round_no,
            expected_gain_points=by_id[p["recommendation"]]["expected_gain_points"],
        )
        for p in prov
    ]
    return cfg, {
        "base_config_hash": config_hash(base),
        "config_hash": config_hash(cfg),
        "patch": patch,
        "fields": rows,
        "recommendations": recs,
    }


def apply(ctx: OptimizationContext) -> dict[str, Any]:
    """Patch the best config with this iteration's recommendations → ``optimization_config.yaml``
    and ``provenance.json`` (field, old → new, which finding and recommendation). The comparison
    then tries each recommendation alone and all together and keeps the winner (see compare)."""
    findings = read_json(_round_dir(ctx) / FINDINGS)
    selected = {r["id"] for r in findings["plan"]["selected"]}
    untried = _untried(ctx, ctx.config)
    recs = [r for r in untried if r["id"] in selected] or untried[:3]  # later iterations: the next-ranked ones
    if not recs:
        e = ctx.config.training.epochs
        recs = [
            {
                "id": f"longer_{ctx.attempt}",
                "title": f"Train longer: {e} → {int(e * 1.5)} epochs",
                "patch": {"training.epochs": int(e * 1.5)},
                "finding": "iteration",
                "expected_gain_points": 0.5,
                "effort": 2,
                "rationale": "every recommendation is tried; more steps at the best settings",
            }
        ]
    cfg, record = _provenance(ctx, ctx.config, recs, findings["round"])
    save_config(cfg, ctx.path("optimization_config.yaml"))
    write_json_atomic(ctx.path("provenance.json"), record)
    _show_provenance(record)
    ctx.candidate = cfg
    ctx.recs, ctx.round_no = recs, findings["round"]
    return record


def _show_provenance(record: dict[str, Any]) -> None:
    show_html(
        "<table><tr><th>field</th><th>old</th><th>new</th><th>recommendation</th><th>finding</th></tr>"
        + "".join(
            f"<tr><td>{r['field']}</td><td>{html.escape(str(r['old']))}</td><td>{html.escape(str(r['new']))}</td>"
            f"<td>{r['recommendation']}</td><td>{r['finding']}</td></tr>"
            for r in record["fields"]
        )
        + "</table>"
    )


def _fit_estimate(ctx: OptimizationContext, cfg: Any) -> float:
    """Seconds one fit of ``cfg`` should take: the baseline's training time scaled by epochs."""
    from trainkit.run import baseline_seconds

    unit = baseline_seconds(ctx.run_dir) or 0.0
    base_dir = latest_attempt_dir(ctx.run_dir, Phase.BASELINE.value)
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
    from trainkit.run import RunFolder

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
    """One fit per seed. With ``ctx`` each fit starts only when the phase's time budget allows it
    (``always_first``: the first one starts regardless, so the iteration has a result) and stops
    at the phase's deadline. With ``reference`` (seed → the best-so-far run's history on that
    seed) a seed that cannot beat it is stopped at half time (status ``pruned``; its best so far
    counts, so it lowers the candidate's mean as it should)."""
    from trainkit.train import fit

    rows = []
    c = clock(ctx) if ctx is not None else None
    est = _fit_estimate(ctx, cfg) if ctx is not None else 0.0
    folds = ctx.folds if ctx is not None else None
    J = _judge(bundle.store.root, cfg) if bundle.store is not None else (lambda v: v)  # read once, not per seed
    for s in seeds:
        if c is not None and not (always_first and not rows) and not c.allows(est, f"{what or 'fit'} on seed {s}"):
            break
        d = out / f"seed-{s}" if out is not None else None
        hook = _pruner(
            cfg, (reference or {}).get(s), max(PRUNE_MARGIN, 4 * _phase3_seed_std(ctx)) if ctx else PRUNE_MARGIN, J
        )
        data = bundle
        if folds is not None:  # small data: run i trains on fold i of train+val (seed i), fold for fold with the others
            from trainkit.folds import fold_view

            data = fold_view(bundle, s - folds["s0"], folds["k"], seed=folds["s0"])
        r = fit(
            with_overrides(cfg, {"training.seed": s}),
            data,
            d,
            progress=False,
            deadline=c.deadline if c else None,
            on_epoch=hook,
        )
        raw = row_score(r.best) if r.best else float("nan")
        print(
            f"  {what or 'fit'} {'fold' if folds else 'seed'} {s}: {r.status} after {len(r.history)} epoch(s), best "
            "val "
            f"{LABELS[cfg.target.metric]} {raw:.4f} ({r.wall_time_s:.1f} s)",
            flush=True,
        )
        rows.append(
            {
                "seed": s,
                "status": r.status,
                "best_val_accuracy": (r.best or {}).get("val_accuracy", float("nan")),
                "best_val_score": J(raw),
                "best_val_metric": raw,
                "best_epoch": (r.best or {}).get("epoch"),
                "train_time_s": r.train_time_s,
                "history": r.history,
                "dir": str(d.relative_to(bundle.store.root)) if d is not None and bundle.store else None,
            }
        )
    return rows


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

    cache = ctx.run_dir / PHASE / "baseline_seeds.json"
    base_dir = latest_attempt_dir(ctx.run_dir, Phase.BASELINE.value)
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
    base_dir = latest_attempt_dir(ctx.run_dir, Phase.BASELINE.value)
    s0 = load_config(base_dir / TRAINING_CONFIG).training.seed if base_dir is not None else ctx.config.training.seed
    return [s0 + i for i in range(max(1, seeds))]


def _candidates(ctx: OptimizationContext, ablation: bool) -> list[dict[str, Any]]:
    """Each recommendation alone (with ``ablation``), strongest first, then all of them together:
    information first, so a budget that fits only one fit measures one single move, never an
    untested combination."""
    recs = ctx.recs
    whole = {"id": "all", "recommendations": [r["id"] for r in recs], "config": ctx.candidate}
    if ablation and len(recs) > 1:
        return [
            {"id": r["id"], "recommendations": [r["id"]], "config": with_overrides(ctx.config, r["patch"])}
            for r in recs
        ] + [whole]
    return [whole]


def compare(ctx: OptimizationContext, seeds: int = 3, ablation: bool = True) -> dict[str, Any]:
    """Successive halving over candidates (each recommendation alone with ``ablation``, and all
    together): every candidate trains on the first seed; the better half (at most two) trains on
    the rest; the one with the best mean is this iteration's candidate. It is compared with the
    baseline (its own config and data) and with the best so far, seed for seed."""
    from trainkit.run import load_run_data

    from trainkit.folds import plan_if_small

    plan, _ = plan_if_small(ctx.run.splits(), lambda: load_run_data(ctx.config, ctx.run_dir, PHASE))
    seed_list = _seed_list(ctx, plan["k"] if plan else seeds)
    ctx.folds = dict(plan, s0=seed_list[0]) if plan else None
    base_rows = _baseline_rows(ctx, seed_list[:1], train=True)  # Phase 2's run: nothing to train (folds: fold 1)
    best_file = ctx.run_dir / BEST
    best = (
        read_json(best_file)
        if best_file.is_file()
        else {"label": "baseline", "per_seed": [r["best_val_score"] for r in base_rows]}
    )
    cands = _candidates(ctx, ablation)
    if len(cands) > 1:  # ablation only as far as the budget allows the first rungs and the survivors' seeds
        est = _fit_estimate(ctx, ctx.candidate)
        need = est * (len(cands) + 2 * (len(seed_list) - 1))
        if not clock(ctx).allows(need, "", record=False):
            keep = max(0, int(clock(ctx).left() // max(est, 1e-9)) - 1 - 2 * (len(seed_list) - 1))
            dropped = [c["id"] for c in cands[1 + keep :]]
            clock(ctx).cut(
                f"candidates {', '.join(dropped)} (singles first, the combination last)",
                f"needs ~{need:.1f} s for every candidate and the survivors' seeds, "
                f"{max(0.0, clock(ctx).left()):.1f} s left; {1 + keep} candidate(s) kept",
            )
            cands = cands[: 1 + keep]
    for c in cands:  # rung 0: every candidate on the first seed (Phase 2's seed: its pair is already there)
        c["bundle"] = load_run_data(c["config"], ctx.run_dir, PHASE)
        c["runs"] = _train_seeds(
            c["config"],
            c["bundle"],
            ctx.path(f"runs/{c['id']}") if len(cands) > 1 else ctx.path("runs"),
            seed_list[:1],
            ctx,
            f"candidate {c['id']}",
            always_first=c is cands[0],
        )
    lone = len(cands) == 1
    cands = [c for c in cands if c["runs"]]
    ranked = sorted(cands, key=lambda c: (-_score(c), c["id"] != "all"))
    survivors = ranked[: min(2, max(1, (len(cands) + 1) // 2))] if len(cands) > 1 else ranked
    for i, s in enumerate(seed_list[1:], start=1):  # rung 1: the survivors' other seeds, each after its baseline pair
        base_rows = _baseline_rows(ctx, seed_list[: i + 1], train=True)
        if len(base_rows) <= i:  # the budget cut the baseline's run on this seed: no pair to compare, stop here
            break
        if best.get("label") == "baseline":
            best = dict(best, per_seed=[r["best_val_score"] for r in base_rows])
        for c in survivors:
            if len(c["runs"]) == i:
                c["runs"] += _train_seeds(
                    c["config"],
                    c["bundle"],
                    ctx.path("runs") if lone else ctx.path(f"runs/{c['id']}"),
                    [s],
                    ctx,
                    f"{'candidate' if lone else 'survivor'} {c['id']}",
                    reference=_reference(best, base_rows),
                )
    combo = _survivor_combination(ctx, survivors, best, seed_list, _reference(best, base_rows))
    if combo is not None:
        cands.append(combo)
        survivors.append(combo)
    winner = max(survivors, key=lambda c: (_score(c), c["id"] == "all"))
    floor = _phase3_seed_std(ctx) or SINGLE_SEED_FLOOR  # used only where a side has a single seed
    summary = []
    for c in cands:
        n = len(c["runs"])
        vals = [r["best_val_score"] for r in c["runs"]]
        summary.append(
            {
                "id": c["id"],
                "recommendations": c["recommendations"],
                "seeds": seed_list[:n],
                "per_seed": vals,
                "mean": float(np.mean(vals)),
                "gain_points": float(np.mean(vals) - np.mean(best["per_seed"][:n])) * 100,
                "survived": any(c is x for x in survivors),
                "winner": c is winner,
                "fits": n,
            }
        )
    _adopt_winner(ctx, winner)
    runs = winner["runs"]
    vals = [r["best_val_score"] for r in runs]
    out = {
        "seeds": seed_list,
        "candidate": runs,
        "baseline": base_rows,
        "best_before": best,
        "winner": winner["id"],
        "candidates": summary,
        "vs_baseline": seed_stats([r["best_val_score"] for r in base_rows], vals, floor=floor),
        "vs_best": seed_stats(best["per_seed"], vals, floor=floor),
        "seed_std_floor": floor,
        "ablation": [
            {
                "id": c["id"],
                "expected_gain_points": next(r["expected_gain_points"] for r in ctx.recs if r["id"] == c["id"]),
                "realized_gain_points": c["gain_points"],
                "seeds": len(c["seeds"]),
            }
            for c in summary
            if c["id"] != "all" and len(c["recommendations"]) == 1
        ],
        "fits": sum(c["fits"] for c in summary),
        "base_config_hash": config_hash(ctx.config),
        "folds": ctx.folds,
    }
    write_json_atomic(
        ctx.path(COMPARISON),
        {k: v for k, v in out.items() if k not in ("candidate", "baseline")}
        | {
            "candidate": [{k: v for k, v in r.items() if k != "history"} for r in runs],
            "baseline": [{k: v for k, v in r.items() if k != "history"} for r in base_rows],
        },
    )
    _figures(ctx, out)
    return out


def _survivor_combination(
    ctx: OptimizationContext,
    survivors: list[dict[str, Any]],
    best: dict[str, Any],
    seed_list: list[int],
    reference: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any] | None:
    """When two surviving single recommendations each have a mean above the best so far's, try
    them together (what this iteration learned, used at once); None otherwise."""
    from trainkit.run import load_run_data

    singles = [
        c
        for c in survivors
        if c["id"] != "all" and len(c["recommendations"]) == 1 and _score(c) > np.mean(best["per_seed"])
    ]
    if len(singles) < 2:
        return None
    ids = [c["recommendations"][0] for c in singles[:2]]
    recs = [r for r in ctx.recs if r["id"] in ids]
    cfg, _ = _provenance(ctx, ctx.config, recs, ctx.round_no)
    if not clock(ctx).allows(_fit_estimate(ctx, cfg) * len(seed_list), f"combination {'+'.join(ids)}"):
        return None
    c = {"id": "+".join(ids), "recommendations": ids, "config": cfg, "bundle": load_run_data(cfg, ctx.run_dir, PHASE)}
    c["runs"] = _train_seeds(
        cfg, c["bundle"], ctx.path(f"runs/{c['id']}"), seed_list, ctx, f"combination {c['id']}", reference=reference
    )
    return c if c["runs"] else None


def _reference(best: dict[str, Any], base_rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]] | None:
    """Seed → the best-so-far run's history, for pruning: the baseline's runs while it is the best."""
    if best.get("label") != "baseline":
        return None
    return {r["seed"]: r["history"] for r in base_rows if r.get("history")}


def _phase3_seed_std(ctx: OptimizationContext) -> float:
    """The seed standard deviation Phase 3 measured (of the val target metric), 0 when it did not."""
    sv = (ctx.run.findings(_round_dir(ctx)) or {}).get("evidence", {}).get("probes", {}).get("seed_variance", {})
    return float(sv.get("std") or 0.0) if "error" not in sv else 0.0


def _score(c: dict[str, Any]) -> float:
    vals = [r["best_val_score"] for r in c["runs"] if r["status"] != "nonfinite"]
    return float(np.mean(vals)) if len(vals) == len(c["runs"]) and vals else -1.0


def _adopt_winner(ctx: OptimizationContext, winner: dict[str, Any]) -> None:
    """Make the winning candidate this iteration's config: optimization_config.yaml and provenance.json."""
    if winner["id"] == "all" or len(winner["recommendations"]) == len(ctx.recs):
        return
    recs = [r for r in ctx.recs if r["id"] in winner["recommendations"]]
    cfg, record = _provenance(ctx, ctx.config, recs, ctx.round_no)
    record["tried"] = [r["id"] for r in ctx.recs]
    save_config(cfg, ctx.path("optimization_config.yaml"))
    write_json_atomic(ctx.path("provenance.json"), record)
    ctx.candidate = cfg


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


def sweep(ctx: OptimizationContext, trials: int = 0, storage: str | None = None) -> dict[str, Any] | None:
    """Optional Optuna study around the candidate (LR, weight decay); its best params join the
    candidate (provenance: "optuna"). Plots of the history and importances go into the report."""
    if trials <= 0:
        return None
    from trainkit.sweep import run_worker, study_figures

    url = storage or f"sqlite:///{ctx.path('sweep.db').resolve()}"
    summary = run_worker(ctx.candidate, ctx.run_dir, trials, url, study_name=f"iter-{ctx.attempt}")
    summary["figures"] = [p.name for p in study_figures(url, ctx.dir, f"iter-{ctx.attempt}")]
    if summary["best_params"]:
        prov = read_json(ctx.path("provenance.json"))
        old = config_to_dict(ctx.candidate)
        ctx.candidate = with_overrides(ctx.candidate, summary["best_params"])
        prov["fields"] += [
            {"field": k, "old": get_dotted(old, k), "new": v, "recommendation": "optuna", "finding": "sweep"}
            for k, v in summary["best_params"].items()
        ]
        prov["config_hash"] = config_hash(ctx.candidate)
        write_json_atomic(ctx.path("provenance.json"), prov)
        save_config(ctx.candidate, ctx.path("optimization_config.yaml"))
    write_json_atomic(ctx.path("sweep.json"), summary)
    return summary


def _gains(ctx: OptimizationContext) -> list[float]:
    out = []
    for i in range(1, ctx.attempt):
        p = phase_dir(ctx.run_dir, PHASE, i) / DECISION
        if p.is_file():
            out.append(float(read_json(p)["evidence"].get("gain_points", 0.0)))
    return out


def decide(ctx: OptimizationContext, cmp: dict[str, Any]) -> dict[str, Any]:
    """Adopt the candidate when it beats the best so far by more than the seed spread; then A/B/C/D."""
    from trainkit.decisions import after_optimization

    cfg, vb = ctx.config, cmp["vs_best"]
    adopted = vb["exceeds_spread"] and all(r["status"] != "nonfinite" for r in cmp["candidate"])
    gain = vb["diff"] * 100 if adopted else 0.0
    best_mean = vb["mean_b"] if adopted else vb["mean_a"]
    if adopted:
        seed0 = cmp["candidate"][0]["dir"]
        write_json_atomic(
            ctx.run_dir / BEST,
            {
                "label": f"04_optimization/iter-{ctx.attempt}",
                "dir": seed0,
                "config": ctx.rel("optimization_config.yaml"),
                "mean": vb["mean_b"],
                "std": vb["std_b"],
                "per_seed": [r["best_val_score"] for r in cmp["candidate"]],
            },
        )
        save_config(ctx.candidate, ctx.run_dir / CURRENT_CONFIG)
    rounds = len([e for e in load_manifest(ctx.run_dir)["phases"] if e["phase"] == Phase.DIAGNOSTICS.value])
    option, nxt, reason = after_optimization(
        candidate_mean=vb["mean_b"],
        best_mean=best_mean,
        baseline_mean=cmp["vs_baseline"]["mean_a"],
        significant=adopted,
        target=_judge(ctx.run_dir, cfg)(cfg.target.value),
        gains=_gains(ctx) + [gain],
        iteration=ctx.attempt,
        budget=cfg.budget,
        rounds=rounds,
        metric="skill" if cfg.target.metric in ("rmse", "mae") else cfg.target.metric,
    )
    if cfg.target.metric in ("rmse", "mae"):  # the skill compared, and the error itself
        raw = [r.get("best_val_metric") for r in (cmp["candidate"] if adopted else cmp["baseline"])]
        if raw and all(v is not None for v in raw):
            reason += (
                f" (skill: 1 − {cfg.target.metric} / the train mean's; mean val {cfg.target.metric} "
                f"{np.mean(raw):.4g}, "
                f"target {cfg.target.value:g})"
            )
    if (
        option == "B"
        and nxt == PHASE
        and rounds < cfg.budget.max_optimization_iterations
        and not _untried(ctx, ctx.candidate if adopted else ctx.config)
    ):
        nxt = Phase.DIAGNOSTICS.value
        reason += "; this round's recommendations are used up: re-diagnose the new best config"
    evidence = {
        "metric": ctx.config.target.metric,
        "adopted": adopted,
        "gain_points": round(gain, 3),
        "candidate_mean": vb["mean_b"],
        "best_mean": best_mean,
        "baseline_mean": cmp["vs_baseline"]["mean_a"],
        "diff_ci_points": [round(c * 100, 3) for c in vb["ci"]],
        "seed_spread_points": round(vb["spread"] * 100, 3),
        "iteration": ctx.attempt,
    }
    return write_decision(ctx, option, nxt, reason, evidence)


def write_results(
    ctx: OptimizationContext, cmp: dict[str, Any], decision: dict[str, Any], sweep_summary: dict[str, Any] | None = None
) -> Path:
    """optimization_results.md: the table, the figures, provenance, expected against realized gain."""
    prov = read_json(ctx.path("provenance.json"))
    vb, vbase = cmp["vs_best"], cmp["vs_baseline"]
    ms = lambda m, s: f"{m:.4f} ± {s:.4f}"  # noqa: E731
    per = lambda vals: ", ".join(f"{v:.4f}" for v in vals)  # noqa: E731
    m = ctx.config.target.metric  # a regression's error is compared as its skill (see _judge)
    name = f"skill (1 − {LABELS[m]} / the train mean's)" if m in ("rmse", "mae") else LABELS[m]
    base_vals = [r["best_val_score"] for r in cmp["baseline"]]
    cand_vals = [r["best_val_score"] for r in cmp["candidate"]]
    L = [
        f"# Optimization results (iteration {ctx.attempt})",
        "",
        f"Decision: **option {decision['option']}** → `{decision['next']}` — {decision['reason']}",
        "",
        f"Candidate {'**adopted**' if decision['evidence']['adopted'] else '**not adopted**'}: a change is adopted "
        "only when "
        f"its gain over the best so far exceeds the seed spread ({vb['spread'] * 100:.2f} points).",
        "",
        *(
            [
                f"Small data ({cmp['folds']['val_rows']} val rows; one row is {cmp['folds']['one_row_points']:g} "
                "points): "
                f"{cmp['folds']['rule']}. Here k = {cmp['folds']['k']}: run *i* (seed *i*) is fold *i*, compared fold "
                "for "
                "fold.",
                "",
            ]
            if cmp.get("folds")
            else []
        ),
        f"| config | seeds | best val {name} (mean ± std) | per seed |",
        "|---|---:|---|---|",
        f"| baseline | {len(cmp['seeds'])} | {ms(vbase['mean_a'], vbase['std_a'])} | {per(base_vals)} |",
    ]
    if cmp["best_before"].get("label") != "baseline":
        L.append(
            f"| best before ({cmp['best_before']['label']}) | {len(cmp['seeds'])} | {ms(vb['mean_a'], vb['std_a'])} | "
            f"{per(cmp['best_before']['per_seed'])} |"
        )
    L += [
        f"| iteration {ctx.attempt} | {len(cmp['seeds'])} | {ms(vb['mean_b'], vb['std_b'])} | {per(cand_vals)} |",
        "",
        f"- vs baseline: {vbase['diff'] * 100:+.2f} points, {int(vbase['conf'] * 100)}% CI "
        f"[{vbase['ci'][0] * 100:+.2f}, {vbase['ci'][1] * 100:+.2f}]",
        f"- vs best so far: {vb['diff'] * 100:+.2f} points, CI [{vb['ci'][0] * 100:+.2f}, {vb['ci'][1] * 100:+.2f}]",
        "",
        "![learning curves](comparison.png)",
        "",
        "![per-seed results](seeds.png)",
        "",
        "## Changes (provenance)",
        "",
        "| field | old | new | recommendation | finding |",
        "|---|---|---|---|---|",
    ]
    L += [
        f"| {r['field']} | `{r['old']}` | `{r['new']}` | {r['recommendation']} | {r['finding']} |"
        for r in prov["fields"]
    ]
    L += [
        "",
        "## Candidates (successive halving)",
        "",
        f"Every candidate trained on seed {cmp['seeds'][0]}; the better half (at most two) on all {len(cmp['seeds'])} "
        "seeds; "
        f"winner **{cmp.get('winner', 'all')}**. {cmp.get('fits', '?')} candidate fits in all.",
        "",
        f"| candidate | recommendations | seeds | mean val {name} | gain over best so far (points) | |",
        "|---|---|---:|---:|---:|---|",
    ]
    L += [
        f"| {c['id']} | {', '.join(c['recommendations'])} | {len(c['seeds'])} | {c['mean']:.4f} | "
        f"{c['gain_points']:+.2f} | "
        f"{'winner' if c['winner'] else ('survived' if c['survived'] else 'stopped after one seed')} |"
        for c in cmp.get("candidates", [])
    ]
    L += [
        "",
        "## Expected (Phase 3) against realized gain",
        "",
        "| recommendation | expected (points) | realized alone (points) |",
        "|---|---:|---:|",
    ]
    L += [
        f"| {a['id']} | {a['expected_gain_points']:.2f} | {a['realized_gain_points']:+.2f} ({a.get('seeds', '?')} "
        "seed(s)) |"
        for a in cmp["ablation"]
    ]
    L += [
        "",
        f"Adopted candidate: expected {sum(r['expected_gain_points'] for r in prov['recommendations']):.2f}, "
        f"realized {vb['diff'] * 100:+.2f} points over the best so far.",
    ]
    if sweep_summary:
        L += [
            "",
            "## Optuna sweep",
            "",
            f"{sweep_summary['trials']} trials ({sweep_summary['states']}), best val {name} "
            f"{sweep_summary['best_value']} with {sweep_summary['best_params']}; storage `{sweep_summary['storage']}`",
            "",
        ]
        L += [f"![{f}]({f})" for f in sweep_summary.get("figures", [])]
    return write_text_atomic(ctx.path("optimization_results.md"), "\n".join(L) + "\n")


def _results(ctx: OptimizationContext, cmp: dict[str, Any], decision: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    ok = [r for r in cmp["candidate"] if r["status"] in ("completed", "early_stopped", "time_budget", "pruned")]
    res: dict[str, tuple[str, Any]] = {}
    res["optimized_training_completed"] = (
        "pass" if len(ok) == len(cmp["candidate"]) else "fail",
        f"{len(ok)}/{len(cmp['candidate'])} seeds completed",
    )
    vb = cmp["vs_baseline"]
    res["compared_to_baseline"] = (
        (
            "pass",
            f"baseline {vb['mean_a']:.4f}±{vb['std_a']:.4f} vs {vb['mean_b']:.4f}±{vb['std_b']:.4f} "
            f"on seeds {cmp['seeds']}; diff CI [{vb['ci'][0] * 100:+.2f}, {vb['ci'][1] * 100:+.2f}] points",
        )
        if len(cmp["candidate"]) >= 2 and len(cmp["baseline"]) >= 2
        else (
            "warn",
            f"{len(cmp['candidate'])} candidate and {len(cmp['baseline'])} baseline seed(s) fitted in the time budget: "
            f"the gain must exceed {cmp.get('seed_std_floor', SINGLE_SEED_FLOOR) * 100:.2f} points (Phase 3's seed "
            "std, "
            "else 1 point) to be adopted",
        )
    )
    ev = decision["evidence"]
    consistent = ev["adopted"] == (cmp["vs_best"]["exceeds_spread"] and len(ok) == len(cmp["candidate"]))
    res["adoption_rule"] = (
        "pass" if consistent else "fail",
        f"gain {cmp['vs_best']['diff'] * 100:+.2f} vs spread "
        f"{cmp['vs_best']['spread'] * 100:.2f} points → {'adopted' if ev['adopted'] else 'kept the previous best'}",
    )
    res["results_document"] = (
        ("pass", "optimization_results.md")
        if ctx.path("optimization_results.md").is_file()
        else ("fail", "optimization_results.md missing")
    )
    prov = read_json(ctx.path("provenance.json")) if ctx.path("provenance.json").is_file() else {"fields": []}
    saved = ctx.path("optimization_config.yaml").is_file() and all(
        "old" in r and "recommendation" in r for r in prov["fields"]
    )
    res["config_saved"] = (
        "pass" if saved and prov["fields"] else "fail",
        f"optimization_config.yaml with {len(prov['fields'])} changed field(s) traced",
    )
    return res


def gate(
    ctx: OptimizationContext,
    cmp: dict[str, Any],
    decision: dict[str, Any],
    approvals: Any = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    arts = [
        ctx.rel(n)
        for n in ("optimization_config.yaml", "provenance.json", COMPARISON, "optimization_results.md", DECISION)
        if ctx.path(n).is_file()
    ]
    return finish_gate(
        ctx, "optimization_complete", _results(ctx, cmp, decision), arts, approvals, auto_signoff, waivers, decision
    )
