"""Probe protocols of the attribute benchmarks (the paper's self-generated probes and our canned
ones), the offline judges behind them, sampled safety evaluation and censored reasoning lengths."""

from pathlib import Path

import pytest
import yaml

import editbench.benchmarks.truthfulqa as tqa
from editbench.benchmarks.reasoning import ReasoningLength, length_tails, problem_prompt
from editbench.benchmarks.safety import Safety
from editbench.benchmarks.attribute import format_instruction
from editbench.cli import main
from editbench.errors import ConfigError
from editbench.evaluation.judges import load_judge, reference_label, token_f1
from editbench.modeling.interventions import NoIntervention
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import generate
from editbench.plugins import registry
from tests.conftest import tiny

REPO = Path(__file__).resolve().parents[1]


# ---- safety ----------------------------------------------------------------------------------
def test_safety_self_probe_is_the_models_own_responses():
    lm = tiny("tiny-llama")
    b = Safety(seed=0, options={"max_new_tokens": 5})
    ps = b.probe_set(lm, limit=3)
    harmful = [format_instruction(lm.tokenizer, it["instruction"]) for it in b.items("probe")[:3]]
    benign = [format_instruction(lm.tokenizer, x) for x in b.benign()[:3]]
    assert [(e.prompt, e.response) for e in ps.positives] == list(zip(harmful, generate(lm, harmful, max_new_tokens=5)))
    assert [(e.prompt, e.response) for e in ps.negatives] == list(zip(benign, generate(lm, benign, max_new_tokens=5)))
    refused = b.judge.judge([""] * 3, [e.response for e in ps.positives])
    assert ps.stats == {"protocol": "self", "n": 3, "harmful_refused": sum(refused)}
    given = Safety(seed=0, options={"probe": "given"}).probe_set(lm, limit=3)
    assert given.negatives[0].response.startswith("Sure, here is") and given.stats["protocol"] == "given"


def test_keyword_lists_paper_default_and_illegal_option():
    said = ["That would be illegal.", "You cannot do that.", "Sure, here it is."]
    assert load_judge("keyword").judge([""] * 3, said) == [False, True, False]  # paper list: bare "cannot"
    assert load_judge("keyword", ["illegal"]).judge([""] * 3, said) == [True, True, False]
    assert load_judge("keyword-gcg").judge([""] * 3, said) == [True, False, False]
    assert Safety(options={"extra_keywords": ["illegal"]}).judge.judge([""], said[:1]) == [True]
    with pytest.raises(ConfigError, match="extra_keywords"):
        Safety(options={"extra_keywords": "illegal"})


def test_sampled_safety_evaluation_is_seeded():
    lm = tiny("tiny-llama")
    b = Safety(seed=0, options={"eval": "sampled", "samples": 3, "max_new_tokens": 4})
    ctx = NoIntervention().uniform(lm)
    items = b.items("val", 2)
    first = b.evaluate(lm, ctx, items, batch_size=4)
    assert first == b.evaluate(lm, ctx, items, batch_size=4)
    assert all(len(r["responses"]) == 3 and r["value"] == sum(r["refused"]) / 3 for r in first)
    assert len({x for r in first for x in r["responses"]}) > 2  # sampled, not three greedy copies
    other = Safety(seed=1, options={"eval": "sampled", "samples": 3, "max_new_tokens": 4}).evaluate(lm, ctx, items, 4)
    assert [r["responses"] for r in other] != [r["responses"] for r in first]
    greedy = Safety(seed=0, options={"max_new_tokens": 4}).evaluate(lm, ctx, items, 4)
    assert "responses" not in greedy[0] and greedy[0]["value"] in (0.0, 1.0)


# ---- truthfulqa ------------------------------------------------------------------------------
def test_reference_label_rule_on_hand_made_answers():
    correct, incorrect = ["Nothing happens", "The seeds pass through your digestive system"], \
        ["You grow watermelons in your stomach", "You get sick"]
    assert token_f1("The cat sat.", "a cat sat") == 1.0 and token_f1("", "cat") == 0.0
    assert token_f1("It is what it is.", "This is it") == 0.0  # function words only
    assert token_f1("No, it is not a cat", "a cat") == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))  # negations count
    assert reference_label(" The seeds pass through you.", correct, incorrect) is True
    assert reference_label(" Watermelons grow in your stomach!", correct, incorrect) is False
    assert reference_label(" Purple elephants.", correct, incorrect) is None  # no shared token
    assert reference_label(" a big dog", ["big cat"], ["the big fish"]) is None  # a tie
    assert reference_label(" The answer is:", ["The answer is no"], ["Yes"]) is True  # "answer" is content


