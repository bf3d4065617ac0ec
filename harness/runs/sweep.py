"""Attribute-utility sweeps: methods x hyperparameter grids x strengths on one model and benchmark.

``editbench sweep CONFIG.yaml`` writes into ``out``:
* ``config.json``  - the resolved configuration;
* ``points.jsonl`` - one line per (point, split): method, params, strength, attribute and utility
  aggregates with bootstrap CIs (``utility``, per task, ``wikitext_ppl``, ``neutral_kl``,
  ``utility_chance``), ``censored_share`` where the benchmark reports it, validity (``valid``,
  ``invalid_reasons``, ``ppl_ratio``, see :mod:`editbench.evaluation.validity`), seconds; appended
  as points finish (a rerun resumes; the aggregates are re-derived from the items under the
  running code, except a knowledge-edit point's Score summary, and validity under the config's current bounds);
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
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editbench.errors import ConfigError
from editbench.evaluation.tradeoff import AXES, DEFAULT_BASELINE, DEFAULT_MAX_CENSORED_SHARE, DEFAULT_TARGET_HALFWIDTH
from editbench.evaluation.utility import UtilityConfig, utility_config
from editbench.evaluation.validity import ValidityBounds, assess, revalidate
from editbench.plugins import registry
from editbench.runs.autobatch import backing_off, resolve_batch_size
from editbench.runs.config import CommonConfig, MethodSpec, check_limit_value, load_yaml, parse_methods
from editbench.runs.distributed import Executor, ModelSpec
from editbench.runs.provenance import code_version, versions
from editbench.results import write_file
from editbench.runs.rundir import ResultDir
from editbench.runs.tracks import Original

POINTS, ITEMS = "points.jsonl", "items.jsonl"
RESULT_KEYS = ("model", "benchmark", "benchmark_options", "limit", "probe_limit", "utility", "utility_edits", "seed",
               "dtype")
PROVENANCE_KEYS = ("data_sha256", "weights_sha256")


@dataclass
class SweepConfig(CommonConfig):
    benchmark: str = ""
    methods: list[MethodSpec] = field(default_factory=list)
    out: str = ""
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    limit: int | None | dict = 50  # held-out items per split, or {val: N, test: M} (see split_limit)
    probe_limit: int | None = 64
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    utility_edits: int = 2  # knowledge-edit benchmarks: edits under which utility is measured
    baseline: str = DEFAULT_BASELINE  # matched-utility comparisons are against this method
    batch_size: int | str = 16  # or "auto" (editbench.runs.autobatch)
    validity: ValidityBounds = field(default_factory=ValidityBounds)
    matched_axis: str = "kl"  # x of fronts and matched gains: "kl" (-neutral_kl) or "utility" (MC accuracy)
    max_censored_share: float = DEFAULT_MAX_CENSORED_SHARE  # above it a gain is "not decidable"
    # analysis.md's "n needed for ±h", and the CI half-width above which a comparison is not decidable
    target_halfwidth: float = DEFAULT_TARGET_HALFWIDTH
    linear_probe: bool = False  # per-layer linear-probe accuracy of the attribute (editbench.evaluation.probing)

    @classmethod
    def from_dict(cls, d: Any) -> "SweepConfig":
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
        d["methods"] = parse_methods(d["methods"])
        util = d.get("utility") or {}
        if not isinstance(util, dict):
            raise ConfigError(f"sweep config: 'utility' must be a mapping, got {util!r}")
        if not isinstance(d.get("benchmark_options") or {}, dict):
            raise ConfigError(f"sweep config: 'benchmark_options' must be a mapping, got {d['benchmark_options']!r}")
        d["validity"] = ValidityBounds.from_dict(d.get("validity"))
        try:
            d["utility"] = utility_config(util)
            cfg = cls(**d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid sweep config: {e}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.validate_common()
        for key in ("benchmark", "out", "baseline"):
            v = getattr(self, key)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"sweep config: '{key}' must be a non-empty string, got {v!r}")
        for key in ("probe_limit", "utility_edits"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"sweep config: '{key}' must be an integer, got {v!r}")
        if self.utility_edits < 1:
            raise ConfigError("utility_edits must be >= 1")
        self.validity.check()
        if not isinstance(self.linear_probe, bool):
            raise ConfigError(f"sweep config: 'linear_probe' must be true or false, got {self.linear_probe!r}")
        if self.matched_axis not in AXES:
            raise ConfigError(f"sweep config: 'matched_axis' must be one of {', '.join(AXES)}, got {self.matched_axis!r}")
        for key, ok, need in (("max_censored_share", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                              ("target_halfwidth", lambda v: v > 0, "a finite number > 0")):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"sweep config: '{key}' must be {need}, got {v!r}")

    def check_limit(self) -> None:
        """``limit``: one number for both splits, or ``{val: N, test: M}`` (operating points are chosen
        on val, so test may be the larger one)."""
        if isinstance(self.limit, dict):
            if set(self.limit) != {"val", "test"}:
                raise ConfigError(f"sweep config: 'limit' as a mapping needs exactly the keys val and test, got "
                                  f"{sorted(map(str, self.limit))}")
            for split, v in self.limit.items():
                check_limit_value(v, f"limit.{split}")
        else:
            super().check_limit()

    def split_limit(self, split: str) -> int | None:
        """Held-out items of ``split`` ("val" or "test")."""
        return self.limit.get(split) if isinstance(self.limit, dict) else self.limit

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        """The config of a YAML file, hyperparameters included, checked before any model loads;
        every error names the file."""
        from editbench.plugins.method import parse_params

        d = load_yaml(path)  # its errors name the file
        try:
            cfg = cls.from_dict(d)
            for spec in cfg.methods:
                method_cls = registry.load("method", spec.name)
                for params in spec.configs():
                    parse_params(method_cls.Params, params, spec.name)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return cfg


def point_key(method: str, params: dict, strength: float) -> str:
    return f"{method}|{json.dumps(params, sort_keys=True)}|{float(strength)!r}"


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointTask:
    """One (point, split) to compute: ``given`` are the hyperparameters as configured (the method
    is built from them), ``params`` the resolved ones that name the point."""

    method: str  # the name the point is reported under (the spec's label)
    given: dict
    params: dict
    strength: float
    split: str
    original: bool = False  # the unedited model's own point (no method is built)
    plugin: str = ""  # the registered method (default: ``method``)

    @property
    def plugin_name(self) -> str:
        return self.plugin or self.method

    @property
    def key(self) -> str:
        return point_key(self.method, self.params, self.strength)


@dataclass
class SweepWork:
    """A sweep's compute, as a worker (the driver itself, or a Ray actor) builds it once."""

    cfg: SweepConfig

    @property
    def model(self) -> ModelSpec:
        return ModelSpec.of(self.cfg)

    def bind(self, lm) -> "SweepWorker":
        return SweepWorker(self.cfg, lm)


