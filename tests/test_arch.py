import pytest
import torch

from editbench.modeling.arch import ArchAdapter
from editbench.errors import UnsupportedArchitecture
from editbench.modeling.hooks import capture, hooked
from tests.conftest import tiny


def test_adapter_shapes(tiny_lm):
    ad = tiny_lm.adapter
    cfg = tiny_lm.model.config
    assert ad.n_layers == 3
    assert ad.n_heads == 4
    assert ad.n_heads * ad.head_dim == ad.attn_in
    if getattr(cfg, "head_dim", None):  # Gemma/Qwen3 tiny configs have head_dim*n_heads != hidden
        assert ad.head_dim == cfg.head_dim
    for l in range(ad.n_layers):
        assert ad.out_weight(l, "attn").shape == (ad.hidden_size, ad.attn_in)
        assert ad.out_weight(l, "mlp").shape == (ad.hidden_size, ad.intermediate_size)


def test_out_weight_is_a_view(tiny_lm):
    """Edits through the [hidden, in] view must reach the module (GPT-2's Conv1D is transposed)."""
    ad = tiny_lm.adapter
    W = ad.out_weight(1, "attn")
    x = torch.randn(2, ad.attn_in)
    before = ad.out_proj(1, "attn")(x)
    with torch.no_grad():
        W[:, ad.head_columns(2)] += 1.0
    after = ad.out_proj(1, "attn")(x)
    expected = x[:, ad.head_columns(2)].sum(1, keepdim=True).expand_as(before)
    with torch.no_grad():
        W[:, ad.head_columns(2)] -= 1.0
    assert torch.allclose(after - before, expected, atol=1e-4)


def test_head_columns_cover_input_gqa():
    ad = tiny("tiny-llama").adapter  # 4 query heads, 2 kv heads
    assert tiny("tiny-llama").model.config.num_key_value_heads == 2
    cols = [ad.head_columns(h) for h in range(ad.n_heads)]
    assert cols[0] == slice(0, ad.head_dim) and cols[-1].stop == ad.attn_in
    with pytest.raises(IndexError):
        ad.head_columns(ad.n_heads)


def test_block_outputs_are_what_the_layer_adds(tiny_lm):
    """h_l == h_{l-1} + A_l + F_l with A, F captured at the adapter's block-output modules."""
    ad = tiny_lm.adapter
    ids = torch.tensor([[5, 70, 80, 90, 100, 33]])
    l = 1
    seen = {}

    def pre(_m, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def post(_m, _a, _k, out):
        seen["out"] = (out[0] if isinstance(out, tuple) else out).detach()

    h1 = ad.layers[l].register_forward_pre_hook(pre, with_kwargs=True)
    h2 = ad.layers[l].register_forward_hook(post, with_kwargs=True)
    try:
        with capture({"A": ad.block_output_module(l, "attn"), "F": ad.block_output_module(l, "mlp")}) as cap:
            tiny_lm.model(ids)
    finally:
        h1.remove()
        h2.remove()
    recon = seen["in"] + cap.last("A") + cap.last("F")
    assert torch.allclose(recon, seen["out"], atol=1e-4, rtol=1e-4)


def test_logits_match_model(tiny_lm):
    ids = torch.tensor([[1, 2, 3, 40, 50]])
    full = tiny_lm.model(ids).logits
    h = tiny_lm.adapter.base(input_ids=ids).last_hidden_state
    assert torch.allclose(tiny_lm.adapter.logits(h), full, atol=1e-4)


def test_unsupported_architecture():
    class Dummy(torch.nn.Module):
        class config:
            model_type = "mamba"

    with pytest.raises(UnsupportedArchitecture, match="no architecture adapter for model type 'mamba'"):
        ArchAdapter(Dummy())


def test_missing_component_named():
    lm = tiny("tiny-llama")

    class Broken(torch.nn.Module):
        config = lm.model.config

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()

    with pytest.raises(UnsupportedArchitecture, match="model.layers"):
        ArchAdapter(Broken())
