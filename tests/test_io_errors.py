"""I/O failures name the file and the cause in one line: a run under a file-size limit, the same
limit hit while ``datasets`` writes its cache (reported as a cache failure, not as bad data), and
the helper every writer goes through."""

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from editbench.errors import WriteError, io_error, writing
from editbench.results import append_jsonl, write_json

LINUX = sys.platform.startswith("linux")


def _cases(n: int) -> list[dict]:
    return [{"case_id": i, "prompt": f"The mother tongue of Person{i} is", "target_new": "English",
             "subject": f"Person{i}", "ground_truth": "French", "rephrase_prompt": f"Person{i} speaks",
             "locality_prompt": f"Other{i} is a native speaker of", "locality_ground_truth": "French"}
            for i in range(n)]


def _limited(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # CPython ignores SIGXFSZ: writes get EFBIG
    return set_limit


def _run(tmp_path: Path, limit: int) -> subprocess.CompletedProcess:
    root = tmp_path / "data"
    (root / "counterfact").mkdir(parents=True, exist_ok=True)
    (root / "counterfact" / "counterfact-edit.json").write_text(json.dumps(_cases(8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "editbench", "run", "--model", "tiny-llama", "--quiet", "--method",
                           "steering", "--limit", "8", "--data-root", str(root), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, preexec_fn=_limited(limit), timeout=600)


@pytest.mark.skipif(not LINUX, reason="RLIMIT_FSIZE")
def test_a_run_over_a_file_size_limit_names_the_file(tmp_path):
    p = _run(tmp_path, 16 * 1024)  # the datasets cache and config.json fit; the 8 cases' records (~25 kB) do not
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(err) == 1 and err[0].startswith("editbench: error: could not write "), p.stderr
    assert "cases.jsonl: file too large" in err[0] and "Traceback" not in p.stderr
    assert (tmp_path / "out" / "config.json").exists()  # what was written before stays


@pytest.mark.skipif(not LINUX, reason="RLIMIT_FSIZE")
def test_a_full_datasets_cache_is_not_reported_as_bad_data(tmp_path):
    p = _run(tmp_path, 1024)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "datasets could not write its temporary Arrow cache" in err[0] and "file too large" in err[0]
    assert "counterfact-edit.json" in err[0] and "could not be read" not in err[0]


def test_writers_name_the_file_and_the_cause(tmp_path, monkeypatch):
    for code, words in ((errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large"),
                        (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")):
        with pytest.raises(WriteError, match=rf"could not write {tmp_path}/x\.json: .*{words}"):
            with writing(tmp_path / "x.json"):
                raise OSError(code, os.strerror(code))
    assert "not named by the system" in str(io_error(OSError(errno.ENOSPC, "No space left on device")))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteError, match=r"summary\.json: no space left on the device \(disk full\)"):
        write_json(tmp_path / "summary.json", {"a": 1})
    assert not list(tmp_path.glob("*.tmp"))  # no temporary left behind
    monkeypatch.undo()
    target = tmp_path / "cases.jsonl"
    append_jsonl(target, [{"a": 1}])
    target.chmod(0o400)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(WriteError, match=r"cases\.jsonl: permission denied"):
            append_jsonl(target, [{"a": 2}])


# ---- --batch-size auto ------------------------------------------------------------------------
def _strip(recs):
    return [{k: v for k, v in r.items() if k not in ("seconds", "code")} for r in recs]


def test_batch_size_auto_and_back_off_give_the_fixed_batch_records(tmp_path, monkeypatch):
    from editbench.cli import main
    from editbench.modeling import scoring
    from editbench.runs import autobatch

    args = ["run", "--model", "tiny-llama", "--quiet", "--method", "steering", "--limit", "6", "--strengths", "0.5,1"]
    assert main([*args, "--out", str(tmp_path / "fixed"), "--batch-size", "4"]) == 0
    assert main([*args, "--out", str(tmp_path / "auto"), "--batch-size", "auto"]) == 0
    real = scoring.score_targets

    def small_memory(lm, requests, batch_size=32, *a, **k):  # pretend anything above 4 rows runs out of memory
        if batch_size > 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real(lm, requests, batch_size, *a, **k)

    monkeypatch.setattr("editbench.evaluation.evaluator.score_targets", small_memory)
    assert main([*args, "--out", str(tmp_path / "oom"), "--batch-size", "auto"]) == 0
    monkeypatch.undo()
    read = lambda d: [json.loads(l) for l in (tmp_path / d / "cases.jsonl").read_text().splitlines()]  # noqa: E731
    fixed, auto, oom = _strip(read("fixed")), _strip(read("auto")), _strip(read("oom"))
    for other in (auto, oom):
        for a, b in zip(fixed, other):
            assert a["post"] == pytest.approx(b["post"], abs=1e-6) and a["case_id"] == b["case_id"]
    s = json.loads((tmp_path / "oom" / "summary.json").read_text())
    assert s["batch_size_used"] == [4] and json.loads((tmp_path / "oom" / "config.json").read_text())["batch_size"] == "auto"
    assert autobatch.resolve_batch_size("auto", __import__("tests.conftest", fromlist=["tiny"]).tiny("tiny-llama")) == autobatch.CPU_AUTO
    assert autobatch.is_oom(MemoryError()) and not autobatch.is_oom(RuntimeError("shape mismatch"))
    assert main([*args, "--out", str(tmp_path / "bad"), "--batch-size", "lots"]) == 2


def test_sweep_batch_size_auto_equals_fixed(tmp_path):
    import yaml

    from editbench.cli import main

    base = {"model": "tiny-llama", "benchmark": "sentiment", "benchmark_options": {"max_new_tokens": 3},
            "limit": {"val": 2, "test": 3}, "probe_limit": 8,
            "utility": {"tasks": ["arc_easy"], "limit": 2, "wikitext_windows": 1, "window": 16, "neutral": 0},
            "methods": [{"name": "steering", "strengths": [1]}]}
    for name, bs in (("fixed", 2), ("auto", "auto")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**base, "batch_size": bs, "out": str(tmp_path / name)}))
        assert main(["sweep", str(tmp_path / f"{name}.yaml"), "--quiet"]) == 0
    pts = {n: [json.loads(l) for l in (tmp_path / n / "points.jsonl").read_text().splitlines()] for n in ("fixed", "auto")}
    for a, b in zip(pts["fixed"], pts["auto"]):
        assert a["attribute"] == b["attribute"] and a["neutral_kl"]["mean"] == pytest.approx(b["neutral_kl"]["mean"], abs=1e-6)
