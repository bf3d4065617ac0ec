"""The unedited model: the reference point of every table and curve."""

from __future__ import annotations

from typing import Sequence

from editbench.modeling.directions import ProbeExample
from editbench.modeling.interventions import Intervention, NoIntervention
from editbench.requests import EditRequest

from editbench.plugins.method import Method


class Unedited(Method):
    name = "unedited"
    composition = "independent"
    method_class = "reference"
    description = "no edit (reference model)"
    supports = frozenset({"edit", "behaviour"})

    def fit_edit(self, request: EditRequest) -> Intervention:
        return NoIntervention()

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> Intervention:
        """Declared in ``supports``, so behaviour benchmarks call it: the reference point there too."""
        return NoIntervention()
