"""Where a fit runs: the device, the precision it can use there, and the process group under
torchrun (DDP). Used by :mod:`trainkit.train` and the probes."""

from __future__ import annotations

import os
from typing import Any

import torch

from trainkit.errors import TrainingError

__all__ = ["resolve_device", "precision_for", "dist_setup", "all_sum"]


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


def precision_for(cfg: Any, device: torch.device) -> tuple[str, torch.dtype | None]:
    p = cfg.training.precision
    if device.type != "cuda":
        if p in ("bf16", "fp16"):
            raise TrainingError(f"training.precision={p} needs CUDA; this run is on {device}; use auto or fp32")
        return "fp32", None
    if p == "auto":
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return p, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def dist_setup(device_spec: str) -> tuple[int, int, torch.device | None]:
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


def all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t
