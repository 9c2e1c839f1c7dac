"""The MLflow side of :mod:`trainkit.tracking`: the one module that imports mlflow.

:class:`Pusher` walks a run folder and sends what MLflow does not have yet, remembering in the
state dict (``tracking.json``, per URI) the MLflow run of each record and what it already sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from trainkit._io import read_json, sha256_bytes, sha256_file
from trainkit.run import (
    SUB_WORD,
    CURRENT_CONFIG,
    DECISION,
    GATE,
    INDEX,
    METRICS,
    Phase,
    RUN_CONFIG,
    RUN_JSON,
    PhaseEntry,
    RunFolder,
    TRAINING_CONFIG,
    TRAIN_SUMMARY,
    load_manifest,
    phase_entries,
    BUDGET_OVERRIDE,
    EXPORT_JSON,
    FINAL_CONFIG_YAML,
    MODEL_ONNX,
    MODEL_TS,
    OPTIMIZATION_CONFIG_YAML,
    SWEEP_CONFIG_YAML,
    SWEEP_DB,
    TEST_EVALUATION_JSON,
)
from trainkit._track_rows import Target, complete_lines, flatten, numeric_items, parse_rows

_ARTIFACTS = {".html", ".md", ".png", ".json", ".yaml", ".ipynb", ".txt"}
_RUN_FILES = (INDEX, RUN_JSON, RUN_CONFIG, CURRENT_CONFIG)
_MAX_ARTIFACT = 50 << 20  # larger files (never a report or a figure) stay in the run folder only

_STATUS = {"completed": "FINISHED", "failed": "FAILED", "blocked": "FAILED", "running": "RUNNING"}
_RUN_STATUS = {"running": "RUNNING", "failed": "FAILED", "refused": "FAILED"}  # else FINISHED
_FIT_STATUS = {"nonfinite": "FAILED", "pruned": "KILLED"}  # else FINISHED
_CONFIGS = (TRAINING_CONFIG, FINAL_CONFIG_YAML, OPTIMIZATION_CONFIG_YAML)


@contextlib.contextmanager
def global_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then the caller's own put back.
    Parts of MLflow read the global URI whatever the client says (model logging, the registry's
    lookup of a logged model); left at its default they would create ``mlflow.db`` or ``mlruns/``
    in the working folder."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri keeps it in step with the global
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None: back to MLflow's default (and the variable unset)


def _ms(t: float | None) -> int | None:
    return int(t * 1000) if t else None


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class Pusher:
    def __init__(self, run_dir: Path, target: Target, state: dict[str, Any]) -> None:
        self.run_dir, self.target, self.state = run_dir, target, state
        self.client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
        self.sent: dict[str, Any] = {
            "uri": target.key,
            "experiment": target.experiment,
            "runs_created": 0,
            "metric_points": 0,
            "artifacts": 0,
            "model": None,
            "model_version": None,
        }
        self.exp_id = self._experiment()
        self.sent["experiment_id"] = self.exp_id
        if state.get("experiment_id") != self.exp_id or not self._exists(state.get("runs", {}).get("")):
            state.clear()  # a new store (or one that lost the run): send everything again
            state["experiment_id"] = self.exp_id
        for k in ("runs", "metrics", "artifacts", "params", "tags", "status", "trials", "model", "registered"):
            state.setdefault(k, {})

    # -- experiment and runs -------------------------------------------------------------------
    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.target.experiment)
        if exp is None:  # a model-training experiment: MLflow's UI opens it on its runs table
            return self.client.create_experiment(
                self.target.experiment,
                artifact_location=self.target.artifact_root,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def ensure(self, key: str, name: str, parent: str | None, started: float | None, tags: dict[str, str]) -> str:
        rid = self.state["runs"].get(key)
        if rid:
            return rid
        tags = {"trainkit.key": key or "(run)", "trainkit.run": self.run_dir.name, **tags}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.exp_id, start_time=_ms(started), tags=tags, run_name=name)
        self.state["runs"][key] = run.info.run_id
        self.sent["runs_created"] += 1
        return run.info.run_id

    # -- the walk ----------------------------------------------------------------------------------
    def push(self, metrics_only: bool = False) -> None:
        manifest = load_manifest(self.run_dir)
        parent = self.ensure("", self.run_dir.name, None, manifest.get("created"), {"trainkit.level": "run"})
        seen = set()
        for entry in phase_entries(manifest):
            d = entry.folder(self.run_dir)
            key = str(d.relative_to(self.run_dir))
            if key in seen or not d.is_dir():
                continue
            seen.add(key)
            rid = self.ensure(
                key, key, parent, entry.started, {"trainkit.level": "phase", "trainkit.phase": entry.phase}
            )
            self._metrics(rid, key, d / METRICS)
            for m in sorted(d.rglob(METRICS)):
                if m.parent != d:
                    self._fit(m.parent, rid, entry, metrics_only)
            if not metrics_only:
                self._phase(rid, key, d, entry)
        if metrics_only:
            return
        self._sweeps(parent)
        self._model()
        self._register(manifest)
        self._parent(parent, manifest)

    def _fit(self, fd: Path, phase_rid: str, entry: PhaseEntry, metrics_only: bool) -> None:
        key = str(fd.relative_to(self.run_dir))
        inner = fd.relative_to(RunFolder(self.run_dir).phase_dir(entry.phase, entry.attempt)).parts
        name = " ".join(p for p in inner if p != "runs")
        tags = {"trainkit.level": "fit", "trainkit.phase": entry.phase, "trainkit.fit": "/".join(inner)}
        if len(inner) >= 2 and inner[-1].startswith("seed-"):
            tags.update({"trainkit.candidate": inner[-2], "trainkit.seed": inner[-1][5:]})
        rid = self.ensure(
            key,
            f"{RunFolder(self.run_dir).phase_dir(entry.phase, entry.attempt).name} {name}",
            phase_rid,
            _started(fd),
            tags,
        )
        self._metrics(rid, key, fd / METRICS)
        if metrics_only:
            return
        self._params(rid, key, fd / TRAINING_CONFIG)
        summary = RunFolder(self.run_dir).train_summary(fd)
        if summary is not None:
            best = summary.get("best") or {}
            self._tags(
                rid,
                key,
                {
                    "trainkit.fit_status": str(summary.get("status")),
                    "trainkit.best_val_accuracy": str(best.get("val_accuracy")),
                    "trainkit.best_epoch": str(best.get("epoch")),
                },
            )
            self._status(
                rid, key, _FIT_STATUS.get(summary.get("status"), "FINISHED"), (fd / TRAIN_SUMMARY).stat().st_mtime
            )
        elif entry.status != "running":
            self._status(rid, key, "FAILED", None)  # its phase ended, the fit never did

    # -- records ------------------------------------------------------------------------------------
    def _metrics(self, rid: str, key: str, path: Path) -> None:
        """Every numeric field of each new complete row, step = epoch; a rewritten file (a resumed
        fit drops rows after its checkpoint) is sent again from its start."""
        if not path.is_file():
            return
        data = complete_lines(path)
        done = self.state["metrics"].get(key, {"bytes": 0, "sha": sha256_bytes(b"")})
        start = (
            done["bytes"] if done["bytes"] <= len(data) and sha256_bytes(data[: done["bytes"]]) == done["sha"] else 0
        )
        if start == len(data):
            return
        new = parse_rows(data[start:])
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, int(row["epoch"])) for row in new if "epoch" in row for k, v in numeric_items(row)]
        for chunk in _chunks(points, 1000):
            self.client.log_batch(rid, metrics=chunk)
        events = [r for r in new if "event" in r]
        if events:
            self._tags(rid, key + "#events", {f"trainkit.event.{e['event']}": json.dumps(e)[:5000] for e in events})
        self.state["metrics"][key] = {"bytes": len(data), "sha": sha256_bytes(data)}
        self.sent["metric_points"] += len(points)

    def _params(self, rid: str, key: str, config: Path) -> None:
        """The flattened config and its hash, once per run (MLflow params cannot change)."""
        if self.state["params"].get(key) or not config.is_file():
            return
        raw = yaml.safe_load(config.read_text()) or {}
        raw = {k: v for k, v in raw.items() if k != "tracking"} if isinstance(raw, dict) else {}
        params = {k: v[:6000] for k, v in flatten(raw).items()}
        params["config_hash"] = _config_hash(config, raw)
        for chunk in _chunks([Param(k, v) for k, v in params.items()], 100):
            self.client.log_batch(rid, params=chunk)
        self.state["params"][key] = params["config_hash"]

    def _tags(self, rid: str, key: str, tags: dict[str, str]) -> None:
        tags = {k: str(v)[:7900] for k, v in tags.items() if v is not None}
        digest = sha256_bytes(json.dumps(tags, sort_keys=True).encode())
        if self.state["tags"].get(key) == digest:
            return
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], 100):
            self.client.log_batch(rid, tags=chunk)
        self.state["tags"][key] = digest

    def _status(self, rid: str, key: str, status: str, ended: float | None) -> None:
        if self.state["status"].get(key) == status:
            return
        if status == "RUNNING":
            self.client.update_run(rid, status="RUNNING")
        else:
            self.client.set_terminated(rid, status, end_time=_ms(ended))
        self.state["status"][key] = status

    def _artifacts(self, rid: str, files: Iterable[tuple[Path, str | None]]) -> None:
        for p, folder in files:
            if not p.is_file() or p.stat().st_size > _MAX_ARTIFACT:
                continue
            akey = str(p.relative_to(self.run_dir))
            digest = sha256_file(p)
            if self.state["artifacts"].get(akey) == digest:
                continue
            self.client.log_artifact(rid, str(p), folder)
            self.state["artifacts"][akey] = digest
            self.sent["artifacts"] += 1

    # -- phases and the run -----------------------------------------------------------------------
    def _phase(self, rid: str, key: str, d: Path, entry: PhaseEntry) -> None:
        phase, attempt = entry.phase, entry.attempt
        config = next((d / c for c in _CONFIGS if (d / c).is_file()), self.run_dir / RUN_CONFIG)
        self._params(rid, key, config)
        tags = {"trainkit.phase": phase, "trainkit.attempt": str(attempt), "trainkit.status": entry.status}
        if phase in SUB_WORD:
            tags[f"trainkit.{SUB_WORD[phase]}"] = str(attempt)
        note = [f"**{key}**: {entry.status}"]
        if (d / DECISION).is_file():
            dec = read_json(d / DECISION)
            tags.update(
                {
                    "trainkit.decision": str(dec.get("option")),
                    "trainkit.next": str(dec.get("next")),
                    "trainkit.reason": str(dec.get("reason")),
                }
            )
            note.append(f"**Decision {dec.get('option')} → {dec.get('next')}**: {dec.get('reason')}")
        if (d / BUDGET_OVERRIDE).is_file():
            over = read_json(d / BUDGET_OVERRIDE)
            tags.update({"trainkit.next": str(over.get("next")), "trainkit.budget_override": str(over.get("reason"))})
        tags.update(_gate_tags(d / GATE, note))
        tags["mlflow.note.content"] = "\n\n".join(note)
        self._tags(rid, key, tags)
        cost = entry.cost or {}
        self._summary(
            rid,
            key,
            {
                "phase_wall_s": cost.get("wall_s"),
                "phase_baseline_units": cost.get("baseline_units"),
                **_phase_numbers(d),
            },
        )
        files = [(p, None) for p in sorted(d.iterdir()) if p.suffix in _ARTIFACTS and p.name != METRICS]
        if phase == Phase.FINALIZATION.value:
            files += [(d / n, "export") for n in (MODEL_ONNX, MODEL_TS)]
        self._artifacts(rid, files)
        status = "FINISHED" if tags.get("trainkit.gate_state") == "passed" else _STATUS.get(entry.status, "FINISHED")
        self._status(rid, key, status, entry.ended)  # a gate signed after the notebook ran: passed

    def _summary(self, rid: str, key: str, values: dict[str, Any]) -> None:
        """One-value metrics (cost, test accuracy), logged again only when they change."""
        vals = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        digest = sha256_bytes(json.dumps(vals, sort_keys=True).encode())
        if not vals or self.state["tags"].get(key + "#summary") == digest:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, v, now, 0) for k, v in vals.items()])
        self.state["tags"][key + "#summary"] = digest

    def _parent(self, rid: str, manifest: dict[str, Any]) -> None:
        self._params(rid, "", self.run_dir / RUN_CONFIG)
        exit_ = manifest.get("exit") or {}
        from trainkit import __version__

        path = " → ".join(e.phase for e in phase_entries(manifest))
        tags = {
            "trainkit.level": "run",
            "trainkit.status": manifest.get("status"),
            "trainkit.path": path,
            "trainkit.run_dir": str(self.run_dir),
            "trainkit.config_hash": manifest.get("config_hash"),
            "trainkit.version": manifest.get("trainkit_version") or __version__,
            "trainkit.exit_code": exit_.get("code"),
            "trainkit.exit_message": exit_.get("message"),
            "mlflow.note.content": "\n\n".join(
                [
                    f"**{self.run_dir.name}**: {manifest.get('status')}; path {path}",
                    str(exit_.get("message") or ""),
                    *manifest.get("notes", []),
                ]
            ),
        }
        self._tags(rid, "", tags)
        cost = manifest.get("cost") or {}
        self._summary(rid, "", {"run_wall_s": cost.get("wall_s"), "run_baseline_units": cost.get("baseline_units")})
        self._artifacts(rid, [(self.run_dir / n, None) for n in _RUN_FILES])
        status = manifest.get("status", "running")
        self._status(
            rid,
            "",
            _RUN_STATUS.get(status, "FINISHED"),
            max([e.ended or 0 for e in phase_entries(manifest)] or [0]) or None,
        )

    # -- sweeps, the model and the registry -----------------------------------------------------
    def _sweeps(self, parent: str) -> None:
        db = self.run_dir / Phase.OPTIMIZATION.value / SWEEP_DB
        if not db.is_file():
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{db}"
        for summary in optuna.study.get_all_study_summaries(storage):
            name = summary.study_name
            skey = f"sweep/{name}"
            srid = self.ensure(skey, f"sweep {name}", parent, _ts(summary.datetime_start), {"trainkit.level": "sweep"})
            self._params(srid, skey, self.run_dir / Phase.OPTIMIZATION.value / SWEEP_CONFIG_YAML)
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state.name in ("RUNNING", "WAITING"):
                    continue
                tkey = f"{skey}/trial-{t.number}"
                if self.state["trials"].get(tkey) == t.state.name:
                    continue
                self._trial(t, tkey, srid)
            done = [t.value for t in trials if t.state.name == "COMPLETE"]
            best = (
                (max if study.direction.name == "MAXIMIZE" else min)(done) if done else None
            )  # an rmse study minimizes
            self._summary(
                srid,
                skey,
                {
                    "best_val_score": best,
                    "best_val_accuracy": best if study.direction.name == "MAXIMIZE" else None,
                    "trials": len(done),
                },
            )
            self._status(srid, skey, "FINISHED", None)

    def _trial(self, t: Any, tkey: str, srid: str) -> None:
        rid = self.ensure(
            tkey,
            f"trial-{t.number}",
            srid,
            _ts(t.datetime_start),
            {"trainkit.level": "trial", "trainkit.trial": str(t.number), "trainkit.trial_state": t.state.name},
        )
        if not self.state["params"].get(tkey):
            params = [Param(k, str(v)) for k, v in t.params.items()]
            for chunk in _chunks(params, 100):
                self.client.log_batch(rid, params=chunk)
            self.state["params"][tkey] = "trial"
        rows = t.user_attrs.get("history") or [
            {"epoch": s, "val_accuracy": v} for s, v in sorted(t.intermediate_values.items())
        ]
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, int(r["epoch"])) for r in rows for k, v in numeric_items(r)]
        if t.value is not None:
            points.append(Metric("objective", float(t.value), now, 0))
        for chunk in _chunks(points, 1000):
            self.client.log_batch(rid, metrics=chunk)
        self.sent["metric_points"] += len(points)
        self.client.set_terminated(
            rid,
            {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(t.state.name, "FAILED"),
            end_time=_ms(_ts(t.datetime_complete)),
        )
        self.state["trials"][tkey] = t.state.name

    def _model(self) -> None:
        """Phase 5's ONNX model as an MLflow model (signature, input example), once per file."""
        d = self.run_dir / Phase.FINALIZATION.value
        onnx_path, export = d / MODEL_ONNX, d / EXPORT_JSON
        rid = self.state["runs"].get(Phase.FINALIZATION.value)
        if rid is None or not onnx_path.is_file() or not export.is_file():
            return
        digest = sha256_file(onnx_path)
        if self.state["model"].get("sha256") == digest:
            return
        from trainkit._mlflow_model import log_onnx_model

        info = log_onnx_model(self.target.uri, rid, onnx_path, read_json(export)["input_shape"])
        self.state["model"] = {"sha256": digest, **info}
        self.sent["model"] = info["model_uri"]

    def _register(self, manifest: dict[str, Any]) -> None:
        """A model version once the production gate is signed and verifies, tagged with the gate
        record's sha256 (and its waivers); one version per signed record."""
        gate = self.run_dir / Phase.FINALIZATION.value / GATE
        model = self.state["model"]
        if not gate.is_file() or not model.get("model_id"):
            return
        record = read_json(gate)
        if not record.get("signoff") or record.get("state") != "passed":
            return
        digest = sha256_file(gate)
        if self.state["registered"].get("gate_sha256") == digest:
            return
        from trainkit.gates import verify_gate

        verify_gate(gate, self.run_dir)  # GateError: an altered artifact is never registered
        from trainkit._mlflow_model import register_version

        self.state["registered"] = register_version(
            self.client,
            self.target.registered_model,
            model,
            record,
            digest,
            self.state["runs"][Phase.FINALIZATION.value],
            self.run_dir,
            manifest,
        )
        self.sent["model_version"] = self.state["registered"]["version"]


