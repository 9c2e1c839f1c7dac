"""target.metric: the scores, what the majority predictor scores, the intervals, the refusals, and
the metric driving the fit's selection and Phase 2's decision."""

from __future__ import annotations

import numpy as np
import pytest

from trainkit.metrics import advice, bootstrap_interval, chance_score, check_metric, metric_interval, row_score, score


def _probs(y, k, seed):
    rng = np.random.default_rng(seed)
    p = rng.random((len(y), k))
    p[np.arange(len(y)), y] += rng.random(len(y))  # informative but imperfect
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_scores_match_scikit_learn(k):
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    y = np.random.default_rng(k).integers(0, k, 400)
    p = _probs(y, k, k)
    pred = p.argmax(1)
    assert score("accuracy", y, p) == pytest.approx((pred == y).mean())
    assert score("balanced_accuracy", y, p) == pytest.approx(balanced_accuracy_score(y, pred))
    assert score("macro_f1", y, p) == pytest.approx(f1_score(y, pred, average="macro"))
    if k == 2:
        assert score("roc_auc", y, p) == pytest.approx(roc_auc_score(y, p[:, 1]))
        tied = np.round(p, 1)  # ties count half, as in sklearn
        assert score("roc_auc", y, tied) == pytest.approx(roc_auc_score(y, tied[:, 1]))
    else:
        with pytest.raises(ValueError, match="two classes"):
            score("roc_auc", y, p)


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"])
@pytest.mark.parametrize("counts", [[86, 14], [50, 50], [70, 20, 10]])
def test_chance_is_what_predicting_the_majority_everywhere_scores(metric, counts):
    if metric == "roc_auc" and len(counts) != 2:
        return
    y = np.repeat(np.arange(len(counts)), counts)
    p = np.zeros((len(y), len(counts)))
    p[:, int(np.argmax(counts))] = 1.0
    assert chance_score(metric, counts) == pytest.approx(score(metric, y, p))


def test_an_imbalanced_majority_predictor_looks_good_only_to_accuracy():
    y = np.array([0] * 86 + [1] * 14)
    p = np.tile([0.9, 0.1], (100, 1))
    assert score("accuracy", y, p) == pytest.approx(0.86)
    assert score("balanced_accuracy", y, p) == pytest.approx(0.5)
    assert score("roc_auc", y, p) == pytest.approx(0.5)
    assert "roc_auc or balanced_accuracy" in advice("accuracy", [86, 14])
    assert "balanced_accuracy or macro_f1" in advice("accuracy", [80, 10, 10])
    assert advice("accuracy", [60, 40]) is None and advice("macro_f1", [90, 10]) is None


def test_intervals_hold_the_point_and_accuracy_is_unchanged():
    y = np.random.default_rng(1).integers(0, 3, 200)
    p = _probs(y, 3, 1)
    for m in ("balanced_accuracy", "macro_f1"):
        lo, hi = metric_interval(m, y, p, 300, 0)
        assert lo <= score(m, y, p) <= hi and hi - lo < 0.3
    correct = (p.argmax(1) == y).astype(float)
    assert metric_interval("accuracy", y, p, 300, 0) == bootstrap_interval(correct, 300, 0)


def test_row_score_reads_the_metric_and_falls_back_to_accuracy_for_old_records():
    assert row_score({"val_accuracy": 0.9, "val_score": 0.6}) == 0.6
    assert row_score({"val_accuracy": 0.9}) == 0.9


def test_the_config_accepts_the_four_metrics_and_names_a_wrong_one():
    from trainkit.config import validate_config_dict
    from trainkit.errors import ConfigError

    for m in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        assert validate_config_dict({"target": {"metric": m}}).target.metric == m
    with pytest.raises(ConfigError, match="target.metric"):
        validate_config_dict({"target": {"metric": "f1"}})


def test_roc_auc_of_three_classes_is_refused_before_a_run_folder_exists(tmp_path, capsys):
    import yaml

    from trainkit.cli import main

    check_metric("roc_auc", 2)
    with pytest.raises(Exception, match="roc_auc is for two classes only; this data has 3"):
        check_metric("roc_auc", 3)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "trainkit.testing:tabular"}, "target": {"metric": "roc_auc"}}))
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "target.metric" in err and "4 classes" in err and "balanced_accuracy" in err
    runs = tmp_path / "runs"
    assert main(["run", str(cfg), "--runs-dir", str(runs), "--name", "r"]) == 2
    assert not (runs / "r").exists()


@pytest.mark.slow  # trains
def test_the_fit_selects_and_stops_on_the_target_metric():
    from trainkit.data import load_data
    from trainkit.testing import tiny_config
    from trainkit.train import fit

    cfg = tiny_config(
        {
            "data.source": "trainkit.testing:imbalanced_tabular",
            "target.metric": "balanced_accuracy",
            "training.epochs": 6,
            "training.patience": None,
            "model.kwargs": {"hidden": [8]},
            "optimizer.lr": 3e-3,
        }
    )
    b = load_data(cfg)
    r = fit(cfg, b, None, progress=False)
    scores = [h["val_score"] for h in r.history]
    assert all(h["val_score"] != h["val_accuracy"] for h in r.history)  # balanced accuracy, not accuracy
    assert r.best["val_score"] == max(scores) and r.best["epoch"] == scores.index(max(scores))


