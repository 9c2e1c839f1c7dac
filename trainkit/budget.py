"""The run's time budget, enforced inside each phase.

``budget.total_hours`` is split into the seed's phase shares (``trainkit.plan.SHARES``). Each phase
may work until its *deadline*: the run's clock start plus the cumulative share of the phases up to
and including it (time a phase leaves unused carries over to the next; a phase that overran eats
into the next one's). No deadline is later than the end of the budget less a tail reserve for what
follows Phase 5's training (test evaluation, export, reproduction, reports, a kernel's start): at
least 10 s, 3% of the budget on long ones, plus the per-phase overhead measured so far.

The run's clock counts active time only: every second of each ``trainkit run`` invocation from its
process's start (the config and data checks before run.json, the phases with their kernel starts
and report exports, the pipeline's work between them; ``run.json["active_s"]``), so a run resumed
the next morning is not over budget for the night in between.

A phase asks ``clock.allows(seconds, what)`` before starting a fit or probe; when it does not fit,
nothing starts and the cut is recorded (``budget.json`` in the phase folder, a note in ``run.json``,
shown in the report). Each fit also gets ``clock.deadline`` so that it stops between epochs (or
mid-epoch, past the deadline) instead of overrunning.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

from trainkit._io import write_json_atomic
from trainkit.plan import SHARES
from trainkit.run import (
    BUDGET,
    BUDGET_OVERRIDE,
    RUN_JSON,
    Phase,
    PhaseFolder,
    RunFolder,
    _entry,
)

__all__ = ["PhaseClock", "CUMULATIVE", "CLOCK_ENV", "active_seconds", "process_start"]

CLOCK_ENV = "TRAINKIT_CLOCK_START"  # set by the pipeline: time.time() minus the run's active seconds so far


def _cumulative() -> dict[str, float]:
    """Share of budget.total_hours by which each phase must be done: the seed's shares
    (trainkit.plan.SHARES) summed in phase order. The baseline is the unit everything else is
    measured in, so it is not cut at its own share: Phases 1 and 2 may run into Phase 3's (which
    then gets what is left)."""
    out, acc = {}, 0.0
    for phase in (Phase.BASELINE.value, Phase.DIAGNOSTICS.value, Phase.OPTIMIZATION.value, Phase.FINALIZATION.value):
        acc += SHARES[phase]
        out[phase] = round(acc, 6)
    return {
        **out,
        Phase.PLANNING.value: out[Phase.DIAGNOSTICS.value],
        Phase.BASELINE.value: out[Phase.DIAGNOSTICS.value],
    }


CUMULATIVE: dict[str, float] = _cumulative()
TAIL_MIN_S = 10.0  # what follows Phase 5's training: test, export, docs, reproduction, reports (small models)
TAIL_SHARE = 0.03  # ... and on long budgets, 3% of the total
TAIL_PLANNING_FACTOR = 2.0  # Phase 5's work after training (test, export, reproduction, reports) ≈ 2× Phase 1's checks
REPLANNED = (Phase.DIAGNOSTICS.value, Phase.OPTIMIZATION.value, Phase.FINALIZATION.value)


def process_start() -> float:
    """When this process started (``time.time()`` scale): from /proc on Linux, so that ``trainkit
    run``'s own start (imports, the config and data checks before run.json exists) is on the run's
    clock; elsewhere, when trainkit was first imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        if started <= time.time():
            return started
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    import trainkit

    return trainkit.IMPORTED


def _planning_s(manifest: dict[str, Any]) -> float:
    """Phase 1's own seconds (imports, data checks, two tiny fits, plots), measured on this machine."""
    return max(
        [
            (e.get("cost") or {}).get("wall_s", 0.0)
            for e in manifest.get("phases", [])
            if e.get("phase") == Phase.PLANNING.value and e.get("status") != "running"
        ]
        or [0.0]
    )


def _baseline_end(manifest: dict[str, Any]) -> float | None:
    """Active seconds of the run when its first Phase 2 attempt ended (None before it has): the
    point from which the remaining phases are re-planned in measured baseline units."""
    acc = 0.0
    for e in manifest.get("phases", []):
        if e.get("status") == "running":
            return None
        acc += float(e.get("pipeline_wall_s") or (e.get("cost") or {}).get("wall_s", 0.0))
        if e.get("phase") == Phase.BASELINE.value:
            return float(e["active_end_s"]) if e.get("active_end_s") is not None else acc
    return None


def active_seconds(manifest: dict[str, Any]) -> float:
    """Seconds the run has been working: the pipeline's wall time per finished phase, else the
    phase's own cost (a notebook run by hand)."""
    total = manifest.get("active_s")
    if total is not None:
        return float(total)
    return float(
        sum(
            (e.get("cost") or {}).get("wall_s", 0.0) for e in manifest.get("phases", []) if e.get("status") != "running"
        )
    )


