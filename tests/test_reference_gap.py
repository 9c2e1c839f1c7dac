"""The reference gap ("a simpler model is not better") as a finding: beyond the noise it fires with
moves whose expected gains are shares of the gap; within the noise it is inconclusive; it never
outranks a cause; and the probe scores the references with the target metric."""

from __future__ import annotations

import pytest

from trainkit.config import config_to_dict
from trainkit.diagnostics import detect_all, plan_recommendations, primary_cause
from trainkit.diagnostics.reference import detect_reference_gap, sampling_points
from trainkit.testing import tiny_config


def _ev(
    net,
    trees,
    val_rows,
    model="mlp",
    kwargs=None,
    optimizer="adam",
    seed_std=0.004,
    history=None,
    target=0.99,
    train=None,
    **probes,
):
    cfg = tiny_config(
        {
            "data.source": "trainkit.testing:tabular",
            "model.name": model,
            "model.kwargs": kwargs or {"hidden": [16]},
            "optimizer.name": optimizer,
            "training.epochs": 10,
        }
    )
    h = history or [
        {
            "epoch": e,
            "train_loss": 1.0 - 0.08 * e,
            "val_loss": 1.0 - 0.05 * e,
            "train_accuracy": net if train is None else train,
            "val_accuracy": net,
            "val_score": net,
            "lr": 1e-3,
        }
        for e in range(10)
    ]
    ref = {
        "rows": 800,
        "of_rows": 800,
        "val_rows": val_rows,
        "metric": "accuracy",
        "best": "boosted_trees",
        "models": {
            "logistic_regression": {"val_accuracy": 0.7, "val_score": 0.7},
            "boosted_trees": {"val_accuracy": trees, "val_score": trees},
        },
    }
    return {
        "status": "completed",
        "history": h,
        "best": dict(h[-1]),
        "init_loss": 2.0,
        "nonfinite": None,
        "crash": None,
        "target": target,
        "config": config_to_dict(cfg),
        "device": "cpu",
        "failed_mode": False,
        "input_shape": [16],
        "num_classes": 4,
        "probes": {
            "reference": ref,
            "seed_variance": {
                "seeds": [0, 1, 2],
                "val_accuracy": [net] * 3,
                "std": seed_std,
                "range": 2 * seed_std,
                "epochs": 10,
                "full_runs": True,
            },
            **probes,
        },
    }


def test_a_gap_beyond_the_noise_is_a_finding_with_moves_sized_by_the_gap():
    f = detect_reference_gap(_ev(0.85, 0.95, 1000))
    assert f.fired and f.evidence["gap_points"] == pytest.approx(10.0)
    assert f.evidence["noise_points"] == pytest.approx(max(sampling_points(0.95, 1000), 1.0), abs=0.01)
    ids = {r.id: r for r in f.recommendations}
    assert {"ref_capacity", "ref_batch_norm", "ref_dropout", "ref_adamw_cosine", "ref_longer"} <= set(ids)
    assert ids["ref_capacity"].patch == {"model.kwargs": {"hidden": [32, 32]}}
    assert ids["ref_capacity"].expected_gain_points == pytest.approx(4.0)  # 40% of the 10-point gap
    assert (
        ids["ref_adamw_cosine"].patch["schedule.name"] == "cosine"
        and "optimizer.lr" not in ids["ref_adamw_cosine"].patch
    )
    assert "10.0 points of headroom" in f.summary


def test_from_sgd_the_move_to_adamw_sets_the_standard_lr():
    f = detect_reference_gap(_ev(0.85, 0.95, 1000, optimizer="sgd"))
    patch = {r.id: r for r in f.recommendations}["ref_adamw_cosine"].patch
    assert patch["optimizer.lr"] == 1e-3 and patch["optimizer.name"] == "adamw"


