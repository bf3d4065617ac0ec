"""index.html: the leaderboard model rendered with Jinja2 into one self-contained page.

Why a template engine: every value on the page comes from results directories that anyone can
write (method names, params, paths, a metric's ``n`` ...), so it must be escaped for its context.
The :class:`jinja2.Environment` here escapes every ``{{ value }}`` (autoescape on for all
templates; nothing is ever marked safe): a value can only ever be text or an attribute value,
never markup. Python prepares plain strings and numbers (a "view" of the board); the
templates in ``templates/`` hold all markup. The page stays self-contained: the stylesheet and
script in ``static/`` are included verbatim (as template source, not as data) and the figures are
inline base64 PNGs (or, at the caller's choice, relative links to the figure files). Templates and static files are read with :mod:`importlib.resources`, so an
installed wheel renders the same page as a checkout.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Callable

import jinja2

from editbench.report.health import health_detail, health_text, is_flagged
from editbench.report.model import MISSING, pareto_cell, retention_cells

PACKAGE = "editbench.report"


def _resource(folder: str, name: str) -> str:
    if "/" in name or "\\" in name or name.startswith("."):
        raise jinja2.TemplateNotFound(f"{folder}/{name}")
    try:
        return resources.files(PACKAGE).joinpath(folder).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise jinja2.TemplateNotFound(f"{folder}/{name}") from None


def static_text(name: str) -> str:
    """A file of ``static/`` (the page's CSS and JS)."""
    return _resource("static", name)


class _PackageLoader(jinja2.BaseLoader):
    """``NAME``: a template of ``templates/``; ``static/NAME``: a static file, included verbatim
    (wrapped in a raw block, so nothing in it is template syntax)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, None, Callable[[], bool]]:
        folder, _, name = template.rpartition("/")
        if folder == "static":
            text = static_text(name)
            if "endraw" in text:
                raise jinja2.TemplateError(f"static/{name} must not contain 'endraw'")
            return "{% raw %}" + text + "{% endraw %}", None, lambda: True
        if folder:
            raise jinja2.TemplateNotFound(template)
        return _resource("templates", name), None, lambda: True


def _spans(text: Any) -> list[tuple[bool, str]]:
    """A note with markdown `code` spans as (is_code, text) parts, for the template to mark up."""
    return [(bool(i % 2), p) for i, p in enumerate(re.split(r"`([^`]*)`", str(text))) if p or i % 2]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=_PackageLoader(), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update({
        "spans": _spans,
        "json_sorted": lambda v: json.dumps(v, sort_keys=True, default=str),
    })
    return env


# ---------------------------------------------------------------------------------------------
# The view: plain strings and numbers for the templates, prepared from the board
# ---------------------------------------------------------------------------------------------
def _agg_cell(m: str, a: dict | None, n_row: Any, who: str, src: str) -> dict:
    if a is None:
        return {"cls": "missing", "v": "", "title": f"{m} not reported by {who}", "text": MISSING, "ci": None,
                "n": None}
    lo, hi = a["ci95"]
    return {"cls": "num", "v": repr(a["mean"]), "text": f"{a['mean']:.1f}",
            "title": f"{m} = {a['mean']:.4g}, 95% CI [{lo}, {hi}], std {a.get('std')}, n {a.get('n')}; from {src}",
            "ci": None if lo is None else f"[{lo:.1f}, {hi:.1f}]",
            "n": None if a.get("n") in (None, n_row) else f"(n={a['n']})"}


def _n_value(n: Any) -> str:
    return "" if n is None else str(n)


def _run_table(group: dict, metrics: list[str], runs: dict[str, dict]) -> dict:
    rows = []
    for row in group["rows"]:
        pv = runs[row["run"]]
        prov = (f"{row['run']}: {pv['run_dir']} | method {row['method']} | params "
                f"{json.dumps(row['params'], sort_keys=True, default=str)} | code {row['code']}")
        src = f"{pv['run_dir']}/summary.json, " + ("pre-edit" if row["kind"] == "pre"
                                                    else f"strength {row['strength']:g}")
        rows.append({"kind": row["kind"] + (" flagged" if is_flagged(row) else ""), "run": row["run"],
                     "method": row["method"], "cls": row["method_class"], "config": row["config"],
                     "health": health_text(row["health"]), "health_title": health_detail(row["health"]),
                     "prov": prov, "cells": [_agg_cell(m, row["metrics"][m], row["n"], row["run"], src) for m in metrics],
                     "n": row["n"], "n_v": _n_value(row["n"]), "code": row["code"]})
    return {"metrics": metrics, "rows": rows}


def _sweep_table(sw: dict, split: str) -> dict:
    rows = []
    for row in sw["splits"][split]["rows"]:
        who = f"{row['method']} {row['config']}"
        src = f"{sw['sweep_dir']}/points.jsonl, split {split}, key {row['key']}"
        rows.append({"kind": row["kind"] + (" flagged" if is_flagged(row) else ""), "method": row["method"],
                     "cls": row["method_class"], "config": row["config"], "src": src,
                     "health": health_text(row["health"]), "health_title": health_detail(row["health"]),
                     "params": json.dumps(row["params"], sort_keys=True, default=str),
                     "cells": [_agg_cell(m, row["metrics"][m], row["n"], who, src) for m in sw["columns"]],
                     "pareto_v": "" if row["pareto"] is None else str(int(row["pareto"] and not is_flagged(row))),
                     "pareto": pareto_cell(row), "n": row["n"], "n_v": _n_value(row["n"]),
                     "code": row["code"]})
    return {"split": split, "metrics": sw["columns"], "rows": rows}


def _best(best: dict | None) -> dict | None:
    if not best:
        return None
    return {"metric": best["metric"], "word": "highest" if best["higher_is_better"] else "lowest",
            "items": [{"cls": b["method_class"], "label": f"{b['method']} {b['config']} ({b['run']})",
                       "value": f"{b['mean']:.1f}", "health": "" if b["health"] == "healthy" else f"health {b['health']}"}
                      for b in best["by_class"]]}


def _fmt_num(v: float | None) -> str:
    return MISSING if v is None else f"{v:.3f}"


def _drilldown(rid: str, run: dict, dd: dict) -> dict:
    if not dd.get("metric"):
        return {"rid": rid, "note": dd.get("note", "no per-case records")}
    points = []
    for s, cases in dd["points"].items():
        if not cases:
            continue
        points.append({"strength": s, "columns": list(cases[0]["values"]), "cases": [{
            "case_v": str(c["case_id"]) if isinstance(c["case_id"], (int, float)) else "",
            "case_id": c["case_id"],
            "request": list(c["request"].items()),
            "prompts": [(k, " | ".join(map(str, v)) if isinstance(v, list) else v) for k, v in c["prompts"].items()],
            "values": [{"v": "" if x["post"] is None else repr(x["post"]), "pre": _fmt_num(x["pre"]),
                        "post": _fmt_num(x["post"])} for x in c["values"].values()]} for c in cases]})
    return {"rid": rid, "note": None, "method": run["method"], "metric": dd["metric"], "run_dir": run["run_dir"],
            "order": "lowest" if dd["higher_is_better"] else "highest", "points": points}


def _code_line(v: dict) -> str:
    return (f"editbench {v.get('editbench')} commit {v.get('git_commit')}"
            + (" (uncommitted changes)" if v.get("git_dirty") else ""))


def _versions_line(v: dict) -> str:
    return ", ".join(f"{k} {val}" for k, val in v.items() if not str(k).startswith(("git_", "editbench")))


def _model_line(m: dict) -> str:
    return f"{m.get('model_id')} ({m.get('model_type', '?')}, {m.get('dtype', '?')}, {m.get('device', '?')})"


def _provenance(board: dict) -> list[dict]:
    out = []
    for rid, pv in board["runs"].items():
        m, v = pv["model"], pv["versions"]
        rows = [("run directory", pv["run_dir"]), ("method", pv["method"]),
                ("method params", json.dumps(pv["method_params"], sort_keys=True, default=str)),
                ("strengths", ", ".join(f"{s:g}" for s in pv["strengths"])), ("cases", pv["n_cases"]),
                ("benchmark / split", f"{pv['benchmark']} / {pv['split']}"),
                *[(f"data {k}", f"sha256 {h}") for k, h in pv["data_files"].items()],
                ("model", _model_line(m)),
                ("model weights sha256", m.get("weights_sha256")), ("model source", m.get("source")),
                ("code (last invocation)", _code_line(v)),
                *[("code of records", f"{_code_line(c)}: {c.get('n_records')} records") for c in pv["record_code"]],
                ("versions", _versions_line(v)),
                ("wall seconds (last invocation)", pv["wall_seconds_last_invocation"])]
        out.append({"anchor": f"run-{rid}", "id": rid, "title": pv["method"], "rows": rows,
                    "config": json.dumps(pv["config"], indent=2, sort_keys=True, default=str)})
    for g in board["sweep_groups"]:
        for sw in g["sweeps"]:
            pv, cfg = sw["provenance"], sw["provenance"]["config"]
            m, v = pv["model"], pv["versions"]
            rows = [("sweep directory", pv["sweep_dir"]),
                    ("methods", "; ".join(f"{x.get('name')} {json.dumps(x.get('params'), sort_keys=True, default=str)} "
                                          f"strengths {x.get('strengths')}" for x in cfg["methods"]
                                          if isinstance(x, dict))),
                    ("benchmark", f"{cfg.get('benchmark')} "
                                  f"{json.dumps(cfg.get('benchmark_options') or {}, default=str)}"),
                    *[(f"data {k}", f"sha256 {h}") for k, h in pv["data_files"].items()],
                    ("model", _model_line(m)),
                    ("model weights sha256", m.get("weights_sha256")), ("model source", m.get("source")),
                    ("code (at start)", _code_line(v)), ("versions", _versions_line(v)),
                    ("per-item records", f"{pv['sweep_dir']}/{pv['items_file']}")]
            out.append({"anchor": f"prov-{sw['id']}", "id": sw["id"], "title": f"sweep {cfg.get('benchmark')}",
                        "rows": rows, "config": json.dumps(cfg, indent=2, sort_keys=True, default=str)})
    return out


def render_html(board: dict, figures: dict[int, list[tuple[str, str]]], drill: dict[str, dict],
                sweep_figures: dict[str, str] | None = None) -> str:
    """A single page: sortable tables, figures, drill-down, provenance.
    ``figures``: per group index (title, image src) pairs; ``drill``: board["worst_cases"];
    ``sweep_figures``: an image src per sweep id. A src is a ``data:`` URI (self-contained page) or a
    relative path; it is escaped as any other attribute value."""
    runs = board["runs"]
    groups = [{"title": g["title"], "protocol": g["protocol"], "notes": g["notes"], "best": _best(g.get("best")),
               "headline": _run_table(g, g["headline"], runs),
               "other": _run_table(g, g["other_metrics"], runs) if g["other_metrics"] else None,
               "figures": figures.get(gi, []),
               "retention": retention_cells(g["retention"]) if g.get("retention") else None,
               "drilldown": [_drilldown(rid, runs[rid], drill[rid]) for rid in g["runs"] if rid in drill]}
              for gi, g in enumerate(board["groups"])]
    sweep_groups = [{"title": g["title"], "protocol": g["protocol"], "notes": g["notes"], "sweeps": [
        {"id": sw["id"], "sweep_dir": sw["sweep_dir"], "description": sw["description"],
         "headline_title": sw["headline_title"], "headline": sw["headline"], "hypervolume": sw["hypervolume"],
         "tables": [_sweep_table(sw, split) for split in sw["splits"]], "notes": sw["notes"],
         "figure": (sweep_figures or {}).get(sw["id"])} for sw in g["sweeps"]]} for g in board["sweep_groups"]]
    page = environment().get_template("index.html.j2").render(
        missing=MISSING, classes=board["method_classes"], health=board["health"], groups=groups, sweep_groups=sweep_groups, provenance=_provenance(board),
        skipped=board["skipped"])
    return page.rstrip("\n") + "\n"
