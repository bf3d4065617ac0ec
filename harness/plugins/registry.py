"""Plugin discovery through Python entry points (``editbench.methods``, ``editbench.benchmarks``)."""

from __future__ import annotations

from importlib.metadata import entry_points

from editbench.errors import ConfigError

GROUPS = {"method": "editbench.methods", "benchmark": "editbench.benchmarks"}


def _eps(kind: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def names(kind: str) -> list[str]:
    return sorted(_eps(kind))


def load(kind: str, name: str):
    eps = _eps(kind)
    if name not in eps:
        have = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown {kind} '{name}' (registered: {have})")
    try:
        return eps[name].load()
    except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not crash listing
        raise ConfigError(f"{kind} '{name}' failed to load from {eps[name].value}: {type(e).__name__}: {e}") from None


def describe(kind: str) -> dict[str, str]:
    out = {}
    for name in names(kind):
        try:
            out[name] = getattr(load(kind, name), "description", "")
        except ConfigError as e:
            out[name] = f"(broken: {e})"
    return out
