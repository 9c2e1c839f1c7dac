"""Phase 5's model and data: the phase's data (loaded once), the best model so far, the final model
loaded from its checkpoint, and its predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit._io import read_json
from trainkit.phases.common import (
    FinalizationContext,
)
from trainkit.run import (
    TRAIN_SUMMARY,
    TRAINING_CONFIG,
    Phase,
    RunFolder,
    BEST_JSON,
    BEST_PT,
    CHECKPOINTS_BEST_PT,
)

PHASE = Phase.FINALIZATION.value


def _best_so_far(run_dir: Path) -> tuple[Path, Path] | None:
    """(training folder, its config) of the best model so far: Phase 4's adopted best, else the
    latest baseline attempt with a best checkpoint."""
    if (run_dir / BEST_JSON).is_file():
        b = read_json(run_dir / BEST_JSON)
        return run_dir / b["dir"], run_dir / b["config"]
    d = RunFolder(run_dir).latest(Phase.BASELINE.value)
    if d is not None and (d / "checkpoints" / BEST_PT).is_file() and (d / TRAIN_SUMMARY).is_file():
        return d, d / TRAINING_CONFIG
    return None


def _bundle(ctx: FinalizationContext) -> Any:
    """The phase's data, loaded once (the fingerprint check and the split run once per phase)."""
    if getattr(ctx, "bundle", None) is None:
        from trainkit.run import load_run_data

        ctx.bundle = load_run_data(ctx.config, ctx.run_dir, PHASE)
    return ctx.bundle


def _load_final(ctx: FinalizationContext, bundle: Any) -> torch.nn.Module:
    return _load_model(ctx.config.model, bundle, ctx.path(CHECKPOINTS_BEST_PT))


def _load_model(m: Any, bundle: Any, checkpoint: Path) -> torch.nn.Module:
    """The model of the config's ``model`` section ``m`` for ``bundle``, with the weights of
    ``checkpoint`` (a trainkit checkpoint), in eval mode."""
    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model

    model = build_model(m.name, bundle.input_shape, bundle.num_classes, m.kwargs, m.init)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    return model.eval()


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x).float(), 1).numpy()
