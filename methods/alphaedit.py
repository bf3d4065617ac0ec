"""AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge (Fang et al.,
"AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models", ICLR 2025; official code
jianghoucheng/AlphaEdit).

Everything up to the update is MEMIT's (:mod:`editbench.methods.memit`: target residuals ``z_i`` at
the last layer of the range, keys ``K_l``, the residual ``R_l`` spread over the range, re-measured
after every layer). The update of layer ``l`` is ::

    Delta W_l = R_l K_l^T P_l (P_l (K_l K_l^T + K_p K_p^T) + L2 I)^-T

* ``P_l = U U^T`` projects onto the null space of the preserved keys: ``U`` are the eigenvectors of
  ``C_l = E[k k^T]`` (the same wikitext-2 second moment as ROME and MEMIT here) whose eigenvalues
  are below ``nullspace_threshold`` (2e-2, the paper's configurations), so ``Delta W_l k = 0`` for
  keys in the preserved subspace and the update cannot disturb them;
* ``K_p`` holds the keys of the edits made *before* this one in a sequential run (the official
  ``cache_c``): after each batch its keys, re-measured on the model with the batch's update in force,
  are added. They travel inside the stored edit (:class:`AlphaEditIntervention`), so a resumed run
  rebuilds ``K_p K_p^T`` from its stored edits (:meth:`AlphaEdit.after_edit`); a single-edit run
  starts every case from ``K_p = 0``;
* ``L2`` (10 in the paper's configurations) replaces MEMIT's ``lambda C`` term; ``mom2_update_weight``
  and ``mom2_ridge`` are not used.

Deviations: MEMIT's here (layers by depth fraction, fixed context prefixes, the wikitext-2 second
moment instead of 100k Wikipedia samples, the L-BFGS mapping through a post-norm on Gemma 2/3); the
null-space threshold is the paper's absolute one, whatever the scale of a model's keys (the run's
stored edits record how many null-space dimensions each layer kept: ``null_dims``). The official
script evaluates every case once, after the last batch; ``editbench run --sequential`` evaluates
at every checkpoint (the last one is the official protocol).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from editbench import ConfigError, EditRequest, LoadedModel, WeightIntervention
from editbench.methods.memit import MEMIT, compute_memit_deltas, memit_targets
from editbench.methods.rome import subject_keys
from editbench.modeling.weights import WeightEditTransaction

log = logging.getLogger(__name__)


def null_space_projector(C: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """``(U U^T, k)``: the projector onto the eigenvectors of the symmetric ``C`` whose eigenvalues are
    below ``threshold`` (float64), and how many there are."""
    vals, vecs = torch.linalg.eigh(C.double())
    U = vecs[:, vals < threshold]
    return U @ U.T, int(U.shape[1])


@dataclass
class AlphaEditIntervention(WeightIntervention):
    """MEMIT-shaped deltas plus the batch's keys after the update (``{layer: [in, n]}``), which later
    edits of a sequential run preserve."""

    keys: dict = field(default_factory=dict)
    null_dims: dict = field(default_factory=dict)

    def describe(self) -> dict:
        n = next(iter(self.keys.values())).shape[1] if self.keys else 0
        return {**super().describe(), "edits": n, "null_dims": {str(k): v for k, v in self.null_dims.items()}}


class AlphaEdit(MEMIT):
    name = "alphaedit"
    composition = "weights"
    method_class = "weight-edit"
    supports = frozenset({"edit", "batch"})
    description = "AlphaEdit: MEMIT's update projected onto the null space of preserved knowledge keys"

    @dataclass
    class Params(MEMIT.Params):
        nullspace_threshold: float = 2e-2
        L2: float = 10.0

        def __post_init__(self):
            super().__post_init__()
            if self.nullspace_threshold <= 0 or self.L2 <= 0:
                raise ConfigError("nullspace_threshold and L2 must be > 0")

    def __init__(self, lm: LoadedModel, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        self.P: dict[int, torch.Tensor] = {}
        self.null_dims: dict[int, int] = {}
        for l in self.layers:
            self.P[l], self.null_dims[l] = null_space_projector(self.C[l].to(lm.device), self.params.nullspace_threshold)
            if self.null_dims[l] == 0:
                log.warning("alphaedit: layer %d keeps no null-space dimension below %g: its update is 0", l,
                            self.params.nullspace_threshold)
        #: ``K_p K_p^T`` per layer: the keys of the edits already made (a sequential run's state)
        self.preserved: dict[int, torch.Tensor] = {}

    def _solve(self, layer: int, K: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        P = self.P[layer].to(K.device)
        KKt = K @ K.T
        if layer in self.preserved:
            KKt = KKt + self.preserved[layer].to(K.device)
        A = P @ KKt + self.params.L2 * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        return torch.linalg.solve(A, P @ K)

    def fit_edit(self, request: EditRequest) -> AlphaEditIntervention:
        return self.fit_edits([request])

    def fit_each(self, requests: Sequence[EditRequest]) -> list[AlphaEditIntervention]:
        """Independent one-edit AlphaEdit updates whose MEMIT targets are optimised together."""
        zs = memit_targets(self.lm, requests, self.params, self.layers[-1])
        return [self.fit_edits([r], targets=[z]) for r, z in zip(requests, zs)]

    def fit_edits(self, requests: Sequence[EditRequest], targets=None) -> AlphaEditIntervention:
        lm = self.lm
        deltas = compute_memit_deltas(lm, list(requests), self.params, self.layers, self.C, solve=self._solve,
                                      targets=targets)
        with WeightEditTransaction(lm.adapter, deltas):  # the keys later edits preserve: on the updated model
            per = [subject_keys(lm, r, self.layers) for r in requests]
        keys = {l: torch.stack([k[l] for k in per], 1).float().cpu() for l in self.layers}
        return AlphaEditIntervention(deltas, keys=keys, null_dims=dict(self.null_dims))

    def after_edit(self, edit) -> None:
        if not isinstance(edit, AlphaEditIntervention):
            raise ConfigError(f"alphaedit: cannot preserve the keys of a {type(edit).__name__}")
        for l, K in edit.keys.items():
            K = K.double()
            self.preserved[l] = self.preserved.get(l, 0) + K @ K.T


__all__ = ["AlphaEdit", "AlphaEditIntervention", "null_space_projector"]
