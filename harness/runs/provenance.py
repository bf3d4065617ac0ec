"""Which code computed a result: package version, git commit (and whether the code had local
changes), and a hash of the installed source, the same from a source checkout and from a wheel.

* From a checkout (editable install), git is asked about the checkout that holds *this package's*
  files, and "dirty" covers only the code (``harness/``, ``methods/``, ``benchmarks/``,
  ``pyproject.toml``), never results or docs.
* From a wheel, the commit and dirty flag stamped at build time (``_build_info.json``, written by
  the build hook in ``build_hooks.py``) are used; the source hash is computed from the installed
  files, so a wheel and the checkout it was built from agree on it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from editbench import __version__

#: source folders of the checkout that hold code; local changes elsewhere do not make a run dirty.
CODE_PATHS = ("harness", "methods", "benchmarks", "pyproject.toml")
BUILD_INFO = "_build_info.json"


def package_dirs() -> dict[str, Path]:
    """Installed folders of editbench and its plugin subpackages (they map to different source
    folders in a checkout)."""
    out = {}
    for name in ("editbench", "editbench.methods", "editbench.benchmarks"):
        spec = importlib.util.find_spec(name)
        out[name] = Path(list(spec.submodule_search_locations)[0]).resolve()
    return out


@lru_cache(maxsize=1)
def source_sha256() -> str:
    """sha256 over (package-relative path, bytes) of every installed ``.py`` file."""
    h = hashlib.sha256()
    for name, d in sorted(package_dirs().items()):
        skip = {d / "methods", d / "benchmarks"} if name == "editbench" else set()
        files = sorted(p for p in d.rglob("*.py") if not any(s in p.parents for s in skip))
        for p in files:
            rel = f"{name}/{p.relative_to(d).as_posix()}"
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)


def checkout_root() -> Path | None:
    """The git checkout whose tracked ``harness/__init__.py`` is this package (None for a wheel)."""
    pkg = package_dirs()["editbench"]
    try:
        top = _git(pkg, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return None
        root = Path(top.stdout.strip()).resolve()
        tracked = _git(root, "ls-files", "--error-unmatch", str((pkg / "__init__.py").relative_to(root)))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return root if tracked.returncode == 0 else None


@lru_cache(maxsize=1)
def git_state() -> dict:
    """``{"commit", "dirty"}`` of the code that runs (see the module docstring)."""
    root = checkout_root()
    if root is not None:
        try:
            commit = _git(root, "rev-parse", "HEAD").stdout.strip()
            dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS).stdout.strip())
            return {"commit": commit or "unknown", "dirty": dirty}
        except (OSError, subprocess.SubprocessError):
            return {"commit": "unknown", "dirty": False}
    stamp = package_dirs()["editbench"] / BUILD_INFO
    try:
        info = json.loads(stamp.read_text(encoding="utf-8"))
        return {"commit": str(info.get("commit") or "unknown"), "dirty": bool(info.get("dirty", False))}
    except (OSError, ValueError, AttributeError):
        return {"commit": "unknown", "dirty": False}


def versions() -> dict:
    """Code and library versions of this invocation (stored in every summary)."""
    import numpy
    import torch
    import transformers

    return {"editbench": __version__, **{f"git_{k}": v for k, v in git_state().items()},
            "source_sha256": source_sha256(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}


def code_version(v: dict) -> dict:
    """The part of :func:`versions` that identifies the code (stored with every record)."""
    return {k: x for k, x in v.items() if k == "editbench" or k.startswith("git_")}


def record_code_counts(records: list[dict], fallback: dict | None) -> list[dict]:
    """Which code produced the records: one entry per distinct code version with its record count.
    Records written before editbench stored ``code`` per record take ``fallback`` (the previous
    summary's versions), so a resume never relabels old records with the new commit."""
    counts: dict[str, int] = {}
    for r in records:
        c = r.get("code") if isinstance(r.get("code"), dict) else code_version(fallback or {"git_commit": "unknown"})
        key = json.dumps(c, sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return [{**json.loads(k), "n_records": n} for k, n in counts.items()]
