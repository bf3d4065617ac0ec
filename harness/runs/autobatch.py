"""``--batch-size auto``: the largest batch that fits, and a back-off when memory runs out.

* On a CUDA device, :func:`resolve_batch_size` tries the heaviest batch the harness builds (full
  next-token log-probs of ``PROBE_TOKENS``-token windows, as the perplexity and neutral-KL windows
  need) at 256, 128, ... rows and keeps the largest that runs, once per model, device and dtype.
* On a CPU, memory is rarely what limits a batch (throughput is, and it barely grows past a few
  dozen rows: ``perf/bench_attribute_track.py``), and probing would allocate the machine's memory
  for nothing: ``auto`` is :data:`CPU_AUTO` there.
* Either way, an out-of-memory error while an item is computed (CUDA OOM, ``MemoryError``, a CPU
  allocator failure) halves the batch and recomputes the item (:func:`backing_off`), down to 1.
  Every score is independent of the batch it is computed in (float32 on a CPU bit for bit, else to
  float tolerance; tested), so the records equal a fixed batch size's; the batch sizes used are
  recorded in the summary (``batch_size_used``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import torch

from editbench.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

AUTO = "auto"
CPU_AUTO = 32
PROBE_SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
PROBE_TOKENS = 256
_RESOLVED: dict[tuple, int] = {}


def check_batch_size(value: Any, key: str = "batch_size") -> None:
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"'{key}' must be an integer or 'auto', got {value!r}")
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def parse_batch_size(text: str) -> int | str:
    """The CLI's ``--batch-size``: a positive integer or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {text!r}") from None
    check_batch_size(value, "--batch-size")
    return value


def is_oom(e: BaseException) -> bool:
    """An out-of-memory failure of an allocation (GPU or CPU), as opposed to any other error."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                           or "defaultcpuallocator" in text)


def _fits(lm, rows: int) -> bool:
    ids = torch.zeros(rows, PROBE_TOKENS, dtype=torch.long, device=lm.device)
    try:
        with torch.no_grad():
            hidden = lm.adapter.base(input_ids=ids, use_cache=False).last_hidden_state
            torch.log_softmax(lm.adapter.logits(hidden).float(), -1)
        return True
    except Exception as e:  # noqa: BLE001 - only an out-of-memory failure means "too large"
        if not is_oom(e):
            raise
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def resolve_batch_size(value: int | str, lm) -> int:
    """``value`` itself, or for ``auto`` the largest batch that fits on ``lm``'s device (see the
    module doc), found once per model, device and dtype."""
    if value != AUTO:
        return int(value)
    key = (lm.model_id, str(lm.device), str(lm.dtype))
    if key not in _RESOLVED:
        if getattr(lm.device, "type", str(lm.device)) != "cuda":
            _RESOLVED[key] = CPU_AUTO
        else:
            _RESOLVED[key] = next((b for b in PROBE_SIZES if _fits(lm, b)), 1)
        log.info("--batch-size auto: %d on %s", _RESOLVED[key], lm.device)
    return _RESOLVED[key]


def backing_off(compute: Callable[[], T], get: Callable[[], int], set_: Callable[[int], None],
                used: list[int] | None = None) -> T:
    """``compute()``, halving the batch size (``get`` / ``set_``) and recomputing on an out-of-memory
    error, down to 1 (then the error stands); ``used`` collects each batch size that ran."""
    while True:
        try:
            out = compute()
            if used is not None and get() not in used:
                used.append(get())
            return out
        except Exception as e:  # noqa: BLE001 - anything but an out-of-memory failure is re-raised
            if not is_oom(e) or get() <= 1:
                raise
            smaller = max(1, get() // 2)
            log.warning("out of memory at batch size %d: retrying at %d", get(), smaller)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            set_(smaller)
