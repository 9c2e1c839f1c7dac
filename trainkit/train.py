"""``fit()``: the one explicit training loop every phase reuses.

Read it top to bottom: set up (device, seeds, model, optimizer, schedule, precision, resume),
then for each epoch: train steps (with the NaN/Inf guard), validation, one metrics line, the
``best``/``last`` checkpoints, early stopping. No Trainer class and no callback zoo: one optional
``on_epoch(record)`` hook feeds the live plot (returning True stops a run that cannot win: Phase 4
prunes seeds so). Runs unchanged under ``torchrun`` (DDP).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainkit._io import append_jsonl, write_json_atomic, write_text_atomic
from trainkit.checkpoints import load_checkpoint, remove_stale_temps, save_checkpoint
from trainkit.config import TrainkitConfig, config_to_dict, save_config
from trainkit.data import DataBundle, augment_batch
from trainkit.errors import CheckpointError, TrainingError
from trainkit.models import build_model
from trainkit.monitor import GpuMonitor
from trainkit.repro import restore_rng_state, rng_state, seed_everything, set_deterministic

__all__ = ["fit", "FitResult", "evaluate", "lr_factors", "resolve_device", "make_optimizer"]


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
    precision: str = "fp32"
    resumed_from_epoch: int | None = None
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ helpers

def resolve_device(spec: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; a CUDA request without CUDA is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"training.device={spec!r} but CUDA is not available here; use 'auto' or 'cpu'")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise TrainingError(f"training.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def _precision(cfg: TrainkitConfig, device: torch.device) -> tuple[str, torch.dtype | None]:
    p = cfg.training.precision
    if device.type != "cuda":
        if p in ("bf16", "fp16"):
            raise TrainingError(f"training.precision={p} needs CUDA; this run is on {device}; use auto or fp32")
        return "fp32", None
    if p == "auto":
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return p, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def make_optimizer(cfg: TrainkitConfig, params: Any) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def lr_factors(cfg: TrainkitConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the peak LR at optimizer step ``s`` (for LambdaLR, plots and tests)."""
    s, total = cfg.schedule, max(1, cfg.training.epochs * steps_per_epoch)
    warm = int(round(s.warmup_epochs * steps_per_epoch))
    if s.name == "one_cycle" and warm == 0:
        warm = max(1, int(0.3 * total))

    def factor(step: int) -> float:
        if s.name == "one_cycle" and step < warm:
            return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * (step + 1) / warm))
        if step < warm:
            return (step + 1) / warm
        if s.name == "constant":
            return 1.0
        if s.name == "step":
            return s.gamma ** (step // (s.step_epochs * steps_per_epoch))
        p = min(1.0, (step - warm) / max(1, total - warm))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return factor


@torch.no_grad()
def class_weights(bundle: DataBundle) -> torch.Tensor:
    """Cross-entropy weights N / (K * n_c) from the training split's counts (0 for an absent class)."""
    counts = bundle.class_counts("train").double()
    w = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()


@torch.no_grad()  # no graph: without it every val batch's activations stayed alive until the sum (1.4 GB on 2,000 images)
def evaluate(model: nn.Module, bundle: DataBundle, split: str, device: torch.device,
             batch_size: int = 512, amp: torch.dtype | None = None, reason: str = "") -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on a split (no sharding; every rank sees all of it)."""
    was = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for xb, yb, _ in bundle.batches(split, batch_size, shuffle=False, device=device, reason=reason):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
        n += len(yb)
    model.train(was)
    return {"loss": (loss / max(n, 1)).item(), "accuracy": (correct.float() / max(n, 1)).item()}


def _dist_setup(device_spec: str) -> tuple[int, int, torch.device | None]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return dist.get_rank(), dist.get_world_size(), dev


def _all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Global L2 norm of the gradients; clipped to ``clip`` when finite (no rescaling pass otherwise)."""
    if math.isfinite(clip):
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _first_nonfinite_param(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def _guard(pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]], model: nn.Module, epoch: int,
           history: list[dict[str, Any]], init_loss: float, last_finite: torch.Tensor | None) -> dict[str, Any] | None:
    """Check the steps in ``pending`` (step, finite flag, loss, grad norm) with one host read; the
    non-finite record of the first bad one, or None when all were finite."""
    flags = torch.stack([f for _, f, _, _ in pending]).cpu()
    if bool(flags.all()):
        return None
    k = int((~flags).nonzero()[0])
    step, _, loss, gnorm = pending[k]
    before = pending[k - 1][2] if k > 0 else last_finite
    return {"epoch": epoch, "step": step, "batch_loss": float(loss), "grad_norm": float(gnorm),
            "parameter": _first_nonfinite_param(model), "detected_after_steps": len(pending) - 1 - k,
            "last_finite_loss": float(before) if before is not None else (history[-1]["train_loss"] if history else init_loss)}


