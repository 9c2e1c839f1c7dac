"""The run folder as a type: :class:`RunFolder` answers every question about ``runs/NAME/``.

Phase names (:class:`Phase`, one sub-folder map), the file names (constants below), the start
config and the config in force, typed reads of decision, gate, budget and splits (absent is None),
the data layer's store and quarantine policy, ``run.json`` (manifest and phase history) and the
compute cost in baseline units. No other module spells out a run folder's layout.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from trainkit._io import read_json, write_json_atomic
from trainkit.errors import RunError

__all__ = (  # one string, split: the names this module exports
    "Phase PHASES RunFolder PhaseFolder PhaseEntry phase_entries phase_name init_run load_manifest record_phase "
    "resume_command signoff_command check_run_name phase_cost run_cost RUN_JSON RUN_CONFIG CURRENT_CONFIG "
    "TRAINING_CONFIG GATE DECISION BUDGET BUDGET_OVERRIDE SPLITS PREPROCESS DATA_MANIFEST TEST_ACCESS_LOG "
    "DATA_LOADS TRAIN_SUMMARY METRICS FINDINGS COMPARISON TRACKING INDEX REPORT NOTEBOOK BASELINE_RESULTS_MD "
    "BASELINE_SEEDS_JSON BEST_JSON BEST_PT BUDGET_PLAN_JSON CHECKPOINTS_BEST_PT COLUMNS_JSON CRASH_JSON CURVES_PNG "
    "DEPLOYMENT_GUIDE_MD DETERMINISM_JSON DIAGNOSTIC_REPORT_MD ENVIRONMENT_JSON EXCLUDE_JSON EXCLUDE_LABELS_JSON "
    "EXPORT_JSON FINAL_CONFIG_YAML FIXED_CONFIG_YAML LAST_PT MODEL_CARD_MD MODEL_ONNX MODEL_TS "
    "OPTIMIZATION_CONFIG_YAML OPTIMIZATION_RESULTS_MD PROBES_JSON PROVENANCE_JSON REPRODUCE_JSON RESIDUALS_PNG "
    "SNIPPETS_JSON SWEEP_CONFIG_YAML SWEEP_DB TEST_EVALUATION_JSON TEST_RESULTS_MD SUB_WORD load_run_data read_fit"
).split()


class Phase(str, enum.Enum):
    """The five phases, as their folder names; ``sub`` names a repeated phase's folders."""

    PLANNING = "01_planning"
    BASELINE = "02_baseline"
    DIAGNOSTICS = "03_diagnostics"
    OPTIMIZATION = "04_optimization"
    FINALIZATION = "05_finalization"

    def __str__(self) -> str:
        return self.value

    @property
    def number(self) -> int:
        return int(self.value[:2])

    @property
    def sub(self) -> str | None:
        """``attempt`` / ``round`` / ``iter`` for a phase that repeats, None otherwise."""
        return _SUB.get(self.value)

    @property
    def title(self) -> str:
        return self.value[3:].capitalize()


PHASES = [p.value for p in Phase]
_SUB = {"02_baseline": "attempt", "03_diagnostics": "round", "04_optimization": "iter"}
# what each repeated phase's number is called in words (reports, tracking tags)
SUB_WORD = {"02_baseline": "attempt", "03_diagnostics": "round", "04_optimization": "iteration"}

