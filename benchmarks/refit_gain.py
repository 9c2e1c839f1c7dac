"""What Phase 5's train+val refit of a table gives, on the runs real_tables.py leaves.

On a table whose val split is not small, Phase 5 trains the final config on train with early
stopping on val (``05_finalization/selection/``), then trains the final model on train+val for
that run's epochs to its best, scaled by the rows (``trainkit.folds.TABLE_RULE``); the reference
models it is compared with train on train+val too. This scores both models on the run's test
rows: the early-stopped one (A, what Phase 5 deployed before the refit) and the refit (B, what it
deploys), without training anything: accuracy, or R² for a number (a change in points is 100 × the
change in either). It reads a copy of the test rows of finished runs only.

    python3 benchmarks/real_tables.py --keep DIR
    python3 benchmarks/refit_gain.py DIR [--only NAME ...]

Last line: ``refit on train+val: mean change X points on N tables; better on B, worse on W``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TRAINKIT_PROGRESS", "off")
ROOT = Path(__file__).resolve().parent.parent


def _score(cfg: Any, bundle: Any, ckpt: Path, x: Any, y: Any) -> float:
    """Accuracy, or a number's R² (the same on the standardized label as in its units)."""
    import torch

    from trainkit.phases.final_model import _load_model  # as Phase 5 loads its final model

    with torch.no_grad():
        out = _load_model(cfg.model, bundle, ckpt)(x)
    if bundle.regression:
        p, t = out.double().reshape(-1), y.double().reshape(-1)
        return float(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    return float((out.argmax(1) == y).float().mean())


def measure(run: Path) -> dict[str, Any] | None:
    """A and B of the run folder ``run`` (accuracy, or R²); None when Phase 5 made no table refit there."""
    from trainkit._io import read_json
    from trainkit.config import load_config
    from trainkit.data import Quarantine, load_data
    from trainkit.run import FINAL_CONFIG_YAML, TRAINING_CONFIG, Phase, RunFolder

    final = run / Phase.FINALIZATION.value
    refit = read_json(final / "refit.json") if (final / "refit.json").is_file() else {}
    sel = final / str(refit.get("selection", ""))
    if not refit.get("selection") or not (sel / "checkpoints" / "best.pt").is_file():
        return None
    cfg_a, cfg_b = load_config(sel / TRAINING_CONFIG), load_config(final / FINAL_CONFIG_YAML)
    # a finished run's test rows, read as Phase 5 read them (no log is written: no store log)
    bundle = load_data(cfg_b, RunFolder(run).data_store(), Quarantine(open=True, who=Phase.FINALIZATION.value))
    x, y = bundle.arrays("test", reason="refit_gain benchmark")
    acc_a = _score(cfg_a, bundle, sel / "checkpoints" / "best.pt", x, y)
    acc_b = _score(cfg_b, bundle, final / "checkpoints" / "best.pt", x, y)
    return {
        "table": run.name,
        "metric": "r2" if bundle.regression else "accuracy",
        "train": refit["rows"] - refit["val_rows"],
        "val": refit["val_rows"],
        "best_epoch": refit["best_epoch"] + 1,
        "refit_epochs": refit["epochs"],
        "A": acc_a,
        "B": acc_b,
        "change_points": round(100 * (acc_b - acc_a), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keep", help="the folder real_tables.py --keep wrote (its runs/ folder is read)")
    ap.add_argument("--only", nargs="*", help="table names to measure")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    runs = sorted(p for p in (Path(args.keep) / "runs").iterdir() if (p / "05_finalization").is_dir())
    runs = [p for p in runs if not args.only or p.name in args.only]
    if not runs:
        print(f"no finished runs under {Path(args.keep) / 'runs'}: run benchmarks/real_tables.py --keep DIR first")
        return 2
    rows = []
    head = ("table", "metric", "train", "val", "best", "refit", "A", "B", "change")
    print(f"{head[0]:16} " + " ".join(f"{h:>{w}}" for h, w in zip(head[1:], (8, 6, 5, 4, 5, 7, 7, 7))))
    for run in runs:
        r = measure(run)
        if r is None:
            print(f"{run.name:16} (no table refit in Phase 5: small data, or no time for it)")
            continue
        rows.append(r)
        print(
            f"{r['table']:16} {r['metric']:>8} {r['train']:6} {r['val']:5} {r['best_epoch']:4} {r['refit_epochs']:5} "
            f"{r['A']:7.4f} {r['B']:7.4f} {r['change_points']:+7.2f}",
            flush=True,
        )
    (Path(args.keep) / "refit_gain.json").write_text(json.dumps(rows, indent=1))
    mean = sum(r["change_points"] for r in rows) / len(rows) if rows else 0.0
    better, worse = sum(r["B"] > r["A"] for r in rows), sum(r["B"] < r["A"] for r in rows)
    n = len(rows)
    print(f"refit on train+val: mean change {mean:+.2f} points on {n} tables; better on {better}, worse on {worse}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
