"""perf/bench_scaling.py runs end to end on the tiny shapes (its table and slope lines hold finite
numbers) and refuses bad input with one ``editbench: error:`` line and exit code 2."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "perf" / "bench_scaling.py"
NUMBER = r"-?\d+(?:\.\d+)?"


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("editbench: error: "), stderr
    return lines[0]


def test_runs_end_to_end_and_fits_slopes(tmp_path):
    out = tmp_path / "rows.json"
    # two tiny shapes (0.2M, 0.85M parameters) so that a slope is fitted; ROME (second moment, value
    # optimisation, weight edits) kept cheap
    p = bench("--shapes", "tiny,tiny-x4", "--methods", "rome", "--cases", "1", "--mom2-tokens", "256",
              "--param", "rome.steps=2", "--json", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("shape"))
    assert "fit s/case" in lines[header] and "eval s/case" in lines[header] and "% weights" in lines[header]
    rows = [l.split() for l in lines[header + 1:header + 3]]
    assert sorted((r[0], r[3]) for r in rows) == [("tiny", "rome"), ("tiny-x4", "rome")]
    for r in rows:
        assert r[2] == "float32"
        values = [float(v) for v in r[4:9]]  # setup, fit, eval seconds, MB, %
        assert all(math.isfinite(v) and v >= 0 for v in values), r
        assert values[1] > 0 and values[2] > 0, r
    slope_lines = [l for l in lines if l.startswith("slope ")]
    assert {l.split()[1] for l in slope_lines} == {"rome"}
    for l in slope_lines:
        m = re.match(rf"slope \S+ float32: fit ({NUMBER}) \(r2 ({NUMBER})\), eval ({NUMBER}) \(r2 ({NUMBER})\) "
                     r"over 2 shapes", l)
        assert m and all(math.isfinite(float(g)) for g in m.groups()), l
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 and all(r["status"] == "ok" for r in data["rows"])
    for r in data["rows"]:
        assert 4 * r["params"] <= r["weight_bytes"] < 4 * r["params"] + 4096  # float32 + rotary buffers
        assert r["fit_s_per_case"] > 0 and r["eval_s_per_case"] > 0 and r["rss_after_build"] > 0
        assert r["peak_above_bytes"] >= 0 and math.isfinite(r["peak_above_pct"])
        if r["method"] == "rome":
            assert r["method_params"]["mom2_n_tokens"] == 256 and r["method_params"]["stop_loss"] == 0.0
    assert {(s["method"], s["dtype"]) for s in data["slopes"]} == {("rome", "float32")}


@pytest.mark.parametrize("args, words", [
    (["--cases", "0"], "--cases"),
    (["--shapes", "tiny,llama-2t"], "unknown shape 'llama-2t'"),
    (["--shapes", "tiny", "--methods", "steering,no-such-method"], "unknown method 'no-such-method'"),
    (["--shapes", "tiny", "--dtypes", "float32,int7"], "unknown dtype 'int7'"),
], ids=["cases-0", "unknown-shape", "unknown-method", "unknown-dtype"])
def test_bad_input_is_one_error_line(args, words, capsys):
    assert _module().main(args) == 2  # refused before any worker starts: checked in-process
    out, err = capsys.readouterr()
    assert words in one_error_line(err) and out == ""


def _module():
    spec = importlib.util.spec_from_file_location("bench_scaling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shape_larger_than_memory_is_refused(monkeypatch, capsys):
    mod = _module()
    monkeypatch.setattr(mod, "available_memory", lambda device: 100_000)  # bytes: less than tiny's weights
    assert mod.main(["--shapes", "tiny", "--methods", "steering"]) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "shape 'tiny' needs" in line and "memory is available" in line