RUN_JSON = "run.json"  # manifest: config hash, phase history, status
RUN_CONFIG = "config.yaml"  # the config the run was started with (resume uses it)
CURRENT_CONFIG = "current_config.yaml"  # the config in force once a later phase adopted a fix
TRAINING_CONFIG = "training_config.yaml"  # a phase's (or a fit's) config
GATE = "gate.json"
DECISION = "decision.json"
BUDGET = "budget.json"
BUDGET_OVERRIDE = "budget_override.json"  # the pipeline's over-budget route beside a signed decision
SPLITS = "splits.json"
PREPROCESS = "preprocess.json"  # a table's preprocessing, fitted on the train split in Phase 1
DATA_MANIFEST = "data_manifest.json"
TEST_ACCESS_LOG = "test_access.jsonl"
DATA_LOADS = "data_loads.jsonl"  # one line per data load in a run: phase, seconds, whether it scanned
TRAIN_SUMMARY = "train_summary.json"
METRICS = "metrics.jsonl"
FINDINGS = "findings.json"
COMPARISON = "comparison.json"
TRACKING = "tracking.json"
INDEX = "index.html"
REPORT = "report.html"
NOTEBOOK = "notebook.ipynb"
# the files phases write into their folders, named once
BASELINE_RESULTS_MD = "baseline_results.md"
BASELINE_SEEDS_JSON = "baseline_seeds.json"
BEST_JSON = "best.json"
BEST_PT = "best.pt"
BUDGET_PLAN_JSON = "budget_plan.json"
CHECKPOINTS_BEST_PT = "checkpoints/best.pt"
COLUMNS_JSON = "columns.json"
CRASH_JSON = "crash.json"
CURVES_PNG = "curves.png"
DEPLOYMENT_GUIDE_MD = "deployment_guide.md"
DETERMINISM_JSON = "determinism.json"
DIAGNOSTIC_REPORT_MD = "diagnostic_report.md"
ENVIRONMENT_JSON = "environment.json"
EXCLUDE_JSON = "exclude.json"
EXCLUDE_LABELS_JSON = "exclude_labels.json"
EXPORT_JSON = "export.json"
FINAL_CONFIG_YAML = "final_config.yaml"
FIXED_CONFIG_YAML = "fixed_config.yaml"
PROBES_JSON = "probes.json"  # a diagnosis round's probe results as measured (read back by the next round)
LAST_PT = "last.pt"
MODEL_CARD_MD = "model_card.md"
MODEL_ONNX = "model.onnx"
MODEL_TS = "model.ts"
OPTIMIZATION_CONFIG_YAML = "optimization_config.yaml"
OPTIMIZATION_RESULTS_MD = "optimization_results.md"
PROVENANCE_JSON = "provenance.json"
REPRODUCE_JSON = "reproduce.json"
RESIDUALS_PNG = "residuals.png"
SNIPPETS_JSON = "snippets.json"
SWEEP_CONFIG_YAML = "sweep_config.yaml"
SWEEP_DB = "sweep.db"
TEST_EVALUATION_JSON = "test_evaluation.json"
TEST_RESULTS_MD = "test_results.md"


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


class PhaseFolder:
    """One phase's folder (``01_planning``, ``02_baseline/attempt-N``, ...): typed reads of the
    records a phase leaves there (absent = None). Cheap to make; every read goes to disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"PhaseFolder({str(self.path)!r})"

    def decision(self) -> dict[str, Any] | None:
        return _read(self.path / DECISION)

    def gate(self) -> dict[str, Any] | None:
        return _read(self.path / GATE)

    def budget(self) -> dict[str, Any] | None:
        return _read(self.path / BUDGET)

    def train_summary(self) -> dict[str, Any] | None:
        return _read(self.path / TRAIN_SUMMARY)

    def findings(self) -> dict[str, Any] | None:
        return _read(self.path / FINDINGS)

    def routed_decision(self) -> dict[str, Any] | None:
        """The decision as the run follows it: an over-budget route (``budget_override.json``,
        written by the pipeline beside the signed decision) replaces its ``next``."""
        decision = self.decision()
        override = _read(self.path / BUDGET_OVERRIDE)
        if decision is not None and override is not None:
            decision = dict(decision, **override)
        return decision


@dataclasses.dataclass(frozen=True)
class PhaseEntry:
    """One entry of ``run.json``'s phase history, as read. Writes go through :func:`record_phase`
    (or :meth:`RunFolder.updating`); :meth:`get` reads a field that has no attribute here."""

    phase: str
    attempt: int
    status: str | None = None
    started: float | None = None
    ended: float | None = None
    decision: Any = None
    cost: dict[str, Any] | None = None
    error: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> "PhaseEntry":
        names = {f.name for f in dataclasses.fields(cls)} - {"fields"}
        return cls(**{k: v for k, v in entry.items() if k in names}, fields=dict(entry))

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def folder(self, run_dir: str | os.PathLike[str]) -> Path:
        """This entry's folder: ``01_planning``, ``02_baseline/attempt-N``, ..."""
        return RunFolder(run_dir).phase_dir(self.phase, self.attempt)


def phase_entries(manifest: dict[str, Any], phase: str | None = None) -> list[PhaseEntry]:
    """The phase history of a manifest already read (of one ``phase``, if given), in order."""
    return [PhaseEntry.of(e) for e in manifest.get("phases", []) if phase is None or e["phase"] == phase]


def _entry(manifest: dict[str, Any], phase: str, attempt: int) -> dict[str, Any] | None:
    """The manifest's own (mutable) entry of (phase, attempt), for a writer inside ``updating()``."""
    return next((e for e in manifest["phases"] if e["phase"] == phase and e["attempt"] == attempt), None)


