"""Leaderboard reports (`editbench report`) and regression checks (`editbench compare`).

Most tests use hand-made run and sweep directories (the runner's and the sweep's formats) so every
number is known; two tests run the harness on a tiny model end to end (a run, a sweep), and one
renders index.html in headless Debian chromium.
"""

import json
import os
import re
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from editbench.cli import main
from editbench.report.compare import classify, compare_runs
from editbench.report.report import MISSING, write_report
from editbench.runs.sweep import point_key
from editbench.evaluation.tradeoff import analyze

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]


def agg(mean, half=5.0, n=20):
    if isinstance(mean, dict):  # an aggregate given whole (e.g. with non_finite)
        return mean
    return {"mean": mean, "std": 10.0, "n": n, "ci95": [mean - half, mean + half]}


CF = {"score": 50.0, "efficacy": 60.0, "generalization": 55.0, "specificity": 40.0, "efficacy_magnitude": 3.0}


def make_run(root, name, method="steer2edit", params=None, points=None, pre=None, split="edit", weights="a" * 64,
             data_sha="b" * 64, n=20, benchmark="counterfact", half=5.0, commit="abc1234def", dirty=True,
             seed=0, cases=True, extra=None):
    """A run directory as `editbench run` writes it (only the fields the report/compare read);
    ``extra``: more summary fields (e.g. ``method_class``, which summaries written before it lack)."""
    d = Path(root) / name
    d.mkdir(parents=True)
    points = points if points is not None else {1.0: CF}
    pre = pre if pre is not None else {"score": 40.0, "efficacy": 30.0, "generalization": 30.0, "specificity": 70.0,
                                       "efficacy_magnitude": -2.0}
    params = params if params is not None else {}
    config = {"model": "smollm2-135m", "benchmark": benchmark, "split": split, "method": method,
              "method_params": params, "strengths": sorted(points), "limit": n, "seed": seed, "dtype": "float32",
              "generation": False, "max_new_tokens": 64}
    summary = {
        "config": config, "n_cases": n,
        "versions": {"editbench": "0.1.0", "git_commit": commit, "git_dirty": dirty, "torch": "x"},
        "model": {"model_id": "smollm2-135m", "weights_sha256": weights, "dtype": "float32"},
        "data": {"benchmark": benchmark, "split": split, "files": {f"/data/{benchmark}-{split}.json": data_sha}},
        "pre": {m: agg(v, half, n) for m, v in pre.items()},
        "points": {repr(float(s)): {"post": {m: agg(v, half, n) for m, v in ms.items()},
                                    "seconds_per_case": {"fit": 0.1, "eval": 0.2, "pre_eval": 0.1}}
                   for s, ms in points.items()},
        **(extra or {}),
    }
    (d / "config.json").write_text(json.dumps(config))
    (d / "summary.json").write_text(json.dumps(summary))
    if cases:
        lines = []
        for s in points:
            for i in range(n):
                lines.append({"case_id": i, "strength": float(s),
                              "request": {"case_id": i, "prompt": f"The mother tongue of P{i} is", "subject": f"P{i}",
                                          "target_new": "English", "target_true": "French"},
                              "prompts": {"paraphrase": [f"P{i} speaks"], "neighborhood": [f"Q{i} speaks"]},
                              "pre": {"efficacy": 0.0, "efficacy_magnitude": -0.1},
                              "post": {"efficacy": float(i % 2), "efficacy_magnitude": (i - 5) / 100}})
        (d / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return d


# (method, params, strength, attribute, utility) on val; test adds 5 to the attribute
SWEEP_POINTS = [("unedited", {}, 0.0, 250.0, 50.0), ("steering", {"window": "response"}, 0.5, 150.0, 48.0),
                ("steering", {"window": "response"}, 1.0, 80.0, 40.0), ("steer2edit", {"alpha": 0.3}, 1.0, 100.0, 49.0),
                ("steer2edit", {"alpha": 0.6}, 1.0, 60.0, 45.0)]


def make_sweep(root, name, limit=4, benchmark="reasoning_length", attribute="length", higher=False):
    """A sweep directory as `editbench sweep` writes it, its analysis by editbench.evaluation.tradeoff.analyze.
    The steer2edit alpha=0.6 test point lacks `accuracy`."""
    d = Path(root) / name
    d.mkdir(parents=True)
    code = {"editbench": "0.1.0", "git_commit": "feedbee1234", "git_dirty": False}
    points = []
    for split in ("val", "test"):
        for method, params, s, a, u in SWEEP_POINTS:
            p = {"key": point_key(method, params, s), "method": method, "params": params, "strength": s, "split": split,
                 "attribute": agg(a + 5 * (split == "test"), n=4), "utility": agg(u, n=6),
                 "accuracy": agg(10.0, n=4), "arc_easy_acc": agg(u, n=6), "wikitext_ppl": agg(300.0, n=1),
                 "seconds": {"fit": 0.1, "eval": 0.2}, "code": code}
            if split == "test" and params.get("alpha") == 0.6:
                del p["accuracy"]
            points.append(p)
    track = {"attribute": attribute, "higher_is_better": higher, "scale": 1.0, "n_items": {"val": 4, "test": 4}}
    config = {"model": "tiny-llama", "benchmark": benchmark, "out": str(d), "limit": limit, "probe_limit": 4,
              "seed": 0, "dtype": "float32", "benchmark_options": {}, "utility_edits": 2, "baseline": "steering",
              "utility": {"tasks": ["arc_easy"], "metric": "acc", "limit": 6}, "track": track,
              "methods": [{"name": m, "params": p, "strengths": [s]} for m, p, s, _, _ in SWEEP_POINTS[1:]]}
    summary = {"config": config, "versions": {**code, "torch": "x"},
               "model": {"model_id": "tiny-llama", "weights_sha256": "a" * 64, "dtype": "float32"},
               "data": {"benchmark": {"benchmark": benchmark, "files": {"/data/gsm8k/test.jsonl": "c" * 64}},
                        "utility": {"/data/utility/arc_easy_test.jsonl": "d" * 64}},
               "analysis": analyze(points, track, baseline="steering")}
    (d / "config.json").write_text(json.dumps(config))
    (d / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (d / "items.jsonl").write_text("")
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def md_rows(md: str, title_part: str) -> list[str]:
    """Table lines of the headline table under the section whose title contains title_part."""
    sec = md.split(f"## ")
    body = next(s for s in sec if s.splitlines()[0].find(title_part) >= 0)
    return [line for line in body.split("\n\n")[2].splitlines()[2:]]


# ---------------------------------------------------------------------------------------------
# report: bookkeeping
# ---------------------------------------------------------------------------------------------
def test_report_tables(tmp_path, capsys):
    make_run(tmp_path / "runs", "s2e", points={0.5: CF, 1.0: {**CF, "efficacy": 70.0}},
             params={"rho_attn": 0.3})
    make_run(tmp_path / "runs", "base", method="unedited", points={1.0: {"score": 40.0, "efficacy": 30.0,
                                                                        "generalization": 30.0, "specificity": 70.0,
                                                                        "efficacy_magnitude": -2.0}},
             commit="1234567abc", dirty=False)
    code, out, err = cli(["report", tmp_path / "runs", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    assert "2 runs, 1 table(s)" in out
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "## counterfact / edit — smollm2-135m" in md
    rows = md_rows(md, "counterfact / edit")
    # the unedited run is the reference row (its pre-edit numbers are not repeated), then 2 strengths
    assert len(rows) == 3
    assert rows[0].startswith("| unedited | reference | no edit | 40.0 [35.0, 45.0] | 30.0 [25.0, 35.0]")
    assert "| reference | 20 | 1234567 |" in rows[0]
    assert "s=1; rho_attn=0.3" in rows[2] and "70.0 [65.0, 75.0]" in rows[2] and "abc1234+dirty" in rows[2]
    # headline columns, then the other metrics in their own table
    assert ("| method | class | config | score | efficacy | generalization | specificity | health | n | code | run |"
            in md)
    assert "| method | class | config | efficacy_magnitude | health | n | code | run |" in md
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (g,) = board["groups"]
    assert g["headline"] == ["score", "efficacy", "generalization", "specificity"]
    assert g["other_metrics"] == ["efficacy_magnitude"]
    assert [r["kind"] for r in g["rows"]] == ["reference", "post", "post"]
    assert g["rows"][2]["metrics"]["efficacy"] == {"mean": 70.0, "ci95": [65.0, 75.0], "std": 10.0, "n": 20}
    # provenance of every row: run dir, data hash, weights hash, versions
    prov = board["runs"][g["rows"][2]["run"]]
    assert prov["run_dir"].endswith("s2e") and prov["model"]["weights_sha256"] == "a" * 64
    assert list(prov["data_files"].values()) == ["b" * 64] and prov["versions"]["git_commit"] == "abc1234def"
    # drill-down: the lowest per-case efficacy_magnitude first, with prompts and targets
    worst = board["worst_cases"][g["rows"][2]["run"]]
    assert worst["metric"] == "efficacy_magnitude"
    first = worst["points"]["1"][0]
    assert first["case_id"] == 0 and first["request"]["target_new"] == "English"
    assert first["values"]["efficacy_magnitude"] == {"pre": -0.1, "post": -0.05}
    assert (tmp_path / "rep" / "index.html").stat().st_size > 1000
    assert list((tmp_path / "rep" / "figures").glob("*.png"))


def test_figure_takes_an_interval_a_float_off_its_estimate(tmp_path):
    """Wilson's interval for 0/n has a lower bound of ~3e-16, above the estimate 0; the trade-off
    figure must draw it (the error bar clipped at 0), not fail as matplotlib's errorbar did."""
    d = make_run(tmp_path / "runs", "nogate", method="mega", points={1.0: {**CF, "specificity": 0.0}})
    s = json.loads((d / "summary.json").read_text())
    s["points"]["1.0"]["post"]["specificity"]["ci95"] = [3.469446951953614e-16, 3.7]
    (d / "summary.json").write_text(json.dumps(s))
    write_report([tmp_path / "runs"], tmp_path / "rep")
    assert list((tmp_path / "rep" / "figures").glob("tradeoff-*.png"))


def test_report_is_byte_reproducible(tmp_path, capsys):
    """Regenerating a report from the same runs rewrites identical files (figures carry no date and
    no random SVG ids), so committed reports only change when a number does."""
    make_run(tmp_path / "runs", "s2e", points={0.5: CF, 1.0: {**CF, "efficacy": 70.0}}, params={"rho_attn": 0.3})
    outs = []
    for name in ("a", "b"):
        code, _, err = cli(["report", tmp_path / "runs", "--out", tmp_path / name], capsys)
        assert code == 0, err
        outs.append({p.relative_to(tmp_path / name): p.read_bytes()
                     for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert any(p.suffix == ".svg" for p in outs[0])
    assert outs[0] == outs[1]


def test_missing_metric_is_shown_as_missing(tmp_path, capsys):
    make_run(tmp_path, "gen", points={1.0: {**CF, "fluency": 600.0}})
    make_run(tmp_path, "nogen", method="steering", points={1.0: CF})
    assert cli(["report", tmp_path / "gen", tmp_path / "nogen", "--out", tmp_path / "rep"], capsys)[0] == 0
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    rows = md_rows(md, "counterfact")
    steering = next(r for r in rows if r.startswith("| steering |"))
    cells = [c.strip() for c in steering.split("|")]
    assert cells[8] == MISSING  # the fluency column
    gen = next(r for r in rows if r.startswith("| steer2edit |"))
    assert "600.0 [595.0, 605.0]" in gen
    assert f"{MISSING} in column `fluency`: not reported by" in md
    assert "(a summary from before the health metrics, or health off)" in md and "--generation" not in md
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    row = next(r for r in board["groups"][0]["rows"] if r["method"] == "steering")
    assert row["metrics"]["fluency"] is None and row["metrics"]["efficacy"]["mean"] == 60.0


def test_mixed_protocols_are_separate_tables(tmp_path, capsys):
    make_run(tmp_path, "a", method="ft")
    make_run(tmp_path, "b", method="ft", weights="c" * 64)  # other weights, same model name
    make_run(tmp_path, "c", method="ft", data_sha="d" * 64)  # other data file content
    make_run(tmp_path, "d", method="ft", split="rome500")
    make_run(tmp_path, "e", method="ft")  # same protocol as a
    f = make_run(tmp_path, "f", method="ft")  # another population of cases (`run --cases`)
    for name in ("config.json", "summary.json"):
        d = json.loads((f / name).read_text())
        (d.get("config") or d)["cases"] = "with-subject-facts"
        (f / name).write_text(json.dumps(d))
    code, out, _ = cli(["report", tmp_path, "--out", tmp_path / "rep"], capsys)
    assert code == 0 and "6 runs, 5 table(s)" in out
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    titles = [g["title"] for g in board["groups"]]
    assert sum("edit — smollm2-135m (protocol" in t for t in titles) == 4
    assert "counterfact / rome500 — smollm2-135m" in titles
    sizes = sorted(len(g["runs"]) for g in board["groups"])
    assert sizes == [1, 1, 1, 1, 2]
    notes = " ".join(n for g in board["groups"] for n in g["notes"])
    assert "model weights sha256 (aaaaaaaaaaaa vs cccccccccccc)" in notes
    assert "data file sha256" in notes
    assert "case selection (all vs with-subject-facts)" in notes
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert md.count("## counterfact / edit") == 4 and "Not merged with protocol" in md
    assert "cases `with-subject-facts`." in md
    assert "cases <code>with-subject-facts</code>" in (tmp_path / "rep" / "index.html").read_text()


def test_metric_columns_come_from_the_summaries(tmp_path, capsys):
    """A benchmark the report has never heard of (attribute/utility metrics) gets its own columns
    and a utility-attribute trade-off figure."""
    pts = {0.5: {"attribute": 20.0, "utility": 90.0, "judge_refusal": 3.0},
           1.0: {"attribute": 45.0, "utility": 80.0, "judge_refusal": 5.0}}
    make_run(tmp_path, "attr", method="steering", benchmark="toy-attr", split="test", points=pts,
             pre={"attribute": 5.0, "utility": 95.0}, cases=False)
    assert cli(["report", tmp_path / "attr", "--out", tmp_path / "rep"], capsys)[0] == 0
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (g,) = board["groups"]
    assert g["metrics"] == ["attribute", "utility", "judge_refusal"]
    assert g["headline"] == ["attribute", "utility"]
    assert g["figures"] and (tmp_path / "rep" / g["figures"][0]).is_file()
    assert board["worst_cases"][g["runs"][0]]["metric"] is None  # no cases.jsonl: no drill-down, no crash
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "| unedited (pre-edit) | reference | pre-edit of R1 | 5.0 [0.0, 10.0] | 95.0 [90.0, 100.0] |" in md
    assert f"{MISSING} in column `judge_refusal`: not reported by R1 (pre-edit)" in md


def test_report_discovery_and_bad_input(tmp_path, capsys):
    make_run(tmp_path / "res" / "m1", "run1")
    other = tmp_path / "res" / "attribution"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({"config": {}, "findings": []}))
    wip = tmp_path / "res" / "wip"
    wip.mkdir()
    (wip / "config.json").write_text("{}")
    (wip / "cases.jsonl").write_text('{"case_id": 0}\n{"case_')  # being written: must not be touched
    before = (wip / "cases.jsonl").read_bytes()
    code, out, _ = cli(["report", tmp_path / "res", "--out", tmp_path / "rep"], capsys)
    assert code == 0 and "1 runs" in out
    assert "neither a run summary" in out and "no summary.json yet (run in progress" in out
    assert (wip / "cases.jsonl").read_bytes() == before
    broken = make_run(tmp_path / "broken", "run")
    (broken / "summary.json").write_text('{"points": ')
    for args, msg in [([tmp_path / "nope"], "does not exist"),
                      ([broken], "summary.json is not valid JSON"),
                      ([tmp_path / "res" / "attribution"], "not an editbench run or sweep summary"),
                      ([tmp_path / "res" / "wip"], "no run or sweep summaries found")]:
        code, _, err = cli(["report", *args, "--out", tmp_path / "rep2"], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# report: attribute-utility sweeps
# ---------------------------------------------------------------------------------------------
def md_section(md: str, title: str) -> str:
    return next(s for s in md.split("\n## ") if s.startswith(title))


def test_report_sweep_tables_headline_and_direction(tmp_path, capsys):
    make_sweep(tmp_path, "sweep")
    code, out, err = cli(["report", tmp_path / "sweep", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    assert "0 runs, 0 table(s), 0 rows, 1 sweep(s)" in out
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    sec = md_section(md, "reasoning_length sweep — tiny-llama")
    assert "## Runs" not in md and "## Sweeps" in md
    # direction: length is lower-is-better, and the headline says which sign is an improvement
    assert "Attribute `length` (lower is better)" in sec
    assert "lower is better, so a negative gain is an improvement" in sec
    # operating point chosen on val (alpha=0.3: +100 over steering's front at utility 49), reported on test
    # each method labelled with its class (and the baseline's, when it differs)
    assert ("* steer2edit (weight-edit; baseline steering is activation-steering): operating point "
            "steer2edit[alpha=0.3] s=1; gain on val -100.0, no paired CI; gain on test -100.0, no paired CI "
            "(attribute 105.0 vs steering 205.0 at utility 49.0)") in sec
    # hypervolume per method with the original model, above (lowest utility, worst length) on test
    assert ("* test: steer2edit (weight-edit) 1550.0, steering (activation-steering) 800.0 (reference point: "
            "utility 40.0, attribute 255.0)") in sec
    # a table per split, test first
    assert sec.index("#### test") < sec.index("#### val")
    test_tab = sec.split("#### test")[1].split("#### val")[0]
    assert ("| method | class | config | attribute | utility | accuracy | wikitext_ppl | health | pareto | n | code |"
            in test_tab)
    assert "arc_easy_acc" not in test_tab  # per-task accuracies: json only
    rows = [l for l in test_tab.splitlines() if l.startswith("| ") and "---" not in l][1:]
    # sorted by class: the original model, Steer2Edit (weight-edit), steering (activation-steering)
    assert [r.split(" | ")[1:3] for r in rows] == [["reference", "original model"], ["weight-edit", "s=1; alpha=0.3"],
                                                   ["weight-edit", "s=1; alpha=0.6"],
                                                   ["activation-steering", "s=0.5"], ["activation-steering", "s=1"]]
    assert rows[1] == ("| steer2edit | weight-edit | s=1; alpha=0.3 | 105.0 [100.0, 110.0] | 49.0 [44.0, 54.0] (n=6) | "
                       "10.0 [5.0, 15.0] | 300.0 [295.0, 305.0] (n=1) | not measured | * | 4 | feedbee |")
    cells = [c.strip() for c in rows[2].split("|")]
    assert cells[6] == MISSING and cells[9] == "*"  # accuracy not reported for that point; on the test front
    assert [c.strip() for c in rows[3].split("|")][9] == ""  # steering s=0.5 is dominated on test
    assert "health not measured: the points report neither `neutral_kl` nor `fluency`" in sec
    assert f"{MISSING} in test column `accuracy`: not reported for steer2edit s=1; alpha=0.6." in sec
    assert "![trade-off S1 (test)](figures/sweep-S1-" in sec
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    assert board["groups"] == [] and board["runs"] == {}
    (sw,) = board["sweep_groups"][0]["sweeps"]
    assert list(sw["splits"]) == ["test", "val"] and sw["higher_is_better"] is False
    assert sw["matched_utility"]["steer2edit"]["gain_test"] == pytest.approx(-100.0)
    assert sw["splits"]["test"]["rows"][0]["metrics"]["arc_easy_acc"]["mean"] == 50.0
    assert sw["provenance"]["data_files"] == {"/data/gsm8k/test.jsonl": "c" * 64,
                                              "/data/utility/arc_easy_test.jsonl": "d" * 64}
    assert (tmp_path / "rep" / sw["figure"]).is_file()
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and page.count('data-sweep="S1"') == 10
    assert "lower is better, so a negative gain is an improvement" in page and 'id="prov-S1"' in page


def test_report_sweeps_and_runs_in_separate_sections(tmp_path, capsys):
    make_run(tmp_path / "res", "run")
    make_sweep(tmp_path / "res", "sweep-a")
    make_sweep(tmp_path / "res", "sweep-b", limit=8)  # same benchmark and model, other protocol
    make_sweep(tmp_path / "res", "tqa", benchmark="truthfulqa", attribute="truthful", higher=True)
    code, out, err = cli(["report", tmp_path / "res", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    assert "1 runs, 1 table(s), 2 rows, 3 sweep(s)" in out
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    assert [g["title"] for g in board["groups"]] == ["counterfact / edit — smollm2-135m"]
    assert [r["method"] for r in board["groups"][0]["rows"]] == ["unedited (pre-edit)", "steer2edit"]
    titles = [g["title"] for g in board["sweep_groups"]]
    assert titles == ["reasoning_length sweep — tiny-llama (protocol A)", "reasoning_length sweep — tiny-llama "
                      "(protocol B)", "truthfulqa sweep — tiny-llama"]
    assert "sweep settings (limit 4 vs 8)" in board["sweep_groups"][0]["notes"][0]
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "| steering |" not in md_section(md, "counterfact / edit")  # no sweep point in the run table
    tqa = md_section(md, "truthfulqa sweep")
    assert "Attribute `truthful` (higher is better)" in tqa and "so a positive gain is an improvement" in tqa
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4  # the run group's figure + one per sweep
    assert page.count('data-run="R1"') == 4 and page.count("data-sweep=") == 30


def test_link_figures_makes_the_page_refer_to_the_figure_files(tmp_path, capsys):
    make_run(tmp_path / "res", "run")
    make_sweep(tmp_path / "res", "sweep-a")
    code, _, err = cli(["report", tmp_path / "res", "--out", tmp_path / "rep", "--link-figures"], capsys)
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    srcs = re.findall(r'<img class="fig" alt="[^"]*" src="([^"]*)"', page)
    assert len(srcs) == 2 and "data:image" not in page
    assert all(s.startswith("figures/") and s.endswith(".png") and (tmp_path / "rep" / s).is_file() for s in srcs)
    inline = write_report([tmp_path / "res"], tmp_path / "rep2")
    assert (json.loads(json.dumps(inline, default=str))
            == json.loads((tmp_path / "rep" / "leaderboard.json").read_text()))  # only the page differs
    assert len((tmp_path / "rep2" / "index.html").read_text()) > len(page)


def test_report_sweep_bad_input(tmp_path, capsys):
    wip = tmp_path / "res" / "wip"
    wip.mkdir(parents=True)
    (wip / "config.json").write_text("{}")
    (wip / "points.jsonl").write_text("")
    make_sweep(tmp_path / "res", "ok")
    code, out, _ = cli(["report", tmp_path / "res", "--out", tmp_path / "rep"], capsys)
    assert code == 0 and "1 sweep(s)" in out and "no summary.json yet (sweep in progress or interrupted)" in out
    nopoints = make_sweep(tmp_path, "nopoints")
    (nopoints / "points.jsonl").unlink()
    badpoint = make_sweep(tmp_path, "badpoint")
    lines = (badpoint / "points.jsonl").read_text().splitlines()
    (badpoint / "points.jsonl").write_text("\n".join([lines[0], '{"method": "x"}', *lines[2:]]) + "\n")
    badjson = make_sweep(tmp_path, "badjson")
    (badjson / "points.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    torn = make_sweep(tmp_path, "torn")  # a torn last line (being written) is no error
    (torn / "points.jsonl").write_text("\n".join(lines) + '\n{"key": ')
    assert cli(["report", torn, "--out", tmp_path / "rep-torn"], capsys)[0] == 0
    badanalysis = make_sweep(tmp_path, "badanalysis")
    s = json.loads((badanalysis / "summary.json").read_text())
    s["analysis"]["splits"]["test"]["hypervolume"] = {"steering": "a lot"}
    (badanalysis / "summary.json").write_text(json.dumps(s))
    for d, msg in [(nopoints, "has no points.jsonl"), (badpoint, "points.jsonl: line 2 is not a sweep point"),
                   (badjson, "points.jsonl: line 2 is not valid JSON"), (badanalysis, "malformed analysis")]:
        code, _, err = cli(["report", d, "--out", tmp_path / "rep2"], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_report_on_a_real_sweep(tmp_path, capsys):
    cfg = {"model": "tiny-llama", "benchmark": "truthfulqa", "out": str(tmp_path / "sweep"), "limit": 4,
           "probe_limit": 4, "benchmark_options": {"probe": "dataset"},
           "utility": {"tasks": ["arc_easy"], "limit": 3, "wikitext_windows": 1, "window": 16, "neutral": 2,
                       "max_new_tokens": 8},
           "methods": [{"name": "steering", "strengths": [0.5, 2]},
                       {"name": "steer2edit", "grid": {"alpha": [0.3, 0.6]}}],
           "matched_axis": "utility"}  # on a tiny random model the steer2edit points' KL lies outside steering's
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = cli(["report", tmp_path / "sweep", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (g,) = board["sweep_groups"]
    (sw,) = g["sweeps"]
    assert g["title"] == "truthfulqa sweep — tiny-llama"
    assert sw["matched_utility"] == summary["analysis"]["matched_utility"]
    assert [len(t["rows"]) for t in sw["splits"].values()] == [5, 5]
    assert {"attribute", "utility", "mc1", "mc2", "wikitext_ppl"} <= set(sw["columns"])
    pareto = {q["key"] for q in summary["analysis"]["splits"]["test"]["pareto"]}
    assert {r["key"] for r in sw["splits"]["test"]["rows"] if r["pareto"]} == pareto
    op = summary["analysis"]["matched_utility"]["steer2edit"]["operating_point"]["label"]
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert f"* steer2edit (weight-edit; baseline steering is activation-steering): operating point {op} s=1" in md
    assert "(higher is better)" in md
    assert "TruthfulQA.csv" in md and summary["versions"]["git_commit"][:7] in md
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and "data-sweep=" in page


# ---------------------------------------------------------------------------------------------
# report: figure styles and metric directions
# ---------------------------------------------------------------------------------------------
def test_sweep_figure_styles_come_from_a_table(tmp_path):
    """Built-in methods have a fixed style; any other name gets a stable colour (a hash of the name,
    never a built-in method's) and is drawn without special-casing its name."""
    from editbench.report import plotting

    assert plotting.style_of("steer2edit").marker == "*" and plotting.style_of("unedited").label == "original"
    builtin = {s.color for s in plotting.STYLES.values()}
    other = plotting.style_of("my-new-method")
    assert other == plotting.style_of("my-new-method") and other.color not in builtin
    assert other.color == plotting.FALLBACK_COLORS[zlib.crc32(b"my-new-method") % len(plotting.FALLBACK_COLORS)]
    pts = [{**p, "method": "my-new-method" if p["method"] == "steer2edit" else p["method"]}
           for p in (json.loads(l) for l in (make_sweep(tmp_path, "sw") / "points.jsonl").read_text().splitlines())]
    track = {"attribute": "length", "higher_is_better": False}
    paths = plotting.plot_panels([("$a$ / $\\frac$", pts, track)], tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    # no method-name special cases in the report package: a method's look is the style table's business
    for src in (REPO / "harness" / "report").glob("*.py"):
        assert not re.search(r"""(==|!=)\s*["'](steering|steer2edit|mega|ft|steering-layer)["']""", src.read_text()), src


def test_metric_directions_come_from_the_summary(tmp_path, capsys):
    """A lower-is-better metric is known from the summary itself (``metric_directions``; a sweep's
    ``track``), not from a benchmark plugin: the drill-down lists its highest values first and
    ``compare`` treats a rise as the regression."""
    from editbench.report.model import direction_overrides

    run = make_run(tmp_path, "low", benchmark="no-such-plugin")
    summary = json.loads((run / "summary.json").read_text())
    summary["metric_directions"] = {"efficacy_magnitude": "lower", "efficacy": "lower"}
    (run / "summary.json").write_text(json.dumps(summary))
    board = write_report([run], tmp_path / "rep", figures=False)
    worst = next(iter(board["worst_cases"].values()))
    assert worst["metric"] == "efficacy_magnitude" and worst["higher_is_better"] is False
    assert worst["points"]["1"][0]["values"]["efficacy_magnitude"]["post"] == pytest.approx(0.14)
    worse = make_run(tmp_path, "worse", benchmark="no-such-plugin", points={1.0: {**CF, "efficacy": 70.0}})
    changes, _ = compare_runs(worse, run)
    assert next(c for c in changes if c.metric == "efficacy" and c.point == "s=1").status == "regression"
    sweep = json.loads((make_sweep(tmp_path, "sw") / "summary.json").read_text())
    assert direction_overrides(sweep) == {"attribute": "lower", "length": "lower"}
    assert direction_overrides({**sweep, "metric_directions": {"length": "higher"}})["length"] == "higher"


# ---------------------------------------------------------------------------------------------
# report: method classes and health flags
# ---------------------------------------------------------------------------------------------
def test_method_classes_label_and_sort_rows(tmp_path, capsys):
    """The class comes from the summary's ``method_class``, else (older summaries) the installed
    plugin's, else ``unknown``; rows are sorted by class and a legend explains the classes present."""
    from editbench.plugins.method import METHOD_CLASSES
    from editbench.report.health import CLASS_INFO

    assert tuple(CLASS_INFO) == METHOD_CLASSES
    make_run(tmp_path, "a", method="steering")  # an older summary: the plugin says activation-steering
    make_run(tmp_path, "b", method="my-gated-editor", extra={"method_class": "gated"})  # not installed here
    make_run(tmp_path, "c", method="not-installed")  # neither: unknown
    make_run(tmp_path, "d", method="steer2edit", extra={"method_class": "weight-edit"})
    make_run(tmp_path, "e", method="unedited", points={1.0: CF}, extra={"method_class": "reference"})
    code, _, err = cli(["report", tmp_path, "--out", tmp_path / "rep", "--no-figures"], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (g,) = board["groups"]
    assert [(r["method"], r["method_class"]) for r in g["rows"]] == [
        ("unedited", "reference"), ("steer2edit", "weight-edit"), ("steering", "activation-steering"),
        ("my-gated-editor", "gated"), ("not-installed", "unknown")]
    assert [c["method_class"] for c in board["method_classes"]] == ["reference", "weight-edit", "activation-steering",
                                                                    "gated", "unknown"]
    assert board["method_classes"][3]["methods"] == ["my-gated-editor"]
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    rows = md_rows(md, "counterfact")
    assert [r.split(" | ")[1] for r in rows] == ["reference", "weight-edit", "activation-steering", "gated", "unknown"]
    assert "* `gated` (my-gated-editor): semi-parametric" in md and "* `unknown` (not-installed): the summary" in md
    # the best row per class, never across classes: every class has its own line
    best = g["best"]
    assert best["metric"] == "score" and [b["method_class"] for b in best["by_class"]] == [
        "weight-edit", "activation-steering", "gated", "unknown"]
    assert "* gated: my-gated-editor s=1 (R2): 50.0, health not measured" in md
    page = (tmp_path / "rep" / "index.html").read_text()
    assert '<td class="cls">activation-steering</td>' in page and '<td class="cls">unknown</td>' in page


HEALTHY_PRE = {"score": 40.0, "efficacy": 30.0, "generalization": 30.0, "specificity": 70.0,
               "efficacy_magnitude": -2.0, "neutral_kl": 0.0, "fluency": 5.0}


def _health_runs(root):
    make_run(root, "base", method="unedited", points={1.0: HEALTHY_PRE}, pre=HEALTHY_PRE)
    make_run(root, "ok", method="steering", points={1.0: {**CF, "neutral_kl": 0.2, "fluency": 4.8}}, pre=HEALTHY_PRE)
    make_run(root, "kl", method="steering", params={"window": "predict"}, pre=HEALTHY_PRE,
             points={1.0: {**CF, "score": 80.0, "neutral_kl": 2.5, "fluency": 4.9}})
    make_run(root, "flu", method="steer2edit", pre=HEALTHY_PRE,
             points={1.0: {**CF, "score": 70.0, "neutral_kl": 0.1, "fluency": 3.5}})
    make_run(root, "degen", method="steer2edit", params={"alpha": 0.9}, pre=HEALTHY_PRE,
             points={1.0: {**CF, "score": 65.0, "efficacy": 90.0, "efficacy_magnitude": 0.3, "ee_rewrite_acc": 0.0}})
    make_run(root, "old", method="ft", points={1.0: CF})  # an older summary: no health metric at all
    make_run(root, "gated", method="mega", extra={"method_class": "gated"}, pre=HEALTHY_PRE,
             points={1.0: {**CF, "score": 95.0, "neutral_kl": 0.0, "fluency": 5.1}})


def test_health_flags_and_their_exclusion_from_rankings(tmp_path, capsys):
    _health_runs(tmp_path / "runs")
    code, _, err = cli(["report", tmp_path / "runs", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    assert board["health"]["broken_kl"] == 1.0 and board["health"]["broken_fluency_drop"] == 1.0
    (g,) = board["groups"]
    by_dir = {Path(board["runs"][r["run"]]["run_dir"]).name: r for r in g["rows"] if r["kind"] != "pre"}
    status = {k: r["health"]["status"] for k, r in by_dir.items()}
    assert status == {"base": "reference", "ok": "healthy", "kl": "broken", "flu": "broken", "degen": "degenerate",
                      "old": "not measured", "gated": "healthy"}
    assert "neutral_kl 2.5 nats is more than 1 above the unedited 0" in by_dir["kl"]["health"]["reasons"][0]
    assert "fluency 3.5 bits is more than 1 below the unedited 5" in by_dir["flu"]["health"]["reasons"][0]
    assert "both targets' probabilities collapsed" in by_dir["degen"]["health"]["reasons"][0]
    assert by_dir["old"]["health"]["not_measured"] == ["neutral_kl", "fluency"]
    # best per class: the broken `kl` run (score 80) and the flagged steer2edit runs are left out
    best = {b["method_class"]: (b["run"], b["mean"], b["health"]) for b in g["best"]["by_class"]}
    rid = {k: r["run"] for k, r in by_dir.items()}
    assert best == {"activation-steering": (rid["ok"], 50.0, "healthy"),
                    "weight-edit": (rid["old"], 50.0, "not measured"), "gated": (rid["gated"], 95.0, "healthy")}
    assert len(g["best"]["excluded"]) == 3
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    rows = md_rows(md, "counterfact")
    kl_row = next(r for r in rows if f"| {rid['kl']} |" in r)
    assert "| broken |" in kl_row and "| not measured |" in next(r for r in rows if r.startswith("| ft |"))
    assert f"* activation-steering: steering s=1 ({rid['ok']}): 50.0" in md
    assert "* weight-edit: ft s=1" in md and ", health not measured" in md
    assert f"{rid['kl']} steering s=1; window=predict: broken (neutral_kl 2.5 nats" in md
    assert "`--broken-kl`" in md and "`--broken-fluency-drop`" in md and "never read as healthy" in md
    page = (tmp_path / "rep" / "index.html").read_text()
    assert '<tr class="post flagged" data-run="' + rid["kl"] + '">' in page
    assert 'title="broken (neutral_kl 2.5 nats is more than 1 above the unedited 0' in page
    assert "--broken-kl" in page and (tmp_path / "rep" / g["figures"][0]).is_file()
    # a looser threshold: the KL run is healthy again and leads its class
    board = write_report([tmp_path / "runs"], tmp_path / "rep2", figures=False, broken_kl="3")
    (g,) = board["groups"]
    assert board["health"]["broken_kl"] == 3.0
    assert next(b for b in g["best"]["by_class"] if b["method_class"] == "activation-steering")["mean"] == 80.0


def test_non_finite_cases_make_a_row_broken(tmp_path, capsys):
    """NaN/inf per-case values are left out of the means; the row must not look healthy on the rest."""
    nan_kl = {"mean": None, "std": None, "n": 0, "ci95": [None, None], "non_finite": 4}
    make_run(tmp_path / "runs", "base", method="unedited", points={1.0: {**CF, "neutral_kl": 0.0, "fluency": 5.0}})
    make_run(tmp_path / "runs", "all-nan", method="steering", points={1.0: {**CF, "neutral_kl": nan_kl, "fluency": 5.0}})
    make_run(tmp_path / "runs", "some-nan", method="ft", points={
        1.0: {**CF, "neutral_kl": 0.1, "fluency": 5.0,
              "efficacy": {"mean": 90.0, "std": 1.0, "n": 3, "ci95": [80.0, 100.0], "non_finite": 1}}})
    code, _, err = cli(["report", tmp_path / "runs", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    by_dir = {Path(board["runs"][r["run"]]["run_dir"]).name: r["health"] for r in board["groups"][0]["rows"]}
    assert by_dir["all-nan"]["status"] == "broken" and by_dir["some-nan"]["status"] == "broken"
    assert by_dir["all-nan"]["reasons"][0] == "non-finite values (NaN/inf) in neutral_kl (4 cases), left out of those means"
    assert "efficacy (1 case)" in by_dir["some-nan"]["reasons"][0]
    assert board["groups"][0]["best"]["by_class"] == []


@pytest.mark.parametrize("option,value", [("--broken-kl", "nan"), ("--broken-kl", "-1"), ("--broken-kl", "inf"),
                                          ("--broken-fluency-drop", "abc"), ("--broken-fluency-drop", "-0.5")])
def test_health_thresholds_are_validated(tmp_path, capsys, option, value):
    make_run(tmp_path, "run")
    code, _, err = cli(["report", tmp_path / "run", "--out", tmp_path / "rep", option, value], capsys)
    assert code == 2 and err.startswith("editbench: error: ") and err.count("\n") == 1, err
    assert f"{option} must be a finite number >= 0" in err and not (tmp_path / "rep").exists()


def test_flagged_sweep_points_leave_the_headline(tmp_path, capsys):
    """Sweep points carrying health metrics are checked against the original model's point of the
    same split: a broken operating point is named in the matched-utility headline, not reported as
    a gain, and is not highlighted on the Pareto front; classes come from the points."""
    d = make_sweep(tmp_path, "sweep")
    points = [json.loads(l) for l in (d / "points.jsonl").read_text().splitlines()]
    for p in points:
        bad = p["params"].get("alpha") == 0.3
        p["neutral_kl"] = agg(0.0 if p["method"] == "unedited" else 3.0 if bad else 0.1, half=0.1)
        if p["method"] == "steering":
            p["method_class"] = "activation-steering"
    (d / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    code, _, err = cli(["report", d, "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (sw,) = board["sweep_groups"][0]["sweeps"]
    rows = sw["splits"]["test"]["rows"]
    assert [(r["method_class"], r["health"]["status"]) for r in rows] == [
        ("reference", "reference"), ("weight-edit", "broken"), ("weight-edit", "healthy"),
        ("activation-steering", "healthy"), ("activation-steering", "healthy")]
    (line,) = [x for x in sw["headline"] if x.startswith("steer2edit")]
    assert "operating point steer2edit[alpha=0.3] s=1 is flagged broken (neutral_kl 3 nats" in line
    assert line.endswith("no gain reported") and "gain on test" not in line
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    test_tab = md_section(md, "reasoning_length sweep").split("#### test")[1].split("#### val")[0]
    flagged_row = next(l for l in test_tab.splitlines() if "alpha=0.3" in l)
    assert "| broken | flagged |" in flagged_row
    assert "left out of the Pareto marks, the figure and the matched-utility headline" in md


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
def test_classify_rule():
    base = agg(60.0, half=5.0)
    assert classify(base, agg(60.0), 0.5) == ("unchanged", 0.0)
    assert classify(base, agg(59.8), 0.5)[0] == "within tolerance"
    assert classify(base, agg(57.0), 0.5)[0] == "drop within CI"  # beyond tolerance, inside [55, 65]
    assert classify(base, agg(54.0), 0.5)[0] == "regression"
    assert classify(base, agg(54.0), 10.0)[0] == "within tolerance"  # outside the CI, but tolerated
    assert classify(base, agg(66.0), 0.5)[0] == "improvement"
    assert classify(base, agg(63.0), 0.5)[0] == "gain within CI"
    assert classify(base, None, 0.5)[0] == "missing"
    assert classify(None, agg(1.0), 0.5)[0] == "new metric"
    # lower is better: a rise is the regression
    assert classify(base, agg(66.0), 0.5, higher_is_better=False)[0] == "regression"
    assert classify(base, agg(54.0), 0.5, higher_is_better=False)[0] == "improvement"
    # no CI in the baseline: the tolerance alone decides
    assert classify({"mean": 60.0, "ci95": [None, None]}, agg(59.0), 0.5)[0] == "regression"


def test_compare_exit_codes(tmp_path, capsys):
    base = make_run(tmp_path, "base", points={1.0: CF, 2.0: CF})
    same = make_run(tmp_path, "same", points={1.0: CF, 2.0: {**CF, "efficacy": 60.3}})
    better = make_run(tmp_path, "better", points={1.0: {**CF, "efficacy": 80.0}, 2.0: CF})
    worse = make_run(tmp_path, "worse", points={1.0: CF, 2.0: {**CF, "specificity": 20.0}})
    code, out, _ = cli(["compare", same, base], capsys)
    assert code == 0 and "within tolerance" in out and "| s=2 | efficacy |" in out
    code, out, _ = cli(["compare", better, base], capsys)
    assert code == 0 and "improvement" in out and out.strip().splitlines()[-1].startswith("OK")
    code, out, _ = cli(["compare", worse, base], capsys)
    assert code == 1 and "| s=2 | specificity | 40.00 [35.00, 45.00] | 20.00 [15.00, 25.00] | -20.00 | 0.5 | " \
                         "**regression** |" in out
    assert out.strip().splitlines()[-1].startswith("REGRESSION")
    # a per-metric tolerance large enough turns the drop into an accepted one
    code, out, _ = cli(["compare", worse, base, "--tolerance", "specificity=25"], capsys)
    assert code == 0 and "within tolerance" in out
    # ... the default tolerance too
    assert cli(["compare", worse, base, "--default-tolerance", "30"], capsys)[0] == 0
    # the same drop for a lower-is-better metric is an improvement
    assert cli(["compare", worse, base, "--lower-is-better", "specificity"], capsys)[0] == 0
    # a metric that disappeared fails the check
    gone = make_run(tmp_path, "gone", points={1.0: CF, 2.0: {k: v for k, v in CF.items() if k != "efficacy"}})
    code, out, _ = cli(["compare", gone, base], capsys)
    assert code == 1 and "**missing**" in out


def test_compare_github_format(tmp_path, capsys):
    base = make_run(tmp_path, "base", points={1.0: CF})
    new = make_run(tmp_path, "new", points={1.0: {**CF, "specificity": 20.0, "efficacy": 57.0, "score": 70.0}},
                   seed=1)
    code, out, _ = cli(["compare", new, base, "--format", "github"], capsys)
    assert code == 1
    lines = out.splitlines()
    err = [l for l in lines if l.startswith("::error ")]
    assert err == [next(l for l in lines if "specificity at s=1" in l and l.startswith("::error"))]
    assert err[0].startswith("::error title=editbench regression%3A specificity at s=1::specificity at s=1: "
                             "40.00 [35.00, 45.00] -> 20.00 [15.00, 25.00] (delta -20.00")
    assert any(l.startswith("::warning title=editbench drop within CI%3A efficacy at s=1::") for l in lines)
    assert any(l.startswith("::notice title=editbench improvement%3A score at s=1::") for l in lines)
    assert any(l.startswith("::warning title=editbench compare::different seed (1 vs 0)") for l in lines)


def test_compare_bad_input(tmp_path, capsys):
    base = make_run(tmp_path, "base")
    cases = [
        ([tmp_path / "nope", base], "NEW: run directory"),
        ([base, tmp_path / "nope"], "BASELINE: run directory"),
        ([make_run(tmp_path, "split", split="rome500"), base], "different benchmark split (rome500 vs edit)"),
        ([make_run(tmp_path, "w", weights="e" * 64), base],
         "different model weights sha256 (eeeeeeeeeeee vs aaaaaaaaaaaa)"),
        ([make_run(tmp_path, "d", data_sha="f" * 64), base], "different data file sha256"),
        ([make_run(tmp_path, "b", benchmark="other"), base], "different benchmark (other vs counterfact)"),
        ([make_run(tmp_path, "m", method="ft"), base], "different method (ft vs steer2edit)"),
        ([make_run(tmp_path, "s", points={3.0: CF}), base], "no common strength"),
        ([base, base, "--tolerance", "nosuch=1"], "names metrics neither run reports: nosuch"),
        ([base, base, "--tolerance", "efficacy"], "expects METRIC=VALUE"),
        ([base, base, "--tolerance", "efficacy=-1"], "must be a finite number >= 0"),
    ]
    broken = make_run(tmp_path, "broken")
    (broken / "summary.json").write_text("[]")
    cases.append(([broken, base], "is not an editbench run summary"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(([empty, base], "NEW: " + str(empty) + " has no summary.json"))
    for args, msg in cases:
        code, out, err = cli(["compare", *args], capsys)
        assert code == 2, (args, out)
        assert msg in err and err.count("\n") == 1 and err.startswith("editbench: error: "), err


def test_compare_api_matches_strengths(tmp_path):
    base = make_run(tmp_path, "base", points={0.5: CF, 1.0: CF})
    new = make_run(tmp_path, "new", points={1.0: CF, 2.0: CF})
    changes, warnings = compare_runs(new, base)
    assert {c.point for c in changes} == {"pre", "s=1"}
    assert all(c.status == "unchanged" for c in changes)
    assert "strength 0.5 is in BASELINE only; not compared" in warnings
    assert "strength 2 is in NEW only; not compared" in warnings


def test_committed_ci_reference_is_comparable(capsys):
    """results/ci (what scripts/ci_regression.sh compares against) loads and matches itself."""
    for name in ("unedited", "steer2edit"):
        ref = REPO / "results" / "ci" / name
        code, out, err = cli(["compare", ref, ref], capsys)
        assert code == 0, err
        assert "no metric moved" in out


# ---------------------------------------------------------------------------------------------
# end to end on a tiny model
# ---------------------------------------------------------------------------------------------
def test_report_and_compare_on_real_runs(cf_root, tmp_path, capsys):
    common = ["run", "--model", "tiny-llama", "--quiet", "--data-root", cf_root, "--limit", "4"]
    assert cli([*common, "--out", tmp_path / "r" / "unedited"], capsys)[0] == 0
    assert cli([*common, "--method", "steering", "--strengths", "0.5,1", "--out", tmp_path / "r" / "steer"],
               capsys)[0] == 0
    assert cli([*common, "--method", "steering", "--strengths", "0.5,1", "--out", tmp_path / "again"],
               capsys)[0] == 0
    code, out, err = cli(["report", tmp_path / "r", "--out", tmp_path / "rep"], capsys)
    assert code == 0, err
    board = json.loads((tmp_path / "rep" / "leaderboard.json").read_text())
    (g,) = board["groups"]
    assert [(r["method"], r["strength"]) for r in g["rows"]] == [("unedited", 1.0), ("steering", 0.5),
                                                                  ("steering", 1.0)]
    assert {"score", "efficacy", "generalization", "specificity"} <= set(g["headline"])
    assert "ee_locality" in g["other_metrics"]
    steer = g["rows"][1]["run"]
    assert board["worst_cases"][steer]["points"]["0.5"][0]["request"]["target_new"] == "English"
    # a deterministic rerun is no regression; comparing methods is refused
    code, out, _ = cli(["compare", tmp_path / "again", tmp_path / "r" / "steer"], capsys)
    assert code == 0 and "no metric moved" in out
    code, _, err = cli(["compare", tmp_path / "again", tmp_path / "r" / "unedited"], capsys)
    assert code == 2 and "different method" in err


# ---------------------------------------------------------------------------------------------
# the HTML in a real browser
# ---------------------------------------------------------------------------------------------
class _DomStats(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root_attrs, self.rows, self.data_imgs, self.svgs, self.sortable_tables = {}, [], 0, 0, 0
        self.sweep_rows = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.root_attrs = a
        elif tag == "tr" and "data-run" in a:
            self.rows.append((a["data-run"], a.get("class")))
        elif tag == "tr" and "data-sweep" in a:
            self.sweep_rows += 1
        elif tag == "img" and (a.get("src") or "").startswith("data:image/"):
            self.data_imgs += 1
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table" and "sortable" in (a.get("class") or ""):
            self.sortable_tables += 1


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not installed (Debian: apt-get install -y chromium)")
def test_index_html_renders_in_headless_chromium(tmp_path):
    make_run(tmp_path / "runs", "s2e", points={0.5: CF, 1.0: {**CF, "efficacy": 70.0, "score": 65.0}})
    make_run(tmp_path / "runs", "steer", method="steering", points={0.1: {**CF, "score": 20.0}})
    make_run(tmp_path / "runs", "other", method="ft", split="rome500")
    make_sweep(tmp_path / "runs", "sweep")
    write_report([tmp_path / "runs"], tmp_path / "rep")
    page = tmp_path / "rep" / "index.html"
    assert not re.search(r'(src|href)="(https?:)?//', page.read_text())  # nothing to fetch from a network
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri() + "#selftest"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _DomStats()
    dom.feed(proc.stdout)
    # the script ran: it registered the sort handlers and its self-test sorted a metric column
    assert "data-js-error" not in dom.root_attrs, dom.root_attrs
    assert int(dom.root_attrs.get("data-sortable-ready", "0")) >= 6
    assert dom.root_attrs.get("data-selftest") == "ok:score"
    # runs: R1 = other (rome500), R2 = s2e, R3 = steer; each group has a headline and an other-metrics table
    edit = [("R2", "pre"), ("R2", "post"), ("R2", "post"), ("R3", "post")]
    rome = [("R1", "pre"), ("R1", "post")]
    assert sorted(dom.rows) == sorted(edit * 2 + rome * 2)
    # the self-test sorted the first table by score, descending: 65 (R2 s=1), 50 (R2 s=0.5), 40 (pre-edit), 20 (R3)
    assert dom.rows[:4] == [("R2", "post"), ("R2", "post"), ("R2", "pre"), ("R3", "post")]
    assert dom.data_imgs == 3  # one trade-off figure per table group and per sweep, inline
    assert dom.sweep_rows == 10  # the sweep's points: 5 per split
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*cmd[:-2], "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000


def test_regenerating_into_the_same_folder_prunes_figures_nothing_links_to(tmp_path):
    """Adding runs renumbers the tables (figure names carry the table index), so an earlier report's
    figure files can be left that nothing links to: they go, the files this report links stay, and
    files that are not the report's own stay."""
    make_run(tmp_path / "runs", "s2e", points={1.0: CF})
    rep = tmp_path / "rep"
    write_report([tmp_path / "runs"], rep)
    stale = [rep / "figures" / n for n in ("tradeoff-7-counterfact-gone.png", "tradeoff-7-counterfact-gone.svg",
                                           "sweep-S9-safety-gone.png")]
    for p in stale:
        p.write_bytes(b"old")
    (rep / "figures" / "notes.png").write_bytes(b"mine")
    board = write_report([tmp_path / "runs"], rep)
    linked = {Path(f).name for g in board["groups"] for f in g.get("figures", [])}
    assert linked and {p.name for p in (rep / "figures").glob("*.png")} == linked | {"notes.png"}
    assert not any(p.exists() for p in stale)
    assert {p.stem for p in (rep / "figures").glob("*.svg")} == {Path(n).stem for n in linked}
