"""The decision engine on data that is not digits: one test per defect of issue #10.

1 label probe on a weak model is inconclusive and silences nothing; the leak fix drops only copies
2 Phase 4's baseline is the true baseline (its own data; seed one reproduces Phase 2 exactly)
3 a Phase 4 iteration that adopts nothing → Phase 3 round 2 diagnoses the best config so far
4 a strong finding with the target close is optimized, not finalized
5 dead units: the LR finder refuses a flat curve; the fix re-initialises and the model learns
6 a dominant input bottleneck gets its fix selected
7 imbalance: class weighting / balanced sampler patches with per-class recall
8 model family: an MLP on images or signals is offered a conv net; a user's model gets advice
9 a custom (N, C, L) source keeps its shape; cnn1d and a user's Conv1d model train on it
"""

import json
import shutil

import numpy as np
import pytest

from trainkit._io import read_json
from trainkit.config import BudgetConfig, config_to_dict, with_overrides
from trainkit.data import load_data
from trainkit.decisions import after_diagnostics
from trainkit.diagnostics import detect_all, plan_recommendations, primary_cause
from trainkit.diagnostics.probes import label_issue_probe, lr_range_test
from trainkit.testing import noisy, run_phase_inprocess, tiny_config
from trainkit.train import fit

T = "trainkit.testing:"


def _ev(cfg, history, best_val, target, probes=None, shape=(16,), **kw):
    best = max(history, key=lambda r: r["val_accuracy"])
    ev = {
        "status": "completed",
        "history": history,
        "best": dict(best, val_accuracy=best_val),
        "init_loss": 2.0,
        "nonfinite": None,
        "crash": None,
        "target": target,
        "config": config_to_dict(cfg),
        "device": "cpu",
        "failed_mode": False,
        "input_shape": list(shape),
        "num_classes": 4,
        "val_size": 200,
        "probes": probes
        or {
            "seed_variance": {
                "seeds": [0, 1, 2],
                "val_accuracy": [0.5, 0.5, 0.5],
                "std": 0.005,
                "range": 0.01,
                "epochs": 5,
            }
        },
    }
    ev.update(kw)
    return ev


def _hist(train_acc, val_acc, epochs=10):
    return [
        {
            "epoch": e,
            "train_loss": 1.0 - 0.09 * e,
            "val_loss": 1.0 - 0.05 * e,
            "train_accuracy": train_acc,
            "val_accuracy": val_acc,
            "lr": 1e-3,
        }
        for e in range(epochs)
    ]


# ----------------------------------------------------------------------------- 1


@pytest.mark.slow
def test_label_probe_on_a_weak_model_is_inconclusive_and_silences_nothing():
    cfg = tiny_config({"data.source": T + "shapes", "model.kwargs": {"hidden": [4]}})
    bundle = load_data(cfg)
    li = label_issue_probe(cfg, bundle, epochs=1, baseline_val=0.9)  # clean labels, a weak out-of-fold model
    assert li["inconclusive"] and li["flagged"] == [] and li["flagged_fraction"] == 0.0, li["verdict"]
    assert li["confident_learning_candidates"] > 0.05 * li["checked"]  # what the old probe would have flagged
    assert "inconclusive" in li["verdict"]
    ev = _ev(
        cfg,
        _hist(0.55, 0.52),
        0.52,
        0.9,
        shape=(1, 16, 16),
        probes={
            "label_issues": li,
            "data": {
                "class_counts_train": [200] * 4,
                "leaked_train_indices": [3, 5],
                "duplicate_train_indices": [],
                "imbalance_ratio": 1.0,
            },
        },
    )
    findings = {f.name: f for f in detect_all(ev)}
    assert findings["underfitting"].fired  # not switched off by an unreliable probe
    dq = findings["data_quality"]
    assert dq.evidence["exclude_indices"] == [3, 5]  # the leak fix drops only the copies
    assert "label_issues" not in dq.evidence["problems"]
    assert not any(r.id == "exclude_mislabelled" for r in dq.recommendations)


