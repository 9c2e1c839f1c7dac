"""Phase 5 (Finalization): final training, the one-time test evaluation, export with parity and
latency, deployment guide and model card, the 25-check production_ready gate, deploy or blocked."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit._io import md_text, read_json, read_jsonl, sha256_file, write_json_atomic, write_text_atomic
from trainkit.config import config_hash, load_config, save_config, with_overrides
from trainkit.run import (
    METRICS,
    TRAINING_CONFIG,
    TEST_ACCESS_LOG,
    TRAIN_SUMMARY,
    PHASES,
    BEST_PT,
    CHECKPOINTS_BEST_PT,
    CURVES_PNG,
    FINAL_CONFIG_YAML,
    LAST_PT,
    REPRODUCE_JSON,
    TEST_EVALUATION_JSON,
    TEST_RESULTS_MD,
)
from trainkit.errors import QuarantineError
from trainkit.phases.common import (
    run_path,
    FinalizationContext,
    begin,
    clock,
    finish_gate,
    load_run_config,
    require_routed,
    show_figure,
    show_html,
    write_decision,
)
from trainkit.metrics import LABELS, bootstrap_interval as _boot, expected_calibration_error, metric_interval, score
from trainkit.phases.final_numbers import evaluate_numbers, folds_val
from trainkit.phases.peers import recall_table, reference_recall
from trainkit.phases.final_model import PHASE, _best_so_far, _bundle, _load_final, _load_model, _predict
from trainkit.phases.final_docs import export_models, write_docs
from trainkit.phases.final_checks import ARTIFACTS, _results

__all__ = [
    "start",
    "final_train",
    "evaluate_test",
    "export_models",
    "write_docs",
    "reproduce",
    "decide",
    "gate",
    "expected_calibration_error",
]

TEST_RECORD = TEST_EVALUATION_JSON


def start(run_dir: str | Path, interactive: bool = True) -> FinalizationContext:
    """Open ``05_finalization`` when the previous phase's decision routed here and its gate passed."""
    run_dir = run_path(run_dir)
    _, prev, decision = require_routed(run_dir, PHASE, tuple(p for p in PHASES if p != PHASE))
    ctx = begin(FinalizationContext, run_dir, PHASE, 1, interactive)
    cfg = load_run_config(run_dir)
    f = cfg.final
    ctx.config = with_overrides(
        cfg, {"training.epochs": max(cfg.training.epochs, f.epochs), "training.patience": f.patience}
    )
    ctx.reused = None
    _refit_plan(ctx)
    _fit_in_budget(ctx, cfg)
    _freeze_config(ctx)
    what = (
        f"the final model is the best so far, <code>{html.escape(ctx.reused)}</code> (no time for a final training)"
        if ctx.reused
        else f"{ctx.config.training.epochs} epochs, patience {ctx.config.training.patience}"
    )
    if ctx.refit and not ctx.reused:
        what += f"; small data: {html.escape(ctx.refit['summary'])}"
    elif _table_refit_applies(ctx) and not ctx.reused:
        what += "; a table: first on train (selection/, early stopping on val), then on train+val (the final model)"
    show_html(
        f"<p>Finalization from <code>{prev.relative_to(run_dir)}</code> ({html.escape(decision['reason'])}): "
        f"{what}.</p>"
    )
    return ctx


REPRO_EPOCHS = 2
SELECTION_DIR = "selection"  # a table's early-stopped run on train, before its refit on train+val


def _freeze_config(ctx: FinalizationContext) -> None:
    """final_config.yaml and its hashes (the production gate's config_frozen check)."""
    save_config(ctx.config, ctx.path(FINAL_CONFIG_YAML))
    write_json_atomic(
        ctx.path("final_config.sha256.json"),
        {"config_hash": config_hash(ctx.config), "file_sha256": sha256_file(ctx.path(FINAL_CONFIG_YAML))},
    )


def _refit_plan(ctx: FinalizationContext) -> None:
    """Small data: train+val for the folds' epoch count (:func:`trainkit.folds.plan_refit`)."""
    from trainkit.folds import plan_refit, refit_view

    ref = plan_refit(ctx.run_dir, ctx.run.splits(), ctx.config, lambda: _bundle(ctx), clock(ctx).allows)
    if ref is not None:
        ctx.config = with_overrides(ctx.config, {"training.epochs": ref["epochs"], "training.patience": None})
        ctx.refit = ref
        write_json_atomic(ctx.path("refit.json"), ref)
        ctx.bundle = refit_view(_bundle(ctx))


