import pytest
import torch

from editbench.modeling.hooks import add_to_input, add_to_output, capture
from tests.conftest import tiny


def _block_out(lm, ids, mask=None, **add):
    mod = lm.adapter.block_output_module(1, "attn")
    with capture({"x": mod}) as cap:
        lm.model(ids, attention_mask=mask)
    return cap.last("x")


def test_add_exact_vector_at_positions(tiny_lm):
    lm = tiny_lm
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mod = lm.adapter.block_output_module(1, "attn")
    mod2 = lm.adapter.block_output_module(2, "mlp")
    v = torch.randn(2, lm.adapter.hidden_size)  # a different vector per row
    pos = torch.tensor([[False, False, True, False], [True, False, False, True]])
    with capture({"a": mod, "b": mod2}) as base:
        lm.model(ids)
    with add_to_output(mod, v, positions=pos, scale=0.5), capture({"a": mod, "b": mod2}) as steered:
        lm.model(ids)
    diff = steered.last("a") - base.last("a")
    expected = 0.5 * v[:, None, :] * pos[..., None]
    assert torch.allclose(diff, expected, atol=1e-5)
    # the addition propagates downstream only from the first steered position onwards
    d2 = (steered.last("b") - base.last("b")).abs().sum(-1)
    assert d2[0, :2].max() < 1e-6 and d2[0, 2] > 0 and d2[1, 0] > 0


def test_add_broadcast_and_input():
    lm = tiny("tiny-llama")
    ids = torch.tensor([[5, 6, 7]])
    proj = lm.adapter.out_proj(0, "mlp")
    v = torch.randn(lm.adapter.intermediate_size)
    with capture({"in": proj}, what="input") as base:
        lm.model(ids)
    with add_to_input(proj, v), capture({"in": proj}, what="input") as st:
        lm.model(ids)
    # capture hook registered after the add hook sees the modified input
    assert torch.allclose(st.last("in") - base.last("in"), v.expand(1, 3, -1), atol=1e-5)


def test_hooks_removed_on_exception(tiny_lm):
    mod = tiny_lm.adapter.block_output_module(0, "mlp")
    n_before = len(mod._forward_hooks)
    with pytest.raises(RuntimeError):
        with add_to_output(mod, torch.ones(tiny_lm.adapter.hidden_size)):
            with capture({"m": mod}):
                raise RuntimeError("boom")
    assert len(mod._forward_hooks) == n_before == 0


def test_shape_errors():
    lm = tiny("tiny-llama")
    mod = lm.adapter.block_output_module(0, "attn")
    with pytest.raises(ValueError, match="rows"):
        with add_to_output(mod, torch.ones(3, lm.adapter.hidden_size)):
            lm.model(torch.tensor([[1, 2]]))
