"""Trade-off analysis of sweep points: curves, Pareto fronts, matched-utility gains, hypervolume.

Conventions: x is higher-better: the mean MC ``utility``, or ``-neutral_kl`` (``matched_axis: kl``,
the default [ours]: a lower KL from the unedited model on neutral text counts as higher utility);
the attribute (y) is oriented by the benchmark's ``higher_is_better`` (for reasoning length,
shorter is better) before any comparison. Only *valid* points (:mod:`editbench.evaluation.validity`)
enter fronts, hypervolumes and selections; invalid ones are counted per method and split.
* Pareto front: points no other point beats on both axes (ties kept).
* Matched utility (the Steer2Edit paper's headline): a method point's attribute minus the
  baseline's attribute at the same x, linearly interpolated along the baseline's Pareto front
  (baseline points plus the original model). A point less useful than the front's least useful
  point is compared with that point [ours]: the baseline reaches its attribute at a higher
  utility, so the comparison can only favour the baseline; without this, a baseline that never
  beats the original model (a one-point front) would leave every method point uncompared. A point
  more useful than every front point has no comparison.
  The operating point is the method's point with the largest gain on ``val``; its gain is then
  reported on ``test`` (the same configuration and strength), so nothing is selected on test.
  Each gain has a paired bootstrap 95% CI over the split's items (:mod:`editbench.evaluation.power`;
  x is held fixed); "no detectable difference" when it contains 0.
* Censoring [ours]: a gain is "not decidable" when more than ``max_censored_share`` of the items
  of the method point or of a baseline point it is interpolated from hit the generation budget
  (``censored_share``): a truncated length is a lower bound, so the difference is not a length gain.
  Such val points are not selected either.
* Hypervolume: area dominated by a method's points plus the original model, above the reference
  point (lowest x, worst attribute over all valid points of that split).
* Decidability [ours]: every method-vs-baseline comparison records whether the protocol can decide
  it on test (``decidable``, with ``undecidable_reasons`` when not): no test gain (no valid point,
  invalid on test, more useful than every baseline point), censoring (above), floor or ceiling (a
  rate attribute whose method and baseline values both lie within :data:`FLOOR_MARGIN` points of 0,
  or of 100: nothing moved off the end of the scale), or a paired CI half-width above
  ``max_halfwidth`` (the sweep's ``target_halfwidth``, default 10 points): too few items to tell a
  gain of that size from none. ``verdict`` reads the CI whatever the decidability: the method is
  better, the baseline is better, or no detectable difference.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from editbench.evaluation import metrics as M
from editbench.evaluation.power import paired_gain, power_statement
from editbench.evaluation.validity import is_valid, validity_note

Point = dict
AXES = ("kl", "utility")
#: a sweep's default ``max_censored_share``: above it a length difference is mostly truncation
DEFAULT_MAX_CENSORED_SHARE = 0.2
#: a sweep's default ``target_halfwidth`` (attribute units; points for a x100 proportion)
DEFAULT_TARGET_HALFWIDTH = 10.0
#: a rate comparison whose two values both lie this close (points) to 0 or to 100 sits at the floor /
#: ceiling of the scale: "not decidable" [ours]
FLOOR_MARGIN = 5.0
#: item values of a split's points: {(point key, split): {item id: value}}
Items = Mapping[tuple[str, str], Mapping[Any, float]]


def _x(p: Point, axis: str) -> float | None:
    agg = p.get("utility" if axis == "utility" else "neutral_kl") or {}
    v = agg.get("mean")
    if v is None or not math.isfinite(v):
        return None
    return float(v) if axis == "utility" else -float(v)


def _xy(p: Point, sign: float, axis: str = "utility") -> tuple[float, float]:
    return _x(p, axis), sign * p["attribute"]["mean"]  # type: ignore[return-value]


def resolve_axis(points: Sequence[Point], matched_axis: str) -> tuple[str, str | None]:
    """(the axis used, why it differs from ``matched_axis``): ``kl`` needs neutral_kl on every
    valid point (older sweeps have none), else the analysis falls back to ``utility``."""
    if matched_axis == "kl" and any(_x(p, "kl") is None for p in points if is_valid(p)):
        return "utility", "neutral_kl not measured on every valid point: matched on MC utility instead"
    return matched_axis, None


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of non-dominated (x, y) points (both maximised), sorted by x."""
    idx = []
    for i, (x, y) in enumerate(xy):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in xy):
            idx.append(i)
    return sorted(idx, key=lambda i: (xy[i][0], xy[i][1]))


