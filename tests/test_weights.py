import pytest
import torch

from editbench.modeling.weights import ColumnDelta, WeightEditTransaction
from tests.conftest import tiny


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bit_equal(a, b):
    return all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def _deltas(lm):
    ad = lm.adapter
    H = ad.hidden_size
    return [
        ColumnDelta(0, "attn", ad.head_columns(1), torch.randn(H, 1), torch.randn(ad.head_dim, 1)),
        ColumnDelta(0, "attn", ad.head_columns(1), torch.randn(H, 2), torch.randn(ad.head_dim, 2)),  # overlapping
        ColumnDelta(2, "mlp", torch.tensor([3, 7, 11]), torch.randn(H, 1), torch.randn(3, 1)),
        ColumnDelta(1, "mlp", slice(None), torch.randn(H, ad.intermediate_size) * 1e-3),  # dense, whole matrix
    ]


def test_bit_exact_restore_and_effect(tiny_lm):
    lm = tiny_lm
    ids = torch.tensor([[3, 4, 5, 6]])
    before, logits0 = _snapshot(lm.model), lm.model(ids).logits
    deltas = _deltas(lm)
    with WeightEditTransaction(lm.adapter, deltas, scale=0.7) as tx:
        W = lm.adapter.out_weight(0, "attn")
        logits1 = lm.model(ids).logits
        # the edit is exactly the sum of the scaled deltas on the touched columns
        cols = lm.adapter.head_columns(1)
        orig = (before[[k for k in before if k.endswith(lm.adapter.spec.o_proj + ".weight")][0]])
        orig = orig.T if lm.adapter.spec.conv1d else orig
        want = orig[:, cols] + 0.7 * (deltas[0].dense() + deltas[1].dense())
        assert torch.allclose(W[:, cols], want, atol=1e-5)
        # only the touched columns are saved, never the whole model
        n_model = sum(p.numel() for p in lm.model.parameters())
        assert tx.saved_numel < n_model / 2
    assert not torch.allclose(logits0, logits1)
    assert _bit_equal(before, _snapshot(lm.model))
    assert torch.equal(lm.model(ids).logits, logits0)


def test_restore_on_exception(tiny_lm):
    before = _snapshot(tiny_lm.model)
    with pytest.raises(KeyError):
        with WeightEditTransaction(tiny_lm.adapter, _deltas(tiny_lm)):
            raise KeyError("inside")
    assert _bit_equal(before, _snapshot(tiny_lm.model))


def test_scale_zero_is_identity():
    lm = tiny("tiny-gpt2")
    ids = torch.tensor([[3, 4, 5]])
    ref = lm.model(ids).logits
    with WeightEditTransaction(lm.adapter, _deltas(lm), scale=0.0):
        assert torch.equal(lm.model(ids).logits, ref)


def test_repeated_columns_rejected():
    lm = tiny("tiny-llama")
    H = lm.adapter.hidden_size
    before = _snapshot(lm.model)
    bad = [ColumnDelta(0, "mlp", torch.tensor([1, 1]), torch.randn(H, 1), torch.randn(2, 1))]
    with pytest.raises(ValueError, match="repeats a column"):
        with WeightEditTransaction(lm.adapter, bad):
            pass
    assert _bit_equal(before, _snapshot(lm.model))
