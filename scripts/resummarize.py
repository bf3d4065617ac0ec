"""Rewrite the summaries of finished run directories under the current code, computing nothing new.

    python scripts/resummarize.py results/smollm2-135m results/gemma3-270m [--dry-run]

Each run directory found (a ``config.json`` of a run: ``method`` and ``benchmark`` keys) is resumed
with its own resolved configuration: every record is already there, so :func:`editbench.runs.runner.execute`
only re-derives ``summary.json`` from ``cases.jsonl`` (e.g. to add an aggregate a newer version
computes, such as ``scope_score``). The per-record code versions (``record_code``) still say which
code computed the numbers; a directory whose records do not cover its configuration is left alone
(it would compute), as is one whose data or weights changed (the resume is refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from editbench.errors import EditbenchError
from editbench.plugins import registry
from editbench.results import read_jsonl
from editbench.runs.runner import RunConfig, dataset_kwargs, execute, load_cases


def run_dirs(roots: list[str]) -> list[Path]:
    out = []
    for root in map(Path, roots):
        for cfg in sorted(root.rglob("config.json")):
            try:
                c = json.loads(cfg.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(c, dict) and "method" in c and "benchmark" in c and (cfg.parent / "summary.json").exists():
                out.append(cfg.parent)
    return out


def complete(d: Path, cfg: RunConfig) -> bool:
    """Whether the directory's records cover every (case, strength) of its configuration."""
    bench_cls = registry.load("benchmark", cfg.benchmark)
    bench = bench_cls(data_root=cfg.data_root, split=cfg.split, **dataset_kwargs(bench_cls, cfg.dataset))
    cases = load_cases(bench, cfg)
    recs = read_jsonl(d / "cases.jsonl") if (d / "cases.jsonl").exists() else read_jsonl(d / "cases.jsonl.gz")
    if cfg.sequential:
        have = {(r.get("checkpoint"), r["case_id"]) for r in recs}
        return all((T, c.case_id) in have for T in cfg.checkpoints or [] for c in cases[:T])
    have = {(r["case_id"], float(r["strength"])) for r in recs}
    return all((c.case_id, float(s)) in have for c in cases for s in cfg.strengths)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for d in run_dirs(a.roots):
        raw = json.loads((d / "config.json").read_text())
        cfg = RunConfig(**{k: v for k, v in raw.items() if k in fields})
        cfg.out = str(d)
        try:
            cfg.validate()
            if not complete(d, cfg):
                print(f"skip {d}: records do not cover its configuration (it would compute)")
                continue
            if a.dry_run:
                print(f"would resummarize {d}")
                continue
            execute(cfg, progress=False)
            print(f"resummarized {d}")
        except EditbenchError as e:
            print(f"skip {d}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
