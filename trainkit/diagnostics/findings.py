"""What a detector returns (:class:`Finding`, :class:`Recommendation`), the thresholds it judges
by (:data:`THRESHOLDS`), and the evidence helpers the detectors share. A leaf of the diagnostics
package: the detectors (:mod:`~trainkit.diagnostics.detectors`, :mod:`~trainkit.diagnostics.data_quality`)
import it, it imports none of them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trainkit.metrics import row_score

__all__ = ["Finding", "Recommendation", "THRESHOLDS", "INFRA_STRENGTH", "STANDARD_LR", "patch_already_in"]


THRESHOLDS: dict[str, float] = {
    "overfit_gap_points": 5.0,  # train − val accuracy at the last epoch (points), beyond what label noise explains
    "overfit_gap_with_rise": 2.0,  # ... or this gap while val loss rose ...
    "val_loss_rise": 0.10,  # ... ≥ 10% above its minimum and train loss kept falling
    "underfit_train_margin": 0.02,  # train accuracy below target + this → the model cannot even fit train
    "learning_loss_drop": 0.10,  # "learning" = final train loss ≥ 10% below the loss at init
    "stall_loss_drop": 0.05,  # loss fell < 5% from init → flat from the start
    "lr_far_factor": 30.0,  # configured LR off the LR-finder suggestion by more than 30× (either way)
    "dead_unit_fraction": 0.5,  # ≥ 50% of ReLU units never fire on val data
    "label_noise_rate": 0.05,  # estimated excess label-noise rate (train vs val agreement) at which labels are a cause
    "label_min_kappa": 0.5,  # the label probe's model must beat chance by Cohen's kappa ≥ 0.5 to be trusted ...
    "label_max_shortfall": 0.10,  # ... and score at most 10 points below the baseline's val accuracy
    "near_duplicate_fraction": 0.05,  # ≥ 5% of val samples nearly identical to a train sample
    "imbalance_ratio": 3.0,  # largest / smallest training class count
    "min_per_class": 30,  # label-issue and imbalance verdicts need ≥ 30 training samples per class
    "constant_feature_fraction": 0.5,  # ≥ 50% of features constant over train
    "unseen_category_fraction": 0.05,  # tables: ≥ 5% of val rows carry a category train never had
    "leaky_column_strength": 1.0,  # tables: a column that alone gets val ≥ 99% right (a person judges it)
    "data_wait_fraction": 0.20,  # time blocked on the next batch / epoch time
    "dominant_data_wait": 0.50,  # above this the input pipeline is the bottleneck: its fix is always selected
    "gpu_util_percent": 60.0,  # mean GPU utilisation during training
    "gpu_mem_headroom": 0.25,  # peak memory below 25% of the device's
    "strong_strength": 2.0,  # a finding ≥ 2× its threshold (or the seed noise) is strong: the target missed → optimize
    "min_noise_points": 1.0,  # the seed-noise floor of accuracy effects never counts below 1 point
    # data-quality strengths, in units of their thresholds, scaled by how much each problem costs accuracy:
    "imbalance_unhurt_weight": 0.5,  # imbalance whose rarest class is not recalled worse: half its ratio's strength
    "near_duplicate_weight": 0.5,  # near-duplicates across splits inflate val, they rarely cap it: half
    "constant_feature_strength": 0.5,  # constant features waste inputs, they do not mislead: a fixed half
    "minority_recall_ratio": 0.8,  # the rarest class is "hurt" when its val recall is < 80% of the mean recall
}
"""Rationale: accuracy effects (gaps, shortfalls) are compared with the larger of their threshold
and twice the seed standard deviation from the seed-variance probe, so a 6-point gap on a run
whose seeds spread by 5 points is not "strong". Infrastructure findings (NaN, crash, leakage,
non-finite inputs) outrank accuracy findings whatever their strength: nothing else can be judged
until they are fixed."""

INFRA_STRENGTH = 10.0  # strength reported for an infrastructure finding (it is a fact, not an effect size)


@dataclass
class Recommendation:
    """A config patch with its case: why, expected gain (points of the target metric), effort 1–3.

    ``kind``: accuracy | speed | fix | advice (advice has no patch: a change to the user's own code).
    ``forced``: selected whatever its score (the fix of a dominant bottleneck)."""

    id: str
    title: str
    patch: dict[str, Any] | None
    rationale: str
    expected_gain_points: float
    effort: int
    evidence: dict[str, Any] = field(default_factory=dict)
    kind: str = "accuracy"  # accuracy | speed | fix | advice
    finding: str = ""
    forced: bool = False

    @property
    def score(self) -> float:
        return (self.expected_gain_points if self.kind != "speed" else 0.5) / self.effort


@dataclass
class Finding:
    """One diagnostic's verdict. ``strength`` is the evidence's size in units of its threshold (or
    of the seed noise, whichever is larger): the ranking key. ``cause`` names the sub-cause."""

    name: str
    fired: bool
    severity: float
    summary: str
    evidence: dict[str, Any]
    thresholds: dict[str, float]
    recommendations: list[Recommendation] = field(default_factory=list)
    infrastructure: bool = False
    strength: float = 0.0
    cause: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guide"] = f"docs/diagnostics/{self.name}.md"
        d["cause"] = self.cause or self.name
        return d


def _thresholds(*names: str) -> dict[str, float]:
    return {n: THRESHOLDS[n] for n in names}


def _quiet(name: str, why: str, **numbers: Any) -> Finding:
    return Finding(name, False, 0.0, why, numbers, {})


def _recommend(
    finding: str,
    rid: str,
    title: str,
    patch: dict[str, Any] | None,
    why: str,
    gain: float,
    effort: int,
    kind: str = "accuracy",
    **numbers: Any,
) -> Recommendation:
    return Recommendation(rid, title, patch, why, round(max(0.0, gain), 2), effort, numbers, kind, finding)


def best_score(evidence: dict[str, Any]) -> float:
    """The diagnosed run's best val value of the target metric (``val_score``), 0 without one."""
    best = evidence.get("best")
    return row_score(best) if best else 0.0


def _gap_to_target(evidence: dict[str, Any]) -> float:
    return max(0.0, (evidence["target"] - best_score(evidence)) * 100)


def _headroom(evidence: dict[str, Any]) -> float:
    """Points between the best val target metric and a perfect score: what any change can win at most."""
    return max(0.0, (1 - best_score(evidence)) * 100)


def _seed_probe_converged(evidence: dict[str, Any]) -> bool:
    """The seed-variance probe trained at least as many epochs as the baseline needed for its best
    epoch: only then is its spread the baseline's noise (shorter runs measure convergence speed)."""
    sv = evidence["probes"].get("seed_variance") or {}
    best_epoch = (evidence.get("best") or {}).get("epoch")
    h = evidence.get("history") or []
    climbing = len(h) >= 2 and row_score(h[-1]) - max(row_score(r) for r in h[:-1]) > 0.01
    long_enough = bool(sv.get("full_runs")) or int(sv.get("epochs") or 0) >= int(best_epoch or 0) + 1
    return bool(sv) and best_epoch is not None and long_enough and not climbing


def _noise_points(evidence: dict[str, Any]) -> float:
    """Twice the seed standard deviation of val accuracy (points), at least ``min_noise_points``;
    just the floor when the seed probe ran shorter than the baseline's convergence."""
    sv = evidence["probes"].get("seed_variance") or {}
    std = float(sv.get("std") or 0.0) if _seed_probe_converged(evidence) else 0.0
    return max(THRESHOLDS["min_noise_points"], 2 * 100 * std)


def _suggested_lr(evidence: dict[str, Any]) -> float | None:
    """The LR range test's suggestion, or None when its curve was flat or noisy (inconclusive)."""
    return (evidence["probes"].get("lr_range") or {}).get("suggested_lr")


def _label_noise(evidence: dict[str, Any]) -> float:
    """The label probe's estimated excess noise rate when it is trusted and significant, else 0."""
    label_probe = evidence["probes"].get("label_issues") or {}
    return float(label_probe.get("noise_rate") or 0.0) if label_probe.get("significant") else 0.0


def _is_image(evidence: dict[str, Any]) -> bool:
    return len(evidence.get("input_shape") or []) == 3


def _learned(evidence: dict[str, Any]) -> bool:
    h = evidence.get("history") or []
    init = evidence.get("init_loss")
    return (
        bool(h)
        and init is not None
        and math.isfinite(init)
        and h[-1]["train_loss"] < init * (1 - THRESHOLDS["learning_loss_drop"])
    )


def _dropout_rec(finding: str, cfg: dict[str, Any], why: str, gain: float) -> list[Recommendation]:
    """Dropout 0.3 for a built-in model that has less (a user's model cannot be patched this way)."""
    kw = dict(cfg["model"]["kwargs"])
    if cfg["model"]["name"] not in ("mlp", "cnn", "cnn1d") or float(kw.get("dropout", 0.0)) >= 0.3:
        return []
    return [
        _recommend(
            finding,
            "dropout",
            "Dropout 0.3",
            {"model.kwargs": {**kw, "dropout": 0.3}},
            why,
            gain,
            1,
            current_dropout=kw.get("dropout", 0.0),
        )
    ]


def _smoothing_rec(finding: str, cfg: dict[str, Any], why: str, gain: float) -> list[Recommendation]:
    """Label smoothing 0.1 when the config has none."""
    if cfg["training"]["label_smoothing"] != 0:
        return []
    return [
        _recommend(finding, "label_smoothing", "Label smoothing 0.1", {"training.label_smoothing": 0.1}, why, gain, 1)
    ]


TABM_TITLE = "TabM (an efficient ensemble of MLPs with piecewise-linear embeddings of the inputs)"


def _tabm_rec(finding: str, rid: str, why: str, gain: float, **numbers: Any) -> Recommendation:
    """The move to the tabular family: TabM with its defaults."""
    return _recommend(finding, rid, TABM_TITLE, {"model.name": "tabm", "model.kwargs": {}}, why, gain, 1, **numbers)


def _tabm_wider_rec(finding: str, rid: str, kw: dict[str, Any], why: str, gain: float) -> list[Recommendation]:
    """TabM's blocks twice as wide (``d_block``, up to 1024); none when they are that wide already."""
    width = int(kw.get("d_block", 256))
    if width >= 1024:
        return []
    return [
        _recommend(
            finding,
            rid,
            f"Wider TabM blocks: {width} → {2 * width}",
            {"model.kwargs": {**kw, "d_block": 2 * width}},
            why,
            gain,
            1,
            current_width=width,
        )
    ]


def _family_recs(finding: str, evidence: dict[str, Any], gain: float) -> list[Recommendation]:
    """Model-family moves: a built-in MLP on table rows → TabM; on images or signals → the matching
    conv net; a user's own model → advice saying what to change (no patch can rewrite their code)."""
    from trainkit.models import family_for

    cfg, shape = evidence["config"], evidence.get("input_shape") or []
    fam = family_for(shape)
    if fam is None and len(shape) == 1 and cfg["model"]["name"] == "mlp":  # table rows: the tabular family
        return [
            _tabm_rec(
                finding,
                "model_family",
                "a plain MLP fits thresholds and interactions poorly; TabM's embeddings "
                "and ensemble are the tabular family that holds its own against boosted trees",
                gain,
                input_shape=list(shape),
            )
        ]
    if fam is None:
        return []
    name = cfg["model"]["name"]
    what = "images" if fam == "cnn" else "signals"
    if name == "mlp":
        kw = {"channels": [32, 64]}
        if float(cfg["model"]["kwargs"].get("dropout", 0.0)):
            kw["dropout"] = cfg["model"]["kwargs"]["dropout"]
        patch: dict[str, Any] = {"model.name": fam, "model.kwargs": kw}
        if cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["lr"] < 0.01:
            patch["optimizer.lr"] = 0.05  # batch-normed conv nets train at SGD's usual 0.01–0.1
        return [
            _recommend(
                finding,
                "model_family",
                f"Convolutional model for {what}: {fam} {kw['channels']}",
                patch,
                f"the inputs are {what} {list(shape)}: convolutions share weights across positions, so they fit "
                "better and generalise better than a flattening MLP",
                gain,
                2,
                input_shape=list(shape),
            )
        ]
    if ":" in name and not any(k in str(cfg["model"]["kwargs"]) for k in ("conv", "channels")):
        return [
            _recommend(
                finding,
                "model_family_advice",
                f"Your model {name}: consider convolutions over the {what}",
                None,
                f"inputs are {what} {list(shape)}; if {name} flattens them, a Conv{2 if fam == 'cnn' else 1}d "
                "stack with pooling usually fits and generalises better",
                gain,
                3,
                "advice",
            )
        ]
    return []


STANDARD_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05}  # the usual starting points (SGD: with momentum 0.9)


def patch_already_in(cfg: dict[str, Any], patch: dict[str, Any]) -> bool:
    """True when every field of ``patch`` already has that value in ``cfg`` (applying it changes nothing)."""
    from trainkit.config import get_dotted

    return all(
        get_dotted(cfg, k) == v
        or (
            isinstance(v, dict)
            and isinstance(get_dotted(cfg, k), dict)
            and all(get_dotted(cfg, k).get(a) == b for a, b in v.items())
        )
        for k, v in patch.items()
    )
