"""Throughput of the CounterFact evaluator vs a one-prompt-at-a-time loop vs bare forward passes.

    python perf/bench_counterfact_eval.py [--model smollm2-135m] [--split rome500] [--cases 40]

All paths compute the same quantities (mean target NLL for target_new and target_true on every
rewrite, paraphrase and neighbourhood prompt of each case) on the unedited model, in one process:
1. editbench: KnowledgeEditEvaluator.evaluate (batched across cases, every target after one prompt
   scored from one packed row - prefix sharing - logits only where needed, metric bookkeeping);
2. editbench, unshared: the same with one row per (prompt, target) pair (the layout before prefix
   sharing);
3. loop: one (prompt, target) pair per forward pass with full logits, the way ROME/EasyEdit
   evaluation scripts do it;
4. bare: only the model forward passes of the evaluator's packed batches (pre-built tensors; no
   tokenisation, unembedding or metrics): the shared-prefix token floor the evaluator is measured
   against.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation import evaluator as evaluator_module
from editbench.evaluation.evaluator import FAMILIES, KnowledgeEditEvaluator, case_slots
from editbench.modeling.loading import load_model
from editbench.modeling import scoring
from editbench.modeling.scoring import encode_prompt, encode_target, packed_batches
from editbench.methods.unedited import Unedited


@torch.no_grad()
def loop_one_at_a_time(lm, cases) -> list[float]:
    out = []
    for case in cases:
        for _slot, req in case_slots(case):
            p = encode_prompt(lm.tokenizer, req.prompt)
            t = encode_target(lm.tokenizer, req.target)
            logits = lm.model(torch.tensor([p + t], device=lm.device)).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            out.append(-sum(logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)) / len(t))
    return out


def bare_batches(lm, cases, batch_size: int, share_prefix: bool = True):
    """The evaluator's exact batches, pre-built, so only the forward passes are timed; and the
    number of token positions they run (padding included)."""
    reqs = [q for c in cases for _, q in case_slots(c)]
    batches = [pk for _, pk in packed_batches(lm, reqs, batch_size, 8192, share_prefix=share_prefix)]
    return batches, len(reqs), sum(pk.batch.input_ids.numel() for pk in batches)


def timed(fn, repeats: int):
    best = float("inf")
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued GPU work belongs to this timing
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="rome500")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (GPU)")
    a = ap.parse_args()

    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    cases = CounterFact(split=a.split).load(a.cases)
    # the ROME-protocol pairs only (health=False): the loop below scores just those; the scope and
    # health probes, on by default in runs, are extra work the loop does not do
    ev = KnowledgeEditEvaluator(lm, Unedited(lm), strengths=[1.0], batch_size=a.batch_size, health=False)
    batches, n_pairs, n_tokens = bare_batches(lm, cases, a.batch_size)
    _, _, n_tokens_unshared = bare_batches(lm, cases, a.batch_size, share_prefix=False)
    ev.evaluate(cases[:2])  # warm-up

    def bare():
        with torch.no_grad():
            for pk in batches:
                lm.adapter.base(input_ids=pk.batch.input_ids, attention_mask=pk.attention,
                                position_ids=pk.positions, use_cache=False)

    def unshared():
        original = scoring.score_targets
        evaluator_module.score_targets = partial(original, share_prefix=False)
        try:
            return ev.evaluate(cases)
        finally:
            evaluator_module.score_targets = original

    t_eval, recs = timed(lambda: ev.evaluate(cases), a.repeats)
    t_unshared, recs_unshared = timed(unshared, a.repeats)
    t_loop, loop_nll = timed(lambda: loop_one_at_a_time(lm, cases), 1)
    t_bare, _ = timed(bare, a.repeats)

    # the paths must agree on the numbers, or the speed comparison means nothing
    def nlls(records):
        return [x for r in records for fam in FAMILIES
                for pair in zip(r["nll"]["pre"][fam]["new"], r["nll"]["pre"][fam]["true"]) for x in pair]

    max_diff = max(abs(x - y) for x, y in zip(nlls(recs), loop_nll))
    max_diff_unshared = max(abs(x - y) for x, y in zip(nlls(recs), nlls(recs_unshared)))

    n = len(cases)
    print(f"model {a.model} on {lm.device}, torch threads {torch.get_num_threads()}, "
          f"CounterFact/{a.split}: {n} cases, {n_pairs} (prompt, target) pairs, batch size {a.batch_size}")
    print(f"token positions run: {n_tokens} prefix-shared, {n_tokens_unshared} one row per pair "
          f"({n_tokens_unshared / n_tokens:.2f}x fewer)")
    print(f"{'path':40s} {'seconds':>8s} {'cases/s':>8s}")
    for name, t in (("editbench evaluator (prefix-shared)", t_eval), ("editbench evaluator, one row per pair", t_unshared),
                    ("one-pair-at-a-time loop", t_loop), ("shared-prefix token floor (bare)", t_bare)):
        print(f"{name:40s} {t:8.2f} {n / t:8.2f}")
    print(f"speed-up vs one-at-a-time loop: {t_loop / t_eval:.1f}x (one row per pair: {t_loop / t_unshared:.1f}x)")
    print(f"evaluator time / shared-prefix token floor: {t_eval / t_bare:.2f}x")
    print(f"max |NLL difference| evaluator vs loop: {max_diff:.2e}; prefix-shared vs one row per pair: "
          f"{max_diff_unshared:.2e}")


if __name__ == "__main__":
    main()
