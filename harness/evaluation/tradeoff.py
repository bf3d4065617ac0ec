"""Trade-off analysis of sweep points: curves, Pareto fronts, matched-utility gains, hypervolume.

Conventions: utility (x) is higher-better; the attribute (y) is oriented by the benchmark's
``higher_is_better`` (for reasoning length, shorter is better) before any comparison.
* Pareto front: points no other point beats on both axes (ties kept).
* Matched utility (the Steer2Edit paper's headline): a method point's attribute minus the
  baseline's attribute at the same utility, linearly interpolated along the baseline's Pareto
  front (baseline points plus the original model); undefined outside the front's utility range.
  The operating point is the method's point with the largest gain on ``val``; its gain is then
  reported on ``test`` (the same configuration and strength), so nothing is selected on test.
* Hypervolume: area dominated by a method's points plus the original model, above the reference
  point (lowest utility, worst attribute over all points of that split).
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

Point = dict


def _xy(p: Point, sign: float) -> tuple[float, float]:
    return p["utility"]["mean"], sign * p["attribute"]["mean"]


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of non-dominated (x, y) points (both maximised), sorted by x."""
    idx = []
    for i, (x, y) in enumerate(xy):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in xy):
            idx.append(i)
    return sorted(idx, key=lambda i: (xy[i][0], xy[i][1]))


def interpolate_front(front: Sequence[tuple[float, float]], x: float) -> float | None:
    """Attribute of a front at utility ``x`` (linear), None outside its utility range."""
    if not front:
        return None
    xs = np.array([p[0] for p in front])
    ys = np.array([p[1] for p in front])
    if x < xs.min() - 1e-12 or x > xs.max() + 1e-12:
        return None
    # fronts may hold equal x; np.interp wants increasing xs: keep the best y per x
    ux = np.unique(xs)
    uy = np.array([ys[xs == v].max() for v in ux])
    return float(np.interp(x, ux, uy))