def test_a_gap_within_the_luck_of_a_small_val_split_is_inconclusive():
    f = detect_reference_gap(_ev(0.89, 0.95, 36))  # 36 val rows: two standard errors are 7.3 points, the gap 6
    assert not f.fired and "inconclusive" in f.summary and f.recommendations == []
    assert sampling_points(0.95, 36) > 7
    assert detect_reference_gap(_ev(0.89, 0.95, 1000)).fired  # the same gap on 1,000 val rows is beyond the noise
    f = detect_reference_gap(_ev(0.85, 0.95, 1000, seed_std=0.06))  # seeds spread 12 points: within the noise
    assert not f.fired and f.evidence["seed_noise_points"] == pytest.approx(12.0)


def test_a_network_at_or_above_the_reference_is_quiet():
    f = detect_reference_gap(_ev(0.96, 0.95, 1000))
    assert not f.fired and "at or above" in f.summary
    assert not detect_reference_gap(_ev(0.85, 0.95, 1000, reference={"error": "skipped"})).fired


def test_the_gap_is_a_residual_named_only_when_no_cause_fired_and_the_target_is_missed():
    # the network fits its train rows about as well as val (no under- or overfitting), misses the target,
    # and the trees do 10 points better: the gap is the finding, and the only one
    ev = _ev(0.85, 0.95, 1000, target=0.86, train=0.87)
    alone = primary_cause(detect_all(ev))
    assert alone is not None and alone.name == "reference_gap"
    assert any(r["id"].startswith("ref_") for r in plan_recommendations(detect_all(ev), ev)["selected"])
    # a model far from fitting its train rows: underfitting is the cause, the gap its symptom (no moves of its own)
    ev = _ev(0.60, 0.95, 1000, kwargs={"hidden": [2]})
    by = {f.name: f for f in detect_all(ev)}
    assert by["underfitting"].fired and not by["reference_gap"].fired
    assert (
        "explained by underfitting" in by["reference_gap"].summary
        and by["reference_gap"].evidence["gap_points"] == 35.0
    )
    assert primary_cause(list(by.values())).name == "underfitting"
    assert not any(r["id"].startswith("ref_") for r in plan_recommendations(list(by.values()), ev)["ranked"])
    # the target met: headroom, not a shortfall
    f = detect_reference_gap(_ev(0.85, 0.95, 1000, target=0.85))
    assert not f.fired and "target is met" in f.summary


def test_the_probe_scores_the_references_with_the_target_metric(tmp_path):
    import numpy as np

    from trainkit.data import load_data
    from trainkit.diagnostics.probes import reference_probe
    from trainkit.metrics import score

    b = load_data(tiny_config({"data.source": "trainkit.testing:imbalanced_tabular"}))
    ref = reference_probe(b, 0.5, metric="balanced_accuracy")
    assert ref["metric"] == "balanced_accuracy" and ref["val_rows"] == len(b.splits["val"])
    for m in ref["models"].values():
        assert m["val_score"] != m["val_accuracy"]  # 20:1 classes: balanced accuracy is not accuracy
    top = max(m["val_score"] for m in ref["models"].values())
    assert ref["best_val_score"] == top and ref["gap_points"] == pytest.approx(100 * (top - 0.5), abs=0.01)
    assert np.isfinite(score("balanced_accuracy", np.array([0, 1]), np.eye(2)))


def _imbalanced_ev(metric="accuracy", ref_rare_recall=0.80, net_recall=(0.98, 0.40), target=0.92):
    """A 6:1 table where the trees lead by 5 points on val; the network misses the rare class."""
    ev = _ev(0.90, 0.95, 1000, target=target, train=0.93 if target < 0.95 else 0.905)
    ev["config"]["target"]["metric"] = metric
    ev["probes"]["reference"]["models"]["boosted_trees"]["val_recall"] = [0.99, ref_rare_recall]
    ev["probes"]["per_class"] = {
        "recall": list(net_recall),
        "min_recall": min(net_recall),
        "mean_recall": sum(net_recall) / 2,
    }
    ev["probes"]["data"] = {
        "class_counts_train": [3000, 500],
        "imbalance_ratio": 6.0,
        "features": 16,
        "constant_features": 0,
        "non_finite_values": 0,
        "leaked_train_indices": [],
        "duplicate_train_indices": [],
    }
    ev["num_classes"], ev["val_size"] = 2, 1000
    return ev


