"""Packaging: one `editbench` namespace, and a wheel install that behaves like the checkout
(provenance, data-root search, plugins), outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **kw.pop("env", {})}
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)


def test_only_the_editbench_namespace_is_importable(tmp_path):
    code = ("import importlib, editbench\n"
            "bad = []\n"
            "for m in ('harness', 'methods', 'benchmarks'):\n"
            "    try:\n"
            "        importlib.import_module(m); bad.append(m)\n"
            "    except ImportError:\n"
            "        pass\n"
            "print(bad)\n")
    r = _run([sys.executable, "-c", code], cwd=tmp_path)  # outside the repository
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_public_api_from_the_top():
    import editbench

    for name in editbench.__all__:
        assert getattr(editbench, name) is not None, name
    from editbench import (ActivationIntervention, Benchmark, EditRequest, Intervention, Method,  # noqa: F401
                           SteeringVector, WeightIntervention, compute_rank1_edits, load_model)

    assert Method.__module__ == "editbench.plugins.method"
    with pytest.raises(AttributeError):
        editbench.no_such_name  # noqa: B018


def test_no_import_cycles():
    """Module-level imports between editbench modules form no cycle (function-level imports, used
    to keep the CLI light, are allowed)."""
    import ast

    mods = {}
    for folder in ("harness", "methods", "benchmarks"):
        for p in (REPO / folder).rglob("*.py"):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            parts = ["editbench", *parts[1:]] if parts[0] == "harness" else ["editbench", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    graph = {}
    for m, p in mods.items():
        deps = set()
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[m] = {d for d in deps if d in mods and d != m}
    state: dict[str, int] = {}

    def visit(u, stack):
        state[u] = 1
        for v in graph[u]:
            assert state.get(v) != 1, "import cycle: " + " -> ".join(stack[stack.index(v):] + [u, v])
            if v not in state:
                visit(v, stack + [u])
        state[u] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert max(len(p.read_text().splitlines()) for p in mods.values()) <= 600


@pytest.mark.slow
def test_wheel_install_outside_the_repo(tmp_path):
    """Build a wheel, install it into a fresh venv outside the repository (dependencies shared from
    this environment through a .pth file), and run `editbench run --model tiny-llama --limit 2` from
    a working directory whose ../shared/data is the data bundle: provenance comes from the build
    stamp, the source hash equals the checkout's, the data root is found by the default search."""
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data not available")
    wheels = tmp_path / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
              str(REPO)], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("editbench-*.whl")
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co. from this venv
    r = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (tmp_path / "project" / "shared").symlink_to(SHARED)  # the default search: ../shared/data
    env = {"EDITBENCH_DATA": "", "EDITBENCH_CACHE": str(tmp_path / "cache")}
    r = _run([str(venv / "bin" / "editbench"), "run", "--model", "tiny-llama", "--limit", "2", "--quiet",
              "--out", "out"], cwd=work, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((work / "out" / "summary.json").read_text())
    where = _run([str(py), "-c", "import editbench; print(editbench.__file__)"], cwd=work).stdout.strip()
    assert where.startswith(str(site)), where  # the wheel's copy ran, not the checkout
    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
    from editbench.runs.provenance import source_sha256

    assert summary["versions"]["git_commit"] == head
    assert summary["versions"]["source_sha256"] == source_sha256()
    assert summary["kind"] == "run" and summary["n_cases"] == 2
    assert Path(summary["config"]["data_root"]) == (SHARED / "data").resolve()
    r = _run([str(venv / "bin" / "editbench"), "methods"], cwd=work)
    assert r.returncode == 0 and "steer2edit" in r.stdout, r.stdout + r.stderr
    code = "from editbench.evaluation.lmeval import local_tasks; print(sorted(local_tasks()))"
    r = _run([str(py), "-c", code], cwd=work)  # the lm-eval backend's task YAMLs are package data
    assert r.returncode == 0 and "arc_easy_local" in r.stdout, r.stdout + r.stderr