def hypervolume(xy: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``xy`` (maximised) above ``ref``."""
    pts = sorted((max(x, ref[0]), max(y, ref[1])) for x, y in xy)
    area, best_y = 0.0, ref[1]
    for x, y in reversed(pts):  # sweep from the largest utility down
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def label(p: Point, varying: Sequence[str]) -> str:
    if not varying:
        return p["method"]
    return p["method"] + "[" + ",".join(f"{k}={p['params'].get(k)}" for k in varying) + "]"


def varying_params(points: Sequence[Point]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in {p["method"] for p in points}:
        ps = [p["params"] for p in points if p["method"] == m]
        keys = sorted({k for q in ps for k in q})
        out[m] = [k for k in keys if len({json.dumps(q.get(k)) for q in ps}) > 1]
    return out


#: the method every other is compared against at matched utility (the Steer2Edit paper's baseline)
DEFAULT_BASELINE = "steering"


def analyze(points: Sequence[Point], track: dict, baseline: str = DEFAULT_BASELINE) -> dict:
    sign = 1.0 if track.get("higher_is_better", True) else -1.0
    vary = varying_params(points)
    out: dict = {"attribute": track.get("attribute"), "higher_is_better": sign > 0, "baseline": baseline, "splits": {}}
    for split in ("val", "test"):
        ps = [p for p in points if p["split"] == split and p["utility"]["mean"] is not None
              and p["attribute"]["mean"] is not None]
        if not ps:
            continue
        xy = [_xy(p, sign) for p in ps]
        front = pareto_front(xy)
        ref = (min(x for x, _ in xy), min(y for _, y in xy))
        orig = [i for i, p in enumerate(ps) if p["method"] == "unedited"]
        methods = sorted({p["method"] for p in ps} - {"unedited"})
        hv = {m: hypervolume([xy[i] for i, p in enumerate(ps) if p["method"] == m] + [xy[i] for i in orig], ref)
              for m in methods}
        out["splits"][split] = {
            "pareto": [{"key": ps[i]["key"], "label": label(ps[i], vary[ps[i]["method"]]), "strength": ps[i]["strength"]}
                       for i in front],
            "hypervolume": hv, "reference_point": {"utility": ref[0], "attribute": sign * ref[1]},
        }
    out["matched_utility"] = _matched(points, sign, baseline, vary)
    return out


def _front_of(points: Sequence[Point], method: str, split: str, sign: float) -> list[tuple[float, float]]:
    ps = [p for p in points if p["split"] == split and p["method"] in (method, "unedited")]
    xy = [_xy(p, sign) for p in ps]
    return [xy[i] for i in pareto_front(xy)]


def _matched(points: Sequence[Point], sign: float, baseline: str, vary: dict) -> dict:
    if not any(p["method"] == baseline for p in points):
        return {"note": f"baseline '{baseline}' not in the sweep"}
    fronts = {s: _front_of(points, baseline, s, sign) for s in ("val", "test")}
    test_by_key = {p["key"]: p for p in points if p["split"] == "test"}
    out = {}
    for m in sorted({p["method"] for p in points} - {baseline, "unedited"}):
        rows = []
        for p in points:
            if p["method"] != m or p["split"] != "val":
                continue
            x, y = _xy(p, sign)
            base = interpolate_front(fronts["val"], x)
            if base is not None:
                rows.append((y - base, p))
        if not rows:
            out[m] = {"note": "no point within the baseline's utility range on val"}
            continue
        gain_val, best = max(rows, key=lambda r: r[0])
        tp = test_by_key.get(best["key"])
        entry = {"operating_point": {"key": best["key"], "label": label(best, vary[m]), "strength": best["strength"]},
                 "gain_val": sign * gain_val}
        if tp is not None:
            x, y = _xy(tp, sign)
            base = interpolate_front(fronts["test"], x)
            entry.update({"utility_test": x, "attribute_test": sign * y,
                          "baseline_attribute_test": None if base is None else sign * base,
                          "gain_test": None if base is None else sign * (y - base)})
        out[m] = entry
    return out


# ---------------------------------------------------------------------------------------------
def _fmt(agg: dict | None) -> str:
    if not agg or agg.get("mean") is None:
        return "—"
    lo, hi = agg.get("ci95", [None, None])
    return f"{agg['mean']:.1f} [{lo:.1f}, {hi:.1f}]" if lo is not None else f"{agg['mean']:.1f}"


def format_points(points: Sequence[Point], split: str, pareto_keys: set[str] = frozenset()) -> str:
    vary = varying_params(points)
    # per-task accuracies stay in points.jsonl; the table keeps the headline and benchmark metrics
    extra = sorted({k for p in points for k, v in p.items() if isinstance(v, dict) and "mean" in v
                    and not k.endswith(("_acc", "_acc_norm"))} - {"attribute", "utility"})
    lines = ["| method | strength | attribute | utility | " + " | ".join(extra) + " | Pareto | s (fit+eval) |",
             "|---|---|---|---|" + "---|" * len(extra) + "---|---|"]
    for p in sorted((p for p in points if p["split"] == split), key=lambda p: (p["method"] != "unedited", p["key"])):
        cells = [_fmt(p.get(k)) for k in extra]
        secs = p.get("seconds", {})
        lines.append(f"| {label(p, vary[p['method']])} | {p['strength']:g} | {_fmt(p['attribute'])} | {_fmt(p['utility'])} | "
                     + " | ".join(cells) + f" | {'*' if p['key'] in pareto_keys else ''} | "
                     f"{secs.get('fit', 0):.1f}+{secs.get('eval', 0):.1f} |")
    return "\n".join(lines)


def format_analysis(summary: dict, points: Sequence[Point]) -> str:
    a = summary["analysis"]
    cfg = summary["config"]
    lines = [f"# Sweep: {cfg['benchmark']} on {cfg['model']}",
             f"attribute: {a['attribute']} ({'higher' if a['higher_is_better'] else 'lower'} is better); "
             f"utility: mean {cfg['utility']['metric']} over {', '.join(cfg['utility']['tasks'])}; "
             f"code {summary['versions']['git_commit'][:10]}{' (dirty)' if summary['versions']['git_dirty'] else ''}"]
    for split, info in a["splits"].items():
        lines += ["", f"## {split}", format_points(points, split, {q["key"] for q in info["pareto"]}), "",
                  "hypervolume (with the original model): " +
                  ", ".join(f"{m} {v:.1f}" for m, v in info["hypervolume"].items())]
    lines += ["", f"## Attribute gain over {a['baseline']} at matched utility (chosen on val, reported on test)",
              "Gains are attribute differences (method - baseline): "
              + ("positive is better." if a["higher_is_better"] else "lower is better, so negative is the improvement.")]
    mu = a["matched_utility"]
    if "note" in mu:
        lines.append(mu["note"])
    for m, e in mu.items():
        if not isinstance(e, dict):
            continue
        if "note" in e:
            lines.append(f"- {m}: {e['note']}")
        else:
            gt = e.get("gain_test")
            lines.append(f"- {m}: operating point {e['operating_point']['label']} s={e['operating_point']['strength']:g}; "
                         f"gain on val {e['gain_val']:+.1f}; on test "
                         + ("outside the baseline's utility range" if gt is None else
                            f"{gt:+.1f} (attribute {e['attribute_test']:.1f} vs baseline {e['baseline_attribute_test']:.1f} "
                            f"at utility {e['utility_test']:.1f})"))
    return "\n".join(lines) + "\n"

