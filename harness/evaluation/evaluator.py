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
from editbench.plugins.method import Method
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
    # the neighbourhood prompts keep their own answer (CounterFact: target_true; zsRE: the NQ answer)
    loc_kind = "true" if case.neighborhood_target == case.request.target_true else "loc"
    # an edit that asks for the answer the fact already has (zsRE: alt == answers[0]) has no
    # new-vs-old comparison: those metrics are not applicable (None), not failures
    same = case.request.target_new.strip().casefold() == case.request.target_true.strip().casefold()
    families = (("rewrite", "efficacy", False, "true"), ("paraphrase", "generalization", False, "true"),
                ("neighborhood", "specificity", True, loc_kind))
    if scope:
        families += (("subject_other", "subject_specificity", True, "true"), ("cfplus", "cfplus_specificity", True, "true"))
    for fam, name, keep_true, kind in families:
        if same and kind == "true" and fam != "subject_other":  # subject_other's "true" is Y's own object
            out[name] = out[name + "_magnitude"] = None
            continue
        succ, mag = M.rome_prompt_family(_family(scores, fam, "new"), _family(scores, fam, kind), keep_true)
        out[name], out[name + "_magnitude"] = succ, mag
    for name in DOUBT_TEMPLATES:
        out[name] = None if same else M.rome_prompt_family(_family(scores, name, "new"), _family(scores, name, "true"),
                                                           False)[0]
    out["ft_acc"] = M.first_token_match(_family(scores, "rewrite", "new"))
    out["ft_gen"] = M.first_token_match(_family(scores, "paraphrase", "new"))
    out["ft_spec"] = M.first_token_match(_family(scores, "neighborhood", loc_kind))
    out["ee_rewrite_acc"] = M.token_accuracy(_family(scores, "rewrite", "new"))
    out["ee_rephrase_acc"] = M.token_accuracy(_family(scores, "paraphrase", "new"))
    if pre is not None:
        out["ee_locality"] = M.locality_agreement(_family(pre, "neighborhood", loc_kind),
                                                  _family(scores, "neighborhood", loc_kind))
    return out


#: the per-case columns of ``scope_score`` [ours]: the ROME Score's three plus CounterFact+ NS and
#: "no leak" (1 - subject_leak), so an editor that passes NS by gating on the subject but overwrites
#: what the model says about that subject elsewhere is not ranked first by the metric it was built
#: to pass; its harmonic mean, jointly bootstrapped over cases (a case lacking a column is left out)
SCOPE_SCORE_COLUMNS = ("efficacy", "generalization", "specificity", "cfplus_specificity", "no_leak")


def scope_score_columns(records: Sequence[dict], state: str) -> list[list[float | None]]:
    def col(r: dict, name: str) -> float | None:
        if name == "no_leak":
            leak = r[state].get("subject_leak")
            return None if leak is None else 1.0 - leak
        return r[state].get(name)

    return [[col(r, c) for r in records] for c in SCOPE_SCORE_COLUMNS]


