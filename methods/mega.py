"""MEGA: per-edit steering of the attention residual in an attribution-aligned region.

[paper] MEGA (arXiv 2603.20795) adds per-edit vectors to the attention block output (the
"attention residual") in the mid-to-late layers that post-edit attribution links to successful
edits, changing no weights.

[recon] The paper text is unavailable; the details below are our reconstruction:
* region: the layers of an attribution artifact written by ``editbench attribute`` (the
  mid-to-late attention layers with the largest success-minus-failure NLKA gap for the new
  target), else ``layers``, else a default window of the layers at 50-80% depth;
* vectors ``delta_l`` (one per region layer) are added at the prompt's last token (option
  ``positions=last+subject``: also where the subject matches, see the gate), scaled by strength;
* ``mode=optimize``: Adam on the vectors only (weights frozen) for ``steps`` steps, minimising
  NLL(target_new) + ``unlikelihood`` * -log(1 - p(target_true first token)) + ``norm_penalty`` *
  sum_l (|delta_l| / |A_l|)^2 on the rewrite prompt, also under a few fixed neutral prefixes (never
  evaluation prompts); vectors are parametrised relative to the attention output norm |A_l|;
* ``mode=contrast``: training-free, ``A_l(new fact stated in context, then the prompt) - A_l(prompt)``
  at the last token;
* scope gate: the keys are the hidden states after ``gate_layer`` at the subject's last token of the
  rewrite prompt under the same neutral prefixes as training (a subject that opens the prompt
  sits on the first token, whose state is an outlier, and is tokenised without the leading space
  it has mid-sentence, so one key from the bare prompt misses paraphrases that embed it); a prompt
  is in scope when some prompt position's state there has cosine similarity >= ``gate_threshold``
  with some key. Out-of-scope rows get nothing added (bit-identical
  to the unedited model). ``gate_layer`` must precede the region.
* gate similarity (``gate_norm=standardize``, default): keys and queries are standardised per
  dimension by the mean and std of the gate layer's states over fixed neutral sentences
  (``BACKGROUND``, every token but the first) before the cosine. Raw cosines are dominated by a few
  outlier dimensions the residual stream shares across all tokens: on Gemma-3-270M every
  neighbourhood prompt scored >= 0.9 against the keys, so the gate let every prompt through
  (specificity 0); ``scripts/gate_check.py`` measures the separation. ``gate_norm=none`` keeps the
  raw cosine.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from editbench.errors import ConfigError
from editbench.modeling.hooks import add_to_output, capture, hooked
from editbench.modeling.interventions import ActivationIntervention, SteeringVector
from editbench.requests import EditRequest
from editbench.modeling.scoring import Batch, ScoreRequest, encode_prompt, encode_target, target_logprobs

from editbench.plugins.method import Method

CONTEXT_TEMPLATE = "New fact: {prompt} {new}.\n{prompt}"  # [recon] in-context statement of the edit
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


def default_region(n_layers: int) -> tuple[int, ...]:
    lo, hi = round(0.5 * n_layers), max(round(0.8 * n_layers), round(0.5 * n_layers) + 1)
    return tuple(range(lo, min(hi, n_layers)))


@dataclass
class MegaIntervention(ActivationIntervention):
    """Region vectors plus the gate keys; row-batchable with a per-row, per-input scope gate."""

    key: torch.Tensor | None = None  # [n_keys, d] (or [d]), already standardised; None: always in scope
    gate_layer: int = 0
    gate_center: torch.Tensor | None = None  # [d]: queries become (h - center) / scale before the cosine
    gate_scale: torch.Tensor | None = None
    gate_threshold: float = 0.8
    subject_positions: bool = False
    vectors: list[SteeringVector] = field(default_factory=list)

    def apply(self, lm, strength: float = 1.0):
        raise ValueError("MEGA vectors are position- and gate-dependent: apply them through apply_rows")

    @classmethod
    def apply_rows(cls, lm, rows, batch: Batch):
        return cls._install_gated(lm, rows, batch)

    def uniform(self, lm, strength: float = 1.0):
        return nullcontext(), lambda b: self.apply_rows(lm, [(self, strength)] * b.input_ids.shape[0], b)

    def extra_numel(self) -> int:
        # the gate keys are stored per edit too; the standardisation statistics are per model
        return super().extra_numel() + (self.key.numel() if self.key is not None else 0)

    @staticmethod
    @contextmanager
    def _install_gated(lm, rows: Sequence[tuple["MegaIntervention", float]], batch: Batch) -> Iterator[dict]:
        ad = lm.adapter
        B, T = batch.input_ids.shape
        state: dict = {}
        ivs = [iv if isinstance(iv, MegaIntervention) else None for iv, _ in rows]
        prompt_mask = batch.prompt_mask()
        last_mask = batch.last_prompt_mask()

        def gate_hook(_m, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            if h.shape[1] != T:  # cached decoding steps: the gate was decided on the prompt pass
                return None
            gate = torch.zeros(B, device=h.device, dtype=h.dtype)
            match = torch.zeros(B, T, dtype=torch.bool, device=h.device)
            for r, iv in enumerate(ivs):
                if iv is None:
                    continue
                if iv.key is None:
                    gate[r] = 1.0
                    continue
                hit = gate_similarity(h[r], prompt_mask[r], iv.key, iv.gate_center, iv.gate_scale) >= iv.gate_threshold
                gate[r] = float(hit.any())
                match[r] = hit
            state["gate"], state["match"] = gate, match
            return None

        layers = sorted({v.layer for iv in ivs if iv is not None for v in iv.vectors})
        gate_layers = {iv.gate_layer for iv in ivs if iv is not None}
        with ExitStack() as st:
            for gl in gate_layers:
                st.enter_context(hooked(ad.layers[gl], gate_hook))
            for l in layers:
                vec = torch.zeros(B, ad.hidden_size, device=lm.device, dtype=lm.dtype)
                for r, (iv, s) in enumerate(rows):
                    if ivs[r] is None:
                        continue
                    for v in ivs[r].vectors:
                        if v.layer == l:
                            vec[r] = v.vector.to(vec) * s
                st.enter_context(_gated_add(ad.block_output_module(l, "attn"), vec, state, last_mask,
                                            [bool(iv and iv.subject_positions) for iv in ivs]))
            yield state


@contextmanager
def _gated_add(module, vec: torch.Tensor, state: dict, last_mask: torch.Tensor, subject_rows: list[bool]):
    """Add ``vec[r]`` at row r's last prompt token (and matched subject positions), times its gate."""

    def hook(_m, _inp, out):
        x = out[0] if isinstance(out, tuple) else out
        if x.shape[1] != last_mask.shape[1] or "gate" not in state:
            return None
        pos = last_mask.clone()
        for r, subj in enumerate(subject_rows):
            if subj:
                pos[r] |= state["match"][r]
        add = vec.unsqueeze(1) * (pos.to(x.dtype) * state["gate"].to(x.dtype).unsqueeze(1)).unsqueeze(-1)
        new = x + add
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with hooked(module, hook):
        yield