def _started(fd: Path) -> float:
    """When a fit started: fit() writes its training_config.yaml first."""
    first = fd / TRAINING_CONFIG
    return (first if first.is_file() else fd / METRICS).stat().st_mtime


def _ts(dt: Any) -> float | None:
    return dt.timestamp() if dt is not None else None


def _config_hash(path: Path, raw: dict[str, Any]) -> str:
    from trainkit.config import config_hash, load_config

    try:
        return config_hash(load_config(path))
    except Exception:  # not a full trainkit config: the hash of what it says
        return sha256_bytes(json.dumps(raw, sort_keys=True, default=str).encode())


def _gate_tags(path: Path, note: list[str]) -> dict[str, str]:
    if not path.is_file():
        return {}
    from trainkit.gates import gate_state

    record = read_json(path)
    state = gate_state(record)
    tags = {"trainkit.gate": record.get("gate"), "trainkit.gate_state": state}
    sig = record.get("signoff") or {}
    if sig:
        tags.update(
            {
                "trainkit.signed_by": str(sig.get("by")),
                "trainkit.signed_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sig.get("at", 0))),
            }
        )
    waivers = record.get("waivers") or []
    if waivers:
        tags["trainkit.waived"] = ", ".join(w["check"] for w in waivers)
        for w in waivers:
            tags[f"trainkit.waiver.{w['check']}"] = f"{w['reason']} (by {w['by']})"
    note.append(
        f"**Gate {record.get('gate')}**: {state}"
        + (f", signed by {sig.get('by')}" if sig else "")
        + "".join(f"\n- waived `{w['check']}`: {w['reason']} (by {w['by']})" for w in waivers)
    )
    return tags


def _phase_numbers(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (d / TRAIN_SUMMARY).is_file():
        best = read_json(d / TRAIN_SUMMARY).get("best") or {}
        out["best_val_accuracy"] = best.get("val_accuracy")
        if best.get("val_accuracy") is None and best.get("val_score") is not None:  # a regression: its target metric
            out["best_val_score"] = best["val_score"]
    if (d / TEST_EVALUATION_JSON).is_file():
        ev = read_json(d / TEST_EVALUATION_JSON)
        out.update(
            {"test_accuracy": ev.get("accuracy"), "test_ece": ev.get("ece")}
            if not ev.get("regression")
            else {f"test_{k}": ev["test"][k] for k in ("rmse", "mae", "r2")}
        )
    return out
