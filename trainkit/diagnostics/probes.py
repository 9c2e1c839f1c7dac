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
import torch.nn.functional as F
from torch import nn

from trainkit.config import TrainkitConfig, with_overrides
from trainkit.data import DataBundle
from trainkit.diagnostics._fits import _model, _short_train, sample
from trainkit.diagnostics.reference import class_recall, reference_predictions
from trainkit.losses import loss_of
from trainkit.metrics import best_of, gain_points, oriented, regression_scores as score_all, row_score, score
from trainkit.train import fit, make_optimizer, resolve_device

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


def lr_range_test(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    lr_min: float = 1e-6,
    lr_max: float = 10.0,
    steps: int = 100,
    beta: float = 0.9,
    diverge: float = 4.0,
    longer: int = 300,
) -> dict[str, Any]:
    """Exponential LR sweep with the config's optimizer from a fresh initialization: smoothed loss
    per LR, stop on divergence.

    Suggestion: the LR of the lowest smoothed loss divided by 10 (the usual "min / 10" rule: the
    minimum sits at the edge of instability; a tenth of it trains fast and stays stable). The curve
    is read by its shape against its own noise (:func:`_lr_curve_problem`); when a ``steps`` sweep
    is flat, it sweeps again over ``longer`` steps (more batches, a slower ramp) before it says
    "inconclusive"."""
    out = _lr_sweep(cfg, bundle, lr_min, lr_max, steps, beta, diverge)
    if out.get("flat") and longer > steps:
        again = _lr_sweep(cfg, bundle, lr_min, lr_max, longer, beta, diverge)
        again["first_sweep"] = {"steps": steps, "reason": out.get("reason")}
        out = again
    out.pop("flat", None)
    return out


def _lr_sweep(
    cfg: TrainkitConfig, bundle: DataBundle, lr_min: float, lr_max: float, steps: int, beta: float, diverge: float
) -> dict[str, Any]:
    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device)
    opt = make_optimizer(with_overrides(cfg, {"optimizer.lr": lr_min}), model.parameters())
    factor = (lr_max / lr_min) ** (1 / max(1, steps - 1))
    lrs, losses, raws, avg, best = [], [], [], 0.0, math.inf
    it, epoch = iter(()), 0
    for i in range(steps):
        try:
            xb, yb, _ = next(it)
        except StopIteration:
            it = iter(
                bundle.batches(
                    "train", cfg.data.batch_size, shuffle=True, seed=cfg.training.seed + 7, epoch=epoch, device=device
                )
            )
            epoch += 1
            xb, yb, _ = next(it)
        lr = lr_min * factor**i
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        raw = float(loss.detach())
        if not math.isfinite(raw):
            break
        avg = beta * avg + (1 - beta) * raw
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        raws.append(raw)
        best = min(best, smooth)
        if i > 5 and smooth > diverge * best:
            break
    if not losses:
        return {
            "lrs": [],
            "losses": [],
            "suggested_lr": None,
            "min_loss_lr": None,
            "ok": False,
            "inconclusive": True,
            "reason": "the loss was non-finite from the first step",
            "steps": steps,
        }
    k = int(np.argmin(losses))
    diverged = len(lrs) < steps
    out = {
        "lrs": lrs,
        "losses": losses,
        "min_loss_lr": lrs[k],
        "suggested_lr": lrs[k] / 10,
        "configured_lr": cfg.optimizer.lr,
        "optimizer": cfg.optimizer.name,
        "stopped_at_lr": lrs[-1],
        "diverged": diverged,
        "ok": True,
        "inconclusive": False,
        "steps": steps,
    }
    why, stats = _lr_curve_problem(losses, raws, k, diverged)
    out["shape"] = stats
    if why:  # a flat or noisy curve has no minimum worth trusting: suggest nothing rather than a guess
        out.update(suggested_lr=None, ok=False, inconclusive=True, reason=why, flat=why.startswith("flat"))
    return out


