"""The leaderboard model: what leaderboard.json holds, built from loaded runs and sweeps.

Per protocol group a table (one row per run and strength, plus the unedited reference; each row
with its method class and model health, see :mod:`.health`; rows sorted by class), its columns
(the union of the metrics the summaries report; headline metrics first), the best healthy row per
method class, notes on what is missing or not comparable; per sweep a table per split, the matched-utility headline and
hypervolumes; provenance of every run and sweep; the worst cases per run for the drill-down. The
renderers (:mod:`.markdown`, :mod:`.html`, :mod:`.plotting`) only format this dict, so every number
and note they show is the one in leaderboard.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from editbench.errors import EditbenchError
from editbench.evaluation import metric_registry
from editbench.evaluation.tradeoff import DEFAULT_BASELINE, matched_entry_text, varying_params
from editbench.evaluation.validity import validity_note
from editbench.report.health import (UNKNOWN_CLASS, HealthThresholds, assess, best_per_class, class_legend,
                                     class_rank, health_detail, is_flagged, non_finite_counts, reference_health,
                                     resolve_class)
from editbench.report.model import (MISSING, REFERENCE_METHOD, Run, Sweep, as_number, retention_of,
                                    code_version_label, direction_overrides, is_reference, items_file,
                                    newer_than_summary, normalize_agg, protocol_diff, protocol_of, read_cases,
                                    run_metrics)

# Per-case metric that ranks the drill-down (lowest first for higher-is-better metrics).
DRILLDOWN_HINTS = ("efficacy_magnitude", "efficacy", "attribute", "utility")


def _method_defaults(method: str) -> dict | None:
    """Default hyperparameters of an installed method plugin, so the config column can show only
    what a run changed; None when the plugin is not importable here."""
    try:
        from editbench.plugins import registry

        return registry.load("method", method).default_params()
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
        by_label.setdefault((g.protocol["benchmark"], g.protocol["split"], g.protocol["model"],
                             g.protocol.get("edits")), []).append(g)
    for (bench, split, model, _edits), gs in by_label.items():
        for i, g in enumerate(gs):
            g.title = f"{bench} sweep — {model}" if sweeps else f"{bench} / {split} — {model}"
            if g.protocol.get("edits") not in (None, "single edit"):
                g.title += f" — {g.protocol['edits']}"
            if len(gs) > 1:
                g.title += f" (protocol {chr(ord('A') + i)})"
                for j, other in enumerate(gs):
                    if other is not g:
                        g.notes.append(f"Not merged with protocol {chr(ord('A') + j)}: different "
                                       + ", ".join(protocol_diff(g.protocol, other.protocol)) + ".")
    return out


def _pre_fingerprint(run: Run) -> str:
    return json.dumps({m: (a or {}).get("mean") for m, a in sorted(run.pre().items())})


def _valid_aggs(aggs: dict) -> dict:
    return {m: a for m, a in ((m, normalize_agg(a)) for m, a in (aggs or {}).items()) if a is not None}


_NO_HEALTH = " (a summary from before the health metrics, or health off)"
#: why a column can be empty, for the table notes
_WHY_MISSING = {"fluency_long": " (needs --generation)", "ee_locality": " (defined only after an edit)",
                "fluency": _NO_HEALTH, "neutral_kl": _NO_HEALTH}


def build_group(g: Group, defaults_cache: dict[str, dict | None], classes_cache: dict[str, str | None] | None = None,
                thresholds: HealthThresholds | None = None) -> dict:
    """Rows (one per run and strength, plus the unedited reference) and columns of one table; each
    row with its method class and health; rows sorted by class; the best healthy row per class."""
    classes_cache = {} if classes_cache is None else classes_cache
    thresholds = thresholds or HealthThresholds()
    metrics = metric_registry.order(m for r in g.runs for m in run_metrics(r))
    hint = next((r.summary["headline_metrics"] for r in g.runs if isinstance(r.summary.get("headline_metrics"), list)),
                None)
    headline = [m for m in (hint or metric_registry.headline(metrics)) if m in metrics] or list(metrics)
    rows: list[dict] = []
    # unedited reference: each distinct set of pre-edit numbers once (runs on the same cases agree)
    # (an `unedited` run's own row already is that reference)
    seen_pre = {_pre_fingerprint(r) for r in g.runs if is_reference(r.method)}
    for r in sorted(g.runs, key=lambda r: (-(r.n_cases or 0), r.rid)):
        if not r.pre():
            continue
        fp = _pre_fingerprint(r)
        if fp in seen_pre:
            continue
        seen_pre.add(fp)
        rows.append({"run": r.rid, "method": f"{REFERENCE_METHOD} (pre-edit)", "method_class": "reference",
                     "config": f"pre-edit of {r.rid}",
                     "strength": None, "params": {}, "kind": "pre", "n": r.n_cases, "code": r.code_version,
                     "metrics": {m: normalize_agg(r.pre().get(m)) for m in metrics}, "health": reference_health()})
    cls_of = {r.rid: resolve_class(r.summary.get("method_class"), r.method, classes_cache) for r in g.runs}
    # the unedited model on the same cases: a run's own pre-edit numbers, else the group's unedited run
    group_ref = next((_valid_aggs(r.post(r.strengths()[0])) for r in g.runs if is_reference(r.method)), {})
    for r in sorted(g.runs, key=lambda r: (not is_reference(r.method), class_rank(cls_of[r.rid]), r.method,
                                           json.dumps(r.params, sort_keys=True, default=str), r.rid)):
        if r.method not in defaults_cache:
            defaults_cache[r.method] = _method_defaults(r.method)
        ref = is_reference(r.method)
        base = {**group_ref, **_valid_aggs(r.pre())}
        for s in r.strengths():
            rows.append({"run": r.rid, "method": r.method, "method_class": cls_of[r.rid], "strength": float(s),
                         "params": r.params,
                         "kind": "reference" if ref else "post",
                         "config": "no edit" if ref else config_label(r.params, defaults_cache[r.method], s),
                         "n": r.n_cases,
                         "code": r.code_version,
                         "metrics": {m: normalize_agg(r.post(s).get(m)) for m in metrics},
                         "health": reference_health() if ref else assess(_valid_aggs(r.post(s)), base, thresholds,
                                                                        non_finite_counts(r.post(s)))})
    notes = list(g.notes)
    flagged = [row for row in rows if is_flagged(row)]
    for row in flagged:
        notes.append(f"{row['run']} {row['method']} {row['config']}: {health_detail(row['health'])}; left out of "
                     "the best-per-class line and the trade-off figure's lines.")
    unmeasured = sorted({row["run"] for row in rows if row["health"]["status"] == "not measured"})
    if unmeasured:
        notes.append(f"health not measured for {', '.join(unmeasured)}: the summaries report neither `neutral_kl` "
                     "nor `fluency` (with an unedited value to compare with); those rows are not known to be healthy.")
    for m in metrics:
        lacking = sorted({row["run"] + (" (pre-edit)" if row["kind"] == "pre" else "")
                          for row in rows if row["metrics"][m] is None})
        if lacking:
            why = _WHY_MISSING.get(m, "")
            notes.append(f"{MISSING} in column `{m}`: not reported by {', '.join(lacking)}{why}.")
    ns = sorted({r.n_cases for r in g.runs if r.n_cases is not None})
    if len(ns) > 1:
        notes.append("Rows cover different numbers of cases (" + ", ".join(
            f"n={n}: {', '.join(r.rid for r in g.runs if r.n_cases == n)}" for n in ns)
            + "); compare them with their CIs in mind.")
    for r in g.runs:
        if newer_than_summary(r.path, "cases.jsonl"):
            notes.append(f"{r.rid}: cases.jsonl is newer than summary.json (run resumed or in progress?); "
                         "its numbers may be stale.")
    seeds = sorted({str(r.config.get("seed")) for r in g.runs})
    if len(seeds) > 1:
        notes.append(f"Runs use different seeds ({', '.join(seeds)}).")
    overrides: dict[str, str] = {}
    for r in g.runs:
        overrides.update(direction_overrides(r.summary))
    best = best_per_class(rows, headline[0], metric_registry.higher_is_better(headline[0], overrides)) if headline \
        else None
    return {"title": g.title, "protocol": g.protocol, "metrics": metrics, "headline": headline,
            "other_metrics": [m for m in metrics if m not in headline], "runs": [r.rid for r in g.runs],
            "rows": rows, "best": best, "notes": notes, "retention": retention_of(g.runs)}


def provenance(run: Run) -> dict:
    s = run.summary
    return {"run_dir": str(run.path), "method": run.method, "method_params": run.params,
            "strengths": [float(x) for x in run.strengths()], "n_cases": run.n_cases,
            "benchmark": run.benchmark, "split": run.split,
            "data_files": (s.get("data") or {}).get("files") or {}, "model": s.get("model") or {},
            "versions": s.get("versions") or {}, "code_version": run.code_version,
            "record_code": s.get("record_code") or [],
            "wall_seconds_last_invocation": s.get("wall_seconds_this_invocation"), "config": run.config}


def build_sweep(sw: Sweep, classes_cache: dict[str, str | None] | None = None,
                thresholds: HealthThresholds | None = None) -> dict:
    """One sweep: a table per split (test first: that is where results are reported; rows labelled
    with their method class and health, sorted by class), the matched-utility headline (flagged
    operating points left out), hypervolumes and provenance, all read from the sweep's own files."""
    classes_cache = {} if classes_cache is None else classes_cache
    thresholds = thresholds or HealthThresholds()
    a, track, cfg = sw.analysis, sw.track, sw.config
    higher = bool(track.get("higher_is_better", True))
    vary = varying_params(sw.points)
    names = {k for q in sw.points for k, v in q.items() if isinstance(v, dict) and "mean" in v}
    metrics = ["attribute", "utility"] + metric_registry.order(names - {"attribute", "utility"})
    # per-task accuracies stay in leaderboard.json (as in the sweep's analysis.md)
    columns = [m for m in metrics if not m.endswith(("_acc", "_acc_norm"))]
    splits, notes, flagged = {}, [], {}

    def cls_of(q: dict) -> str:
        return resolve_class(q.get("method_class"), q["method"], classes_cache)

    for split in ("test", "val"):
        info = (a.get("splits") or {}).get(split)
        front = {q.get("key") for q in (info or {}).get("pareto") or []}
        ps = sorted((q for q in sw.points if q["split"] == split),
                    key=lambda q: (not is_reference(q["method"]), class_rank(cls_of(q)), q["method"],
                                   json.dumps(q["params"], sort_keys=True, default=str), q["strength"]))
        base = next((_valid_aggs({m: v for m, v in q.items() if isinstance(v, dict)}) for q in ps
                     if is_reference(q["method"])), {})
        rows = [{"key": q.get("key"), "method": q["method"], "method_class": cls_of(q), "params": q["params"],
                 "strength": float(q["strength"]),
                 "config": "original model" if is_reference(q["method"]) else
                 config_label({k: q["params"].get(k) for k in vary[q["method"]]}, None, q["strength"]),
                 "kind": "reference" if is_reference(q["method"]) else "post",
                 "pareto": None if info is None else q.get("key") in front,
                 "n": (q.get("attribute") or {}).get("n"),
                 "code": code_version_label(q.get("code") or sw.summary.get("versions") or {}),
                 "seconds": q.get("seconds"), "metrics": {m: normalize_agg(q.get(m)) for m in metrics},
                 "health": reference_health() if is_reference(q["method"]) else
                 sweep_validity(q, assess(_valid_aggs({m: v for m, v in q.items() if isinstance(v, dict)}), base,
                                          thresholds, non_finite_counts(q)))}
                for q in ps]
        for r in rows:
            if is_flagged(r):
                flagged.setdefault(r["key"], r["health"])
                notes.append(f"{split}: {r['method']} {r['config']}: {health_detail(r['health'])}; left out of the "
                             "Pareto marks, the figure and the matched-utility headline.")
        splits[split] = {"rows": rows, "hypervolume": (info or {}).get("hypervolume") or {},
                         "reference_point": (info or {}).get("reference_point")}
        for m in columns:
            lacking = [f"{r['method']} {r['config']}" for r in rows if r["metrics"][m] is None]
            if lacking:
                notes.append(f"{MISSING} in {split} column `{m}`: not reported for {', '.join(lacking)}.")
    if flagged:
        notes.append("The sweep's own analysis (Pareto front, hypervolumes, the baseline's front) was computed over "
                     "every point, flagged ones included.")
    edited = [r for t in splits.values() for r in t["rows"] if r["kind"] == "post"]
    if edited and all(r["health"]["status"] == "not measured" for r in edited):
        notes.append("health not measured: the points report neither `neutral_kl` nor `fluency` (with an original-"
                     "model value to compare with); they are not known to be healthy.")
    if validity_note(sw.points):
        notes.append(f"{validity_note(sw.points)}.")
    if a.get("axis_note"):
        notes.append(f"{a['axis_note']}.")
    if not a.get("splits"):
        notes.append("summary.json has no analysis: no Pareto front, hypervolume or matched-utility gain.")
    if newer_than_summary(sw.path, "points.jsonl"):
        notes.append("points.jsonl is newer than summary.json (sweep resumed or in progress?); "
                     "the analysis may not cover every point.")
    baseline = str(a.get("baseline") or cfg.get("baseline") or DEFAULT_BASELINE)
    util = cfg.get("utility") or {}
    direction = "higher" if higher else "lower"
    try:
        classes = {q["method"]: cls_of(q) for q in sw.points}
        classes.setdefault(baseline, resolve_class(None, baseline, classes_cache))
        headline = matched_lines(a.get("matched_utility"), baseline, flagged, classes,
                                 axis=str(a.get("matched_axis") or "utility"))
        hv_fmt = ".3g" if a.get("matched_axis") == "kl" else ".1f"  # areas in KL units are small
        hv = [f"{split}: " + (", ".join(f"{m} ({classes.get(m, UNKNOWN_CLASS)}) {v:{hv_fmt}}"
                                        for m, v in t["hypervolume"].items()) or MISSING)
              + ("" if not t["reference_point"] else f" (reference point: {_ref_x(t['reference_point'])}, attribute "
                 f"{t['reference_point']['attribute']:.1f})")
              for split, t in splits.items()]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EditbenchError(f"{sw.path / 'summary.json'}: malformed analysis ({type(e).__name__}: {e})") from None
    return {
        "id": sw.rid, "sweep_dir": str(sw.path), "attribute": track.get("attribute"), "higher_is_better": higher,
        "baseline": baseline,
        "description": f"Attribute `{track.get('attribute', '?')}` ({direction} is better); utility: mean "
                       f"{util.get('metric', '?')} over {', '.join(map(str, util.get('tasks') or [])) or '?'} "
                       "(higher is better); "
                       f"items per split: {json.dumps(track.get('n_items'))}; points: {len(sw.points)}.",
        "columns": columns, "metrics": metrics, "splits": splits,
        "matched_utility": a.get("matched_utility"), "headline": headline, "hypervolume": hv, "notes": notes,
        "headline_title": f"Attribute gain over `{baseline}` at matched utility (operating point chosen on val, gain "
                          f"reported on test; {direction} is better, so a {'positive' if higher else 'negative'} "
                          "gain is an improvement)",
        "provenance": {"sweep_dir": str(sw.path), "config": cfg, "versions": sw.summary.get("versions") or {},
                       "code_version": sw.code_version, "model": sw.summary.get("model") or {},
                       "data_files": sw.data_files, "items_file": items_file(sw.path)},
    }


