"""MEMIT: mass-editing memory over a range of MLP layers (Meng et al. 2023, "Mass-Editing Memory in
a Transformer"; official code kmeng01/memit).

For edits ``i = 1..n`` (one per ``fit_edit`` call here; :func:`compute_memit_deltas` takes a batch)
and a range ``R = (l_1 < ... < l_m)`` of layers whose MLP output projections ``W_l`` are updated:

1. **Targets.** ``z_i = h_i^L + delta_i`` at the residual stream after layer ``L = max(R)``, at the
   subject's last token of the bare rewrite prompt, where ``delta_i`` is optimised exactly as ROME's
   value (see :func:`editbench.methods.rome.optimise_delta`: Adam on a vector added to layer ``L``'s
   output at the subject's last token of every context and of ``"{subject} is a"``; loss = mean
   context NLL of target_new + ``kl_factor`` * KL + ``weight_decay`` * ``||delta||/||h^L||^2``;
   ``||delta|| <= clamp_norm_factor * ||h^L||``), on the unedited model.
2. **Spreading.** For ``l = l_1, ..., l_m`` in order, with the updates of the earlier layers of the
   range already applied (inside a weight-edit transaction, so nothing is left behind):
   keys ``K_l = [k_1 ... k_n]`` (inputs to ``W_l`` at the subject's last token, averaged over the
   ROME contexts), the current residual ``h_i^L`` (recomputed), and ::

       R_l = (Z - H^L) / (m - j)                 (j = index of l in R: the rest is spread evenly)
       Delta W_l = R_l K_l^T (lambda C_l + K_l K_l^T)^-1

   with ``C_l = E[k k^T]`` the uncentred second moment of ``W_l``'s inputs on generic text and
   ``lambda = mom2_update_weight`` (15,000 in MEMIT's GPT-J and EasyEdit's Llama configurations).
   Each ``Delta W_l`` is a rank-``n`` :class:`~editbench.ColumnDelta` over all columns
   (``up = R_l``, ``down = (lambda C_l + K_l K_l^T)^-1 K_l``), applied through the weight-edit
   transaction (bit-exact restore).

Defaults follow MEMIT's GPT-J configuration where it has one: 25 Adam steps, lr 0.5, ``kl_factor``
0.0625, ``weight_decay`` 0.5, ``clamp_norm_factor`` 0.75, ``mom2_update_weight`` 15,000.

Deviations from the paper / official code:

1. **Layers.** A fixed range by depth fraction, the same rule for every architecture:
   :func:`default_memit_layers` ``= round(n/8) .. round(n/4)`` (SmolLM2's 30 layers: 4-8; 32 layers:
   4-8 as EasyEdit's Llama-2-7B; 28: 4-7 vs MEMIT's 3-8 for GPT-J; GPT2-XL's 48: 6-12 vs 13-17). The
   last layer equals ROME's default layer. Override with ``layers``.
2. **Contexts, second moment, ridge:** as ROME here (fixed prefixes instead of ~20 model-sampled
   ones; ``C_l`` from ``mom2_n_tokens`` tokens of wikitext-2 test instead of 100,000 Wikipedia
   samples, cached per model and layer, or ``cov_file``; ``mom2_ridge`` adds
   ``ridge * tr(A)/d * I`` to ``A = lambda C_l + K K^T`` before solving, default 1e-5, 0 = plain).
   See :mod:`editbench.methods.rome`.
3. **Post-norm architectures** (Gemma 2/3: the MLP output is normalised before it is added to the
   residual stream, so a change of ``W_l``'s output is not a change of the residual): MEMIT is
   defined for architectures without that norm. There we turn the residual target into a target
   for ``W_l``'s output: ``o* = argmin_o ||N(o) - (N(o_i) + r_i)||`` (L-BFGS through the layer's
   own post-norm module ``N``, from the adapter; ``o_i`` the current output of ``W_l`` at the bare
   prompt's subject token) and use ``R_l = O* - O``. Whatever the norm cannot realise is left to
   the later layers (the residual is re-measured after every layer).
4. The ROME-protocol scoring of the target (``" " + target``) and the KL term's position and
   direction are as in :mod:`editbench.methods.rome` (deviation 7 there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from editbench import ColumnDelta, ConfigError, EditRequest, LoadedModel, Method, WeightIntervention
from editbench.modeling.scoring import encode_prompt
from editbench.methods.rome import (check_finite, default_rome_layer, optimise_in_batches, ridge_solve, right_padded,
                                    second_moments, subject_keys, subject_position)
from editbench.modeling.hooks import capture
from editbench.modeling.weights import WeightEditTransaction


def default_memit_layers(n_layers: int) -> tuple[int, ...]:
    """``round(n/8) .. round(n/4)`` inclusive (deviation 1); ends at ROME's default layer."""
    hi = default_rome_layer(n_layers)
    lo = min(hi, max(0, round(n_layers / 8)))
    return tuple(range(lo, hi + 1))