@pytest.mark.slow
def test_label_probe_on_a_strong_model_estimates_the_noise_rate():
    cfg = tiny_config({**noisy("tabular", 0.25), "model.kwargs": {"hidden": [128]}})
    bundle = load_data(cfg)
    li = label_issue_probe(cfg, bundle, epochs=15, baseline_val=0.95)
    assert li["trusted"] and li["significant"]
    lo, hi = li["noise_rate_ci"]
    assert lo <= 0.25 <= hi + 0.05 and lo > 0.1, li["verdict"]
    flipped = set(bundle.info["label_noise_flipped"])
    tp = len(set(li["flagged"]) & flipped)
    assert tp / len(li["flagged"]) >= 0.85 and tp / len(flipped) >= 0.5


# ----------------------------------------------------------------------------- 2, 3: Phase 4 through the notebooks


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """Phases 1-3 on noisy tabular labels (a data patch is among the selected recommendations)."""
    import yaml

    root = tmp_path_factory.mktemp("p4")
    cfg = tiny_config(
        {**noisy("tabular", 0.3), "model.kwargs": {"hidden": [128, 128]}, "training.epochs": 12, "target.value": 0.995}
    )
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    run = root / "run"
    run_phase_inprocess("01_planning", run, config_path=str(path))
    run_phase_inprocess("02_baseline", run, attempt=1)
    run_phase_inprocess("03_diagnostics", run, attempt=1)
    shutil.copytree(run, root / "pristine")  # the run as Phase 3 left it, for a Phase 4 that goes another way
    return run


