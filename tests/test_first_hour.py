"""A new user's first hour: no stuck states, hints that work when pasted, reports that follow the
state, readable files, and a console that says what is happening."""

import html
import json
import os
import shlex
import subprocess

import pytest

from trainkit._io import write_json_atomic
from trainkit.testing import tiny_config_file
from conftest import trainkit_here  # noqa: E402 (the tests folder is on sys.path)

FAST = {"training.epochs": 8, "target.value": 0.5, "final.epochs": 12, "final.patience": 4}


_cfg = tiny_config_file


def _cli(*args, env=None):
    """``trainkit ARGS``: a run in its own process (as typed), the other commands in this one."""
    if args[0] != "run":
        assert env is None
        return trainkit_here(*args)
    return subprocess.run(["trainkit", *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def _path(run):
    return [(e["phase"], e["attempt"]) for e in json.loads((run / "run.json").read_text())["phases"]]


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory):
    """Fast path 1 → 2 → 5 whose production gate misses one check (a per-class recall floor no
    model meets), run with live progress on the console."""
    tmp = tmp_path_factory.mktemp("blocked")
    cfg = _cfg(tmp, dict(FAST, **{"final.per_class_floor": 0.9999}))
    env = dict(os.environ, TRAINKIT_PROGRESS="text")
    r = _cli("run", cfg, "--name", "my run", "--runs-dir", tmp, env=env)
    return tmp / "my run", r


@pytest.mark.slow
def test_a_missed_check_is_finished_from_the_cli_with_a_documented_waiver(blocked_run):
    run, r = blocked_run
    assert r.returncode == 1 and "per_class_reported" in r.stderr, r.stdout + r.stderr
    # the way out it prints waives the failing check: a blocked gate cannot be signed otherwise
    assert "--check stakeholder_approval --waive per_class_reported=REASON` then `trainkit run --resume" in r.stderr
    fin = run / "05_finalization"
    assert "blocked" in (fin / "report.html").read_text()
    status = _cli("status", run)  # the next step it prints includes the waiver, with the run's name quoted
    assert "--waive per_class_reported=REASON" in status.stdout and "'" in status.stdout, status.stdout
    bad = _cli("signoff", run, "--phase", "5", "--by", "Ana", "--waive", "per_class_reported")  # no reason
    assert bad.returncode == 2 and "--waive" in bad.stderr
    wrong = _cli(
        "signoff",
        run,
        "--phase",
        "5",
        "--by",
        "Ana",
        "--check",
        "stakeholder_approval",
        "--waive",
        "test_disjoint=not failing",
    )
    assert wrong.returncode != 0 and "not failing" in wrong.stderr
    two_lines = _cli("signoff", run, "--phase", "5", "--by", "Ana\nLee", "--check", "stakeholder_approval")
    assert two_lines.returncode != 0 and "give one line of text" in two_lines.stderr
    ok = _cli(
        "signoff",
        run,
        "--phase",
        "5",
        "--by",
        "Ana Lee",
        "--check",
        "stakeholder_approval",
        "--waive",
        "per_class_reported=pilot: rare classes are reviewed <b>by hand</b>\n## Approved",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    gate = json.loads((fin / "gate.json").read_text())
    check = next(c for c in gate["checks"] if c["id"] == "per_class_reported")
    assert gate["state"] == "passed" and check["status"] == "waived" and "Ana Lee" in check["evidence"]
    assert gate["waivers"][0]["reason"] == "pilot: rare classes are reviewed <b>by hand</b>\n## Approved"
    card = (fin / "model_card.md").read_text()  # a person's words: one line of text, never markup or a section
    assert "## Waivers" in card and "pilot: rare classes are reviewed &lt;b&gt;by hand&lt;/b&gt; ## Approved" in card
    assert "<b>" not in card and "\n## Approved" not in card
    report = (fin / "report.html").read_text()  # rewritten on the sign-off: it shows the state now
    assert "id='gate-state'>passed<" in report and "waived per_class_reported" in report
    resume = [a for a in shlex.split(ok.stdout.split("next: ")[1].split("  (")[0])]  # the printed command, as pasted
    again = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "ready to deploy" in again.stdout, again.stdout + again.stderr
    index = (run / "index.html").read_text()
    head = index.split("<body>")[1].split("<h2>Phases</h2>")[0]  # status line, path diagram, notes
    assert "ready_to_deploy" in head and "awaiting" not in head
    m = json.loads((run / "run.json").read_text())
    assert m["status"] == "ready_to_deploy" and m["exit"]["code"] == 0


@pytest.mark.slow
def test_the_console_streams_progress_and_prints_each_phases_result_without_kernel_warnings(blocked_run):
    _, r = blocked_run
    out = r.stdout + r.stderr
    assert "Kernel is running over TCP" not in out and "IPKernelApp" not in out
    assert "\n    train:" in r.stdout  # the baseline's own progress bar, streamed and indented
    assert "02_baseline: val acc 0." in r.stdout and "05_finalization: test acc 0." in r.stdout
    assert "(attempt-1)" in r.stdout and "gate passed; A → 05_finalization" in r.stdout


@pytest.mark.slow
def test_reports_state_their_decision_without_stderr_blocks_or_warnings(blocked_run):
    run, _ = blocked_run
    base = (run / "02_baseline" / "attempt-1" / "report.html").read_text()
    assert "Decision: option A → 05_finalization" in base  # the decision and its reason, not a file path
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in base  # progress went to stdout: no red blocks
    final = (run / "05_finalization" / "report.html").read_text()
    assert "deprecated" not in final and "Warning" not in final
    index = (run / "index.html").read_text()
    assert "A → Phase 5" in index and "Learning curves" in index and "data:image/png;base64," in index


@pytest.mark.slow
def test_a_failed_exit_is_recorded_before_the_index_is_written(blocked_run):
    run, _ = blocked_run
    m = json.loads((run / "run.json").read_text())
    assert m["status"] != "running" and all(e["status"] != "running" for e in m["phases"])
    index = (run / "index.html").read_text()
    # written after the exit was recorded: the index shows the final status and the exit message, not "running"
    # (the module's run may have been signed and resumed by an earlier test: whatever its last exit was)
    assert f"Status: <b>{html.escape(m['status'])}</b>" in index and html.escape(m["exit"]["message"][:80]) in index


@pytest.mark.slow
def test_resume_after_stop_after_2_follows_a_failed_baselines_decision(failed_baseline):
    # conftest.py: trainkit run --stop-after 2 on the LR-1e6 config, then --resume --stop-after 3
    r = failed_baseline.results["at2"]
    assert r.returncode == 0 and "FAILED: 02_baseline decided C → 03_diagnostics" in r.stdout, r.stdout + r.stderr
    again = failed_baseline.results["at3"]
    run = failed_baseline["at3"]
    assert _path(run)[:3] == [("01_planning", 1), ("02_baseline", 1), ("03_diagnostics", 1)], (
        again.stdout + again.stderr
    )
    assert "recorded decision is C → 03_diagnostics" in again.stdout


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, mask, mode):
    from trainkit.checkpoints import save_checkpoint

    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        save_checkpoint({"w": 1}, tmp_path / "best.pt")
    finally:
        os.umask(old)
    for p in ("a.json", "best.pt", "best.pt.sha256"):
        assert (tmp_path / p).stat().st_mode & 0o777 == mode, p


@pytest.mark.slow
def test_a_signed_phase_1_is_not_redone_silently(tmp_path):
    from trainkit.errors import RunError
    from trainkit.testing import run_phase_inprocess

    run = tmp_path / "r"
    cfg = _cfg(tmp_path, FAST)
    run_phase_inprocess("01_planning", run, config_path=str(cfg))
    gate = (run / "01_planning" / "gate.json").read_text()
    with pytest.raises(RunError, match="redo = True"):  # a second "Run All"
        run_phase_inprocess("01_planning", run, config_path=str(cfg))
    assert (run / "01_planning" / "gate.json").read_text() == gate  # the signed gate is untouched
    run_phase_inprocess("01_planning", run, config_path=str(cfg), redo=True)  # on purpose: allowed


def test_notebooks_run_from_the_notebooks_folder_write_into_the_projects_runs(tmp_path, monkeypatch):
    from trainkit.phases.common import run_path

    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "trainkit").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert run_path("runs/notebook") == tmp_path / "runs" / "notebook"
    assert run_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # absolute paths are kept
    (tmp_path / "work" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "deeper")  # any folder below the checkout
    assert run_path("runs/notebook") == tmp_path / "runs" / "notebook"
    monkeypatch.chdir(tmp_path)  # the project folder itself: relative stays relative
    assert run_path("runs/notebook") == tmp_path.joinpath("runs", "notebook").relative_to(tmp_path)


