"""Every row of the seed's decision table (docs/design.md), through the pure functions of
``trainkit.decisions``, with the template's default thresholds."""

from __future__ import annotations

import pytest

from trainkit import decisions as D
from trainkit.config import BudgetConfig

B = BudgetConfig()  # defaults: clear 5, marginal 3, diminishing 2, 3 iterations, 2 restarts


def _p2(**kw):
    args = {"status": "completed", "learned": True, "best": 0.90, "target": 0.95, "attempt": 1, "max_restarts": 2}
    return D.after_baseline(**{**args, **kw})


def _p3(**kw):
    args = {"expected_gain": 8.0, "fix": None, "needs_fix": False, "manual_fix": None, "restarts_left": 2, "budget": B}
    return D.after_diagnostics(**{**args, **kw})


def _p4(**kw):
    args = {
        "candidate_mean": 0.93,
        "best_mean": 0.93,
        "baseline_mean": 0.90,
        "significant": True,
        "target": 0.95,
        "gains": [3.0],
        "iteration": 1,
        "budget": B,
    }
    return D.after_optimization(**{**args, **kw})


# (row of the table, call, expected option, expected next)
ROWS = [
    ("Phase 1: gate passed → Phase 2", lambda: D.after_planning(), "-", "02_baseline"),
    ("Phase 2 A: val ≥ target → Phase 5", lambda: _p2(best=0.96), "A", "05_finalization"),
    ("Phase 2 A: val exactly at target", lambda: _p2(best=0.95), "A", "05_finalization"),
    ("Phase 2 B: val < target → Phase 3", lambda: _p2(best=0.90), "B", "03_diagnostics"),
    (
        "Phase 2 C: crashed → Phase 3 failed mode",
        lambda: _p2(status="crashed", learned=False, best=None),
        "C",
        "03_diagnostics",
    ),
    ("Phase 2 C: NaN/Inf loss", lambda: _p2(status="nonfinite", best=0.5), "C", "03_diagnostics"),
    ("Phase 2 C: no learning", lambda: _p2(learned=False, best=0.1), "C", "03_diagnostics"),
    (
        "Phase 2 B: cut by the budget before it showed learning is inconclusive, not failed",
        lambda: _p2(status="time_budget", learned=False, best=0.12, epochs=1),
        "B",
        "03_diagnostics",
    ),
    ("Phase 2 C: at most 2 restarts, then stop", lambda: _p2(learned=False, best=0.1, attempt=3), "C", "stop"),
    (
        "Phase 2 C: the second restart is still allowed",
        lambda: _p2(learned=False, best=0.1, attempt=2),
        "C",
        "03_diagnostics",
    ),
    ("Phase 3 A: expected gain > 5 points → Phase 4", lambda: _p3(expected_gain=8.0), "A", "04_optimization"),
    ("Phase 3 A marginal: gain between 3 and 5", lambda: _p3(expected_gain=4.0), "A", "04_optimization"),
    (
        "Phase 3 A: a strong finding with the target missed",
        lambda: _p3(expected_gain=1.0, strong="overfitting", gap=4.0),
        "A",
        "04_optimization",
    ),
    ("Phase 3 B: expected gain < 3 points → Phase 5", lambda: _p3(expected_gain=1.0), "B", "05_finalization"),
    (
        "Phase 3 C: infrastructure issue with a fix → restart Phase 2",
        lambda: _p3(needs_fix=True, fix={"optimizer.lr": 1e-3}),
        "C",
        "02_baseline",
    ),
    (
        "Phase 3 C: a fix but no restarts left",
        lambda: _p3(needs_fix=True, fix={"optimizer.lr": 1e-3}, restarts_left=0),
        "C",
        "stop",
    ),
    ("Phase 3 C: a manual fix only", lambda: _p3(needs_fix=True, manual_fix="repair the files"), "C", "stop"),
    ("Phase 4 A: val ≥ target → Phase 5", lambda: _p4(candidate_mean=0.96, best_mean=0.96), "A", "05_finalization"),
    ("Phase 4 B: improved, still < target → iterate", lambda: _p4(), "B", "04_optimization"),
    (
        "Phase 4 B: improved, the moves used up → re-diagnose the new best",
        lambda: _p4(moves_left=False),
        "B",
        "03_diagnostics",
    ),
    (
        "Phase 4 B: the moves used up and no diagnosis round left → Phase 5",
        lambda: _p4(moves_left=False, iteration=3, rounds=3, gains=[3.0, 3.0, 3.0]),
        "B",
        "05_finalization",
    ),
    ("Phase 4 B: at most 3 iterations", lambda: _p4(iteration=3, gains=[3.0, 3.0, 3.0]), "B", "05_finalization"),
    (
        "Phase 4 C: no improvement over the baseline → Phase 3",
        lambda: _p4(candidate_mean=0.89, best_mean=0.90, significant=False, gains=[0.0]),
        "C",
        "03_diagnostics",
    ),
    (
        "Phase 4 C: no improvement after the last diagnosis round",
        lambda: _p4(candidate_mean=0.89, best_mean=0.90, significant=False, gains=[0.0], rounds=3),
        "C",
        "05_finalization",
    ),
    (
        "Phase 4 D: two iterations in a row gained < 2 points",
        lambda: _p4(best_mean=0.92, iteration=2, gains=[1.0, 1.5]),
        "D",
        "05_finalization",
    ),
    (
        "Phase 5: production gate passed and signed → deploy",
        lambda: D.after_finalization(gate="passed", missing=[], how="-"),
        "-",
        "deploy",
    ),
    (
        "Phase 5: gate not passed → blocked, says what is missing",
        lambda: D.after_finalization(gate="awaiting_signoff", missing=["stakeholder_approval (pending)"], how="sign"),
        "-",
        "blocked",
    ),
]


