"""Recovering a failed baseline (the seed's Workflow 4: diagnose → fix → restart), so that it
converges within the restarts.

- Candidate fixes are absolute, never a constant multiple of an absurd value: the detectors' fixes,
  the LR range test's suggestion, and the optimizer's standard starting point
  (:data:`STANDARD_LR`: Adam/AdamW 1e-3, SGD 0.05 with momentum 0.9).
- A move of a kind that already failed in an earlier round is never reapplied, nor an LR within
  a factor of 2 of one a failed attempt trained at.
- Each candidate is tried before a restart is spent on it: a short trial fit
  (:func:`trial_fit`, a few hundred steps, from a fresh initialization) must show learning by
  the same rule as the baseline (:func:`trainkit.decisions.learned`). The first candidate that
  learns is the fix; when none does, the round says so and no restart is spent on a guess.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trainkit.config import TrainkitConfig, with_overrides
from trainkit.diagnostics.findings import STANDARD_LR, patch_already_in
from trainkit.losses import loss_of
from trainkit.metrics import chance_score, prior_loss

__all__ = [
    "STANDARD_LR",
    "standard_start",
    "candidate_fixes",
    "trial_fit",
    "choose_fix",
    "failed_history",
    "TRIAL_MAX_STEPS",
    "TRIAL_MIN_STEPS",
]

TRIAL_MAX_STEPS = 300
TRIAL_MIN_STEPS = 100
MAX_TRIALS = 4


def standard_start(cfg: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's standard starting point as a patch."""
    o = cfg["optimizer"]
    patch: dict[str, Any] = {"optimizer.lr": STANDARD_LR[o["name"]]}
    if o["name"] == "sgd" and float(o.get("momentum", 0.0)) < 0.5:
        patch["optimizer.momentum"] = 0.9
    return patch


def _near(a: float, b: float, factor: float = 2.0) -> bool:
    return a > 0 and b > 0 and max(a, b) / min(a, b) < factor


def failed_history(run_dir: Path) -> dict[str, Any]:
    """What failed before in this run: the LRs of the failed Phase 2 attempts and the kinds of fix
    (recommendation ids) the earlier failed-mode rounds applied before the baseline failed again."""
    from trainkit.config import load_config
    from trainkit.run import RunFolder, TRAINING_CONFIG, Phase

    rf = RunFolder(run_dir)
    lrs, kinds = [], []
    for n in rf.attempts(Phase.BASELINE):
        d = rf.phase_dir(Phase.BASELINE, n)
        dec = rf.decision(d)
        if dec and dec.get("option") == "C" and (d / TRAINING_CONFIG).is_file():
            lrs.append(float(load_config(d / TRAINING_CONFIG).optimizer.lr))
    for n in rf.attempts(Phase.DIAGNOSTICS):
        d = rf.phase_dir(Phase.DIAGNOSTICS, n)
        dec = rf.decision(d)
        if dec and dec.get("option") == "C" and dec.get("next") == Phase.BASELINE.value:
            kinds += list((dec.get("evidence") or {}).get("fix_ids") or [])
    return {"failed_lrs": lrs, "failed_kinds": kinds}


