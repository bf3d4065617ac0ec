import json

import pytest
import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.errors import ConfigError
from editbench.evaluation.evaluator import KnowledgeEditEvaluator
from editbench.requests import EditRequest
from editbench.modeling.scoring import RowsContext, ScoreRequest, score_targets
from editbench.methods.ft import FT
from editbench.methods.mega import MEGA, MegaIntervention, default_region, subject_last_token
from tests.conftest import tiny

REQ = EditRequest(case_id=1, prompt="The mother tongue of Zork Blan is", subject="Zork Blan",
                  target_new="English", target_true="French")


def _score(lm, iv, reqs, s=1.0):
    ctx = RowsContext(lambda b: MegaIntervention.apply_rows(lm, [(iv, s)] * len(b.indices), b)) if iv else None
    return [x.nll for x in score_targets(lm, reqs, batch_size=8, batch_context=ctx)]


def test_subject_last_token():
    tok = tiny("tiny-llama").tokenizer
    i = subject_last_token(tok, REQ.prompt, REQ.subject)
    assert tok.decode(tok(REQ.prompt)["input_ids"][i]) == "n"  # byte tokenizer: last char of "Blan"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_vectors_land_only_in_region_at_last_token(name):
    lm = tiny(name)
    ad = lm.adapter
    m = MEGA(lm, {"mode": "contrast", "layers": "2", "gate_layer": "1", "gate_threshold": "0.99"})
    iv = m.fit_edit(REQ)
    reqs = [ScoreRequest(REQ.prompt, REQ.target_new), ScoreRequest(REQ.prompt, "a much longer target text")]
    before, after, handles = {}, {}, []
    mods = {l: ad.block_output_module(l, "attn") for l in range(ad.n_layers)}
    for l, mod in mods.items():
        handles.append(mod.register_forward_hook(lambda _m, _i, o, l=l: before.__setitem__(l, o.detach().clone())))

    def ctx(b):
        cm = MegaIntervention.apply_rows(lm, [(iv, 1.0)] * len(b.indices), b)
        cm.__enter__()
        for l, mod in mods.items():
            handles.append(mod.register_forward_hook(lambda _m, _i, o, l=l: after.__setitem__(l, o.detach().clone())))
        ctx.batch = b
        return _Exit(cm)

    try:
        score_targets(lm, reqs, batch_size=8, batch_context=ctx)
    finally:
        for h in handles:
            h.remove()
    last = ctx.batch.last_prompt_mask()
    for l in range(ad.n_layers):
        diff = after[l] - before[l]
        if l == 2:
            for r in range(diff.shape[0]):
                torch.testing.assert_close(diff[r][last[r]][0], iv.vectors[0].vector, atol=1e-5, rtol=1e-4)
                assert diff[r][~last[r]].abs().max() == 0
        else:
            assert diff.abs().max() == 0
    assert [len(ad.layers[l]._forward_hooks) for l in range(ad.n_layers)] == [0] * ad.n_layers


class _Exit:
    def __init__(self, cm):
        self.cm = cm

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def test_contrast_vector_is_in_context_difference():
    lm = tiny("tiny-qwen2")
    m = MEGA(lm, {"mode": "contrast", "layers": "1,2", "gate": "false"})
    iv = m.fit_edit(REQ)
    a = m._attn_last([f"New fact: {REQ.prompt} {REQ.target_new}.\n{REQ.prompt}", REQ.prompt])
    for i, v in enumerate(iv.vectors):
        torch.testing.assert_close(v.vector, a[i, 0] - a[i, 1])
    assert iv.key is None and [v.layer for v in iv.vectors] == [1, 2]


