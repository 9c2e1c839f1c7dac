"""TabM for tables (``model.name: tabm``): an efficient ensemble of MLPs (Gorishniy et al., "TabM:
Advancing Tabular Deep Learning with Parameter-Efficient Ensembling", ICLR 2025), built from the
``tabm`` package, with piecewise-linear (default) or periodic embeddings of every input from
``rtdl_num_embeddings``.

Inputs are trainkit's table encoding (``preprocess.json``: standardized numbers, missing
indicators, one-hot categories), a float vector per row. Piecewise-linear embeddings need bin
edges: they start at the quantiles of a standard normal (the inputs are standardized on train) and
:meth:`TabMClassifier.fit_data` sets them from the train rows before training
(:func:`trainkit.models.build_for`); the edges are buffers, so a checkpoint, the ONNX export and
``trainkit predict`` carry them.

In training mode the model returns each member's logits, ``(B, k, C)`` (each member is trained on
its own loss, :func:`trainkit.losses.loss_of`); in eval mode the log of the members' mean
probabilities, ``(B, C)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainkit.errors import ModelError
from trainkit.losses import as_logits

__all__ = ["tabm", "TabMClassifier", "equal_count_bins"]

Embeddings = Literal["piecewise", "periodic", "none"]


def _normal_edges(n_bins: int) -> torch.Tensor:
    """``n_bins + 1`` increasing edges at the quantiles of a standard normal (tails at ±4)."""
    p = torch.linspace(0, 1, n_bins + 1)[1:-1].double()
    inner = math.sqrt(2) * torch.erfinv(2 * p - 1)
    return torch.cat([torch.tensor([-4.0]), inner.float(), torch.tensor([4.0])])


def equal_count_bins(x: torch.Tensor, n_bins: int) -> list[torch.Tensor]:
    """Per column of ``x`` (rows × features), ``n_bins + 1`` strictly increasing edges: the distinct
    quantiles of the column, its widest gaps split in half where it has fewer
    distinct values than bins (a 0/1 indicator, a count). Every column gets the same number of bins,
    so the encoding has no per-feature mask and its state is two buffers of fixed shape."""
    x = x.detach().float().reshape(len(x), -1)
    q = torch.linspace(0, 1, n_bins + 1)
    out = []
    for j in range(x.shape[1]):
        col = x[:, j][torch.isfinite(x[:, j])]
        if len(col) == 0 or float(col.max() - col.min()) < 1e-6:
            centre = float(col[0]) if len(col) else 0.0
            out.append(torch.linspace(centre - 1, centre + 1, n_bins + 1))
            continue
        edges = torch.unique(torch.quantile(col, q))
        while len(edges) < n_bins + 1:  # split the widest gap until there are enough edges
            gaps = edges.diff()
            i = int(gaps.argmax())
            edges = torch.cat([edges[: i + 1], ((edges[i] + edges[i + 1]) / 2).view(1), edges[i + 1 :]])
        out.append(edges)
    return out


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn from uniform numbers rather than ``bernoulli_``: the same
    distribution (each unit dropped with probability ``p``, the rest scaled by ``1 / (1 - p)``), about half the
    time on a CPU, where TabM's dropout was a quarter of a training step. Still an ``nn.Dropout``:
    what sets ``p`` on dropout layers (the overfit-one-batch probe) sets it here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


class TabMClassifier(nn.Module):
    """A TabM ensemble over a float vector per row; see the module docstring for its outputs."""

    def __init__(
        self,
        n_features: int,
        num_classes: int,
        *,
        k: int,
        d_block: int,
        n_blocks: int,
        dropout: float,
        embeddings: Embeddings,
        n_bins: int,
        d_embedding: int,
    ) -> None:
        super().__init__()
        self.embeddings, self.n_bins, self.k = embeddings, n_bins, k
        self._shape = dict(
            num_classes=num_classes, d_block=d_block, n_blocks=n_blocks, dropout=dropout, d_embedding=d_embedding
        )
        # which inputs go in as they are (True) rather than through the numeric embeddings: the
        # columns of at most two values, found by fit_data; a buffer of fixed shape, so a checkpoint
        # carries the layout and loading it into a freshly built model rebuilds that layout first
        self.register_buffer("plain", torch.zeros(n_features, dtype=torch.bool))
        self._build(self.plain)
        self._register_load_state_dict_pre_hook(_layout_from_state, with_module=True)

    def _build(self, plain: torch.Tensor) -> None:
        """The TabM network for this layout: the columns not in ``plain`` through the numeric
        embeddings, the ``plain`` ones (0/1 indicators, one-hot categories, constants) beside them as
        they are, as TabM takes one-hot categories. A column of two values loses nothing: whatever a
        model computes from it is affine in it. The first layer shrinks with them (each embedded column
        is ``d_embedding`` inputs wide), which is most of a step's time on a business table."""
        import rtdl_num_embeddings as rne
        import tabm as tabm_pkg

        sh = self._shape
        self.plain = plain.to(device=self.plain.device, dtype=torch.bool)
        self.register_buffer("emb_idx", torch.nonzero(~self.plain).flatten(), persistent=False)
        self.register_buffer("plain_idx", torch.nonzero(self.plain).flatten(), persistent=False)
        n_emb, n_plain = len(self.emb_idx), len(self.plain_idx)
        num: nn.Module | None = None
        if n_emb and self.embeddings == "piecewise":
            num = rne.PiecewiseLinearEmbeddings(
                [_normal_edges(self.n_bins)] * n_emb, sh["d_embedding"], activation=False, version="B"
            )
        elif n_emb and self.embeddings == "periodic":
            num = rne.PeriodicEmbeddings(n_emb, sh["d_embedding"], lite=False)
        # the embedded columns, then the plain ones, each of width 1 (the first layer's scaling
        # chunks); with none embedded, every column as a plain number
        inputs = dict(n_num_features=n_emb, cat_cardinalities=[1] * n_plain) if n_emb else dict(n_num_features=n_plain)
        self.net = tabm_pkg.TabM.make(
            **inputs,
            d_out=sh["num_classes"],
            num_embeddings=num,
            k=self.k,
            d_block=sh["d_block"],
            n_blocks=sh["n_blocks"],
            dropout=sh["dropout"],
        )
        self.net.cat_module = None  # the plain columns are already numbers: forward puts them in
        for mod in list(self.net.modules()):  # the same dropout, at half of nn.Dropout's cost on a CPU
            for name, child in mod.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(mod, name, UniformDropout(child.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TabM.forward for a float input, step by step: its torch.column_stack has no ONNX export
        x = x.flatten(1)
        net = self.net
        if net.num_module is not None and len(self.plain_idx):  # the embedded columns, then the plain ones
            x = torch.cat(
                [net.num_module(x.index_select(1, self.emb_idx)).flatten(1), x.index_select(1, self.plain_idx)], 1
            )
        elif net.num_module is not None:
            x = net.num_module(x).flatten(1)
        out = net.output(net.backbone(net.ensemble_view(x)))
        return out if self.training else as_logits(out)

    @torch.no_grad()
    def fit_data(self, x: torch.Tensor) -> None:
        """Fit the model's layout to train rows: the columns of at most two distinct values go in as
        they are (the network is rebuilt for that layout when it changes), and the piecewise-linear
        bin edges of the others come from their values."""
        x = x.detach().float().reshape(len(x), -1)
        if self.embeddings != "none":
            plain = torch.tensor([len(torch.unique(c[torch.isfinite(c)])) <= 2 for c in x.T], dtype=torch.bool)
            if not torch.equal(plain, self.plain.cpu()):
                self._build(plain)
        if self.embeddings != "piecewise" or self.net.num_module is None:
            return
        import rtdl_num_embeddings as rne

        impl = self.net.num_module.impl
        fresh = rne._PiecewiseLinearEncodingImpl(equal_count_bins(x[:, self.emb_idx.cpu()], self.n_bins))
        impl.weight.copy_(fresh.weight)
        impl.bias.copy_(fresh.bias)


def tabm(
    input_shape: tuple[int, ...],
    num_classes: int,
    k: int = 16,
    d_block: int = 256,
    n_blocks: int = 2,
    dropout: float = 0.1,
    embeddings: Embeddings = "piecewise",
    n_bins: int = 16,
    d_embedding: int = 16,
) -> nn.Module:
    """TabM over ``input_shape == (F,)``: ``k`` members of ``n_blocks`` blocks of width ``d_block``
    (the paper's defaults are k 32, d_block 512; these are sized for a CPU), ``embeddings`` of each
    input (piecewise-linear with ``n_bins`` bins, periodic, or none) of size ``d_embedding``."""
    if len(input_shape) != 1:
        raise ModelError(
            f"model tabm expects table rows (F,); got input shape {tuple(input_shape)}; "
            "use cnn for images (C, H, W), cnn1d for signals (C, L)"
        )
    if embeddings not in ("piecewise", "periodic", "none"):
        raise ModelError(f"model.kwargs.embeddings: {embeddings!r} unknown; valid: piecewise, periodic, none")
    for name, v in (
        ("k", k),
        ("d_block", d_block),
        ("n_blocks", n_blocks),
        ("n_bins", n_bins),
        ("d_embedding", d_embedding),
    ):
        if not isinstance(v, int) or v < 1 or (name == "n_bins" and v < 2):
            raise ModelError(
                f"model.kwargs.{name}: expected a positive integer{' ≥ 2' if name == 'n_bins' else ''}, got {v!r}"
            )
    if not 0 <= dropout < 1:
        raise ModelError(f"model.kwargs.dropout: expected a fraction in [0, 1), got {dropout!r}")
    return TabMClassifier(
        int(input_shape[0]),
        num_classes,
        k=k,
        d_block=d_block,
        n_blocks=n_blocks,
        dropout=dropout,
        embeddings=embeddings,
        n_bins=n_bins,
        d_embedding=d_embedding,
    )


def _layout_from_state(module: TabMClassifier, state: dict, prefix: str, *args: object) -> None:
    """Before a state dict loads into a TabM: rebuild the layout it was trained with (its
    ``plain`` buffer), so a model built from the config alone takes a checkpoint of a fitted one."""
    plain = state.get(prefix + "plain")
    if isinstance(plain, torch.Tensor) and plain.shape == module.plain.shape:
        if not torch.equal(plain.cpu().bool(), module.plain.cpu()):
            module._build(plain.cpu().bool())