def _end_running(manifest: dict[str, Any]) -> None:
    """Every entry still "running" becomes failed (a run that exits leaves none running); for a
    writer inside ``updating()``."""
    for e in manifest["phases"]:
        if e.get("status") == "running":
            e["status"], e["ended"] = "failed", e.get("ended") or time.time()


class RunFolder:
    """One run folder, ``runs/NAME/``. Cheap to make; every read goes to disk. The records of one
    phase's folder are read through :class:`PhaseFolder` (``decision(folder)`` here is the same read,
    None for a phase that has no folder)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ paths
    def phase_dir(self, phase: str, n: int = 1) -> Path:
        """``01_planning`` or ``02_baseline/attempt-N`` (``round-N``, ``iter-N``)."""
        phase = phase_name(phase)
        base = self.path / phase
        return base / f"{_SUB[phase]}-{n}" if phase in _SUB else base

    def attempts(self, phase: str) -> list[int]:
        """The numbers of a repeated phase's folders that exist, in order."""
        phase = phase_name(phase)
        base = self.path / phase
        if phase not in _SUB or not base.is_dir():
            return []
        pat = re.compile(rf"^{_SUB[phase]}-(\d+)$")
        return sorted(int(m.group(1)) for d in os.listdir(base) if (m := pat.match(d)))

    def latest(self, phase: str) -> Path | None:
        """The newest folder of a phase, or None."""
        phase = phase_name(phase)
        if phase not in _SUB:
            d = self.path / phase
            return d if d.is_dir() else None
        found = self.attempts(phase)
        return self.phase_dir(phase, found[-1]) if found else None

    def next_attempt(self, phase: str) -> tuple[int, Path]:
        found = self.attempts(phase)
        n = (found[-1] + 1) if found else 1
        return n, self.phase_dir(phase, n)

    @property
    def planning(self) -> Path:
        return self.path / Phase.PLANNING.value

    @property
    def manifest_path(self) -> Path:
        return self.path / RUN_JSON

    @property
    def is_run(self) -> bool:
        return self.manifest_path.is_file()

    @contextlib.contextmanager
    def updating(self) -> Iterator[dict[str, Any]]:
        """run.json to change in place: read, yielded, written back atomically when the block ends
        without an error and changed it (an error leaves the file as it was). Every write to run.json
        after :func:`init_run` goes through here or :func:`record_phase`."""
        manifest = load_manifest(self.path)
        before = copy.deepcopy(manifest)
        yield manifest
        if manifest != before:
            write_json_atomic(self.manifest_path, manifest)

    # ------------------------------------------------------------ configs
    def start_config_path(self) -> Path:
        """The config the run was started with (``config.yaml``; a run from before it existed falls
        back to the config Phase 1 froze). RunError when neither is there."""
        for p in (self.path / RUN_CONFIG, self.planning / TRAINING_CONFIG):
            if p.is_file():
                return p.resolve()
        raise RunError(
            f"{self.path}: the config this run was started with is missing ({RUN_CONFIG}); "
            "start a new run with trainkit run CONFIG --name NEW"
        )

    def config_in_force_path(self) -> Path:
        """``current_config.yaml`` (written when a later phase adopts a fix or a better config), or
        else the one Phase 1 froze. RunError when Phase 1 has not run."""
        cur = self.path / CURRENT_CONFIG
        if cur.is_file():
            return cur
        p = self.planning / TRAINING_CONFIG
        if not p.is_file():
            raise RunError(f"{p} not found; run Phase 1 (01_planning) first")
        return p

    def config_in_force(self) -> Any:
        from trainkit.config import load_config

        return load_config(self.config_in_force_path())

    def tracking_config_path(self) -> Path | None:
        """Where the run's ``tracking`` section is read from: the start config, else Phase 1's."""
        for p in (self.path / RUN_CONFIG, self.planning / TRAINING_CONFIG):
            if p.is_file():
                return p
        return None

    # ------------------------------------------------------------ typed reads (absent = None)
    def manifest(self) -> dict[str, Any] | None:
        return _read(self.manifest_path)

    def decision(self, folder: Path | None) -> dict[str, Any] | None:
        return PhaseFolder(folder).decision() if folder is not None else None

    def gate(self, folder: Path | None) -> dict[str, Any] | None:
        return PhaseFolder(folder).gate() if folder is not None else None

    def budget(self, folder: Path | None) -> dict[str, Any] | None:
        return PhaseFolder(folder).budget() if folder is not None else None

    def train_summary(self, folder: Path | None) -> dict[str, Any] | None:
        return PhaseFolder(folder).train_summary() if folder is not None else None

    def findings(self, folder: Path | None) -> dict[str, Any] | None:
        return PhaseFolder(folder).findings() if folder is not None else None

    def splits(self) -> dict[str, Any] | None:
        return _read(self.planning / SPLITS)

    def routed_decision(self, folder: Path | None) -> dict[str, Any] | None:
        """A phase's decision as the run follows it (:meth:`PhaseFolder.routed_decision`)."""
        return PhaseFolder(folder).routed_decision() if folder is not None else None

    def entries(self, phase: str | None = None) -> list[PhaseEntry]:
        """``run.json``'s phase history (of one ``phase``, if given), in order; a RunError for a
        folder that is not a run."""
        return phase_entries(load_manifest(self.path), phase)

    def entry(self, phase: str, attempt: int) -> PhaseEntry | None:
        return next((e for e in self.entries(phase) if e.attempt == attempt), None)

    def path_taken(self) -> list[str]:
        """The phases the run went through, in order (every invocation's, a resume's included)."""
        return [e.phase for e in phase_entries(self.manifest() or {})]

    # ------------------------------------------------------------ the data layer's view
    def data_store(self) -> Any:
        """Where the data layer keeps this run's records (:class:`trainkit.data.DataStore`)."""
        from trainkit.data import DataStore

        return DataStore(
            root=self.path,
            splits=self.planning / SPLITS,
            manifest=self.planning / DATA_MANIFEST,
            loads=self.path / DATA_LOADS if self.is_run else None,
            preprocess=self.planning / PREPROCESS,
        )

    def reading_phase(self, requested: str | None) -> str | None:
        """The phase whose rules apply to a data load: the one the run's own manifest says is
        running (not whatever a caller passes); without a manifest, never the final phase (a test
        read must be logged in a run)."""
        final = Phase.FINALIZATION.value
        manifest = self.manifest()
        if manifest is None:
            return None if requested == final else requested
        running = [e["phase"] for e in manifest.get("phases", []) if e.get("status") == "running"]
        if requested == final and (not running or running[-1] != final):
            return running[-1] if running else None
        return requested

    def quarantine(self, phase: str | None) -> Any:
        """The test split's policy for a load by ``phase`` (:class:`trainkit.data.Quarantine`): open
        only in Phase 5 while the run says Phase 5 is running; every attempt is logged."""
        from trainkit.data import Quarantine

        who = self.reading_phase(phase)
        return Quarantine(
            open=who == Phase.FINALIZATION.value,
            who=who,
            opens=f"Phase 5 ({Phase.FINALIZATION.value})",
            log=self.path / TEST_ACCESS_LOG,
        )

    def load_data(self, cfg: Any, phase: str | None, write_splits: bool = False) -> Any:
        """:func:`trainkit.data.load_data` with this run's store and ``phase``'s quarantine."""
        from trainkit.data import load_data

        return load_data(cfg, self.data_store(), self.quarantine(phase), write_splits=write_splits)

    # ------------------------------------------------------------ cost
    def baseline_seconds(self) -> float | None:
        """The unit of compute cost: the wall time of the first Phase 2 baseline's training (seconds)."""
        summary = self.train_summary(self.phase_dir(Phase.BASELINE.value, 1))
        t = (summary or {}).get("wall_time_s")
        return float(t) if t else None