def test_a_cause_the_reference_shares_does_not_explain_its_lead_the_model_family_does():
    ev = _imbalanced_ev()
    findings = detect_all(ev)
    by = {f.name: f for f in findings}
    assert by["data_quality"].fired and "imbalance" in by["data_quality"].evidence["problems"]
    assert by["data_quality"].evidence["shared_with_reference"] and by["data_quality"].strength == 0.0
    assert "does not explain the gap" in by["data_quality"].summary
    assert "the gradient-boosted trees model is fitted on the same rows" in by["data_quality"].summary  # one model
    primary = primary_cause(findings)
    assert primary.name == "reference_gap" and primary.cause == "model_family"
    plan = plan_recommendations(findings, ev)
    ids = [r["id"] for r in plan["ranked"]]
    assert ids[0] == "ref_tabm" and plan["selected"][0]["patch"] == {"model.name": "tabm", "model.kwargs": {}}
    # accuracy does not reward trading majority hits for rare ones, and the trees recall the rare class (0.80):
    assert "class_weighting" not in ids and "balanced_sampler" not in ids
    # a target the network's train fit is far from: underfitting (capacity) is named, and its first move is TabM
    ev = _imbalanced_ev(target=0.97)
    findings = detect_all(ev)
    by = {f.name: f for f in findings}
    assert by["underfitting"].fired and by["data_quality"].strength == 0.0 and not by["reference_gap"].fired
    assert primary_cause(findings).name == "underfitting"
    assert plan_recommendations(findings, ev)["selected"][0]["patch"]["model.name"] == "tabm"


def test_imbalance_moves_come_when_the_metric_rewards_them_or_the_reference_fails_the_same_classes():
    ids = lambda ev: {r["id"] for r in plan_recommendations(detect_all(ev), ev)["ranked"]}  # noqa: E731
    assert {"class_weighting", "balanced_sampler"} <= ids(_imbalanced_ev(metric="balanced_accuracy"))
    assert {"class_weighting", "balanced_sampler"} <= ids(_imbalanced_ev(metric="macro_f1"))
    assert {"class_weighting", "balanced_sampler"} <= ids(_imbalanced_ev(ref_rare_recall=0.30))  # the trees fail it too
    assert not {"class_weighting", "balanced_sampler"} & ids(_imbalanced_ev())


def test_tabm_itself_behind_the_reference_gets_embedding_width_and_depth_moves():
    f = detect_reference_gap(_ev(0.85, 0.95, 1000, model="tabm", kwargs={"embeddings": "none"}))
    ids = [r.id for r in f.recommendations]
    assert ids[:3] == ["ref_embeddings", "ref_width", "ref_depth"]
    patches = {r.id: r.patch for r in f.recommendations}
    assert patches["ref_width"] == {"model.kwargs": {"embeddings": "none", "d_block": 512}}
    assert patches["ref_depth"]["model.kwargs"]["n_blocks"] == 3
    f = detect_reference_gap(_ev(0.85, 0.95, 1000, model="tabm", kwargs={}))
    assert [r.id for r in f.recommendations][0] == "ref_bins" and "ref_tabm" not in [r.id for r in f.recommendations]