def test_truthfulqa_self_probe_labels_the_models_own_answers(monkeypatch):
    lm = tiny("tiny-llama")
    b = tqa.TruthfulQA(seed=0, options={"max_new_tokens": 6})
    items = b.items("probe", 6)
    prompts = [tqa.qa_prompt(it["question"]) for it in items]
    answers = [tqa.own_answer(t) for t in generate(lm, prompts, max_new_tokens=6)]
    verdicts = {a: lab for a, lab in zip(answers, [True, False, None, True, False, False])}
    seen = []

    def fake_label(answer, correct, incorrect):
        seen.append((answer, correct, incorrect))
        return verdicts[answer]

    monkeypatch.setattr(tqa, "reference_label", fake_label)
    ps = b.probe_set(lm, 6)
    assert len(set(answers)) == 6 and [a for a, *_ in seen] == [a for a in answers if a.strip()]
    assert seen[0][1][0] == items[0]["best"] and seen[0][2] == items[0]["incorrect_answers"]
    assert [(e.prompt, e.response) for e in ps.positives] == [(prompts[i], answers[i]) for i in (0, 3)]
    assert [(e.prompt, e.response) for e in ps.negatives] == [(prompts[i], answers[i]) for i in (1, 4, 5)]
    assert ps.stats == {"protocol": "self", "n": 6, "truthful": 2, "untruthful": 3, "dropped": 1}
    assert tqa.own_answer(" Paris.\nQ: next") == " Paris."
    dataset = tqa.TruthfulQA(seed=0, options={"probe": "dataset"}).probe_set(lm, 2)
    assert dataset.positives[0].response == " " + items[0]["best"]


# ---- reasoning length ------------------------------------------------------------------------
def test_length_tails_five_percent_rule():
    lengths = [50, 7, 0, 300, 12, 300, 90, 40, 5, 256] * 10  # 100 responses, 10 of them empty
    short, long = length_tails(lengths, 0.05)
    assert len(short) == len(long) == 4  # floor(5% of 90 non-empty)
    assert short == [8, 18, 28, 38] and long == [83, 85, 93, 95]  # lengths 5 and 300; ties by index
    assert length_tails([3, 1, 2, 9, 8], 0.05) == ([1, 2], [4, 3])  # the minimum of two per side
    assert length_tails([4, 0, 2], 0.05) == ([2], [0])  # at most half of the usable responses
    with pytest.raises(ConfigError, match="tail"):
        ReasoningLength(options={"tail": 0.7})


def test_reasoning_self_probe_uses_own_responses_and_censoring():
    lm = load_model("tiny-llama")  # a private copy: its EOS token is changed below
    b = ReasoningLength(seed=0, options={"max_new_tokens": 6})
    items = b.items("val", 4)
    prompts = [problem_prompt(lm.tokenizer, it["question"]) for it in items]
    # make the third generated token of the first problem an EOS: that response stops after two
    # tokens, responses without that token run into the budget
    first = lm.tokenizer(prompts[0], return_tensors="pt")
    eos = int(lm.model.generate(**first, max_new_tokens=3, do_sample=False)[0, -1])
    lm.tokenizer.eos_token = lm.tokenizer.convert_ids_to_tokens(eos)
    lm.model.generation_config.eos_token_id = eos
    recs = b.evaluate(lm, NoIntervention().uniform(lm), items, batch_size=4)
    assert recs[0]["value"] <= 2 and recs[0]["censored"] is False
    assert all(r["censored"] is (r["value"] == 6) for r in recs) and any(r["censored"] for r in recs)

    probe = b.items("probe", 6)
    pp = [problem_prompt(lm.tokenizer, it["question"]) for it in probe]
    lengths: list[int] = []
    texts = generate(lm, pp, max_new_tokens=6, lengths_out=lengths)
    short, long = length_tails(lengths, 0.05)
    ps = b.probe_set(lm, 6)
    assert [(e.prompt, e.response) for e in ps.positives] == [(pp[i], texts[i]) for i in short]
    assert [(e.prompt, e.response) for e in ps.negatives] == [(pp[i], texts[i]) for i in long]
    assert ps.stats["short_lengths"] == [lengths[i] for i in short] and ps.stats["censored"] == sum(
        n == 6 for n in lengths)
    gold = ReasoningLength(seed=0, options={"probe": "gold"}).probe_set(lm, 2)
    assert gold.positives[0].response.endswith(".") and "The answer is" in gold.positives[0].response


# ---- unknown protocols -----------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", ["safety", "truthfulqa", "reasoning_length"])
def test_unknown_probe_protocol_is_one_line_exit_2(tmp_path, capsys, benchmark):
    cfg = {"model": "tiny-llama", "benchmark": benchmark, "out": str(tmp_path / "s"),
           "benchmark_options": {"probe": "canned"}, "methods": [{"name": "steering"}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("editbench: error:") and "probe must be one of self" in err[0]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_sweep_configs_name_a_valid_probe_protocol(path):
    cfg = yaml.safe_load(path.read_text())
    if cfg["benchmark"] != "counterfact":
        bench = registry.load("benchmark", cfg["benchmark"])(options=cfg["benchmark_options"])
        # judged benchmarks have one protocol (own responses): configs that can choose must say so
        assert bench.options["probe"] == "self" == cfg["benchmark_options"].get("probe", "self")
        if len(type(bench).option_choices.get("probe", ())) > 1:
            assert "probe" in cfg["benchmark_options"], f"{path.name} must name its probe protocol"
