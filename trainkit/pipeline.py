"""``trainkit run``: the walker that chains the phase notebooks (each run by
:mod:`trainkit.executor`), the run lock, resume, and the run's exit record.

Each phase notebook gets ``run_dir`` and a few parameters; everything else passes through the run
folder. The budget's skip rules live in :mod:`trainkit.budget`, MLflow's start and stop in
:mod:`trainkit.tracking`. The next phase comes from the phase's
``decision.json``; the gate's ``gate.json`` says whether it may start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainkit.budget import _count_gap, _over_budget, _route_over_budget
from trainkit.decisions import resume_route, route
from trainkit.errors import ConfigError, PipelineError, RunError
from trainkit.executor import _ATTEMPTED, execute_phase, executor_kind, notebook_path
from trainkit.kernel import shared_kernel
from trainkit.reports import export_html, export_reports, refresh_reports, write_index
from trainkit.run import (
    DECISION,
    GATE,
    PHASES,
    REPORT,
    PhaseFolder,
    RUN_CONFIG,
    RUN_JSON,
    Phase,
    RunFolder,
    _end_running,
    init_run,
    load_manifest,
    record_phase,
    resume_command,
    run_cost,
    signoff_command,
)
from trainkit.tracking import _close_tracking, _kick, _start_tracking

__all__ = [
    "notebook_path",
    "execute_phase",
    "export_html",
    "run_pipeline",
    "PipelineOutcome",
    "export_reports",
    "write_index",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGNOFF = 0, 1, 2, 3


@dataclass
class PipelineOutcome:
    """How ``trainkit run`` ends: the exit code and message, the run folder, the path taken, and
    ``stopped``: it ended early as ``--stop-after`` asked (an exit 0 that is not the run's end)."""

    code: int
    message: str
    run_dir: Path
    path: list[str]
    stopped: bool = False


def _gate_state(d: Path) -> str | None:
    record = PhaseFolder(d).gate()
    if record is None:
        return None
    from trainkit.gates import gate_state

    return gate_state(record)


def _signoff_hint(run_dir: Path, phase: str, d: Path) -> str:
    record = RunFolder(run_dir).gate(d) or {}
    manual = [c["id"] for c in record["checks"] if c["kind"] == "manual" and c["mandatory"] and c["status"] != "pass"]
    n = int(phase[:2])
    return (
        f"{phase} is waiting for a sign-off of gate '{record['gate']}'. Finish it with:\n"
        f"  {signoff_command(run_dir, n, manual)}\n"
        f"then: {resume_command(run_dir)}\n"
        f"(or in JupyterLab, in any notebook: from trainkit.widgets import GateWidget; "
        f"GateWidget({str(d / GATE)!r}, {str(run_dir)!r})"
        f"; or rerun with --approve {manual[0] if manual else 'signoff'}=NAME)"
    )


def _resume_point(run_dir: Path) -> tuple[str | None, str | None, int | None]:
    """(phase to run next or None when finished, why, attempt to continue in place or None)."""
    run = RunFolder(run_dir)
    entries = run.entries()
    if not entries:
        return PHASES[0], "nothing ran yet", None
    last = entries[-1]
    d = run.latest(last.phase)
    state = _gate_state(d) if d else None
    decision = (run.routed_decision(d) if state == "passed" else run.decision(d)) or {}
    to = resume_route(
        phase=last.phase,
        gate=state,
        option=decision.get("option"),
        next_phase=decision.get("next"),
        ran_out=last.phase in _ATTEMPTED or last.phase == PHASES[-1],
    )
    if to.action == "deploy":
        _mark_deploy(run_dir, d)
        return None, "production_ready is passed and signed: ready to deploy", None
    if to.action == "done":
        return None, "the run already finished", None
    if to.action == "continue" and state == "passed":
        return to.next, f"{last.phase} passed its gate", None
    if to.action == "continue":  # a failed baseline's gate is blocked by design: its decision routes on
        return to.next, f"{last.phase} failed and its recorded decision is C → {to.next}", None
    if to.action == "in_place":  # died before its gate
        return (
            last.phase,
            f"{last.phase} attempt {last.attempt} did not finish; continuing it",
            last.attempt,
        )
    return last.phase, f"{last.phase} ended {state or last.status}; running it again", None


def _mark_deploy(run_dir: Path, d: Path) -> None:
    """A production gate signed after the notebook ran: record the deploy decision."""
    from trainkit._io import write_json_atomic

    decision = RunFolder(run_dir).decision(d) or {}
    if decision.get("next") != "deploy":
        write_json_atomic(
            d / DECISION,
            {
                "phase": Phase.FINALIZATION.value,
                "attempt": 1,
                "option": "-",
                "next": "deploy",
                "reason": "production_ready passed and signed (after the notebook ran)",
                "evidence": {"gate": "passed", "previous": decision.get("reason")},
            },
        )
    record_phase(run_dir, Phase.FINALIZATION.value, 1, decision="deploy", gate="passed")
    with RunFolder(run_dir).updating() as manifest:
        manifest["status"] = "ready_to_deploy"
    refresh_reports(run_dir, [d])


def run_pipeline(
    config_path: str | None,
    run_dir: Path,
    overrides: list[str] | None = None,
    target: float | None = None,
    stop_after: int | None = None,
    approvals: dict[str, str] | str | None = None,
    resume: bool = False,
    echo: Any = print,
    started: float | None = None,
) -> PipelineOutcome:
    """Walk the decision tree from Phase 1 (or the resume point) and return the exit outcome;
    ``index.html`` is rewritten on every way out. ``started``: when this invocation began (the CLI
    passes its process's start), else now; all of its time is on the run's budget clock."""
    run_dir = Path(run_dir).resolve()
    started = time.time() if started is None else started
    created = not run_dir.exists()
    outcome: PipelineOutcome | None = None
    walk: _Walk | None = None
    trackers: list[Any] = []  # the MLflow pusher, once the run's config says tracking is on
    from trainkit.tracking import PIPELINE_ENV

    previous_env = os.environ.get(PIPELINE_ENV)
    os.environ[PIPELINE_ENV] = "1"  # the kernels leave pushing to this process
    try:
        with run_lock(run_dir), shared_kernel():
            try:
                walk = _Walk(RunFolder(run_dir), stop_after, approvals, echo, trackers, t0=started)
                outcome = _walk(walk, config_path, overrides, target, resume)
            except ConfigError:
                if created and not (run_dir / RUN_JSON).exists():
                    shutil.rmtree(run_dir, ignore_errors=True)  # refused before it started: the name stays free
                raise
    finally:
        _restore_env(PIPELINE_ENV, previous_env)
        if (run_dir / RUN_JSON).exists():
            _record_exit(run_dir, outcome)
            if outcome is not None:  # the run's whole path, resumed or not (this invocation's phases are a part)
                outcome.path = RunFolder(run_dir).path_taken()
            try:
                write_index(run_dir)
            except Exception as exc:  # the index must never hide the run's own outcome
                print(f"trainkit: could not write index.html: {exc}", file=sys.stderr)
        for tracker in trackers:
            _close_tracking(tracker, echo)
        if walk is not None and walk.origin is not None and (run_dir / RUN_JSON).exists():
            _count_gap(run_dir, time.time() - walk.origin)  # the work after the last phase
    return outcome


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _record_exit(run_dir: Path, outcome: PipelineOutcome | None) -> None:
    """The run's state after this invocation, before index.html is written: exit code and message,
    total cost, and a status that is never left at "running" (failed, awaiting_signoff, stopped,
    ready_to_deploy), and no phase entry left "running" either."""
    code = outcome.code if outcome is not None else EXIT_FAILED
    message = outcome.message if outcome is not None else "interrupted (see the console for the error)"
    with RunFolder(run_dir).updating() as manifest:
        manifest["exit"] = {"code": code, "message": message[:500]}
        manifest["cost"] = run_cost(manifest)
        if manifest.get("status") != "ready_to_deploy":
            manifest["status"] = {
                EXIT_OK: "stopped" if outcome is not None and outcome.stopped else "finished",
                EXIT_SIGNOFF: "awaiting_signoff",
                EXIT_USAGE: "refused",
            }.get(code, "failed")
        _end_running(manifest)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on a run folder for as long as a run works in it: a second ``trainkit run``
    on the same name is refused at once (RunError) instead of racing the first."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".trainkit.lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(
                f"{run_dir} is in use by another trainkit run (locked); wait for it to finish, or use "
                "--name for a new run"
            ) from None
        yield
    finally:
        fh.close()


@dataclass
class _Walk:
    """One invocation's walk of the decision tree: what it was asked, and the phases it ran."""

    run: RunFolder
    stop_after: int | None
    approvals: Any
    echo: Any
    trackers: list[Any]
    taken: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.time)
    origin: float | None = None  # the run clock's origin: t0 less the run's active seconds before this invocation

    def outcome(self, code: int, message: str, stopped: bool = False) -> PipelineOutcome:
        return PipelineOutcome(code, message, self.run.path, self.taken, stopped)


