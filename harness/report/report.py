"""Leaderboards from run directories: ``leaderboard.md``, ``leaderboard.json`` and ``index.html``.

Nothing here knows a benchmark's metric list: columns are the union of the metrics the runs'
summaries report, ordered by a preference list, so a new benchmark (e.g. one reporting
``attribute`` and ``utility``) is reported by the same code. Runs are grouped by *protocol*
(benchmark, split, model id and weights hash, data file hashes, dtype); runs that differ in any
of these never share a table, and a metric a run does not report is shown as "—" with a note.
Attribute-utility sweep directories (``editbench sweep``: summary.json with ``config.methods`` and
``config.track``, points.jsonl) get their own sections, never merged with run tables: per sweep a
table per split (test, then val), the matched-utility headline (chosen on val, reported on test),
hypervolumes and the trade-off figure. The analysis is read from the sweep's summary.json, not redone.
The HTML is self-contained (inline CSS/JS, figures as base64 PNG), so it can be archived or
opened offline.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from editbench.errors import EditbenchError
from editbench.report.figures import save_figure
from editbench.evaluation.tradeoff import varying_params

MISSING = "—"

# Presentation order for known metric names; unknown metrics follow alphabetically.
METRIC_ORDER = (
    "score", "efficacy", "generalization", "specificity", "fluency", "attribute", "utility",
    "efficacy_magnitude", "generalization_magnitude", "specificity_magnitude",
    "ee_rewrite_acc", "ee_rephrase_acc", "ee_locality", "ft_acc", "ft_gen", "ft_spec", "doubt_1", "doubt_2",
)
# Metrics shown in the headline table when a group reports any of them (the rest go to a second
# table); a summary may override this with a top-level "headline_metrics" list.
HEADLINE_HINTS = ("score", "efficacy", "generalization", "specificity", "fluency", "attribute", "utility")
# (x, y) trade-off figures drawn when a group reports both metrics: edit success vs locality.
TRADEOFF_HINTS = (("specificity", "efficacy"), ("specificity", "generalization"), ("utility", "attribute"))
# Per-case metric that ranks the drill-down (lowest first for higher-is-better metrics).
DRILLDOWN_HINTS = ("efficacy_magnitude", "efficacy", "attribute", "utility")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EditbenchError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EditbenchError(f"{path} is not valid JSON ({e})") from None


def is_run_summary(summary: Any) -> bool:
    """A run summary (as written by ``editbench run``) has per-strength ``points``; other tools
    (e.g. ``editbench attribute``) also write a summary.json, which is not a leaderboard entry."""
    return isinstance(summary, dict) and isinstance(summary.get("points"), dict) and bool(summary["points"])


def load_summary(run_dir: str | Path) -> dict:
    """The run's summary.json, validated enough that reporting cannot fail halfway."""
    p = Path(run_dir)
    if not p.exists():
        raise EditbenchError(f"run directory {p} does not exist")
    if not p.is_dir():
        raise EditbenchError(f"{p} is not a directory")
    sp = p / "summary.json"
    if not sp.is_file():
        hint = " (run still in progress or interrupted?)" if (p / "config.json").is_file() else ""
        raise EditbenchError(f"{p} has no summary.json{hint}")
    summary = _read_json(sp)
    if not is_run_summary(summary):
        raise EditbenchError(f"{sp} is not an editbench run summary (no per-strength 'points')")
    for key, point in summary["points"].items():
        if not isinstance(point, dict) or not isinstance(point.get("post"), dict):
            raise EditbenchError(f"{sp}: point {key!r} has no 'post' metrics")
        try:
            float(key)
        except ValueError:
            raise EditbenchError(f"{sp}: point key {key!r} is not a strength") from None
    return summary


