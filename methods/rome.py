"""ROME: rank-one model editing of one MLP output projection (Meng et al. 2022, "Locating and
Editing Factual Associations in GPT"; official code kmeng01/rome).

The MLP output projection ``W`` (``W_down`` / GPT-2 ``mlp.c_proj``, the ``[hidden, in]`` view of the
adapter) of layer ``l*`` is treated as a linear associative memory mapping keys ``k`` (its inputs)
to values ``v = W k``. One fact is inserted as the pair ``(k*, v*)``:

* **key** ``k* = mean_j k(x_j + p)``: the input to ``W`` at the subject's last token of the rewrite
  prompt ``p``, averaged over the contexts ``x_j`` of :data:`CONTEXT_PREFIXES` (the bare prompt and
  five fixed prefixes);
* **value**: a vector ``delta`` added to ``W``'s output at the subject's last token (in every
  context and in the essence prompt) is optimised with Adam to minimise ::

      L(delta) = mean_j NLL(o* | x_j + p)                                  (target_new, ROME protocol)
               + kl_factor * KL(P_delta(. | s) || P(. | s))   on "{subject} is a"
               + weight_decay * ||delta|| / ||v_0||^2

  where ``P(. | s)`` is the next-token distribution at the subject's last token of the essence
  prompt ``"{subject} is a"`` and ``v_0`` the unedited output of ``W`` at the subject of the bare
  prompt; after every step ``delta`` is projected onto ``||delta|| <= clamp_norm_factor * ||v_0||``.
  Optimisation stops early once ``L < stop_loss`` (ROME: 5e-2). ``v* = W k* + delta``;
* **update** (closed form, ROME eq. 2) with ``C = E[k k^T]`` the uncentred second moment of ``W``'s
  inputs over generic text::

      Delta W = (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)

  so that ``(W + Delta W) k* = v*`` exactly, while keys ``k`` with ``k^T C^-1 k* = 0`` are untouched.
  The update is one rank-one :class:`~editbench.ColumnDelta` over all columns of ``W``
  (``up = delta / (u^T k*)``, ``down = u = C^-1 k*``), applied through the weight-edit transaction
  (bit-exact restore).

Hyperparameters (``Params``) default to ROME's GPT2-XL configuration: 20 Adam steps, lr 0.5,
``kl_factor`` 0.0625, ``weight_decay`` (ROME's ``v_weight_decay``) 0.5, ``clamp_norm_factor`` 4,
``mom2_adjustment`` on (off: ``u = k*``, i.e. ``C = I``).

Deviations from the paper / official code (all deliberate, all here):

1. **Layer.** No causal tracing: the layer is fixed, default :func:`default_rome_layer`
   ``= round(n_layers / 4)`` (a depth fraction, the same rule for every architecture). ROME edited
   layer 17 of GPT2-XL's 48 (0.35 depth), EasyEdit/ROME use 5 of 28 for GPT-J and 5 of 32 for
   Llama-2-7B (0.16-0.18); 1/4 lies between, and equals the last layer of MEMIT's default range
   (the layer whose residual MEMIT optimises). Override with ``layer``.
2. **Contexts.** ROME samples ~20 short prefixes from the model itself (5 and 10 tokens, seeded
   with "The", "Therefore", "Because", "I", "You"); we use five fixed hand-written prefixes that
   start with those words, plus the bare prompt (no sampling, so no RNG and the same contexts for
   every model).
3. **Second moment.** ROME estimates ``C`` from 100,000 Wikipedia samples (whole articles, up to the
   model's context length: tens of millions of tokens). We use the first ``mom2_n_tokens``
   (default 100,000) tokens of wikitext-2 *test* (``utility/wikitext-2-raw/wiki.test.raw`` of the
   shared data; it has ~300k SmolLM2 tokens), in windows of ``min(512, max positions)`` tokens
   (the tokenizer's own special prefix, e.g. BOS, starts each window), all positions counted,
   accumulated in float64 and stored in float32. It is cached per model weights hash, layer, token
   count, window and text hash as safetensors under ``$EDITBENCH_CACHE/mom2/`` (see
   :func:`second_moments`); ``cov_file`` loads a given file instead (a tensor ``mom2.<layer>``).
   The forward pass stops after the deepest layer needed, so the cost is a fraction of the model.
4. **Ridge.** ``C`` is inverted as ``C + mom2_ridge * (tr C / d) I`` (default 1e-5, relative to the
   mean eigenvalue; ROME inverts ``C`` as is). With our much smaller sample this keeps the solve
   finite when a direction of key space is (nearly) unseen; 0 restores the plain inverse.
5. **Value and key pairing.** ROME's code adds ``delta`` to each context's own output and then
   solves the update at the *bare* prompt's key (``W' k_bare = W k_bare + delta``); the paper
   writes the update at ``k*``. We follow the paper's formula: ``v* = W k* + delta`` and
   ``W' k* = v*``. (``W k`` is the linear part: a bias, as in GPT-2's Conv1D, cancels in
   ``v* - W k*``.)
6. **Post-norm architectures** (Gemma 2/3 normalise the MLP output before adding it): ``delta`` is
   optimised at the output of ``W`` itself (before the norm), so ``W' k* = v*`` still holds exactly.
7. The KL term is evaluated at the subject's last token of ``"{subject} is a"`` and the direction
   ``KL(edited || unedited)``, both as in the official code (``kl_div(init, new, log_target=True)``).

CPU cost (SmolLM2-135M, layer 8 of 30, 2 cores): the second moment runs the first 9 layers over
the tokens, about 1 s per 2k tokens (16k tokens: 15-20 s; the default 100k: about a minute), once
per model and layer; a fit is about 0.4 s per value step on an idle machine (8 s for 20 steps).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from editbench import ColumnDelta, ConfigError, EditRequest, LoadedModel, Method, WeightIntervention
from editbench.errors import os_reason
from editbench.data import data_file, sha256_file
from editbench.modeling.scoring import encode_prompt, encode_target, special_prefix
from editbench.methods.mega import subject_last_token
from editbench.modeling.hooks import capture, hooked
from editbench.modeling.loading import cache_dir

log = logging.getLogger(__name__)

#: The contexts keys and values are averaged / optimised over: the bare prompt and five fixed
#: prefixes starting with ROME's seed words (deviation 2 in the module docstring).
CONTEXT_PREFIXES: tuple[str, ...] = (
    "",
    "The following is a short note. ",
    "Therefore, the answer was clear. ",
    "Because of this, we looked it up. ",
    "I have read about this before. ",
    "You may find this interesting. ",
)
#: ROME's essence prompt for the KL regulariser.
KL_TEMPLATE = "{subject} is a"
#: The generic text the key second moment is estimated from (shared data bundle, relative path).
MOM2_TEXT = "utility/wikitext-2-raw/wiki.test.raw"
MOM2_WINDOW = 512  # tokens per window (capped by the model's maximum positions)


def default_rome_layer(n_layers: int) -> int:
    """ROME's default edit layer: ``round(n_layers / 4)`` (a depth fraction; see deviation 1)."""
    return min(n_layers - 1, max(0, round(n_layers / 4)))


