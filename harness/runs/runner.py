"""Runs: a resolved config, per-case records appended as they come, and a summary with provenance.

A run directory holds
* ``config.json`` - the fully resolved configuration and the inputs' provenance (data sha256,
  model weights sha256);
* ``cases.jsonl`` - one line per (case, strength), appended and fsync'ed chunk by chunk;
* ``summary.json`` - aggregates + versions (package, git commit, source hash, model, data).
One writer at a time (a lock); re-running the same command on an interrupted directory resumes:
finished (case, strength) pairs are kept, a torn last line is dropped, and a chunk with missing
records is recomputed whole (so its batches, and hence its numbers, equal an uninterrupted run's).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from editbench.errors import ConfigError
from editbench.plugins import registry
from editbench.plugins.method import parse_params
from editbench.runs.autobatch import backing_off, resolve_batch_size
from editbench.runs.config import CommonConfig, check_strengths, params_tag, safe_name
from editbench.runs.distributed import Executor, ModelSpec
from editbench.runs.provenance import code_version, record_code_counts, versions
from editbench.runs.rundir import ResultDir

# Keys whose change alters results: a run directory refuses to resume under different values.
RESULT_KEYS = ("model", "benchmark", "split", "method", "method_params", "strengths", "seed", "dtype",
               "generation", "max_new_tokens", "dataset", "cases", "sequential", "edit_batch_size", "checkpoints")
#: many-edit keys left out of config.json at their defaults, so single-edit runs written before they
#: existed still resume
MANY_EDIT_DEFAULTS = {"sequential": False, "checkpoints": None, "edit_batch_size": 1}
#: ``--cases`` selections: which of a split's cases a run evaluates (None: all, in file order)
CASE_SELECTIONS = ("with-subject-facts",)
# Inputs whose content must not change under a run's records (checked on resume).
PROVENANCE_KEYS = ("data_sha256", "weights_sha256")
RECORD_FIELDS = {"case_id": (int, str), "strength": (int, float), "pre": dict, "post": dict}
CASES = "cases.jsonl"


@dataclass
class RunConfig(CommonConfig):
    benchmark: str = "counterfact"
    split: str | None = None
    method: str = "unedited"
    method_params: dict[str, Any] = field(default_factory=dict)
    strengths: list[float] = field(default_factory=lambda: [1.0])
    #: cases evaluated (and saved) together; chunks are aligned on the case list, so a resumed run
    #: batches exactly as an uninterrupted one
    chunk_size: int = 8
    generation: bool = False
    max_new_tokens: int = 64
    out: str | None = None
    #: a hub dataset instead of the data root's split file (``hub:OWNER/NAME[@REV][?split=S]``)
    dataset: str | None = None
    #: a selection of the split's cases (:data:`CASE_SELECTIONS`), applied before ``limit``
    cases: str | None = None
    #: many edits (:mod:`editbench.runs.sequential`): edits stay in force and accumulate, evaluated
    #: at ``checkpoints``; ``edit_batch_size`` edits are fitted at once (also without ``sequential``)
    sequential: bool = False
    checkpoints: list[int] | None = None
    edit_batch_size: int = 1

    def validate(self) -> None:
        self.validate_common()
        self.strengths = check_strengths(self.strengths)
        for name in ("chunk_size", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.out is not None and not str(self.out).strip():
            raise ConfigError("--out must not be empty (leave it out for the default directory)")
        if not isinstance(self.method_params, dict):
            raise ConfigError(f"method_params must be a mapping, got {self.method_params!r}")
        if isinstance(self.edit_batch_size, bool) or not isinstance(self.edit_batch_size, int) or self.edit_batch_size < 1:
            raise ConfigError(f"--edit-batch-size must be an integer >= 1, got {self.edit_batch_size!r}")
        if self.checkpoints is not None:
            if not self.sequential:
                raise ConfigError("--checkpoints needs --sequential")
            cps = self.checkpoints
            if (not isinstance(cps, list) or not cps or any(isinstance(t, bool) or not isinstance(t, int) for t in cps)
                    or any(t < 1 for t in cps)):
                raise ConfigError(f"--checkpoints must be positive integers, got {cps!r}")
            if any(b <= a for a, b in zip(cps, cps[1:])):
                raise ConfigError(f"--checkpoints must be strictly increasing, got {','.join(map(str, cps))}")
        if self.edit_batch_size > 1 and not self.sequential and self.chunk_size % self.edit_batch_size:
            # a chunk holds whole batches, so a resumed run fits exactly the batches of an uninterrupted one
            self.chunk_size += self.edit_batch_size - self.chunk_size % self.edit_batch_size
        if self.cases is not None and self.cases not in CASE_SELECTIONS:
            raise ConfigError(f"unknown --cases selection {self.cases!r} (choose from: {', '.join(CASE_SELECTIONS)})")
        if self.dataset is not None:
            from editbench.datasets_io import HubSource

            HubSource.parse(self.dataset)  # one ConfigError line for a malformed source, before anything runs

    def default_out(self, resolved_params: dict | None = None) -> Path:
        """``runs/MODEL/BENCH-SPLIT/METHOD[-hash of the resolved non-default params]``."""
        tag = self.method
        if resolved_params is not None:
            changed = {k: v for k, v in resolved_params.items() if k in self.method_params}
            if changed:
                tag += "-" + params_tag(changed)
        bench = f"{self.benchmark}-{self.split}" + (f"-{safe_name({'dataset': self.dataset})}" if self.dataset else "")
        bench += f"-{self.cases}" if self.cases else ""
        return Path("runs") / self.model.replace("/", "__") / bench / tag


def resolve_params(method_cls: type, given: dict) -> dict:
    """Hyperparameters as the method will use them (types converted, defaults filled), as JSON."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(parse_params(method_cls.Params, given, method_cls.name)),
                                 default=str))


