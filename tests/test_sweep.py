"""Attribute benchmarks, utility suite, sweeps and trade-off analysis (bookkeeping on tiny models)."""

import json
import math
import shutil

import pytest
import yaml

from editbench.benchmarks.attribute import split_indices
from editbench.benchmarks.reasoning import ReasoningLength, clean_solution, last_number
from editbench.benchmarks.safety import Safety
from editbench.benchmarks.truthfulqa import TruthfulQA
from editbench.cli import main
from editbench.data import resolve_data_root
from editbench.errors import ConfigError, DataError
from editbench.modeling.interventions import NoIntervention
from editbench.evaluation.judges import KeywordRefusalJudge, load_judge
from editbench.runs.sweep import SweepConfig
from editbench.evaluation.tradeoff import analyze, bracket, hypervolume, interpolate_front, pareto_front
from editbench.evaluation.utility import UtilityConfig, UtilitySuite, mean_of_tasks
from tests.conftest import tiny

DATA = resolve_data_root()


def test_split_indices_disjoint_cover_and_seeded():
    s = split_indices(101, {"probe": 0.4, "val": 0.2, "test": 0.4}, seed=3)
    allidx = s["probe"] + s["val"] + s["test"]
    assert sorted(allidx) == list(range(101)) and len(set(allidx)) == 101
    assert len(s["probe"]) == 40 and len(s["val"]) == 20
    assert s == split_indices(101, {"probe": 0.4, "val": 0.2, "test": 0.4}, seed=3)
    assert s != split_indices(101, {"probe": 0.4, "val": 0.2, "test": 0.4}, seed=4)
    with pytest.raises(ConfigError):
        split_indices(10, {"a": 0.5, "b": 0.6}, 0)


@pytest.mark.parametrize("cls", [Safety, TruthfulQA, ReasoningLength])
def test_benchmark_splits_never_overlap(cls):
    b = cls(seed=0)
    ids = {s: {it["item_id"] for it in b.items(s)} for s in ("probe", "val", "test")}
    assert ids["val"] and ids["test"] and ids["probe"]
    assert not (ids["probe"] & ids["val"]) and not (ids["probe"] & ids["test"]) and not (ids["val"] & ids["test"])
    if cls is ReasoningLength:  # probe problems come from train, evaluation from test
        assert all(str(i).startswith("train-") for i in ids["probe"])
        assert len(ids["val"]) + len(ids["test"]) == 1319


def test_safety_probe_modes_and_bad_options():
    lm = tiny("tiny-llama")
    given = Safety(seed=0, options={"probe": "given"}).probe_set(lm, limit=5)
    assert len(given.positives) == len(given.negatives) == 5
    assert given.positives[0].prompt == given.negatives[0].prompt  # same instruction, refusal vs compliance
    assert given.negatives[0].response.startswith("Sure, here is")
    with pytest.raises(ConfigError, match="probe must be"):
        Safety(options={"probe": "nope"})
    with pytest.raises(ConfigError, match="no option"):
        Safety(options={"temperatur": 1})
    with pytest.raises(ConfigError, match="unknown judge"):
        Safety(options={"judge": "gpt4"})


def test_keyword_judge():
    j = load_judge("keyword")
    assert isinstance(j, KeywordRefusalJudge)
    assert j.judge(["x"] * 4, ["I'm sorry, I can't do that.", "Sure, here is how", "", "As an AI model, no."]) == [
        True, False, False, True]


def test_gsm8k_parsing():
    sol, final = clean_solution("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,007")
    assert final == "1007" and "<<" not in sol and sol.endswith("The answer is 1007.")
    assert last_number("so 12 then 1,500.") == "1500" and last_number("none") is None
    with pytest.raises(ValueError):
        clean_solution("no final answer")


def test_truthfulqa_bad_data(tmp_path):
    (tmp_path / "truthfulqa").mkdir()
    shutil.copy(DATA / "truthfulqa" / "TruthfulQA.csv", tmp_path / "truthfulqa")
    (tmp_path / "truthfulqa" / "mc_task.json").write_text("[]")
    with pytest.raises(DataError, match="align by row"):
        TruthfulQA(data_root=tmp_path).pool()


