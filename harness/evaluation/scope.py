"""Scope tests and model health for knowledge edits: what an edit does *outside* its own fact.

A subject-gated editor looks perfect on CounterFact's own locality test, because every paraphrase
contains the subject and almost no neighbourhood prompt does. These probes measure editing, not
gating (all on by default in every CounterFact run; per case, next to the ROME metrics):

* ``subject_specificity`` (+ ``_magnitude``): other facts about the *same subject* under another
  relation (CounterFact records, see :meth:`editbench.benchmarks.counterfact.SubjectIndex.neighbours`):
  on Y's prompt the model should still prefer Y's true object over X's new one (ROME's NS rule).
  Scored with the target slots (``evaluator.scope_slots``), so it is batched like every ROME metric.
* ``subject_kl`` / ``subject_leak`` / ``subject_leak_any``: the next-token distribution after the
  :data:`SUBJECT_TEMPLATES` about the subject: mean ``KL(unedited || edited)``, the share of them
  whose greedy token becomes o*'s first token (it was not before), and the share where it is.
* ``cfplus_specificity`` (+ ``_magnitude``) and ``cfplus_kl`` (CounterFact+, Hoelscher-Obermaier et
  al. 2023): the neighbourhood prompts with the edit statement prepended (:data:`CFPLUS_TEMPLATE`).
* ``neutral_kl``: mean ``KL(unedited || edited)`` at every position of fixed wikitext-2 windows.
* ``fluency``: n-gram entropy of short greedy generations (:data:`FLUENCY_MAX_NEW_TOKENS`) from the
  first :data:`FLUENCY_PROMPTS` of the case's generation prompts, else of the subject templates;
  ``fluency_long`` (``--generation``): at ``max_new_tokens`` from all the generation prompts.

The unedited distributions are computed in the pre-edit pass (log-probs at the needed positions
only, per chunk; the neutral windows' once per evaluator) and the edited ones with the evaluator's
batching rules (:func:`run_under`): row-batchable interventions share batches across cases, weight
edits are applied per case, the unedited model is never run twice. The next-token distributions
after the subject probes and the CounterFact+ prompts come from the target-scoring pass itself
(``score_targets(..., next_rows=...)``: the probes are slots with target o*), so they cost no
forward pass of their own.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from editbench.data import check_placeholders, data_file, resolve_data_root
from editbench.datasets_io import load_local
from editbench.errors import ConfigError, DataError
from editbench.evaluation import metrics as M
from editbench.modeling.interventions import Intervention, NoIntervention
from editbench.modeling.scoring import RowsContext, encode_target, generate, kl_divergence, window_logprobs
from editbench.requests import EditCase

log = logging.getLogger(__name__)

#: Same-subject probes [ours]: generic continuations about the subject, one relation-free sentence
#: start each. ``{subject}`` is the only placeholder.
SUBJECT_TEMPLATES: tuple[str, ...] = (
    "{subject} is known for",
    "The best thing about {subject} is",
    "People say that {subject}",
    "{subject} was born in the year",
)
#: the default fluency generates from the first N generation prompts of a case (rome500 has 10),
#: else from the first N subject templates (the EasyEdit splits have none): the same cost per case
FLUENCY_PROMPTS = 2
#: the default fluency's budget: short, so that it costs little on a CPU
FLUENCY_MAX_NEW_TOKENS = 24
#: CounterFact+: the edit statement, then the neighbourhood prompt
CFPLUS_TEMPLATE = "{prompt} {new}. {neighbour}"
#: neutral text: windows of wikitext-2 test, each starting at the first paragraph line at or after a
#: fixed fraction of the file's characters; every position's next-token distribution is compared
NEUTRAL_TEXT = "utility/wikitext-2-raw/wiki.test.raw"
NEUTRAL_OFFSETS: tuple[float, ...] = (0.1, 0.35, 0.6, 0.85)
NEUTRAL_WINDOW_TOKENS = 64

HEALTH_METRICS = ("subject_kl", "subject_leak", "subject_leak_any", "cfplus_kl", "neutral_kl", "fluency")


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------
def check_subject_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Each template must hold ``{subject}`` and no other placeholder (ConfigError otherwise)."""
    out = []
    for t in templates:
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"subject probe template must be a non-empty string, got {t!r}")
        check_placeholders(t, "subject", "subject probe template", ConfigError)
        out.append(t)
    if not out:
        raise ConfigError("at least one subject probe template is needed")
    return tuple(out)


