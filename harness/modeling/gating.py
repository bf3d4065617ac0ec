"""The subject scope gate of gated activation editors (MEGA, ``steering-gated``), in one place.

[recon] A gated editor stores, per edit, *keys*: the hidden states after ``gate_layer`` at the
subject's last token of the rewrite prompt, alone and under the fixed neutral prefixes
:data:`TRAIN_PREFIXES` (a subject that opens the prompt sits on the outlier first position and
lacks its mid-sentence leading space; one key from the bare prompt missed such paraphrases). A
prompt is *in scope* when some prompt position's state there has cosine similarity >=
``threshold`` with some key. With ``norm="standardize"`` (default) keys and queries are first
standardised per dimension by the gate layer's mean and std over the neutral sentences
:data:`BACKGROUND` (every token but the first): raw cosines are dominated by outlier dimensions
the residual stream shares across all tokens (Gemma 3), which put every prompt in scope.

* :class:`SubjectGate` - the method side: gate statistics of one model, keys of an edit, scores.
* :class:`GatedIntervention` - vectors added only to rows whose prompt is in scope, row-batchable
  (each row its own keys and vectors); rows out of scope get nothing added, so they are
  bit-identical to the unedited model. Vectors at positions ``"last"`` land on the prompt's last
  token (``subject_positions`` adds the positions the gate matched), ``"all"`` on every position,
  generated tokens included.

When every steered site lies after the gate layer the gate is decided inside the forward pass
(a hook on the gate layer, as MEGA always did); otherwise (vectors at or before the gate layer,
e.g. steering at every layer) a first, unsteered pass over the same inputs, stopped right after
the gate layer, decides it: the same states, the same decision.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from editbench.errors import ConfigError
from editbench.modeling.hooks import capture, hooked
from editbench.modeling.interventions import ActivationIntervention, SteeringVector, _row_masks, site_module
from editbench.modeling.scoring import Batch, RowsContext, _layout, encode_prompt
from editbench.requests import EditRequest

TRAIN_PREFIXES = ("", "Here is a fact. ", "I read this: ")  # [recon] fixed neutral contexts
# [recon] neutral text for the gate's per-dimension statistics (no CounterFact subjects)
BACKGROUND = (
    "The weather was mild and the streets were quiet in the morning.",
    "She opened the book and began to read the first chapter aloud.",
    "Prices rose slowly over the year as demand recovered.",
    "The river runs through the valley before it reaches the sea.",
    "After dinner they walked along the shore and talked about their plans.",
    "A small committee will review the proposal next week.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "He repaired the old bicycle and painted it bright green.",
    "Most of the students finished the exam before the bell rang.",
    "The museum is closed on Mondays but open late on Fridays.",
    "Scientists measured the temperature of the lake every hour.",
    "The train was delayed because of snow on the tracks.",
)
GATE_NORMS = ("standardize", "none")
DEFAULT_THRESHOLD = 0.8


def default_gate_layer(n_layers: int) -> int:
    """The gate layer when none is given: 1/6 of the depth (at least 1)."""
    return max(1, n_layers // 6)


def check_gate_params(method: str, norm: str, threshold: float) -> None:
    """The gate hyperparameters every gated method validates the same way (in ``Params``)."""
    if norm not in GATE_NORMS:
        raise ConfigError(f"gate_norm must be 'standardize' or 'none', got {norm!r}")
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"gate_threshold is a cosine similarity in [-1, 1], got {threshold}")


def subject_last_token(tokenizer, prompt: str, subject: str) -> int:
    """Index of the subject's last token in ``encode_prompt(prompt)`` (last match of the subject)."""
    start = prompt.rfind(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not in prompt {prompt!r}")
    end = start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not inside:
        raise ValueError(f"subject {subject!r} maps to no tokens in {prompt!r}")
    return inside[-1]


def prompt_batch(lm, prompts: list[str]) -> Batch:
    """A right-padded batch of exactly the prompts' tokens."""
    enc = [encode_prompt(lm.tokenizer, q) for q in prompts]
    # a one-token dummy target makes _layout return exactly the prompt tokens
    return _layout(lm, enc, [[0]] * len(enc), range(len(enc)))[0]


def gate_similarity(h: torch.Tensor, mask: torch.Tensor, key: torch.Tensor,
                    center: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    """Per position of one prompt (states ``h`` [T, d]): the best cosine with any (standardised) key;
    -1 where ``mask`` is False (padding)."""
    q = h.float()
    if center is not None:
        q = (q - center.to(q.device)) / scale.to(q.device)
    keys = key.to(q.device).float().reshape(-1, q.shape[-1])
    sim = torch.cosine_similarity(q.unsqueeze(1), keys.unsqueeze(0), dim=-1).amax(-1)
    return torch.where(mask, sim, torch.full_like(sim, -1.0))


class SubjectGate:
    """The scope gate of one model at one layer: standardisation statistics, keys, scores."""

    def __init__(self, lm, layer: int, threshold: float = DEFAULT_THRESHOLD, norm: str = "standardize"):
        check_gate_params("gate", norm, threshold)
        if not 0 <= layer < lm.adapter.n_layers:
            raise ConfigError(f"gate_layer {layer} invalid for a {lm.adapter.n_layers}-layer model")
        self.lm, self.layer, self.threshold, self.norm = lm, layer, float(threshold), norm
        self.center: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        if norm == "standardize":
            self.center, self.scale = self._stats()

    @torch.no_grad()
    def _states(self, prompts: list[str]) -> tuple[torch.Tensor, Batch]:
        ad = self.lm.adapter
        batch = prompt_batch(self.lm, prompts)
        with capture({"k": ad.layers[self.layer]}) as cap:
            ad.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return cap.last("k"), batch

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of the gate layer's states over ``BACKGROUND`` (first token out)."""
        h, batch = self._states(list(BACKGROUND))
        mask = batch.prompt_mask().clone()
        mask[torch.arange(mask.shape[0]), mask.float().argmax(1)] = False  # each row's first token
        x = h[mask].float()
        return x.mean(0), x.std(0).clamp_min(1e-6 * float(x.std(0).max()) + 1e-12)

    def key(self, request: EditRequest) -> torch.Tensor:
        """Keys ``[len(TRAIN_PREFIXES), d]``: the subject's last-token state under each prefix, standardised."""
        prompts = [pre + request.prompt for pre in TRAIN_PREFIXES]
        pos = [subject_last_token(self.lm.tokenizer, q, request.subject) for q in prompts]
        h, _ = self._states(prompts)
        key = torch.stack([h[i, j] for i, j in enumerate(pos)]).float()  # right-padded rows
        if self.center is not None:
            key = (key - self.center) / self.scale
        return key.clone()

    def scores(self, key: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The gate's decision statistic for each prompt: its best position's similarity to ``key``."""
        h, batch = self._states(list(prompts))
        mask = batch.prompt_mask()
        return [float(gate_similarity(h[r], mask[r], key, self.center, self.scale).max()) for r in range(len(prompts))]

    def fields(self, request: EditRequest) -> dict[str, Any]:
        """The gate fields of a :class:`GatedIntervention` for one edit."""
        return {"key": self.key(request), "gate_layer": self.layer, "gate_threshold": self.threshold,
                "gate_center": self.center, "gate_scale": self.scale}


@dataclass
class GatedIntervention(ActivationIntervention):
    """Steering vectors plus the gate keys; row-batchable with a per-row, per-input scope gate.
    ``key`` None: no gate (every prompt in scope)."""

    key: torch.Tensor | None = None  # [n_keys, d] (or [d]), already standardised
    gate_layer: int = 0
    gate_center: torch.Tensor | None = None  # [d]: queries become (h - center) / scale before the cosine
    gate_scale: torch.Tensor | None = None
    gate_threshold: float = DEFAULT_THRESHOLD
    subject_positions: bool = False  # also add "last" vectors where the gate matched
    vectors: list[SteeringVector] = field(default_factory=list)

    def apply(self, lm, strength: float = 1.0):
        raise ValueError("gated vectors depend on the input (scope gate): apply them through apply_rows / uniform")

    @classmethod
    def apply_rows(cls, lm, rows, batch: Batch):
        return install_gated(lm, rows, batch)

    def uniform(self, lm, strength: float = 1.0):
        return nullcontext(), RowsContext(lambda b: self.apply_rows(lm, [(self, strength)] * b.input_ids.shape[0], b))

    def extra_numel(self) -> int:
        # the gate keys are stored per edit too; the standardisation statistics are per model
        return super().extra_numel() + (self.key.numel() if self.key is not None else 0)


class _GateDecided(Exception):
    """Stops the unsteered first pass once the gate layers have run."""


def _decide(h: torch.Tensor, prompt_mask: torch.Tensor, rows: Sequence[GatedIntervention | None], layer: int,
            state: dict) -> None:
    """Fill ``state["gate"]`` [B] (1 = in scope) and ``state["match"]`` [B, T] for the rows gated at ``layer``."""
    B, T = prompt_mask.shape
    gate = state.setdefault("gate", torch.zeros(B, device=h.device, dtype=h.dtype))
    match = state.setdefault("match", torch.zeros(B, T, dtype=torch.bool, device=h.device))
    for r, iv in enumerate(rows):
        if iv is None or iv.key is None or iv.gate_layer != layer:
            continue
        hit = gate_similarity(h[r], prompt_mask[r], iv.key, iv.gate_center, iv.gate_scale) >= iv.gate_threshold
        gate[r] = float(hit.any())
        match[r] = hit


@contextmanager
def _gate(lm, rows: Sequence[GatedIntervention | None], batch: Batch, inline: bool) -> Iterator[dict]:
    """Decide the gate of every row once per context; yields the state the adding hooks read
    (``"gate"`` present once decided)."""
    ad = lm.adapter
    B, T = batch.input_ids.shape
    prompt_mask = batch.prompt_mask()
    state: dict = {}
    layers = sorted({iv.gate_layer for iv in rows if iv is not None and iv.key is not None})

    def open_rows() -> None:  # rows without a key are always in scope; rows without an edit never
        gate = state.setdefault("gate", torch.zeros(B, device=lm.device, dtype=lm.dtype))
        state.setdefault("match", torch.zeros(B, T, dtype=torch.bool, device=lm.device))
        for r, iv in enumerate(rows):
            if iv is not None and iv.key is None:
                gate[r] = 1.0

    if not layers:
        open_rows()
        yield state
        return

    def gate_hook(layer: int):
        def hook(_m, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            if h.shape[1] != T or state.get("decided"):  # cached decoding steps: decided on the prompt
                return None
            _decide(h, prompt_mask, rows, layer, state)
            if layer == layers[-1]:
                open_rows()
                state["decided"] = True
                if state.get("prepass"):
                    raise _GateDecided
            return None
        return hook

    def first_pass(_m, args, kwargs):
        if state.get("decided") or state.get("prepass"):
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        if (ids if ids is not None else emb).shape[1] != T:
            return None
        inputs = {k: kwargs[k] for k in ("input_ids", "inputs_embeds", "attention_mask", "position_ids")
                  if kwargs.get(k) is not None}
        if args and "input_ids" not in inputs:
            inputs["input_ids"] = args[0]
        state["prepass"] = True
        try:
            with torch.no_grad():
                ad.base(**inputs, use_cache=False)
        except _GateDecided:
            pass
        finally:
            state["prepass"] = False
        return None

    with ExitStack() as st:
        for l in layers:
            st.enter_context(hooked(ad.layers[l], gate_hook(l)))
        if not inline:
            st.enter_context(hooked(ad.base, first_pass, "pre_kwargs"))
        yield state


def install_gated(lm, rows: Sequence[tuple[Any, float]], batch: Batch):
    """Apply ``rows[i]`` = (:class:`GatedIntervention`, strength) to row ``i`` of ``batch`` (rows of
    another intervention type get nothing)."""
    ivs = [iv if isinstance(iv, GatedIntervention) else None for iv, _ in rows]
    gate_layers = {iv.gate_layer for iv in ivs if iv is not None and iv.key is not None}
    sites = {(v.layer, v.site) for iv in ivs if iv is not None for v in iv.vectors}
    # inline only when every steered module runs after the gate layer's output is known
    inline = not gate_layers or all(l > max(gate_layers) for l, _ in sites)
    return _install(lm, rows, ivs, batch, sorted(sites), inline)


@contextmanager
def _install(lm, rows, ivs, batch: Batch, sites: list, inline: bool) -> Iterator[dict]:
    B = batch.input_ids.shape[0]
    subject = [bool(iv is not None and iv.subject_positions) for iv in ivs]
    with ExitStack() as st:
        state = st.enter_context(_gate(lm, ivs, batch, inline))
        for layer, site in sites:
            vec = torch.zeros(B, lm.adapter.hidden_size, device=lm.device, dtype=lm.dtype)
            kinds = []
            for r, (iv, s) in enumerate(rows):
                v = next((v for v in (ivs[r].vectors if ivs[r] else ()) if (v.layer, v.site) == (layer, site)), None)
                if v is not None:
                    vec[r] = v.vector.to(vec) * s
                kinds.append(v.positions if v is not None else "all")
            st.enter_context(_gated_add(site_module(lm, layer, site), vec, state, _row_masks(batch, kinds), subject))
        yield state


@contextmanager
def _gated_add(module, vec: torch.Tensor, state: dict, mask: torch.Tensor | None, subject_rows: list[bool]):
    """Add ``vec[r]`` times row r's gate: where ``mask`` (``[B, T]``; None = every position, also
    generated ones) and, for ``subject_rows``, where the gate matched. Nothing during the first pass."""

    def hook(_m, _inp, out):
        x = out[0] if isinstance(out, tuple) else out
        if state.get("prepass") or "gate" not in state:
            return None
        if mask is None:
            pos = None
        else:
            if x.shape[1] != mask.shape[1]:  # cached decoding steps: position-restricted vectors steer the prompt
                return None
            pos = mask.clone()
            for r, subj in enumerate(subject_rows):
                if subj:
                    pos[r] |= state["match"][r]
        g = state["gate"].to(x.dtype).view(-1, 1)
        w = g if pos is None else pos.to(x.dtype) * g
        new = x + vec.unsqueeze(1) * w.unsqueeze(-1)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with hooked(module, hook):
        yield
