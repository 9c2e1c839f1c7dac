"""The training loop's state (the loop, its progress, one epoch's running sums), its checkpoints
(last and best, written atomically) and resuming from the last one."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit._io import write_text_atomic
from trainkit.checkpoints import load_checkpoint, remove_stale_temps, save_checkpoint
from trainkit.config import TrainkitConfig, config_to_dict
from trainkit.data import DataBundle
from trainkit.errors import CheckpointError, TrainingError
from trainkit.monitor import GpuMonitor
from trainkit.repro import restore_rng_state, rng_state
from trainkit.run import (
    METRICS,
    BEST_PT,
    LAST_PT,
)
from trainkit.scoring import evaluate


@dataclass
class _Loop:
    """What set-up built: fixed for the whole fit."""

    cfg: TrainkitConfig
    bundle: DataBundle
    device: torch.device
    rank: int
    world: int
    out: Path | None
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: str
    amp: torch.dtype | None
    params: list[torch.Tensor]
    class_weight: torch.Tensor | None
    clip: float
    guard_every: int
    n_batches: int
    scheduled: bool = True
    select_last: bool = False
    bar: Any = None
    monitor: GpuMonitor | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_dir(self) -> Path | None:
        return self.out / "checkpoints" if self.out is not None else None


@dataclass
class _Progress:
    """What changes from epoch to epoch, and what a checkpoint restores."""

    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    start_epoch: int = 0
    best: dict[str, Any] | None = None
    bad_epochs: int = 0
    init_loss: float = float("nan")
    resumed_from: int | None = None
    train_time: float = 0.0
    status: str = "completed"
    nonfinite: dict[str, Any] | None = None
    last_finite: Any = None  # the last checked step's per-sample loss (the NaN record's "before")


@dataclass
class _Epoch:
    """One epoch's running sums (on the device: no host read per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor  # a regression: the sums (squared error, absolute error, y, y²) on the standardized label
    window: list[int]
    t0: float = field(default_factory=time.perf_counter)
    seen: int = 0
    wait: float = 0.0
    norms: list[torch.Tensor] = field(default_factory=list)
    pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    bar_steps: int = 0
    bar_t: float = field(default_factory=time.perf_counter)


def _resume(lp: _Loop, resume: bool) -> _Progress:
    """Restore the last checkpoint (``resume``) or start fresh; then the loss at init, DDP, compile."""
    pr = _Progress()
    last_path = lp.ckpt_dir / LAST_PT if lp.ckpt_dir is not None else None
    if resume and lp.ckpt_dir is not None and lp.is_main:
        remove_stale_temps(lp.ckpt_dir)  # an interrupted write's leftovers
    if resume and last_path is not None and last_path.exists():
        _restore(lp, pr, load_checkpoint(last_path, map_location=lp.device), last_path)
    elif lp.is_main and lp.out is not None:
        write_text_atomic(lp.out / METRICS, "")
    if math.isnan(pr.init_loss):
        try:
            pr.init_loss = evaluate(lp.model, lp.bundle, "val", lp.device, amp=lp.amp)["loss"]
        except (RuntimeError, ValueError, IndexError) as exc:
            raise TrainingError(
                f"the model's first forward pass failed on input shape {tuple(lp.bundle.input_shape)} "
                f"(model {lp.cfg.model.name!r}, {lp.bundle.num_classes} classes): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if lp.world > 1:
        lp.net = nn.parallel.DistributedDataParallel(
            lp.model, device_ids=[lp.device.index] if lp.device.type == "cuda" else None
        )
    if (
        lp.cfg.training.compile
    ):  # evaluation and checkpoints use the plain module (no _orig_mod. prefixes in state dicts)
        lp.net = torch.compile(lp.net)
    lp.monitor = GpuMonitor(lp.device.index or 0).start() if lp.device.type == "cuda" else None
    pr.train_time = sum(r.get("epoch_time_s", 0.0) for r in pr.history)
    return pr


def _restore(lp: _Loop, pr: _Progress, state: dict[str, Any], path: Path) -> None:
    try:
        lp.model.load_state_dict(state["model"])
        lp.optimizer.load_state_dict(state["optimizer"])
        lp.scheduler.load_state_dict(state["scheduler"])
        lp.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: does not match this config's model/optimizer ({exc}); resume with the config it was written with"
        ) from None
    restore_rng_state(state["rng"])
    pr.history, pr.step = list(state["metrics"]), int(state["step"])
    pr.start_epoch, pr.resumed_from = int(state["epoch"]) + 1, int(state["epoch"])
    pr.best, pr.bad_epochs, pr.init_loss = state["best"], int(state["bad_epochs"]), float(state["init_loss"])
    if lp.is_main and lp.out is not None:  # drop any line written after that checkpoint (a kill mid-epoch)
        write_text_atomic(
            lp.out / METRICS, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in pr.history)
        )


def _save(lp: _Loop, pr: _Progress, epoch: int, improved: bool) -> None:
    """The checkpoint, a plain dict that describes itself: ``last.pt`` always, ``best.pt`` when improved."""
    b = lp.bundle
    lp.scheduler.last_epoch = pr.step  # the schedule's position, stepped or not (a constant LR is not)
    state = {
        "model": lp.model.state_dict(),
        "optimizer": lp.optimizer.state_dict(),
        "scheduler": lp.scheduler.state_dict(),
        "scaler": lp.scaler.state_dict(),
        "epoch": epoch,
        "step": pr.step,
        "rng": rng_state(),
        "config": config_to_dict(lp.cfg),
        "metrics": pr.history,
        "best": pr.best,
        "bad_epochs": pr.bad_epochs,
        "init_loss": pr.init_loss,
        "input_shape": list(b.input_shape),
        "class_names": b.source.class_names,
        "normalization": {"mean": b.mean.tolist(), "std": b.std.tolist()},
        "label_scale": b.label_scale,
    }
    assert lp.ckpt_dir is not None
    if improved:
        save_checkpoint(state, lp.ckpt_dir / BEST_PT)
    save_checkpoint(state, lp.ckpt_dir / LAST_PT)
