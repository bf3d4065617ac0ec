"""Architecture adapters: the only place in editbench that knows module names.

Everything else (hooks, weight edits, scoring, methods) asks an :class:`ArchAdapter` for
"the attention block output of layer l", "the output projection of the MLP", "head h's columns"...

Conventions (see METHODS.md):
* the *attention block output* is what the layer adds to the residual stream for attention
  (``o_proj`` output for Llama-style models, ``post_attention_layernorm`` output for Gemma 2/3,
  ``attn.c_proj`` output for GPT-2); likewise for the MLP block;
* ``out_weight(l, block)`` returns the output projection as a ``[hidden, in]`` *view* (GPT-2's
  Conv1D stores ``[in, out]``; the view is transposed so callers never branch), so in-place edits
  of the view edit the model;
* head ``h`` owns input columns ``[h*head_dim, (h+1)*head_dim)`` of ``W_O`` (query heads, so GQA
  needs no special casing there); neuron ``j`` owns column ``j`` of ``W_down``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from editbench.errors import UnsupportedArchitecture

Block = Literal["attn", "mlp"]
BLOCKS: tuple[Block, Block] = ("attn", "mlp")


@dataclass(frozen=True)
class ArchSpec:
    """Dotted module paths; ``attn_out``/``mlp_out``/``o_proj``/``down_proj`` are relative to a layer."""

    base: str  # the decoder stack returning final-normed hidden states
    layers: str
    final_norm: str
    unembed: str
    attn_out: str  # module whose output is exactly the attention block output added to the residual
    mlp_out: str
    o_proj: str
    down_proj: str
    n_heads_attr: str = "num_attention_heads"
    conv1d: bool = False  # weights stored [in, out] (GPT-2 Conv1D)
    # the decoder stack takes a custom mask per attention type ({"full_attention": m, "sliding_attention": m})
    layer_type_masks: bool = False


_LLAMA = ArchSpec(
    base="model",
    layers="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
    o_proj="self_attn.o_proj",
    down_proj="mlp.down_proj",
)
# Gemma 2/3 normalise each block's output before adding it to the residual stream.
_GEMMA = replace(_LLAMA, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                 layer_type_masks=True)
_QWEN = replace(_LLAMA, layer_type_masks=True)
_GPT2 = ArchSpec(
    base="transformer",
    layers="transformer.h",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    attn_out="attn.c_proj",  # followed only by dropout (identity in eval)
    mlp_out="mlp.c_proj",
    o_proj="attn.c_proj",
    down_proj="mlp.c_proj",
    n_heads_attr="n_head",
    conv1d=True,
)

ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _QWEN,
    "qwen3": _QWEN,
    "gemma": _LLAMA,  # Gemma 1 has no post-block norms
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt2": _GPT2,
}


def _get(root: nn.Module, path: str, what: str, model_type: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise UnsupportedArchitecture(
                f"model type '{model_type}': expected module '{path}' for {what}, missing '{part}'"
            )
        obj = getattr(obj, part)
    return obj


class ArchAdapter:
    """Uniform access to one causal LM's components."""

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = getattr(model, "config", None)
        self.model_type = getattr(cfg, "model_type", type(model).__name__)
        if self.model_type not in ARCH_SPECS:
            raise UnsupportedArchitecture(
                f"no architecture adapter for model type '{self.model_type}' "
                f"(supported: {', '.join(sorted(ARCH_SPECS))}); add an ArchSpec in harness/arch.py"
            )
        self.spec = spec = ARCH_SPECS[self.model_type]
        self.config = cfg
        self.base = _get(model, spec.base, "the decoder stack", self.model_type)
        self.layers = list(_get(model, spec.layers, "the decoder layers", self.model_type))
        self.final_norm = _get(model, spec.final_norm, "the final norm", self.model_type)
        self.lm_head = _get(model, spec.unembed, "the unembedding", self.model_type)
        # Resolve every per-layer component now so a missing one fails at load time, not mid-run.
        self._mods = {
            (name, i): _get(layer, getattr(spec, name), name, self.model_type)
            for i, layer in enumerate(self.layers)
            for name in ("attn_out", "mlp_out", "o_proj", "down_proj")
        }
        self.n_layers = len(self.layers)
        self.n_heads = int(getattr(cfg, spec.n_heads_attr))
        self.hidden_size = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))
        w_o = self.out_weight(0, "attn")
        self.attn_in = w_o.shape[1]  # n_heads * head_dim (can differ from hidden_size, e.g. Gemma 3)
        self.head_dim = self.attn_in // self.n_heads
        cfg_hd = getattr(cfg, "head_dim", None)
        if cfg_hd is not None and cfg_hd * self.n_heads != self.attn_in:
            raise UnsupportedArchitecture(
                f"model type '{self.model_type}': o_proj input {self.attn_in} != n_heads*head_dim"
            )
        self.intermediate_size = self.out_weight(0, "mlp").shape[1]
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    # ---- modules -------------------------------------------------------------------------
    def block_output_module(self, layer: int, block: Block) -> nn.Module:
        """Module whose forward output is the block output added to the residual stream."""
        return self._mods[("attn_out" if block == "attn" else "mlp_out", layer)]

    def out_proj(self, layer: int, block: Block) -> nn.Module:
        """``W_O`` (attn) or ``W_down`` (mlp); its forward input is the per-head / per-neuron input."""
        return self._mods[("o_proj" if block == "attn" else "down_proj", layer)]

    def out_weight(self, layer: int, block: Block) -> torch.Tensor:
        """The output projection's weight as a ``[hidden, in]`` view (edits write through)."""
        w = self.out_proj(layer, block).weight
        return w.T if self.spec.conv1d else w

    def head_columns(self, head: int) -> slice:
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range (n_heads={self.n_heads})")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def block_has_post_norm(self, block: Block) -> bool:
        """True when the block output is a norm of the projection output (Gemma 2/3): then a
        change of ``W_O``/``W_down`` does not map linearly onto the residual stream."""
        return self.spec.attn_out != self.spec.o_proj if block == "attn" else self.spec.mlp_out != self.spec.down_proj

    def attention_mask_4d(self, allowed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | dict:
        """The decoder stack's ``attention_mask`` argument for a custom attention pattern:
        ``allowed[b, q, k]`` (bool) says query q may see key k; ``positions`` ``[B, T]`` are the
        position ids, from which sliding-window layers drop keys ``window`` or more positions back
        (the rule transformers applies to an ordinary causal row). Additive float masks, which both
        eager and SDPA attention accept."""
        cfg = self.config
        window = getattr(cfg, "sliding_window", None)
        dtype = self.lm_head.weight.dtype

        def additive(sliding: bool) -> torch.Tensor:
            a = allowed
            if sliding and window:
                a = a & (positions.unsqueeze(2) - positions.unsqueeze(1) < window)
            zero = torch.zeros((), dtype=dtype, device=a.device)
            return torch.where(a, zero, torch.finfo(dtype).min).unsqueeze(1)

        if self.spec.layer_type_masks:
            types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
            return {t: additive(t == "sliding_attention") for t in types}
        return additive(bool(window))

    # ---- read-out ------------------------------------------------------------------------
    def logits(self, hidden_final: torch.Tensor) -> torch.Tensor:
        """Logits from the *final-normed* hidden states the decoder stack returns."""
        out = self.lm_head(hidden_final)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def logits_from_residual(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits from an un-normed residual-stream state (logit lens / NLKA)."""
        return self.logits(self.final_norm(residual))

    def describe(self) -> dict:
        return {
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
        }


def adapter_of(model: "ArchAdapter | nn.Module | object") -> ArchAdapter:
    """The adapter for a LoadedModel (its ``.adapter``), an ArchAdapter, or a bare transformers model."""
    if isinstance(model, ArchAdapter):
        return model
    if isinstance(getattr(model, "adapter", None), ArchAdapter):
        return model.adapter  # type: ignore[attr-defined]
    return ArchAdapter(model)  # type: ignore[arg-type]
