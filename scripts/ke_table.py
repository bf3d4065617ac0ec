"""Print the results README's CounterFact table rows (scope tests and model health) from run
directories' summary.json files, so every number in that table comes from a committed summary.

    python scripts/ke_table.py results/smollm2-135m/counterfact-edit/{unedited,mega,rome}

One row per run and strength, from its post-edit aggregates (the `unedited` method's are the
unedited model's). Rates x100 with their 95% CI, KLs in nats, fluency
in bits; `subj-NS` also prints its n (cases with other-relation facts about the subject).
``--subject-magnitude`` adds `subj-mag` (subject_specificity_magnitude, points of probability), as the
with-subject-facts tables show it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [("efficacy", 0), ("generalization", 0), ("specificity", 0), ("score", 0), ("subject_specificity", 0),
           ("cfplus_specificity", 0), ("subject_leak", 0), ("subject_kl", 2), ("neutral_kl", 2), ("fluency", 2)]
NAMES = ["ES", "PS", "NS", "Score", "subj-NS", "CF+ NS", "leak", "subj KL", "neutral KL", "fluency"]
MAGNITUDE = ("subject_specificity_magnitude", 1)


def cell(agg: dict | None, digits: int, show_n: bool = False) -> str:
    if not agg or agg.get("mean") is None:
        return "-"
    lo, hi = agg["ci95"]
    text = f"{agg['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text + (f" (n={agg['n']})" if show_n else "")


def columns(magnitude: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """(metric, digits) and header names, with `subj-mag` after `subj-NS` when asked for."""
    at = NAMES.index("subj-NS") + 1
    if not magnitude:
        return COLUMNS, NAMES
    return COLUMNS[:at] + [MAGNITUDE] + COLUMNS[at:], NAMES[:at] + ["subj-mag"] + NAMES[at:]


def rows(run: Path, cols: list[tuple[str, int]] = COLUMNS) -> list[str]:
    s = json.loads((run / "summary.json").read_text())
    out = []
    for strength, point in sorted(s["points"].items(), key=lambda kv: float(kv[0])):
        aggs = point["post"]
        cells = [cell(aggs.get(m), d, m == "subject_specificity") for m, d in cols]
        out.append(f"| {run.name} | {s.get('method_class', '-')} | {float(strength):g} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="README table rows from CounterFact run directories")
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--subject-magnitude", action="store_true", help="add the subj-mag column after subj-NS")
    a = ap.parse_args(argv)
    cols, names = columns(a.subject_magnitude)
    print("| run | class | s | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 3))
    for d in a.runs:
        for line in rows(d, cols):
            print(line)


if __name__ == "__main__":
    main()
