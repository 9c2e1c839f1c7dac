"""trainkit: a Jupyter-native toolkit that takes a PyTorch model from plan to production.

Five gated phases (Planning, Baseline, Diagnostics, Optimization, Finalization), one notebook
each, chained headlessly by ``trainkit run``. The public surface is small; heavy modules
(torchvision, papermill, ipywidgets, matplotlib, onnx) are imported only where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

import time as _time

IMPORTED = _time.time()  # when this process first imported trainkit (the run clock's start where /proc is missing)

from trainkit.config import TrainkitConfig, load_config, save_config  # noqa: E402 (after IMPORTED)
from trainkit.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    GateBlocked,
    GateError,
    ModelError,
    PipelineError,
    QuarantineError,
    RunError,
    TrainingError,
    TrainkitError,
)

__all__ = [
    "__version__",
    "TrainkitConfig",
    "load_config",
    "save_config",
    "load_data",
    "fit",
    "from_dataframe",
    "TrainkitError",
    "ConfigError",
    "DataError",
    "QuarantineError",
    "ModelError",
    "CheckpointError",
    "TrainingError",
    "GateError",
    "GateBlocked",
    "RunError",
    "PipelineError",
]


def __getattr__(name: str):  # lazy: torch-heavy entry points load on first use
    if name == "load_data":
        from trainkit.data import load_data

        return load_data
    if name == "from_dataframe":
        from trainkit.data.tables import from_dataframe

        return from_dataframe
    if name == "fit":
        from trainkit.train import fit

        return fit
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