@pytest.mark.slow
def test_trainkit_notebooks_makes_working_copies_and_keeps_edited_ones(tmp_path):
    r = _cli("notebooks", tmp_path / "work")
    copies = sorted(p.name for p in (tmp_path / "work").glob("*.ipynb"))
    assert r.returncode == 0 and len(copies) == 5 and copies[0] == "01_planning.ipynb", r.stdout + r.stderr
    assert f"jupyter lab {tmp_path / 'work'}" in r.stdout
    (tmp_path / "work" / "02_baseline.ipynb").write_text("{}")  # a user's edits survive a second call
    again = _cli("notebooks", tmp_path / "work")
    assert (tmp_path / "work" / "02_baseline.ipynb").read_text() == "{}" and "kept" in again.stdout


def test_templates_carry_the_kernel_metadata_jupyterlab_writes():
    """JupyterLab marks a notebook dirty (and autosaves it) when its kernelspec or language_info
    differ from what the kernel reports; the templates carry them, all but the Python version."""
    from pathlib import Path

    for p in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        meta = json.loads(p.read_text())["metadata"]
        assert meta["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
        assert (
            meta["language_info"]["pygments_lexer"] == "ipython3" and meta["language_info"]["file_extension"] == ".py"
        )


@pytest.mark.slow
def test_the_readmes_own_data_configs_validate_as_written(tmp_path):
    """The YAML blocks of README's "Your own data", with the data they describe made here."""
    import re
    from pathlib import Path

    import numpy as np

    from trainkit.testing import blobs, make_image_folder

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Your own data")[1].split("\n## ")[0]
    blocks = re.findall(r"in\s+`(\w+\.yaml)`.*?```yaml\n(.*?)```", section, re.S)
    assert [name for name, _ in blocks] == ["mine_npz.yaml", "mine_images.yaml", "mine_code.yaml"]
    (tmp_path / "data").mkdir()
    x, y = blobs(200, 3, 8)
    np.savez(tmp_path / "data" / "mine.npz", x=x, y=y)
    make_image_folder(tmp_path / "data" / "photos", classes=2, per_class=6)
    for name, text in blocks:
        (tmp_path / name).write_text(text)
        r = trainkit_here("config", "validate", name, cwd=tmp_path)
        assert r.returncode == 0 and "readable" in r.stdout, (name, r.stdout, r.stderr)
    missing = trainkit_here("config", "validate", "../mine_npz.yaml", cwd=tmp_path / "data")  # no data/mine.npz there
    assert missing.returncode == 2 and "data.root" in missing.stderr
    shell = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    assert (
        "trainkit config validate mine_images.yaml" in shell and "trainkit run mine_images.yaml --name photos" in shell
    )


def test_plot_legends_cover_no_bar():
    import matplotlib

    matplotlib.use("Agg")
    from trainkit.plots import class_counts_figure, seed_variance_figure

    figs = [
        class_counts_figure({"train": [50, 52, 49], "val": [10, 11, 10], "test": [10, 10, 11]}, ["a", "b", "c"]),
        seed_variance_figure(
            {"seeds": [0, 1, 2], "val_accuracy": [0.91, 0.93, 0.92], "mean": 0.92, "std": 0.01, "epochs": 5}
        ),
    ]
    for fig in figs:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        bars = [p.get_window_extent() for p in ax.patches]
        assert bars and not any(legend.overlaps(b) for b in bars)


def test_confusion_matrix_shows_its_counts(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from trainkit.phases import finalization as F
    from trainkit.phases.common import PhaseContext

    ctx = PhaseContext(run_dir=tmp_path, phase="05_finalization", attempt=1, dir=tmp_path, interactive=False)
    rec = {
        "confusion": [[7, 1], [2, 9]],
        "accuracy": 0.84,
        "ece": 0.05,
        "reliability": [{"confidence": 0.8, "accuracy": 0.8, "count": 5}],
    }
    shown = []
    import matplotlib.pyplot as plt

    orig = plt.subplots

    def spy(*a, **k):
        fig, ax = orig(*a, **k)
        shown.append(ax)
        return fig, ax

    plt.subplots = spy
    try:
        F._test_figures(ctx, rec, ["cat", "dog"])
    finally:
        plt.subplots = orig
    texts = {t.get_text() for t in shown[0].texts}
    assert {"7", "1", "2", "9"} <= texts and (tmp_path / "confusion.png").is_file()


def test_a_phase_run_by_hand_that_raises_is_marked_failed_not_running(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    run = tmp_path / "r"
    try:
        shell.run_cell(
            f"from trainkit.phases.common import PhaseContext, begin\nctx = begin(PhaseContext, {str(run)!r}, "
            "'02_baseline', 1, False)"
        )
        assert json.loads((run / "run.json").read_text())["phases"][0]["status"] == "running"
        shell.run_cell("raise ValueError('the test split may be read once')")
        entry = json.loads((run / "run.json").read_text())["phases"][0]
        assert entry["status"] == "failed" and "read once" in entry["error"] and entry["ended"]
    finally:
        InteractiveShell.clear_instance()


def test_the_findings_table_marks_with_text_not_emoji(monkeypatch, tmp_path):
    from trainkit.phases import diag_report as D
    from trainkit.phases.common import PhaseContext

    shown = []
    monkeypatch.setattr(D, "show_html", shown.append)
    monkeypatch.setattr(D, "_figures", lambda ctx, result: [])
    result = {
        "primary": "overfitting",
        "findings": [
            {"name": "overfitting", "fired": True, "strength": 2.0, "summary": "gap"},
            {"name": "nan_loss", "fired": False, "summary": "finite"},
        ],
        "plan": {"selected": [], "fixes": [], "expected_gain_points": 0.0},
    }
    D.show_findings(PhaseContext(run_dir=tmp_path, phase="03_diagnostics", attempt=1, dir=tmp_path), result)
    page = "".join(shown)
    assert "●" in page and "○" in page
    assert not [ch for ch in page if ord(ch) > 0xFFFF or 0x2600 <= ord(ch) <= 0x27BF]  # no emoji code points
