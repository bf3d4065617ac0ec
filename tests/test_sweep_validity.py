"""Sweep validity (neutral_kl, perplexity ratio), matched axis, censoring and paired bootstrap gains."""

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from editbench.cli import main
from editbench.evaluation.metrics import newcombe_paired_interval, wilson_interval
from editbench.evaluation.power import n_for_halfwidth, paired_gain, power_statement
from editbench.evaluation.tradeoff import analyze, format_analysis, item_values
from editbench.evaluation.utility import MC_TASKS, _mc_rows
from editbench.evaluation.validity import ValidityBounds, assess, revalidate
from editbench.data import resolve_data_root
from editbench.errors import ConfigError
from editbench.modeling.scoring import window_logprobs
from editbench.report.plotting import panel_data
from tests.conftest import tiny

TRACK = {"attribute": "refusal_rate", "higher_is_better": True, "scale": 100.0, "n_items": {"val": 4, "test": 4}}


def _pt(method, strength, split, attr, util, kl=None, valid=None, params=None, **extra):
    p = {"key": f"{method}|{json.dumps(params or {})}|{strength}", "method": method, "params": params or {},
         "strength": strength, "split": split, "attribute": {"mean": attr, "ci95": [attr, attr]},
         "utility": {"mean": util, "ci95": [util, util]}, **extra}
    if kl is not None:
        p["neutral_kl"] = {"mean": kl, "ci95": [kl, kl], "n": 4}
    if valid is not None:
        p.update(valid=valid, invalid_reasons=[] if valid else ["neutral_kl 9 > 0.5 nats"])
    return p


def _points(broken: bool = True):
    pts = []
    for split in ("val", "test"):
        pts += [_pt("unedited", 0, split, 20, 50, kl=0.0, valid=True),
                _pt("steering", 1, split, 30, 45, kl=0.1, valid=True), _pt("steering", 2, split, 50, 35, kl=0.3, valid=True),
                _pt("steer2edit", 1, split, 45, 45, kl=0.2, valid=True, params={"rho_attn": 0.1})]
        if broken:  # would dominate everything (and be chosen) if validity were ignored
            pts += [_pt("steering", 9, split, 99, 60, kl=0.01, valid=False),
                    _pt("steer2edit", 1, split, 99, 60, kl=0.01, valid=False, params={"rho_attn": 0.9})]
    return pts


@pytest.mark.parametrize("axis", ["kl", "utility"])
def test_invalid_points_enter_no_front_hypervolume_or_selection(axis):
    a = analyze(_points(), TRACK, matched_axis=axis)
    clean = analyze(_points(broken=False), TRACK, matched_axis=axis)
    assert a["matched_axis"] == axis and a["axis_note"] is None
    for split in ("val", "test"):
        keys = {q["key"] for q in a["splits"][split]["pareto"]}
        assert not any("|9" in k or "0.9" in k for k in keys)
        assert keys == {q["key"] for q in clean["splits"][split]["pareto"]}
        assert a["splits"][split]["hypervolume"] == clean["splits"][split]["hypervolume"]
        assert a["invalid"][split]["steering"] == {"invalid": 1, "points": 3}
    mu = a["matched_utility"]["steer2edit"]
    assert mu["operating_point"]["label"] == "steer2edit[rho_attn=0.1]" and mu["invalid_points"] == 1
    same = ("gain_val", "gain_test", "baseline_attribute_test", "utility_test", "neutral_kl_test")
    assert {k: mu[k] for k in same} == {k: clean["matched_utility"]["steer2edit"][k] for k in same}
    if axis == "utility":  # u=45 between steering (45, 30) and ... : the baseline's own point: gain 15
        assert mu["gain_test"] == pytest.approx(15.0)
    else:  # kl 0.2 halfway between steering 0.1 (30) and 0.3 (50): baseline 40
        assert mu["gain_test"] == pytest.approx(5.0) and mu["neutral_kl_test"] == pytest.approx(0.2)
    summary = {"analysis": a, "config": {"benchmark": "safety", "model": "m", "validity": {"max_ppl_ratio": 1.5,
               "max_neutral_kl": 0.5}, "utility": {"metric": "acc", "tasks": ["arc_easy"]}},
               "versions": {"git_commit": "abc", "git_dirty": False}}
    md = format_analysis(summary, _points())
    assert "invalid points on val: steer2edit 1/2, steering 1/3" in md and "**no**: neutral_kl 9" in md
    if axis == "kl":
        assert "x = -neutral_kl: a lower KL from the unedited model counts as higher utility" in md


