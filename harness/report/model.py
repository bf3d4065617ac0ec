"""What the report reads: run and sweep directories, loaded into :class:`Run` and :class:`Sweep`.

The leaderboard (:mod:`.leaderboard`), ``compare`` and the renderers work on these objects and on
the helpers here (protocols, metric order and direction, aggregates), never on files. All file
access of the report goes through :mod:`editbench.results` (section "Reading results files"). A metric's order and direction come from
:mod:`editbench.evaluation.metric_registry` and from the summary itself (``metric_directions``, a
sweep's ``track``), never from importing benchmark plugins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from editbench.dtypes import DTYPE_ALIASES
from editbench.errors import EditbenchError
from editbench.evaluation import metric_registry
from editbench.evaluation.tradeoff import DEFAULT_BASELINE
from editbench.report.health import is_flagged
from editbench import results

MISSING = "—"
# The original model: its run is the tables' reference row, its sweep points the "original model".
REFERENCE_METHOD = "unedited"
# what else must match for two sweeps to share a section (the sweep's own resume check, minus model/dtype)
SWEEP_SETTINGS = ("benchmark_options", "limit", "probe_limit", "utility", "utility_edits", "seed")


def is_reference(method: str) -> bool:
    return method == REFERENCE_METHOD


def as_number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# =============================================================================================
# Reading results files: through the results layer (editbench.results)
# =============================================================================================
def load_summary(run_dir: str | Path) -> dict:
    """A run's summary.json, validated by the results layer so that reporting cannot fail halfway."""
    return results.load_summary(run_dir, expect="run").data


def read_cases(run_dir: str | Path) -> list[dict]:
    """Per-case records of a run (plain or gzipped), read-only; malformed lines are skipped, and so
    are records of the wrong shape (post not a mapping, a strength that is not a number, ...)."""
    def usable(r: dict) -> bool:
        return (isinstance(r.get("post"), dict) and as_number(r.get("strength", 0.0)) is not None
                and all(isinstance(r.get(k, {}), dict) for k in ("pre", "request", "prompts")))

    return [r for r in results.read_jsonl(Path(run_dir) / "cases.jsonl", strict=False) if usable(r)]


def load_sweep(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """A sweep's summary.json and points.jsonl, validated enough that reporting cannot fail halfway."""
    sw = results.load_summary(sweep_dir, expect="sweep")
    points = sw.points()
    return sw.data, points


def find_results(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path], list[str]]:
    """Run and sweep directories named directly (they must be valid), or found recursively under
    parent directories (any directory holding a run or sweep summary.json), and notes on what was skipped."""
    if not inputs:
        raise EditbenchError("no results directories given")
    dirs: list[Path] = []
    sweep_dirs: list[Path] = []
    skipped: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise EditbenchError(f"results directory {p} does not exist")
        if p.is_file():
            if p.name == "summary.json":
                p = p.parent
            else:
                raise EditbenchError(f"{p} is a file; give a run directory or a directory of runs")
        if (p / "summary.json").is_file():  # a directly named run or sweep must be valid
            kind = results.load_summary(p, expect=("run", "sweep")).kind
            if kind == "sweep":
                load_sweep(p)
                sweep_dirs.append(p)
            else:
                dirs.append(p)
            continue
        for d in sorted(s.parent for s in p.rglob("summary.json")):
            try:
                kind = results.load_summary(d).kind
            except EditbenchError as e:
                skipped.append(f"{d}: {e}")
                continue
            if kind == "run":
                dirs.append(d)
            elif kind == "sweep":
                sweep_dirs.append(d)
            else:
                skipped.append(f"{d}: neither a run summary (no per-strength points) nor a sweep summary")
        for c in sorted(c.parent for c in p.rglob("config.json")):
            if not (c / "summary.json").exists() and ((c / "cases.jsonl").exists() or (c / "points.jsonl").exists()):
                what = "run" if (c / "cases.jsonl").exists() else "sweep"
                skipped.append(f"{c}: no summary.json yet ({what} in progress or interrupted)")
    return dirs, sweep_dirs, skipped