def dataset_kwargs(bench_cls: type, dataset: str | None) -> dict[str, str]:
    """``{"dataset": ...}`` for a benchmark that reads hub datasets; a ConfigError for one that does not."""
    if dataset is None:
        return {}
    import inspect

    if "dataset" not in inspect.signature(bench_cls).parameters:
        raise ConfigError(f"benchmark '{bench_cls.name}' takes no --dataset (attribute benchmarks read a hub dataset "
                          "through a sweep's benchmark_options: {dataset: ...})")
    return {"dataset": dataset}


def load_cases(bench, cfg: RunConfig) -> list:
    """The run's cases: the split's first ``limit``, or of the ``cases`` selection; a benchmark
    without that selection refuses it in one line."""
    if cfg.cases is None:
        return bench.load(cfg.limit)
    if cfg.cases not in bench.case_selections:
        raise ConfigError(f"benchmark '{cfg.benchmark}' has no --cases {cfg.cases} selection")
    return bench.load(cfg.limit, with_subject_facts=cfg.cases == "with-subject-facts")


def _non_finite_note(records: list[dict]) -> str | None:
    counts: dict[str, int] = {}
    for r in records:
        for state in ("pre", "post"):
            for m in (r.get("non_finite") or {}).get(state, []):
                counts[f"{state} {m}"] = counts.get(f"{state} {m}", 0) + 1
    if not counts:
        return None
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return (f"warning: non-finite scores (NaN/inf) in {sum(counts.values())} value(s) ({parts}); they are left out "
            "of the aggregates and counted as 'non_finite' in summary.json")


@dataclass
class RunWork:
    """A run's compute, as a worker (the driver itself, or a Ray actor) builds it once; items are
    chunks of cases, results their records."""

    cfg: RunConfig

    @property
    def model(self) -> ModelSpec:
        return ModelSpec.of(self.cfg)

    def bind(self, lm) -> "RunWorker":
        return RunWorker(self.cfg, lm)