def load_run_data(cfg: Any, run_dir: str | Path | None, phase: str | None = None, write_splits: bool = False) -> Any:
    """Load data for a phase of the run in ``run_dir`` (or, with None, outside any run)."""
    if run_dir is None:
        from trainkit.data import Quarantine, load_data

        final = Phase.FINALIZATION.value
        return load_data(cfg, None, Quarantine(who=None if phase == final else phase, opens=f"Phase 5 ({final})"))
    return RunFolder(run_dir).load_data(cfg, phase, write_splits)


def read_fit(d: str | Path) -> tuple[Any, dict[str, Any]] | None:
    """A fit folder's config and summary (``training_config.yaml``, ``train_summary.json``); None
    when either is missing, half written or not a trainkit file."""
    from trainkit.config import load_config

    try:
        return load_config(Path(d) / TRAINING_CONFIG), read_json(Path(d) / TRAIN_SUMMARY)
    except Exception:
        return None


def phase_name(n: int | str) -> str:
    """``2`` or ``"02_baseline"`` → ``"02_baseline"``; a clear error otherwise."""
    if isinstance(n, Phase):
        return n.value
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
    path = run_dir / RUN_JSON
    if path.exists():
        manifest = read_json(path)
    else:
        manifest = {
            "name": name or run_dir.name,
            "created": time.time(),
            "trainkit_version": __version__,
            "config_hash": None,
            "phases": [],
            "status": "running",
        }
    if config_hash:
        manifest["config_hash"] = config_hash
    write_json_atomic(path, manifest)
    return manifest


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise RunError(f"{run_dir}: no run.json; not a trainkit run folder (start one with `trainkit run`)")
    return read_json(path)


