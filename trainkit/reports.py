"""The run's ``index.html``: the path taken as a diagram, the key metric and gate state of every
phase, links to each report and artifact. Plain HTML + inline SVG: reads offline, no scripts."""

from __future__ import annotations

import html
import re
import sys
import time
from pathlib import Path
from typing import Any

from trainkit._io import read_json, write_text_atomic
from trainkit.gates import AMBER, GREEN, RED, state_color
from trainkit.run import (
    DECISION,
    FINDINGS,
    INDEX,
    NOTEBOOK,
    Phase,
    REPORT,
    RUN_JSON,
    PhaseFolder,
    RunFolder,
    TRAIN_SUMMARY,
    load_manifest,
    phase_entries,
    run_cost,
    BUDGET_PLAN_JSON,
    CURVES_PNG,
    TEST_EVALUATION_JSON,
    TRACKING,
)

__all__ = [
    "write_index",
    "phase_metric",
    "export_html",
    "refresh_reports",
    "export_reports",
    "safe_export",
    "publish_signoff",
]


def phase_metric(d: Path, phase: str) -> str:
    """The number a reader wants from each phase."""
    try:
        if phase == Phase.BASELINE.value and (d / TRAIN_SUMMARY).is_file():
            best = read_json(d / TRAIN_SUMMARY).get("best") or {}
            metric = (
                (read_json(d / DECISION).get("evidence") or {}).get("metric", "accuracy")
                if (d / DECISION).is_file()
                else "accuracy"
            )
            extra = (
                "" if metric == "accuracy" or best.get("val_score") is None else f"; {metric} {best['val_score']:.4f}"
            )
            if (
                best.get("val_accuracy") is None and best.get("val_score") is not None
            ):  # a regression: its metric, R² beside
                return f"val {metric} {best['val_score']:.4g}; R² {best.get('val_r2', float('nan')):.4f}"
            return f"val acc {best.get('val_accuracy', float('nan')):.4f}{extra}"
        if phase == Phase.DIAGNOSTICS.value and (d / FINDINGS).is_file():
            f = read_json(d / FINDINGS)
            return f"cause: {f['primary'] or 'none'}; expected +{f['plan']['expected_gain_points']:.1f} pts"
        if phase == Phase.OPTIMIZATION.value and (d / DECISION).is_file():
            ev = read_json(d / DECISION)["evidence"]
            name = (
                "val acc"
                if ev.get("metric", "accuracy") == "accuracy"
                else f"val {ev['metric']}{' skill' if ev['metric'] in ('rmse', 'mae') else ''}"
            )
            return f"{name} {ev['candidate_mean']:.4f} (mean over seeds){' adopted' if ev['adopted'] else ''}"
        if phase == Phase.FINALIZATION.value and (d / TEST_EVALUATION_JSON).is_file():
            t = read_json(d / TEST_EVALUATION_JSON)
            if t.get("regression"):
                return "; ".join(
                    f"test {k} {t['test'][k]:.4g} [{t['test'][k + '_ci'][0]:.4g}, {t['test'][k + '_ci'][1]:.4g}]"
                    for k in ("rmse", "mae", "r2")
                )
            extra = (
                ""
                if t.get("metric", "accuracy") == "accuracy"
                else f"; {t['metric']} {t['score']:.4f} [{t['score_ci'][0]:.3f}, {t['score_ci'][1]:.3f}]"
            )
            return f"test acc {t['accuracy']:.4f} [{t['accuracy_ci'][0]:.3f}, {t['accuracy_ci'][1]:.3f}]{extra}"
        splits = RunFolder(d.parent).splits() if phase == Phase.PLANNING.value else None
        if splits is not None:
            return "sizes " + ", ".join(f"{k} {v}" for k, v in splits["sizes"].items())
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def _svg(steps: list[dict[str, Any]]) -> str:
    w, h, gap = 150, 56, 44
    width = max(1, len(steps)) * (w + gap)
    parts = [
        f'<svg class="trainkit-path" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 40}" '
        f'role="img" aria-label="path taken">'
    ]
    for i, s in enumerate(steps):
        x = i * (w + gap) + 4
        color = state_color(s["gate"])
        parts.append(
            f'<rect x="{x}" y="8" width="{w}" height="{h}" rx="8" fill="white" stroke="{color}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{x + w / 2}" y="30" text-anchor="middle" font-size="13" font-family="sans-serif">'
            f"{html.escape(s['label'])}</text>"
        )
        parts.append(
            f'<text x="{x + w / 2}" y="48" text-anchor="middle" font-size="11" fill="{color}" '
            f'font-family="sans-serif">{html.escape(str(s["gate"] or s["status"]))}</text>'
        )
        if i + 1 < len(steps):
            x2 = x + w + gap
            parts.append(
                f'<line x1="{x + w}" y1="{8 + h / 2}" x2="{x2 - 6}" y2="{8 + h / 2}" stroke="#57606a" '
                f'stroke-width="2" marker-end="url(#arrow)"/>'
            )
            parts.append(
                f'<text x="{x + w + gap / 2}" y="{h + 30}" text-anchor="middle" font-size="11" '
                f'font-family="sans-serif">{html.escape(s["option"])}</text>'
            )
    parts.insert(
        1,
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="6" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#57606a"/></marker></defs>',
    )
    parts.append("</svg>")
    return "".join(parts)