def test_truthfulqa_scoring_matches_direct_computation():
    lm = tiny("tiny-gpt2")
    b = TruthfulQA(seed=0)
    items = b.items("val", 3)
    recs = b.evaluate(lm, NoIntervention().uniform(lm), items, batch_size=2)
    from editbench.modeling.scoring import ScoreRequest, score_targets
    from editbench.benchmarks.truthfulqa import qa_prompt

    for it, r in zip(items, recs):
        best, inc = score_targets(lm, [ScoreRequest(qa_prompt(it["question"]), it["best"]),
                                       ScoreRequest(qa_prompt(it["question"]), it["incorrect"])], batch_size=1)
        assert math.isclose(r["best_logp_norm"], -best.nll, abs_tol=1e-4)
        assert r["value"] == float(-best.nll > -inc.nll)
        assert 0.0 <= r["mc2"] <= 1.0


def test_pareto_front_hand_made():
    xy = [(1, 5), (2, 4), (2, 3), (3, 1), (0, 5), (3, 1)]
    assert pareto_front(xy) == [0, 1, 3, 5]  # (2,3) dominated by (2,4); (0,5) by (1,5); ties kept


def test_matched_utility_interpolation_and_hypervolume():
    front = [(50.0, 10.0), (40.0, 30.0), (30.0, 50.0)]
    front = sorted(front)
    assert interpolate_front(front, 45.0) == pytest.approx(20.0)
    assert interpolate_front(front, 35.0) == pytest.approx(40.0)
    assert interpolate_front(front, 55.0) is None and interpolate_front(front, 29.0) is None
    assert bracket(front, 29.0, below=True) == [(0, 1.0)] and bracket(front, 55.0, below=True) is None
    # staircase area above ref (30, 10): (40-30)*(30-10) + (50-40)*0 ... computed by hand = 200 + 0 + (30-30)*...
    assert hypervolume(front, (30.0, 10.0)) == pytest.approx(10 * 20 + 0 * 40 + 0)


def _pt(method, strength, split, attr, util, params=None):
    return {"key": f"{method}|{json.dumps(params or {})}|{strength}", "method": method, "params": params or {},
            "strength": strength, "split": split, "attribute": {"mean": attr, "ci95": [attr, attr]},
            "utility": {"mean": util, "ci95": [util, util]}}


def test_analysis_selects_on_val_reports_on_test():
    pts = []
    for split, shift in (("val", 0.0), ("test", -1.0)):
        pts += [_pt("unedited", 0, split, 20, 50),
                _pt("steering", 1, split, 30, 45), _pt("steering", 2, split, 50, 35),
                _pt("steer2edit", 1, split, 45 + shift, 45, {"rho_attn": 0.1}),
                _pt("steer2edit", 1, split, 60 + shift, 40, {"rho_attn": 0.3})]
    a = analyze(pts, {"attribute": "refusal_rate", "higher_is_better": True})
    mu = a["matched_utility"]["steer2edit"]
    # val: at u=45 baseline 30 -> gain 15; at u=40 baseline 40 -> gain 20: the second is chosen
    assert mu["operating_point"]["label"] == "steer2edit[rho_attn=0.3]" and mu["gain_val"] == pytest.approx(20)
    assert mu["gain_test"] == pytest.approx(19) and mu["baseline_attribute_test"] == pytest.approx(40)
    assert a["splits"]["test"]["hypervolume"]["steer2edit"] > a["splits"]["test"]["hypervolume"]["steering"]
    # a baseline that never beats the original model (a one-point front): a less useful method point
    # is compared with that point, and the analysis says so
    one = [p for p in pts if p["method"] != "steering"] + [_pt("steering", 1, s, 15, 45) for s in ("val", "test")]
    mu1 = analyze(one, {"attribute": "refusal_rate", "higher_is_better": True})["matched_utility"]["steer2edit"]
    assert mu1["gain_val"] == pytest.approx(40) and mu1["baseline_attribute_test"] == pytest.approx(20)
    assert mu1["below_front_test"] is True and mu1["gain_test"] == pytest.approx(39)
    more = [_pt("steer2edit", 1, s, 45, 55, {"rho_attn": 0.1}) for s in ("val", "test")]  # more useful than all
    mu2 = analyze([p for p in one if p["method"] != "steer2edit"] + more,
                  {"attribute": "refusal_rate", "higher_is_better": True})["matched_utility"]["steer2edit"]
    assert "no comparison" in mu2["note"]
    # lower-is-better attribute: the orientation flips which points are on the front
    low = analyze(pts, {"attribute": "length", "higher_is_better": False})
    assert [p["label"] for p in low["splits"]["val"]["pareto"]] == ["unedited"]


