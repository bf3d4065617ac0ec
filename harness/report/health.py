"""What the leaderboard says about a row besides its numbers: its method class and its model health.

**Method class.** Every row carries the ``method_class`` its method declared
(:data:`editbench.plugins.method.METHOD_CLASSES`): from the run summary (``method_class``, written
by the runner; sweep points carry it too), else, for summaries written before that, from the
installed method plugin, else ``unknown``. Rows are sorted by class and every "best" selection is
made per class, so a gated (semi-parametric) editor is never ranked against ungated ones.

**Health.** A row is compared with the unedited model on the same cases (its run's own pre-edit
numbers, else the group's unedited row):

* ``broken`` when ``neutral_kl`` (mean next-token KL from the unedited model over neutral text,
  nats) exceeds the unedited row's by more than ``broken_kl``, or ``fluency`` (n-gram entropy,
  bits) is more than ``broken_fluency_drop`` below the unedited row's;
* ``broken`` also when any metric of the row reports non-finite per-case values (``non_finite`` in
  its aggregate: NaN/inf logits or probabilities); those cases are left out of the means, so the
  means alone would judge the row on its surviving cases;
* ``degenerate`` when ``efficacy_magnitude`` is within ±:data:`DEGENERATE_EM_BAND` points of 0
  while ``efficacy`` >= :data:`DEGENERATE_MIN_EFFICACY` and ``ee_rewrite_acc`` is 0: the new target
  "wins" only because both targets' probabilities collapsed (Steer2Edit's neuron edits on Gemma 3);
* ``healthy`` when at least one of ``neutral_kl`` / ``fluency`` was measured and nothing is flagged;
* ``not measured`` when neither was (summaries from before the metrics existed): never read as healthy;
* ``reference`` for the unedited rows themselves.

Flagged rows (``broken``, ``degenerate``) stay in the tables, labelled, and are left out of every
selection the report makes: the best row per class, the trade-off figure's lines, Pareto marks
and matched-utility headlines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from editbench.errors import EditbenchError

UNKNOWN_CLASS = "unknown"
#: Presentation order and legend of the method classes; the same names, in the same order, as
#: editbench.plugins.method.METHOD_CLASSES (tested; not imported here, so the report needs no torch).
CLASS_INFO: dict[str, str] = {
    "reference": "the unedited model",
    "weight-edit": "changes the model's weights; every prompt sees the edit",
    "activation-steering": "adds vectors to the activations of every prompt (no scope gate)",
    "gated": "semi-parametric: stores per-edit keys and changes only the prompts its scope gate lets "
             "through, so its specificity measures the gate as much as the edit; compared only with "
             "other gated methods",
}
UNKNOWN_INFO = "the summary predates `method_class` and the method's plugin is not installed here"

HEALTH_METRICS = ("neutral_kl", "fluency")
DEGENERATE_EM_BAND = 1.0  # |efficacy_magnitude| <= this (points, x100 scale)
DEGENERATE_MIN_EFFICACY = 80.0
FLAGGED = ("broken", "degenerate")
STATUSES = ("reference", "healthy", "not measured", "broken", "degenerate")


# ---------------------------------------------------------------------------------------------
# Method classes
# ---------------------------------------------------------------------------------------------
def class_rank(method_class: str) -> tuple[int, str]:
    """Sort key: the declared classes in their order, then other names alphabetically, unknown last."""
    order = list(CLASS_INFO)
    if method_class in order:
        return order.index(method_class), ""
    return (len(order) + (method_class == UNKNOWN_CLASS), method_class)


def plugin_class(method: str) -> str | None:
    """``method_class`` of an installed method plugin; None when it is not importable here."""
    try:
        from editbench.plugins import registry

        value = registry.load("method", method).method_class
    except Exception:  # noqa: BLE001 - a missing or broken plugin: the class is unknown
        return None
    return value if isinstance(value, str) and value.strip() else None


def resolve_class(declared: Any, method: str, cache: dict[str, str | None]) -> str:
    """The summary's (or sweep point's) ``method_class``, else the installed plugin's, else unknown."""
    if isinstance(declared, str) and declared.strip():
        return declared
    if method not in cache:
        cache[method] = plugin_class(method)
    return cache[method] or UNKNOWN_CLASS


