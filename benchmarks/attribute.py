"""Attribute benchmarks: a behaviour to buy (refusal, truthfulness, short reasoning, ...).

Each benchmark owns three disjoint, seeded splits of its item pool:
* ``probe`` - examples a method may fit on (positive = wanted behaviour, negative = unwanted);
* ``val``   - held-out items for choosing operating points;
* ``test``  - held-out items the chosen points are reported on.
Evaluation scores an intervention (applied to every row, see ``Intervention.uniform``) on held-out
items and returns one record per item whose ``value`` is that item's contribution to the attribute
metric (a rate in [0, 1] or a count), so aggregates and bootstrap CIs come from per-item records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from editbench.data import data_file
from editbench.datasets_io import HubSource, Records, load_hub, load_local
from editbench.modeling.directions import ProbeSet
from editbench.errors import ConfigError

from editbench.plugins.benchmark import Benchmark

EVAL_SPLITS = ("val", "test")


def split_indices(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, list[int]]:
    """Disjoint index lists covering ``range(n)`` in the given proportions (seeded permutation)."""
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f <= 0 for f in fractions.values()):
        raise ConfigError(f"split fractions must be positive and sum to 1, got {dict(fractions)}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    out, start, names = {}, 0, list(fractions)
    for k, name in enumerate(names):
        stop = n if k == len(names) - 1 else start + int(round(fractions[name] * n))
        out[name] = sorted(perm[start:stop])
        start = stop
    return out


def format_instruction(tokenizer, instruction: str, response_header: str = "### Response:") -> str:
    """Prompt text for an instruction: the tokenizer's chat template when it has one (instruct
    models), else a plain Alpaca-style frame (base models) whose response section opens with
    ``response_header``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
        # the template may write the BOS token itself; encode_prompt adds special tokens again
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
            text = text[len(bos):]
        return text
    return f"### Instruction:\n{instruction}\n\n{response_header}\n"


def read_jsonl(path: Path) -> list[dict]:
    """A JSON-lines data file through ``datasets`` (each line an object; one-line errors naming file
    and line)."""
    return load_local(path)


class AttributeBenchmark(Benchmark):
    """Base class; subclasses define the pool, the probe set and per-item scoring."""

    kind = "attribute"
    splits: ClassVar[tuple[str, ...]] = EVAL_SPLITS
    default_split: ClassVar[str] = "test"
    #: name of the attribute metric and whether larger values are the wanted behaviour
    attribute: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: percentage scale for rates (x100), 1 for counts such as token lengths
    scale: ClassVar[float] = 100.0
    #: the attribute is a per-item rate in [0, 1] (refusal, truthfulness): its zero-width CIs (0 of n,
    #: n of n) become Wilson intervals; False for counts such as token lengths
    rate: ClassVar[bool] = True
    fractions: ClassVar[Mapping[str, float]] = {"probe": 0.4, "val": 0.2, "test": 0.4}
    #: further per-item rates in [0, 1] aggregated alongside the attribute (e.g. MC1, accuracy)
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    #: further per-item values aggregated as plain means (scale 1), e.g. a judge's mean score
    extra_means: ClassVar[tuple[str, ...]] = ()
    #: local data files (name -> path under the data root)
    files: ClassVar[Mapping[str, str]] = {}
    #: where the benchmark option ``dataset: hub:OWNER/NAME`` replaces ``files``: the axis its parts
    #: differ in ("split" or "name"), the parts, and the other axis's default
    hub_parts: ClassVar[tuple[str, tuple[str, ...], Mapping[str, str]] | None] = None
    #: benchmark options (``benchmark_options`` of a sweep) and their defaults
    default_options: ClassVar[Mapping[str, Any]] = {}
    #: options restricted to named choices, e.g. the probe protocol (checked on construction)
    option_choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(self, data_root: str | Path | None = None, split: str | None = None, seed: int = 0,
                 options: Mapping[str, Any] | None = None):
        super().__init__(data_root, split)
        self.seed = seed
        unknown = sorted(set(options or {}) - set(self.default_options))
        if unknown:
            have = ", ".join(self.default_options) or "none"
            raise ConfigError(f"benchmark '{self.name}' has no option '{unknown[0]}' (has: {have})")
        self.options = {**self.default_options, **(options or {})}
        for key, choices in self.option_choices.items():
            if self.options[key] not in choices:
                raise ConfigError(f"benchmark '{self.name}': {key} must be one of {', '.join(choices)}, "
                                  f"got {self.options[key]!r}")
        self.hub: HubSource | None = None
        self._hub: dict[str, Records] = {}
        if self.options.get("dataset") is not None and self.hub_parts is not None:
            axis, parts, defaults = self.hub_parts
            hub = HubSource.parse(self.options["dataset"])
            if getattr(hub, axis):
                kind = "configs" if axis == "name" else "splits"
                raise ConfigError(f"{self.name}: the hub dataset {hub} is read in {'both' if len(parts) == 2 else 'all'} {kind}, "
                                  f"{' and '.join(map(repr, parts))}; leave out {axis}=")
            self.hub = hub.with_defaults(**defaults)

    # -- data ----------------------------------------------------------------------------------
    def data_files(self) -> list[Path]:
        return [] if self.hub is not None else [data_file(f, self._data_root) for f in self.files.values()]

    def hub_rows(self, part: str) -> Records:
        """One part of the hub dataset (loaded once)."""
        if part not in self._hub:
            self._hub[part] = load_hub(self.hub.with_defaults(**{self.hub_parts[0]: part}))
        return self._hub[part]

    def provenance(self) -> dict:
        if self.hub is None:
            return super().provenance()
        parts = [self.hub_rows(p) for p in self.hub_parts[1]]
        return {"benchmark": self.name, "split": self.split, "hub": [r.info for r in parts],
                "files": {k: v for r in parts for k, v in r.provenance().items()}}

    def pool(self) -> list[dict]:
        """Every item of the benchmark, in a fixed order (validated)."""
        raise NotImplementedError

    def partition(self) -> dict[str, list[int]]:
        return split_indices(len(self.pool()), self.fractions, self.seed)

    def items(self, split: str, limit: int | None = None) -> list[dict]:
        if split not in ("probe", *EVAL_SPLITS):
            raise ConfigError(f"benchmark '{self.name}' has no split '{split}' (probe, val, test)")
        pool = self.pool()
        idx = self.partition()[split]
        if limit is not None and limit > len(idx):
            raise ConfigError(f"benchmark '{self.name}': its {split} split has {len(idx)} items, fewer than the "
                              f"{limit} asked (lower the limit)")
        return [dict(pool[i], item_id=i) for i in (idx if limit is None else idx[:limit])]

    def load(self, limit: int | None = None) -> Sequence:
        return self.items(self.split, limit)

    # -- fitting and scoring -------------------------------------------------------------------
    def probe_set(self, lm, limit: int | None = None) -> ProbeSet:
        raise NotImplementedError

    def evaluate(self, lm, context, items: Sequence[dict], batch_size: int = 16) -> list[dict]:
        """Per-item records ``{"item_id", "value", ...}`` under ``context`` = (outer, batch_context)."""
        raise NotImplementedError

    def check_runnable(self) -> None:
        raise ConfigError(f"benchmark '{self.name}' is an attribute benchmark: run it with `editbench sweep CONFIG.yaml`")

    @classmethod
    def sweep_track(cls, lm, cfg):
        from editbench.runs.tracks import AttributeTrack

        return AttributeTrack(cls(data_root=cfg.data_root, seed=cfg.seed, options=cfg.benchmark_options), lm, cfg)

    def make_evaluator(self, lm, method, **options):
        self.check_runnable()
