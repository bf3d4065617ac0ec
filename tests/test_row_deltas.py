"""Per-row weight deltas (many cases' weight edits in one batch, each row its own case's factors)
against the apply / restore path, on every tiny architecture; and batched edit fitting against
fitting one edit at a time."""

import pytest
import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation.evaluator import KnowledgeEditEvaluator
from editbench.methods.rome import ROME
from editbench.modeling.interventions import WeightIntervention
from editbench.modeling.loading import TINY_MODELS
from editbench.modeling.scoring import RowsContext, ScoreRequest, score_targets
from editbench.modeling.weights import ColumnDelta
from editbench.requests import EditRequest
from tests.conftest import tiny

PROMPTS = ["The capital of France is", "ab", "Water boils at one hundred", "The mother tongue of Person1 is"]


def _edits(lm, seed: int) -> WeightIntervention:
    g = torch.Generator().manual_seed(seed)
    ad = lm.adapter
    W_mlp, W_attn = ad.out_weight(1, "mlp"), ad.out_weight(0, "attn")
    d = W_mlp.shape[0]
    return WeightIntervention([
        ColumnDelta(1, "mlp", slice(None), torch.randn(d, 2, generator=g) * 0.3,
                    torch.randn(W_mlp.shape[1], 2, generator=g) * 0.3),  # rank 2, all columns (ROME / MEMIT shape)
        ColumnDelta(0, "attn", torch.tensor([1, 3]), torch.randn(d, 1, generator=g),
                    torch.randn(2, 1, generator=g)),  # a few columns (Steer2Edit heads / neurons)
        ColumnDelta(ad.n_layers - 1, "mlp", slice(0, 4), torch.randn(d, 4, generator=g) * 0.2, None),  # dense (FT)
    ])


@pytest.mark.parametrize("name", TINY_MODELS)
def test_row_deltas_equal_apply_and_restore(name):
    lm = tiny(name)
    ivs = [_edits(lm, k) for k in range(len(PROMPTS))]
    reqs = [ScoreRequest(p, " and more") for p in PROMPTS]
    want = []
    for iv, q in zip(ivs, reqs):
        with iv.apply(lm, 0.7):
            want.append(score_targets(lm, [q])[0].nll)
    ctx = RowsContext(lambda b: WeightIntervention.apply_rows(lm, [(ivs[i], 0.7) for i in b.indices], b),
                      list(range(len(reqs))))
    got = [s.nll for s in score_targets(lm, reqs, batch_size=4, batch_context=ctx)]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    assert [len(m._forward_hooks) for m in lm.model.modules()] == [0] * len(list(lm.model.modules()))
    zero = [s.nll for s in score_targets(lm, reqs, batch_size=4, batch_context=RowsContext(
        lambda b: WeightIntervention.apply_rows(lm, [(ivs[i], 0.0) for i in b.indices], b), list(range(len(reqs)))))]
    assert zero == [s.nll for s in score_targets(lm, reqs, batch_size=4)]


def test_evaluator_records_equal_the_apply_path(monkeypatch):
    """A ROME run's records through per-row deltas equal those of applying each case's edit alone."""
    lm = tiny("tiny-llama")
    cases = CounterFact(split="edit").load(3)
    m = ROME(lm, {"steps": "3"})
    rows = KnowledgeEditEvaluator(lm, m, strengths=(1.0,), batch_size=16).evaluate(cases)
    monkeypatch.setattr(WeightIntervention, "row_batchable", False)
    applied = KnowledgeEditEvaluator(lm, m, strengths=(1.0,), batch_size=16).evaluate(cases)
    for a, b in zip(rows, applied):
        for fam, kinds in a["nll"]["post"].items():
            for kind, vals in kinds.items():
                assert vals == pytest.approx(b["nll"]["post"][fam][kind], abs=1e-4), (fam, kind)


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_batched_fitting_equals_one_at_a_time(method):
    from editbench.plugins import registry

    lm = tiny("tiny-llama")
    m = registry.load("method", method)(lm, {"steps": "4"})
    reqs = [EditRequest(i, f"The mother tongue of {'very ' * i}old Person{i} is", f"Person{i}", "English", "French")
            for i in range(3)]
    one = [m.fit_edit(r) for r in reqs]
    many = m.fit_each(reqs)
    for x, y in zip(one, many):
        for a, b in zip(x.deltas, y.deltas):
            u, v = a.dense().flatten().double(), b.dense().flatten().double()
            assert float(torch.nn.functional.cosine_similarity(u, v, dim=0)) > 0.9999
            assert float((u - v).norm() / u.norm()) < 1e-3
