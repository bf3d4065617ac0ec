"""The unedited model: the reference point of every table and curve."""

from __future__ import annotations

from harness.interventions import Intervention, NoIntervention
from harness.records import EditRequest

from .base import Method


class Unedited(Method):
    name = "unedited"
    description = "no edit (reference model)"
    supports = frozenset({"edit", "behaviour"})

    def fit_edit(self, request: EditRequest) -> Intervention:
        return NoIntervention()
