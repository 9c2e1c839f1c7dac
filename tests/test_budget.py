"""The time budget: fits stop at a deadline, phases start no fit past their share, and a run with a
tiny budget.total_hours ends inside it, through Phase 5, with the best model so far."""

import json
import subprocess
import time

import pytest
import torch
import yaml

from trainkit.budget import CLOCK_ENV, PhaseClock
from trainkit.config import with_overrides
from trainkit.data import load_data
from trainkit.run import init_run, record_phase
from trainkit.testing import tiny_config
from trainkit.optim import _guard
from trainkit.train import fit


@pytest.fixture(scope="module")
def digits():
    cfg = tiny_config({"training.epochs": 400, "model.kwargs": {"hidden": [64]}})
    return cfg, load_data(cfg)


@pytest.mark.slow
def test_fit_stops_at_its_deadline_after_at_least_one_epoch(digits):
    cfg, bundle = digits
    t0 = time.time()
    r = fit(cfg, bundle, None, progress=False, deadline=t0 + 0.5)
    assert r.status == "time_budget" and 1 <= len(r.history) < cfg.training.epochs
    past = fit(cfg, bundle, None, progress=False, deadline=t0 - 10)  # already past: the first epoch still completes
    assert past.status == "time_budget" and len(past.history) == 1 and past.best is not None


@pytest.mark.slow
def test_max_epochs_is_the_first_part_of_the_whole_run(digits):
    cfg, bundle = digits
    cfg = with_overrides(cfg, {"training.epochs": 6})
    whole = fit(cfg, bundle, None, progress=False)
    part = fit(cfg, bundle, None, progress=False, max_epochs=3)
    assert part.status == "time_budget" and len(part.history) == 3
    assert [h["val_loss"] for h in part.history] == [h["val_loss"] for h in whole.history[:3]]


def test_the_nan_guard_names_the_first_bad_step_of_a_batched_check():
    model = torch.nn.Linear(2, 2)
    t, f = torch.tensor(True), torch.tensor(False)
    pending = [
        (10, t, torch.tensor(0.5), torch.tensor(1.0)),
        (11, f, torch.tensor(float("nan")), torch.tensor(float("inf"))),
        (12, f, torch.tensor(float("nan")), torch.tensor(float("nan"))),
    ]
    rec = _guard(pending, model, epoch=3, history=[], init_loss=2.3, last_finite=torch.tensor(0.7))
    assert rec["step"] == 11 and rec["last_finite_loss"] == 0.5 and rec["detected_after_steps"] == 1
    assert _guard(pending[:1], model, 3, [], 2.3, None) is None


def test_phase_clock_shares_carry_over_and_cuts_become_notes(tmp_path, monkeypatch):
    run = tmp_path / "r"
    init_run(run)
    record_phase(run, "02_baseline", 1, status="completed", cost={"wall_s": 100.0})
    m = json.loads((run / "run.json").read_text())
    m["active_s"] = 100.0
    (run / "run.json").write_text(json.dumps(m))
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    d = run / "03_diagnostics" / "round-1"
    d.mkdir(parents=True)
    now = time.time()
    c = PhaseClock(run, "03_diagnostics", 1.0, d, started=now)
    assert abs(c.elapsed() - 100.0) < 1.0  # the run's active time, not the wall clock since run.json was made
    assert abs((c.deadline - c.start) - 0.40 * 3600) < 1e-6  # cumulative: Phase 3 ends at 40% of the budget
    two = PhaseClock(run, "02_baseline", 1.0, None, started=now)  # the baseline may run into Phase 3's share
    assert two.deadline == pytest.approx(c.deadline)
    assert c.allows(60.0, "a probe") and not c.allows(10_000.0, "probe label_issues")
    five = PhaseClock(run, "05_finalization", 1.0, None, started=now)
    assert five.deadline - five.start == pytest.approx(3600 - five.tail_s) and five.tail_s >= 10.0
    assert json.loads((d / "budget.json").read_text())["cuts"][0]["what"] == "probe label_issues"
    notes = json.loads((run / "run.json").read_text())["notes"]
    assert notes == [f"budget cut in 03_diagnostics/round-1: probe label_issues ({c.cuts[0]['why']})"]