def _nlls(scores: Scored) -> dict:
    out: dict = defaultdict(lambda: defaultdict(list))
    for slot, s in scores:
        out[slot.family][slot.kind].append(round(s.nll, 6))
    return {f: dict(k) for f, k in out.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class PreScores:
    """The unedited model's side of a set of cases: their slots, scores and health probes."""

    slots: list
    scores: list
    health: list | None
    seconds: float
    health_seconds: float

    def subset(self, idx: Sequence[int]) -> "PreScores":
        return PreScores([self.slots[i] for i in idx], [self.scores[i] for i in idx],
                         None if self.health is None else [self.health[i] for i in idx], self.seconds,
                         self.health_seconds)


class KnowledgeEditEvaluator:
    """Evaluates one method on edit cases at several strengths. Use :meth:`evaluate` per chunk."""

    metric_names = ROME_METRICS + EASYEDIT_METRICS + MEGA_METRICS + SCOPE_METRICS + HEALTH_METRICS

    def __init__(self, lm: LoadedModel, method, strengths: Sequence[float] = (1.0,), batch_size: int = 32,
                 generation: bool = False, max_new_tokens: int = 64, seed: int = 0, health: bool = True,
                 data_root=None, subject_templates: Sequence[str] = SUBJECT_TEMPLATES,
                 fluency_tokens: int = FLUENCY_MAX_NEW_TOKENS, edit_batch_size: int = 1):
        """``health``: the scope tests and model-health metrics (default on); ``generation``: also
        ``fluency_long``, generations of ``max_new_tokens`` from the cases' generation prompts;
        ``data_root``: where the neutral text is read (default: the default data root)."""
        self.lm, self.method = lm, method
        self.edit_batch_size = edit_batch_size
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
        pre = self.pre_scores(cases)
        ivs, fit_seconds = self.fit(cases)
        records = []
        for strength in self.strengths:
            idx = [c for c, case in enumerate(cases) if strength in todo[case.case_id]]
            if idx:
                records += self.post_records([cases[c] for c in idx], pre.subset(idx), [ivs[c] for c in idx],
                                             strength, [fit_seconds[c] for c in idx])
        return records

    def fit(self, cases: Sequence[EditCase]) -> tuple[list[Intervention], list[float]]:
        """One intervention per case (``edit_batch_size`` > 1: the cases of each consecutive group
        of that many share one edit fitted on all of them, ``fit_edits``), and fit seconds per case."""
        ivs: list[Intervention] = []
        fit_seconds: list[float] = []
        B = self.edit_batch_size
        if B == 1 and getattr(type(self.method), "fit_each", Method.fit_each) is not Method.fit_each:  # batched fitting
            seed_everything(self.seed)
            t = time.perf_counter()
            ivs = list(self.method.fit_each([c.request for c in cases]))
            return ivs, [(time.perf_counter() - t) / len(cases)] * len(cases)
        for g in range(0, len(cases), B):
            group = cases[g:g + B]
            case = group[0]
            seed_everything(self.seed)  # per case / group, so results do not depend on chunking
            t = time.perf_counter()
            iv = (self.method.fit_edit(case.request) if B == 1 else
                  self.method.fit_edits([c.request for c in group]))
            dt = (time.perf_counter() - t) / len(group)
            ivs += [iv] * len(group)
            fit_seconds += [dt] * len(group)
        return ivs, fit_seconds

    def pre_scores(self, cases: Sequence[EditCase]) -> "PreScores":
        """The unedited model's scores of every case's slots (and its health probes), batched."""
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
        n = max(len(cases), 1)
        return PreScores(slots, pre, pre_h, (time.perf_counter() - t0) / n, (time.perf_counter() - t1) / n)

    def post_records(self, cases: Sequence[EditCase], pre: "PreScores", ivs: Sequence[Intervention],
                     strength: float, fit_seconds: Sequence[float]) -> list[dict]:
        """One record per case: its post-edit scores under ``ivs[c]`` at ``strength``, and metrics."""
        t = time.perf_counter()
        post = self._score_post(pre.slots, list(ivs), strength, pre.scores)
        th = time.perf_counter()
        post_h = self.probe.post(cases, list(ivs), strength, pre.health,
                                 [None if post[j] is pre.scores[j] else _next_rows(post[j]) for j in range(len(cases))]
                                 ) if self.probe else None
        health_seconds = (time.perf_counter() - th) / max(len(cases), 1)
        eval_seconds = (time.perf_counter() - t) / max(len(cases), 1)
        records = []
        for j, case in enumerate(cases):
            pre_m = case_metrics(case, pre.scores[j], None, scope=self.health)
            post_m = case_metrics(case, post[j], pre.scores[j], scope=self.health)
            trace = {}
            if self.probe:
                pre_m.update(pre.health[j].metrics(self.probe.windows is not None))
                post_m.update(post_h[j][0])
                trace = {"subject_probes": pre.health[j].probes, "cfplus": pre.health[j].cfplus,
                         "fluency": pre.health[j].fluency_prompts}
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
                "nll": {"pre": _nlls(pre.scores[j]), "post": _nlls(post[j])},
                **({"greedy": {"new_first_token": pre.health[j].new_first, "subject_probes": post_h[j][1]}}
                   if self.health else {}),
                "intervention": ivs[j].describe(),
                "seconds": {"fit": round(fit_seconds[j], 4), "eval": round(eval_seconds, 4),
                            "pre_eval": round(pre.seconds, 4), "health": round(health_seconds, 4),
                            "pre_health": round(pre.health_seconds, 4)},
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
                if any("cfplus_specificity" in r[state] and "subject_leak" in r[state] for r in rs):
                    agg["scope_score"] = M.aggregate_joint(scope_score_columns(rs, state), M.hmean_rows)
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
