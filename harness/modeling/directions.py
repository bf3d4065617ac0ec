"""Contrastive direction extraction from probe sets (shared by Steer2Edit, steering baselines, ...).

A probe set is two lists of (prompt, response) examples: *positives* show the behaviour we want,
*negatives* the one we do not. Each example is run teacher-forced (batched, right-padded, with an
attention mask, so every real token sees its natural positions) and, per layer ``l`` and block
``b`` in {"attn", "mlp"}, we record

* the **block output** (the output of ``adapter.block_output_module(l, b)``, i.e. what the block
  adds to the residual stream), giving ``v[(l, b)] = mean(pos) - mean(neg)`` (hidden size);
* the **input of the output projection** (forward pre-hook on ``adapter.out_proj(l, b)``: the
  concatenated per-head inputs of ``W_O`` / the neuron activations feeding ``W_down``), giving
  ``mu[(l, b)] = 0.5 * (mean over positives + mean over negatives)``;
* the **output of the output projection** ``W_O`` / ``W_down``, giving ``proj_directions[(l, b)]``.
  It is the same module, hence the same tensor, as the block output except on architectures that
  normalise a block's output before adding it (Gemma 2/3); there only this direction lives in the
  space ``W_O`` / ``W_down`` write to, which is what a weight edit along it needs (the official
  Steer2Edit code hooks ``o_proj`` / ``down_proj`` outputs);
* the **residual stream** after layer ``l`` (the decoder layer's output), giving
  ``resid[l] = mean(pos) - mean(neg)`` for single-layer (CAA / ActAdd style) steering.

Averaging follows METHODS.md section 1 / the official Steer2Edit code: per example over a window of
positions first, then over examples. The default window, ``"predict"``, is the positions that
*predict* response tokens: ``P-1 .. P+K-2`` for ``P`` prompt tokens and ``K`` response tokens.
``"response"`` (``P .. P+K-1``, the positions holding the response tokens) and ``"both"``
(``P-1 .. P+K-1``) exist for knowledge edits: there the positive and negative examples share the
prompt, so with one-token targets the ``"predict"`` window is the single, shared position ``P-1``
and every direction is exactly zero.

Tokenisation: the prompt is ``encode_prompt(prompt)`` (special tokens included, as in scoring) and
the response is ``tokenizer(response, add_special_tokens=False)`` appended to the prompt's ids
(unlike the official code, which tokenises ``prompt + response`` jointly). Tokenising separately
makes the window exact and identical to the positions the ROME scorer uses when the response is
``" " + target``; an example may also carry explicit ``response_ids`` (knowledge edits pass
``encode_target(target)`` so probe and score see the very same tokens).

All statistics are accumulated in float32 on the fly (no per-token activations are kept), and
returned on the CPU.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file

from editbench.modeling.arch import BLOCKS
from editbench.modeling.hooks import hooked
from editbench.modeling.loading import LoadedModel
from editbench.requests import EditRequest
from editbench.modeling.scoring import encode_prompt, encode_target, generate

log = logging.getLogger(__name__)

Window = Literal["predict", "response", "both"]
WINDOWS: tuple[str, ...] = ("predict", "response", "both")
Key = tuple[int, str]


@dataclass(frozen=True)
class ProbeExample:
    """One probe: a prompt and the response whose tokens define the averaging window."""

    prompt: str
    response: str
    #: Explicit response token ids; when None, ``tokenizer(response, add_special_tokens=False)``.
    response_ids: tuple[int, ...] | None = None


@dataclass
class ProbeSet:
    """Positive (wanted behaviour) and negative (unwanted behaviour) probe examples; ``stats`` holds
    how a protocol built them (counts labelled or dropped, length cut-offs), for logs and checks."""

    positives: list[ProbeExample]
    negatives: list[ProbeExample]
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_responses(cls, positives: Iterable[tuple[str, str]], negatives: Iterable[tuple[str, str]]) -> "ProbeSet":
        """Given (prompt, response) pairs, e.g. TruthfulQA answers judged true vs false."""
        return cls([ProbeExample(p, r) for p, r in positives], [ProbeExample(p, r) for p, r in negatives])

    @classmethod
    def from_generation(cls, lm: LoadedModel, positive_prompts: Sequence[str], negative_prompts: Sequence[str],
                        max_new_tokens: int = 64, batch_size: int = 16) -> "ProbeSet":
        """The model's own greedy responses (the paper's safety probes: malicious vs benign)."""
        return cls(generate_probe_examples(lm, positive_prompts, max_new_tokens, batch_size),
                   generate_probe_examples(lm, negative_prompts, max_new_tokens, batch_size))

    def extract(self, lm: LoadedModel, batch_size: int = 16, window: Window = "predict") -> "Directions":
        return extract_directions(lm, self.positives, self.negatives, batch_size=batch_size, window=window)


def generate_probe_examples(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 64,
                            batch_size: int = 16) -> list[ProbeExample]:
    """Greedy responses of the model itself (see :func:`probe_examples` for empty ones)."""
    texts = generate(lm, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    return probe_examples(lm.tokenizer, zip(prompts, texts))


def probe_examples(tokenizer, pairs: Iterable[tuple[str, str]]) -> list[ProbeExample]:
    """(prompt, response) pairs as probe examples. Pairs whose response is empty (e.g. an immediate
    EOS) are dropped with a warning: they have no position to average over. A generated response is
    re-tokenised from its decoded text, which can split a few tokens differently from generation."""
    out = []
    for p, t in pairs:
        if tokenizer(t, add_special_tokens=False)["input_ids"]:
            out.append(ProbeExample(p, t))
        else:
            log.warning("dropping probe prompt with an empty response: %r", p[:80])
    return out


def edit_probe_pair(request: EditRequest, tokenizer) -> tuple[ProbeExample, ProbeExample]:
    """Knowledge-edit probe (our adaptation): the rewrite prompt completed with the new target
    (positive) vs the true target (negative), tokenised exactly as the ROME scorer does."""
    r = request
    return (ProbeExample(r.prompt, " " + r.target_new, tuple(encode_target(tokenizer, r.target_new))),
            ProbeExample(r.prompt, " " + r.target_true, tuple(encode_target(tokenizer, r.target_true))))


def response_ids(tokenizer, example: ProbeExample) -> list[int]:
    if example.response_ids is not None:
        return list(example.response_ids)
    return list(tokenizer(example.response, add_special_tokens=False)["input_ids"])


def window_bounds(prompt_len: int, response_len: int, window: Window = "predict") -> tuple[int, int]:
    """Half-open ``[start, end)`` position range averaged for one example."""
    P, K = prompt_len, response_len
    if window == "predict":
        return P - 1, P + K - 1
    if window == "response":
        return P, P + K
    if window == "both":
        return P - 1, P + K
    raise ValueError(f"unknown window {window!r} (choose from {', '.join(WINDOWS)})")


# ---------------------------------------------------------------------------------------------
@dataclass
class Directions:
    """Contrastive statistics of one probe set, all float32 on the CPU.

    ``directions[(l, b)]``: mean block output over positives minus over negatives ``[hidden]``.
    ``input_means[(l, b)]``: mean output-projection input, averaged over the two classes
    (``[n_heads*head_dim]`` for attn, ``[intermediate]`` for mlp).
    ``resid[l]``: mean residual stream after layer ``l``, positives minus negatives ``[hidden]``.
    ``proj_directions[(l, b)]``: like ``directions`` at the output of ``W_O`` / ``W_down`` (the same
    tensor objects where the projection is the block-output module).
    """

    directions: dict[Key, torch.Tensor]
    input_means: dict[Key, torch.Tensor]
    resid: dict[int, torch.Tensor] = field(default_factory=dict)
    proj_directions: dict[Key, torch.Tensor] = field(default_factory=dict)
    n_pos: int = 0
    n_neg: int = 0
    window: str = "predict"
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """One safetensors file; counts and provenance go into its JSON metadata (no pickle)."""
        tensors = {f"direction/{l}/{b}": t.contiguous() for (l, b), t in self.directions.items()}
        tensors.update({f"input_mean/{l}/{b}": t.contiguous() for (l, b), t in self.input_means.items()})
        tensors.update({f"resid/{l}": t.contiguous() for l, t in self.resid.items()})
        # Shared tensors are stored once: a projection direction identical to the block one is implied.
        tensors.update({f"proj_direction/{l}/{b}": t.contiguous() for (l, b), t in self.proj_directions.items()
                        if t is not self.directions.get((l, b))})
        meta = {"n_pos": self.n_pos, "n_neg": self.n_neg, "window": self.window, "meta": self.meta}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"editbench_directions": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> "Directions":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("editbench_directions", "{}"))
        tensors = load_file(str(path))
        out = cls({}, {}, {}, {}, n_pos=meta.get("n_pos", 0), n_neg=meta.get("n_neg", 0),
                  window=meta.get("window", "predict"), meta=meta.get("meta", {}))
        for name, t in tensors.items():
            kind, *rest = name.split("/")
            if kind == "direction":
                out.directions[(int(rest[0]), rest[1])] = t
            elif kind == "input_mean":
                out.input_means[(int(rest[0]), rest[1])] = t
            elif kind == "resid":
                out.resid[int(rest[0])] = t
            elif kind == "proj_direction":
                out.proj_directions[(int(rest[0]), rest[1])] = t
        for k, v in out.directions.items():
            out.proj_directions.setdefault(k, v)
        return out


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def extract_directions(lm: LoadedModel, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                       batch_size: int = 16, window: Window = "predict") -> Directions:
    """Per-(layer, block) contrastive directions and output-projection input means (see module doc)."""
    if not positives or not negatives:
        raise ValueError("extract_directions needs at least one positive and one negative example")
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r} (choose from {', '.join(WINDOWS)})")
    tok, ad, dev = lm.tokenizer, lm.adapter, lm.device
    examples = [(e, 0) for e in positives] + [(e, 1) for e in negatives]
    seqs, spans = [], []
    for e, _cls in examples:
        p, r = encode_prompt(tok, e.prompt), response_ids(tok, e)
        if not r:
            raise ValueError(f"probe response {e.response!r} encodes to no tokens")
        start, end = window_bounds(len(p), len(r), window)
        seq = p + r
        seqs.append(seq[:end])  # later tokens cannot influence the window (causal attention)
        spans.append((start, end))
    counts = torch.tensor([len(positives), len(negatives)], dtype=torch.float32)

    sums: dict[tuple[str, object], torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}  # the current batch's [B, T] window weights and [B, 2] classes

    def reduce(key, x: torch.Tensor) -> None:
        # sum_b class[b, c] * sum_t w[b, t] * x[b, t, :]  -> per-class sum of per-example means
        x = x.float()
        contrib = torch.einsum("bt,bc,btd->cd", state["w"], state["cls"], x).cpu()
        sums[key] = sums[key] + contrib if key in sums else contrib

    def out_hook(key):
        return lambda _m, _inp, out: reduce(key, _first(out))

    def in_hook(key):
        return lambda _m, inp: reduce(key, inp[0])

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with ExitStack() as stack:
        for l in range(ad.n_layers):
            for b in BLOCKS:
                stack.enter_context(hooked(ad.block_output_module(l, b), out_hook(("out", (l, b))), "forward"))
                stack.enter_context(hooked(ad.out_proj(l, b), in_hook(("in", (l, b))), "pre"))
                if ad.out_proj(l, b) is not ad.block_output_module(l, b):
                    stack.enter_context(hooked(ad.out_proj(l, b), out_hook(("proj", (l, b))), "forward"))
            stack.enter_context(hooked(ad.layers[l], out_hook(("resid", l)), "forward"))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            T = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), T), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), T), dtype=torch.long)
            w = torch.zeros((len(idx), T), dtype=torch.float32)
            cls = torch.zeros((len(idx), 2), dtype=torch.float32)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
                start, end = spans[i]
                w[row, start:end] = 1.0 / (end - start)
                cls[row, examples[i][1]] = 1.0
            state["w"], state["cls"] = w.to(dev), cls.to(dev)
            ad.base(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)

    means = {k: v / counts.unsqueeze(1) for k, v in sums.items()}  # [2, d]: (positive, negative)
    out = Directions({}, {}, {}, {}, n_pos=len(positives), n_neg=len(negatives), window=window,
                     meta={"model_id": lm.model_id, "weights_sha256": lm.weights_hash})
    for l in range(ad.n_layers):
        for b in BLOCKS:
            m = means[("out", (l, b))]
            out.directions[(l, b)] = m[0] - m[1]
            out.input_means[(l, b)] = 0.5 * (means[("in", (l, b))][0] + means[("in", (l, b))][1])
            p = means.get(("proj", (l, b)))
            out.proj_directions[(l, b)] = out.directions[(l, b)] if p is None else p[0] - p[1]
        r = means[("resid", l)]
        out.resid[l] = r[0] - r[1]
    return out


@torch.no_grad()
def example_features(lm: LoadedModel, examples: Sequence[ProbeExample], batch_size: int = 16,
                     window: Window = "predict") -> torch.Tensor:
    """Each example's residual stream after every layer, averaged over its window (the positions
    :func:`extract_directions` averages): ``[n_examples, n_layers, hidden]`` float32 on the CPU. What
    a linear probe of the attribute reads (:mod:`editbench.evaluation.probing`)."""
    tok, ad, dev = lm.tokenizer, lm.adapter, lm.device
    seqs, spans = [], []
    for e in examples:
        p, r = encode_prompt(tok, e.prompt), response_ids(tok, e)
        start, end = window_bounds(len(p), len(r), window)
        seqs.append((p + r)[:end])
        spans.append((start, end))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = torch.zeros(len(examples), ad.n_layers, ad.hidden_size)
    for s in range(0, len(seqs), batch_size):
        idx = list(range(s, min(s + batch_size, len(seqs))))
        T = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        w = torch.zeros(len(idx), T)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
            a, b = spans[i]
            w[row, a:b] = 1.0 / (b - a)
        w = w.to(dev)
        feats: dict[int, torch.Tensor] = {}

        def keep(layer):
            return lambda _m, _i, o: feats.__setitem__(layer, torch.einsum("bt,btd->bd", w, _first(o).float()).cpu())

        with ExitStack() as stack:
            for l in range(ad.n_layers):
                stack.enter_context(hooked(ad.layers[l], keep(l), "forward"))
            ad.base(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
        for l in range(ad.n_layers):
            out[idx, l] = feats[l]
    return out
