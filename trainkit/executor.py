"""Phase execution: a phase notebook run into its folder by papermill (the only module importing it),
its console output indented live, its report exported; a failure becomes a PipelineError that
names the report to read. The run clock's active seconds are counted around each phase."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from trainkit.budget import _count_active
from trainkit.errors import PipelineError
from trainkit.reports import safe_export
from trainkit.run import (
    NOTEBOOK,
    REPORT,
    Phase,
    load_manifest,
    phase_dir,
    record_phase,
    resume_command,
)

_ATTEMPTED = {p.value for p in Phase if p.sub}  # the phases that repeat, each in its numbered folder


def notebook_path(phase: str) -> Path:
    """The template notebook of a phase: the installed package's copy, else the repo's."""
    here = Path(__file__).resolve().parent
    for base in (here / "notebooks", here.parent / "notebooks"):
        p = base / f"{phase}.ipynb"
        if p.is_file():
            return p
    raise PipelineError(f"notebook for {phase} not found in the installed trainkit ({here}/notebooks)")


def execute_phase(
    phase: str, run_dir: Path, params: dict[str, Any], attempt: int = 1, clock_start: float | None = None
) -> Path:
    """Run a phase notebook into its folder (notebook.ipynb + report.html); PipelineError on failure.
    ``clock_start``: the run clock's origin (``time.time()`` less the run's active seconds), which
    ``trainkit run`` keeps for the whole invocation so that its own work between phases counts;
    without it the clock resumes from ``run.json["active_s"]`` now."""
    import papermill as pm

    out_dir = phase_dir(run_dir, phase, attempt)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb = out_dir / NOTEBOOK
    params = {"run_dir": str(run_dir), **params}
    if phase in _ATTEMPTED:
        params["attempt"] = attempt
    os.environ.setdefault("TRAINKIT_PROGRESS", "text")
    from trainkit.budget import CLOCK_ENV, active_seconds

    t0 = time.time()
    origin = clock_start if clock_start is not None else t0 - active_seconds(load_manifest(run_dir))
    os.environ[CLOCK_ENV] = repr(origin)  # the kernel's budget clock
    try:
        _execute(pm, phase, out_nb, params, out_dir, run_dir, attempt)
    finally:
        os.environ.pop(CLOCK_ENV, None)
        end = time.time()
        _count_active(run_dir, phase, attempt, end - t0, end - origin)
    return out_dir


def _execute(
    pm: Any, phase: str, out_nb: Path, params: dict[str, Any], out_dir: Path, run_dir: Path, attempt: int
) -> None:
    try:
        stream = os.environ.get("TRAINKIT_PROGRESS", "text") != "off"  # the phase's own progress lines, live
        pm.execute_notebook(
            str(notebook_path(phase)),
            str(out_nb),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            report_mode=False,
            stdout_file=_Indented(sys.stdout) if stream else None,
            stderr_file=_Indented(sys.stderr) if stream else None,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )  # no kernel transport warnings
    except pm.PapermillExecutionError as exc:
        safe_export(out_nb, out_dir / REPORT)
        raise PipelineError(
            f"{phase} failed: {exc.ename}: {_first_line(exc.evalue)} (read {out_dir / 'report.html'})"
        ) from None
    except Exception as exc:  # kernel death, missing kernel, ...
        safe_export(out_nb, out_dir / REPORT)
        record_phase(run_dir, phase, attempt, status="failed", ended=time.time())
        raise PipelineError(
            f"{phase} did not finish: {type(exc).__name__}: {_first_line(str(exc))}; "
            f"fix it and continue with `{resume_command(run_dir)}`"
        ) from None
    safe_export(out_nb, out_dir / REPORT)


class _Indented:
    """A console stream that indents what a phase's kernel prints (its progress), line by line."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.fresh = stream, True

    def write(self, text: str) -> int:
        for part in re.split(r"(\n|\r)", text):
            if not part:
                continue
            if self.fresh and part not in ("\n", "\r"):
                self.stream.write("    ")
            self.stream.write(part)
            self.fresh = part in ("\n", "\r")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _first_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    return text.strip().splitlines()[0][:400] if text.strip() else ""
