"""Built-in utility suite vs the lm-eval backend on the same multiple-choice items: per-item choice
agreement, the largest log-likelihood difference and the time each takes, unedited and under one
weight edit and one all-position activation intervention (both random, fixed seed).

    python scripts/utility_backends.py --model smollm2-135m --task arc_easy --limit 50

Times are of ``UtilitySuite.evaluate`` with perplexity and the Alpaca neutral texts switched off
(the four fixed neutral wikitext windows remain, the same for both backends), after one untimed
warm-up call per backend; suite construction (lm-eval: task loading) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from editbench.evaluation.lmeval import BUILTIN_EQUIVALENT, LmEvalConfig, LmEvalSuite  # noqa: E402
from editbench.evaluation.utility import UtilityConfig, UtilitySuite  # noqa: E402
from editbench.modeling.interventions import (ActivationIntervention, NoIntervention, SteeringVector,  # noqa: E402
                                              WeightIntervention)
from editbench.modeling.loading import load_model  # noqa: E402
from editbench.modeling.weights import ColumnDelta  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="arc_easy", choices=sorted(BUILTIN_EQUIVALENT))
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scale", type=float, default=0.5, help="size of the random edits")
    a = ap.parse_args()

    lm = load_model(a.model)
    common = dict(limit=a.limit, wikitext_windows=0, neutral=0)
    t0 = time.perf_counter()
    builtin = UtilitySuite(UtilityConfig(tasks=[a.task], **common))
    t1 = time.perf_counter()
    lmeval = LmEvalSuite(LmEvalConfig(tasks=[BUILTIN_EQUIVALENT[a.task]], **common))
    t2 = time.perf_counter()
    print(f"{a.model}, {a.task} {a.split}, {a.limit} items, batch {a.batch_size}, {torch.get_num_threads()} threads")
    print(f"suite construction: builtin {t1 - t0:.2f} s, lm-eval {t2 - t1:.2f} s")

    g = torch.Generator().manual_seed(0)
    d, mid = lm.adapter.hidden_size, lm.adapter.n_layers // 2
    edits = {"unedited": NoIntervention(),
             "weight edit": WeightIntervention([ColumnDelta(mid, "mlp", slice(0, 8),
                                                            a.scale * torch.randn(d, 1, generator=g),
                                                            torch.randn(8, 1, generator=g))]),
             "activation": ActivationIntervention([SteeringVector(mid, "attn", a.scale * torch.randn(d, generator=g))])}
    for suite in (builtin, lmeval):  # warm-up: the neutral reference, lm-eval's HFLM wrapper
        suite.evaluate(lm, NoIntervention().uniform(lm), a.split, a.batch_size)
    for name, iv in edits.items():
        recs, secs = [], []
        for suite in (builtin, lmeval):
            t = time.perf_counter()
            recs.append([r for r in suite.evaluate(lm, iv.uniform(lm, 1.0), a.split, a.batch_size) if "lls" in r])
            secs.append(time.perf_counter() - t)
        ours, theirs = recs
        assert [r["item_id"] for r in ours] == [r["item_id"] for r in theirs]
        same = sum(x["choice"] == y["choice"] for x, y in zip(ours, theirs))
        same_norm = sum(x["choice_norm"] == y["choice_norm"] for x, y in zip(ours, theirs))
        diff = max(abs(u - v) for x, y in zip(ours, theirs) for u, v in zip(x["lls"], y["lls"]))
        acc = [100 * sum(r["acc"] for r in rs) / len(rs) for rs in recs]
        print(f"{name:12s} same choice {same}/{len(ours)} (acc_norm {same_norm}/{len(ours)}), "
              f"max |d loglik| {diff:.1e}, acc {acc[0]:.1f} vs {acc[1]:.1f}, "
              f"time builtin {secs[0]:.2f} s, lm-eval {secs[1]:.2f} s ({secs[1] / secs[0]:.2f}x)")


if __name__ == "__main__":
    main()
