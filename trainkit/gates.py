"""The five gates as data: evaluate, record, sign off, verify; and the plain HTML table.

A gate is a list of checks, each ``automatic`` (evaluated from the run folder, with evidence) or
``manual`` (a person ticks it), each mandatory or advisory. A check's status is one of ``pass``,
``fail``, ``warn`` (advisory concern), ``na`` (not applicable, with the reason), ``waived`` (with
the reason) or ``pending`` (manual, not yet ticked). Evaluating a gate writes ``gate.json`` first
and raises :class:`GateBlocked` afterwards, so the record always explains the block. A sign-off
stores who, when, and the sha256 of every artifact the gate covers; :func:`verify_gate` detects any
later change.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from trainkit._io import md_text, read_json, sha256_file, write_json_atomic
from trainkit.errors import GateBlocked, GateError
from trainkit.run import GATE, RUN_JSON, Phase, RunFolder

__all__ = [
    "CheckSpec",
    "GateSpec",
    "GATES",
    "evaluate_gate",
    "sign_off",
    "verify_gate",
    "gate_html",
    "gate_state",
    "AUTO_SIGNER",
]

AUTO_SIGNER = "trainkit (automatic: all mandatory checks passed)"
_OK = {"pass", "na", "waived", "warn"}


@dataclass(frozen=True)
class CheckSpec:
    id: str
    title: str
    kind: str = "automatic"  # automatic | manual
    mandatory: bool = True


@dataclass(frozen=True)
class GateSpec:
    name: str
    phase: str
    title: str
    checks: tuple[CheckSpec, ...]

    def check(self, cid: str) -> CheckSpec:
        for c in self.checks:
            if c.id == cid:
                return c
        raise GateError(f"gate {self.name!r} has no check {cid!r}; checks: {', '.join(c.id for c in self.checks)}")


def _check(cid: str, title: str, kind: str = "automatic", mandatory: bool = True) -> CheckSpec:
    return CheckSpec(cid, title, kind, mandatory)


GATES: dict[str, GateSpec] = {
    g.name: g
    for g in [
        GateSpec(
            "reproducibility_gate",
            Phase.PLANNING.value,
            "Phase 1 → 2: reproducibility",
            (
                _check("seeds_fixed", "Seeds fixed for python, NumPy, torch and workers"),
                _check("deterministic_mode", "Deterministic mode on (or waived with a reason)"),
                _check("environment_documented", "Environment documented (environment.json)"),
                _check("config_valid", "Config valid and saved (training_config.yaml)"),
                _check("splits_fingerprinted", "Splits stratified and fingerprinted (splits.json)"),
                _check("test_quarantined", "Test split quarantined until Phase 5"),
                _check("determinism_verified", "Two same-seed trainings agree (bitwise on CPU)"),
                _check("compute_plan", "Compute plan fits budget.total_hours (budget_plan.json)", mandatory=False),
                _check(
                    "no_leaky_column",
                    "No table column alone predicts the label almost perfectly (columns.json)",
                    mandatory=False,
                ),
                _check(
                    "config_reviewed", "A person reviewed the config (data, model, target, budget)", "manual", False
                ),
            ),
        ),
        GateSpec(
            "post_baseline",
            Phase.BASELINE.value,
            "Phase 2 → 3 or 5: post-baseline",
            (
                _check("training_completed", "Training completed (no crash)"),
                _check("losses_finite", "Losses finite throughout"),
                _check("learning_happened", "Learning happened (train loss below init, val metric above chance)"),
                _check("gpu_utilisation", "GPU utilisation ≥ block threshold (warn under the warn threshold)"),
                _check("data_wait_reported", "Data-wait fraction reported"),
                _check("best_checkpoint", "Best checkpoint saved and verified"),
                _check("results_document", "baseline_results.md present"),
                _check("curves_reviewed", "A person looked at the learning curves", "manual", False),
            ),
        ),
        GateSpec(
            "diagnostics_complete",
            Phase.DIAGNOSTICS.value,
            "Phase 3 → 4, 5 or 2: diagnostics complete",
            (
                _check("evidence_loaded", "The diagnosed run's evidence was loaded (metrics, or the crash record)"),
                _check("probes_ran", "Probes ran and returned numbers"),
                _check("pipeline_sane", "Overfit-one-batch and input-independent probes pass", mandatory=False),
                _check("root_cause", "Primary root cause identified"),
                _check("recommendations", "3-5 recommendations with impact and effort (or the infrastructure fix)"),
                _check("report_present", "diagnostic_report.md and findings.json present"),
                _check("guides_linked", "A guide for every fired diagnostic, linked from the report"),
                _check("recommendations_reviewed", "A person read the recommendations", "manual", False),
            ),
        ),
        GateSpec(
            "optimization_complete",
            Phase.OPTIMIZATION.value,
            "Phase 4 → 5, 4 or 3: optimization complete",
            (
                _check("optimized_training_completed", "Optimized training completed on every seed"),
                _check(
                    "compared_to_baseline",
                    "Compared to the baseline on the same seeds (mean ± std, CI of the difference)",
                ),
                _check("adoption_rule", "Adopted only when the gain exceeds the seed spread"),
                _check("results_document", "optimization_results.md present"),
                _check("config_saved", "optimization_config.yaml saved with provenance for every changed field"),
                _check("results_reviewed", "A person reviewed the comparison", "manual", False),
            ),
        ),
        GateSpec(
            "production_ready",
            Phase.FINALIZATION.value,
            "Phase 5 → deploy: production ready (25 mandatory checks)",
            (
                _check("test_never_read_before", "1. Test split never read before Phase 5"),
                _check("test_disjoint", "2. Test split disjoint from train/val by content"),
                _check("test_evaluated_once", "3. Test evaluated once, on the final model"),
                _check("test_meets_target", "4. Test metric meets the target (or the shortfall is waived)"),
                _check("val_test_agree", "5. Val and test agree within the bootstrap interval"),
                _check("per_class_reported", "6. Per-class metrics reported, none below the floor"),
                _check("calibration_measured", "7. Calibration measured (ECE, reliability diagram)"),
                _check("robustness_smoke", "8. Robustness smoke test within tolerance"),
                _check("final_training_finite", "9. Final training completed without non-finite loss"),
                _check("weights_finite", "10. All weights finite"),
                _check("checkpoint_verified", "11. Final checkpoint loads with weights_only and its hash matches"),
                _check("config_frozen", "12. Final config frozen and hashed"),
                _check("reproducible", "13. A short re-run reproduces the metrics (bitwise on CPU)"),
                _check("environment_recorded", "14. Environment recorded"),
                _check("earlier_gates_valid", "15. Every earlier gate signed, its artifacts unchanged"),
                _check("onnx_valid", "16. ONNX exported and valid"),
                _check("onnx_parity", "17. ONNX parity with the eager model"),
                _check("torchscript_exported", "18. TorchScript exported"),
                _check("torchscript_parity", "19. TorchScript parity with the eager model"),
                _check("batch_flexible", "20. Both accept batch 1 and batch N"),
                _check("latency_measured", "21. Latency measured (and within budget when one is set)"),
                _check("deployment_guide", "22. Deployment guide written and its snippets ran"),
                _check("model_card", "23. Model card written"),
                _check(
                    "raw_rows_predict", "24. Raw test rows predicted through `trainkit predict` as evaluated (tables)"
                ),
                _check("stakeholder_approval", "25. Stakeholder approval", "manual", True),
            ),
        ),
    ]
}


def _hash_artifacts(run_dir: Path, artifacts: Iterable[str]) -> dict[str, str | None]:
    out = {}
    for rel in artifacts:
        p = run_dir / rel
        out[rel] = sha256_file(p) if p.is_file() else None
    return out


def gate_state(record: dict[str, Any]) -> str:
    """``blocked`` | ``awaiting_signoff`` | ``passed`` from a gate record."""
    checks = record["checks"]
    if any(c["mandatory"] and c["kind"] == "automatic" and c["status"] not in _OK for c in checks):
        return "blocked"
    if record.get("signoff") and all(c["status"] in _OK for c in checks if c["mandatory"]):
        return "passed"
    return "awaiting_signoff"


def _failures(record: dict[str, Any]) -> list[str]:
    return [
        f"{c['id']}: {c['evidence']}"
        for c in record["checks"]
        if c["mandatory"] and c["kind"] == "automatic" and c["status"] not in _OK
    ]


def evaluate_gate(
    name: str,
    run_dir: str | Path,
    phase_dir: str | Path,
    results: dict[str, tuple[str, Any]],
    artifacts: Iterable[str] = (),
    approvals: dict[str, str] | None = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Record ``gate.json`` in ``phase_dir`` from automatic ``results`` ({id: (status, evidence)}), then raise
    GateBlocked if a mandatory automatic check fails. ``approvals`` ({check_id or 'signoff': name}) tick
    manual checks and sign off headlessly; ``auto_signoff`` signs when every mandatory check passes."""
    spec = GATES[name]
    run_dir, phase_dir = Path(run_dir), Path(phase_dir)
    waivers = waivers or {}
    checks = []
    for c in spec.checks:
        if c.kind == "manual":
            status, evidence = "pending", "awaiting a person"
        else:
            status, evidence = results.get(c.id, ("fail", "not evaluated"))
        if status == "fail" and c.id in waivers:
            status, evidence = "waived", f"waived: {waivers[c.id]} (was: {evidence})"
        checks.append(
            {
                "id": c.id,
                "title": c.title,
                "kind": c.kind,
                "mandatory": c.mandatory,
                "status": status,
                "evidence": evidence,
            }
        )
    rels = [str(Path(a)) for a in artifacts]
    record = {
        "gate": name,
        "phase": spec.phase,
        "title": spec.title,
        "evaluated_at": time.time(),
        "phase_dir": str(phase_dir.relative_to(run_dir)) if phase_dir.is_relative_to(run_dir) else str(phase_dir),
        "checks": checks,
        "artifacts": _hash_artifacts(run_dir, rels),
        "signoff": None,
    }
    record["state"] = gate_state(record)
    path = phase_dir / GATE
    _write_record(run_dir, path, record)
    if record["state"] == "blocked":
        raise GateBlocked(name, _failures(record), str(path))
    if approvals:
        names = {v for v in approvals.values() if v}
        manual = [k for k in approvals if k != "signoff"]
        record = sign_off(path, by=", ".join(sorted(names)), checks=manual, run_dir=run_dir)
    elif auto_signoff and all(c["status"] in _OK for c in checks if c["mandatory"]):
        record = sign_off(path, by=AUTO_SIGNER, checks=[], run_dir=run_dir, automatic=True)
    return record


