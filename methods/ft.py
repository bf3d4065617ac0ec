"""FT-L: constrained fine-tuning of one MLP output projection (Zhu et al. 2020 / ROME's FT-L baseline).

Optimises the target_new NLL on the rewrite prompt with Adam over a delta of one layer's ``W_down``,
clamping the delta to an L-infinity ball after every step. Used on its own as a knowledge editor
and as the reference editor of MEGA's post-edit attribution study. The delta is applied through a
weight-edit transaction, so the model is restored bit-exactly after each case.

Behaviour benchmarks (our adaptation): the same constrained fine-tuning on the positive probes'
responses (supervised fine-tuning towards the wanted behaviour, mini-batches of 8 cycled in order);
the negative probes are not used, as FT-L has no contrastive term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from editbench.errors import ConfigError
from editbench.modeling.directions import ProbeExample
from editbench.modeling.hooks import hooked
from editbench.modeling.interventions import Intervention, WeightIntervention
from editbench.requests import EditRequest
from editbench.modeling.scoring import ScoreRequest, mean_target_nll
from editbench.modeling.weights import ColumnDelta

from editbench.plugins.method import Method


class FT(Method):
    name = "ft"
    composition = "weights"
    method_class = "weight-edit"
    description = "FT-L: L-inf-constrained fine-tuning of one MLP output projection (reference weight editor)"
    supports = frozenset({"edit", "behaviour", "batch"})
    behaviour_batch = 8  # probe examples per optimisation step (fixed: not a result-affecting knob)

    @dataclass
    class Params:
        layer: int | None = None  # default: the middle layer
        steps: int = 25
        lr: float = 5e-3
        norm_constraint: float = 5e-3  # L-inf bound on each weight change

        def __post_init__(self):
            if self.steps < 1:
                raise ConfigError(f"steps must be >= 1, got {self.steps}")
            if self.lr <= 0 or self.norm_constraint <= 0:
                raise ConfigError("lr and norm_constraint must be > 0")

    def __init__(self, lm, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        n = lm.adapter.n_layers
        self.layer = n // 2 if self.params.layer is None else self.params.layer
        if not 0 <= self.layer < n:
            raise ConfigError(f"method 'ft': layer {self.layer} out of range (model has {n} layers)")

    def fit_edit(self, request: EditRequest) -> Intervention:
        return self._fit([ScoreRequest(request.prompt, request.target_new)])

    def fit_edits(self, requests: Sequence[EditRequest]) -> Intervention:
        """Several edits in one fine-tuning run (mini-batches of 8 of their rewrite prompts, cycled)."""
        return self._fit([ScoreRequest(r.prompt, r.target_new) for r in requests])

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> Intervention:
        """Fine-tune towards the positive responses (ROME-protocol target: the response after a space)."""
        reqs = [ScoreRequest(e.prompt, e.response.strip()) for e in positives if e.response.strip()]
        if not reqs:
            raise ConfigError("method 'ft': the probe set has no positive example with a non-empty response")
        return self._fit(reqs)

    def _fit(self, reqs: Sequence[ScoreRequest]) -> Intervention:
        ad = self.lm.adapter
        W = ad.out_weight(self.layer, "mlp")
        delta = torch.zeros_like(W, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.params.lr)
        bs = self.behaviour_batch

        def add_delta(_m, inp, out):  # out + inp @ delta.T: the effect of W += delta
            return out + F.linear(inp[0], delta.to(out.dtype))

        with torch.enable_grad(), hooked(ad.out_proj(self.layer, "mlp"), add_delta):
            for step in range(self.params.steps):
                opt.zero_grad()
                batch = [reqs[(step * bs + i) % len(reqs)] for i in range(min(bs, len(reqs)))]  # cycled in order
                loss = mean_target_nll(self.lm, batch).mean()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.clamp_(-self.params.norm_constraint, self.params.norm_constraint)
        return WeightIntervention([ColumnDelta(self.layer, "mlp", slice(None), delta.detach().to(W.dtype))])