def _fit_in_budget(ctx: FinalizationContext, cfg: Any) -> None:
    """Bound the final training by the time left (Phase 5's deadline less its tail reserve): all
    of it when it fits; fewer epochs when at least the recipe's own epochs fit; otherwise the best
    model so far becomes the final model (copied with its config, metrics and checkpoints, so the
    test, export and reproduction run on exactly it). Each cut is recorded."""
    src = _best_so_far(ctx.run_dir)
    if src is None:
        return
    hist = read_json(src[0] / TRAIN_SUMMARY).get("history") or [] if (src[0] / TRAIN_SUMMARY).is_file() else []
    times = [h["epoch_time_s"] for h in hist if h.get("epoch_time_s")]
    if not times:
        return
    epoch_s, c = sum(times) / len(times), clock(ctx)
    planned = ctx.config.training.epochs
    fits = int(c.left() // epoch_s) - REPRO_EPOCHS
    if fits >= planned:
        return
    if fits >= cfg.training.epochs:
        c.cut(f"final training epochs {fits + 1}-{planned}", f"{fits} epochs of ~{epoch_s:.2f} s fit in the time left")
        ctx.config = with_overrides(ctx.config, {"training.epochs": fits})
        return
    from trainkit.checkpoints import copy_checkpoints

    c.cut(
        f"final training ({planned} epochs of ~{epoch_s:.2f} s)",
        f"{max(0.0, c.left()):.1f} s left; the final model is the best so far, {src[0].relative_to(ctx.run_dir)}",
    )
    ctx.config = load_config(src[1])
    copy_checkpoints(src[0] / "checkpoints", ctx.path("checkpoints"), (BEST_PT, LAST_PT))
    for name in (METRICS, TRAIN_SUMMARY):
        write_text_atomic(ctx.path(name), (src[0] / name).read_text())
    ctx.reused = str(src[0].relative_to(ctx.run_dir))


def final_train(ctx: FinalizationContext, resume: bool = False) -> dict[str, Any]:
    """Train the final model (checkpoints/best.pt is what is exported and deployed)."""
    from trainkit.plots import curves_figure
    from trainkit.train import fit

    if getattr(ctx, "reused", None):  # the time budget left no room: the best model so far is the final one
        out = read_json(ctx.path(TRAIN_SUMMARY))
        out["reused_from"] = ctx.reused
        if out.get("history"):
            show_figure(
                curves_figure(out["history"], f"final model = best so far ({ctx.reused})"), ctx.path(CURVES_PNG)
            )
        return out
    bundle = _bundle(ctx)
    if _table_refit_applies(ctx):
        bundle = _select_then_refit(ctx, bundle)  # the train+val view the refit trains on
        if bundle is None:  # the early-stopped run is the final model
            out = read_json(ctx.path(TRAIN_SUMMARY))
            show_figure(curves_figure(out["history"], "final training"), ctx.path(CURVES_PNG))
            return out
    r = fit(
        ctx.config,
        bundle,
        ctx.dir,
        resume=resume,
        deadline=clock(ctx).deadline,
        select="last" if getattr(ctx, "refit", None) else "best",
    )
    if r.status == "time_budget":
        clock(ctx).cut(
            f"final training epochs {len(r.history) + 1}-{ctx.config.training.epochs}", "stopped at Phase 5's deadline"
        )
    if r.history:
        show_figure(curves_figure(r.history, "final training"), ctx.path(CURVES_PNG))
    return r.to_dict()


def _table_refit_applies(ctx: FinalizationContext) -> bool:
    """A table read from a file whose val split is not small (small data has its folds' refit)."""
    from trainkit.config import TABLE_SOURCES

    return ctx.config.data.source in TABLE_SOURCES and not getattr(ctx, "refit", None)


def _select_then_refit(ctx: FinalizationContext, bundle: Any) -> Any:
    """A table's final model (:data:`trainkit.folds.TABLE_RULE`): the final config trains on train,
    early stopping on val, in ``selection/`` (kept when it already finished on this config); then
    ``ctx.config`` becomes the refit's (train+val, :func:`~trainkit.folds.refit_epochs`, no
    patience), frozen again, and ``ctx.bundle`` the train+val view, which is returned. None when
    the early-stopped run is the final model (no best epoch, stopped by the deadline, or no time
    left for the refit): its files are then copied into the phase folder."""
    import shutil

    from trainkit.folds import TABLE_RULE, refit_epochs, refit_view
    from trainkit.run import read_fit
    from trainkit.train import fit

    sel, ok = ctx.path(SELECTION_DIR), ("completed", "early_stopped")
    done = read_fit(sel)
    if done and config_hash(done[0]) == config_hash(ctx.config) and done[1].get("status") in ok:
        s = done[1]
    else:
        shutil.rmtree(sel, ignore_errors=True)
        s = fit(ctx.config, bundle, sel, deadline=clock(ctx).deadline).to_dict()
    n_tr, n_val, best = len(bundle.splits["train"]), len(bundle.splits["val"]), s.get("best")
    epochs = refit_epochs(best["epoch"], n_tr, n_val) if best else 0
    epoch_s = s.get("wall_time_s", 0.0) / max(1, len(s.get("history") or [])) * (n_tr + n_val) / max(1, n_tr)
    if s.get("status") == "time_budget":
        clock(ctx).cut("the rest of the final training and its refit on train+val", "stopped at Phase 5's deadline")
    if s.get("status") not in ok or not best or not clock(ctx).allows(epoch_s * epochs, "the refit on train+val"):
        shutil.copytree(sel, ctx.dir, dirs_exist_ok=True)
        ctx.path("refit.json").unlink(missing_ok=True)  # an earlier execution's refit is not this model's
        return None
    ctx.config = with_overrides(ctx.config, {"training.epochs": epochs, "training.patience": None})
    val = {k: best[k] for k in ("val_loss", "val_accuracy", "val_score") if best.get(k) is not None}
    ctx.refit = {
        "rule": TABLE_RULE,
        "selection": SELECTION_DIR,
        "best_epoch": best["epoch"],
        "selection_val": val,
        "epochs": epochs,
        "rows": n_tr + n_val,
        "val_rows": n_val,
        "summary": (
            f"trained on train+val ({n_tr + n_val} rows) for {epochs} epochs: the run on train alone "
            f"({SELECTION_DIR}/, early stopping on val) was best at epoch {best['epoch'] + 1} of "
            f"{len(s['history'])}, scaled by the rows; its val rows are training rows, so every val number "
            f"here is the early-stopped model's ({SELECTION_DIR}/), which never trained on them"
        ),
    }
    write_json_atomic(ctx.path("refit.json"), ctx.refit)
    _freeze_config(ctx)
    ctx.bundle = refit_view(bundle)
    return ctx.bundle


def _selection_model(ctx: FinalizationContext, bundle: Any) -> torch.nn.Module | None:
    """A refit table's early-stopped model (``selection/``), whose val numbers are the honest ones;
    None otherwise."""
    refit = getattr(ctx, "refit", None) or {}
    if not refit.get("selection"):
        return None
    sel = ctx.path(refit["selection"])
    return _load_model(load_config(sel / TRAINING_CONFIG).model, bundle, sel / CHECKPOINTS_BEST_PT)


def evaluate_test(ctx: FinalizationContext, force: bool = False) -> dict[str, Any]:
    """The one test evaluation of the final model. A second one is refused (QuarantineError) unless
    ``force``, and then recorded as forced; a rerun of this phase on the same model reuses the record."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rec_path = ctx.path(TEST_RECORD)
    model_sha = sha256_file(ctx.path(CHECKPOINTS_BEST_PT))
    if rec_path.is_file():
        old = read_json(rec_path)
        if old["model_sha256"] == model_sha and not force:
            show_html("<p>Test evaluation already done on this model: showing the record (no new read).</p>")
            return old
        if not force:
            raise QuarantineError(
                f"the test split was already evaluated on {time_str(old['time'])} (model "
                f"{old['model_sha256'][:12]}); a second evaluation is refused. Pass force=True to "
                "re-evaluate; it is recorded and check test_evaluated_once will fail unless waived"
            )
    bundle = _bundle(ctx)
    model = _load_final(ctx, bundle)
    val_model = _selection_model(ctx, bundle)  # a refit table: its val rows are training rows of the final model
    if bundle.regression:  # numbers in the label's units, each metric with its interval (final_numbers)
        return evaluate_numbers(ctx, bundle, model, force, model_sha, rec_path, val_model)
    xv, yv = bundle.arrays("val")
    xt, yt = bundle.arrays("test", reason="forced re-evaluation" if force else "final test evaluation", forced=force)
    pt, pv = _predict(model, xt), _predict(val_model or model, xv)
    yt_, yv_ = yt.numpy(), yv.numpy()
    correct_t, correct_v = (pt.argmax(1) == yt_).astype(float), (pv.argmax(1) == yv_).astype(float)
    f = ctx.config.final
    p, r, f1, s = precision_recall_fscore_support(
        yt_, pt.argmax(1), labels=list(range(bundle.num_classes)), zero_division=0
    )
    ece, bins = expected_calibration_error(pt, yt_)
    g = torch.Generator().manual_seed(ctx.config.training.seed)
    noisy = _predict(model, xt + f.noise_std * torch.randn(xt.shape, generator=g))
    rec = {
        "time": time.time(),
        "model_sha256": model_sha,
        "forced": force,
        "n": int(len(yt_)),
        "accuracy": float(correct_t.mean()),
        "accuracy_ci": _boot(correct_t, f.bootstrap, 0),
        "val_accuracy": float(correct_v.mean()),
        "val_accuracy_ci": _boot(correct_v, f.bootstrap, 1),
        "per_class": [
            {
                "class": bundle.source.class_names[k],
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f1[k]),
                "support": int(s[k]),
            }
            for k in range(bundle.num_classes)
        ],
        "confusion": confusion_matrix(yt_, pt.argmax(1), labels=list(range(bundle.num_classes))).tolist(),
        "ece": ece,
        "reliability": bins,
        "noise_std": f.noise_std,
        "noisy_accuracy": float((noisy.argmax(1) == yt_).mean()),
        "predicted": pt.argmax(1).tolist(),
    }
    rec["robustness_drop"] = rec["accuracy"] - rec["noisy_accuracy"]
    rec["reference_recall"] = reference_recall(bundle, xt.numpy(), yt_)
    metric = ctx.config.target.metric  # the target metric beside accuracy (the same numbers when it is accuracy)
    rec.update(
        metric=metric,
        score=score(metric, yt_, pt),
        score_ci=metric_interval(metric, yt_, pt, f.bootstrap, 0),
        val_score=score(metric, yv_, pv),
        val_score_ci=metric_interval(metric, yv_, pv, f.bootstrap, 1),
    )
    rec.update(folds_val(ctx) or {})  # small data's refit trained on the val rows: the folds' numbers
    write_json_atomic(rec_path, rec)
    _test_figures(ctx, rec, bundle.source.class_names)
    _write_test_md(ctx, rec)
    return rec


def time_str(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _test_figures(ctx: FinalizationContext, rec: dict[str, Any], names: list[str]) -> None:
    import matplotlib.pyplot as plt

    cm = np.asarray(rec["confusion"])
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * k + 2), max(4.0, 0.45 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:  # the counts themselves, dark on light cells and light on dark ones
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8 if k > 12 else 10,
                    color="white" if cm[i, j] > 0.5 * cm.max() else "black",
                )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (acc {rec['accuracy']:.3f})")
    show_figure(fig, ctx.path("confusion.png"))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b["confidence"] for b in rec["reliability"]], [b["accuracy"] for b in rec["reliability"]], "o-")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {rec['ece']:.3f})")
    show_figure(fig, ctx.path("reliability.png"))


def _write_test_md(ctx: FinalizationContext, rec: dict[str, Any]) -> None:
    lo, hi = rec["accuracy_ci"]
    L = [
        "# Test results",
        "",
        f"Evaluated once on {rec['n']} quarantined test samples ({time_str(rec['time'])})"
        + (" — **forced re-evaluation**" if rec["forced"] else "")
        + ".",
        "",
        *(
            [
                f"- test {LABELS[rec['metric']]} **{rec['score']:.4f}** (the target metric; 95% bootstrap CI "
                f"[{rec['score_ci'][0]:.4f}, {rec['score_ci'][1]:.4f}]); val {rec['val_score']:.4f}"
            ]
            if rec.get("metric", "accuracy") != "accuracy"
            else []
        ),
        f"- test accuracy **{rec['accuracy']:.4f}** (95% bootstrap CI [{lo:.4f}, {hi:.4f}])",
        f"- val accuracy {rec['val_accuracy']:.4f} (CI [{rec['val_accuracy_ci'][0]:.4f}, "
        f"{rec['val_accuracy_ci'][1]:.4f}])" + (f": {rec['val_source']}" if rec.get("val_source") else ""),
        f"- expected calibration error {rec['ece']:.4f} (15 bins)",
        *(
            [f"- {'small data' if refit.get('k') else 'a table'}: {refit['summary']}"]
            if (refit := getattr(ctx, "refit", None)) and not getattr(ctx, "reused", None)
            else []
        ),
        f"- robustness: accuracy {rec['noisy_accuracy']:.4f} with Gaussian noise σ={rec['noise_std']} on normalized "
        "inputs "
        f"(drop {rec['robustness_drop'] * 100:.2f} points)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    L += [
        f"| {md_text(c['class'])} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in rec["per_class"]
    ]
    L += recall_table(rec) + ["", "![confusion matrix](confusion.png)", "", "![reliability diagram](reliability.png)"]
    write_text_atomic(ctx.path(TEST_RESULTS_MD), "\n".join(L) + "\n")


def reproduce(ctx: FinalizationContext, epochs: int = REPRO_EPOCHS) -> dict[str, Any]:
    """Re-run the first epochs of the final training and compare the logged metrics exactly; again
    on the thread count it trained on (``train_summary.json``) when that differs and the first try
    does not match (the best so far, reused, may have trained side by side: trainkit.workers)."""
    from trainkit.train import fit

    logged = [r for r in read_jsonl(ctx.path(METRICS)) if "train_loss" in r][:epochs]
    seen: list[dict[str, Any]] = []

    def stop(rec: dict[str, Any]) -> bool:  # True ends the rerun once it has as many epochs as were compared
        seen.append(rec)
        return len(seen) >= min(epochs, len(logged))

    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")

    def rerun() -> bool:
        seen.clear()
        fit(ctx.config, _bundle(ctx), None, progress=False, on_epoch=stop)
        return len(seen) == len(logged) > 0 and all(a[k] == b[k] for a, b in zip(logged, seen) for k in keys)

    threads = torch.get_num_threads()
    same = rerun()
    ran = (read_json(ctx.path(TRAIN_SUMMARY)) if ctx.path(TRAIN_SUMMARY).is_file() else {}).get("threads") or threads
    if not same and ran != threads:  # trained on another thread count (a fit side by side: trainkit.workers)
        torch.set_num_threads(ran)
        try:
            same = rerun()
        finally:
            torch.set_num_threads(threads)
        threads = ran
    out = {
        "epochs": len(seen),
        "identical": bool(same),
        "threads": threads,
        "logged": [{k: r[k] for k in keys} for r in logged],
        "rerun": [{k: r[k] for k in keys} for r in seen],
    }
    write_json_atomic(ctx.path(REPRODUCE_JSON), out)
    return out


def decide(ctx: FinalizationContext, record: dict[str, Any]) -> dict[str, Any]:
    """deploy when production_ready passed and is signed; blocked otherwise (what is missing, how to
    finish): :func:`trainkit.decisions.after_finalization`."""
    from trainkit.decisions import after_finalization
    from trainkit.gates import gate_state
    from trainkit.run import way_out

    state = gate_state(record)
    missing = [
        f"{c['id']} ({c['status']}): {c['evidence']}"
        for c in record["checks"]
        if c["mandatory"] and c["status"] not in ("pass", "na", "waived", "warn")
    ]
    how = way_out(ctx.run_dir, 5, record["checks"], state == "blocked", q="`")
    option, nxt, reason = after_finalization(gate=state, missing=missing, how=how)
    return write_decision(
        ctx, option, nxt, reason, {"gate": state} if nxt == "deploy" else {"gate": state, "missing": missing}
    )


def gate(
    ctx: FinalizationContext,
    train: dict[str, Any],
    test: dict[str, Any],
    exp: dict[str, Any],
    repro: dict[str, Any],
    approvals: Any = None,
    waivers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """production_ready: 25 mandatory checks (24 automatic, the stakeholder's approval manual).
    Never signed automatically; a block is recorded and returned (the decision says what is missing)."""
    arts = [ctx.rel(n) for n in ARTIFACTS if ctx.path(n).is_file()]
    if (ctx.run_dir / TEST_ACCESS_LOG).is_file():  # a test read after sign-off invalidates the gate
        arts.append(TEST_ACCESS_LOG)
    return finish_gate(
        ctx,
        "production_ready",
        _results(ctx, train, test, exp, repro),
        arts,
        approvals,
        False,
        waivers,
        None,
        raise_on_block=False,
    )


assert PHASE == PHASES[-1]