@pytest.mark.parametrize("row,call,option,nxt", ROWS, ids=[r[0] for r in ROWS])
def test_every_row_of_the_decision_table(row, call, option, nxt):
    got_option, got_next, reason = call()
    assert (got_option, got_next) == (option, nxt), reason
    assert reason


def test_the_blocked_production_decision_names_what_is_missing_and_how_to_finish():
    _, _, reason = D.after_finalization(
        gate="blocked", missing=["test_meets_target (fail)"], how="trainkit signoff ..."
    )
    assert "test_meets_target" in reason and "trainkit signoff" in reason


@pytest.mark.parametrize(
    "phase,left,routed",
    [
        ("03_diagnostics", 0.0, "05_finalization"),
        ("04_optimization", -5.0, "05_finalization"),
        ("04_optimization", 30.0, None),
        ("05_finalization", -5.0, None),  # Phase 5 is never skipped
        ("02_baseline", -5.0, None),
    ],
)
def test_any_phase_over_the_budget_accepts_the_best_and_finalizes(phase, left, routed):
    assert D.route_over_budget(phase, left) == routed


def test_learning_needs_the_loss_to_fall_and_val_to_beat_chance():
    hist = [{"train_loss": 1.0, "val_accuracy": 0.5}, {"train_loss": 0.5, "val_accuracy": 0.8}]
    assert D.learned(2.3, hist, 0.1)[0]
    assert not D.learned(2.3, [{"train_loss": 2.29, "val_accuracy": 0.8}], 0.1)[0]  # the loss did not fall
    assert not D.learned(2.3, hist, 0.80)[0]  # val no better than the majority share
    assert D.learned(2.3, [], 0.1) == (False, "no completed epoch")


def test_a_model_that_learned_imbalanced_classes_has_learned():
    """12% positives: the loss fell from 0.754 to 0.255 and val beats the 0.880 majority share."""
    hist = [{"train_loss": 0.40, "val_accuracy": 0.880}, {"train_loss": 0.255, "val_accuracy": 0.899}]
    assert D.learned(0.754, hist, 0.880)[0]
    prior_only = [{"train_loss": 0.36, "val_accuracy": 0.880}]  # learned the class prior: exactly the majority share
    assert not D.learned(0.754, prior_only, 0.880)[0]
    stalled = [{"train_loss": 0.75, "val_accuracy": 0.885}]  # val a hair above, the loss never fell
    assert not D.learned(0.754, stalled, 0.880)[0]


def test_nothing_moves_a_re_diagnosis_proposing_the_families_just_measured_goes_to_phase_5():
    b = BudgetConfig()
    common = dict(
        expected_gain=9.0,
        fix=None,
        needs_fix=False,
        manual_fix=None,
        restarts_left=2,
        budget=b,
        strong="underfitting (strength 3.0)",
        gap=4.0,
    )
    option, nxt, reason = D.after_diagnostics(**common, stale=(["optimization"], ["architecture", "optimization"]))
    assert (option, nxt) == ("B", "05_finalization")
    assert "nothing moves" in reason and "optimization" in reason and "best so far" in reason
    assert "none of its architecture and optimization moves" in reason and "only optimization moves" in reason
    # a new family is worth an iteration; so is any round after an iteration that adopted something (stale None)
    assert D.after_diagnostics(**common, stale=(["architecture", "sampling"], ["architecture"]))[:2] == (
        "A",
        "04_optimization",
    )
    assert D.after_diagnostics(**common, stale=None)[:2] == ("A", "04_optimization")
    assert D.after_diagnostics(**common, stale=([], ["architecture"]))[:2] == ("A", "04_optimization")
    # an infrastructure fix is never skipped for it
    fixed = dict(common, needs_fix=True, fix={"optimizer.lr": 0.001})
    assert D.after_diagnostics(**fixed, stale=(["optimization"], ["optimization"]))[:2] == ("C", "02_baseline")


