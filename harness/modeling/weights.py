"""Weight-edit transactions: apply low-rank deltas in place, restore bit-exactly on exit.

Only the touched columns of the touched output projections are saved (never a copy of the model);
restoring copies those saved values back, so the model is bit-identical afterwards, also when the
body raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from editbench.modeling.arch import ArchAdapter, Block


@dataclass
class ColumnDelta:
    """``W[:, cols] += up @ down.T`` on the ``[hidden, in]`` output projection of (layer, block).

    ``cols`` is a slice or a 1-D index tensor of input columns (a head's slice, a neuron index, or
    ``slice(None)`` for the whole matrix). ``up`` is ``[hidden, r]``, ``down`` is ``[n_cols, r]``.
    For a dense delta pass ``up=dense`` and ``down=None``.
    """

    layer: int
    block: Block
    cols: slice | torch.Tensor
    up: torch.Tensor
    down: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        return self.up if self.down is None else self.up @ self.down.T

    def numel(self) -> int:
        return self.up.numel() + (0 if self.down is None else self.down.numel())


def _col_index(cols: slice | torch.Tensor, n: int) -> torch.Tensor:
    if isinstance(cols, slice):
        return torch.arange(n)[cols]
    return cols.reshape(-1).long().cpu()


@torch.no_grad()
def add_delta(W: torch.Tensor, d: ColumnDelta, scale: float) -> None:
    """``W[:, cols] += scale * up @ down.T`` in place (float32 arithmetic, stored in W's dtype)."""
    delta = (scale * d.dense().to(device=W.device, dtype=torch.float32)).to(W.dtype)
    if isinstance(d.cols, slice):
        W[:, d.cols] += delta
    else:
        W[:, d.cols.to(W.device)] += delta


class CumulativeWeights:
    """Weight deltas that stay in force and add up (a sequential run's edits), each applied in place
    exactly as :class:`WeightEditTransaction` applies it; one copy of each touched matrix is saved
    the first time it is touched (not one per edit: a thousand rank-one edits of one matrix keep
    one copy) and :meth:`restore` puts every original back, bit-exact."""

    def __init__(self, adapter: ArchAdapter):
        self.adapter = adapter
        self._saved: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, deltas: Sequence[ColumnDelta], scale: float = 1.0) -> None:
        with torch.no_grad():
            for d in deltas:
                W = self.adapter.out_weight(d.layer, d.block)
                self._saved.setdefault((d.layer, d.block), (W, W.detach().clone()))
            if scale != 0.0:
                for d in deltas:
                    add_delta(self.adapter.out_weight(d.layer, d.block), d, scale)

    @property
    def saved_numel(self) -> int:
        return sum(orig.numel() for _, orig in self._saved.values())

    def restore(self) -> None:
        with torch.no_grad():
            for W, orig in self._saved.values():
                W.copy_(orig)
        self._saved.clear()


class WeightEditTransaction:
    """``with WeightEditTransaction(adapter, deltas, scale):`` edits weights, then restores them."""

    def __init__(self, adapter: ArchAdapter, deltas: Sequence[ColumnDelta], scale: float = 1.0):
        self.adapter = adapter
        self.deltas = list(deltas)
        self.scale = float(scale)
        self._saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.saved_numel = 0

    def __enter__(self) -> "WeightEditTransaction":
        # Save the union of touched columns per matrix *before* any delta is added.
        touched: dict[tuple[int, str], torch.Tensor] = {}
        for d in self.deltas:
            W = self.adapter.out_weight(d.layer, d.block)
            idx = _col_index(d.cols, W.shape[1])
            if idx.numel() != torch.unique(idx).numel():  # W[:, idx] += x would not accumulate repeats
                raise ValueError(f"ColumnDelta for layer {d.layer} {d.block} repeats a column index")
            key = (d.layer, d.block)
            touched[key] = torch.unique(torch.cat([touched[key], idx])) if key in touched else torch.unique(idx)
        try:
            with torch.no_grad():
                for (layer, block), idx in touched.items():
                    W = self.adapter.out_weight(layer, block)
                    dev_idx = idx.to(W.device)
                    self._saved.append((W, dev_idx, W[:, dev_idx].clone()))
                    self.saved_numel += W.shape[0] * idx.numel()
                if self.scale != 0.0:
                    for d in self.deltas:
                        add_delta(self.adapter.out_weight(d.layer, d.block), d, self.scale)
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        with torch.no_grad():
            for W, idx, orig in reversed(self._saved):
                W[:, idx] = orig
        self._saved.clear()

    def __exit__(self, *exc) -> None:
        self._restore()


def total_numel(deltas: Iterable[ColumnDelta]) -> int:
    return sum(d.numel() for d in deltas)
