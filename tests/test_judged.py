"""The judged-generation attribute benchmarks (sentiment, language): judges, the threshold rule,
own-response probes ranked by the judge, options refused with one line."""

import json

import pytest
import yaml

from editbench.benchmarks.attribute import format_instruction
from editbench.benchmarks.judged import POOL_ROWS, Language, Sentiment, cut_response, tails
from editbench.cli import main
from editbench.errors import ConfigError
from editbench.evaluation.judges import LinguaScorer, VaderScorer, load_scorer
from editbench.modeling.interventions import NoIntervention
from editbench.modeling.scoring import generate
from editbench.runs.sweep import SweepConfig
from editbench.runs.tracks import AttributeTrack
from tests.conftest import tiny


# ---- judges ----------------------------------------------------------------------------------
def test_vader_scores_and_the_empty_response_rule():
    v = VaderScorer()
    good, bad, empty, blank, broken = v.score(["I love this, it is wonderful!", "This is terrible and I hate it.",
                                               "", "   \n", None])
    assert good > 0.5 and bad < -0.5
    assert empty == blank == broken == 0.0  # empty / malformed: neutral, never a crash


def test_lingua_scores_the_target_language():
    s = LinguaScorer("fr")
    fr, en, empty, digits = s.score(["Le chat dort sur le canapé et la maison est calme.",
                                     "The cat is sleeping on the sofa and the house is quiet.", "", "1. 1. 1."])
    assert fr > 0.5 and en < 0.1 and empty == 0.0 and digits == 0.0
    with pytest.raises(ConfigError, match="unknown ISO 639-1"):
        LinguaScorer("klingon")


def test_unknown_scorer_is_one_line():
    with pytest.raises(ConfigError, match="unknown judge 'gpt4'"):
        load_scorer("gpt4")


