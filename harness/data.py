"""Locating the shared data bundle and fingerprinting files."""

from __future__ import annotations

import hashlib
import os
import string
from functools import lru_cache
from pathlib import Path

from editbench.errors import DataError

ENV_VAR = "EDITBENCH_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def candidate_roots() -> list[Path]:
    """Search order: $EDITBENCH_DATA, ./../shared/data (from the working directory), then the
    `shared/data` folder next to this checkout."""
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(Path.cwd() / "shared" / "data")
    roots.append(_REPO_ROOT.parent / "shared" / "data")
    return roots


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data root, preferring an explicit path; fail with one clear line otherwise."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise DataError(f"data root {p} does not exist or is not a directory")
        return p.resolve()
    for p in candidate_roots():
        if p.is_dir():
            return p.resolve()
    tried = ", ".join(str(p) for p in candidate_roots())
    raise DataError(f"no data root found (tried {tried}); set ${ENV_VAR} or pass --data-root")


def data_file(relative: str, root: str | os.PathLike | None = None) -> Path:
    path = resolve_data_root(root) / relative
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    return path


@lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def check_placeholders(template: str, name: str, what: str, error: type[Exception] = DataError) -> None:
    """``template`` must hold the placeholder ``{name}`` (``name`` "" for a positional ``{}``) and no
    other; ``error(...)`` otherwise, its message starting with ``what``."""
    shown = "{" + name + "}"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise error(f"{what} {template!r} is not a valid template ({e})") from None
    unknown = [f for f in fields if f != name]
    if unknown:
        raise error(f"{what} {template!r} has an unknown placeholder '{{{unknown[0]}}}' (only '{shown}' is allowed)")
    if not fields:
        raise error(f"{what} {template!r} has no '{shown}' placeholder")
