"""All figures of the report and of ``editbench curves``/``editbench sweep`` (matplotlib, seaborn).

How a method looks in a sweep figure is a table (:data:`STYLES`, ``{method: Style}``) with a
deterministic fallback for methods it does not name (a colour picked by a stable hash of the
name), so a new method plugin gets a stable look without any code here. Figures are saved with
:func:`editbench.report.figures.save_figure`, so the same numbers give byte-identical files.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from editbench.evaluation.tradeoff import DEFAULT_BASELINE, varying_params
from editbench.report.figures import save_figure
from editbench.report.health import is_flagged
from editbench.report.model import REFERENCE_METHOD as REFERENCE, Sweep, normalize_agg

Point = dict

# seaborn's "deep" palette (hex, so the table needs no seaborn import)
DEEP = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
        "#64B5CD")


@dataclass(frozen=True)
class Style:
    """How one method is drawn in a sweep (attribute vs utility) panel."""

    color: str
    marker: str = "s"
    #: matplotlib format-string line part: "-", "--", ":" ...; "" = markers only
    linestyle: str = "--"
    markersize: float = 5
    zorder: float = 3
    alpha: float | None = None
    #: legend label; None: the method name
    label: str | None = None
    #: write each point's strength next to it
    annotate: bool = True
    #: append "(k configs)" to the label when the method has several configurations
    count_configs: bool = False
    #: a curve through strengths: as the baseline it is drawn solid with circles from the original model
    curve: bool = True

    @property
    def fmt(self) -> str:
        return self.marker + self.linestyle


#: the baseline of a sweep (``--baseline``, default steering): a solid curve with circles
BASELINE_MARKER, BASELINE_LINESTYLE = "o", "-"

STYLES: dict[str, Style] = {
    "unedited": Style("black", "^", "", markersize=9, zorder=5, label="original", annotate=False, curve=False),
    "steering": Style(DEEP[0]),
    "steer2edit": Style(DEEP[1], "*", "", markersize=12, zorder=4, alpha=0.9, label="Steer2Edit", annotate=False,
                        count_configs=True, curve=False),
    "steering-layer": Style(DEEP[2]),
    "mega": Style(DEEP[3]),
    "ft": Style(DEEP[4]),
}
# colours for methods STYLES does not name: the rest of "deep", then seaborn's "dark" (so a fallback
# colour is never one of the built-in methods')
FALLBACK_COLORS = DEEP[5:] + ("#001C7F", "#B1400D", "#12711C", "#8C0800", "#591E71", "#592F0D", "#A23582", "#3C3C3C",
                              "#B8850A", "#006374")


def plain(text: object) -> str:
    """A label drawn as given: ``$`` would start matplotlib mathtext (and a malformed one fails the draw)."""
    return str(text).replace("$", r"\$")


def style_of(method: str) -> Style:
    """The method's style: from :data:`STYLES`, else a dashed square-marker curve in a colour chosen
    by a stable hash of the name (the same in every process and on every machine)."""
    if method in STYLES:
        return STYLES[method]
    return Style(FALLBACK_COLORS[zlib.crc32(method.encode("utf-8")) % len(FALLBACK_COLORS)])


#: how invalid sweep points are drawn: grey crosses, outside every line
INVALID_STYLE = {"marker": "x", "color": "0.6", "ms": 6, "ls": "none", "zorder": 2}


def _x_of(p: Point, axis: str) -> dict | None:
    """The aggregate a point is placed by on the x-axis (``utility`` or ``neutral_kl``)."""
    agg = p.get("utility" if axis == "utility" else "neutral_kl")
    return agg if isinstance(agg, dict) and agg.get("mean") is not None else None


def panel_data(points: Sequence[Point], axis: str = "utility", split: str = "test") -> dict:
    """What a sweep panel draws: valid points per method (lines), invalid points (greyed, marked,
    never in a line), the x-axis, and the MC utility's chance level (x = utility only; the points'
    ``utility_chance``, from the tasks' numbers of choices)."""
    ps = [p for p in points if p["split"] == split and p["attribute"]["mean"] is not None and _x_of(p, axis)]
    chance = [p["utility_chance"] for p in ps if isinstance(p.get("utility_chance"), (int, float))]
    series: dict[str, list[Point]] = {}
    for p in ps:
        if p.get("valid") is not False:
            series.setdefault(p["method"], []).append(p)
    for m in series:
        series[m].sort(key=lambda p: (json.dumps(p["params"], sort_keys=True), p["strength"]))
    return {"axis": axis, "series": dict(sorted(series.items())), "invalid": [p for p in ps if p.get("valid") is False],
            "chance": chance[0] if chance and axis == "utility" else None}


