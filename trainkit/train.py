"""``fit()``: the one explicit training loop every phase reuses.

Read it top to bottom: set up (device, seeds, model, optimizer, schedule, precision, resume),
then for each epoch: train steps (with the NaN/Inf guard), validation, one metrics line, the
``best``/``last`` checkpoints, early stopping. No Trainer class and no callback zoo: one optional
``on_epoch(record)`` hook feeds the live plot (returning True stops a run that cannot win: Phase 4
prunes seeds so). Runs unchanged under ``torchrun`` (DDP).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trainkit._io import append_jsonl, progress_bar, write_json_atomic
from trainkit.config import TrainkitConfig, save_config
from trainkit.data import DataBundle, augment_batch
from trainkit.devices import all_sum, dist_setup, precision_for, resolve_device
from trainkit.errors import TrainingError
from trainkit.losses import as_logits, loss_of
from trainkit.models import build_for
from trainkit.metrics import better, row_score
from trainkit.scoring import evaluate, predict_numbers
from trainkit.repro import seed_everything, set_deterministic
from trainkit.run import (
    METRICS,
    TRAINING_CONFIG,
    TRAIN_SUMMARY,
    BEST_PT,
    LAST_PT,
)
from trainkit.optim import _guard, _quantiles, class_weights, grad_norm, lr_factors, make_optimizer
from trainkit.fit_state import _Epoch, _Loop, _Progress, _resume, _save

__all__ = ["fit", "FitResult", "evaluate", "predict_numbers", "lr_factors", "resolve_device", "make_optimizer"]


@dataclass
class FitResult:
    """What a training run produced; also written as ``train_summary.json``."""

    status: str  # completed | early_stopped | time_budget | pruned | nonfinite
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    init_loss: float
    nonfinite: dict[str, Any] | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    threads: int = 0  # torch's CPU threads (a CPU fit's numbers depend on them: trainkit.workers)
    precision: str = "fp32"
    resumed_from_epoch: int | None = None
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Without clipping the gradient norm is computed every 4th step only: its statistics (grad_norm_p50/p90/max)
# are sampled, and the NaN/Inf guard checks the loss at every step and the gradient norm where there is one. A
# gradient that turns non-finite while its loss is finite makes the next step's loss non-finite: caught there.
# With clipping the norm is computed, and clipping exact, at every step.
GRAD_STATS_EVERY = 4
BAR_INTERVAL_S = 0.25  # the progress bar is updated a few times a second, not every step


def fit(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], Any] | None = None,
    deadline: float | None = None,
    max_epochs: int | None = None,
    select: str = "best",
) -> FitResult:
    """Train ``cfg``'s model on ``bundle``; write metrics.jsonl and checkpoints/{best,last}.pt to ``out_dir``.

    ``select="last"``: the best checkpoint is the last epoch's (a refit on train+val for a fixed
    epoch count, whose val rows are training rows: their accuracy selects nothing).

    ``deadline`` (a ``time.time()`` value, from the phase's time budget): no epoch starts that would
    end past it (judged from the last epoch's time), and an epoch running past it stops; the first
    epoch always completes. The status is then ``time_budget``. ``max_epochs`` stops after that many
    epochs with the same status (the LR schedule still spans ``training.epochs``: the run is the
    first part of a whole one, e.g. to mirror a baseline the budget cut short).

    Under torchrun (``WORLD_SIZE`` > 1) the process group is created here and torn down again on the way out
    (a gloo group left to the interpreter's exit aborts the process with "terminate called ...")."""
    if select not in ("best", "last"):
        raise ValueError(
            f"fit(select={select!r}): expected 'best' (the best val epoch) or 'last' (a refit's last epoch)"
        )
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        created = not dist.is_initialized()
    try:
        return _fit(
            cfg,
            bundle,
            out_dir,
            resume=resume,
            progress=progress,
            on_epoch=on_epoch,
            deadline=deadline,
            max_epochs=max_epochs,
            select=select,
        )
    finally:
        if created:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()


def _fit(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    out_dir: str | Path | None,
    *,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], Any] | None,
    deadline: float | None = None,
    max_epochs: int | None = None,
    select: str = "best",
) -> FitResult:
    """Set up, resume, then the two loops: epochs, and the steps of one epoch."""
    t_start = time.perf_counter()
    lp = _setup(cfg, bundle, out_dir)
    lp.select_last = select == "last"
    pr = _resume(lp, resume)
    lp.bar = progress_bar((cfg.training.epochs - pr.start_epoch) * lp.n_batches, "train", progress and lp.is_main)
    tr = cfg.training
    for epoch in range(pr.start_epoch, tr.epochs):
        if _late(lp, pr, deadline) or (max_epochs is not None and epoch >= max_epochs):
            pr.status = "time_budget"
            break
        lp.net.train()
        batches = bundle.batches(
            "train",
            cfg.data.batch_size,
            shuffle=True,
            seed=tr.seed,
            epoch=epoch,
            rank=lp.rank,
            world=lp.world,
            device=lp.device,
            workers=cfg.data.workers,
            balanced=cfg.data.sampler == "balanced",
        )
        ep = _start_epoch(lp, batches.plan.global_sizes())
        it, last = iter(batches), len(batches) - 1
        for i in range(len(batches)):
            t_wait = time.perf_counter()
            xb, yb, _ = next(it)
            ep.wait += time.perf_counter() - t_wait
            if not _step(lp, pr, ep, epoch, i, xb, yb, i == last):
                break  # the NaN/Inf guard stopped this epoch (pr.nonfinite says where)
            if deadline is not None and lp.world == 1 and pr.history and i % 8 == 7 and time.time() > deadline:
                pr.status = "time_budget"  # past the deadline mid-epoch: this epoch is not counted
                break
        _bar_flush(lp, ep)
        if pr.status == "time_budget":
            break
        if pr.nonfinite is not None:
            pr.status = "nonfinite"
            if lp.is_main and lp.out is not None:
                append_jsonl(lp.out / METRICS, {"event": "nonfinite", **pr.nonfinite})
            break
        stop = _end_epoch(lp, pr, ep, epoch, on_epoch)
        if stop is not None:
            pr.status = stop
            break
    return _finish(lp, pr, t_start)


def _setup(cfg: TrainkitConfig, bundle: DataBundle, out_dir: str | Path | None) -> _Loop:
    """Device and process group, seeds, the model, optimizer, schedule and precision."""
    tr = cfg.training
    rank, world, ddp_device = dist_setup(tr.device)
    device = ddp_device or resolve_device(tr.device)
    out = Path(out_dir) if out_dir is not None else None
    if rank == 0 and out is not None:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not (out / TRAINING_CONFIG).exists():  # the recipe beside its metrics (a tracker's params)
            save_config(cfg, out / TRAINING_CONFIG)
    seed_everything(tr.seed)
    set_deterministic(tr.deterministic)
    model = build_for(cfg, bundle, device)
    if device.type == "cuda" and len(bundle.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    precision, amp = precision_for(cfg, device)
    optimizer = make_optimizer(cfg, model.parameters())
    n_batches = len(bundle.batches("train", cfg.data.batch_size, shuffle=False, world=world))
    steps_per_epoch = max(1, math.ceil(n_batches / tr.accumulation))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(cfg, steps_per_epoch))
    return _Loop(
        cfg=cfg,
        bundle=bundle,
        device=device,
        rank=rank,
        world=world,
        out=out,
        model=model,
        net=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
        precision=precision,
        amp=amp,
        params=[p for p in model.parameters() if p.requires_grad],
        class_weight=class_weights(bundle).to(device)
        if tr.class_weighting == "balanced" and not bundle.regression
        else None,
        clip=tr.grad_clip if tr.grad_clip is not None else float("inf"),
        # the NaN/Inf guard reads a device value: on CUDA once per guard_every steps (no per-step host
        # sync), on the CPU every step (there is no device to wait for)
        guard_every=1 if device.type == "cpu" else max(1, tr.guard_every),
        n_batches=n_batches,
        scheduled=not (cfg.schedule.name == "constant" and cfg.schedule.warmup_epochs == 0),
    )


def _late(lp: _Loop, pr: _Progress, deadline: float | None) -> bool:
    """True when the next epoch would end past the deadline (judged from the last one's time)."""
    late = deadline is not None and bool(pr.history) and time.time() + pr.history[-1]["epoch_time_s"] > deadline
    if lp.world > 1 and deadline is not None:  # every rank stops at the same epoch, or DDP would hang
        late = bool(all_sum(torch.tensor(float(late), device=lp.device), lp.world) > 0)
    return late


def _start_epoch(lp: _Loop, sizes: list[int]) -> _Epoch:
    acc = lp.cfg.training.accumulation  # each accumulation window averages over its real sample count
    window = [sum(sizes[j - j % acc : j - j % acc + acc]) for j in range(len(sizes))]
    correct = (
        torch.zeros(4, device=lp.device)
        if lp.bundle.regression
        else torch.zeros((), device=lp.device, dtype=torch.long)
    )
    return _Epoch(loss_sum=torch.zeros((), device=lp.device), correct=correct, window=window)


def _step(
    lp: _Loop, pr: _Progress, ep: _Epoch, epoch: int, i: int, xb: torch.Tensor, yb: torch.Tensor, last: bool
) -> bool:
    """One batch: forward, backward, and at an accumulation boundary the clip, the NaN/Inf guard
    and the optimizer step. False when the guard found a non-finite loss or gradient."""
    cfg, tr = lp.cfg, lp.cfg.training
    if cfg.data.augment != "none":
        xb = augment_batch(xb, cfg.data.augment)
    if lp.device.type == "cuda" and xb.ndim == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)
    batch_loss, logits = _forward_backward(lp, epoch, pr.step, xb, yb, ep.window[i])
    ep.loss_sum += batch_loss.detach()
    if lp.bundle.regression:
        err = as_logits(logits.detach()).float().reshape(len(yb), -1)[:, 0] - yb
        ep.correct += torch.stack([(err * err).sum(), err.abs().sum(), yb.sum(), (yb * yb).sum()])
    else:
        ep.correct += (as_logits(logits.detach()).argmax(1) == yb).sum()
    ep.seen += len(yb)  # a python int: no tensor op per step
    _bar_tick(lp, ep)
    if not ((i + 1) % tr.accumulation == 0 or last):
        return True
    fp16 = lp.precision == "fp16"
    if fp16:
        lp.scaler.unscale_(lp.optimizer)
    gnorm = grad_norm(lp.params, lp.clip) if math.isfinite(lp.clip) or pr.step % GRAD_STATS_EVERY == 0 else None
    if tr.nan_guard and not _guard_step(lp, pr, ep, epoch, batch_loss, gnorm, len(yb), last):
        lp.optimizer.zero_grad(set_to_none=True)
        return False
    if fp16:
        lp.scaler.step(lp.optimizer)
        lp.scaler.update()
    else:
        lp.optimizer.step()
    lp.optimizer.zero_grad(set_to_none=True)
    if lp.scheduled:  # a constant LR without warmup has nothing to step
        lp.scheduler.step()
    pr.step += 1
    if gnorm is not None:
        ep.norms.append(gnorm.detach())
    return True


