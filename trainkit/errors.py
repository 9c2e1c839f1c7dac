"""Every exception trainkit raises, in one place.

The tree::

    TrainkitError                 base of everything below; catch this to catch trainkit
    ├── ConfigError               a training_config.yaml (or an override) is invalid
    ├── DataError                 a data source is missing, unreadable or malformed
    │   └── QuarantineError       the test split was read before Phase 5
    ├── ModelError                a model name or import path cannot be built
    ├── CheckpointError           a checkpoint is missing, truncated, altered or foreign
    ├── TrainingError             fit() cannot start (bad device, empty data, ...)
    ├── GateError                 a gate record is missing, tampered with, or a sign-off is refused
    │   └── GateBlocked           a gate has failing mandatory checks (recorded in gate.json first)
    ├── RunError                  the run folder or its manifest is missing or inconsistent
    ├── PipelineError             a phase notebook failed under papermill
    └── TrackingError             MLflow tracking is unreachable or refused a record (trainkit track)

Every message says what was expected and what to do next.
"""

from __future__ import annotations

__all__ = [
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
    "TrackingError",
]


class TrainkitError(Exception):
    """Raised when anything in trainkit fails in a way the user can act on."""


class ConfigError(TrainkitError):
    """Raised when a config file, a dotted override or a notebook parameter is invalid.

    ``problems`` holds every problem found, each as ``(dotted.path, message)``.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s):"]
        lines += [f"  - {path}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class DataError(TrainkitError):
    """Raised when a data source is missing, unreadable, or has the wrong shape."""


class QuarantineError(DataError):
    """Raised when the test split is requested before Phase 5 (the access is logged first)."""


class ModelError(TrainkitError):
    """Raised when a model name is unknown or a user model cannot be imported or built."""


class CheckpointError(TrainkitError):
    """Raised when a checkpoint is missing, truncated, altered, or not written by trainkit."""


class TrainingError(TrainkitError):
    """Raised when fit() cannot start or continue (no data, bad device, incompatible resume)."""


class GateError(TrainkitError):
    """Raised when a gate record is missing or tampered with, or a sign-off is not allowed."""


class GateBlocked(GateError):
    """Raised after gate.json is written when mandatory checks fail; ``failures`` lists them."""

    def __init__(self, gate: str, failures: list[str], path: str = "") -> None:
        self.gate = gate
        self.failures = list(failures)
        self.path = path
        where = f" (record: {path})" if path else ""
        super().__init__(
            f"gate '{gate}' is blocked by {len(failures)} mandatory check(s): " + "; ".join(failures) + where
        )


class RunError(TrainkitError):
    """Raised when a run folder or its run.json is missing, or a phase's inputs are absent."""


class CorruptFileError(RunError, ValueError):
    """Raised when a JSON file trainkit wrote (a manifest, a gate record, a summary) no longer
    parses: it was cut short or edited outside trainkit."""


class PipelineError(TrainkitError):
    """Raised when a phase notebook fails under papermill; names the phase and the report."""


class TrackingError(TrainkitError):
    """Raised when MLflow tracking cannot be reached or refuses a record (``trainkit track``); during
    ``trainkit run`` it is one warning instead, and the run goes on."""
