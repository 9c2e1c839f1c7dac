"""What every phase notebook shares: its context, history entries, showing things, the gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trainkit._io import read_json, write_json_atomic
from trainkit.config import TrainkitConfig
from trainkit.errors import GateBlocked, GateError, RunError
from trainkit.gates import evaluate_gate, gate_html, gate_state, verify_gate
from trainkit.run import (
    CURRENT_CONFIG,
    DECISION,
    GATE,
    RunFolder,
    init_run,
    record_phase,
)

if TYPE_CHECKING:
    from trainkit.budget import PhaseClock
    from trainkit.data import DataBundle

__all__ = [
    "PhaseContext",
    "DiagnosticsContext",
    "OptimizationContext",
    "FinalizationContext",
    "begin",
    "show",
    "show_html",
    "finish_gate",
    "write_decision",
    "require_gate",
    "require_routed",
    "load_run_config",
    "parse_approvals",
    "clock",
    "show_budget",
    "run_path",
    "CURRENT_CONFIG",
]


@dataclass
class PhaseContext:
    """Where a phase writes, which attempt it is, the config it runs and its time budget. Each
    phase that carries more from one notebook cell to the next has its own subclass with typed
    fields (:class:`DiagnosticsContext`, :class:`OptimizationContext`, :class:`FinalizationContext`)."""

    run_dir: Path
    phase: str
    attempt: int
    dir: Path
    config: TrainkitConfig | None = None
    interactive: bool = True
    started: float = field(default_factory=time.time)
    budget_clock: PhaseClock | None = None  # made on first use by clock(ctx)

    def path(self, name: str) -> Path:
        return self.dir / name

    def rel(self, name: str) -> str:
        return str((self.dir / name).relative_to(self.run_dir))

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.run_dir)


@dataclass
class DiagnosticsContext(PhaseContext):
    """Phase 3: which run it diagnoses, and whether that run failed (Phase 2's option C)."""

    source: str = ""
    failed_mode: bool = False
    after_idle_iteration: bool = False  # routed here by a Phase 4 iteration that adopted nothing


@dataclass
class OptimizationContext(PhaseContext):
    """Phase 4: the recommendations it tries, the Phase 3 round they came from, the candidate config."""

    recs: list[dict[str, Any]] = field(default_factory=list)
    round_no: int = 0
    candidate: TrainkitConfig | None = None
    folds: dict[str, Any] | None = None  # small data: the k-fold plan the comparisons use (trainkit.folds)


@dataclass
class FinalizationContext(PhaseContext):
    """Phase 5: the data bundle (loaded once) and, when no final training fit, the fit it reuses."""

    bundle: DataBundle | None = None
    reused: str | None = None
    refit: dict[str, Any] | None = None  # small data: train+val for the folds' epoch count (trainkit.folds)


Ctx = TypeVar("Ctx", bound=PhaseContext)


def begin(kind: type[Ctx], run_dir: str | Path, phase: str, attempt: int = 1, interactive: bool = True) -> Ctx:
    """Create the phase folder, record the phase as started in run.json; a ``kind`` context."""
    run_dir = Path(run_dir)
    init_run(run_dir)
    d = RunFolder(run_dir).phase_dir(phase, attempt)
    d.mkdir(parents=True, exist_ok=True)
    record_phase(run_dir, phase, attempt, status="running", started=time.time(), ended=None)
    reset_peak_rss()
    _mark_failed_on_error(run_dir, phase, attempt)
    return kind(run_dir=run_dir, phase=phase, attempt=attempt, dir=d, interactive=interactive)


def _mark_failed_on_error(run_dir: Path, phase: str, attempt: int) -> None:
    """In a notebook (IPython), a cell that raises while this phase is still "running" marks its
    run.json entry failed, with the error: a phase run by hand never stays "running" for good."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def after(result: Any) -> None:
        err = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if err is not None:
            mark_failed(run_dir, phase, attempt, err)

    ip.events.register("post_run_cell", after)


def mark_failed(run_dir: Path, phase: str, attempt: int, err: BaseException) -> None:
    """A phase whose cell raised while its run.json entry is still "running": the entry becomes
    failed, with the error (the notebook hook above, and the in-process executor, call this)."""
    try:
        entry = RunFolder(run_dir).entry(phase, attempt)
        if entry is not None and entry.status == "running":
            record_phase(
                run_dir,
                phase,
                attempt,
                status="failed",
                ended=time.time(),
                error=f"{type(err).__name__}: {str(err)[:300]}",
            )
    except Exception:  # bookkeeping must never mask the user's own error
        pass


def run_path(run_dir: str | Path) -> Path:
    """A notebook's ``run_dir``. A relative one is taken from the project folder when the notebook
    runs in a folder below a trainkit checkout (JupyterLab's working directory: ``notebooks/``, or
    the working copies ``trainkit notebooks`` makes), so the default ``runs/notebook`` lands in the
    project's ``runs/`` like ``trainkit run``'s, not in ``notebooks/runs/``."""
    p = Path(run_dir)
    if p.is_absolute():
        return p
    root = next((d for d in Path.cwd().parents if (d / "pyproject.toml").is_file() and (d / "trainkit").is_dir()), None)
    return root / p if root is not None else p


def clock(ctx: PhaseContext) -> Any:
    """The phase's time budget (trainkit.budget.PhaseClock), made once per phase from its config."""
    if ctx.budget_clock is None:
        from trainkit.budget import PhaseClock

        assert ctx.config is not None, "clock(ctx) needs the phase's config"
        ctx.budget_clock = PhaseClock(ctx.run_dir, ctx.phase, ctx.config.budget.total_hours, ctx.dir, ctx.started)
    return ctx.budget_clock


def show_budget(ctx: PhaseContext) -> None:
    """The phase's budget paragraph (what was cut, if anything) in its report; budget.json on disk."""
    c = clock(ctx)
    c.save()
    show_html(c.html())


def show(obj: Any) -> None:
    """Display in a notebook; print elsewhere."""
    from trainkit import _outputs

    if _outputs.display(obj):  # a phase run in this process: into its notebook's outputs
        return
    from IPython.display import display

    display(obj)


def show_html(text: str) -> None:
    from trainkit import _outputs

    if _outputs.display_html(text):  # a phase run in this process: into its notebook's outputs
        return
    from IPython.display import HTML, display

    display(HTML(text))


def show_figure(fig: Any, path: Path | None = None) -> None:
    """Save a figure (when a path is given) and display it inline as an embedded PNG."""
    from trainkit.plots import figure_png_html, save_figure

    if path is not None:
        save_figure(fig, path)
        show_html(f"<img src='data:image/png;base64,{_b64(path)}'/>")
    else:
        show_html(figure_png_html(fig))


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def parse_approvals(approvals: Any, gate: str) -> dict[str, str]:
    """Approvals from a notebook parameter: ``{check: name}``, ``{gate: {check: name}}`` or a file path."""
    if not approvals:
        return {}
    if isinstance(approvals, str):
        from trainkit.gates import check_approvals

        approvals = check_approvals(approvals)
    if gate in approvals and isinstance(approvals[gate], dict):
        return {str(k): str(v) for k, v in approvals[gate].items()}
    from trainkit.gates import GATES

    # a flat {check: name} (trainkit run --approve) applies to the gates that have those checks
    mine = {c.id for c in GATES[gate].checks} | {"signoff"} if gate in GATES else None
    return {str(k): str(v) for k, v in approvals.items() if not isinstance(v, dict) and (mine is None or k in mine)}


def finish_gate(
    ctx: PhaseContext,
    gate: str,
    results: dict[str, tuple[str, Any]],
    artifacts: list[str],
    approvals: Any = None,
    auto_signoff: bool = False,
    waivers: dict[str, str] | None = None,
    decision: dict[str, Any] | None = None,
    raise_on_block: bool = True,
) -> dict[str, Any]:
    """Evaluate and record the gate, show its table (and the widget when interactive), update run.json.

    Raises GateBlocked after recording when a mandatory check fails (unless ``raise_on_block`` is
    False: a failed baseline records its block and routes to diagnosis instead)."""
    try:
        record = evaluate_gate(
            gate,
            ctx.run_dir,
            ctx.dir,
            results,
            artifacts,
            approvals=parse_approvals(approvals, gate),
            auto_signoff=auto_signoff,
            waivers=waivers,
        )
    except GateBlocked:
        record = read_json(ctx.dir / GATE)
        show_html(gate_html(record))
        record_phase(
            ctx.run_dir,
            ctx.phase,
            ctx.attempt,
            status="blocked",
            ended=time.time(),
            gate=record["state"],
            decision=(decision or {}).get("next"),
            cost=_show_cost(ctx),
        )
        _push(ctx)
        if raise_on_block:
            raise
        return record
    if ctx.interactive and record["state"] != "passed":  # the widget shows the checks itself (one table, live)
        from trainkit.widgets import GateWidget

        show(GateWidget(ctx.dir / GATE, ctx.run_dir))
    else:
        show_html(gate_html(record))
    record_phase(
        ctx.run_dir,
        ctx.phase,
        ctx.attempt,
        status="completed",
        ended=time.time(),
        gate=record["state"],
        decision=(decision or {}).get("next"),
        cost=_show_cost(ctx),
    )
    _push(ctx)
    return record


def _push(ctx: PhaseContext) -> None:
    """A phase run by hand with tracking on: its records to MLflow now (``trainkit run`` pushes from
    its own process instead); a failure is one warning."""
    if ctx.config is not None and ctx.config.tracking.enabled:
        from trainkit.tracking import push_quietly

        push_quietly(ctx.run_dir, ctx.config)


def _show_cost(ctx: PhaseContext) -> dict[str, Any]:
    """This phase's compute (wall time and baseline units), shown in its report and returned for run.json."""
    from trainkit.run import phase_cost

    if ctx.config is not None:
        show_budget(ctx)
    cost = phase_cost(ctx.run_dir, ctx.started, time.time())
    cost["peak_rss_mib"] = peak_rss_mib()
    units = (
        f", {cost['baseline_units']:.2f} baseline units (baseline training {cost['baseline_s']:.1f} s)"
        if cost["baseline_units"] is not None
        else " (baseline units once Phase 2 has trained)"
    )
    show_html(
        f"<p>Compute of this phase: {cost['wall_s']:.1f} s wall{units}; peak memory during this phase "
        f"{cost['peak_rss_mib']:.0f} MiB.</p>"
    )
    return cost


def reset_peak_rss() -> None:
    """Count this process's peak memory afresh from now (Linux: its VmHWM), so that a phase run in a
    kernel or process that ran an earlier phase reports its own peak; elsewhere nothing changes."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB) since :func:`reset_peak_rss` (the phase's start)
    where Linux keeps it, else since the process started."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def write_decision(
    ctx: PhaseContext, option: str, next_phase: str, reason: str, evidence: dict[str, Any]
) -> dict[str, Any]:
    """Write decision.json: {phase, option, next, reason, evidence}."""
    decision = {
        "phase": ctx.phase,
        "attempt": ctx.attempt,
        "option": option,
        "next": next_phase,
        "reason": reason,
        "evidence": evidence,
    }
    write_json_atomic(ctx.path(DECISION), decision)
    import html as _h

    show_html(
        f"<p id='decision'><b>Decision: option {_h.escape(option)} → {_h.escape(str(next_phase))}</b>: "
        f"{_h.escape(reason)}</p>"
    )
    return decision


def require_gate(run_dir: str | Path, phase: str) -> dict[str, Any]:
    """Refuse to start unless ``phase``'s latest gate passed and its artifacts are unchanged."""
    d = RunFolder(run_dir).latest(phase)
    if d is None:
        raise RunError(f"{run_dir}: {phase} has not run; run it first (trainkit run, or its notebook)")
    return verify_gate(d / GATE, run_dir)


def require_routed(
    run_dir: Path, phase: str, sources: tuple[str, ...], allow_failed: bool = False
) -> tuple[str, Path, dict[str, Any]]:
    """The latest run of one of ``sources`` (phase, folder, decision) whose decision routed to
    ``phase`` (a pipeline ``budget_override.json`` counts) and whose gate passed. With
    ``allow_failed`` a blocked gate of an option-C decision (a failed baseline) is accepted too."""
    entries = [e for e in RunFolder(run_dir).entries() if e.phase in sources]
    if not entries:
        raise RunError(f"{run_dir}: {phase} needs {' or '.join(sources)} first; run it (trainkit run --resume)")
    src = entries[-1].phase
    d = entries[-1].folder(run_dir)
    decision = RunFolder(run_dir).routed_decision(d)  # over the time budget: the pipeline's route to Phase 5 counts
    if decision is None:
        raise RunError(f"{d}: {src} did not finish (no decision.json); run it (or trainkit run --resume) first")
    if decision.get("next") != phase:
        raise RunError(f"{d}: its decision was {decision.get('option')} → {decision.get('next')}, not {phase}")
    record = RunFolder(run_dir).gate(d)
    if allow_failed and decision.get("option") == "C" and record is not None and gate_state(record) != "passed":
        return src, d, decision  # a failed baseline routes to diagnosis with its gate blocked, by design
    try:  # recomputed from its checks and the artifacts' hashes: a cached "passed" proves nothing
        verify_gate(d / GATE, run_dir)
    except GateError as exc:
        raise RunError(f"{phase} refuses to start: {exc}") from None
    return src, d, decision


def load_run_config(run_dir: str | Path) -> TrainkitConfig:
    """The config in force: ``current_config.yaml`` (written when a later phase adopts a fix or a
    better config) or else the one Phase 1 froze (``01_planning/training_config.yaml``)."""
    return RunFolder(run_dir).config_in_force()