def test_old_points_fall_back_to_utility_and_say_validity_not_measured():
    pts = [{k: v for k, v in p.items() if k not in ("neutral_kl", "valid", "invalid_reasons")}
           for p in _points(broken=False)]
    a = analyze(pts, TRACK)  # matched_axis kl by default
    assert a["matched_axis"] == "utility" and "neutral_kl not measured" in a["axis_note"]
    assert a["validity_note"].startswith("validity not measured for 6 of 6 edited points")
    assert a["matched_utility"]["steer2edit"]["gain_test"] == pytest.approx(15.0)


def test_validity_assessment_and_bounds():
    ref = {"method": "unedited", "split": "val", "wikitext_ppl": {"mean": 10.0, "n": 2}, "neutral_kl": {"mean": 0.0, "n": 3}}
    b = ValidityBounds(max_ppl_ratio=1.5, max_neutral_kl=0.5)
    assert assess(ref, ref, b) == {"valid": True, "invalid_reasons": [], "ppl_ratio": 1.0}
    bad = {"wikitext_ppl": {"mean": 20.0, "n": 2}, "neutral_kl": {"mean": 0.7, "n": 3}}
    v = assess(bad, ref, b)
    assert v["valid"] is False and v["ppl_ratio"] == 2.0
    assert v["invalid_reasons"] == ["perplexity ratio 2 > 1.5", "neutral_kl 0.7 > 0.5 nats"]
    near = assess({"wikitext_ppl": {"mean": 15.0075, "n": 2}, "neutral_kl": {"mean": 0.50004, "n": 3}}, ref, b)
    assert near["invalid_reasons"] == ["perplexity ratio 1.501 > 1.5", "neutral_kl 0.50004 > 0.5 nats"]  # not "1.5 > 1.5"
    nan = assess({"neutral_kl": {"mean": 0.1, "n": 3, "non_finite": 1}}, ref, b)
    assert nan["valid"] is False and "not finite on 1 texts" in nan["invalid_reasons"][0]
    assert assess({"attribute": {}}, ref, b)["valid"] is None  # nothing measured
    assert revalidate([dict(ref), {**bad, "method": "x", "split": "val"}], ValidityBounds(3.0, 1.0))[1]["valid"] is True
    for d in ({"max_ppl_ratio": 0}, {"max_ppl_ratio": 0.9}, {"max_neutral_kl": -1}, {"max_neutral_kl": math.inf},
              {"max_neutral_kl": "x"}, {"max_neutral_kl": True}, {"other": 1}, [1]):
        with pytest.raises(ConfigError):
            ValidityBounds.from_dict(d)


def test_paired_bootstrap_matches_an_independent_computation():
    rng = np.random.default_rng(7)
    a = (rng.random(60) < 0.6).astype(float)
    b = np.where(rng.random(60) < 0.8, a, 1 - a)  # mostly the same items: pairing narrows the CI
    g = paired_gain([(1.0, dict(enumerate(a))), (-1.0, dict(enumerate(b)))], scale=100.0)
    assert g["mean"] == pytest.approx(100 * (a.mean() - b.mean())) and g["n"] == 60
    ref = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, method="percentile",
                          n_resamples=20000, random_state=1).confidence_interval
    assert g["ci95"][0] == pytest.approx(100 * ref.low, abs=2.5) and g["ci95"][1] == pytest.approx(100 * ref.high, abs=2.5)
    unpaired = 100 * 1.96 * math.sqrt(a.var(ddof=1) / 60 + b.var(ddof=1) / 60)
    assert (g["ci95"][1] - g["ci95"][0]) / 2 < unpaired  # pairing uses the shared items
    assert g["no_detectable_difference"] == (g["ci95"][0] <= 0 <= g["ci95"][1])
    # every pair differs the same way: the bootstrap has no width, Newcombe's paired interval does
    same = paired_gain([(1.0, {i: 1.0 for i in range(9)}), (-1.0, {i: 0.0 for i in range(9)})], 100.0)
    w = wilson_interval(0, 9)[1]
    assert same["mean"] == 100.0 and same["ci_method"] == "newcombe" and not same["no_detectable_difference"]
    assert same["ci95"] == pytest.approx([100 * (1 - math.sqrt(2) * w), 100.0])
    assert paired_gain([(1.0, {1: 1.0}), (-1.0, {2: 1.0})], 100.0) is None  # no shared item
    assert n_for_halfwidth(10.0, 50.0) == 97  # 1.96^2 * 0.25 / 0.1^2 = 96.04
    assert power_statement(10.0, 100.0, 32, [])["n_needed"] == 97
    assert power_statement(5.0, 1.0, 16, [10, 20, 30])["n_needed"] == math.ceil((1.959963984540054 * 10 / 5) ** 2)