def _quantiles(norms: list[torch.Tensor]) -> dict[str, float]:
    if not norms:
        return {}
    t = torch.stack(norms).float().cpu()
    t = t[torch.isfinite(t)]
    if len(t) == 0:
        return {}
    return {"grad_norm_p50": float(t.quantile(0.5)), "grad_norm_p90": float(t.quantile(0.9)),
            "grad_norm_max": float(t.max())}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from trainkit._io import progress_bar

    return progress_bar(total, desc, enabled)


# ------------------------------------------------------------------ the loop

def fit(cfg: TrainkitConfig, bundle: DataBundle, out_dir: str | Path | None = None, *, resume: bool = False,
        progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None,
        deadline: float | None = None, max_epochs: int | None = None) -> FitResult:
    """Train ``cfg``'s model on ``bundle``; write metrics.jsonl and checkpoints/{best,last}.pt to ``out_dir``.

    ``deadline`` (a ``time.time()`` value, from the phase's time budget): no epoch starts that would
    end past it (judged from the last epoch's time), and an epoch running past it stops; the first
    epoch always completes. The status is then ``time_budget``. ``max_epochs`` stops after that many
    epochs with the same status (the LR schedule still spans ``training.epochs``: the run is the
    first part of a whole one, e.g. to mirror a baseline the budget cut short).

    Under torchrun (``WORLD_SIZE`` > 1) the process group is created here and torn down again on the way out
    (a gloo group left to the interpreter's exit aborts the process with "terminate called ...")."""
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        created = not dist.is_initialized()
    try:
        return _fit(cfg, bundle, out_dir, resume=resume, progress=progress, on_epoch=on_epoch, deadline=deadline,
                    max_epochs=max_epochs)
    finally:
        if created:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()