def bracket(front: Sequence[tuple[float, float]], x: float, below: bool = False) -> list[tuple[int, float]] | None:
    """The front points a linear interpolation at ``x`` uses, with their weights (one point at
    weight 1 on an exact match, else the two neighbours); None outside the front's x range, except
    that ``below`` gives the front's lowest-x point to an ``x`` left of it. For equal x the best y
    is used."""
    if not front:
        return None
    xs = np.array([p[0] for p in front])
    if (x < xs.min() - 1e-12 and not below) or x > xs.max() + 1e-12:
        return None
    best: dict[float, int] = {}
    for i, (px, py) in enumerate(front):
        if px not in best or py > front[best[px]][1]:
            best[px] = i
    ux = sorted(best)
    k = int(np.searchsorted(ux, x))
    if k < len(ux) and abs(ux[k] - x) <= 1e-12:
        return [(best[ux[k]], 1.0)]
    if k == 0:
        return [(best[ux[0]], 1.0)]
    if k == len(ux):
        return [(best[ux[-1]], 1.0)]
    t = (x - ux[k - 1]) / (ux[k] - ux[k - 1])
    return [(best[ux[k - 1]], 1.0 - t), (best[ux[k]], t)]


def interpolate_front(front: Sequence[tuple[float, float]], x: float) -> float | None:
    """Attribute of a front at ``x`` (linear), None outside its x range."""
    b = bracket(front, x)
    return None if b is None else float(sum(w * front[i][1] for i, w in b))


