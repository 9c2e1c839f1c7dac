"""Independent fits on a small table: one at a time on every thread against two side by side on
one thread each (the lever behind trainkit/workers.py: Phase 3's seed and fold fits, Phase 4's rungs).

A TabM training step (batch 64) on a telecom-shaped table (5 numeric, 42 indicator columns) is
timed in child processes: ``A`` runs two of them side by side with ``torch.set_num_threads(1)``
each, ``B`` one with all threads; the pairs alternate which goes first. A step's time on a CPU
with few cores is bound by small matrix products that two threads share poorly, so two fits at
once can finish sooner than one after the other. Last line: ``two 1-thread fits side by side:
X.XX× the throughput of one fit on N threads (d_block D)``.

    python3 benchmarks/fit_threads.py [--steps 200] [--rounds 3] [--d-block 256]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STEP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from trainkit.losses import loss_of
from trainkit.tabular import tabm
torch.manual_seed(0)
n = 2450
x = torch.cat([torch.randn(n, 5), (torch.rand(n, 42) < 0.1).float()], 1)
y = (torch.rand(n) < 0.3).long()
m = tabm((47,), 2, d_block=int(sys.argv[3]))
m.fit_data(x)
m.train()
opt = torch.optim.Adam(m.parameters(), 1e-3)
def step(i):
    j = (i * 64) % (n - 64)
    loss = loss_of(m(x[j:j + 64]), y[j:j + 64])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for i in range(10):
    step(i)
print("ready", flush=True)
sys.stdin.readline()  # every copy starts its timed steps at once
t = time.perf_counter()
for i in range(int(sys.argv[2])):
    step(i)
print(time.perf_counter() - t)
"""


def _seconds(threads: int, steps: int, d_block: int, copies: int) -> float:
    """Wall seconds for ``copies`` processes of ``steps`` steps each, their timed steps started
    together once every copy has imported and warmed up (the imports are not counted)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STEP, str(threads), str(steps), str(d_block)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return max(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def main() -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d-block", type=int, default=256)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    ratios = []
    for r in range(args.rounds):
        order = (("pair", 1, 2), ("one", threads, 1)) if r % 2 == 0 else (("one", threads, 1), ("pair", 1, 2))
        got = {}
        for name, t, copies in order:
            t0 = time.perf_counter()
            got[name] = _seconds(t, args.steps, args.d_block, copies)
            print(
                f"round {r + 1} {name}: {got[name]:.2f} s ({time.perf_counter() - t0:.1f} s with imports)", flush=True
            )
        # throughput: the pair does 2 × steps in its time, the single fit steps in its own
        ratios.append((2 * args.steps / got["pair"]) / (args.steps / got["one"]))
    ratio = statistics.median(ratios)
    print(
        f"two 1-thread fits side by side: {ratio:.2f}× the throughput of one fit on {threads} threads "
        f"(d_block {args.d_block})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