def sign_off(
    gate_path: str | Path,
    by: str,
    checks: Iterable[str] = (),
    run_dir: str | Path | None = None,
    automatic: bool = False,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Tick the manual ``checks`` and sign the gate as ``by``; refused while a mandatory automatic check
    fails or a mandatory manual check is unticked. Records the sha256 of every covered artifact.

    ``waivers`` ({check: reason}) waive failing automatic checks first, each with its documented
    reason and the approver's name (``record["waivers"]``; a production gate also records them in
    the model card)."""
    gate_path = Path(gate_path)
    if not gate_path.is_file():
        raise GateError(f"no gate record at {gate_path}; run the phase first")
    record = read_json(gate_path)
    run_dir = Path(run_dir) if run_dir else _run_dir_of(gate_path, record)
    if not by or not by.strip():
        raise GateError("sign-off needs the approver's name (--by NAME or the name field)")
    if not by.strip().isprintable():
        raise GateError(f"the approver's name {by!r} holds a line break or a control character; give one line of text")
    if waivers:
        _waive(record, by.strip(), waivers, run_dir)
    if gate_state(record) == "blocked":
        raise GateError(f"gate {record['gate']!r} is blocked, cannot be signed: " + "; ".join(_failures(record)))
    for cid in checks:
        entry = next((c for c in record["checks"] if c["id"] == cid), None)
        if entry is None or entry["kind"] != "manual":
            valid = [c["id"] for c in record["checks"] if c["kind"] == "manual"]
            raise GateError(f"{cid!r} is not a manual check of gate {record['gate']!r}; manual checks: {valid}")
        entry["status"], entry["evidence"] = "pass", f"ticked by {by} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    missing = [c["id"] for c in record["checks"] if c["mandatory"] and c["status"] not in _OK]
    if missing:
        raise GateError(
            f"gate {record['gate']!r}: mandatory check(s) {missing} still need ticking; "
            f"sign off with --check {' --check '.join(missing)}"
        )
    record["signoff"] = {
        "by": by.strip(),
        "at": time.time(),
        "automatic": automatic,
        "checks": list(checks),
        "artifacts": _hash_artifacts(run_dir, record["artifacts"].keys()),
    }
    record["state"] = gate_state(record)
    _write_record(run_dir, gate_path, record)
    return record


def _waive(record: dict[str, Any], by: str, waivers: dict[str, str], run_dir: Path) -> None:
    """Waive failing automatic checks of ``record`` in place, each with a reason; refused (GateError,
    nothing changed) for an unknown check, one that does not fail, or an empty reason."""
    for cid, reason in waivers.items():
        entry = next((c for c in record["checks"] if c["id"] == cid), None)
        if entry is None or entry["kind"] != "automatic":
            valid = [c["id"] for c in record["checks"] if c["kind"] == "automatic" and c["status"] == "fail"]
            raise GateError(
                f"--waive {cid}: not an automatic check of gate {record['gate']!r}; failing checks: {valid}"
            )
        if entry["status"] != "fail":
            raise GateError(f"--waive {cid}: the check is {entry['status']}, not failing; nothing to waive")
        if not str(reason or "").strip():
            raise GateError(f"--waive {cid}=REASON: a waiver needs its reason (what was accepted and why)")
    for cid, reason in waivers.items():
        entry = next(c for c in record["checks"] if c["id"] == cid)
        entry["status"], entry["evidence"] = "waived", f"waived by {by}: {reason.strip()} (was: {entry['evidence']})"
        record.setdefault("waivers", []).append({"check": cid, "reason": reason.strip(), "by": by, "at": time.time()})
    card = "05_finalization/model_card.md"
    if record["gate"] == "production_ready" and card in record["artifacts"] and (run_dir / card).is_file():
        from trainkit._io import write_text_atomic

        text = (run_dir / card).read_text()
        lines = [
            f"- `{w['check']}` waived by {md_text(w['by'])} on "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(w['at']))}: {md_text(w['reason'])}"
            for w in record["waivers"]
        ]
        text = text.split("\n## Waivers\n")[0].rstrip("\n") + "\n\n## Waivers\n\n" + "\n".join(lines) + "\n"
        write_text_atomic(run_dir / card, text)
        record["artifacts"][card] = sha256_file(run_dir / card)  # written by trainkit, under this sign-off


CHAIN = "gate_records"  # run.json: {gate record path: sha256 of its bytes}, in the order they were first written


def _write_record(run_dir: Path, path: Path, record: dict[str, Any]) -> None:
    """Write a gate record and chain it: the record carries the sha256 of the gate record written
    before it (``chain_previous``, fixed when it is first written) and run.json carries the sha256
    of every record. Editing any record (an artifact's hash in it, say) then disagrees with
    run.json, and editing run.json too disagrees with the next record's ``chain_previous``."""
    run_dir, path = Path(run_dir).resolve(), Path(path).resolve()
    manifest_path = run_dir / RUN_JSON
    manifest = read_json(manifest_path) if manifest_path.is_file() else None
    try:
        rel = str(path.relative_to(run_dir))
    except ValueError:
        rel = str(path)
    chain: dict[str, str] = dict((manifest or {}).get(CHAIN) or {})
    if "chain_previous" not in record:
        earlier = [(k, v) for k, v in chain.items() if k != rel]
        record["chain_previous"] = {"record": earlier[-1][0], "sha256": earlier[-1][1]} if earlier else None
    write_json_atomic(path, record)
    if manifest is not None:
        with RunFolder(run_dir).updating() as current:  # run.json as it is now (read again: one writer)
            chain = dict(current.get(CHAIN) or {})
            chain.pop(rel, None)
            chain[rel] = sha256_file(path)
            current[CHAIN] = chain


def _verify_chain(run_dir: Path, gate_path: Path, record: dict[str, Any]) -> None:
    manifest_path = run_dir / RUN_JSON
    chain = (read_json(manifest_path).get(CHAIN) or {}) if manifest_path.is_file() else {}
    try:
        rel = str(gate_path.relative_to(run_dir))
    except ValueError:
        return
    if rel in chain and sha256_file(gate_path) != chain[rel]:
        raise GateError(
            f"gate record {rel} was edited after it was written (its sha256 no longer matches run.json); "
            "re-run the phase and sign again"
        )
    prev = record.get("chain_previous")
    if prev and (run_dir / prev["record"]).is_file() and sha256_file(run_dir / prev["record"]) != prev["sha256"]:
        raise GateError(f"gate record {prev['record']} changed after {rel} was chained to it; the records were edited")


def _run_dir_of(gate_path: Path, record: dict[str, Any]) -> Path:
    depth = len(Path(record.get("phase_dir", gate_path.parent.name)).parts)
    return gate_path.parents[depth]


def verify_gate(gate_path: str | Path, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Return the record if the gate passed and no covered artifact changed since sign-off; else GateError."""
    gate_path = Path(gate_path)
    if not gate_path.is_file():
        raise GateError(f"no gate record at {gate_path}; the phase has not run (or not to its gate)")
    record = read_json(gate_path)
    state = gate_state(record)
    if state != "passed":
        how = (
            "fix the failing checks and re-run the phase"
            if state == "blocked"
            else f"sign it off: trainkit signoff RUN --phase {record['phase'][:2].lstrip('0')} --by NAME"
        )
        raise GateError(f"gate {record['gate']!r} ({gate_path}) is {state}; {how}")
    run_dir = Path(run_dir) if run_dir else _run_dir_of(gate_path, record)
    _verify_chain(Path(run_dir).resolve(), gate_path.resolve(), record)
    now = _hash_artifacts(run_dir, record["signoff"]["artifacts"].keys())
    changed = [k for k, v in record["signoff"]["artifacts"].items() if now.get(k) != v]
    if changed:
        raise GateError(
            f"gate {record['gate']!r} is invalid: artifact(s) {changed} changed after sign-off by "
            f"{record['signoff']['by']}; restore them or re-run the phase and sign again"
        )
    return record


# the one palette of gate colours: a check's status and a gate's state (widgets, reports, index.html)
GREEN, RED, AMBER, GREY = "#1a7f37", "#cf222e", "#9a6700", "#57606a"
CHECK_COLORS = {"pass": GREEN, "fail": RED, "warn": AMBER, "na": GREY, "waived": "#8250df", "pending": "#0969da"}
STATE_COLORS = {"passed": GREEN, "blocked": RED, "awaiting_signoff": AMBER}


def state_color(state: str | None) -> str:
    """The colour of a gate state (grey for none or an unknown one)."""
    return STATE_COLORS.get(state or "", GREY)


def gate_html(record: dict[str, Any]) -> str:
    """A self-contained HTML table of a gate record (reads offline, no kernel, no scripts)."""
    state = record.get("state") or gate_state(record)
    rows = []
    for c in record["checks"]:
        col = CHECK_COLORS.get(c["status"], "#000")
        ev = c["evidence"] if isinstance(c["evidence"], str) else str(c["evidence"])
        rows.append(
            f"<tr><td><code>{html.escape(c['id'])}</code></td><td>{html.escape(c['title'])}</td>"
            f"<td>{c['kind']}</td><td>{'mandatory' if c['mandatory'] else 'advisory'}</td>"
            f"<td style='color:{col};font-weight:600'>{c['status'].upper()}</td><td>{html.escape(ev)}</td></tr>"
        )
    so = record.get("signoff")
    sign = (
        f"signed off by <b>{html.escape(so['by'])}</b> at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(so['at']))}"
        if so
        else "not signed off"
    )
    return (
        f"<div class='trainkit-gate' data-gate='{html.escape(record['gate'])}' data-state='{state}'>"
        f"<h3>Gate: {html.escape(record.get('title', record['gate']))} — <span>{state.replace('_', ' ')}</span></h3>"
        f"<p>{sign}</p><table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<thead><tr><th>check</th><th>what</th><th>kind</th><th>weight</th><th>status</th><th>evidence</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def check_approvals(path: str | Path) -> dict[str, Any]:
    """Read and validate an approvals file up front: a YAML/JSON mapping ``{gate: {check: name}}``
    or ``{check: name}`` whose names are non-empty strings. ConfigError (exit 2) names the file and
    the problem."""
    from trainkit.config import load_yaml_file
    from trainkit.errors import ConfigError

    p = Path(path)
    if not p.is_file() and not p.is_dir():
        raise ConfigError([("--approvals", f"file not found: {p}")], str(p))
    raw = load_yaml_file(p, "--approvals")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            [
                (
                    "--approvals",
                    f"expected a mapping {{gate: {{check: name}}}} or {{check: name}}, got {type(raw).__name__}",
                )
            ],
            str(p),
        )
    problems = []
    for k, v in raw.items():
        items = v.items() if isinstance(v, dict) else [(k, v)]
        for check, name in items:
            if not isinstance(name, str) or not name.strip():
                problems.append(
                    (
                        f"{k}" if not isinstance(v, dict) else f"{k}.{check}",
                        f"expected an approver's name (a string), got {name!r}",
                    )
                )
    if problems:
        raise ConfigError(problems, str(p))
    return raw
