"""Throughput of the CounterFact evaluator vs a one-prompt-at-a-time loop vs bare forward passes.

    python perf/bench_counterfact_eval.py [--model smollm2-135m] [--split rome500] [--cases 40]

All three compute the same quantities (mean target NLL for target_new and target_true on every
rewrite, paraphrase and neighbourhood prompt of each case) on the unedited model, in one process:
1. editbench: KnowledgeEditEvaluator.evaluate (batched across cases, logits only where needed,
   plus metric bookkeeping);
2. loop: one (prompt, target) pair per forward pass with full logits, the way ROME/EasyEdit
   evaluation scripts do it;
3. bare: only the model forward passes of editbench's batches (pre-built tensors; no tokenisation,
   unembedding or metrics) - the floor the evaluator's overhead is measured against.
"""

from __future__ import annotations

import argparse
import time

import torch

from editbench.benchmarks.counterfact import CounterFact
from editbench.evaluation.evaluator import FAMILIES, KnowledgeEditEvaluator, case_slots
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import _batches, _layout, encode_prompt, encode_target
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


def bare_batches(lm, cases, batch_size):
    """The evaluator's exact batches, pre-built, so only the forward passes are timed."""
    reqs = [q for c in cases for _, q in case_slots(c)]
    prompts = [encode_prompt(lm.tokenizer, r.prompt) for r in reqs]
    targets = [encode_target(lm.tokenizer, r.target) for r in reqs]
    lengths = [len(p) + len(t) - 1 for p, t in zip(prompts, targets)]
    order = sorted(range(len(reqs)), key=lambda i: -lengths[i])
    return [_layout(lm, prompts, targets, idx)[0] for idx in _batches(order, lengths, batch_size, 8192)], len(reqs)


def timed(fn, repeats: int):
    best = float("inf")
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="rome500")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    lm = load_model(a.model, device=a.device)
    cases = CounterFact(split=a.split).load(a.cases)
    # the ROME-protocol pairs only (health=False): the loop below scores just those; the scope and
    # health probes, on by default in runs, are extra work the loop does not do
    ev = KnowledgeEditEvaluator(lm, Unedited(lm), strengths=[1.0], batch_size=a.batch_size, health=False)
    batches, n_pairs = bare_batches(lm, cases, a.batch_size)
    ev.evaluate(cases[:2])  # warm-up

    def bare():
        with torch.no_grad():
            for b in batches:
                lm.adapter.base(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    t_eval, recs = timed(lambda: ev.evaluate(cases), a.repeats)
    t_loop, loop_nll = timed(lambda: loop_one_at_a_time(lm, cases), 1)
    t_bare, _ = timed(bare, a.repeats)

    # the three paths must agree on the numbers, or the speed comparison means nothing
    ev_nll = [x for r in recs for fam in FAMILIES
              for pair in zip(r["nll"]["pre"][fam]["new"], r["nll"]["pre"][fam]["true"]) for x in pair]
    max_diff = max(abs(x - y) for x, y in zip(ev_nll, loop_nll))

    n = len(cases)
    print(f"model {a.model} on {lm.device}, torch threads {torch.get_num_threads()}, "
          f"CounterFact/{a.split}: {n} cases, {n_pairs} (prompt, target) pairs, batch size {a.batch_size}")
    print(f"{'path':34s} {'seconds':>8s} {'cases/s':>8s}")
    for name, t in (("editbench evaluator (unedited)", t_eval), ("one-pair-at-a-time loop", t_loop),
                    ("bare forward passes only", t_bare)):
        print(f"{name:34s} {t:8.2f} {n / t:8.2f}")
    print(f"speed-up vs one-at-a-time loop: {t_loop / t_eval:.1f}x")
    print(f"evaluator time / bare forward time: {t_eval / t_bare:.2f}x")
    print(f"max |NLL difference| evaluator vs loop: {max_diff:.2e}")


if __name__ == "__main__":
    main()
