"""Background GPU sampling through pynvml; absent (not zero) when there is no GPU."""

from __future__ import annotations

import threading
from typing import Any


class GpuMonitor:
    """Samples utilisation (%) and memory (MiB) of one CUDA device every ``interval`` seconds.

    ``available`` is False without a GPU or NVML; then ``epoch_stats()`` returns ``{}``.
    """

    def __init__(self, device_index: int = 0, interval: float = 0.5) -> None:
        self.interval = interval
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            except Exception:
                continue
            with self._lock:
                self._samples.append((float(util), float(mem)))

    def start(self) -> "GpuMonitor":
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trainkit-gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def epoch_stats(self) -> dict[str, float]:
        """Mean utilisation and peak memory since the last call; {} when unavailable or no sample."""
        with self._lock:
            samples, self._samples = self._samples, []
        if not samples:
            return {}
        return {
            "gpu_util_mean": sum(u for u, _ in samples) / len(samples),
            "gpu_mem_max_mib": max(m for _, m in samples),
        }

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