def test_gate_leaves_out_of_scope_bit_identical():
    lm = tiny("tiny-llama")
    iv = MEGA(lm, {"mode": "optimize", "steps": "3", "layers": "2", "gate_layer": "1", "gate_threshold": "0.99"}).fit_edit(REQ)
    out_scope = [ScoreRequest("Paris is the capital of", "France"), ScoreRequest("qqq", "w")]
    in_scope = [ScoreRequest(REQ.prompt, REQ.target_new)]
    base = _score(lm, None, out_scope + in_scope)
    steered = _score(lm, iv, out_scope + in_scope, s=3.0)
    assert steered[:2] == base[:2]  # exactly equal, not approximately
    assert steered[2] != base[2]


def test_gate_off_steers_every_prompt():
    """gate=off (the ablation): the same vectors land on out-of-scope prompts too, so they differ from
    the unedited model there, while gate=subject leaves them bit-identical."""
    lm = tiny("tiny-llama")
    common = {"mode": "contrast", "layers": "2", "gate_layer": "1", "gate_threshold": "0.99"}
    on, off = MEGA(lm, {**common, "gate": "subject"}).fit_edit(REQ), MEGA(lm, {**common, "gate": "off"}).fit_edit(REQ)
    assert on.key is not None and off.key is None
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(on.vectors, off.vectors))
    out_scope = [ScoreRequest("Paris is the capital of", "France"), ScoreRequest("qqq", "w")]
    in_scope = [ScoreRequest(REQ.prompt, REQ.target_new)]
    base = _score(lm, None, out_scope + in_scope)
    gated, ungated = _score(lm, on, out_scope + in_scope, s=3.0), _score(lm, off, out_scope + in_scope, s=3.0)
    assert gated[:2] == base[:2] and all(u != b for u, b in zip(ungated[:2], base[:2]))
    assert gated[2] == ungated[2] != base[2]  # in scope: the same edit either way
    # batching: one case per row, batch 1 vs 16, agrees
    reqs = out_scope + in_scope
    per_row = [x.nll for x in score_targets(lm, reqs, batch_size=1, batch_context=lambda b: MegaIntervention.apply_rows(
        lm, [(off, 3.0)] * len(b.indices), b))]
    assert per_row == pytest.approx(ungated, abs=1e-4)


def test_gate_param_values():
    """gate takes subject | off (and booleans, as older configs and run directories hold it); the
    resolved value stays a bool, so runs made before the option keep their hash and labels."""
    from editbench.runs.runner import resolve_params

    assert resolve_params(MEGA, {"gate": "subject"})["gate"] is True
    assert resolve_params(MEGA, {"gate": "off"})["gate"] is False
    assert resolve_params(MEGA, {"gate": True})["gate"] is True and resolve_params(MEGA, {})["gate"] is True
    assert resolve_params(MEGA, {"gate": "none"})["gate"] is False
    with pytest.raises(ConfigError, match="gate must be 'subject' or 'off'"):
        resolve_params(MEGA, {"gate": "maybe"})
    with pytest.raises(ConfigError, match="needs gate=subject"):
        MEGA(tiny("tiny-llama"), {"gate": "off", "positions": "last+subject"})
    lm = tiny("tiny-llama")
    m = MEGA(lm, {"gate": "off", "layers": "1", "mode": "contrast"})  # no gate: no gate layer to precede the region
    assert m.gate is None and m.fit_edit(REQ).key is None
    with pytest.raises(ConfigError, match="no gate keys"):
        m.gate_key(REQ)


def test_mega_gate_off_conforms():
    """`editbench check-method mega --param gate=off`."""
    from editbench import assert_conforms

    assert_conforms("mega", params={"gate": "off"})