def _read_jsonl(path: Path, strict: bool = False) -> list:
    """JSON lines, read-only: an unfinished last line (a file being written right now) is skipped,
    never cut off the file as the resuming reader does; other bad lines are skipped, or raise if strict."""
    out = []
    try:
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break
                try:
                    out.append(json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if strict:
                        raise EditbenchError(f"{path}: line {i} is not valid JSON") from None
    except OSError as e:
        raise EditbenchError(f"cannot read {path}: {e.strerror or e}") from None
    return out


def read_cases(run_dir: str | Path) -> list[dict]:
    """Per-case records of a run (see :func:`_read_jsonl`)."""
    p = Path(run_dir) / "cases.jsonl"
    return _read_jsonl(p) if p.is_file() else []


def is_sweep_summary(summary: Any) -> bool:
    """A sweep summary (``editbench sweep``) has a config with a ``methods`` list and a ``track``."""
    cfg = summary.get("config") if isinstance(summary, dict) else None
    return isinstance(cfg, dict) and isinstance(cfg.get("methods"), list) and isinstance(cfg.get("track"), dict)


def load_sweep(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """A sweep's summary.json and points.jsonl, validated enough that reporting cannot fail halfway."""
    p = Path(sweep_dir)
    summary = _read_json(p / "summary.json")
    if not is_sweep_summary(summary):
        raise EditbenchError(f"{p / 'summary.json'} is not an editbench sweep summary (no config 'methods'/'track')")
    if not isinstance(summary.get("analysis") or {}, dict):
        raise EditbenchError(f"{p / 'summary.json'}: 'analysis' is not a mapping")
    pp = p / "points.jsonl"
    if not pp.is_file():
        raise EditbenchError(f"sweep {p} has no points.jsonl")
    points = _read_jsonl(pp, strict=True)
    for i, q in enumerate(points, 1):
        if not (isinstance(q, dict) and isinstance(q.get("method"), str) and isinstance(q.get("params"), dict)
                and _num(q.get("strength")) is not None and q.get("split") in ("val", "test")):
            raise EditbenchError(f"{pp}: line {i} is not a sweep point (needs method, params, strength, "
                                 "split val/test)")
    if not points:
        raise EditbenchError(f"{pp} holds no points")
    return summary, points


def _code_version(v: dict) -> str:
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
        return str(self.config.get("dtype") or (self.summary.get("model") or {}).get("dtype") or "?")

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
            return ", ".join(sorted({_code_version(c) for c in rc}))
        return _code_version(self.summary.get("versions") or {})

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


# what else must match for two sweeps to share a section (the sweep's own resume check, minus model/dtype)
SWEEP_SETTINGS = ("benchmark_options", "limit", "probe_limit", "utility", "utility_edits", "seed")


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
    def data_files(self) -> dict[str, str]:
        return _data_files(self.summary.get("data"))

    @property
    def data_hashes(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((Path(k).name, v) for k, v in self.data_files.items()))

    def protocol(self) -> dict:
        return {**protocol_of(self), "settings": {k: self.config.get(k) for k in SWEEP_SETTINGS}}


def discover(inputs: Sequence[str | Path]) -> tuple[list[Run], list[Sweep], list[str]]:
    """Runs and sweeps named directly, or found recursively under parent directories (any directory
    holding a run or sweep summary.json). Returns them and human-readable notes on what was skipped."""
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
            if is_sweep_summary(_read_json(p / "summary.json")):
                load_sweep(p)
                sweep_dirs.append(p)
            else:
                load_summary(p)
                dirs.append(p)
            continue
        found = sorted(s.parent for s in p.rglob("summary.json"))
        for d in found:
            try:
                s = _read_json(d / "summary.json")
            except EditbenchError as e:
                skipped.append(f"{d}: {e}")
                continue
            if is_run_summary(s):
                dirs.append(d)
            elif is_sweep_summary(s):
                sweep_dirs.append(d)
            else:
                skipped.append(f"{d}: neither a run summary (no per-strength points) nor a sweep summary")
        for c in sorted(c.parent for c in p.rglob("config.json")):
            if not (c / "summary.json").exists() and ((c / "cases.jsonl").exists() or (c / "points.jsonl").exists()):
                what = "run" if (c / "cases.jsonl").exists() else "sweep"
                skipped.append(f"{c}: no summary.json yet ({what} in progress or interrupted)")
    seen, runs, sweeps = set(), [], []
    for d in dirs:
        key = d.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            summary = load_summary(d)
        except EditbenchError as e:
            skipped.append(str(e))
            continue
        runs.append(Run(f"R{len(runs) + 1}", d, summary))
    for d in sweep_dirs:
        if d.resolve() in seen:
            continue
        seen.add(d.resolve())
        try:
            summary, points = load_sweep(d)
        except EditbenchError as e:
            skipped.append(str(e))
            continue
        sweeps.append(Sweep(f"S{len(sweeps) + 1}", d, summary, points))
    if not runs and not sweeps:
        raise EditbenchError(f"no run or sweep summaries found under {', '.join(map(str, inputs))}")
    return runs, sweeps, skipped


# ---------------------------------------------------------------------------------------------
# Metrics, protocols and directions
# ---------------------------------------------------------------------------------------------
def order_metrics(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(names - set(known))


def run_metrics(run: Run) -> list[str]:
    names: set[str] = set(run.pre())
    for s in run.strengths():
        names |= set(run.post(s))
    return order_metrics(names)


def protocol_of(run: Run) -> dict:
    """What must be equal for two runs' numbers to share a column."""
    return {"benchmark": run.benchmark, "split": run.split, "model": run.model_id,
            "weights_sha256": run.weights_sha, "data_sha256": dict(run.data_hashes), "dtype": run.dtype}


PROTOCOL_LABELS = {"benchmark": "benchmark", "split": "benchmark split", "model": "model",
                   "weights_sha256": "model weights sha256", "data_sha256": "data file sha256",
                   "dtype": "dtype", "settings": "sweep settings"}


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
                parts = [f"{n} {_short(va.get(n))} vs {_short(vb.get(n))}" for n in names if va.get(n) != vb.get(n)]
                out.append(f"{label} ({'; '.join(parts)})")
            elif k == "weights_sha256":
                out.append(f"{label} ({_short(va)} vs {_short(vb)})")
            else:
                out.append(f"{label} ({va} vs {vb})")
    return out


def _short(h: Any) -> str:
    return "absent" if h is None else str(h)[:12]


@lru_cache(maxsize=None)
def _benchmark_class(name: str) -> Any:
    try:
        from editbench.plugins import registry

        return registry.load("benchmark", name)
    except Exception:  # noqa: BLE001 - reporting must work without the plugin installed
        return None


def metric_directions(summary: dict) -> dict[str, bool]:
    """``{metric: higher_is_better}`` for metrics whose direction is not "higher is better".

    Read from the summary's optional ``metric_directions`` (``{"metric": "lower"|"higher"}``) and
    from the benchmark plugin's ``attribute`` / ``higher_is_better`` / ``lower_is_better`` class
    attributes when it is installed. Everything else is higher-is-better (all CounterFact metrics).
    """
    out: dict[str, bool] = {}
    bench = (summary.get("data") or {}).get("benchmark") or (summary.get("config") or {}).get("benchmark")
    if bench:
        cls = _benchmark_class(str(bench))
        if cls is not None:
            attr = getattr(cls, "attribute", "")
            if attr and isinstance(getattr(cls, "higher_is_better", True), bool):
                out[attr] = out["attribute"] = bool(getattr(cls, "higher_is_better", True))
            for m in getattr(cls, "lower_is_better", ()) or ():
                out[str(m)] = False
    for m, d in (summary.get("metric_directions") or {}).items():
        out[str(m)] = str(d).lower() not in ("lower", "min", "false", "down")
    return out


# ---------------------------------------------------------------------------------------------
# Leaderboard model (what leaderboard.json holds; the renderers only format it)
# ---------------------------------------------------------------------------------------------
def _method_defaults(method: str) -> dict | None:
    """Default hyperparameters of an installed method plugin, so the config column can show only
    what a run changed; None when the plugin is not importable here."""
    try:
        import dataclasses

        from editbench.plugins import registry

        cls = registry.load("method", method)
        return json.loads(json.dumps(dataclasses.asdict(cls.Params()), default=str))
    except Exception:  # noqa: BLE001 - fall back to listing every parameter
        return None


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str) and ("/" in v or "\\" in v):
        return Path(v).name or v  # file paths: the name is what tells runs apart
    return str(v)


def config_label(params: dict, defaults: dict | None, strength: str | None) -> str:
    """``s=1; mode=contrast``: strength plus the params that differ from the plugin defaults."""
    shown = {k: v for k, v in params.items() if defaults is None or defaults.get(k, object()) != v}
    parts = [] if strength is None else [f"s={float(strength):g}"]
    parts += [f"{k}={_fmt_value(v)}" for k, v in sorted(shown.items())]
    return "; ".join(parts) or "defaults"


def normalize_agg(a: Any) -> dict | None:
    """An aggregate as the renderers expect it; anything malformed counts as not reported."""
    if not isinstance(a, dict) or _num(a.get("mean")) is None:
        return None
    ci = [_num(x) for x in (list(a.get("ci95") or []) + [None, None])[:2]]
    if None in ci:
        ci = [None, None]
    return {"mean": float(a["mean"]), "ci95": ci, "std": a.get("std"), "n": a.get("n")}


@dataclass
class Group:
    """Runs sharing a protocol: one table."""

    protocol: dict
    runs: list[Run] = field(default_factory=list)
    title: str = ""
    notes: list[str] = field(default_factory=list)


def group_runs(runs: Sequence[Run], sweeps: bool = False) -> list[Group]:
    """Runs (or sweeps) by protocol, titled ``benchmark / split — model`` (``benchmark sweep — model``);
    protocols sharing a title are lettered and say how they differ."""
    groups: dict[str, Group] = {}
    for r in runs:
        proto = r.protocol() if sweeps else protocol_of(r)
        key = json.dumps(proto, sort_keys=True)
        groups.setdefault(key, Group(proto)).runs.append(r)
    out = sorted(groups.values(), key=lambda g: (g.protocol["benchmark"], g.protocol["split"], g.protocol["model"],
                                                 g.runs[0].rid))
    by_label: dict[tuple, list[Group]] = {}
    for g in out:
        by_label.setdefault((g.protocol["benchmark"], g.protocol["split"], g.protocol["model"]), []).append(g)
    for (bench, split, model), gs in by_label.items():
        for i, g in enumerate(gs):
            g.title = f"{bench} sweep — {model}" if sweeps else f"{bench} / {split} — {model}"
            if len(gs) > 1:
                g.title += f" (protocol {chr(ord('A') + i)})"
                for j, other in enumerate(gs):
                    if other is not g:
                        g.notes.append(f"Not merged with protocol {chr(ord('A') + j)}: different "
                                       + ", ".join(protocol_diff(g.protocol, other.protocol)) + ".")
    return out


def _pre_fingerprint(run: Run) -> str:
    return json.dumps({m: (a or {}).get("mean") for m, a in sorted(run.pre().items())})


def build_group(g: Group, defaults_cache: dict[str, dict | None]) -> dict:
    """Rows (one per run and strength, plus the unedited reference) and columns of one table."""
    metrics = order_metrics(m for r in g.runs for m in run_metrics(r))
    hint = next((r.summary["headline_metrics"] for r in g.runs if isinstance(r.summary.get("headline_metrics"), list)),
                None)
    headline = [m for m in (hint or HEADLINE_HINTS) if m in metrics] or list(metrics)
    rows: list[dict] = []
    # unedited reference: each distinct set of pre-edit numbers once (runs on the same cases agree)
    # (an `unedited` run's own row already is that reference)
    seen_pre = {_pre_fingerprint(r) for r in g.runs if r.method == "unedited"}
    for r in sorted(g.runs, key=lambda r: (-(r.n_cases or 0), r.rid)):
        if not r.pre():
            continue
        fp = _pre_fingerprint(r)
        if fp in seen_pre:
            continue
        seen_pre.add(fp)
        rows.append({"run": r.rid, "method": "unedited (pre-edit)", "config": f"pre-edit of {r.rid}",
                     "strength": None, "params": {}, "kind": "pre", "n": r.n_cases, "code": r.code_version,
                     "metrics": {m: normalize_agg(r.pre().get(m)) for m in metrics}})
    for r in sorted(g.runs, key=lambda r: (r.method != "unedited", r.method,
                                           json.dumps(r.params, sort_keys=True, default=str), r.rid)):
        if r.method not in defaults_cache:
            defaults_cache[r.method] = _method_defaults(r.method)
        ref = r.method == "unedited"
        for s in r.strengths():
            rows.append({"run": r.rid, "method": r.method, "strength": float(s), "params": r.params,
                         "kind": "reference" if ref else "post",
                         "config": "no edit" if ref else config_label(r.params, defaults_cache[r.method], s),
                         "n": r.n_cases,
                         "code": r.code_version,
                         "metrics": {m: normalize_agg(r.post(s).get(m)) for m in metrics}})
    notes = list(g.notes)
    for m in metrics:
        lacking = sorted({row["run"] + (" (pre-edit)" if row["kind"] == "pre" else "")
                          for row in rows if row["metrics"][m] is None})
        if lacking:
            why = " (needs --generation)" if m == "fluency" else (" (defined only after an edit)"
                                                                  if m == "ee_locality" else "")
            notes.append(f"{MISSING} in column `{m}`: not reported by {', '.join(lacking)}{why}.")
    ns = sorted({r.n_cases for r in g.runs if r.n_cases is not None})
    if len(ns) > 1:
        notes.append("Rows cover different numbers of cases (" + ", ".join(
            f"n={n}: {', '.join(r.rid for r in g.runs if r.n_cases == n)}" for n in ns)
            + "); compare them with their CIs in mind.")
    for r in g.runs:
        cases, summ = r.path / "cases.jsonl", r.path / "summary.json"
        if cases.is_file() and cases.stat().st_mtime > summ.stat().st_mtime + 1:
            notes.append(f"{r.rid}: cases.jsonl is newer than summary.json (run resumed or in progress?); "
                         "its numbers may be stale.")
    seeds = sorted({str(r.config.get("seed")) for r in g.runs})
    if len(seeds) > 1:
        notes.append(f"Runs use different seeds ({', '.join(seeds)}).")
    return {"title": g.title, "protocol": g.protocol, "metrics": metrics, "headline": headline,
            "other_metrics": [m for m in metrics if m not in headline], "runs": [r.rid for r in g.runs],
            "rows": rows, "notes": notes}


def provenance(run: Run) -> dict:
    s = run.summary
    return {"run_dir": str(run.path), "method": run.method, "method_params": run.params,
            "strengths": [float(x) for x in run.strengths()], "n_cases": run.n_cases,
            "benchmark": run.benchmark, "split": run.split,
            "data_files": (s.get("data") or {}).get("files") or {}, "model": s.get("model") or {},
            "versions": s.get("versions") or {}, "code_version": run.code_version,
            "record_code": s.get("record_code") or [],
            "wall_seconds_last_invocation": s.get("wall_seconds_this_invocation"), "config": run.config}


def build_sweep(sw: Sweep) -> dict:
    """One sweep: a table per split (test first: that is where results are reported), the
    matched-utility headline, hypervolumes and provenance, all read from the sweep's own files."""
    a, track, cfg = sw.analysis, sw.track, sw.config
    higher = bool(track.get("higher_is_better", True))
    vary = varying_params(sw.points)
    names = {k for q in sw.points for k, v in q.items() if isinstance(v, dict) and "mean" in v}
    metrics = ["attribute", "utility"] + order_metrics(names - {"attribute", "utility"})
    # per-task accuracies stay in leaderboard.json (as in the sweep's analysis.md)
    columns = [m for m in metrics if not m.endswith(("_acc", "_acc_norm"))]
    splits, notes = {}, []
    for split in ("test", "val"):
        info = (a.get("splits") or {}).get(split)
        front = {q.get("key") for q in (info or {}).get("pareto") or []}
        ps = sorted((q for q in sw.points if q["split"] == split),
                    key=lambda q: (q["method"] != "unedited", q["method"], json.dumps(q["params"], sort_keys=True,
                                                                                      default=str), q["strength"]))
        rows = [{"key": q.get("key"), "method": q["method"], "params": q["params"], "strength": float(q["strength"]),
                 "config": "original model" if q["method"] == "unedited" else
                 config_label({k: q["params"].get(k) for k in vary[q["method"]]}, None, q["strength"]),
                 "kind": "reference" if q["method"] == "unedited" else "post",
                 "pareto": None if info is None else q.get("key") in front,
                 "n": (q.get("attribute") or {}).get("n"),
                 "code": _code_version(q.get("code") or sw.summary.get("versions") or {}),
                 "seconds": q.get("seconds"), "metrics": {m: normalize_agg(q.get(m)) for m in metrics}} for q in ps]
        splits[split] = {"rows": rows, "hypervolume": (info or {}).get("hypervolume") or {},
                         "reference_point": (info or {}).get("reference_point")}
        for m in columns:
            lacking = [f"{r['method']} {r['config']}" for r in rows if r["metrics"][m] is None]
            if lacking:
                notes.append(f"{MISSING} in {split} column `{m}`: not reported for {', '.join(lacking)}.")
    if not a.get("splits"):
        notes.append("summary.json has no analysis: no Pareto front, hypervolume or matched-utility gain.")
    if (sw.path / "points.jsonl").stat().st_mtime > (sw.path / "summary.json").stat().st_mtime + 1:
        notes.append("points.jsonl is newer than summary.json (sweep resumed or in progress?); "
                     "the analysis may not cover every point.")
    baseline = str(a.get("baseline") or cfg.get("baseline") or "steering")
    util = cfg.get("utility") or {}
    direction = "higher" if higher else "lower"
    try:
        headline = matched_lines(a.get("matched_utility"), baseline, higher)
        hv = [f"{split}: " + (", ".join(f"{m} {v:.1f}" for m, v in t["hypervolume"].items()) or MISSING)
              + ("" if not t["reference_point"] else " (reference point: utility "
                 f"{t['reference_point']['utility']:.1f}, attribute {t['reference_point']['attribute']:.1f})")
              for split, t in splits.items()]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EditbenchError(f"{sw.path / 'summary.json'}: malformed analysis ({type(e).__name__}: {e})") from None
    return {
        "id": sw.rid, "sweep_dir": str(sw.path), "attribute": track.get("attribute"), "higher_is_better": higher,
        "baseline": baseline,
        "description": f"Attribute `{track.get('attribute', '?')}` ({direction} is better); utility: mean "
                       f"{util.get('metric', '?')} over {', '.join(util.get('tasks') or []) or '?'} "
                       "(higher is better); "
                       f"items per split: {json.dumps(track.get('n_items'))}; points: {len(sw.points)}.",
        "columns": columns, "metrics": metrics, "splits": splits,
        "matched_utility": a.get("matched_utility"), "headline": headline, "hypervolume": hv, "notes": notes,
        "headline_title": f"Attribute gain over `{baseline}` at matched utility (operating point chosen on val, gain "
                          f"reported on test; {direction} is better, so a {'positive' if higher else 'negative'} "
                          "gain is an improvement)",
        "provenance": {"sweep_dir": str(sw.path), "config": cfg, "versions": sw.summary.get("versions") or {},
                       "code_version": sw.code_version, "model": sw.summary.get("model") or {},
                       "data_files": sw.data_files,
                       "items_file": next((n for n in ("items.jsonl", "items.jsonl.gz") if (sw.path / n).exists()),
                                          "items.jsonl")},
    }


def matched_lines(mu: Any, baseline: str, higher: bool) -> list[str]:
    """The headline: per method, the operating point chosen on val and its gain over the baseline on test."""
    if not isinstance(mu, dict):
        return [f"no matched-utility analysis ({MISSING})"]
    if "note" in mu:
        return [str(mu["note"])]
    out = []
    for m, e in mu.items():
        if not isinstance(e, dict) or "note" in e or not isinstance(e.get("operating_point"), dict):
            out.append(f"{m}: {e.get('note') if isinstance(e, dict) else e}")
            continue
        op, gt, gv = e["operating_point"], _num(e.get("gain_test")), _num(e.get("gain_val"))
        test = (f"gain on test {MISSING} (no test point)" if "utility_test" not in e else
                f"gain on test {MISSING} (utility {e['utility_test']:.1f} is outside {baseline}'s range)"
                if gt is None else
                f"gain on test {gt:+.1f} (attribute {e['attribute_test']:.1f} vs {baseline} "
                f"{e['baseline_attribute_test']:.1f} at utility {e['utility_test']:.1f})")
        out.append(f"{m}: operating point {op.get('label')} s={_num(op.get('strength')) or 0:g} (gain on val "
                   + (MISSING if gv is None else f"{gv:+.1f}") + f"); {test}")
    return out


def build_leaderboard(runs: Sequence[Run], skipped: Sequence[str] = (), sweeps: Sequence[Sweep] = ()) -> dict:
    defaults: dict[str, dict | None] = {}
    groups = group_runs(runs)
    return {"format": "editbench-leaderboard/1", "groups": [build_group(g, defaults) for g in groups],
            "runs": {r.rid: provenance(r) for r in runs},
            "sweep_groups": [{"title": g.title, "protocol": g.protocol, "notes": g.notes,
                              "sweeps": [build_sweep(sw) for sw in g.runs]} for g in group_runs(sweeps, sweeps=True)],
            "skipped": list(skipped)}


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def fmt_agg(a: dict | None, n_row: int | None = None) -> str:
    if a is None:
        return MISSING
    lo, hi = a["ci95"]
    txt = f"{a['mean']:.1f}" if lo is None else f"{a['mean']:.1f} [{lo:.1f}, {hi:.1f}]"
    if n_row is not None and a.get("n") not in (None, n_row):
        txt += f" (n={a['n']})"
    return txt


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pareto_text(v: bool | None) -> str:
    return MISSING if v is None else "*" if v else ""


def _md_table(rows: list[dict], metrics: list[str], tail: Sequence[str] = ("n", "code", "run")) -> list[str]:
    head = ["method", "config", *metrics, *tail]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["config"], *[fmt_agg(row["metrics"][m], row["n"]) for m in metrics],
                 *[_pareto_text(row[t]) if t == "pareto" else str(row[t]) for t in tail]]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def _md_protocol(p: dict) -> str:
    settings = "" if "settings" not in p else ", settings `" + json.dumps(p["settings"], sort_keys=True) + "`"
    return (f"Protocol: benchmark `{p['benchmark']}`, split `{p['split']}`, model `{p['model']}` "
            f"(weights sha256 `{_short(p['weights_sha256'])}`), dtype `{p['dtype']}`, data "
            + ", ".join(f"`{k}` sha256 `{_short(v)}`" for k, v in p["data_sha256"].items()) + settings + ".")


def _md_sweeps(board: dict, figures: dict[str, str]) -> list[str]:
    out = []
    for g in board["sweep_groups"]:
        out += [f"## {g['title']}", "", _md_protocol(g["protocol"]), ""]
        out += ["Notes:", ""] + [f"* {n}" for n in g["notes"]] + [""] if g["notes"] else []
        for sw in g["sweeps"]:
            out += [f"### {sw['id']}: `{sw['sweep_dir']}`", "", sw["description"], "", sw["headline_title"] + ":", ""]
            out += [f"* {line}" for line in sw["headline"]] + ["", "Hypervolume with the original model "
                                                                 "(larger is better):", ""]
            out += [f"* {line}" for line in sw["hypervolume"]] + [""]
            for split, t in sw["splits"].items():
                out += [f"#### {split}", ""] + _md_table(t["rows"], sw["columns"], ("pareto", "n", "code")) + [""]
            if sw["id"] in figures:
                out += [f"![trade-off {sw['id']} (test)]({figures[sw['id']]})", ""]
            notes = sw["notes"] + ["Pareto `*`: on the split's Pareto front (all methods); per-task accuracies "
                                   "are in leaderboard.json and the sweep's points.jsonl."]
            out += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    return out


def render_markdown(board: dict, figures: dict[int, list[tuple[str, str]]] | None = None,
                    sweep_figures: dict[str, str] | None = None) -> str:
    """leaderboard.md: per protocol group a headline table and a table of the other metrics; per
    sweep a table per split, the matched-utility headline and hypervolumes."""
    out = ["# editbench leaderboard", "",
           "Cells: mean [95% bootstrap CI] over cases (x100 for rates and probabilities). "
           f"`{MISSING}` = metric not reported by that run. Runs under different protocols "
           "(benchmark split, model weights, data files, dtype) are in separate tables; attribute-utility sweeps "
           "have their own sections, which state their attribute's scale and direction.", ""]
    for gi, g in enumerate(board["groups"]):
        out += [f"## {g['title']}", "", _md_protocol(g["protocol"]), ""]
        out += _md_table(g["rows"], g["headline"]) + [""]
        if g["other_metrics"]:
            out += ["Other metrics:", ""] + _md_table(g["rows"], g["other_metrics"]) + [""]
        for title, rel in (figures or {}).get(gi, []):
            out += [f"![{title}]({rel})", ""]
        if g["notes"]:
            out += ["Notes:", ""] + [f"* {n}" for n in g["notes"]] + [""]
    out += _md_sweeps(board, sweep_figures or {})
    if board["runs"]:
        out += ["## Runs", "", "| run | directory | method | params | n | code | model weights | data sha256 |",
                "|---|---|---|---|---|---|---|---|"]
    for rid, pv in board["runs"].items():
        params = json.dumps(pv["method_params"], sort_keys=True, default=str)
        data = ", ".join(f"{Path(k).name}: {_short(v)}" for k, v in pv["data_files"].items())
        out.append("| " + " | ".join(_md_cell(c) for c in [
            rid, f"`{pv['run_dir']}`", pv["method"], f"`{params}`", str(pv["n_cases"]), pv["code_version"],
            _short(pv["model"].get("weights_sha256")), data]) + " |")
    sweeps = [sw for g in board["sweep_groups"] for sw in g["sweeps"]]
    if sweeps:
        out += ["", "## Sweeps", "", "| sweep | directory | code | versions | model weights | data sha256 |",
                "|---|---|---|---|---|---|"]
    for sw in sweeps:
        pv = sw["provenance"]
        out.append("| " + " | ".join(_md_cell(c) for c in [
            sw["id"], f"`{pv['sweep_dir']}`", pv["code_version"],
            ", ".join(f"{k} {v}" for k, v in pv["versions"].items() if not k.startswith("git_")),
            _short(pv["model"].get("weights_sha256")),
            ", ".join(f"{Path(k).name}: {_short(v)}" for k, v in pv["data_files"].items())]) + " |")
    for sw in sweeps:
        out += ["", f"<details><summary>{sw['id']} config</summary>", "", "```json",
                json.dumps(sw["provenance"]["config"], sort_keys=True, default=str), "```", "", "</details>"]
    if board["skipped"]:
        out += ["", "Skipped:", ""] + [f"* {s}" for s in board["skipped"]]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def tradeoff_pairs(metrics: Sequence[str]) -> list[tuple[str, str]]:
    return [(x, y) for x, y in TRADEOFF_HINTS if x in metrics and y in metrics]


def tradeoff_figure(group: dict, runs: dict[str, Run]) -> tuple[str, bytes, str] | None:
    """One PNG (and SVG) with a panel per trade-off pair: a line per run through its strengths
    (CI error bars), the unedited (pre-edit) point marked with a star."""
    pairs = tradeoff_pairs(group["metrics"])
    if not pairs:
        return None
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    post = [r for r in group["rows"] if r["kind"] == "post"]
    series: dict[str, list[dict]] = {}
    for r in post:
        series.setdefault(r["run"], []).append(r)
    colors = sns.color_palette("colorblind", max(len(series), 1))
    fig = Figure(figsize=(5.2 * len(pairs), 4.2 + 0.22 * ((len(series) + 2) // 3)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (x, y) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), k + 1)
        for i_s, (c, (rid, rows)) in enumerate(zip(colors, series.items())):
            pts = [(r, r["metrics"][x], r["metrics"][y]) for r in rows if r["metrics"][x] and r["metrics"][y]]
            if not pts:
                continue
            pts.sort(key=lambda t: t[0]["strength"])
            xs = [p[1]["mean"] for p in pts]
            ys = [p[2]["mean"] for p in pts]
            label_cfg = re.sub(r"^s=[^;]*;? ?", "", pts[0][0]["config"])
            label = f"{rows[0]['method']} ({rid}{', ' + label_cfg if label_cfg and label_cfg != 'defaults' else ''})"
            if all(p[1]["ci95"][0] is not None and p[2]["ci95"][0] is not None for p in pts):
                xerr = [[p[1]["mean"] - p[1]["ci95"][0] for p in pts], [p[1]["ci95"][1] - p[1]["mean"] for p in pts]]
                yerr = [[p[2]["mean"] - p[2]["ci95"][0] for p in pts], [p[2]["ci95"][1] - p[2]["mean"] for p in pts]]
                ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=c, alpha=0.25, lw=1)
            ax.plot(xs, ys, "-", marker="osD^vPX"[i_s % 7], color=c, label=label, ms=4.5, lw=1.4)
            for p, xv, yv in zip(pts, xs, ys):
                ax.annotate(f"{p[0]['strength']:g}", (xv, yv), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=c)
        pre = [r for r in group["rows"] if r["kind"] in ("pre", "reference") and r["metrics"][x] and r["metrics"][y]]
        for i, r in enumerate(pre):
            px, py = r["metrics"][x]["mean"], r["metrics"][y]["mean"]
            ax.plot([px], [py], marker="*", ms=15, color="black", ls="none", zorder=5,
                    label="unedited" if i == 0 else None)
            if len(pre) > 1:  # several case sets: say which star is which
                ax.annotate(f"{r['run']} n={r['n']}", (px, py), textcoords="offset points", xytext=(6, -10),
                            fontsize=7)
        ax.set_xlabel(f"{x} (x100)")
        ax.set_ylabel(f"{y} (x100)")
        ax.set_title(f"{y} vs {x}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, max(len(labels), 1)), fontsize=7.5,
               frameon=False)
    fig.suptitle(group["title"], fontsize=10)
    png, svg = io.BytesIO(), io.StringIO()
    save_figure(fig, png, "png")
    save_figure(fig, svg, "svg")
    title = "trade-off: " + ", ".join(f"{y} vs {x}" for x, y in pairs)
    return title, png.getvalue(), svg.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def sweep_figure(sw: Sweep, stem: Path) -> Path | None:
    """The sweep's test-split trade-off re-plotted by :func:`editbench.evaluation.tradeoff.plot_panels` (PNG + SVG)
    from the points whose attribute and utility have CIs; None when there are none."""
    from editbench.evaluation.tradeoff import plot_panels

    pts = []
    for q in sw.points:
        a, u = normalize_agg(q.get("attribute")), normalize_agg(q.get("utility"))
        if q["split"] == "test" and a and u and None not in a["ci95"] + u["ci95"]:
            pts.append({**q, "attribute": a, "utility": u})
    if not pts:
        return None
    title = f"{sw.model_id} / {sw.benchmark}"
    return plot_panels([(title, pts, sw.track)], stem, baseline=str(sw.analysis.get("baseline") or "steering"))[0]


# ---------------------------------------------------------------------------------------------
# Per-case drill-down
# ---------------------------------------------------------------------------------------------
def drilldown_metric(records: Sequence[dict]) -> str | None:
    post = next((r.get("post") for r in records if isinstance(r.get("post"), dict)), None)
    if not post:
        return None
    for m in DRILLDOWN_HINTS:
        if m in post:
            return m
    return next((m for m, v in post.items() if isinstance(v, (int, float))), None)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def worst_cases(run: Run, k: int, headline: Sequence[str]) -> dict:
    """The k worst cases per strength by the drill-down metric, with prompts and targets."""
    records = read_cases(run.path)
    metric = drilldown_metric(records)
    if metric is None:
        return {"metric": None, "points": {}, "note": "no per-case records in a known format"}
    higher = metric_directions(run.summary).get(metric, True)
    by_s: dict[float, list[dict]] = {}
    for r in records:
        if isinstance(r.get("post"), dict) and _num(r["post"].get(metric)) is not None:
            by_s.setdefault(float(r.get("strength", 0.0)), []).append(r)
    wanted = {float(s) for s in run.strengths()}
    points = {}
    for s in sorted(by_s):
        if s not in wanted:
            continue
        rs = sorted(by_s[s], key=lambda r: (_num(r["post"][metric]) * (1 if higher else -1), str(r.get("case_id"))))
        points[f"{s:g}"] = [_case_view(r, metric, headline) for r in rs[:k]]
    return {"metric": metric, "higher_is_better": higher, "points": points}


def _case_view(r: dict, metric: str, headline: Sequence[str]) -> dict:
    req = r.get("request") or {}
    prompts = r.get("prompts") or {}
    shown = [metric] + [m for m in headline if m != metric and m in (r.get("post") or {})]
    return {"case_id": r.get("case_id"),
            "request": {k: v for k, v in req.items() if isinstance(v, str)},
            "prompts": {k: v for k, v in prompts.items() if v},
            "values": {m: {"pre": _num((r.get("pre") or {}).get(m)), "post": _num(r["post"].get(m))} for m in shown}}


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:34px;border-bottom:1px solid #ccd;padding-bottom:4px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
th,td{border:1px solid #d5d9e0;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:0}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}td.missing{color:#999;text-align:center}
tr.pre td,tr.reference td{background:#fafaf0}.ci{color:#6a7380;font-size:11px}
.note{color:#5a4a00;background:#fff8dc;padding:6px 10px;margin:4px 0}
.proto{color:#555;font-size:12px}pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:11.5px}
details{margin:6px 0}summary{cursor:pointer}img.fig{max-width:100%;border:1px solid #e2e5ea}
code{background:#f2f4f7;padding:0 3px}div.scroll{overflow-x:auto;max-width:100%}
"""

JS = r"""
(function () {
  var root = document.documentElement;
  window.addEventListener('error', function (e) { root.setAttribute('data-js-error', String(e.message || e)); });
  // a cell's sort key: its data-v number ('' = missing, always last), else its text
  function val(row, i) {
    var c = row.cells[i];
    if (!c) return null;
    var v = c.getAttribute('data-v');
    if (v === null) return c.textContent.trim().toLowerCase();
    if (v === '') return null;
    var f = parseFloat(v);
    return isNaN(f) ? null : f;
  }
  function sortBy(th) {
    var table = th.closest('table'), tb = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var desc = th.getAttribute('aria-sort') !== 'descending';  // first click: best (largest) first
    var rows = Array.prototype.slice.call(tb.rows);
    rows.sort(function (a, b) {
      var x = val(a, i), y = val(b, i);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      if (x < y) return desc ? 1 : -1;
      if (x > y) return desc ? -1 : 1;
      return 0;
    });
    rows.forEach(function (r) { tb.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
  }
  // #selftest: sort the first metric column and record whether the rows came out in order
  function selftest() {
    var th = document.querySelector('table.sortable thead th[data-metric]');
    if (!th) { root.setAttribute('data-selftest', 'no-metric-column'); return; }
    th.click();
    var t = th.closest('table'), i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var ok = true, prev = Infinity, seenNull = false;
    Array.prototype.forEach.call(t.tBodies[0].rows, function (r) {
      var v = val(r, i);
      if (v === null) { seenNull = true; return; }
      if (seenNull || v > prev) ok = false;
      prev = v;
    });
    root.setAttribute('data-selftest', (ok ? 'ok' : 'unsorted') + ':' + th.getAttribute('data-metric'));
  }
  try {
    var ths = document.querySelectorAll('table.sortable thead th');
    Array.prototype.forEach.call(ths, function (th) {
      th.addEventListener('click', function () { sortBy(th); });
      th.title = 'click to sort';
    });
    root.setAttribute('data-sortable-ready', String(document.querySelectorAll('table.sortable').length));
    if (location.hash === '#selftest') selftest();
  } catch (e) {
    root.setAttribute('data-js-error', String(e));
  }
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(group: dict, metrics: list[str], runs: dict[str, dict]) -> str:
    head = ["method", "config"] + metrics + ["n", "code", "run"]
    ths = "".join(f'<th data-metric="{_e(h)}">{_e(h)}</th>' if h in metrics else f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in group["rows"]:
        pv = runs[row["run"]]
        prov = (f"{row['run']}: {pv['run_dir']} | method {row['method']} | params "
                f"{json.dumps(row['params'], sort_keys=True, default=str)} | code {row['code']}")
        cells = [f'<td title="{_e(prov)}">{_e(row["method"])}</td>',
                 f'<td title="{_e(prov)}">{_e(row["config"])}</td>']
        src = f"{pv['run_dir']}/summary.json, " + ("pre-edit" if row["kind"] == "pre"
                                                    else f"strength {row['strength']:g}")
        cells += [_html_agg_cell(m, row["metrics"][m], row["n"], row["run"], src) for m in metrics]
        cells += [f'<td class="num" data-v="{row["n"] if row["n"] is not None else ""}">{_e(row["n"])}</td>',
                  f"<td>{_e(row['code'])}</td>",
                  f'<td><a href="#run-{_e(row["run"])}">{_e(row["run"])}</a></td>']
        body.append(f'<tr class="{row["kind"]}" data-run="{_e(row["run"])}">' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable leaderboard"><thead><tr>{ths}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def _e_md(text: str) -> str:
    """Escaped text with markdown `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def _html_agg_cell(m: str, a: dict | None, n_row: Any, who: str, src: str) -> str:
    if a is None:
        return f'<td class="missing" data-v="" title="{_e(m)} not reported by {_e(who)}">{MISSING}</td>'
    lo, hi = a["ci95"]
    ci = "" if lo is None else f' <span class="ci">[{lo:.1f}, {hi:.1f}]</span>'
    nn = "" if a.get("n") in (None, n_row) else f' <span class="ci">(n={a["n"]})</span>'
    tip = f"{m} = {a['mean']:.4g}, 95% CI [{lo}, {hi}], std {a.get('std')}, n {a.get('n')}; from {src}"
    return f'<td class="num" data-v="{a["mean"]!r}" title="{_e(tip)}">{a["mean"]:.1f}{ci}{nn}</td>'


def _html_sweep_table(sw: dict, split: str) -> str:
    cols = sw["columns"]
    ths = "".join(f'<th data-metric="{_e(h)}">{_e(h)}</th>' for h in cols)
    body = []
    for row in sw["splits"][split]["rows"]:
        who = f"{row['method']} {row['config']}"
        src = f"{sw['sweep_dir']}/points.jsonl, split {split}, key {row['key']}"
        cells = [f'<td title="{_e(src)}">{_e(row["method"])}</td>',
                 f'<td title="{_e(json.dumps(row["params"], sort_keys=True, default=str))}">{_e(row["config"])}</td>',
                 *[_html_agg_cell(m, row["metrics"][m], row["n"], who, src) for m in cols],
                 f'<td data-v="{"" if row["pareto"] is None else int(row["pareto"])}">'
                 f"{_pareto_text(row['pareto'])}</td>",
                 f'<td class="num" data-v="{row["n"] if row["n"] is not None else ""}">{_e(row["n"])}</td>',
                 f"<td>{_e(row['code'])}</td>"]
        body.append(f'<tr class="{row["kind"]}" data-sweep="{_e(sw["id"])}">' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable sweep"><thead><tr><th>method</th><th>config</th>{ths}'
            f'<th>Pareto</th><th>n</th><th>code</th></tr></thead><tbody>' + "".join(body) + "</tbody></table></div>")


def _html_protocol(p: dict) -> str:
    return (f'<p class="proto">benchmark <code>{_e(p["benchmark"])}</code>, split <code>{_e(p["split"])}</code>, '
            f'model <code>{_e(p["model"])}</code> (weights sha256 <code>{_e(p["weights_sha256"])}</code>), '
            f'dtype <code>{_e(p["dtype"])}</code>, data: '
            + ", ".join(f"<code>{_e(k)}</code> sha256 <code>{_e(v)}</code>" for k, v in p["data_sha256"].items())
            + ("" if "settings" not in p else
               f', settings <code>{_e(json.dumps(p["settings"], sort_keys=True))}</code>') + "</p>")


def _html_sweeps(board: dict, figures: dict[str, bytes]) -> list[str]:
    out = []
    for gi, g in enumerate(board["sweep_groups"]):
        out.append(f'<section class="group sweeps" id="sweep-group-{gi}"><h2>{_e(g["title"])}</h2>'
                   + _html_protocol(g["protocol"]) + "".join(f'<div class="note">{_e_md(n)}</div>' for n in g["notes"]))
        for sw in g["sweeps"]:
            out.append(f'<section class="sweep" id="sweep-{_e(sw["id"])}"><h3>{_e(sw["id"])}: '
                       f'<code>{_e(sw["sweep_dir"])}</code> (<a href="#prov-{_e(sw["id"])}">provenance</a>)</h3>'
                       f'<p>{_e_md(sw["description"])}</p><p><b>{_e_md(sw["headline_title"])}:</b></p>'
                       '<ul class="headline">'
                       + "".join(f"<li>{_e(x)}</li>" for x in sw["headline"])
                       + "</ul><p>Hypervolume with the original model (larger is better):</p><ul>"
                       + "".join(f"<li>{_e(x)}</li>" for x in sw["hypervolume"]) + "</ul>")
            for split in sw["splits"]:
                out.append(f"<h4>{_e(split)}</h4>" + _html_sweep_table(sw, split))
            if sw["id"] in figures:
                out.append(f'<figure><img class="fig" alt="trade-off {_e(sw["id"])}" src="data:image/png;base64,'
                           f'{base64.b64encode(figures[sw["id"]]).decode()}"><figcaption>attribute vs utility on '
                           f"test: the baseline as a curve (numbers are strengths), Steer2Edit configurations as "
                           "stars, the original model as a triangle; bars are 95% bootstrap CIs.</figcaption></figure>")
            out.append("".join(f'<div class="note">{_e_md(n)}</div>' for n in sw["notes"])
                       + '<p class="proto">Pareto *: on the split\'s Pareto front over all methods; per-task '
                         "accuracies are in leaderboard.json and the sweep's points.jsonl.</p></section>")
        out.append("</section>")
    return out


def _html_prov_table(rid: str, title: str, rows: list[tuple[str, Any]], config: dict, anchor: str) -> str:
    return (f'<section id="{anchor}"><h3>{_e(rid)}: {_e(title)}</h3><table class="prov">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(val)}</td></tr>" for k, val in rows)
            + "</table><details><summary>config.json</summary><pre>"
            + _e(json.dumps(config, indent=2, sort_keys=True, default=str)) + "</pre></details></section>")


def _code_line(v: dict) -> str:
    return (f"editbench {v.get('editbench')} commit {v.get('git_commit')}"
            + (" (uncommitted changes)" if v.get("git_dirty") else ""))


def _versions_line(v: dict) -> str:
    return ", ".join(f"{k} {val}" for k, val in v.items() if not k.startswith(("git_", "editbench")))


def _html_drilldown(rid: str, run: dict, dd: dict) -> str:
    if not dd.get("metric"):
        return f"<p>{_e(rid)}: {_e(dd.get('note', 'no per-case records'))}</p>"
    order = "lowest" if dd["higher_is_better"] else "highest"
    parts = [f"<details><summary><b>{_e(rid)}</b> {_e(run['method'])} — {order} per-case "
             f"<code>{_e(dd['metric'])}</code> ({_e(run['run_dir'])}/cases.jsonl)</summary>"]
    for s, cases in dd["points"].items():
        if not cases:
            continue
        vals = list(cases[0]["values"])
        head = "".join(f"<th>{_e(v)} pre → post</th>" for v in vals)
        parts.append(f"<h4>strength {_e(s)}</h4><table class=\"sortable cases\"><thead><tr><th>case_id</th>"
                     f"<th>request</th><th>evaluation prompts</th>{head}</tr></thead><tbody>")
        for c in cases:
            req = "<br>".join(f"<b>{_e(k)}</b>: {_e(v)}" for k, v in c["request"].items())
            prm = "<br>".join(f"<b>{_e(k)}</b>: {_e(' | '.join(v) if isinstance(v, list) else v)}"
                              for k, v in c["prompts"].items())
            tds = "".join(
                f'<td class="num" data-v="{"" if x["post"] is None else repr(x["post"])}">'
                f'{_fmt_num(x["pre"])} → {_fmt_num(x["post"])}</td>' for x in c["values"].values())
            parts.append(f'<tr><td data-v="{_e(c["case_id"]) if isinstance(c["case_id"], (int, float)) else ""}">'
                         f'{_e(c["case_id"])}</td><td>{req}</td><td>{prm}</td>{tds}</tr>')
        parts.append("</tbody></table>")
    parts.append("</details>")
    return "".join(parts)


def _fmt_num(v: float | None) -> str:
    return MISSING if v is None else f"{v:.3f}"


def render_html(board: dict, figures: dict[int, list[tuple[str, bytes]]], drill: dict[str, dict],
                sweep_figures: dict[str, bytes] | None = None) -> str:
    """A single self-contained page: sortable tables, inline figures, drill-down, provenance."""
    runs = board["runs"]
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
           "<title>editbench leaderboard</title><style>", CSS, "</style></head><body>",
           "<h1>editbench leaderboard</h1>",
           f"<p>Cells: mean and <span class=\"ci\">[95% bootstrap CI]</span> over cases (x100 for rates and "
           f"probabilities); hover a cell for its source. {MISSING} = not reported by that run. Runs under different "
           "protocols (benchmark split, model weights, data files, dtype) are never merged; attribute-utility "
           "sweeps have their own sections (their attribute's scale and direction are stated there). Click a column "
           "header to sort.</p>"]
    out.append("<ul>" + "".join(f'<li><a href="#group-{i}">{_e(g["title"])}</a></li>' for i, g in
                                enumerate(board["groups"]))
               + "".join(f'<li><a href="#sweep-group-{i}">{_e(g["title"])}</a></li>' for i, g in
                         enumerate(board["sweep_groups"])) + '<li><a href="#provenance">provenance</a></li></ul>')
    for gi, g in enumerate(board["groups"]):
        out.append(f'<section class="group" id="group-{gi}"><h2>{_e(g["title"])}</h2>' + _html_protocol(g["protocol"]))
        out.append(_html_table(g, g["headline"], runs))
        if g["other_metrics"]:
            out.append("<h3>Other metrics</h3>" + _html_table(g, g["other_metrics"], runs))
        for n in g["notes"]:
            out.append(f'<div class="note">{_e(n)}</div>')
        for title, png in figures.get(gi, []):
            out.append(f'<figure><img class="fig" alt="{_e(title)}" src="data:image/png;base64,'
                       f'{base64.b64encode(png).decode()}"><figcaption>{_e(title)}; numbers next to points are '
                       "strengths, bars are 95% CIs, the star is the unedited model on the same cases."
                       "</figcaption></figure>")
        out.append("<h3>Worst cases per method</h3>")
        for rid in g["runs"]:
            if rid in drill:
                out.append(_html_drilldown(rid, runs[rid], drill[rid]))
        out.append("</section>")
    out += _html_sweeps(board, sweep_figures or {})
    out.append('<section id="provenance"><h2>Provenance</h2>')
    for rid, pv in runs.items():
        m = pv["model"]
        v = pv["versions"]
        rows = [("run directory", pv["run_dir"]), ("method", pv["method"]),
                ("method params", json.dumps(pv["method_params"], sort_keys=True, default=str)),
                ("strengths", ", ".join(f"{s:g}" for s in pv["strengths"])), ("cases", pv["n_cases"]),
                ("benchmark / split", f"{pv['benchmark']} / {pv['split']}"),
                *[(f"data {k}", f"sha256 {h}") for k, h in pv["data_files"].items()],
                ("model", f"{m.get('model_id')} ({m.get('model_type', '?')}, {m.get('dtype', '?')}, "
                          f"{m.get('device', '?')})"),
                ("model weights sha256", m.get("weights_sha256")), ("model source", m.get("source")),
                ("code (last invocation)", _code_line(v)),
                *[("code of records", f"{_code_line(c)}: {c.get('n_records')} records") for c in pv["record_code"]],
                ("versions", _versions_line(v)),
                ("wall seconds (last invocation)", pv["wall_seconds_last_invocation"])]
        out.append(_html_prov_table(rid, pv["method"], rows, pv["config"], f"run-{_e(rid)}"))
    for g in board["sweep_groups"]:
        for sw in g["sweeps"]:
            pv, cfg = sw["provenance"], sw["provenance"]["config"]
            m, v = pv["model"], pv["versions"]
            rows = [("sweep directory", pv["sweep_dir"]),
                    ("methods", "; ".join(f"{x.get('name')} {json.dumps(x.get('params'), sort_keys=True, default=str)} "
                                          f"strengths {x.get('strengths')}" for x in cfg["methods"]
                                          if isinstance(x, dict))),
                    ("benchmark", f"{cfg.get('benchmark')} {json.dumps(cfg.get('benchmark_options') or {})}"),
                    *[(f"data {k}", f"sha256 {h}") for k, h in pv["data_files"].items()],
                    ("model", f"{m.get('model_id')} ({m.get('model_type', '?')}, {m.get('dtype', '?')}, "
                              f"{m.get('device', '?')})"),
                    ("model weights sha256", m.get("weights_sha256")), ("model source", m.get("source")),
                    ("code (at start)", _code_line(v)), ("versions", _versions_line(v)),
                    ("per-item records", f"{pv['sweep_dir']}/{pv['items_file']}")]
            out.append(_html_prov_table(sw["id"], f"sweep {cfg.get('benchmark')}", rows, cfg, f"prov-{_e(sw['id'])}"))
    if board["skipped"]:
        out.append("<h3>Skipped</h3><ul>" + "".join(f"<li>{_e(s)}</li>" for s in board["skipped"]) + "</ul>")
    out.append("</section><script>" + JS + "</script></body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def write_report(inputs: Sequence[str | Path], out_dir: str | Path, worst: int = 5, figures: bool = True) -> dict:
    """Build the leaderboard from run and sweep directories and write md/json/html (+ figure files)."""
    if worst < 0:
        raise EditbenchError(f"--worst must be >= 0, got {worst}")
    runs, sweeps, skipped = discover(inputs)
    board = build_leaderboard(runs, skipped, sweeps)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EditbenchError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    by_id = {r.rid: r for r in runs}
    figs_png: dict[int, list[tuple[str, bytes]]] = {}
    figs_md: dict[int, list[tuple[str, str]]] = {}
    if figures:
        (out / "figures").mkdir(exist_ok=True)
        for gi, g in enumerate(board["groups"]):
            fig = tradeoff_figure(g, by_id)
            if fig is None:
                continue
            title, png, svg = fig
            name = f"figures/tradeoff-{gi}-{_slug(g['title'])}"
            (out / f"{name}.png").write_bytes(png)
            (out / f"{name}.svg").write_text(svg, encoding="utf-8")
            figs_png.setdefault(gi, []).append((title, png))
            figs_md.setdefault(gi, []).append((title, f"{name}.png"))
            g.setdefault("figures", []).append(f"{name}.png")
    sweep_png, sweep_md = {}, {}
    if figures:
        by_sid = {sw.rid: sw for sw in sweeps}
        for g in board["sweep_groups"]:
            for sb in g["sweeps"]:
                name = sweep_figure(by_sid[sb["id"]], out / "figures" / f"sweep-{sb['id']}-{_slug(g['title'])}")
                if name is not None:
                    sweep_png[sb["id"]] = name.read_bytes()
                    sweep_md[sb["id"]] = sb["figure"] = f"figures/{name.name}"
    drill = {}
    if worst:
        for g in board["groups"]:
            for rid in g["runs"]:
                drill[rid] = worst_cases(by_id[rid], worst, g["headline"])
    board["worst_cases"] = drill
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2, sort_keys=False, default=str), encoding="utf-8")
    (out / "leaderboard.md").write_text(render_markdown(board, figs_md, sweep_md), encoding="utf-8")
    (out / "index.html").write_text(render_html(board, figs_png, drill, sweep_png), encoding="utf-8")
    return board


def _cmd_report(a: argparse.Namespace) -> int:
    board = write_report(a.results, a.out, worst=a.worst, figures=not a.no_figures)
    n_rows = sum(len(g["rows"]) for g in board["groups"])
    n_sweeps = sum(len(g["sweeps"]) for g in board["sweep_groups"])
    print(f"{len(board['runs'])} runs, {len(board['groups'])} table(s), {n_rows} rows, {n_sweeps} sweep(s) -> "
          f"{a.out}/leaderboard.md, {a.out}/leaderboard.json, {a.out}/index.html")
    for s in board["skipped"]:
        print(f"skipped: {s}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``editbench report`` on the CLI's subparsers."""
    p = sub.add_parser("report", help="leaderboard (markdown, JSON, self-contained HTML) from run directories")
    p.add_argument("results", nargs="+", metavar="RESULTS_DIR",
                   help="run or sweep directories, or directories searched recursively for them")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="where leaderboard.{md,json} and index.html go")
    p.add_argument("--worst", type=int, default=5,
                   help="worst cases per method and strength in the drill-down (0: none)")
    p.add_argument("--no-figures", action="store_true", help="skip the trade-off figures")
    p.set_defaults(func=_cmd_report)