class RunWorker:
    """The configured method and the benchmark's evaluator on one model."""

    def __init__(self, cfg: RunConfig, lm):
        self.lm = lm
        bench_cls = registry.load("benchmark", cfg.benchmark)
        bench = bench_cls(data_root=cfg.data_root, split=cfg.split, **dataset_kwargs(bench_cls, cfg.dataset))
        self.method = registry.load("method", cfg.method)(lm, cfg.method_params, seed=cfg.seed)
        many = {"edit_batch_size": cfg.edit_batch_size} if cfg.edit_batch_size > 1 else {}
        if cfg.sequential:  # per-case health probes would measure one shared model T times: per checkpoint instead
            many["health"] = False
        self.evaluator = bench.make_evaluator(lm, self.method, strengths=cfg.strengths,
                                              batch_size=resolve_batch_size(cfg.batch_size, lm),
                                              generation=cfg.generation, max_new_tokens=cfg.max_new_tokens,
                                              seed=cfg.seed, **many)
        self.batch_sizes_used: list[int] = []

    def _set_batch_size(self, b: int) -> None:
        self.evaluator.batch_size = b
        if self.evaluator.probe is not None:
            self.evaluator.probe.batch_size = b

    def __call__(self, chunk: list) -> list[dict]:
        """The chunk's records; an out-of-memory error halves the batch size and recomputes the chunk."""
        return backing_off(lambda: list(self.evaluator.evaluate(chunk)), lambda: self.evaluator.batch_size,
                           self._set_batch_size, self.batch_sizes_used)