def subject_probes(case: EditCase, templates: Sequence[str] = SUBJECT_TEMPLATES) -> list[str]:
    return [t.format(subject=case.request.subject) for t in templates]


def cfplus_prompts(case: EditCase) -> list[str]:
    r = case.request
    return [CFPLUS_TEMPLATE.format(prompt=r.prompt, new=r.target_new, neighbour=p) for p in case.neighborhood_prompts]


def fluency_prompts(case: EditCase, templates: Sequence[str] = SUBJECT_TEMPLATES) -> list[str]:
    return list(case.generation_prompts[:FLUENCY_PROMPTS]) or subject_probes(case, templates[:FLUENCY_PROMPTS])


# ---------------------------------------------------------------------------------------------
# neutral text
# ---------------------------------------------------------------------------------------------
_WINDOWS: dict[tuple, list[list[int]]] = {}


def neutral_text_path(root: str | Path | None) -> Path | None:
    """The neutral text under ``root`` (default data root when None); None when a hand-made root
    (or no root at all) lacks it, a :class:`DataError` when a data bundle (``MANIFEST.md``) does."""
    try:
        return data_file(NEUTRAL_TEXT, root)
    except DataError:
        try:
            bundle = resolve_data_root(root)
        except DataError:
            return None
        if (bundle / "MANIFEST.md").is_file():
            raise DataError(f"data bundle {bundle} lacks {NEUTRAL_TEXT} (the neutral text of neutral_kl); "
                            "restore the file or pass another --data-root") from None
        return None


def neutral_windows(lm, root: str | Path | None) -> list[list[int]] | None:
    """The fixed neutral windows as token ids (the tokenizer's special tokens included, as for
    every prompt), cached per file and tokenizer; None when a hand-made root lacks the file
    (``neutral_kl`` is then not computed; the run's provenance lists it under ``scope_missing``)."""
    path = neutral_text_path(root)
    if path is None:
        log.info("neutral text %s not found under %s: neutral_kl is not computed", NEUTRAL_TEXT, root)
        return None
    tok = lm.tokenizer
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, type(tok).__name__, getattr(tok, "name_or_path", ""), len(tok))
    if key not in _WINDOWS:
        doc = load_local(path, "text", by="document")  # the whole file as one record, through datasets
        text = doc[0]["text"] if doc else ""
        starts, pos = [], 0
        for line in text.splitlines(keepends=True):
            body = line.strip()
            if body and not body.startswith("="):  # a paragraph, not a heading or a blank line
                starts.append(pos)
            pos += len(line)
        wins = []
        for frac in NEUTRAL_OFFSETS:
            at = next((s for s in starts if s >= int(frac * len(text))), None)
            ids = [] if at is None else tok(text[at:at + 40 * NEUTRAL_WINDOW_TOKENS].lstrip())["input_ids"]
            if len(ids) < NEUTRAL_WINDOW_TOKENS:
                raise DataError(f"{path}: no {NEUTRAL_WINDOW_TOKENS}-token paragraph text after {frac:.0%} of the "
                                "file (neutral text for neutral_kl)")
            wins.append(list(ids[:NEUTRAL_WINDOW_TOKENS]))
        _WINDOWS[key] = wins
    return _WINDOWS[key]


