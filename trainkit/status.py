"""``trainkit status``: the phase history, the current gate state, and the exact next step."""

from __future__ import annotations

import time
from pathlib import Path

from trainkit._io import read_json
from trainkit.run import (
    GATE,
    Phase,
    load_manifest,
    phase_entries,
    finish_command,
    resume_command,
    way_out,
    RunFolder,
    TRACKING,
)


def describe_run(run_dir: Path) -> str:
    """A readable multi-line status of a run folder."""
    from trainkit.gates import gate_state

    manifest = load_manifest(run_dir)
    lines = [f"run {manifest['name']} ({run_dir}), config {str(manifest.get('config_hash'))[:12]}"]
    entries = phase_entries(manifest)
    for e in entries:
        took = f"{e.ended - e.started:.1f}s" if e.ended else "-"
        lines.append(
            f"  {e.phase} #{e.attempt}: {e.status}, gate {e.get('gate', '-')}, "
            f"next {e.decision or '-'} ({took}, started "
            f"{time.strftime('%H:%M:%S', time.localtime(e.started))})"
        )
    if not entries:
        return "\n".join(lines + ["  nothing ran yet; next: " + resume_command(run_dir)])
    last = entries[-1]
    d = RunFolder(run_dir).latest(last.phase)
    gate_path = d / GATE if d else None
    if gate_path is None or not gate_path.exists():
        nxt = f"{resume_command(run_dir)}  (re-runs {last.phase})"
    else:
        record = read_json(gate_path)
        state = gate_state(record)
        lines.append(f"  gate {record['gate']}: {state}")
        for c in record["checks"]:
            if c["status"] not in ("pass", "na"):
                lines.append(f"    - {c['id']}: {c['status']} ({c['evidence']})")
        if state == "awaiting_signoff":  # one command to paste
            nxt = finish_command(run_dir, int(last.phase[:2]), record["checks"])
        elif state == "blocked":
            nxt = way_out(run_dir, int(last.phase[:2]), record["checks"], blocked=True)
        elif (
            last.get("decision") == "deploy"
            or manifest.get("status") == "ready_to_deploy"
            or (last.phase == Phase.FINALIZATION.value and state == "passed")
        ):
            nxt = "nothing: ready to deploy"
        else:
            nxt = resume_command(run_dir)
    lines += _tracking_lines(run_dir)
    lines.append(f"next: {nxt}")
    return "\n".join(lines)


def _tracking_lines(run_dir: Path) -> list[str]:
    """Where the run is in MLflow (``tracking.json``): URI, parent run, registered version."""
    p = Path(run_dir) / TRACKING
    try:
        states = read_json(p) if p.is_file() else {}
    except ValueError:
        return [f"  MLflow: {p} is unreadable"]
    from trainkit.reports import tracked_runs

    out = []
    for uri, st in tracked_runs(states):
        reg = st.get("registered") or {}
        version = f", model version {reg['version']} of {reg['name']!r}" if reg.get("version") else ""
        out.append(f"  MLflow: {uri}, run {st['runs']['']}{version}")
    return out
