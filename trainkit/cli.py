"""``trainkit run | status | signoff | track | report | predict | train | sweep | notebooks | config validate``.

Exit codes: 0 ready (or done), 1 failed, 2 bad usage or bad config, 3 waiting for a sign-off.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainkit.errors import ConfigError, DataError, GateError, QuarantineError, RunError, TrainkitError
from trainkit.run import Phase

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainkit", description="Plan → baseline → diagnose → optimize → finalize, gated.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the phases through papermill into runs/NAME/")
    r.add_argument(
        "config", nargs="?", default=None, help="training_config.yaml (default: the built-in digits baseline)"
    )
    r.add_argument("--name", default=None, help="run name (default: run-YYYYmmdd-HHMMSS; 'demo' with no config)")
    r.add_argument("--runs-dir", default="runs", help="folder holding runs (default: runs)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set optimizer.lr=3e-4 (repeatable)",
    )
    r.add_argument(
        "--target",
        type=float,
        default=None,
        help="target value of target.metric (a fraction; rmse / mae: the label's units)",
    )
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        choices=range(1, 6),
        metavar="N",
        help="run no phase numbered above N (loops below N, e.g. Phase 4 iterations, still run)",
    )
    r.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="CHECK=NAME",
        help="approve a manual check headlessly, e.g. --approve stakeholder_approval=alice",
    )
    r.add_argument("--approvals", default=None, help="YAML/JSON file {gate: {check: name}} of approvals")
    r.add_argument("--resume", action="store_true", help="continue an existing run from where it stopped")

    _more_commands(sub)
    return p


def _more_commands(sub: Any) -> None:
    """The commands besides ``run``: config, signoff, status, sweep, notebooks, track, report, train."""
    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    v = csub.add_parser("validate", help="validate a training_config.yaml (exit 0 or 2)")
    v.add_argument("file")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("signoff", help="sign off a phase's gate")
    s.add_argument("run", help="run folder (runs/NAME)")
    s.add_argument("--phase", required=True, help="phase number 1-5")
    s.add_argument("--by", required=True, help="approver's name")
    s.add_argument("--check", action="append", default=[], help="manual check id to tick (repeatable)")
    s.add_argument(
        "--waive",
        action="append",
        default=[],
        metavar='CHECK="REASON"',
        help="waive a failing automatic check with its documented reason (repeatable; recorded in the "
        "gate and, for Phase 5, the model card)",
    )

    st = sub.add_parser("status", help="phase history, gate state, and the next step of a run")
    st.add_argument("run")

    w = sub.add_parser("sweep", help="Optuna study over LR and weight decay, filled by local worker processes")
    w.add_argument("run", help="run folder (the study lives in RUN/04_optimization/sweep.db by default)")
    w.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    w.add_argument("--trials", type=int, default=8, help="trials in total across the workers (default 8)")
    w.add_argument(
        "--storage", default=None, help="Optuna database URL (e.g. postgresql://...; hosts can join one study)"
    )
    w.add_argument("--study", default="trainkit", help="study name (default trainkit)")
    w.add_argument("--config", default=None, help="config to sweep (default: the run's current config)")

    nbk = sub.add_parser("notebooks", help="copy the five phase notebooks into a working folder to open in JupyterLab")
    nbk.add_argument("folder", nargs="?", default="work", help="where the copies go (default: work/, git-ignored)")

    tk = sub.add_parser(
        "track", help="push a run folder to MLflow (needs pip install 'trainkit[mlflow]'); safe to repeat"
    )
    tk.add_argument("run", help="run folder (runs/NAME)")
    tk.add_argument(
        "--uri",
        default=None,
        help="MLflow tracking URI (default: the run's tracking.uri, else runs/mlflow.db beside the run)",
    )
    tk.add_argument("--experiment", default=None, help="experiment name (default: the run's tracking.experiment)")

    rp = sub.add_parser("report", help="re-export every executed notebook's report.html and the run's index.html")
    rp.add_argument("run")
    _add_predict(sub)

    t = sub.add_parser("train", help="train a config into a folder (no gates), optionally resuming")
    t.add_argument("config")
    t.add_argument("--run-dir", required=True, help="output folder (metrics.jsonl, checkpoints/)")
    t.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _approvals(args: argparse.Namespace) -> dict[str, str] | str:
    out: dict[str, str] = {}
    for item in args.approve:
        if "=" not in item:
            raise ConfigError([("--approve", f"expected CHECK=NAME, got {item!r}")], "--approve")
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip()
    if args.approvals and out:
        raise ConfigError([("--approvals", "use either --approve or --approvals, not both")], "command line")
    if args.approvals:
        from trainkit.gates import check_approvals

        return check_approvals(args.approvals)
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from trainkit.budget import process_start
    from trainkit.config import load_config
    from trainkit.pipeline import run_pipeline
    from trainkit.run import check_run_name

    if args.resume and (args.config or args.overrides or args.target is not None):
        raise ConfigError(
            [
                (
                    "--resume",
                    "a resumed run keeps the config it was started with (its config.yaml); CONFIG, "
                    "--set and --target cannot change it. Start a new run with --name instead",
                )
            ],
            "command line",
        )
    approvals = _approvals(args)  # exit 2 before anything is written, like a bad config
    if not args.resume:
        from trainkit.data import check_source

        check_source(load_config(args.config, args.overrides, args.target))
    name = check_run_name(
        args.name if args.name is not None else ("demo" if args.config is None else time.strftime("run-%Y%m%d-%H%M%S"))
    )
    outcome = run_pipeline(
        args.config,
        Path(args.runs_dir) / name,
        args.overrides,
        args.target,
        args.stop_after,
        approvals,
        args.resume,
        echo=lambda m: print(m, flush=True),
        started=process_start(),
    )
    print(
        ("trainkit: " if outcome.code == 0 else f"trainkit: exit {outcome.code}: ") + outcome.message,
        file=sys.stdout if outcome.code in (0, 3) else sys.stderr,
    )
    print(f"trainkit: path taken: {' → '.join(outcome.path)}; run folder: {outcome.run_dir}")
    return outcome.code


def _cmd_signoff(args: argparse.Namespace) -> int:
    from trainkit.run import GATE, phase_name, RunFolder

    phase = phase_name(args.phase)
    d = RunFolder(args.run).latest(phase)
    if d is None:
        raise RunError(f"{args.run}: {phase} has not run yet; nothing to sign")
    waivers = {}
    for w in args.waive:
        cid, eq, reason = w.partition("=")
        if not eq or not cid.strip() or not reason.strip():
            raise ConfigError(
                [
                    (
                        "--waive",
                        f'{w!r}: expected CHECK="REASON", e.g. --waive test_meets_target="0.80 is '
                        'enough for the pilot"',
                    )
                ],
                "command line",
            )
        waivers[cid.strip()] = reason.strip()
    from trainkit.reports import publish_signoff
    from trainkit.run import resume_command

    record = publish_signoff(d / GATE, args.by, args.check, Path(args.run), waivers=waivers)
    print(
        f"trainkit: gate {record['gate']} of {phase} signed off by {record['signoff']['by']} ({record['state']})"
        + (f"; waived: {', '.join(waivers)}" if waivers else "")
    )
    if phase == Phase.FINALIZATION.value:
        print(f"trainkit: next: {resume_command(Path(args.run))}  (records the deploy decision)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from trainkit.status import describe_run

    print(describe_run(Path(args.run)))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trainkit.sweep import launch_workers

    if args.workers < 1 or args.trials < 1:
        raise ConfigError([("--workers/--trials", "must be at least 1")], "command line")
    s = launch_workers(args.run, args.workers, args.trials, args.storage, args.study, args.config)
    print(
        f"trainkit: study {s['study']} has {s['trials']} trials {s['states']}; best val accuracy {s['best_value']} "
        f"with {s['best_params']} ({s['storage']})"
    )
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    """Working copies of the phase notebooks: JupyterLab writes kernel metadata and outputs into
    what it opens; the templates trainkit run executes stay untouched."""
    import shutil

    from trainkit.pipeline import notebook_path
    from trainkit.run import PHASES

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for phase in PHASES:
        dest = folder / f"{phase}.ipynb"
        if dest.exists():
            print(f"trainkit: kept {dest} (already there; delete it for a fresh copy)")
            continue
        shutil.copyfile(notebook_path(phase), dest)
    print(f"trainkit: the phase notebooks are in {folder}/; open them with: jupyter lab {folder}")
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from trainkit.run import load_manifest
    from trainkit.tracking import push_run, require_mlflow, target_for, ui_hint

    require_mlflow("trainkit track")
    load_manifest(args.run)  # RunError (exit 2) for a folder that is not a run
    if args.uri is not None:
        from trainkit.config import validate_config_dict

        validate_config_dict(
            {"tracking": {"uri": args.uri}}, "--uri"
        )  # ConfigError (exit 2) for a URI without a scheme
    target = target_for(args.run, uri=args.uri, experiment=args.experiment, force=True)
    try:
        sent = push_run(args.run, target)
    except TrainkitError:
        raise
    except Exception as exc:  # MLflow's own errors, named and with the next step
        from trainkit.errors import TrackingError

        raise TrackingError(
            f"pushing {args.run} to {target.key} failed: {type(exc).__name__}: {str(exc)[:400]}; fix the "
            "server or the URI and run trainkit track again (what was sent is remembered)"
        ) from None
    version = (
        f"; model version {sent['model_version']} of {target.registered_model!r}" if sent.get("model_version") else ""
    )
    print(
        f"trainkit: pushed {args.run} to {target.key}, experiment {target.experiment!r}: {sent['runs_created']} new "
        f"run(s), {sent['metric_points']} metric point(s), {sent['artifacts']} artifact(s){version}; {ui_hint(target)}"
    )
    return 0


def _add_predict(sub: Any) -> None:
    pr = sub.add_parser(
        "predict", help="predict new raw inputs with a run's model (a table, an .npz or an image folder)"
    )
    pr.add_argument("run", help="run folder (runs/NAME)")
    pr.add_argument("input", help="a CSV/Parquet with the training columns, an .npz with array x, or an image folder")
    pr.add_argument(
        "-o", "--output", default="predictions.csv", help="where the predictions go (default predictions.csv)"
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from trainkit.predict import check_output, predict, write_predictions

    check_output(args.output, args.input, args.run)  # before the work: never the input, a folder or the run's files
    result = predict(args.run, args.input, say=lambda m: print(m, file=sys.stderr))
    path = write_predictions(result, args.output)
    if result["probabilities"] is None:  # a regression: numbers in the label's units
        v = result["predicted"]
        print(
            f"trainkit: {len(v)} prediction(s) → {path} (column prediction, in {result['units']}; "
            f"min {min(v):.4g}, max {max(v):.4g})"
            if v
            else f"trainkit: 0 predictions → {path}"
        )
        return 0
    counts = {c: result["predicted"].count(c) for c in result["classes"]}
    print(
        f"trainkit: {len(result['predicted'])} prediction(s) → {path} "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())})"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from trainkit.pipeline import export_reports

    paths = export_reports(Path(args.run))
    print(f"trainkit: wrote {len(paths)} report(s); open {Path(args.run) / 'index.html'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainkit.config import load_config
    from trainkit.data import load_data
    from trainkit.train import fit

    cfg = load_config(args.config, args.overrides)
    result = fit(cfg, load_data(cfg), args.run_dir, resume=args.resume)
    best = result.best or {}
    shown = (
        f"val accuracy {best['val_accuracy']:.4f}"
        if best.get("val_accuracy") is not None
        else f"val {cfg.target.metric} {best.get('val_score', float('nan')):.4g}"
    )
    print(f"trainkit: {result.status}; best {shown} at epoch {best.get('epoch', '-')}; {args.run_dir}")
    code = 0 if result.status != "nonfinite" else 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker whose work is done and written (atomically, fsynced; the process group is already
        # torn down): skip the interpreter's teardown, where gloo's background threads abort about one run in six
        # ("terminate called without an active exception", then SIGABRT/SIGSEGV after both ranks printed "completed")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "config":
            from trainkit.config import load_config

            from trainkit.data import check_source

            check_source(load_config(args.file, args.overrides))
            print(f"trainkit: {args.file} is valid and its data source is readable")
            return 0
        if args.command == "signoff":
            return _cmd_signoff(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "predict":
            return _cmd_predict(args)
        if args.command == "track":
            return _cmd_track(args)
        if args.command == "notebooks":
            return _cmd_notebooks(args)
        return _cmd_train(args)
    except (ConfigError, DataError) as exc:  # bad config or data: exit 2; a quarantine refusal is a failure (1)
        print(f"trainkit: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, QuarantineError) else 2
    except (RunError, GateError) as exc:
        print(f"trainkit: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, RunError) else 1
    except TrainkitError as exc:
        print(f"trainkit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
