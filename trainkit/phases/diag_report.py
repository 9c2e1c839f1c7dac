"""Phase 3's documents: diagnostics_report.md (findings, probes, the references as a control, the
recovery trials, the skill scale of a regression), the findings shown in the notebook with their
figures, and the explainers copied beside the report."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from trainkit._io import write_text_atomic
from trainkit.diagnostics.reference import NAMES as REFERENCE_NAMES
from trainkit.errors import RunError
from trainkit.gates import RED
from trainkit.metrics import LABELS
from trainkit.phases.common import (
    DiagnosticsContext,
    show_figure,
    show_html,
)
from trainkit.run import CURVES_PNG, DIAGNOSTIC_REPORT_MD


def guide_path(name: str) -> Path:
    """docs/diagnostics/<name>.md: the installed package's copy, else the repository's."""
    here = Path(__file__).resolve().parent.parent
    for base in (here / "docs" / "diagnostics", here.parent / "docs" / "diagnostics"):
        if (base / f"{name}.md").is_file():
            return base / f"{name}.md"
    raise RunError(f"guide docs/diagnostics/{name}.md not found in the installed trainkit")


def _figures(ctx: DiagnosticsContext, result: dict[str, Any]) -> list[str]:
    from trainkit.plots import curves_figure, lr_range_figure, reference_figure, seed_variance_figure, throughput_figure

    probes, names = result["evidence"]["probes"], []
    hist = (ctx.run.train_summary(Path(ctx.run_dir) / result["source"]) or {}).get("history")
    figs = [
        (CURVES_PNG, lambda: curves_figure(hist, "diagnosed run: learning curves") if hist else None),
        (
            "lr_range.png",
            lambda: lr_range_figure(probes["lr_range"]) if probes.get("lr_range", {}).get("lrs") else None,
        ),
        (
            "seed_variance.png",
            lambda: (
                seed_variance_figure(probes["seed_variance"])
                if "val_accuracy" in probes.get("seed_variance", {})
                else None
            ),
        ),
        (
            "throughput.png",
            lambda: throughput_figure(probes["throughput"]) if "points" in probes.get("throughput", {}) else None,
        ),
        (
            "reference.png",
            lambda: reference_figure(probes["reference"]) if "models" in probes.get("reference", {}) else None,
        ),
    ]
    for name, make in figs:
        fig = make()
        if fig is not None:
            show_figure(fig, ctx.path(name))
            names.append(name)
    if (result["evidence"].get("residuals") or {}).get("figure"):  # drawn by diagnose (it needs the model)
        names.append(result["evidence"]["residuals"]["figure"])
    return names


def _dot(fired: bool) -> str:
    """A fired/quiet marker in text, not emoji (an emoji renders as a blank box without its font)."""
    return f"<span style='color:{RED if fired else '#8c959f'}'>{'●' if fired else '○'}</span>"


def show_findings(ctx: DiagnosticsContext, result: dict[str, Any]) -> list[str]:
    """The findings table and the recommendations (HTML), and the probe figures."""
    rows = "".join(
        f"<tr><td>{_dot(f['fired'])} {f['name']}</td><td>{f.get('strength', 0):.2f}</td>"
        f"<td>{html.escape(f['summary'])}</td></tr>"
        for f in result["findings"]
    )
    recs = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(r['title'])}</td><td><code>{html.escape(str(r['patch']))}</code></td>"
        f"<td>{r['expected_gain_points']:.1f}</td><td>{r['effort']}</td></tr>"
        for i, r in enumerate(result["plan"]["selected"])
    )
    fixes = "".join(
        f"<li><b>{html.escape(r['title'])}</b>: {html.escape(r['rationale'])} "
        f"<code>{html.escape(str(r['patch']))}</code></li>"
        for r in result["plan"]["fixes"]
    )
    show_html(
        f"<p>Primary root cause: <b>{result['primary'] or 'none found'}</b></p>"
        f"<table><tr><th>diagnostic</th><th>strength</th><th>evidence</th></tr>{rows}</table>"
        f"<p>Selected recommendations (expected gain {result['plan']['expected_gain_points']:.1f} points):</p>"
        f"<table><tr><th>#</th><th>change</th><th>patch</th><th>gain (points)</th><th>effort</th></tr>{recs}</table>"
        + (f"<p>Infrastructure fixes:</p><ul>{fixes}</ul>" if fixes else "")
    )
    return _figures(ctx, result)


def _copy_guides(ctx: DiagnosticsContext, names: list[str]) -> list[str]:
    out = []
    for n in names:
        dest = ctx.path(f"guides/{n}.md")
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(guide_path(n), dest)
        out.append(f"guides/{n}.md")
    return out


def write_report(ctx: DiagnosticsContext, result: dict[str, Any], decision: dict[str, Any], figures: list[str]) -> Path:
    """diagnostic_report.md: decision, primary cause, every diagnostic with its evidence and guide,
    the ranked recommendations with their patches, fixes, probe numbers and figures."""
    plan, probes = result["plan"], result["evidence"]["probes"]
    fired = [f["name"] for f in result["findings"] if f["fired"]]
    guides = _copy_guides(ctx, [f["name"] for f in result["findings"]])
    L = [
        f"# Diagnostic report (round {ctx.attempt})",
        "",
        f"Diagnosed: `{result['source']}` ({'failed baseline' if result['failed_mode'] else 'below target'}).",
        "",
        f"Decision: **option {decision['option']}** → `{decision['next']}` — {decision['reason']}",
        "",
        f"Primary root cause: **{result['primary'] or 'none found'}**"
        + (
            f" — {result.get('cause')}, evidence strength {result.get('strength', 0):.1f} "
            f"([guide](guides/{result['primary']}.md))"
            if result["primary"]
            else ""
        ),
        "",
        "Findings are ranked by evidence strength: the effect in units of its threshold or of twice the seed spread, "
        "whichever is larger; infrastructure findings first.",
        "",
        *_skill_lines(result["evidence"].get("skill")),
        "## Diagnostics",
        "",
        "| diagnostic | fired | strength | evidence | guide |",
        "|---|---|---:|---|---|",
    ]
    L += [
        f"| {f['name']} | {'**yes**' if f['fired'] else 'no'} | {f.get('strength', 0):.2f} | {f['summary']} | "
        f"[{f['name']}.md](guides/{f['name']}.md) |"
        for f in result["findings"]
    ]
    L += [
        "",
        "## Recommendations (ranked by expected gain / effort; selected ones first)",
        "",
        "| # | change | config patch | expected gain (points) | effort (1-3) | why | finding |",
        "|---:|---|---|---:|---:|---|---|",
    ]
    L += [
        f"| {i + 1}{' ✔' if r in plan['selected'] else ''} | {r['title']} | `{r['patch']}` | "
        f"{r['expected_gain_points']:.2f} | "
        f"{r['effort']} | {r['rationale']} | {r['finding']} |"
        for i, r in enumerate(plan["ranked"])
    ]
    L += [
        "",
        f"Combined expected gain of the selected: **{plan['expected_gain_points']:.2f} points** "
        f"(capped by the headroom {plan['headroom_points']:.2f}).",
    ]
    if plan.get("advice"):
        L += ["", "## Changes to your own code (no config patch can make them)", ""]
        L += [f"- **{r['title']}** ({r['finding']}): {r['rationale']}" for r in plan["advice"]]
    if plan["fixes"]:
        L += ["", "## Infrastructure fixes (restart Phase 2)", ""]
        L += [f"- **{r['title']}** ({r['finding']}): {r['rationale']}; patch `{r['patch']}`" for r in plan["fixes"]]
    L += _recovery_lines(result.get("recovery"))
    from trainkit.folds import RULE, SMALL_VAL_ROWS

    if result["evidence"].get("val_size", SMALL_VAL_ROWS) < SMALL_VAL_ROWS:
        L += [
            "",
            "## Small data",
            "",
            f"The val split has {result['evidence']['val_size']} rows: the probes above read it "
            f"as it is, and Phase 4 does not: {RULE}.",
        ]
    L += _reference_lines(probes.get("reference") or {})
    L += ["", "## Probes", ""] + _probe_lines(probes) + [""] + [f"![{n}]({n})" for n in figures]
    L += ["", "## Thresholds", "", "Every detector's thresholds are in `findings.json` and explained in its guide."]
    L += ["", f"Fired: {', '.join(fired) or 'none'}. Guides copied here: {', '.join(guides)}."]
    return write_text_atomic(ctx.path(DIAGNOSTIC_REPORT_MD), "\n".join(L) + "\n")


def _recovery_lines(rec: dict[str, Any] | None) -> list[str]:
    """The failed baseline's candidate fixes and their trial fits (fresh init, a few hundred steps)."""
    if rec is None:
        return []
    L = [
        "",
        "## Recovery: each candidate fix tried before a restart is spent on it",
        "",
        f"Rule: a candidate must learn in a {rec['steps']}-step trial fit from a fresh initialization (the baseline's "
        "learning rule); moves of a kind that already failed in this run and LRs within 2× of a failed attempt's are "
        f"not candidates (failed LRs: {rec['history'].get('failed_lrs') or 'none'}; failed fixes: "
        f"{rec['history'].get('failed_kinds') or 'none'}).",
        "",
        "| fix | patch | steps | loss at init → end | val accuracy | learns |",
        "|---|---|---:|---|---:|---|",
    ]
    for t in rec["trials"]:
        end = t.get("final_train_loss")
        L.append(
            f"| {t['id']} | `{t['patch']}` | {t.get('steps', 0)} | {t.get('init_loss', float('nan')):.4g} → "
            f"{'—' if end is None else f'{end:.4g}'} | {t.get('val_accuracy', float('nan')):.4f} | "
            f"{'**yes**' if t['learned'] else 'no'}: {html.escape(t['why'])} |"
        )
    if rec.get("skipped"):
        L += ["", f"Not tried (time budget): {', '.join(rec['skipped'])}."]
    L += [
        "",
        f"Chosen: **{rec['chosen']['id']}**." if rec["chosen"] else "",
        "" if rec["chosen"] else "No candidate learned: no restart is spent on a guess.",
    ]
    return L


