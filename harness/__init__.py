"""editbench core: models, architecture adapters, interventions, scoring, evaluation, runner."""

__version__ = "0.1.0"
