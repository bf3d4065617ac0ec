"""Many edits in one model: sequential (lifelong) knowledge editing, one edit or a batch at a time.

``editbench run --sequential [--checkpoints 1,10,100] [--edit-batch-size B]`` applies the edits of
the selected cases cumulatively, in case order, ``B`` at a time, as the method's
:attr:`~editbench.plugins.method.Method.composition` says: ``weights`` - each batch is fitted on
the model with every earlier edit in force and its deltas add to theirs; ``independent`` - each
batch is fitted on the unedited model and :meth:`~editbench.plugins.method.Method.compose` puts
them in force together. After ``T`` edits (each checkpoint: a multiple of ``B``, or the last case)
every one of the first ``T`` cases is evaluated on the edited model (efficacy / generalization
retention of old edits, their neighbourhood prompts, EasyEdit metrics) and the model's health
(``neutral_kl`` on the fixed neutral windows, once per checkpoint). The edits are fitted once; a
checkpoint only evaluates.

Files (besides ``config.json`` and ``summary.json``):
* ``cases.jsonl`` - one record per (checkpoint, case): ``checkpoint``, the pre / post metrics as in
  a single-edit run, raw NLLs, ``edits`` (how many edits were in force);
* ``checkpoints.jsonl`` - one line per checkpoint: ``neutral_kl`` (mean over the windows' positions,
  nats) and timings;
* ``edits/NNNNN.{safetensors,json}`` - every fitted batch edit (:mod:`editbench.modeling.serialize`).

Resume: the stored edits are loaded (never refitted), the missing ones fitted on the state they
rebuild, and a checkpoint's missing records recomputed chunk by chunk (chunks aligned on the case
list, every score of a chunk recomputed), so a run killed at any point ends with the records of an
uninterrupted run. The unedited scores of all cases are computed first, in one batched pass, on
every invocation (the same batches each time).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Sequence

import torch

from editbench.errors import ConfigError
from editbench.evaluation import metrics as M
from editbench.evaluation.evaluator import seed_everything
from editbench.evaluation.scope import neutral_windows
from editbench.modeling.interventions import EditedState, WeightIntervention
from editbench.modeling.scoring import window_logprobs
from editbench.modeling.serialize import load_intervention, save_intervention
from editbench.modeling.weights import CumulativeWeights
from editbench.runs.rundir import ResultDir

CHECKPOINTS = "checkpoints.jsonl"
EDITS = "edits"
#: the metrics a checkpoint aggregates (those of the single-edit protocol that need no per-case model)
SEQUENTIAL_METRICS = ("efficacy", "efficacy_magnitude", "generalization", "generalization_magnitude",
                      "specificity", "specificity_magnitude", "ee_rewrite_acc", "ee_rephrase_acc", "ee_locality",
                      "ft_acc", "ft_gen", "ft_spec")


def default_checkpoints(n: int, batch: int = 1) -> list[int]:
    """1, 10, 100, ... below ``n`` that are whole batches, and ``n`` itself."""
    out, t = [], 1
    while t < n:
        if t % batch == 0:
            out.append(t)
        t *= 10
    return out + [n]


def check_plan(method, n_cases: int, checkpoints: Sequence[int] | None, batch: int, strengths: Sequence[float],
               sequential: bool) -> list[int]:
    """The checkpoints of a many-edit run (one-line errors for a plan that cannot run)."""
    if batch > 1 and "batch" not in method.supports:
        raise ConfigError(f"method '{method.name}' cannot fit several edits at once (--edit-batch-size {batch}); "
                          "use --edit-batch-size 1")
    if not sequential:
        return []
    if method.composition is None:
        raise ConfigError(f"method '{method.name}' declares no composition of edits: it cannot run --sequential")
    if len(strengths) != 1:
        raise ConfigError("--sequential applies every edit at one strength: give a single --strengths value")
    cps = list(checkpoints) if checkpoints else default_checkpoints(n_cases, batch)
    if any(t > n_cases for t in cps):
        raise ConfigError(f"--checkpoints {max(cps)} is beyond the {n_cases} selected cases (--limit)")
    bad = [t for t in cps if t % batch and t != n_cases]
    if bad:
        raise ConfigError(f"--checkpoints {bad[0]} falls inside a batch of {batch} edits: use multiples of "
                          f"--edit-batch-size (or the last case)")
    return cps


class SequentialRun:
    """One sequential run's compute, under the run directory's writer lock."""

    def __init__(self, out: ResultDir, worker, cases: Sequence, checkpoints: Sequence[int], batch: int,
                 strength: float, seed: int, code: dict, data_root: Any = None, progress: bool = True,
                 chunk_size: int = 8):
        self.out, self.worker, self.cases = out, worker, list(cases)
        self.method, self.ev, self.lm = worker.method, worker.evaluator, worker.lm
        self.checkpoints, self.batch, self.strength = list(checkpoints), batch, strength
        self.seed, self.code, self.data_root, self.progress, self.chunk = seed, code, data_root, progress, chunk_size

    # -- what is done ----------------------------------------------------------------------------
    def _todo(self, records: list[dict], health: list[dict]) -> list[int]:
        done = {(r.get("checkpoint"), r["case_id"]) for r in records}
        have = {h["checkpoint"] for h in health}
        return [T for T in self.checkpoints
                if T not in have or any((T, c.case_id) not in done for c in self.cases[:T])]

    def run(self, records: list[dict]) -> tuple[list[dict], list[dict]]:
        """Fit, store, apply and evaluate what is missing; returns (all case records, all checkpoint
        records) of this run's checkpoints."""
        from tqdm.auto import tqdm

        self.out.check_records(CHECKPOINTS, {"checkpoint": int})
        health = self.out.load_records(CHECKPOINTS, required={"checkpoint": int})
        todo = self._todo(records, health)
        if todo:
            (self.out.path / EDITS).mkdir(exist_ok=True)
            pre = self.ev.pre_scores(self.cases)  # unedited, every case, one batched pass
            windows = neutral_windows(self.lm, self.data_root)
            ref = window_logprobs(self.lm, windows, self.ev.batch_size) if windows else None
            weights = CumulativeWeights(self.lm.adapter) if self.method.composition == "weights" else None
            edits: list = []
            fit_seconds: dict = {}
            bar = tqdm(total=max(todo), unit="edit", disable=not self.progress,
                       desc=f"{self.method.name} sequential")
            try:
                for k, start in enumerate(range(0, max(todo), self.batch)):
                    group = self.cases[start:start + self.batch]
                    iv, secs = self._edit(k, group)
                    fit_seconds.update({c.case_id: secs / len(group) for c in group})
                    if weights is not None:
                        weights.add(iv.deltas, self.strength)
                    else:
                        edits.append(iv)
                    self.method.after_edit(iv)
                    bar.update(len(group))
                    T = start + len(group)
                    if T in todo:
                        new, h = self._checkpoint(T, pre, edits, weights, windows, ref, records, health, fit_seconds)
                        records += new
                        health += h
            finally:
                bar.close()
                if weights is not None:
                    weights.restore()
        keep = set(self.checkpoints)
        return ([r for r in records if r.get("checkpoint") in keep],
                sorted((h for h in health if h["checkpoint"] in keep), key=lambda h: h["checkpoint"]))

    def _edit(self, k: int, group: Sequence) -> tuple[Any, float]:
        """Batch ``k``'s edit: loaded from ``edits/`` when stored, else fitted (on the current model
        state) and stored; with its fit seconds."""
        path = self.out.path / EDITS / f"{k:05d}"
        ids = [c.case_id for c in group]
        if path.with_suffix(".json").is_file():
            iv, meta = load_intervention(path)
            if meta.get("cases") != ids:
                raise ConfigError(f"{path}.json stores the edit of cases {meta.get('cases')}, not {ids}: the run's "
                                  "case list changed; use another --out")
            return iv, float(meta.get("fit_seconds", 0.0))
        seed_everything(self.seed)
        t = time.perf_counter()
        iv = (self.method.fit_edit(group[0].request) if self.batch == 1 else
              self.method.fit_edits([c.request for c in group]))
        secs = time.perf_counter() - t
        if self.method.composition == "weights" and not isinstance(iv, WeightIntervention):
            raise ConfigError(f"method '{self.method.name}' declares composition 'weights' but returned a "
                              f"{type(iv).__name__}, not a WeightIntervention")
        save_intervention(iv, path, meta={"cases": ids, "fit_seconds": secs})
        return iv, secs

    def _checkpoint(self, T: int, pre, edits: list, weights, windows, ref, records: list[dict], health: list[dict],
                    fit_seconds: dict) -> tuple[list[dict], list[dict]]:
        """Evaluate the first ``T`` cases (the missing chunks) and the model's health after ``T`` edits."""
        lm, ev = self.lm, self.ev
        outer, bctx = (nullcontext(), None) if weights is not None else self.method.compose(edits).uniform(lm, self.strength)
        done = {(r.get("checkpoint"), r["case_id"]) for r in records}
        new: list[dict] = []
        h_new: list[dict] = []
        with outer:
            state = EditedState(bctx)
            if not any(h["checkpoint"] == T for h in health):
                t = time.perf_counter()
                rec: dict = {"checkpoint": T, "edits": T}
                if windows:
                    kl = window_logprobs(lm, windows, ev.batch_size, bctx, reference=ref)
                    rec["neutral_kl"] = float(torch.cat(kl).clamp_min(0.0).mean())
                rec["seconds"] = round(time.perf_counter() - t, 4)
                rec["code"] = self.code
                self.out.append(CHECKPOINTS, [rec])
                h_new.append(rec)
            for s in range(0, T, self.chunk):
                idx = list(range(s, min(s + self.chunk, T)))
                if all((T, self.cases[i].case_id) in done for i in idx):
                    continue
                chunk = [self.cases[i] for i in idx]
                recs = ev.post_records(chunk, pre.subset(idx), [state] * len(chunk), self.strength,
                                       [fit_seconds.get(c.case_id, 0.0) for c in chunk])
                recs = [{**r, "checkpoint": T, "intervention": {"type": "sequential", "edits": T},
                         "code": self.code} for r in recs if (T, r["case_id"]) not in done]
                self.out.append("cases.jsonl", recs)
                new += recs
        return new, h_new