def plot_panels(panels: Sequence[tuple], path_stem: Path, split: str = "test",
                baseline: str = DEFAULT_BASELINE) -> list[Path]:
    """Attribute vs x, one panel per (title, points, track[, x-axis: ``utility`` (default) or ``kl``]), each
    method drawn by its :func:`style_of`: the baseline as a curve starting at the original model,
    Steer2Edit configurations as stars, other methods as connected markers, the original model as
    a triangle; invalid points as grey crosses; MC utility's chance level dashed; error bars are
    bootstrap 95% CIs. On the KL axis lower is better, so it is drawn reversed. Saves PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, points, track, *x_axis) in zip(axes[0], panels):
        axis = x_axis[0] if x_axis else "utility"
        data = panel_data(points, axis, split)
        vary = varying_params([p for ps in data["series"].values() for p in ps])
        orig = data["series"].get(REFERENCE, [])
        for m, mp in data["series"].items():
            x = np.array([_x_of(p, axis)["mean"] for p in mp])
            y = np.array([p["attribute"]["mean"] for p in mp])
            xerr = np.abs(np.array([_x_of(p, axis)["ci95"] for p in mp], dtype=float).T - x)
            yerr = np.abs(np.array([p["attribute"]["ci95"] for p in mp], dtype=float).T - y)
            st = style_of(m)
            fmt = st.fmt
            if st.curve and m == baseline:
                fmt = BASELINE_MARKER + BASELINE_LINESTYLE
                if orig:  # the baseline curve starts at the original model (strength 0)
                    ax.plot([_x_of(orig[0], axis)["mean"], x[0]], [orig[0]["attribute"]["mean"], y[0]], "-",
                            color=st.color, lw=1)
            label = plain(st.label or m)
            if st.count_configs and (vary.get(m) or len(mp) > 1):
                label += f" ({len(mp)} configs)"
            ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt=fmt, color=st.color,
                        ms=st.markersize, capsize=2, alpha=st.alpha, label=label, zorder=st.zorder)
            if st.annotate:
                for p, xi, yi in zip(mp, x, y):
                    ax.annotate(f"{p['strength']:g}", (xi, yi), textcoords="offset points", xytext=(3, 3),
                                fontsize=6)
        if data["invalid"]:
            ax.plot([_x_of(p, axis)["mean"] for p in data["invalid"]], [p["attribute"]["mean"] for p in data["invalid"]],
                    label=f"invalid ({len(data['invalid'])}, excluded)", **INVALID_STYLE)
        if data["chance"] is not None:
            ax.axvline(data["chance"], ls="--", color="0.4", lw=1, label=f"chance ({data['chance']:.1f})")
        if axis == "utility":
            ax.set_xlabel(f"MC utility ({split})")
        else:
            ax.set_xlabel(f"neutral KL, nats ({split}; reversed: better →)")
            ax.invert_xaxis()
        arrow = "↑" if track.get("higher_is_better", True) else "↓"
        ax.set_ylabel(plain(f"{track.get('attribute')} {arrow}"))
        ax.set_title(plain(title))
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    for p in paths:
        save_figure(fig, p, dpi=150)
    plt.close(fig)
    return paths


def sweep_figure(sw: Sweep, stem: Path, exclude: Collection[str] = ()) -> Path | None:
    """The sweep's test-split trade-off re-plotted by :func:`plot_panels` (PNG + SVG) from the points
    whose attribute and utility have CIs (points whose key is in ``exclude``, flagged by the
    report's health check, left out); None when there are none."""
    axis = sweep_axis(sw.analysis)
    xname = "utility" if axis == "utility" else "neutral_kl"
    pts = []
    for q in sw.points:
        if q.get("key") in exclude:
            continue
        a, x = normalize_agg(q.get("attribute")), normalize_agg(q.get(xname))
        if q["split"] == "test" and a and x and None not in a["ci95"] + x["ci95"]:
            pts.append({**q, "attribute": a, xname: x})
    if not pts:
        return None
    title = f"{sw.model_id} / {sw.benchmark}"
    return plot_panels([(title, pts, sw.track, axis)], stem, baseline=sw.baseline)[0]


def sweep_axis(analysis: dict) -> str:
    """The x-axis a sweep's analysis matched on (``utility`` for sweeps from before ``matched_axis``)."""
    return "kl" if analysis.get("matched_axis") == "kl" else "utility"


# (x, y) trade-off figures drawn when a group reports both metrics: edit success vs locality.
TRADEOFF_HINTS = (("specificity", "efficacy"), ("specificity", "generalization"), ("utility", "attribute"))
# one line per run (several runs may share a method): colours and markers by the run's position
SERIES_PALETTE = "colorblind"
SERIES_MARKERS = "osD^vPX"


def tradeoff_pairs(metrics: Sequence[str]) -> list[tuple[str, str]]:
    return [(x, y) for x, y in TRADEOFF_HINTS if x in metrics and y in metrics]


def tradeoff_figure(group: dict) -> tuple[str, bytes, str] | None:
    """One PNG (and SVG) for a leaderboard group with a panel per trade-off pair: a line per run
    through its strengths (CI error bars), the unedited (pre-edit) point marked with a star; rows
    flagged by the health check are left out of the lines and drawn as grey crosses."""
    pairs = tradeoff_pairs(group["metrics"])
    if not pairs:
        return None
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    post = [r for r in group["rows"] if r["kind"] == "post" and not is_flagged(r)]
    flagged = [r for r in group["rows"] if r["kind"] == "post" and is_flagged(r)]
    series: dict[str, list[dict]] = {}
    for r in post:
        series.setdefault(r["run"], []).append(r)
    colors = sns.color_palette(SERIES_PALETTE, max(len(series), 1))
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
            cfg = f", {label_cfg}" if label_cfg and label_cfg != "defaults" else ""
            label = plain(f"{rows[0]['method']} ({rows[0].get('method_class', '?')}, {rid}{cfg})")
            if all(p[1]["ci95"][0] is not None and p[2]["ci95"][0] is not None for p in pts):
                # clipped at 0: a bootstrap CI of a harmonic mean (the Score) can sit a float's width
                # off its point estimate (0 [0, 0] with NS = 0), which errorbar() rejects
                xerr = np.clip([[p[1]["mean"] - p[1]["ci95"][0] for p in pts], [p[1]["ci95"][1] - p[1]["mean"] for p in pts]], 0, None)
                yerr = np.clip([[p[2]["mean"] - p[2]["ci95"][0] for p in pts], [p[2]["ci95"][1] - p[2]["mean"] for p in pts]], 0, None)
                ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=c, alpha=0.25, lw=1)
            ax.plot(xs, ys, "-", marker=SERIES_MARKERS[i_s % len(SERIES_MARKERS)], color=c, label=label, ms=4.5,
                    lw=1.4)
            for p, xv, yv in zip(pts, xs, ys):
                ax.annotate(f"{p[0]['strength']:g}", (xv, yv), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=c)
        bad = [r for r in flagged if r["metrics"][x] and r["metrics"][y]]
        if bad:
            ax.plot([r["metrics"][x]["mean"] for r in bad], [r["metrics"][y]["mean"] for r in bad], ls="none",
                    marker="x", ms=6, color="0.55", zorder=2, label="flagged (broken/degenerate)")
        pre = [r for r in group["rows"] if r["kind"] in ("pre", "reference") and r["metrics"][x] and r["metrics"][y]]
        for i, r in enumerate(pre):
            px, py = r["metrics"][x]["mean"], r["metrics"][y]["mean"]
            ax.plot([px], [py], marker="*", ms=15, color="black", ls="none", zorder=5,
                    label="unedited" if i == 0 else None)
            if len(pre) > 1:  # several case sets: say which star is which
                ax.annotate(plain(f"{r['run']} n={r['n']}"), (px, py), textcoords="offset points", xytext=(6, -10),
                            fontsize=7)
        ax.set_xlabel(plain(f"{x} (x100)"))
        ax.set_ylabel(plain(f"{y} (x100)"))
        ax.set_title(plain(f"{y} vs {x}"), fontsize=10)
        ax.grid(alpha=0.3)
    png, svg = _legend_title_save(fig, group["title"])
    return "trade-off: " + ", ".join(f"{y} vs {x}" for x, y in pairs), png, svg