def _walk(
    w: _Walk, config_path: str | None, overrides: list[str] | None, target: float | None, resume: bool
) -> PipelineOutcome:
    """From Phase 1 (or the resume point), each phase in its folder, then where its decision routes."""
    phase, continue_attempt, done = _resume_walk(w) if resume else _start_walk(w, config_path, overrides, target)
    if done is not None:
        return done
    from trainkit.budget import active_seconds

    w.origin = w.t0 - (active_seconds(load_manifest(w.run.path)) if resume else 0.0)
    while phase is not None:
        attempt = RunFolder(w.run.path).next_attempt(phase)[0] if phase in _ATTEMPTED else 1
        if continue_attempt is not None:
            attempt = continue_attempt
        d, failed = _run_phase(w, phase, attempt, resume_in_place=continue_attempt is not None)
        continue_attempt = None
        if failed is not None:
            return failed
        phase, done = _follow(w, phase, attempt, d)
        if done is not None:
            return done
    return w.outcome(EXIT_OK, "done")


def _resume_walk(w: _Walk) -> tuple[str | None, int | None, PipelineOutcome | None]:
    run_dir = w.run.path
    if not w.run.is_run:
        raise RunError(f"{run_dir}: nothing to resume (no run.json); start it without --resume")
    phase, why, continue_attempt = _resume_point(run_dir)
    w.echo(f"trainkit: resuming {run_dir.name}: {why}")
    from trainkit.config import load_config

    cfg = load_config(w.run.start_config_path())
    if phase is not None:
        _tracked_runs_use_kernels(cfg)
    _start_tracking(run_dir, cfg, w.trackers, w.echo)
    if phase is None:
        return None, None, w.outcome(EXIT_OK, f"{run_dir.name}: {why}")
    return phase, continue_attempt, None