def test_utility_suite_records_and_bootstrap():
    lm = tiny("tiny-qwen2")
    suite = UtilitySuite(UtilityConfig(tasks=["arc_easy", "piqa"], limit=3, wikitext_windows=2, window=16, fluency=1,
                                       max_new_tokens=4))
    val = {it["item_id"] for it in suite.items("arc_easy", "val")}
    test = {it["item_id"] for it in suite.items("arc_easy", "test")}
    assert val and test and not val & test
    recs = suite.evaluate(lm, NoIntervention().uniform(lm), "val", batch_size=4)
    assert sum(r["task"] == "arc_easy" for r in recs) == 3 and sum(r["task"] == "wikitext" for r in recs) == 2
    s = suite.summarize(recs)
    expect = (sum(r["acc"] for r in recs if r["task"] == "arc_easy") / 3 + sum(r["acc"] for r in recs if r["task"] == "piqa") / 3) / 2
    assert s["utility"]["mean"] == pytest.approx(100 * expect)
    assert s["wikitext_ppl"]["mean"] > 1 and "fluency" in s
    agg = mean_of_tasks([[1, 1, 0, 0], [1.0]])
    assert agg["mean"] == pytest.approx(75.0) and agg["ci95"][0] <= 75.0 <= agg["ci95"][1]
    with pytest.raises(ConfigError, match="unknown utility task"):
        UtilityConfig(tasks=["mmlu"])


def test_perplexity_windows_start_with_the_tokenizers_special_prefix():
    """Windows carry the tokenizer's BOS where it adds one (Gemma without it is another model) and
    are scored on the same tokens either way: a window's own tokens after its first."""
    import dataclasses

    import torch
    from tokenizers import processors

    from editbench.modeling.loading import byte_tokenizer

    lm = tiny("tiny-llama")
    cfg = UtilityConfig(tasks=["arc_easy"], limit=1, wikitext_windows=2, window=16, fluency=0, neutral=0)

    def window_nll(lm, ids, skip):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[skip:-1], -1)
        return float(-logp.gather(-1, torch.tensor(ids[skip + 1:])[:, None]).mean())

    plain = UtilitySuite(cfg)
    wins = plain._windows(lm, "test")
    assert all(len(w) == 16 for w in wins)  # the byte tokenizer adds nothing
    recs = plain._perplexity(lm, None, "test", batch_size=4)
    assert [r["nll"] for r in recs] == pytest.approx([window_nll(lm, w, 0) for w in wins], abs=1e-5)

    tok = byte_tokenizer()
    bos = tok.convert_tokens_to_ids("<eos>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", bos)])
    assert tok("")["input_ids"] == [bos]
    with_bos = dataclasses.replace(lm, tokenizer=tok)
    suite = UtilitySuite(cfg)
    bwins = suite._windows(with_bos, "test")
    assert [w[0] for w in bwins] == [bos] * 2 and [w[1:] for w in bwins] == wins
    brecs = suite._perplexity(with_bos, None, "test", batch_size=4)
    expect = [window_nll(lm, w, 1) for w in bwins]
    assert [r["nll"] for r in brecs] == pytest.approx(expect, abs=1e-5)
    assert [r["nll"] for r in brecs] != pytest.approx([r["nll"] for r in recs], abs=1e-4)  # BOS changes the context