def matched_lines(mu: Any, baseline: str, flagged: dict[str, dict] | None = None,
                  classes: dict[str, str] | None = None, axis: str = "utility") -> list[str]:
    """The headline: per method (labelled with its method class, and the baseline's when that
    differs), the operating point chosen on val and its gain over the baseline on test (with its
    paired CI where the sweep computed one) at matched ``axis`` (``utility`` or ``kl``); an
    operating point whose health is flagged (``flagged``: point key -> health), invalid on test or
    not decidable (censored) is named, not reported as a gain."""
    if not isinstance(mu, dict):
        return [f"no matched-utility analysis ({MISSING})"]
    if "note" in mu:
        return [str(mu["note"])]
    out = []
    classes = classes or {}
    base_cls = classes.get(baseline, UNKNOWN_CLASS)
    for m0, e in mu.items():
        c = classes.get(m0, UNKNOWN_CLASS)
        m = f"{m0} ({c})" if c == base_cls else f"{m0} ({c}; baseline {baseline} is {base_cls})"
        if not isinstance(e, dict) or "note" in e or not isinstance(e.get("operating_point"), dict):
            out.append(f"{m}: {e.get('note') if isinstance(e, dict) else e}")
            continue
        op = e["operating_point"]
        if op.get("key") in (flagged or {}):
            out.append(f"{m}: operating point {op.get('label')} s={as_number(op.get('strength')) or 0:g} is flagged "
                       f"{health_detail(flagged[op['key']])}; no gain reported")
            continue
        out.append(f"{m}: {matched_entry_text(e, axis, baseline)}")
    return out