def _forward_backward(
    lp: _Loop, epoch: int, step: int, xb: torch.Tensor, yb: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed batch loss and the logits; the gradient of loss / window is accumulated."""
    tr = lp.cfg.training
    try:
        if lp.amp is not None:
            with torch.autocast(lp.device.type, dtype=lp.amp):
                logits = lp.net(xb)
        else:
            logits = lp.net(xb)
        batch_loss = loss_of(
            logits,
            yb,
            weight=lp.class_weight,
            reduction="sum",
            label_smoothing=tr.label_smoothing,
            regression_loss=tr.regression_loss,
        )
        loss = batch_loss / (window / lp.world)
        (lp.scaler.scale(loss) if lp.precision == "fp16" else loss).backward()
    except Exception as exc:
        if not isinstance(exc, (RuntimeError, ValueError, IndexError)) and not tr.compile:
            raise
        hint = " (training.compile is on: set it to false if torch.compile cannot build here)" if tr.compile else ""
        raise TrainingError(
            f"training step failed at epoch {epoch} step {step} on a batch of shape "
            f"{tuple(xb.shape)} (model {lp.cfg.model.name!r}, {lp.bundle.num_classes} classes): "
            f"{type(exc).__name__}: {str(exc)[:1500]}{hint}"
        ) from exc
    return batch_loss, logits


def _guard_step(
    lp: _Loop,
    pr: _Progress,
    ep: _Epoch,
    epoch: int,
    batch_loss: torch.Tensor,
    gnorm: torch.Tensor | None,
    n: int,
    last: bool,
) -> bool:
    """The NaN/Inf guard at one optimizer step (the loss, and the gradient norm when this step has
    one). On the CPU the scalars are read at once (no device to wait for); on CUDA the flags queue
    up and are read with one host sync every ``guard_every`` steps. False, with ``pr.nonfinite``
    set, when a step went bad."""
    loss = batch_loss.detach()
    if lp.guard_every == 1:
        loss_f = loss.item()
        if math.isfinite(loss_f) and (gnorm is None or math.isfinite(gnorm.item())):
            pr.last_finite = loss_f / n
            return True
        norm = gnorm.detach() if gnorm is not None else torch.full((), float("nan"))
        ep.pending = [(pr.step, torch.tensor(False), loss / n, norm)]
    else:
        norm = gnorm.detach() if gnorm is not None else torch.zeros((), device=loss.device)
        ep.pending.append((pr.step, torch.isfinite(norm + loss), loss / n, norm))
        if len(ep.pending) < lp.guard_every and not last:
            return True
    pr.nonfinite = _guard(ep.pending, lp.model, epoch, pr.history, pr.init_loss, pr.last_finite)
    if pr.nonfinite is None:
        pr.last_finite, ep.pending = ep.pending[-1][2], []
    return pr.nonfinite is None


def _bar_tick(lp: _Loop, ep: _Epoch) -> None:
    if lp.bar is None:
        return
    ep.bar_steps += 1
    now = time.perf_counter()
    if now - ep.bar_t >= BAR_INTERVAL_S:
        _bar_flush(lp, ep, now)


def _bar_flush(lp: _Loop, ep: _Epoch, now: float | None = None) -> None:
    if lp.bar is not None and ep.bar_steps:
        lp.bar.update(ep.bar_steps)
        ep.bar_steps, ep.bar_t = 0, now or time.perf_counter()


def _end_epoch(
    lp: _Loop, pr: _Progress, ep: _Epoch, epoch: int, on_epoch: Callable[[dict[str, Any]], Any] | None
) -> str | None:
    """Validation, the metrics line, best/last checkpoints, early stopping; the stop status or None."""
    tr = lp.cfg.training
    metric = lp.cfg.target.metric
    totals = all_sum(
        torch.cat(
            [ep.loss_sum.float().view(1), ep.correct.float().view(-1), torch.tensor([float(ep.seen)], device=lp.device)]
        ),
        lp.world,
    )
    val = evaluate(lp.model, lp.bundle, "val", lp.device, amp=lp.amp, metric=metric)
    epoch_time = time.perf_counter() - ep.t0
    pr.train_time += epoch_time
    record = {
        "epoch": epoch,
        "step": pr.step,
        "train_loss": float(totals[0] / totals[-1]),
        **_train_scores(lp, totals),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_score": val["score"],
        **({f"val_{k}": val[k] for k in ("rmse", "mae", "r2")} if lp.bundle.regression else {}),
        "lr": lp.optimizer.param_groups[0]["lr"],
        **_quantiles(ep.norms),
        "epoch_time_s": epoch_time,
        "samples_per_s": float(totals[-1]) / epoch_time,
        "data_wait_fraction": ep.wait / epoch_time,
        **(lp.monitor.epoch_stats() if lp.monitor else {}),
    }
    pr.history.append(record)
    # a tie on the metric (a discrete one, stuck at the majority share on rare positives) is broken by the val loss
    tie = pr.best is not None and record["val_score"] == row_score(pr.best) and record["val_loss"] < pr.best["val_loss"]
    ahead = pr.best is None or better(metric, record["val_score"], row_score(pr.best))
    improved = ahead or tie or lp.select_last
    pr.bad_epochs = (
        0
        if pr.best is None or better(metric, record["val_score"], row_score(pr.best), tr.min_delta) or tie
        else pr.bad_epochs + 1
    )
    if improved:
        pr.best = dict(record)
    if lp.is_main and lp.out is not None:
        append_jsonl(lp.out / METRICS, record)
        _save(lp, pr, epoch, improved)
    stop = on_epoch(record) if on_epoch is not None and lp.is_main else None
    if lp.bar is not None:
        shown = "" if record["val_accuracy"] is None else f" val_acc {record['val_accuracy']:.3f}"
        lp.bar.set_postfix_str(
            f"epoch {epoch + 1}/{tr.epochs}{shown}"
            + ("" if metric == "accuracy" else f" {metric} {record['val_score']:.4g}"),
            refresh=False,
        )
    if tr.patience is not None and pr.bad_epochs >= tr.patience:
        return "early_stopped"
    if stop is True and lp.world == 1:  # the hook returned True: this run cannot win (Phase 4 prunes it)
        return "pruned"
    return None


def _train_scores(lp: _Loop, totals: torch.Tensor) -> dict[str, Any]:
    """The epoch's training-mode scores: accuracy, or a regression's rmse, mae, r2 and target metric
    (``train_score``) from the running sums, in the label's units (``train_accuracy`` None)."""
    n = float(totals[-1])
    if not lp.bundle.regression:
        return {"train_accuracy": float(totals[1] / n)}
    sse, sae, sy, syy = (float(v) for v in totals[1:5])
    std = (lp.bundle.label_scale or {"std": 1.0})["std"]
    sst = syy - sy * sy / n
    scores = {"rmse": math.sqrt(sse / n) * std, "mae": sae / n * std, "r2": 1.0 - sse / sst if sst > 0 else 0.0}
    return {
        "train_accuracy": None,
        "train_score": scores[lp.cfg.target.metric],
        **{f"train_{k}": v for k, v in scores.items()},
    }


def _finish(lp: _Loop, pr: _Progress, t_start: float) -> FitResult:
    if lp.bar is not None:
        lp.bar.close()
    if lp.monitor is not None:
        lp.monitor.stop()
    ckpt = lp.ckpt_dir
    result = FitResult(
        status=pr.status,
        history=pr.history,
        best=pr.best,
        init_loss=pr.init_loss,
        nonfinite=pr.nonfinite,
        wall_time_s=time.perf_counter() - t_start,
        train_time_s=pr.train_time,
        device=str(lp.device),
        world_size=lp.world,
        threads=torch.get_num_threads(),
        precision=lp.precision,
        resumed_from_epoch=pr.resumed_from,
        paths={"best": str(ckpt / BEST_PT), "last": str(ckpt / LAST_PT)} if ckpt else {},
    )
    if lp.is_main and lp.out is not None:
        write_json_atomic(lp.out / TRAIN_SUMMARY, result.to_dict())
    return result
