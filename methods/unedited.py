"""The unedited model: the reference point of every table and curve."""

from __future__ import annotations

from typing import Sequence

from harness.directions import ProbeExample
from harness.interventions import Intervention, NoIntervention
from harness.records import EditRequest

from .base import Method


class Unedited(Method):
    name = "unedited"
    description = "no edit (reference model)"
    supports = frozenset({"edit", "behaviour"})

    def fit_edit(self, request: EditRequest) -> Intervention:
        return NoIntervention()

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> Intervention:
        """Declared in ``supports``, so behaviour benchmarks call it: the reference point there too."""
        return NoIntervention()
