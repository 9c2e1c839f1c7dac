"""fit() against a hand-written PyTorch loop: same model, data order, optimizer and seed.

Digits with the MLP and the CNN; the two arms interleaved over several rounds (which one goes
first alternates, so neither always runs on the caches the other warmed), the first epoch of each
run dropped. Asserts the final losses are equal, prints the median epoch-time ratio per model, and
compares in-memory index batching against DataLoader(TensorDataset). Last line (goal ≤ 1.05 each):
``fit/hand epoch time: MLP X.XX×, CNN Y.YY×``. Run: ``python benchmarks/loop_overhead.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

os.environ.setdefault("TRAINKIT_PROGRESS", "off")

from trainkit.data import IndexBatches, load_data  # noqa: E402
from trainkit.models import build_model  # noqa: E402
from trainkit.repro import seed_everything, set_deterministic  # noqa: E402
from trainkit.testing import tiny_config  # noqa: E402
from trainkit.train import fit, make_optimizer  # noqa: E402


def hand_loop(cfg, bundle, epochs):
    """What a person writes by hand: the same seeding, permutation and loss, tracking train loss and
    accuracy and a val loss/accuracy pass per epoch (what any hand loop logs). Not measured here:
    fit()'s gradient-norm statistics, NaN guard, data-wait timing and schedule, i.e. its overhead."""
    seed_everything(cfg.training.seed)
    set_deterministic(cfg.training.deterministic)
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.kwargs)
    opt = make_optimizer(cfg, model.parameters())
    x_all, y_all = bundle._x, bundle.source.y
    vx, vy = bundle.arrays("val")
    times, last = [], None
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for idx, n in IndexBatches(bundle.splits["train"], cfg.data.batch_size, True, cfg.training.seed, epoch):
            out = model(x_all[idx])
            batch_loss = F.cross_entropy(out, y_all[idx], reduction="sum")
            loss = batch_loss / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += batch_loss.detach()
            correct += (out.argmax(1) == y_all[idx]).sum()
        model.eval()
        with torch.no_grad():
            out = model(vx)
            last = F.cross_entropy(out, vy).item()
            _ = ((out.argmax(1) == vy).float().mean().item(), loss_sum.item(), correct.item())
        times.append(time.perf_counter() - t0)
    return times, last


def fit_loop(cfg, bundle):
    r = fit(cfg, bundle, None, progress=False)
    return [h["epoch_time_s"] for h in r.history], r.history[-1]["val_loss"]


def batching(bundle, batch_size, rounds=5):
    """Seconds per epoch of pure batch production: index batching vs DataLoader(TensorDataset)."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = bundle.arrays("train")
    ds = TensorDataset(x, y)
    t_idx, t_dl = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for xb, yb, _ in bundle.batches("train", batch_size, shuffle=True):
            pass
        t_idx.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=True):
            pass
        t_dl.append(time.perf_counter() - t0)
    return statistics.median(t_idx), statistics.median(t_dl)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    ratios = []
    for name, kwargs in (("mlp", {"hidden": [128]}), ("cnn", {"channels": [16, 32]})):
        cfg = tiny_config({"model.name": name, "model.kwargs": kwargs, "training.epochs": args.epochs})
        bundle = load_data(cfg)
        f_times, h_times = [], []
        for r in range(args.rounds):
            if r % 2:
                ht, hl = hand_loop(cfg, bundle, args.epochs)
                ft, fl = fit_loop(cfg, bundle)
            else:
                ft, fl = fit_loop(cfg, bundle)
                ht, hl = hand_loop(cfg, bundle, args.epochs)
            assert abs(fl - hl) <= 1e-6 * max(1.0, abs(hl)), f"{name}: final val losses differ: fit {fl} vs hand {hl}"
            f_times += ft[1:]
            h_times += ht[1:]
        ratio = statistics.median(f_times) / statistics.median(h_times)
        ratios.append(ratio)
        print(
            f"{name}: fit {statistics.median(f_times) * 1e3:.1f} ms/epoch, hand {statistics.median(h_times) * 1e3:.1f} "
            f"ms/epoch, ratio {ratio:.3f}; final val loss fit {fl:.6f} == hand {hl:.6f}"
        )
    idx, dl = batching(load_data(tiny_config()), 64)
    print(
        f"batching one digits epoch: index {idx * 1e3:.2f} ms, DataLoader(TensorDataset) {dl * 1e3:.2f} ms, "
        f"DataLoader/index {dl / idx:.2f}x"
    )
    print(f"fit/hand epoch time: MLP {ratios[0]:.2f}×, CNN {ratios[1]:.2f}×")


if __name__ == "__main__":
    main()
