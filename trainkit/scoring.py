"""A model's scores on a split, one owner for ``fit()``'s validation, the probes and Phase 3/5:
the mean loss, accuracy and the target metric of a classifier, or a regression's loss on the
standardized label with rmse, mae and r2 in the label's units."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.data import DataBundle
from trainkit.losses import as_logits
from trainkit.metrics import regression_scores, score

__all__ = ["evaluate", "predict_numbers"]


# no graph: without it every val batch's activations stayed alive until the sum (1.4 GB on 2,000 images)
@torch.no_grad()
def evaluate(
    model: nn.Module,
    bundle: DataBundle,
    split: str,
    device: torch.device,
    batch_size: int = 512,
    amp: torch.dtype | None = None,
    reason: str = "",
    metric: str = "accuracy",
) -> dict[str, float]:
    """Mean loss, accuracy and ``metric`` (``score``; :mod:`trainkit.metrics`) of ``model`` on a split
    (no sharding: every rank sees all of it). Only a metric other than accuracy keeps the probabilities.
    A regression (:func:`_evaluate_numbers`): the loss on the standardized label, and rmse, mae and
    r2 in the label's units (``accuracy`` None)."""
    if bundle.regression:
        return _evaluate_numbers(model, bundle, split, device, batch_size, amp, reason, metric)
    was = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    keep: list[tuple[torch.Tensor, torch.Tensor]] = []
    for xb, yb, _ in bundle.batches(split, batch_size, shuffle=False, device=device, reason=reason):
        if amp is not None:
            with torch.autocast(device.type, dtype=amp):
                out = model(xb)
        else:  # no autocast context to build per batch when there is no mixed precision
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
        keep += [(out.float().softmax(1), yb)] if metric != "accuracy" else []
    model.train(was)
    mean_loss, accuracy = torch.stack([loss / max(n, 1), correct.float() / max(n, 1)]).tolist()  # one host read
    return {
        "loss": mean_loss,
        "accuracy": accuracy,
        "score": accuracy
        if not keep
        else score(
            metric, torch.cat([y for _, y in keep]).cpu().numpy(), torch.cat([p for p, _ in keep]).cpu().numpy()
        ),
    }


def predict_numbers(
    model: nn.Module,
    bundle: DataBundle,
    split: str,
    device: torch.device,
    batch_size: int = 512,
    amp: torch.dtype | None = None,
    reason: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A regression model's standardized outputs and labels on a split (eval mode, no graph)."""
    was = model.training
    model.eval()
    outs, ys = [], []
    with torch.no_grad():
        for xb, yb, _ in bundle.batches(split, batch_size, shuffle=False, device=device, reason=reason):
            if amp is not None:
                with torch.autocast(device.type, dtype=amp):
                    out = model(xb)
            else:
                out = model(xb)
            outs.append(as_logits(out).float().reshape(len(yb), -1)[:, 0])
            ys.append(yb.float())
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0), torch.cat(ys) if ys else torch.zeros(0)


def _evaluate_numbers(
    model: nn.Module,
    bundle: DataBundle,
    split: str,
    device: torch.device,
    batch_size: int,
    amp: torch.dtype | None,
    reason: str,
    metric: str,
) -> dict[str, Any]:
    z, y = predict_numbers(model, bundle, split, device, batch_size, amp, reason)
    loss = float(F.mse_loss(z, y)) if len(y) else float("nan")
    scores = regression_scores(bundle.to_label_units(y), bundle.to_label_units(z))
    return {"loss": loss, "accuracy": None, "score": scores[metric if metric in scores else "rmse"], **scores}