def _fit(cfg: TrainkitConfig, bundle: DataBundle, out_dir: str | Path | None, *, resume: bool, progress: bool,
         on_epoch: Callable[[dict[str, Any]], None] | None, deadline: float | None = None,
         max_epochs: int | None = None) -> FitResult:
    t_start = time.perf_counter()
    tr = cfg.training
    rank, world, ddp_device = _dist_setup(tr.device)
    device = ddp_device or resolve_device(tr.device)
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    if is_main and out is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not (out / "training_config.yaml").exists():  # the recipe beside its metrics (a tracker's params)
            save_config(cfg, out / "training_config.yaml")

    seed_everything(tr.seed)
    set_deterministic(tr.deterministic)
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.kwargs, cfg.model.init).to(device)
    if device.type == "cuda" and len(bundle.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    precision, amp = _precision(cfg, device)
    fp16 = precision == "fp16"
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    optimizer = make_optimizer(cfg, model.parameters())
    n_batches = len(bundle.batches("train", cfg.data.batch_size, shuffle=False, world=world))
    steps_per_epoch = max(1, math.ceil(n_batches / tr.accumulation))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(cfg, steps_per_epoch))

    history: list[dict[str, Any]] = []
    start_epoch, step, best, bad_epochs, resumed_from = 0, 0, None, 0, None
    init_loss = float("nan")
    last_path = ckpt_dir / "last.pt" if ckpt_dir is not None else None
    if resume and ckpt_dir is not None and is_main:
        remove_stale_temps(ckpt_dir)  # an interrupted write's leftovers
    if resume and last_path is not None and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{last_path}: does not match this config's model/optimizer ({exc}); "
                                  "resume with the config it was written with") from None
        restore_rng_state(state["rng"])
        history, step = list(state["metrics"]), int(state["step"])
        start_epoch, resumed_from = int(state["epoch"]) + 1, int(state["epoch"])
        best, bad_epochs, init_loss = state["best"], int(state["bad_epochs"]), float(state["init_loss"])
        if is_main:  # drop any line written after that checkpoint (a kill mid-epoch)
            write_text_atomic(out / "metrics.jsonl", "".join(_jsonl_line(r) for r in history))
    elif is_main and out is not None:
        write_text_atomic(out / "metrics.jsonl", "")
    if math.isnan(init_loss):
        try:
            init_loss = evaluate(model, bundle, "val", device, amp=amp)["loss"]
        except (RuntimeError, ValueError, IndexError) as exc:
            raise TrainingError(f"the model's first forward pass failed on input shape {tuple(bundle.input_shape)} "
                                f"(model {cfg.model.name!r}, {bundle.num_classes} classes): {type(exc).__name__}: {exc}") from exc

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tr.compile:  # evaluation and checkpoints use the plain module (no _orig_mod. prefixes in state dicts)
        net = torch.compile(net)
    monitor = GpuMonitor(device.index or 0).start() if device.type == "cuda" else None
    bar = _progress((tr.epochs - start_epoch) * n_batches, "train", progress and is_main)
    status, nonfinite, train_time = "completed", None, sum(r.get("epoch_time_s", 0.0) for r in history)
    params = [p for p in model.parameters() if p.requires_grad]
    class_weight = class_weights(bundle).to(device) if tr.class_weighting == "balanced" else None
    clip = tr.grad_clip if tr.grad_clip is not None else float("inf")
    # the NaN/Inf guard reads a device value: on CUDA once per guard_every steps (no per-step host sync),
    # on the CPU every step (there is no device to wait for)
    guard_every = 1 if device.type == "cpu" else max(1, tr.guard_every)
    last_finite: torch.Tensor | None = None

    for epoch in range(start_epoch, tr.epochs):
        late = deadline is not None and bool(history) and time.time() + history[-1]["epoch_time_s"] > deadline
        if world > 1 and deadline is not None:  # every rank stops at the same epoch, or DDP would hang
            late = bool(_all_sum(torch.tensor(float(late), device=device), world) > 0)
        if late or (max_epochs is not None and epoch >= max_epochs):
            status = "time_budget"
            break
        t_epoch = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        norms: list[torch.Tensor] = []
        wait = 0.0
        pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # steps not yet checked for NaN/Inf
        batches = bundle.batches("train", cfg.data.batch_size, shuffle=True, seed=tr.seed, epoch=epoch,
                                 rank=rank, world=world, device=device, workers=cfg.data.workers,
                                 balanced=cfg.data.sampler == "balanced")
        sizes = batches.plan.global_sizes()  # each accumulation window averages over its real sample count
        window = [sum(sizes[j - j % tr.accumulation:j - j % tr.accumulation + tr.accumulation]) for j in range(len(sizes))]
        it = iter(batches)
        for i in range(len(batches)):
            t_wait = time.perf_counter()
            xb, yb, _ = next(it)
            wait += time.perf_counter() - t_wait
            xb = augment_batch(xb, cfg.data.augment)
            if device.type == "cuda" and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            boundary = (i + 1) % tr.accumulation == 0 or i + 1 == len(batches)
            try:
                with autocast():
                    logits = net(xb)
                batch_loss = F.cross_entropy(logits.float(), yb, weight=class_weight, reduction="sum",
                                             label_smoothing=tr.label_smoothing)
                loss = batch_loss / (window[i] / world)
                (scaler.scale(loss) if fp16 else loss).backward()
            except Exception as exc:
                if not isinstance(exc, (RuntimeError, ValueError, IndexError)) and not tr.compile:
                    raise
                hint = " (training.compile is on: set it to false if torch.compile cannot build here)" if tr.compile else ""
                raise TrainingError(f"training step failed at epoch {epoch} step {step} on a batch of shape "
                                    f"{tuple(xb.shape)} (model {cfg.model.name!r}, {bundle.num_classes} classes): "
                                    f"{type(exc).__name__}: {str(exc)[:1500]}{hint}") from exc
            loss_sum += batch_loss.detach()
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)  # a python int: no tensor op per step
            if boundary:
                if fp16:
                    scaler.unscale_(optimizer)
                gnorm = grad_norm(params, clip)
                if tr.nan_guard:
                    pending.append((step, torch.isfinite(gnorm + batch_loss), batch_loss.detach() / len(yb), gnorm.detach()))
                    if len(pending) >= guard_every or i + 1 == len(batches):
                        nonfinite = _guard(pending, model, epoch, history, init_loss, last_finite)
                        if nonfinite is not None:
                            optimizer.zero_grad(set_to_none=True)
                            break
                        last_finite, pending = pending[-1][2], []
                if fp16:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                norms.append(gnorm.detach())
            if bar is not None:
                bar.update(1)
            if deadline is not None and world == 1 and history and i % 8 == 7 and time.time() > deadline:
                status = "time_budget"  # past the deadline mid-epoch: this epoch is not counted
                break
        if status == "time_budget":
            break
        if nonfinite is not None:
            status = "nonfinite"
            if is_main and out is not None:
                append_jsonl(out / "metrics.jsonl", {"event": "nonfinite", **nonfinite})
            break

        totals = _all_sum(torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)]), world)
        val = evaluate(model, bundle, "val", device, amp=amp)
        epoch_time = time.perf_counter() - t_epoch
        train_time += epoch_time
        record = {"epoch": epoch, "step": step, "train_loss": float(totals[0] / totals[2]),
                  "train_accuracy": float(totals[1] / totals[2]), "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "lr": optimizer.param_groups[0]["lr"],
                  **_quantiles(norms), "epoch_time_s": epoch_time,
                  "samples_per_s": float(totals[2]) / epoch_time,
                  "data_wait_fraction": wait / epoch_time, **(monitor.epoch_stats() if monitor else {})}
        history.append(record)
        improved = best is None or record["val_accuracy"] > best["val_accuracy"]
        if best is None or record["val_accuracy"] > best["val_accuracy"] + tr.min_delta:
            bad_epochs = 0
        else:
            bad_epochs += 1
        if improved:
            best = dict(record)
        if is_main and out is not None:
            append_jsonl(out / "metrics.jsonl", record)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "step": step, "rng": rng_state(), "config": config_to_dict(cfg), "metrics": history,
                     "best": best, "bad_epochs": bad_epochs, "init_loss": init_loss,
                     "input_shape": list(bundle.input_shape), "class_names": bundle.source.class_names,
                     "normalization": {"mean": bundle.mean.tolist(), "std": bundle.std.tolist()}}
            if improved:
                save_checkpoint(state, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        stop = on_epoch(record) if on_epoch is not None and is_main else None
        if bar is not None:
            bar.set_postfix_str(f"epoch {epoch + 1}/{tr.epochs} val_acc {record['val_accuracy']:.3f}", refresh=False)
        if tr.patience is not None and bad_epochs >= tr.patience:
            status = "early_stopped"
            break
        if stop is True and world == 1:  # the hook returned True: this run cannot win (Phase 4 prunes it)
            status = "pruned"
            break

    if bar is not None:
        bar.close()
    if monitor is not None:
        monitor.stop()
    result = FitResult(status=status, history=history, best=best, init_loss=init_loss, nonfinite=nonfinite,
                       wall_time_s=time.perf_counter() - t_start, train_time_s=train_time, device=str(device),
                       world_size=world, precision=precision, resumed_from_epoch=resumed_from,
                       paths={"best": str(ckpt_dir / "best.pt"), "last": str(ckpt_dir / "last.pt")} if ckpt_dir else {})
    if is_main and out is not None:
        write_json_atomic(out / "train_summary.json", result.to_dict())
    return result


def _jsonl_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, sort_keys=True, default=str) + "\n"
