"""Phase 4 (Optimization): apply Phase 3's recommendations to the best config so far, train it and
the baseline on the same seeds, adopt it only when its gain exceeds the seed spread, iterate.

Run-level files: ``best.json`` (the best adopted config, its per-seed results and its seed-0
folder) and ``current_config.yaml`` (that config; the one later phases load)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from trainkit._io import read_json, write_json_atomic
from trainkit.config import config_hash, config_to_dict, get_dotted, load_config, save_config, with_overrides
from trainkit.phases.common import (
    run_path,
    CURRENT_CONFIG,
    OptimizationContext,
    begin,
    clock,
    finish_gate,
    load_run_config,
    require_routed,
    show_html,
    write_decision,
)
from trainkit.run import (
    COMPARISON,
    DECISION,
    FINDINGS,
    TRAINING_CONFIG,
    Phase,
    RunFolder,
    BEST_JSON,
    OPTIMIZATION_CONFIG_YAML,
    OPTIMIZATION_RESULTS_MD,
    PROVENANCE_JSON,
    SWEEP_DB,
)
from trainkit.phases.opt_seeds import (
    SINGLE_SEED_FLOOR,
    _baseline_rows,
    _figures,
    _fit_estimate,
    _judge,
    _phase3_seed_std,
    _round_dir,
    _seed_list,
    FitSpec,
    _train_seeds,
    train_fits,
    seed_stats,
)
from trainkit.phases.opt_report import _results, write_results

__all__ = ["start", "apply", "compare", "sweep", "write_results", "decide", "gate", "seed_stats"]

PHASE = Phase.OPTIMIZATION.value
BEST = BEST_JSON


def start(run_dir: str | Path, iteration: int = 0, interactive: bool = True) -> OptimizationContext:
    """Open ``04_optimization/iter-N`` after a Phase 3 decision A or a Phase 4 decision B."""
    run_dir = run_path(run_dir)
    require_routed(run_dir, PHASE, (Phase.DIAGNOSTICS.value, Phase.OPTIMIZATION.value))
    n = iteration or RunFolder(run_dir).next_attempt(PHASE)[0]
    ctx = begin(OptimizationContext, run_dir, PHASE, n, interactive)
    ctx.config = load_run_config(run_dir)
    show_html(
        f"<p>Optimization iteration {n}: starting from the best config so far "
        f"({'Phase 4 best' if (run_dir / BEST).is_file() else 'the baseline'}).</p>"
    )
    return ctx


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
    save_config(cfg, ctx.path(OPTIMIZATION_CONFIG_YAML))
    write_json_atomic(ctx.path(PROVENANCE_JSON), record)
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
    together): every candidate on the first seed, those :func:`_racing` keeps on the rest; the best
    mean is the candidate, compared with the baseline and with the best so far, seed for seed."""
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
    cands = _first_rung(ctx, _affordable(ctx, _candidates(ctx, ablation), seed_list), seed_list[0])
    lone = len(cands) == 1
    cands = [c for c in cands if c["runs"]]
    ranked = sorted(cands, key=lambda c: (-_score(c), c["id"] != "all"))
    survivors = _racing(ranked, best)
    if survivors:
        best, base_rows = _other_seeds(ctx, survivors, seed_list, best, base_rows, lone)
    combo = _survivor_combination(ctx, survivors, best, seed_list, _reference(best, base_rows))
    if combo is not None:
        cands.append(combo)
        survivors.append(combo)
    winner = max(survivors or ranked[:1], key=lambda c: (_score(c), c["id"] == "all"))
    floor = _phase3_seed_std(ctx) or SINGLE_SEED_FLOOR  # used only where a side has a single seed
    summary = [_summary_row(c, seed_list, best, survivors, winner) for c in cands]
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


