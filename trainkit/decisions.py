"""The decision tree of DESIGN.md after Phases 3 and 4, as pure functions of numbers.

Each returns ``(option, next_phase, reason)``; the phase modules add the evidence and write
``decision.json``. Thresholds come from the config's ``budget`` section.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["after_diagnostics", "after_optimization"]


def after_diagnostics(*, expected_gain: float, fix: dict[str, Any] | None, needs_fix: bool, manual_fix: str | None,
                      restarts_left: int, budget: Any, strong: str | None = None, gap: float = 0.0) -> tuple[str, str, str]:
    """Phase 3: C (infrastructure / failed baseline → fix and restart Phase 2), A (gain above the
    clear threshold, or in the marginal band → Phase 4; or a strong finding while the target is
    missed, whatever the expected gain: a heuristic gain estimate never overrules strong evidence),
    B (gain below the marginal threshold and no strong finding → Phase 5)."""
    if needs_fix:
        if fix is None:
            return "C", "stop", f"infrastructure issue that needs a manual fix: {manual_fix or 'see the report'}"
        if restarts_left <= 0:
            return "C", "stop", "a fix is known but the Phase 2 restarts are used up (budget.max_baseline_restarts)"
        return "C", "02_baseline", f"infrastructure issue: apply the fix and restart Phase 2 ({restarts_left} restart(s) left)"
    if expected_gain > budget.clear_gain_points:
        return "A", "04_optimization", f"expected gain {expected_gain:.1f} points > {budget.clear_gain_points:g}: optimize"
    if strong and gap > 0:
        return "A", "04_optimization", (f"strong finding {strong} with the target missed by {gap:.1f} points: optimize "
                                        f"(expected gain {expected_gain:.1f} points)")
    if expected_gain < budget.marginal_gain_points:
        return "B", "05_finalization", (f"expected gain {expected_gain:.1f} points < {budget.marginal_gain_points:g}: "
                                        "the best config so far is near what these changes can give; finalize")
    return "A", "04_optimization", (f"marginal: expected gain {expected_gain:.1f} points is between "
                                    f"{budget.marginal_gain_points:g} and {budget.clear_gain_points:g}; optimize, marked marginal")


def after_optimization(*, candidate_mean: float, best_mean: float, baseline_mean: float, significant: bool,
                       target: float, gains: Sequence[float], iteration: int, budget: Any,
                       rounds: int = 1) -> tuple[str, str, str]:
    """Phase 4, in DESIGN.md's order: A target reached → Phase 5; C no improvement over the
    baseline → back to Phase 3 (Phase 5 once Phase 3 ran ``max_optimization_iterations`` rounds);
    D the last two iterations each gained < ``diminishing_points`` → Phase 5 with the best;
    B improved but short → next iteration, up to ``max_optimization_iterations`` (then Phase 5).

    ``candidate_mean`` is this iteration's mean val metric over seeds, ``best_mean`` the best
    adopted so far (after this iteration's adoption), ``gains`` the points each iteration added to
    the best (this one last), ``significant`` whether this candidate beat the previous best by more
    than the seed spread."""
    d = budget.diminishing_points
    if best_mean >= target:
        return "A", "05_finalization", f"best mean val accuracy {best_mean:.4f} ≥ target {target}"
    if best_mean <= baseline_mean or (not significant and iteration == 1):
        if rounds >= budget.max_optimization_iterations:
            return "C", "05_finalization", (f"no improvement over the baseline ({candidate_mean:.4f} vs {baseline_mean:.4f}) and "
                                            f"{rounds} diagnosis rounds used: finalize with the best so far")
        return "C", "03_diagnostics", (f"no improvement over the baseline ({candidate_mean:.4f} vs {baseline_mean:.4f}, "
                                       "not beyond the seed spread): re-diagnose")
    if len(gains) >= 2 and all(g < d for g in gains[-2:]):
        return "D", "05_finalization", (f"diminishing returns: the last two iterations gained "
                                        f"{gains[-2]:.2f} and {gains[-1]:.2f} points (< {d:g}); finalize with the best")
    if iteration >= budget.max_optimization_iterations:
        return "B", "05_finalization", (f"improved to {best_mean:.4f} but short of {target}; the iteration limit "
                                        f"({budget.max_optimization_iterations}) is reached: finalize with the best")
    return "B", "04_optimization", f"improved to {best_mean:.4f}, still < target {target}: iterate"
