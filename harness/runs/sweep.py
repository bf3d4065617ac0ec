"""Attribute-utility sweeps: methods x hyperparameter grids x strengths on one model and benchmark.

``editbench sweep CONFIG.yaml`` writes into ``out``:
* ``config.json``  - the resolved configuration;
* ``points.jsonl`` - one line per (point, split): method, params, strength, attribute and utility
  aggregates with bootstrap CIs, seconds; appended as points finish (a rerun resumes);
* ``items.jsonl``  - the per-item records every aggregate comes from (tagged with the point key);
* ``summary.json`` + ``analysis.md`` + ``tradeoff.{png,svg}`` - see :mod:`editbench.evaluation.tradeoff`.
Splits: every point is measured on ``val`` (operating points are chosen there) and on ``test``
(where the chosen points are reported). The original model is the point ``unedited``.

Two kinds of benchmark plug in: attribute benchmarks (:class:`editbench.benchmarks.attribute.AttributeBenchmark`,
fitted once per configuration on their probe split, applied to every row) and knowledge-edit
benchmarks (CounterFact: fitted per edit; attribute = ROME Score; utility measured under each of
the first ``utility_edits`` edits in turn).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from editbench.evaluation import metrics as M
from editbench.plugins import registry
from editbench.errors import ConfigError, DataError
from editbench.modeling.interventions import NoIntervention
from editbench.modeling.loading import DEFAULT_MODEL
from editbench.runs.runner import RunDir, code_version, versions
from editbench.evaluation.utility import UtilityConfig, UtilitySuite


@dataclass
class MethodSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    strengths: list[float] = field(default_factory=lambda: [1.0])

    def configs(self) -> list[dict]:
        keys = sorted(self.grid)
        return [{**self.params, **dict(zip(keys, combo))} for combo in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class SweepConfig:
    benchmark: str
    methods: list[MethodSpec]
    out: str
    model: str = DEFAULT_MODEL
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = 50  # held-out items per split (attribute)
    probe_limit: int | None = 64
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    utility_edits: int = 2  # knowledge-edit benchmarks: edits under which utility is measured
    baseline: str = "steering"  # matched-utility comparisons are against this method
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"
    data_root: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        if not isinstance(d, dict):
            raise ConfigError("sweep config must be a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"sweep config has no key '{unknown[0]}' (keys: {', '.join(sorted(names))})")
        for req in ("benchmark", "methods", "out"):
            if req not in d:
                raise ConfigError(f"sweep config needs '{req}'")
        d = dict(d)
        try:
            specs = []
            for m in d["methods"]:
                if not isinstance(m, dict) or "name" not in m:
                    raise ConfigError("every entry of 'methods' needs a 'name'")
                bad = sorted(set(m) - {"name", "params", "grid", "strengths"})
                if bad:
                    raise ConfigError(f"method entry '{m['name']}' has no key '{bad[0]}' (name, params, grid, strengths)")
                spec = MethodSpec(**m)
                if not isinstance(spec.strengths, list) or any(
                        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in spec.strengths):
                    raise ConfigError(f"method '{spec.name}': strengths must be a list of finite numbers, got {spec.strengths!r}")
                spec.strengths = [float(s) for s in spec.strengths]
                if not spec.strengths or any(not isinstance(v, list) or not v for v in spec.grid.values()):
                    raise ConfigError(f"method '{spec.name}': strengths and every grid entry must be non-empty lists")
                specs.append(spec)
            d["methods"] = specs
            d["utility"] = UtilityConfig(**(d.get("utility") or {}))
            cfg = cls(**d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid sweep config: {e}") from None
        for key in ("limit", "probe_limit", "utility_edits", "batch_size", "seed"):
            v = getattr(cfg, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"sweep config: '{key}' must be an integer, got {v!r}")
        if cfg.limit is not None and cfg.limit < 1 or cfg.utility_edits < 1 or cfg.batch_size < 1:
            raise ConfigError("limit, utility_edits and batch_size must be >= 1")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep config {p} not found")
        try:
            return cls.from_dict(yaml.safe_load(p.read_text()))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None


def point_key(method: str, params: dict, strength: float) -> str:
    return f"{method}|{json.dumps(params, sort_keys=True)}|{float(strength)!r}"


# ---------------------------------------------------------------------------------------------
class AttributeTrack:
    """Attribute benchmark: fit on the probe split once per configuration, apply to every row."""

    def __init__(self, bench, lm, cfg: SweepConfig):
        self.bench, self.lm, self.cfg = bench, lm, cfg
        self._probe = None
        self._items = {s: bench.items(s, cfg.limit) for s in ("val", "test")}
        overlap = {it["item_id"] for it in self._items["val"]} & {it["item_id"] for it in self._items["test"]}
        if overlap:
            raise DataError(f"benchmark '{bench.name}': val and test share items {sorted(overlap)[:3]}")

    def describe(self) -> dict:
        b = self.bench
        return {"attribute": b.attribute, "higher_is_better": b.higher_is_better, "scale": b.scale,
                "options": getattr(b, "options", {}), "n_items": {s: len(v) for s, v in self._items.items()}}

    def fit(self, method):
        if "behaviour" not in method.supports:
            raise ConfigError(f"method '{method.name}' cannot be fitted to a behaviour (it supports: "
                              f"{', '.join(sorted(method.supports))}); use it on a knowledge-edit benchmark")
        if self._probe is None:
            self._probe = self.bench.probe_set(self.lm, self.cfg.probe_limit)
            if not self._probe.positives or not self._probe.negatives:
                raise DataError(f"benchmark '{self.bench.name}': empty probe set")
        return method.fit_behaviour(self._probe.positives, self._probe.negatives)

    def attribute(self, fitted, strength: float, split: str) -> tuple[list[dict], dict]:
        ctx = fitted.uniform(self.lm, strength)
        recs = self.bench.evaluate(self.lm, ctx, self._items[split], batch_size=self.cfg.batch_size)
        agg = {"attribute": M.aggregate([r["value"] for r in recs], scale=self.bench.scale)}
        for m in self.bench.extra_metrics:
            agg[m] = M.aggregate([r[m] for r in recs])
        return recs, agg

    def utility_contexts(self, fitted, strength: float, split: str):
        return [("all", fitted.uniform(self.lm, strength))]


class EditTrack:
    """Knowledge-edit benchmark: per-edit fits; attribute = ROME Score on the split's cases."""

    SPLITS = {"val": "val", "test": "edit"}

    def __init__(self, bench_cls, lm, cfg: SweepConfig):
        self.lm, self.cfg = lm, cfg
        self.benches = {s: bench_cls(data_root=cfg.data_root, split=self.SPLITS[s]) for s in ("val", "test")}
        self.cases = {s: b.load(cfg.limit) for s, b in self.benches.items()}

    def describe(self) -> dict:
        return {"attribute": "score", "higher_is_better": True, "scale": 100.0, "splits": self.SPLITS,
                "n_items": {s: len(v) for s, v in self.cases.items()}, "utility_edits": self.cfg.utility_edits}

    def fit(self, method):
        if "edit" not in method.supports:
            raise ConfigError(f"method '{method.name}' does not support knowledge edits")
        return method

    def attribute(self, method, strength: float, split: str) -> tuple[list[dict], dict]:
        if isinstance(method, _Original):
            strength = 0.0  # every method at strength 0 is the original model; use the built-in one
            method = registry.load("method", "unedited")(self.lm, {}, seed=self.cfg.seed)
        ev = self.benches[split].make_evaluator(self.lm, method, strengths=[strength], batch_size=self.cfg.batch_size,
                                                seed=self.cfg.seed)
        recs = list(ev.evaluate(self.cases[split]))
        point = next(iter(ev.summarize(recs)["points"].values()))["post"]
        agg = {"attribute": point["score"], **{m: point[m] for m in ("efficacy", "generalization", "specificity")}}
        return [{"item_id": r["case_id"], "value": None, "post": r["post"]} for r in recs], agg

    def utility_contexts(self, method, strength: float, split: str):
        if isinstance(method, _Original):
            return [("all", NoIntervention().uniform(self.lm, 0.0))]
        cases = self.cases[split][: self.cfg.utility_edits]
        return [(f"edit-{c.case_id}", method.fit_edit(c.request).uniform(self.lm, strength)) for c in cases]