def class_legend(classes: Sequence[str]) -> list[tuple[str, str]]:
    """(class, explanation) for the classes present, in presentation order."""
    return [(c, CLASS_INFO.get(c, UNKNOWN_INFO if c == UNKNOWN_CLASS else "declared by its method plugin"))
            for c in sorted(set(classes), key=class_rank)]


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthThresholds:
    """``editbench report --broken-kl`` / ``--broken-fluency-drop``."""

    broken_kl: float = 1.0  # nats above the unedited model's neutral_kl
    broken_fluency_drop: float = 1.0  # bits below the unedited model's fluency

    def __post_init__(self):
        for opt, v in (("--broken-kl", self.broken_kl), ("--broken-fluency-drop", self.broken_fluency_drop)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise EditbenchError(f"{opt} must be a finite number >= 0, got {v!r}")

    @classmethod
    def parse(cls, broken_kl: Any = 1.0, broken_fluency_drop: Any = 1.0) -> "HealthThresholds":
        """From command-line strings (or numbers); a bad value is a one-line error."""
        vals = []
        for opt, v in (("--broken-kl", broken_kl), ("--broken-fluency-drop", broken_fluency_drop)):
            try:
                vals.append(float(v))
            except (TypeError, ValueError):
                raise EditbenchError(f"{opt} must be a finite number >= 0, got {v!r}") from None
        return cls(*vals)

    def describe(self) -> dict:
        return {**asdict(self), "degenerate": {"efficacy_magnitude_within": DEGENERATE_EM_BAND,
                                               "efficacy_at_least": DEGENERATE_MIN_EFFICACY,
                                               "ee_rewrite_acc": 0.0}}


def _mean(metrics: Mapping[str, Any], name: str) -> float | None:
    a = metrics.get(name)
    v = a.get("mean") if isinstance(a, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def reference_health() -> dict:
    return {"status": "reference", "reasons": [], "not_measured": []}


def non_finite_counts(aggs: Mapping[str, Any]) -> dict[str, int]:
    """``{metric: cases}`` for the raw aggregates that report non-finite per-case values."""
    out = {}
    for m, a in (aggs or {}).items():
        k = a.get("non_finite") if isinstance(a, dict) else None
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            out[m] = k
    return out


def assess(metrics: Mapping[str, Any], ref: Mapping[str, Any], th: HealthThresholds,
           non_finite: Mapping[str, int] | None = None) -> dict:
    """Health of one row (aggregates by metric) against the unedited row's aggregates ``ref``;
    ``non_finite``: :func:`non_finite_counts` of the row's raw aggregates."""
    reasons: list[str] = []
    broken = degenerate = False
    if non_finite:
        broken = True
        reasons.append("non-finite values (NaN/inf) in " + ", ".join(
            f"{m} ({k} case{'s' if k != 1 else ''})" for m, k in sorted(non_finite.items()))
            + ", left out of those means")
    measured, not_measured = [], []
    kl = _mean(metrics, "neutral_kl")
    if kl is None:
        not_measured.append("neutral_kl")
    else:
        measured.append("neutral_kl")
        base = _mean(ref, "neutral_kl") or 0.0  # the unedited model's KL from itself is 0
        if kl - base > th.broken_kl:
            broken = True
            reasons.append(f"neutral_kl {kl:.3g} nats is more than {th.broken_kl:g} above the unedited {base:.3g}")
    flu, flu_ref = _mean(metrics, "fluency"), _mean(ref, "fluency")
    if flu is None or flu_ref is None:
        not_measured.append("fluency" + ("" if flu is None else " (no unedited fluency to compare with)"))
    else:
        measured.append("fluency")
        if flu < flu_ref - th.broken_fluency_drop:
            broken = True
            reasons.append(f"fluency {flu:.3g} bits is more than {th.broken_fluency_drop:g} below the unedited "
                           f"{flu_ref:.3g}")
    em, es, ee = _mean(metrics, "efficacy_magnitude"), _mean(metrics, "efficacy"), _mean(metrics, "ee_rewrite_acc")
    if None not in (em, es, ee) and abs(em) <= DEGENERATE_EM_BAND and es >= DEGENERATE_MIN_EFFICACY and ee == 0:
        degenerate = True
        reasons.append(f"efficacy {es:.1f} >= {DEGENERATE_MIN_EFFICACY:g} while efficacy_magnitude {em:.2f} is "
                       f"within ±{DEGENERATE_EM_BAND:g} of 0 and ee_rewrite_acc is 0: both targets' "
                       "probabilities collapsed")
    status = ("broken" if broken else "degenerate" if degenerate else
              "healthy" if measured else "not measured")
    return {"status": status, "reasons": reasons, "not_measured": not_measured}


def is_flagged(row: Mapping[str, Any]) -> bool:
    return (row.get("health") or {}).get("status") in FLAGGED


def health_text(h: Mapping[str, Any]) -> str:
    """The short cell text: the status."""
    return str(h.get("status", "not measured"))


def health_detail(h: Mapping[str, Any]) -> str:
    """The status with its reasons and what was not measured (a tooltip, a note)."""
    parts = list(h.get("reasons") or [])
    if h.get("not_measured") and h.get("status") != "reference":
        parts.append("not measured: " + ", ".join(h["not_measured"]))
    return health_text(h) + (f" ({'; '.join(parts)})" if parts else "")


def best_per_class(rows: Sequence[dict], metric: str, higher: bool) -> dict:
    """The best edited row of each class by ``metric`` (flagged rows left out), as leaderboard.json
    records it: ``{"metric", "higher_is_better", "by_class": [...], "excluded": [...]}``."""
    by_class: dict[str, dict] = {}
    excluded = []
    for i, row in enumerate(rows):
        if row["kind"] != "post":
            continue
        agg = row["metrics"].get(metric)
        if agg is None:
            continue
        if is_flagged(row):
            excluded.append(f"{row['method']} {row['config']} ({row['run'] if 'run' in row else row.get('key')}): "
                            f"{health_text(row['health'])}")
            continue
        cur = by_class.get(row["method_class"])
        better = cur is None or (agg["mean"] > cur["mean"] if higher else agg["mean"] < cur["mean"])
        if better:
            by_class[row["method_class"]] = {"method_class": row["method_class"], "row": i, "method": row["method"],
                                             "config": row["config"], "run": row.get("run"), "mean": agg["mean"],
                                             "health": health_text(row["health"])}
    return {"metric": metric, "higher_is_better": higher,
            "by_class": [by_class[c] for c in sorted(by_class, key=class_rank)], "excluded": excluded}