@pytest.mark.slow
def test_phase4_baseline_is_phase2s_baseline_on_its_own_data(noisy_run):
    findings = read_json(noisy_run / "03_diagnostics/round-1/findings.json")
    assert findings["cause"] == "label_issues", findings["cause"]
    assert any(r["id"] == "exclude_mislabelled" for r in findings["plan"]["selected"])
    run_phase_inprocess("04_optimization", noisy_run, attempt=1, seeds=2)
    cmp = read_json(noisy_run / "04_optimization/iter-1/comparison.json")
    phase2 = read_json(noisy_run / "02_baseline/attempt-1/train_summary.json")
    assert cmp["seeds"][0] == tiny_config().training.seed
    assert cmp["baseline"][0]["best_val_accuracy"] == phase2["best"]["val_accuracy"]  # exactly, on CPU
    assert cmp["baseline"][0]["best_epoch"] == phase2["best"]["epoch"]
    seeds = read_json(noisy_run / "04_optimization/baseline_seeds.json")
    assert seeds["reused"][str(cmp["seeds"][0])] == "02_baseline/attempt-1"  # no fit is trained twice
    from trainkit.config import load_config
    from trainkit.run import load_run_data
    from trainkit.train import fit

    base_cfg = load_config(noisy_run / "02_baseline/attempt-1/training_config.yaml")  # what reuse relies on:
    rerun = fit(
        base_cfg, load_run_data(base_cfg, noisy_run, "04_optimization"), None, progress=False
    ).history  # CPU reproduces it
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in rerun] == [[r[k] for k in keys] for r in phase2["history"]]
    excl = [c for c in cmp["candidates"] if c["recommendations"] == ["exclude_mislabelled"]]
    assert excl and excl[0]["gain_points"] != 0.0  # measured against the baseline's data, not against itself
    assert cmp["fits"] < 3 * len(cmp["candidates"])  # losing candidates stopped after one seed
    # racing: of the better half (at most two) on the first seed, those ahead of the best so far on it go on
    first = cmp["best_before"]["per_seed"][0]
    singles = [c for c in cmp["candidates"] if "+" not in c["id"]]  # not two survivors together
    top = sorted(singles, key=lambda c: (-c["per_seed"][0], c["id"] != "all"))[: min(2, (len(singles) + 1) // 2)]
    assert {c["id"] for c in singles if c["survived"]} == {c["id"] for c in top if c["per_seed"][0] > first}
    assert all((len(c["seeds"]) > 1) == c["survived"] for c in singles), singles


@pytest.mark.slow
def test_iteration_that_adopts_nothing_rediagnoses_the_best_so_far(noisy_run, monkeypatch, tmp_path):
    from trainkit.phases import optimization

    run = tmp_path / "run"
    shutil.copytree(noisy_run.parent / "pristine", run)
    real, real_fits = optimization._train_seeds, optimization.train_fits
    lose = lambda rows: [dict(r, best_val_accuracy=0.01, best_val_score=0.01) for r in rows]  # noqa: E731

    def worse(cfg, bundle, out, seeds, *args, **kwargs):  # every candidate loses: nothing can be adopted
        rows = real(cfg, bundle, out, seeds, *args, **kwargs)
        return lose(rows) if out is not None else rows

    monkeypatch.setattr(optimization, "_train_seeds", worse)
    monkeypatch.setattr(optimization, "train_fits", lambda specs, *a, **k: lose(real_fits(specs, *a, **k)))
    run_phase_inprocess("04_optimization", run, attempt=1, seeds=2)
    monkeypatch.undo()
    dec = read_json(run / "04_optimization/iter-1/decision.json")
    assert not dec["evidence"]["adopted"] and (dec["option"], dec["next"]) == ("C", "03_diagnostics"), dec["reason"]
    cmp = read_json(run / "04_optimization/iter-1/comparison.json")
    assert cmp["fits"] == len(cmp["candidates"]) > 1  # none ahead on the first seed: no candidate earned another
    assert not (run / "best.json").exists()
    run_phase_inprocess("03_diagnostics", run, attempt=2)
    d = run / "03_diagnostics/round-2"
    gate = read_json(d / "gate.json")
    assert gate["state"] == "passed", [c for c in gate["checks"] if c["status"] == "fail"]
    findings = read_json(d / "findings.json")
    assert findings["source"] == "02_baseline/attempt-1"  # the best config so far is the baseline, with its evidence
    assert findings["evidence"]["best"] is not None
    lost = findings["evidence"]["tried"]
    assert lost and all(v < 0 for v in lost.values())
    assert not {r["id"] for r in findings["plan"]["selected"]} & set(
        lost
    )  # what lost on this config is not proposed again
    assert not {r["id"] for r in findings["plan"]["ranked"] if r["kind"] == "accuracy"} & set(lost)
    # the same training on the same rows: round 1's probes are read back, not run again ...
    first = read_json(run / "03_diagnostics/round-1/findings.json")
    assert findings["evidence"]["probes_from"] == "03_diagnostics/round-1"
    assert read_json(d / "probes.json") == read_json(run / "03_diagnostics/round-1/probes.json")  # for a round 3
    assert findings["evidence"]["probes"] == first["evidence"]["probes"]
    # ... and what they give is what running them again gives
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "03_diagnostics/round-2")
    (again / "03_diagnostics/round-1/probes.json").unlink()
    run_phase_inprocess("03_diagnostics", again, attempt=2)
    fresh = read_json(again / "03_diagnostics/round-2/findings.json")
    assert "probes_from" not in fresh["evidence"] and (again / "03_diagnostics/round-2/probes.json").is_file()
    assert fresh["primary"] == findings["primary"]
    assert [r["id"] for r in fresh["plan"]["selected"]] == [r["id"] for r in findings["plan"]["selected"]]
    assert (
        fresh["evidence"]["probes"]["seed_variance"]["val_accuracy"]
        == first["evidence"]["probes"]["seed_variance"]["val_accuracy"]
    )


@pytest.mark.slow
def test_a_rediagnosis_reads_back_the_label_probe_while_the_rows_and_its_trust_hold(noisy_run, tmp_path):
    """A later round of Phase 3 reads the label-issue probe of the round before when the rows are
    the same (data section and seed), that probe was conclusive, and its fold models are within the
    probe's trust margin of the model diagnosed now; otherwise it measures again."""
    from trainkit.config import load_config, with_overrides
    from trainkit.diagnostics.data_probes import LABEL_MAX_SHORTFALL
    from trainkit.phases.diagnostics import earlier_label_probe

    run = tmp_path / "run"
    shutil.copytree(noisy_run.parent / "pristine", run)
    saved = read_json(run / "03_diagnostics/round-1/probes.json")
    first = saved["probes"]["label_issues"]
    assert first["trusted"] and first["flagged"]  # 30% flipped labels: a conclusive probe that flags rows
    cfg = load_config(run / "03_diagnostics/round-1/training_config.yaml")
    ev = {"best": {"val_accuracy": first["oof_val_accuracy"] + LABEL_MAX_SHORTFALL / 2}}
    adopted = with_overrides(cfg, {"optimizer.lr": 0.01, "model.kwargs": {"hidden": [256, 256]}})
    got = earlier_label_probe(run, 2, adopted, ev)  # a recipe and capacity change: the same rows
    assert got["reused_from"] == "03_diagnostics/round-1"
    assert {k: v for k, v in got.items() if k not in ("reused_from", "seconds")} == {
        k: v for k, v in first.items() if k != "seconds"
    }
    assert earlier_label_probe(run, 3, adopted, ev)["reused_from"] == "03_diagnostics/round-1"  # no round 2 yet
    other_rows = ({"data.exclude": "03_diagnostics/round-1/exclude_labels.json"}, {"training.seed": 7})
    for change in other_rows:
        assert earlier_label_probe(run, 2, with_overrides(cfg, change), ev) is None, change
    ahead = {"best": {"val_accuracy": first["oof_val_accuracy"] + LABEL_MAX_SHORTFALL + 0.01}}
    assert earlier_label_probe(run, 2, adopted, ahead) is None  # the network outgrew its judges
    saved["probes"]["label_issues"] = dict(first, trusted=False)
    (run / "03_diagnostics/round-1/probes.json").write_text(json.dumps(saved))
    assert earlier_label_probe(run, 2, adopted, ev) is None  # inconclusive: measured again


@pytest.mark.slow
def test_a_longer_candidate_continues_the_run_it_extends(noisy_run, tmp_path):
    """Phase 4's "train longer" on the seed Phase 2 trained continues Phase 2's run from its last
    checkpoint: the history a fit from scratch gives, to the last digit, without its first epochs
    trained again. A schedule shaped by the run's length, another setting, or a run that stopped
    early is not continued."""
    from trainkit.config import load_config, with_overrides
    from trainkit.phases.common import OptimizationContext
    from trainkit.phases.opt_seeds import _train_seeds, shorter_run
    from trainkit.run import load_run_data
    from trainkit.train import fit

    run = tmp_path / "run"
    shutil.copytree(noisy_run.parent / "pristine", run)
    base_dir = run / "02_baseline/attempt-1"
    base = load_config(base_dir / "training_config.yaml")
    assert read_json(base_dir / "train_summary.json")["status"] == "completed"
    longer = with_overrides(base, {"training.epochs": base.training.epochs + 4})
    assert shorter_run(run, longer) == base_dir
    for other in ({"schedule.name": "cosine"}, {"optimizer.lr": 0.05}, {"training.seed": base.training.seed + 1}):
        assert shorter_run(run, with_overrides(longer, other)) is None, other
    assert shorter_run(run, longer, folds={"k": 3, "s0": 0}) is None
    assert shorter_run(run, base) is None  # not longer: nothing to continue
    ctx = OptimizationContext(run_dir=run, phase="04_optimization", attempt=1, dir=run / "04_optimization/iter-1")
    ctx.config = base
    bundle = load_run_data(longer, run, "04_optimization")
    (row,) = _train_seeds(longer, bundle, ctx.dir / "runs/longer", [base.training.seed], ctx, "candidate longer")
    assert row["continued_from"] == "02_baseline/attempt-1"
    fresh = fit(longer, load_run_data(longer, run, "04_optimization"), None, progress=False)
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy")
    cont = read_json(ctx.dir / "runs/longer/seed-0/train_summary.json")
    assert [[h[k] for k in keys] for h in cont["history"]] == [[h[k] for k in keys] for h in fresh.history]
    assert cont["resumed_from_epoch"] == base.training.epochs - 1
    assert row["best_val_score"] == fresh.best["val_accuracy"]
    summary = read_json(base_dir / "train_summary.json")
    (base_dir / "train_summary.json").write_text(json.dumps(dict(summary, status="early_stopped")))
    assert shorter_run(run, longer) is None  # a run that stopped on its own would not have gone on


# ----------------------------------------------------------------------------- 4


def test_strong_finding_with_the_target_close_is_optimized():
    cfg = tiny_config({"model.kwargs": {"hidden": [512]}})
    ev = _ev(cfg, _hist(0.99, 0.30), 0.30, 0.338)  # a 69-point gap, the target 3.8 points away
    findings = detect_all(ev)
    primary = primary_cause(findings)
    assert primary.name == "overfitting" and primary.strength >= 2
    plan = plan_recommendations(findings, ev)
    assert plan["expected_gain_points"] > 5  # gains scale with the gap, not with the distance to the target
    option, nxt, _ = after_diagnostics(
        expected_gain=2.0,
        fix=None,
        needs_fix=False,
        manual_fix=None,
        restarts_left=2,
        budget=BudgetConfig(),
        strong="overfitting (strength 13.8)",
        gap=3.8,
    )
    assert (option, nxt) == ("A", "04_optimization")


# ----------------------------------------------------------------------------- 5


@pytest.mark.slow
def test_dead_units_lr_finder_refuses_and_the_fix_revives_them(tmp_path):
    from trainkit.diagnostics import gather_evidence, run_probes

    cfg = tiny_config(
        {"data.source": T + "tabular", "model.name": T + "dead_relu_model", "model.kwargs": {}, "training.epochs": 4}
    )
    bundle = load_data(cfg)
    lr = lr_range_test(cfg, bundle)
    assert lr["suggested_lr"] is None and lr["inconclusive"] and "flat" in lr["reason"]
    fit(cfg, bundle, tmp_path, progress=False)
    ev = gather_evidence(tmp_path, cfg, failed_mode=True)
    ev["probes"] = run_probes(cfg, bundle, ev, label_issues=False, echo=lambda _: None)
    findings = detect_all(ev)
    stall = next(f for f in findings if f.name == "convergence_stall")
    assert stall.fired and stall.cause == "dead_units"
    (rec,) = stall.recommendations
    assert rec.patch["model.init"] == "kaiming" and rec.patch.get("optimizer.lr", cfg.optimizer.lr) >= cfg.optimizer.lr
    fixed = with_overrides(cfg, rec.patch)
    assert fit(fixed, bundle, None, progress=False).best["val_accuracy"] > 0.8


# ----------------------------------------------------------------------------- 6


def test_dominant_input_bottleneck_gets_its_fix_selected():
    cfg = tiny_config(
        {"data.source": T + "slow_tabular", "model.kwargs": {"hidden": [8]}, "optimizer.weight_decay": 0.01}
    )
    ev = _ev(
        cfg,
        _hist(0.70, 0.68),
        0.68,
        0.95,
        probes={
            "resource": {"device": "cpu", "data_wait_fraction": 0.8},
            "lr_range": {"suggested_lr": 0.01},
            "seed_variance": {
                "seeds": [0, 1, 2],
                "val_accuracy": [0.68] * 3,
                "std": 0.002,
                "range": 0.004,
                "epochs": 3,
            },
        },
    )
    findings = detect_all(ev)
    plan = plan_recommendations(findings, ev)
    assert len([r for r in plan["ranked"] if r["kind"] == "accuracy"]) >= 4  # plenty of competition
    assert plan["selected"][0]["id"] == "workers" and plan["selected"][0]["forced"]


# ----------------------------------------------------------------------------- 7


@pytest.mark.slow
def test_imbalance_offers_class_weighting_and_a_balanced_sampler_that_lift_the_rare_classes(tmp_path):
    from trainkit.diagnostics import gather_evidence, run_probes

    cfg = tiny_config(
        {
            "data.source": T + "imbalanced_tabular",
            "model.kwargs": {"hidden": [8]},
            "training.epochs": 10,
            "target.value": 0.999,
            "target.metric": "balanced_accuracy",
        }
    )  # a metric that rewards the rare classes
    bundle = load_data(cfg)
    fit(cfg, bundle, tmp_path, progress=False)
    ev = gather_evidence(tmp_path, cfg)
    ev["probes"] = run_probes(cfg, bundle, ev, label_issues=False, echo=lambda _: None)
    dq = next(f for f in detect_all(ev) if f.name == "data_quality")
    assert dq.fired and "imbalance" in dq.evidence["problems"] and dq.evidence["imbalance_ratio"] >= 15
    recall = dq.evidence["val_recall_per_class"]
    assert len(recall) == 3 and dq.evidence["min_class_recall"] == pytest.approx(min(recall), abs=1e-4)
    patches = {r.id: r.patch for r in dq.recommendations}
    assert patches["class_weighting"] == {"training.class_weighting": "balanced"}
    assert patches["balanced_sampler"] == {"data.sampler": "balanced"}

    def min_recall(c):
        from trainkit.diagnostics.probes import per_class_probe
        from trainkit.models import build_model

        r = fit(c, bundle, tmp_path / c.training.class_weighting / c.data.sampler, progress=False)
        from trainkit.checkpoints import load_checkpoint

        m = build_model(c.model.name, bundle.input_shape, bundle.num_classes, c.model.kwargs)
        m.load_state_dict(load_checkpoint(r.paths["best"])["model"])
        return per_class_probe(c, bundle, m)["min_recall"]

    before = min_recall(cfg)
    assert min_recall(with_overrides(cfg, patches["class_weighting"])) > before
    assert min_recall(with_overrides(cfg, patches["balanced_sampler"])) > before


# ----------------------------------------------------------------------------- 8


@pytest.mark.parametrize("shape,family", [((1, 8, 8), "cnn"), ((2, 64), "cnn1d")])
def test_mlp_on_images_or_signals_is_offered_a_conv_net(shape, family):
    cfg = tiny_config({"model.kwargs": {"hidden": [64]}, "optimizer.name": "sgd", "optimizer.lr": 1e-3})
    ev = _ev(cfg, _hist(0.80, 0.78), 0.78, 0.95, shape=shape)
    plan = plan_recommendations(detect_all(ev), ev)
    rec = next(r for r in plan["ranked"] if r["id"] == "model_family")
    assert rec["patch"]["model.name"] == family and rec in plan["selected"]
    mine = _ev(
        with_overrides(cfg, {"model.name": T + "tiny_model", "model.kwargs": {}}),
        _hist(0.80, 0.78),
        0.78,
        0.95,
        shape=shape,
    )
    advice = plan_recommendations(detect_all(mine), mine)["advice"]
    assert any(a["id"] == "model_family_advice" and a["patch"] is None for a in advice)


@pytest.mark.slow
def test_demo_conv_candidate_beats_the_mlp_on_digits():
    base = tiny_config({"training.epochs": 15, "optimizer.name": "sgd", "optimizer.lr": 0.05})
    conv = with_overrides(base, {"model.name": "cnn", "model.kwargs": {"channels": [32, 64]}})
    bundle = load_data(base)
    accs = {n: fit(c, bundle, None, progress=False).best["val_accuracy"] for n, c in (("mlp", base), ("cnn", conv))}
    assert accs["cnn"] > accs["mlp"] and accs["cnn"] >= 0.97, accs


# ----------------------------------------------------------------------------- 9


@pytest.mark.slow
def test_custom_signal_source_keeps_its_shape_and_conv1d_models_train():
    for model in ("cnn1d", T + "signal_conv_model"):
        cfg = tiny_config(
            {
                "data.source": T + "signals",
                "model.name": model,
                "model.kwargs": {},
                "training.epochs": 15,
                "optimizer.lr": 0.01,
            }
        )
        bundle = load_data(cfg)
        assert bundle.input_shape == (2, 64)
        r = fit(cfg, bundle, None, progress=False)
        assert r.status == "completed" and r.best["val_accuracy"] > 0.6, (model, r.best["val_accuracy"])
    tab = load_data(tiny_config({"data.source": T + "tabular"}))
    assert tab.input_shape == (16,)
    x = tab._x[tab.splits["train"]]
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=0.05)  # per-feature scaling


