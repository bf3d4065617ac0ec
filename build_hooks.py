"""setuptools build hook (not installed): stamps the git commit of the source into the built
package as ``editbench/_build_info.json``, so that provenance works from a wheel install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py

CODE_PATHS = ("harness", "methods", "benchmarks", "pyproject.toml")


def _git(*args: str) -> str:
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install asks git at run time
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS))
        out = Path(self.build_lib) / "editbench" / "_build_info.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"commit": commit or "unknown", "dirty": dirty}, sort_keys=True) + "\n")
