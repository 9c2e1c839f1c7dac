"""Phase 2 end to end through the real notebooks."""

import json
import subprocess
import sys

import pytest
from pathlib import Path

import yaml

from trainkit.testing import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, overrides):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(tiny_config(overrides).model_dump(mode="json")))
    return p


@pytest.mark.slow
def test_stop_after_2_on_the_template_with_adam_reaches_097_with_all_files(tmp_path):
    r = subprocess.run(
        [
            "trainkit",
            "run",
            str(ROOT / "configs" / "baseline_template.yaml"),
            "--name",
            "demo",
            "--runs-dir",
            str(tmp_path),
            "--stop-after",
            "2",
            "--set",
            "optimizer.name=adam",
            "--target",
            "0.95",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    d = tmp_path / "demo" / "02_baseline" / "attempt-1"
    for name in (
        "metrics.jsonl",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "checkpoints/best.pt.sha256",
        "baseline_results.md",
        "curves.png",
        "decision.json",
        "gate.json",
        "notebook.ipynb",
        "report.html",
    ):
        assert (d / name).is_file(), name
    summary = json.loads((d / "train_summary.json").read_text())
    assert summary["best"]["val_accuracy"] >= 0.97
    assert summary["train_time_s"] < 60
    decision = json.loads((d / "decision.json").read_text())
    assert decision["option"] == "A" and decision["next"] == "05_finalization"
    gate = json.loads((d / "gate.json").read_text())
    assert gate["state"] == "passed"
    gpu = next(c for c in gate["checks"] if c["id"] == "gpu_utilisation")
    assert gpu["status"] == "na" and "CPU" in gpu["evidence"]
    md = (d / "baseline_results.md").read_text()
    assert "Resource profile" in md and "data-wait fraction" in md and "Wall time" in md
    assert "post_baseline" in (d / "report.html").read_text()


@pytest.mark.slow
def test_absurd_lr_records_option_c_with_the_step_and_does_not_crash(failed_baseline):
    r = failed_baseline.results["at2"]  # trainkit run --stop-after 2 on the LR-1e6 config (conftest.py)
    assert r.returncode == 0, r.stdout + r.stderr  # the notebook completes: option C is a recorded outcome
    d = failed_baseline["at2"] / "02_baseline" / "attempt-1"
    decision = json.loads((d / "decision.json").read_text())
    assert decision["option"] == "C" and decision["next"] == "03_diagnostics"
    nf = decision["evidence"]["nonfinite"]
    assert nf["epoch"] == 0 and nf["step"] >= 0 and nf["parameter"]
    gate = json.loads((d / "gate.json").read_text())
    assert gate["state"] == "blocked"
    assert {c["id"]: c["status"] for c in gate["checks"]}["losses_finite"] == "fail"
    assert "Non-finite" in (d / "baseline_results.md").read_text()


@pytest.mark.slow
def test_phase2_refuses_to_start_when_phase1_was_tampered_with(demo, tmp_path):
    assert demo.results["at1"].returncode == 0, demo.results["at1"].stderr
    run = demo.copy("at1", tmp_path)  # the demo stopped after Phase 1 (conftest.py)
    cfg = run / "01_planning" / "training_config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.001", "lr: 0.002"))
    out = tmp_path / "o.ipynb"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(ROOT / "notebooks" / "02_baseline.ipynb"),
            str(out),
            "-p",
            "run_dir",
            str(run),
            "-k",
            "python3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "changed after sign-off" in r.stderr
    assert not (run / "02_baseline" / "attempt-1" / "metrics.jsonl").exists()


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_run_killed_mid_baseline_resumes_in_place_without_rewriting_phase1(tmp_path):
    import os
    import signal
    import time

    over = {
        "model.name": "trainkit.testing:SlowNet",
        "model.kwargs": {"delay": 0.01},
        "training.epochs": 5,
        "data.batch_size": 32,
        "target.value": 0.5,
    }
    cfg = _cfg(tmp_path, over)
    env = dict(os.environ, TRAINKIT_PROGRESS="off")
    ref = subprocess.run(
        ["trainkit", "run", str(cfg), "--name", "ref", "--runs-dir", str(tmp_path), "--stop-after", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ref.returncode == 0, ref.stderr
    p = subprocess.Popen(
        ["trainkit", "run", str(cfg), "--name", "k", "--runs-dir", str(tmp_path), "--stop-after", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = tmp_path / "k" / "02_baseline" / "attempt-1" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the CLI and its kernel, mid-epoch
    p.wait()
    assert not (metrics.parent / "gate.json").exists()
    before = _hashes(tmp_path / "k" / "01_planning")
    r = subprocess.run(
        ["trainkit", "run", "--resume", "--name", "k", "--runs-dir", str(tmp_path), "--stop-after", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "continuing it" in r.stdout
    assert _hashes(tmp_path / "k" / "01_planning") == before
    assert not (tmp_path / "k" / "02_baseline" / "attempt-2").exists()
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy")
    read = lambda f: [{k: json.loads(x)[k] for k in keys} for x in f.read_text().splitlines()]  # noqa: E731
    assert read(metrics) == read(tmp_path / "ref" / "02_baseline" / "attempt-1" / "metrics.jsonl")
    summary = json.loads((metrics.parent / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] is not None