def _ref_x(ref: dict) -> str:
    """A hypervolume reference point's x: MC utility, or neutral_kl for KL-matched sweeps."""
    if as_number(ref.get("neutral_kl")) is not None:
        return f"neutral_kl {ref['neutral_kl']:.3g}"
    return f"utility {as_number(ref.get('utility')) or 0:.1f}"


def sweep_validity(point: dict, health: dict) -> dict:
    """A sweep point's health with the sweep's own validity verdict: an invalid point is flagged
    (``broken``) with the sweep's reasons, whatever the report's thresholds say."""
    if point.get("valid") is not False or health["status"] == "broken":
        return health
    reasons = [f"invalid in the sweep: {r}" for r in point.get("invalid_reasons") or ["out of the validity bounds"]]
    return {**health, "status": "broken", "reasons": list(health.get("reasons") or []) + reasons}


def build_leaderboard(runs: Sequence[Run], skipped: Sequence[str] = (), sweeps: Sequence[Sweep] = (),
                      thresholds: HealthThresholds | None = None) -> dict:
    thresholds = thresholds or HealthThresholds()
    defaults: dict[str, dict | None] = {}
    classes: dict[str, str | None] = {}
    groups = [build_group(g, defaults, classes, thresholds) for g in group_runs(runs)]
    sweep_groups = [{"title": g.title, "protocol": g.protocol, "notes": g.notes,
                     "sweeps": [build_sweep(sw, classes, thresholds) for sw in g.runs]}
                    for g in group_runs(sweeps, sweeps=True)]
    present = [row["method_class"] for g in groups for row in g["rows"]]
    present += [row["method_class"] for g in sweep_groups for sw in g["sweeps"] for t in sw["splits"].values()
                for row in t["rows"]]
    methods: dict[str, set] = {}
    for g in groups:
        for row in g["rows"]:
            if row["kind"] != "pre":
                methods.setdefault(row["method_class"], set()).add(row["method"])
    for g in sweep_groups:
        for sw in g["sweeps"]:
            for t in sw["splits"].values():
                for row in t["rows"]:
                    methods.setdefault(row["method_class"], set()).add(row["method"])
    legend = [{"method_class": c, "description": d, "methods": sorted(methods.get(c, ()))}
              for c, d in class_legend(present)]
    return {"format": "editbench-leaderboard/1", "method_classes": legend, "health": thresholds.describe(),
            "groups": groups, "runs": {r.rid: provenance(r) for r in runs}, "sweep_groups": sweep_groups,
            "skipped": list(skipped)}


