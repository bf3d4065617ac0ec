"""The benchmark interface: a named dataset with splits, a loader, and how it is evaluated
(:meth:`Benchmark.make_evaluator`, for ``editbench run``) and swept (:meth:`Benchmark.sweep_track`,
for ``editbench sweep``). The core calls nothing on a benchmark that is not declared here."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

from editbench.data import resolve_data_root, sha256_file
from editbench.errors import ConfigError


class Benchmark:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: "knowledge-edit" (fitted per edit request) or "attribute" (one behaviour fitted on probes)
    kind: ClassVar[str] = "knowledge-edit"
    splits: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[str] = ""
    #: ``editbench run --cases`` selections ``load(limit, selection)`` accepts besides all cases
    case_selections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_root: str | Path | None = None, split: str | None = None):
        self.split = split or self.default_split
        if self.split not in self.splits:
            raise ConfigError(f"benchmark '{self.name}' has no split '{self.split}' (splits: {', '.join(self.splits)})")
        self._data_root = data_root

    @property
    def data_root(self) -> Path:
        return resolve_data_root(self._data_root)

    def data_files(self) -> list[Path]:
        raise NotImplementedError

    def load(self, limit: int | None = None) -> Sequence:
        raise NotImplementedError

    def check_runnable(self) -> None:
        """Raise ConfigError when `editbench run` cannot evaluate this benchmark (called before
        anything is loaded or written)."""

    def make_evaluator(self, lm, method, **options):
        """The evaluator ``editbench run`` uses: ``evaluate(cases) -> records`` and
        ``summarize(records) -> {"n_cases", "pre", "points"}``."""
        raise ConfigError(f"benchmark '{self.name}' cannot be evaluated by `editbench run`")

    @classmethod
    def sweep_track(cls, lm, cfg):
        """The :mod:`editbench.runs.tracks` track that ``editbench sweep`` uses for this benchmark
        (``cfg`` is the :class:`~editbench.runs.sweep.SweepConfig`)."""
        raise ConfigError(f"benchmark '{cls.name}' cannot be swept")

    def provenance(self) -> dict:
        return {
            "benchmark": self.name,
            "split": self.split,
            "files": {str(p): sha256_file(p) for p in self.data_files()},
        }
