"""Notebook hygiene, and the notebooks executed for real under papermill and through the CLI."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import PAPERMILL, trainkit_here  # noqa: E402 (the tests folder is on sys.path)

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_all_phase_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == [
        "01_planning.ipynb",
        "02_baseline.ipynb",
        "03_diagnostics.ipynb",
        "04_optimization.ipynb",
        "05_finalization.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_clean_template(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown", "first cell states the purpose"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one parameters cell"
    for c in code:
        assert not c.outputs and c.execution_count is None, "committed without outputs"
        tree = ast.parse(c.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree)), "no def/class"
        assert len(c.source.strip().splitlines()) <= 3 or c is tagged[0], "a long cell is a missing function"
    for line in tagged[0].source.splitlines():
        assert "# help:" in line, f"parameter without help: {line}"
        ast.literal_eval(line.split("=", 1)[1].split("#")[0].strip())


def _gate(path):
    return json.loads(Path(path).read_text())


@pytest.mark.slow
def test_papermill_runs_notebook_01_without_the_cli(tmp_path):
    out = tmp_path / "out.ipynb"
    run = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(NB_DIR / "01_planning.ipynb"),
            str(out),
            "-p",
            "run_dir",
            str(run),
            "-p",
            "interactive",
            "False",
            "-k",
            "python3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    d = run / "01_planning"
    for name in ("training_config.yaml", "environment.json", "splits.json", "determinism.json", "gate.json"):
        assert (d / name).is_file(), name
    rec = _gate(d / "gate.json")
    assert rec["state"] == "awaiting_signoff"
    assert all(c["status"] == "pass" for c in rec["checks"] if c["kind"] == "automatic")
    st = subprocess.run(["trainkit", "status", str(run)], capture_output=True, text=True)
    assert st.returncode == 0 and "awaiting_signoff" in st.stdout and f"trainkit signoff {run} --phase 1" in st.stdout
    bad = subprocess.run(
        ["trainkit", "signoff", str(run), "--phase", "1", "--by", "eve", "--check", "seeds_fixed"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "not a manual check" in bad.stderr
    ok = subprocess.run(
        ["trainkit", "signoff", str(run), "--phase", "1", "--by", "eve", "--check", "config_reviewed"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    rec = _gate(d / "gate.json")
    assert rec["state"] == "passed" and rec["signoff"]["by"] == "eve"
    assert (
        "next: trainkit run --resume"
        in subprocess.run(["trainkit", "status", str(run)], capture_output=True, text=True).stdout
    )


@pytest.mark.slow
def test_cli_stop_after_1_writes_phase_1_and_a_readable_report(demo):
    r = demo.results["at1"]  # conftest.py: the demo (the shipped template) with --stop-after 1
    assert r.returncode == 0, r.stdout + r.stderr
    d = demo["at1"] / "01_planning"
    for name in (
        "training_config.yaml",
        "environment.json",
        "splits.json",
        "gate.json",
        "notebook.ipynb",
        "report.html",
    ):
        assert (d / name).is_file(), name
    html = (d / "report.html").read_text()
    assert "trainkit-gate" in html and "seeds_fixed" in html and "determinism_verified" in html
    assert "unpkg.com" not in html and "cdnjs" not in html
    assert _gate(d / "gate.json")["state"] == "passed"
    run = json.loads((demo["at1"] / "run.json").read_text())
    assert run["phases"][0]["phase"] == "01_planning" and run["phases"][0]["status"] == "completed"


def _cells(nb_path):
    """A notebook's code cells as (tags, output types), the injected parameters' values left out."""
    nb = nbformat.read(nb_path, as_version=4)
    return [
        (c.metadata.get("tags") or [], [o.output_type for o in c.outputs]) for c in nb.cells if c.cell_type == "code"
    ]


@pytest.mark.slow
def test_the_inprocess_executor_writes_what_papermill_writes(tmp_path, monkeypatch, capsys):
    """Phase 1 of the demo run in this process (TRAINKIT_EXECUTOR=inprocess, what the tests use)
    against the same phase under papermill (a kernel): the same cells with the same outputs, the
    parameters injected after the parameters cell, the same gate, the same report."""
    import os

    from trainkit import cli

    kernel = subprocess.run(
        ["trainkit", "run", "--stop-after", "1", "--name", "demo", "--runs-dir", str(tmp_path / "kernel")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, **PAPERMILL),
    )
    assert kernel.returncode == 0, kernel.stdout + kernel.stderr
    monkeypatch.setenv("TRAINKIT_EXECUTOR", "inprocess")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--stop-after", "1", "--name", "demo", "--runs-dir", str(tmp_path)]) == 0
    mine, theirs = tmp_path / "demo" / "01_planning", tmp_path / "kernel" / "demo" / "01_planning"
    assert nbformat.read(mine / "notebook.ipynb", as_version=4).metadata["trainkit"] == {"executor": "inprocess"}
    assert "papermill" in nbformat.read(theirs / "notebook.ipynb", as_version=4).metadata
    assert _cells(mine / "notebook.ipynb") == _cells(theirs / "notebook.ipynb")
    injected = nbformat.read(mine / "notebook.ipynb", as_version=4).cells
    params = next(c for c in injected if "injected-parameters" in c.metadata.get("tags", []))
    assert f"run_dir = {str(tmp_path / 'demo')!r}" in params.source and "auto_signoff = True" in params.source
    checks = [(c["id"], c["status"]) for c in _gate(mine / "gate.json")["checks"]]
    assert checks == [(c["id"], c["status"]) for c in _gate(theirs / "gate.json")["checks"]]
    import re

    def headings(d):
        return re.findall(r"<h[1-4][^>]*>(.*?)</h[1-4]>", (d / "report.html").read_text(), re.S)

    assert headings(mine) == headings(theirs) and len(headings(mine)) >= 6
    from trainkit.executor import _CellStream

    assert not isinstance(sys.stdout, _CellStream) and not isinstance(sys.stderr, _CellStream)  # given back


def test_after_an_in_process_phase_its_figures_are_closed():
    """A kernel's exit closes what a phase left open; in process, the executor does it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainkit.executor import _after_phase

    plt.figure()
    assert plt.get_fignums()
    _after_phase()
    assert plt.get_fignums() == []


