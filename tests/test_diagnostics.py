"""Phase 3: planted conditions fire their detector and only it; recommendations move the metric."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainkit._io import write_json_atomic
from trainkit.data import load_data
from trainkit.diagnostics import (
    classify_crash,
    combine_patches,
    detect_all,
    gather_evidence,
    plan_recommendations,
    primary_cause,
    run_probes,
)
from trainkit.config import with_overrides
from trainkit.diagnostics.probes import lr_range_test
from trainkit.errors import TrainkitError
from trainkit.testing import noisy, tiny_config
from trainkit.train import fit

CASES = {
    "overfitting": {
        "data.subset": 60,
        "model.kwargs": {"hidden": [512, 512]},
        "training.epochs": 40,
        "target.value": 0.95,
    },
    "convergence_stall": {"optimizer.lr": 0.0, "training.epochs": 3},
    "nan_loss": {"optimizer.name": "sgd", "optimizer.lr": 1e6, "model.kwargs": {"hidden": [64, 64, 64]}},
    "data_quality": {
        **noisy("digits", 0.15),
        "training.epochs": 30,
        "model.kwargs": {"hidden": [128]},
        "target.value": 0.99,
    },
    "leakage": {"data.source": "trainkit.testing:duplicated_digits", "training.epochs": 15},
    "resource_inefficiency": {
        "data.source": "trainkit.testing:slow_dataset",
        "training.epochs": 2,
        "target.value": 0.5,
    },
    "crashes": {"model.name": "trainkit.testing:shape_mismatch_model", "model.kwargs": {}},
    "clean": {"training.epochs": 15, "target.value": 0.9},
}
EXPECTED = {
    "overfitting": {"overfitting"},
    "convergence_stall": {"convergence_stall"},
    "nan_loss": {"nan_loss"},
    "data_quality": {"data_quality"},
    "leakage": {"data_quality"},
    "resource_inefficiency": {"resource_inefficiency"},
    "crashes": {"crashes"},
    "clean": set(),
}


def _diagnose(overrides, out: Path):
    cfg = tiny_config(overrides)
    bundle = load_data(cfg)
    try:
        fit(cfg, bundle, out, progress=False)
    except TrainkitError as exc:
        write_json_atomic(
            out / "crash.json",
            {"type": type(exc).__name__, "cause_type": type(exc.__cause__ or exc).__name__, "message": str(exc)},
        )
    ev = gather_evidence(out, cfg)
    ev["probes"] = run_probes(cfg, bundle, ev, echo=lambda _: None)
    findings = detect_all(ev)
    return cfg, bundle, ev, findings, plan_recommendations(findings, ev)


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _diagnose(CASES[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_planted_condition_fires_its_detector_and_the_others_stay_quiet(case, diagnosed):
    _, _, _, findings, _ = diagnosed(case)
    fired = {f.name for f in findings if f.fired}
    assert fired == EXPECTED[case], {f.name: f.summary for f in findings}
    for f in findings:  # every finding carries its summary and, when fired, its evidence and its thresholds or fix
        assert f.summary, f.name
        json.dumps(
            f.to_dict()
        )  # plain JSON types only (a tensor in the evidence would reach findings.json as a string)
        if f.fired:
            assert f.evidence, f.name
            assert f.thresholds or any(r.patch or r.kind in ("advice", "fix") for r in f.recommendations), f.name


@pytest.mark.slow
def test_primary_cause_prefers_infrastructure(diagnosed):
    _, _, _, findings, _ = diagnosed("leakage")
    assert primary_cause(findings).name == "data_quality"
    assert primary_cause(findings).infrastructure


@pytest.mark.slow
def test_nan_loss_names_step_and_layer_and_its_fix_restores_finite_training(diagnosed, tmp_path):
    cfg, bundle, _, findings, plan = diagnosed("nan_loss")
    f = next(f for f in findings if f.name == "nan_loss")
    assert f.evidence["nonfinite"]["parameter"] and f.evidence["nonfinite"]["step"] is not None
    (fix,) = plan["fixes"]
    assert fix["patch"]["optimizer.lr"] < 1.0 and fix["patch"]["training.grad_clip"] == 1.0
    fixed = with_overrides(cfg, fix["patch"])
    r = fit(fixed, bundle, None, progress=False)
    assert r.status == "completed" and r.best["val_accuracy"] > 0.8


@pytest.mark.slow
def test_stall_fix_makes_the_model_learn(diagnosed):
    cfg, bundle, _, _, plan = diagnosed("convergence_stall")
    patch, _ = combine_patches(plan["selected"])
    assert patch["optimizer.lr"] > 0
    before = fit(cfg, bundle, None, progress=False).best["val_accuracy"]
    after = fit(with_overrides(cfg, patch), bundle, None, progress=False).best["val_accuracy"]
    assert after > before + 0.5


@pytest.mark.slow
def test_label_issues_found_with_precision_and_recall(diagnosed):
    _, bundle, ev, _, _ = diagnosed("data_quality")
    flagged = set(ev["probes"]["label_issues"]["flagged"])
    flipped = set(bundle.info["label_noise_flipped"])
    tp = len(flagged & flipped)
    assert tp / len(flagged) >= 0.8, (tp, len(flagged))
    assert tp / len(flipped) >= 0.5, (tp, len(flipped))


@pytest.mark.slow
def test_excluding_flagged_labels_moves_val_metrics_the_right_way(diagnosed, tmp_path):
    cfg, _, ev, findings, plan = diagnosed("data_quality")
    dq = next(f for f in findings if f.name == "data_quality")
    assert dq.cause == "label_issues" and dq.evidence["exclude_indices"] == []  # no leak: only the label file
    (tmp_path / "exclude.json").write_text(json.dumps({"indices": dq.evidence["label_exclude_indices"]}))
    rec = next(r for r in plan["selected"] if r["id"] == "exclude_mislabelled")
    assert rec["patch"] == {"data.exclude": ev.get("label_exclude_path", "exclude_labels.json")}
    fixed = with_overrides(cfg, {"data.exclude": str(tmp_path / "exclude.json")})
    runs = {
        name: [fit(with_overrides(c, {"training.seed": s}), load_data(c), None, progress=False) for s in (0, 1)]
        for name, c in (("before", cfg), ("after", fixed))
    }
    acc = {k: np.mean([r.best["val_accuracy"] for r in v]) for k, v in runs.items()}
    loss = {k: np.mean([min(h["val_loss"] for h in r.history) for r in v]) for k, v in runs.items()}
    assert acc["after"] >= acc["before"], acc
    assert loss["after"] < 0.8 * loss["before"], loss  # clean labels: a far better calibrated model


@pytest.mark.slow
def test_leakage_is_counted_exactly_and_the_exclusion_removes_it(diagnosed, tmp_path):
    cfg, bundle, _, findings, plan = diagnosed("leakage")
    keys = bundle.source.sample_keys
    other = {keys[i] for s in ("val", "test") for i in bundle.info["indices"][s]}
    expected = sorted(int(i) for i in bundle.splits["train"] if keys[i] in other)
    dq = next(f for f in findings if f.name == "data_quality")
    assert dq.evidence["leaked_train_samples"] == len(expected) > 0
    assert set(expected) <= set(dq.evidence["exclude_indices"])
    assert len(dq.evidence["exclude_indices"]) <= len(expected) + dq.evidence["duplicates_within_train"]  # copies only
    assert plan["fixes"][0]["id"] == "exclude_leaked"
    (tmp_path / "exclude.json").write_text(json.dumps({"indices": dq.evidence["exclude_indices"]}))
    fixed = load_data(with_overrides(cfg, {"data.exclude": str(tmp_path / "exclude.json")}))
    assert not any(keys[i] in other for i in fixed.splits["train"])
    assert fixed.info["excluded"] == len(dq.evidence["exclude_indices"])


@pytest.mark.slow
def test_slow_data_recommendation_cuts_the_data_wait(diagnosed):
    cfg, bundle, ev, _, plan = diagnosed("resource_inefficiency")
    rec = next(r for r in plan["selected"] if r["id"] == "workers")
    assert rec["kind"] == "speed" and rec["patch"]["data.workers"] >= 2
    before = ev["probes"]["resource"]["data_wait_fraction"]
    faster = with_overrides(cfg, rec["patch"])
    r = fit(faster, load_data(faster), None, progress=False)
    after = float(np.mean([h["data_wait_fraction"] for h in r.history]))
    assert before > 0.2 and after < before, (before, after)


@pytest.mark.slow
def test_shape_mismatch_crash_is_classified_with_the_fix(diagnosed):
    _, bundle, _, findings, plan = diagnosed("crashes")
    f = next(f for f in findings if f.name == "crashes")
    assert f.evidence["category"] == "shape_mismatch"
    assert "input_shape" in f.evidence["fix"] and str(list(bundle.input_shape)) in f.evidence["fix"]
    assert plan["fixes"] and plan["fixes"][0]["patch"] is None  # a user model: the fix is manual


@pytest.mark.parametrize(
    "message,category,patched",
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_memory", "data.batch_size"),
        (
            "Expected all tensors to be on the same device, but found at least two devices",
            "dtype_device",
            "training.precision",
        ),
        ("data.root: /nope not found", "data_error", None),
        ("something else entirely", "other", None),
    ],
)
def test_crash_classes(message, category, patched):
    ev = {"config": tiny_config().model_dump(mode="json"), "input_shape": [1, 8, 8], "num_classes": 10}
    c = classify_crash({"type": "TrainingError", "message": message}, ev)
    assert c["category"] == category
    assert (patched in c["patch"]) if patched else c["patch"] is None


@pytest.mark.slow
def test_overfitting_recommendations_applied_improve_val_accuracy(diagnosed):
    cfg, _, _, _, plan = diagnosed("overfitting")
    assert 3 <= len(plan["selected"]) <= 5
    assert all(r["patch"] and r["effort"] in (1, 2, 3) and r["expected_gain_points"] > 0 for r in plan["selected"])
    assert any(r["id"] == "model_family" for r in plan["ranked"])  # an MLP on images: a conv net is offered too
    regs = [r for r in plan["selected"] if r["id"] != "model_family"]  # Phase 4 tries it as its own candidate
    patch, prov = combine_patches(regs)
    assert {p["field"] for p in prov} >= {"optimizer.weight_decay", "model.kwargs"}
    assert patch["model.kwargs"]["dropout"] == 0.3
    better = with_overrides(cfg, patch)
    seeds = (0, 1)
    before = np.mean(
        [
            fit(with_overrides(cfg, {"training.seed": s}), load_data(cfg), None, progress=False).best["val_accuracy"]
            for s in seeds
        ]
    )
    after = np.mean(
        [
            fit(with_overrides(better, {"training.seed": s}), load_data(better), None, progress=False).best[
                "val_accuracy"
            ]
            for s in seeds
        ]
    )
    assert after > before, (before, after)


@pytest.mark.slow
def test_lr_finder_suggestion_within_10x_of_the_grid_best():
    cfg = tiny_config({"optimizer.name": "sgd", "training.epochs": 8, "model.kwargs": {"hidden": [64]}})
    bundle = load_data(cfg)
    sug = lr_range_test(cfg, bundle)["suggested_lr"]
    grid = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    scores = {
        lr: fit(with_overrides(cfg, {"optimizer.lr": lr}), bundle, None, progress=False).best["val_accuracy"]
        for lr in grid
    }
    best = max(scores, key=scores.get)
    assert best / 10 <= sug <= best * 10, (sug, scores)


@pytest.mark.slow
def test_phase3_through_the_pipeline(demo):
    """The template baseline misses its target; Phase 3 diagnoses underfitting and routes to Phase 4
    (conftest.py: the demo, resumed with --stop-after 3)."""
    r = demo.results["at3"]
    assert r.returncode == 0, r.stdout + r.stderr
    d = demo["at3"] / "03_diagnostics" / "round-1"
    decision = json.loads((d / "decision.json").read_text())
    assert decision["option"] == "A" and decision["next"] == "04_optimization"
    findings = json.loads((d / "findings.json").read_text())
    assert findings["primary"] == "underfitting"
    assert 3 <= len(findings["plan"]["selected"]) <= 5
    report = (d / "diagnostic_report.md").read_text()
    for name in (
        "overfitting",
        "underfitting",
        "nan_loss",
        "convergence_stall",
        "data_quality",
        "resource_inefficiency",
        "crashes",
        "high_variance",
    ):
        assert f"(guides/{name}.md)" in report and (d / "guides" / f"{name}.md").is_file()
    assert (d / "lr_range.png").is_file()
    assert json.loads((d / "gate.json").read_text())["state"] == "passed"


@pytest.mark.slow
def test_failed_baseline_is_fixed_and_phase2_restarts_on_the_fixed_config(failed_baseline):
    # conftest.py: the nan_loss case's LR-1e6 config through trainkit run, stopped after 2, resumed to 3
    r = failed_baseline.results["at3"]
    assert r.returncode == 0, r.stdout + r.stderr
    run = failed_baseline["at3"]
    decision = json.loads((run / "03_diagnostics" / "round-1" / "decision.json").read_text())
    assert decision["option"] == "C" and decision["next"] == "02_baseline"
    prov = {p["field"]: p for p in decision["evidence"]["provenance"]}
    assert prov["optimizer.lr"]["old"] == 1e6 and prov["optimizer.lr"]["new"] < 1
    current = yaml.safe_load((run / "current_config.yaml").read_text())
    assert current["optimizer"]["lr"] == prov["optimizer.lr"]["new"] and current["training"]["grad_clip"] == 1.0
    assert math.isfinite(current["optimizer"]["lr"])