class SweepWorker:
    """Computes points on one model: methods, fits (once per configuration), the track and the
    utility suite (its unedited references once) are kept across the points it computes."""

    def __init__(self, cfg: SweepConfig, lm, suite=None):
        # a private copy: its batch size is resolved (auto) and halved on out-of-memory, per worker
        self.cfg, self.lm = dataclasses.replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, lm)), lm
        self.batch_sizes_used: list[int] = []
        self.suite = suite if suite is not None else cfg.utility.suite(cfg.data_root)
        self._track = None
        self._methods: dict[str, Any] = {}
        self._fitted: dict[str, Any] = {}

    @property
    def track(self):
        if self._track is None:
            self._track = registry.load("benchmark", self.cfg.benchmark).sweep_track(self.lm, self.cfg)
        return self._track

    def method(self, name: str, given: dict):
        """The configured method instance (one per configuration)."""
        mkey = f"{name}|{json.dumps(given, sort_keys=True, default=str)}"
        if mkey not in self._methods:
            self._methods[mkey] = registry.load("method", name)(self.lm, given, seed=self.cfg.seed)
        return self._methods[mkey]

    def fitted(self, name: str, given: dict, params: dict, original: bool = False):
        """The fitted configuration (fitted once; every strength of it reuses the fit)."""
        fkey = point_key(name, params, 0.0)
        if fkey not in self._fitted:
            self._fitted[fkey] = Original() if original else self.track.fit(self.method(name, given))
        return self._fitted[fkey]

    def preflight(self, planned: list) -> None:
        """Let the utility backend refuse an intervention it cannot apply before any point is
        computed: every configuration's first utility context at each strength (fits are kept)."""
        for spec, given, params in planned:
            fitted = self.fitted(spec.name, given, params)  # keyed by the registered name, as in __call__
            for strength in spec.strengths:
                _, ctx = next(iter(self.track.utility_contexts(fitted, strength, "val")))
                self.suite.check_context(ctx)

    def __call__(self, task: PointTask) -> dict:
        """The point's line (without validity, which the driver derives, nor ``code``) and its items;
        an out-of-memory error halves the batch size and recomputes the point."""
        def set_(b: int) -> None:
            self.cfg.batch_size = b

        return backing_off(lambda: self._point(task), lambda: self.cfg.batch_size, set_, self.batch_sizes_used)

    def _point(self, task: PointTask) -> dict:
        method = None if task.original else self.method(task.plugin_name, task.given)
        track = self.track
        t0 = time.perf_counter()
        fitted = self.fitted(task.plugin_name, task.given, task.params, original=task.original)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        a_recs, a_agg = track.attribute(fitted, task.strength, task.split)
        u_recs = []
        for tag, ctx in track.utility_contexts(fitted, task.strength, task.split):
            u_recs += [dict(r, edit=tag) for r in self.suite.evaluate(self.lm, ctx, task.split,
                                                                      batch_size=self.cfg.batch_size)]
        point = {"key": task.key, "method": task.method, "params": task.params, "strength": task.strength,
                 "split": task.split, "method_class": "reference" if method is None else method.class_of(fitted),
                 **({"plugin": task.plugin_name} if task.plugin_name != task.method else {}),
                 **a_agg, **self.suite.summarize(u_recs),
                 "seconds": {"fit": round(fit_s, 3), "eval": round(time.perf_counter() - t1, 3)}}
        describe = getattr(fitted, "describe", None)  # what the fit chose (edited components, a region)
        if method is not None and callable(describe):
            point["fit"] = describe()
        items = ([{"key": task.key, "split": task.split, "kind": "attribute", **r} for r in a_recs] +
                 [{"key": task.key, "split": task.split, "kind": "utility", **r} for r in u_recs])
        return {"point": point, "items": items}


