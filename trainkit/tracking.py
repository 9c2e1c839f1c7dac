"""Experiment tracking in MLflow, optional (``pip install 'trainkit[mlflow]'``).

The only module importing mlflow, and only once tracking is on (``tracking.mlflow: true`` or a
``tracking.uri``); with it off nothing here runs and mlflow is never imported. The run folder
stays the source of truth and :func:`push_run` mirrors it into MLflow::

    parent run  (the trainkit run: flattened config + hash, status, path taken, index.html)
    ├── 01_planning, 02_baseline/attempt-1, 03_diagnostics/round-1, ...  (one per phase folder)
    │   └── each fit below it (Phase 4's candidates and seeds)
    └── sweep <study>  (04_optimization/sweep.db)
        └── trial-N, one per finished Optuna trial

Each run carries params (the flattened config and its hash), per-epoch metrics (every numeric
field of its ``metrics.jsonl``, step = epoch), tags (phase, attempt, decision and reason, gate
state, signer, waivers) and artifacts (reports, figures, gate.json, decision.json). Phase 5's ONNX
model is logged as an MLflow model with its signature and an input example (``model.onnx`` and
``model.ts`` as plain files too); once ``production_ready`` is signed and verifies, a model version
is registered whose tags carry the gate record's sha256 and its waivers.

Pushing is idempotent: ``tracking.json`` in the run folder remembers, per tracking URI and experiment, which
MLflow run holds each record and what was already sent. So one function serves the pipeline
(after each phase, and every ``live_interval_s`` while one trains), notebooks run by hand (at each
gate), sign-offs, and ``trainkit track RUN`` for old runs or after the server was down.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from trainkit._io import read_json, write_json_atomic
from trainkit._track_rows import Target, redact
from trainkit.errors import ConfigError, TrackingError
from trainkit.run import TRACKING

__all__ = [
    "Target",
    "target_for",
    "require_mlflow",
    "push_run",
    "push_quietly",
    "under_pipeline",
    "redact",
    "PIPELINE_ENV",
    "STATE_FILE",
]

STATE_FILE = TRACKING
PIPELINE_ENV = "TRAINKIT_PIPELINE"  # set by `trainkit run` for its kernels: the pipeline pushes, they do not


def under_pipeline() -> bool:
    """True in a phase kernel started by ``trainkit run`` (the pipeline pushes for it)."""
    return os.environ.get(PIPELINE_ENV) == "1"


def target_for(
    run_dir: str | Path, cfg: Any = None, uri: str | None = None, experiment: str | None = None, force: bool = False
) -> Target | None:
    """The run's tracking target from its config's ``tracking`` section (``cfg``, else the run's
    ``config.yaml``); ``uri``/``experiment`` override it. None when tracking is off, unless ``force``
    (``trainkit track``), which falls back to the local store. The local store is
    ``sqlite:///RUNS/mlflow.db`` with its artifacts in ``RUNS/mlartifacts`` (RUNS: the runs folder)."""
    run_dir = Path(run_dir).resolve()
    t = cfg.tracking if cfg is not None else _run_tracking(run_dir)
    if not (t.enabled or uri or force):
        return None
    uri = uri or t.uri
    root = None
    if not uri:
        uri, root = f"sqlite:///{run_dir.parent / 'mlflow.db'}", (run_dir.parent / "mlartifacts").as_uri()
    elif uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        root = (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    exp = experiment or t.experiment
    return Target(
        uri=uri,
        experiment=exp,
        registered_model=t.registered_model or exp,
        artifact_root=root,
        live_interval_s=t.live_interval_s,
    )


def _run_tracking(run_dir: Path) -> Any:
    from trainkit.config import TrackingConfig, load_config
    from trainkit.run import RunFolder

    p = RunFolder(run_dir).tracking_config_path()
    if p is not None:
        try:
            return load_config(p).tracking
        except ConfigError:
            pass
    return TrackingConfig()


def require_mlflow(field: str = "tracking.mlflow") -> None:
    """ConfigError (exit 2, before a run starts) when tracking is asked for and mlflow is missing."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            [
                (
                    field,
                    "MLflow tracking is on but mlflow is not installed; install it with "
                    "pip install 'trainkit[mlflow]', or turn tracking off with --set tracking.mlflow=false",
                )
            ],
            "config",
        )


def push_quietly(run_dir: str | Path, cfg: Any = None, warn: Any = None) -> bool:
    """:func:`push_run` for a notebook run by hand or a sign-off: nothing when tracking is off or the
    pipeline pushes for this kernel; a failure is one warning (``warn``, default stderr), never an error."""
    if under_pipeline():
        return False
    try:
        target = target_for(run_dir, cfg)
    except Exception:
        return False
    if target is None:
        return False
    try:
        push_run(run_dir, target)
        return True
    except Exception as exc:  # tracking never fails a phase or a sign-off
        (warn or _stderr)(failure_message(run_dir, target, exc))
        return False


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def failure_message(run_dir: str | Path, target: Target, exc: BaseException) -> str:
    import shlex

    detail = re.sub(r"\s+", " ", str(exc)).strip()[:300]
    return (
        f"trainkit: warning: MLflow tracking at {target.key} failed ({type(exc).__name__}: {detail}); the run goes on "
        f"and its folder keeps every record. Push it later with: trainkit track {shlex.quote(str(run_dir))}"
        + ("" if target.artifact_root else f" --uri {shlex.quote(target.key)}")
    )


def check_reachable(target: Target, timeout: float = 5.0) -> None:
    """TrackingError at once when an http(s) tracking server does not answer its /health endpoint
    (instead of MLflow's minutes of retries)."""
    if not target.uri.startswith(("http://", "https://")):
        return
    url = target.uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the user's own server)
            r.read(64)
    except Exception as exc:
        raise TrackingError(
            f"the MLflow server at {target.key} does not answer ({type(exc).__name__}: {exc})"
        ) from None


def _prepare_env(target: Target) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine but the records
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server that dies mid-run: seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # our own one line says where to look
    if target.uri.startswith("file:") or "://" not in target.uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One pusher per run folder at a time (the pipeline, a sign-off, ``trainkit track``)."""
    with open(run_dir / ".tracking.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def push_run(run_dir: str | Path, target: Target, metrics_only: bool = False) -> dict[str, Any]:
    """Mirror the run folder into MLflow at ``target``; returns what was sent. Raises TrackingError
    (or MLflow's own error) on failure; ``tracking.json`` keeps what had been sent until then."""
    from trainkit.run import load_manifest

    run_dir = Path(run_dir).resolve()
    load_manifest(run_dir)  # a RunError for a folder that is not a run
    check_reachable(target)
    _prepare_env(target)
    import logging

    from trainkit._mlflow import Pusher, global_uri

    level = logging.getLogger("mlflow").level
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # one warning of ours, not MLflow's chatter
    try:
        with _locked(run_dir), global_uri(target.uri):
            state_path = run_dir / STATE_FILE
            states = _read_state(state_path)
            state = states.setdefault(target.key, {}).setdefault(target.experiment, {})
            pusher = Pusher(run_dir, target, state)
            try:
                pusher.push(metrics_only=metrics_only)
            finally:
                state["pushed_at"] = time.time()
                write_json_atomic(state_path, states)
            return pusher.sent
    finally:
        logging.getLogger("mlflow").setLevel(level)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        states = read_json(path)
    except ValueError:
        states = None
    if not isinstance(states, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()) for v in states.values()
    ):
        raise TrackingError(
            f"{path} is not trainkit's tracking record (a JSON object {{uri: {{experiment: record}}}}); "
            "move it away to push the run again from the start (MLflow then gets new runs for it)"
        )
    return states


class LiveTracker:
    """The pipeline's pusher, on a background thread so that phases never wait for it: a full push
    when the run starts and after each phase (:meth:`kick`), the metrics of the fit in progress
    every ``live_interval_s`` in between, and a last full push at :meth:`close`. The first failure
    is one warning (``warn``) and ends tracking for this invocation; the run goes on."""

    def __init__(self, run_dir: str | Path, target: Target, warn: Any = None) -> None:
        import threading

        self.run_dir, self.target, self.warn = Path(run_dir).resolve(), target, warn or _stderr
        self.failed: str | None = None
        self.sent: dict[str, Any] = {}
        self._wake, self._stop = threading.Event(), False
        self._thread = threading.Thread(target=self._loop, name="trainkit-tracking", daemon=True)

    def start(self) -> "LiveTracker":
        _import_before_threads()
        self._wake.set()
        self._thread.start()
        return self

    def kick(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        try:  # Linux: this thread yields the cores to the phase kernels; its pushes are never urgent
            os.setpriority(os.PRIO_PROCESS, threading_native_id(), 15)
        except (AttributeError, OSError):
            pass
        while self.failed is None:
            kicked = self._wake.wait(self.target.live_interval_s)
            self._wake.clear()
            stopping = self._stop
            try:
                sent = push_run(self.run_dir, self.target, metrics_only=not kicked)
                self.sent = dict(sent, model_version=sent.get("model_version") or self.sent.get("model_version"))
            except Exception as exc:  # tracking never fails a run: one warning, then untracked
                self.failed = failure_message(self.run_dir, self.target, exc)
                self.warn(self.failed)
            if stopping:
                return

    def close(self, timeout: float = 300.0, say: Any = None) -> dict[str, Any] | None:
        """The last push (the run's final state, reports, the model); what was sent, or None. A push
        that takes more than a few seconds says so (``say``) and is given up after ``timeout``."""
        self._stop = True
        self._wake.set()
        self._thread.join(min(5.0, timeout))
        if self._thread.is_alive() and say is not None:
            say(
                f"trainkit: finishing the push to MLflow at {self.target.key} (at most {timeout:.0f} s; what is left "
                f"can be pushed later with trainkit track {self.run_dir})"
            )
        self._thread.join(max(0.0, timeout - 5.0))
        if self._thread.is_alive() and self.failed is None:
            self.failed = (
                f"trainkit: warning: MLflow tracking at {self.target.key} did not finish within {timeout:.0f} s; "
                f"push the run later with: trainkit track {self.run_dir}"
            )
            self.warn(self.failed)
        return None if self.failed else self.sent


def _import_before_threads() -> None:
    """Import, on the calling thread, what the pusher thread and the phase start both import.
    MLflow's first push looks for IPython (is this a notebook?) while papermill, on the main
    thread, imports ``IPython.paths`` to find the kernel; IPython's circular imports run on two
    threads at once fail on Python 3.11 with ``KeyError: 'IPython'`` in one thread and a
    "partially initialized module" in the other (the tracked demo failed its Phase 1 that way)."""
    with contextlib.suppress(ImportError):
        import IPython  # noqa: F401
    import trainkit._mlflow  # noqa: F401  (mlflow itself)
    from mlflow.tracking.context import registry  # noqa: F401  (the context providers of a new run)


def threading_native_id() -> int:
    import threading

    return threading.get_native_id()


def ui_hint(target: Target) -> str:
    """Where to look at a pushed run."""
    if target.uri.startswith(("http://", "https://")):
        return f"open {target.key}"
    return f"see it with: mlflow ui --backend-store-uri {target.key}"


def _start_tracking(run_dir: Path, cfg: Any, trackers: list[Any], echo: Any) -> None:
    """Start pushing the run to MLflow when its config's ``tracking`` section says so (a missing
    mlflow on resume is one warning: the config cannot change on resume)."""
    from trainkit.tracking import LiveTracker, require_mlflow, target_for

    target = target_for(run_dir, cfg)
    if target is None:
        return
    try:
        require_mlflow()
    except ConfigError as exc:
        print(f"trainkit: warning: {exc}; this run goes on untracked", file=sys.stderr)
        return
    trackers.append(LiveTracker(run_dir, target).start())
    echo(f"trainkit: tracking in MLflow at {target.key} (experiment {target.experiment!r})")


def _close_tracking(tracker: Any, echo: Any) -> None:
    from trainkit.tracking import ui_hint

    sent = tracker.close(say=echo)
    if sent:
        version = f"; model version {sent['model_version']} registered" if sent.get("model_version") else ""
        echo(
            f"trainkit: MLflow: run {tracker.run_dir.name} in experiment {tracker.target.experiment!r}{version}; "
            f"{ui_hint(tracker.target)}"
        )


def _kick(trackers: list[Any]) -> None:
    for t in trackers:
        t.kick()