class _Original:
    """The unedited model as a sweep point."""

    name = "unedited"

    def uniform(self, lm, strength):
        return NoIntervention().uniform(lm, 0.0)


# ---------------------------------------------------------------------------------------------
def run_sweep(cfg: SweepConfig, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from editbench.benchmarks.attribute import AttributeBenchmark

    from editbench.modeling.loading import load_model
    from editbench.evaluation.tradeoff import analyze, write_analysis

    bench_cls = registry.load("benchmark", cfg.benchmark)
    method_classes = {m.name: registry.load("method", m.name) for m in cfg.methods}
    is_attr = isinstance(bench_cls, type) and issubclass(bench_cls, AttributeBenchmark)
    bench = bench_cls(data_root=cfg.data_root, seed=cfg.seed, options=cfg.benchmark_options) if is_attr else None
    if not is_attr and cfg.benchmark_options:
        raise ConfigError(f"benchmark '{cfg.benchmark}' takes no benchmark_options")
    suite = UtilitySuite(cfg.utility, cfg.data_root)
    out = RunDir(Path(cfg.out))
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    # validate every configuration before any compute
    planned = []
    for spec in cfg.methods:
        for params in spec.configs():
            method = method_classes[spec.name](lm, params, seed=cfg.seed)
            planned.append((spec, dataclasses.asdict(method.params), method))
    track = AttributeTrack(bench, lm, cfg) if is_attr else EditTrack(bench_cls, lm, cfg)

    resolved = dataclasses.asdict(cfg)
    resolved["methods"] = [{"name": s.name, "params": p, "strengths": s.strengths} for s, p, _ in planned]
    resolved["track"] = track.describe()
    keys = ("model", "benchmark", "benchmark_options", "limit", "probe_limit", "utility", "utility_edits", "seed", "dtype")
    out.check_or_write_config(resolved, keys=keys)
    items_path, points_path = out.path / "items.jsonl", out.path / "points.jsonl"
    done = {(r["key"], r["split"]) for r in out.read_records(points_path)}
    items = out.read_records(items_path)  # also cuts a torn last line
    kept = [r for r in items if (r["key"], r["split"]) in done]
    if len(kept) < len(items):  # items of a point interrupted before its summary line: recomputed below
        tmp = items_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, items_path)

    run_versions = versions()  # taken at start: the code that runs is the code at start
    code = code_version(run_versions)  # per point: resumes may span commits
    todo = [("unedited", {}, 0.0, None)] + [(s.name, p, st, m) for s, p, m in planned for st in s.strengths]
    bar = tqdm(total=2 * len(todo), unit="point", disable=not progress, desc=f"sweep {cfg.benchmark}")
    fitted_cache: dict[str, Any] = {}
    for name, params, strength, method in todo:
        key = point_key(name, params, strength)
        for split in ("val", "test"):
            if (key, split) in done:
                bar.update(1)
                continue
            t0 = time.perf_counter()
            fkey = point_key(name, params, 0.0)
            if fkey not in fitted_cache:
                fitted_cache[fkey] = _Original() if method is None else track.fit(method)
            fit_s = time.perf_counter() - t0
            fitted = fitted_cache[fkey]
            t1 = time.perf_counter()
            a_recs, a_agg = track.attribute(fitted, strength, split)
            u_recs = []
            for tag, ctx in track.utility_contexts(fitted, strength, split):
                u_recs += [dict(r, edit=tag) for r in suite.evaluate(lm, ctx, split, batch_size=cfg.batch_size)]
            point = {"key": key, "method": name, "params": params, "strength": strength, "split": split,
                     **a_agg, **suite.summarize(u_recs),
                     "seconds": {"fit": round(fit_s, 3), "eval": round(time.perf_counter() - t1, 3)}, "code": code}
            out.append([{"key": key, "split": split, "kind": "attribute", **r} for r in a_recs] +
                       [{"key": key, "split": split, "kind": "utility", **r} for r in u_recs], items_path)
            out.append([point], points_path)  # written last: a point counts as done only with its items
            done.add((key, split))
            bar.update(1)
    bar.close()
    points = out.read_records(points_path)
    summary = {"config": resolved, "versions": run_versions, "model": lm.provenance(),
               "data": {"benchmark": bench.provenance() if bench else
                        {s: b.provenance() for s, b in track.benches.items()},
                        "utility": suite.data_files()},
               "analysis": analyze(points, resolved["track"], baseline=cfg.baseline)}
    out.write_summary(summary)
    write_analysis(out.path, summary, points)
    return summary

