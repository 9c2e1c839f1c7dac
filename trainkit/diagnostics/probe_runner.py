"""Running Phase 3's probes inside the time budget: the cheap ones always, the costly ones (seeds,
labels, references, the LR range) when their estimated cost fits; an in-memory view of the data
when it fits the memory limit; the diagnosed model loaded from its checkpoint."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from trainkit.config import TrainkitConfig
from trainkit.diagnostics.findings import best_score
from trainkit.run import BEST_PT, COMPARISON, RUN_JSON


def _timed(name: str, fn: Callable[[], dict[str, Any]], echo: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a probe that cannot run is evidence too (a broken model breaks them all)
        out = {"error": f"{type(exc).__name__}: {str(exc)[:400]}", "traceback": traceback.format_exc()[-1500:]}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    echo(f"  probe {name}: {out['seconds']:.2f}s" + (f" — {out['error']}" if "error" in out else ""))
    return out


def run_probes(
    cfg: TrainkitConfig,
    bundle: Any,
    ev: dict[str, Any],
    label_issues: bool = True,
    echo: Callable[[str], None] = print,
    clock: Any = None,
    label_result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every probe, each timed and isolated; results keyed by probe name. Fills in the evidence
    fields that need the data (class count, input shape, val size, loss at init when missing).

    The cheap, decisive probes (:data:`CHEAP_PROBES`: loss at init, zeroed inputs, the LR range
    test, overfitting one batch; the data checks) run at any budget: each is bounded in steps. With
    ``clock`` (the phase's trainkit.budget.PhaseClock) any other probe starts only when its estimated
    time (from the baseline's epoch time) fits before the phase's deadline; a cut probe reads
    ``{"error": "skipped: ...", "skipped": True}`` (inconclusive, like a probe that could not run),
    and its fits stop at the deadline. The label probe reads a subsample sized to about half a
    baseline's compute (at least ``LABEL_PROBE_MIN_ROWS`` rows); ``label_result``, an earlier round's
    label probe that still holds (:func:`trainkit.phases.diagnostics.earlier_label_probe`), stands in for it."""
    from trainkit.diagnostics import probes as P

    fill_probe_evidence(ev, bundle, {})
    out: dict[str, Any] = {}
    full = bundle
    if bundle._x is None:  # streamed data: read a bounded sample of train and val once, probe in memory
        bundle = _in_memory_view(bundle)
        out["sample"] = dict(bundle.sampled, memory_limit_bytes=PROBE_MEMORY_BYTES)
    whole = getattr(bundle, "sampled", None) is None or (
        bundle.sampled["train"] == bundle.sampled["of_train"] and bundle.sampled["val"] == bundle.sampled["of_val"]
    )
    cost = _ProbeCost(cfg, bundle, ev)
    deadline = clock.deadline if clock is not None else None

    def gated(name: str, est: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in CHEAP_PROBES:  # cheap and decisive: run at any budget (bounded in steps, not by the clock)
            return _timed(name, fn, echo)
        if clock is not None and not clock.allows(est, f"probe {name}"):
            echo(f"  probe {name}: skipped (time budget)")
            return {"error": f"skipped: needs ~{est:.1f} s, the phase's time share is used up", "skipped": True}
        res = _timed(name, fn, echo)
        if clock is not None and res.get("skipped"):  # the probe itself found that nothing fits: recorded as a cut
            clock.cut(f"probe {name}", res["error"])
        return res

    out["init_loss"] = gated("init_loss", cost.steps(2), lambda: P.init_loss_probe(cfg, bundle))
    fill_probe_evidence(ev, bundle, out)
    out["lr_range"] = gated("lr_range", cost.steps(100), lambda: P.lr_range_test(cfg, bundle))
    # two epochs, but each of its two fits at most a 20th of a baseline (and 500 steps; at least 60)
    cheap_steps = min(2 * cost.steps_per_epoch, max(60, min(500, cost.steps_per_epoch * cfg.training.epochs // 20)))
    out["input_independent"] = gated(
        "input_independent",
        cost.steps(2 * cheap_steps),
        lambda: P.input_independent_probe(cfg, bundle, max_steps=cheap_steps),
    )
    out["overfit_batch"] = gated("overfit_batch", cost.steps(100), lambda: P.overfit_batch_probe(cfg, bundle))
    out["seed_variance"] = _seed_probe(cfg, bundle if whole else full, ev, cost, clock, gated, deadline)
    out["throughput"] = gated("throughput", cost.steps(40), lambda: P.throughput_probe(cfg, bundle))
    trained = _trained_model(cfg, bundle, ev)
    out["dead_units"] = _timed("dead_units", lambda: P.dead_units_probe(cfg, bundle, trained), echo)
    out["per_class"] = _timed("per_class", lambda: P.per_class_probe(cfg, bundle, trained), echo)
    out["grad_norms"] = P.grad_norm_stats(ev.get("history") or [])
    out["resource"] = P.resource_profile(ev.get("history") or [], ev.get("device", "cpu"))
    out["data"] = _timed("data", lambda: P.data_probe(full), echo)
    out["reference"] = gated(
        "reference",
        cost.steps(50),
        lambda: P.reference_probe(bundle, best_score(ev) if ev.get("best") else None, cfg.target.metric),
    )
    if label_issues and label_result is not None:
        echo(f"  probe label_issues: read back from {label_result['reused_from']}")
        out["label_issues"] = label_result
    elif label_issues:
        out["label_issues"] = _label_probe(cfg, bundle, ev, cost, clock, gated, deadline)
    return out


def fill_probe_evidence(ev: dict[str, Any], bundle: Any, probes: dict[str, Any]) -> None:
    """The evidence fields the probes' data gives: class count, input shape, val size, and the
    loss at init when the history has none (from the ``init_loss`` probe, when it ran)."""
    ev.update(num_classes=bundle.num_classes, input_shape=list(bundle.input_shape), val_size=len(bundle.splits["val"]))
    if ev.get("init_loss") is None and "init_loss" in (probes.get("init_loss") or {}):
        ev["init_loss"] = probes["init_loss"]["init_loss"]


def _seed_probe(
    cfg: TrainkitConfig, bundle: Any, ev: dict[str, Any], cost: Any, clock: Any, gated: Any, deadline: float | None
) -> dict[str, Any]:
    """The seed-variance probe: whole runs beside the baseline (as long as it ran when the budget
    cut it), each asked of the clock."""
    from trainkit.diagnostics import probes as P

    cut = ev.get("status") == "time_budget"  # the budget cut the baseline: seed runs mirror its length
    run_s = cost.epoch_s * (len(ev.get("history") or []) if cut else cfg.training.epochs)
    return gated(
        "seed_variance",
        cost.epochs(2) if ev.get("best") else cost.baseline_s * 0.5,
        lambda: P.seed_variance_probe(
            cfg,
            bundle,
            epochs=min(cfg.training.epochs, 10),
            deadline=deadline,
            baseline=dict(ev["best"], cut_at_epochs=len(ev.get("history") or []) if cut else None)
            if ev.get("best")
            else None,
            allows=(lambda s, what: clock.allows(s, what)) if clock is not None else None,
            cost_s=run_s,
            history=ev.get("history"),
            time_left=clock.left if clock is not None else None,
            trained=_sibling_seeds(cfg, ev.get("source_dir")),
        ),
    )


WHOLE_RUN = ("completed", "early_stopped")  # a fit's statuses that ran it to its own end


def _sibling_seeds(cfg: TrainkitConfig, source_dir: Any) -> dict[int, dict[str, Any]]:
    """Seed → the whole run of this config on that seed that Phase 4 trained beside the diagnosed
    one (the ``seed-N`` folders next to it: the seeds of the config an iteration adopted), when its
    ``training_config.yaml`` is this config on that seed and it ran to its end."""
    from trainkit._io import read_json
    from trainkit.config import config_hash, with_overrides
    from trainkit.run import read_fit

    out: dict[int, dict[str, Any]] = {}
    src = Path(source_dir) if source_dir else None
    if src is None or not src.name.startswith("seed-"):
        return out
    iteration = next((p for p in src.parents if (p / COMPARISON).is_file()), None)
    if iteration is None or read_json(iteration / COMPARISON).get("folds"):  # folds: each seed trained on other rows
        return out
    root = next((p for p in iteration.parents if (p / RUN_JSON).is_file()), iteration.parent)
    for d in sorted(src.parent.glob("seed-*")):
        fit_dir = read_fit(d)
        if fit_dir is None:  # a folder half written or not a run: trained again, as without it
            continue
        theirs, summary = fit_dir
        s = theirs.training.seed
        if d == src or summary.get("status") not in WHOLE_RUN or not summary.get("best"):  # not cut or pruned
            continue
        if config_hash(theirs) == config_hash(with_overrides(cfg, {"training.seed": s})):
            out[s] = dict(summary, dir=str(d.relative_to(root)))
    return out


def _label_probe(
    cfg: TrainkitConfig, bundle: Any, ev: dict[str, Any], cost: Any, clock: Any, gated: Any, deadline: float | None
) -> dict[str, Any]:
    """The label-issue probe on as many train rows as fit (at least ``LABEL_PROBE_FLOOR_ROWS``);
    its flagged rows as the data's own indices. A regression has no classes to mislabel."""
    from trainkit.diagnostics import probes as P

    if bundle.regression:  # confident learning reads class probabilities
        return {"error": "not run: a regression has no classes to mislabel", "skipped": True, "na": True}
    base_val = (ev.get("best") or {}).get("val_accuracy")
    rows, folds, epochs = cost.label_rows(), 3, 15
    per_row = cost.epochs(folds * epochs * 2 / 3, 1 / max(1, len(bundle.splits["train"])))
    if clock is not None and per_row > 0 and rows * per_row > 0.9 * clock.left():  # a smaller sample that fits
        fit = int(0.9 * clock.left() / per_row)
        if fit >= LABEL_PROBE_FLOOR_ROWS:
            clock.cut(f"label probe rows {fit + 1}-{rows}", f"{fit} rows fit in the time left")
            rows = fit
    est = rows * per_row
    res = gated(
        "label_issues",
        est,
        lambda: P.label_issue_probe(
            cfg, bundle, folds=folds, epochs=epochs, max_rows=rows, baseline_val=base_val, deadline=deadline
        ),
    )
    gi = getattr(bundle, "global_index", None)
    if gi is not None and res.get("flagged"):  # the sample's row numbers → the data's indices
        res["flagged"] = sorted(int(gi[i]) for i in res["flagged"])
    return res


CHEAP_PROBES = ("init_loss", "lr_range", "input_independent", "overfit_batch")  # each well under a tenth of a baseline


LABEL_PROBE_MIN_ROWS = 4000  # the label probe's sample when the time allows (or all rows, when fewer)


LABEL_PROBE_FLOOR_ROWS = 1000  # fewer rows than this and the probe is cut instead (its models would be too weak)


class _ProbeCost:
    """Time estimates for the probes from the diagnosed run's own epoch time."""

    def __init__(self, cfg: TrainkitConfig, bundle: Any, ev: dict[str, Any]) -> None:
        hist = [h for h in ev.get("history") or [] if h.get("epoch_time_s")]
        self.epoch_s = sum(h["epoch_time_s"] for h in hist) / len(hist) if hist else 0.0
        self.baseline_s = self.epoch_s * cfg.training.epochs if hist else 0.0
        n = max(1, len(bundle.splits["train"]))
        self.steps_per_epoch = max(1, -(-n // cfg.data.batch_size))
        self.n, self.base_epochs = n, cfg.training.epochs

    def steps(self, k: int) -> float:
        return self.epoch_s * k / self.steps_per_epoch

    def epochs(self, k: float, fraction: float = 1.0) -> float:
        return self.epoch_s * k * fraction

    def label_rows(self) -> int:
        """Rows for the label probe: about half a baseline's sample-passes (3 folds × 15 epochs on
        2/3 of the rows = 30 passes per row), at least LABEL_PROBE_MIN_ROWS, at most 20,000."""
        fit = int(0.5 * self.n * self.base_epochs / 30)
        return int(min(20000, self.n, max(LABEL_PROBE_MIN_ROWS, fit)))


PROBE_MEMORY_BYTES = 1 << 30  # the in-memory sample of streamed data holds at most 1 GiB of float32 samples


PROBE_MAX_ROWS = 50000


def _in_memory_view(bundle: Any, max_bytes: int = PROBE_MEMORY_BYTES, max_rows: int = PROBE_MAX_ROWS) -> Any:
    """A compact copy of a streamed bundle: a seeded random sample of its train and val rows (in
    their proportions; at most ``max_rows`` and ``max_bytes`` of float32 samples, so a folder of a
    million photos is never read whole) in one tensor. Its rows are numbered 0..n-1;
    ``view.global_index`` maps them back to the data's own indices. Test rows are not read."""
    import copy

    import numpy as np
    import torch

    from trainkit.data import normalize

    ds = bundle.source.dataset
    tr, va = np.asarray(bundle.splits["train"]), np.asarray(bundle.splits["val"])
    first = torch.as_tensor(ds[int(tr[0])][0]).float()
    cap = int(max(2, min(max_rows, max_bytes // max(1, first.numel() * 4))))
    rng = np.random.default_rng(int(bundle.info.get("seed", 0)) + 11)
    if len(tr) + len(va) > cap:
        n_tr = max(1, cap * len(tr) // (len(tr) + len(va)))
        tr, va = (
            np.sort(rng.choice(a, size=min(len(a), n), replace=False))
            for a, n in ((tr, n_tr), (va, max(1, cap - n_tr)))
        )
    idx = np.concatenate([tr, va])
    x = torch.empty((len(idx), *first.shape))
    for j, i in enumerate(idx):
        x[j] = torch.as_tensor(ds[int(i)][0]).float()
    labels = bundle.labels if bundle.labels is not None else bundle.source.y
    src = copy.copy(bundle.source)
    src.y = labels[torch.as_tensor(idx)].clone()
    src.sample_keys = [bundle.source.sample_keys[int(i)] for i in idx] if bundle.source.sample_keys else []
    src.dataset = None
    view = copy.copy(bundle)
    view.source, view.labels = src, None
    view.splits = {"train": np.arange(len(tr)), "val": np.arange(len(tr), len(idx))}
    view._x = x if getattr(ds, "own_normalization", False) else normalize(x, bundle.mean, bundle.std)
    view.global_index = idx
    view.sampled = {
        "train": int(len(tr)),
        "val": int(len(va)),
        "of_train": int(len(bundle.splits["train"])),
        "of_val": int(len(bundle.splits["val"])),
        "bytes": int(x.numel() * 4),
    }
    return view


def _trained_model(cfg: TrainkitConfig, bundle: Any, ev: dict[str, Any]) -> Any:
    """The baseline's best model when its checkpoint exists (dead units are a property of training)."""
    p = Path(ev["source_dir"]) / "checkpoints" / BEST_PT
    if not p.is_file():
        return None
    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model

    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(load_checkpoint(p)["model"])
    return model
