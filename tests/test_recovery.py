"""Recovery of a failed baseline (#21): the LR range test read by its own noise, absolute fixes,
a trial fit before a restart, no move of a failed kind twice, no measured candidate proposed
again, and the budget re-planned after the baseline."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from trainkit.budget import CLOCK_ENV, PhaseClock
from trainkit.config import config_to_dict, with_overrides
from trainkit.data import load_data
from trainkit.diagnostics import detect_all, plan_recommendations
from trainkit.diagnostics.lr_range import _lr_curve_problem
from trainkit.diagnostics.recovery import STANDARD_LR, candidate_fixes, trial_fit
from trainkit.run import init_run, record_phase
from trainkit.testing import tiny_config

T = "trainkit.testing:"


def _curve(start, floor, n=100, noise=0.01, blow_up=False, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)
    raw = start - (start - floor) * np.clip((t - 0.3) / 0.4, 0, 1) + rng.normal(0, noise, n)
    if blow_up:
        raw[-10:] = np.linspace(floor, 5 * start, 10)
    ema, out = 0.0, []
    for i, r in enumerate(raw):
        ema = 0.9 * ema + 0.1 * r
        out.append(ema / (1 - 0.9 ** (i + 1)))
    return out, list(raw)


def test_the_lr_curve_is_read_by_its_shape_against_its_own_noise():
    # a 4% fall on a quiet curve that then diverges: a clear minimum (a fixed 10% rule called it flat)
    losses, raws = _curve(1.0, 0.96, noise=0.002, blow_up=True)
    k = int(np.argmin(losses))
    why, stats = _lr_curve_problem(losses, raws, k, diverged=True)
    assert why is None and stats["fall_in_se"] > 4, stats
    # the same 4% fall inside noise ten times larger: flat, inconclusive
    losses, raws = _curve(1.0, 0.96, noise=0.2)
    why, _ = _lr_curve_problem(losses, raws, int(np.argmin(losses)), diverged=False)
    assert why and why.startswith("flat")
    # a minimum before the LR has grown: noisy
    losses, raws = _curve(1.0, 1.0, noise=0.002)
    losses[2] = 0.5
    assert _lr_curve_problem(losses, raws, 2, diverged=False)[0].startswith("noisy")


def _failed_ev(cfg, status="nonfinite", sug=None):
    return {
        "status": status,
        "nonfinite": {"epoch": 0} if status == "nonfinite" else None,
        "history": [],
        "config": config_to_dict(cfg),
        "probes": {"lr_range": {"suggested_lr": sug}},
    }


def test_candidate_fixes_are_absolute_values_and_skip_what_already_failed():
    cfg = tiny_config({"optimizer.name": "sgd", "optimizer.lr": 1e3, "optimizer.momentum": 0.0})
    plan = {"fixes": [], "selected": [{"id": "lr_x3", "patch": {"optimizer.lr": 3e3}, "source": "generic"}]}
    cands = candidate_fixes(plan, _failed_ev(cfg), {"failed_lrs": [], "failed_kinds": []})
    lrs = [c["patch"].get("optimizer.lr") for c in cands]
    assert STANDARD_LR["sgd"] in lrs and 3e3 not in lrs  # never a multiple of the absurd LR
    std = next(c for c in cands if c["id"] == "lr_standard")
    assert (
        std["patch"]["optimizer.momentum"] == 0.9 and std["patch"]["training.grad_clip"] == 1.0
    )  # non-finite: clip too
    with_finder = candidate_fixes(plan, _failed_ev(cfg, sug=0.02), {"failed_lrs": [], "failed_kinds": []})
    assert with_finder[0]["id"] == "lr_finder" and with_finder[0]["patch"]["optimizer.lr"] == 0.02
    # a kind that failed before is not reapplied, nor an LR near one a failed attempt trained at
    again = candidate_fixes(plan, _failed_ev(cfg, sug=0.02), {"failed_lrs": [0.03], "failed_kinds": ["lr_standard"]})
    assert [c["id"] for c in again] == ["adam_standard"]


@pytest.mark.slow
def test_a_trial_fit_tells_a_fix_that_learns_from_one_that_does_not():
    cfg = tiny_config(
        {"data.source": T + "tabular", "model.kwargs": {"hidden": [32]}, "optimizer.name": "sgd", "optimizer.lr": 1e-7}
    )
    bundle = load_data(cfg)
    chance = max(bundle.info["class_counts"]["val"]) / bundle.info["sizes"]["val"]
    stalled = trial_fit(cfg, bundle, 150, chance=chance)
    assert not stalled["learned"] and stalled["steps"] == 150
    fixed = trial_fit(
        with_overrides(cfg, {"optimizer.lr": 0.05, "optimizer.momentum": 0.9}), bundle, 150, chance=chance
    )
    assert fixed["learned"] and fixed["final_train_loss"] < 0.9 * fixed["init_loss"], fixed
    blown = trial_fit(with_overrides(cfg, {"optimizer.lr": 1e6}), bundle, 150, chance=chance)
    assert not blown["learned"] and (
        "non-finite" in blown["why"] or not math.isfinite(blown.get("final_train_loss", 0))
    )


def test_a_near_tie_measured_on_this_config_is_never_proposed_again():
    cfg = tiny_config({"model.kwargs": {"hidden": [512]}})
    hist = [
        {
            "epoch": e,
            "train_loss": 1.0 - 0.09 * e,
            "val_loss": 1.0 - 0.05 * e,
            "train_accuracy": 0.99,
            "val_accuracy": 0.30,
            "lr": 1e-3,
        }
        for e in range(10)
    ]
    ev = {
        "status": "completed",
        "history": hist,
        "best": dict(hist[-1]),
        "init_loss": 2.0,
        "nonfinite": None,
        "crash": None,
        "target": 0.338,
        "config": config_to_dict(cfg),
        "device": "cpu",
        "failed_mode": False,
        "input_shape": [16],
        "num_classes": 4,
        "val_size": 200,
        "probes": {
            "seed_variance": {"seeds": [0, 1, 2], "val_accuracy": [0.3] * 3, "std": 0.005, "range": 0.01, "epochs": 5}
        },
    }
    first = plan_recommendations(detect_all(ev), ev)
    top = [r["id"] for r in first["selected"] if r["kind"] == "accuracy"]
    ev["tried"] = {top[0]: 0.4, top[1]: -1.0}  # a small gain inside the seed spread, and a loss: both measured
    again = plan_recommendations(detect_all(ev), ev)
    assert not {r["id"] for r in again["ranked"]} & set(top[:2])
    assert again["selected"], "the next-strongest moves take their place"


def test_after_the_baseline_the_rest_of_the_budget_is_replanned(tmp_path, monkeypatch):
    run = tmp_path / "r"
    init_run(run)
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    record_phase(run, "01_planning", 1, status="completed", cost={"wall_s": 10.0})
    record_phase(run, "02_baseline", 1, status="completed", cost={"wall_s": 2000.0})  # the baseline took 55% of 1 h
    m = json.loads((run / "run.json").read_text())
    m["active_s"] = 2010.0
    for e in m["phases"]:
        e["pipeline_wall_s"] = e["cost"]["wall_s"]
    (run / "run.json").write_text(json.dumps(m))
    now = time.time()
    three = PhaseClock(run, "03_diagnostics", 1.0, None, started=now)
    assert three.deadline - three.start > 2010.0  # the fixed cumulative share (40%, 1440 s) would leave it nothing
    left = 3600 - three.tail_s - 2010.0
    assert three.deadline - three.start == pytest.approx(2010.0 + left * 1.5 / 7.5, abs=0.5)
    four = PhaseClock(run, "04_optimization", 1.0, None, started=now)
    assert four.deadline - four.start == pytest.approx(2010.0 + left * 6.0 / 7.5, abs=0.5)
    assert three.to_dict()["replanned"]["baseline_ended_s"] == pytest.approx(2010.0)