def test_phase2_decides_on_the_target_metric():
    from trainkit.decisions import after_baseline, learned

    # an imbalanced val: accuracy 0.88 at a majority share of 0.86 would be A at target 0.87
    option, _, reason = after_baseline(
        status="completed", learned=True, best=0.88, target=0.87, attempt=1, max_restarts=2
    )
    assert option == "A" and "val accuracy" in reason
    # the same run judged by balanced accuracy (0.61) is B, and says which metric it read
    option, _, reason = after_baseline(
        status="completed", learned=True, best=0.61, target=0.87, attempt=1, max_restarts=2, metric="balanced_accuracy"
    )
    assert option == "B" and "balanced accuracy 0.6100" in reason
    hist = [{"train_loss": 0.5, "val_accuracy": 0.86, "val_score": 0.5}]
    ok, why = learned(0.7, hist, chance_score("balanced_accuracy", [86, 14]), "balanced_accuracy")
    assert not ok and "balanced accuracy 0.500" in why  # the majority predictor has not learned
    hist[0]["val_score"] = 0.7
    assert learned(0.7, hist, 0.5, "balanced_accuracy")[0]


@pytest.mark.slow  # trains
def test_a_tie_on_the_metric_is_broken_by_the_val_loss_so_training_goes_on():
    """20:1:1 classes at a small SGD LR: val accuracy sits at the majority share for epochs while the
    val loss falls. Before, patience 2 stopped this fit at epoch 3 with epoch 1 as its best."""
    from trainkit.data import load_data
    from trainkit.testing import tiny_config
    from trainkit.train import fit

    cfg = tiny_config(
        {
            "data.source": "trainkit.testing:imbalanced_tabular",
            "training.epochs": 6,
            "training.patience": 2,
            "model.kwargs": {"hidden": [8]},
            "optimizer.name": "sgd",
            "optimizer.lr": 1e-3,
        }
    )
    r = fit(cfg, load_data(cfg), None, progress=False)
    accs, losses = [h["val_accuracy"] for h in r.history], [h["val_loss"] for h in r.history]
    assert len(set(accs)) == 1 and losses == sorted(losses, reverse=True)  # the planted situation
    assert r.status == "completed" and len(r.history) == 6
    assert r.best["epoch"] == 5  # the same accuracy at the lowest val loss


def test_a_model_that_beats_the_class_prior_has_learned_even_at_the_majority_share():
    from trainkit.decisions import learned
    from trainkit.metrics import prior_loss

    prior = prior_loss([1970, 130], [422, 28])  # 6% positives
    assert prior == pytest.approx(0.233, abs=0.002)
    chance = 422 / 450
    beyond = [{"train_loss": 0.19, "val_loss": 0.19, "val_accuracy": chance}]
    only_prior = [{"train_loss": 0.237, "val_loss": 0.239, "val_accuracy": chance}]
    assert learned(0.504, beyond, chance, prior=prior)[0]
    ok, why = learned(0.504, only_prior, chance, prior=prior)
    assert not ok and "class prior's 0.233" in why  # the loss fell to the prior and no further: nothing learned
    assert not learned(0.504, beyond, chance)[0]  # without the prior the accuracy rule alone cannot tell


def test_learning_the_class_prior_and_no_clear_more_is_inconclusive_and_diagnosed_not_restarted():
    from trainkit.decisions import after_baseline, learning_verdict
    from trainkit.metrics import prior_loss

    prior = prior_loss([1970, 130], [422, 28])
    chance = 422 / 450
    # the churn table's conservative baseline: loss 0.503 → 0.220, val loss 0.230 against the prior's 0.233
    hist = [{"train_loss": 0.22, "val_loss": 0.230, "val_accuracy": chance}]
    state, why = learning_verdict(0.503, hist, chance, prior=prior)
    assert state == "inconclusive" and "class prior learned" in why
    option, nxt, reason = after_baseline(
        status="completed", learned=False, best=chance, target=0.93, attempt=1, max_restarts=2, inconclusive=why
    )
    assert (option, nxt) == ("B", "03_diagnostics") and reason.startswith("inconclusive learning")
    # a loss that did not fall, or a val loss worse than the constant predictor's, is a failure
    assert (
        learning_verdict(0.503, [{"train_loss": 0.50, "val_loss": 0.5, "val_accuracy": chance}], chance, prior=prior)[0]
        == "failed"
    )
    assert (
        learning_verdict(0.503, [{"train_loss": 0.2, "val_loss": 0.30, "val_accuracy": chance}], chance, prior=prior)[0]
        == "failed"
    )
    option, _, _ = after_baseline(
        status="completed", learned=False, best=chance, target=0.93, attempt=1, max_restarts=2
    )
    assert option == "C"
    # a crash or a non-finite loss stays a failure whatever else is said
    assert (
        after_baseline(
            status="nonfinite", learned=False, best=chance, target=0.93, attempt=1, max_restarts=2, inconclusive=why
        )[0]
        == "C"
    )