def test_gain_ci_is_the_interpolated_paired_difference():
    pts = _points(broken=False)
    items = {}
    rng = np.random.default_rng(0)
    for p in pts:  # item values whose means are the points' attributes (4 items, exact quarters)
        k = round(p["attribute"]["mean"] / 25)
        vals = np.array([1.0] * k + [0.0] * (4 - k))
        rng.shuffle(vals)
        p["attribute"]["mean"] = 25.0 * k
        items[(p["key"], p["split"])] = {json.dumps(i): float(v) for i, v in enumerate(vals)}
    a = analyze(pts, TRACK, matched_axis="kl", items=items)
    mu = a["matched_utility"]["steer2edit"]
    assert mu["gain_test_ci"]["mean"] == pytest.approx(mu["gain_test"]) and mu["gain_test_ci"]["n"] == 4
    records = [{"key": k, "split": s, "kind": "attribute", "item_id": json.loads(i), "value": v}
               for (k, s), vals in items.items() for i, v in vals.items()]
    assert item_values(records) == items


def test_censored_gains_are_not_decidable():
    track = {"attribute": "length", "higher_is_better": False, "scale": 1.0, "n_items": {"val": 4, "test": 4}}

    def pts(share):
        out = []
        for split in ("val", "test"):
            out += [_pt("unedited", 0, split, 128, 50, kl=0.0, valid=True, censored_share=share),
                    _pt("steering", 1, split, 110, 45, kl=0.1, valid=True, censored_share=0.0),
                    _pt("steer2edit", 1, split, 100, 45, kl=0.05, valid=True, censored_share=0.0)]
        return out

    refused = analyze(pts(0.5), track)["matched_utility"]["steer2edit"]
    assert refused == {"note": "not decidable: 50% censored", "invalid_points": 0, "decidable": False,
                       "undecidable_reasons": ["not decidable: 50% censored"], "verdict": None}
    ok = analyze(pts(0.1), track)["matched_utility"]["steer2edit"]
    assert ok["gain_test"] == pytest.approx(100 - 119) and "not_decidable" not in ok
    assert "gain_test" in analyze(pts(0.5), track, max_censored_share=0.6)["matched_utility"]["steer2edit"]
    # censored on test only: chosen on val, refused on test
    mixed = pts(0.1)
    mixed[3]["censored_share"] = 0.9
    e = analyze(mixed, track)["matched_utility"]["steer2edit"]
    assert e["not_decidable"] == "not decidable: 90% censored" and e["gain_test"] is None
    summary = {"analysis": analyze(mixed, track), "config": {"benchmark": "reasoning_length", "model": "m",
               "utility": {"metric": "acc", "tasks": ["arc_easy"]}}, "versions": {"git_commit": "abc", "git_dirty": False}}
    md = format_analysis(summary, mixed)
    assert "on test not decidable: 90% censored: no gain reported" in md and "| 90% |" in md


def test_window_logprobs_from_a_start_position():
    lm = tiny("tiny-llama")
    wins = [[1, 5, 9, 3, 7], [2, 4, 6]]
    full = window_logprobs(lm, wins, batch_size=2)
    part = window_logprobs(lm, wins, batch_size=1, starts=[2, 0])
    assert torch_close(part[0], full[0][2:]) and torch_close(part[1], full[1])
    kl = window_logprobs(lm, wins, batch_size=2, reference=part, starts=[2, 0])
    assert [k.shape[0] for k in kl] == [3, 3] and all(float(k.abs().max()) < 1e-5 for k in kl)
    with pytest.raises(ValueError):
        window_logprobs(lm, wins, starts=[5, 0])


def torch_close(a, b) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) < 1e-4


