"""Knowledge-editing evaluator: pre/post-edit ROME and EasyEdit metrics per case, batched across cases.

For a chunk of cases it
1. scores every (prompt, target) pair the metrics need with the unedited model, in one batched call;
2. fits the method once per case (the method only sees the :class:`EditRequest`);
3. for each strength, scores the same pairs post-edit: interventions that are row-batchable
   (activation steering, the unedited model) share batches across cases, one row each; weight
   edits are applied per case, that case's prompts batched together;
4. turns scores into per-case records (raw NLLs kept for traceability).
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
from editbench.modeling.interventions import Intervention, NoIntervention
from editbench.modeling.loading import LoadedModel
from editbench.requests import EditCase
from editbench.modeling.scoring import ScoreRequest, TargetScore, generate, score_targets

ROME_METRICS = ("efficacy", "efficacy_magnitude", "generalization", "generalization_magnitude",
                "specificity", "specificity_magnitude")
EASYEDIT_METRICS = ("ee_rewrite_acc", "ee_rephrase_acc", "ee_locality")
# MEGA's extra metrics [paper names, our definitions]: greedy first-token match and doubt probes.
MEGA_METRICS = ("ft_acc", "ft_gen", "ft_spec", "doubt_1", "doubt_2")
FAMILIES = ("rewrite", "paraphrase", "neighborhood", "doubt_1", "doubt_2")

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


def _family(scores: Scored, fam: str, kind: str) -> list[TargetScore]:
    return [s for slot, s in scores if slot.family == fam and slot.kind == kind]


def case_metrics(case: EditCase, scores: Scored, pre: Scored | None) -> dict:
    """All per-case metrics (fractions in [0, 1]; magnitudes in [-1, 1]) from one model state's scores.
    ``pre`` (the unedited scores) is needed for EasyEdit locality; pass None for the pre-edit row."""
    out: dict = {}
    for fam, name, keep_true in (("rewrite", "efficacy", False), ("paraphrase", "generalization", False),
                                 ("neighborhood", "specificity", True)):
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

    metric_names = ROME_METRICS + EASYEDIT_METRICS + MEGA_METRICS

    def __init__(self, lm: LoadedModel, method, strengths: Sequence[float] = (1.0,), batch_size: int = 32,
                 generation: bool = False, max_new_tokens: int = 64, seed: int = 0):
        self.lm, self.method = lm, method
        self.strengths = list(strengths)
        self.batch_size = batch_size
        self.generation = generation
        self.max_new_tokens = max_new_tokens
        self.seed = seed

    # ---------------------------------------------------------------------------------------
    def _score_post(self, cases: Sequence[EditCase], slots: list[list[tuple[_Slot, ScoreRequest]]],
                    ivs: list[Intervention], strength: float, pre: list[Scored]) -> list[Scored]:
        post: list[Scored | None] = [None] * len(cases)
        rows_by_cls: dict[type, list[int]] = defaultdict(list)
        for c, iv in enumerate(ivs):
            if isinstance(iv, NoIntervention):
                post[c] = pre[c]
            elif iv.row_batchable:
                rows_by_cls[type(iv)].append(c)
            else:
                with iv.apply(self.lm, strength):
                    res = score_targets(self.lm, [q for _, q in slots[c]], self.batch_size)
                post[c] = [(slot, s) for (slot, _), s in zip(slots[c], res)]
        for cls, cs in rows_by_cls.items():
            reqs, owner = [], []
            for c in cs:
                reqs += [q for _, q in slots[c]]
                owner += [c] * len(slots[c])
            row_iv = [(ivs[c], strength) for c in owner]
            res = score_targets(self.lm, reqs, self.batch_size,
                                batch_context=lambda b, cls=cls: cls.apply_rows(self.lm, [row_iv[i] for i in b.indices], b))
            k = 0
            for c in cs:
                n = len(slots[c])
                post[c] = [(slot, s) for (slot, _), s in zip(slots[c], res[k:k + n])]
                k += n
        return post  # type: ignore[return-value]

    def _fluency(self, cases: Sequence[EditCase], ivs: list[Intervention] | None, strength: float) -> list[float | None]:
        """Mean n-gram entropy of generations for each case's generation prompts (None if it has none)."""
        out: list[float | None] = [None] * len(cases)
        todo = [c for c, case in enumerate(cases) if case.generation_prompts]
        if not todo:
            return out
        gen_kw = dict(max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=self.batch_size)
        if ivs is None or all(isinstance(ivs[c], NoIntervention) for c in todo):
            prompts = [p for c in todo for p in cases[c].generation_prompts]
            texts = iter(generate(self.lm, prompts, **gen_kw))
            for c in todo:
                out[c] = float(np.mean([M.ngram_entropy(next(texts)) for _ in cases[c].generation_prompts]))
            return out
        for c in todo:
            iv = ivs[c]
            prompts = list(cases[c].generation_prompts)
            if iv.row_batchable:
                ctx = lambda b, iv=iv: type(iv).apply_rows(self.lm, [(iv, strength)] * len(b.indices), b)  # noqa: E731
                texts = generate(self.lm, prompts, batch_context=ctx, **gen_kw)
            else:
                with iv.apply(self.lm, strength):
                    texts = generate(self.lm, prompts, **gen_kw)
            out[c] = float(np.mean([M.ngram_entropy(t) for t in texts]))
        return out

    # ---------------------------------------------------------------------------------------
    def evaluate(self, cases: Sequence[EditCase], todo: dict | None = None) -> Iterable[dict]:
        """Yield one record per (case, strength). ``todo[case_id]`` restricts the strengths (resume)."""
        todo = todo or {c.case_id: list(self.strengths) for c in cases}
        cases = [c for c in cases if todo.get(c.case_id)]
        if not cases:
            return []
        slots = [case_slots(c) for c in cases]
        t0 = time.perf_counter()
        flat = [q for s in slots for _, q in s]
        pre_flat = score_targets(self.lm, flat, self.batch_size)
        pre, k = [], 0
        for s in slots:
            pre.append([(slot, sc) for (slot, _), sc in zip(s, pre_flat[k:k + len(s)])])
            k += len(s)
        pre_fl = self._fluency(cases, None, 0.0) if self.generation else [None] * len(cases)
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
            post = self._score_post(sub, [slots[c] for c in idx], [ivs[c] for c in idx], strength, [pre[c] for c in idx])
            post_fl = self._fluency(sub, [ivs[c] for c in idx], strength) if self.generation else [None] * len(idx)
            eval_seconds = (time.perf_counter() - t) / len(idx)
            for j, c in enumerate(idx):
                case = cases[c]
                pre_m = case_metrics(case, pre[c], None)
                post_m = case_metrics(case, post[j], pre[c])
                if self.generation and pre_fl[c] is not None:
                    pre_m["fluency"], post_m["fluency"] = pre_fl[c], post_fl[j]
                bad = {"pre": M.split_non_finite(pre_m), "post": M.split_non_finite(post_m)}
                records.append({
                    "case_id": case.case_id,
                    "strength": strength,
                    "request": case.request.__dict__,
                    "prompts": {"paraphrase": list(case.paraphrase_prompts),
                                "neighborhood": list(case.neighborhood_prompts),
                                "neighborhood_target": case.neighborhood_target,
                                "generation": list(case.generation_prompts) if self.generation else []},
                    "pre": pre_m,
                    "post": post_m,
                    "nll": {"pre": _nlls(pre[c]), "post": _nlls(post[j])},
                    "intervention": ivs[c].describe(),
                    "seconds": {"fit": round(fit_seconds[c], 4), "eval": round(eval_seconds, 4),
                                "pre_eval": round(pre_seconds, 4)},
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
                names = [m for m in ROME_METRICS + EASYEDIT_METRICS + MEGA_METRICS + ("fluency",) if m in rs[0][state]]
                agg = {}
                for m in names:
                    scale = 100.0 if metric_registry.spec_of(m).scale == "percent" else 1.0
                    bad = sum(m in (r.get("non_finite") or {}).get(state, ()) for r in rs)
                    agg[m] = M.aggregate([r[state].get(m) for r in rs], scale=scale, non_finite=bad)
                agg["score"] = M.aggregate_joint(
                    [[r[state]["efficacy"] for r in rs], [r[state]["generalization"] for r in rs],
                     [r[state]["specificity"] for r in rs]], M.hmean_rows)
                point[state] = agg
            point["seconds_per_case"] = {
                "fit": float(np.mean([r["seconds"]["fit"] for r in rs])),
                "eval": float(np.mean([r["seconds"]["eval"] for r in rs])),
                "pre_eval": float(np.mean([r["seconds"]["pre_eval"] for r in rs])),
            }
            point["extra_numel_per_edit"] = float(np.mean([r["intervention"].get("extra_numel", 0) for r in rs]))
            points[repr(float(s))] = point
            pre_done = pre_done or point["pre"]
        return {"n_cases": len({r["case_id"] for r in records}), "pre": pre_done,
                "points": {k: {kk: v for kk, v in p.items() if kk != "pre"} for k, p in points.items()}}
