"""Knowledge-editing evaluator: pre/post-edit ROME and EasyEdit metrics per case, batched across cases.

For a chunk of cases it
1. scores every (prompt, target) pair the metrics need with the unedited model, in one batched call;
2. fits the method once per case (the method only sees the :class:`EditRequest`);
3. for each strength, scores the same pairs post-edit: interventions that are row-batchable
   (activation steering, the unedited model) share batches across cases, one row each; weight
   edits are applied per case, that case's prompts batched together;
4. turns scores into per-case records (raw NLLs kept for traceability).

Scope tests and model health (:mod:`editbench.evaluation.scope`, on by default): the
other-relation facts about the subject and the CounterFact+ prompts are extra target slots
(:func:`scope_slots`), scored in the same calls; the next-token KLs, the neutral-text KL and the
short-generation fluency follow the same batching rules (:func:`~editbench.evaluation.scope.run_under`).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from editbench.evaluation import metric_registry
from editbench.evaluation import metrics as M
from editbench.evaluation.scope import (FLUENCY_MAX_NEW_TOKENS, HEALTH_METRICS, SUBJECT_TEMPLATES, ZERO_BEFORE_EDIT,
                                        HealthProbe, check_subject_templates, cfplus_prompts, run_under,
                                        subject_probes)
from editbench.modeling.interventions import Intervention
from editbench.modeling.loading import LoadedModel
from editbench.requests import EditCase
from editbench.modeling.scoring import ScoreRequest, TargetScore, score_targets

ROME_METRICS = ("efficacy", "efficacy_magnitude", "generalization", "generalization_magnitude",
                "specificity", "specificity_magnitude")
EASYEDIT_METRICS = ("ee_rewrite_acc", "ee_rephrase_acc", "ee_locality")
# MEGA's extra metrics [paper names, our definitions]: greedy first-token match and doubt probes.
MEGA_METRICS = ("ft_acc", "ft_gen", "ft_spec", "doubt_1", "doubt_2")
FAMILIES = ("rewrite", "paraphrase", "neighborhood", "doubt_1", "doubt_2")
# Scope tests scored as target slots: other-relation facts about the subject (Y's true object vs
# o* on Y's prompt) and CounterFact+ (edit statement + neighbourhood prompt: o vs o*).
SCOPE_METRICS = ("subject_specificity", "subject_specificity_magnitude", "cfplus_specificity",
                 "cfplus_specificity_magnitude")
SCOPE_FAMILIES = ("subject_other", "subject_probe", "cfplus")

# [recon] Challenge prompts: the edited fact is stated, then questioned, then asked again. The edit
# "persists" when the model still prefers target_new over target_true after the challenge.
DOUBT_TEMPLATES = {
    "doubt_1": "{prompt} {new}. Are you sure? Please think again. {prompt}",
    "doubt_2": "{prompt} {new}. That is wrong, I am certain it is {true}. {prompt}",
}


@dataclass(frozen=True)
class _Slot:
    family: str
    kind: str  # "new" | "true" | "loc" (EasyEdit locality target, only when it differs from target_true)
    prompt: str


Scored = list  # list[tuple[_Slot, TargetScore]], in case_slots order (duplicates kept, as in ROME)


def case_slots(case: EditCase) -> list[tuple[_Slot, ScoreRequest]]:
    r = case.request
    out = []
    doubts = tuple((name, (t.format(prompt=r.prompt, new=r.target_new, true=r.target_true),))
                   for name, t in DOUBT_TEMPLATES.items())
    for fam, prompts in (("rewrite", (r.prompt,)), ("paraphrase", case.paraphrase_prompts),
                         ("neighborhood", case.neighborhood_prompts), *doubts):
        for p in prompts:
            out.append((_Slot(fam, "new", p), ScoreRequest(p, r.target_new)))
            out.append((_Slot(fam, "true", p), ScoreRequest(p, r.target_true)))
            if fam == "neighborhood" and case.neighborhood_target != r.target_true:
                out.append((_Slot(fam, "loc", p), ScoreRequest(p, case.neighborhood_target)))
    return out


def scope_slots(case: EditCase, templates: Sequence[str] = SUBJECT_TEMPLATES) -> list[tuple[_Slot, ScoreRequest]]:
    """Slots of the scope tests: for each other-relation fact Y (``extra["subject_neighbours"]``,
    attached by the CounterFact loader) o* and Y's true object after Y's prompt; o* after each
    subject probe (kind "probe": its next-token distribution feeds subject_kl/leak); for each
    CounterFact+ prompt o* and o (target_true, as ``specificity``)."""
    r = case.request
    out = []
    for _cid, prompt, true in case.extra.get("subject_neighbours", ()):
        out.append((_Slot("subject_other", "new", prompt), ScoreRequest(prompt, r.target_new)))
        out.append((_Slot("subject_other", "true", prompt), ScoreRequest(prompt, true)))
    for p in subject_probes(case, templates):
        out.append((_Slot("subject_probe", "probe", p), ScoreRequest(p, r.target_new)))
    for p in cfplus_prompts(case):
        out.append((_Slot("cfplus", "new", p), ScoreRequest(p, r.target_new)))
        out.append((_Slot("cfplus", "true", p), ScoreRequest(p, r.target_true)))
    return out


def _keeps_row(slot: _Slot) -> bool:
    """Slots whose next-token distribution the health probes need: each subject probe and each
    CounterFact+ prompt (once, on its o* slot), probes first (as ``HealthProbe`` expects)."""
    return slot.kind == "probe" or (slot.family == "cfplus" and slot.kind == "new")


def _next_rows(scores: Scored) -> torch.Tensor | None:
    rows = [s.next_logprobs for slot, s in scores if _keeps_row(slot)]
    return torch.stack(rows) if rows else None


def _family(scores: Scored, fam: str, kind: str) -> list[TargetScore]:
    return [s for slot, s in scores if slot.family == fam and slot.kind == kind]


def case_metrics(case: EditCase, scores: Scored, pre: Scored | None, scope: bool = False) -> dict:
    """All per-case metrics (fractions in [0, 1]; magnitudes in [-1, 1]) from one model state's scores.
    ``pre`` (the unedited scores) is needed for EasyEdit locality; pass None for the pre-edit row.
    ``scope``: the scores hold :func:`scope_slots` too (``subject_specificity`` is None for a case
    without other-relation facts: not applicable, left out of the aggregate's n)."""
    out: dict = {}
    families = (("rewrite", "efficacy", False), ("paraphrase", "generalization", False),
                ("neighborhood", "specificity", True))
    if scope:
        families += (("subject_other", "subject_specificity", True), ("cfplus", "cfplus_specificity", True))
    for fam, name, keep_true in families:
        succ, mag = M.rome_prompt_family(_family(scores, fam, "new"), _family(scores, fam, "true"), keep_true)
        out[name], out[name + "_magnitude"] = succ, mag
    for name in DOUBT_TEMPLATES:
        out[name] = M.rome_prompt_family(_family(scores, name, "new"), _family(scores, name, "true"), False)[0]
    out["ft_acc"] = M.first_token_match(_family(scores, "rewrite", "new"))
    out["ft_gen"] = M.first_token_match(_family(scores, "paraphrase", "new"))
    loc_kind = "true" if case.neighborhood_target == case.request.target_true else "loc"
    out["ft_spec"] = M.first_token_match(_family(scores, "neighborhood", loc_kind))
    out["ee_rewrite_acc"] = M.token_accuracy(_family(scores, "rewrite", "new"))
    out["ee_rephrase_acc"] = M.token_accuracy(_family(scores, "paraphrase", "new"))
    if pre is not None:
        out["ee_locality"] = M.locality_agreement(_family(pre, "neighborhood", loc_kind),
                                                  _family(scores, "neighborhood", loc_kind))
    return out


def _nlls(scores: Scored) -> dict:
    out: dict = defaultdict(lambda: defaultdict(list))
    for slot, s in scores:
        out[slot.family][slot.kind].append(round(s.nll, 6))
    return {f: dict(k) for f, k in out.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class KnowledgeEditEvaluator:
    """Evaluates one method on edit cases at several strengths. Use :meth:`evaluate` per chunk."""

    metric_names = ROME_METRICS + EASYEDIT_METRICS + MEGA_METRICS + SCOPE_METRICS + HEALTH_METRICS

    def __init__(self, lm: LoadedModel, method, strengths: Sequence[float] = (1.0,), batch_size: int = 32,
                 generation: bool = False, max_new_tokens: int = 64, seed: int = 0, health: bool = True,
                 data_root=None, subject_templates: Sequence[str] = SUBJECT_TEMPLATES,
                 fluency_tokens: int = FLUENCY_MAX_NEW_TOKENS):
        """``health``: the scope tests and model-health metrics (default on); ``generation``: also
        ``fluency_long``, generations of ``max_new_tokens`` from the cases' generation prompts;
        ``data_root``: where the neutral text is read (default: the default data root)."""
        self.lm, self.method = lm, method
        self.strengths = list(strengths)
        self.batch_size = batch_size
        self.generation = generation
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.health = health
        self.probe = None
        self.templates = check_subject_templates(subject_templates)
        if health or generation:
            self.probe = HealthProbe(lm, batch_size, seed, subject_templates, data_root, fluency_tokens,
                                     long_tokens=max_new_tokens if generation else None, probes=health)

    # ---------------------------------------------------------------------------------------
    def _score_post(self, slots: list[list[tuple[_Slot, ScoreRequest]]], ivs: list[Intervention],
                    strength: float, pre: list[Scored]) -> list[Scored]:
        """Post-edit scores (the pre-edit ones, the same object, for an unedited case)."""
        res = run_under(self.lm, ivs, strength, [[(q, _keeps_row(slot)) for slot, q in s] for s in slots],
                        lambda flat, ctx: score_targets(self.lm, [q for q, _ in flat], self.batch_size,
                                                        batch_context=ctx, next_rows=[k for _, k in flat]))
        return [pre[c] if r is None else [(slot, sc) for (slot, _), sc in zip(slots[c], r)]
                for c, r in enumerate(res)]

    # ---------------------------------------------------------------------------------------
    def evaluate(self, cases: Sequence[EditCase], todo: dict | None = None) -> Iterable[dict]:
        """Yield one record per (case, strength). ``todo[case_id]`` restricts the strengths (resume)."""
        todo = todo or {c.case_id: list(self.strengths) for c in cases}
        cases = [c for c in cases if todo.get(c.case_id)]
        if not cases:
            return []
        slots = [case_slots(c) + (scope_slots(c, self.templates) if self.health else []) for c in cases]
        t0 = time.perf_counter()
        flat = [q for s in slots for _, q in s]
        pre_flat = score_targets(self.lm, flat, self.batch_size,
                                 next_rows=[_keeps_row(slot) for s in slots for slot, _ in s])
        pre, k = [], 0
        for s in slots:
            pre.append([(slot, sc) for (slot, _), sc in zip(s, pre_flat[k:k + len(s)])])
            k += len(s)
        t1 = time.perf_counter()
        pre_h = self.probe.pre(cases, [_next_rows(p) for p in pre]) if self.probe else None
        pre_health = (time.perf_counter() - t1) / len(cases)
        pre_seconds = (time.perf_counter() - t0) / len(cases)

        ivs, fit_seconds = [], []
        for case in cases:
            seed_everything(self.seed)  # per case, so results do not depend on chunking
            t = time.perf_counter()
            ivs.append(self.method.fit_edit(case.request))
            fit_seconds.append(time.perf_counter() - t)

        records = []
        for strength in self.strengths:
            idx = [c for c, case in enumerate(cases) if strength in todo[case.case_id]]
            if not idx:
                continue
            t = time.perf_counter()
            sub = [cases[c] for c in idx]
            sub_ivs = [ivs[c] for c in idx]
            post = self._score_post([slots[c] for c in idx], sub_ivs, strength, [pre[c] for c in idx])
            th = time.perf_counter()
            post_h = self.probe.post(sub, sub_ivs, strength, [pre_h[c] for c in idx],
                                     [None if post[j] is pre[c] else _next_rows(post[j]) for j, c in enumerate(idx)]
                                     ) if self.probe else None
            health_seconds = (time.perf_counter() - th) / len(idx)
            eval_seconds = (time.perf_counter() - t) / len(idx)
            for j, c in enumerate(idx):
                case = cases[c]
                pre_m = case_metrics(case, pre[c], None, scope=self.health)
                post_m = case_metrics(case, post[j], pre[c], scope=self.health)
                trace = {}
                if self.probe:
                    pre_m.update(pre_h[c].metrics(self.probe.windows is not None))
                    post_m.update(post_h[j][0])
                    trace = {"subject_probes": pre_h[c].probes, "cfplus": pre_h[c].cfplus,
                             "fluency": pre_h[c].fluency_prompts}
                bad = {"pre": M.split_non_finite(pre_m), "post": M.split_non_finite(post_m)}
                records.append({
                    "case_id": case.case_id,
                    "strength": strength,
                    "request": case.request.__dict__,
                    "prompts": {"paraphrase": list(case.paraphrase_prompts),
                                "neighborhood": list(case.neighborhood_prompts),
                                "neighborhood_target": case.neighborhood_target,
                                "generation": list(case.generation_prompts) if self.generation else [],
                                **({"subject_neighbours": [list(y) for y in case.extra.get("subject_neighbours", ())],
                                    **trace} if self.health else {})},
                    "pre": pre_m,
                    "post": post_m,
                    "nll": {"pre": _nlls(pre[c]), "post": _nlls(post[j])},
                    **({"greedy": {"new_first_token": pre_h[c].new_first, "subject_probes": post_h[j][1]}}
                       if self.health else {}),
                    "intervention": ivs[c].describe(),
                    "seconds": {"fit": round(fit_seconds[c], 4), "eval": round(eval_seconds, 4),
                                "pre_eval": round(pre_seconds, 4), "health": round(health_seconds, 4),
                                "pre_health": round(pre_health, 4)},
                    **({"non_finite": bad} if bad["pre"] or bad["post"] else {}),
                })
        return records

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def summarize(records: Sequence[dict]) -> dict:
        """Aggregates per strength: pre and post metrics (x100) with std, n, bootstrap CI; Score."""
        by_s: dict[float, list[dict]] = defaultdict(list)
        for r in records:
            by_s[r["strength"]].append(r)
        points = {}
        pre_done = None
        for s in sorted(by_s):
            rs = sorted(by_s[s], key=lambda r: str(r["case_id"]))
            point = {}
            for state in ("pre", "post"):
                names = [m for m in KnowledgeEditEvaluator.metric_names + ("fluency_long",)
                         if any(m in r[state] for r in rs)]
                agg = {}
                for m in names:
                    spec = metric_registry.spec_of(m)
                    scale = 100.0 if spec.scale == "percent" else 1.0
                    bad = sum(m in (r.get("non_finite") or {}).get(state, ()) for r in rs)
                    agg[m] = M.aggregate([r[state].get(m) for r in rs], scale=scale, non_finite=bad,
                                         proportion=spec.proportion and not (state == "pre" and m in ZERO_BEFORE_EDIT))
                agg["score"] = M.aggregate_joint(
                    [[r[state]["efficacy"] for r in rs], [r[state]["generalization"] for r in rs],
                     [r[state]["specificity"] for r in rs]], M.hmean_rows)
                point[state] = agg
            point["seconds_per_case"] = {
                "fit": float(np.mean([r["seconds"]["fit"] for r in rs])),
                "eval": float(np.mean([r["seconds"]["eval"] for r in rs])),
                "pre_eval": float(np.mean([r["seconds"]["pre_eval"] for r in rs])),
                # the scope/health probes' share of eval and pre_eval (0 in records made before them)
                "health": float(np.mean([r["seconds"].get("health", 0.0) for r in rs])),
                "pre_health": float(np.mean([r["seconds"].get("pre_health", 0.0) for r in rs])),
            }
            point["extra_numel_per_edit"] = float(np.mean([r["intervention"].get("extra_numel", 0) for r in rs]))
            points[repr(float(s))] = point
            pre_done = pre_done or point["pre"]
        return {"n_cases": len({r["case_id"] for r in records}), "pre": pre_done,
                "points": {k: {kk: v for kk, v in p.items() if kk != "pre"} for k, p in points.items()}}
