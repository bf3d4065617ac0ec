"""``editbench report``: leaderboard.md, leaderboard.json and a self-contained index.html (plus
figure files) from run and sweep directories.

This module only wires the pieces together and registers the subcommand: :mod:`.model` loads the
directories, :mod:`.leaderboard` builds what leaderboard.json holds, :mod:`.plotting` draws the
figures and :mod:`.markdown` / :mod:`.html` render the model. The HTML is self-contained (inline
CSS/JS, figures as base64 PNG), so it can be archived or opened offline; ``--link-figures`` trades
that for a smaller page that loads the figure files next to it (for a report kept with its folder).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path
from typing import Sequence

from editbench.errors import EditbenchError, writing
from editbench.results import write_file
from editbench.report.health import HealthThresholds, is_flagged
from editbench.report.html import render_html
from editbench.report.leaderboard import build_leaderboard, worst_cases
from editbench.report.markdown import render_markdown
from editbench.report.model import MISSING, Run, Sweep, discover  # noqa: F401 - MISSING, Run, Sweep: public API
from editbench.report.plotting import retention_figure, sweep_figure, tradeoff_figure

__all__ = ["MISSING", "Run", "Sweep", "add_subcommand", "write_report"]


def _slug(text: str) -> str:
    """A file-name part from a title (bounded: titles hold model ids and other names of any length)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text)[:80].strip("-").lower()


def _prune_figures(folder: Path, written: set[str]) -> None:
    """Remove the report's own figure files (``tradeoff-*``, ``retention-*``, ``sweep-*``) that this run did not write:
    table numbers and titles change when runs are added, so regenerating a committed report into the
    same folder would otherwise leave figures that nothing links to. Other files are left alone."""
    for p in folder.glob("*"):
        if (p.is_file() and p.suffix in (".png", ".svg") and p.name.startswith(("tradeoff-", "retention-", "sweep-"))
                and p.stem not in written):
            p.unlink()


def write_report(inputs: Sequence[str | Path], out_dir: str | Path, worst: int = 5, figures: bool = True,
                 broken_kl: float | str = 1.0, broken_fluency_drop: float | str = 1.0,
                 link_figures: bool = False) -> dict:
    """Build the leaderboard from run and sweep directories and write md/json/html (+ figure files).
    ``broken_kl`` / ``broken_fluency_drop``: the health thresholds (see :mod:`.health`);
    ``link_figures``: index.html refers to the figure files by relative path instead of inlining them."""
    if worst < 0:
        raise EditbenchError(f"--worst must be >= 0, got {worst}")
    thresholds = HealthThresholds.parse(broken_kl, broken_fluency_drop)
    runs, sweeps, skipped = discover(inputs)
    board = build_leaderboard(runs, skipped, sweeps, thresholds)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EditbenchError(f"--out {out} exists and is not a directory")
    with writing(out, "create"):
        out.mkdir(parents=True, exist_ok=True)
    by_id = {r.rid: r for r in runs}
    def src(png: bytes, rel: str) -> str:
        return rel if link_figures else "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    figs_src: dict[int, list[tuple[str, str]]] = {}
    figs_md: dict[int, list[tuple[str, str]]] = {}
    if figures:
        (out / "figures").mkdir(exist_ok=True)
        for gi, g in enumerate(board["groups"]):
            for kind, make in (("tradeoff", tradeoff_figure), ("retention", retention_figure)):
                fig = make(g)
                if fig is None:
                    continue
                title, png, svg = fig
                name = f"figures/{kind}-{gi}-{_slug(g['title'])}"
                write_file(out / f"{name}.png", png)
                write_file(out / f"{name}.svg", svg)
                figs_src.setdefault(gi, []).append((title, src(png, f"{name}.png")))
                figs_md.setdefault(gi, []).append((title, f"{name}.png"))
                g.setdefault("figures", []).append(f"{name}.png")
    sweep_src, sweep_md = {}, {}
    if figures:
        by_sid = {sw.rid: sw for sw in sweeps}
        for g in board["sweep_groups"]:
            for sb in g["sweeps"]:
                exclude = {r["key"] for t in sb["splits"].values() for r in t["rows"] if is_flagged(r)}
                name = sweep_figure(by_sid[sb["id"]], out / "figures" / f"sweep-{sb['id']}-{_slug(g['title'])}",
                                    exclude=exclude)
                if name is not None:
                    sweep_md[sb["id"]] = sb["figure"] = f"figures/{name.name}"
                    sweep_src[sb["id"]] = src(name.read_bytes(), sweep_md[sb["id"]])
    if figures:
        _prune_figures(out / "figures", {Path(rel).stem for rel in (*(r for fs in figs_md.values() for _, r in fs),
                                                                    *sweep_md.values())})
    drill = {}
    if worst:
        for g in board["groups"]:
            for rid in g["runs"]:
                drill[rid] = worst_cases(by_id[rid], worst, g["headline"])
    board["worst_cases"] = drill
    write_file(out / "leaderboard.json", json.dumps(board, indent=2, sort_keys=False, default=str))
    write_file(out / "leaderboard.md", render_markdown(board, figs_md, sweep_md))
    write_file(out / "index.html", render_html(board, figs_src, drill, sweep_src))
    return board


def _cmd_report(a: argparse.Namespace) -> int:
    board = write_report(a.results, a.out, worst=a.worst, figures=not a.no_figures, broken_kl=a.broken_kl,
                         broken_fluency_drop=a.broken_fluency_drop, link_figures=a.link_figures)
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
    p.add_argument("--link-figures", action="store_true",
                   help="index.html loads the figure files from figures/ instead of inlining them (a smaller "
                        "page that must stay next to its figures folder)")
    p.add_argument("--broken-kl", default="1.0", metavar="NATS",
                   help="flag a row 'broken' when its neutral_kl exceeds the unedited model's by more than this "
                        "(default 1.0 nats)")
    p.add_argument("--broken-fluency-drop", default="1.0", metavar="BITS",
                   help="flag a row 'broken' when its fluency is more than this below the unedited model's "
                        "(default 1.0 bits)")
    p.set_defaults(func=_cmd_report)
