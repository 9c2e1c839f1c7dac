"""What the workflow costs on a workload where training dominates, in baseline units.

A generated folder of 20,000 grey PNGs at 32 × 32 (``trainkit.testing.shapes``: four shapes in
noise; nothing is downloaded) and a CNN whose baseline trains for a minute or more on 2 cores.
The target is out of reach of the baseline, so the run takes the single-optimization path
1 → 2 → 3 → 4 (one iteration) → 5. ``budget.total_hours`` is set the way the seed sizes it: a
2–3 h baseline inside 12 h, i.e. ``--budget-units`` (default 4.8) times the baseline that Phase 1
estimates (a Phase-1-only run first measures that estimate); ``--budget-units 0`` leaves the
default 12 h (nothing is cut on this workload).

Printed: each phase's compute (wall seconds and baseline units), the peak RSS of each phase's
kernel, each phase's ``load_data`` time against Phase 1's scan of the folder, what the budget cut,
and the last line ``single-optimization path: X.X× baseline compute`` (goals: ≤ 5×; later loads
≤ 10% of the scan; the Phase 3 kernel under 2 GB).

    python3 benchmarks/phase_cost.py [--images 20000] [--epochs 12] [--budget-units 4.8]
        [--slow-baseline X] [--keep DIR]

``--slow-baseline X`` (X > 1): from Phase 2 on, training really takes X times what Phase 1
estimated (trainkit.testing.sleepy_cnn sleeps per training batch once the run is past Phase 1, as on
a machine that got busy); the run then prints whether Phase 3 still ran its cheap probes and
Phase 4 at least one single move.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PATH = ["01_planning", "02_baseline", "03_diagnostics", "04_optimization", "05_finalization"]


def make_folder(root: Path, n: int, size: int = 32) -> float:
    """``n`` PNGs in four class folders (reused when already there); seconds spent writing."""
    import numpy as np
    from PIL import Image

    from trainkit.testing import shapes

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return 0.0
    t0 = time.perf_counter()
    x, y = shapes(n, classes=4, size=size, seed=0)
    x = np.clip((x[:, 0] + 0.7) / 2.4 * 255, 0, 255).astype(np.uint8)
    for c in range(4):
        (root / f"shape_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i], mode="L").save(root / f"shape_{y[i]}" / f"{i:06d}.png")
    return time.perf_counter() - t0


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run(["trainkit", "run", *args], capture_output=True, text=True, env=env)
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--budget-units", type=float, default=4.8)
    ap.add_argument("--keep", default=None, help="folder for the images and runs (kept; the images are reused)")
    ap.add_argument(
        "--slow-baseline",
        type=float,
        default=0.0,
        help="X > 1: training after Phase 1 really takes X times Phase 1's estimate (a sleep per training batch)",
    )
    a = ap.parse_args()
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="tk-phase-cost-"))
    env = dict(os.environ, TRAINKIT_PROGRESS="off")
    made = make_folder(base / "images", a.images)
    print(
        f"data: {a.images} PNGs at 32x32 in {base / 'images'}"
        + (f" (written in {made:.1f} s)" if made else " (reused)")
    )
    cfg = {
        "data": {"source": "image_folder", "root": str(base / "images"), "batch_size": 128, "workers": 1},
        "model": {
            "name": "trainkit.testing:sleepy_cnn" if a.slow_baseline > 1 else "cnn",
            "kwargs": {"channels": [32, 64]},
        },
        "optimizer": {"name": "sgd", "lr": 0.003, "momentum": 0.0},
        "training": {"epochs": a.epochs, "patience": None, "seed": 0},
        "final": {"epochs": a.epochs, "patience": 3},
        "target": {"value": 0.995},
        "budget": {"max_optimization_iterations": 1},
    }
    cfg_path = base / "phase_cost.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    runs = base / "runs"
    stamp = time.strftime("%H%M%S")
    if a.budget_units > 0:  # the seed's sizing: the baseline Phase 1 estimates, times the budget units
        code, out, _ = run(
            [str(cfg_path), "--name", f"plan-{stamp}", "--runs-dir", str(runs), "--stop-after", "1"], env
        )
        plan = json.loads((runs / f"plan-{stamp}" / "01_planning" / "budget_plan.json").read_text())
        hours = a.budget_units * plan["baseline_estimate_s"] / 3600
        print(
            f"Phase 1 estimates the baseline at {plan['baseline_estimate_s']:.1f} s: budget.total_hours = "
            f"{a.budget_units:g} × that = {hours * 3600:.0f} s"
        )
        extra = ["--set", f"budget.total_hours={hours:.6f}"]
    else:
        extra = []
    name = f"cost-{stamp}"
    rd = runs / name
    if a.slow_baseline > 1:  # Phase 1 at full speed; then every training batch sleeps (X − 1) × its estimated share
        env["TRAINKIT_SLOW_FILE"] = str(base / f"slow-{stamp}.txt")
        code, out, wall1 = run(
            [str(cfg_path), "--name", name, "--runs-dir", str(runs), *extra, "--stop-after", "1"], env
        )
        plan = json.loads((rd / "01_planning" / "budget_plan.json").read_text())
        sizes = json.loads((rd / "01_planning" / "splits.json").read_text())["sizes"]
        batches = a.epochs * -(-sizes["train"] // cfg["data"]["batch_size"])
        delay = (a.slow_baseline - 1) * plan["baseline_estimate_s"] / batches
        Path(env["TRAINKIT_SLOW_FILE"]).write_text(f"{delay:.6f}")
        print(
            f"slow baseline: {a.slow_baseline:g}× Phase 1's estimate of {plan['baseline_estimate_s']:.1f} s "
            f"({delay * 1000:.1f} ms more per training batch from Phase 2 on)"
        )
        code, out, wall = run(
            ["--resume", "--name", name, "--runs-dir", str(runs), "--approve", "stakeholder_approval=benchmark"], env
        )
        wall += wall1
    else:
        code, out, wall = run(
            [
                str(cfg_path),
                "--name",
                name,
                "--runs-dir",
                str(runs),
                *extra,
                "--approve",
                "stakeholder_approval=benchmark",
            ],
            env,
        )
    manifest = json.loads((rd / "run.json").read_text())
    print(f"trainkit run exit {code} in {wall:.1f} s; path: {' → '.join(e['phase'] for e in manifest['phases'])}")
    loads = [json.loads(line) for line in (rd / "data_loads.jsonl").read_text().splitlines()]
    scan = next((r["seconds"] for r in loads if r["scan"]), None)
    summary = json.loads((rd / "02_baseline" / "attempt-1" / "train_summary.json").read_text())
    unit = summary["wall_time_s"]
    print(
        f"baseline: {len(summary['history'])} epochs, {unit:.1f} s training ({summary['status']}), "
        f"best val {summary['best']['val_accuracy']:.4f}"
    )
    print(f"{'phase':<26}{'wall s':>9}{'× baseline':>12}{'peak RSS MiB':>14}{'load_data s':>13}{'/ scan':>9}")
    total = 0.0
    for e in manifest["phases"]:
        c = e.get("cost") or {}
        total += c.get("wall_s", 0.0)
        mine = [r["seconds"] for r in loads if r["phase"] == e["phase"] and not r["scan"]]
        if e["phase"] == "01_planning":
            mine = [r["seconds"] for r in loads if r["scan"]]
        ld = max(mine) if mine else float("nan")
        ratio = "scan" if e["phase"] == "01_planning" else (f"{ld / scan:.1%}" if mine and scan else "-")
        print(
            f"{e['phase'] + '/' + str(e['attempt']):<26}{c.get('wall_s', float('nan')):>9.1f}"
            f"{c.get('wall_s', 0.0) / unit:>12.2f}{c.get('peak_rss_mib', float('nan')):>14.0f}{ld:>13.3f}{ratio:>9}"
        )
    for n in manifest.get("notes", []):
        print(f"note: {n}")
    single = [e["phase"] for e in manifest["phases"]] == PATH
    if not single:
        print("note: this run did not take exactly the single-optimization path; the figure below is its whole path")
    if a.slow_baseline > 1:
        _information_first(rd)
    print(f"single-optimization path: {total / unit:.1f}× baseline compute")
    if code not in (0,):
        print(out[-3000:], file=sys.stderr)


def _information_first(rd: Path) -> None:
    """Under a slow baseline: did Phase 3 run its cheap probes, and Phase 4 at least one single move?"""
    cheap = ("init_loss", "lr_range", "input_independent", "overfit_batch", "data")
    for d in sorted((rd / "03_diagnostics").glob("round-*")):
        probes = json.loads((d / "findings.json").read_text())["evidence"]["probes"]
        ran = [p for p in cheap if p in probes and not probes[p].get("skipped")]
        print(
            f"{d.relative_to(rd)}: cheap probes run {len(ran)}/{len(cheap)}; cut: "
            f"{[p for p, v in probes.items() if isinstance(v, dict) and v.get('skipped')] or 'none'}"
        )
    for d in sorted((rd / "04_optimization").glob("iter-*")):
        cmp = json.loads((d / "comparison.json").read_text()) if (d / "comparison.json").is_file() else {}
        singles = [c["id"] for c in cmp.get("candidates", []) if len(c["recommendations"]) == 1]
        print(
            f"{d.relative_to(rd)}: single moves measured: {singles or 'none'}; combination measured: "
            f"{any(c['id'] == 'all' for c in cmp.get('candidates', []))}"
        )
    if not (rd / "03_diagnostics").is_dir():
        print("03_diagnostics: skipped")


if __name__ == "__main__":
    main()
