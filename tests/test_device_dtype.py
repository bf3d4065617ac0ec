"""The reduced-precision / GPU path: ``--device cuda --dtype bfloat16`` end to end.

Every test runs in bfloat16 on the CPU (CPUs run bf16 matmuls, so the dtype handling is checked on
every machine) and again on CUDA where a GPU is present (``-m gpu`` selects those; they skip
without one)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from editbench.cli import main
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.modeling.weights import ColumnDelta, WeightEditTransaction

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="no CUDA device")])
DEVICES = ["cpu", CUDA]
REQS = [ScoreRequest("The capital of France is", t) for t in ("Paris", "Rome and Milan", "x")] + \
       [ScoreRequest("Water boils at", "100 degrees")]


def _bf16(name: str, device: str):
    return load_model(name, device=device, dtype="bfloat16")


@pytest.mark.parametrize("device", DEVICES)
def test_weight_transaction_restores_bf16_bit_exactly(device):
    lm = _bf16("tiny-llama", device)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    d = ColumnDelta(1, "attn", slice(0, 16), torch.randn(lm.adapter.hidden_size, 1, generator=g),
                    torch.randn(16, 1, generator=g))  # float32 factors, as methods produce them
    W = lm.adapter.out_weight(1, "attn")
    with WeightEditTransaction(lm.adapter, [d], scale=0.7):
        assert W.dtype == torch.bfloat16 and not torch.equal(W[:, :16], before["model.layers.1.self_attn.o_proj.weight"][:, :16])
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_scores_are_float32_and_close_to_float32(device):
    """Log-probs are computed in float32 from bf16 hidden states; scores stay within bf16 noise of
    the float32 model's, with prefix sharing as without."""
    lm, ref = _bf16("tiny-llama", device), load_model("tiny-llama")
    out = score_targets(lm, REQS, next_rows=[True] * len(REQS))
    unshared = score_targets(lm, REQS, share_prefix=False)
    exact = score_targets(ref, REQS)
    assert all(s.next_logprobs.dtype == torch.float32 for s in out)
    assert all(math.isfinite(s.nll) for s in out)
    assert max(abs(a.nll - b.nll) for a, b in zip(out, exact)) < 0.25
    assert max(abs(a.nll - b.nll) for a, b in zip(out, unshared)) < 0.1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["mega", "rome", "memit", "grace", "ft", "steering", "steer2edit"])
def test_every_method_runs_in_bf16(device, method, tmp_path, capsys):
    """fit + evaluate through the CLI in bf16: finite numbers, the run records its dtype and device,
    and the model is unchanged afterwards (weight edits restored in bf16)."""
    out = tmp_path / method
    rc = main(["run", "--model", "tiny-llama", "--method", method, "--limit", "2", "--quiet", "--dtype", "bfloat16",
               "--device", device, "--out", str(out)])
    assert rc in (0, None), capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert recs and all(math.isfinite(x) for r in recs for fam in r["nll"]["post"].values() for xs in fam.values()
                        for x in xs)
    cfg = json.loads((out / "config.json").read_text())
    assert "bfloat16" in json.dumps(cfg)