def test_the_run_clock_counts_each_phase_once_and_the_pipelines_own_work_between_them(tmp_path, monkeypatch):
    """A phase's kernel records its own cost (as the notebooks do); the pipeline adds its wall time
    once (not on top of the phase's own), and its work between phases is on the clock too."""
    import papermill  # noqa: F401  (imported before the clock starts: execute_phase imports it)

    import trainkit.executor as executor
    from trainkit.budget import _count_gap
    from trainkit.run import load_manifest

    run = tmp_path / "r"
    init_run(run, "r")

    def kernel(pm, phase, out_nb, params, out_dir, run_dir, attempt):  # stands in for papermill's kernel
        record_phase(run_dir, phase, attempt, status="completed", ended=time.time(), cost={"wall_s": 0.3})
        time.sleep(0.3)

    monkeypatch.setattr(executor, "_execute", kernel)
    monkeypatch.setenv("TRAINKIT_EXECUTOR", "papermill")
    origin = time.time()
    executor.execute_phase("01_planning", run, {}, 1, clock_start=origin)
    first = load_manifest(run)["active_s"]
    assert 0.3 <= first < 0.6  # once, not 0.3 of the phase's cost plus 0.3 of the pipeline's wall
    time.sleep(0.4)  # the pipeline's own work (decisions, reports) before the next phase
    _count_gap(run, time.time() - origin)
    executor.execute_phase("02_baseline", run, {}, 1, clock_start=origin)
    m = load_manifest(run)
    assert 1.0 <= m["active_s"] < 1.5 and 0.4 <= m["pipeline_gap_s"] < 0.7
    assert m["phases"][-1]["active_end_s"] == m["active_s"]
    # a notebook run by hand then resumed: the clock goes on from run.json's active seconds
    executor.execute_phase("03_diagnostics", run, {}, 1)
    assert 1.3 <= load_manifest(run)["active_s"] < 1.9
    clock = PhaseClock(run, "05_finalization", 1.0)
    assert clock.overhead_s >= m["pipeline_gap_s"]  # the work after Phase 5 is in its tail reserve


