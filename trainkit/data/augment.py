"""Training-time augmentation (the one place a batch is changed on its way into the model)."""

from __future__ import annotations

import torch

__all__ = ["augment_batch"]


def augment_batch(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Training-time augmentation with torch's global RNG: images (N, C, H, W) get flips and
    crops, signals (N, C, L) random shifts, any input Gaussian noise."""
    if kind == "none":
        return x
    if kind == "noise":  # inputs are normalized: 0.1 is a tenth of a feature's spread
        return x + 0.1 * torch.randn_like(x)
    if x.ndim == 3:  # signals: a random shift along the time axis (crop of the zero-padded signal)
        n, _, length = x.shape
        pad = max(1, length // 8)
        shift = int(torch.randint(0, 2 * pad + 1, (1,)))
        return torch.nn.functional.pad(x, (pad, pad))[:, :, shift : shift + length]
    if x.ndim != 4:
        return x
    n, _, h, w = x.shape
    if kind == "flip_crop":
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    return padded[:, :, dy : dy + h, dx : dx + w]