def run_sweep(cfg: SweepConfig, progress: bool = True, wait: bool = False, executor: Executor | None = None) -> dict:
    """Run (or resume) a sweep in ``cfg.out`` under the directory's writer lock; the points are
    computed by ``executor`` (default: in this process) and written here, in the serial order."""
    from editbench.modeling.loading import load_model

    cfg.validate()
    executor = executor or Executor()
    executor.check_device(cfg.device)
    registry.load("benchmark", cfg.benchmark)
    for m in cfg.methods:
        registry.load("method", m.name)
    suite = cfg.utility.suite(cfg.data_root)  # the backend's suite: its tasks are checked before the model loads
    work = SweepWork(cfg)
    # results = finished points (items without their point line are orphans, dropped on resume)
    with ResultDir(Path(cfg.out), result_files=(POINTS,)).writing(wait=wait) as out:
        lm = load_model(cfg.model, device=executor.driver_device(cfg.device), dtype=cfg.dtype, seed=cfg.seed)
        local = SweepWorker(cfg, lm, suite)  # the work bound to the driver's model, with the checked suite
        planned = []  # every configuration is validated before any compute
        for spec in cfg.methods:
            for params in spec.configs():
                method = local.method(spec.name, params)
                resolved_params = json.loads(json.dumps(dataclasses.asdict(method.params), default=str))
                planned.append((spec, params, resolved_params))
        if suite.preflight:
            local.preflight(planned)
        return _sweep(out, cfg, work, local, planned, progress, executor)