def check_finite(obj: Any, method: str) -> None:
    """ConfigError when a float field of a Params dataclass is NaN or infinite."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"method '{method}': hyperparameter '{f.name}' must be a finite number, got {v!r}")


# ---------------------------------------------------------------------------------------------
# Key second moment C = E[k k^T]
# ---------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by a hook once the deepest layer needed has run."""


def _mom2_path(lm: LoadedModel, layer: int, n_tokens: int, window: int, text_sha: str) -> Path:
    dtype = str(lm.dtype).replace("torch.", "")
    return (cache_dir() / "mom2" / lm.weights_hash[:16]
            / f"layer{layer}-{n_tokens}tok-w{window}-{dtype}-{text_sha[:12]}.safetensors")


def _save_mom2(path: Path, layer: int, C: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save_file

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        os.close(fd)
        save_file({f"mom2.{layer}": C.detach().cpu().contiguous()}, tmp,
                  metadata={k: str(v) for k, v in meta.items()})
        os.replace(tmp, path)  # atomic: a concurrent writer of the same statistics is harmless
    except OSError as e:  # a read-only or full cache only costs recomputation
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        log.warning("could not cache the key second moment at %s: %s", path, os_reason(e))


def load_second_moments(path: str | os.PathLike, layers: Iterable[int], dim: int,
                        device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
    """Read ``mom2.<layer>`` (``[dim, dim]``) for every layer from a safetensors file; a file with a
    single tensor ``mom2`` serves a single layer. ConfigError (one line) when unusable."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    layers = list(layers)
    if not p.is_file():
        raise ConfigError(f"cov_file {p} not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            names = set(f.keys())
            out = {}
            for l in layers:
                name = f"mom2.{l}" if f"mom2.{l}" in names else ("mom2" if names == {"mom2"} and len(layers) == 1 else None)
                if name is None:
                    raise ConfigError(f"cov_file {p} has no tensor 'mom2.{l}' (has: {', '.join(sorted(names)) or 'none'})")
                out[l] = f.get_tensor(name)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is the user's one-line error
        raise ConfigError(f"cov_file {p} is not a readable safetensors file ({type(e).__name__})") from None
    for l, C in out.items():
        if tuple(C.shape) != (dim, dim) or not torch.isfinite(C).all():
            raise ConfigError(f"cov_file {p}: 'mom2.{l}' must be a finite [{dim}, {dim}] matrix, got {tuple(C.shape)}")
        out[l] = C.to(device=device, dtype=torch.float32)
    return out


@torch.no_grad()
def compute_second_moments(lm: LoadedModel, layers: Sequence[int], token_ids: Sequence[Sequence[int]]) -> dict[int, torch.Tensor]:
    """``E[k k^T]`` of the inputs to each layer's MLP output projection over every position of the
    given token windows (float64 accumulation, float32 result)."""
    ad = lm.adapter
    layers = sorted(set(layers))
    dim = ad.intermediate_size
    sums = {l: torch.zeros(dim, dim, dtype=torch.float64, device=lm.device) for l in layers}
    count = 0

    def stop(_m, _i, _o):
        raise _StopForward

    by_len: dict[int, list[Sequence[int]]] = {}
    for w in token_ids:
        by_len.setdefault(len(w), []).append(w)
    for n, group in by_len.items():
        for b in range(0, len(group), 8):
            ids = torch.tensor(group[b:b + 8], dtype=torch.long, device=lm.device)
            with capture({l: ad.out_proj(l, "mlp") for l in layers}, what="input") as cap, \
                    hooked(ad.layers[layers[-1]], stop):
                try:
                    ad.base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                except _StopForward:
                    pass
            for l in layers:
                k = cap.last(l).reshape(-1, dim).float()
                sums[l] += (k.T @ k).double()
            count += ids.numel()
    return {l: (s / count).float() for l, s in sums.items()}


def mom2_windows(lm: LoadedModel, text: str, n_tokens: int, window: int) -> list[list[int]]:
    """The first ``n_tokens`` tokens of ``text`` as windows of ``window`` tokens, each starting with
    the tokenizer's special prefix (e.g. BOS; none for GPT-2)."""
    tok = lm.tokenizer
    prefix = special_prefix(tok)
    body = window - len(prefix)
    if body < 1:
        raise ConfigError(f"mom2 window of {window} tokens is too short")
    n_chunks = math.ceil(n_tokens / window)
    ids: list[int] = []
    chars = 8 * n_tokens
    while len(ids) < n_chunks * body:  # tokenise only as much text as needed
        ids = list(tok(text[:chars], add_special_tokens=False)["input_ids"])
        if chars >= len(text):
            break
        chars *= 2
    out, left = [], n_tokens
    for s in range(0, len(ids), body):
        if left <= len(prefix):
            break
        w = (prefix + ids[s:s + body])[:left]
        out.append(w)
        left -= len(w)
    if left > 0:
        log.warning("mom2: the text has only %d tokens, fewer than the %d asked for", n_tokens - left, n_tokens)
    return out


def second_moments(lm: LoadedModel, layers: Sequence[int], n_tokens: int = 100_000,
                   cov_file: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None
                   ) -> dict[int, torch.Tensor]:
    """``C_l = E[k k^T]`` for each layer's ``W_down`` inputs: from ``cov_file`` when given, else from
    the per-model cache, else computed on wikitext-2 (:data:`MOM2_TEXT`) and cached (one
    safetensors file per layer, tensor ``mom2.<layer>``, provenance in its metadata)."""
    ad = lm.adapter
    dim = ad.intermediate_size
    if cov_file is not None:
        return load_second_moments(cov_file, layers, dim, lm.device)
    text_path = data_file(MOM2_TEXT, data_root)
    text_sha = sha256_file(text_path)
    max_pos = getattr(ad.config, "max_position_embeddings", None) or MOM2_WINDOW
    window = int(min(MOM2_WINDOW, max_pos))
    cacheable = lm.weights_hash not in ("", "unknown")
    out: dict[int, torch.Tensor] = {}
    todo = []
    for l in sorted(set(layers)):
        path = _mom2_path(lm, l, n_tokens, window, text_sha)
        if cacheable and path.is_file():
            try:
                out.update(load_second_moments(path, [l], dim, lm.device))
                continue
            except ConfigError as e:
                log.warning("ignoring a broken cache file: %s", e)
        todo.append(l)
    if todo:
        log.info("computing the key second moment of layers %s on %d tokens of %s", todo, n_tokens, MOM2_TEXT)
        windows = mom2_windows(lm, text_path.read_text(encoding="utf-8"), n_tokens, window)
        got = compute_second_moments(lm, todo, windows)
        n_real = sum(len(w) for w in windows)
        for l, C in got.items():
            out[l] = C
            if cacheable:
                meta = {"model_id": lm.model_id, "weights_sha256": lm.weights_hash, "layer": l, "n_tokens": n_real,
                        "window": window, "text": MOM2_TEXT, "text_sha256": text_sha, "statistic": "E[k k^T]",
                        "module": "input of the MLP output projection"}
                _save_mom2(_mom2_path(lm, l, n_tokens, window, text_sha), l, C, meta)
    return out


def ridge_solve(C: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(C + ridge * (tr C / d) I)^-1 rhs`` in float64."""
    C = C.double()
    d = C.shape[0]
    A = C + (ridge * float(torch.trace(C)) / d) * torch.eye(d, dtype=C.dtype, device=C.device)
    return torch.linalg.solve(A, rhs.double())


# ---------------------------------------------------------------------------------------------
# Keys and values
# ---------------------------------------------------------------------------------------------
def subject_position(lm: LoadedModel, prompt: str, subject: str) -> int:
    """Index of the subject's last token in ``encode_prompt(prompt)``; ConfigError when absent."""
    try:
        return subject_last_token(lm.tokenizer, prompt, subject)
    except ValueError as e:
        raise ConfigError(f"cannot locate the subject: {e}") from None


def right_padded(lm: LoadedModel, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (real tokens keep positions 0..L-1)."""
    T = max(len(s) for s in seqs)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(lm.device), mask.to(lm.device)


@torch.no_grad()
def subject_keys(lm: LoadedModel, request: EditRequest, layers: Sequence[int],
                 prefixes: Sequence[str] = CONTEXT_PREFIXES) -> dict[int, torch.Tensor]:
    """``k*`` per layer: the input to the layer's MLP output projection at the subject's last token
    of ``prefix + request.prompt``, averaged over ``prefixes`` (float32 ``[intermediate]``)."""
    ad = lm.adapter
    prompts = [p + request.prompt for p in prefixes]
    pos = [subject_position(lm, q, request.subject) for q in prompts]
    ids, mask = right_padded(lm, [encode_prompt(lm.tokenizer, q) for q in prompts])
    layers = sorted(set(layers))
    with capture({l: ad.out_proj(l, "mlp") for l in layers}, what="input") as cap:
        ad.base(input_ids=ids, attention_mask=mask, use_cache=False)
    rows = torch.arange(len(prompts), device=lm.device)
    cols = torch.tensor(pos, device=lm.device)
    return {l: cap.last(l)[rows, cols].float().mean(0) for l in layers}


@dataclass
class ValueFit:
    """The result of :func:`optimise_delta`."""

    delta: torch.Tensor  # [d] float32: the optimised addition at the subject's last token
    v_ref: torch.Tensor  # [d] float32: the unedited module output there, bare prompt (ROME's target_init)
    losses: list[float]  # total loss before each step (and at the stop)


def optimise_delta(lm: LoadedModel, request: EditRequest, module: torch.nn.Module, *, steps: int, lr: float,
                   kl_factor: float, weight_decay: float, clamp_norm_factor: float, stop_loss: float,
                   prefixes: Sequence[str] = CONTEXT_PREFIXES) -> ValueFit:
    """ROME's value optimisation (MEMIT's target ``z`` likewise): Adam on a vector ``delta`` added to
    ``module``'s output (first element) at the subject's last token of every context and of the
    essence prompt; loss = mean context NLL of target_new + KL + weight decay, L2-clamped after every
    step (formulas in the module docstring). Weights are never touched."""
    return optimise_deltas(lm, [request], module, steps=steps, lr=lr, kl_factor=kl_factor,
                           weight_decay=weight_decay, clamp_norm_factor=clamp_norm_factor, stop_loss=stop_loss,
                           prefixes=prefixes)[0]


def optimise_deltas(lm: LoadedModel, requests: Sequence[EditRequest], module: torch.nn.Module, *, steps: int,
                    lr: float, kl_factor: float, weight_decay: float, clamp_norm_factor: float, stop_loss: float,
                    prefixes: Sequence[str] = CONTEXT_PREFIXES) -> list[ValueFit]:
    """:func:`optimise_delta` for several edits at once: one batched forward/backward per step over
    every edit's contexts, each edit with its own ``delta`` at its own subject positions, its own
    loss, clamp and early stop. The loss summed over edits has each edit's loss as the only term
    depending on its ``delta``, and Adam is elementwise, so each ``delta`` follows the very steps it
    would alone; an edit that stopped keeps its value while the others go on. Equal to fitting one
    at a time up to the float effects of the batch's shape (right padding, matmul tiling)."""
    ad, tok = lm.adapter, lm.tokenizer
    n_ctx, n = len(prefixes), len(requests)
    seqs, subj, rows, cols, tgt_ids, lens, first_row = [], [], [], [], [], [], []
    for i, r in enumerate(requests):
        tgt = encode_target(tok, r.target_new)
        contexts = [p + r.prompt for p in prefixes]
        kl_prompt = KL_TEMPLATE.format(subject=r.subject)
        enc = [encode_prompt(tok, q) for q in contexts]
        base = len(seqs)
        first_row.append(base)
        seqs += [e + tgt[:-1] for e in enc] + [encode_prompt(tok, kl_prompt)]
        subj += [subject_position(lm, q, r.subject) for q in contexts] + [subject_position(lm, kl_prompt, r.subject)]
        rows += [base + c for c in range(n_ctx) for _ in range(len(tgt))]
        cols += [len(e) - 1 + j for e in enc for j in range(len(tgt))]
        tgt_ids += tgt * n_ctx
        lens.append(len(tgt))
    ids, mask = right_padded(lm, seqs)
    B, T = ids.shape
    dev = lm.device
    subj_mask = torch.zeros(B, T, dtype=torch.bool, device=dev)
    subj_mask[torch.arange(B, device=dev), torch.tensor(subj, device=dev)] = True
    owner = torch.tensor([i for i in range(n) for _ in range(n_ctx + 1)], device=dev)  # the edit of each row
    rows_t, cols_t, tgt_t = (torch.tensor(x, device=dev) for x in (rows, cols, tgt_ids))
    kl_rows = torch.tensor([b + n_ctx for b in first_row], device=dev)
    kl_cols = torch.tensor([subj[b + n_ctx] for b in first_row], device=dev)
    spans, k = [], 0  # each edit's slice of the target positions
    for L in lens:
        spans.append((k, k + n_ctx * L))
        k += n_ctx * L

    state: dict[str, torch.Tensor] = {}

    def add_delta(_m, _inp, out):
        x = out[0] if isinstance(out, tuple) else out
        if "delta" not in state:  # the first (unedited) pass records each edit's ROME target_init
            state["v_ref"] = torch.stack([x[b, subj[b]].detach().float() for b in first_row]).clone()
            return None
        new = x + subj_mask.unsqueeze(-1).to(x.dtype) * state["delta"][owner].unsqueeze(1).to(x.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    def forward() -> tuple[list[torch.Tensor], torch.Tensor]:
        hidden = ad.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        logp = torch.log_softmax(ad.logits(hidden[rows_t, cols_t]).float(), -1)
        tok_nll = -logp.gather(1, tgt_t.unsqueeze(1)).squeeze(1)
        nll = [tok_nll[a:b].mean() for a, b in spans]
        kl_logp = torch.log_softmax(ad.logits(hidden[kl_rows, kl_cols]).float(), -1)
        return nll, kl_logp

    losses: list[list[float]] = [[] for _ in range(n)]
    active = [True] * n
    with hooked(module, add_delta), torch.enable_grad():
        with torch.no_grad():
            _, kl_init = forward()  # unedited: the KL reference distributions and v_ref
        v_ref = state["v_ref"]
        delta = state["delta"] = torch.zeros_like(v_ref, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        max_norm = clamp_norm_factor * v_ref.norm(dim=1)
        ref_norm2 = v_ref.norm(dim=1).clamp_min(1e-12) ** 2
        for step in range(steps + 1):
            nll, kl_logp = forward()
            total = None
            for i in range(n):
                kl = F.kl_div(kl_init[i:i + 1], kl_logp[i:i + 1], log_target=True, reduction="batchmean")
                loss = nll[i] + kl_factor * kl + weight_decay * delta[i].norm() / ref_norm2[i]
                if not active[i]:
                    continue
                losses[i].append(loss.item())
                if loss.item() < stop_loss or len(losses[i]) > steps:
                    active[i] = False  # stops here, as the one-edit loop breaks before its step
                    continue
                total = loss if total is None else total + loss
            if total is None:
                break
            frozen = delta.detach().clone()
            opt.zero_grad()
            total.backward()
            opt.step()
            with torch.no_grad():
                for i in range(n):
                    if not active[i]:
                        delta[i] = frozen[i]
                        continue
                    nrm = delta[i].norm()
                    if nrm > max_norm[i]:
                        delta[i].mul_(max_norm[i] / nrm)
    return [ValueFit(delta[i].detach().clone(), v_ref[i], losses[i]) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------
def rome_update(k_star: torch.Tensor, delta: torch.Tensor, C: torch.Tensor | None, layer: int,
                ridge: float = 0.0) -> ColumnDelta:
    """``Delta W = delta (C^-1 k*)^T / ((C^-1 k*)^T k*)`` as a rank-one ColumnDelta (``C=None``: identity)."""
    u = k_star.double() if C is None else ridge_solve(C, k_star, ridge)
    denom = float(u @ k_star.double())
    if not math.isfinite(denom) or denom == 0.0:
        raise ConfigError("ROME: k*^T C^-1 k* is zero or not finite (degenerate key second moment; raise mom2_ridge)")
    return ColumnDelta(layer, "mlp", slice(None), up=(delta.double() / denom).float().unsqueeze(1),
                       down=u.float().unsqueeze(1))


#: edits whose value optimisations share one batched forward/backward (``fit_each``, MEMIT's targets):
#: large enough to amortise a step's fixed costs on a CPU, small enough for a GPU's memory at 7B
VALUE_BATCH = 16


def optimise_in_batches(lm: LoadedModel, requests: Sequence[EditRequest], module: torch.nn.Module, params,
                        batch: int = VALUE_BATCH) -> list["ValueFit"]:
    """:func:`optimise_deltas` over consecutive groups of ``batch`` requests, with ``params``' settings."""
    out: list[ValueFit] = []
    for s in range(0, len(requests), batch):
        out += optimise_deltas(lm, list(requests[s:s + batch]), module, steps=params.steps, lr=params.lr,
                               kl_factor=params.kl_factor, weight_decay=params.weight_decay,
                               clamp_norm_factor=params.clamp_norm_factor, stop_loss=params.stop_loss)
    return out


def compute_rome_delta(lm: LoadedModel, request: EditRequest, params: "ROME.Params", layer: int,
                       C: torch.Tensor | None, details_out: dict | None = None) -> ColumnDelta:
    """One ROME edit of layer ``layer``'s MLP output projection (``C`` as from :func:`second_moments`;
    ignored unless ``params.mom2_adjustment``). ``details_out`` receives ``k_star``, ``v_star``,
    ``delta``, ``v_ref``, ``losses`` for inspection."""
    ad = lm.adapter
    k_star = subject_keys(lm, request, [layer])[layer]
    fit = optimise_delta(lm, request, ad.out_proj(layer, "mlp"), steps=params.steps, lr=params.lr,
                         kl_factor=params.kl_factor, weight_decay=params.weight_decay,
                         clamp_norm_factor=params.clamp_norm_factor, stop_loss=params.stop_loss)
    cd = rome_update(k_star, fit.delta, C if params.mom2_adjustment else None, layer, params.mom2_ridge)
    if details_out is not None:
        W = ad.out_weight(layer, "mlp").detach().float()
        details_out.update(layer=layer, k_star=k_star, delta=fit.delta, v_ref=fit.v_ref,
                           v_star=W @ k_star + fit.delta, losses=fit.losses)
    return cd


class ROME(Method):
    name = "rome"
    composition = "weights"
    method_class = "weight-edit"
    description = "ROME: rank-one update of one MLP output projection (key second moment from wikitext-2)"

    @dataclass
    class Params:
        layer: int | None = None  # default: round(n_layers / 4)
        steps: int = 20  # Adam steps on the value (ROME GPT2-XL: v_num_grad_steps 20)
        lr: float = 0.5
        kl_factor: float = 0.0625
        weight_decay: float = 0.5  # ROME's v_weight_decay
        clamp_norm_factor: float = 4.0
        stop_loss: float = 0.05
        mom2_adjustment: bool = True  # False: u = k* (C = I)
        mom2_n_tokens: int = 100_000  # wikitext-2 tokens for C (ignored with cov_file)
        mom2_ridge: float = 1e-5  # relative Tikhonov term added to C before solving
        cov_file: str | None = None  # safetensors file with 'mom2.<layer>'

        def __post_init__(self):
            check_finite(self, "rome")
            if self.steps < 1 or self.lr <= 0:
                raise ConfigError("steps >= 1 and lr > 0 are required")
            if self.kl_factor < 0 or self.weight_decay < 0 or self.stop_loss < 0 or self.mom2_ridge < 0:
                raise ConfigError("kl_factor, weight_decay, stop_loss and mom2_ridge must be >= 0")
            if self.clamp_norm_factor <= 0:
                raise ConfigError(f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}")
            if self.mom2_n_tokens < 1:
                raise ConfigError(f"mom2_n_tokens must be >= 1, got {self.mom2_n_tokens}")

    def __init__(self, lm: LoadedModel, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        n = lm.adapter.n_layers
        self.layer = default_rome_layer(n) if self.params.layer is None else self.params.layer
        if not 0 <= self.layer < n:
            raise ConfigError(f"method 'rome': layer {self.layer} out of range (model has {n} layers)")
        self.C: torch.Tensor | None = None
        if self.params.mom2_adjustment:
            self.C = second_moments(lm, [self.layer], self.params.mom2_n_tokens, self.params.cov_file)[self.layer]
        elif self.params.cov_file is not None and not Path(self.params.cov_file).expanduser().is_file():
            raise ConfigError(f"cov_file {self.params.cov_file} not found")

    def fit_edit(self, request: EditRequest) -> WeightIntervention:
        return WeightIntervention([compute_rome_delta(self.lm, request, self.params, self.layer, self.C)])

    def fit_each(self, requests: Sequence[EditRequest]) -> list[WeightIntervention]:
        """Independent ROME edits whose value optimisations run :data:`VALUE_BATCH` at a time
        (:func:`optimise_deltas`); each edit equals ``fit_edit``'s up to float tolerance."""
        p, ad = self.params, self.lm.adapter
        fits = optimise_in_batches(self.lm, requests, ad.out_proj(self.layer, "mlp"), p)
        C = self.C if p.mom2_adjustment else None
        return [WeightIntervention([rome_update(subject_keys(self.lm, r, [self.layer])[self.layer], f.delta, C,
                                                self.layer, p.mom2_ridge)]) for r, f in zip(requests, fits)]


__all__ = ["CONTEXT_PREFIXES", "KL_TEMPLATE", "ROME", "ValueFit", "check_finite", "compute_rome_delta", "compute_second_moments",
           "default_rome_layer", "load_second_moments", "optimise_delta", "ridge_solve", "rome_update",
           "right_padded", "second_moments", "subject_keys", "subject_position"]