def same_dir(d: Path) -> Path:
    """The key under which a directory named twice (or by two paths) is reported once."""
    return d.resolve()


def newer_than_summary(d: Path, name: str) -> bool:
    """Whether the records file ``name`` changed after the directory's summary.json was written."""
    records, summ = d / name, d / "summary.json"
    return records.is_file() and records.stat().st_mtime > summ.stat().st_mtime + 1


def items_file(sweep_dir: Path) -> str:
    """The name of a sweep's per-item records file (committed sweeps keep it gzipped)."""
    return next((n for n in ("items.jsonl", "items.jsonl.gz") if (sweep_dir / n).exists()), "items.jsonl")


# =============================================================================================
# Runs and sweeps
# =============================================================================================
def code_version_label(v: dict) -> str:
    commit = str(v.get("git_commit") or "unknown")
    short = commit[:7] if re.fullmatch(r"[0-9a-f]{7,40}", commit) else commit
    return short + ("+dirty" if v.get("git_dirty") else "")


@dataclass
class Run:
    """One run directory as the report sees it."""

    rid: str
    path: Path
    summary: dict

    @property
    def config(self) -> dict:
        return self.summary.get("config") or {}

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def params(self) -> dict:
        return dict(self.config.get("method_params") or {})

    @property
    def benchmark(self) -> str:
        return str((self.summary.get("data") or {}).get("benchmark") or self.config.get("benchmark", "?"))

    @property
    def split(self) -> str:
        return str((self.summary.get("data") or {}).get("split") or self.config.get("split", "?"))

    @property
    def model_id(self) -> str:
        return str((self.summary.get("model") or {}).get("model_id") or self.config.get("model", "?"))

    @property
    def weights_sha(self) -> str:
        return str((self.summary.get("model") or {}).get("weights_sha256") or "unknown")

    @property
    def dtype(self) -> str:
        """Canonical dtype name (``fp32`` and ``float32`` are the same protocol)."""
        raw = str(self.config.get("dtype") or (self.summary.get("model") or {}).get("dtype") or "?")
        return DTYPE_ALIASES.get(raw.lower().removeprefix("torch."), raw)

    @property
    def data_hashes(self) -> tuple[tuple[str, str], ...]:
        """Data files by base name: the same file under another data root is the same protocol."""
        files = (self.summary.get("data") or {}).get("files") or {}
        return tuple(sorted((Path(k).name, str(v)) for k, v in files.items()))

    @property
    def n_cases(self) -> int | None:
        return self.summary.get("n_cases")

    @property
    def code_version(self) -> str:
        """The code that produced the records (several when a resume spanned commits); older
        summaries without ``record_code`` fall back to the versions of their last invocation."""
        rc = self.summary.get("record_code")
        if rc:
            return ", ".join(sorted({code_version_label(c) for c in rc}))
        return code_version_label(self.summary.get("versions") or {})

    def strengths(self) -> list[str]:
        return sorted(self.summary["points"], key=float)

    def post(self, key: str) -> dict:
        return self.summary["points"][key].get("post") or {}

    def pre(self) -> dict:
        return self.summary.get("pre") or {}


def _data_files(d: Any) -> dict[str, str]:
    """Every ``{path: sha256}`` in a sweep's (nested) data provenance."""
    out: dict[str, str] = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if isinstance(v, dict):
            out.update(_data_files(v))
        elif isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
            out[k] = v
    return out


@dataclass
class Sweep(Run):
    """One sweep directory: its summary and its points (one per configuration, strength and split)."""

    points: list[dict] = field(default_factory=list)

    @property
    def benchmark(self) -> str:
        return str(self.config.get("benchmark", "?"))

    @property
    def split(self) -> str:
        return "val/test"

    @property
    def track(self) -> dict:
        return self.config["track"]

    @property
    def analysis(self) -> dict:
        return self.summary.get("analysis") or {}

    @property
    def baseline(self) -> str:
        return str(self.analysis.get("baseline") or self.config.get("baseline") or DEFAULT_BASELINE)

    @property
    def data_files(self) -> dict[str, str]:
        return _data_files(self.summary.get("data"))

    @property
    def data_hashes(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((Path(k).name, v) for k, v in self.data_files.items()))

    def protocol(self) -> dict:
        return {**protocol_of(self), "settings": {k: self.config.get(k) for k in SWEEP_SETTINGS}}


