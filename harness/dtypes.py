"""dtype names: one canonical spelling each, so that ``fp32`` and ``float32`` runs share a protocol
(light: no torch import, the report uses it too)."""

from __future__ import annotations

from editbench.errors import ConfigError

DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16"}


def normalize_dtype(name: str) -> str:
    """Canonical dtype name; one-line error for an unknown one."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ConfigError(f"unknown dtype {name!r} (use float32, bfloat16 or float16)")
    return DTYPE_ALIASES[key]
