"""Notebook hygiene, and the notebooks executed for real under papermill and through the CLI."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

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


@pytest.mark.slow
def test_cli_invalid_config_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: fast\n")
    r = subprocess.run(
        ["trainkit", "run", str(bad), "--name", "x", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
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