# ---------------------------------------------------------------------------------------------
# the evaluator's batching rules, for any per-item computation
# ---------------------------------------------------------------------------------------------
def run_under(lm, ivs: Sequence[Intervention], strength: float, items: Sequence[Sequence[Any]],
              fn: Callable[[list, Any], Sequence]) -> list[list | None]:
    """``fn(flat items, batch_context)`` for each case's items under its intervention at ``strength``.

    Row-batchable interventions of one class share calls (one row per item, each row with its own
    case's intervention through ``apply_rows``); other interventions (weight edits) are applied per
    case around its own call. ``None`` for a :class:`NoIntervention` case: the caller reuses the
    unedited result (the unedited model is never run twice)."""
    out: list[list | None] = [None] * len(ivs)
    rows_by_cls: dict[type, list[int]] = defaultdict(list)
    for c, iv in enumerate(ivs):
        if isinstance(iv, NoIntervention):
            continue
        if not items[c]:
            out[c] = []
        elif iv.row_batchable:
            rows_by_cls[type(iv)].append(c)
        else:
            with iv.apply(lm, strength):
                out[c] = list(fn(list(items[c]), None))
    for cls, cs in rows_by_cls.items():
        flat, owner = [], []
        for c in cs:
            flat += list(items[c])
            owner += [c] * len(items[c])
        row_iv = [(ivs[c], strength) for c in owner]
        res = list(fn(flat, RowsContext(lambda b, cls=cls: cls.apply_rows(lm, [row_iv[i] for i in b.indices], b), owner)))
        k = 0
        for c in cs:
            out[c] = res[k:k + len(items[c])]
            k += len(items[c])
    return out


# ---------------------------------------------------------------------------------------------
#: metrics measured against the unedited model, so 0 by definition in the pre-edit row (exact: no CI)
ZERO_BEFORE_EDIT = ("subject_kl", "subject_leak", "cfplus_kl", "neutral_kl")


@dataclass
class CasePre:
    """What the post-edit pass needs of one case's unedited model (kept for the chunk only)."""

    probes: list[str]
    cfplus: list[str]
    ref: torch.Tensor | None  # [len(probes) + len(cfplus), vocab] unedited next-token log-probs
    greedy: list[int]  # unedited greedy next token after each probe
    new_first: int  # o*'s first token (ROME tokenisation)
    fluency_prompts: list[str]
    fluency: float | None
    fluency_long: float | None

    def metrics(self, neutral: bool) -> dict:
        """The pre-edit row: KLs and the new-leak rate are 0 by definition (unedited vs itself:
        :data:`ZERO_BEFORE_EDIT`)."""
        out: dict = {}
        if self.probes:
            out.update({"subject_kl": 0.0, "subject_leak": 0.0,
                        "subject_leak_any": float(np.mean([g == self.new_first for g in self.greedy])),
                        "cfplus_kl": 0.0 if self.cfplus else None})
        if neutral:
            out["neutral_kl"] = 0.0
        if self.fluency_prompts:
            out["fluency"] = self.fluency
        if self.fluency_long is not None:
            out["fluency_long"] = self.fluency_long
        return out


def _mean_entropy(texts: Sequence[str]) -> float | None:
    return float(np.mean([M.ngram_entropy(t) for t in texts])) if texts else None


