"""What MLflow tracking costs the demo: ``trainkit run`` with tracking off against tracking on.

Runs the demo (digits, 1 → 2 → 3 → 4 → 5, stops at the production gate) alternately without and
with ``--set tracking.mlflow=true`` (the local store ``mlflow.db`` in the runs folder; or
``--uri URI`` for a server), ``--pairs`` times, in the same session so that the machine's noise
hits both sides. Tracking runs on a background thread of the pipeline process; what is left on
the critical path is the push after the last phase (Phase 5's reports and its model). The first
tracked run also creates the store (MLflow's schema migrations), as a user's first run does.
Last line: ``tracking overhead on the demo: X.XX× tracking off`` (goal ≤ 1.05×; the median of
the tracked runs over the median of the untracked ones).

Run: ``python benchmarks/tracking_overhead.py [--pairs 3] [--uri http://127.0.0.1:5000]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def _demo(runs: Path, name: str, tracking: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        ["trainkit", "run", "--name", name, "--runs-dir", str(runs), *tracking], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 3) or "warning" in r.stderr.lower():
        raise SystemExit(f"{name}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--uri", default=None, help="a tracking server to push to (default: the local store)")
    args = ap.parse_args()
    on = ["--set", f"tracking.uri={args.uri}"] if args.uri else ["--set", "tracking.mlflow=true"]
    off_s, on_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for i in range(args.pairs):
            off_s.append(_demo(runs, f"off-{i}", []))
            on_s.append(_demo(runs, f"on-{i}", on))
            print(f"pair {i + 1}: tracking off {off_s[-1]:.1f} s, on {on_s[-1]:.1f} s", flush=True)
    off, tracked = statistics.median(off_s), statistics.median(on_s)
    print(f"median: off {off:.1f} s, on {tracked:.1f} s ({tracked - off:+.1f} s)")
    print(f"tracking overhead on the demo: {tracked / off:.2f}× tracking off")


if __name__ == "__main__":
    main()