def _yaml(tmp_path, **extra):
    cfg = {"model": "tiny-llama", "benchmark": "truthfulqa", "out": str(tmp_path / "sweep"), "limit": 4, "probe_limit": 4,
           "benchmark_options": {"probe": "dataset"},  # a random model's own answers match no reference answer
           "utility": {"tasks": ["arc_easy"], "limit": 3, "wikitext_windows": 1, "window": 16, "neutral": 2,
                       "max_new_tokens": 8},
           "methods": [{"name": "steering", "strengths": [0.5, 1e4]}, {"name": "steering-layer", "strengths": [0.5, 1e4]}],
           **extra}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("bad, says", [
    ({"validity": {"max_ppl_ratio": -1}}, "validity.max_ppl_ratio must be a finite number >= 1"),
    ({"validity": {"max_neutral_kl": 0}}, "validity.max_neutral_kl must be a finite number > 0"),
    ({"validity": {"max_neutral_kl": float("nan")}}, "validity.max_neutral_kl must be a finite number > 0"),
    ({"validity": {"max_kl": 1}}, "'validity' has no key 'max_kl'"),
    ({"matched_axis": "ppl"}, "'matched_axis' must be one of kl, utility"),
    ({"max_censored_share": 1.5}, "'max_censored_share' must be a number in [0, 1]"),
    ({"target_halfwidth": float("inf")}, "'target_halfwidth' must be a finite number > 0"),
    ({"utility": {"neutral": -1}}, "neutral >= 0"),
])
def test_bad_sweep_options_exit_2_with_one_line(tmp_path, capsys, bad, says):
    assert main(["sweep", str(_yaml(tmp_path, **bad)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("editbench: error: ") and says in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()  # refused before anything is written


def test_broken_edit_is_invalid_in_a_tiny_sweep(tmp_path, capsys):
    """Steering at 1e4 on a tiny random model: its neutral_kl is ~0.27 nats (a random model's
    near-uniform outputs cap the KL), the 0.5 points' ~1e-3, so the bound is set between them."""
    cfg = _yaml(tmp_path, validity={"max_ppl_ratio": 3.0, "max_neutral_kl": 0.05})
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    out = tmp_path / "sweep"
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    by = {(p["method"], p["strength"], p["split"]): p for p in points}
    for split in ("val", "test"):
        ref = by[("unedited", 0.0, split)]
        assert ref["neutral_kl"]["mean"] == 0.0 and ref["valid"] is True and ref["ppl_ratio"] == 1.0
        assert ref["neutral_kl"]["n"] == 4 + 2  # the 4 wikitext neutral windows + 2 Alpaca responses
        for m in ("steering", "steering-layer"):
            good, broken = by[(m, 0.5, split)], by[(m, 1e4, split)]
            assert good["valid"] is True and good["invalid_reasons"] == [] and good["neutral_kl"]["mean"] < 0.05
            assert broken["valid"] is False and broken["invalid_reasons"][0].startswith("neutral_kl ")
    summary = json.loads((out / "summary.json").read_text())
    a = summary["analysis"]
    broken_keys = {p["key"] for p in points if p["valid"] is False}
    for split, info in a["splits"].items():
        assert not {q["key"] for q in info["pareto"]} & broken_keys
        assert a["invalid"][split]["steering"] == {"invalid": 1, "points": 2}
    assert a["matched_utility"]["steering-layer"].get("operating_point", {}).get("key") not in broken_keys
    # the analysis over the valid points alone is the same analysis
    alone = analyze([p for p in points if p["valid"]], summary["config"]["track"], baseline="steering")
    assert {s: (i["pareto"], i["hypervolume"]) for s, i in alone["splits"].items()} == \
        {s: (i["pareto"], i["hypervolume"]) for s, i in a["splits"].items()}
    md = (out / "analysis.md").read_text()
    assert "invalid points on test: steering 1/2, steering-layer 1/2" in md and "n needed for ±10: 97; used: 4" in md
    data = panel_data(points, "kl")
    assert {p["key"] for p in data["invalid"]} == broken_keys
    assert not {p["key"] for ps in data["series"].values() for p in ps} & broken_keys
    # the MC chance level: mean over the split's items of 1 / number of choices
    rows = _mc_rows("arc_easy", resolve_data_root() / MC_TASKS["arc_easy"])
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    ids = [r["item_id"] for r in items if r["key"] == by[("unedited", 0.0, "test")]["key"] and r["split"] == "test"
           and r.get("task") == "arc_easy"]
    assert by[("unedited", 0.0, "test")]["utility_chance"] == pytest.approx(
        100 * np.mean([1 / len(rows[i]["choices"]) for i in ids]))
    assert panel_data(points, "utility")["chance"] == by[("unedited", 0.0, "test")]["utility_chance"]
    alpaca = [r for r in items if r.get("task") == "neutral" and r["item_id"].startswith("alpaca-")]
    assert alpaca and all(1 <= r["positions"] <= 8 for r in alpaca)  # the unedited model's own reply tokens
    assert (out / "tradeoff.png").exists()
    # looser bounds on a rerun: nothing recomputed, validity re-derived
    assert main(["sweep", str(_yaml(tmp_path, validity={"max_ppl_ratio": 3.0, "max_neutral_kl": 5.0})), "--quiet"]) == 0
    again = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(again) == len(points) and all(p["valid"] for p in again)
    assert main(["curves", str(out), "--out", str(tmp_path / "fig")]) == 0
    # the report flags the points the sweep found invalid, with the sweep's reasons
    tight = _yaml(tmp_path, validity={"max_ppl_ratio": 3.0, "max_neutral_kl": 0.05})  # back to the tight bounds
    assert main(["sweep", str(tight), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "invalid in the sweep: neutral_kl" in md


def _track(recs: list[dict], rate: bool, extra: tuple[str, ...] = ()):
    """An AttributeTrack over a stub benchmark that returns ``recs`` for any split."""
    from editbench.modeling.interventions import NoIntervention
    from editbench.runs.tracks import AttributeTrack

    class Bench:
        scale, extra_metrics = (100.0 if rate else 1.0), extra

        def evaluate(self, lm, ctx, items, batch_size=16):
            return recs

    class Fitted:
        def uniform(self, lm, strength):
            return NoIntervention().uniform(lm, 0.0)

    Bench.rate = rate
    track = object.__new__(AttributeTrack)
    track.lm, track.cfg, track._items = tiny("tiny-llama"), type("C", (), {"batch_size": 2})(), {"val": []}
    track.bench = Bench()
    return lambda: track.attribute(Fitted(), 1.0, "val")[1]


def test_censored_share_from_item_records():
    recs = [{"value": 5.0, "censored": c} for c in (True, False, False, False)] + [{"value": 1.0, "censored": None}]
    assert _track(recs, rate=False)()["censored_share"] == 0.25  # unknown items left out
    assert "censored_share" not in _track([{"value": 5.0}], rate=False)()  # a benchmark that does not say


def test_rates_at_zero_or_one_get_wilson_intervals_not_zero_width():
    """0 refusals of 32 is not certainty: the sweep's rate aggregates (attribute and extra metrics)
    carry the Wilson interval where the bootstrap has zero width; counts (token lengths) keep theirs."""
    zeros = [{"value": 0.0, "mc1": 1.0} for _ in range(32)]
    agg = _track(zeros, rate=True, extra=("mc1",))()
    lo, hi = stats.binomtest(0, 32).proportion_ci(method="wilson")
    assert agg["attribute"]["ci_method"] == "wilson" and agg["attribute"]["ci95"] == pytest.approx([100 * lo, 100 * hi])
    lo, hi = stats.binomtest(32, 32).proportion_ci(method="wilson")
    assert agg["mc1"]["mean"] == 100.0 and agg["mc1"]["ci95"] == pytest.approx([100 * lo, 100 * hi])
    mixed = _track([{"value": float(i % 4 == 0)} for i in range(32)], rate=True)()["attribute"]
    assert "ci_method" not in mixed and mixed["ci95"][0] < mixed["mean"] < mixed["ci95"][1]  # bootstrap kept
    lengths = _track([{"value": 128.0} for _ in range(8)], rate=False)()["attribute"]
    assert lengths["ci95"] == [128.0, 128.0] and "ci_method" not in lengths


def test_paired_score_gain_for_knowledge_edit_points():
    """The CounterFact attribute (Score = harmonic mean of the ES, PS, NS column means) is not an
    item mean: its gain is bootstrapped by resampling cases jointly for both points, checked against
    scipy's paired bootstrap of the same statistic; KE item records yield (ES, PS, NS) triples."""
    from editbench.evaluation.metrics import hmean_rows
    from editbench.evaluation.tradeoff import item_values

    rng = np.random.default_rng(3)
    n = 50
    a = (rng.random((n, 3)) < [0.9, 0.7, 0.6]).astype(float)
    b = np.where(rng.random((n, 3)) < 0.85, a, 1 - a)

    def score(x):
        return float(hmean_rows(x.mean(axis=0)[None])[0])

    g = paired_gain([(1.0, {i: tuple(r) for i, r in enumerate(a)}), (-1.0, {i: tuple(r) for i, r in enumerate(b)})],
                    100.0, hmean_rows)
    assert g["mean"] == pytest.approx(100 * (score(a) - score(b))) and g["n"] == n
    ref = stats.bootstrap((np.arange(n),), lambda idx, axis=-1: np.apply_along_axis(
        lambda k: score(a[k.astype(int)]) - score(b[k.astype(int)]), axis, idx),
        method="percentile", n_resamples=4000, random_state=1).confidence_interval
    assert g["ci95"][0] == pytest.approx(100 * ref.low, abs=3) and g["ci95"][1] == pytest.approx(100 * ref.high, abs=3)
    assert g["ci95"][0] < g["mean"] < g["ci95"][1]
    recs = [{"kind": "attribute", "key": "k", "split": "test", "item_id": 7, "value": None,
             "post": {"efficacy": 1.0, "generalization": 0.5, "specificity": 0.0, "doubt_1": 1.0}},
            {"kind": "attribute", "key": "k", "split": "test", "item_id": 8, "value": None,
             "post": {"efficacy": 1.0, "generalization": None, "specificity": 0.0}}]  # incomplete: left out
    assert item_values(recs) == {("k", "test"): {"7": (1.0, 0.5, 0.0)}}


def test_newcombe_paired_interval_for_zero_width_gains():
    # 0 of 32 vs 0 of 32: not a certain 0 but +-(the Wilson upper bound of 0/32)
    zero = paired_gain([(1.0, {i: 0.0 for i in range(32)}), (-1.0, {i: 0.0 for i in range(32)})], 100.0)
    u = 100 * wilson_interval(0, 32)[1]
    assert zero["ci_method"] == "newcombe" and zero["ci95"] == pytest.approx([-u, u]) and zero["no_detectable_difference"]
    # an interpolated baseline that agrees with the method on every item: the same paired table
    ones = {i: float(i < 5) for i in range(32)}
    interp = paired_gain([(1.0, ones), (-0.3, dict(ones)), (-0.7, dict(ones))], 100.0)
    assert interp["ci_method"] == "newcombe" and interp["ci95"][0] < 0 < interp["ci95"][1]
    assert interp["ci95"] == pytest.approx([100 * v for v in newcombe_paired_interval(5, 0, 0, 27)])
    # non-binary values keep the bootstrap's (zero-width) interval
    half = paired_gain([(1.0, {i: 0.5 for i in range(8)}), (-1.0, {i: 0.5 for i in range(8)})], 100.0)
    assert "ci_method" not in half and half["ci95"] == [0.0, 0.0]
    # with no discordant pair and no correlation term, it is the two Wilson half-widths combined
    p1, p2, n = 12 / 40, 12 / 40, 40
    lo, hi = newcombe_paired_interval(12, 0, 0, 28)
    (l1, u1) = wilson_interval(12, n)
    assert lo < 0 < hi and hi - lo < 2 * math.hypot(u1 - p1, p2 - l1) + 1e-12  # phi > 0 narrows it


def test_newcombe_paired_interval_coverage():
    """Coverage by simulation (an independent check of the formula): near 95% for correlated pairs
    at small n, including rates near 0 where a Wald interval fails."""
    rng = np.random.default_rng(3)
    for p1, p2, agree, n in ((0.1, 0.1, 0.9, 30), (0.3, 0.15, 0.7, 40), (0.5, 0.5, 0.5, 25), (0.03, 0.0, 0.97, 32)):
        hits, reps = 0, 3000
        for _ in range(reps):
            x = rng.random(n) < p1
            y = np.where(rng.random(n) < agree, x, rng.random(n) < p2)
            a, b = int(np.sum(x & y)), int(np.sum(x & ~y))
            c = int(np.sum(~x & y))
            lo, hi = newcombe_paired_interval(a, b, c, n - a - b - c)
            truth = p1 - (agree * p1 + (1 - agree) * p2)
            hits += lo <= truth <= hi
        assert hits / reps >= 0.92, (p1, p2, agree, n, hits / reps)  # conservative where pairs mostly agree
    # large n: the paired Wald interval, SE = sqrt((b + c) - (b - c)^2 / n) / n
    a, b, c, d = 700, 260, 180, 860
    n = a + b + c + d
    se = math.sqrt((b + c) - (b - c) ** 2 / n) / n
    lo, hi = newcombe_paired_interval(a, b, c, d)
    assert lo == pytest.approx((b - c) / n - 1.96 * se, abs=2e-3) and hi == pytest.approx((b - c) / n + 1.96 * se, abs=2e-3)