def execute(cfg: RunConfig, progress: bool = True, on_chunk: Callable[[int], None] | None = None,
            wait: bool = False, executor: Executor | None = None) -> dict:
    """Run (or resume) an evaluation; returns the summary dict (also written to disk). The chunks
    are computed by ``executor`` (default: in this process) and written here, in order."""
    from tqdm.auto import tqdm

    from editbench.modeling.loading import load_model

    cfg.validate()
    executor = executor or Executor()
    executor.check_device(cfg.device)
    code_versions = versions()  # the code that runs is the code at start, whatever changes meanwhile
    bench_cls = registry.load("benchmark", cfg.benchmark)
    method_cls = registry.load("method", cfg.method)
    bench = bench_cls(data_root=cfg.data_root, split=cfg.split, **dataset_kwargs(bench_cls, cfg.dataset))
    bench.check_runnable()
    cfg.split = bench.split
    cases = load_cases(bench, cfg)  # validates data before anything is written
    params = resolve_params(method_cls, cfg.method_params)  # validates hyperparameters, no model needed
    if cfg.sequential or cfg.edit_batch_size > 1:
        from editbench.runs.sequential import check_plan

        if cfg.sequential and executor.backend != "serial":
            raise ConfigError("--sequential is one chain of edits: it runs serially (leave out --backend ray)")
        cfg.checkpoints = check_plan(method_cls, len(cases), cfg.checkpoints, cfg.edit_batch_size, cfg.strengths,
                                     cfg.sequential) or None
    out = ResultDir(Path(cfg.out) if cfg.out else cfg.default_out(params))
    cfg.out = str(out.path)
    with out.writing(wait=wait):
        lm = load_model(cfg.model, device=executor.driver_device(cfg.device), dtype=cfg.dtype, seed=cfg.seed)
        work = RunWork(cfg)
        local = work.bind(lm)
        resolved = dataclasses.asdict(cfg)
        for k, v in MANY_EDIT_DEFAULTS.items():
            if resolved[k] == v:
                del resolved[k]
        resolved["method_params"] = dict(params)
        resolved["data_root"] = str(bench.data_root)
        data = bench.provenance()
        resolved["data_sha256"] = {Path(k).name: v for k, v in data["files"].items()}
        resolved["weights_sha256"] = lm.provenance()["weights_sha256"]
        out.check_records(CASES, RECORD_FIELDS)  # a malformed file is refused before config.json is rewritten
        out.check_or_write_config(resolved, RESULT_KEYS, PROVENANCE_KEYS)

        existing = out.load_records(CASES, required=RECORD_FIELDS)
        previous_versions = (out.previous_summary() or {}).get("versions")
        code = code_version(code_versions)
        if cfg.sequential:
            return _sequential(out, cfg, cases, work, local, executor, existing, code, code_versions,
                               previous_versions, bench, data, resolved, progress)
        done = {(r["case_id"], r["strength"]) for r in existing}
        n_done = sum(all((c.case_id, s) in done for s in cfg.strengths) for c in cases)
        # chunks are aligned on the case list (a resumed run batches as an uninterrupted one); a chunk
        # with any missing record is recomputed whole
        todo = []
        for start in range(0, len(cases), cfg.chunk_size):
            chunk = cases[start:start + cfg.chunk_size]
            n_missing = sum(any((c.case_id, s) not in done for s in cfg.strengths) for c in chunk)
            if n_missing:
                todo.append((start, chunk, n_missing))
        t0 = time.time()
        bar = tqdm(total=len(cases), initial=n_done, unit="case", disable=not progress,
                   desc=f"{cfg.method} on {cfg.benchmark}", file=sys.stderr)
        try:
            for (start, chunk, n_missing), computed in zip(todo, executor.map(work, [t[1] for t in todo], local)):
                records = [{**r, "code": code} for r in computed if (r["case_id"], r["strength"]) not in done]
                out.append(CASES, records)
                done |= {(r["case_id"], r["strength"]) for r in records}
                existing += records
                bar.update(n_missing)
                if on_chunk:
                    on_chunk(start + len(chunk))
        finally:  # also on Ctrl-C / SIGTERM: the bar ends before the CLI's message
            bar.close()

        wanted = {c.case_id for c in cases}
        mine = [r for r in existing if r["case_id"] in wanted and r["strength"] in cfg.strengths]
        if len(mine) < len(existing):  # e.g. a smaller --limit than before: say so, never drop records
            print(f"note: {out.path} holds {len(existing) - len(mine)} record(s) outside this selection; they stay "
                  f"in cases.jsonl, the summary covers the {len(cases)} selected case(s)", file=sys.stderr)
        note = _non_finite_note(mine)
        if note:
            print(f"editbench: {note}", file=sys.stderr)
        summary = {
            "config": resolved,
            "versions": code_versions,  # of this invocation; record_code: of the records summarised
            "record_code": record_code_counts(mine, previous_versions),
            "model": executor.model_provenance(work, lm),
            "model_numel": sum(p.numel() for p in lm.model.parameters()),
            "method_class": local.method.effective_class,
            "data": data,
            "wall_seconds_this_invocation": round(time.time() - t0, 2),
            "batch_size_used": local.batch_sizes_used or [local.evaluator.batch_size],
            **local.evaluator.summarize(mine),
        }
        return out.write_summary(summary, "run")


def _sequential(out: ResultDir, cfg: RunConfig, cases: list, work: RunWork, local: RunWorker, executor: Executor,
                existing: list[dict], code: dict, code_versions: dict, previous_versions: dict | None, bench,
                data: dict, resolved: dict, progress: bool) -> dict:
    """A ``--sequential`` run (:mod:`editbench.runs.sequential`): its records and summary."""
    from editbench.runs.sequential import SequentialRun, summarize_checkpoints

    t0 = time.time()
    root = getattr(local.evaluator.probe, "data_root", None) or getattr(bench, "_scope_root", lambda: None)()
    run = SequentialRun(out, local, cases, cfg.checkpoints, cfg.edit_batch_size, cfg.strengths[0], cfg.seed, code,
                        data_root=root, progress=progress, chunk_size=cfg.chunk_size)
    records, health = run.run([r for r in existing if "checkpoint" in r])
    note = _non_finite_note(records)
    if note:
        print(f"editbench: {note}", file=sys.stderr)
    checkpoints = summarize_checkpoints(records, health)
    last = [r for r in records if r["checkpoint"] == cfg.checkpoints[-1]]
    single = local.evaluator.summarize(last)  # the final model on every case: the "points" view of the run
    final_kl = (checkpoints.get(str(cfg.checkpoints[-1])) or {}).get("neutral_kl")
    if final_kl is not None:  # the model's health, once per state: the report's health check reads it here
        single["pre"]["neutral_kl"] = {"mean": 0.0, "n": 1, "ci95": [0.0, 0.0], "std": 0.0}
        for p in single["points"].values():
            p["post"]["neutral_kl"] = {**final_kl, "ci95": [final_kl["mean"]] * 2, "std": 0.0}
    summary = {
        "config": resolved, "versions": code_versions, "record_code": record_code_counts(records, previous_versions),
        "model": executor.model_provenance(work, lm := local.lm), "model_numel": sum(p.numel() for p in lm.model.parameters()),
        "method_class": local.method.effective_class, "data": data,
        "wall_seconds_this_invocation": round(time.time() - t0, 2),
        "protocol": {"sequential": True, "edit_batch_size": cfg.edit_batch_size, "checkpoints": cfg.checkpoints,
                     "composition": local.method.composition},
        **single, "checkpoints": checkpoints,
    }
    return out.write_summary(summary, "run")


