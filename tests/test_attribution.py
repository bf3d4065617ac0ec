import json

import numpy as np
import pytest
import torch

from editbench.modeling.attribution import block_importance, head_importance, neuron_importance, select_region
from editbench.runs.attribution_study import run_study
from editbench.cli import main
from editbench.modeling.hooks import capture
from editbench.modeling.scoring import encode_prompt, encode_target
from tests.conftest import tiny

PROMPTS = ["The capital of France is", "ab", "Water boils at one hundred"]
TOKENS = ["Paris", "c", "degrees"]


def _logp(lm, resid, tok):
    return torch.log_softmax(lm.adapter.logits_from_residual(resid).float(), -1)[tok].item()


def test_block_importance_telescopes_to_model_logprob(tiny_lm):
    """sum_l Imp(A_l) + Imp(F_l) == log p_model(w) - log p(w | embeddings): checked against the
    model's own logits, independently of the attribution code's decomposition."""
    lm = tiny_lm
    imp = block_importance(lm, PROMPTS, TOKENS)
    assert imp["attn"].shape == (lm.adapter.n_layers, len(PROMPTS))
    for i, (p, t) in enumerate(zip(PROMPTS, TOKENS)):
        ids = torch.tensor([encode_prompt(lm.tokenizer, p)])
        w = encode_target(lm.tokenizer, t)[0]
        with capture({"emb": lm.adapter.layers[0]}, what="input") as cap, torch.no_grad():
            logits = lm.model(ids).logits[0, -1]
        model_lp = torch.log_softmax(logits.float(), -1)[w].item()
        emb_lp = _logp(lm, cap.last("emb")[0, -1], w)
        total = (imp["attn"][:, i] + imp["mlp"][:, i]).sum().item()
        assert total == pytest.approx(model_lp - emb_lp, abs=2e-3)


def test_block_importance_direct_one_layer():
    lm = tiny("tiny-qwen2")
    l = 1
    ids = torch.tensor([encode_prompt(lm.tokenizer, PROMPTS[0])])
    w = encode_target(lm.tokenizer, TOKENS[0])[0]
    with capture({"h": lm.adapter.layers[l]}, what="input") as ci, \
         capture({"A": lm.adapter.block_output_module(l, "attn"), "F": lm.adapter.block_output_module(l, "mlp")}) as co, \
         torch.no_grad():
        lm.model(ids)
    h, A, F = ci.last("h")[0, -1], co.last("A")[0, -1], co.last("F")[0, -1]
    imp = block_importance(lm, PROMPTS[:1], TOKENS[:1])
    assert imp["attn"][l, 0].item() == pytest.approx(_logp(lm, h + A, w) - _logp(lm, h, w), abs=1e-4)
    assert imp["mlp"][l, 0].item() == pytest.approx(_logp(lm, h + A + F, w) - _logp(lm, h + A, w), abs=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_head_and_neuron_importance_direct(name):
    lm = tiny(name)
    ad = lm.adapter
    l, head, neuron = 2, 1, 5
    ids = torch.tensor([encode_prompt(lm.tokenizer, PROMPTS[0])])
    w = encode_target(lm.tokenizer, TOKENS[0])[0]
    with capture({"h": ad.layers[l]}, what="input") as ci, \
         capture({"z": ad.out_proj(l, "attn"), "m": ad.out_proj(l, "mlp")}, what="input") as cz, \
         capture({"A": ad.block_output_module(l, "attn"), "Araw": ad.out_proj(l, "attn"),
                  "F": ad.block_output_module(l, "mlp"), "Fraw": ad.out_proj(l, "mlp")}) as co, torch.no_grad():
        lm.model(ids)
    h = ci.last("h")[0, -1]
    z, m = cz.last("z")[0, -1], cz.last("m")[0, -1]
    bias_o = getattr(ad.out_proj(l, "attn"), "bias", None)
    A_raw = co.last("Araw")[0, -1] - (bias_o if bias_o is not None else 0)
    # head shares add up to the projection output (minus bias): the decomposition is complete
    shares = [ad.out_weight(l, "attn")[:, ad.head_columns(k)] @ z[ad.head_columns(k)] for k in range(ad.n_heads)]
    assert torch.allclose(sum(shares), A_raw, atol=1e-4)
    scale = co.last("A")[0, -1] / co.last("Araw")[0, -1]  # post-norm linearisation (1 without one)
    want = _logp(lm, h + shares[head] * scale, w) - _logp(lm, h, w)
    assert head_importance(lm, PROMPTS[:1], TOKENS[:1])[l, head, 0].item() == pytest.approx(want, abs=1e-3)
    r = h + co.last("A")[0, -1]
    fscale = co.last("F")[0, -1] / co.last("Fraw")[0, -1]
    contrib = m[neuron] * ad.out_weight(l, "mlp")[:, neuron] * fscale
    want = _logp(lm, r + contrib, w) - _logp(lm, r, w)
    got = neuron_importance(lm, PROMPTS[:1], TOKENS[:1], l, chunk=7)
    assert got.shape == (ad.intermediate_size, 1)
    assert got[neuron, 0].item() == pytest.approx(want, abs=1e-4)


def test_select_region_hand_made():
    gap = np.array([9, 9, 0, 0, 1, 5, 4, 0, 0, 0, 0, 0], dtype=float)  # big early gap must be ignored
    assert select_region(gap, 12, width=2) == [5, 6]
    assert select_region(gap, 12, width=3) == [4, 5, 6]
    gap[10:] = 10
    assert select_region(gap, 12, width=2) == [10, 11]


def test_study_writes_artifact(cf_root, tmp_path, capsys):
    out = tmp_path / "att"
    code = main(["attribute", "--model", "tiny-llama", "--split", "edit", "--limit", "4", "--data-root", str(cf_root),
                 "--out", str(out), "--quiet", "--param", "steps=3"])
    assert code == 0, capsys.readouterr().err
    art = json.loads((out / "region.json").read_text())
    assert art["findings"]["n_cases"] == 4
    assert all(1 <= l < 3 for l in art["region"])  # mid-to-late of a 3-layer model
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "heatmap.svg").exists()
    rows = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len(rows[0]["promote_new"]["attn"]) == 3
    header = (out / "layers.csv").read_text().splitlines()[0]
    assert "promote_new/attn/success" in header
    printed = capsys.readouterr().out
    assert "selected MEGA region" in printed
    f = art["findings"]
    if f["n_success"] and f["n_failure"]:
        gap = f["attn_promote_new_late_success"] - f["attn_promote_new_late_failure"]
        assert f"failed edits? {'yes' if gap > 0 else 'no'} (success - failure {gap:+.3f} nats)" in printed
    else:
        assert "comparison: not available" in printed


@pytest.mark.parametrize("args, msg", [
    (["--editor", "mega"], "needs a whole-model edit"),
    (["--width", "0"], "--width must be between 1 and 2"),
    (["--width", "99"], "--width must be between 1 and 2"),
])
def test_study_bad_input_one_line(cf_root, tmp_path, capsys, args, msg):
    code = main(["attribute", "--model", "tiny-llama", "--split", "edit", "--limit", "1", "--data-root", str(cf_root),
                 "--out", str(tmp_path / "att"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.startswith("editbench: error:") and err.count("\n") == 1
