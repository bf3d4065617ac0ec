"""How a benchmark is swept: a *track* fits a method once per configuration (or per edit), measures
the attribute on a split's held-out items, and gives the contexts under which utility is measured.

A benchmark names its track through :meth:`editbench.plugins.benchmark.Benchmark.sweep_track`, so
the sweep never switches on benchmark types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from editbench.errors import ConfigError, DataError
from editbench.evaluation import metrics as M
from editbench.modeling.interventions import NoIntervention
from editbench.plugins import registry

if TYPE_CHECKING:
    from editbench.runs.sweep import SweepConfig


class Original:
    """The unedited model as a sweep point."""

    name = "unedited"

    def uniform(self, lm, strength):
        return NoIntervention().uniform(lm, 0.0)


# ---------------------------------------------------------------------------------------------
class AttributeTrack:
    """Attribute benchmark: fit on the probe split once per configuration, apply to every row."""

    def __init__(self, bench, lm, cfg: "SweepConfig"):
        self.bench, self.lm, self.cfg = bench, lm, cfg
        self._probe = None
        self._items = {s: bench.items(s, cfg.split_limit(s)) for s in ("val", "test")}
        overlap = {it["item_id"] for it in self._items["val"]} & {it["item_id"] for it in self._items["test"]}
        if overlap:
            raise DataError(f"benchmark '{bench.name}': val and test share items {sorted(overlap)[:3]}")

    def provenance(self) -> dict:
        return self.bench.provenance()

    def describe(self) -> dict:
        b = self.bench
        return {"attribute": b.attribute, "higher_is_better": b.higher_is_better, "scale": b.scale,
                "options": getattr(b, "options", {}), "n_items": {s: len(v) for s, v in self._items.items()}}

    def probe(self):
        """The benchmark's probe set (built once)."""
        if self._probe is None:
            self._probe = self.bench.probe_set(self.lm, self.cfg.probe_limit)
            if not self._probe.positives or not self._probe.negatives:
                raise DataError(f"benchmark '{self.bench.name}': empty probe set")
        return self._probe

    def fit(self, method):
        if "behaviour" not in method.supports:
            raise ConfigError(f"method '{method.name}' cannot be fitted to a behaviour (it supports: "
                              f"{', '.join(sorted(method.supports))}); use it on a knowledge-edit benchmark")
        probe = self.probe()
        return method.fit_behaviour(probe.positives, probe.negatives)

    def attribute(self, fitted, strength: float, split: str) -> tuple[list[dict], dict]:
        ctx = fitted.uniform(self.lm, strength)
        recs = self.bench.evaluate(self.lm, ctx, self._items[split], batch_size=self.cfg.batch_size)
        return recs, self.aggregate(recs)

    def aggregate(self, recs: list[dict]) -> dict:
        """A point's attribute aggregates from its item records (also how a resumed sweep re-derives
        them from items.jsonl, so a point's numbers always follow from its items and this code)."""
        agg = {"attribute": M.aggregate([r["value"] for r in recs], scale=self.bench.scale,
                                        proportion=self.bench.rate)}
        for m in self.bench.extra_metrics:
            agg[m] = M.aggregate([r[m] for r in recs], proportion=True)
        for m in getattr(self.bench, "extra_means", ()):
            agg[m] = M.aggregate([r[m] for r in recs], scale=1.0)
        known = [bool(r["censored"]) for r in recs if r.get("censored") is not None]
        if known:  # a benchmark whose responses can hit a token budget says which did (absent: unknown)
            agg["censored_share"] = sum(known) / len(known)
        return agg

    def utility_contexts(self, fitted, strength: float, split: str):
        return [("all", fitted.uniform(self.lm, strength))]


class EditTrack:
    """Knowledge-edit benchmark: per-edit fits; attribute = ROME Score on the split's cases."""

    SPLITS = {"val": "val", "test": "edit"}

    def __init__(self, bench_cls, lm, cfg: "SweepConfig"):
        self.lm, self.cfg = lm, cfg
        self.benches = {s: bench_cls(data_root=cfg.data_root, split=self.SPLITS[s]) for s in ("val", "test")}
        self.cases = {s: b.load(cfg.split_limit(s)) for s, b in self.benches.items()}

    def provenance(self) -> dict:
        return {s: b.provenance() for s, b in self.benches.items()}

    def describe(self) -> dict:
        return {"attribute": "score", "higher_is_better": True, "scale": 100.0, "splits": self.SPLITS,
                "n_items": {s: len(v) for s, v in self.cases.items()}, "utility_edits": self.cfg.utility_edits}

    def fit(self, method):
        if "edit" not in method.supports:
            raise ConfigError(f"method '{method.name}' does not support knowledge edits")
        return method

    def attribute(self, method, strength: float, split: str) -> tuple[list[dict], dict]:
        if isinstance(method, Original):
            strength = 0.0  # every method at strength 0 is the original model; use the built-in one
            method = registry.load("method", "unedited")(self.lm, {}, seed=self.cfg.seed)
        ev = self.benches[split].make_evaluator(self.lm, method, strengths=[strength], batch_size=self.cfg.batch_size,
                                                seed=self.cfg.seed)
        recs = list(ev.evaluate(self.cases[split]))
        point = next(iter(ev.summarize(recs)["points"].values()))["post"]
        agg = {"attribute": point["score"], **{m: point[m] for m in ("efficacy", "generalization", "specificity")}}
        return [{"item_id": r["case_id"], "value": None, "post": r["post"]} for r in recs], agg

    def aggregate(self, recs: list[dict]) -> None:
        """Not re-derivable: the Score's summary needs the evaluator's full case records, of which
        the items keep only ``post``; a resumed sweep keeps the written aggregates."""
        return None

    def utility_contexts(self, method, strength: float, split: str):
        if isinstance(method, Original):
            return [("all", NoIntervention().uniform(self.lm, 0.0))]
        cases = self.cases[split][: self.cfg.utility_edits]
        # lazily: a sweep's preflight check fits only the first edit
        return ((f"edit-{c.case_id}", method.fit_edit(c.request).uniform(self.lm, strength)) for c in cases)
