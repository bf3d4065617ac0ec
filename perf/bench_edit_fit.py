"""Edit fitting one at a time vs batched, on the same cases in one run: seconds per edit, the
speed-up, and how far apart the two fits are.

    python perf/bench_edit_fit.py --method rome --cases 8 [--model smollm2-135m] [--split edit]

One at a time: ``fit_edit`` per case (what a single-edit run did before batched fitting). Batched:
``fit_each`` on all the cases (``rome`` / ``memit`` / ``alphaedit``: the value optimisations of
:data:`editbench.methods.rome.VALUE_BATCH` edits share one forward/backward per step). Exactness:
the smallest cosine between the two fits' weight deltas, their largest relative difference, and
the largest difference of the post-edit NLL of target_new on each case's rewrite prompt. Both paths
are timed in this process, one after the other (``--repeats`` alternations, best of each), so any
other load on the machine affects both.
"""

from __future__ import annotations

import argparse
import time

import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation.evaluator import seed_everything
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.plugins import registry
from editbench.plugins.method import Method


def post_nll(lm, iv, request) -> float:
    with iv.apply(lm, 1.0):
        return score_targets(lm, [ScoreRequest(request.prompt, request.target_new)])[0].nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="rome")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="edit")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.cases < 1:
        raise SystemExit("editbench: error: --cases must be >= 1")
    lm = load_model(a.model)
    cls = registry.load("method", a.method)
    if cls.fit_each is Method.fit_each:
        raise SystemExit(f"editbench: error: method '{a.method}' has no batched fitting (fit_each)")
    method = cls(lm, dict(kv.split("=", 1) for kv in a.param))
    reqs = [c.request for c in CounterFact(split=a.split).load(a.cases)]
    print(f"{a.method} on {a.model}, {len(reqs)} {a.split} cases, torch threads {torch.get_num_threads()}")
    best = {"one": float("inf"), "batched": float("inf")}
    one = batched = None
    for _ in range(a.repeats):
        seed_everything(0)
        t = time.perf_counter()
        one = [method.fit_edit(r) for r in reqs]
        best["one"] = min(best["one"], time.perf_counter() - t)
        seed_everything(0)
        t = time.perf_counter()
        batched = method.fit_each(reqs)
        best["batched"] = min(best["batched"], time.perf_counter() - t)
    cos, rel, dnll = 1.0, 0.0, 0.0
    for r, x, y in zip(reqs, one, batched):
        for d1, d2 in zip(x.deltas, y.deltas):
            u, v = d1.dense().double().flatten(), d2.dense().double().flatten()
            cos = min(cos, float(torch.nn.functional.cosine_similarity(u, v, dim=0)))
            rel = max(rel, float((u - v).norm() / u.norm().clamp_min(1e-30)))
        dnll = max(dnll, abs(post_nll(lm, x, r) - post_nll(lm, y, r)))
    n = len(reqs)
    print(f"one at a time: {best['one'] / n:.2f} s/edit; batched: {best['batched'] / n:.2f} s/edit")
    print(f"deltas: min cosine {cos:.6f}, max relative difference {rel:.2e}; post-edit NLL max |diff| {dnll:.2e}")
    print(f"speed-up: {best['one'] / best['batched']:.1f}x")


if __name__ == "__main__":
    main()
