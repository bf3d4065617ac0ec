"""How the sweep validity bounds relate to what they guard, on committed sweeps.

For every edited point (both splits) of the given sweep directories: its ``neutral_kl`` (nats), its
wikitext perplexity ratio to the unedited model of the same split, and its MC utility change (points).
Prints, per neutral_kl band, how many points fall there, their median perplexity ratio, the share
above the perplexity bound and the median utility change, then Spearman's rho between KL and the
perplexity ratio. It reads records only; it computes nothing on a model.

    python scripts/validity_calibration.py results/*/sweep-*          # every committed sweep
    python scripts/validity_calibration.py DIR --ppl-bound 1.5 --kl-bound 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

BANDS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, math.inf)


def edited_points(sweep: Path) -> list[dict]:
    """(neutral_kl, ppl_ratio, utility change) of every edited point that measured neutral_kl."""
    points = [json.loads(line) for line in (sweep / "points.jsonl").read_text().splitlines() if line.strip()]
    ref = {p["split"]: p for p in points if p["method"] == "unedited"}
    rows = []
    for p in points:
        kl = (p.get("neutral_kl") or {}).get("mean")
        if p["method"] == "unedited" or kl is None or p["split"] not in ref:
            continue
        util, util0 = p["utility"]["mean"], ref[p["split"]]["utility"]["mean"]
        rows.append({"sweep": sweep.name, "kl": kl, "ppl_ratio": p.get("ppl_ratio"),
                     "d_utility": None if util is None or util0 is None else util - util0})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--ppl-bound", type=float, default=1.5)
    ap.add_argument("--kl-bound", type=float, default=0.5)
    args = ap.parse_args(argv)
    rows, skipped = [], []
    for d in args.sweeps:
        if not (d / "points.jsonl").is_file():
            print(f"validity_calibration: error: {d} has no points.jsonl", file=sys.stderr)
            return 2
        got = edited_points(d)
        (rows.extend(got) if got else skipped.append(str(d)))
    if skipped:
        print(f"left out (no neutral_kl: made before the sweep protocol): {', '.join(skipped)}")
    if not rows:
        print("validity_calibration: error: no point with neutral_kl", file=sys.stderr)
        return 2
    print(f"{len(rows)} edited point-splits from {len(args.sweeps) - len(skipped)} sweeps")
    print(f"{'neutral_kl band':>18} {'n':>4} {'median ppl ratio':>17} {f'share ppl > {args.ppl_bound:g}x':>18} "
          f"{'median d utility':>17}")
    for lo, hi in zip(BANDS, BANDS[1:]):
        band = [r for r in rows if lo <= r["kl"] < hi]
        if not band:
            continue
        ratios = [r["ppl_ratio"] for r in band if r["ppl_ratio"] is not None]
        dutil = [r["d_utility"] for r in band if r["d_utility"] is not None]
        over = sum(x > args.ppl_bound for x in ratios) / len(ratios) if ratios else float("nan")
        print(f"{f'[{lo:g}, {hi:g})':>18} {len(band):>4} {np.median(ratios):>17.3g} {over:>18.0%} "
              f"{np.median(dutil):>+17.1f}")
    paired = [(r["kl"], r["ppl_ratio"]) for r in rows if r["ppl_ratio"] is not None]
    rho = stats.spearmanr(*zip(*paired)).statistic
    inside_kl = [r for r in rows if r["kl"] <= args.kl_bound and r["ppl_ratio"] is not None]
    print(f"Spearman rho(neutral_kl, ppl ratio) = {rho:.2f} over {len(paired)} point-splits; "
          f"of the {len(inside_kl)} within the KL bound {args.kl_bound:g}, "
          f"{sum(r['ppl_ratio'] > args.ppl_bound for r in inside_kl)} exceed the perplexity bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
