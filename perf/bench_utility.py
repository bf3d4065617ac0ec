"""Throughput of the utility suite with and without prefix-shared multiple-choice scoring.

    python perf/bench_utility.py [--model smollm2-135m] [--limit 50] [--split test]

Both paths run the same built-in suite (UtilityConfig defaults: ARC-Easy, ARC-Challenge and
CommonsenseQA multiple choice, wikitext perplexity, neutral KL) on the unedited model, in one
process; the only difference is the layout of the multiple-choice scoring: every choice after one
question scored from one packed row (now) vs one row per (question, choice) pair (before). Also
times the multiple-choice part alone, and checks that both give the same per-item choices.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from functools import partial

import torch

from editbench.evaluation import utility as utility_module
from editbench.evaluation.utility import UtilityConfig, UtilitySuite
from editbench.modeling import scoring
from editbench.modeling.loading import load_model


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued GPU work belongs to this timing
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=50, help="items per task (the suite's default)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (GPU)")
    a = ap.parse_args()

    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    suite = UtilitySuite(UtilityConfig(limit=a.limit))
    items = [it for t in suite.cfg.tasks for it in suite.items(t, a.split)]
    n_choices = sum(len(it["choices"]) for it in items)
    suite.evaluate(lm, (nullcontext(), None), a.split, a.batch_size)  # warm-up, neutral reference

    def mc(share: bool):
        return scoring.score_choices(lm, [it["prompt"] for it in items], [it["choices"] for it in items],
                                     batch_size=a.batch_size, share_prefix=share)

    def whole(share: bool):
        original = utility_module.score_choices
        utility_module.score_choices = partial(original, share_prefix=share)
        try:
            return suite.evaluate(lm, (nullcontext(), None), a.split, a.batch_size)
        finally:
            utility_module.score_choices = original

    t_mc, mc_new = best_of(lambda: mc(True), a.repeats)
    t_mc_old, mc_old = best_of(lambda: mc(False), a.repeats)
    t_all, recs = best_of(lambda: whole(True), a.repeats)
    t_all_old, recs_old = best_of(lambda: whole(False), a.repeats)

    def picks(scores):
        return [max(range(len(s)), key=lambda k: s[k][0]) for s in scores]

    same = sum(x == y for x, y in zip(picks(mc_new), picks(mc_old)))
    diff = max(abs(x[0] - y[0]) / x[1] for s, t in zip(mc_new, mc_old) for x, y in zip(s, t))
    print(f"model {a.model} on {lm.device}, torch threads {torch.get_num_threads()}, split {a.split}: "
          f"{len(items)} MC items ({', '.join(suite.cfg.tasks)}), {n_choices} choices, batch size {a.batch_size}")
    print(f"{'path':44s} {'seconds':>8s}")
    for name, t in (("MC scoring, prefix-shared", t_mc), ("MC scoring, one row per choice", t_mc_old),
                    ("whole utility suite, prefix-shared", t_all), ("whole utility suite, one row per choice", t_all_old)):
        print(f"{name:44s} {t:8.2f}")
    print(f"MC speed-up: {t_mc_old / t_mc:.2f}x; whole-suite speed-up: {t_all_old / t_all:.2f}x")
    print(f"same chosen answer on {same}/{len(items)} items; max |per-token log-prob difference| {diff:.2e}; "
          f"records equal: {len(recs) == len(recs_old)}")


if __name__ == "__main__":
    main()
