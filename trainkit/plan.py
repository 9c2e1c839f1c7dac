"""The compute plan Phase 1 writes (``01_planning/budget_plan.json``): each phase's share of
``budget.total_hours`` (the seed's split), the fits each phase plans, and their estimated time from
a measured estimate of the baseline's training time.

The seed budgets Phase 2 at 2-3 h, Phase 3 at 1-2 h, Phase 4 at 3-6 h and Phase 5 at 1-2 h inside
12 h; the shares below are those midpoints over their sum. Fits are counted in baseline units (one
unit = one baseline training), as upper bounds: early stopping cuts them.
"""

from __future__ import annotations

from trainkit.run import Phase

from typing import Any

__all__ = ["SHARES", "planned_units", "compute_plan"]

SHARES: dict[str, float] = {
    Phase.BASELINE.value: 2.5 / 10,
    Phase.DIAGNOSTICS.value: 1.5 / 10,
    Phase.OPTIMIZATION.value: 4.5 / 10,
    Phase.FINALIZATION.value: 1.5 / 10,
}


def planned_units(cfg: Any, seeds: int = 3, candidates: int = 6) -> dict[str, dict[str, Any]]:
    """Baseline units each phase plans on the single-optimization path (1 → 2 → 3 → 4 → 5), with the
    fits, before the time budget cuts anything (``trainkit.budget`` then holds each phase to its share)."""
    final = cfg.final.epochs / max(1, cfg.training.epochs)
    return {
        Phase.BASELINE.value: {"units": 1.0, "fits": "the baseline"},
        Phase.DIAGNOSTICS.value: {
            "units": 2.5,
            "fits": "2 more seeds of the baseline (seed spread; Phase 4 reuses them) + "
            "probes (~0.5, the label probe on a subsample)",
        },
        Phase.OPTIMIZATION.value: {
            "units": float(candidates + 2 * (seeds - 1) + seeds),
            "fits": f"{candidates} candidates × 1 seed, 2 survivors × {seeds - 1} more seeds, a "
            f"{seeds}-seed combination (one iteration; the baseline's seeds are Phase 2's and "
            "Phase 3's runs)",
        },
        Phase.FINALIZATION.value: {
            "units": round(final, 2),
            "fits": f"final training ({cfg.final.epochs} epochs max vs the baseline's {cfg.training.epochs})",
        },
    }


def compute_plan(cfg: Any, baseline_s: float, measured: dict[str, Any]) -> dict[str, Any]:
    """The plan: shares of the budget, planned units and estimated seconds per phase, and whether
    the single-optimization path fits ``budget.total_hours``."""
    total_s = cfg.budget.total_hours * 3600
    phases = {}
    for phase, p in planned_units(cfg).items():
        est = p["units"] * baseline_s
        phases[phase] = {
            "share": round(SHARES[phase], 4),
            "share_s": round(SHARES[phase] * total_s, 1),
            "planned_units": p["units"],
            "fits": p["fits"],
            "estimated_s": round(est, 2),
            "within_share": est <= SHARES[phase] * total_s,
        }
    est_total = sum(p["estimated_s"] for p in phases.values())
    return {
        "budget_hours": cfg.budget.total_hours,
        "baseline_estimate_s": round(baseline_s, 3),
        "measured": measured,
        "phases": phases,
        "planned_units_total": round(sum(p["planned_units"] for p in phases.values()), 2),
        "estimated_total_s": round(est_total, 1),
        "fits": est_total <= total_s,
        "note": "upper bounds in baseline units before the time budget; each phase is then held to its share "
        "(cumulative: unused time carries over) and what does not fit is cut and recorded",
    }
