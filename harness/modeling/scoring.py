"""Batched teacher-forced scoring of targets after prompts, and batched generation.

ROME protocol: target tokens are ``tokenizer(" " + target)`` (no special tokens), appended to the
prompt's tokens; the score is the mean NLL over the target tokens. Sequences are right-padded, so
every architecture sees the natural positions 0..L-1 for real tokens and the causal mask keeps pad
tokens from influencing them. Logits are computed only at the positions that predict target
tokens (the unembedding is the largest matmul of a small model).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Hashable, Iterator, Sequence

import torch

from editbench.modeling.loading import LoadedModel


@dataclass(frozen=True)
class ScoreRequest:
    prompt: str
    target: str


@dataclass
class TargetScore:
    nll: float  # mean NLL per target token (nats)
    token_nll: list[float]
    target_ids: list[int]
    argmax_ids: list[int]  # greedy prediction at each target position (EasyEdit accuracies/locality)
    #: the full next-token log-probs ``[vocab]`` after the prompt (the first target position), only
    #: when asked for (``score_targets(..., next_rows=...)``; next-token KL from the same pass)
    next_logprobs: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def token_accuracy(self) -> float:
        return sum(int(a == t) for a, t in zip(self.argmax_ids, self.target_ids)) / len(self.target_ids)


@dataclass
class Batch:
    """What a per-batch intervention needs to know about the rows it is applied to."""

    indices: list[int]  # positions of the rows in the caller's request list
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    prompt_lengths: torch.Tensor  # [B] number of prompt tokens (padding excluded)
    left_padded: bool = False

    def _prompt_start(self) -> torch.Tensor:
        if self.left_padded:
            return self.input_ids.shape[1] - self.attention_mask.sum(1)
        return torch.zeros_like(self.prompt_lengths)

    def last_prompt_mask(self) -> torch.Tensor:
        """``[B, T]`` True at each row's last prompt token."""
        B, T = self.input_ids.shape
        last = self._prompt_start() + self.prompt_lengths - 1
        mask = torch.zeros(B, T, dtype=torch.bool, device=self.input_ids.device)
        mask[torch.arange(B, device=mask.device), last.to(mask.device)] = True
        return mask

    def prompt_mask(self) -> torch.Tensor:
        """``[B, T]`` True at every prompt token."""
        B, T = self.input_ids.shape
        pos = torch.arange(T, device=self.input_ids.device).unsqueeze(0)
        start = self._prompt_start().to(pos.device).unsqueeze(1)
        return (pos >= start) & (pos < start + self.prompt_lengths.to(pos.device).unsqueeze(1))


BatchContext = Callable[[Batch], ContextManager]


