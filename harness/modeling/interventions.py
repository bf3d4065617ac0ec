"""What a fitted method hands back: an intervention applied as a context manager, scaled by strength.

* :class:`NoIntervention` - the unedited model.
* :class:`WeightIntervention` - low-rank column deltas applied through a
  :class:`~editbench.modeling.weights.WeightEditTransaction` (bit-exact restore).
* :class:`ActivationIntervention` - vectors added at block outputs; *row-batchable*: many cases'
  interventions can share one forward pass, one row each (``apply_rows``).

A strength of 0 leaves the model's outputs unchanged for every built-in intervention.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import ClassVar, ContextManager, Iterator, Literal, Sequence

import torch

from editbench.modeling.arch import adapter_of
from editbench.modeling.hooks import add_to_output, hooked
from editbench.modeling.loading import LoadedModel
from editbench.modeling.scoring import Batch, BatchContext, RowsContext
from editbench.modeling.weights import ColumnDelta, WeightEditTransaction

# attn / mlp: the block output added to the residual stream; attn_proj / mlp_proj: the output of
# W_O / W_down itself (identical except on architectures with post-block norms, e.g. Gemma 2/3);
# resid: the decoder layer's output (the residual stream).
Site = Literal["attn", "mlp", "attn_proj", "mlp_proj", "resid"]
Positions = Literal["all", "last", "prompt"]


class Intervention(ABC):
    #: True when ``apply_rows`` can combine interventions of different cases in one batch.
    row_batchable: ClassVar[bool] = False

    @abstractmethod
    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        """Context manager under which ``lm`` behaves edited, for every batch it is given."""

    @classmethod
    def apply_rows(cls, lm: LoadedModel, rows: Sequence[tuple["Intervention", float]], batch: Batch) -> ContextManager:
        """Apply ``rows[i]`` (intervention, strength) to row ``i`` of ``batch`` only."""
        raise NotImplementedError(f"{cls.__name__} is not row-batchable")

    def uniform(self, lm: LoadedModel, strength: float = 1.0) -> tuple[ContextManager, BatchContext | None]:
        """(outer context, per-batch context) that apply this intervention to *every* row of every
        batch: how behaviour and utility benchmarks score an edited model. Interventions that need
        the batch (position- or gate-dependent ones) override this with a per-batch context."""
        return self.apply(lm, strength), None

    def extra_numel(self) -> int:
        """Number of values this intervention stores (its memory cost beyond the model)."""
        return 0

    def describe(self) -> dict:
        return {"type": type(self).__name__, "extra_numel": self.extra_numel()}


class NoIntervention(Intervention):
    row_batchable = True

    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        return nullcontext()

    @classmethod
    def apply_rows(cls, lm, rows, batch) -> ContextManager:
        return nullcontext()


@dataclass
class WeightIntervention(Intervention):
    """Column deltas of output projections. Applied to a whole model through a weight-edit
    transaction (``apply``, ``uniform``), or per row (``apply_rows``): many cases' edits in one
    batch, each row computing ``W x + s * up (down^T x[cols])`` with its own case's factors through a
    hook on the edited projection, so no weight is touched and the cases share forward passes (as
    multi-adapter serving does). The two agree to float tolerance (tested on every architecture)."""

    deltas: list[ColumnDelta]
    row_batchable: ClassVar[bool] = True

    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        """``lm``: a LoadedModel, an ArchAdapter or a bare transformers model."""
        return WeightEditTransaction(adapter_of(lm), self.deltas, scale=strength)

    @classmethod
    def apply_rows(cls, lm: LoadedModel, rows, batch: Batch) -> ContextManager:
        return _row_deltas(lm, rows)

    def extra_numel(self) -> int:
        return sum(d.numel() for d in self.deltas)


@contextmanager
def _row_deltas(lm: LoadedModel, rows: Sequence[tuple["Intervention", float]]) -> Iterator[None]:
    """Hooks adding each row's weight deltas to the output of the projections they edit."""
    by_edit: dict[tuple[int, float], tuple[Intervention, float, list[int]]] = {}
    for r, (iv, s) in enumerate(rows):
        if s != 0.0 and getattr(iv, "deltas", None):
            by_edit.setdefault((id(iv), float(s)), (iv, float(s), []))[2].append(r)
    sites: dict[tuple[int, str], list[tuple[torch.Tensor, ColumnDelta, float]]] = {}
    for iv, s, rs in by_edit.values():
        idx = torch.tensor(rs, device=lm.device)
        for d in iv.deltas:
            sites.setdefault((d.layer, d.block), []).append((idx, d, s))

    def hook(items):
        def add(_m, inp, out):
            x, y = inp[0], out.clone()
            for idx, d, s in items:
                xs = x[idx]
                xs = xs[..., d.cols] if isinstance(d.cols, slice) else xs.index_select(-1, d.cols.to(x.device))
                up = d.up.to(device=x.device, dtype=torch.float32)
                z = xs.float() @ up.T if d.down is None else (xs.float() @ d.down.to(x.device, torch.float32)) @ up.T
                y[idx] += (s * z).to(y.dtype)
            return y
        return add

    with ExitStack() as stack:
        for (layer, block), items in sites.items():
            stack.enter_context(hooked(lm.adapter.out_proj(layer, block), hook(items)))
        yield


