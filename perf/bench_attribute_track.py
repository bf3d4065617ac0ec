"""Seconds per point of an attribute sweep (default: the sentiment track on SmolLM2), by part, and
what the generation batch size buys.

    python perf/bench_attribute_track.py [--config configs/sweeps/sentiment-smollm2.yaml]
        [--items 64] [--batch-sizes 16,32,64] [--repeats 1]

In one process, on the config's model, benchmark, utility suite and methods: (1) the probe set
(the model's own sampled responses, judged) and each method's fit (its first configuration); (2)
the attribute evaluation of ``--items`` held-out test items on the unedited model at each batch
size, checking that the greedy responses are identical; (3) the utility suite on one split. Prints
seconds per item, the speed-up of each batch size over the first, and the projected seconds of one
point (val + test at the config's limits, attribute at the config's batch size, plus utility) and
of the whole sweep (its points times that, plus the fits).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from editbench.modeling.interventions import NoIntervention
from editbench.modeling.loading import load_model
from editbench.runs.sweep import SweepConfig, SweepWorker
from perfkit import best_of, print_table  # perf/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/sweeps/sentiment-smollm2.yaml")
    ap.add_argument("--items", type=int, default=64, help="test items timed per batch size")
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--repeats", type=int, default=1, help="best of N timings")
    a = ap.parse_args()
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    cfg = SweepConfig.load(a.config)
    print(f"model {cfg.model}, benchmark {cfg.benchmark}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    lm = load_model(cfg.model, dtype=cfg.dtype, seed=cfg.seed)
    worker = SweepWorker(cfg, lm)
    track = worker.track

    rows = []
    t = time.perf_counter()
    track._probe = track.bench.probe_set(lm, cfg.probe_limit)
    rows.append((f"probe set ({cfg.probe_limit} sampled responses, judged)", time.perf_counter() - t))
    fits = 0.0
    for spec in cfg.methods:
        params = spec.configs()[0]
        t = time.perf_counter()
        track.fit(worker.method(spec.name, params))
        dt = time.perf_counter() - t
        fits += dt * len(spec.configs())
        rows.append((f"fit {spec.label} (first of {len(spec.configs())} configurations)", dt))
    print_table(rows)

    items = track.bench.items("test", a.items)
    ctx = NoIntervention().uniform(lm)
    timed, ref = [], None
    for b in sizes:
        secs, recs = best_of(lambda: track.bench.evaluate(lm, ctx, items, batch_size=b), a.repeats)
        same = ref is None or [r["response"] for r in recs] == ref
        ref = ref or [r["response"] for r in recs]
        timed.append((b, secs))
        print(f"attribute, batch {b:3d}: {secs:7.1f} s for {len(items)} items = {secs / len(items):.3f} s/item; "
              f"responses identical to batch {sizes[0]}: {same}")
    for b, secs in timed[1:]:
        print(f"speed-up of batch {b} over batch {sizes[0]}: {timed[0][1] / secs:.2f}x")
    per_item = dict(timed).get(cfg.batch_size)
    if per_item is None:
        t0 = time.perf_counter()
        track.bench.evaluate(lm, ctx, items, batch_size=cfg.batch_size)
        per_item = time.perf_counter() - t0
    per_item /= len(items)
    t = time.perf_counter()
    worker.suite.evaluate(lm, ctx, "test", batch_size=cfg.batch_size)  # builds the neutral references once
    first = time.perf_counter() - t
    util, _ = best_of(lambda: worker.suite.evaluate(lm, ctx, "test", batch_size=cfg.batch_size), a.repeats)
    n = sum(cfg.split_limit(s) or len(track.bench.items(s)) for s in ("val", "test"))
    point = n * per_item + 2 * util
    n_points = 1 + sum(len(spec.configs()) * len(spec.strengths) for spec in cfg.methods)
    print(f"utility suite, one split: {util:.1f} s (first call, with the unedited references: {first:.1f} s)")
    print(f"projected seconds per point (val + test: {n} items at batch {cfg.batch_size}, utility twice): {point:.0f}")
    print(f"projected sweep: {n_points} points x {point:.0f} s + fits {fits:.0f} s = {(n_points * point + fits) / 3600:.2f} h")


if __name__ == "__main__":
    main()