def discover(inputs: Sequence[str | Path]) -> tuple[list[Run], list[Sweep], list[str]]:
    """Runs and sweeps under ``inputs`` (see :func:`find_results`), each loaded once, and
    human-readable notes on what was skipped."""
    dirs, sweep_dirs, skipped = find_results(inputs)
    seen, runs, sweeps = set(), [], []
    for d in dirs:
        if same_dir(d) in seen:
            continue
        seen.add(same_dir(d))
        try:
            summary = load_summary(d)
        except EditbenchError as e:
            skipped.append(str(e))
            continue
        runs.append(Run(f"R{len(runs) + 1}", d, summary))
    for d in sweep_dirs:
        if same_dir(d) in seen:
            continue
        seen.add(same_dir(d))
        try:
            summary, points = load_sweep(d)
        except EditbenchError as e:
            skipped.append(str(e))
            continue
        sweeps.append(Sweep(f"S{len(sweeps) + 1}", d, summary, points))
    if not runs and not sweeps:
        raise EditbenchError(f"no run or sweep summaries found under {', '.join(map(str, inputs))}")
    return runs, sweeps, skipped


# =============================================================================================
# Metrics, protocols and directions
# =============================================================================================
def run_metrics(run: Run) -> list[str]:
    names: set[str] = set(run.pre())
    for s in run.strengths():
        names |= set(run.post(s))
    return metric_registry.order(names)


def direction_overrides(summary: dict) -> dict[str, str]:
    """``{metric: "higher"|"lower"}`` stated by a summary itself: a sweep's ``track`` (the attribute's
    direction, also under the name ``attribute``) and an optional ``metric_directions`` mapping,
    which wins. Metrics named in neither go by :mod:`editbench.evaluation.metric_registry`."""
    out: dict[str, str] = {}
    track = (summary.get("config") or {}).get("track")
    hib = track.get("higher_is_better") if isinstance(track, dict) else None
    if not isinstance(hib, bool):
        hib = (summary.get("analysis") or {}).get("higher_is_better")
    if isinstance(hib, bool):
        out["attribute"] = "higher" if hib else "lower"
        if isinstance(track, dict) and track.get("attribute"):
            out[str(track["attribute"])] = out["attribute"]
    md = summary.get("metric_directions")
    if isinstance(md, dict):
        out.update({str(m): str(d) for m, d in md.items()})
    return out


def protocol_of(run: Run) -> dict:
    """What must be equal for two runs' numbers to share a column."""
    return {"benchmark": run.benchmark, "split": run.split, "model": run.model_id,
            "weights_sha256": run.weights_sha, "data_sha256": dict(run.data_hashes), "dtype": run.dtype,
            # `run --cases`: another population of cases, whose unedited reference differs
            "cases": str(run.config.get("cases") or "all"),
            # many edits in one model (`run --sequential` / `--edit-batch-size`): another protocol
            "edits": edits_protocol(run.config)}


def edits_protocol(config: dict) -> str:
    """``single``, ``batch of B`` or ``sequential, batches of B`` (the many-edit protocol of a run)."""
    b = config.get("edit_batch_size") or 1
    if config.get("sequential"):
        return f"sequential, {b} edit(s) at a time"
    return "single edit" if b == 1 else f"batches of {b} edits"


PROTOCOL_LABELS = {"benchmark": "benchmark", "split": "benchmark split", "model": "model",
                   "weights_sha256": "model weights sha256", "data_sha256": "data file sha256",
                   "dtype": "dtype", "cases": "case selection", "edits": "editing protocol",
                   "settings": "sweep settings"}