def _first_rung(ctx: OptimizationContext, cands: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Rung 0: every candidate on the first seed (Phase 2's seed: its pair is already there), in
    one batch (:func:`train_fits`: side by side where it can); each candidate gets its ``bundle``
    and ``runs`` (empty when the budget stopped the batch before it)."""
    from trainkit.run import load_run_data

    for c in cands:
        c["bundle"] = load_run_data(c["config"], ctx.run_dir, PHASE)
    many = len(cands) > 1
    specs = [
        FitSpec(c["config"], c["bundle"], ctx.path(f"runs/{c['id']}" if many else "runs"), seed, f"candidate {c['id']}")
        for c in cands
    ]
    rows = train_fits(specs, ctx, always_first=True)
    for i, c in enumerate(cands):
        c["runs"] = rows[i : i + 1]
    return cands


def _racing(ranked: list[dict[str, Any]], best: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates that train on the other seeds: of the better half (at most two), those ahead
    of the best so far on the first seed (the same seed, the same rows) or on its mean (what adoption
    compares). One behind on both could be adopted only by winning the other seeds by more than one
    and a half seed spreads, and with one seed it cannot be adopted at all; those fits were what an
    iteration where nothing moves spent."""
    top = ranked[: min(2, max(1, (len(ranked) + 1) // 2))]
    bar = min(best["per_seed"][0], float(np.mean(best["per_seed"])))
    return [c for c in top if _score(c) > bar]


def _affordable(ctx: OptimizationContext, cands: list[dict[str, Any]], seed_list: list[int]) -> list[dict[str, Any]]:
    """Ablation only as far as the budget allows the first rungs and the survivors' seeds: the
    candidates that fit, singles first and the combination last (the cut is recorded)."""
    if len(cands) <= 1:
        return cands
    est = _fit_estimate(ctx, ctx.candidate)
    need = est * (len(cands) + 2 * (len(seed_list) - 1))
    if clock(ctx).allows(need, "", record=False):
        return cands
    keep = max(0, int(clock(ctx).left() // max(est, 1e-9)) - 1 - 2 * (len(seed_list) - 1))
    dropped = [c["id"] for c in cands[1 + keep :]]
    clock(ctx).cut(
        f"candidates {', '.join(dropped)} (singles first, the combination last)",
        f"needs ~{need:.1f} s for every candidate and the survivors' seeds, "
        f"{max(0.0, clock(ctx).left()):.1f} s left; {1 + keep} candidate(s) kept",
    )
    return cands[: 1 + keep]


def _other_seeds(
    ctx: OptimizationContext,
    survivors: list[dict[str, Any]],
    seed_list: list[int],
    best: dict[str, Any],
    base_rows: list[dict[str, Any]],
    lone: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rung 1: the survivors' other seeds, each after its baseline pair; (the best so far with the
    baseline's seeds filled in when the baseline is the best, the baseline's rows). When every
    baseline seed is already there (Phase 2's run and Phase 3's seed runs) the survivors' seeds
    train in one batch, side by side where they can (:func:`train_fits`)."""
    base_rows = _baseline_rows(ctx, seed_list, train=False)
    if len(base_rows) == len(seed_list):
        if best.get("label") == "baseline":
            best = dict(best, per_seed=[r["best_val_score"] for r in base_rows])
        ref = _reference(best, base_rows)
        pairs = [(c, s) for s in seed_list[1:] for c in survivors if len(c["runs"]) == 1]
        where = {id(c): ctx.path("runs") if lone else ctx.path(f"runs/{c['id']}") for c in survivors}
        what = {id(c): f"{'candidate' if lone else 'survivor'} {c['id']}" for c in survivors}
        rows = train_fits([FitSpec(c["config"], c["bundle"], where[id(c)], s, what[id(c)], ref) for c, s in pairs], ctx)
        for (c, s), row in zip(pairs, rows):
            if len(c["runs"]) == seed_list.index(s):  # its seeds stay in order: a gap ends them
                c["runs"].append(row)
        return best, base_rows
    for i, s in enumerate(seed_list[1:], start=1):
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
    return best, base_rows


def _summary_row(
    c: dict[str, Any], seed_list: list[int], best: dict[str, Any], survivors: list[dict[str, Any]], winner: Any
) -> dict[str, Any]:
    """One candidate in comparison.json: its seeds, values, mean, gain over the best so far (points)."""
    n = len(c["runs"])
    vals = [r["best_val_score"] for r in c["runs"]]
    return {
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
    save_config(cfg, ctx.path(OPTIMIZATION_CONFIG_YAML))
    write_json_atomic(ctx.path(PROVENANCE_JSON), record)
    ctx.candidate = cfg


def sweep(ctx: OptimizationContext, trials: int = 0, storage: str | None = None) -> dict[str, Any] | None:
    """Optional Optuna study around the candidate (LR, weight decay); its best params join the
    candidate (provenance: "optuna"). Plots of the history and importances go into the report."""
    if trials <= 0:
        return None
    from trainkit.sweep import run_worker, study_figures

    url = storage or f"sqlite:///{ctx.path(SWEEP_DB).resolve()}"
    summary = run_worker(ctx.candidate, ctx.run_dir, trials, url, study_name=f"iter-{ctx.attempt}")
    summary["figures"] = [p.name for p in study_figures(url, ctx.dir, f"iter-{ctx.attempt}")]
    if summary["best_params"]:
        prov = read_json(ctx.path(PROVENANCE_JSON))
        old = config_to_dict(ctx.candidate)
        ctx.candidate = with_overrides(ctx.candidate, summary["best_params"])
        prov["fields"] += [
            {"field": k, "old": get_dotted(old, k), "new": v, "recommendation": "optuna", "finding": "sweep"}
            for k, v in summary["best_params"].items()
        ]
        prov["config_hash"] = config_hash(ctx.candidate)
        write_json_atomic(ctx.path(PROVENANCE_JSON), prov)
        save_config(ctx.candidate, ctx.path(OPTIMIZATION_CONFIG_YAML))
    write_json_atomic(ctx.path("sweep.json"), summary)
    return summary


def _gains(ctx: OptimizationContext) -> list[float]:
    out = []
    for i in range(1, ctx.attempt):
        p = RunFolder(ctx.run_dir).phase_dir(PHASE, i) / DECISION
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
                "config": ctx.rel(OPTIMIZATION_CONFIG_YAML),
                "mean": vb["mean_b"],
                "std": vb["std_b"],
                "per_seed": [r["best_val_score"] for r in cmp["candidate"]],
            },
        )
        save_config(ctx.candidate, ctx.run_dir / CURRENT_CONFIG)
    rounds = len(ctx.run.entries(Phase.DIAGNOSTICS.value))
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
        moves_left=bool(_untried(ctx, ctx.candidate if adopted else ctx.config)),
    )
    if cfg.target.metric in ("rmse", "mae"):  # the skill compared, and the error itself
        raw = [r.get("best_val_metric") for r in (cmp["candidate"] if adopted else cmp["baseline"])]
        if raw and all(v is not None for v in raw):
            reason += (
                f" (skill: 1 − {cfg.target.metric} / the train mean's; mean val {cfg.target.metric} "
                f"{np.mean(raw):.4g}, "
                f"target {cfg.target.value:g})"
            )
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
        for n in (OPTIMIZATION_CONFIG_YAML, PROVENANCE_JSON, COMPARISON, OPTIMIZATION_RESULTS_MD, DECISION)
        if ctx.path(n).is_file()
    ]
    return finish_gate(
        ctx, "optimization_complete", _results(ctx, cmp, decision), arts, approvals, auto_signoff, waivers, decision
    )
