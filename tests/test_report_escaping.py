"""Every string a results directory can carry reaches index.html escaped and leaderboard.md without
breaking a table.

A run and a sweep are written with crafted strings wherever a string can reach the output: the
per-metric ``n``, method names, params keys and values, metric names, model id, dtype, benchmark
and split names, data file names, directory names, code versions, per-case requests and prompts.
The page is then parsed with :class:`html.parser.HTMLParser`: only the elements and attributes the
template produces may appear, exactly one ``script`` element (ours), every image an inline PNG.
"""

import gzip
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from editbench.report import html as report_html
from editbench.report.report import write_report
from editbench.runs.sweep import point_key
from editbench.evaluation.tradeoff import analyze

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
QUOTE = '" onmouseover="alert(1)" x="'
PIPE = "a|b\\|c"
# one string with every kind of payload, a newline and a backtick on top
EVIL = f"{SCRIPT}{IMG}{QUOTE}{PIPE}\nnext`line"
# the same without "/" (it must fit into a single directory name)
EVIL_NAME = f"{IMG}{QUOTE}{PIPE}\nx`"

TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "p", "ul", "li", "a", "section",
        "div", "table", "thead", "tbody", "tr", "th", "td", "span", "code", "b", "br", "figure", "img", "figcaption",
        "details", "summary", "pre", "script"}
ATTRS = {"lang", "charset", "name", "content", "class", "id", "href", "title", "alt", "src", "data-v", "data-metric",
         "data-run", "data-sweep", "aria-sort"}


def agg(mean, n=4, half=5.0):
    return {"mean": mean, "std": 1.0, "n": n, "ci95": [mean - half, mean + half]}