def _overhead(manifest: dict[str, Any]) -> float:
    """Seconds a phase costs outside its own code: its kernel's start and report export (the
    pipeline's wall time less the phase's own, the largest seen) plus the pipeline's own work
    between two phases (decisions, reports, index.html: ``run.json["pipeline_gap_s"]``, the largest
    seen), which also follows Phase 5; 0 for notebooks run by hand."""
    gaps = [
        e["pipeline_wall_s"] - (e.get("cost") or {}).get("wall_s", 0.0)
        for e in manifest.get("phases", [])
        if e.get("pipeline_wall_s") is not None
    ]
    return (max(gaps) if gaps else 0.0) + float(manifest.get("pipeline_gap_s") or 0.0)


class PhaseClock:
    """A phase's time budget: ``deadline`` (absolute ``time.time()``), ``left()``, ``allows()`` and the
    record of what was cut."""

    def __init__(
        self,
        run_dir: str | Path,
        phase: str,
        total_hours: float,
        phase_dir: str | Path | None = None,
        started: float | None = None,
    ) -> None:
        from trainkit.run import load_manifest

        self.run_dir, self.phase = Path(run_dir), phase
        self.dir = Path(phase_dir) if phase_dir is not None else None
        self.total_s = float(total_hours) * 3600
        manifest = load_manifest(self.run_dir) if (self.run_dir / RUN_JSON).is_file() else {"phases": []}
        env = os.environ.get(CLOCK_ENV)
        now = time.time()
        if env:
            self.start = float(env)
        else:  # a notebook run by hand: earlier phases' time, then this phase's since it began
            self.start = (started if started is not None else now) - active_seconds(manifest)
        self.overhead_s = _overhead(manifest)
        # every phase leaves Phase 5 its tail: the work after its training and a kernel's start
        self.tail_s = (
            max(TAIL_MIN_S, TAIL_SHARE * self.total_s, TAIL_PLANNING_FACTOR * _planning_s(manifest)) + self.overhead_s
        )
        end = self.start + self.total_s - self.tail_s
        self.end = end
        self.deadline = min(self.start + CUMULATIVE.get(phase, 1.0) * self.total_s, end)
        self.replanned = None
        base_end = _baseline_end(manifest)
        if (
            phase in REPLANNED and base_end is not None
        ):  # re-plan what is left after the baseline, in the seed's proportions
            left = max(0.0, self.total_s - self.tail_s - base_end)
            share = sum(SHARES[p] for p in REPLANNED[: REPLANNED.index(phase) + 1]) / sum(SHARES[p] for p in REPLANNED)
            self.replanned = {
                "baseline_ended_s": round(base_end, 2),
                "left_s": round(left, 2),
                "share_of_left": round(share, 4),
            }
            self.deadline = min(max(self.deadline, self.start + base_end + share * left), end)
        self.cuts: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- queries
    def elapsed(self) -> float:
        """Active seconds of the run so far."""
        return time.time() - self.start

    def left(self) -> float:
        """Seconds until this phase's deadline (negative when past it)."""
        return self.deadline - time.time()

    def left_to_end(self) -> float:
        """Seconds until the budget's end less Phase 5's tail (what any phase may still use)."""
        return self.end - time.time()

    def allows(self, seconds: float, what: str, record: bool = True) -> bool:
        """True when work estimated at ``seconds`` ends before the deadline; otherwise the cut is
        recorded (``what`` names it) and False."""
        left = self.left()
        if seconds <= left:
            return True
        if record:
            self.cut(what, f"needs ~{seconds:.1f} s, {max(0.0, left):.1f} s left of this phase's share")
        return False

    def cut(self, what: str, why: str) -> None:
        """Record a cut: in budget.json and as a note in run.json."""
        c = {"what": what, "why": why, "at_s": round(self.elapsed(), 2)}
        self.cuts.append(c)
        self.save()
        if self.dir is not None and (self.run_dir / RUN_JSON).is_file():
            rel = self.dir.relative_to(self.run_dir) if self.dir.is_relative_to(self.run_dir) else self.dir
            with RunFolder(self.run_dir).updating() as manifest:
                manifest.setdefault("notes", []).append(f"budget cut in {rel}: {what} ({why})")

    # ---------------------------------------------------------------- records
    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "budget_s": round(self.total_s, 1),
            "replanned": self.replanned,
            "deadline_s": round(self.deadline - self.start, 2),
            "tail_reserve_s": round(self.tail_s, 2),
            "phase_overhead_s": round(self.overhead_s, 2),
            "elapsed_s": round(self.elapsed(), 2),
            "cuts": self.cuts,
        }

    def save(self) -> None:
        """budget.json in the phase folder."""
        if self.dir is not None:
            write_json_atomic(self.dir / BUDGET, self.to_dict())

    def html(self) -> str:
        """A short paragraph for the phase's report."""
        head = (
            f"Time budget: {self.total_s / 3600:g} h in all; this phase may work until "
            f"{self.deadline - self.start:.1f} s "
            f"of the run's active time (now {self.elapsed():.1f} s)."
        )
        if not self.cuts:
            return f"<p>{html.escape(head)} Nothing was cut.</p>"
        items = "".join(f"<li>{html.escape(c['what'])}: {html.escape(c['why'])}</li>" for c in self.cuts)
        return f"<p>{html.escape(head)} <b>Cut to stay inside the budget:</b></p><ul>{items}</ul>"