def _skill_lines(skill: dict[str, Any] | None) -> list[str]:
    """How a regression is judged here: on the skill scale, which the fields named accuracy hold."""
    if not skill:
        return []
    return [
        f"**A number to predict**: the detectors read the target metric {skill['metric']} on a skill scale, "
        f"{skill['what']}: 1 is perfect, 0 no better than predicting the train mean, higher is better. The findings' "
        'train / val "accuracy" and the points below are on that scale (a point: 1% of the train mean\'s error); '
        "the reference table gives the metric itself.",
        "",
    ]


def _reference_lines(ref: dict[str, Any]) -> list[str]:
    """The "a simpler model is not better" comparison: the network against the models a data
    scientist would otherwise pick, on the same rows, scored on val (a regression: its metric in
    the label's units, the skill beside it)."""
    if "models" not in ref:
        return ["", "## Reference models", "", f"Not run: {ref.get('error', 'no result')}."]
    names = REFERENCE_NAMES
    L = [
        "",
        "## Reference models (a simpler model is not better)",
        "",
        f"Fitted on the same preprocessed train rows ({ref['rows']} of {ref['of_rows']}), scored on val:",
        "",
    ]
    if "raw" in ref:  # a regression: the metric in the label's units, and its skill
        metric, raw = ref.get("metric", "rmse"), ref["raw"]
        L += [
            f"| model | val {LABELS[metric]} | val R² | skill |",
            "|---|---:|---:|---:|",
        ]
        L += [
            f"| {names.get(k, k)} | {v['val_score']:.4g} | {v['val_r2']:.4f} | {ref['models'][k]['val_score']:.4f} |"
            for k, v in raw["models"].items()
        ]
        if raw.get("network_val_score") is not None:
            L += [f"| **the network** | {raw['network_val_score']:.4g} | | {ref['network_val_score']:.4f} |"]
        gap = ref.get("gap_points")
        if gap is not None:
            L += ["", f"The best reference is {gap:+.1f} skill points {'ahead of' if gap > 0 else 'from'} the network."]
        return L
    metric = ref.get("metric", "accuracy")
    net = ref.get("network_val_score", ref.get("network_val_accuracy"))
    if metric == "accuracy":
        L += ["| model | val accuracy |", "|---|---:|"]
        L += [f"| {names.get(k, k)} | {v['val_accuracy']:.4f} |" for k, v in ref["models"].items()]
        L += [f"| **the network** | {net:.4f} |" if net is not None else "| the network | - |"]
    else:
        L += [f"| model | val {LABELS[metric]} | val accuracy |", "|---|---:|---:|"]
        L += [
            f"| {names.get(k, k)} | {v.get('val_score', v['val_accuracy']):.4f} | {v['val_accuracy']:.4f} |"
            for k, v in ref["models"].items()
        ]
        L += [f"| **the network** | {net:.4f} | |" if net is not None else "| the network | - | |"]
    gap = ref.get("gap_points")
    if gap is not None and gap > 0:
        L += [
            "",
            f"The {names.get(ref['best'], ref['best'])} beats the network by **{gap:.1f} points** on val: that is "
            "headroom the network has not reached (more capacity, dropout or normalization, AdamW with a schedule, "
            "longer training, or embeddings for wide categoricals).",
        ]
    elif gap is not None:
        L += ["", f"The network is at or above the best reference ({-gap:.1f} points ahead)."]
    return L


