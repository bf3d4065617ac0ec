"""What the perf scripts share: the common options, best-of-N timing and the table they print."""

from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def add_common_args(ap: argparse.ArgumentParser, batch_size: int) -> None:
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (GPU)")


def best_of(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The fastest of ``repeats`` wall-clock timings of ``fn`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued GPU work belongs to this timing
        best = min(best, time.perf_counter() - t)
    return best, out  # type: ignore[return-value]


def print_table(rows: Sequence[tuple[str, float]], per: tuple[str, int] | None = None) -> None:
    """``(path, seconds)`` rows, with a rate column when ``per`` = (unit, count) is given."""
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'path':{width}s} {'seconds':>8s}" + (f" {per[0] + '/s':>8s}" if per else ""))
    for name, t in rows:
        print(f"{name:{width}s} {t:8.2f}" + (f" {per[1] / t:8.2f}" if per else ""))