class MEGA(Method):
    name = "mega"
    method_class = "gated"
    description = "MEGA [recon]: per-edit gated steering of the attention residual in an attribution region"

    @dataclass
    class Params:
        mode: str = "optimize"  # optimize | contrast
        layers: tuple[int, ...] | None = None  # region override
        region_file: str | None = None  # JSON artifact from `editbench attribute`
        positions: str = "last"  # last | last+subject
        steps: int = 40
        lr: float = 0.05
        norm_penalty: float = 0.01
        unlikelihood: float = 1.0
        gate: bool = True
        gate_layer: int | None = None  # default: 1/6 of the depth (must precede the region)
        gate_threshold: float = 0.8
        gate_norm: str = "standardize"  # standardize | none (raw cosine)
        stop_nll: float = 0.05  # optimize: stop early once the mean target_new token NLL is below this

        def __post_init__(self):
            if self.mode not in ("optimize", "contrast"):
                raise ConfigError(f"mode must be 'optimize' or 'contrast', got {self.mode!r}")
            if self.positions not in ("last", "last+subject"):
                raise ConfigError(f"positions must be 'last' or 'last+subject', got {self.positions!r}")
            if self.steps < 1 or self.lr <= 0 or self.norm_penalty < 0 or self.unlikelihood < 0:
                raise ConfigError("steps >= 1, lr > 0, norm_penalty >= 0 and unlikelihood >= 0 are required")
            if self.gate_norm not in ("standardize", "none"):
                raise ConfigError(f"gate_norm must be 'standardize' or 'none', got {self.gate_norm!r}")
            if not -1.0 <= self.gate_threshold <= 1.0:
                raise ConfigError(f"gate_threshold is a cosine similarity in [-1, 1], got {self.gate_threshold}")

    def _region_from_artifact(self, path: Path, n_layers: int) -> tuple:
        """The region of an `editbench attribute` artifact; refuses one made for another layer count
        and warns when it was made on other weights."""
        if not path.is_file():
            raise ConfigError(f"method 'mega': region_file {path} not found")
        try:
            art = json.loads(path.read_text())
            region = tuple(art["region"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ConfigError(f"method 'mega': {path} is not an attribution artifact (no 'region' list)") from None
        made_for = art.get("model") if isinstance(art.get("model"), dict) else {}
        if made_for.get("n_layers") not in (None, n_layers):
            raise ConfigError(f"method 'mega': {path} was made for a {made_for['n_layers']}-layer model "
                              f"({made_for.get('model_id')}), this one has {n_layers}")
        here = self.lm.provenance().get("weights_sha256")
        if made_for.get("weights_sha256") and here and made_for["weights_sha256"] != here:
            logging.getLogger(__name__).warning("mega: %s was made on other weights (%s) than the model edited",
                                                path, made_for.get("model_id"))
        return region

    def __init__(self, lm, params=None, seed: int = 0):
        super().__init__(lm, params, seed)
        p, n = self.params, lm.adapter.n_layers
        if p.layers is not None and p.region_file is not None:
            raise ConfigError("method 'mega': give either layers or region_file, not both")
        if p.layers is not None:
            region = tuple(p.layers)
        elif p.region_file is not None:
            region = self._region_from_artifact(Path(p.region_file), n)
        else:
            region = default_region(n)
        if not region or any(isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n for l in region):
            raise ConfigError(f"method 'mega': region {list(region)} invalid for a {n}-layer model")
        self.region = tuple(sorted(set(region)))
        self.gate_layer = max(1, n // 6) if p.gate_layer is None else p.gate_layer
        if p.gate and not 0 <= self.gate_layer < min(self.region):
            raise ConfigError(f"method 'mega': gate_layer {self.gate_layer} must precede the region {list(self.region)}")
        self.gate_center = self.gate_scale = None
        if p.gate and p.gate_norm == "standardize":
            self.gate_center, self.gate_scale = self._gate_stats()

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _attn_last(self, prompts: list[str]) -> torch.Tensor:
        """Attention block outputs at each prompt's last token, ``[len(region), B, d]``."""
        ad = self.lm.adapter
        batch = _prompt_batch(self.lm, prompts)
        with capture({l: ad.block_output_module(l, "attn") for l in self.region}) as cap:
            ad.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        last = batch.prompt_lengths - 1
        rows = torch.arange(len(prompts), device=self.lm.device)
        return torch.stack([cap.last(l)[rows, last] for l in self.region])

    @torch.no_grad()
    def _gate_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of the gate layer's states over ``BACKGROUND`` (first token out)."""
        ad = self.lm.adapter
        batch = _prompt_batch(self.lm, list(BACKGROUND))
        with capture({"k": ad.layers[self.gate_layer]}) as cap:
            ad.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        mask = batch.prompt_mask().clone()
        mask[torch.arange(mask.shape[0]), mask.float().argmax(1)] = False  # each row's first token
        x = cap.last("k")[mask].float()
        return x.mean(0), x.std(0).clamp_min(1e-6 * float(x.std(0).max()) + 1e-12)

    @torch.no_grad()
    def gate_key(self, request: EditRequest) -> torch.Tensor:
        """Gate keys ``[len(TRAIN_PREFIXES), d]``: the subject's last-token state under each prefix."""
        ad = self.lm.adapter
        prompts = [pre + request.prompt for pre in TRAIN_PREFIXES]
        pos = [subject_last_token(self.lm.tokenizer, q, request.subject) for q in prompts]
        batch = _prompt_batch(self.lm, prompts)
        with capture({"k": ad.layers[self.gate_layer]}) as cap:
            ad.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        h = cap.last("k")
        key = torch.stack([h[i, j] for i, j in enumerate(pos)]).float()  # right-padded rows
        if self.gate_center is not None:
            key = (key - self.gate_center) / self.gate_scale
        return key.clone()

    @torch.no_grad()
    def gate_scores(self, key: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The gate's decision statistic for each prompt: its best position's similarity to ``key``."""
        batch = _prompt_batch(self.lm, list(prompts))
        with capture({"k": self.lm.adapter.layers[self.gate_layer]}) as cap:
            self.lm.adapter.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        mask = batch.prompt_mask()
        return [float(gate_similarity(cap.last("k")[r], mask[r], key, self.gate_center, self.gate_scale).max())
                for r in range(len(prompts))]

    def _contrast(self, request: EditRequest) -> torch.Tensor:
        ctx = CONTEXT_TEMPLATE.format(prompt=request.prompt, new=request.target_new)
        a = self._attn_last([ctx, request.prompt])
        return a[:, 0] - a[:, 1]

    def _optimize(self, request: EditRequest) -> torch.Tensor:
        p = self.params
        prompts = [pre + request.prompt for pre in TRAIN_PREFIXES]
        norms = self._attn_last(prompts).norm(dim=-1).mean(1).clamp_min(1e-6)  # [R]
        u = torch.zeros(len(self.region), self.lm.adapter.hidden_size, requires_grad=True)
        opt = torch.optim.Adam([u], lr=p.lr)
        reqs = [ScoreRequest(q, request.target_new) for q in prompts]
        true_first = encode_target(self.lm.tokenizer, request.target_true)[0]
        new_tok = encode_target(self.lm.tokenizer, request.target_new)
        new_ids = torch.tensor(new_tok * len(reqs), device=self.lm.device)
        n_new = len(new_tok)
        with torch.enable_grad():
            for _ in range(p.steps):
                opt.zero_grad()
                deltas = u * norms.unsqueeze(1)
                ctx = lambda b: _ungated_last(self.lm, self.region, deltas, b)  # noqa: E731
                logp, _ = target_logprobs(self.lm, reqs, ctx)
                nll_new = -logp.gather(1, new_ids.unsqueeze(1)).mean()
                if nll_new.item() < p.stop_nll:
                    break
                first = logp[::n_new]  # each request's first target position
                p_true = first[:, true_first].exp().clamp(max=1 - 1e-6)
                loss = nll_new - p.unlikelihood * torch.log1p(-p_true).mean() + p.norm_penalty * (u.norm(dim=1) ** 2).sum()
                loss.backward()
                opt.step()
        return (u * norms.unsqueeze(1)).detach()

    def fit_edit(self, request: EditRequest) -> MegaIntervention:
        deltas = self._optimize(request) if self.params.mode == "optimize" else self._contrast(request)
        vectors = [SteeringVector(l, "attn", deltas[i].to(self.lm.dtype), "last") for i, l in enumerate(self.region)]
        return MegaIntervention(vectors=vectors, key=self.gate_key(request) if self.params.gate else None,
                                gate_layer=self.gate_layer, gate_threshold=self.params.gate_threshold,
                                gate_center=self.gate_center, gate_scale=self.gate_scale,
                                subject_positions=self.params.positions == "last+subject")


def _prompt_batch(lm, prompts: list[str]) -> Batch:
    from editbench.modeling.scoring import _layout

    enc = [encode_prompt(lm.tokenizer, q) for q in prompts]
    # a one-token dummy target makes _layout return exactly the prompt tokens
    return _layout(lm, enc, [[0]] * len(enc), range(len(enc)))[0]


@contextmanager
def _ungated_last(lm, region: Sequence[int], deltas: torch.Tensor, batch: Batch):
    """Training-time application: the same deltas on every row's last prompt token (differentiable)."""
    mask = batch.last_prompt_mask()
    with ExitStack() as st:
        for i, l in enumerate(region):
            st.enter_context(add_to_output(lm.adapter.block_output_module(l, "attn"), deltas[i], positions=mask))
        yield