def candidate_fixes(plan: dict[str, Any], ev: dict[str, Any], history: dict[str, Any]) -> list[dict[str, Any]]:
    """Fixes to try, strongest first: the detectors' fixes, then absolute LRs (the finder's
    suggestion, the standard starting point), then the diagnosis' selected moves one at a time.
    Generic LR multiples are never candidates; neither is a fix of a kind that already failed, a
    patch that changes nothing, nor an LR near one a failed attempt used."""
    cfg = ev["config"]
    nonfinite = ev.get("status") == "nonfinite" or ev.get("nonfinite") is not None
    clip = {"training.grad_clip": 1.0} if nonfinite and not cfg["training"].get("grad_clip") else {}
    sug = (ev["probes"].get("lr_range") or {}).get("suggested_lr")
    rows: list[dict[str, Any]] = [r for r in plan.get("fixes", []) if r.get("patch")]
    if sug:
        rows.append(
            {
                "id": "lr_finder",
                "title": f"LR → {sug:.3g} (LR range test)",
                "patch": {"optimizer.lr": float(f"{sug:.3g}"), **clip},
                "rationale": "the range test found the LR where this model's loss falls fastest",
                "kind": "fix",
            }
        )
    std = standard_start(cfg)
    name = cfg["optimizer"]["name"]
    rows.append(
        {
            "id": "lr_standard",
            "title": f"LR → {std['optimizer.lr']:g} ({name}'s standard starting point)",
            "patch": {**std, **clip},
            "kind": "fix",
            "rationale": "when the finder cannot tell, the optimizer's usual starting LR is the safe choice",
        }
    )
    if name == "sgd":
        rows.append(
            {
                "id": "adam_standard",
                "title": "Adam at LR 1e-3 (the standard adaptive optimizer)",
                "patch": {"optimizer.name": "adam", "optimizer.lr": 1e-3, **clip},
                "kind": "fix",
                "rationale": "Adam's per-parameter step sizes forgive a badly scaled problem",
            }
        )
    rows += [
        r
        for r in plan.get("selected", [])
        if r.get("patch") and r.get("source") != "generic" and "optimizer.lr" not in r["patch"]
    ]
    failed_kinds, failed_lrs = set(history.get("failed_kinds") or []), history.get("failed_lrs") or []
    out, seen = [], []
    for r in rows:
        p = r["patch"]
        lr = p.get("optimizer.lr")
        if r["id"] in failed_kinds or patch_already_in(cfg, p) or p in seen:
            continue
        if lr is not None and p.get("optimizer.name", name) == name and any(_near(float(lr), f) for f in failed_lrs):
            continue
        seen.append(p)
        out.append(r)
    return out


REGRESSION_TRIAL_NOISE = 0.02  # a regression's trial learned when its val r2 is above 2 × this