def _probe_lines(p: dict[str, Any]) -> list[str]:
    def g(name: str, fmt: str) -> str:
        d = p.get(name) or {}
        if "error" in d:
            return f"- {name}: could not run — {d['error']}"
        try:
            return "- " + fmt.format(**d)
        except (KeyError, ValueError, TypeError):
            return f"- {name}: {str({k: v for k, v in d.items() if not isinstance(v, list)})[:300]}"

    return [
        g("init_loss", "loss at init {init_loss:.3f} vs ln(K) {ln_k:.3f} (ratio {ratio:.2f})"),
        g(
            "input_independent",
            "zeroed inputs: val loss {zero_input_val_loss:.3f} (score {zero_input_val_accuracy:.4g}) vs real "
            "inputs {real_val_loss:.3f} ({real_val_accuracy:.4g}) after {epochs} epochs (ok: {ok})",
        ),
        g("overfit_batch", "overfit one batch of {batch}: loss {final_loss:.4f} after {steps} steps (ok: {ok})"),
        g(
            "lr_range",
            "LR range test ({optimizer}): min loss at {min_loss_lr:.3g}, suggested {suggested_lr:.3g}, "
            "configured {configured_lr:g}",
        ),
        g("grad_norms", "gradient norm p50 first/last epoch {p50_first:.3f}/{p50_last:.3f}, max {max:.3f}"),
        g(
            "seed_variance",
            "seed variance: val acc mean {mean:.4f}, std {std:.4f}, range {range:.4f} over {epochs} epochs",
        ),
        g("resource", "resource: data-wait {data_wait_fraction:.3f}, {samples_per_s:.0f} samples/s on {device}"),
        g("dead_units", "dead ReLU units: {dead_fraction:.3f} of {units}"),
        g(
            "data",
            "data: imbalance {imbalance_ratio:.2f}, constant features {constant_features}, "
            "near duplicates train/val {near_duplicates_train_val}",
        ),
        g(
            "label_issues",
            "label issues (confident learning, {folds} folds, out-of-fold val accuracy {oof_val_accuracy:.3f}, "
            "kappa {kappa:.2f}): {verdict}",
        ),
        g("per_class", "val recall per class: {recall}"),
    ]