# =============================================================================================
# Per-case drill-down (board["worst_cases"])
# =============================================================================================
def drilldown_metric(records: Sequence[dict]) -> str | None:
    post = next((r.get("post") for r in records if isinstance(r.get("post"), dict)), None)
    if not post:
        return None
    for m in DRILLDOWN_HINTS:
        if m in post:
            return m
    return next((m for m, v in post.items() if isinstance(v, (int, float))), None)


def worst_cases(run: Run, k: int, headline: Sequence[str], records: Sequence[dict] | None = None) -> dict:
    """The k worst cases per strength by the drill-down metric, with prompts and targets
    (``records``: the run's per-case records, read from its directory when not given)."""
    records = read_cases(run.path) if records is None else records
    cps = [int(r["checkpoint"]) for r in records if isinstance(r.get("checkpoint"), int)]
    if cps:  # a sequential run: the cases on its final model (earlier checkpoints are in the retention table)
        records = [r for r in records if r.get("checkpoint") == max(cps)]
    metric = drilldown_metric(records)
    if metric is None:
        return {"metric": None, "points": {}, "note": "no per-case records in a known format"}
    higher = metric_registry.higher_is_better(metric, direction_overrides(run.summary))
    by_s: dict[float, list[dict]] = {}
    for r in records:
        if isinstance(r.get("post"), dict) and as_number(r["post"].get(metric)) is not None:
            by_s.setdefault(float(r.get("strength", 0.0)), []).append(r)
    wanted = {float(s) for s in run.strengths()}
    points = {}
    for s in sorted(by_s):
        if s not in wanted:
            continue
        sign = 1 if higher else -1
        rs = sorted(by_s[s], key=lambda r: (as_number(r["post"][metric]) * sign, str(r.get("case_id"))))
        points[f"{s:g}"] = [_case_view(r, metric, headline) for r in rs[:k]]
    return {"metric": metric, "higher_is_better": higher, "points": points}


def _case_view(r: dict, metric: str, headline: Sequence[str]) -> dict:
    req = r.get("request") or {}
    prompts = r.get("prompts") or {}
    shown = [metric] + [m for m in headline if m != metric and m in (r.get("post") or {})]
    return {"case_id": r.get("case_id"),
            "request": {k: v for k, v in req.items() if isinstance(v, str)},
            "prompts": {k: v for k, v in prompts.items() if v},
            "values": {m: {"pre": as_number((r.get("pre") or {}).get(m)), "post": as_number(r["post"].get(m))}
                       for m in shown}}
