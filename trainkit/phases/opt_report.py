"""Phase 4's documents: optimization_results.md (the comparison, the ablation, the adoption rule in
words) and the gate's automatic checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainkit._io import read_json, write_text_atomic
from trainkit.metrics import LABELS
from trainkit.phases.common import (
    OptimizationContext,
)
from trainkit.phases.opt_seeds import (
    SINGLE_SEED_FLOOR,
)
from trainkit.run import OPTIMIZATION_CONFIG_YAML, OPTIMIZATION_RESULTS_MD, PROVENANCE_JSON


def write_results(
    ctx: OptimizationContext, cmp: dict[str, Any], decision: dict[str, Any], sweep_summary: dict[str, Any] | None = None
) -> Path:
    """optimization_results.md: the table, the figures, provenance, expected against realized gain."""
    prov = read_json(ctx.path(PROVENANCE_JSON))
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
        f"only when its gain over the best so far exceeds the seed spread ({vb['spread'] * 100:.2f} points).",
        "",
        *(
            [
                f"Small data ({cmp['folds']['val_rows']} val rows; one row is {cmp['folds']['one_row_points']:g} "
                f"points): {cmp['folds']['rule']}. Here k = {cmp['folds']['k']}: run *i* (seed *i*) is fold *i*, "
                "compared fold for fold.",
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
    L += _candidate_lines(cmp, prov, name)
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
    return write_text_atomic(ctx.path(OPTIMIZATION_RESULTS_MD), "\n".join(L) + "\n")


def _candidate_lines(cmp: dict[str, Any], prov: dict[str, Any], name: str) -> list[str]:
    """The successive-halving table and the expected-against-realized table."""
    vb = cmp["vs_best"]
    L = [
        "",
        "## Candidates (successive halving)",
        "",
        f"Every candidate trained on seed {cmp['seeds'][0]}; the better half (at most two) on all {len(cmp['seeds'])} "
        f"seeds; winner **{cmp.get('winner', 'all')}**. {cmp.get('fits', '?')} candidate fits in all.",
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
        f"| {a['id']} | {a['expected_gain_points']:.2f} | {a['realized_gain_points']:+.2f} "
        f"({a.get('seeds', '?')} seed(s)) |"
        for a in cmp["ablation"]
    ]
    L += [
        "",
        f"Adopted candidate: expected {sum(r['expected_gain_points'] for r in prov['recommendations']):.2f}, "
        f"realized {vb['diff'] * 100:+.2f} points over the best so far.",
    ]
    return L


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
        ("pass", OPTIMIZATION_RESULTS_MD)
        if ctx.path(OPTIMIZATION_RESULTS_MD).is_file()
        else ("fail", "optimization_results.md missing")
    )
    prov = read_json(ctx.path(PROVENANCE_JSON)) if ctx.path(PROVENANCE_JSON).is_file() else {"fields": []}
    saved = ctx.path(OPTIMIZATION_CONFIG_YAML).is_file() and all(
        "old" in r and "recommendation" in r for r in prov["fields"]
    )
    res["config_saved"] = (
        "pass" if saved and prov["fields"] else "fail",
        f"optimization_config.yaml with {len(prov['fields'])} changed field(s) traced",
    )
    return res
