"""How sure a sweep's comparisons are [ours]: paired bootstrap CIs of gains, and the sample size a
target CI half-width needs.

Every point of a split is measured on the same held-out items, so a gain (a method point's
attribute minus a weighted combination of baseline points' attributes, the matched-utility
interpolation) is a mean of per-item differences ``d_i = v_method,i - sum_k w_k v_k,i``.
Bootstrapping ``d`` resamples item indices jointly for all points involved (a paired bootstrap):
the CI is much narrower than one built from the points' separate CIs when the points agree on most
items, which is the common case for nearby strengths.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from editbench.evaluation import metrics as M

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def paired_gain(terms: Sequence[tuple[float, Mapping[Any, Any]]], scale: float,
                statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> dict | None:
    """``sum_k w_k * mean(values_k)`` over the items every term has (``terms``: (w_k, {item id:
    value})), with the percentile bootstrap CI of :func:`editbench.evaluation.metrics.aggregate`
    over the per-item differences; ``no_detectable_difference`` when the CI contains 0. None when
    no item is shared.

    ``statistic``: the values are per-item vectors and each term's attribute is ``statistic`` of
    their column means (the knowledge-edit Score: the harmonic mean of ES, PS and NS, which is not
    an item mean); the gain ``sum_k w_k * statistic_k`` is then bootstrapped by resampling the
    shared items jointly for every term (the same resamples as every other CI)."""
    shared = set.intersection(*(set(vals) for _, vals in terms)) if terms else set()
    ids = sorted(shared, key=str)
    if statistic is not None:
        if not ids:
            return None
        cols = [(w, np.asarray([vals[i] for i in ids], dtype=np.float64)) for w, vals in terms]  # [n, k] each
        point = sum(w * float(statistic(X.mean(axis=0)[None])[0]) for w, X in cols)
        idx = M.bootstrap_indices(len(ids))
        boot = sum(w * statistic(X[idx].mean(axis=1)) for w, X in cols)
        lo, hi = (float(v) * scale for v in np.percentile(boot, [2.5, 97.5])) if len(ids) > 1 else (point * scale,) * 2
        return {"mean": point * scale, "ci95": [lo, hi], "n": len(ids),
                "no_detectable_difference": bool(lo <= 0 <= hi)}
    diffs = [sum(w * vals[i] for w, vals in terms) for i in ids]
    agg = M.aggregate(diffs, scale=scale)
    if agg["mean"] is None:
        return None
    lo, hi = agg["ci95"]
    out = {"mean": agg["mean"], "ci95": [lo, hi], "n": agg["n"]}
    if lo == hi and all(vals[i] in (0, 1) for _, vals in terms for i in ids):
        pairs = _binary_pairs(terms, ids, diffs)
        if pairs is not None:  # every pair agrees (or one term each way): Newcombe's paired interval
            a = sum(x and y for x, y in pairs)
            b = sum(x and not y for x, y in pairs)
            c = sum(y and not x for x, y in pairs)
            lo, hi = (v * scale for v in M.newcombe_paired_interval(a, b, c, len(pairs) - a - b - c))
            out.update(ci95=[lo, hi], ci_method="newcombe")
    return {**out, "no_detectable_difference": bool(lo <= 0 <= hi)}


def _binary_pairs(terms: Sequence[tuple[float, Mapping[Any, Any]]], ids: list, diffs: list) -> list | None:
    """(method, baseline) per item for a zero-width gain of 0/1 values: a method-minus-one-point
    gain pairs its two columns; an interpolated baseline whose every difference is 0 agrees with the
    method on every item (its 0/1 points do too); anything else has no paired table (None)."""
    (w0, first), rest = terms[0], terms[1:]
    if w0 != 1:
        return None
    if len(rest) == 1 and rest[0][0] == -1:
        return [(bool(first[i]), bool(rest[0][1][i])) for i in ids]
    if all(abs(d) < 1e-9 for d in diffs):
        return [(bool(first[i]), bool(first[i])) for i in ids]
    return None


def n_for_halfwidth(halfwidth: float, sd: float) -> int:
    """Items needed for a 95% CI of half-width ``halfwidth`` on a mean whose per-item standard
    deviation is ``sd`` (normal approximation: n = z^2 sd^2 / h^2, rounded up)."""
    return max(1, math.ceil((Z95 * sd / halfwidth) ** 2 - 1e-9))


def power_statement(halfwidth: float, scale: float, n_used: int, unedited_values: Sequence[float]) -> dict:
    """The sample size a split needs for ±``halfwidth`` (attribute units): for a proportion
    (``scale`` 100) the worst case p = 0.5 (sd = 50 points), otherwise the unedited model's
    per-item standard deviation on the split."""
    if scale == 100.0:
        sd, basis = 50.0, "a proportion at p = 0.5"
    else:
        vals = [float(v) * scale for v in unedited_values if v is not None and math.isfinite(v)]
        if len(vals) < 2:
            return {"halfwidth": halfwidth, "n_used": n_used, "n_needed": None,
                    "basis": "no per-item spread of the unedited model to size from"}
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        basis = f"the unedited model's per-item sd {sd:.3g}"
        if sd == 0:
            return {"halfwidth": halfwidth, "n_used": n_used, "n_needed": 1, "basis": basis}
    return {"halfwidth": halfwidth, "n_used": n_used, "n_needed": n_for_halfwidth(halfwidth, sd), "basis": basis}