def _cost_cell(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "-"
    units = cost.get("baseline_units")
    return f"{cost['wall_s']:.1f} s" + (f"<br><small>{units:.2f} × baseline</small>" if units is not None else "")


def _plan_table(run_dir: Path, manifest: dict[str, Any]) -> str:
    """Phase 1's compute plan against what each phase actually took (all its attempts together)."""
    p = run_dir / Phase.PLANNING.value / BUDGET_PLAN_JSON
    if not p.is_file():
        return ""
    plan = read_json(p)
    rows = []
    for phase, v in plan["phases"].items():
        costs = [e.cost for e in phase_entries(manifest, phase) if e.cost]
        wall = sum(c["wall_s"] for c in costs)
        units = [c["baseline_units"] for c in costs if c.get("baseline_units") is not None]
        actual = (f"{wall:.1f} s" + (f" ({sum(units):.2f} × baseline)" if units else "")) if costs else "-"
        rows.append(
            f"<tr><td>{html.escape(phase)}</td><td>{v['share_s'] / 3600:.2f} h</td><td>{v['planned_units']:g} × "
            f"baseline ≈ {v['estimated_s']:.1f} s</td><td>{actual}</td></tr>"
        )
    return (
        f"<h2>Compute plan</h2><p>Baseline estimated at {plan['baseline_estimate_s']:.1f} s in Phase 1; budget "
        f"{plan['budget_hours']:g} h; the single-optimization path plans {plan['planned_units_total']:g} baseline "
        "units "
        f"({'fits' if plan['fits'] else 'does not fit'}).</p><table id='plan'><tr><th>phase</th><th>share</th>"
        f"<th>planned</th><th>actual</th></tr>{''.join(rows)}</table>"
    )


def _arrow_label(dec: dict[str, Any]) -> str:
    """A decision short enough for the path diagram's arrows: 'A → Phase 4', 'B → deploy'."""
    nxt = str(dec.get("next", ""))
    short = f"Phase {int(nxt[:2])}" if nxt[:2].isdigit() else nxt
    return f"{dec.get('option', '')} → {short}".strip()


def _key_curves(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The learning curves of the baseline and of the final training, inline on the index."""
    import base64

    figs = []
    for e in phase_entries(manifest):
        if e.phase in (Phase.BASELINE.value, Phase.FINALIZATION.value):
            p = e.folder(run_dir) / CURVES_PNG
            if p.is_file():
                figs.append(
                    f"<figure style='display:inline-block;margin:0 1em 0 0'><img style='max-width:460px' "
                    f"src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'/>"
                    f"<figcaption>{html.escape(e.phase)} #{e.attempt}</figcaption></figure>"
                )
    return f"<h2>Learning curves</h2>{''.join(figs[-3:])}" if figs else ""


def write_index(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    steps, rows = [], []
    for e in phase_entries(manifest):
        d = e.folder(run_dir)
        gate = RunFolder(run_dir).gate(d)
        dec = RunFolder(run_dir).decision(d) or {}
        label = e.phase + (f" #{e.attempt}" if d.name != e.phase else "")
        state = gate["state"] if gate else None
        steps.append({"label": label, "gate": state, "status": e.status, "option": _arrow_label(dec) if dec else ""})
        links = [
            f'<a href="{html.escape(str(p.relative_to(run_dir)))}">{html.escape(p.name)}</a>'
            for p in sorted(d.iterdir())
            if p.is_file()
            and p.suffix in (".html", ".md", ".json", ".yaml", ".png", ".onnx", ".ts", ".ipynb", ".jsonl")
        ]
        if (d / "checkpoints").is_dir():
            links += [
                f'<a href="{html.escape(str(p.relative_to(run_dir)))}">checkpoints/{p.name}</a>'
                for p in sorted((d / "checkpoints").glob("*.pt"))
            ]
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(e.status or '')}</td>"
            f"<td class='gate-{state}'>{html.escape(gate['gate'] if gate else '-')}: {html.escape(str(state))}</td>"
            f"<td>{html.escape(phase_metric(d, e.phase))}</td><td>{_cost_cell(e.cost)}</td>"
            f"<td>{html.escape((dec.get('option', '') + ' → ' + str(dec.get('next', ''))) if dec else '')}"
            f"<br><small>{html.escape(dec.get('reason', '')[:300])}</small></td>"
            f"<td>{' · '.join(links)}</td></tr>"
        )
    exit_ = manifest.get("exit") or {}
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in manifest.get("notes", []))
    name, status = html.escape(manifest["name"]), html.escape(str(manifest.get("status")))
    message = " — " + html.escape(exit_.get("message", "")[:400]) if exit_ else ""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("phase", "status", "gate", "key metric", "compute", "decision", "reports and artifacts")
    )
    version, chash = html.escape(str(manifest.get("trainkit_version"))), html.escape(str(manifest.get("config_hash")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>trainkit run {name}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#1f2328}} table{{border-collapse:collapse}}
td,th{{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;font-size:14px}} .gate-passed{{color:{GREEN}}}
.gate-blocked{{color:{RED}}} .gate-awaiting_signoff{{color:{AMBER}}}</style></head><body>
<h1>trainkit run: {name}</h1>
<p>Status: <b>{status}</b>{message}</p>
<h2>Path taken</h2>
{_svg(steps)}
{_tracking_html(run_dir)}{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Phases</h2>
<table id="phases"><tr>{head}</tr>
{"".join(rows)}<tr><td>total</td><td></td><td></td><td></td><td>{_cost_cell(run_cost(manifest))}</td><td></td><td></td></tr></table>
{_key_curves(run_dir, manifest)}
{_plan_table(run_dir, manifest)}
<p><small>trainkit {version} · config hash {chash}</small></p>
</body></html>"""
    return write_text_atomic(run_dir / INDEX, page)


def _tracking_html(run_dir: Path) -> str:
    """Where the run is tracked in MLflow (from ``tracking.json``), linked for a server."""
    p = Path(run_dir) / TRACKING
    if not p.is_file():
        return ""
    try:
        states = read_json(p)
    except ValueError:
        return ""
    items = []
    for uri, st in tracked_runs(states):
        rid, eid = (st.get("runs") or {}).get(""), st.get("experiment_id")
        where = html.escape(uri)
        if uri.startswith(("http://", "https://")) and "***" not in uri:
            link = f"{html.escape(uri.rstrip('/'))}/#/experiments/{html.escape(str(eid))}/runs/{html.escape(rid)}"
            where = f'<a href="{link}">{where}</a>'
        items.append(
            f"<li id='mlflow'>MLflow: {where}, experiment {html.escape(str(eid))}, run "
            f"<code>{html.escape(rid)}</code></li>"
        )
    return f"<ul>{''.join(items)}</ul>" if items else ""


def tracked_runs(states: Any) -> list[tuple[str, dict[str, Any]]]:
    """(URI, state) of every MLflow parent run in a ``tracking.json`` ({uri: {experiment: state}})."""
    out = []
    for uri, by_exp in states.items() if isinstance(states, dict) else ():
        for st in by_exp.values() if isinstance(by_exp, dict) else ():
            if isinstance(st, dict) and (st.get("runs") or {}).get(""):
                out.append((uri, st))
    return out


# ------------------------------------------------------------------ phase reports (HTML) and their refresh

_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", re.I)
_CDN_MODULE = re.compile(r"<script type=\"module\">(?:(?!</script>).)*https?://(?:(?!</script>).)*</script>", re.S)


def export_html(nb_path: str | Path, html_path: str | Path) -> Path:
    """Export an executed notebook to a self-contained HTML file that reads offline.

    Widget state is dropped (its renderer would come from a CDN; every gate also renders as a
    plain HTML table), images are embedded, and no script is loaded from the network. A banner at
    the top states the phase's gate and decision as they are now (a sign-off, waiver or resume
    after the notebook ran changes them; the cells below show the state when it ran)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    body = _CDN_MODULE.sub("", _EXTERNAL_SCRIPT.sub("", body))
    banner = _state_banner(Path(nb_path).parent)
    if banner:
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + banner, body, count=1)
    return write_text_atomic(html_path, body)


def _state_banner(d: Path) -> str:
    """The phase's current gate state, sign-off, waivers and decision, as an HTML block."""
    from trainkit.gates import gate_state, state_color

    record = PhaseFolder(d).gate()
    if record is None:
        return ""
    state = gate_state(record)
    color = state_color(state)
    sig = record.get("signoff") or {}
    parts = [
        f"Gate <b>{html.escape(record['gate'])}</b>: <b style='color:{color}' id='gate-state'>{html.escape(state)}</b>"
    ]
    if sig:
        parts.append(
            f"signed by {html.escape(str(sig.get('by')))} on "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(sig.get('at', 0)))}"
        )
    pending = [c["id"] for c in record["checks"] if c["mandatory"] and c["status"] in ("fail", "pending")]
    if pending and state != "passed":
        parts.append("missing: " + ", ".join(html.escape(p) for p in pending))
    for w in record.get("waivers") or []:
        parts.append(f"waived {html.escape(w['check'])} ({html.escape(w['reason'])}, by {html.escape(w['by'])})")
    dec = PhaseFolder(d).decision()
    if dec:
        parts.append(
            f"decision {html.escape(str(dec.get('option', '')))} → <b>{html.escape(str(dec.get('next')))}</b>: "
            f"{html.escape(str(dec.get('reason', ''))[:400])}"
        )
    return (
        f"<div id='trainkit-state' style='font-family:sans-serif;border:2px solid {color};padding:8px 12px;"
        f"margin:8px'>Current state ({time.strftime('%Y-%m-%d %H:%M:%S')}): " + "; ".join(parts) + "</div>"
    )