def trial_fit(
    cfg: TrainkitConfig,
    bundle: Any,
    steps: int,
    chance: float,
    deadline: float | None = None,
    prior: float | None = None,
) -> dict[str, Any]:
    """Train ``steps`` optimizer steps from a fresh initialization with the config's optimizer,
    clipping and model; judge learning as the baseline is judged: the loss on a fixed sample of
    train rows (eval mode) after the trial against the same at init, the val accuracy against
    ``chance`` and the val loss against the class prior's (``prior``)."""
    from trainkit.decisions import learning_verdict
    from trainkit.devices import resolve_device
    from trainkit.diagnostics._fits import _model, _train_steps, sample

    device = resolve_device(cfg.training.device)
    model = _model(cfg, bundle, device)
    xv, yv = sample(bundle, "val", 2048, device=device)
    xt, yt = sample(bundle, "train", 2048, device=device)  # the loss is compared on the same rows, in eval mode
    with torch.no_grad():
        init = float(loss_of(model.eval()(xt), yt))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    # epochs are not the bound: ``steps`` is (an epoch has at least one step unless train is empty)
    _train_steps(
        model,
        cfg,
        bundle,
        steps,
        cfg.training.seed + 11,
        device,
        max_steps=steps,
        deadline=deadline,
        clip=cfg.training.grad_clip,
        losses=losses,
    )
    out: dict[str, Any] = {
        "steps": len(losses),
        "init_loss": round(init, 5),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not losses or not all(math.isfinite(v) for v in losses):
        return {**out, "learned": False, "why": f"non-finite loss at step {len(losses)}"}
    model.eval()
    with torch.no_grad():
        end = float(loss_of(model(xt), yt))
        logits = model(xv).float()
        val_loss = float(loss_of(logits, yv))
    if not math.isfinite(end):
        return {**out, "learned": False, "why": "non-finite loss on the train rows after the trial"}
    if bundle.regression:  # r2 on the standardized label (scale-free) against 0, the train mean's
        val = 1.0 - val_loss / max(float(yv.var()), 1e-12)
        state, why = learning_verdict(
            init, [{"train_loss": end, "val_score": val, "val_loss": val_loss}], 0.0, "r2", noise=REGRESSION_TRIAL_NOISE
        )
    else:
        val = float((logits.argmax(1) == yv).float().mean())
        state, why = learning_verdict(
            init, [{"train_loss": end, "val_accuracy": val, "val_loss": val_loss}], chance, prior=prior
        )
    return {
        **out,
        "final_train_loss": round(end, 5),
        "val_accuracy": round(val, 4),
        "val_loss": round(val_loss, 5),
        "learned": state == "learned",
        "state": state,
        "why": why,
    }


def choose_fix(
    cfg: TrainkitConfig,
    bundle: Any,
    plan: dict[str, Any],
    ev: dict[str, Any],
    history: dict[str, Any],
    clock: Any = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Try the candidate fixes in order with a short trial fit each; the first that learns is the
    fix. Returns ``{"chosen": rec or None, "trials": [...], "steps": n, "skipped": [...]}``."""
    cands = candidate_fixes(plan, ev, history)
    hist = [h for h in ev.get("history") or [] if h.get("epoch_time_s")]
    spe = max(1, -(-len(bundle.splits["train"]) // cfg.data.batch_size))
    total = spe * cfg.training.epochs
    steps = int(min(TRIAL_MAX_STEPS, max(TRIAL_MIN_STEPS, total // 8)))
    step_s = (sum(h["epoch_time_s"] for h in hist) / len(hist) / spe) if hist else 0.0
    counts = bundle.info["class_counts"]["val"]
    chance = chance_score("accuracy", counts)  # the trial is judged on accuracy, like the baseline's first rule
    prior = None if bundle.regression else prior_loss(bundle.info["class_counts"]["train"], counts)
    trials, chosen, skipped = [], None, []
    for rec in cands[:MAX_TRIALS]:
        if clock is not None and not clock.allows(steps * step_s * 1.5 + 1.0, f"trial fit of fix {rec['id']}"):
            skipped.append(rec["id"])
            continue
        try:
            trial_cfg = with_overrides(cfg, rec["patch"])
        except Exception as exc:  # a patch the config refuses is not a fix
            trials.append({"id": rec["id"], "patch": rec["patch"], "learned": False, "why": f"invalid patch: {exc}"})
            continue
        try:
            r = trial_fit(
                trial_cfg, bundle, steps, chance, deadline=clock.deadline if clock is not None else None, prior=prior
            )
        except Exception as exc:  # a fix that breaks training is not a fix: the next one is tried
            r = {"learned": False, "why": f"{type(exc).__name__}: {str(exc)[:200]}", "steps": 0}
        trials.append({"id": rec["id"], "title": rec.get("title"), "patch": rec["patch"], **r})
        echo(
            f"  trial fit {rec['id']} ({', '.join(f'{k}={v}' for k, v in rec['patch'].items())}): "
            f"{'learns' if r['learned'] else 'does not learn'} ({r['why']})"
        )
        if r["learned"]:
            chosen = rec
            break
    if chosen is None:  # none clearly learned: the first that learned the class prior is the safe standard choice
        soft = next((t for t in trials if t.get("state") == "inconclusive"), None)
        if soft is not None:
            chosen = next(c for c in cands if c["id"] == soft["id"])
            soft["chosen_as"] = (
                "inconclusive: no candidate clearly learned in the trial; this one learned the class prior"
            )
    return {
        "chosen": chosen,
        "trials": trials,
        "steps": steps,
        "skipped": skipped,
        "candidates": [c["id"] for c in cands],
        "history": history,
    }