def retention_figure(group: dict) -> tuple[str, bytes, str] | None:
    """Retention curves of a group's sequential runs: a panel per metric (efficacy, generalization,
    specificity over the first T cases, and the model's neutral_kl) against the number of edits in
    force (log scale), a line per run with its 95% CIs."""
    ret = group.get("retention") or []
    if not ret:
        return None
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("efficacy", "efficacy (x100)"), ("generalization", "generalization (x100)"),
              ("specificity", "specificity (x100)"), ("neutral_kl", "neutral_kl (nats)")]
    colors = sns.color_palette(SERIES_PALETTE, max(len(ret), 1))
    fig = Figure(figsize=(4.2 * len(panels), 4.0 + 0.22 * ((len(ret) + 2) // 3)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for i, (c, r) in enumerate(zip(colors, ret)):
            pts = [(cp["edits"], cp["metrics"].get(metric)) for cp in r["checkpoints"]]
            pts = [(t, a) for t, a in pts if a and a.get("mean") is not None]
            if not pts:
                continue
            xs, ys = [t for t, _ in pts], [a["mean"] for _, a in pts]
            if all((a.get("ci95") or [None])[0] is not None for _, a in pts):
                err = np.clip([[a["mean"] - a["ci95"][0] for _, a in pts], [a["ci95"][1] - a["mean"] for _, a in pts]],
                              0, None)
                ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=c, alpha=0.3, lw=1)
            ax.plot(xs, ys, "-", marker=SERIES_MARKERS[i % len(SERIES_MARKERS)], color=c, ms=4.5, lw=1.4,
                    label=plain(f"{r['method']} ({r['run']}, batch {r['edit_batch_size']})"))
        ax.set_xscale("log")
        ax.set_xlabel("edits in force")
        ax.set_ylabel(plain(label))
        ax.set_title(plain(metric), fontsize=10)
        ax.grid(alpha=0.3)
    png, svg = _legend_title_save(fig, group["title"])
    return "retention: efficacy, generalization, specificity and neutral_kl vs edits in force", png, svg


def _legend_title_save(fig, title: str) -> tuple[bytes, str]:
    """One legend below the panels (the first panel's series), the group's title, PNG and SVG."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, max(len(labels), 1)), fontsize=7.5,
               frameon=False)
    fig.suptitle(plain(title), fontsize=10)
    png, svg = io.BytesIO(), io.StringIO()
    save_figure(fig, png, "png")
    save_figure(fig, svg, "svg")
    return png.getvalue(), svg.getvalue()