# ---- the benchmarks --------------------------------------------------------------------------
def test_pool_is_disjoint_from_the_utility_alpaca_rows_and_splits_are_disjoint():
    b = Sentiment(seed=0)
    ids = {s: {it["item_id"] for it in b.items(s)} for s in ("probe", "val", "test")}
    assert [len(ids[s]) for s in ("probe", "val", "test")] == [400, 200, 400]
    assert max(max(v) for v in ids.values()) < POOL_ROWS  # rows >= 1000 are the utility suite's
    assert not (ids["probe"] & ids["val"]) and not (ids["probe"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_threshold_rule_and_direction():
    pos = Sentiment(options={"direction": "positive"})
    neg = Sentiment(options={"direction": "negative"})
    assert pos.threshold == 0.05 and neg.threshold == -0.05  # VADER's own cut-offs
    assert [pos.wanted(s) for s in (0.05, 0.0499, 0.9)] == [True, False, True]
    assert [neg.wanted(s) for s in (-0.05, -0.0499, -0.9)] == [True, False, True]
    assert Sentiment(options={"threshold": 0.5}).wanted(0.49) is False
    assert Language().threshold == 0.5 and Language().wanted(0.5)


@pytest.mark.parametrize("options, message", [
    ({"judge": "gpt4"}, "unknown judge 'gpt4'"),
    ({"threshold": 1.5}, r"threshold must be a number in \[-1, 1\]"),
    ({"threshold": "high"}, "threshold must be a number"),
    ({"direction": "up"}, "direction must be one of positive, negative"),
    ({"tail": 0.7}, r"tail must be a number in \(0, 0.5\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"template": "no placeholder"}, "template must contain"),
    ({"temperatur": 1.0}, "has no option 'temperatur'"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        Sentiment(options=options)


def test_language_bad_options():
    with pytest.raises(ConfigError, match=r"threshold must be a number in \[0, 1\]"):
        Language(options={"threshold": -0.2})
    with pytest.raises(ConfigError, match="unknown ISO 639-1"):
        Language(options={"language": "xx"})


def test_fewer_items_than_asked_is_refused():
    with pytest.raises(ConfigError, match="its test split has 400 items, fewer than the 401 asked"):
        Sentiment().items("test", 401)


def test_prompts_use_the_template_and_the_frame():
    lm = tiny("tiny-llama")  # no chat template: the Alpaca frame
    b = Language()
    it = b.items("val", 1)[0]
    assert b.prompt(lm.tokenizer, it) == (f"### Instruction:\nRéponds en français : {it['instruction']}\n\n"
                                         "### Réponse:\n")
    assert Sentiment().prompt(lm.tokenizer, it) == format_instruction(lm.tokenizer, it["instruction"])
    assert cut_response(" Bonjour.\n\n### Instruction:\nmore") == "Bonjour."


def test_tails_rank_by_score_with_ties_by_index():
    assert tails([0.1, 0.9, 0.5, -0.3, 0.9, 0.0], 0.34) == ([1, 4], [3, 5])
    assert tails([1.0, 2.0, 3.0], 0.1) == ([2], [0])  # at least two per side, at most half


class _Scripted:
    """A judge whose score is the response's length: a known ranking on any model."""

    name, low, high = "scripted", -1.0, 1.0

    def score(self, texts):
        return [min(len(t) / 100, 1.0) for t in texts]


def test_probe_ranks_the_models_own_sampled_responses_by_the_judge():
    lm = tiny("tiny-llama")
    for direction, sign in (("positive", 1), ("negative", -1)):
        b = Sentiment(seed=3, options={"max_new_tokens": 6, "tail": 0.25, "direction": direction})
        b.scorer = _Scripted()
        ps = b.probe_set(lm, limit=8)
        items = b.items("probe", 8)
        prompts = [b.prompt(lm.tokenizer, it) for it in items]
        texts = [cut_response(t) for t in generate(lm, prompts, max_new_tokens=6, do_sample=True, seed=3,
                                                   temperature=1.0, top_k=0, top_p=1.0)]
        keep = [i for i, t in enumerate(texts) if t]
        hi, lo = tails([sign * len(texts[i]) / 100 for i in keep], 0.25)
        assert [(e.prompt, e.response) for e in ps.positives] == [(prompts[keep[i]], texts[keep[i]]) for i in hi]
        assert [(e.prompt, e.response) for e in ps.negatives] == [(prompts[keep[i]], texts[keep[i]]) for i in lo]
        assert ps.stats["per_side"] == 2 and ps.stats["n"] == 8 and ps.stats["rule"].startswith("vader compound")


def test_evaluation_records_and_track_aggregates():
    lm = tiny("tiny-gpt2")
    b = Sentiment(seed=0, options={"max_new_tokens": 5})
    items = b.items("val", 3)
    recs = b.evaluate(lm, NoIntervention().uniform(lm), items, batch_size=2)
    texts = [cut_response(t) for t in generate(lm, [b.prompt(lm.tokenizer, it) for it in items], max_new_tokens=5)]
    scores = VaderScorer().score(texts)
    assert [r["response"] for r in recs] == texts and [r["compound"] for r in recs] == scores
    assert [r["value"] for r in recs] == [float(s >= 0.05) for s in scores]
    cfg = SweepConfig.from_dict({"benchmark": "sentiment", "methods": [{"name": "steering"}], "out": "x",
                                 "limit": {"val": 3, "test": 2}})
    track = AttributeTrack(b, lm, cfg)
    assert track.describe()["n_items"] == {"val": 3, "test": 2}
    agg = track.aggregate([{"value": 1.0, "compound": 0.5}, {"value": 0.0, "compound": -0.25}])
    assert agg["attribute"]["mean"] == 50.0 and agg["compound"]["mean"] == pytest.approx(0.125)


def test_bad_config_values_exit_2_with_one_line(tmp_path, capsys):
    base = {"model": "tiny-llama", "benchmark": "sentiment", "out": str(tmp_path / "out"),
            "methods": [{"name": "steering"}]}
    for extra, message in (({"benchmark_options": {"threshold": 2}}, "threshold must be a number in [-1, 1]"),
                           ({"benchmark_options": {"judge": "gpt4"}}, "unknown judge 'gpt4'"),
                           ({"limit": 500}, "fewer than the 500 asked"),
                           ({"limit": {"val": 10}}, "needs exactly the keys val and test")):
        cfg = tmp_path / "sweep.yaml"
        cfg.write_text(yaml.safe_dump({**base, **extra}))
        assert main(["sweep", str(cfg)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("editbench: error:") and message in err[0], err
        assert not (tmp_path / "out" / "points.jsonl").exists()


def test_benchmarks_are_listed(capsys):
    assert main(["benchmarks"]) == 0
    out = capsys.readouterr().out
    assert "sentiment" in out and "language" in out
    assert json.loads(json.dumps(Sentiment.default_options))["judge"] == "vader"


def test_linear_probe_finds_the_layer_that_separates_the_classes(monkeypatch):
    import numpy as np
    import torch

    from editbench.evaluation import probing

    rng = np.random.default_rng(0)

    def features(lm, examples, batch_size=16):
        n = len(examples)
        X = rng.normal(size=(n, 3, 4))
        X[: n // 2, 1, 0] += 6.0  # layer 1 separates the first half (positives) from the rest
        return torch.tensor(X, dtype=torch.float32)

    monkeypatch.setattr(probing, "example_features", features)
    out = probing.layer_probe_accuracy(None, list(range(20)), list(range(20)), folds=5)
    acc = {r["layer"]: r["accuracy"] for r in out["layers"]}
    assert out["best_layer"] == 1 and acc[1] == 1.0 and acc[0] < 0.8 and acc[2] < 0.8
    with pytest.raises(Exception, match="at least 2 examples per side"):
        probing.layer_probe_accuracy(None, [1], [2, 3])


def test_sweep_reports_linear_probe_accuracy_per_layer(tmp_path):
    from editbench.runs.sweep import run_sweep

    cfg = SweepConfig.from_dict({
        "model": "tiny-llama", "benchmark": "sentiment", "out": str(tmp_path / "sw"), "linear_probe": True,
        "benchmark_options": {"max_new_tokens": 3}, "limit": 2, "probe_limit": 16,
        "utility": {"tasks": ["arc_easy"], "limit": 2, "wikitext_windows": 1, "window": 16, "neutral": 0},
        "methods": [{"name": "steering", "strengths": [1]}]})
    s = run_sweep(cfg, progress=False)
    lp = s["analysis"]["linear_probe"]
    assert len(lp["layers"]) == tiny("tiny-llama").adapter.n_layers
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in lp["layers"]) and lp["n_pos"] == lp["n_neg"] == 4
    assert "Linear probe of the attribute" in (tmp_path / "sw" / "analysis.md").read_text()
    with pytest.raises(ConfigError, match="linear_probe"):
        SweepConfig.from_dict({"benchmark": "sentiment", "out": "x", "methods": [{"name": "steering"}],
                               "linear_probe": "yes"})