def test_sweep_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no key 'metods'"):
        SweepConfig.from_dict({"benchmark": "safety", "metods": [], "out": "x"})
    with pytest.raises(ConfigError, match="needs 'methods'"):
        SweepConfig.from_dict({"benchmark": "safety", "out": "x"})
    with pytest.raises(ConfigError, match="has no key 'gird'"):
        SweepConfig.from_dict({"benchmark": "safety", "out": "x", "methods": [{"name": "steering", "gird": {}}]})
    base = {"benchmark": "safety", "out": "x"}
    for strengths in (["abc"], [float("nan")], 3, [True]):
        with pytest.raises(ConfigError, match="strengths must be a list of finite numbers"):
            SweepConfig.from_dict({**base, "methods": [{"name": "steering", "strengths": strengths}]})
    with pytest.raises(ConfigError, match="'limit' must be an integer"):
        SweepConfig.from_dict({**base, "limit": "abc", "methods": [{"name": "steering"}]})
    with pytest.raises(ConfigError, match="utility: 'limit' must be an integer"):
        SweepConfig.from_dict({**base, "utility": {"limit": "abc"}, "methods": [{"name": "steering"}]})
    with pytest.raises(ConfigError, match="invalid sweep config"):
        SweepConfig.from_dict({**base, "utility": {"limitt": 3}, "methods": [{"name": "steering"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: [unclosed")
    assert main(["sweep", str(bad)]) == 2


def _sweep_yaml(tmp_path, benchmark, methods, **extra):
    cfg = {"model": "tiny-llama", "benchmark": benchmark, "out": str(tmp_path / "sweep"), "limit": 4, "probe_limit": 4,
           "utility": {"tasks": ["arc_easy"], "limit": 3, "wikitext_windows": 1, "window": 16, "neutral": 2,
                       "max_new_tokens": 8},
           "methods": methods, **extra}
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_sweep_end_to_end_resume_and_figures(tmp_path, capsys):
    cfg = _sweep_yaml(tmp_path, "truthfulqa", [{"name": "steering", "strengths": [0.5, 2]},
                                               {"name": "steer2edit", "grid": {"alpha": [0.3, 0.6]}}],
                      benchmark_options={"probe": "dataset"})  # a random model's own answers match nothing
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    out = tmp_path / "sweep"
    points = [json.loads(l) for l in (out / "points.jsonl").read_text().splitlines()]
    assert len(points) == 2 * (1 + 2 + 2)  # (original + 2 steering + 2 steer2edit configs) x (val, test)
    assert {p["split"] for p in points} == {"val", "test"}
    items = [json.loads(l) for l in (out / "items.jsonl").read_text().splitlines()]
    for p in points:  # every aggregate traces back to its per-item records
        mine = [r["value"] for r in items if r["key"] == p["key"] and r["split"] == p["split"] and r["kind"] == "attribute"]
        assert len(mine) == 4 and p["attribute"]["mean"] == pytest.approx(100 * sum(mine) / 4)
    assert (out / "tradeoff.png").stat().st_size > 1000 and (out / "tradeoff.svg").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "steer2edit" in summary["analysis"]["matched_utility"]
    stdout = capsys.readouterr().out
    assert "Attribute gain over steering" in stdout
    # rerun: nothing recomputed, nothing duplicated; aggregates written by older code (here: made
    # stale by hand) are re-derived from the items
    stale = [{**p, "attribute": {**p["attribute"], "mean": -1.0, "ci95": [0.0, 0.0]},
              "utility": {**p["utility"], "mean": -1.0}} for p in points]
    (out / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in stale))
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    assert [json.loads(l) for l in (out / "points.jsonl").read_text().splitlines()] == points
    assert len((out / "items.jsonl").read_text().splitlines()) == len(items)
    # a crash between a point's items and its summary line: the orphan items are dropped and redone
    last = json.loads((out / "points.jsonl").read_text().splitlines()[-1])
    (out / "points.jsonl").write_text("".join(l + "\n" for l in (out / "points.jsonl").read_text().splitlines()[:-1]))
    with open(out / "items.jsonl", "a") as f:
        f.write('{"key": "torn"')
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    redone = [json.loads(l) for l in (out / "items.jsonl").read_text().splitlines()]
    assert len(redone) == len(items)
    assert sum(r["key"] == last["key"] and r["split"] == last["split"] for r in redone) == \
        sum(r["key"] == last["key"] and r["split"] == last["split"] for r in items)
    assert all("code" in p and p["code"]["git_commit"] for p in
               (json.loads(l) for l in (out / "points.jsonl").read_text().splitlines()))
    # a different protocol in the same directory is refused
    cfg2 = _sweep_yaml(tmp_path, "truthfulqa", [{"name": "steering"}], limit=5)
    assert main(["sweep", str(cfg2), "--quiet"]) == 2
    assert main(["curves", str(out), str(out), "--out", str(tmp_path / "fig" / "both")]) == 0
    assert (tmp_path / "fig" / "both.svg").exists()


def test_sweep_rejects_edit_only_method_on_behaviour(tmp_path, capsys):
    cfg = _sweep_yaml(tmp_path, "truthfulqa", [{"name": "rome"}])
    assert main(["sweep", str(cfg), "--quiet"]) == 2
    assert "cannot be fitted to a behaviour" in capsys.readouterr().err


def test_counterfact_sweep_per_edit_methods(cf_root, tmp_path):
    shutil.copy(cf_root / "counterfact" / "counterfact-edit.json", cf_root / "counterfact" / "counterfact-val.json")
    (cf_root / "utility").symlink_to(DATA / "utility")
    (cf_root / "safety").symlink_to(DATA / "safety")  # neutral_kl's Alpaca instructions
    cfg = _sweep_yaml(tmp_path, "counterfact", [{"name": "mega", "params": {"steps": 2}, "strengths": [1]}],
                      data_root=str(cf_root), utility_edits=2, limit=3)
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    points = [json.loads(l) for l in (tmp_path / "sweep" / "points.jsonl").read_text().splitlines()]
    mega = [p for p in points if p["method"] == "mega"]
    assert len(mega) == 2 and all({"efficacy", "specificity"} <= set(p) for p in mega)
    items = [json.loads(l) for l in (tmp_path / "sweep" / "items.jsonl").read_text().splitlines()]
    edits = {r["edit"] for r in items if r["kind"] == "utility" and r["key"] == mega[0]["key"]}
    assert edits == {"edit-0", "edit-1"}  # utility measured under each of the first two edits


@pytest.mark.slow
def test_real_smollm2_smoke_sweep(tmp_path):
    cfg = {"model": "smollm2-135m", "benchmark": "safety", "out": str(tmp_path / "s"), "limit": 4, "probe_limit": 8,
           "benchmark_options": {"max_new_tokens": 24},
           "utility": {"tasks": ["arc_easy"], "limit": 8, "wikitext_windows": 0},
           "methods": [{"name": "steering", "strengths": [0.5]}, {"name": "steer2edit", "strengths": [1]}]}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(p), "--quiet"]) == 0
    points = [json.loads(l) for l in (tmp_path / "s" / "points.jsonl").read_text().splitlines()]
    assert len(points) == 6 and all(0 <= p["attribute"]["mean"] <= 100 for p in points)
    items = [json.loads(l) for l in (tmp_path / "s" / "items.jsonl").read_text().splitlines()]
    assert all(r["response"] is not None for r in items if r["kind"] == "attribute")


def _ci_pt(method, strength, split, attr, kl, params=None):
    p = _pt(method, strength, split, attr, 50, params)
    p["neutral_kl"] = {"mean": kl, "ci95": [kl, kl]}
    return p


def test_every_comparison_says_whether_the_protocol_can_decide_it():
    from editbench.evaluation.tradeoff import decide

    up = {"attribute_test": 60.0, "baseline_attribute_test": 40.0, "gain_test": 20.0,
          "gain_test_ci": {"mean": 20.0, "ci95": [12.0, 28.0], "n": 200}}
    assert decide(up, 1.0, 10, True) == {"decidable": True, "undecidable_reasons": [], "verdict": "method better"}
    wide = dict(up, gain_test_ci={"mean": 20.0, "ci95": [-2.0, 42.0], "n": 30})
    d = decide(wide, 1.0, 10, True)
    assert not d["decidable"] and d["undecidable_reasons"] == ["CI half-width 22.0 > 10 (n = 30)"]
    assert d["verdict"] == "no detectable difference"
    floor = dict(up, attribute_test=3.1, baseline_attribute_test=0.0, gain_test=3.1,
                 gain_test_ci={"mean": 3.1, "ci95": [-1.0, 7.0], "n": 200})
    assert decide(floor, 1.0, 10, True)["undecidable_reasons"][0].startswith("floor: method 3.1 and baseline 0.0")
    ceiling = dict(floor, attribute_test=97.0, baseline_attribute_test=99.0)
    assert decide(ceiling, 1.0, 10, True)["undecidable_reasons"][0].startswith("ceiling")
    assert decide(ceiling, 1.0, 10, False)["decidable"]  # a count (tokens) has no floor rule
    # lower-is-better: a negative gain whose CI is below 0 is the method's improvement
    down = dict(up, gain_test=-20.0, gain_test_ci={"mean": -20.0, "ci95": [-28.0, -12.0], "n": 200})
    assert decide(down, -1.0, 10, False)["verdict"] == "method better"
    assert decide(down, 1.0, 10, True)["verdict"] == "baseline better"
    for entry, reason in (({"note": "no valid point on val"}, "no valid point on val"),
                          ({"test_invalid": ["neutral_kl 2 > 0.5 nats"]}, "the operating point is invalid on test"),
                          ({"not_decidable": "not decidable: 40% censored"}, "40% censored"),
                          ({"attribute_test": 50.0}, "no test comparison")):
        d = decide(entry, 1.0, 10, True)
        assert not d["decidable"] and d["undecidable_reasons"][0].startswith(reason) and d["verdict"] is None


def test_analysis_records_decidability_per_method_and_labels_compare_separately():
    pts = []
    for split in ("val", "test"):
        pts += [_ci_pt("unedited", 0, split, 20, 0.0), _ci_pt("steering", 1, split, 30, 0.2),
                _ci_pt("steering", 2, split, 50, 0.4), _ci_pt("s2e-heads", 1, split, 45, 0.2),
                _ci_pt("s2e-neurons", 1, split, 25, 0.2)]
    a = analyze(pts, {"attribute": "sentiment_rate", "higher_is_better": True, "scale": 100.0},
                target_halfwidth=10)
    mu = a["matched_utility"]
    assert set(mu) == {"s2e-heads", "s2e-neurons"} and a["max_halfwidth"] == 10
    assert mu["s2e-heads"]["gain_test"] == pytest.approx(15) and mu["s2e-neurons"]["gain_test"] == pytest.approx(-5)
    assert all(e["decidable"] is False and e["undecidable_reasons"] == ["no paired CI"] for e in mu.values())


def test_sweep_labels_and_per_split_limits(tmp_path):
    from editbench.runs.sweep import run_sweep

    cfg = SweepConfig.from_dict({
        "model": "tiny-llama", "benchmark": "sentiment", "out": str(tmp_path / "sw"),
        "benchmark_options": {"max_new_tokens": 3}, "limit": {"val": 2, "test": 3}, "probe_limit": 8,
        "utility": {"tasks": ["arc_easy"], "limit": 2, "wikitext_windows": 1, "window": 16, "neutral": 0},
        "methods": [{"name": "steering", "strengths": [1]},
                    {"name": "steer2edit", "label": "s2e-heads", "params": {"rho_mlp": -1}, "strengths": [1]},
                    {"name": "steer2edit", "label": "s2e-neurons", "params": {"rho_attn": -1}, "strengths": [1]}]})
    summary = run_sweep(cfg, progress=False)
    pts = [json.loads(l) for l in (tmp_path / "sw" / "points.jsonl").read_text().splitlines()]
    heads = [p for p in pts if p["method"] == "s2e-heads"]
    assert {p["plugin"] for p in heads} == {"steer2edit"} and heads[0]["fit"]["edited_neurons"] == 0
    assert [p for p in pts if p["method"] == "s2e-neurons"][0]["fit"]["edited_heads"] == 0
    assert {p["split"]: p["attribute"]["n"] for p in pts if p["method"] == "unedited"} == {"val": 2, "test": 3}
    assert set(summary["analysis"]["matched_utility"]) == {"s2e-heads", "s2e-neurons"}
    assert all("decidable" in e for e in summary["analysis"]["matched_utility"].values())
    labels = [m.get("label") for m in summary["config"]["methods"]]
    assert labels == [None, "s2e-heads", "s2e-neurons"]
    with pytest.raises(ConfigError, match="label 's2e' is given to two methods"):
        SweepConfig.from_dict({"benchmark": "sentiment", "out": "x", "methods": [
            {"name": "steer2edit", "label": "s2e"}, {"name": "mega", "label": "s2e"}]})
    with pytest.raises(ConfigError, match="label must be"):
        SweepConfig.from_dict({"benchmark": "sentiment", "out": "x", "methods": [{"name": "mega", "label": "../x"}]})