def test_augment_shifts_signals_and_keeps_their_shape():
    import torch

    from trainkit.data import augment_batch

    x = torch.arange(2 * 3 * 32, dtype=torch.float32).reshape(2, 3, 32)
    torch.manual_seed(1)
    shifted = [augment_batch(x, "crop") for _ in range(5)]
    assert all(s.shape == x.shape for s in shifted) and any(not torch.equal(s, x) for s in shifted)
    pad = 32 // 8
    for s in shifted:  # each is x moved by at most pad steps along time, zeros filling what came in
        padded = torch.nn.functional.pad(x, (pad, pad))
        assert any(torch.equal(s, padded[:, :, k : k + 32]) for k in range(2 * pad + 1))


def test_compute_plan_shares_and_fit():
    from trainkit.plan import SHARES, compute_plan

    cfg = tiny_config({"budget.total_hours": 1.0})
    plan = compute_plan(cfg, baseline_s=60.0, measured={})
    assert abs(sum(SHARES.values()) - 1.0) < 1e-9
    assert plan["phases"]["04_optimization"]["share_s"] == pytest.approx(0.45 * 3600)
    assert plan["estimated_total_s"] == pytest.approx(60.0 * plan["planned_units_total"], rel=1e-3)
    assert plan["fits"] == (plan["estimated_total_s"] <= 3600)
    assert not compute_plan(cfg, baseline_s=600.0, measured={})[
        "fits"
    ]  # 10-minute baselines: the path does not fit 1 h