def refresh_reports(run_dir: Path, dirs: list[Path] | None = None) -> list[Path]:
    """Re-export the reports of ``dirs`` (default: every phase folder) and index.html, after a state
    change (sign-off, waiver, resume, exit) so that no report shows a state that is no longer true."""
    run_dir = Path(run_dir)
    out = []
    targets = dirs if dirs is not None else sorted({p.parent for p in run_dir.glob("0*/**/notebook.ipynb")})
    for d in targets:
        if (Path(d) / NOTEBOOK).is_file():
            safe_export(Path(d) / NOTEBOOK, Path(d) / REPORT)
            out.append(Path(d) / REPORT)
    if (run_dir / RUN_JSON).is_file():
        out.append(write_index(run_dir))
    return out


def safe_export(nb: Path, html: Path) -> None:
    if nb.exists():
        try:
            export_html(nb, html)
        except Exception as exc:  # a report must never hide the phase's own outcome
            print(f"trainkit: could not export {html}: {exc}", file=sys.stderr)


def export_reports(run_dir: str | Path) -> list[Path]:
    """Re-export every executed phase notebook to its report.html (with its current state), then index.html."""
    return refresh_reports(Path(run_dir))


def publish_signoff(
    gate_path: str | Path,
    by: str,
    checks: list[str],
    run_dir: str | Path | None,
    waivers: dict[str, str] | None = None,
    warn: Any = None,
) -> dict[str, Any]:
    """Sign a gate off, then let everything that shows its state follow: the phase's report and
    index.html are rewritten, and (tracking on) MLflow gets the new state. Returns the gate record;
    a report or push that fails is reported through ``warn`` and never undoes the sign-off."""
    from trainkit.gates import sign_off

    record = sign_off(gate_path, by=by, checks=checks, run_dir=run_dir, waivers=waivers)
    if run_dir is None:
        return record
    try:
        refresh_reports(Path(run_dir), [Path(gate_path).parent])
    except Exception as exc:  # a report must never undo a sign-off
        if warn is None:
            raise
        warn(f"index.html not rewritten: {exc}")
    from trainkit.tracking import push_quietly

    push_quietly(run_dir, warn=warn)  # the sign-off (a registered model version for Phase 5) in MLflow
    return record
