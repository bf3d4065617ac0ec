"""Unedited wikitext-2 perplexity of a model on the utility suite's windows, with and without the
tokenizer's special prefix (BOS): shows how much a tokenizer's BOS matters to the model.

    python scripts/perplexity_bos_check.py --model gemma3-270m --windows 8
"""

from __future__ import annotations

import argparse
import math

import torch

from editbench.evaluation.utility import UtilityConfig, UtilitySuite
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import special_prefix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--windows", type=int, default=8, help="windows per split (the test split's are used)")
    ap.add_argument("--window", type=int, default=256, help="tokens per window (the suite's default)")
    args = ap.parse_args()
    lm = load_model(args.model)
    suite = UtilitySuite(UtilityConfig(wikitext_windows=args.windows, window=args.window))
    prefix = special_prefix(lm.tokenizer)
    wins = [w[len(prefix):] for w in suite._windows(lm, "test")]  # the window's own tokens
    for name, pre in (("without prefix", []), (f"with prefix {prefix}", prefix)):
        nll = []
        with torch.no_grad():
            for w in wins:
                ids = torch.tensor([pre + w])
                logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, len(pre):-1].float(), -1)
                nll.append(float(-logp.gather(-1, ids[0, len(pre) + 1:, None]).mean()))
        print(f"{args.model} {len(wins)} windows {name}: perplexity {math.exp(sum(nll) / len(nll)):.1f}")


if __name__ == "__main__":
    main()