@dataclass(frozen=True)
class RowsContext:
    """A batch context that says which requests may share one prompt forward.

    Prefix-shared scoring (:func:`score_targets`) packs every target that follows one prompt into
    one row, so a row must carry a single intervention. ``keys[i]`` names request i's intervention
    (requests with equal keys and equal prompts share a row); ``keys`` None: every row gets the same
    intervention. A plain callable passed as ``batch_context`` is assumed to differ per request,
    so its requests never share a row (safe, not fast)."""

    fn: Callable[[Batch], ContextManager]
    keys: Sequence[Hashable] | None = None

    def __call__(self, batch: Batch) -> ContextManager:
        return self.fn(batch)


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text (BOS for Gemma and Llama 2; none for
    GPT-2 or SmolLM2): what a window of raw text needs to look like a prompt to the model."""
    return list(tokenizer("")["input_ids"])


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    return ids


def encode_target(tokenizer, target: str) -> list[int]:
    """``tokenizer(" " + target)`` without special tokens (ROME protocol).

    SentencePiece tokenizers that add a dummy prefix turn " Paris" into ["▁", "▁Paris"]: a bare
    word-boundary piece followed by a piece that already carries the boundary. Only that redundant
    piece is dropped; a real space token (byte-level BPE: ["Ġ", "1", "0"]) is kept."""
    if not target.strip():
        raise ValueError(f"empty target {target!r}")
    ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    if len(ids) > 1:
        first, second = tokenizer.convert_ids_to_tokens(ids[:2])
        if first in ("▁", "Ġ") and second.startswith(first) and len(second) > 1:
            ids = ids[1:]
    if not ids:
        raise ValueError(f"target {target!r} encodes to no tokens")
    return ids


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None):
    batch: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in batch] + [lengths[i]])
        if batch and (len(batch) >= batch_size or (max_tokens and longest * (len(batch) + 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _layout(lm: LoadedModel, prompts: list[list[int]], targets: list[list[int]], idx: Sequence[int]):
    """Right-padded batch of prompt+target[:-1] rows; (batch, row index, column index, target ids)
    for every target token, so logits are computed only where they are needed."""
    seqs = [prompts[i] + targets[i][:-1] for i in idx]
    T = max(len(s) for s in seqs)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(idx), T), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    rows, cols, tgt = [], [], []
    for b, (i, seq) in enumerate(zip(idx, seqs)):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        P, K = len(prompts[i]), len(targets[i])
        rows += [b] * K
        cols += list(range(P - 1, P - 1 + K))
        tgt += targets[i]
    dev = lm.device
    batch = Batch(indices=list(idx), input_ids=ids.to(dev), attention_mask=mask.to(dev),
                  prompt_lengths=torch.tensor([len(prompts[i]) for i in idx], device=dev))
    return batch, torch.tensor(rows, device=dev), torch.tensor(cols, device=dev), torch.tensor(tgt, device=dev)


def target_logprobs(lm: LoadedModel, requests: Sequence[ScoreRequest],
                    batch_context: BatchContext | None = None) -> tuple[torch.Tensor, list[int]]:
    """Differentiable: log-probs ``[N_tokens, vocab]`` at every target position of one batch of
    requests, and the number of target tokens per request (for optimisation-based editors)."""
    tok = lm.tokenizer
    prompts = [encode_prompt(tok, r.prompt) for r in requests]
    targets = [encode_target(tok, r.target) for r in requests]
    batch, rows, cols, _ = _layout(lm, prompts, targets, range(len(requests)))
    with batch_context(batch) if batch_context else nullcontext():
        hidden = lm.adapter.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False).last_hidden_state
    return torch.log_softmax(lm.adapter.logits(hidden[rows, cols]).float(), -1), [len(t) for t in targets]


def mean_target_nll(lm: LoadedModel, requests: Sequence[ScoreRequest],
                    batch_context: BatchContext | None = None) -> torch.Tensor:
    """Differentiable mean token NLL ``[N]`` of each request's target (ROME protocol)."""
    logp, counts = target_logprobs(lm, requests, batch_context)
    tgt = torch.tensor([t for r in requests for t in encode_target(lm.tokenizer, r.target)], device=logp.device)
    tok_nll = -logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
    return torch.stack([c.mean() for c in torch.split(tok_nll, counts)])


@dataclass
class _Packed:
    """One batch of packed rows: one prompt per row, then each of its targets' tokens (but the
    last) as a segment that sees the prompt and itself only."""

    batch: Batch
    attention: object  # the ``attention_mask`` argument of the decoder stack (2D, 4D or per layer type)
    positions: torch.Tensor | None  # [B, T] position ids (None: 0..T-1, the unpacked layout)
    flat: torch.Tensor  # [N_tokens] row * T + column of the position predicting each target token
    tgt: torch.Tensor  # [N_tokens] the target token ids, request after request


def _pack(lm: LoadedModel, prompts: list[list[int]], targets: list[list[int]], groups: Sequence[Sequence[int]]) -> _Packed:
    seqs, segs = [], []
    for g in groups:
        P = prompts[g[0]]
        seq, seg, starts = list(P), [0] * len(P), []
        for s, i in enumerate(g, 1):
            starts.append(len(seq))
            seq += targets[i][:-1]
            seg += [s] * (len(targets[i]) - 1)
        seqs.append(seq)
        segs.append((seg, starts))
    B, T = len(groups), max(len(s) for s in seqs)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    seg_ids = torch.full((B, T), -1, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    flat, tgt = [], []
    for b, (g, seq, (seg, starts)) in enumerate(zip(groups, seqs, segs)):
        P = len(prompts[g[0]])
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        seg_ids[b, : len(seq)] = torch.tensor(seg)
        for i, o in zip(g, starts):
            K = len(targets[i])
            pos[b, o:o + K - 1] = torch.arange(P, P + K - 1)
            flat += [b * T + P - 1] + [b * T + o + m for m in range(K - 1)]
            tgt += targets[i]
        pos[b, :P] = torch.arange(P)
    dev = lm.device
    batch = Batch(indices=[g[0] for g in groups], input_ids=ids.to(dev), attention_mask=mask.to(dev),
                  prompt_lengths=torch.tensor([len(prompts[g[0]]) for g in groups], device=dev))
    packed = any(sum(len(targets[i]) > 1 for i in g) > 1 for g in groups)  # a row with two target segments
    if packed:
        q, k = seg_ids.unsqueeze(2), seg_ids.unsqueeze(1)
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)) & (k >= 0) & ((k == 0) | (k == q))
        allowed |= torch.eye(T, dtype=torch.bool)  # padding attends to itself: no empty softmax row
        attention, positions = lm.adapter.attention_mask_4d(allowed.to(dev), pos.to(dev)), pos.to(dev)
    else:
        attention, positions = batch.attention_mask, None
    return _Packed(batch, attention, positions, torch.tensor(flat, device=dev), torch.tensor(tgt, device=dev))


