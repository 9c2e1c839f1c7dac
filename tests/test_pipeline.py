"""The pipeline end to end through the real notebooks: the seed's four workflows, the demo, resume
after a killed kernel, each notebook under the papermill CLI, and the production gate's checks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit._io import append_jsonl, sha256_file
from trainkit.testing import tiny_config_file
from conftest import PAPERMILL  # noqa: E402 (the tests folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"training.epochs": 8, "target.value": 0.5, "final.epochs": 12, "final.patience": 4}


_cfg = tiny_config_file


def _run(*args, env=None):
    return subprocess.run(["trainkit", "run", *map(str, args)], capture_output=True, text=True, env=env, timeout=1200)


def _path(run):
    return [(e["phase"], e["attempt"]) for e in json.loads((run / "run.json").read_text())["phases"]]


def _decision(d):
    return json.loads((d / "decision.json").read_text())


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """Fast path 1 → 2 → 5, deployed with a headless approval."""
    tmp = tmp_path_factory.mktemp("fast")
    r = _run(_cfg(tmp, FAST), "--name", "fast", "--runs-dir", tmp, "--approve", "stakeholder_approval=ci")
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "fast"


@pytest.mark.slow
def test_fast_path_deploys(fast_run):
    assert [p for p, _ in _path(fast_run)] == ["01_planning", "02_baseline", "05_finalization"]
    d = fast_run / "05_finalization"
    assert _decision(d)["next"] == "deploy"
    gate = json.loads((d / "gate.json").read_text())
    assert gate["state"] == "passed" and len(gate["checks"]) == 25
    assert all(c["mandatory"] for c in gate["checks"])
    assert "test_access.jsonl" in gate["signoff"]["artifacts"]  # a test read after sign-off invalidates the gate
    chain = json.loads((fast_run / "run.json").read_text())["gate_records"]
    assert list(chain)[-1] == "05_finalization/gate.json" and gate["chain_previous"]["record"] in chain
    for name in ("model.onnx", "model.ts", "test_results.md", "deployment_guide.md", "model_card.md", "report.html"):
        assert (d / name).is_file(), name
    index = (fast_run / "index.html").read_text()
    assert "trainkit-path" in index and "05_finalization/report.html" in index and "production_ready: passed" in index
    manifest = json.loads((fast_run / "run.json").read_text())  # each phase's compute, in seconds and baseline units
    costs = {e["phase"]: e["cost"] for e in manifest["phases"]}
    assert costs["02_baseline"]["baseline_units"] >= 1.0 and costs["05_finalization"]["baseline_units"] > 0
    assert costs["01_planning"]["baseline_units"] is None  # no baseline yet: no unit, not a guess
    assert manifest["cost"]["wall_s"] == pytest.approx(sum(c["wall_s"] for c in costs.values()), abs=0.05)
    assert "× baseline" in index and "Compute of this phase" in (d / "report.html").read_text()
    plan = json.loads((fast_run / "01_planning" / "budget_plan.json").read_text())  # Phase 1's compute plan
    actual = json.loads((fast_run / "02_baseline/attempt-1/train_summary.json").read_text())["wall_time_s"]
    assert 0.2 * actual <= plan["baseline_estimate_s"] <= 5 * actual, (plan["baseline_estimate_s"], actual)
    assert (
        set(plan["phases"]) == {"02_baseline", "03_diagnostics", "04_optimization", "05_finalization"} and plan["fits"]
    )
    p1 = json.loads((fast_run / "01_planning" / "gate.json").read_text())
    assert next(c for c in p1["checks"] if c["id"] == "compute_plan")["status"] == "pass"
    assert "Compute plan" in index and "planned" in index


@pytest.mark.slow
def test_demo_walks_all_five_phases_and_waits_for_approval_then_deploys(demo, tmp_path):
    # conftest.py: the demo with mlflow unimportable (it stays free of MLflow), run to Phase 1, resumed to
    # Phase 3, resumed to the production gate
    r = demo.results["at5"]
    assert r.returncode == 3, r.stdout + r.stderr
    assert "trainkit signoff" in r.stdout and "stakeholder_approval" in r.stdout
    run = demo.copy("at5", tmp_path)
    assert [p for p, _ in _path(run)] == [
        "01_planning",
        "02_baseline",
        "03_diagnostics",
        "04_optimization",
        "05_finalization",
    ]
    opt = _decision(run / "04_optimization" / "iter-1")
    base = json.loads((run / "04_optimization" / "iter-1" / "comparison.json").read_text())["vs_baseline"]
    assert opt["evidence"]["adopted"] and base["diff"] > base["spread"]  # beats the baseline beyond the seed spread
    assert (
        "Expected (Phase 3) against realized gain"
        in (run / "04_optimization" / "iter-1" / "optimization_results.md").read_text()
    )
    prov = json.loads((run / "04_optimization" / "iter-1" / "provenance.json").read_text())
    assert prov["fields"] and all(
        {"field", "old", "new", "recommendation", "finding"} <= set(f) for f in prov["fields"]
    )
    s = subprocess.run(
        ["trainkit", "signoff", str(run), "--phase", "5", "--by", "pat", "--check", "stakeholder_approval"],
        capture_output=True,
        text=True,
    )
    assert s.returncode == 0, s.stderr
    again = _run("--resume", "--name", "demo", "--runs-dir", tmp_path)
    assert again.returncode == 0 and "ready to deploy" in again.stdout, again.stdout + again.stderr
    assert _decision(run / "05_finalization")["next"] == "deploy"


@pytest.mark.slow
def test_multiple_iterations_then_diminishing_returns(tmp_path):
    cfg = _cfg(
        tmp_path,
        {
            "optimizer.name": "sgd",
            "training.epochs": 6,
            "target.value": 0.999,
            "final.epochs": 8,
            "final.patience": 3,
            "budget.diminishing_points": 100.0,
            "budget.clear_gain_points": 0.0,
            "budget.marginal_gain_points": 0.0,
        },
    )
    r = _run(cfg, "--name", "it", "--runs-dir", tmp_path, "--stop-after", "4")
    run = tmp_path / "it"
    phases = [p for p, _ in _path(run)]
    assert phases.count("04_optimization") >= 2, (phases, r.stdout, r.stderr)
    last = _decision(sorted((run / "04_optimization").glob("iter-*"))[-1])
    assert last["next"] == "05_finalization" and last["option"] == "D", last


@pytest.mark.slow
def test_failed_baseline_is_diagnosed_fixed_and_restarted(failed_baseline):
    r = failed_baseline.results["at3"]  # conftest.py: stopped after 2, resumed with --stop-after 3
    run = failed_baseline["at3"]
    assert [p for p in _path(run)][:4] == [
        ("01_planning", 1),
        ("02_baseline", 1),
        ("03_diagnostics", 1),
        ("02_baseline", 2),
    ], r.stdout + r.stderr
    assert _decision(run / "02_baseline" / "attempt-1")["option"] == "C"
    assert _decision(run / "03_diagnostics" / "round-1")["next"] == "02_baseline"
    second = _decision(run / "02_baseline" / "attempt-2")
    assert second["option"] == "A", second
    assert r.returncode == 0


@pytest.mark.slow
def test_killed_kernel_then_resume_keeps_earlier_artifacts(tmp_path):
    # Phase 1 builds the model 3 times (two determinism runs, one checkpoint-timing probe): build 4 is Phase 2's
    # the kernel dies, not the run: papermill, whose kernel is a process of its own
    env = dict(os.environ, TRAINKIT_TEST_DIE_DIR=str(tmp_path), TRAINKIT_TEST_DIE_AT="4", **PAPERMILL)
    cfg = _cfg(tmp_path, dict(FAST, **{"model.name": "trainkit.testing:dies_once_model", "model.kwargs": {}}))
    r = _run(cfg, "--name", "k", "--runs-dir", tmp_path, "--stop-after", "2", env=env)
    assert r.returncode == 1 and "02_baseline" in r.stderr and "--resume" in r.stderr, r.stdout + r.stderr
    run = tmp_path / "k"
    before = {p: sha256_file(p) for p in (run / "01_planning").rglob("*") if p.is_file()}
    again = _run("--resume", "--name", "k", "--runs-dir", tmp_path, "--stop-after", "2", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    after = {p: sha256_file(p) for p in before}
    assert before == after
    assert _decision(run / "02_baseline" / "attempt-1")["option"] == "A"


@pytest.mark.slow
def test_each_notebook_runs_under_the_papermill_cli(tmp_path):
    cfg = _cfg(
        tmp_path,
        {
            "training.epochs": 4,
            "target.value": 0.97,
            "final.epochs": 6,
            "final.patience": 3,
            "budget.clear_gain_points": 0.0,
            "budget.max_optimization_iterations": 1,  # every outcome of Phase 4 then goes to Phase 5
        },
    )
    run = tmp_path / "pm"
    nb = ROOT / "notebooks"

    def pm(name, *params):
        args = [
            sys.executable,
            "-m",
            "papermill",
            str(nb / name),
            str(tmp_path / name),
            "-k",
            "python3",
            "-p",
            "run_dir",
            str(run),
            "-p",
            "interactive",
            "False",
            *params,
        ]
        r = subprocess.run(args, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, name + r.stderr[-3000:]

    pm("01_planning.ipynb", "-p", "config_path", str(cfg), "-y", "approvals: {config_reviewed: pm}")
    pm("02_baseline.ipynb", "-p", "auto_signoff", "True")
    assert _decision(run / "02_baseline" / "attempt-1")["next"] == "03_diagnostics"
    pm("03_diagnostics.ipynb", "-p", "auto_signoff", "True", "-p", "label_issues", "False")
    assert _decision(run / "03_diagnostics" / "round-1")["next"] == "04_optimization"
    pm("04_optimization.ipynb", "-p", "auto_signoff", "True", "-p", "seeds", "2", "-p", "ablation", "False")
    assert _decision(run / "04_optimization" / "iter-1")["next"] == "05_finalization"
    pm(
        "05_finalization.ipynb",
        "-y",
        "approvals: {stakeholder_approval: pm}\nwaivers: {test_meets_target: tiny model}",
    )
    assert (run / "05_finalization" / "gate.json").is_file()


# ------------------------------------------------------------------ the production gate's checks fail on bad cases


def _recheck(run, mutate):
    """Copy a finished run, apply ``mutate``, re-evaluate the production checks on the copy."""
    from trainkit.config import load_config
    from trainkit.phases import finalization as F
    from trainkit.phases.common import PhaseContext

    d = run / "05_finalization"
    ctx = PhaseContext(
        run_dir=run,
        phase="05_finalization",
        attempt=1,
        dir=d,
        config=load_config(d / "final_config.yaml"),
        interactive=False,
    )
    train = json.loads((d / "train_summary.json").read_text())
    test = json.loads((d / "test_evaluation.json").read_text())
    exp = json.loads((d / "export.json").read_text())
    repro = json.loads((d / "reproduce.json").read_text())
    state = {"train": train, "test": test, "exp": exp, "repro": repro}
    mutate(run, state)
    return F._results(ctx, state["train"], state["test"], state["exp"], state["repro"])


def _nan_weight(run, _):
    from trainkit.checkpoints import load_checkpoint, save_checkpoint

    p = run / "05_finalization" / "checkpoints" / "best.pt"
    st = load_checkpoint(p)
    k = next(k for k, v in st["model"].items() if v.is_floating_point())
    st["model"][k][0] = float("nan")
    save_checkpoint(st, p)


def _append(path, rec):
    append_jsonl(path, rec)


BAD = {
    "test_never_read_before": lambda run, s: _append(
        run / "test_access.jsonl", {"phase": "02_baseline", "allowed": True, "reason": "x"}
    ),
    "test_evaluated_once": lambda run, s: _append(
        run / "test_access.jsonl",
        {"phase": "05_finalization", "allowed": True, "reason": "forced re-evaluation", "forced": True},
    ),
    "test_meets_target": lambda run, s: s["test"].update(accuracy=0.1),
    "val_test_agree": lambda run, s: s["test"].update(accuracy_ci=[0.1, 0.2]),
    "per_class_reported": lambda run, s: s["test"]["per_class"][0].update(recall=0.01),
    "calibration_measured": lambda run, s: s["test"].update(ece=float("nan")),
    "robustness_smoke": lambda run, s: s["test"].update(robustness_drop=0.5),
    "final_training_finite": lambda run, s: s["train"].update(status="nonfinite"),
    "weights_finite": _nan_weight,
    "checkpoint_verified": lambda run, s: (run / "05_finalization" / "checkpoints" / "best.pt").write_bytes(b"garbage"),
    "config_frozen": lambda run, s: (run / "05_finalization" / "final_config.yaml").write_text(
        (run / "05_finalization" / "final_config.yaml").read_text().replace("seed: 0", "seed: 1")
    ),
    "reproducible": lambda run, s: s["repro"].update(identical=False),
    "environment_recorded": lambda run, s: (run / "01_planning" / "environment.json").unlink(),
    "earlier_gates_valid": lambda run, s: (run / "02_baseline" / "attempt-1" / "baseline_results.md").write_text(
        "edited"
    ),
    "onnx_valid": lambda run, s: s["exp"].update(onnx_exported=False, onnx_error="x"),
    "onnx_parity": lambda run, s: s["exp"]["parity"]["onnx"].update(ok=False),
    "torchscript_exported": lambda run, s: s["exp"].update(torchscript_exported=False),
    "torchscript_parity": lambda run, s: s["exp"]["parity"]["torchscript"].update(ok=False),
    "batch_flexible": lambda run, s: s["exp"]["parity"]["onnx"].update(batch_1=[2, 10]),
    "latency_measured": lambda run, s: s["exp"].update(latency=[]),
    "deployment_guide": lambda run, s: (run / "05_finalization" / "deployment_guide.md").unlink(),
    "model_card": lambda run, s: (run / "05_finalization" / "model_card.md").unlink(),
}


@pytest.mark.slow
def test_every_automatic_check_passes_on_the_good_run(fast_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(fast_run, run)
    res = _recheck(run, lambda r, s: None)
    assert len(res) == 24 and all(v[0] == "pass" for k, v in res.items() if k != "raw_rows_predict"), res
    assert res["raw_rows_predict"][0] == "na"  # digits arrive as arrays; table runs send raw rows (test_tables)


@pytest.mark.slow
def test_reproduction_tries_again_on_the_thread_count_the_final_model_trained_on(fast_run, tmp_path, monkeypatch):
    """A final model reused from a fit side by side trained on fewer threads (trainkit.workers): when the
    re-run on this process's threads differs, the check re-runs on the recorded count, and only then."""
    import torch

    from trainkit import train
    from trainkit.config import load_config
    from trainkit.phases import finalization as F
    from trainkit.phases.common import FinalizationContext

    run = tmp_path / "copy"
    shutil.copytree(fast_run, run)
    d = run / "05_finalization"
    ctx = FinalizationContext(
        run_dir=run, phase="05_finalization", attempt=1, dir=d, config=load_config(d / "final_config.yaml")
    )
    here, real, calls = torch.get_num_threads(), train.fit, []
    monkeypatch.setattr(train, "fit", lambda *a, **k: calls.append(torch.get_num_threads()) or real(*a, **k))
    assert F.reproduce(ctx)["identical"] and calls == [here]  # trained here: one re-run
    summary = json.loads((d / "train_summary.json").read_text())
    metrics = (d / "metrics.jsonl").read_text().splitlines()
    first = json.loads(metrics[0])
    (d / "metrics.jsonl").write_text("\n".join([json.dumps(dict(first, val_loss=first["val_loss"] + 1)), *metrics[1:]]))
    calls.clear()
    out = F.reproduce(ctx)  # a mismatch, on the threads it trained on: no second try
    assert not out["identical"] and out["threads"] == here and calls == [here]
    (d / "train_summary.json").write_text(json.dumps(dict(summary, threads=here + 1)))
    calls.clear()
    out = F.reproduce(ctx)  # trained on other threads: tried again on them, then this process's count is back
    assert not out["identical"] and out["threads"] == here + 1 and calls == [here, here + 1]
    assert torch.get_num_threads() == here


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(BAD) + ["test_disjoint"])
def test_each_production_check_fails_on_its_bad_case(check, fast_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(fast_run, run)
    if check == "test_disjoint":  # the test split's content also in train: simulated by a splits record edit
        res = _recheck_disjoint(run)
    else:
        res = _recheck(run, BAD[check])
    assert res[check][0] == "fail", res[check]


@pytest.mark.slow
def test_the_target_checks_read_the_target_metric_not_accuracy(fast_run, tmp_path):
    """A run whose target metric is macro F1: the production gate judges the target and the val/test
    agreement on macro F1's own values and intervals, whatever accuracy says."""
    run = tmp_path / "copy"
    shutil.copytree(fast_run, run)
    low = dict(metric="macro_f1", score=0.10, score_ci=[0.05, 0.15], val_score=0.90, val_score_ci=[0.85, 0.95])
    res = _recheck(run, lambda r, s: s["test"].update(low))
    assert res["test_meets_target"][0] == "fail" and "test macro F1 0.1000" in res["test_meets_target"][1]
    assert res["val_test_agree"][0] == "fail" and "val macro F1 0.9000" in res["val_test_agree"][1]
    high = dict(low, score=0.99, score_ci=[0.9, 1.0])
    res = _recheck(tmp_path / "copy", lambda r, s: s["test"].update(high))
    assert res["test_meets_target"][0] == "pass" and res["val_test_agree"][0] == "pass"


def _recheck_disjoint(run):
    import trainkit.data as D

    real = D.load_data

    def leaky(cfg, *a, **k):
        b = real(cfg, *a, **k)
        b.splits["train"] = list(b.splits["train"]) + [b.splits["test"][0]]
        return b

    D.load_data = leaky
    try:
        return _recheck(run, lambda r, s: None)
    finally:
        D.load_data = real


@pytest.mark.slow
def test_deployment_guide_snippets_run_as_written(fast_run, tmp_path):
    from trainkit.phases.final_docs import run_snippets

    d = tmp_path / "copy"
    shutil.copytree(fast_run / "05_finalization", d)
    guide = (d / "deployment_guide.md").read_text()
    results = run_snippets(d, guide)
    assert len(results) == 2 and all(r["ok"] for r in results), results
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-200])  # an altered file is caught
    assert not run_snippets(d, guide)[0]["ok"]