class HealthProbe:
    """The KL, leak, neutral-text and fluency probes of one evaluator (see the module doc)."""

    def __init__(self, lm, batch_size: int = 32, seed: int = 0, templates: Sequence[str] = SUBJECT_TEMPLATES,
                 data_root: str | Path | None = None, fluency_tokens: int = FLUENCY_MAX_NEW_TOKENS,
                 long_tokens: int | None = None, probes: bool = True):
        """``probes=False``: only ``fluency_long`` (when ``long_tokens``), the pre-health behaviour."""
        self.lm, self.batch_size, self.seed, self.probes = lm, batch_size, seed, probes
        self.templates = check_subject_templates(templates)
        self.fluency_tokens, self.long_tokens = fluency_tokens, long_tokens
        self.windows = neutral_windows(lm, data_root) if probes else None
        self._neutral_ref: list[torch.Tensor] | None = None

    def _generate(self, prompts: list[str], ctx, tokens: int) -> list[str]:
        return generate(self.lm, prompts, max_new_tokens=tokens, seed=self.seed, batch_size=self.batch_size,
                        batch_context=ctx)

    def neutral_ref(self) -> list[torch.Tensor] | None:
        """The unedited model's log-probs on the neutral windows (once per evaluator: the same for
        every case and chunk, so a resumed run gets identical numbers)."""
        if self.windows is not None and self._neutral_ref is None:
            self._neutral_ref = window_logprobs(self.lm, self.windows, self.batch_size)
        return self._neutral_ref

    # -----------------------------------------------------------------------------------------
    def pre(self, cases: Sequence[EditCase], rows: Sequence[torch.Tensor | None]) -> list[CasePre]:
        """``rows[c]``: case c's unedited next-token log-probs after its subject probes, then after its
        CounterFact+ prompts (``[n, vocab]``, from the evaluator's scoring pass: ``scope_slots``)."""
        self.neutral_ref()
        on = self.probes
        probes = [subject_probes(c, self.templates) if on else [] for c in cases]
        cf = [cfplus_prompts(c) if on else [] for c in cases]
        fl_prompts = [fluency_prompts(c, self.templates) if on else [] for c in cases]
        texts = iter(self._generate([p for ps in fl_prompts for p in ps], None, self.fluency_tokens) if on else [])
        fluency = [_mean_entropy([next(texts) for _ in ps]) for ps in fl_prompts]
        long = [None] * len(cases)
        if self.long_tokens:
            gen = [list(c.generation_prompts) for c in cases]
            texts = iter(self._generate([p for ps in gen for p in ps], None, self.long_tokens))
            long = [_mean_entropy([next(texts) for _ in ps]) for ps in gen]
        out = []
        for c, case in enumerate(cases):
            r = rows[c] if on else None
            if on and (r is None or r.shape[0] != len(probes[c]) + len(cf[c])):
                raise ValueError("next-token rows do not match the subject probes and CounterFact+ prompts")
            out.append(CasePre(probes[c], cf[c], r, r[:len(probes[c])].argmax(-1).tolist() if on else [],
                               encode_target(self.lm.tokenizer, case.request.target_new)[0],
                               fl_prompts[c], fluency[c], long[c]))
        return out

    def post(self, cases: Sequence[EditCase], ivs: Sequence[Intervention], strength: float,
             pre: Sequence[CasePre], rows: Sequence[torch.Tensor | None]) -> list[tuple[dict, dict]]:
        """Per case: (post-edit metrics, trace for the record: the probes' greedy tokens).
        ``rows[c]``: as for :meth:`pre`, edited; None for an unedited case (its pre row is reused)."""
        lm, bs = self.lm, self.batch_size
        logp = rows if self.probes else [None] * len(cases)
        neutral = None
        if self.windows is not None:
            ref = self.neutral_ref()
            w = list(range(len(self.windows)))
            neutral = run_under(lm, ivs, strength, [w] * len(cases), lambda flat, ctx: window_logprobs(
                lm, [self.windows[i] for i in flat], bs, ctx, reference=[ref[i] for i in flat]))
        fl = run_under(lm, ivs, strength, [p.fluency_prompts for p in pre],
                       lambda flat, ctx: self._generate(flat, ctx, self.fluency_tokens))
        long = [None] * len(cases)
        if self.long_tokens:
            long = run_under(lm, ivs, strength, [list(c.generation_prompts) for c in cases],
                             lambda flat, ctx: self._generate(flat, ctx, self.long_tokens))
        out = []
        for c, p in enumerate(pre):
            m = p.metrics(neutral is not None)
            greedy = list(p.greedy)
            if logp[c] is not None and p.probes:  # edited (None: the unedited model, whose values are the pre row's)
                post_rows = logp[c]
                kl = kl_divergence(p.ref.to(post_rows), post_rows).clamp_min(0.0)  # >= 0 up to float noise
                n = len(p.probes)
                m["subject_kl"] = float(kl[:n].mean())
                m["cfplus_kl"] = float(kl[n:].mean()) if p.cfplus else None
                broken = [bool(torch.isnan(r).any()) for r in post_rows[:n]]
                greedy = post_rows[:n].argmax(-1).tolist()
                m["subject_leak"] = float(np.mean([math.nan if b else float(g == p.new_first and g0 != p.new_first)
                                                   for b, g, g0 in zip(broken, greedy, p.greedy)]))
                m["subject_leak_any"] = float(np.mean([math.nan if b else float(g == p.new_first)
                                                       for b, g in zip(broken, greedy)]))
            if neutral is not None and neutral[c] is not None:
                m["neutral_kl"] = float(torch.cat(neutral[c]).clamp_min(0.0).mean())
            if fl[c] is not None and p.fluency_prompts:
                m["fluency"] = _mean_entropy(fl[c])
            if long[c] is not None and p.fluency_long is not None:
                m["fluency_long"] = _mean_entropy(long[c])
            out.append((m, {"pre": list(p.greedy), "post": greedy}))
        return out