def _sweep(out: ResultDir, cfg: SweepConfig, work: SweepWork, local: SweepWorker, planned: list, progress: bool,
           executor: Executor) -> dict:
    from tqdm.auto import tqdm

    from editbench.evaluation.tradeoff import analyze, item_values

    lm, suite, track = local.lm, local.suite, local.track
    resolved = dataclasses.asdict(cfg)
    resolved["methods"] = [{"name": s.name, "params": p, "strengths": s.strengths,
                            **({"label": s.label} if s.label != s.name else {})} for s, _, p in planned]
    resolved["track"] = track.describe()
    data = {"benchmark": track.provenance(), "utility": suite.data_files()}
    resolved["data_sha256"] = {**_hashes(data["benchmark"]), **{Path(f).name: h for f, h in data["utility"].items()}}
    resolved["weights_sha256"] = lm.provenance()["weights_sha256"]
    for name in (POINTS, ITEMS):  # a malformed file is refused before config.json is rewritten
        out.check_records(name, {"key": str, "split": str})
    out.check_or_write_config(resolved, RESULT_KEYS, PROVENANCE_KEYS)
    written = out.load_records(POINTS, required={"key": str, "split": str})
    done = {(r["key"], r["split"]) for r in written}
    items = out.load_records(ITEMS, required={"key": str, "split": str})
    kept = [r for r in items if (r["key"], r["split"]) in done]
    if len(kept) < len(items):  # items of a point interrupted before its summary line: recomputed below
        out.rewrite(ITEMS, kept)

    run_versions = versions()  # taken at start: the code that runs is the code at start
    code = code_version(run_versions)  # per point: resumes may span commits
    splits = ("val", "test")  # every point on both, in this order (the serial order the files keep)
    tasks = [PointTask("unedited", {}, {}, 0.0, split, original=True) for split in splits]
    tasks += [PointTask(s.label, given, p, st, split, plugin="" if s.label == s.name else s.name)
              for s, given, p in planned for st in s.strengths for split in splits]
    missing, seen = [], set(done)  # in order, each (point, split) once (a configuration listed twice is one point)
    for t in tasks:
        if (t.key, t.split) not in seen:
            seen.add((t.key, t.split))
            missing.append(t)
    # the unedited point of each split (first in todo, or from an earlier invocation): validity's reference
    refs = {r["split"]: r for r in written if r.get("method") == "unedited"}
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(missing), unit="point", disable=not progress,
               desc=f"sweep {cfg.benchmark}")
    try:  # the bar is closed before an interrupt's message is printed
        for task, result in zip(missing, executor.map(work, missing, local)):
            point = {**result["point"], "code": code}
            refs.setdefault(task.split, point)
            point.update(assess(point, refs[task.split], cfg.validity))
            out.append(ITEMS, result["items"])
            out.append(POINTS, [point])  # written last: a point counts as done only with its items
            bar.update(1)
    finally:
        bar.close()
    points = out.load_records(POINTS)
    item_recs = out.load_records(ITEMS)
    # aggregates re-derived from the items (the code may have changed since a point was written),
    # then validity under the config's current bounds
    checked = revalidate(reaggregate(points, item_recs, track, suite), cfg.validity)
    if checked != points:
        out.rewrite(POINTS, checked)
        points = checked
    items = item_values(item_recs)
    # the batch sizes this invocation computed with: the driver's own (serial), or the fixed size
    # every Ray worker uses; with `auto` on Ray each worker resolves its own, not reported here
    if executor.backend == "serial" or cfg.batch_size != "auto":
        resolved_batch = {"batch_size_used": local.batch_sizes_used or [local.cfg.batch_size]}
    else:
        resolved_batch = {}
    summary = {"config": resolved, **resolved_batch, "versions": run_versions,
               "model": executor.model_provenance(work, lm), "data": data,
               "analysis": analyze(points, resolved["track"], baseline=cfg.baseline, matched_axis=cfg.matched_axis,
                                   items=items, max_censored_share=cfg.max_censored_share,
                                   target_halfwidth=cfg.target_halfwidth)}
    if cfg.linear_probe:
        summary["analysis"]["linear_probe"] = _linear_probe(track, lm, cfg.seed)
    summary = out.write_summary(summary, "sweep")
    write_analysis(out.path, summary, points)
    return summary


def _linear_probe(track, lm, seed: int) -> dict:
    """Per-layer linear-probe accuracy on the track's probe set, or a note where there is none."""
    from editbench.evaluation.probing import layer_probe_accuracy

    if not hasattr(track, "probe"):
        return {"note": "no probe set: the benchmark's methods are fitted per edit"}
    probe = track.probe()
    return layer_probe_accuracy(lm, probe.positives, probe.negatives, seed=seed)


def reaggregate(points: list[dict], items: list[dict], track, suite) -> list[dict]:
    """Every point with its aggregates recomputed from its item records: the attribute's where the
    track can (``track.aggregate`` not None) and the utility suite's; a point without items of a
    kind keeps what was written for it."""
    by: dict = {}
    for r in items:
        by.setdefault((r["key"], r["split"], r.get("kind")), []).append(r)
    out = []
    for p in points:
        p = dict(p)
        attr = by.get((p["key"], p["split"], "attribute"))
        agg = track.aggregate(attr) if attr else None
        if agg is not None:
            p.update(agg)
        util = by.get((p["key"], p["split"], "utility"))
        if util:
            p.update(suite.summarize(util))
        out.append(p)
    return out


def _hashes(data: Any) -> dict:
    """{file name: sha256} of every data file named in a provenance mapping."""
    out: dict = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "files" and isinstance(v, dict):
                out.update({Path(f).name: h for f, h in v.items()})
            else:
                out.update(_hashes(v))
    return out


def write_analysis(out_dir: Path, summary: dict, points: list[dict]) -> None:
    """analysis.md and the trade-off figure (tradeoff.png/.svg) of a finished sweep."""
    from editbench.evaluation.tradeoff import format_analysis
    from editbench.report.plotting import plot_panels, sweep_axis

    write_file(out_dir / "analysis.md", format_analysis(summary, points))
    title = f"{summary['config']['model']} / {summary['config']['benchmark']}"
    plot_panels([(title, points, summary["config"]["track"], sweep_axis(summary["analysis"]))], out_dir / "tradeoff",
                baseline=summary["analysis"]["baseline"])