def evil_run(root: Path) -> Path:
    """A run directory (the runner's format) whose strings are all crafted."""
    d = root / f"runs{SCRIPT}" / EVIL_NAME
    d.mkdir(parents=True)
    params = {EVIL: EVIL, "path": f"/data/{EVIL_NAME}/x.pt", "rho": 0.5}
    metrics = {"score": 50.0, "efficacy": 60.0, "specificity": 40.0, "efficacy_magnitude": 3.0}
    post = {m: agg(v) for m, v in metrics.items()}
    # the per-metric n differs from the run's: shown as (n=...); a run summary's n must be an
    # integer (a crafted string is refused by the results layer, see test_crafted_n_is_refused)
    post["efficacy"]["n"] = 3
    post["specificity"]["n"] = 2
    post[EVIL] = agg(7.0)  # a metric name
    config = {"model": EVIL, "benchmark": EVIL, "split": EVIL, "method": EVIL, "method_params": params,
              "strengths": [1.0], "seed": EVIL, "dtype": EVIL}
    versions = {"editbench": EVIL, "git_commit": EVIL, "git_dirty": True, EVIL: EVIL}
    summary = {
        "config": config, "n_cases": 4, "versions": versions,
        "record_code": [{**versions, "n_records": 4}],
        "model": {"model_id": EVIL, "weights_sha256": EVIL, "dtype": EVIL, "model_type": EVIL, "device": EVIL,
                  "source": EVIL},
        "data": {"benchmark": EVIL, "split": EVIL, "files": {f"/data/{EVIL_NAME}.json": EVIL}},
        "headline_metrics": ["score", "efficacy", "specificity", EVIL],
        "pre": {m: agg(v - 10) for m, v in metrics.items()},
        "points": {"1.0": {"post": post}},
        "wall_seconds_this_invocation": EVIL,
    }
    (d / "config.json").write_text(json.dumps(config))
    (d / "summary.json").write_text(json.dumps(summary))
    cases = [{"case_id": EVIL if i == 0 else i, "strength": 1.0,
              "request": {"prompt": EVIL, EVIL: EVIL, "target_new": SCRIPT},
              "prompts": {EVIL: [EVIL, IMG], "paraphrase": [QUOTE]},
              "pre": {"efficacy_magnitude": 0.0, EVIL: 1.0}, "post": {"efficacy_magnitude": i / 10, EVIL: 2.0}}
             for i in range(3)]
    (d / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return d


def evil_sweep(root: Path) -> Path:
    """A sweep directory (``editbench sweep``'s format) whose strings are all crafted."""
    d = root / f"sweeps{SCRIPT}" / EVIL_NAME
    d.mkdir(parents=True)
    code = {"editbench": EVIL, "git_commit": EVIL, "git_dirty": False}
    specs = [("unedited", {}, 0.0, 50.0, 50.0), ("steering", {EVIL: EVIL}, 1.0, 40.0, 45.0),
             ("steering", {EVIL: "other"}, 1.0, 42.0, 47.0), (EVIL, {EVIL: 1, "p": SCRIPT}, 1.0, 30.0, 48.0),
             (EVIL, {EVIL: 2, "p": IMG}, 1.0, 35.0, 49.0)]
    points = []
    for split in ("val", "test"):
        for method, params, s, a, u in specs:
            points.append({"key": point_key(method, params, s), "method": method, "params": params, "strength": s,
                           "split": split, "attribute": agg(a, n=4), "utility": agg(u, n=6),
                           EVIL: agg(1.0, n=QUOTE), "seconds": {"fit": 0.1, "eval": 0.2}, "code": code})
    track = {"attribute": EVIL, "higher_is_better": False, "scale": 1.0, "n_items": {"val": EVIL, "test": 4}}
    config = {"model": EVIL, "benchmark": EVIL, "out": str(d), "limit": EVIL, "probe_limit": 4, "seed": 0,
              "dtype": EVIL, "benchmark_options": {EVIL: EVIL}, "utility_edits": 2, "baseline": "steering",
              "utility": {"tasks": [EVIL], "metric": EVIL, "limit": 6}, "track": track,
              "methods": [{"name": m, "params": p, "strengths": [s]} for m, p, s, _, _ in specs[1:]]}
    summary = {"config": config, "versions": {**code, EVIL: EVIL},
               "model": {"model_id": EVIL, "weights_sha256": EVIL, "dtype": EVIL, "source": EVIL},
               "data": {"benchmark": {"benchmark": EVIL, "files": {f"/data/{EVIL_NAME}.jsonl": "c" * 64}}},
               "analysis": analyze(points, track, baseline="steering")}
    (d / "config.json").write_text(json.dumps(config))
    (d / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (d / "items.jsonl.gz").write_bytes(gzip.compress(b""))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


class Elements(HTMLParser):
    """Every start tag with its attributes, the script bodies and the text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        self.text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    evil_run(root / "res")
    evil_sweep(root / "res")
    board = write_report([root / "res"], root / "rep")
    assert board["runs"] and board["sweep_groups"]
    return root / "rep"


def test_html_has_only_our_elements(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    dom = Elements()
    dom.feed(page)
    dom.close()
    tags = [t for t, _ in dom.tags]
    assert set(tags) <= TAGS, set(tags) - TAGS
    assert tags.count("script") == 1 and dom.scripts[0].strip() == report_html.static_text("report.js").strip()
    assert tags.count("style") == 1
    for tag, attrs in dom.tags:
        assert set(attrs) <= ATTRS, (tag, attrs)  # no attribute injection (onmouseover, onerror, ...)
        if tag == "img":
            assert set(attrs) == {"class", "alt", "src"} and attrs["src"].startswith("data:image/png;base64,")
        if tag == "a":
            assert re.fullmatch(r"#[\w-]+", attrs["href"]), attrs
    # the crafted strings are shown as text, not dropped
    text = "".join(dom.text)
    for s in (SCRIPT, IMG, QUOTE, "(n=3)", "(n=2)"):
        assert s in text
    titles = " ".join(a.get("title", "") for _, a in dom.tags)
    assert QUOTE in titles and SCRIPT in titles


def test_html_uses_no_unescaped_output():
    """Autoescape everywhere: no |safe or Markup in the templates or the renderer."""
    pkg = Path(report_html.__file__).parent
    for p in [pkg / "html.py", *sorted((pkg / "templates").glob("*.j2"))]:
        src = p.read_text(encoding="utf-8")
        assert "|safe" not in src.replace(" ", "") and "Markup" not in src and "autoescape false" not in src, p


def _cells(line: str) -> int:
    """Cell delimiters of a GitHub table row: an unescaped `|` (a backslash escapes the next character)."""
    n, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        n += line[i] == "|"
        i += 1
    return n


def _outside_code(md: str) -> str:
    """The Markdown without its code spans and the fenced JSON blocks (CommonMark: a run of n
    backticks opens a span closed by the next run of exactly n; a backslash escapes a backtick)."""
    md = re.sub(r"```json\n.*?\n```", "", md, flags=re.S)
    out, i = [], 0
    while i < len(md):
        if md[i] == "\\":
            out.append(md[i:i + 2])
            i += 2
            continue
        if md[i] == "`":
            j = i
            while j < len(md) and md[j] == "`":
                j += 1
            end = re.compile(r"(?<!`)`{%d}(?!`)" % (j - i)).search(md, j)
            if end and "\n" not in md[j:end.start()]:
                i = end.end()
                continue
            out.append(md[i:j])
            i = j
            continue
        out.append(md[i])
        i += 1
    return "".join(out)


def test_markdown_tables_keep_their_columns(report):
    md = (report / "leaderboard.md").read_text(encoding="utf-8")
    lines = md.split("\n")
    tables, cur = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    assert len(tables) >= 6  # run headline + other metrics, sweep test + val, runs, sweeps
    for t in tables:
        assert re.fullmatch(r"\|(---\|)+", t[1]), t[:2]
        width = _cells(t[1])
        assert all(_cells(row) == width for row in t), t
    # no raw HTML outside code spans: crafted markup is escaped (our own <details> excepted)
    rest = _outside_code(md).replace("<details>", "").replace("</details>", "").replace("<summary>", "")
    rest = rest.replace("</summary>", "")
    assert "<" not in rest, rest[rest.index("<") - 80:rest.index("<") + 80]
    # no crafted newline starts a line of its own (a heading, a table row, a list item)
    assert not any(line.startswith("next`line") for line in lines)
    assert "(n=3)" in md


def test_json_keeps_the_raw_values(report):
    board = json.loads((report / "leaderboard.json").read_text(encoding="utf-8"))
    (g,) = board["groups"]
    row = next(r for r in g["rows"] if r["kind"] == "post")
    assert row["method"] == EVIL and row["metrics"]["efficacy"]["n"] == 3


def test_crafted_n_is_refused(tmp_path, capsys):
    """A run summary whose per-metric n is a string never reaches a page: one line, exit 2."""
    from editbench.cli import main

    d = evil_run(tmp_path / "res")
    summary = json.loads((d / "summary.json").read_text())
    summary["points"]["1.0"]["post"]["efficacy"]["n"] = SCRIPT
    (d / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(d), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench: error:") and err.count("\n") == 1 and ".n must be an integer" in err
    assert not (tmp_path / "rep").exists()