@pytest.mark.slow
def test_a_rediagnosis_reads_the_seeds_phase4_trained_for_the_config_it_adopted(tmp_path):
    """Phase 4 trained the config it adopted on three seeds; the next round of Phase 3 diagnoses its
    seed-0 run, and its seed-variance probe reads the other two rather than training them again: the
    numbers a fresh probe gives. Another config, or folds (each seed on other rows), read nothing."""
    from trainkit._io import write_json_atomic
    from trainkit.config import with_overrides
    from trainkit.data import load_data
    from trainkit.diagnostics.probe_runner import _sibling_seeds
    from trainkit.diagnostics.probes import seed_variance_probe
    from trainkit.phases.opt_seeds import FitSpec, train_fits
    from trainkit.train import fit

    cfg = tiny_config({"training.epochs": 3})
    bundle = load_data(cfg)
    (tmp_path / "run.json").write_text("{}")
    it = tmp_path / "04_optimization" / "iter-1"
    write_json_atomic(it / "comparison.json", {"folds": None})
    fits = {0: fit(cfg, bundle, it / "runs/seed-0", progress=False)}
    train_fits([FitSpec(cfg, bundle, it / "runs", s) for s in (1, 2)])  # as Phase 4 trains its seeds (side by side)
    trained = _sibling_seeds(cfg, it / "runs/seed-0")
    assert sorted(trained) == [1, 2] and trained[1]["dir"] == "04_optimization/iter-1/runs/seed-1"
    read = seed_variance_probe(cfg, bundle, baseline=fits[0].best, history=fits[0].history, trained=trained)
    fresh = seed_variance_probe(cfg, bundle, baseline=fits[0].best, history=fits[0].history)
    assert [r.get("reused") for r in read["runs"]] == [trained[1]["dir"], trained[2]["dir"]]
    assert not any("reused" in r for r in fresh["runs"])
    assert read["val_accuracy"] == fresh["val_accuracy"] and read["std"] == fresh["std"]  # CPU: the same runs
    curve = lambda runs: [[(h["val_loss"], h["val_accuracy"]) for h in r["history"]] for r in runs]  # noqa: E731
    assert curve(read["runs"]) == curve(fresh["runs"])  # the curves Phase 4 reuses as baseline seeds
    assert _sibling_seeds(with_overrides(cfg, {"optimizer.lr": 0.01}), it / "runs/seed-0") == {}
    write_json_atomic(it / "comparison.json", {"folds": {"k": 3, "s0": 0}})
    assert _sibling_seeds(cfg, it / "runs/seed-0") == {}
