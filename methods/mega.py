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
  to the unedited model). ``gate_layer`` must precede the region. The gate lives in
  :mod:`editbench.modeling.gating`, shared with ``steering-gated``;
* ``gate=off`` (ablation/control; default ``gate=subject``): no scope gate, the region vectors are
  added at every prompt's last token (``positions=last+subject`` needs the gate and is refused);
* behaviour edits (``fit_behaviour``, the attribute sweeps): no gate (there is no subject; the
  ``gate`` settings are ignored and the points are labelled ``activation-steering``). The region is
  picked by contrastive attribution on the probe pairs: NLKA ``Imp(A_l)`` of every attention block
  for the probe responses' own tokens (:func:`~editbench.modeling.attribution.response_attention_importance`,
  the first 16 response positions of each example), positive-probe mean minus negative-probe mean,
  and the same window rule as the post-edit study (:func:`~editbench.modeling.attribution.select_region`:
  ``n_layers/6`` contiguous layers at >= 40% depth with the largest gap); ``layers`` or
  ``region_file`` override it. The vector of region layer ``l`` is the probes' mean attention-block
  output difference (positives minus negatives, over the same window as ``steering``'s), added to
  ``A_l`` at every position, scaled by strength;
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from editbench.errors import ConfigError
from editbench.modeling.gating import (BACKGROUND, TRAIN_PREFIXES, GatedIntervention, SubjectGate,  # noqa: F401
                                       check_gate_params, default_gate_layer, gate_similarity, prompt_batch,
                                       subject_last_token)
from editbench.modeling.attribution import response_attention_importance, select_region
from editbench.modeling.directions import ProbeExample, extract_directions
from editbench.modeling.hooks import add_to_output, capture
from editbench.modeling.interventions import ActivationIntervention, SteeringVector
from editbench.requests import EditRequest
from editbench.modeling.scoring import Batch, ScoreRequest, encode_target, target_logprobs

from editbench.plugins.method import Method

CONTEXT_TEMPLATE = "New fact: {prompt} {new}.\n{prompt}"  # [recon] in-context statement of the edit
GATE_ON = ("subject", "on", "true", "yes", "1")
GATE_OFF = ("off", "false", "no", "0", "none")


def default_region(n_layers: int) -> tuple[int, ...]:
    lo, hi = round(0.5 * n_layers), max(round(0.8 * n_layers), round(0.5 * n_layers) + 1)
    return tuple(range(lo, min(hi, n_layers)))


def parse_gate(value: object) -> bool:
    """``gate``: ``subject`` (the scope gate, default) or ``off`` (vectors on every prompt); booleans
    (JSON configs, run directories written before the string form) mean the same."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in GATE_ON:
        return True
    if v in GATE_OFF:
        return False
    raise ConfigError(f"gate must be 'subject' or 'off', got {value!r}")


@dataclass
class MegaIntervention(GatedIntervention):
    """Region vectors (at the prompt's last token) plus the gate keys; see
    :class:`~editbench.modeling.gating.GatedIntervention`."""


@dataclass
class MegaBehaviour(ActivationIntervention):
    """A behaviour edit: region vectors on the attention residual at every position (no gate), with
    the attribution that picked the region (``gap``: positive-minus-negative ``Imp(A_l)`` per layer,
    nats; empty when the region was given)."""

    region: tuple[int, ...] = ()
    gap: tuple[float, ...] = ()
    region_source: str = "attribution"

    def describe(self) -> dict:
        return {**super().describe(), "region": list(self.region), "region_source": self.region_source,
                "gap": [round(g, 6) for g in self.gap]}


#: response positions per probe example that the behaviour attribution scores (two unembeddings per
#: layer and position: the cost that bounds it)
BEHAVIOUR_ATTRIBUTION_POSITIONS = 16


class MEGA(Method):
    name = "mega"
    composition = "independent"
    method_class = "gated"
    supports = frozenset({"edit", "behaviour"})
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
        gate: str | bool = True  # subject (the scope gate) | off (vectors on every prompt); stored as a bool
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
            check_gate_params("mega", self.gate_norm, self.gate_threshold)
            # a bool keeps the resolved value (and run directories, labels) of runs made before gate=off|subject
            self.gate = parse_gate(self.gate)
            if not self.gate and self.positions == "last+subject":
                raise ConfigError("positions=last+subject adds the vectors where the gate matches the subject: "
                                  "it needs gate=subject")

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
        self.region_given = p.layers is not None or p.region_file is not None
        if not region or any(isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n for l in region):
            raise ConfigError(f"method 'mega': region {list(region)} invalid for a {n}-layer model")
        self.region = tuple(sorted(set(region)))
        self.gate_layer = default_gate_layer(n) if p.gate_layer is None else p.gate_layer
        if p.gate and not 0 <= self.gate_layer < min(self.region):
            raise ConfigError(f"method 'mega': gate_layer {self.gate_layer} must precede the region {list(self.region)}")
        # the shared scope gate (editbench.modeling.gating); None with gate=off
        self.gate = SubjectGate(lm, self.gate_layer, p.gate_threshold, p.gate_norm) if p.gate else None

    @property
    def effective_class(self) -> str:
        return "gated" if self.gate is not None else "activation-steering"

    def class_of(self, fitted) -> str:
        return "activation-steering" if isinstance(fitted, MegaBehaviour) else self.effective_class

    @property
    def gate_center(self) -> torch.Tensor | None:
        return self.gate.center if self.gate is not None else None

    @property
    def gate_scale(self) -> torch.Tensor | None:
        return self.gate.scale if self.gate is not None else None

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _attn_last(self, prompts: list[str]) -> torch.Tensor:
        """Attention block outputs at each prompt's last token, ``[len(region), B, d]``."""
        ad = self.lm.adapter
        batch = prompt_batch(self.lm, prompts)
        with capture({l: ad.block_output_module(l, "attn") for l in self.region}) as cap:
            ad.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        last = batch.prompt_lengths - 1
        rows = torch.arange(len(prompts), device=self.lm.device)
        return torch.stack([cap.last(l)[rows, last] for l in self.region])

    def gate_key(self, request: EditRequest) -> torch.Tensor:
        """Gate keys ``[len(TRAIN_PREFIXES), d]``: the subject's last-token state under each prefix."""
        if self.gate is None:
            raise ConfigError("method 'mega': gate=off has no gate keys")
        return self.gate.key(request)

    def gate_scores(self, key: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """The gate's decision statistic for each prompt: its best position's similarity to ``key``."""
        if self.gate is None:
            raise ConfigError("method 'mega': gate=off has no gate scores")
        return self.gate.scores(key, prompts)

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

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> MegaBehaviour:
        """[recon] Ungated attention-residual steering in the region the probes' contrastive
        attribution picks (see the module doc)."""
        n = self.lm.adapter.n_layers
        d = extract_directions(self.lm, positives, negatives, window=window)  # type: ignore[arg-type]
        if self.region_given:
            region, gap, source = self.region, (), "given"
        else:
            imp = response_attention_importance(self.lm, [*positives, *negatives], BEHAVIOUR_ATTRIBUTION_POSITIONS)
            gaps = imp[:, : len(positives)].mean(1) - imp[:, len(positives):].mean(1)
            region, gap, source = tuple(select_region(gaps.numpy(), n)), tuple(gaps.tolist()), "attribution"
        vectors = [SteeringVector(l, "attn", d.directions[(l, "attn")].to(self.lm.dtype), "all") for l in region]
        return MegaBehaviour(vectors, region=tuple(region), gap=gap, region_source=source)

    def fit_edit(self, request: EditRequest) -> MegaIntervention:
        deltas = self._optimize(request) if self.params.mode == "optimize" else self._contrast(request)
        vectors = [SteeringVector(l, "attn", deltas[i].to(self.lm.dtype), "last") for i, l in enumerate(self.region)]
        gate = self.gate.fields(request) if self.gate is not None else {"key": None}
        return MegaIntervention(vectors=vectors, subject_positions=self.params.positions == "last+subject", **gate)


@contextmanager
def _ungated_last(lm, region: Sequence[int], deltas: torch.Tensor, batch: Batch):
    """Training-time application: the same deltas on every row's last prompt token (differentiable)."""
    mask = batch.last_prompt_mask()
    with ExitStack() as st:
        for i, l in enumerate(region):
            st.enter_context(add_to_output(lm.adapter.block_output_module(l, "attn"), deltas[i], positions=mask))
        yield
