"""leaderboard.md: the leaderboard model rendered as GitHub-flavoured Markdown.

Every value that comes from a results directory (method names, params, paths, model ids, metric
names, code versions, a metric's ``n`` ...) is escaped on the way in: :func:`text` for running
text and :func:`code` for code spans, so no value can end a table row or cell, start a line of its
own (a heading, a list item) or carry raw HTML into a renderer that passes HTML through.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from editbench.report.health import health_text
from editbench.report.model import MISSING, pareto_cell, retention_cells, short

_NEWLINES = re.compile(r"\r\n|[\r\n]")
# a pipe, with the backslashes right before it (which would otherwise escape our escape)
_PIPE = re.compile(r"(\\*)\|")


def _one_line(s: str, pipes: bool = True) -> str:
    """No line breaks (they end a table row or a list item); with ``pipes`` every `|` escaped (a
    cell delimiter; the escape also reads as a plain `|` in running text, but not in a code span)."""
    s = _NEWLINES.sub(" ", s)
    return _PIPE.sub(lambda m: m.group(1) * 2 + "\\|", s) if pipes else s


def text(value: object) -> str:
    """A value in running text or a table cell: on one line; backslashes, pipes and backticks
    escaped (so it cannot end a cell nor open or close a code span around our markup); no HTML
    (``<`` and ``&`` as entities) and no inline link (``](``)."""
    s = _NEWLINES.sub(" ", str(value)).replace("\\", "\\\\")
    s = s.replace("|", "\\|").replace("`", "\\`").replace("](", "]\\(")
    return s.replace("&", "&amp;").replace("<", "&lt;")


def code(value: object, cell: bool = False) -> str:
    """A value as a code span: on one line, fenced by more backticks than it holds (HTML in a code
    span is shown as text); in a table ``cell`` its pipes escaped (GitHub unescapes them there)."""
    s = _one_line(str(value), pipes=cell)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def link_text(value: object) -> str:
    """A value as the text of a link or an image: :func:`text` with brackets escaped."""
    return re.sub(r"([\[\]])", r"\\\1", text(value))


def spans(value: object) -> str:
    """A note of the model (text with `code` spans, e.g. ``not reported in column `fluency```):
    the text parts as :func:`text`, the code parts as :func:`code`."""
    parts = re.split(r"`([^`]*)`", str(value))
    return "".join(code(p) if i % 2 else text(p) for i, p in enumerate(parts))


def fmt_agg(a: dict | None, n_row: int | None = None) -> str:
    if a is None:
        return MISSING
    lo, hi = a["ci95"]
    txt = f"{a['mean']:.1f}" if lo is None else f"{a['mean']:.1f} [{lo:.1f}, {hi:.1f}]"
    if n_row is not None and a.get("n") not in (None, n_row):
        txt += f" (n={a['n']})"
    return txt


def _row(cells: Sequence[str]) -> str:
    """A table row of cells that are already escaped."""
    return "| " + " | ".join(cells) + " |"


def _md_table(rows: list[dict], metrics: list[str], tail: Sequence[str] = ("health", "n", "code", "run")) -> list[str]:
    head = ["method", "class", "config", *metrics, *tail]
    lines = [_row([text(h) for h in head]), "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["method_class"], row["config"],
                 *[fmt_agg(row["metrics"][m], row["n"]) for m in metrics],
                 *[pareto_cell(row) if t == "pareto" else health_text(row["health"]) if t == "health" else str(row[t])
                   for t in tail]]
        lines.append(_row([text(c) for c in cells]))
    return lines


def _md_best(best: dict | None) -> list[str]:
    """The best healthy row per method class (never a ranking across classes)."""
    if not best:
        return []
    word = "highest" if best["higher_is_better"] else "lowest"
    out = [f"Best {code(best['metric'])} per method class ({text(word)}; rows flagged broken or degenerate left out):",
           ""]
    for b in best["by_class"]:
        tail = "" if b["health"] == "healthy" else f", health {text(b['health'])}"
        out.append(f"* {text(b['method_class'])}: {text(b['method'])} {text(b['config'])} ({text(b['run'])}): "
                   f"{b['mean']:.1f}{tail}")
    if not best["by_class"]:
        out.append(f"* {MISSING} (no eligible row)")
    return out + [""]


def _md_legend(board: dict) -> list[str]:
    th = board["health"]
    deg = th["degenerate"]
    out = ["Method classes (`class` column; rows are sorted by class and only compared within it):", ""]
    for c in board["method_classes"]:
        names = f" ({text(', '.join(c['methods']))})" if c["methods"] else ""
        out.append(f"* {code(c['method_class'])}{names}: {spans(c['description'])}.")
    out += ["", "Health (`health` column), against the unedited model on the same cases: `broken` when "
            f"`neutral_kl` (mean next-token KL from the unedited model over neutral text, nats) exceeds the "
            f"unedited row's by more than {th['broken_kl']:g} (`--broken-kl`) or `fluency` (n-gram entropy, bits) "
            f"is more than {th['broken_fluency_drop']:g} below it (`--broken-fluency-drop`), or when a metric "
            "reports non-finite per-case values (NaN/inf, left out of the means); `degenerate` when "
            f"`efficacy_magnitude` is within ±{deg['efficacy_magnitude_within']:g} of 0 while `efficacy` >= "
            f"{deg['efficacy_at_least']:g} and `ee_rewrite_acc` is 0 (both targets' probabilities collapsed); "
            "`healthy` when a health metric was measured and nothing is flagged; `not measured` when the run "
            "reports neither metric (never read as healthy). Flagged rows stay in the tables and are left out of "
            "the best-per-class lines, the trade-off figures' lines, Pareto marks and matched-utility headlines.", ""]
    return out


def _md_protocol(p: dict) -> str:
    settings = "" if "settings" not in p else ", settings " + code(json.dumps(p["settings"], sort_keys=True))
    return (f"Protocol: benchmark {code(p['benchmark'])}, split {code(p['split'])}, model {code(p['model'])} "
            f"(weights sha256 {code(short(p['weights_sha256']))}), dtype {code(p['dtype'])}, data "
            + ", ".join(f"{code(k)} sha256 {code(short(v))}" for k, v in p["data_sha256"].items()) + settings
            + ("" if p.get("cases", "all") == "all" else f", cases {code(p['cases'])}") + ".")


def _notes(notes: Sequence[str]) -> list[str]:
    return ["Notes:", ""] + [f"* {spans(n)}" for n in notes] + [""]


def _md_sweeps(board: dict, figures: dict[str, str]) -> list[str]:
    out = []
    for g in board["sweep_groups"]:
        out += [f"## {text(g['title'])}", "", _md_protocol(g["protocol"]), ""]
        out += _notes(g["notes"]) if g["notes"] else []
        for sw in g["sweeps"]:
            out += [f"### {text(sw['id'])}: {code(sw['sweep_dir'])}", "", spans(sw["description"]), "",
                    spans(sw["headline_title"]) + ":", ""]
            out += [f"* {text(line)}" for line in sw["headline"]] + ["", "Hypervolume with the original model "
                                                                       "(larger is better):", ""]
            out += [f"* {text(line)}" for line in sw["hypervolume"]] + [""]
            for split, t in sw["splits"].items():
                out += [f"#### {text(split)}", ""] + _md_table(t["rows"], sw["columns"],
                                                               ("health", "pareto", "n", "code")) + [""]
            if sw["id"] in figures:
                out += [f"![trade-off {link_text(sw['id'])} (test)]({figures[sw['id']]})", ""]
            out += _notes(sw["notes"] + ["Pareto `*`: on the split's Pareto front (all methods; `flagged`: on it but "
                                         "flagged by the health check, so not highlighted); per-task accuracies "
                                         "are in leaderboard.json and the sweep's points.jsonl."])
    return out


def render_markdown(board: dict, figures: dict[int, list[tuple[str, str]]] | None = None,
                    sweep_figures: dict[str, str] | None = None) -> str:
    """leaderboard.md: per protocol group a headline table and a table of the other metrics; per
    sweep a table per split, the matched-utility headline and hypervolumes. ``figures`` and
    ``sweep_figures`` give the figure files (relative paths) by group index and sweep id."""
    out = ["# editbench leaderboard", "",
           "Cells: mean [95% bootstrap CI] over cases (x100 for rates and probabilities). "
           f"`{MISSING}` = metric not reported by that run. Runs under different protocols "
           "(benchmark split, model weights, data files, dtype, case selection) are in separate tables; attribute-utility sweeps "
           "have their own sections, which state their attribute's scale and direction.", ""]
    out += _md_legend(board)
    for gi, g in enumerate(board["groups"]):
        out += [f"## {text(g['title'])}", "", _md_protocol(g["protocol"]), ""]
        out += _md_table(g["rows"], g["headline"]) + [""]
        out += _md_best(g.get("best"))
        if g["other_metrics"]:
            out += ["Other metrics:", ""] + _md_table(g["rows"], g["other_metrics"]) + [""]
        if g.get("retention"):
            header, rows = retention_cells(g["retention"])
            out += ["Retention (sequential editing): after `edits` edits, the first `cases` cases on the edited "
                    "model; `neutral_kl` is the model's, once per checkpoint:", "",
                    _row([text(h) for h in header]), "|" + "---|" * len(header)]
            out += [_row([text(c) for c in r]) for r in rows] + [""]
        for title, rel in (figures or {}).get(gi, []):
            out += [f"![{link_text(title)}]({rel})", ""]
        if g["notes"]:
            out += _notes(g["notes"])
    out += _md_sweeps(board, sweep_figures or {})
    if board["runs"]:
        out += ["## Runs", "", "| run | directory | method | params | n | code | model weights | data sha256 |",
                "|---|---|---|---|---|---|---|---|"]
    for rid, pv in board["runs"].items():
        params = json.dumps(pv["method_params"], sort_keys=True, default=str)
        data = ", ".join(f"{Path(k).name}: {short(v)}" for k, v in pv["data_files"].items())
        out.append(_row([text(rid), code(pv["run_dir"], True), text(pv["method"]), code(params, True),
                         text(pv["n_cases"]),
                         text(pv["code_version"]), text(short(pv["model"].get("weights_sha256"))), text(data)]))
    sweeps = [sw for g in board["sweep_groups"] for sw in g["sweeps"]]
    if sweeps:
        out += ["", "## Sweeps", "", "| sweep | directory | code | versions | model weights | data sha256 |",
                "|---|---|---|---|---|---|"]
    for sw in sweeps:
        pv = sw["provenance"]
        out.append(_row([
            text(sw["id"]), code(pv["sweep_dir"], True), text(pv["code_version"]),
            text(", ".join(f"{k} {v}" for k, v in pv["versions"].items() if not str(k).startswith("git_"))),
            text(short(pv["model"].get("weights_sha256"))),
            text(", ".join(f"{Path(k).name}: {short(v)}" for k, v in pv["data_files"].items()))]))
    for sw in sweeps:
        # one line of JSON (newlines are \n escapes) in a fenced block: nothing in it is markup
        out += ["", f"<details><summary>{text(sw['id'])} config</summary>", "", "```json",
                json.dumps(sw["provenance"]["config"], sort_keys=True, default=str), "```", "", "</details>"]
    if board["skipped"]:
        out += ["", "Skipped:", ""] + [f"* {text(s)}" for s in board["skipped"]]
    return "\n".join(out) + "\n"