def test_a_moves_family_is_what_its_patch_changes():
    from trainkit.diagnostics import move_family

    assert move_family({"model.name": "tabm", "model.kwargs": {}}) == "architecture"
    assert move_family({"model.kwargs": {"hidden": [64, 64]}}) == "architecture"
    assert move_family({"optimizer.lr": 0.003}) == move_family({"schedule.name": "cosine"}) == "optimization"
    assert move_family({"training.epochs": 40, "training.patience": 10}) == "length"
    assert (
        move_family({"training.class_weighting": "balanced"}) == move_family({"data.sampler": "balanced"}) == "sampling"
    )
    assert move_family({"optimizer.weight_decay": 0.01}) == "regularization"
    assert move_family({"data.exclude": "exclude.json"}) == "data"


def test_a_decision_unpacks_as_a_triple_and_carries_typed_flags():
    marginal = _p3(expected_gain=4.0)  # between budget.marginal_gain_points and clear_gain_points
    option, nxt, reason = marginal
    assert (option, nxt) == ("A", "04_optimization") and marginal.marginal and marginal[:2] == ("A", "04_optimization")
    clear = _p3(expected_gain=8.0)
    assert clear.option == "A" and not clear.marginal
    assert D.restarts_left(2, 1) == 2 and D.restarts_left(2, 3) == 0  # the first attempt is not a restart


ROUTES = [  # (phase, gate, option, next, --stop-after, over budget) → (action, next, budget cut)
    (("02_baseline", "blocked", "B", "03_diagnostics", None, False), ("blocked", None, False)),
    (("02_baseline", "blocked", "C", "03_diagnostics", None, False), ("continue", "03_diagnostics", False)),
    (("05_finalization", "awaiting_signoff", "-", "blocked", None, False), ("signoff", None, False)),
    (("03_diagnostics", "passed", "A", "04_optimization", None, True), ("continue", "05_finalization", True)),
    (("02_baseline", "passed", "B", "03_diagnostics", 2, False), ("stopped", "03_diagnostics", False)),
    (("02_baseline", "blocked", "C", "03_diagnostics", 3, False), ("continue", "03_diagnostics", False)),
    (("03_diagnostics", "passed", "A", "04_optimization", 3, True), ("stopped", "05_finalization", True)),
    (("05_finalization", "passed", "-", "deploy", 5, False), ("stopped", "deploy", False)),
    (("05_finalization", "passed", "-", "deploy", None, False), ("deploy", "deploy", False)),
    (("02_baseline", "passed", "C", "stop", None, False), ("stop", "stop", False)),
    (("02_baseline", "passed", "C", "stop", 1, False), ("stopped", "stop", False)),
]


@pytest.mark.parametrize("given,expected", ROUTES)
def test_the_route_after_a_phase_is_one_pure_decision(given, expected):
    phase, gate, option, nxt, stop_after, over = given
    to = D.route(phase=phase, gate=gate, option=option, next_phase=nxt, stop_after=stop_after, over_budget=over)
    assert (to.action, to.next, to.budget_cut) == expected


RESUMES = [  # (last phase, gate, option, next, ran out before its gate) → (action, where)
    (("05_finalization", "passed", "-", "blocked", True), ("deploy", "deploy")),
    (("03_diagnostics", "passed", "A", "04_optimization", True), ("continue", "04_optimization")),
    (("02_baseline", "passed", "A", None, True), ("done", None)),
    (("02_baseline", "blocked", "C", "03_diagnostics", True), ("continue", "03_diagnostics")),
    (("02_baseline", "blocked", "C", "stop", True), ("rerun", "02_baseline")),
    (("02_baseline", None, None, None, True), ("in_place", "02_baseline")),
    (("01_planning", None, None, None, False), ("rerun", "01_planning")),
]


@pytest.mark.parametrize("given,expected", RESUMES)
def test_where_a_resume_starts_is_one_pure_decision(given, expected):
    phase, gate, option, nxt, ran_out = given
    to = D.resume_route(phase=phase, gate=gate, option=option, next_phase=nxt, ran_out=ran_out)
    assert (to.action, to.next) == expected
