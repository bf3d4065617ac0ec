"""Steer2Edit (arXiv 2602.09870; official code Trustworthy-ML-Lab/Steer2Edit): steering directions
turned into sparse rank-1 weight edits of attention heads and MLP neurons.

Per METHODS.md section 1, for every layer ``l`` and block ``b``, with the contrastive direction
``v = v_l^b`` (unit ``v_hat``) and the mean output-projection input ``mu`` of the probe set:

* importance: head ``h``: ``g = cos(v_hat, W_O[:, cols_h] @ mu_h)``; neuron ``j``:
  ``g_j = cos(v_hat, W_down[:, j] * mu_j)``;
* magnitude (elastic-net closed form): ``lambda = sign(g) * max(|g| - rho*alpha, 0) / (rho*(1-alpha))``
  with ``rho_attn`` / ``rho_mlp`` (``<= 0`` switches that class off) and ``alpha`` in [0, 1);
* rank-1 edit: head ``W_O[:, cols_h] += lambda * outer(v_hat, k_hat)``,
  ``k_hat = normalize(W_O[:, cols_h].T @ v_hat)``; neuron
  ``W_down[:, j] += lambda * sign(W_down[:, j] . v_hat) * v_hat``.

Every column change is a multiple of ``v_hat``, so one (layer, block) edit is stored as a single
low-rank :class:`~editbench.modeling.weights.ColumnDelta` ``up = v_hat [hidden, 1]``, ``down = [n_cols, 1]``
(the concatenated ``lambda * k_hat`` of the edited heads, or ``lambda * sign`` per edited neuron):
no dense copy of any matrix, and the evaluator's ``strength`` scales every lambda.

Directions. ``v`` is taken at the *output of* ``W_O`` / ``W_down`` (METHODS.md 1.1 and the official
code hook ``o_proj`` / ``down_proj``): the edit adds multiples of ``v_hat`` to that output, so this is
the space ``v`` must live in. It is the block output itself except on post-norm architectures
(Gemma 2/3), see :attr:`editbench.modeling.directions.Directions.proj_directions`.

Defaults. The official code defaults to both classes off (``rho = -1``) with ``alpha = 0.95``; the
paper's configs are tuned for 2B-8B chat models (e.g. LLaMA-2-7B-Chat: rho_attn 0.18, rho_mlp 0.55,
alpha 0.8) and, on SmolLM2-135M with knowledge-edit probes (median |g| about 0.1 for heads and
0.04 for neurons, 99th percentile of neurons about 0.15), that config edits ~75 heads but only a
handful of neurons. Ours: |g| thresholds ``rho*alpha`` of 0.16 (heads) and 0.12 (neurons, about
the top 4%), i.e. typically 50-105 of 270 heads and 1.3k-2.3k of 46k neurons (~40k stored values
per edit), with ``alpha = 0.5`` so that lambdas stay moderate (at most ``(1-0.16)/0.16 ~ 5`` for
heads): on 100 CounterFact cases the ROME Score is flat (48-49) from strength 0.5 to 2, efficacy
peaks at 2, and at strength 4 the edit starts to destroy the model's predictions (EasyEdit
locality 8%).
The strength multiplies every lambda, so strength ``s`` with ``alpha = 0.5`` equals strength
``s/4`` with ``alpha = 0.8`` at the same thresholds.

Knowledge-editing adaptation (ours, not in the paper): a CounterFact edit is turned into a probe
pair, the rewrite prompt completed with ``" " + target_new`` (positive) versus with
``" " + target_true`` (negative), tokenised as the ROME scorer does. Only the
:class:`~editbench.requests.EditRequest` is used. With one probe pair, ``mu`` comes from those two
examples. Because both examples share the prompt, the paper's averaging window ("predict": the
positions predicting response tokens) collapses to the single shared last prompt position for
one-token targets and gives ``v = 0`` (no edit); the ``window`` parameter therefore defaults to
``"response"`` for knowledge edits (the positions holding the target tokens), see
:mod:`editbench.modeling.directions`. Behaviour probes (:meth:`Steer2Edit.fit_behaviour`) use the paper's window.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from editbench.modeling.arch import BLOCKS, ArchAdapter, adapter_of
from editbench.modeling.directions import WINDOWS, Directions, ProbeExample, edit_probe_pair, extract_directions
from editbench.errors import ConfigError
from editbench.modeling.interventions import WeightIntervention
from editbench.modeling.loading import LoadedModel
from editbench.requests import EditRequest
from editbench.modeling.weights import ColumnDelta

from editbench.plugins.method import Method

Key = tuple[int, str]
_FORMAT = "editbench-steer2edit-rank1/1"


def elastic_net_lambda(g: torch.Tensor, rho: float, alpha: float) -> torch.Tensor:
    """Closed-form elastic-net magnitude; all zeros when ``rho <= 0`` (class switched off)."""
    if rho <= 0:
        return torch.zeros_like(g)
    return torch.sign(g) * torch.clamp(g.abs() - rho * alpha, min=0.0) / (rho * (1.0 - alpha))


def validate_hyperparameters(rho_attn: float, rho_mlp: float, alpha: float) -> None:
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (rho_attn, rho_mlp, alpha)):
        raise ConfigError(f"steer2edit: rho_attn, rho_mlp and alpha must be finite numbers, got "
                          f"{rho_attn!r}, {rho_mlp!r}, {alpha!r}")
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"steer2edit: alpha must be in [0, 1) (the closed form divides by 1 - alpha), got {alpha}")


@dataclass
class EditedComponent:
    """One edited head or neuron. ``lam`` is the signed elastic-net lambda (before strength);
    ``k_hat`` is the unit key of a head (None for neurons); ``sign`` is ``sign(W_down[:, j] . v_hat)``
    for neurons (1 for heads), so the column change is ``lam * sign * v_hat`` (neuron) or
    ``lam * outer(v_hat, k_hat)`` (head)."""

    layer: int
    block: str
    index: int
    g: float
    lam: float
    k_hat: torch.Tensor | None = None
    sign: float = 1.0

    def to_json(self) -> dict:
        return {"layer": self.layer, "block": self.block, "index": self.index, "g": self.g,
                "lambda": self.lam, "sign": self.sign}


@dataclass
class Rank1Edits(WeightIntervention):
    """Steer2Edit's edits: a :class:`WeightIntervention` (``with edits.apply(lm, strength):``,
    bit-exact restore) that also lists every edited component and can be saved / loaded."""

    components: list[EditedComponent] = field(default_factory=list)
    v_hats: dict[Key, torch.Tensor] = field(default_factory=dict)
    head_dim: int = 0
    config: dict = field(default_factory=dict)
    #: the model it was computed for: ``with edits:`` applies them to it at strength 1
    bound: ArchAdapter | None = field(default=None, repr=False, compare=False)

    def __enter__(self) -> "Rank1Edits":
        if self.bound is None:
            raise ValueError("these edits are bound to no model (loaded from disk): use `with edits.apply(model, strength):`")
        self._active = self.apply(self.bound, 1.0)
        self._active.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        active, self._active = self._active, None
        active.__exit__(*exc)

    @classmethod
    def from_components(cls, components: Sequence[EditedComponent], v_hats: Mapping[Key, torch.Tensor],
                        head_dim: int, config: dict | None = None) -> "Rank1Edits":
        """Build the low-rank deltas: one ColumnDelta per edited (layer, block)."""
        groups: dict[Key, list[EditedComponent]] = {}
        for c in components:
            groups.setdefault((c.layer, c.block), []).append(c)
        deltas = []
        for (layer, block), comps in sorted(groups.items()):
            comps.sort(key=lambda c: c.index)
            if block == "attn":
                cols = torch.cat([torch.arange(c.index * head_dim, (c.index + 1) * head_dim) for c in comps])
                down = torch.cat([c.lam * c.k_hat for c in comps])  # type: ignore[operator]
            else:
                cols = torch.tensor([c.index for c in comps], dtype=torch.long)
                down = torch.tensor([c.lam * c.sign for c in comps], dtype=torch.float32)
            deltas.append(ColumnDelta(layer, block, cols, up=v_hats[(layer, block)].float().reshape(-1, 1),  # type: ignore[arg-type]
                                      down=down.float().reshape(-1, 1)))
        used = {k: v_hats[k] for k in groups}
        return cls(deltas=deltas, components=list(components), v_hats=used, head_dim=head_dim, config=dict(config or {}))

    # ---- inspection ----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {b: sum(c.block == b for c in self.components) for b in BLOCKS}

    def describe(self) -> dict:
        n = self.counts()
        return {**super().describe(), "edited_heads": n["attn"], "edited_neurons": n["mlp"]}

    # ---- persistence (safetensors + JSON, no pickle) ----------------------------------------
    def save(self, directory: str | Path) -> None:
        """Writes ``rank1_edits.safetensors`` (v_hat per edited block, k_hat per head, float64
        g / lambda / sign) and ``rank1_edits.json`` (a readable list of components + config)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {f"v_hat/{l}/{b}": v.contiguous() for (l, b), v in self.v_hats.items()}
        for i, c in enumerate(self.components):
            if c.k_hat is not None:
                tensors[f"k_hat/{i}"] = c.k_hat.contiguous()
        tensors["g"] = torch.tensor([c.g for c in self.components], dtype=torch.float64)
        tensors["lambda"] = torch.tensor([c.lam for c in self.components], dtype=torch.float64)
        tensors["sign"] = torch.tensor([c.sign for c in self.components], dtype=torch.float64)
        save_file(tensors, str(d / "rank1_edits.safetensors"))
        meta = {"format": _FORMAT, "head_dim": self.head_dim, "config": self.config,
                "components": [c.to_json() for c in self.components]}
        (d / "rank1_edits.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, model: LoadedModel | ArchAdapter | nn.Module | None = None) -> "Rank1Edits":
        """Read edits written by :meth:`save`; ``model`` (optional) binds them for ``with edits:``."""
        d = Path(directory)
        meta = json.loads((d / "rank1_edits.json").read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{d}: not a Steer2Edit edit file (format {meta.get('format')!r})")
        t = load_file(str(d / "rank1_edits.safetensors"))
        v_hats = {(int(k.split("/")[1]), k.split("/")[2]): v for k, v in t.items() if k.startswith("v_hat/")}
        comps = []
        for i, c in enumerate(meta["components"]):
            comps.append(EditedComponent(layer=c["layer"], block=c["block"], index=c["index"], g=float(t["g"][i]),
                                         lam=float(t["lambda"][i]), k_hat=t.get(f"k_hat/{i}"), sign=float(t["sign"][i])))
        edits = cls.from_components(comps, v_hats, meta["head_dim"], meta["config"])
        edits.bound = None if model is None else adapter_of(model)
        return edits


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_rank1_edits(model: LoadedModel | ArchAdapter | nn.Module, directions: Mapping[Key, torch.Tensor],
                        input_means: Mapping[Key, torch.Tensor], rho_attn: float, rho_mlp: float,
                        alpha: float) -> Rank1Edits:
    """Steer2Edit's importance, elastic-net magnitude and rank-1 factors for every head and neuron.

    ``directions[(l, b)]`` is ``v_l^b`` (hidden size); ``input_means[(l, "attn")]`` is the mean
    ``W_O`` input (n_heads*head_dim), ``input_means[(l, "mlp")]`` the mean ``W_down`` input.
    Missing keys and zero directions are skipped (nothing to steer towards). Computed in float32 on
    the weights' device, one matrix at a time; the (small) factors are kept on the CPU.
    """
    validate_hyperparameters(rho_attn, rho_mlp, alpha)
    ad = adapter_of(model)
    rho = {"attn": float(rho_attn), "mlp": float(rho_mlp)}
    comps: list[EditedComponent] = []
    v_hats: dict[Key, torch.Tensor] = {}
    for l in range(ad.n_layers):
        for b in BLOCKS:
            if rho[b] <= 0 or (l, b) not in directions:
                continue
            W = ad.out_weight(l, b).detach().float()  # [hidden, in], on the model's device
            v = directions[(l, b)].detach().float().to(W.device)
            norm = v.norm()
            if norm == 0 or not torch.isfinite(norm):
                continue
            v_hat = v / norm
            mu = input_means[(l, b)].detach().float().to(W.device)
            if mu.shape != (W.shape[1],):
                raise ValueError(f"input_means[{(l, b)}] has shape {tuple(mu.shape)}, expected ({W.shape[1]},)")
            if b == "attn":
                H, D = ad.n_heads, ad.head_dim
                per_head = (W.view(-1, H, D) * mu.view(1, H, D)).sum(-1)  # [hidden, H]: W_O[:, cols_h] @ mu_h
                g = F.cosine_similarity(v_hat.unsqueeze(1), per_head, dim=0)
                lam = elastic_net_lambda(g, rho[b], alpha)
                keys = torch.einsum("dhk,d->hk", W.view(-1, H, D), v_hat)  # [H, D]: W_O[:, cols_h].T @ v_hat
                g, lam, keys = g.cpu(), lam.cpu(), keys.cpu()
                for h in torch.nonzero(lam).flatten().tolist():
                    kn = keys[h].norm()
                    if kn == 0:
                        continue
                    comps.append(EditedComponent(l, b, h, float(g[h]), float(lam[h]), k_hat=keys[h] / kn))
            else:
                g = F.cosine_similarity(v_hat.unsqueeze(1), W * mu.unsqueeze(0), dim=0)
                lam = elastic_net_lambda(g, rho[b], alpha)
                g, lam, signs = g.cpu(), lam.cpu(), torch.sign(W.T @ v_hat).cpu()
                for j in torch.nonzero((lam != 0) & (signs != 0)).flatten().tolist():
                    comps.append(EditedComponent(l, b, j, float(g[j]), float(lam[j]), sign=float(signs[j])))
            v_hats[(l, b)] = v_hat.cpu()
    cfg = {"rho_attn": float(rho_attn), "rho_mlp": float(rho_mlp), "alpha": float(alpha)}
    edits = Rank1Edits.from_components(comps, v_hats, ad.head_dim, cfg)
    edits.bound = ad
    return edits


# ---------------------------------------------------------------------------------------------
class Steer2Edit(Method):
    name = "steer2edit"
    composition = "weights"
    method_class = "weight-edit"
    description = "Steer2Edit: steering directions -> sparse rank-1 head/neuron weight edits (elastic net)"
    supports = frozenset({"edit", "behaviour"})

    @dataclass
    class Params:
        """``rho_attn``/``rho_mlp``: elastic-net budgets (<= 0: class off); ``alpha`` in [0, 1).
        Defaults are ours (the official code's switch both classes off), chosen on SmolLM2 with
        knowledge-edit probes, see the module doc. ``window``: averaging window of the
        knowledge-edit probe (see module doc)."""

        rho_attn: float = 0.32
        rho_mlp: float = 0.24
        alpha: float = 0.5
        window: str = "response"
        batch_size: int = 16

        def __post_init__(self):
            validate_hyperparameters(self.rho_attn, self.rho_mlp, self.alpha)
            if self.window not in WINDOWS:
                raise ConfigError(f"steer2edit: window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
            if self.batch_size < 1:
                raise ConfigError(f"steer2edit: batch_size must be >= 1, got {self.batch_size}")

    def edits_from(self, d: Directions) -> Rank1Edits:
        p = self.params
        return compute_rank1_edits(self.lm, d.proj_directions, d.input_means, p.rho_attn, p.rho_mlp, p.alpha)

    def fit_edit(self, request: EditRequest) -> Rank1Edits:
        pos, neg = edit_probe_pair(request, self.lm.tokenizer)
        return self.edits_from(extract_directions(self.lm, [pos], [neg], batch_size=2, window=self.params.window))

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> Rank1Edits:
        """Behaviour probes (safety, truthfulness, ...) use the paper's window by default."""
        d = extract_directions(self.lm, positives, negatives, batch_size=self.params.batch_size, window=window)  # type: ignore[arg-type]
        return self.edits_from(d)