def _share_groups(prompts: list[list[int]], keys: Sequence[Hashable]) -> list[list[int]]:
    """Requests with the same prompt tokens and the same intervention key, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, k) in enumerate(zip(prompts, keys)):
        groups.setdefault((tuple(p), k), []).append(i)
    return list(groups.values())


def _row_keys(batch_context: BatchContext | None, n: int) -> Sequence[Hashable]:
    if batch_context is None:
        return [None] * n
    if isinstance(batch_context, RowsContext):
        return batch_context.keys if batch_context.keys is not None else [None] * n
    return range(n)  # a plain per-request context: never share


def packed_batches(lm: LoadedModel, requests: Sequence[ScoreRequest], batch_size: int = 32,
                   max_tokens: int | None = 8192, keys: Sequence[Hashable] | None = None,
                   share_prefix: bool = True) -> Iterator[tuple[list[list[int]], _Packed]]:
    """The batches :func:`score_targets` runs: ``(request groups, packed batch)``, one row per group
    (requests with one prompt and one ``keys`` entry), longest rows first."""
    prompts = [encode_prompt(lm.tokenizer, r.prompt) for r in requests]
    targets = [encode_target(lm.tokenizer, r.target) for r in requests]
    return _packed_batches(lm, prompts, targets, batch_size, max_tokens, keys, share_prefix)


def _packed_batches(lm: LoadedModel, prompts: list[list[int]], targets: list[list[int]], batch_size: int,
                    max_tokens: int | None, keys: Sequence[Hashable] | None,
                    share_prefix: bool) -> Iterator[tuple[list[list[int]], _Packed]]:
    if share_prefix:
        groups = _share_groups(prompts, keys if keys is not None else [None] * len(prompts))
    else:
        groups = [[i] for i in range(len(prompts))]
    lengths = [len(prompts[g[0]]) + sum(len(targets[i]) - 1 for i in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda j: -lengths[j])  # little padding per batch
    for gidx in _batches(order, lengths, batch_size, max_tokens):
        members = [groups[j] for j in gidx]
        yield members, _pack(lm, prompts, targets, members)


@torch.no_grad()
def score_targets(lm: LoadedModel, requests: Sequence[ScoreRequest], batch_size: int = 32,
                  batch_context: BatchContext | None = None, max_tokens: int | None = 8192,
                  next_rows: Sequence[bool] | None = None, share_prefix: bool = True) -> list[TargetScore]:
    """Score every (prompt, target) pair; results are in request order and independent of batching
    beyond float noise. ``batch_context(batch)`` may install per-row interventions for a batch (see
    :class:`RowsContext` for which requests may then share a row). ``next_rows[i]``: also keep
    request i's full next-token log-probs after its prompt (``TargetScore.next_logprobs``; computed
    anyway, so free but for the memory).

    ``share_prefix``: every target after one prompt is scored from one forward pass of the prompt
    (one row: the prompt, then each target's tokens as a segment that attends to the prompt and to
    itself only, at the positions it would have alone), so a prompt with k targets costs its tokens
    once instead of k times. False: one row per request (the reference layout)."""
    prompts = [encode_prompt(lm.tokenizer, r.prompt) for r in requests]
    targets = [encode_target(lm.tokenizer, r.target) for r in requests]
    results: list[TargetScore | None] = [None] * len(requests)
    vocab = lm.adapter.lm_head.weight.shape[0]
    for members, pk in _packed_batches(lm, prompts, targets, batch_size, max_tokens,
                                       _row_keys(batch_context, len(requests)), share_prefix):
        batch = pk.batch
        with batch_context(batch) if batch_context else nullcontext():
            hidden = lm.adapter.base(input_ids=batch.input_ids, attention_mask=pk.attention,
                                     position_ids=pk.positions, use_cache=False).last_hidden_state
        # unembed each distinct position once (a prompt's last position predicts every target's first token)
        uniq, inverse = torch.unique(pk.flat, return_inverse=True)
        hidden = hidden.reshape(-1, hidden.shape[-1])[uniq]
        nll = torch.empty(len(pk.flat), device=hidden.device)
        amax = torch.empty(len(uniq), dtype=torch.long, device=hidden.device)
        keep = {}
        wanted = set()
        if next_rows:
            k = 0
            for g in members:
                for i in g:
                    if next_rows[i]:
                        wanted.add(int(inverse[k]))
                    k += len(targets[i])
        step = max(1, (1 << 25) // max(vocab, 1))
        for s in range(0, len(uniq), step):
            logp = torch.log_softmax(lm.adapter.logits(hidden[s:s + step]).float(), dim=-1)
            amax[s:s + step] = logp.argmax(-1)
            sel = ((inverse >= s) & (inverse < s + step)).nonzero().squeeze(1)
            nll[sel] = -logp[inverse[sel] - s, pk.tgt[sel]]
            for u in wanted:
                if s <= u < s + step:
                    keep[u] = logp[u - s].clone()
        nll_l, amax_t, inv_l = nll.cpu().tolist(), amax.cpu(), inverse.cpu()
        start = 0
        for g in members:
            for i in g:
                K = len(targets[i])
                tn = nll_l[start:start + K]
                first = int(inv_l[start])
                results[i] = TargetScore(nll=sum(tn) / K, token_nll=tn, target_ids=targets[i],
                                         argmax_ids=amax_t[inv_l[start:start + K]].tolist(),
                                         next_logprobs=keep[first] if next_rows and next_rows[i] else None)
                start += K
    return results  # type: ignore[return-value]


def kl_divergence(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``KL(ref || model)`` over the last dimension from log-probs (nats): terms where the reference
    probability is 0 contribute 0; NaN in ``logp`` stays NaN (a broken edit is flagged, not hidden)."""
    p = ref_logp.exp()
    return torch.where(p > 0, p * (ref_logp - logp), torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def _unembed_rows(lm: LoadedModel, hidden: torch.Tensor, max_elements: int = 1 << 25):
    """Yield ``(start, log-probs)`` over the rows of ``hidden`` ``[N, d]`` in slices whose
    ``[rows, vocab]`` float32 log-probs stay below ``max_elements`` (the unembedding of many
    positions is the memory peak)."""
    vocab = lm.adapter.lm_head.weight.shape[0]
    step = max(1, max_elements // max(vocab, 1))
    for s in range(0, hidden.shape[0], step):
        yield s, torch.log_softmax(lm.adapter.logits(hidden[s:s + step]).float(), dim=-1)


def _prompt_forward(lm: LoadedModel, seqs: Sequence[Sequence[int]], batch_size: int,
                    batch_context: BatchContext | None, max_tokens: int | None):
    """Right-padded batches of whole token sequences (each one a prompt, ``prompt_lengths`` = its
    length), longest first; yields ``(idx, batch, last hidden state [B, T, d])``."""
    lengths = [len(s) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: -lengths[i])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev = lm.device
    for idx in _batches(order, lengths, batch_size, max_tokens):
        T = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, : lengths[i]] = torch.tensor(list(seqs[i]))
            mask[b, : lengths[i]] = 1
        batch = Batch(indices=list(idx), input_ids=ids.to(dev), attention_mask=mask.to(dev),
                      prompt_lengths=torch.tensor([lengths[i] for i in idx], device=dev))
        with batch_context(batch) if batch_context else nullcontext():
            hidden = lm.adapter.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     use_cache=False).last_hidden_state
        yield idx, batch, hidden