# ---------------------------------------------------------------------------------------------
def _fmt(agg: dict | None) -> str:
    if not agg or agg.get("mean") is None:
        return "-"
    lo, hi = agg["ci95"]
    return f"{agg['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def format_table(summary: dict) -> str:
    """Markdown table: metric rows, a pre-edit column and one post-edit column per strength."""
    points = summary["points"]
    cols = ["pre"] + [f"post s={float(s):g}" for s in points]
    metrics = list(summary["pre"])
    for p in points.values():
        metrics += [m for m in p["post"] if m not in metrics]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m in metrics:
        cells = [_fmt(summary["pre"].get(m))] + [_fmt(p["post"].get(m)) for p in points.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    pre_s = next(iter(points.values()))["seconds_per_case"]["pre_eval"]
    secs = [f"{p['seconds_per_case']['fit'] + p['seconds_per_case']['eval']:.3f}" for p in points.values()]
    lines.append(f"| seconds/case (pre: eval; post: fit+eval, 0 when reused) | {pre_s:.3f} | " + " | ".join(secs) + " |")
    return "\n".join(lines)


def format_grid_table(runs: list[tuple[dict, dict]], metrics: tuple[str, ...] = ("efficacy", "generalization",
                                                                               "specificity", "score")) -> str:
    """One row per (grid point, strength): the headline metrics with 95% CIs, unedited first."""
    first = runs[0][1]
    present = [m for m in metrics if m in first["pre"]]
    lines = ["| config | strength | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present),
             "| unedited (pre-edit) | - | " + " | ".join(_fmt(first["pre"].get(m)) for m in present) + " |"]
    for point, summary in runs:
        cfg = ", ".join(f"{k}={v}" for k, v in point.items()) or "default"
        for s, p in summary["points"].items():
            lines.append(f"| {cfg} | {float(s):g} | " + " | ".join(_fmt(p["post"].get(m)) for m in present) + " |")
    return "\n".join(lines)


def format_checkpoints(summary: dict, metrics: tuple[str, ...] = ("efficacy", "generalization", "specificity",
                                                                   "score", "ee_rewrite_acc", "ee_locality")) -> str:
    """A sequential run's retention table: one row per checkpoint (edits in force), its cases'
    metrics with 95% CIs and the model's neutral_kl."""
    cps = summary.get("checkpoints") or {}
    first = next(iter(cps.values()), {})
    present = [m for m in metrics if m in first]
    lines = ["| edits | cases | " + " | ".join(present) + " | neutral_kl |", "|---|---|" + "---|" * (len(present) + 1)]
    for T, agg in cps.items():
        kl = (agg.get("neutral_kl") or {}).get("mean")
        lines.append(f"| {T} | {agg.get('n_cases')} | " + " | ".join(_fmt(agg.get(m)) for m in present)
                     + f" | {'-' if kl is None else f'{kl:.3g}'} |")
    return "\n".join(lines)