@dataclass
class SteeringVector:
    layer: int
    site: Site  # attention block output, MLP block output, or the layer's residual output
    vector: torch.Tensor  # [hidden]
    positions: Positions = "all"


def site_module(lm: LoadedModel, layer: int, site: Site) -> torch.nn.Module:
    if site == "resid":
        return lm.adapter.layers[layer]
    if site in ("attn_proj", "mlp_proj"):
        return lm.adapter.out_proj(layer, site[: -len("_proj")])
    if site in ("attn", "mlp"):
        return lm.adapter.block_output_module(layer, site)
    raise ValueError(f"unknown steering site {site!r}")


def _row_masks(batch: Batch, kinds: Sequence[Positions]) -> torch.Tensor | None:
    if all(k == "all" for k in kinds):
        return None
    out = torch.ones_like(batch.attention_mask, dtype=torch.bool)
    last = batch.last_prompt_mask() if "last" in kinds else None
    prompt = batch.prompt_mask() if "prompt" in kinds else None
    for i, k in enumerate(kinds):
        if k == "last":
            out[i] = last[i]
        elif k == "prompt":
            out[i] = prompt[i]
    return out


@dataclass
class ActivationIntervention(Intervention):
    """Add ``strength * vector`` at (layer, site), at all positions or only the prompt's last token."""

    vectors: list[SteeringVector]
    row_batchable: ClassVar[bool] = True

    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        if any(v.positions != "all" for v in self.vectors):
            raise ValueError("position-restricted vectors need a batch: use apply_rows / a batch_context")
        return self._install(lm, [(self, strength)], None)

    @classmethod
    def apply_rows(cls, lm, rows, batch) -> ContextManager:
        return cls._install(lm, rows, batch)

    def uniform(self, lm: LoadedModel, strength: float = 1.0) -> tuple[ContextManager, BatchContext | None]:
        if all(v.positions == "all" for v in self.vectors):
            return self.apply(lm, strength), None
        return nullcontext(), RowsContext(lambda b: self.apply_rows(lm, [(self, strength)] * len(b.indices), b))

    @staticmethod
    @contextmanager
    def _install(lm: LoadedModel, rows, batch: Batch | None) -> Iterator[None]:
        groups: dict[tuple[int, str], dict[int, SteeringVector]] = {}
        for r, (iv, _s) in enumerate(rows):
            for v in getattr(iv, "vectors", ()):
                groups.setdefault((v.layer, v.site), {})[r] = v
        with ExitStack() as stack:
            for (layer, site), by_row in groups.items():
                d = next(iter(by_row.values())).vector.shape[-1]
                if batch is None:  # whole-batch application of a single intervention
                    vec = by_row[0].vector * rows[0][1]
                    mask = None
                else:
                    vec = torch.zeros(len(rows), d, device=lm.device, dtype=lm.dtype)
                    kinds: list[Positions] = []
                    for r, (_iv, s) in enumerate(rows):
                        if r in by_row:
                            vec[r] = by_row[r].vector.to(vec) * s
                        kinds.append(by_row[r].positions if r in by_row else "all")
                    mask = _row_masks(batch, kinds)
                stack.enter_context(add_to_output(site_module(lm, layer, site), vec, positions=mask))
            yield

    def extra_numel(self) -> int:
        return sum(v.vector.numel() for v in self.vectors)


def _enter_all(managers: Sequence[ContextManager]) -> ContextManager:
    stack = ExitStack()
    try:
        for m in managers:
            stack.enter_context(m)
    except BaseException:
        stack.close()
        raise
    return stack


@dataclass
class StackedIntervention(Intervention):
    """Several edits in force at once, entered in order: weight deltas add up, hooks add their
    vectors, each gate decides for its own edit. The default composition of a sequential run's
    edits (:meth:`editbench.plugins.method.Method.compose`)."""

    parts: list[Intervention]

    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        return _enter_all([p.apply(lm, strength) for p in self.parts])

    def uniform(self, lm: LoadedModel, strength: float = 1.0) -> tuple[ContextManager, BatchContext | None]:
        outers, per_batch = [], []
        for p in self.parts:
            outer, bctx = p.uniform(lm, strength)
            outers.append(outer)
            if bctx is not None:
                per_batch.append(bctx)
        if not per_batch:
            return _enter_all(outers), None
        return _enter_all(outers), RowsContext(lambda b: _enter_all([c(b) for c in per_batch]))

    def extra_numel(self) -> int:
        return sum(p.extra_numel() for p in self.parts)

    def describe(self) -> dict:
        return {**super().describe(), "edits": len(self.parts)}


@dataclass
class EditedState(Intervention):
    """The model as a sequential run has edited it: the edits are already in force around the
    evaluation (weights changed in place, or ``batch_context`` entered on every batch), so applying
    this adds nothing of its own. Row-batchable, so the evaluator scores every case of a checkpoint
    in shared batches, and never the unedited model in its place."""

    batch_context: BatchContext | None = None
    row_batchable: ClassVar[bool] = True

    def apply(self, lm: LoadedModel, strength: float = 1.0) -> ContextManager:
        return nullcontext()

    @classmethod
    def apply_rows(cls, lm: LoadedModel, rows, batch: Batch) -> ContextManager:
        states = {id(iv): iv for iv, _s in rows}
        if len(states) != 1:
            raise ValueError("EditedState rows must share one state")
        bctx = next(iter(states.values())).batch_context
        return bctx(batch) if bctx is not None else nullcontext()