def _save_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / RUN_JSON, manifest)


def record_phase(run_dir: str | Path, phase: str, attempt: int, **fields: Any) -> dict[str, Any]:
    """Insert or update the history entry of (phase, attempt) with ``fields``; returns it."""
    manifest = init_run(run_dir)
    entry = _entry(manifest, phase, attempt)
    if entry is not None:
        entry.update(fields)
    else:
        entry = {
            "phase": phase,
            "attempt": attempt,
            "started": time.time(),
            "ended": None,
            "status": "running",
            "decision": None,
            **fields,
        }
        manifest["phases"].append(entry)
    _save_manifest(run_dir, manifest)
    return entry


def resume_command(run_dir: str | Path) -> str:
    """The exact ``trainkit run --resume`` command for a run folder, quoted for a POSIX shell."""
    import shlex

    run_dir = Path(run_dir)
    return f"trainkit run --resume --name {shlex.quote(run_dir.name)} --runs-dir {shlex.quote(str(run_dir.parent))}"


def signoff_command(run_dir: str | Path, phase_number: int, checks: list[str]) -> str:
    """The exact ``trainkit signoff`` command for a gate, with its pending manual checks, quoted."""
    import shlex

    return f"trainkit signoff {shlex.quote(str(run_dir))} --phase {phase_number} --by NAME" + "".join(
        f" --check {shlex.quote(c)}" for c in checks
    )


def finish_command(run_dir: str | Path, phase_number: int, checks: list[dict[str, Any]]) -> str:
    """The ``trainkit signoff`` command that finishes a gate from its ``checks`` (a gate record's):
    its pending manual checks ticked and each failing check waived with ``REASON`` to replace (a
    blocked gate cannot be signed otherwise), quoted."""
    import shlex

    failing = [c["id"] for c in checks if c["mandatory"] and c["status"] == "fail"]
    manual = [c["id"] for c in checks if c["kind"] == "manual" and c["mandatory"] and c["status"] != "pass"]
    return signoff_command(run_dir, phase_number, manual) + "".join(
        f" --waive {shlex.quote(c + '=REASON')}" for c in failing
    )


def way_out(run_dir: str | Path, phase_number: int, checks: list[dict[str, Any]], blocked: bool, q: str = "") -> str:
    """How to finish a gate in words, commands quoted by ``q``: sign it off (:func:`finish_command`)
    then resume; when it is blocked, first the choice of fixing what its failing checks say."""
    sign, resume = finish_command(run_dir, phase_number, checks), resume_command(run_dir)
    then = f"{q}{sign}{q} then {q}{resume}{q}"
    if blocked:  # a failing check blocks a sign-off unless it is waived with its reason
        return f"fix what the failing checks say and run {q}{resume}{q}; or, if you accept them, {then}"
    return f"sign off with {then}"


def check_run_name(name: str) -> str:
    """A run name is one plain folder name inside the runs folder: no separators, not '.', '..' or
    empty, no control characters. Raises ConfigError (exit 2) naming the problem."""
    from trainkit.errors import ConfigError

    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith("~")
        or any(ord(ch) < 32 for ch in name)
        or Path(name).is_absolute()
    )
    if bad:
        raise ConfigError(
            [
                (
                    "--name",
                    f"{name!r} is not a plain folder name; use letters, digits, '-', '_' or '.' "
                    "(no '/', not '.' or '..'): the run must stay inside --runs-dir",
                )
            ],
            "command line",
        )
    return name


def phase_cost(run_dir: str | Path, started: float, ended: float) -> dict[str, Any]:
    """A phase's compute: wall seconds and, once the baseline has trained, baseline units."""
    unit = RunFolder(run_dir).baseline_seconds()
    wall = max(0.0, ended - started)
    return {
        "wall_s": round(wall, 2),
        "baseline_units": round(wall / unit, 2) if unit else None,
        "baseline_s": round(unit, 2) if unit else None,
    }


def run_cost(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's total compute from its phase entries (wall seconds, baseline units)."""
    costs = [e["cost"] for e in manifest.get("phases", []) if e.get("cost")]
    units = [c["baseline_units"] for c in costs if c.get("baseline_units") is not None]
    return {
        "wall_s": round(sum(c["wall_s"] for c in costs), 2),
        "baseline_units": round(sum(units), 2) if units else None,
    }
