"""editbench: a benchmark harness for LLM behaviour-editing methods.

The public API is importable from here (``from editbench import Method, load_model, ...``); names
resolve lazily so that ``import editbench`` (e.g. for the command line) does not import torch.

Subpackages, by concern:
* :mod:`editbench.errors`, :mod:`editbench.data`, :mod:`editbench.requests`, :mod:`editbench.results`
  - the base: one-line errors, the data root, edit requests/cases, the result files (the only
  reader/writer of JSON lines and summaries);
* :mod:`editbench.modeling` - model loading, architecture adapters, hooks, weight transactions,
  interventions, batched scoring and generation, steering directions, attribution;
* :mod:`editbench.evaluation` - metrics (and their registry), evaluators, utility suite, judges,
  trade-off analysis;
* :mod:`editbench.runs` - configurations, provenance, run / sweep / study directories (one writer
  each);
* :mod:`editbench.report` - leaderboard model, Markdown, HTML, figures, regression compare;
* :mod:`editbench.plugins` - the method and benchmark contracts, registry, conformance suite, scaffold;
* :mod:`editbench.methods`, :mod:`editbench.benchmarks` - the built-in plugins.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Method": "editbench.plugins.method",
    "Benchmark": "editbench.plugins.benchmark",
    "EditRequest": "editbench.requests",
    "EditCase": "editbench.requests",
    "MetricSpec": "editbench.evaluation.metric_registry",
    "register_metric": "editbench.evaluation.metric_registry",
    "Intervention": "editbench.modeling.interventions",
    "NoIntervention": "editbench.modeling.interventions",
    "WeightIntervention": "editbench.modeling.interventions",
    "ActivationIntervention": "editbench.modeling.interventions",
    "SteeringVector": "editbench.modeling.interventions",
    "ColumnDelta": "editbench.modeling.weights",
    "LoadedModel": "editbench.modeling.loading",
    "load_model": "editbench.modeling.loading",
    "ProbeExample": "editbench.modeling.directions",
    "edit_probe_pair": "editbench.modeling.directions",
    "extract_directions": "editbench.modeling.directions",
    "compute_rank1_edits": "editbench.methods.steer2edit",
    "assert_conforms": "editbench.plugins.conformance",
    "EditbenchError": "editbench.errors",
    "ConfigError": "editbench.errors",
    "DataError": "editbench.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'editbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
