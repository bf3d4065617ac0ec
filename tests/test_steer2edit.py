"""Steer2Edit: formulas re-derived independently from raw weights, edit structure, restore, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from editbench.modeling.directions import ProbeExample, edit_probe_pair, extract_directions
from editbench.errors import ConfigError
from editbench.modeling.loading import TINY_MODELS, load_model
from editbench.requests import EditRequest
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.plugins.method import parse_params
from editbench.methods.steer2edit import Rank1Edits, Steer2Edit, compute_rank1_edits

POS = [ProbeExample("The capital of France is", " Paris"),
       ProbeExample("Q: Is the sky blue?\nA:", " Yes, it is.")]
NEG = [ProbeExample("The capital of France is", " Rome, in Italy"),
       ProbeExample("Q: Is the sky blue?\nA:", " No."),
       ProbeExample("Hello", " world!")]
RHO, ALPHA = 0.2, 0.5  # threshold |g| > 0.1: edits some, not all, components of the tiny models
BORDER = 1e-5  # components this close to the threshold may legitimately flip between float32/float64


@pytest.fixture(scope="module", params=TINY_MODELS)
def lm(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def dirs(lm):
    return extract_directions(lm, POS, NEG, batch_size=2)


# ---- an independent reference, straight from the raw modules (allowed in tests only) -----------
def raw_out_weight(model, layer: int, block: str) -> torch.Tensor:
    if model.config.model_type == "gpt2":
        blk = model.transformer.h[layer]
        return (blk.attn.c_proj if block == "attn" else blk.mlp.c_proj).weight.T  # Conv1D stores [in, out]
    lyr = model.model.layers[layer]
    return (lyr.self_attn.o_proj if block == "attn" else lyr.mlp.down_proj).weight


def n_heads_of(model) -> int:
    cfg = model.config
    return cfg.n_head if cfg.model_type == "gpt2" else cfg.num_attention_heads


def reference(model, directions, input_means, rho_attn, rho_mlp, alpha):
    """{(layer, block, index): (g, lambda, k_hat or None)} and the dense dW per (layer, block), in float64."""
    comps, dws = {}, {}
    n_layers = len(model.transformer.h) if model.config.model_type == "gpt2" else len(model.model.layers)
    for l in range(n_layers):
        for b, rho in (("attn", rho_attn), ("mlp", rho_mlp)):
            W = raw_out_weight(model, l, b).detach().double()
            v = directions[(l, b)].double()
            vh = v / v.norm()
            mu = input_means[(l, b)].double()
            dW = torch.zeros_like(W)
            if b == "attn":
                H = n_heads_of(model)
                D = W.shape[1] // H
                units = [(h, slice(h * D, (h + 1) * D)) for h in range(H)]
            else:
                units = [(j, slice(j, j + 1)) for j in range(W.shape[1])]
            for idx, cols in units:
                y = W[:, cols] @ mu[cols]
                g = float(vh @ y / y.norm())
                if rho <= 0:
                    lam = 0.0
                else:
                    lam = math.copysign(max(abs(g) - rho * alpha, 0.0), g) / (rho * (1 - alpha))
                if lam == 0.0:
                    comps[(l, b, idx)] = (g, 0.0, None)
                    continue
                if b == "attn":
                    k = W[:, cols].T @ vh
                    k_hat = k / k.norm()
                    dW[:, cols] = lam * torch.outer(vh, k_hat)
                else:
                    k_hat = None
                    dW[:, cols] = (lam * torch.sign(W[:, cols].T @ vh)) * vh.unsqueeze(1)
                comps[(l, b, idx)] = (g, lam, k_hat)
            dws[(l, b)] = dW
    return comps, dws


def weights_snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
def test_matches_independent_reference(lm, dirs):
    edits = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    ref, ref_dw = reference(lm.model, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    got = {(c.layer, c.block, c.index): c for c in edits.components}
    assert edits.counts()["attn"] > 0 and edits.counts()["mlp"] > 0
    for key, (g, lam, k_hat) in ref.items():
        near_threshold = abs(abs(g) - RHO * ALPHA) < BORDER
        if key in got:
            c = got[key]
            assert c.g == pytest.approx(g, abs=1e-5)
            assert c.lam == pytest.approx(lam, rel=1e-4, abs=1e-4)
            if key[1] == "attn":
                torch.testing.assert_close(c.k_hat.double(), k_hat, atol=1e-5, rtol=1e-5)
        else:
            assert lam == 0.0 or near_threshold, f"reference edits {key} (g={g}, lambda={lam}) but the method does not"
    for key in got:
        g, lam, _ = ref[key]
        assert lam != 0.0 or abs(abs(g) - RHO * ALPHA) < BORDER, f"method edits {key} but the reference does not"
    # The weights actually written (strength 1.5 scales every lambda) equal the reference deltas.
    before = {k: raw_out_weight(lm.model, *k).detach().double().clone() for k in ref_dw}
    with edits.apply(lm, 1.5):
        for k, dw in ref_dw.items():
            changed = raw_out_weight(lm.model, *k).detach().double() - before[k]
            torch.testing.assert_close(changed, 1.5 * dw, atol=2e-4, rtol=1e-4)


def test_change_lies_along_v_hat(lm, dirs):
    edits = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    assert edits.deltas
    # Structurally: every stored delta is v_hat times something.
    for d in edits.deltas:
        vh = edits.v_hats[(d.layer, d.block)].double()
        P = torch.eye(vh.numel(), dtype=torch.float64) - torch.outer(vh, vh)
        assert (P @ d.dense().double()).abs().max() < 1e-6
        assert d.up.shape == (vh.numel(), 1) and d.down.shape[1] == 1
    # And on the model: (I - v v^T) dW == 0 up to the float32 rounding of W + dW.
    before = {k: raw_out_weight(lm.model, *k).detach().double().clone() for k in edits.v_hats}
    with edits.apply(lm, 1.0):
        changed = {k: raw_out_weight(lm.model, *k).detach().double() - w for k, w in before.items()}
    for k, vh in edits.v_hats.items():
        vh = vh.double()
        P = torch.eye(vh.numel(), dtype=torch.float64) - torch.outer(vh, vh)
        assert changed[k].abs().max() > 0
        assert (P @ changed[k]).abs().max() < 1e-5 * max(1.0, float(changed[k].abs().max()))


def test_bit_exact_restore_also_on_exception(lm, dirs):
    edits = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    before = weights_snapshot(lm.model)
    with edits.apply(lm, 2.5):
        assert any(not torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"):
        with edits.apply(lm, -3.0):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())


def test_strength_zero_leaves_logits_unchanged(lm, dirs):
    edits = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    ids = torch.tensor([lm.tokenizer("Some text to score.")["input_ids"]])
    with torch.no_grad():
        ref = lm.model(ids).logits
        with edits.apply(lm, 0.0):
            same = lm.model(ids).logits
        with edits.apply(lm, 1.0):
            moved = lm.model(ids).logits
    assert torch.equal(ref, same)
    assert not torch.equal(ref, moved)


def test_save_load_round_trip(lm, dirs, tmp_path):
    edits = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, RHO, RHO, ALPHA)
    edits.save(tmp_path / "e")
    assert not list((tmp_path / "e").glob("*.pt")) and not list((tmp_path / "e").glob("*.pkl"))
    back = Rank1Edits.load(tmp_path / "e")
    assert back.config == edits.config and back.head_dim == edits.head_dim
    assert len(back.components) == len(edits.components)
    for a, b in zip(edits.components, back.components):
        assert (a.layer, a.block, a.index, a.g, a.lam, a.sign) == (b.layer, b.block, b.index, b.g, b.lam, b.sign)
        assert (a.k_hat is None and b.k_hat is None) or torch.equal(a.k_hat, b.k_hat)
    assert len(back.deltas) == len(edits.deltas)
    for a, b in zip(edits.deltas, back.deltas):
        assert (a.layer, a.block) == (b.layer, b.block)
        assert torch.equal(a.cols, b.cols) and torch.equal(a.up, b.up) and torch.equal(a.down, b.down)
    assert back.extra_numel() == edits.extra_numel()
    with edits.apply(lm, 1.0):
        w1 = weights_snapshot(lm.model)
    with back.apply(lm, 1.0):
        w2 = weights_snapshot(lm.model)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_public_api_on_a_bare_model(lm, dirs, tmp_path):
    """The issue's call, with a bare transformers model: keyword `model=`, `with edits:` applies at
    strength 1 and restores bit-exactly, `edits.apply(model, s)` takes the bare model too."""
    before = weights_snapshot(lm.model)
    edits = compute_rank1_edits(model=lm.model, directions=dirs.proj_directions, input_means=dirs.input_means,
                                rho_attn=RHO, rho_mlp=RHO, alpha=ALPHA)
    with edits:
        inside = weights_snapshot(lm.model)
    with edits.apply(lm.model, 1.0):
        assert all(torch.equal(inside[k], v) for k, v in weights_snapshot(lm.model).items())
    assert any(not torch.equal(before[k], inside[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in weights_snapshot(lm.model).items())
    edits.save(tmp_path / "e")
    with pytest.raises(ValueError, match="bound to no model"):
        with Rank1Edits.load(tmp_path / "e"):
            pass
    with Rank1Edits.load(tmp_path / "e", model=lm.model):
        assert all(torch.equal(inside[k], v) for k, v in weights_snapshot(lm.model).items())
    assert all(torch.equal(before[k], v) for k, v in weights_snapshot(lm.model).items())


def test_rho_nonpositive_switches_class_off(lm, dirs):
    no_attn = compute_rank1_edits(lm, dirs.proj_directions, dirs.input_means, 0.0, RHO, ALPHA)
    no_mlp = compute_rank1_edits(lm.model, dirs.proj_directions, dirs.input_means, RHO, -1.0, ALPHA)
    none = compute_rank1_edits(lm.adapter, dirs.proj_directions, dirs.input_means, -1.0, 0.0, ALPHA)
    assert no_attn.counts() == {"attn": 0, "mlp": no_attn.counts()["mlp"]} and no_attn.counts()["mlp"] > 0
    assert no_mlp.counts()["mlp"] == 0 and no_mlp.counts()["attn"] > 0
    assert none.components == [] and none.deltas == [] and none.extra_numel() == 0
    assert all(d.block == "mlp" for d in no_attn.deltas) and all(d.block == "attn" for d in no_mlp.deltas)


def test_method_fit_edit_and_behaviour(lm):
    req = EditRequest(case_id=0, prompt="The capital of France is", subject="France", target_new="Rome",
                      target_true="Paris")
    m = Steer2Edit(lm, {"rho_attn": "0.2", "rho_mlp": "0.2", "alpha": "0.5"})
    edits = m.fit_edit(req)
    pos, neg = edit_probe_pair(req, lm.tokenizer)
    d = extract_directions(lm, [pos], [neg], window="response")
    expect = compute_rank1_edits(lm, d.proj_directions, d.input_means, 0.2, 0.2, 0.5)
    assert [(c.layer, c.block, c.index, c.lam) for c in edits.components] == \
           [(c.layer, c.block, c.index, c.lam) for c in expect.components]
    assert edits.describe()["edited_heads"] == edits.counts()["attn"]
    beh = m.fit_behaviour(POS, NEG)
    assert isinstance(beh, Rank1Edits) and beh.components


@pytest.mark.parametrize("alpha", [1.0, 1.5, -0.1, float("nan")])
def test_invalid_alpha_raises_config_error(alpha):
    with pytest.raises(ConfigError):
        Steer2Edit.Params(alpha=alpha)
    with pytest.raises(ConfigError):
        parse_params(Steer2Edit.Params, {"alpha": str(alpha)}, "steer2edit")


def test_invalid_alpha_in_compute_and_window():
    lm = load_model("tiny-llama")
    with pytest.raises(ConfigError):
        compute_rank1_edits(lm, {}, {}, 0.2, 0.2, 1.0)
    with pytest.raises(ConfigError):
        Steer2Edit(lm, {"window": "everything"})
    assert Steer2Edit.Params(alpha=0.0).alpha == 0.0


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_edit_raises_target_probability():
    """A real edit (CounterFact case 6 of the edit split, inlined): log P(target_new) on the
    rewrite prompt goes up by several nats, and target_new overtakes target_true, at the default
    hyperparameters (measured: +5.6 / +8.0 nats at strength 1 / 2)."""
    lm = load_model("smollm2-135m")
    req = EditRequest(case_id=6, prompt="Anaal Nathrakh, that was created in", subject="Anaal Nathrakh",
                      target_new="Philadelphia", target_true="Birmingham")
    reqs = [ScoreRequest(req.prompt, req.target_new), ScoreRequest(req.prompt, req.target_true)]
    pre = score_targets(lm, reqs)
    edits = Steer2Edit(lm).fit_edit(req)
    assert edits.components
    for strength in (1.0, 2.0):
        with edits.apply(lm, strength):
            post = score_targets(lm, reqs)
        assert -post[0].nll > -pre[0].nll + 2.0, (strength, pre[0].nll, post[0].nll)
        assert post[0].nll < post[1].nll
    assert pre[0].nll > pre[1].nll  # unedited model prefers the true target