def hypervolume(xy: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``xy`` (maximised) above ``ref``."""
    pts = sorted((max(x, ref[0]), max(y, ref[1])) for x, y in xy)
    area, best_y = 0.0, ref[1]
    for x, y in reversed(pts):  # sweep from the largest x down
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


#: the per-case columns of the knowledge-edit Score (its attribute is their harmonic mean)
SCORE_COLUMNS = ("efficacy", "generalization", "specificity")


def item_values(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[Any, Any]]:
    """:data:`Items` from items.jsonl records: attribute items with a numeric per-item ``value``;
    knowledge-edit cases (no ``value``: their attribute, the Score, is a harmonic mean of column
    means, not an item mean) give their (ES, PS, NS) triple instead."""
    out: dict[tuple[str, str], dict[Any, Any]] = {}
    for r in records:
        if r.get("kind") != "attribute":
            continue
        v, post = r.get("value"), r.get("post") or {}
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.setdefault((r["key"], r["split"]), {})[json.dumps(r.get("item_id"))] = float(v)
        elif v is None and all(_finite_number(post.get(c)) for c in SCORE_COLUMNS):
            out.setdefault((r["key"], r["split"]), {})[json.dumps(r.get("item_id"))] = tuple(
                float(post[c]) for c in SCORE_COLUMNS)
    return out


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def analyze(points: Sequence[Point], track: dict, baseline: str = DEFAULT_BASELINE, matched_axis: str = "kl",
            items: Items | None = None, max_censored_share: float = DEFAULT_MAX_CENSORED_SHARE,
            target_halfwidth: float = DEFAULT_TARGET_HALFWIDTH) -> dict:
    sign = 1.0 if track.get("higher_is_better", True) else -1.0
    vary = varying_params(points)
    axis, axis_note = resolve_axis(points, matched_axis)
    usable = [p for p in points if p["attribute"]["mean"] is not None]
    out: dict = {"attribute": track.get("attribute"), "higher_is_better": sign > 0, "baseline": baseline,
                 "matched_axis": axis, "axis_note": axis_note, "validity_note": validity_note(points),
                 "max_censored_share": max_censored_share, "splits": {}, "invalid": {}, "power": {}}
    for split in ("val", "test"):
        sp = [p for p in points if p["split"] == split]
        out["invalid"][split] = {m: {"invalid": sum(not is_valid(p) for p in sp if p["method"] == m),
                                     "points": sum(p["method"] == m for p in sp)} for m in sorted({p["method"] for p in sp})}
        unedited = next((p for p in sp if p["method"] == "unedited"), None)
        n_used = (track.get("n_items") or {}).get(split) or (unedited or {}).get("attribute", {}).get("n") or 0
        ref_vals = list(((items or {}).get((unedited["key"], split)) or {}).values()) if unedited else []
        out["power"][split] = power_statement(target_halfwidth, float(track.get("scale", 100.0)), n_used, ref_vals)
        ps = [p for p in usable if p["split"] == split and is_valid(p) and _x(p, axis) is not None]
        if not ps:
            continue
        xy = [_xy(p, sign, axis) for p in ps]
        front = pareto_front(xy)
        ref = (min(x for x, _ in xy), min(y for _, y in xy))
        orig = [i for i, p in enumerate(ps) if p["method"] == "unedited"]
        methods = sorted({p["method"] for p in ps} - {"unedited"})
        hv = {m: hypervolume([xy[i] for i, p in enumerate(ps) if p["method"] == m] + [xy[i] for i in orig], ref)
              for m in methods}
        out["splits"][split] = {
            "pareto": [{"key": ps[i]["key"], "label": label(ps[i], vary[ps[i]["method"]]), "strength": ps[i]["strength"]}
                       for i in front],
            "hypervolume": hv, "reference_point": {_axis_name(axis): ref[0] if axis == "utility" else -ref[0],
                                                   "attribute": sign * ref[1]},
        }
    out["matched_utility"] = _matched(usable, sign, baseline, vary, axis, items or {}, max_censored_share,
                                      float(track.get("scale", 100.0)))
    out["max_halfwidth"] = target_halfwidth
    rate = float(track.get("scale", 100.0)) == 100.0
    for entry in out["matched_utility"].values():
        if isinstance(entry, dict):
            entry.update(decide(entry, sign, target_halfwidth, rate))
    return out


def decide(entry: Mapping[str, Any], sign: float, max_halfwidth: float, rate: bool) -> dict:
    """``{"decidable", "undecidable_reasons", "verdict"}`` of one matched-gain entry (its test
    comparison): see the module doc. ``verdict`` is None where there is no test gain or CI."""
    reasons: list[str] = []
    gain, ci = _number(entry.get("gain_test")), entry.get("gain_test_ci")
    if "note" in entry:
        reasons.append(str(entry["note"]))
    elif entry.get("test_invalid"):
        reasons.append("the operating point is invalid on test")
    elif entry.get("not_decidable"):
        reasons.append(str(entry["not_decidable"]).removeprefix("not decidable: "))
    elif gain is None:
        reasons.append("no test comparison (the point is more useful than every baseline point)")
    bounds = ci.get("ci95") if isinstance(ci, dict) else None
    lo, hi = (_number(b) for b in bounds) if isinstance(bounds, list) and len(bounds) == 2 else (None, None)
    if not reasons:
        a, b = _number(entry.get("attribute_test")), _number(entry.get("baseline_attribute_test"))
        if rate and a is not None and b is not None:
            if max(a, b) <= FLOOR_MARGIN:
                reasons.append(f"floor: method {a:.1f} and baseline {b:.1f} both within {FLOOR_MARGIN:g} points of 0")
            elif min(a, b) >= 100 - FLOOR_MARGIN:
                reasons.append(f"ceiling: method {a:.1f} and baseline {b:.1f} both within {FLOOR_MARGIN:g} points of 100")
        if lo is None or hi is None:
            reasons.append("no paired CI")
        elif (hi - lo) / 2 > max_halfwidth:
            reasons.append(f"CI half-width {(hi - lo) / 2:.1f} > {max_halfwidth:g} (n = {ci.get('n')})")
    verdict = None
    if lo is not None and hi is not None and gain is not None:
        better, worse = (lo > 0, hi < 0) if sign > 0 else (hi < 0, lo > 0)
        verdict = "method better" if better else "baseline better" if worse else "no detectable difference"
    return {"decidable": not reasons, "undecidable_reasons": reasons, "verdict": verdict}


def _axis_name(axis: str) -> str:
    return "utility" if axis == "utility" else "neutral_kl"


def _front_of(points: Sequence[Point], method: str, split: str, sign: float, axis: str) -> list[Point]:
    ps = [p for p in points if p["split"] == split and p["method"] in (method, "unedited") and is_valid(p)
          and _x(p, axis) is not None]
    return [ps[i] for i in pareto_front([_xy(p, sign, axis) for p in ps])]


def _censored(ps: Sequence[Point], limit: float) -> float | None:
    """The largest ``censored_share`` of ``ps`` when it exceeds ``limit``, else None."""
    shares = [p["censored_share"] for p in ps if isinstance(p.get("censored_share"), (int, float))]
    return max(shares) if shares and max(shares) > limit else None


def _gain(p: Point, front: list[Point], sign: float, axis: str, items: Items, limit: float, scale: float) -> dict:
    """The gain of ``p`` over the baseline front at its x: ``{"gain", "baseline", "x", "ci"}`` (and
    ``"below": True`` when compared with the front's least useful point), ``{"outside": True}``
    when more useful than every front point, ``{"censored": share}`` when not decidable."""
    x, y = _xy(p, sign, axis)
    fxy = [_xy(q, sign, axis) for q in front]
    b = bracket(fxy, x, below=True)
    if b is None:
        return {"outside": True, "x": x}
    used = [front[i] for i, _ in b]
    share = _censored([p] + used, limit)
    if share is not None:
        return {"censored": share, "x": x}
    base = sum(w * fxy[i][1] for i, w in b)
    terms = [(1.0, items.get((p["key"], p["split"]))), *((-w, items.get((front[i]["key"], p["split"]))) for i, w in b)]
    if all(t[1] for t in terms):
        joint = isinstance(next(iter(terms[0][1].values())), tuple)  # knowledge-edit cases: the Score
        ci = paired_gain(terms, scale, M.hmean_rows if joint else None)
    else:
        ci = None
    out = {"gain": sign * (y - base), "baseline": sign * base, "x": x, "ci": ci}
    if x < min(fx for fx, _ in fxy) - 1e-12:
        out["below"] = True
    return out


def _matched(points: Sequence[Point], sign: float, baseline: str, vary: dict, axis: str, items: Items,
             limit: float, scale: float) -> dict:
    if not any(p["method"] == baseline for p in points):
        return {"note": f"baseline '{baseline}' not in the sweep"}
    fronts = {s: _front_of(points, baseline, s, sign, axis) for s in ("val", "test")}
    test_by_key = {p["key"]: p for p in points if p["split"] == "test"}
    out = {}
    for m in sorted({p["method"] for p in points} - {baseline, "unedited"}):
        cands = [p for p in points if p["method"] == m and p["split"] == "val" and _x(p, axis) is not None]
        valid = [p for p in cands if is_valid(p)]
        gains = [(p, _gain(p, fronts["val"], sign, axis, items, limit, scale)) for p in valid]
        rows = [(sign * g["gain"], p, g) for p, g in gains if "gain" in g]
        if not rows:
            shares = [g["censored"] for _, g in gains if "censored" in g]
            out[m] = {"note": "no valid point on val" if not valid else
                      f"not decidable: {100 * max(shares):.0f}% censored" if shares else
                      "every valid point more useful than any baseline point on val: no comparison",
                      "invalid_points": len(cands) - len(valid)}
            continue
        _, best, g = max(rows, key=lambda r: r[0])
        entry: dict = {"operating_point": {"key": best["key"], "label": label(best, vary[m]), "strength": best["strength"]},
                       "gain_val": g["gain"], "gain_val_ci": g["ci"], "invalid_points": len(cands) - len(valid),
                       "below_front_val": bool(g.get("below"))}
        tp = test_by_key.get(best["key"])
        if tp is not None and not is_valid(tp):
            entry["test_invalid"] = list(tp.get("invalid_reasons") or ["invalid"])
        elif tp is not None and _x(tp, axis) is not None:
            t = _gain(tp, fronts["test"], sign, axis, items, limit, scale)
            entry.update({"utility_test": tp["utility"]["mean"], "neutral_kl_test": (tp.get("neutral_kl") or {}).get("mean"),
                          "attribute_test": tp["attribute"]["mean"], "baseline_attribute_test": t.get("baseline"),
                          "gain_test": t.get("gain"), "gain_test_ci": t.get("ci"), "below_front_test": bool(t.get("below"))})
            if "censored" in t:
                entry["not_decidable"] = f"not decidable: {100 * t['censored']:.0f}% censored"
        out[m] = entry
    return out


# ---------------------------------------------------------------------------------------------
def _fmt(agg: dict | None, spec: str = ".1f") -> str:
    if not agg or agg.get("mean") is None:
        return "—"
    lo, hi = agg.get("ci95", [None, None])
    return f"{agg['mean']:{spec}} [{lo:{spec}}, {hi:{spec}}]" if lo is not None else f"{agg['mean']:{spec}}"


def _validity_cell(p: Point) -> str:
    v = p.get("valid")
    return "—" if v is None else "yes" if v else "**no**: " + "; ".join(p.get("invalid_reasons") or [])


def format_points(points: Sequence[Point], split: str, pareto_keys: set[str] = frozenset()) -> str:
    vary = varying_params(points)
    # per-task accuracies stay in points.jsonl; the table keeps the headline and benchmark metrics
    extra = sorted({k for p in points for k, v in p.items() if isinstance(v, dict) and "mean" in v
                    and not k.endswith(("_acc", "_acc_norm"))} - {"attribute", "utility"})
    # the share of budget-truncated responses; a benchmark that aggregates ``censored`` per item
    # already has it as a column, with its CI
    censored = "censored" not in extra and any(isinstance(p.get("censored_share"), (int, float)) for p in points)
    lines = ["| method | strength | attribute | utility | " + " | ".join(extra) + " | "
             + ("censored | " if censored else "") + "valid | Pareto | s (fit+eval) |",
             "|---|---|---|---|" + "---|" * (len(extra) + censored) + "---|---|---|"]
    for p in sorted((p for p in points if p["split"] == split), key=lambda p: (p["method"] != "unedited", p["key"])):
        cells = [_fmt(p.get(k), ".3g" if k == "neutral_kl" else ".1f") for k in extra]
        if censored:
            c = p.get("censored_share")
            cells.append("—" if c is None else f"{100 * c:.0f}%")
        secs = p.get("seconds", {})
        lines.append(f"| {label(p, vary[p['method']])} | {p['strength']:g} | {_fmt(p['attribute'])} | {_fmt(p['utility'])} | "
                     + " | ".join(cells) + f" | {_validity_cell(p)} | {'*' if p['key'] in pareto_keys else ''} | "
                     f"{secs.get('fit', 0):.1f}+{secs.get('eval', 0):.1f} |")
    return "\n".join(lines)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def gain_ci_text(c: Any) -> str:
    """A gain's paired CI in words; an entry without one (no per-item values, or a sweep from
    before paired CIs) says so."""
    ci = c.get("ci95") if isinstance(c, dict) else None
    if not isinstance(ci, list) or len(ci) != 2 or None in map(_number, ci):
        return ", no paired CI"
    how = "Newcombe paired score interval" if c.get("ci_method") == "newcombe" else "paired bootstrap"
    over = f", {how} over {c['n']} items" if isinstance(c.get("n"), int) else ""
    verdict = "; no detectable difference" if c.get("no_detectable_difference") else ""
    return f" [95% CI {ci[0]:+.1f}, {ci[1]:+.1f}{over}{verdict}]"


def matched_entry_text(e: Mapping[str, Any], axis: str = "utility", baseline: str = "baseline") -> str:
    """One method's matched-gain entry (``analysis['matched_utility'][method]``) in words: the
    operating point chosen on val, its val gain, and what test says. The one wording used by
    ``analysis.md`` and the leaderboard; tolerant of entries from older sweeps."""
    if "note" in e or not isinstance(e.get("operating_point"), dict):
        return str(e.get("note", "no operating point"))
    op = e["operating_point"]
    gv = _number(e.get("gain_val"))
    head = (f"operating point {op.get('label')} s={_number(op.get('strength')) or 0:g}; gain on val "
            + ("—" if gv is None else f"{gv:+.1f}{gain_ci_text(e.get('gain_val_ci'))}") + "; ")
    if e.get("test_invalid"):
        return head + "on test the point is invalid (" + "; ".join(map(str, e["test_invalid"])) + "): no gain reported"
    if e.get("not_decidable"):
        return head + f"on test {e['not_decidable']}: no gain reported"
    if "attribute_test" not in e:
        return head + "no test point"
    x = _number(e.get("neutral_kl_test" if axis == "kl" else "utility_test"))
    at = "—" if x is None else f"neutral_kl {x:.3g}" if axis == "kl" else f"utility {x:.1f}"
    gt, a, b = (_number(e.get(k)) for k in ("gain_test", "attribute_test", "baseline_attribute_test"))
    if gt is None or a is None or b is None:
        return head + f"on test the point ({at}) is more useful than every {baseline} point: no comparison"
    where = (f"{baseline}'s least useful front point, which is more useful than the method point at {at}"
             if e.get("below_front_test") is True else at)
    return head + (f"gain on test {gt:+.1f}{gain_ci_text(e.get('gain_test_ci'))} (attribute {a:.1f} vs {baseline} "
                   f"{b:.1f} at {where})") + decision_text(e)


def decision_text(e: Mapping[str, Any]) -> str:
    """"; decidable" / "; not decidable (reasons)" of an entry that records it (else nothing)."""
    if not isinstance(e.get("decidable"), bool):
        return ""
    if e["decidable"]:
        return "; decidable"
    return "; not decidable (" + "; ".join(map(str, e.get("undecidable_reasons") or [])) + ")"


def format_analysis(summary: dict, points: Sequence[Point]) -> str:
    a = summary["analysis"]
    cfg = summary["config"]
    axis = a.get("matched_axis", "utility")
    lines = [f"# Sweep: {cfg['benchmark']} on {cfg['model']}",
             f"attribute: {a['attribute']} ({'higher' if a['higher_is_better'] else 'lower'} is better); "
             f"utility: mean {cfg['utility']['metric']} over {', '.join(cfg['utility']['tasks'])}; "
             f"code {summary['versions']['git_commit'][:10]}{' (dirty)' if summary['versions']['git_dirty'] else ''}"]
    bounds = cfg.get("validity") or {}
    lines += ["", "A point is valid when its wikitext perplexity is at most "
              f"{bounds.get('max_ppl_ratio', '?')}x the unedited model's and its neutral_kl (mean next-token KL from "
              f"the unedited model on neutral text) at most {bounds.get('max_neutral_kl', '?')} nats; invalid points "
              "stay in the tables but enter no Pareto front, hypervolume or matched-utility selection."]
    if a.get("validity_note"):
        lines.append(a["validity_note"] + ".")
    for split, counts in (a.get("invalid") or {}).items():
        bad = [f"{m} {c['invalid']}/{c['points']}" for m, c in counts.items() if c["invalid"]]
        lines.append(f"invalid points on {split}: " + (", ".join(bad) if bad else "none"))
    for split, pw in (a.get("power") or {}).items():
        need = "—" if pw["n_needed"] is None else pw["n_needed"]
        lines.append(f"{split}: n needed for ±{pw['halfwidth']:g}: {need}; used: {pw['n_used']} ({pw['basis']})")
    for split, info in a["splits"].items():
        lines += ["", f"## {split}", format_points(points, split, {q["key"] for q in info["pareto"]}), "",
                  "hypervolume (with the original model, valid points, x = "
                  + ("MC utility" if axis == "utility" else "-neutral_kl") + "): "
                  + ", ".join(f"{m} {v:{'.1f' if axis == 'utility' else '.3g'}}" for m, v in info["hypervolume"].items())]
    what = ("MC utility" if axis == "utility" else
            "neutral_kl (x = -neutral_kl: a lower KL from the unedited model counts as higher utility)")
    lines += ["", f"## Attribute gain over {a['baseline']} at matched {what} (chosen on val, reported on test)"]
    if a.get("axis_note"):
        lines.append(a["axis_note"] + ".")
    lines.append("Gains are attribute differences (method - baseline): "
                 + ("positive is better." if a["higher_is_better"] else "lower is better, so negative is the improvement.")
                 + f" A gain is not decidable when over {100 * a.get('max_censored_share', 0.2):.0f}% of the items of the "
                 "method point or of a baseline point it is compared with hit the generation budget.")
    lp = a.get("linear_probe")
    if isinstance(lp, dict) and lp.get("layers"):
        best = next(r for r in lp["layers"] if r["layer"] == lp["best_layer"])
        lines += ["", f"Linear probe of the attribute on the probe set ({lp['n_pos']} vs {lp['n_neg']} examples, "
                      f"{lp['folds']}-fold CV, residual stream after each layer): best layer {lp['best_layer']} "
                      f"({100 * best['accuracy']:.0f}% ± {100 * best['std']:.0f}); by layer: "
                  + ", ".join(f"{r['layer']}: {100 * r['accuracy']:.0f}" for r in lp["layers"])]
    mu = a["matched_utility"]
    if "note" in mu:
        lines.append(mu["note"])
    lines += [f"- {m}: {matched_entry_text(e, axis, a.get('baseline') or 'baseline')}" for m, e in mu.items()
              if isinstance(e, dict)]
    return "\n".join(lines) + "\n"