@pytest.mark.slow
def test_a_churn_like_table_is_diagnosed_as_model_family_not_imbalance(tmp_path):
    """Telecom churn's shape: ~4.6:1 classes, churn set by thresholds and an interaction. A small plain
    MLP trails boosted trees on the same rows under an accuracy target; the diagnosis names the model
    (family or capacity), never the imbalance the trees share, and its first move is architecture."""
    import numpy as np

    from trainkit.data import load_data
    from trainkit.diagnostics import gather_evidence, run_probes
    from trainkit.train import fit

    rng = np.random.default_rng(4)
    n = 3500
    day, eve, calls = rng.normal(180, 54, n).clip(0), rng.normal(200, 50, n).clip(0), rng.poisson(1.5, n)
    plan, vmail = rng.random(n) < 0.1, rng.random(n) < 0.27
    y = (
        (day > 270) | ((calls >= 4) & (day < 160)) | (plan & (rng.random(n) < 0.3)) | ((day + eve > 460) & ~vmail)
    )  # 18%
    x = np.stack([day, eve, calls, plan, vmail, rng.normal(size=n)], 1).astype(np.float32)
    np.savez(tmp_path / "churn.npz", x=x, y=y.astype(np.int64))
    cfg = tiny_config(
        {
            "data.source": "npz",
            "data.root": str(tmp_path / "churn.npz"),
            "model.kwargs": {"hidden": [16]},
            "training.epochs": 15,
            "target.value": 0.99,
        }
    )
    bundle = load_data(cfg)
    fit(cfg, bundle, tmp_path / "fit", progress=False)
    ev = gather_evidence(tmp_path / "fit", cfg)
    ev["probes"] = run_probes(cfg, bundle, ev, label_issues=False, echo=lambda _: None)
    findings = detect_all(ev)
    by = {f.name: f for f in findings}
    assert ev["probes"]["data"]["imbalance_ratio"] >= 3  # the imbalance is there ...
    assert (
        by["reference_gap"].evidence["gap_points"] > by["reference_gap"].evidence["noise_points"]
    )  # ... and the trees lead
    primary = primary_cause(findings)
    assert primary.name in ("reference_gap", "underfitting") and (primary.cause or primary.name) != "imbalance"
    assert not (by["data_quality"].fired and by["data_quality"].strength > 0)
    first = plan_recommendations(findings, ev)["selected"][0]
    assert first["patch"].get("model.name") == "tabm", first


def test_an_underfitting_tabm_is_offered_wider_blocks():
    ev = _ev(0.60, 0.80, 1000, model="tabm", kwargs={"k": 8})  # the trees lead: the fit is the network's own
    by = {f.name: f for f in detect_all(ev)}
    cap = {r.id: r for r in by["underfitting"].recommendations}["capacity"]
    assert by["underfitting"].fired and cap.patch == {"model.kwargs": {"k": 8, "d_block": 512}}


def _level(net, trees, val_rows=600, target=0.95, trees_too=True, **kw):
    ev = _ev(net, trees, val_rows, target=target, **kw)
    models = ev["probes"]["reference"]["models"]
    models["logistic_regression"] = {"val_accuracy": trees - 0.01, "val_score": trees - 0.01}
    if not trees_too:  # images and signals: a logistic regression on the flat inputs is the only reference
        del models["boosted_trees"]
        ev["probes"]["reference"]["best"] = "logistic_regression"
    return ev


def test_underfitting_that_boosted_trees_share_is_the_rows_ceiling_not_the_networks_capacity():
    """A loans-like table: the network, boosted trees and a logistic regression all stop near 0.83
    against a 0.95 target. The trees have capacity to spare, so the rows cap every model."""
    ev = _level(0.83, 0.83)
    findings = detect_all(ev)
    by = {f.name: f for f in findings}
    under = by["underfitting"]
    assert not under.fired and under.strength == 0.0 and under.evidence["shared_with_reference"]
    assert under.evidence["strength_before_control"] > 0 and "the rows cap both" in under.summary
    assert by["reference_gap"].evidence["level_short_of_target"]
    plan = plan_recommendations(findings, ev)
    assert primary_cause(findings) is None and not {"capacity", "lr_up"} & {r["id"] for r in plan["ranked"]}
    assert plan["expected_gain_points"] < 3  # only the generic fill-ups: too little to optimize for (option B)
    noise = by["reference_gap"].evidence["noise_points"]  # each expects a share of the noise, not of the 12-point gap
    assert plan["selected"] and all(r["expected_gain_points"] <= 0.2 * noise + 1e-9 for r in plan["selected"])
    # the trees ahead beyond the noise: the network's fit is its own to improve
    assert {f.name: f for f in detect_all(_level(0.83, 0.92))}["underfitting"].fired
    # the trees level but within the noise of the target: not a ceiling
    near = _level(0.94, 0.945, val_rows=400, target=0.95)
    assert not {f.name: f for f in detect_all(near)}["reference_gap"].evidence["level_short_of_target"]
    # no boosted trees (a logistic regression on pixels is a floor, not a ceiling): underfitting stays
    assert {f.name: f for f in detect_all(_level(0.83, 0.83, trees_too=False))}["underfitting"].fired


