"""The subject scope gate shared by MEGA and steering-gated (editbench.modeling.gating)."""

import ast
from pathlib import Path

import pytest
import torch

from editbench.errors import ConfigError
from editbench.methods.mega import MEGA
from editbench.methods.steering import GatedSteering
from editbench.modeling import gating
from editbench.modeling.gating import GatedIntervention, SubjectGate
from editbench.modeling.interventions import SteeringVector
from editbench.modeling.scoring import ScoreRequest, generate, score_targets
from editbench.requests import EditRequest
from tests.conftest import tiny

REPO = Path(__file__).resolve().parents[1]
REQ = EditRequest(case_id=1, prompt="The mother tongue of Zork Blan is", subject="Zork Blan",
                  target_new="English", target_true="French")
OUT = ["Paris is the capital of", "qqq", "The weather was mild"]


def test_one_gate_for_both_methods():
    """MEGA and steering-gated hold the same SubjectGate: same statistics, keys and scores."""
    lm = tiny("tiny-llama")
    mega = MEGA(lm, {"mode": "contrast", "layers": "2", "gate_layer": "1"})
    steer = GatedSteering(lm, {"gate_layer": "1"})
    assert type(mega.gate) is SubjectGate and type(steer.gate) is SubjectGate
    assert torch.equal(mega.gate.center, steer.gate.center) and torch.equal(mega.gate.scale, steer.gate.scale)
    k1, k2 = mega.gate_key(REQ), steer.gate.key(REQ)
    assert k1.shape == (len(gating.TRAIN_PREFIXES), lm.adapter.hidden_size) and torch.equal(k1, k2)
    assert mega.gate_scores(k1, OUT) == steer.gate.scores(k2, OUT)
    iv1, iv2 = mega.fit_edit(REQ), steer.fit_edit(REQ)
    assert torch.equal(iv1.key, iv2.key) and iv1.gate_threshold == iv2.gate_threshold == 0.8
    assert isinstance(iv1, GatedIntervention) and isinstance(iv2, GatedIntervention)


def test_the_gate_is_defined_once():
    """No copy of the gate in the method modules: they import it from editbench.modeling.gating."""
    names = {"gate_similarity", "subject_last_token", "SubjectGate", "GatedIntervention", "_gated_add",
             "_install_gated", "_gate_stats", "BACKGROUND", "TRAIN_PREFIXES"}
    for p in sorted((REPO / "methods").glob("*.py")):
        tree = ast.parse(p.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            defined |= {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        assert not (defined & names), (p.name, defined & names)


def test_gate_params_validated():
    lm = tiny("tiny-llama")
    with pytest.raises(ConfigError, match="gate_norm"):
        SubjectGate(lm, 1, norm="zscore")
    with pytest.raises(ConfigError, match="cosine similarity"):
        SubjectGate(lm, 1, threshold=1.5)
    with pytest.raises(ConfigError, match="invalid for a 3-layer"):
        SubjectGate(lm, 3)
    assert gating.default_gate_layer(30) == 5 and gating.default_gate_layer(3) == 1


def _scores(lm, rows_of, reqs, batch_size=8, inline=None):
    def ctx(b):
        rows = [rows_of[i] for i in b.indices]
        if inline is None:
            return GatedIntervention.apply_rows(lm, rows, b)
        ivs = [iv for iv, _ in rows]
        sites = sorted({(v.layer, v.site) for iv in ivs for v in iv.vectors})
        return gating._install(lm, rows, ivs, b, sites, inline)

    return [x.nll for x in score_targets(lm, reqs, batch_size=batch_size, batch_context=ctx)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_first_pass_decides_like_the_inline_gate(name):
    """Vectors after the gate layer: the gate decided inside the forward pass (MEGA) and by an
    unsteered first pass (what steering at every layer needs) give bit-identical scores."""
    lm = tiny(name)
    gate = SubjectGate(lm, 1, threshold=0.99)
    torch.manual_seed(0)
    vecs = [SteeringVector(2, "attn", torch.randn(lm.adapter.hidden_size) * 3, "last"),
            SteeringVector(2, "mlp", torch.randn(lm.adapter.hidden_size) * 3, "all")]
    iv = GatedIntervention(vectors=vecs, **gate.fields(REQ))
    reqs = [ScoreRequest(q, "France") for q in OUT] + [ScoreRequest(REQ.prompt, "English")]
    rows = [(iv, 1.0)] * len(reqs)
    inline, first = _scores(lm, rows, reqs, inline=True), _scores(lm, rows, reqs, inline=False)
    assert inline == first
    base = [x.nll for x in score_targets(lm, reqs, batch_size=8)]
    assert inline[:3] == base[:3] and inline[3] != base[3]


def test_gated_vectors_before_the_gate_layer_and_in_generation():
    """Vectors at every layer (also before the gate layer): out-of-scope prompts bit-identical,
    in-scope ones steered, in scoring and in (left-padded, cached) generation; no hook left behind."""
    lm = tiny("tiny-mistral")
    gate = SubjectGate(lm, 1, threshold=0.99)
    torch.manual_seed(1)
    vecs = [SteeringVector(l, "attn_proj", torch.randn(lm.adapter.hidden_size), "all")
            for l in range(lm.adapter.n_layers)]
    iv = GatedIntervention(vectors=vecs, **gate.fields(REQ))
    reqs = [ScoreRequest(q, "France") for q in OUT] + [ScoreRequest(REQ.prompt, "English")]
    base = [x.nll for x in score_targets(lm, reqs)]
    steered = _scores(lm, [(iv, 2.0)] * len(reqs), reqs)
    assert steered[:3] == base[:3] and steered[3] != base[3]
    prompts = OUT + [REQ.prompt]
    _outer, per_batch = iv.uniform(lm, 2.0)
    plain = generate(lm, prompts, max_new_tokens=6)
    gen = generate(lm, prompts, max_new_tokens=6, batch_context=per_batch)
    assert gen[:3] == plain[:3] and gen[3] != plain[3]
    mods = [lm.adapter.base, *lm.adapter.layers]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)
    with pytest.raises(ValueError, match="apply_rows"):
        iv.apply(lm, 1.0)
