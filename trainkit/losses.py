"""The training loss of a model's output, one owner for every loop that trains (``fit()``, the
probes' short fits, the recovery trials).

A regression (a float label, standardized on train; the model has one output) is trained on the
mean squared error, or the Huber loss (``training.regression_loss``), of that one output.

A model's output is ``(B, C)`` logits, or, for an ensemble in training mode (TabM,
:mod:`trainkit.tabular`), ``(B, k, C)``: one set of logits per member. An ensemble's members are
trained each on its own loss (the mean over the members), not on their mean prediction (members
that share one loss co-adapt and the ensemble gains little); :func:`as_logits` gives the
ensemble's prediction, the log of the members' mean probabilities, which is what the model itself
returns in eval mode (and so what is exported).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["loss_of", "as_logits"]


def loss_of(
    out: torch.Tensor,
    y: torch.Tensor,
    *,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    regression_loss: str = "mse",
) -> torch.Tensor:
    """Cross-entropy of ``out`` against ``y`` (``reduction`` mean or sum over the batch); an
    ensemble's ``(B, k, C)`` output counts each sample once, as the mean of its members' losses.
    A float ``y`` is a regression: ``regression_loss`` (mse or huber) of the one output."""
    out = out.float()
    if y.is_floating_point():
        pred = out.reshape(len(out), -1)  # (B, 1) or an ensemble's (B, k): every member its own loss
        target = y.float().view(-1, 1).expand_as(pred)
        if regression_loss == "huber":
            per = F.huber_loss(pred, target, reduction="none", delta=1.0).mean(1)
        else:
            per = F.mse_loss(pred, target, reduction="none").mean(1)
        return per.sum() if reduction == "sum" else per.mean()
    if out.ndim != 3:
        return F.cross_entropy(out, y, weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    k = out.shape[1]
    per = (
        F.cross_entropy(
            out.flatten(0, 1), y.repeat_interleave(k), weight=weight, reduction="none", label_smoothing=label_smoothing
        )
        .view(-1, k)
        .mean(1)
    )
    if reduction == "sum":
        return per.sum()
    if weight is not None:  # as F.cross_entropy's weighted mean: the sum over the samples' weights
        return per.sum() / weight[y].sum().clamp_min(1e-12)
    return per.mean()


def as_logits(out: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` logits of an output: an ensemble's ``(B, k, C)`` becomes the log of its members'
    mean probabilities (a softmax of it is that mean); a regression ensemble's ``(B, k, 1)``, the
    members' mean prediction."""
    if out.ndim != 3:
        return out
    if out.shape[-1] == 1:
        return out.float().mean(1)
    return torch.logsumexp(torch.log_softmax(out.float(), -1), dim=1) - math.log(out.shape[1])
