"""Seeding, deterministic mode, environment capture, and the determinism probe."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from typing import Any

import numpy as np
import torch

__all__ = [
    "seed_everything",
    "set_deterministic",
    "seed_worker",
    "capture_environment",
    "rng_state",
    "restore_rng_state",
]

_PACKAGES = [
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "pydantic",
    "papermill",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "ipywidgets",
    "optuna",
    "nvidia-ml-py",
    "trainkit",
]


def seed_everything(seed: int) -> None:
    """Seed python's random, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python/NumPy seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def _use_deterministic_algorithms(enabled: bool) -> None:
    """torch.use_deterministic_algorithms without its ~2 s import of torch._inductor when nothing
    compiled is in play: the inductor flag only matters for torch.compile, so it is set through the
    public function whenever inductor is already loaded (or the private setter is missing)."""
    if (
        torch.are_deterministic_algorithms_enabled() == enabled
        and not torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        return
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(enabled, warn_only=False)
    else:
        torch._C._set_deterministic_algorithms(enabled, warn_only=False)


def set_deterministic(enabled: bool) -> dict[str, Any]:
    """Turn deterministic algorithms and cuDNN flags on or off; returns what was set."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors/lists only (safe for ``weights_only`` checkpoints)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def _gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "devices": []}
    try:
        import pynvml  # from nvidia-ml-py; must degrade cleanly without a GPU

        pynvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU: recorded, not raised
        info["nvml"] = f"unavailable: {type(exc).__name__}"
        return info
    try:
        info["nvml"] = "ok"
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            info["devices"].append(
                {"index": i, "name": pynvml.nvmlDeviceGetName(h), "memory_total_mib": mem.total // 2**20}
            )
    finally:
        pynvml.nvmlShutdown()
    return info


def _packages() -> dict[str, str | None]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def capture_environment() -> dict[str, Any]:
    """What this run ran on: Python, torch, CUDA/cuDNN, GPU (pynvml), CPU, OS, packages, git."""
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": _gpu_info(),
        "cpu": {
            "model": platform.processor() or platform.machine(),
            "count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "packages": _packages(),
        "git": _git_info(),
    }
