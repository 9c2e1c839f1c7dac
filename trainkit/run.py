"""The run folder: ``run.json`` (manifest and phase history), phase folders, artifact hashes."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from trainkit._io import read_json, write_json_atomic
from trainkit.errors import RunError

__all__ = ["PHASES", "phase_name", "init_run", "load_manifest", "record_phase", "phase_dir", "next_attempt_dir",
           "latest_attempt_dir", "resume_command", "signoff_command", "check_run_name", "baseline_seconds", "phase_cost",
           "run_cost"]

PHASES = ["01_planning", "02_baseline", "03_diagnostics", "04_optimization", "05_finalization"]
_SUB = {"02_baseline": "attempt", "03_diagnostics": "round", "04_optimization": "iter"}


def phase_name(n: int | str) -> str:
    """``2`` or ``"02_baseline"`` → ``"02_baseline"``; a clear error otherwise."""
    if isinstance(n, str) and n in PHASES:
        return n
    try:
        return PHASES[int(n) - 1]
    except (ValueError, IndexError):
        raise RunError(f"unknown phase {n!r}; use 1-5 or one of {PHASES}") from None


def init_run(run_dir: str | Path, name: str | None = None, config_hash: str | None = None) -> dict[str, Any]:
    """Create ``run_dir`` and its ``run.json`` if absent; return the manifest."""
    from trainkit import __version__

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    if path.exists():
        manifest = read_json(path)
    else:
        manifest = {"name": name or run_dir.name, "created": time.time(), "trainkit_version": __version__,
                    "config_hash": None, "phases": [], "status": "running"}
    if config_hash:
        manifest["config_hash"] = config_hash
    write_json_atomic(path, manifest)
    return manifest


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no run.json; not a trainkit run folder (start one with `trainkit run`)")
    return read_json(path)


def save_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / "run.json", manifest)


def record_phase(run_dir: str | Path, phase: str, attempt: int, **fields: Any) -> dict[str, Any]:
    """Insert or update the history entry of (phase, attempt) with ``fields``; returns it."""
    manifest = init_run(run_dir)
    for entry in manifest["phases"]:
        if entry["phase"] == phase and entry["attempt"] == attempt:
            entry.update(fields)
            break
    else:
        entry = {"phase": phase, "attempt": attempt, "started": time.time(), "ended": None,
                 "status": "running", "decision": None, **fields}
        manifest["phases"].append(entry)
    save_manifest(run_dir, manifest)
    return entry


def phase_dir(run_dir: str | Path, phase: str, attempt: int = 1) -> Path:
    """``runs/NAME/01_planning`` or ``runs/NAME/02_baseline/attempt-N`` (round-N, iter-N)."""
    base = Path(run_dir) / phase
    return base / f"{_SUB[phase]}-{attempt}" if phase in _SUB else base


def _attempts(run_dir: str | Path, phase: str) -> list[int]:
    base = Path(run_dir) / phase
    if phase not in _SUB or not base.is_dir():
        return []
    pat = re.compile(rf"^{_SUB[phase]}-(\d+)$")
    return sorted(int(m.group(1)) for d in os.listdir(base) if (m := pat.match(d)))


def latest_attempt_dir(run_dir: str | Path, phase: str) -> Path | None:
    """The highest-numbered attempt folder of a phase, or None."""
    found = _attempts(run_dir, phase)
    if phase not in _SUB:
        d = Path(run_dir) / phase
        return d if d.is_dir() else None
    return phase_dir(run_dir, phase, found[-1]) if found else None


def next_attempt_dir(run_dir: str | Path, phase: str) -> tuple[int, Path]:
    """(N, folder) for the next attempt of a phase."""
    found = _attempts(run_dir, phase)
    n = (found[-1] + 1) if found else 1
    return n, phase_dir(run_dir, phase, n)


def resume_command(run_dir: str | Path) -> str:
    """The exact ``trainkit run --resume`` command for a run folder, quoted for a POSIX shell."""
    import shlex

    run_dir = Path(run_dir)
    return f"trainkit run --resume --name {shlex.quote(run_dir.name)} --runs-dir {shlex.quote(str(run_dir.parent))}"


def signoff_command(run_dir: str | Path, phase_number: int, checks: list[str]) -> str:
    """The exact ``trainkit signoff`` command for a gate, with its pending manual checks, quoted."""
    import shlex

    return (f"trainkit signoff {shlex.quote(str(run_dir))} --phase {phase_number} --by NAME"
            + "".join(f" --check {shlex.quote(c)}" for c in checks))


def check_run_name(name: str) -> str:
    """A run name is one plain folder name inside the runs folder: no separators, not '.', '..' or
    empty, no control characters. Raises ConfigError (exit 2) naming the problem."""
    from trainkit.errors import ConfigError

    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("~")
           or any(ord(ch) < 32 for ch in name) or Path(name).is_absolute())
    if bad:
        raise ConfigError([("--name", f"{name!r} is not a plain folder name; use letters, digits, '-', '_' or '.' "
                                      "(no '/', not '.' or '..'): the run must stay inside --runs-dir")], "command line")
    return name


def baseline_seconds(run_dir: str | Path) -> float | None:
    """The unit of compute cost: the wall time of the first Phase 2 baseline's training (seconds)."""
    p = Path(run_dir) / "02_baseline" / "attempt-1" / "train_summary.json"
    if not p.is_file():
        return None
    t = read_json(p).get("wall_time_s")
    return float(t) if t else None


def phase_cost(run_dir: str | Path, started: float, ended: float) -> dict[str, Any]:
    """A phase's compute: wall seconds and, once the baseline has trained, baseline units."""
    unit = baseline_seconds(run_dir)
    wall = max(0.0, ended - started)
    return {"wall_s": round(wall, 2), "baseline_units": round(wall / unit, 2) if unit else None,
            "baseline_s": round(unit, 2) if unit else None}


def run_cost(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's total compute from its phase entries (wall seconds, baseline units)."""
    costs = [e["cost"] for e in manifest.get("phases", []) if e.get("cost")]
    units = [c["baseline_units"] for c in costs if c.get("baseline_units") is not None]
    return {"wall_s": round(sum(c["wall_s"] for c in costs), 2), "baseline_units": round(sum(units), 2) if units else None}

