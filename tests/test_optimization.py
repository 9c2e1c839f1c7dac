"""Phase 4: decisions A-D and the limits, the seed statistics, Optuna workers sharing one study."""

import json
import sqlite3
import subprocess

import pytest
import yaml

from trainkit.config import BudgetConfig
from trainkit.decisions import after_diagnostics, after_optimization
from trainkit.phases.optimization import seed_stats
from trainkit.testing import tiny_config

B = BudgetConfig()


def _opt(**kw):
    args = dict(
        candidate_mean=0.93,
        best_mean=0.93,
        baseline_mean=0.90,
        significant=True,
        target=0.97,
        gains=[3.0],
        iteration=1,
        budget=B,
        rounds=1,
    )
    args.update(kw)
    return after_optimization(**args)


def test_phase4_option_a_when_target_reached():
    assert _opt(candidate_mean=0.975, best_mean=0.975)[:2] == ("A", "05_finalization")


def test_phase4_option_b_iterates_while_improving():
    assert _opt()[:2] == ("B", "04_optimization")


def test_phase4_option_c_back_to_diagnosis_without_improvement():
    assert _opt(candidate_mean=0.899, best_mean=0.90, significant=False, gains=[0.0])[:2] == ("C", "03_diagnostics")


def test_phase4_option_c_finalizes_when_diagnosis_rounds_are_used_up():
    assert _opt(best_mean=0.90, significant=False, gains=[0.0], rounds=3)[:2] == ("C", "05_finalization")


def test_phase4_option_d_after_two_small_gains():
    assert _opt(best_mean=0.94, gains=[5.0, 1.0, 1.5], iteration=3)[:2] == ("D", "05_finalization")
    assert _opt(best_mean=0.94, gains=[1.0, 3.0], iteration=2)[:2] == (
        "B",
        "04_optimization",
    )  # one small gain is not D


def test_phase4_iteration_limit():
    assert _opt(best_mean=0.94, gains=[3.0, 3.0, 3.0], iteration=3)[:2] == ("B", "05_finalization")
    limited = BudgetConfig(max_optimization_iterations=1)
    assert _opt(budget=limited)[:2] == ("B", "05_finalization")


@pytest.mark.parametrize(
    "gain,option,nxt", [(9.0, "A", "04_optimization"), (4.0, "A", "04_optimization"), (1.0, "B", "05_finalization")]
)
def test_phase3_options_by_expected_gain(gain, option, nxt):
    o, n, reason = after_diagnostics(
        expected_gain=gain, fix=None, needs_fix=False, manual_fix=None, restarts_left=2, budget=B
    )
    assert (o, n) == (option, nxt)
    assert ("marginal" in reason) == (gain == 4.0)


def test_phase3_option_c_restarts_phase2_or_stops():
    assert after_diagnostics(
        expected_gain=0, fix={"optimizer.lr": 0.1}, needs_fix=True, manual_fix=None, restarts_left=1, budget=B
    )[:2] == ("C", "02_baseline")
    assert after_diagnostics(
        expected_gain=0, fix={"optimizer.lr": 0.1}, needs_fix=True, manual_fix=None, restarts_left=0, budget=B
    )[:2] == ("C", "stop")
    o, n, why = after_diagnostics(
        expected_gain=0, fix=None, needs_fix=True, manual_fix="fix the model", restarts_left=2, budget=B
    )
    assert (o, n) == ("C", "stop") and "fix the model" in why


def test_seed_stats_difference_and_interval():
    s = seed_stats([0.90, 0.91, 0.89], [0.95, 0.96, 0.94])
    assert s["diff"] == pytest.approx(0.05)
    assert s["ci"][0] < 0.05 < s["ci"][1] and s["ci"][0] > 0
    assert s["exceeds_spread"]
    noisy = seed_stats([0.90, 0.95, 0.85], [0.91, 0.96, 0.86])
    assert not noisy["exceeds_spread"] and noisy["ci"][0] < 0


@pytest.mark.slow
def test_two_optuna_workers_fill_one_sqlite_study(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config({"training.epochs": 3}).model_dump(mode="json")))
    db = tmp_path / "study.db"
    r = subprocess.run(
        [
            "trainkit",
            "sweep",
            str(tmp_path / "run"),
            "--config",
            str(cfg),
            "--workers",
            "2",
            "--trials",
            "6",
            "--storage",
            f"sqlite:///{db}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    with sqlite3.connect(db) as con:
        numbers = sorted(n for (n,) in con.execute("select number from trials"))
        states = {s for (s,) in con.execute("select state from trials")}
        threads = [
            json.loads(v)
            for (k, v) in con.execute("select key, value_json from trial_user_attributes")
            if k == "torch_threads"
        ]
    assert numbers == list(range(6))  # none lost, none duplicated
    from trainkit.sweep import worker_threads

    assert len(threads) == 6 and set(threads) == {worker_threads(2)}  # two workers share the cores: no oversubscription
    assert states <= {"COMPLETE", "PRUNED"}
    assert "6 trials" in r.stdout


def test_optimization_templates_are_valid_patches_of_the_baseline():
    from pathlib import Path

    from trainkit.config import apply_overrides, config_to_dict, load_config, validate_config_dict

    base = config_to_dict(load_config(None))
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "optimization").glob("*.yaml"))
    assert {f.stem for f in files} >= {"regularization", "capacity", "lr_schedule", "augmentation"}
    for f in files:
        flat = {}

        def walk(d, pre=""):
            for k, v in d.items():
                if isinstance(v, dict) and k != "kwargs":
                    walk(v, pre + k + ".")
                else:
                    flat[pre + k] = v

        walk(yaml.safe_load(f.read_text()))
        validate_config_dict(apply_overrides(base, flat), str(f))
