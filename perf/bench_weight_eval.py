"""Evaluation of a weight editor: per-row weight deltas (many cases in one batch, each row its own
case's factors) vs applying and restoring each case's edit, on the same fitted edits in one run.

    python perf/bench_weight_eval.py [--method steer2edit] [--split rome500] [--cases 40] [--model smollm2-135m]

The edits are fitted once (not timed); then the knowledge-edit evaluator (ROME and EasyEdit
metrics, scope tests and health probes, as a reference run) scores every case twice: with
``WeightIntervention.row_batchable`` (the default now) and with it switched off (the apply / restore
path of earlier versions). Prints seconds per case for each, the speed-up and the largest
difference of any post-edit NLL between the two.
"""

from __future__ import annotations

import argparse
import time

import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation.evaluator import KnowledgeEditEvaluator
from editbench.modeling.interventions import WeightIntervention
from editbench.modeling.loading import load_model
from editbench.plugins import registry


class Fitted:
    """The method's edits, fitted once: what the evaluator gets instead of the method."""

    def __init__(self, method, cases):
        self.name, self.supports = method.name, method.supports
        self._ivs = {c.case_id: method.fit_edit(c.request) for c in cases}

    def fit_edit(self, request):
        return self._ivs[request.case_id]


def max_nll_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for fam, kinds in x["nll"]["post"].items():
            for kind, vals in kinds.items():
                worst = max([worst] + [abs(u - v) for u, v in zip(vals, y["nll"]["post"][fam][kind])])
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="steer2edit")
    ap.add_argument("--split", default="rome500")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    lm = load_model(a.model)
    cases = CounterFact(split=a.split).load(a.cases)
    method = registry.load("method", a.method)(lm, {})
    fitted = Fitted(method, cases)
    if not all(isinstance(iv, WeightIntervention) for iv in fitted._ivs.values()):
        raise SystemExit(f"editbench: error: method '{a.method}' does not return weight edits")
    print(f"{a.method} on {a.model}, {len(cases)} {a.split} cases, batch {a.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    timings, records = {}, {}
    for path, rows in (("apply/restore", False), ("per-row deltas", True), ("apply/restore again", False)):
        WeightIntervention.row_batchable = rows
        ev = KnowledgeEditEvaluator(lm, fitted, strengths=(1.0,), batch_size=a.batch_size)
        t = time.perf_counter()
        records[path] = ev.evaluate(cases)
        timings[path] = time.perf_counter() - t
        print(f"{path}: {timings[path] / len(cases):.3f} s/case")
    WeightIntervention.row_batchable = True
    apply_s = min(timings["apply/restore"], timings["apply/restore again"])
    print(f"post-edit NLL max |diff| per-row vs apply: {max_nll_diff(records['per-row deltas'], records['apply/restore']):.2e}")
    print(f"speed-up: {apply_s / timings['per-row deltas']:.1f}x")


if __name__ == "__main__":
    main()
