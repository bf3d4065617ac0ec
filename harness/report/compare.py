"""``editbench compare NEW BASELINE``: metric-by-metric regression check between two runs.

Points are matched by strength (plus the pre-edit point, which checks the unedited model and the
evaluation itself). For every metric reported by the baseline at a matched point, with ``d`` the
change NEW - BASELINE of the means, signed so that positive is better (``-d`` for lower-is-better
metrics), and ``tol`` the metric's tolerance:

* **regression**  ``d < -tol`` AND NEW's mean lies outside BASELINE's 95% CI on the worse side
  (below ``ci95[0]``; above ``ci95[1]`` for lower-is-better). A baseline without a CI is judged
  by the tolerance alone. A metric the baseline reports but NEW does not is also a regression.
* **improvement** ``d > tol`` AND NEW's mean outside BASELINE's CI on the better side.
* **drop within CI** / **gain within CI**: beyond the tolerance, but inside BASELINE's CI
  (sampling noise at this many cases; a warning, not a failure).
* **within tolerance**: ``0 < |d| <= tol``; **unchanged**: ``d == 0`` (to 1e-9).

Both conditions must hold for a failure: the tolerance says how much change matters, the CI says
whether a change of that size is distinguishable from case sampling. Exit status: 0 no regression,
1 regression, 2 the runs cannot be compared (missing directory or summary, different benchmark,
split, model, weights, data files, dtype or method, or no common strength).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from editbench.errors import EditbenchError
from editbench.evaluation import metric_registry
from editbench.report.model import Run, direction_overrides, load_summary, normalize_agg, protocol_diff, protocol_of

EPS = 1e-9
DEFAULT_TOLERANCE = 0.5
FAILING = ("regression", "missing")


@dataclass
class Change:
    point: str
    metric: str
    base: dict | None
    new: dict | None
    delta: float | None
    tolerance: float
    higher_is_better: bool
    status: str

    @property
    def failed(self) -> bool:
        return self.status in FAILING


def parse_tolerances(items: Sequence[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EditbenchError(f"--tolerance expects METRIC=VALUE, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        try:
            val = float(v)
        except ValueError:
            raise EditbenchError(f"--tolerance {item!r}: {v!r} is not a number") from None
        if not math.isfinite(val) or val < 0:
            raise EditbenchError(f"--tolerance {item!r}: must be a finite number >= 0")
        out[k] = val
    return out


def classify(base: dict | None, new: dict | None, tol: float,
             higher_is_better: bool = True) -> tuple[str, float | None]:
    """Status of one metric at one point (see the module docstring) and the raw delta."""
    if base is None or base.get("mean") is None:
        return ("new metric" if new and new.get("mean") is not None else "absent"), None
    if new is None or new.get("mean") is None:
        return "missing", None
    delta = float(new["mean"]) - float(base["mean"])
    d = delta if higher_is_better else -delta
    if abs(delta) <= EPS:
        return "unchanged", delta
    if abs(d) <= tol + EPS:
        return "within tolerance", delta
    ci = list(base.get("ci95") or []) + [None, None]
    lo, hi = ci[0], ci[1]
    if d < 0:
        bound = lo if higher_is_better else hi
        outside = bound is None or (new["mean"] < bound if higher_is_better else new["mean"] > bound)
        return ("regression" if outside else "drop within CI"), delta
    bound = hi if higher_is_better else lo
    outside = bound is None or (new["mean"] > bound if higher_is_better else new["mean"] < bound)
    return ("improvement" if outside else "gain within CI"), delta


def _points(summary: dict) -> dict[float, str]:
    return {float(k): k for k in summary["points"]}


def check_comparable(new: Run, base: Run) -> list[str]:
    """Raise on a protocol mismatch; return warnings for differences that do not forbid comparing."""
    diff = protocol_diff(protocol_of(new), protocol_of(base))
    if diff:
        raise EditbenchError("cannot compare NEW and BASELINE: different " + "; ".join(diff))
    if new.method != base.method:
        raise EditbenchError(f"cannot compare NEW and BASELINE: different method ({new.method} vs {base.method})")
    warn = []
    if new.params != base.params:
        keys = sorted(k for k in set(new.params) | set(base.params) if new.params.get(k) != base.params.get(k))
        warn.append("method params differ: " + ", ".join(
            f"{k} {new.params.get(k)!r} vs {base.params.get(k)!r}" for k in keys))
    if new.n_cases != base.n_cases:
        warn.append(f"different numbers of cases ({new.n_cases} vs {base.n_cases})")
    for key in ("seed", "limit", "generation", "max_new_tokens"):
        a, b = new.config.get(key), base.config.get(key)
        if a != b:
            warn.append(f"different {key} ({a} vs {b})")
    return warn


def compare_runs(new_dir: str | Path, base_dir: str | Path, tolerances: dict[str, float] | None = None,
                 default_tolerance: float = DEFAULT_TOLERANCE, lower_is_better: Sequence[str] = ()
                 ) -> tuple[list[Change], list[str]]:
    """All metric changes between two run directories, and warnings about the comparison."""
    tolerances = dict(tolerances or {})
    if not math.isfinite(default_tolerance) or default_tolerance < 0:
        raise EditbenchError(f"--default-tolerance must be a finite number >= 0, got {default_tolerance}")
    try:
        new = Run("NEW", Path(new_dir), load_summary(new_dir))
    except EditbenchError as e:
        raise EditbenchError(f"NEW: {e}") from None
    try:
        base = Run("BASELINE", Path(base_dir), load_summary(base_dir))
    except EditbenchError as e:
        raise EditbenchError(f"BASELINE: {e}") from None
    warnings = check_comparable(new, base)
    pn, pb = _points(new.summary), _points(base.summary)
    common = sorted(set(pn) & set(pb))
    if not common:
        raise EditbenchError(f"cannot compare: no common strength (NEW {sorted(pn)}, BASELINE {sorted(pb)})")
    for s in sorted(set(pb) - set(pn)):
        warnings.append(f"strength {s:g} is in BASELINE only; not compared")
    for s in sorted(set(pn) - set(pb)):
        warnings.append(f"strength {s:g} is in NEW only; not compared")
    pairs = [("pre", base.pre(), new.pre())] + [(f"s={s:g}", base.post(pb[s]), new.post(pn[s])) for s in common]
    known = set()
    for _, b, n in pairs:
        known |= set(b) | set(n)
    # directions: the registry, overridden by what the baseline's summary states, then by --lower-is-better
    directions = {**metric_registry.directions(known, direction_overrides(base.summary)),
                  **{m: False for m in lower_is_better}}
    unknown = sorted(set(tolerances) - known)
    if unknown:
        raise EditbenchError(f"--tolerance names metrics neither run reports: {', '.join(unknown)} "
                             f"(metrics: {', '.join(metric_registry.order(known))})")
    unknown = sorted(set(lower_is_better) - known)
    if unknown:
        raise EditbenchError(f"--lower-is-better names metrics neither run reports: {', '.join(unknown)}")
    changes = []
    for label, b, n in pairs:
        for m in metric_registry.order(set(b) | set(n)):
            tol = tolerances.get(m, default_tolerance)
            hib = directions.get(m, True)
            ba, na = normalize_agg(b.get(m)), normalize_agg(n.get(m))  # malformed = not reported
            status, delta = classify(ba, na, tol, hib)
            if status == "absent":
                continue
            changes.append(Change(label, m, ba, na, delta, tol, hib, status))
    return changes, warnings


# ---------------------------------------------------------------------------------------------
def _fmt(a: dict | None) -> str:
    if not a or a.get("mean") is None:
        return "—"
    lo, hi = (a.get("ci95") or [None, None])[:2]
    return f"{a['mean']:.2f}" + ("" if lo is None else f" [{lo:.2f}, {hi:.2f}]")


def format_table(changes: Sequence[Change], show_all: bool = False) -> str:
    """Markdown table of the metrics that moved (all metrics with ``show_all``)."""
    rows = [c for c in changes if show_all or c.status != "unchanged"]
    if not rows:
        return f"no metric moved ({len(changes)} compared)"
    lines = ["| point | metric | baseline | new | delta | tolerance | status |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        delta = "—" if c.delta is None else f"{c.delta:+.2f}"
        arrow = "" if c.higher_is_better else " (lower is better)"
        lines.append(f"| {c.point} | {c.metric}{arrow} | {_fmt(c.base)} | {_fmt(c.new)} | {delta} | {c.tolerance:g} | "
                     f"{'**' + c.status + '**' if c.failed else c.status} |")
    return "\n".join(lines)


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def github_lines(changes: Sequence[Change], warnings: Sequence[str], new_dir: str, base_dir: str) -> list[str]:
    """GitHub Actions workflow commands: errors for regressions, warnings for drops within the CI."""
    out = []
    for w in warnings:
        out.append(f"::warning title={_gh_escape('editbench compare', True)}::{_gh_escape(w)}")
    for c in changes:
        if c.status in ("unchanged", "within tolerance", "new metric"):
            continue
        level = {"regression": "error", "missing": "error", "drop within CI": "warning"}.get(c.status, "notice")
        title = f"editbench {c.status}: {c.metric} at {c.point}"
        if c.status == "missing":
            msg = f"{c.metric} at {c.point} is reported by BASELINE ({base_dir}) but not by NEW ({new_dir})"
        else:
            msg = (f"{c.metric} at {c.point}: {_fmt(c.base)} -> {_fmt(c.new)} (delta {c.delta:+.2f}, tolerance "
                   f"{c.tolerance:g}, {'higher' if c.higher_is_better else 'lower'} is better); "
                   f"NEW {new_dir} vs BASELINE {base_dir}")
        out.append(f"::{level} title={_gh_escape(title, True)}::{_gh_escape(msg)}")
    return out


def _cmd_compare(a: argparse.Namespace) -> int:
    changes, warnings = compare_runs(a.new, a.baseline, parse_tolerances(a.tolerance), a.default_tolerance,
                                     a.lower_is_better or ())
    failed = [c for c in changes if c.failed]
    moved = [c for c in changes if c.status != "unchanged"]
    print(f"# compare NEW {a.new} vs BASELINE {a.baseline}")
    print(format_table(changes, show_all=a.all))
    if a.format == "github":
        for line in github_lines(changes, warnings, a.new, a.baseline):
            print(line)
    else:
        for w in warnings:
            print(f"warning: {w}")
    counts = {}
    for c in changes:
        counts[c.status] = counts.get(c.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{'REGRESSION' if failed else 'OK'}: {len(changes)} metric values compared, {len(moved)} moved ({summary})")
    return 1 if failed else 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``editbench compare`` on the CLI's subparsers."""
    p = sub.add_parser("compare", help="compare a run against a baseline run; exit 1 on a regression",
                       description="Regression rule: a metric regresses when it drops by more than its tolerance "
                                   "AND the new mean lies outside the baseline's 95% CI on the worse side. "
                                   "Exit 0: none, 1: regression, 2: runs not comparable.")
    p.add_argument("new", metavar="NEW", help="run directory to check")
    p.add_argument("baseline", metavar="BASELINE", help="reference run directory (e.g. results/ci/...)")
    p.add_argument("--tolerance", action="append", metavar="METRIC=VALUE",
                   help="allowed drop for one metric, in its reported units (x100 for rates); repeatable")
    p.add_argument("--default-tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="X",
                   help=f"allowed drop for other metrics (default {DEFAULT_TOLERANCE})")
    p.add_argument("--lower-is-better", action="append", metavar="METRIC",
                   help="treat METRIC as lower-is-better (also read from the summary and the metric registry)")
    p.add_argument("--format", choices=("text", "github"), default="text",
                   help="github: also print ::error/::warning/::notice workflow commands")
    p.add_argument("--all", action="store_true", help="list unchanged metrics too")
    p.set_defaults(func=_cmd_compare)