LR_CURVE_Z = 4.0  # the fall to the minimum must exceed this many standard errors of the curve's own noise
LR_CURVE_MIN_FALL = 0.01  # ... and 1% of the starting loss (a noiseless curve makes any wiggle "significant")


def _lr_curve_problem(
    losses: list[float], raws: list[float], k: int, diverged: bool
) -> tuple[str | None, dict[str, Any]]:
    """Why a range-test curve cannot be read (None when it can), judged by its shape against its
    own noise, not a fixed fall: the step-to-step noise of the raw losses (a robust estimate from
    successive differences) gives the standard error of the starting level (the first tenth of the
    sweep) and of the smoothed minimum; the fall from start to minimum must exceed
    ``LR_CURVE_Z`` of those errors (and ``LR_CURVE_MIN_FALL``). A curve that fell and then
    diverged has a clear minimum; one whose minimum sits in the first tenth of the sweep has none."""
    n = len(losses)
    n0 = max(3, n // 10)
    start = float(np.mean(raws[:n0]))
    diffs = np.diff(np.asarray(raws, dtype=float))
    sigma = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2)) if len(diffs) >= 3 else 0.0
    se = sigma * math.sqrt(1 / n0 + 0.1 / 1.9)  # the EMA's variance is σ²(1 − β)/(1 + β) at β = 0.9
    fall = start - losses[k]
    stats = {
        "start_loss": round(start, 5),
        "min_loss": round(losses[k], 5),
        "fall": round(fall, 5),
        "noise_sd": round(sigma, 5),
        "fall_in_se": round(fall / se, 2) if se > 0 else None,
        "diverged_after_min": diverged,
    }
    need = max(LR_CURVE_Z * se, LR_CURVE_MIN_FALL * abs(start))
    if fall < need:
        return (
            f"flat curve: the smoothed loss fell {fall:.4g} ({fall / start if start else 0.0:.1%}) across the sweep, "
            "within "
            f"{LR_CURVE_Z:g} standard errors of its own noise (needs {need:.4g}); no LR range where this model learns "
            "(dead units, detached inputs or labels?)"
        ), stats
    if k < n // 10:
        return "noisy curve: the lowest loss comes before the LR has grown; no trustworthy minimum", stats
    return None, stats


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
    (``mirrors_baseline``) are recorded (``runs``) so Phase 4 reuses them as baseline seeds."""
    from trainkit.config import config_hash
    from trainkit.train import fit

    s0 = cfg.training.seed
    seeds = list(seeds) if seeds is not None else [s0, s0 + 1, s0 + 2]
    accs, runs, used = [], [], []
    cut_at = None
    if baseline is not None and baseline.get("cut_at_epochs"):  # the budget cut the baseline: mirror its length
        cut_at = int(baseline["cut_at_epochs"])
    short = False
    if baseline is not None and time_left is not None and history:
        length = cut_at or cfg.training.epochs
        epoch_s = cost_s / max(1, length)
        others = len([s for s in seeds if s != s0])
        if epoch_s > 0 and time_left() < others * cost_s:  # half the time left: the label probe comes after
            k = int(0.5 * time_left() / (others * epoch_s))
            if k < 1:
                return {"error": "skipped: not one epoch per seed fits in the time budget", "skipped": True}
            cut_at, short, cost_s = min(k, length), True, epoch_s * min(k, length)
    if baseline is not None:
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
            if allows is not None and not allows(cost_s, f"seed-variance run on seed {s}"):
                continue
            r = fit(
                with_overrides(cfg, {"training.seed": int(s)}),
                bundle,
                None,
                progress=False,
                deadline=deadline,
                max_epochs=cut_at,
            )
            if r.status == "time_budget" and (cut_at is None or len(r.history) < cut_at):
                continue
            accs.append(row_score(r.best) if r.best else 0.0)
            used.append(s)
            runs.append(
                {
                    "seed": int(s),
                    "status": r.status,
                    "best_val_accuracy": (r.best or {}).get("val_accuracy", 0.0),
                    "best_val_score": accs[-1],
                    "best_epoch": (r.best or {}).get("epoch"),
                    "train_time_s": r.train_time_s,
                    "history": r.history,
                }
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


def _chance_repeats(bundle: DataBundle, shared: int, within: int) -> tuple[bool, str]:
    """Whether a table's train rows that equal another split's (``shared``) or another train row
    (``within``) are chance repeats (:func:`trainkit.data.tables.shared_records_verdict`)."""
    table = getattr(bundle.source, "table", None)
    if bundle.source.duplicates_by_chance:
        return True, "the columns are discrete enough that equal records happen by chance"
    if table is None or not (shared or within):
        return False, ""
    from trainkit.data.tables import shared_records_verdict

    n_train = len(bundle.splits["train"])
    others = sum(len(v) for v in bundle.info["indices"].values()) - n_train
    seen = table.frame.iloc[np.concatenate([np.asarray(bundle.splits[s], dtype=np.int64) for s in ("train", "val")])]
    ok_shared, why = shared_records_verdict(seen, list(table.kinds), shared, n_train, others)
    ok_within, why_within = shared_records_verdict(seen, list(table.kinds), within, n_train, n_train)
    return ok_shared and ok_within, why if shared else why_within


def data_probe(bundle: DataBundle, near_threshold: float = 0.995, max_rows: int = 20000) -> dict[str, Any]:
    """Duplicates (exact, from content hashes over all splits; near, by cosine similarity between
    train and val), class balance, constant and non-finite features. Test content enters only
    through the hashes Phase 1 recorded; no test sample is read here."""
    info, keys = bundle.info, bundle.source.sample_keys
    y = bundle.source.y.numpy()
    splits = {k: np.asarray(v) for k, v in info["indices"].items()}
    out: dict[str, Any] = {"duplicates": dict(info.get("duplicates", {}))}
    if keys:
        key_split: dict[str, set[str]] = {}
        for name, idx in splits.items():
            for i in idx:
                key_split.setdefault(keys[i], set()).add(name)
        leaked = [int(i) for i in bundle.splits["train"] if len(key_split.get(keys[i], ())) > 1]
        seen: dict[str, int] = {}
        within = []
        for i in bundle.splits["train"]:
            if keys[i] in seen:
                within.append(int(i))
            seen.setdefault(keys[i], int(i))
        chance, why = _chance_repeats(bundle, len(leaked), len(within))
        if chance:  # equal records that are different rows (discrete columns, or a handful), not copies
            out["shared_records_by_chance"] = {
                "train_rows_shared_across_splits": len(leaked),
                "within_train": len(within),
                "why": why,
            }
            leaked, within = [], []
        out["leaked_train_indices"] = leaked
        out["duplicate_train_indices"] = within
    if not bundle.regression:  # a number to predict has no classes to balance
        counts = np.bincount(y[bundle.splits["train"]], minlength=bundle.num_classes)
        out["class_counts_train"] = counts.tolist()
        out["imbalance_ratio"] = float(counts.max() / max(1, counts.min()))
    if bundle.source.x is not None:
        xt = bundle.source.x[torch.as_tensor(bundle.splits["train"][:max_rows])].reshape(
            len(bundle.splits["train"][:max_rows]), -1
        )
        out["features"] = int(xt.shape[1])
        out["non_finite_values"] = int((~torch.isfinite(xt)).sum())
        out["constant_features"] = int((xt.std(0) == 0).sum())
        # a table's records are compared whole, by their content hashes, above: rows that are merely close
        # (the same categories, near numbers) are neighbours, different customers, not copies
        out["near_duplicates_train_val"] = (
            0
            if bundle.source.duplicates_by_chance or getattr(bundle.source, "table", None) is not None
            else _near_duplicates(bundle, near_threshold, max_rows)
        )
    table = getattr(bundle.source, "table", None)
    if table is not None:  # by column name, on train and val only
        tr, va = np.asarray(bundle.splits["train"]), np.asarray(bundle.splits["val"])
        yy = y.astype(np.float64) if bundle.regression else y
        out["table"] = table.checks(tr, yy[tr], va, yy[va])
    return out


def _near_duplicates(bundle: DataBundle, threshold: float, max_rows: int) -> int:
    """Val samples with a train sample at cosine similarity ≥ threshold (not counting exact copies)."""
    xs = bundle._x if bundle._x is not None else bundle.source.x  # normalized: no feature's scale dominates the cosine
    tr = torch.as_tensor(bundle.splits["train"][:max_rows])
    va = torch.as_tensor(bundle.splits["val"][:max_rows])
    a = F.normalize(xs[tr].reshape(len(tr), -1).double(), dim=1)
    b = F.normalize(xs[va].reshape(len(va), -1).double(), dim=1)
    count = 0
    for i in range(0, len(b), 1024):
        sim = b[i : i + 1024] @ a.T
        best = sim.max(1).values
        count += int(((best >= threshold) & (best < 1 - 1e-12)).sum())
    return count


def label_issue_probe(
    cfg: TrainkitConfig,
    bundle: DataBundle,
    folds: int = 3,
    epochs: int = 15,
    max_rows: int = 20000,
    baseline_val: float | None = None,
    min_kappa: float = 0.5,
    max_shortfall: float = 0.10,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Likely label errors by confident learning on out-of-fold predicted probabilities, judged
    only when the out-of-fold model can be trusted.

    The training split is cut into ``folds``; a model (the config's architecture, Adam 1e-3) trained
    on the other folds predicts each held-out sample and the val split. Trust: its val accuracy
    must beat chance (the majority class) by Cohen's kappa ≥ ``min_kappa`` and fall at most
    ``max_shortfall`` below the baseline's own val accuracy; otherwise the probe is
    ``inconclusive`` and flags nothing (a weak model disagrees with clean labels too).

    Noise rate: the model agrees with the given train labels less often than with the val labels
    by ``excess = acc_val − acc_oof``; ``noise_rate = excess / acc_val`` with a 95% interval. Only
    when that interval excludes 0 (train labels are measurably worse than the labels the metric is
    judged on, so leaving rows out can raise it) are samples flagged: confident learning's
    off-diagonal ones (per class j the threshold t_j is the mean p_j over samples labelled j; a
    sample labelled i is off-diagonal when the most probable class among those above their
    threshold is not i), lowest self-confidence first, at most ``noise_rate × N`` of them.

    At most ``max_rows`` train rows (a seeded random subsample: folders list their classes in
    order) and val rows are read; the fold models stop at ``deadline``."""
    rng = np.random.default_rng(cfg.training.seed)
    train = _subsample(np.asarray(bundle.splits["train"]), max_rows, rng)
    labels = bundle.labels if bundle.labels is not None else bundle.source.y
    order = rng.permutation(len(train))
    k = bundle.num_classes
    probs = np.zeros((len(train), k))
    val_idx = _subsample(np.asarray(bundle.splits["val"]), max_rows, rng)
    val_probs = np.zeros((len(val_idx), k))
    base = with_overrides(cfg, {"optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.0})
    for f in range(folds):
        held = order[f::folds]
        sub = _sub_bundle(bundle, train[np.setdiff1d(np.arange(len(train)), held)], train[held])
        model, _, _ = _short_train(base, sub, epochs, cfg.training.seed + f, deadline=deadline)
        probs[held] = _predict(model, sub, train[held])
        val_probs += _predict(model, sub, val_idx) / folds
    given = labels[torch.as_tensor(train)].numpy()
    y_val = labels[torch.as_tensor(val_idx)].numpy()
    acc_oof = float((probs.argmax(1) == given).mean())
    acc_val = float((val_probs.argmax(1) == y_val).mean())
    chance = float(np.bincount(y_val, minlength=k).max() / max(1, len(y_val)))
    kappa = (acc_val - chance) / (1 - chance) if chance < 1 else 0.0
    short = (baseline_val - acc_val) if baseline_val is not None else 0.0
    trusted = kappa >= min_kappa and short <= max_shortfall
    excess = acc_val - acc_oof
    se = math.sqrt(acc_val * (1 - acc_val) / max(1, len(y_val)) + acc_oof * (1 - acc_oof) / max(1, len(given)))
    a = max(acc_val, 1e-9)
    rate = [max(0.0, min(1.0, v / a)) for v in (excess, excess - 1.96 * se, excess + 1.96 * se)]
    thresholds = np.array([probs[given == j, j].mean() if (given == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds[None, :]
    conf_class = np.where(above, probs, -1.0).argmax(1)
    off = np.flatnonzero(above.any(1) & (conf_class != given))
    self_conf = probs[np.arange(len(train)), given]
    significant = trusted and rate[1] > 0
    n_flag = min(len(off), int(round(rate[0] * len(train)))) if significant else 0
    pick = off[np.argsort(self_conf[off], kind="stable")[:n_flag]]
    flagged = sorted(int(train[i]) for i in pick)
    if not trusted:
        verdict = (
            f"inconclusive: the out-of-fold model is too weak to judge labels (val accuracy {acc_val:.3f}, "
            f"kappa {kappa:.2f} < {min_kappa}"
            + (f", baseline {baseline_val:.3f}" if baseline_val is not None else "")
            + ")"
        )
    elif not significant:
        verdict = (
            f"no excess label noise: the model agrees with train labels ({acc_oof:.3f}) as well as with val "
            f"labels ({acc_val:.3f}) within the 95% interval"
        )
    else:
        verdict = (
            f"estimated label-noise rate {rate[0]:.1%} (95% CI {rate[1]:.1%}–{rate[2]:.1%}); {len(flagged)} flagged"
        )
    return {
        "folds": folds,
        "epochs": epochs,
        "checked": int(len(train)),
        "flagged": flagged,
        "flagged_fraction": len(flagged) / max(1, len(train)),
        "inconclusive": not trusted,
        "trusted": trusted,
        "significant": significant,
        "verdict": verdict,
        "noise_rate": rate[0],
        "noise_rate_ci": rate[1:],
        "oof_accuracy_vs_given": acc_oof,
        "oof_val_accuracy": acc_val,
        "chance": chance,
        "kappa": kappa,
        "baseline_val_accuracy": baseline_val,
        "confident_learning_candidates": int(len(off)),
        "thresholds": thresholds.tolist(),
        "mean_self_confidence_flagged": float(self_conf[pick].mean()) if len(pick) else None,
    }


def _subsample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` of ``idx``, drawn at random (sorted); all of them when there are no more."""
    return idx if len(idx) <= n else np.sort(rng.choice(idx, size=n, replace=False))


def _predict(model: nn.Module, bundle: DataBundle, idx: np.ndarray) -> np.ndarray:
    """Softmax probabilities of ``model`` on the samples ``idx`` of ``bundle`` (train or val rows only)."""
    sub = _sub_bundle(bundle, np.asarray(bundle.splits["train"]), idx)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for xb, _, _ in sub.batches("val", 1024, shuffle=False, device=device):
            parts.append(torch.softmax(model(xb).float(), 1).cpu())
    return torch.cat(parts).numpy()


def _sub_bundle(bundle: DataBundle, train_idx: np.ndarray, val_idx: np.ndarray) -> DataBundle:
    """The same data with other train/val index sets (the test split is dropped)."""
    import copy

    sub = copy.copy(bundle)
    sub.splits = {"train": np.sort(train_idx), "val": np.asarray(val_idx)}
    return sub


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
