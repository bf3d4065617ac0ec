"""Activation-steering baselines fitted from the same probes as Steer2Edit.

* ``steering`` - the Steer2Edit paper's baseline (METHODS.md section 1.5): add ``gamma * v_l^b``
  (the *unnormalised* contrastive direction) to every layer's attention and MLP block output at all
  positions. ``gamma`` is the evaluator's ``strength``; the intervention stores the raw ``v``.
* ``steering-gated`` - ``steering`` behind MEGA's subject scope gate (the control that separates
  what MEGA's gate does from what its vectors do): the same vectors, added (at all positions, every
  layer) only to prompts the gate puts in scope of the edit; other prompts are bit-identical to the
  unedited model. The gate is :mod:`editbench.modeling.gating`'s (keys, standardisation, threshold
  exactly as MEGA's). A separate registered method, so that tables name the gated control apart
  from the ungated baseline: ``steering`` is ``activation-steering``, this one is ``gated``.
  Knowledge edits only (the gate needs the edit's subject).
* ``steering-layer`` - single-layer CAA / ActAdd-style steering: add ``gamma * r_l`` to the residual
  stream after one layer (default: the middle one), at all positions, where ``r_l`` is the mean
  difference of that layer's output over the probe window.

For knowledge edits the probe is our adaptation, shared with Steer2Edit: the rewrite prompt
completed with ``" " + target_new`` (positive) vs ``" " + target_true`` (negative); see
:mod:`editbench.methods.steer2edit` for why the averaging ``window`` defaults to ``"response"`` there.
Both interventions are row-batchable, so the evaluator scores many cases in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from editbench.modeling.arch import BLOCKS
from editbench.modeling.gating import (DEFAULT_THRESHOLD, GatedIntervention, SubjectGate, check_gate_params,
                                       default_gate_layer)
from editbench.modeling.directions import WINDOWS, Directions, ProbeExample, edit_probe_pair, extract_directions
from editbench.errors import ConfigError
from editbench.modeling.interventions import ActivationIntervention, SteeringVector
from editbench.requests import EditRequest

from editbench.plugins.method import Method


def _check(method: str, window: str, batch_size: int) -> None:
    if window not in WINDOWS:
        raise ConfigError(f"{method}: window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if batch_size < 1:
        raise ConfigError(f"{method}: batch_size must be >= 1, got {batch_size}")


class _ProbeSteering(Method):
    """Shared fitting: probes -> :class:`Directions` -> an :class:`ActivationIntervention`."""

    supports = frozenset({"edit", "behaviour"})

    def vectors_from(self, d: Directions) -> list[SteeringVector]:
        raise NotImplementedError

    def fit_edit(self, request: EditRequest) -> ActivationIntervention:
        pos, neg = edit_probe_pair(request, self.lm.tokenizer)
        d = extract_directions(self.lm, [pos], [neg], batch_size=2, window=self.params.window)
        return ActivationIntervention(self.vectors_from(d))

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> ActivationIntervention:
        """Behaviour probes use the paper's window ("predict") by default."""
        d = extract_directions(self.lm, positives, negatives, batch_size=self.params.batch_size, window=window)  # type: ignore[arg-type]
        return ActivationIntervention(self.vectors_from(d))


class Steering(_ProbeSteering):
    name = "steering"
    composition = "independent"
    method_class = "activation-steering"
    description = "Steer2Edit paper baseline: add gamma * v_l^b at every attention and MLP block output"

    @dataclass
    class Params:
        window: str = "response"
        batch_size: int = 16

        def __post_init__(self):
            _check("steering", self.window, self.batch_size)

    def vectors_from(self, d: Directions) -> list[SteeringVector]:
        # The paper adds v at the W_O / W_down output (before any post-block norm), measured there.
        return [SteeringVector(l, f"{b}_proj", d.proj_directions[(l, b)], positions="all")  # type: ignore[arg-type]
                for l in range(self.lm.adapter.n_layers) for b in BLOCKS]


class GatedSteering(Steering):
    name = "steering-gated"
    composition = "independent"
    method_class = "gated"
    description = "steering behind MEGA's subject scope gate: gamma * v_l^b only on prompts in scope of the edit"
    supports = frozenset({"edit"})

    @dataclass
    class Params:
        window: str = "response"
        batch_size: int = 16
        gate: str = "subject"  # the only gate here; ungated steering is the `steering` method
        gate_layer: int | None = None  # default: 1/6 of the depth, as MEGA's
        gate_threshold: float = DEFAULT_THRESHOLD
        gate_norm: str = "standardize"  # standardize | none (raw cosine)

        def __post_init__(self):
            _check("steering-gated", self.window, self.batch_size)
            if self.gate != "subject":
                raise ConfigError(f"steering-gated: gate must be 'subject', got {self.gate!r} (ungated steering is "
                                  "--method steering, method_class activation-steering)")
            check_gate_params("steering-gated", self.gate_norm, self.gate_threshold)

    def __init__(self, lm, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        n, p = lm.adapter.n_layers, self.params
        layer = default_gate_layer(n) if p.gate_layer is None else p.gate_layer
        if not 0 <= layer < n:
            raise ConfigError(f"steering-gated: gate_layer must be in [0, {n - 1}] for this model, got {layer}")
        self.gate = SubjectGate(lm, layer, p.gate_threshold, p.gate_norm)

    def fit_edit(self, request: EditRequest) -> GatedIntervention:
        pos, neg = edit_probe_pair(request, self.lm.tokenizer)
        d = extract_directions(self.lm, [pos], [neg], batch_size=2, window=self.params.window)
        return GatedIntervention(vectors=self.vectors_from(d), **self.gate.fields(request))

    def fit_behaviour(self, positives, negatives, window: str = "predict"):
        raise ConfigError("method 'steering-gated' does not support behaviour edits (its gate needs an edit's "
                          "subject); use steering")


class SteeringLayer(_ProbeSteering):
    name = "steering-layer"
    composition = "independent"
    method_class = "activation-steering"
    description = "CAA/ActAdd-style: add gamma * (residual mean difference) after one layer (default: middle)"

    @dataclass
    class Params:
        layer: int | None = None  # None: n_layers // 2
        window: str = "response"
        batch_size: int = 16

        def __post_init__(self):
            _check("steering-layer", self.window, self.batch_size)

    def __init__(self, lm, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        n = lm.adapter.n_layers
        if self.params.layer is None:
            self.params.layer = n // 2
        if not 0 <= self.params.layer < n:
            raise ConfigError(f"steering-layer: layer must be in [0, {n - 1}] for this model, got {self.params.layer}")

    def vectors_from(self, d: Directions) -> list[SteeringVector]:
        layer = self.params.layer
        return [SteeringVector(layer, "resid", d.resid[layer], positions="all")]
