import pytest
import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation.evaluator import FAMILIES, KnowledgeEditEvaluator, case_slots
from editbench.modeling.interventions import ActivationIntervention, SteeringVector, WeightIntervention
from editbench.modeling.scoring import score_targets
from editbench.modeling.weights import ColumnDelta
from editbench.plugins.method import Method
from editbench.methods.unedited import Unedited
from tests.conftest import tiny


class RandomSteer(Method):
    """Per-case random vectors at the last prompt token (deterministic under the evaluator's seed)."""

    name = "random-steer"

    def fit_edit(self, request):
        ad = self.lm.adapter
        g = torch.Generator().manual_seed(hash(request.case_id) % 1000)
        return ActivationIntervention([SteeringVector(1, "attn", torch.randn(ad.hidden_size, generator=g) * 3, "last"),
                                       SteeringVector(2, "mlp", torch.randn(ad.hidden_size, generator=g), "all")])


class RandomWeights(Method):
    name = "random-weights"

    def fit_edit(self, request):
        ad = self.lm.adapter
        return WeightIntervention([ColumnDelta(1, "mlp", slice(0, 4), torch.randn(ad.hidden_size, 1),
                                               torch.randn(4, 1))])


def test_unedited_post_equals_pre(cf_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(cf_root, "edit").load()
    recs = KnowledgeEditEvaluator(lm, Unedited(lm), strengths=[1.0]).evaluate(cases)
    assert len(recs) == len(cases)
    for r in recs:
        assert r["post"]["ee_locality"] == 1.0
        assert set(r["pre"]) >= {"ft_acc", "ft_gen", "ft_spec", "doubt_1", "doubt_2"}
        assert {k: v for k, v in r["post"].items() if k != "ee_locality"} == r["pre"]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_row_batched_steering_equals_per_case(cf_root, model):
    lm = tiny(model)
    cases = CounterFact(cf_root, "rome500").load() + CounterFact(cf_root, "edit").load()[:3]
    method = RandomSteer(lm)
    recs = KnowledgeEditEvaluator(lm, method, strengths=[0.5, 2.0], batch_size=5).evaluate(cases)
    assert len(recs) == 2 * len(cases)
    for case in cases:
        iv = method.fit_edit(case.request)
        reqs = [q for _, q in case_slots(case)]
        for s in (0.5, 2.0):
            alone = score_targets(lm, reqs, batch_size=64, batch_context=lambda b: ActivationIntervention.apply_rows(
                lm, [(iv, s)] * len(b.indices), b))
            rec = next(r for r in recs if r["case_id"] == case.case_id and r["strength"] == s)
            got = [x for fam in FAMILIES for pair in
                   zip(rec["nll"]["post"][fam]["new"], rec["nll"]["post"][fam]["true"]) for x in pair]
            assert got == pytest.approx([a.nll for a in alone], abs=1e-4)
            assert rec["nll"]["post"] != rec["nll"]["pre"]


def test_weight_method_restores_and_changes_scores(cf_root):
    lm = tiny("tiny-qwen2")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cases = CounterFact(cf_root, "edit").load()[:3]
    recs = KnowledgeEditEvaluator(lm, RandomWeights(lm), strengths=[0.0, 1.0]).evaluate(cases)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    for r in recs:
        if r["strength"] == 0.0:
            assert r["nll"]["post"] == r["nll"]["pre"]
        else:
            assert r["nll"]["post"] != r["nll"]["pre"]
        assert r["intervention"]["extra_numel"] == lm.adapter.hidden_size + 4


def test_fluency_and_todo(cf_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(cf_root, "rome500").load()
    ev = KnowledgeEditEvaluator(lm, RandomSteer(lm), strengths=[1.0, 2.0], generation=True, max_new_tokens=8)
    recs = ev.evaluate(cases, todo={cases[0].case_id: [2.0], cases[1].case_id: [1.0, 2.0]})
    assert sorted((r["case_id"], r["strength"]) for r in recs) == [(100, 2.0), (101, 1.0), (101, 2.0)]
    assert all(r["pre"]["fluency"] >= 0 and r["post"]["fluency"] >= 0 for r in recs)
    summ = KnowledgeEditEvaluator.summarize(recs)
    assert summ["n_cases"] == 2
    assert set(summ["points"]) == {"1.0", "2.0"}
    assert summ["points"]["2.0"]["post"]["efficacy"]["n"] == 2
    assert "score" in summ["pre"] and "fluency" in summ["pre"]
    # rates whose bootstrap collapses get a Wilson interval; the pre-edit definitional zeros stay exact
    post = summ["points"]["2.0"]["post"]
    for state, aggs in (("pre", summ["pre"]), ("post", post)):
        for m in ("efficacy", "specificity") + (("subject_leak",) if state == "post" else ()):
            lo, hi = aggs[m]["ci95"]
            assert hi > lo, (state, m, aggs[m])  # n = 2 cases: never certainty
    assert summ["pre"]["subject_leak"]["ci95"] == [0.0, 0.0]
