"""How well MEGA's scope gate separates paraphrases from neighbourhood prompts on one model.

For each CounterFact case the gate keys come from the rewrite prompt (as when fitting an edit);
each paraphrase and neighbourhood prompt is scored by its best position's similarity to the keys.
Prints the share of paraphrases (should pass) and neighbours (should not) at or above each threshold,
and the score ranges. Example (the README's numbers):

    python scripts/gate_check.py --model gemma3-270m --split train --limit 30
"""

from __future__ import annotations

import argparse
import sys

from editbench.benchmarks.counterfact import CounterFact
from editbench.errors import EditbenchError
from editbench.modeling.loading import load_model
from editbench.methods.mega import MEGA


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--split", default="train")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--gate-norm", default="standardize", choices=["standardize", "none"])
    ap.add_argument("--thresholds", default="0.7,0.75,0.8,0.85,0.9")
    args = ap.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
        lm = load_model(args.model)
        mega = MEGA(lm, {"gate_norm": args.gate_norm})
        para, nbr = [], []
        for case in CounterFact(split=args.split).load(args.limit):
            key = mega.gate_key(case.request)
            para += mega.gate_scores(key, case.paraphrase_prompts)
            nbr += mega.gate_scores(key, case.neighborhood_prompts)
    except (EditbenchError, ValueError) as e:
        print(f"gate_check: {e}", file=sys.stderr)
        return 2
    print(f"# {args.model}, CounterFact {args.split}, {args.limit} cases, gate_norm={args.gate_norm}, "
          f"gate layer {mega.gate_layer}: {len(para)} paraphrases, {len(nbr)} neighbourhood prompts")
    print(f"paraphrase scores {min(para):.3f}..{max(para):.3f}; neighbour scores {min(nbr):.3f}..{max(nbr):.3f}")
    print("| threshold | paraphrases in scope % | neighbours in scope % |\n|---|---|---|")
    for t in thresholds:
        print(f"| {t} | {100 * sum(s >= t for s in para) / len(para):.1f} | {100 * sum(s >= t for s in nbr) / len(nbr):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
