"""``editbench check-method``: the conformance suite's command (parsers live in
:mod:`editbench.plugins.scaffold`, so that building the CLI parser stays light)."""

from __future__ import annotations

import argparse
import time

from editbench.plugins.conformance import DEFAULT_CHECK_MODEL, check_method, format_table


def cmd_check_method(a: argparse.Namespace) -> int:
    """Exit 0 when every check passes, 1 when one fails."""
    from editbench.runs.config import parse_kv

    params = parse_kv(a.param)
    model = a.model or DEFAULT_CHECK_MODEL
    t0 = time.perf_counter()
    results = check_method(a.name, model=model, params=params, seed=a.seed)
    shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
    print(f"# conformance of method '{a.name}' on {model} (params: {shown}, seed {a.seed})")
    print(format_table(results))
    failed = [r.name for r in results if not r.passed]
    took = time.perf_counter() - t0
    skipped = [r.name for r in results if r.skipped]
    ran = len(results) - len(skipped)
    print(f"\n{ran - len(failed)}/{ran} checks passed in {took:.1f} s"
          + (f"; skipped (not applicable): {', '.join(skipped)}" if skipped else "")
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