def summarize_checkpoints(records: Sequence[dict], health: Sequence[dict]) -> dict:
    """``{T: {metric: aggregate}}`` (x100 for rates, with n and bootstrap CI) plus ``neutral_kl`` and
    the ROME Score, from the records of each checkpoint."""
    from editbench.evaluation import metric_registry

    by_t: dict[int, list[dict]] = {}
    for r in records:
        by_t.setdefault(int(r["checkpoint"]), []).append(r)
    kl = {int(h["checkpoint"]): h.get("neutral_kl") for h in health}
    out: dict = {}
    for T in sorted(by_t):
        rs = sorted(by_t[T], key=lambda r: str(r["case_id"]))
        agg: dict = {"edits": T, "n_cases": len(rs)}
        for m in SEQUENTIAL_METRICS:
            if any(m in r["post"] for r in rs):
                spec = metric_registry.spec_of(m)
                bad = sum(m in (r.get("non_finite") or {}).get("post", ()) for r in rs)
                agg[m] = M.aggregate([r["post"].get(m) for r in rs], scale=100.0 if spec.scale == "percent" else 1.0,
                                     non_finite=bad, proportion=spec.proportion)
        agg["score"] = M.aggregate_joint([[r["post"]["efficacy"] for r in rs], [r["post"]["generalization"] for r in rs],
                                          [r["post"]["specificity"] for r in rs]], M.hmean_rows)
        if kl.get(T) is not None:
            agg["neutral_kl"] = {"mean": kl[T], "n": 1, "note": "one model state: mean KL over the neutral windows' "
                                 "positions (no CI)"}
        out[str(T)] = agg
    return out