@torch.no_grad()
def next_token_logprobs(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 32,
                        batch_context: BatchContext | None = None, max_tokens: int | None = 8192) -> torch.Tensor:
    """``[n, vocab]`` float32 log-probs of the next token after each prompt's last token, in
    request order (right-padded batches, longest first, as :func:`score_targets`; the unembedding
    only at the last prompt positions). ``batch_context(batch)`` may install per-row interventions."""
    seqs = [encode_prompt(lm.tokenizer, p) for p in prompts]
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for idx, batch, hidden in _prompt_forward(lm, seqs, batch_size, batch_context, max_tokens):
        last = hidden[torch.arange(len(idx), device=hidden.device), batch.prompt_lengths - 1]
        for s, logp in _unembed_rows(lm, last):
            for k, row in enumerate(logp):
                out[idx[s + k]] = row
    if not seqs:
        return torch.empty(0, lm.adapter.lm_head.weight.shape[0])
    return torch.stack(out)  # type: ignore[arg-type]


@torch.no_grad()
def window_logprobs(lm: LoadedModel, windows: Sequence[Sequence[int]], batch_size: int = 32,
                    batch_context: BatchContext | None = None, reference: Sequence[torch.Tensor] | None = None,
                    max_tokens: int | None = 8192, starts: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Next-token log-probs at *every* position of token-id windows (each window is a whole
    prompt: ``prompt_lengths`` = its length), ``[L_i, vocab]`` float32 per window, in request order.
    ``starts[i]``: the first position of window i whose distribution is wanted (a response after
    its prompt), giving ``[L_i - starts[i], vocab]``; positions before it are never unembedded.

    With ``reference`` (one such log-prob tensor per window, e.g. the unedited model's), returns
    the per-position ``KL(reference || model)`` instead, so that many edited rows never hold
    their full distributions at once."""
    starts = [0] * len(windows) if starts is None else list(starts)
    if len(starts) != len(windows) or any(not 0 <= s < len(w) for s, w in zip(starts, windows)):
        raise ValueError("empty token window (or a start outside its window)")
    out: list[torch.Tensor | None] = [None] * len(windows)
    for idx, batch, hidden in _prompt_forward(lm, windows, batch_size, batch_context, max_tokens):
        spans = [(starts[i], L) for i, L in zip(idx, batch.prompt_lengths.tolist())]
        lengths = [L - s for s, L in spans]
        # every wanted position, window after window (so each window's rows are contiguous)
        rows = torch.cat([torch.full((L - s,), b, dtype=torch.long) for b, (s, L) in enumerate(spans)]).to(hidden.device)
        cols = torch.cat([torch.arange(s, L) for s, L in spans]).to(hidden.device)
        ref = None if reference is None else torch.cat([reference[i][:n] for i, n in zip(idx, lengths)])
        flat = []
        for s, logp in _unembed_rows(lm, hidden[rows, cols]):
            flat.append(logp if ref is None else kl_divergence(ref[s:s + logp.shape[0]].to(logp), logp))
        for i, part in zip(idx, torch.split(torch.cat(flat), lengths)):
            out[i] = part
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 32, do_sample: bool = False,
             seed: int = 0, batch_size: int = 16, batch_context: BatchContext | None = None,
             lengths_out: list[int] | None = None, ids_out: list[list[int]] | None = None,
             **gen_kwargs) -> list[str]:
    """Batched (left-padded) generation; returns only the new text per prompt (and, into
    ``lengths_out``, the number of generated tokens per prompt, EOS excluded; into ``ids_out``,
    those tokens).

    Greedy decoding is independent of batching. Sampling is reproducible for a fixed seed *and*
    batch size (the RNG is re-seeded per batch).
    """
    tok, dev = lm.tokenizer, lm.device
    encoded = [encode_prompt(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[str | None] = [None] * len(prompts)
    new_ids: list[list[int]] = [[] for _ in prompts]
    for bno, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        T = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, T - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[b, T - len(encoded[i]):] = 1
        batch = Batch(indices=list(idx), input_ids=ids.to(dev), attention_mask=mask.to(dev),
                      prompt_lengths=torch.tensor([len(encoded[i]) for i in idx], device=dev), left_padded=True)
        torch.manual_seed(seed + bno)
        with batch_context(batch) if batch_context else nullcontext():
            gen = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                                    **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}),
                                    **gen_kwargs)
        for b, i in enumerate(idx):
            new = gen[b, T:].tolist()
            if tok.eos_token_id is not None and tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            new_ids[i] = new
            out[i] = tok.decode(new, skip_special_tokens=True)
    if lengths_out is not None:
        lengths_out[:] = [len(n) for n in new_ids]
    if ids_out is not None:
        ids_out[:] = new_ids
    return out  # type: ignore[return-value]


def score_choices(lm: LoadedModel, prompts: Sequence[str], choices: Sequence[Sequence[str]], batch_size: int = 32,
                  batch_context: BatchContext | None = None, share_prefix: bool = True) -> list[list[tuple[float, int]]]:
    """Multiple choice by log-likelihood: for each prompt, ``(sum log p, n tokens)`` of every
    choice (tokenised as ``" " + choice``), all choices of all prompts scored in shared batches
    (with ``share_prefix``, all choices of one question from one packed row)."""
    reqs = [ScoreRequest(p, c) for p, cs in zip(prompts, choices) for c in cs]
    flat = score_targets(lm, reqs, batch_size=batch_size, batch_context=batch_context, share_prefix=share_prefix)
    out, k = [], 0
    for cs in choices:
        out.append([(-sum(s.token_nll), len(s.token_nll)) for s in flat[k:k + len(cs)]])
        k += len(cs)
    return out
