"""Batches: in-memory data is batched by tensor index (no per-sample ``__getitem__``/collate);
streamed data goes through one persistent DataLoader whose batch sampler follows the same plan."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainkit.data.splits import normalize

__all__ = ["IndexBatches", "BatchIterable"]


class IndexBatches:
    """Batches of indices drawn from a per-epoch seeded permutation, sharded across ranks.

    Each global batch holds ``batch_size * world`` indices; rank r takes its slice. ``global_n``
    is the size of the global batch, so a summed loss divided by it equals the full-batch mean.
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world: int = 1,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.rank, self.world, self.weights = rank, world, weights

    def __len__(self) -> int:
        g = self.batch_size * self.world
        return (len(self.indices) + g - 1) // g

    def global_sizes(self) -> list[int]:
        """Size of each global batch, in order (independent of the shuffle; no permutation drawn)."""
        g, n = self.batch_size * self.world, len(self.indices)
        return [min(g, n - start) for start in range(0, n, g)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            if self.weights is not None:  # balanced: draw with replacement by per-sample weight
                idx = idx[torch.multinomial(self.weights, len(idx), replacement=True, generator=g)]
            else:
                idx = idx[torch.randperm(len(idx), generator=g)]
        gsize = self.batch_size * self.world
        for start in range(0, len(idx), gsize):
            chunk = idx[start : start + gsize]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield mine, len(chunk)


class _BatchSampler:
    def __init__(self, batches: IndexBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for mine, _ in self.batches:
            yield mine.tolist()


# ---------------------------------------------------------------- the bundle


class BatchIterable:
    """One epoch of batches: tensor indexing for in-memory data, a DataLoader for streamed data."""

    def __init__(self, bundle: Any, plan: IndexBatches, device: torch.device, workers: int) -> None:
        self.bundle, self.plan, self.device, self.workers = bundle, plan, device, workers

    def __len__(self) -> int:
        return len(self.plan)

    def _loader(self) -> DataLoader:
        """The bundle's DataLoader for this kind of pass (training or evaluation), made once: with
        workers they persist across epochs (no process start per epoch); each epoch hands the
        loader's batch sampler its own plan (the sampler runs in this process)."""
        from trainkit.repro import seed_worker

        b = self.bundle
        key = (id(b.source.dataset), self.workers, self.device.type, self.plan.shuffle)
        cache = b.__dict__.setdefault("_loaders", {})
        if key not in cache:
            sampler = _BatchSampler(self.plan)
            cache[key] = (
                DataLoader(
                    b.source.dataset,
                    batch_sampler=sampler,
                    num_workers=self.workers,
                    pin_memory=self.device.type == "cuda",
                    worker_init_fn=seed_worker,
                    persistent_workers=self.workers > 0,
                ),
                sampler,
            )
        loader, sampler = cache[key]
        sampler.batches = self.plan
        return loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        b = self.bundle
        labels = (b.labels if b.labels is not None else b.source.y).to(self.device)
        if b._x is not None:
            x_all = b._x if b._x.device == self.device else b._x.to(self.device)
            b._x = x_all
            on_cpu = self.device.type == "cpu"
            for mine, n in self.plan:
                mine = mine if on_cpu else mine.to(self.device, non_blocking=True)
                yield x_all[mine], labels[mine], n
            return
        loader = self._loader()
        own_norm = getattr(b.source.dataset, "own_normalization", False)
        mean, std = b.mean.to(self.device), b.std.to(self.device)
        for (x, _), (mine, n) in zip(loader, self.plan):
            x = x.to(self.device, non_blocking=True).float()
            yield (x if own_norm else normalize(x, mean, std)), labels[mine.to(self.device)], n
