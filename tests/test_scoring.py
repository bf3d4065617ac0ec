import math

import pytest
import torch

from editbench.modeling.scoring import ScoreRequest, encode_prompt, encode_target, generate, score_targets
from tests.conftest import tiny

REQS = [
    ScoreRequest("The capital of France is", "Paris"),
    ScoreRequest("Hi", "there friend"),
    ScoreRequest("A much longer prompt that needs padding in a batch,", "x"),
    ScoreRequest("Water boils at", "100 degrees Celsius"),
    ScoreRequest("Q", "A"),
]


def _direct(lm, req):
    """Reference: one unpadded full forward, full logits, manual NLL."""
    p, t = encode_prompt(lm.tokenizer, req.prompt), encode_target(lm.tokenizer, req.target)
    logits = lm.model(torch.tensor([p + t])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    toks = [-logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)]
    am = [logp[len(p) - 1 + i].argmax().item() for i in range(len(t))]
    return sum(toks) / len(toks), am


def test_scores_match_direct_computation(tiny_lm):
    out = score_targets(tiny_lm, REQS, batch_size=4)
    for req, s in zip(REQS, out):
        nll, am = _direct(tiny_lm, req)
        assert s.nll == pytest.approx(nll, abs=2e-4)
        assert s.argmax_ids == am


@pytest.mark.parametrize("bs", [1, 2, 32])
def test_batch_size_invariance(tiny_lm, bs):
    ref = score_targets(tiny_lm, REQS, batch_size=3)
    out = score_targets(tiny_lm, REQS, batch_size=bs)
    for a, b in zip(ref, out):
        assert a.nll == pytest.approx(b.nll, abs=1e-4)
        assert a.target_ids == b.target_ids


def test_max_tokens_splits_batches():
    lm = tiny("tiny-llama")
    a = score_targets(lm, REQS, batch_size=32, max_tokens=40)
    b = score_targets(lm, REQS, batch_size=1)
    assert [x.nll for x in a] == pytest.approx([x.nll for x in b], abs=1e-4)


def test_target_tokenization_has_leading_space():
    tok = tiny("tiny-llama").tokenizer
    ids = encode_target(tok, "Paris")
    assert tok.decode(ids) == " Paris"
    with pytest.raises(ValueError):
        encode_target(tok, "")


def test_token_accuracy():
    lm = tiny("tiny-qwen2")
    s = score_targets(lm, [ScoreRequest("abc", "defg")])[0]
    assert s.token_accuracy == sum(a == t for a, t in zip(s.argmax_ids, s.target_ids)) / len(s.target_ids)
    assert math.isfinite(s.nll) and len(s.token_nll) == len(s.target_ids)


def test_generation_batch_invariant_greedy(tiny_lm):
    prompts = ["Hello there", "A", "The quick brown fox jumps"]
    batched = generate(tiny_lm, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(tiny_lm, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_sampled_generation_seeded():
    lm = tiny("tiny-llama")
    a = generate(lm, ["Hello", "World"], max_new_tokens=8, do_sample=True, seed=3)
    b = generate(lm, ["Hello", "World"], max_new_tokens=8, do_sample=True, seed=3)
    assert a == b


# ---- prefix-shared scoring -------------------------------------------------------------------
SHARED = [ScoreRequest(p, t) for p in ("The capital of France is", "A much longer prompt that needs padding,", "Q")
          for t in ("Paris", "there friend", "100 degrees Celsius", "x")]


def _max_diff(a, b) -> float:
    return max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.token_nll, t.token_nll))


def test_prefix_sharing_equals_one_row_per_request(tiny_lm):
    """Every target after one prompt scored from one packed row equals scoring it alone (the issue's
    bound: max |NLL difference| < 1e-4), greedy tokens and next-token rows included; the sliding
    window of Gemma 2/3 (8 tokens in the tiny configs) is respected inside packed rows."""
    alone = score_targets(tiny_lm, SHARED, batch_size=3, share_prefix=False, next_rows=[True] * len(SHARED))
    packed = score_targets(tiny_lm, SHARED, batch_size=3, next_rows=[True] * len(SHARED))
    assert _max_diff(alone, packed) < 1e-4
    assert [s.argmax_ids for s in alone] == [s.argmax_ids for s in packed]
    assert max(float((s.next_logprobs - t.next_logprobs).abs().max()) for s, t in zip(alone, packed)) < 1e-4


def test_prefix_sharing_keeps_per_request_interventions_apart(tiny_lm):
    """Two edits with the same prompts: rows are shared only within an intervention key (a
    RowsContext), and a plain per-request context never shares; both equal the unshared scores."""
    from editbench.modeling.interventions import ActivationIntervention, SteeringVector
    from editbench.modeling.scoring import RowsContext

    g = torch.Generator().manual_seed(0)
    d = tiny_lm.adapter.hidden_size
    ivs = [ActivationIntervention([SteeringVector(1, "attn", torch.randn(d, generator=g) * 3, "last"),
                                   SteeringVector(2, "mlp", torch.randn(d, generator=g), "all")]) for _ in range(2)]
    reqs = SHARED + SHARED
    owner = [0] * len(SHARED) + [1] * len(SHARED)

    def rows(b):
        return ActivationIntervention.apply_rows(tiny_lm, [(ivs[owner[i]], 1.0) for i in b.indices], b)

    alone = score_targets(tiny_lm, reqs, batch_size=4, batch_context=rows)  # plain callable: no sharing
    unshared = score_targets(tiny_lm, reqs, batch_size=4, batch_context=rows, share_prefix=False)
    keyed = score_targets(tiny_lm, reqs, batch_size=4, batch_context=RowsContext(rows, owner))
    assert _max_diff(alone, unshared) == 0.0
    assert _max_diff(unshared, keyed) < 1e-4
    # the two edits really differ on the same (prompt, target), so a wrongly shared row would show
    assert max(abs(a.nll - b.nll) for a, b in zip(keyed[:len(SHARED)], keyed[len(SHARED):])) > 1e-2