def protocol_diff(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two protocols (empty if they match)."""
    out = []
    for k, label in PROTOCOL_LABELS.items():
        if a.get(k) != b.get(k):
            va, vb = a.get(k), b.get(k)
            if k == "settings":
                out.append(f"{label} (" + "; ".join(f"{n} {va.get(n)} vs {vb.get(n)}" for n in va
                                                     if va.get(n) != vb.get(n)) + ")")
            elif k == "data_sha256":
                names = sorted(set(va) | set(vb))
                parts = [f"{n} {short(va.get(n))} vs {short(vb.get(n))}" for n in names if va.get(n) != vb.get(n)]
                out.append(f"{label} ({'; '.join(parts)})")
            elif k == "weights_sha256":
                out.append(f"{label} ({short(va)} vs {short(vb)})")
            else:
                out.append(f"{label} ({va} vs {vb})")
    return out


def short(h: Any) -> str:
    """A hash as tables show it."""
    return "absent" if h is None else str(h)[:12]


def pareto_text(v: bool | None) -> str:
    return MISSING if v is None else "*" if v else ""


def pareto_cell(row: dict) -> str:
    """A sweep row's Pareto mark; a flagged row (see :mod:`.health`) on the front is not highlighted."""
    if row.get("pareto") and is_flagged(row):
        return "flagged"
    return pareto_text(row.get("pareto"))


def normalize_agg(a: Any) -> dict | None:
    """An aggregate as the renderers expect it; anything malformed counts as not reported."""
    if not isinstance(a, dict) or as_number(a.get("mean")) is None:
        return None
    ci = [as_number(x) for x in (list(a.get("ci95") or []) + [None, None])[:2]]
    if None in ci:
        ci = [None, None]
    return {"mean": float(a["mean"]), "ci95": ci, "std": a.get("std"), "n": a.get("n")}


#: the columns of a sequential run's retention table and figure (neutral_kl: one number per checkpoint)
RETENTION_METRICS = ("efficacy", "generalization", "specificity", "score", "ee_rewrite_acc", "ee_locality")


def retention_of(runs: Sequence[Run]) -> list[dict]:
    """Per sequential run (``summary["checkpoints"]``): its checkpoints in edit order, each with the
    aggregates over the first T cases after T edits."""
    out = []
    for r in runs:
        cps = r.summary.get("checkpoints")
        if not isinstance(cps, dict) or not cps:
            continue
        proto = r.summary.get("protocol") if isinstance(r.summary.get("protocol"), dict) else {}
        rows = []
        for T, agg in sorted(cps.items(), key=lambda kv: _int(kv[0])):
            if not isinstance(agg, dict) or _int(T) < 1:
                continue
            rows.append({"edits": _int(T), "n_cases": agg.get("n_cases"),
                         "metrics": {m: normalize_agg(agg.get(m)) for m in (*RETENTION_METRICS, "neutral_kl")}})
        out.append({"run": r.rid, "method": r.method, "composition": proto.get("composition"),
                    "edit_batch_size": proto.get("edit_batch_size", 1), "checkpoints": rows})
    return out


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def retention_cells(retention: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of plain-text cells for a retention table (escaped by each renderer)."""
    def cell(a: dict | None, digits: str = ".1f") -> str:
        if a is None or a.get("mean") is None:
            return MISSING
        lo, hi = (a.get("ci95") or [None, None])[:2]
        return f"{a['mean']:{digits}}" + ("" if lo is None else f" [{lo:{digits}}, {hi:{digits}}]")

    header = ["method", "run", "edits", "cases", *RETENTION_METRICS, "neutral_kl"]
    rows = [[ret["method"], ret["run"], str(c["edits"]), str(c["n_cases"]),
             *(cell(c["metrics"][m]) for m in RETENTION_METRICS), cell(c["metrics"]["neutral_kl"], ".3g")]
            for ret in retention for c in ret["checkpoints"]]
    return header, rows
