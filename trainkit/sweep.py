"""Hyper-parameter sweeps on Optuna: a study over a search space, bad trials pruned from per-epoch
val metrics, stored in SQLite in the run folder by default or any Optuna database URL (so workers
on several machines can join one study).

    trainkit sweep RUN --workers 2 --trials 12            # two local worker processes, one study
    python -m trainkit.sweep worker RUN --storage URL ...  # what each worker runs (and other hosts can)
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainkit.config import TrainkitConfig, load_config, with_overrides
from trainkit.errors import RunError
from trainkit.metrics import higher_is_better, row_score
from trainkit.run import (
    CURRENT_CONFIG,
    Phase,
    TRAINING_CONFIG,
    SWEEP_CONFIG_YAML,
    SWEEP_DB,
)

__all__ = ["default_space", "default_storage", "run_worker", "launch_workers", "study_summary", "study_figures"]

STUDY = "trainkit"


def default_space(cfg: TrainkitConfig) -> dict[str, tuple[str, float, float]]:
    """LR within 10× of the current one (log scale) and weight decay 1e-6..1e-2 (log scale)."""
    lr = cfg.optimizer.lr or 1e-3
    return {"optimizer.lr": ("log", lr / 10, lr * 10), "optimizer.weight_decay": ("log", 1e-6, 1e-2)}


def default_storage(run_dir: str | Path) -> str:
    p = Path(run_dir).resolve() / Phase.OPTIMIZATION.value / SWEEP_DB
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def _storage(url: str) -> Any:
    import optuna

    if url.startswith("sqlite"):  # several processes share the file: wait for the lock instead of failing
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def _objective(cfg: TrainkitConfig, bundle: Any, space: dict[str, tuple[str, float, float]]) -> Any:
    import optuna

    from trainkit.train import fit

    def objective(trial: optuna.Trial) -> float:
        patch = {}
        for key, (kind, lo, hi) in space.items():
            patch[key] = trial.suggest_float(key, lo, hi, log=kind == "log")
        tcfg = with_overrides(cfg, patch)

        history: list[dict[str, Any]] = []

        def on_epoch(rec: dict[str, Any]) -> None:
            history.append({k: v for k, v in rec.items() if isinstance(v, (int, float)) and math.isfinite(v)})
            trial.report(row_score(rec), rec["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec['epoch'] + 1}: val {row_score(rec):.4f}")

        import torch

        trial.set_user_attr("torch_threads", torch.get_num_threads())
        try:
            r = fit(tcfg, bundle, None, progress=False, on_epoch=on_epoch)
        finally:  # every epoch's metrics, for the trial's run in a tracker
            trial.set_user_attr("history", history)
        if r.best is None or not math.isfinite(row_score(r.best)):
            raise optuna.TrialPruned("no finite epoch")
        return row_score(r.best)

    return objective


def _direction(cfg: TrainkitConfig) -> str:
    """The study's direction is the target metric's: an rmse is minimized."""
    return "maximize" if higher_is_better(cfg.target.metric) else "minimize"


def run_worker(
    cfg: TrainkitConfig,
    run_dir: str | Path,
    trials: int,
    storage: str | None = None,
    study_name: str = STUDY,
    seed: int = 0,
) -> dict[str, Any]:
    """Join (or create) the study and run ``trials`` trials in this process."""
    import optuna

    from trainkit.run import load_run_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or default_storage(run_dir)
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage(url),
        direction=_direction(cfg),
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    bundle = load_run_data(cfg, run_dir, Phase.OPTIMIZATION.value)
    study.optimize(_objective(cfg, bundle, default_space(cfg)), n_trials=trials, catch=())
    return study_summary(url, study_name)


def launch_workers(
    run_dir: str | Path,
    workers: int,
    trials: int,
    storage: str | None = None,
    study_name: str = STUDY,
    config: str | None = None,
) -> dict[str, Any]:
    """Run ``workers`` local processes that fill one study with ``trials`` trials in total."""
    from trainkit.phases.common import load_run_config

    run_dir = Path(run_dir).resolve()
    cfg_path = config or str(run_dir / CURRENT_CONFIG)
    if config is None and not Path(cfg_path).is_file():
        cfg_path = str(run_dir / Phase.PLANNING.value / TRAINING_CONFIG)
    cfg = load_run_config(run_dir) if config is None else load_config(config)  # fail early on a bad config
    url = storage or default_storage(run_dir)
    import optuna

    optuna.create_study(study_name=study_name, storage=_storage(url), direction=_direction(cfg), load_if_exists=True)
    share = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    threads = worker_threads(sum(n > 0 for n in share))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainkit.sweep",
                "worker",
                str(run_dir),
                "--config",
                cfg_path,
                "--storage",
                url,
                "--study",
                study_name,
                "--trials",
                str(n),
                "--seed",
                str(i),
                "--threads",
                str(threads),
            ],
            env=env,
        )
        for i, n in enumerate(share)
        if n > 0
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RunError(f"sweep worker(s) failed with exit codes {codes}; see their output above")
    if url == default_storage(run_dir):  # the study lives in the run folder: so does the config it swept
        from trainkit._io import write_text_atomic
        from trainkit.tracking import push_quietly

        write_text_atomic(run_dir / Phase.OPTIMIZATION.value / SWEEP_CONFIG_YAML, Path(cfg_path).read_text())
        push_quietly(run_dir)  # tracking on: one run per trial, nested under the run's parent in MLflow
    return study_summary(url, study_name)


def worker_threads(processes: int) -> int:
    """Intra-op threads per process when ``processes`` share this machine: cores ÷ processes (at least
    1), so parallel workers do not oversubscribe the cores (one step went from 25 to 280 ms so)."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def study_summary(storage: str, study_name: str = STUDY) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=_storage(storage))
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value) if done else None
    return {
        "storage": storage,
        "study": study_name,
        "trials": len(trials),
        "numbers": sorted(t.number for t in trials),
        "states": states,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
    }


def study_figures(storage: str, out_dir: str | Path, study_name: str = STUDY) -> list[Path]:
    """history.png and importances.png (when Optuna can compute importances)."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from trainkit.plots import save_figure

    study = optuna.load_study(study_name=study_name, storage=_storage(storage))
    out = []
    for name, fn in (
        ("sweep_history.png", ovm.plot_optimization_history),
        ("sweep_importances.png", ovm.plot_param_importances),
    ):
        try:
            ax = fn(study)
            out.append(save_figure(ax.figure, Path(out_dir) / name))
        except (ValueError, RuntimeError, ZeroDivisionError):
            plt.close("all")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainkit.sweep")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="join the study and run trials in this process")
    w.add_argument("run_dir")
    w.add_argument("--config", required=True)
    w.add_argument("--storage", default=None)
    w.add_argument("--study", default=STUDY)
    w.add_argument("--trials", type=int, default=4)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    a = ap.parse_args(argv)
    if a.threads > 0:
        import torch

        torch.set_num_threads(a.threads)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    s = run_worker(load_config(a.config), a.run_dir, a.trials, a.storage, a.study, a.seed)
    print(f"worker done: study {s['study']} has {s['trials']} trials; best {s['best_value']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
