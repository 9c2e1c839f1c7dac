"""The whole decision tree of docs/design.md, as pure functions of numbers.

After Phase 2 (:func:`after_baseline`), 3 (:func:`after_diagnostics`), 4 (:func:`after_optimization`)
and 5 (:func:`after_finalization`), and the budget's routing (:func:`route_over_budget`). Each
returns a :class:`Decision`: it unpacks as ``(option, next, reason)``, and what a phase needs to
know besides is a typed field, never a word searched for in ``reason``. The phase modules gather
the numbers, add the evidence and write ``decision.json``; the pipeline follows ``next``.
Thresholds come from the config's ``budget`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from trainkit.metrics import LABELS, best_of, better, higher_is_better, is_regression, reaches, row_score
from trainkit.run import Phase

__all__ = [
    "Decision",
    "restarts_left",
    "after_planning",
    "learned",
    "learning_verdict",
    "after_baseline",
    "after_diagnostics",
    "after_optimization",
    "after_finalization",
    "route_over_budget",
    "Route",
    "route",
    "resume_route",
]


@dataclass(frozen=True)
class Decision:
    """One decision of the tree: the seed's option letter, the phase (or ``deploy``/``stop``/
    ``blocked``) it routes to, the reason in words, and ``marginal``: Phase 3's expected gain lies in
    the marginal band (optimize, marked marginal). Unpacks and slices as ``(option, next, reason)``."""

    option: str
    next: str
    reason: str
    marginal: bool = False

    def _triple(self) -> tuple[str, str, str]:
        return (self.option, self.next, self.reason)

    def __iter__(self) -> Iterator[str]:
        return iter(self._triple())

    def __getitem__(self, i: Any) -> Any:
        return self._triple()[i]

    def __len__(self) -> int:
        return 3


def restarts_left(max_restarts: int, attempts: int) -> int:
    """Phase 2 restarts still allowed after ``attempts`` baseline attempts (the first is not a
    restart): the one formula for the baseline's decision and Phase 3's recovery."""
    return max_restarts - max(0, attempts - 1)


PRIOR_LOSS_MARGIN = 0.05  # a val loss 5% below the class prior's is learning beyond the prior


def after_planning() -> Decision:
    """Phase 1: once its gate passes, always the baseline."""
    return Decision("-", Phase.BASELINE.value, "Phase 1 always proceeds to the baseline")


def learned(
    init_loss: float,
    history: Sequence[dict[str, Any]],
    chance: float,
    metric: str = "accuracy",
    prior: float | None = None,
) -> tuple[bool, str]:
    """Whether a baseline learned (:func:`learning_verdict` says ``"learned"``), and why."""
    state, why = learning_verdict(init_loss, history, chance, metric, prior)
    return state == "learned", why


def learning_verdict(
    init_loss: float,
    history: Sequence[dict[str, Any]],
    chance: float,
    metric: str = "accuracy",
    prior: float | None = None,
    noise: float | None = None,
) -> tuple[str, str]:
    """``"learned"``, ``"inconclusive"`` or ``"failed"``, judged by the loss and the val metric
    together. Learned: the final train loss fell well (≥ 10%) below the loss at init and the best
    val metric (``val_score``, the target metric) beats what the majority predictor scores
    (``chance``, :func:`trainkit.metrics.chance_score`); or the loss fell at all (≥ 1%) and val is
    more than 2 points above it; or the loss fell at all and the best val loss is at least
    ``PRIOR_LOSS_MARGIN`` below ``prior`` (the val loss of predicting the train class frequencies,
    :func:`trainkit.metrics.prior_loss`). On imbalanced classes a model that learned sits only a
    little above the majority share, or not above it at all (6% positives: accuracy cannot beat
    0.94 before the model is very good), while its val loss already beats the prior's.

    Inconclusive: the train loss fell well and the best val loss is at or below the prior's, but
    not by the margin: the model has learned the class prior and perhaps a little more, which a
    weak signal or a slow start cannot tell apart from nothing. That is not a failed baseline (the
    safe route is to diagnose and optimize, not to spend a restart on a guess). Failed: anything
    else (the loss did not fall, or val is no better than a constant).

    A regression (:func:`_regression_verdict`): ``chance`` is what predicting the train mean scores
    on val (r2: 0), ``noise`` the bootstrap spread of a val score."""
    if not history:
        return "failed", "no completed epoch"
    if is_regression(metric):
        return _regression_verdict(init_loss, history, chance, metric, noise or 0.0)
    final = history[-1]["train_loss"]
    best = max(row_score(h) for h in history)
    losses = [h["val_loss"] for h in history if h.get("val_loss") is not None and math.isfinite(h["val_loss"])]
    fell = final < init_loss * 0.99
    ok = (final < init_loss * 0.90 and best > chance) or (fell and best > chance + 0.02)
    name = LABELS.get(metric, metric)
    why = f"train loss {init_loss:.3f} at init → {final:.3f}; best val {name} {best:.3f} vs chance {chance:.3f}"
    if prior is None or not math.isfinite(prior) or not losses:
        return ("learned" if ok else "failed"), why
    why += f"; best val loss {min(losses):.3f} vs the class prior's {prior:.3f}"
    if ok or (fell and min(losses) <= prior * (1 - PRIOR_LOSS_MARGIN)):
        return "learned", why
    if final < init_loss * 0.90 and min(losses) <= prior:
        return "inconclusive", why + " (the class prior learned, little beyond it yet)"
    return "failed", why


def _regression_verdict(
    init_loss: float, history: Sequence[dict[str, Any]], chance: float, metric: str, noise: float
) -> tuple[str, str]:
    """Learned: the train loss fell and the best val metric beats predicting the train mean by more
    than twice the noise, in the metric's direction. Inconclusive: it fell and val beats the mean,
    within the noise. Failed: anything else."""
    final = history[-1]["train_loss"]
    best = best_of(metric, (row_score(h) for h in history))
    fell = final < init_loss * 0.99
    name = LABELS.get(metric, metric)
    why = (
        f"train loss {init_loss:.3f} at init → {final:.3f}; best val {name} {best:.4g} vs {chance:.4g} for predicting "
        f"the train mean (noise ±{noise:.2g})"
    )
    if fell and better(metric, best, chance, 2 * noise):
        return "learned", why
    if fell and better(metric, best, chance):
        return "inconclusive", why + " (better than the mean, within the noise)"
    return "failed", why


def after_baseline(
    *,
    status: str,
    learned: bool,
    best: float | None,
    target: float,
    attempt: int,
    max_restarts: int,
    epochs: int | None = None,
    metric: str = "accuracy",
    inconclusive: str | None = None,
) -> Decision:
    """Phase 2: C (crashed, non-finite, or no learning → Phase 3 in failed mode, then a restart;
    stop once the restarts are used up), A (val ≥ target → Phase 5), B (below → Phase 3).

    A baseline the budget stopped (``status == "time_budget"``) before it showed learning is
    inconclusive, not failed: a few epochs cannot tell a slow start from no learning, and spending a
    restart on a guess would be loud. It goes to Phase 3 as B (diagnose what there is), the safe
    standard route; the budget's routing may then send it on to Phase 5 with the best so far.
    ``best`` is the best val value of the target metric (``metric``). ``inconclusive`` (the
    learning verdict's reason, :func:`learning_verdict`) makes a baseline that did not clearly
    learn a B too: it learned the class prior, and a restart would be spent on a guess."""
    name = LABELS.get(metric, metric)
    if status == "time_budget" and not learned and best is not None:
        ran = f"after {epochs} epoch(s)" if epochs is not None else "early"
        return Decision(
            "B",
            Phase.DIAGNOSTICS.value,
            (
                f"inconclusive: the budget stopped the baseline {ran}, before it could show "
                f"learning (val {name} {best:.4f}); diagnose, not restart"
            ),
        )
    if inconclusive and status not in ("crashed", "nonfinite") and not learned and best is not None:
        return Decision(
            "B",
            Phase.DIAGNOSTICS.value,
            (f"inconclusive learning (val {name} {best:.4f}): {inconclusive}; diagnose, not restart"),
        )
    if status in ("crashed", "nonfinite") or not learned:
        failure = {"crashed": "training crashed", "nonfinite": "non-finite loss or gradient"}.get(status, "no learning")
        left = restarts_left(max_restarts, attempt)
        if left <= 0:
            return Decision("C", "stop", f"baseline failed ({failure}) and the {max_restarts} restarts are used up")
        return Decision(
            "C",
            Phase.DIAGNOSTICS.value,
            (f"baseline failed: {failure}; diagnose, fix, restart Phase 2 ({left} restart(s) left)"),
        )
    assert best is not None
    if reaches(metric, best, target):
        return Decision(
            "A",
            Phase.FINALIZATION.value,
            f"val {name} {best:.4f} {'>=' if higher_is_better(metric) else '<='} target {target}",
        )
    return Decision(
        "B",
        Phase.DIAGNOSTICS.value,
        f"val {name} {best:.4f} {'<' if higher_is_better(metric) else '>'} target {target} (not reached)",
    )


def after_finalization(*, gate: str, missing: Sequence[str], how: str) -> Decision:
    """Phase 5: deploy when production_ready passed and is signed; blocked otherwise (what is
    missing, and how to finish)."""
    if gate == "passed":
        return Decision("-", "deploy", "production_ready passed and signed")
    return Decision("-", "blocked", "missing: " + "; ".join(missing) + f". To finish: {how}")


def route_over_budget(next_phase: str, seconds_left: float) -> str | None:
    """Any phase: the run's time for ``next_phase`` (its cumulative share of ``budget.total_hours``)
    is used up → accept the best so far and go to Phase 5 (the ceiling is documented). Only the
    optional phases (3 and 4) are skipped so; None when the decision stands."""
    if next_phase in (Phase.DIAGNOSTICS.value, Phase.OPTIMIZATION.value) and seconds_left <= 0:
        return Phase.FINALIZATION.value
    return None


@dataclass(frozen=True)
class Route:
    """Where ``trainkit run`` goes after a phase: ``action`` is ``continue`` (run ``next``),
    ``deploy``, ``stop`` (the decision stopped the run), ``stopped`` (``--stop-after`` ends this
    invocation before ``next``), ``blocked`` (the gate blocked a decision that is not a failed
    baseline's C) or ``signoff`` (the gate waits for a person). ``budget_cut``: the budget sent the
    run to Phase 5 instead of the decision's ``next``."""

    action: str
    next: str | None = None
    budget_cut: bool = False


def route(
    *, phase: str, gate: str | None, option: str, next_phase: str, stop_after: int | None, over_budget: bool
) -> Route:
    """The whole route after a finished phase, in order: a blocked gate ends the run (a failed
    baseline's C goes on past its gate, blocked by design, to the diagnosis); a gate awaiting a
    sign-off waits; an over-budget optional phase is skipped for Phase 5 (``over_budget``: the
    budget's clock, :func:`trainkit.budget._over_budget`, said so for ``next_phase``); ``--stop-after
    N`` stops before a phase past N (and before deploy or stop once phase N ran); then deploy, stop,
    or the next phase."""
    if gate == "blocked" and option != "C":
        return Route("blocked")
    if gate == "awaiting_signoff":
        return Route("signoff")
    nxt, cut = (Phase.FINALIZATION.value, True) if over_budget else (next_phase, False)
    if stop_after is not None and (
        nxt in ("deploy", "stop") and int(phase[:2]) >= stop_after or nxt[:2].isdigit() and int(nxt[:2]) > stop_after
    ):
        return Route("stopped", nxt, cut)
    if nxt in ("deploy", "stop"):
        return Route(nxt, nxt, cut)
    return Route("continue", nxt, cut)


def resume_route(*, phase: str, gate: str | None, option: str | None, next_phase: str | None, ran_out: bool) -> Route:
    """Where ``trainkit run --resume`` starts, from the last phase in run.json: its gate passed →
    deploy after Phase 5, else its decision's next (``done`` when that was deploy or nothing);
    blocked with a failed baseline's C to a phase → that phase; no gate record and ``ran_out``
    (the phase died before its gate) → ``in_place`` (it continues in its folder); anything else →
    the same phase again (``rerun``)."""
    if gate == "passed":
        if phase == Phase.FINALIZATION.value:
            return Route("deploy", "deploy")
        if next_phase in ("deploy", None):
            return Route("done")
        return Route("continue", next_phase)
    if gate == "blocked" and option == "C" and str(next_phase or "")[:2].isdigit():
        return Route("continue", next_phase)
    if gate is None and ran_out:
        return Route("in_place", phase)
    return Route("rerun", phase)


def _listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def after_diagnostics(
    *,
    expected_gain: float,
    fix: dict[str, Any] | None,
    needs_fix: bool,
    manual_fix: str | None,
    restarts_left: int,
    budget: Any,
    strong: str | None = None,
    gap: float = 0.0,
    stale: tuple[list[str], list[str]] | None = None,
) -> Decision:
    """Phase 3: C (infrastructure / failed baseline → fix and restart Phase 2), A (gain above the
    clear threshold, or in the marginal band → Phase 4; or a strong finding while the target is
    missed, whatever the expected gain: a heuristic gain estimate never overrules strong evidence),
    B (gain below the marginal threshold and no strong finding → Phase 5; and, whatever the
    expected gain, when nothing moves: ``stale`` is (the families of the moves this round proposes,
    those the last Phase 4 iteration measured and adopted none of), and every proposed family was
    measured already, so another iteration would spend its time on the same kind of change)."""
    if not needs_fix and stale is not None and stale[0] and set(stale[0]) <= set(stale[1]):
        return Decision(
            "B",
            Phase.FINALIZATION.value,
            (
                f"nothing moves: the last optimization iteration adopted none of its "
                f"{_listed(stale[1])} moves, and this round proposes only "
                f"{_listed(stale[0])} moves again; finalize with the best so far"
            ),
        )
    if needs_fix:
        if fix is None:
            return Decision(
                "C", "stop", f"infrastructure issue that needs a manual fix: {manual_fix or 'see the report'}"
            )
        if restarts_left <= 0:
            return Decision(
                "C", "stop", "a fix is known but the Phase 2 restarts are used up (budget.max_baseline_restarts)"
            )
        return Decision(
            "C",
            Phase.BASELINE.value,
            f"infrastructure issue: apply the fix and restart Phase 2 ({restarts_left} restart(s) left)",
        )
    if expected_gain > budget.clear_gain_points:
        return Decision(
            "A",
            Phase.OPTIMIZATION.value,
            f"expected gain {expected_gain:.1f} points > {budget.clear_gain_points:g}: optimize",
        )
    if strong and gap > 0:
        return Decision(
            "A",
            Phase.OPTIMIZATION.value,
            (
                f"strong finding {strong} with the target missed by {gap:.1f} points: optimize "
                f"(expected gain {expected_gain:.1f} points)"
            ),
        )
    if expected_gain < budget.marginal_gain_points:
        return Decision(
            "B",
            Phase.FINALIZATION.value,
            (
                f"expected gain {expected_gain:.1f} points < {budget.marginal_gain_points:g}: "
                "the best config so far is near what these changes can give; finalize"
            ),
        )
    return Decision(
        "A",
        Phase.OPTIMIZATION.value,
        (
            f"marginal: expected gain {expected_gain:.1f} points is between "
            f"{budget.marginal_gain_points:g} and {budget.clear_gain_points:g}; optimize, marked marginal"
        ),
        marginal=True,
    )


def after_optimization(
    *,
    candidate_mean: float,
    best_mean: float,
    baseline_mean: float,
    significant: bool,
    target: float,
    gains: Sequence[float],
    iteration: int,
    budget: Any,
    rounds: int = 1,
    metric: str = "accuracy",
    moves_left: bool = True,
) -> Decision:
    """Phase 4, in docs/design.md's order: A target reached → Phase 5; C no improvement over the
    baseline → back to Phase 3 (Phase 5 once Phase 3 ran ``max_optimization_iterations`` rounds);
    D the last two iterations each gained < ``diminishing_points`` → Phase 5 with the best;
    B improved but short → next iteration, up to ``max_optimization_iterations`` (then Phase 5).

    ``candidate_mean`` is this iteration's mean val metric over seeds, ``best_mean`` the best
    adopted so far (after this iteration's adoption), ``gains`` the points each iteration added to
    the best (this one last), ``significant`` whether this candidate beat the previous best by more
    than the seed spread. Every comparison is in ``metric``'s direction (an rmse improves downwards).
    ``moves_left``: Phase 3's recommendations still hold an untried move for the best config; when
    they are used up, an improvement short of the target re-diagnoses the new best config (while
    diagnosis rounds are left) instead of iterating on nothing."""
    d = budget.diminishing_points
    name = LABELS.get(metric, metric)
    if reaches(metric, best_mean, target):
        return Decision(
            "A",
            Phase.FINALIZATION.value,
            (f"best mean val {name} {best_mean:.4f} {'≥' if higher_is_better(metric) else '≤'} target {target}"),
        )
    if not better(metric, best_mean, baseline_mean) or (not significant and iteration == 1):
        if rounds >= budget.max_optimization_iterations:
            return Decision(
                "C",
                Phase.FINALIZATION.value,
                (
                    f"no improvement over the baseline ({candidate_mean:.4f} vs {baseline_mean:.4f}) and "
                    f"{rounds} diagnosis rounds used: finalize with the best so far"
                ),
            )
        return Decision(
            "C",
            Phase.DIAGNOSTICS.value,
            (
                f"no improvement over the baseline ({candidate_mean:.4f} vs {baseline_mean:.4f}, "
                "not beyond the seed spread): re-diagnose"
            ),
        )
    if len(gains) >= 2 and all(g < d for g in gains[-2:]):
        return Decision(
            "D",
            Phase.FINALIZATION.value,
            (
                f"diminishing returns: the last two iterations gained "
                f"{gains[-2]:.2f} and {gains[-1]:.2f} points (< {d:g}); finalize with the best"
            ),
        )
    if iteration >= budget.max_optimization_iterations:
        return Decision(
            "B",
            Phase.FINALIZATION.value,
            (
                f"improved to {best_mean:.4f} but short of target {target}; the iteration limit "
                f"({budget.max_optimization_iterations}) is reached: finalize with the best"
            ),
        )
    if not moves_left and rounds < budget.max_optimization_iterations:
        return Decision(
            "B",
            Phase.DIAGNOSTICS.value,
            f"improved to {best_mean:.4f}, target {target} not reached yet; this round's recommendations are used "
            "up: re-diagnose the new best config",
        )
    return Decision(
        "B", Phase.OPTIMIZATION.value, f"improved to {best_mean:.4f}, target {target} not reached yet: iterate"
    )
