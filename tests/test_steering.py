"""Direction extraction (vs a hand computation) and the activation-steering baselines."""

from __future__ import annotations

import pytest
import torch

from editbench.modeling.directions import (Directions, ProbeExample, ProbeSet, edit_probe_pair, extract_directions,
                                window_bounds)
from editbench.errors import ConfigError
from editbench.modeling.interventions import ActivationIntervention
from editbench.modeling.loading import TINY_MODELS, load_model
from editbench.requests import EditRequest
from editbench.methods.steering import Steering, SteeringLayer

POS = [ProbeExample("The capital of France is", " Paris"),
       ProbeExample("Q: Is the sky blue?\nA:", " Yes, it is.")]
NEG = [ProbeExample("The capital of France is", " Rome, in Italy"),
       ProbeExample("Q: Is the sky blue?\nA:", " No."),
       ProbeExample("Hello", " world!")]
REQ = EditRequest(case_id=1, prompt="The capital of France is", subject="France", target_new="Rome",
                  target_true="Paris")


@pytest.fixture(scope="module", params=TINY_MODELS)
def lm(request):
    return load_model(request.param)


def _out(x):
    return x[0] if isinstance(x, tuple) else x


def hand_means(lm, example: ProbeExample, start_off: int, end_off: int) -> dict:
    """One unpadded, full-sequence forward pass with our own hooks; mean over positions
    [P + start_off, P + K + end_off) sliced by hand."""
    ad, tok = lm.adapter, lm.tokenizer
    p = tok(example.prompt)["input_ids"]
    r = tok(example.response, add_special_tokens=False)["input_ids"]
    store, handles = {}, []
    for l in range(ad.n_layers):
        for b in ("attn", "mlp"):
            handles.append(ad.block_output_module(l, b).register_forward_hook(
                lambda m, i, o, k=("out", l, b): store.__setitem__(k, _out(o))))
            handles.append(ad.out_proj(l, b).register_forward_pre_hook(
                lambda m, i, k=("in", l, b): store.__setitem__(k, i[0])))
            handles.append(ad.out_proj(l, b).register_forward_hook(
                lambda m, i, o, k=("proj", l, b): store.__setitem__(k, _out(o))))
        handles.append(ad.layers[l].register_forward_hook(lambda m, i, o, k=("resid", l): store.__setitem__(k, _out(o))))
    try:
        with torch.no_grad():
            lm.model(torch.tensor([p + r]))
    finally:
        for h in handles:
            h.remove()
    P, K = len(p), len(r)
    return {k: v[0, P + start_off: P + K + end_off].double().mean(0) for k, v in store.items()}


def hand_directions(lm, pos, neg, start_off=-1, end_off=-1):
    mp = [hand_means(lm, e, start_off, end_off) for e in pos]
    mn = [hand_means(lm, e, start_off, end_off) for e in neg]
    avg = lambda ms, k: torch.stack([m[k] for m in ms]).mean(0)  # noqa: E731
    return {k: (avg(mp, k), avg(mn, k)) for k in mp[0]}


def assert_close(a, b):
    b = b.double()
    torch.testing.assert_close(a.double(), b, atol=1e-4 * max(1.0, float(b.abs().max())), rtol=1e-4)


def test_directions_match_hand_computation(lm):
    d = extract_directions(lm, POS, NEG, batch_size=2)  # mixed lengths and classes: padding exercised
    ref = hand_directions(lm, POS, NEG)
    ad = lm.adapter
    assert (d.n_pos, d.n_neg, d.window) == (2, 3, "predict")
    for l in range(ad.n_layers):
        for b in ("attn", "mlp"):
            p, n = ref[("out", l, b)]
            assert d.directions[(l, b)].shape == (ad.hidden_size,)
            assert_close(d.directions[(l, b)], p - n)
            p, n = ref[("proj", l, b)]
            assert_close(d.proj_directions[(l, b)], p - n)
            if ad.out_proj(l, b) is ad.block_output_module(l, b):
                assert d.proj_directions[(l, b)] is d.directions[(l, b)]
            p, n = ref[("in", l, b)]
            want = ad.n_heads * ad.head_dim if b == "attn" else ad.intermediate_size
            assert d.input_means[(l, b)].shape == (want,)
            assert_close(d.input_means[(l, b)], 0.5 * (p + n))
        p, n = ref[("resid", l)]
        assert_close(d.resid[l], p - n)