@torch.no_grad()
def _at_subject(lm: LoadedModel, requests: Sequence[EditRequest], modules: Mapping[str, torch.nn.Module]
                ) -> dict[str, torch.Tensor]:
    """Each module's output (first element) at the subject's last token of each bare rewrite prompt,
    ``{name: [n, d]}`` float32."""
    ad = lm.adapter
    pos = [subject_position(lm, r.prompt, r.subject) for r in requests]
    ids, mask = right_padded(lm, [encode_prompt(lm.tokenizer, r.prompt) for r in requests])
    with capture(dict(modules)) as cap:
        ad.base(input_ids=ids, attention_mask=mask, use_cache=False)
    rows = torch.arange(len(requests), device=lm.device)
    cols = torch.tensor(pos, device=lm.device)
    return {k: cap.last(k)[rows, cols].float() for k in modules}


def invert_post_norm(norm: torch.nn.Module, target: torch.Tensor, init: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """``argmin_o ||norm(o) - target||^2`` row-wise (``[n, d]``), by L-BFGS from ``init`` (deviation 3)."""
    dtype = next(norm.parameters(), torch.empty(0, dtype=init.dtype)).dtype
    o = init.detach().float().clone().requires_grad_(True)
    t = target.detach().float()
    opt = torch.optim.LBFGS([o], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((norm(o.to(dtype)).float() - t) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return o.detach()


def memit_solve(params: "MEMIT.Params") -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """MEMIT's key side of the update: ``(lambda C_l + K K^T)^-1 K`` (float64, with the ridge)."""
    def solve(layer: int, K: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return ridge_solve(params.mom2_update_weight * C + K @ K.T, K, params.mom2_ridge)

    return solve


def memit_targets(lm: LoadedModel, requests: Sequence[EditRequest], params: "MEMIT.Params",
                  last_layer: int) -> list[torch.Tensor]:
    """``z_i = h_i^L + delta_i`` of each request (ROME's value optimisation at the output of layer
    ``L``), :data:`~editbench.methods.rome.VALUE_BATCH` requests per batched optimisation."""
    fits = optimise_in_batches(lm, requests, lm.adapter.layers[last_layer], params)
    return [f.v_ref + f.delta for f in fits]


def compute_memit_deltas(lm: LoadedModel, requests: Sequence[EditRequest], params: "MEMIT.Params",
                         layers: Sequence[int] | None = None, moments: Mapping[int, torch.Tensor] | None = None,
                         details_out: dict | None = None,
                         solve: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         targets: Sequence[torch.Tensor] | None = None) -> list[ColumnDelta]:
    """MEMIT's update for a batch of edits: one ColumnDelta per layer of the range (formulas in the
    module docstring). ``layers`` default to ``params.layers`` or :func:`default_memit_layers`;
    ``moments`` (``{layer: C_l}``) to :func:`~editbench.methods.rome.second_moments`.
    ``details_out`` receives ``z`` ``[hidden, n]`` and per layer (``details_out[l]``) the keys ``K``,
    the current residual ``H``, the residual share ``resid``, the ``R`` applied and ``C``.
    ``solve(layer, K, C)`` gives the key side ``down`` of ``Delta W_l = R down^T`` (float64 ``[in,
    n]``; default :func:`memit_solve`): AlphaEdit changes only this. ``targets``: the ``z_i``
    already optimised (:func:`memit_targets`), e.g. for many independent edits at once."""
    solve = solve or memit_solve(params)
    if not requests:
        raise ConfigError("MEMIT: no edit requests given")
    ad = lm.adapter
    n_layers = ad.n_layers
    layers = tuple(sorted(set(layers if layers is not None else (params.layers or default_memit_layers(n_layers)))))
    if not layers or not all(0 <= l < n_layers for l in layers):
        raise ConfigError(f"MEMIT: layers {list(layers)} invalid for a {n_layers}-layer model")
    if moments is None:
        moments = second_moments(lm, layers, params.mom2_n_tokens, params.cov_file)
    L = layers[-1]
    # 1. target residuals z_i at layer L (unedited model), VALUE_BATCH edits per optimisation
    if targets is None:
        targets = memit_targets(lm, requests, params, L)
    Z = torch.stack(list(targets), 1).double()  # [hidden, n]
    if details_out is not None:
        details_out["z"] = Z.float()
    post_norm = ad.block_has_post_norm("mlp")
    deltas: list[ColumnDelta] = []
    # 2. spread the residual over the range, re-measuring after every layer's update
    for j, l in enumerate(layers):
        with WeightEditTransaction(ad, deltas):
            keys = [subject_keys(lm, r, [l])[l] for r in requests]
            mods = {"h": ad.layers[L], **({"o": ad.out_proj(l, "mlp")} if post_norm else {})}
            cur = _at_subject(lm, requests, mods)
            K = torch.stack(keys, 1).double()  # [in, n]
            H = cur["h"].T.double()  # [hidden, n]
            resid = (Z - H) / (len(layers) - j)
            if post_norm:
                norm = ad.block_output_module(l, "mlp")
                o = cur["o"]
                with torch.no_grad():
                    want = norm(o.to(lm.dtype)).float() + resid.T.float()
                R = (invert_post_norm(norm, want, o) - o).T.double()
            else:
                R = resid
        C = moments[l].to(K.device).double()
        adj = solve(l, K, C)  # MEMIT: (lambda C + K K^T)^-1 K, [in, n]
        if not torch.isfinite(adj).all():
            raise ConfigError(f"{type(params).__qualname__.split('.')[0]}: the key system is singular at layer {l}; "
                              "raise its ridge")
        deltas.append(ColumnDelta(l, "mlp", slice(None), up=R.float(), down=adj.float()))
        if details_out is not None:
            details_out[l] = {"K": K.float(), "H": H.float(), "resid": resid.float(), "R": R.float(), "C": C.float()}
    return deltas


class MEMIT(Method):
    name = "memit"
    composition = "weights"
    method_class = "weight-edit"
    supports = frozenset({"edit", "batch"})
    description = "MEMIT: residual target at the last layer of an MLP range, spread as least-squares updates"

    @dataclass
    class Params:
        layers: tuple[int, ...] | None = None  # default: round(n/8) .. round(n/4)
        steps: int = 25
        lr: float = 0.5
        kl_factor: float = 0.0625
        weight_decay: float = 0.5
        clamp_norm_factor: float = 0.75
        stop_loss: float = 0.05
        mom2_update_weight: float = 15000.0  # lambda in (lambda C + K K^T)
        mom2_n_tokens: int = 100_000
        mom2_ridge: float = 1e-5
        cov_file: str | None = None  # safetensors file with 'mom2.<layer>' for every layer of the range

        def __post_init__(self):
            check_finite(self, "memit")
            if self.steps < 1 or self.lr <= 0:
                raise ConfigError("steps >= 1 and lr > 0 are required")
            if self.kl_factor < 0 or self.weight_decay < 0 or self.stop_loss < 0 or self.mom2_ridge < 0:
                raise ConfigError("kl_factor, weight_decay, stop_loss and mom2_ridge must be >= 0")
            if self.clamp_norm_factor <= 0 or self.mom2_update_weight <= 0:
                raise ConfigError("clamp_norm_factor and mom2_update_weight must be > 0")
            if self.mom2_n_tokens < 1:
                raise ConfigError(f"mom2_n_tokens must be >= 1, got {self.mom2_n_tokens}")
            if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
                raise ConfigError(f"layers must be a non-empty list of distinct layers, got {list(self.layers)}")

    def __init__(self, lm: LoadedModel, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        n = lm.adapter.n_layers
        layers = self.params.layers if self.params.layers is not None else default_memit_layers(n)
        bad = [l for l in layers if not 0 <= l < n]
        if bad:
            raise ConfigError(f"method 'memit': layer {bad[0]} out of range (model has {n} layers)")
        self.layers = tuple(sorted(layers))
        self.C = second_moments(lm, self.layers, self.params.mom2_n_tokens, self.params.cov_file)

    def fit_edit(self, request: EditRequest) -> WeightIntervention:
        return WeightIntervention(compute_memit_deltas(self.lm, [request], self.params, self.layers, self.C))

    def fit_each(self, requests: Sequence[EditRequest]) -> list[WeightIntervention]:
        """Independent one-edit MEMIT updates whose targets are optimised together (the spreading
        stays per edit: each edit's update is computed on the unedited model, as ``fit_edit``'s)."""
        zs = memit_targets(self.lm, requests, self.params, self.layers[-1])
        return [WeightIntervention(compute_memit_deltas(self.lm, [r], self.params, self.layers, self.C, targets=[z]))
                for r, z in zip(requests, zs)]

    def fit_edits(self, requests: Sequence[EditRequest]) -> WeightIntervention:
        """A batch of edits in one least-squares update per layer (MEMIT's own batch form)."""
        return WeightIntervention(compute_memit_deltas(self.lm, list(requests), self.params, self.layers, self.C))


__all__ = ["MEMIT", "compute_memit_deltas", "default_memit_layers", "invert_post_norm"]
