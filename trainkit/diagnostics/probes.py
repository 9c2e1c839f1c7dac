"""Phase 3 probes: cheap experiments that each return numbers (and a figure where one helps).

Every probe takes the config in force and a :class:`~trainkit.data.DataBundle` (train and val
only: the test split stays quarantined) and returns a plain dict that goes into ``findings.json``.
Probes build their own model from the config and seed, so they are reproducible on CPU.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from trainkit.config import TrainkitConfig, with_overrides
from trainkit.data import DataBundle
from trainkit.diagnostics._fits import _model, _short_train, sample
from trainkit.diagnostics.reference import class_recall, reference_predictions
from trainkit.losses import loss_of
from trainkit.metrics import best_of, gain_points, oriented, regression_scores as score_all, row_score, score
from trainkit.train import fit, make_optimizer, resolve_device
from trainkit.diagnostics.data_probes import data_probe, label_issue_probe
from trainkit.diagnostics.lr_range import lr_range_test

__all__ = [
    "sample",
    "init_loss_probe",
    "input_independent_probe",
    "overfit_batch_probe",
    "lr_range_test",
    "grad_norm_stats",
    "seed_variance_probe",
    "throughput_probe",
    "resource_profile",
    "dead_units_probe",
    "data_probe",
    "label_issue_probe",
    "per_class_probe",
    "determinism_probe",
    "reference_probe",
]


def init_loss_probe(cfg: TrainkitConfig, bundle: DataBundle, n: int = 512) -> dict[str, Any]:
    """Loss of the untrained model against ln(K): a healthy init sits near ln(K). A regression: the
    mean squared error on the standardized label against 1 (the label's variance: what predicting
    its mean scores), reported in the same fields."""
    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device).eval()
    x, y = sample(bundle, "val", n, device=device)
    with torch.no_grad():
        loss = float(loss_of(model(x), y))
    ln_k = 1.0 if bundle.regression else math.log(bundle.num_classes)
    return {"init_loss": loss, "ln_k": ln_k, "ratio": loss / ln_k, "ok": bool(math.isfinite(loss) and loss < 2 * ln_k)}


def input_independent_probe(
    cfg: TrainkitConfig, bundle: DataBundle, epochs: int = 2, max_steps: int | None = None
) -> dict[str, Any]:
    """Train on zeroed inputs and on real inputs for a few epochs (at most ``max_steps`` steps
    each): the real model must score better, else the model is not using its inputs (broken data
    pipeline, labels detached from samples)."""
    _, zl, za = _short_train(cfg, bundle, epochs, cfg.training.seed, zero_inputs=True, max_steps=max_steps)
    _, rl, ra = _short_train(cfg, bundle, epochs, cfg.training.seed, max_steps=max_steps)
    ok = math.isfinite(rl) and ((ra > za + 0.01 and not bundle.regression) or rl < zl * 0.95)
    return {
        "zero_input_val_loss": zl,
        "zero_input_val_accuracy": za,
        "real_val_loss": rl,
        "real_val_accuracy": ra,
        "epochs": epochs,
        "ok": bool(ok),
    }


def overfit_batch_probe(
    cfg: TrainkitConfig, bundle: DataBundle, n: int = 32, steps: int = 300, lr: float = 1e-3, threshold: float = 0.05
) -> dict[str, Any]:
    """Memorise one small batch with Adam: the loss must get near zero, else the pipeline is broken."""
    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device)
    for m in model.modules():  # regularisers would fight memorisation
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x, y = sample(bundle, "train", n, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for i in range(steps):
        loss = loss_of(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 10 == 0 or i == steps - 1:
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]) or losses[-1] < threshold / 5:
                break
    final = losses[-1]
    return {
        "batch": int(len(y)),
        "steps": i + 1,
        "final_loss": final,
        "threshold": threshold,
        "ok": bool(math.isfinite(final) and final < threshold),
        "trace": losses,
    }


def grad_norm_stats(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Gradient-norm percentiles per epoch from the baseline's metrics.jsonl."""
    rows = [h for h in history if "grad_norm_p50" in h]
    if not rows:
        return {"epochs": 0}
    p50 = [h["grad_norm_p50"] for h in rows]
    return {
        "epochs": len(rows),
        "p50_first": p50[0],
        "p50_last": p50[-1],
        "max": max(h["grad_norm_max"] for h in rows),
        "p90_last": rows[-1]["grad_norm_p90"],
        "ratio_last_first": p50[-1] / p50[0] if p50[0] else None,
    }


