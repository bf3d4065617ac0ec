"""Neuron-level knowledge attribution (NLKA; Yu & Ananiadou, EMNLP 2024) through the model's own
final norm and unembedding, for every adapter architecture. [paper]

At the last prompt position, with ``log p(w | x) = log_softmax(W_U FinalNorm(x))_w``:

* ``Imp(A_l) = log p(w | h_{l-1} + A_l) - log p(w | h_{l-1})``
* ``Imp(F_l) = log p(w | r_l + F_l) - log p(w | r_l)``, ``r_l = h_{l-1} + A_l``
* head h: its share of ``A_l`` (``W_O[:, head cols] @ z_h``, passed through the post-attention norm
  linearised at the actual block output for Gemma 2/3), scored like ``A_l``;
* MLP neuron i: ``m_i * W_down[:, i]`` (scaled the same way through a post-MLP norm), scored like ``F_l``.

Everything is batched over prompts (right padding, the last real prompt token is read).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Sequence

import torch

from editbench.modeling.hooks import capture
from editbench.modeling.loading import LoadedModel
from editbench.modeling.scoring import encode_prompt


@dataclass
class Trace:
    """Residual-stream pieces at each prompt's last position, ``[n_layers, B, d]`` each."""

    h_in: torch.Tensor  # h_{l-1}: layer input
    attn: torch.Tensor  # A_l: attention block output as added to the residual
    mlp: torch.Tensor  # F_l
    attn_raw: torch.Tensor  # W_O output before any post-norm
    mlp_raw: torch.Tensor
    z: torch.Tensor  # [n_layers, B, n_heads*head_dim] input of W_O
    m: torch.Tensor  # [n_layers, B, intermediate] input of W_down


