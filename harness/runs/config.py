"""Configuration: the fields shared by runs and sweeps (declared once), the one KEY=VALUE / grid
parser, dtype aliases, YAML config files, and safe directory names for grid points.

``editbench run --config FILE.yaml`` and ``editbench sweep FILE.yaml`` read the same ``methods:``
shape: ``[{name, params: {..}, grid: {key: [v1, v2]}, strengths: [..]}]``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from editbench.errors import ConfigError
from editbench.dtypes import normalize_dtype
from editbench.modeling.loading import DEFAULT_MODEL

# ---------------------------------------------------------------------------------------------
# KEY=VALUE and grids
# ---------------------------------------------------------------------------------------------
def parse_kv(items: Iterable[str] | None, flag: str = "--param") -> dict[str, str]:
    """``["lr=0.1", "layer=3"]`` -> ``{"lr": "0.1", "layer": "3"}`` (values stay strings; each
    method converts them with its Params types)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if not k:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        if k in out:
            raise ConfigError(f"{flag} {k} is given twice")
        out[k] = v
    return out


def parse_grid_flags(items: Iterable[str] | None) -> dict[str, list[str]]:
    """``--grid KEY=V1,V2`` (repeatable) -> ``{KEY: [V1, V2]}``."""
    axes = {k: [x.strip() for x in v.split(",")] for k, v in parse_kv(items, "--grid").items()}
    for k, values in axes.items():
        if not all(values):
            raise ConfigError(f"--grid {k}= needs comma-separated values, got {','.join(values)!r}")
    return axes


def expand_grid(params: Mapping[str, Any], grid: Mapping[str, list]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` on top of ``params`` (one ``dict(params)`` without a grid)."""
    clash = sorted(set(params) & set(grid))
    if clash:
        raise ConfigError(f"'{clash[0]}' is given both as a fixed parameter and as a grid axis")
    keys = sorted(grid)
    return [{**params, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]


def parse_strengths(text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"invalid strength {part.strip()!r} in --strengths {text!r}") from None
        if not math.isfinite(v):
            raise ConfigError(f"invalid strength {part.strip()!r}: must be finite")
        out.append(v)
    return check_strengths(out)


MAX_STRENGTH = 1e6


def check_strengths(values: Any, who: str = "strengths") -> list[float]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{who} must be a list of finite numbers (non-empty), got {values!r}")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ConfigError(f"{who} must be a list of finite numbers, got {values!r}")
        if abs(s) > MAX_STRENGTH:
            raise ConfigError(f"invalid strength {s!r}: |strength| must be at most {MAX_STRENGTH:g}")
    if len(set(values)) != len(values):
        raise ConfigError(f"duplicate strengths in {values}")
    return [float(s) for s in values]


_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_name(point: Mapping[str, Any], max_len: int = 60) -> str:
    """A directory name for a grid point: a readable slug of ``k=v`` pairs plus a short hash of the
    exact values, never a path (``region_file=../../x`` cannot leave the output directory)."""
    exact = json.dumps({str(k): point[k] for k in sorted(point)}, sort_keys=True, default=str)
    digest = hashlib.sha1(exact.encode()).hexdigest()[:8]
    slug = ",".join(f"{k}={v}" for k, v in sorted(point.items(), key=lambda kv: str(kv[0])))
    slug = _SAFE.sub("_", slug).strip("._")[:max_len] or "point"
    return f"{slug}-{digest}"


def params_tag(resolved_params: Mapping[str, Any]) -> str:
    """Short hash of *resolved* hyperparameters (``lr=.1`` and ``lr=0.1`` name one directory)."""
    return hashlib.sha1(json.dumps(dict(resolved_params), sort_keys=True, default=str).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# Shared configuration fields and method specs
# ---------------------------------------------------------------------------------------------
def check_limit_value(limit: Any, key: str = "limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ConfigError(f"'{key}' must be an integer, got {limit!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"{key} must be >= 1, got {limit}")


@dataclass
class CommonConfig:
    """Fields every evaluation shares (declared here once)."""

    model: str = DEFAULT_MODEL
    seed: int = 0
    batch_size: int | str = 32  # or "auto" (editbench.runs.autobatch)
    device: str = "cpu"
    dtype: str = "float32"
    data_root: str | None = None
    limit: int | None = None

    def check_limit(self) -> None:
        check_limit_value(self.limit)

    def validate_common(self) -> None:
        from editbench.runs.autobatch import check_batch_size

        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"'seed' must be an integer, got {self.seed!r}")
        check_batch_size(self.batch_size)  # an integer >= 1, or "auto" (editbench.runs.autobatch)
        self.check_limit()
        for key in ("model", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"'{key}' must be a non-empty string, got {getattr(self, key)!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"'data_root' must be a path string, got {self.data_root!r}")
        self.dtype = normalize_dtype(self.dtype)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class MethodSpec:
    """One entry of a config's ``methods:`` list. ``label`` (default: ``name``) is the name its
    points and runs are reported under, so that variants of one method (Steer2Edit with heads only,
    neurons only, both) are compared with the baseline each on its own."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    strengths: list[float] = field(default_factory=lambda: [1.0])
    label: str = ""

    def __post_init__(self):
        self.label = self.label or self.name

    @classmethod
    def from_dict(cls, m: Any) -> "MethodSpec":
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError("every entry of 'methods' needs a 'name'")
        if not isinstance(m["name"], str) or not m["name"]:
            raise ConfigError(f"method 'name' must be a string, got {m['name']!r}")
        bad = sorted(set(m) - {"name", "params", "grid", "strengths", "label"})
        if bad:
            raise ConfigError(f"method entry '{m['name']}' has no key '{bad[0]}' (name, label, params, grid, strengths)")
        label = m.get("label", m["name"])
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ConfigError(f"method '{m['name']}': label must be 1-64 letters, digits, '.', '_' or '-' "
                              f"(starting with a letter or digit), got {label!r}")
        params, grid = m.get("params") or {}, m.get("grid") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"method '{m['name']}': 'params' must be a mapping, got {params!r}")
        if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
            raise ConfigError(f"method '{m['name']}': 'grid' must map each key to a non-empty list, got {grid!r}")
        strengths = check_strengths(m.get("strengths", [1.0]), f"method '{m['name']}': strengths")
        return cls(m["name"], dict(params), {str(k): list(v) for k, v in grid.items()}, strengths, label)

    def configs(self) -> list[dict]:
        return expand_grid(self.params, self.grid)


def parse_methods(value: Any) -> list[MethodSpec]:
    if not isinstance(value, list) or not value:
        raise ConfigError("'methods' must be a non-empty list of {name, label, params, grid, strengths}")
    specs = [MethodSpec.from_dict(m) for m in value]
    plugin_of: dict[str, str] = {}
    for s in specs:  # one label names one registered method (its points are compared as one method)
        if plugin_of.setdefault(s.label, s.name) != s.name:
            raise ConfigError(f"label '{s.label}' is given to two methods ({plugin_of[s.label]}, {s.name})")
    return specs


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping (one-line errors for missing, non-UTF-8, invalid)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        d = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: a config must be a mapping, got {type(d).__name__}")
    return d