def test_strength_zero_and_batch_mix():
    """Many cases in one batch: each row gets its own vectors; strength 0 changes nothing."""
    lm = tiny("tiny-gpt2")
    m = MEGA(lm, {"mode": "contrast", "layers": "2", "gate_layer": "1", "gate_threshold": "0.99"})
    iv1 = m.fit_edit(REQ)
    req2 = EditRequest(2, "Quux Mira was born in", "Quux Mira", "Rome", "Oslo")
    iv2 = m.fit_edit(req2)
    reqs = [ScoreRequest(REQ.prompt, "English"), ScoreRequest(req2.prompt, "Rome")]
    alone = [_score(lm, iv1, reqs[:1])[0], _score(lm, iv2, reqs[1:])[0]]
    mixed = [x.nll for x in score_targets(lm, reqs, batch_context=lambda b: MegaIntervention.apply_rows(
        lm, [[(iv1, 1.0), (iv2, 1.0)][i] for i in b.indices], b))]
    assert mixed == pytest.approx(alone, abs=1e-4)
    assert _score(lm, iv1, reqs, s=0.0) == _score(lm, None, reqs)


def test_params_validated(tmp_path):
    lm = tiny("tiny-llama")
    with pytest.raises(ConfigError, match="mode"):
        MEGA(lm, {"mode": "nope"})
    with pytest.raises(ConfigError, match="must precede the region"):
        MEGA(lm, {"layers": "1", "gate_layer": "1"})
    with pytest.raises(ConfigError, match="invalid for a 3-layer"):
        MEGA(lm, {"layers": "7"})
    with pytest.raises(ConfigError, match="not found"):
        MEGA(lm, {"region_file": str(tmp_path / "none.json")})
    (tmp_path / "r.json").write_text(json.dumps({"region": [2]}))
    assert MEGA(lm, {"region_file": str(tmp_path / "r.json"), "gate_layer": "1"}).region == (2,)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not an attribution artifact"):
        MEGA(lm, {"region_file": str(tmp_path / "bad.json")})
    with pytest.raises(ConfigError, match="not both"):
        MEGA(lm, {"layers": "2", "region_file": str(tmp_path / "r.json")})
    (tmp_path / "strs.json").write_text(json.dumps({"region": ["x"]}))
    with pytest.raises(ConfigError, match="invalid for a 3-layer"):
        MEGA(lm, {"region_file": str(tmp_path / "strs.json")})
    (tmp_path / "other.json").write_text(json.dumps({"region": [2], "model": {"n_layers": 30, "model_id": "m"}}))
    with pytest.raises(ConfigError, match="made for a 30-layer model"):
        MEGA(lm, {"region_file": str(tmp_path / "other.json")})
    assert default_region(30) == tuple(range(15, 24)) and default_region(3) == (2,)