@pytest.mark.slow
def test_altered_onnx_file_fails_parity(fast_run, tmp_path):
    import numpy as np
    from trainkit.export import check_parity

    d = tmp_path / "copy"
    shutil.copytree(fast_run / "05_finalization", d)
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert check_parity(d, x, ref)["onnx"]["ok"]
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(d / "model.onnx"))
    init = m.graph.initializer[0]
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(d / "model.onnx"))
    assert not check_parity(d, x, ref)["onnx"]["ok"]


@pytest.mark.slow
def test_second_test_evaluation_is_refused_unless_forced(fast_run, tmp_path):
    from trainkit.config import load_config
    from trainkit.errors import QuarantineError
    from trainkit.phases import finalization as F
    from trainkit.phases.common import PhaseContext

    from trainkit.run import record_phase

    run = tmp_path / "copy"
    shutil.copytree(fast_run, run)
    d = run / "05_finalization"
    record_phase(run, "05_finalization", 1, status="running")  # as inside notebook 05: the run says Phase 5 runs
    ctx = PhaseContext(
        run_dir=run,
        phase="05_finalization",
        attempt=1,
        dir=d,
        config=load_config(d / "final_config.yaml"),
        interactive=False,
    )
    reads = lambda: [r for r in map(json.loads, (run / "test_access.jsonl").read_text().splitlines()) if r["allowed"]]  # noqa: E731
    n = len(reads())
    assert F.evaluate_test(ctx)["model_sha256"]  # same model: the record is reused, no new read
    assert len(reads()) == n
    rec = json.loads((d / "test_evaluation.json").read_text())
    rec["model_sha256"] = "0" * 64  # as if the model had changed since
    (d / "test_evaluation.json").write_text(json.dumps(rec))
    with pytest.raises(QuarantineError, match="already evaluated"):
        F.evaluate_test(ctx)
    forced = F.evaluate_test(ctx, force=True)
    assert forced["forced"] and len(reads()) == n + 1 and reads()[-1]["reason"] == "forced re-evaluation"


@pytest.mark.slow
def test_over_the_time_budget_goes_to_phase_5_with_the_ceiling_noted(tmp_path):
    cfg = _cfg(tmp_path, {"training.epochs": 3, "target.value": 0.99, "budget.total_hours": 1e-6})
    r = _run(cfg, "--name", "b", "--runs-dir", tmp_path, "--stop-after", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "b"
    assert [p for p, _ in _path(run)] == ["01_planning", "02_baseline"]  # Phase 3 skipped: over budget
    assert _decision(run / "02_baseline" / "attempt-1")["next"] == "03_diagnostics"  # the signed decision is untouched
    o = json.loads((run / "02_baseline" / "attempt-1" / "budget_override.json").read_text())
    assert o["next"] == "05_finalization" and o["was_next"] == "03_diagnostics"
    notes = json.loads((run / "run.json").read_text())["notes"]
    assert any("budget cut after 02_baseline/attempt-1: 03_diagnostics skipped" in n for n in notes), notes
    assert "over the time budget" in r.stdout
