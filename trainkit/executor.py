"""Phase execution: a phase notebook run into its folder, its console output indented live, its
report exported; a failure becomes a PipelineError that names the report to read. The run clock's
active seconds are counted around each phase.

Two executors (``TRAINKIT_EXECUTOR``): ``papermill`` (the default, and the only module importing
it) runs each phase notebook in a Jupyter kernel, as JupyterLab would (one kernel per ``trainkit run``,
cleared between phases: :mod:`trainkit.kernel`; one per phase outside a run); ``inprocess`` runs the same cells in this
process (no kernel start and no second import of torch: seconds saved per phase, used by the test
suite), writing the same executed notebook and report. A phase that crashes the interpreter takes
an in-process run down with it; a kernel's death is only that phase's failure."""

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
    record_phase,
    resume_command,
    RunFolder,
)

_ATTEMPTED = {p.value for p in Phase if p.sub}  # the phases that repeat, each in its numbered folder
EXECUTOR_ENV = "TRAINKIT_EXECUTOR"
EXECUTORS = ("papermill", "inprocess")


def executor_kind() -> str:
    """``papermill`` or ``inprocess``, from ``TRAINKIT_EXECUTOR`` (unset: papermill)."""
    kind = os.environ.get(EXECUTOR_ENV, "").strip() or EXECUTORS[0]
    if kind not in EXECUTORS:
        raise PipelineError(
            f"{EXECUTOR_ENV}={kind!r} is not an executor: expected one of {', '.join(EXECUTORS)} "
            f"(unset it for papermill, the default)"
        )
    return kind


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
    kind = executor_kind()
    out_dir = RunFolder(run_dir).phase_dir(phase, attempt)
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
        if kind == "inprocess":
            _execute_inprocess(phase, out_nb, params, out_dir, run_dir, attempt)
        else:
            import papermill as pm

            _execute(pm, phase, out_nb, params, out_dir, run_dir, attempt)
    finally:
        os.environ.pop(CLOCK_ENV, None)
        end = time.time()
        _count_active(run_dir, phase, attempt, end - t0, end - origin)
    return out_dir


def _execute(
    pm: Any, phase: str, out_nb: Path, params: dict[str, Any], out_dir: Path, run_dir: Path, attempt: int
) -> None:
    from trainkit.kernel import kernel_for_phase, release

    km = None
    try:
        stream = _console()
        km = kernel_for_phase()  # the run's kernel, cleared for this notebook (None: papermill starts one)
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
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no kernel transport warnings
            **({"km": km} if km is not None else {}),
        )
    except pm.PapermillExecutionError as exc:
        safe_export(out_nb, out_dir / REPORT)
        raise _failed(phase, exc.ename, exc.evalue, out_dir) from None
    except Exception as exc:  # kernel death, missing kernel, ...
        safe_export(out_nb, out_dir / REPORT)
        record_phase(run_dir, phase, attempt, status="failed", ended=time.time())
        raise PipelineError(
            f"{phase} did not finish: {type(exc).__name__}: {_first_line(str(exc))}; "
            f"fix it and continue with `{resume_command(run_dir)}`"
        ) from None
    finally:
        release(km)
    safe_export(out_nb, out_dir / REPORT)


def _execute_inprocess(
    phase: str, out_nb: Path, params: dict[str, Any], out_dir: Path, run_dir: Path, attempt: int
) -> None:
    """The phase's cells in this process; the executed notebook and its report as papermill writes
    them. A cell that raises ends the phase: its entry is marked failed (as the kernel's hook does)."""
    import nbformat

    from trainkit._io import write_text_atomic
    from trainkit.phases.common import mark_failed

    nb = nbformat.read(notebook_path(phase), as_version=4)
    try:
        _, error = run_cells(nb, params, phase, console=_console())
    finally:
        write_text_atomic(out_nb, nbformat.writes(nb))
        safe_export(out_nb, out_dir / REPORT)
        _after_phase()
    if error is not None:
        mark_failed(run_dir, phase, attempt, error)
        raise _failed(phase, type(error).__name__, str(error), out_dir)


def _console() -> bool:
    """Whether the phase's own progress lines go to the console, live."""
    return os.environ.get("TRAINKIT_PROGRESS", "text") != "off"


def _failed(phase: str, ename: str, evalue: str, out_dir: Path) -> PipelineError:
    """A phase whose cell raised: the error's first line and the report to read (either executor)."""
    return PipelineError(f"{phase} failed: {ename}: {_first_line(evalue)} (read {out_dir / REPORT})")


def _after_phase() -> None:
    """What a kernel's exit does for the next phase: its figures closed, its objects collected."""
    import gc

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    gc.collect()


def run_cells(
    nb: Any, params: dict[str, Any], name: str, console: bool = False, stop: tuple[type, ...] = ()
) -> tuple[dict[str, Any], Exception | None]:
    """Execute a notebook's code cells in this process, in a fresh namespace: the parameters cell,
    then ``params`` in a cell tagged ``injected-parameters`` right after it (as papermill does),
    then the rest. Each cell's prints and displays become its outputs (and the prints go to the
    console, indented, when ``console``). The first exception ends the cells and is returned (an
    ``error`` output records it), except one of ``stop``, which ends them quietly.
    ``nb`` (nbformat) is changed in place; returns (namespace, exception or None)."""
    import builtins
    import traceback

    import nbformat

    from trainkit import _outputs

    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), -1)
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]})
    if nb.get("nbformat_minor", 5) < 5:  # cell ids came with nbformat 4.5; the templates are older
        del cell["id"]
    nb.cells.insert(at + 1, cell)
    nb.metadata["trainkit"] = {"executor": "inprocess"}
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    out, err = (_Indented(sys.stdout), _Indented(sys.stderr)) if console else (None, None)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count, cell.outputs = count, []
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _CellStream("stdout", cell.outputs, out), _CellStream("stderr", cell.outputs, err)
        try:
            with _outputs.collect(cell.outputs):
                exec(compile(cell.source, f"<{name} cell {count}>", "exec"), ns)
        except stop:
            break
        except Exception as exc:
            lines = traceback.format_exception(exc)
            cell.outputs.append(
                nbformat.v4.new_output("error", ename=type(exc).__name__, evalue=str(exc), traceback=lines)
            )
            return ns, exc
        finally:
            sys.stdout, sys.stderr = saved
    return ns, None


class _CellStream:
    """sys.stdout/stderr while a cell runs in this process: its text becomes the cell's stream
    output (one output per run of writes, as a kernel sends them), and goes on to ``echo``."""

    def __init__(self, name: str, outputs: list[Any], echo: Any) -> None:
        self.name, self.outputs, self.echo = name, outputs, echo

    def write(self, text: str) -> int:
        if text:
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last.get("output_type") == "stream" and last.get("name") == self.name:
                last["text"] += text
            else:
                import nbformat

                self.outputs.append(nbformat.v4.new_output("stream", name=self.name, text=text))
            if self.echo is not None:
                self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("a notebook cell's output has no file descriptor")

    encoding, errors = "utf-8", "strict"


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