def test_overfitting_that_boosted_trees_stop_level_with_expects_only_the_room_they_leave():
    """A wide, noisy table: the network fits train to 0.92 and stops at 0.68 on val, and boosted
    trees on the same rows stop at 0.69, against a 0.95 target. The network does overfit, but no
    model on these rows gets far above that level: closing the 24-point gap is expected to win
    at most the trees' level plus the noise, too little to optimize for, and the strength is no
    longer strong enough to overrule that (option B)."""
    from trainkit.decisions import after_diagnostics
    from trainkit.diagnostics import THRESHOLDS
    from trainkit.testing import tiny_config as cfg_of

    ev = _level(0.68, 0.69, val_rows=750, train=0.92, seed_std=0.009)
    findings = detect_all(ev)
    by = {f.name: f for f in findings}
    over, noise = by["overfitting"], by["reference_gap"].evidence["noise_points"]
    assert over.fired and over.evidence["capped_by_reference"] and "at most" in over.summary
    assert over.evidence["room_points"] == pytest.approx(69 + noise - 68, abs=0.01)
    assert over.evidence["strength_before_control"] >= THRESHOLDS["strong_strength"] > over.strength
    assert all(r.expected_gain_points <= over.evidence["room_points"] for r in over.recommendations)
    plan = plan_recommendations(findings, ev)
    budget = cfg_of().budget
    assert primary_cause(findings).name == "overfitting" and plan["expected_gain_points"] < budget.marginal_gain_points
    d = after_diagnostics(
        expected_gain=plan["expected_gain_points"],
        fix=None,
        needs_fix=False,
        manual_fix=None,
        restarts_left=2,
        budget=budget,
        strong=None,
        gap=27.0,
    )
    assert d.option == "B"
    # the trees ahead beyond the noise, or no trees at all: the whole gap is the network's to close
    for ev in (_level(0.68, 0.80, train=0.92), _level(0.68, 0.69, train=0.92, trees_too=False)):
        over = {f.name: f for f in detect_all(ev)}["overfitting"]
        assert over.fired and "capped_by_reference" not in over.evidence
        assert over.strength >= THRESHOLDS["strong_strength"]


def test_imbalance_moves_expect_what_the_rare_class_can_move_of_the_metric():
    """Class weighting trades majority hits for rare ones: under accuracy its expected gain is at
    most the rare class's share of the rows times its recall gain; balanced accuracy weighs every
    class alike, so the whole recall gap counts."""

    def gains(ev):
        plan = plan_recommendations(detect_all(ev), ev)
        return {r["id"]: r["expected_gain_points"] for r in plan["ranked"]}

    under_accuracy = gains(_imbalanced_ev(ref_rare_recall=0.30))  # the trees fail the rare class too
    balanced = gains(_imbalanced_ev(metric="balanced_accuracy"))
    share = 500 / 3500  # the rare class's rows (class_counts_train)
    assert balanced["class_weighting"] > 5
    assert under_accuracy["class_weighting"] == pytest.approx(balanced["class_weighting"] * share, abs=0.02)
    assert under_accuracy["balanced_sampler"] == pytest.approx(balanced["balanced_sampler"] * share, abs=0.02)
