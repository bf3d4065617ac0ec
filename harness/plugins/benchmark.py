"""The benchmark interface: a named dataset with splits, a loader, and the evaluator that scores it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

from editbench.data import resolve_data_root, sha256_file
from editbench.errors import ConfigError


class Benchmark:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[str] = ""

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
        raise NotImplementedError

    def provenance(self) -> dict:
        return {
            "benchmark": self.name,
            "split": self.split,
            "files": {str(p): sha256_file(p) for p in self.data_files()},
        }
