"""The probes' model and training loop: a fresh model from the config and seed, a random sample of
a split, a short fit bounded in steps (:mod:`trainkit.diagnostics.probes` and
:mod:`trainkit.diagnostics.recovery` share them)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.config import TrainkitConfig
from trainkit.data import DataBundle
from trainkit.losses import loss_of
from trainkit.models import build_for
from trainkit.repro import seed_everything, set_deterministic
from trainkit.train import make_optimizer, resolve_device

__all__ = ["sample"]


def sample(
    bundle: DataBundle, split: str, n: int, seed: int = 0, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` random samples of a split (train or val) as tensors."""
    x, y, _ = next(iter(bundle.batches(split, n, shuffle=True, seed=seed, device=device)))
    return x, y


def _model(cfg: TrainkitConfig, bundle: DataBundle, device: torch.device, seed: int | None = None) -> nn.Module:
    seed_everything(cfg.training.seed if seed is None else seed)
    set_deterministic(cfg.training.deterministic)
    return build_for(cfg, bundle, device)


def _train_steps(
    model: nn.Module,
    cfg: TrainkitConfig,
    bundle: DataBundle,
    epochs: int,
    seed: int,
    device: torch.device,
    zero_inputs: bool = False,
    max_steps: int | None = None,
    deadline: float | None = None,
    clip: float | None = None,
    losses: list[float] | None = None,
) -> None:
    """The probes' training loop, with the config's optimizer: at most ``epochs`` epochs and
    ``max_steps`` steps, not past ``deadline`` (a time.time() value), gradients clipped at ``clip``.
    With ``losses`` each step's loss is appended and a non-finite one ends the loop."""
    import time

    opt = make_optimizer(cfg, model.parameters())
    steps = 0
    for epoch in range(epochs):
        for xb, yb, _ in bundle.batches(
            "train", cfg.data.batch_size, shuffle=True, seed=seed, epoch=epoch, device=device
        ):
            xb = torch.zeros_like(xb) if zero_inputs else xb
            loss = loss_of(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            steps += 1
            if losses is not None:
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    return
            if (max_steps and steps >= max_steps) or (deadline is not None and time.time() > deadline):
                return


def _short_train(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    epochs: int,
    seed: int,
    zero_inputs: bool = False,
    max_steps: int | None = None,
    deadline: float | None = None,
) -> tuple[nn.Module, float, float]:
    """Train briefly with the config's optimizer (at most ``max_steps`` steps, and not past
    ``deadline``, a time.time() value); returns (model, val loss, val accuracy). A regression:
    (model, val mse on the standardized label, the target metric in the label's units)."""
    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device, seed)
    _train_steps(model, cfg, bundle, epochs, seed, device, zero_inputs, max_steps, deadline)
    model.eval()
    xv, yv = sample(bundle, "val", 4096, device=device)
    with torch.no_grad():
        out = model(torch.zeros_like(xv) if zero_inputs else xv).float()
        if bundle.regression:
            from trainkit.metrics import regression_scores

            z = out.reshape(len(yv), -1)[:, 0]
            scores = regression_scores(bundle.to_label_units(yv), bundle.to_label_units(z))
            return model, float(F.mse_loss(z, yv)), scores[cfg.target.metric]
        return model, float(F.cross_entropy(out, yv)), float((out.argmax(1) == yv).float().mean())