def seed_variance_probe(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
    baseline: dict[str, Any] | None = None,
    deadline: float | None = None,
    allows: Any = None,
    cost_s: float = 0.0,
    history: Sequence[dict[str, Any]] | None = None,
    time_left: Any = None,
    trained: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The baseline's recipe on several seeds: the spread of best val accuracy is the noise floor of
    any comparison. With ``baseline`` (the diagnosed run's best epoch record) its own seed is not
    trained again: its result is the first value, and the other seeds run the full config (same
    epochs and early stopping), so the spread is that of whole runs. Without it, short runs of
    ``epochs`` (default min(epochs, 5)) on every seed.

    Budget: ``cost_s`` is one whole run. When ``time_left()`` cannot pay for two of them, the other
    seeds run only the first k epochs that fit (the same schedule, cut: ``short``), and the
    baseline's value is its best val accuracy up to epoch k (from ``history``); the spread is then
    that of the first k epochs. ``allows(seconds, what)`` is asked before each run; runs stop at
    ``deadline`` (a run cut before its length is left out). Runs as long as the baseline's
    (``mirrors_baseline``) are recorded (``runs``) so Phase 4 reuses them as baseline seeds.
    ``trained``: seed → a whole run of this same config already trained (Phase 4's seeds of the
    config it adopted); those seeds are read, not trained again (the run's ``reused`` names it)."""
    from trainkit.config import config_hash

    s0 = cfg.training.seed
    seeds = list(seeds) if seeds is not None else [s0, s0 + 1, s0 + 2]
    accs, runs = [], []
    cut_at = None
    if baseline is not None and baseline.get("cut_at_epochs"):  # the budget cut the baseline: mirror its length
        cut_at = int(baseline["cut_at_epochs"])
    short = False
    done = (trained or {}) if cut_at is None else {}  # whole runs stand in for whole runs only
    if baseline is not None and time_left is not None and history:
        length = cut_at or cfg.training.epochs
        epoch_s = cost_s / max(1, length)
        others = len([s for s in seeds if s != s0])
        to_train = len([s for s in seeds if s != s0 and s not in done])
        if to_train and epoch_s > 0 and time_left() < to_train * cost_s:  # half the time left: the label probe after
            k = int(0.5 * time_left() / (others * epoch_s))  # cut short, every other seed runs its first k epochs
            if k < 1:
                return {"error": "skipped: not one epoch per seed fits in the time budget", "skipped": True}
            cut_at, short, cost_s, done = min(k, length), True, epoch_s * min(k, length), {}
    if baseline is not None:
        accs, runs, used = _whole_runs(
            cfg, bundle, seeds, baseline, history, cut_at, short, cost_s, allows, deadline, done
        )
        seeds = used
        epochs = cut_at or cfg.training.epochs
        if len(accs) < 2:
            return {"error": "skipped: no second run fitted in the time budget", "skipped": True, "seeds": used}
    else:
        epochs = epochs or min(cfg.training.epochs, 5)
        for s in seeds:
            _, _, acc = _short_train(with_overrides(cfg, {"training.seed": int(s)}), bundle, epochs, int(s))
            accs.append(acc)
    a = np.asarray(accs)
    return {
        "seeds": list(seeds),
        "epochs": epochs,
        "full_runs": baseline is not None and cut_at is None,
        "short": short,
        "mirrors_baseline": baseline is not None and not short,
        "val_accuracy": accs,
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "range": float(a.max() - a.min()),
        "runs": runs if baseline is not None and not short else [],
        "config_hash": config_hash(cfg),
    }


def _whole_runs(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    seeds: list[int],
    baseline: dict[str, Any],
    history: Sequence[dict[str, Any]] | None,
    cut_at: int | None,
    short: bool,
    cost_s: float,
    allows: Any,
    deadline: float | None,
    trained: dict[int, dict[str, Any]],
) -> tuple[list[float], list[dict[str, Any]], list[int]]:
    """The seed-variance runs beside a baseline: (values, the recorded runs, the seeds used). The
    baseline's own seed is its value (up to epoch ``cut_at`` when ``short``); each other seed is
    its run in ``trained`` or runs the config, when ``allows`` pays for it (the runs side by side
    where :func:`trainkit.workers.fits_side_by_side` holds; one beside another asks for its time too)."""
    from trainkit.workers import fits_side_by_side, run_jobs

    s0 = cfg.training.seed
    todo = [int(s) for s in seeds if s != s0 and s not in trained]

    def job(s: int) -> Any:
        def run() -> dict[str, Any]:
            r = fit(
                with_overrides(cfg, {"training.seed": s}),
                bundle,
                None,
                progress=False,
                deadline=deadline,
                max_epochs=cut_at,
            )
            return {"status": r.status, "best": r.best or {}, "train_time_s": r.train_time_s, "history": r.history}

        return run

    done = run_jobs(
        [job(s) for s in todo],
        [f"seed-variance run on seed {s}" for s in todo],
        fits_side_by_side(cfg, bundle),
        allow=None
        if allows is None
        else lambda i, running: allows(cost_s * (1 + running), f"seed-variance run on seed {todo[i]}"),
    )
    fitted = dict(zip(todo, done))
    accs, runs, used = [], [], []
    for s in seeds:
        if s == s0:
            accs.append(
                float(
                    best_of(cfg.target.metric, (row_score(h) for h in history[:cut_at]))
                    if short
                    else row_score(baseline)
                )
            )
            used.append(s)
            continue
        run = trained.get(s) or fitted.get(int(s))
        if run is None or (
            s not in trained and run["status"] == "time_budget" and (cut_at is None or len(run["history"]) < cut_at)
        ):
            continue
        best = run["best"]
        accs.append(row_score(best) if best else 0.0)
        used.append(s)
        runs.append(
            {
                "seed": int(s),
                "status": run["status"],
                "best_val_accuracy": best.get("val_accuracy", 0.0),
                "best_val_score": accs[-1],
                "best_epoch": best.get("epoch"),
                "train_time_s": run.get("train_time_s"),
                "history": run["history"],
            }
            | ({"reused": run["dir"]} if s in trained else {})
        )
    return accs, runs, used


def throughput_probe(
    cfg: TrainkitConfig, bundle: DataBundle, sizes: Sequence[int] = (32, 64, 128, 256), steps: int = 8
) -> dict[str, Any]:
    """Training samples/s at several batch sizes (forward + backward + step, after one warm-up step)."""
    device = resolve_device(cfg.training.device)
    out = []
    for bs in sizes:
        model = _model(cfg, bundle, device)
        opt = make_optimizer(cfg, model.parameters())
        x, y = sample(bundle, "train", bs, device=device)
        for i in range(steps + 1):
            if i == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = loss_of(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out.append({"batch_size": int(len(y)), "samples_per_s": len(y) * steps / dt})
    return {"points": out, "configured_batch_size": cfg.data.batch_size}


def resource_profile(history: Sequence[dict[str, Any]], device: str) -> dict[str, Any]:
    """The baseline's data-wait fraction, throughput and (on CUDA) GPU utilisation and memory."""
    if not history:
        return {"device": device}
    mean = lambda k: float(np.mean([h[k] for h in history if k in h])) if any(k in h for h in history) else None  # noqa: E731
    prof = {
        "device": device,
        "data_wait_fraction": mean("data_wait_fraction"),
        "samples_per_s": mean("samples_per_s"),
        "epoch_time_s": mean("epoch_time_s"),
        "gpu_util_mean": mean("gpu_util_mean"),
    }
    if any("gpu_mem_max_mib" in h for h in history):
        prof["gpu_mem_max_mib"] = max(h.get("gpu_mem_max_mib", 0) for h in history)
        prof["gpu_mem_total_mib"] = max(h.get("gpu_mem_total_mib", 0) for h in history) or None
    return prof


def dead_units_probe(
    cfg: TrainkitConfig, bundle: DataBundle, model: nn.Module | None = None, n: int = 512
) -> dict[str, Any]:
    """Share of ReLU units that never fire on a val sample (of the given model, else a fresh one)."""
    device = resolve_device(cfg.training.device)
    model = (model or _model(cfg, bundle, device)).eval()
    acts: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: acts.append((o > 0).reshape(o.shape[0], -1).any(0)))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    x, _ = sample(bundle, "val", n, device=device)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    if not acts:
        return {"units": 0, "dead_fraction": None}
    alive = torch.cat(acts)
    return {"units": int(alive.numel()), "dead": int((~alive).sum()), "dead_fraction": float((~alive).float().mean())}


def per_class_probe(cfg: TrainkitConfig, bundle: DataBundle, model: nn.Module | None) -> dict[str, Any]:
    if bundle.regression:
        return {"na": "a regression has no classes"}
    return _per_class(cfg, bundle, model)


def _per_class(cfg: TrainkitConfig, bundle: DataBundle, model: nn.Module | None) -> dict[str, Any]:
    """Val recall per class of the diagnosed model (the baseline's best checkpoint)."""
    if model is None:
        return {"recall": None}
    device = next(model.parameters()).device
    model.eval()
    k = bundle.num_classes
    hit, tot = torch.zeros(k), torch.zeros(k)
    with torch.no_grad():
        for xb, yb, _ in bundle.batches("val", 1024, shuffle=False, device=device):
            pred = model(xb).argmax(1).cpu()
            yb = yb.cpu()
            tot += torch.bincount(yb, minlength=k).float()
            hit += torch.bincount(yb[pred == yb], minlength=k).float()
    rec = torch.where(tot > 0, hit / tot.clamp_min(1), torch.full_like(tot, float("nan")))
    valid = rec[~torch.isnan(rec)]
    return {
        "recall": [None if math.isnan(v) else round(float(v), 4) for v in rec],
        "support": tot.int().tolist(),
        "min_recall": float(valid.min()) if len(valid) else None,
        "mean_recall": float(valid.mean()) if len(valid) else None,
    }


def determinism_probe(cfg: Any, bundle: Any, epochs: int = 2, max_train: int = 512) -> dict[str, Any]:
    """Train twice from the same seed for ``epochs`` on at most ``max_train`` samples; compare losses.

    On CPU the two loss sequences must be bitwise identical; on GPU within ``tolerance``.
    """
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.training.epochs = epochs
    probe_cfg.training.patience = None
    original = bundle.splits["train"]
    bundle.splits["train"] = original[:max_train]
    try:
        runs = [fit(probe_cfg, bundle, None, progress=False) for _ in range(2)]
    finally:
        bundle.splits["train"] = original
    keys = ("train_loss", "val_loss", "val_score")
    seq = [[r[k] for r in run.history for k in keys] for run in runs]
    on_gpu = runs[0].device.startswith("cuda")
    tolerance = 1e-5 if on_gpu else 0.0
    max_diff = max((abs(a - b) for a, b in zip(*seq)), default=0.0)
    return {
        "identical": seq[0] == seq[1],
        "within_tolerance": max_diff <= tolerance,
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "device": runs[0].device,
        "epochs": epochs,
        "train_samples": int(min(max_train, len(original))),
        "losses_a": seq[0],
        "losses_b": seq[1],
        "passed": (seq[0] == seq[1]) if not on_gpu else max_diff <= tolerance,
        # the runs' timing (the first pays the process's cold start): Phase 1's compute plan extrapolates from it
        "timing": {
            "wall_s": runs[1].wall_time_s,
            "epochs_s": runs[1].train_time_s,
            "epochs": epochs,
            "cold_wall_s": runs[0].wall_time_s,
            "train_samples": int(min(max_train, len(original))),
            "val_samples": int(len(bundle.splits["val"])),
        },
    }


def reference_probe(
    bundle: DataBundle, network_val: float | None, metric: str = "accuracy", max_rows: int = 20000, seed: int = 0
) -> dict[str, Any]:
    """ "A simpler model is not better": the models a data scientist would otherwise pick, fitted
    on the same preprocessed train rows (a seeded sample beyond ``max_rows``) and scored on val
    with the target ``metric`` (accuracy beside it): a logistic regression, and for tables
    (``(N, F)`` inputs) scikit-learn's gradient-boosted trees. For images and signals the logistic
    regression on the flattened inputs is the floor. ``network_val`` is the network's best val
    value of the same metric; ``gap_points`` is how far the best reference is above it."""
    x, y = bundle.arrays("train")
    xv, yv = bundle.arrays("val")
    tabular = x.ndim == 2
    rows = max_rows if tabular else min(max_rows, 5000)
    if len(x) > rows:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:rows]
        x, y = x[pick], y[pick]
    xa, ya = x.reshape(len(x), -1).numpy(), y.numpy()
    xb, yb = xv.reshape(len(xv), -1).numpy(), yv.numpy()
    out: dict[str, Any] = {
        "rows": int(len(xa)),
        "of_rows": int(len(bundle.splits["train"])),
        "val_rows": int(len(yb)),
        "metric": metric,
        "models": {},
    }
    if bundle.regression:  # Ridge and boosted trees on the standardized label, scored in the label's units
        from trainkit.diagnostics.reference import reference_regressions

        truth = bundle.to_label_units(yb)
        for name, pred, seconds in reference_regressions(xa, ya, xb, tabular, seed):
            scores = score_all(truth, bundle.to_label_units(pred))
            out["models"][name] = {
                "val_accuracy": None,
                "val_score": scores[metric],
                **{f"val_{k}": v for k, v in scores.items()},
                "seconds": seconds,
            }
    else:
        for name, probs, seconds in reference_predictions(xa, ya, xb, bundle.num_classes, tabular, seed):
            recall = class_recall(yb, probs.argmax(1), bundle.num_classes)
            out["models"][name] = {
                "val_accuracy": float((probs.argmax(1) == yb).mean()),
                "val_score": score(metric, yb, probs),
                "val_recall": [None if r is None else round(r, 4) for r in recall],
                "seconds": seconds,
            }
    best = max(out["models"], key=lambda k: oriented(metric, out["models"][k]["val_score"]))
    top = out["models"][best]["val_score"]
    out.update(
        best=best,
        best_val_score=top,
        best_val_accuracy=out["models"][best]["val_accuracy"],
        network_val_score=network_val,
        network_val_accuracy=network_val if metric == "accuracy" else None,
        gap_points=None if network_val is None else round(gain_points(metric, top, network_val), 2),
    )
    return out