def _pad(lm: LoadedModel, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = [encode_prompt(lm.tokenizer, p) for p in prompts]
    T = max(len(e) for e in enc)
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.full((len(enc), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    last = torch.tensor([len(e) - 1 for e in enc])
    return ids.to(lm.device), mask.to(lm.device), last.to(lm.device)


@torch.no_grad()
def trace_last_position(lm: LoadedModel, prompts: Sequence[str]) -> Trace:
    ad = lm.adapter
    ids, mask, last = _pad(lm, prompts)
    rows = torch.arange(len(prompts), device=lm.device)
    L = range(ad.n_layers)
    with ExitStack() as st:
        c_in = st.enter_context(capture({l: ad.layers[l] for l in L}, what="input"))
        c_out = st.enter_context(capture({("attn", l): ad.block_output_module(l, "attn") for l in L}
                                         | {("mlp", l): ad.block_output_module(l, "mlp") for l in L}))
        c_raw = st.enter_context(capture({("attn", l): ad.out_proj(l, "attn") for l in L}
                                         | {("mlp", l): ad.out_proj(l, "mlp") for l in L}))
        c_proj_in = st.enter_context(capture({("attn", l): ad.out_proj(l, "attn") for l in L}
                                             | {("mlp", l): ad.out_proj(l, "mlp") for l in L}, what="input"))
        ad.base(input_ids=ids, attention_mask=mask, use_cache=False)

    def stack(cap, key):
        return torch.stack([cap.last(key(l))[rows, last] for l in L])

    return Trace(h_in=stack(c_in, lambda l: l), attn=stack(c_out, lambda l: ("attn", l)),
                 mlp=stack(c_out, lambda l: ("mlp", l)), attn_raw=stack(c_raw, lambda l: ("attn", l)),
                 mlp_raw=stack(c_raw, lambda l: ("mlp", l)), z=stack(c_proj_in, lambda l: ("attn", l)),
                 m=stack(c_proj_in, lambda l: ("mlp", l)))


def _logp(lm: LoadedModel, residual: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """log p(token | residual) for residual ``[..., B, d]`` and token ``[B]``."""
    lp = torch.log_softmax(lm.adapter.logits_from_residual(residual).float(), dim=-1)
    idx = token.view(*([1] * (residual.dim() - 2)), -1, 1).expand(*lp.shape[:-1], 1)
    return lp.gather(-1, idx).squeeze(-1)


def _post_norm_scale(out: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Elementwise factor mapping raw projection output to the block output (1 without a post-norm).
    For an RMS/LayerNorm-without-centering post-norm this linearisation is exact for the sum."""
    safe = raw.abs() > 1e-12
    return torch.where(safe, out / torch.where(safe, raw, torch.ones_like(raw)), torch.zeros_like(raw))


def _token_ids(lm: LoadedModel, tokens: Sequence[int | str]) -> torch.Tensor:
    from editbench.modeling.scoring import encode_target

    ids = [t if isinstance(t, int) else encode_target(lm.tokenizer, t)[0] for t in tokens]
    return torch.tensor(ids, device=lm.device)


@torch.no_grad()
def block_importance(lm: LoadedModel, prompts: Sequence[str], tokens: Sequence[int | str]) -> dict[str, torch.Tensor]:
    """Imp(A_l) and Imp(F_l) for each prompt's token (a token id, or a target string whose first
    ROME-protocol token is used). Returns ``{"attn": [L, B], "mlp": [L, B]}`` in nats."""
    tr = trace_last_position(lm, prompts)
    w = _token_ids(lm, tokens)
    r = tr.h_in + tr.attn
    return {"attn": _logp(lm, r, w) - _logp(lm, tr.h_in, w),
            "mlp": _logp(lm, r + tr.mlp, w) - _logp(lm, r, w)}


@torch.no_grad()
def head_importance(lm: LoadedModel, prompts: Sequence[str], tokens: Sequence[int | str]) -> torch.Tensor:
    """Per-head NLKA ``[L, n_heads, B]``: log p(w | h_{l-1} + share_h) - log p(w | h_{l-1})."""
    ad = lm.adapter
    tr = trace_last_position(lm, prompts)
    w = _token_ids(lm, tokens)
    out = torch.empty(ad.n_layers, ad.n_heads, len(prompts))
    for l in range(ad.n_layers):
        W = ad.out_weight(l, "attn")
        scale = _post_norm_scale(tr.attn[l], tr.attn_raw[l])  # [B, d]
        shares = torch.stack([tr.z[l][:, ad.head_columns(h)] @ W[:, ad.head_columns(h)].T for h in range(ad.n_heads)])
        shares = shares * scale  # [H, B, d]
        base = _logp(lm, tr.h_in[l], w)
        out[l] = (_logp(lm, tr.h_in[l].unsqueeze(0) + shares, w) - base).cpu()
    return out


@torch.no_grad()
def neuron_importance(lm: LoadedModel, prompts: Sequence[str], tokens: Sequence[int | str], layer: int,
                      chunk: int = 256) -> torch.Tensor:
    """Per-neuron NLKA of one layer's MLP ``[intermediate, B]``: log p(w | r_l + m_i W_down[:, i]) - log p(w | r_l)."""
    ad = lm.adapter
    tr = trace_last_position(lm, prompts)
    w = _token_ids(lm, tokens)
    W = ad.out_weight(layer, "mlp")  # [d, I]
    r = tr.h_in[layer] + tr.attn[layer]  # [B, d]
    scale = _post_norm_scale(tr.mlp[layer], tr.mlp_raw[layer])
    base = _logp(lm, r, w)
    res = []
    for s in range(0, ad.intermediate_size, chunk):
        cols = slice(s, min(s + chunk, ad.intermediate_size))
        contrib = tr.m[layer][:, cols].T.unsqueeze(-1) * W[:, cols].T.unsqueeze(1)  # [c, B, d]
        res.append((_logp(lm, r.unsqueeze(0) + contrib * scale, w) - base).cpu())
    return torch.cat(res)


@torch.no_grad()
def response_attention_importance(lm: LoadedModel, examples: Sequence, max_positions: int = 16,
                                  batch_size: int = 8) -> torch.Tensor:
    """``Imp(A_l)`` of each layer's attention block for the tokens of a probe response, ``[L, n]``
    (nats): at each position that predicts a response token (the "predict" window of
    :mod:`editbench.modeling.directions`, its first ``max_positions`` positions), ``log p(next |
    h_{l-1} + A_l) - log p(next | h_{l-1})``, averaged over the positions of each example.
    ``examples`` are :class:`~editbench.modeling.directions.ProbeExample`; teacher-forced, right
    padded, batched. Costs two unembeddings per layer and position, hence the position cap."""
    from editbench.modeling.directions import response_ids, window_bounds

    ad, tok, dev = lm.adapter, lm.tokenizer, lm.device
    seqs, spans = [], []
    for e in examples:
        p, r = encode_prompt(tok, e.prompt), response_ids(tok, e)
        start, end = window_bounds(len(p), len(r), "predict")
        end = min(end, start + max_positions)
        seqs.append(p + r[: end - start])  # positions start..end-1 predict tokens start+1..end
        spans.append((start, end))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = torch.zeros(ad.n_layers, len(examples))
    L = range(ad.n_layers)
    for s in range(0, len(examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(examples))))
        T = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        with ExitStack() as st:
            c_in = st.enter_context(capture({l: ad.layers[l] for l in L}, what="input"))
            c_out = st.enter_context(capture({l: ad.block_output_module(l, "attn") for l in L}))
            ad.base(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
        rows = torch.cat([torch.full((spans[i][1] - spans[i][0],), row) for row, i in enumerate(idx)]).to(dev)
        pos = torch.cat([torch.arange(*spans[i]) for i in idx]).to(dev)
        nxt = ids.to(dev)[rows, pos + 1]
        owner = torch.cat([torch.full((spans[i][1] - spans[i][0],), k) for k, i in enumerate(idx)])
        counts = torch.bincount(owner, minlength=len(idx)).clamp_min(1).float()
        for l in L:
            h = c_in.last(l)[rows, pos]
            imp = (_logp(lm, h + c_out.last(l)[rows, pos], nxt) - _logp(lm, h, nxt)).float().cpu()
            out[l, idx] = torch.zeros(len(idx)).index_add_(0, owner, imp) / counts
    return out


def select_region(gap, n_layers: int, width: int | None = None, start_frac: float = 0.4) -> list[int]:
    """The contiguous window of ``width`` layers (default ``max(2, round(n_layers / 6))``) at or after
    ``start_frac`` depth (mid-to-late) with the largest summed ``gap`` (NaN counts as 0): MEGA's
    region rule, for the post-edit study's success-minus-failure gap and for the behaviour probes'
    positive-minus-negative gap alike."""
    import numpy as np

    gap = np.asarray(gap, dtype=np.float64)
    width = min(width or max(2, round(n_layers / 6)), n_layers)
    lo = min(int(np.floor(start_frac * n_layers)), n_layers - width)
    best, best_start = -np.inf, lo
    for s in range(lo, n_layers - width + 1):
        v = float(np.nansum(gap[s:s + width]))
        if v > best:
            best, best_start = v, s
    return list(range(best_start, min(best_start + width, n_layers)))