@pytest.mark.slow
def test_a_phase_that_raises_in_process_fails_like_a_kernels_and_names_its_report(tmp_path, monkeypatch, capsys):
    """A cell that raises mid-phase (here Phase 1's gate cell, on an approvals file that is not
    there): the phase's run.json entry is failed with the error, as the kernel's hook marks it; the
    notebook keeps the error as that cell's output; the error names the report. An unknown
    executor is refused before anything is written."""
    from trainkit import cli
    from trainkit.errors import PipelineError
    from trainkit.executor import execute_phase
    from trainkit.run import init_run
    from trainkit.testing import tiny_config_file

    monkeypatch.setenv("TRAINKIT_EXECUTOR", "inprocess")
    cfg = tiny_config_file(tmp_path, {"training.epochs": 2})
    run = tmp_path / "bad"
    init_run(run, "bad")
    params = {"config_path": str(cfg), "approvals": str(tmp_path / "missing.yaml"), "interactive": False}
    with pytest.raises(PipelineError) as e:
        execute_phase("01_planning", run, params)
    assert str(e.value).startswith("01_planning failed: ") and str(run / "01_planning" / "report.html") in str(e.value)
    nb = nbformat.read(run / "01_planning" / "notebook.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(i, o) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert [i for i, _ in errors] == [len(code) - 1] and "missing.yaml" in errors[0][1].evalue  # the gate cell
    assert f"{errors[0][1].ename}: " in str(e.value) and errors[0][1].traceback
    entry = json.loads((run / "run.json").read_text())["phases"][0]
    assert entry["status"] == "failed" and entry["error"].startswith(errors[0][1].ename + ": "), entry
    assert (run / "01_planning" / "report.html").is_file() and (run / "01_planning" / "splits.json").is_file()
    monkeypatch.setenv("TRAINKIT_EXECUTOR", "threads")
    assert cli.main(["run", str(cfg), "--name", "other", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "TRAINKIT_EXECUTOR='threads'" in err and "papermill" in err and "Traceback" not in err, err
    assert not (tmp_path / "other" / "01_planning").exists()


@pytest.mark.slow
def test_cli_invalid_config_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: fast\n")
    r = trainkit_here("run", bad, "--name", "x", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "optimizer.lr" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_invalid_override_in_notebook_blocks_the_gate_with_evidence(tmp_path):
    out = tmp_path / "out.ipynb"
    run = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(NB_DIR / "01_planning.ipynb"),
            str(out),
            "-p",
            "run_dir",
            str(run),
            "-y",
            "overrides: ['training.epochs=zero']",
            "-k",
            "python3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "GateBlocked" in r.stderr
    rec = _gate(run / "01_planning" / "gate.json")
    assert rec["state"] == "blocked"
    cv = next(c for c in rec["checks"] if c["id"] == "config_valid")
    assert cv["status"] == "fail" and "training.epochs" in cv["evidence"]


def _in_kernel(km, code):
    """Run ``code`` in the kernel of ``km``; its printed words."""
    from trainkit.kernel import blocking_client

    kc = blocking_client(km)
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    try:
        reply = kc.execute_interactive(code, timeout=60, output_hook=hook)
    finally:
        kc.stop_channels()
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out).split()


@pytest.mark.slow
def test_a_runs_phases_share_one_kernel_cleared_for_each_and_a_dead_one_is_replaced(monkeypatch):
    """docs/design.md, "Executors": inside one ``trainkit run`` the phases run in one kernel; before
    each the kernel is what a new one would be (no names left, history from 1, this process's
    environment, variables removed here removed there); a kernel that died is replaced; the run's
    end shuts it down. Outside a run there is no shared kernel (papermill starts its own)."""
    from jupyter_core.utils import run_sync

    from trainkit.kernel import alive, kernel_for_phase, shared_kernel

    assert kernel_for_phase() is None
    monkeypatch.setenv("TK_KERNEL_PROBE", "one")
    monkeypatch.setenv("TK_KERNEL_GONE", "here")
    with shared_kernel():
        km = kernel_for_phase()
        hook = "def hook(result): pass\nhook.__module__ = 'trainkit.phases.common'\n"  # as begin() registers one
        hook += "get_ipython().events.register('post_run_cell', hook)\n"
        pid, seen = _in_kernel(
            km, hook + "import os; left_over = 41; print(os.getpid(), os.environ['TK_KERNEL_PROBE'])"
        )
        assert seen == "one"
        monkeypatch.setenv("TK_KERNEL_PROBE", "two")
        monkeypatch.delenv("TK_KERNEL_GONE")
        assert kernel_for_phase() is km
        code = (
            "import os; print(os.getpid(), os.environ.get('TK_KERNEL_PROBE'), 'left_over' in globals(), "
            "os.environ.get('TK_KERNEL_GONE', '-'), get_ipython().execution_count, "
            "sum(getattr(c, '__module__', '').startswith('trainkit') "
            "for c in get_ipython().events.callbacks['post_run_cell']))"
        )
        assert _in_kernel(km, code) == [pid, "two", "False", "-", "1", "0"]
        run_sync(km.shutdown_kernel)(now=True)  # the kernel dies with its phase
        fresh = kernel_for_phase()
        assert fresh is not km and alive(fresh)
        assert _in_kernel(fresh, code)[0] != pid
    assert not alive(fresh)
    assert kernel_for_phase() is None
