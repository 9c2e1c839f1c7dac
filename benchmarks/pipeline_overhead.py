"""The demo pipeline's wall time against the time it spends training.

Runs ``trainkit run`` (the demo: digits, conservative baseline, 1 → 2 → 3 → 4 → 5) into a
temporary folder, then reads the run folder: per-phase wall times from ``run.json``, the training
time of every saved fit (``train_summary.json``: Phase 2, Phase 4 per-seed candidates, Phase 5),
the test accuracy and the latency table. Last line: ``pipeline wall / training time: X.XX``
(goal ≤ 1.3). Phase 4's baseline seeds and ablation fits and Phase 3's probes train too but keep
no summary; they count as overhead here, which makes the ratio conservative.

Run: ``python benchmarks/pipeline_overhead.py``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run(["trainkit", "run", "--name", "bench", "--runs-dir", tmp], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        run = Path(tmp) / "bench"
        print(f"trainkit run exit {r.returncode} in {wall:.1f} s")
        manifest = json.loads((run / "run.json").read_text())
        for e in manifest["phases"]:
            print(f"  {e['phase']} #{e['attempt']}: {e['ended'] - e['started']:.1f} s")
        fits = sorted(run.rglob("train_summary.json"))
        train = sum(json.loads(p.read_text())["train_time_s"] for p in fits)
        print(f"saved fits: {len(fits)}, training time {train:.2f} s")
        test = json.loads((run / "05_finalization" / "test_evaluation.json").read_text())
        print(
            f"test accuracy {test['accuracy']:.4f} (95% CI {test['accuracy_ci'][0]:.4f}-{test['accuracy_ci'][1]:.4f})"
        )
        for row in json.loads((run / "05_finalization" / "export.json").read_text())["latency"]:
            print(
                f"  latency {row['runtime']:>12} batch {row['batch']:>3}: p50 {row['p50_ms']:.3f} ms, p95 "
                f"{row['p95_ms']:.3f} ms"
            )
        print(f"pipeline wall / training time: {wall / train:.2f}")


if __name__ == "__main__":
    main()