@pytest.mark.slow  # starts a process
def test_the_run_clock_starts_when_the_trainkit_process_did():
    out = subprocess.run(
        [
            "python3",
            "-c",
            "import time; time.sleep(0.6); from trainkit.budget import process_start; "
            "print(time.time() - process_start())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert 0.6 <= float(out.stdout) < 5.0  # the interpreter's start and imports before trainkit count


@pytest.mark.slow
def test_a_tiny_budget_ends_the_run_inside_it_through_phase_5_with_the_best_model_so_far(tmp_path):
    """Unconstrained, this run takes over ten minutes on 2 cores (a 2000-epoch baseline of ~0.05 s an
    epoch, probes, six Phase 4 candidates with seeds, the final training), so even a machine several
    times faster must cut: the baseline alone outlasts its share. (With 200 epochs a fast machine fit
    the whole run in 78 s and nothing was cut.) With a 120 s budget the phases cut what does not
    fit. The fixed costs (kernels' starts, imports, exports: ~60 s on a busy CI machine) are what a
    smaller budget could not hold."""
    budget_s = 120.0
    cfg = tiny_config(
        {
            "model.kwargs": {"hidden": [512, 512]},
            "training.epochs": 2000,
            "optimizer.name": "sgd",
            "optimizer.lr": 0.003,
            "optimizer.momentum": 0.0,
            "target.value": 0.97,
            "budget.total_hours": budget_s / 3600,
        }
    )
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    t0 = time.time()
    r = subprocess.run(
        [
            "trainkit",
            "run",
            str(p),
            "--name",
            "tiny",
            "--runs-dir",
            str(tmp_path),
            "--approve",
            "stakeholder_approval=tester",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.time() - t0
    run = tmp_path / "tiny"
    assert wall <= 1.05 * budget_s, (wall, r.stdout[-3000:])
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["active_s"] >= wall - 5.0, (manifest["active_s"], wall)  # the clock saw the whole invocation
    phases = [e["phase"] for e in manifest["phases"]]
    assert phases[-1] == "05_finalization", (phases, r.stdout[-3000:], r.stderr[-2000:])
    fin = run / "05_finalization"
    gate = json.loads((fin / "gate.json").read_text())
    status = {c["id"]: c["status"] for c in gate["checks"]}
    for check in ("final_training_finite", "weights_finite", "checkpoint_verified", "reproducible", "onnx_parity"):
        assert status.get(check) == "pass", (check, status)
    # the gate may miss only the model's quality: the target and the per-class floor (on a starved
    # machine a budget this small leaves a baseline of a few epochs); the integrity checks above pass
    quality = {"test_meets_target", "per_class_reported"}
    failing = {k for k, v in status.items() if v == "fail"}
    assert failing <= quality, (failing, r.stdout[-2000:])
    assert r.returncode == (1 if failing else 0), (failing, r.stdout[-2000:])  # blocked exactly when a check fails
    notes = json.loads((run / "run.json").read_text())["notes"]
    assert any(n.startswith("budget cut") for n in notes), notes
    cuts = [c for f in run.glob("**/budget.json") for c in json.loads(f.read_text())["cuts"]]
    assert cuts and all(c["what"] and c["why"] for c in cuts)
    if any(c["what"].startswith("final training (") for c in cuts):  # no time to train: the best so far is final
        best = json.loads((run / "best.json").read_text())["dir"] if (run / "best.json").is_file() else None
        summary = json.loads((fin / "train_summary.json").read_text())
        src = json.loads((run / best / "train_summary.json").read_text()) if best else None
        assert src is None or summary["best"] == src["best"]
    cut_dirs = {f.parent for f in run.glob("**/budget.json") if json.loads(f.read_text())["cuts"]}
    for d in cut_dirs:  # every phase that cut something says so in its own report
        assert "Cut to stay inside the budget" in (d / "report.html").read_text(), d


@pytest.mark.slow
def test_phase4_prunes_a_seed_that_cannot_beat_the_best_so_far(digits):
    from trainkit.phases.opt_seeds import _pruner

    cfg, bundle = digits
    cfg = with_overrides(cfg, {"training.epochs": 6})
    reference = [{"val_accuracy": v} for v in (0.5, 0.7, 0.8, 0.85, 0.9, 0.9)]
    hook = _pruner(cfg, reference, margin=0.03)
    assert hook({"epoch": 0, "val_accuracy": 0.1}) is False  # before half time nothing is judged
    assert hook({"epoch": 1, "val_accuracy": 0.2}) is False
    assert hook({"epoch": 2, "val_accuracy": 0.78}) is False  # within the margin of the reference's 0.8
    assert hook({"epoch": 3, "val_accuracy": 0.6}) is True  # best so far 0.78 < 0.85 - 0.03
    assert _pruner(cfg, None, 0.03) is None
    losing = fit(cfg, bundle, None, progress=False, on_epoch=_pruner(cfg, [{"val_accuracy": 1.0}] * 6, 0.03))
    assert losing.status == "pruned" and len(losing.history) == 3  # stopped at half time, its best kept
    assert losing.best is not None


@pytest.mark.slow
def test_seed_variance_runs_only_the_epochs_that_fit_and_is_not_reused_as_baseline_seeds(digits):
    from trainkit.diagnostics.probes import seed_variance_probe

    cfg, bundle = digits
    cfg = with_overrides(cfg, {"training.epochs": 8})
    base = fit(cfg, bundle, None, progress=False)
    per_epoch = 1.0  # pretend: 8 s per whole run, 6 s left → 2 × k epochs ≤ half of it: k = 1
    sv = seed_variance_probe(
        cfg, bundle, baseline=base.best, history=base.history, cost_s=8 * per_epoch, time_left=lambda: 6.0
    )
    assert sv["short"] and sv["epochs"] == 1 and not sv["full_runs"] and sv["runs"] == []
    assert sv["val_accuracy"][0] == base.history[0]["val_accuracy"]  # the baseline at the same epoch, not its best
    full = seed_variance_probe(
        cfg,
        bundle,
        seeds=[0, 1],
        baseline=base.best,
        history=base.history,
        cost_s=8 * per_epoch,
        time_left=lambda: 1000.0,
    )
    assert (
        full["full_runs"]
        and not full["short"]
        and len(full["runs"]) == 1
        and full["val_accuracy"][0] == base.best["val_accuracy"]
    )