def _start_walk(
    w: _Walk, config_path: str | None, overrides: list[str] | None, target: float | None
) -> tuple[str, None, None]:
    run_dir = w.run.path
    if w.run.is_run:
        raise RunError(f"{run_dir} already holds a run; use --resume to continue it or --name for a new one")
    from trainkit.config import load_config, save_config

    cfg = load_config(config_path, overrides, target)  # a bad config is refused before anything is written
    if cfg.tracking.enabled:
        from trainkit.tracking import require_mlflow

        require_mlflow()  # asked for and not installed: exit 2 before the run starts
    _tracked_runs_use_kernels(cfg)
    init_run(run_dir, run_dir.name)
    save_config(cfg, run_dir / RUN_CONFIG)  # what --resume starts Phase 1 from, never a default
    _start_tracking(run_dir, cfg, w.trackers, w.echo)
    return PHASES[0], None, None


def _tracked_runs_use_kernels(cfg: Any) -> None:
    """A tracked run's phases run in kernels: in this process (``TRAINKIT_EXECUTOR=inprocess``) they
    would import beside MLflow's pusher thread, and a package imported by two threads at once can
    fail (docs/design.md, "Executors")."""
    if cfg.tracking.enabled and executor_kind() == "inprocess":
        raise ConfigError(
            [
                (
                    "TRAINKIT_EXECUTOR",
                    "inprocess cannot run a tracked run (tracking.uri / tracking.mlflow): its phases would share "
                    "this process with MLflow's pusher thread; unset TRAINKIT_EXECUTOR (a kernel per phase) or "
                    "turn tracking off (--set tracking.mlflow=false)",
                )
            ],
            "the environment",
        )


