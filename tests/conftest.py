"""Shared fixtures: the run cache.

Three workflows used to run again in several modules. Each now runs once per test session, through
the real ``trainkit run`` in a process of its own (its phases in that process: the in-process
executor, like every run the tests start), and is kept as pristine snapshots, one per stage:

- ``failed_baseline``: the LR-1e6 baseline that blows up. ``--stop-after 2`` (stage ``at2``), then
  ``--resume --stop-after 3`` (stage ``at3``): 1 → 2 (C) → 3 (fix) → 2 (attempt 2, on the fixed
  config).
- ``demo``: the built-in demo with MLflow made unimportable (the demo must not need it).
  ``--stop-after 1`` (``at1``), ``--resume --stop-after 3`` (``at3``), then ``--resume`` to the
  production gate (``at5``, exit 3).

A test reads a stage in place, or works on ``copy(stage, tmp_path)`` when it changes the run; a
snapshot is never written to. The fast path (1 → 2 → 5) is ``tests/test_pipeline.py``'s
``fast_run`` and ``tests/test_first_hour.py``'s blocked variant (their configs differ).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TRAINKIT_PROGRESS", "off")
# Every ``trainkit run`` the tests start runs its phases in its own process (no kernel per phase:
# docs/design.md, "Executors"), except the papermill smoke tests: the tracked runs, the killed
# kernel, each notebook under papermill's CLI and Phase 1 under both executors (PAPERMILL).
os.environ.setdefault("TRAINKIT_EXECUTOR", "inprocess")
PAPERMILL = {"TRAINKIT_EXECUTOR": "papermill"}

FAST = {"training.epochs": 8, "target.value": 0.5, "final.epochs": 12, "final.patience": 4}
ABSURD_LR = {"optimizer.name": "sgd", "optimizer.lr": 1e6, "model.kwargs": {"hidden": [64, 64, 64]}}


def trainkit_cli(*args: Any, env: dict[str, str] | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``trainkit ARGS...`` in a fresh process, its output captured as text."""
    return subprocess.run(["trainkit", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def trainkit_here(*args: Any, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``trainkit ARGS...`` called in this process (``cli.main``), as a finished process would
    report it: the exit code (argparse's ``SystemExit`` too), stdout and stderr. An exception that
    escapes ``main`` is exit 1 with its traceback on stderr, as the interpreter would print it.
    For the refusals, which end before a phase runs; no process start and no torch import."""
    import contextlib
    import io
    import traceback

    from trainkit import cli

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    argv = [str(a) for a in args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["trainkit", *argv], code, out.getvalue(), err.getvalue())


@dataclass
class SharedRun:
    """One workflow run once per session: its name, a pristine snapshot of the run folder per stage,
    and each stage's finished ``trainkit`` process (exit code, stdout, stderr)."""

    name: str
    root: Path
    stages: dict[str, Path] = field(default_factory=dict)
    results: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def live(self) -> Path:
        return self.root / "live" / self.name

    def run(self, stage: str, *args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``trainkit run ARGS`` on the live folder (a process of its own; its phases in it), then
        snapshot it as ``stage``."""
        r = trainkit_cli("run", *args, "--name", self.name, "--runs-dir", self.live.parent, env=env)
        self.results[stage] = r
        snap = self.root / stage / self.name
        shutil.copytree(self.live, snap, ignore=shutil.ignore_patterns(".trainkit.lock"))
        self.stages[stage] = snap
        return r

    def __getitem__(self, stage: str) -> Path:
        """The snapshot of ``stage``, to read only."""
        return self.stages[stage]

    def copy(self, stage: str, dest: Path) -> Path:
        """A private copy of ``stage`` under ``dest`` (the run keeps its name, so ``--resume --name``
        works with ``--runs-dir dest``)."""
        out = Path(dest) / self.name
        shutil.copytree(self.stages[stage], out)
        return out


@pytest.fixture(scope="session")
def failed_baseline(tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """The LR-1e6 baseline: stopped after Phase 2 (``at2``), then resumed to Phase 3 (``at3``)."""
    from trainkit.testing import tiny_config_file

    shared = SharedRun("nan", tmp_path_factory.mktemp("failed_baseline"))
    cfg = tiny_config_file(shared.root, {**FAST, **ABSURD_LR})
    shared.run("at2", cfg, "--stop-after", "2")
    shared.run("at3", "--resume", "--stop-after", "3")
    return shared


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """The built-in demo (no config: the shipped template), with ``mlflow`` poisoned on the path:
    Phase 1 (``at1``), on to Phase 3 (``at3``), on to the production gate (``at5``, exit 3)."""
    shared = SharedRun("demo", tmp_path_factory.mktemp("demo"))
    poison = shared.root / "no-mlflow" / "mlflow"  # importing mlflow anywhere in the demo fails it
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the demo imported mlflow')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(poison.parent), os.environ.get("PYTHONPATH")])))
    shared.run("at1", "--stop-after", "1", env=env)
    shared.run("at3", "--resume", "--stop-after", "3", env=env)
    shared.run("at5", "--resume", env=env)
    return shared


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d
