"""Smoke tests on the embedded real models (run in CI; marked slow)."""

import json

import pytest
import torch

from editbench.cli import main
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import ScoreRequest, generate, score_targets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


def test_smollm2_loads_and_knows_paris(smol):
    assert smol.adapter.n_layers == 30 and smol.adapter.n_heads == 9 and smol.adapter.head_dim == 64
    paris, berlin = score_targets(smol, [ScoreRequest("The capital of France is", "Paris"),
                                         ScoreRequest("The capital of France is", "Berlin")])
    assert paris.nll < berlin.nll
    assert "Paris" in generate(smol, ["The capital of France is"], max_new_tokens=5)[0]
    assert len(smol.weights_hash) == 64


def test_smollm2_batch_invariance(smol):
    reqs = [ScoreRequest("The mother tongue of Danielle Darrieux is", "French"),
            ScoreRequest("Toko Yasuda, the", "guitar"),
            ScoreRequest("Autonomous University of Madrid, which is located in", "Spain")]
    a = score_targets(smol, reqs, batch_size=1)
    b = score_targets(smol, reqs, batch_size=3)
    assert [x.nll for x in a] == pytest.approx([x.nll for x in b], abs=1e-4)


def test_smollm2_counterfact_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--limit", "8", "--split", "rome500", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_cases"] == 8 and summ["model"]["model_type"] == "llama"
    # the unedited model mostly prefers the true object on neighbourhood prompts
    assert summ["pre"]["specificity"]["mean"] > 50


def test_gemma3_loads():
    lm = load_model("gemma3-270m")
    assert lm.adapter.model_type == "gemma3_text" and lm.adapter.head_dim == 256
    assert lm.adapter.block_has_post_norm("attn")
    paris, berlin = score_targets(lm, [ScoreRequest("The capital of France is", "Paris"),
                                       ScoreRequest("The capital of France is", "Berlin")])
    assert paris.nll < berlin.nll


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_prefix_sharing_is_exact_on_the_embedded_models(name):
    """Packed rows (one prompt, several targets) equal one row per pair on the real models too
    (Gemma 3 mixes sliding-window and global layers: one mask per layer type)."""
    lm = load_model(name)
    prompts = ["The mother tongue of Danielle Darrieux is", "Autonomous University of Madrid, which is located in",
               "Question: Which gas do plants take in for photosynthesis?\nAnswer:"]
    targets = ["French", "English", "carbon dioxide", "the Kingdom of Spain", "oxygen"]
    reqs = [ScoreRequest(p, t) for p in prompts for t in targets]
    alone = score_targets(lm, reqs, share_prefix=False)
    packed = score_targets(lm, reqs)
    assert max(abs(x - y) for a, b in zip(alone, packed) for x, y in zip(a.token_nll, b.token_nll)) < 1e-4
    assert [a.argmax_ids for a in alone] == [b.argmax_ids for b in packed]