@pytest.mark.parametrize("window,offs", [("response", (0, 0)), ("both", (-1, 0))])
def test_other_windows_match_hand_computation(window, offs):
    lm = load_model("tiny-llama")
    d = extract_directions(lm, POS, NEG, batch_size=3, window=window)
    ref = hand_directions(lm, POS, NEG, *offs)
    for (l, b), v in d.directions.items():
        p, n = ref[("out", l, b)]
        assert_close(v, p - n)


def test_window_is_exactly_the_predicting_positions():
    assert window_bounds(5, 3) == (4, 7)  # positions P-1 .. P+K-2
    assert window_bounds(5, 3, "response") == (5, 8)
    assert window_bounds(5, 3, "both") == (4, 8)
    lm = load_model("tiny-qwen2")
    # The last response token is predicted, never read, inside the window: changing it changes nothing;
    # changing a token the window reads changes the directions.
    a = extract_directions(lm, [ProbeExample("abc", " xyz")], [ProbeExample("abc", " uvw")])
    b = extract_directions(lm, [ProbeExample("abc", " xyQ")], [ProbeExample("abc", " uvw")])
    c = extract_directions(lm, [ProbeExample("abc", " xQz")], [ProbeExample("abc", " uvw")])
    assert all(torch.allclose(a.directions[k], b.directions[k], atol=1e-6) for k in a.directions)
    assert not all(torch.allclose(a.directions[k], c.directions[k], atol=1e-6) for k in a.directions)
    # Identical prompts and one-token responses: the only position is the shared last prompt token.
    z = extract_directions(lm, [ProbeExample("abc", "x")], [ProbeExample("abc", "y")])
    assert all(float(v.abs().max()) < 1e-6 for v in z.directions.values())  # zero up to float noise


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma2"])  # projection == block output, and not
def test_directions_save_load_round_trip(tmp_path, name):
    lm = load_model(name)
    d = extract_directions(lm, POS, NEG)
    d.save(tmp_path / "dirs.safetensors")
    back = Directions.load(tmp_path / "dirs.safetensors")
    assert (back.n_pos, back.n_neg, back.window, back.meta) == (d.n_pos, d.n_neg, d.window, d.meta)
    for name in ("directions", "input_means", "resid", "proj_directions"):
        x, y = getattr(d, name), getattr(back, name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_generation_mode_uses_model_responses():
    from editbench.modeling.scoring import generate

    lm = load_model("tiny-mistral")
    prompts_p, prompts_n = ["Tell me a secret:", "Say hi:"], ["What is 2+2?"]
    ps = ProbeSet.from_generation(lm, prompts_p, prompts_n, max_new_tokens=4)
    assert [e.response for e in ps.positives] == generate(lm, prompts_p, max_new_tokens=4)
    d = ps.extract(lm)
    ref = extract_directions(lm, ps.positives, ps.negatives)
    assert all(torch.equal(d.directions[k], ref.directions[k]) for k in d.directions)
    given = ProbeSet.from_responses([("a", " b")], [("a", " c")])
    assert given.positives == [ProbeExample("a", " b")]


# ---- steering baselines ---------------------------------------------------------------------
def _captured_difference(lm, modules: dict, iv, gamma: float, ids: torch.Tensor) -> dict:
    """Each module's output before (hook registered first) and after (hook registered last) the
    steering hook, within the same forward pass."""
    before, after, handles = {}, {}, []
    for k, m in modules.items():
        handles.append(m.register_forward_hook(lambda mod, i, o, k=k: before.__setitem__(k, _out(o).detach().clone())))
    try:
        with iv.apply(lm, gamma):
            for k, m in modules.items():
                handles.append(m.register_forward_hook(lambda mod, i, o, k=k: after.__setitem__(k, _out(o).detach().clone())))
            with torch.no_grad():
                lm.model(ids)
    finally:
        for h in handles:
            h.remove()
    return {k: after[k] - before[k] for k in modules}


def test_steering_adds_exactly_gamma_v_at_every_projection_output(lm):
    ad = lm.adapter
    m = Steering(lm, {"window": "predict"})
    iv = m.fit_behaviour(POS, NEG)
    d = extract_directions(lm, POS, NEG)
    assert isinstance(iv, ActivationIntervention) and len(iv.vectors) == 2 * ad.n_layers
    for sv in iv.vectors:
        assert sv.positions == "all"
        block = sv.site.removesuffix("_proj")
        assert sv.site == f"{block}_proj"  # the paper adds v at the W_O / W_down output
        assert torch.equal(sv.vector, d.proj_directions[(sv.layer, block)])  # unnormalised v
    ids = torch.tensor([lm.tokenizer("Steer this sentence, please.")["input_ids"]])
    gamma = 0.7
    mods = {(l, b): ad.out_proj(l, b) for l in range(ad.n_layers) for b in ("attn", "mlp")}
    diff = _captured_difference(lm, mods, iv, gamma, ids)
    for k, delta in diff.items():
        want = (gamma * d.proj_directions[k]).expand_as(delta[0])
        scale = max(1.0, float(delta.abs().max()))
        torch.testing.assert_close(delta[0], want, atol=1e-5 * scale * 10, rtol=1e-4)


def test_steering_strength_zero_and_fit_edit(lm):
    iv = Steering(lm).fit_edit(REQ)
    pos, neg = edit_probe_pair(REQ, lm.tokenizer)
    d = extract_directions(lm, [pos], [neg], window="response")
    assert all(torch.equal(sv.vector, d.proj_directions[(sv.layer, sv.site.removesuffix("_proj"))]) for sv in iv.vectors)
    ids = torch.tensor([lm.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        ref = lm.model(ids).logits
        with iv.apply(lm, 0.0):
            same = lm.model(ids).logits
        with iv.apply(lm, 1.0):
            moved = lm.model(ids).logits
    assert torch.equal(ref, same) and not torch.equal(ref, moved)
    assert iv.extra_numel() == 2 * lm.adapter.n_layers * lm.adapter.hidden_size


def test_steering_layer_adds_gamma_r_at_one_layer(lm):
    ad = lm.adapter
    m = SteeringLayer(lm, {"window": "predict"})
    assert m.params.layer == ad.n_layers // 2
    iv = m.fit_behaviour(POS, NEG)
    d = extract_directions(lm, POS, NEG)
    (sv,) = iv.vectors
    assert (sv.layer, sv.site, sv.positions) == (ad.n_layers // 2, "resid", "all")
    assert torch.equal(sv.vector, d.resid[sv.layer])
    ids = torch.tensor([lm.tokenizer("Steer this sentence, please.")["input_ids"]])
    diff = _captured_difference(lm, {"r": ad.layers[sv.layer]}, iv, -1.3, ids)["r"]
    torch.testing.assert_close(diff[0], (-1.3 * d.resid[sv.layer]).expand_as(diff[0]),
                               atol=1e-4 * max(1.0, float(diff.abs().max())), rtol=1e-4)
    if ad.n_layers > 1:
        assert SteeringLayer(lm, {"layer": "0"}).fit_edit(REQ).vectors[0].layer == 0


def test_steering_params_validated():
    lm = load_model("tiny-llama")
    with pytest.raises(ConfigError):
        SteeringLayer(lm, {"layer": str(lm.adapter.n_layers)})
    with pytest.raises(ConfigError):
        Steering(lm, {"window": "nope"})
    with pytest.raises(ConfigError):
        Steering(lm, {"batch_size": "0"})


# ---- steering behind MEGA's scope gate (steering-gated) ------------------------------------------
ZREQ = EditRequest(case_id=7, prompt="The mother tongue of Zork Blan is", subject="Zork Blan",
                   target_new="English", target_true="French")
QREQ = EditRequest(case_id=8, prompt="Quux Mira was born in", subject="Quux Mira", target_new="Rome",
                   target_true="Oslo")


def _nll(lm, rows_of, reqs, batch_size=16):
    from editbench.modeling.scoring import score_targets

    ctx = None if rows_of is None else (lambda b: type(rows_of[0][0]).apply_rows(lm, [rows_of[i] for i in b.indices], b))
    return [x.nll for x in score_targets(lm, reqs, batch_size=batch_size, batch_context=ctx)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_gated_steering_leaves_out_of_scope_prompts_bit_identical(name):
    from editbench.methods.steering import GatedSteering
    from editbench.modeling.scoring import ScoreRequest

    lm = load_model(name)
    m = GatedSteering(lm, {"gate_layer": "1", "gate_threshold": "0.99"})
    iv, plain = m.fit_edit(ZREQ), Steering(lm).fit_edit(ZREQ)
    assert [(v.layer, v.site) for v in iv.vectors] == [(v.layer, v.site) for v in plain.vectors]
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(iv.vectors, plain.vectors))  # the same vectors
    reqs = [ScoreRequest("Paris is the capital of", "France"), ScoreRequest("qqq", "w"),
            ScoreRequest(ZREQ.prompt, "English"), ScoreRequest(ZREQ.prompt, "French")]
    base = _nll(lm, None, reqs)
    gated = _nll(lm, [(iv, 2.0)] * len(reqs), reqs)
    ungated = _nll(lm, [(plain, 2.0)] * len(reqs), reqs)
    assert gated[:2] == base[:2]  # out of scope: exactly the unedited model
    assert all(u != b for u, b in zip(ungated[:2], base[:2]))  # ungated steering moves them
    assert gated[2:] == ungated[2:] and gated[2:] != base[2:]  # in scope: exactly steering's edit
    # strength 0: the unedited model up to float32 rounding. Not bit-identical on every CPU: on some
    # (2026-12-02 CI machine) a hooked forward differs by ~2e-8 relative; bit-identity out of scope
    # is asserted above, where the gate leaves the rows unhooked.
    assert _nll(lm, [(iv, 0.0)] * len(reqs), reqs) == pytest.approx(base, rel=1e-6)


def test_gated_steering_rows_batch_like_single_cases():
    """Two edits' interventions in one batch, one row each: batch 1 and batch 16 agree (1e-4), and a
    row in scope of the other edit's gate only is left alone."""
    from editbench.methods.steering import GatedSteering
    from editbench.modeling.scoring import ScoreRequest

    lm = load_model("tiny-qwen2")
    m = GatedSteering(lm, {"gate_layer": "1", "gate_threshold": "0.99"})
    a, b = m.fit_edit(ZREQ), m.fit_edit(QREQ)
    reqs = [ScoreRequest(ZREQ.prompt, "English"), ScoreRequest(QREQ.prompt, "Rome"), ScoreRequest(QREQ.prompt, "Oslo"),
            ScoreRequest("Paris is the capital of", "France")]
    rows = [(a, 1.0), (b, 1.0), (a, 1.0), (b, 1.0)]  # row 2: Quux's prompt under Zork's edit: out of scope
    one, many = _nll(lm, rows, reqs, batch_size=1), _nll(lm, rows, reqs, batch_size=16)
    assert many == pytest.approx(one, abs=1e-4)
    base = _nll(lm, None, reqs, batch_size=1)  # the same batches: out-of-scope rows unchanged
    # up to float32 rounding (some CPUs give ~2e-8 relative for a hooked row), in-scope rows moved
    assert one[2:] == pytest.approx(base[2:], rel=1e-6)
    assert abs(one[0] - base[0]) > 1e-4 and abs(one[1] - base[1]) > 1e-4


def test_gated_steering_is_a_registered_gated_method():
    from editbench import assert_conforms
    from editbench.methods.steering import GatedSteering
    from editbench.plugins import registry

    assert registry.load("method", "steering-gated") is GatedSteering
    assert GatedSteering.method_class == "gated" and Steering.method_class == "activation-steering"
    lm = load_model("tiny-llama")
    with pytest.raises(ConfigError, match="ungated steering is --method steering"):
        GatedSteering(lm, {"gate": "off"})
    with pytest.raises(ConfigError, match="gate_layer"):
        GatedSteering(lm, {"gate_layer": str(lm.adapter.n_layers)})
    with pytest.raises(ConfigError, match="behaviour"):
        GatedSteering(lm).fit_behaviour(POS, NEG)
    assert GatedSteering(lm, {"gate": "subject"}).gate.layer == max(1, lm.adapter.n_layers // 6)
    assert_conforms("steering-gated", model="tiny-gemma3")  # tiny-llama: tests/test_plugin_kit.py