def _run_phase(w: _Walk, phase: str, attempt: int, resume_in_place: bool) -> tuple[Path, PipelineOutcome | None]:
    """Execute one phase notebook; (its folder, the failed outcome or None)."""
    run_dir = w.run.path
    params = {"approvals": w.approvals or {}, "interactive": False, "auto_signoff": phase != Phase.FINALIZATION.value}
    if resume_in_place:
        params["resume"] = True
    if phase == PHASES[0]:
        params.update(config_path=str(w.run.start_config_path()), overrides=[], target=None)
    d = w.run.phase_dir(phase, attempt)
    w.echo(
        f"trainkit: [{len(w.taken) + 1}] {phase}{f' ({d.name})' if phase in _ATTEMPTED else ''} "
        f"… {time.time() - w.t0:.0f}s elapsed"
    )
    w.taken.append(phase)
    try:
        _count_gap(run_dir, time.time() - w.origin, between=len(w.taken) > 1)
        execute_phase(phase, run_dir, params, attempt, clock_start=w.origin)
    except PipelineError as exc:
        _kick(w.trackers)
        record = w.run.gate(d)
        if record is not None and _gate_state(d) == "blocked":
            failed = [
                f"{c['id']}: {c['evidence']}" for c in record["checks"] if c["status"] == "fail" and c["mandatory"]
            ]
            return d, w.outcome(
                EXIT_FAILED, f"{phase}: gate '{record['gate']}' blocked: " + "; ".join(failed) + f" (read {d / REPORT})"
            )
        return d, w.outcome(EXIT_FAILED, str(exc))
    _kick(w.trackers)  # push this phase while the next one starts
    return d, None


def _follow(w: _Walk, phase: str, attempt: int, d: Path) -> tuple[str | None, PipelineOutcome | None]:
    """Where a finished phase's gate and decision send the run: (next phase, or the way out)."""
    run_dir = w.run.path
    state = _gate_state(d)
    decision = w.run.decision(d) or {}
    _echo_phase(w, phase, attempt, d, state, decision)
    over = state not in ("blocked", "awaiting_signoff") and _over_budget(run_dir, decision["next"])
    to = route(
        phase=phase,
        gate=state,
        option=str(decision.get("option", "-")),
        next_phase=str(decision.get("next")),
        stop_after=w.stop_after,
        over_budget=over,
    )
    if to.action == "blocked":
        return None, w.outcome(
            EXIT_FAILED, f"{phase}: gate blocked: {decision.get('reason', '')[:1500]} (read {d / REPORT})"
        )
    if to.action == "signoff":
        return None, w.outcome(EXIT_SIGNOFF, _signoff_hint(run_dir, phase, d))
    nxt = str(to.next)
    if to.budget_cut:
        _route_over_budget(run_dir, decision["next"], d)
        w.echo("trainkit: over the time budget: finalizing with the best so far")
    if to.action == "stopped":
        failed = "FAILED: " if decision.get("option") == "C" else ""
        return None, w.outcome(
            EXIT_OK,
            f"stopped after {phase} as asked (--stop-after {w.stop_after}: no phase "
            f"past {w.stop_after}). {failed}{phase} decided {decision.get('option', '-')} → {nxt}: "
            f"{str(decision.get('reason', ''))[:300]}. Continue with: {resume_command(run_dir)}",
            stopped=True,
        )
    if to.action == "deploy":
        _mark_deploy(run_dir, d)
        return None, w.outcome(EXIT_OK, f"ready to deploy: {d}")
    if to.action == "stop":
        return None, w.outcome(EXIT_FAILED, f"{phase} decided to stop: {decision['reason']} (read {d / REPORT})")
    return nxt, None


def _echo_phase(w: _Walk, phase: str, attempt: int, d: Path, state: str | None, decision: dict[str, Any]) -> None:
    """The phase's one console line: its key metric, cost, gate and decision."""
    manifest = w.run.manifest() or {}
    cost = (
        next(
            (
                e.get("cost")
                for e in reversed(manifest.get("phases", []))
                if e["phase"] == phase and e["attempt"] == attempt
            ),
            None,
        )
        or {}
    )
    if not cost:
        return
    from trainkit.reports import phase_metric

    units = f", {cost['baseline_units']:.2f}× baseline" if cost.get("baseline_units") is not None else ""
    metric = phase_metric(d, phase)
    w.echo(
        f"trainkit:     {phase}: {metric + '; ' if metric else ''}{cost['wall_s']:.1f} s{units}; gate {state}; "
        f"{decision.get('option', '')} → {decision.get('next')}: {str(decision.get('reason', ''))[:160]}"
    )
