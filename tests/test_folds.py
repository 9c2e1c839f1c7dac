"""Small data (#21): k-fold views over train+val, the epoch count the folds choose, and Phase 5's
refit on train+val when the val split is small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trainkit.data import load_data
from trainkit.folds import MAX_FOLDS, SMALL_VAL_ROWS, chosen_epochs, fold_view, plan_for, refit_view
from trainkit.testing import run_phase_inprocess, tiny_config
from trainkit.train import fit


def _small_table(tmp_path, n=180, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "colour": rng.choice(["red", "blue"], n), "label": y})
    p = tmp_path / "small.csv"
    df.to_csv(p, index=False)
    return {"data.source": "csv", "data.root": str(p), "data.label": "label", "data.batch_size": 32}


def test_folds_are_stratified_disjoint_and_cover_train_plus_val(tmp_path):
    cfg = tiny_config(_small_table(tmp_path))
    bundle = load_data(cfg)
    plan = plan_for(bundle)
    assert (
        plan is not None
        and plan["k"] == 5
        and plan["val_rows"] < SMALL_VAL_ROWS
        and "never the test rows" in plan["rule"]
    )
    pool = set(bundle.splits["train"]) | set(bundle.splits["val"])
    vals = []
    for i in range(plan["k"]):
        v = fold_view(bundle, i, plan["k"])
        tr, va = set(v.splits["train"]), set(v.splits["val"])
        assert not tr & va and tr | va == pool
        assert not (tr | va) & set(bundle.splits["test"])  # the test rows never enter a fold
        np.testing.assert_array_equal(v.splits["test"], bundle.splits["test"])
        share = float(v.split_labels("val").float().mean())
        assert abs(share - float(bundle.split_labels("train").float().mean())) < 0.12  # stratified
        vals.append(va)
    assert set().union(*vals) == pool and sum(len(v) for v in vals) == len(pool)  # each row is val exactly once
    assert set(refit_view(bundle).splits["train"]) == pool


def test_a_class_of_one_row_is_val_in_one_fold_without_a_warning_on_the_console(tmp_path, recwarn):
    """scikit-learn warns that the least populated class has fewer rows than folds: as planned,
    that row is val in one fold and train in the others, and the console is quiet. The row does
    not decide k (no k puts it in every fold's val): the other classes do."""
    from trainkit.folds import _labels, _pool

    cfg = _small_table(tmp_path)
    df = pd.read_csv(cfg["data.root"])
    df.loc[3, "label"] = "maybe"
    df.to_csv(cfg["data.root"], index=False)
    bundle = load_data(tiny_config(cfg))
    plan, pool = plan_for(bundle), _pool(bundle)
    (row,) = pool[_labels(bundle, pool) == bundle.source.class_names.index("maybe")]  # in train or val, not test
    vals = [set(fold_view(bundle, i, plan["k"]).splits["val"]) for i in range(plan["k"])]
    assert plan["k"] == MAX_FOLDS and sum(row in v for v in vals) == 1
    assert not [w for w in recwarn if "least populated" in str(w.message)]


def test_a_refit_view_holds_each_train_and_val_row_once_for_phase_5s_references(tmp_path):
    """Phase 5's bundle after a refit is a refit view (its train holds val): the references fitted
    on "train+val" and the shared-record count see each of those rows once, not the val rows twice."""
    from trainkit.data import Quarantine
    from trainkit.phases.peers import reference_recall

    b = load_data(tiny_config(_small_table(tmp_path, n=600)), quarantine=Quarantine(open=True, who="05_finalization"))
    v = refit_view(b)
    assert len(refit_view(v).splits["train"]) == len(v.splits["train"]) == len(b.splits["train"]) + len(b.splits["val"])
    np.testing.assert_array_equal(refit_view(v).splits["train"], v.splits["train"])
    xt, yt = (t.numpy() for t in b.arrays("test", reason="test"))
    on_view, on_bundle = reference_recall(v, xt, yt), reference_recall(b, xt, yt)
    assert {n: (r["accuracy"], r["recall"]) for n, r in on_view.items()} == {
        n: (r["accuracy"], r["recall"]) for n, r in on_bundle.items()
    }


def test_a_large_val_split_uses_no_folds():
    assert plan_for(load_data(tiny_config())) is None  # digits: 269 val rows


def test_a_refit_trains_the_epochs_to_the_best_one_scaled_by_the_rows():
    from trainkit.folds import refit_epochs

    assert refit_epochs(9, 700, 300) == 14  # best at the 10th epoch; 1000 rows per epoch instead of 700
    assert refit_epochs(0, 2100, 450) == 1 and refit_epochs(11, 2450, 525) == 15


def test_the_folds_choose_the_epoch_of_lowest_val_loss():
    rows = [{"history": [{"val_loss": v} for v in losses]} for losses in ([3, 2, 1, 2], [3, 1, 2, 2], [3, 2, 1.5, 1])]
    assert chosen_epochs(rows) == 3
    assert chosen_epochs([{"best_epoch": 4}, {"best_epoch": 6}, {"best_epoch": 1}]) == 5
    assert chosen_epochs([]) is None


@pytest.mark.slow  # trains
def test_select_last_keeps_the_last_epoch():
    cfg = tiny_config({"training.epochs": 3})
    r = fit(cfg, load_data(cfg), None, progress=False, select="last")
    assert r.best["epoch"] == 2


@pytest.mark.slow
def test_phase5_refits_a_small_table_on_train_plus_val_for_the_folds_epochs(tmp_path):
    data = _small_table(tmp_path)
    cfg = tiny_config(
        {
            **data,
            "training.epochs": 6,
            "training.patience": None,
            "target.value": 0.5,
            "model.kwargs": {"hidden": [16]},
            "final.epochs": 8,
        }
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = tmp_path / "run"
    run_phase_inprocess("01_planning", run, config_path=str(path))
    run_phase_inprocess("02_baseline", run, attempt=1)
    assert json.loads((run / "02_baseline/attempt-1/decision.json").read_text())["next"] == "05_finalization"
    run_phase_inprocess("05_finalization", run, approvals={"stakeholder_approval": "tester"})
    fin = run / "05_finalization"
    ref = json.loads((fin / "refit.json").read_text())
    assert ref["k"] == 5 and ref["folds_used"] == 5 and ref["source"] == "folds run in Phase 5"
    assert ref["epochs"] == chosen_epochs(ref["fold_runs"]) and 1 <= ref["epochs"] <= 8  # the final config's epochs
    summary = json.loads((fin / "train_summary.json").read_text())
    assert len(summary["history"]) == ref["epochs"] and summary["best"]["epoch"] == ref["epochs"] - 1  # the last epoch
    sizes = json.loads((run / "01_planning/splits.json").read_text())["sizes"]
    assert ref["rows"] == sizes["train"] + sizes["val"]
    assert "small data: trained on train+val" in (fin / "test_results.md").read_text()
    # its val rows are training rows: the val numbers (and val_test_agree) are the folds' estimate
    test = json.loads((fin / "test_evaluation.json").read_text())
    accs = [r["best_val_accuracy"] for r in ref["fold_runs"]]
    assert test["val_accuracy"] == pytest.approx(float(np.mean(accs)), abs=1e-9), (test["val_accuracy"], accs)
    assert "folds' cross-validated estimate" in (fin / "test_results.md").read_text()
    gate = {c["id"]: c["evidence"] for c in json.loads((fin / "gate.json").read_text())["checks"]}
    assert f"val accuracy {test['val_accuracy']:.4f}" in gate["val_test_agree"], gate["val_test_agree"]
    assert "folds' cross-validated estimate" in gate["val_test_agree"], gate["val_test_agree"]


def test_small_datas_val_numbers_are_the_folds_mean_with_an_interval_no_narrower_than_its_rows_allow():
    from trainkit.folds import folds_estimate

    runs = [{"best_val_accuracy": a, "best_val_score": a} for a in (0.80, 0.84, 0.82)]
    est = folds_estimate({"k": 3, "rows": 150, "fold_runs": runs})
    lo, hi = est["val_accuracy_ci"]
    assert est["val_accuracy"] == pytest.approx(0.82) and est["val_score_ci"] == [lo, hi]
    assert hi - lo >= 2 * 1.96 * (0.82 * 0.18 / 150) ** 0.5 - 1e-12  # a proportion over 150 rows, at least
    same = [{"best_val_accuracy": 1.0, "best_val_score": 1.0}] * 3  # no spread, no width below 0 or above 1
    assert folds_estimate({"k": 3, "rows": 150, "fold_runs": same})["val_accuracy_ci"] == [1.0, 1.0]
    assert folds_estimate({"k": 3, "rows": 150, "fold_runs": runs[:1]}) is None
    assert folds_estimate({"rule": "a table", "rows": 150}) is None  # a table's refit has its selection run instead
    # a regression's metric, in the label's units: the folds' spread, errors never below 0, R² never above 1
    errs = [{"best_val_accuracy": None, "best_val_score": v} for v in (10.0, 12.0, 14.0)]
    est = folds_estimate({"k": 3, "rows": 150, "fold_runs": errs}, "rmse")
    assert est["val_score"] == pytest.approx(12.0) and "val_accuracy" not in est
    assert est["val_score_ci"] == pytest.approx([12.0 - 1.96 * 2 / 3**0.5, 12.0 + 1.96 * 2 / 3**0.5])
    phase4 = [dict(r, best_val_metric=r["best_val_score"], best_val_score=0.8) for r in errs]  # 0.8: a skill
    assert folds_estimate({"k": 3, "rows": 150, "fold_runs": phase4}, "rmse")["val_score"] == pytest.approx(12.0)
    # the record's val numbers come from the folds only when the final model is their refit
    from types import SimpleNamespace

    from trainkit.phases.final_numbers import folds_val

    refit = {"k": 3, "rows": 150, "fold_runs": errs}
    assert folds_val(SimpleNamespace(refit=refit, reused=None), "rmse")["val_score"] == pytest.approx(12.0)
    assert folds_val(SimpleNamespace(refit=refit, reused="02_baseline/attempt-1"), "rmse") is None  # time ran out
    r2 = [{"best_val_accuracy": None, "best_val_score": v} for v in (0.9, 0.99, 0.999)]
    assert folds_estimate({"k": 3, "rows": 150, "fold_runs": r2}, "r2")["val_score_ci"][1] == 1.0


def _table_through_phase_5(tmp_path):
    """1 → 2 → 5 on a csv table whose val split is not small (225 rows)."""
    data = _small_table(tmp_path, n=1500)
    overrides = {"training.epochs": 4, "target.value": 0.5, "model.kwargs": {"hidden": [16]}}
    cfg = tiny_config({**data, **overrides, "final.epochs": 10, "final.patience": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = tmp_path / "run"
    run_phase_inprocess("01_planning", run, config_path=str(path))
    run_phase_inprocess("02_baseline", run, attempt=1)
    run_phase_inprocess("05_finalization", run, approvals={"stakeholder_approval": "tester"})
    return run


@pytest.mark.slow
def test_phase5_refits_a_table_on_train_plus_val_after_an_early_stopped_run(tmp_path):
    """A table whose val split is not small (docs/design.md, "Phase 5"): the final config trains on
    train with early stopping (selection/, the val numbers), then the final model on train+val for
    that run's epochs to its best, scaled by the rows; reproduced, frozen, and said in the report."""
    from trainkit.config import config_hash, load_config
    from trainkit.folds import refit_epochs

    run = _table_through_phase_5(tmp_path)
    fin = run / "05_finalization"
    sizes = json.loads((run / "01_planning/splits.json").read_text())["sizes"]
    assert sizes["val"] >= SMALL_VAL_ROWS
    sel = json.loads((fin / "selection" / "train_summary.json").read_text())
    ref = json.loads((fin / "refit.json").read_text())
    assert ref["selection"] == "selection" and ref["best_epoch"] == sel["best"]["epoch"]
    assert ref["epochs"] == refit_epochs(sel["best"]["epoch"], sizes["train"], sizes["val"])
    assert ref["rows"] == sizes["train"] + sizes["val"]
    final = load_config(fin / "final_config.yaml")
    assert final.training.epochs == ref["epochs"] and final.training.patience is None
    assert config_hash(load_config(fin / "selection" / "training_config.yaml")) != config_hash(final)
    summary = json.loads((fin / "train_summary.json").read_text())
    assert len(summary["history"]) == ref["epochs"] and summary["best"]["epoch"] == ref["epochs"] - 1
    gate = {c["id"]: c["status"] for c in json.loads((fin / "gate.json").read_text())["checks"]}
    assert gate["config_frozen"] == gate["reproducible"] == "pass", gate
    assert "a table: trained on train+val" in (fin / "test_results.md").read_text()
    test = json.loads((fin / "test_evaluation.json").read_text())  # val: the early-stopped model's, never trained on
    assert abs(test["val_accuracy"] - sel["best"]["val_accuracy"]) < 1e-6, (test["val_accuracy"], sel["best"])


@pytest.mark.slow
def test_with_no_time_for_the_refit_the_early_stopped_run_is_the_final_model(tmp_path, monkeypatch):
    from trainkit.budget import PhaseClock
    from trainkit.config import load_config

    allows = PhaseClock.allows

    def no_time_for_the_refit(self, seconds, what, record=True):
        if "refit" in what:  # as the clock answers when the time left is shorter than the refit
            return allows(self, self.left() + 1.0, what, record)
        return allows(self, seconds, what, record)

    monkeypatch.setattr(PhaseClock, "allows", no_time_for_the_refit)
    fin = _table_through_phase_5(tmp_path) / "05_finalization"
    assert not (fin / "refit.json").exists()
    sel = json.loads((fin / "selection" / "train_summary.json").read_text())
    assert json.loads((fin / "train_summary.json").read_text())["history"] == sel["history"]
    best = fin / "checkpoints" / "best.pt"
    assert best.read_bytes() == (fin / "selection" / "checkpoints" / "best.pt").read_bytes()
    assert load_config(fin / "final_config.yaml").training.patience == 2  # the extended-patience run's config
    assert "the refit on train+val" in [c["what"] for c in json.loads((fin / "budget.json").read_text())["cuts"]]
    gate = {c["id"]: c["status"] for c in json.loads((fin / "gate.json").read_text())["checks"]}
    assert gate["config_frozen"] == gate["reproducible"] == "pass", gate
    assert "a table: trained on train+val" not in (fin / "test_results.md").read_text()


@pytest.mark.slow
def test_a_deadline_inside_the_early_stopped_run_makes_it_the_final_model_with_the_cut_recorded(tmp_path, monkeypatch):
    """Phase 5's deadline arrives during the run on train (selection/): there is no refit; what that
    run trained is the final model, the cut says what was not done, and the gate still holds."""
    import trainkit.train as train
    from trainkit.config import load_config

    late = train._late

    def deadline_after_two_selection_epochs(lp, pr, deadline):
        if lp.ckpt_dir is not None and "selection" in Path(lp.ckpt_dir).parts and len(pr.history) >= 2:
            return True  # as _late answers once the next epoch would end past the deadline
        return late(lp, pr, deadline)

    monkeypatch.setattr(train, "_late", deadline_after_two_selection_epochs)
    fin = _table_through_phase_5(tmp_path) / "05_finalization"
    sel = json.loads((fin / "selection" / "train_summary.json").read_text())
    assert sel["status"] == "time_budget" and len(sel["history"]) == 2
    assert not (fin / "refit.json").exists()
    assert json.loads((fin / "train_summary.json").read_text())["history"] == sel["history"]
    best = fin / "checkpoints" / "best.pt"
    assert best.read_bytes() == (fin / "selection" / "checkpoints" / "best.pt").read_bytes()
    assert load_config(fin / "final_config.yaml").training.patience == 2
    cuts = [c["what"] for c in json.loads((fin / "budget.json").read_text())["cuts"]]
    assert "the rest of the final training and its refit on train+val" in cuts, cuts
    gate = {c["id"]: c["status"] for c in json.loads((fin / "gate.json").read_text())["checks"]}
    assert gate["config_frozen"] == gate["reproducible"] == "pass", gate
    assert "a table: trained on train+val" not in (fin / "test_results.md").read_text()