def _count_active(run_dir: Path, phase: str, attempt: int, wall: float, active: float) -> None:
    """Record a phase's pipeline wall time (kernel start and report export included) and the run's
    active seconds at its end (the clock its time budget runs on)."""
    with RunFolder(run_dir).updating() as manifest:
        manifest["active_s"] = round(active, 3)
        e = _entry(manifest, phase, attempt)
        if e is not None:
            e["pipeline_wall_s"] = round(e.get("pipeline_wall_s", 0.0) + wall, 3)
            e["active_end_s"] = round(active, 3)


def _count_gap(run_dir: Path, active: float, between: bool = True) -> None:
    """The pipeline's own seconds since the last phase ended (decisions, reports, tracking), or
    since the invocation started: the run's active seconds move to ``active``. A gap ``between``
    two phases (or after the last) is work that also follows Phase 5, so the largest is kept
    (``run.json["pipeline_gap_s"]``) for Phase 5's tail reserve; an invocation's start is not."""
    with RunFolder(run_dir).updating() as manifest:  # written back only when it changed
        gap = active - active_seconds(manifest)
        if gap > 0:
            manifest["active_s"] = round(active, 3)
            if between:
                manifest["pipeline_gap_s"] = round(max(gap, float(manifest.get("pipeline_gap_s") or 0.0)), 3)


CHEAP_PROBE_UNITS = 0.1  # loss at init, zeroed inputs, data checks, LR range test, one-batch overfit: < 0.1 baseline


def _over_budget(run_dir: Path, phase: str) -> bool:
    """True when :func:`trainkit.decisions.route_over_budget` skips ``phase``: the run's active time
    has reached its deadline (trainkit.budget.PhaseClock, the same one the phase would run on), or
    would within the phase's measured overhead."""
    from trainkit.decisions import route_over_budget

    if route_over_budget(phase, 0.0) is None:
        return False  # never skipped: no need to read the clock
    clock = PhaseClock(run_dir, phase, RunFolder(run_dir).config_in_force().budget.total_hours)
    # a phase whose time left is less than what a phase costs outside its own work (a kernel's start,
    # the report's export, measured in this run) could do nothing in it. Phase 3's cheap, decisive
    # probes run at any budget: it is skipped only when they no longer fit before the budget's end.
    # Phase 4 always trains one candidate (its first fit starts whatever the clock says): it is skipped
    # when that one fit, about a baseline, no longer fits before its deadline.
    if phase == Phase.DIAGNOSTICS.value:
        left = clock.left_to_end() - CHEAP_PROBE_UNITS * (RunFolder(run_dir).baseline_seconds() or 0.0)
    else:
        left = clock.left() - (RunFolder(run_dir).baseline_seconds() or 0.0)
    return route_over_budget(phase, left - clock.overhead_s) is not None


def _route_over_budget(run_dir: Path, phase: str, d: Path) -> str:  # phase: where the decision wanted to go
    """Route to Phase 5 with the best so far: ``budget_override.json`` beside the decision (the
    signed decision.json stays as it was) and a note in run.json documenting the ceiling."""
    decision = PhaseFolder(d).decision() or {}
    write_json_atomic(
        d / BUDGET_OVERRIDE,
        {
            "next": Phase.FINALIZATION.value,
            "was_next": decision["next"],
            "time": time.time(),
            "reason": f"the run's time for {phase} (its share of budget.total_hours) is used up: accept the best so "
            "far and finalize (the decision was "
            f"{decision['option']} → {decision['next']}: {decision['reason']})",
        },
    )
    with RunFolder(run_dir).updating() as manifest:
        manifest.setdefault("notes", []).append(
            f"budget cut after {d.relative_to(run_dir)}: {phase} skipped (its share of "
            "budget.total_hours was used up); finalized with the best so far"
        )
    return Phase.FINALIZATION.value