def test_ft_restores_and_respects_constraint(cf_root):
    lm = tiny("tiny-llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    ft = FT(lm, {"steps": "5", "norm_constraint": "0.01", "lr": "0.01"})
    iv = ft.fit_edit(REQ)
    assert iv.deltas[0].dense().abs().max() <= 0.01 + 1e-7
    cases = CounterFact(cf_root, "edit").load()[:2]
    recs = KnowledgeEditEvaluator(lm, ft, strengths=[1.0]).evaluate(cases)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert all(r["nll"]["post"]["rewrite"]["new"][0] < r["nll"]["pre"]["rewrite"]["new"][0] for r in recs)
    with pytest.raises(ConfigError):
        FT(lm, {"layer": "9"})


def test_ft_behaviour_fits_positive_responses_only():
    """Behaviour FT: lowers the positive responses' NLL (mini-batches cycled), ignores negatives,
    stays in the L-inf ball, restores the model; an empty positive set is a one-line error."""
    from editbench.modeling.directions import ProbeExample

    lm = tiny("tiny-llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    pos = [ProbeExample(f"Question {i}:", " I cannot help with that.") for i in range(11)]
    neg = [ProbeExample(f"Question {i}:", " Sure, here it is.") for i in range(11)]
    ft = FT(lm, {"steps": "6", "norm_constraint": "0.05", "lr": "0.05"})
    iv = ft.fit_behaviour(pos, neg)
    assert iv.deltas[0].dense().abs().max() <= 0.05 + 1e-7
    reqs = [ScoreRequest(e.prompt, e.response.strip()) for e in pos[:3]]
    pre = [s.nll for s in score_targets(lm, reqs)]
    with iv.apply(lm, 1.0):
        post = [s.nll for s in score_targets(lm, reqs)]
    assert all(b < a for a, b in zip(pre, post))
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    other = FT(lm, {"steps": "6", "norm_constraint": "0.05", "lr": "0.05"}).fit_behaviour(pos, neg[:1])
    assert torch.equal(other.deltas[0].dense(), iv.deltas[0].dense())  # negatives are not used
    with pytest.raises(ConfigError, match="no positive example"):
        ft.fit_behaviour([ProbeExample("Q", " ")], neg)


@pytest.mark.slow
def test_mega_flips_a_real_edit():
    from editbench.modeling.loading import load_model

    lm = load_model("smollm2-135m")
    case = next(c for c in CounterFact(split="rome500").load(12) if c.case_id == 20952)  # Angola -> Antarctica
    r = case.request
    iv = MEGA(lm).fit_edit(r)
    reqs = [ScoreRequest(q, t) for q in (r.prompt, case.paraphrase_prompts[0]) for t in (r.target_new, r.target_true)]
    nbr = [ScoreRequest(case.neighborhood_prompts[0], t) for t in (r.target_new, r.target_true)]
    pre, post = _score(lm, None, reqs + nbr), _score(lm, iv, reqs + nbr)
    assert pre[0] > pre[1]  # unedited: Africa preferred
    assert post[0] < post[1] and post[2] < post[3]  # edited: Antarctica on the rewrite and a paraphrase
    assert post[4:] == pre[4:]  # the neighbour (another country) is untouched by the gate


@pytest.mark.parametrize("gate_norm,leaks", [("none", True), ("standardize", False)])
def test_gate_standardisation_ignores_a_shared_outlier_dimension(gate_norm, leaks):
    """A huge dimension shared by every token (as in Gemma 3's residual stream) makes raw cosines ~1
    for any pair of prompts; the standardised gate still keeps an unrelated prompt out of scope."""
    from editbench.modeling.hooks import hooked

    lm = tiny("tiny-llama")

    def outlier(_m, _i, out):  # the gate layer's output carries it...
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[..., 0] += 1e4
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def remove(_m, args, kwargs):  # ...and the next layer never sees it, so the model is unchanged
        if args:
            return (args[0] - torch.eye(args[0].shape[-1])[0] * 1e4, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] - torch.eye(kwargs["hidden_states"].shape[-1])[0] * 1e4}

    out_scope = [ScoreRequest("Paris is the capital of", "France")]
    with hooked(lm.adapter.layers[1], outlier), hooked(lm.adapter.layers[2], remove, "pre_kwargs"):
        base = _score(lm, None, out_scope)
        iv = MEGA(lm, {"mode": "contrast", "layers": "2", "gate_layer": "1", "gate_threshold": "0.99",
                       "gate_norm": gate_norm}).fit_edit(REQ)
        steered = _score(lm, iv, out_scope, s=3.0)
        in_scope = _score(lm, iv, [ScoreRequest(REQ.prompt, REQ.target_new)], s=3.0)
    assert (steered != base) is leaks
    assert in_scope != _score(lm, None, [ScoreRequest(REQ.prompt, REQ.target_new)])  # the edit itself still applies
    assert iv.extra_numel() == iv.vectors[0].vector.numel() + iv.key.numel()
    with pytest.raises(ConfigError, match="gate_norm"):
        MEGA(lm, {"gate_norm": "zscore"})


def test_gate_off_is_labelled_activation_steering(cf_root, tmp_path):
    """The class a run records is the configured instance's: MEGA is `gated`, MEGA with gate=off is
    plain activation steering (reports must not label the ablation as a gated editor)."""
    from editbench.cli import main

    lm = tiny("tiny-llama")
    assert MEGA(lm, {"mode": "contrast"}).effective_class == "gated"
    assert MEGA(lm, {"mode": "contrast", "gate": "off"}).effective_class == "activation-steering"
    for gate, cls in (("subject", "gated"), ("off", "activation-steering")):
        out = tmp_path / gate
        rc = main(["run", "--model", "tiny-llama", "--method", "mega", "--param", "mode=contrast", "--param",
                   f"gate={gate}", "--limit", "2", "--data-root", str(cf_root), "--out", str(out), "--quiet"])
        assert rc == 0
        assert json.loads((out / "summary.json").read_text())["method_class"] == cls


# ---- behaviour edits (the attribute sweeps) ----------------------------------------------------
def _probes(lm):
    from editbench.modeling.directions import ProbeExample

    pos = [ProbeExample("Tell me about the weather.", " It is a lovely, wonderful day."),
           ProbeExample("How was the film?", " Great fun, I loved it.")]
    neg = [ProbeExample("Tell me about the weather.", " It is an awful, miserable day."),
           ProbeExample("How was the film?", " Dreadful, I hated it.")]
    return pos, neg


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_behaviour_attribution_at_one_position_is_nlka_at_the_last_prompt_token(name):
    """With one scored position per example, the windowed attribution is Imp(A_l) of the first
    response token at the last prompt position: block_importance's own definition."""
    from editbench.modeling.attribution import block_importance, response_attention_importance
    from editbench.modeling.directions import response_ids

    lm = tiny(name)
    pos, neg = _probes(lm)
    got = response_attention_importance(lm, pos + neg, max_positions=1, batch_size=3)
    first = [response_ids(lm.tokenizer, e)[0] for e in pos + neg]
    want = block_importance(lm, [e.prompt for e in pos + neg], first)["attn"]
    torch.testing.assert_close(got, want.cpu().float(), atol=1e-5, rtol=1e-4)
    wide = response_attention_importance(lm, pos + neg, max_positions=4, batch_size=1)
    torch.testing.assert_close(wide, response_attention_importance(lm, pos + neg, max_positions=4, batch_size=4),
                               atol=1e-5, rtol=1e-4)  # batching and padding change nothing


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_fit_behaviour_steers_the_attribution_region_at_every_position(name):
    from editbench.modeling.attribution import response_attention_importance, select_region
    from editbench.modeling.directions import extract_directions
    from editbench.modeling.scoring import generate

    lm = tiny(name)
    pos, neg = _probes(lm)
    m = MEGA(lm, {})  # the gate settings do not apply to behaviour edits
    iv = m.fit_behaviour(pos, neg)
    imp = response_attention_importance(lm, pos + neg, 16)
    region = select_region((imp[:, :2].mean(1) - imp[:, 2:].mean(1)).numpy(), lm.adapter.n_layers)
    assert list(iv.region) == region and iv.region_source == "attribution"
    assert iv.describe()["region"] == region and len(iv.describe()["gap"]) == lm.adapter.n_layers
    d = extract_directions(lm, pos, neg)
    assert [(v.layer, v.site, v.positions) for v in iv.vectors] == [(l, "attn", "all") for l in region]
    for v in iv.vectors:
        torch.testing.assert_close(v.vector, d.directions[(v.layer, "attn")])
    assert m.class_of(iv) == "activation-steering" and m.effective_class == "gated"
    prompts = ["Tell me a story.", "ab"]
    base = generate(lm, prompts, max_new_tokens=4)
    outer, bctx = iv.uniform(lm, 0.0)
    with outer:
        assert generate(lm, prompts, max_new_tokens=4, batch_context=bctx) == base  # strength 0 = unedited
    given = MEGA(lm, {"layers": "2"}).fit_behaviour(pos, neg)
    assert given.region == (2,) and given.region_source == "given" and given.gap == ()


def test_mega_behaviour_conforms():
    """`editbench check-method mega` runs the behaviour check with the default parameters."""
    from editbench.plugins.conformance import assert_conforms

    results = {r.name: r for r in assert_conforms("mega")}
    assert not results["behaviour"].skipped, results["behaviour"].detail
