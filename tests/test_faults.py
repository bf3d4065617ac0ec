"""Fault injection: what a hostile or unlucky user does to the reliability layer, pinned down.

* concurrent writers on one directory (run, sweep, attribute): one writer, the other refused in
  one line (or, with ``--wait``, waiting and then finding the work done), never duplicates;
* ``kill -9`` at many seeded points of a run and of a sweep, each followed by a resume: the final
  records equal an uninterrupted run's; SIGTERM / SIGINT exit 143 / 130 with a message;
* corrupted and crafted files for every reader: one ``editbench: error:`` line naming the file,
  exit 2, no traceback, nothing already written modified;
* a method whose scores are non-finite: strict JSON, flagged records, counted, not failures.

Processes that are killed or raced are forked from one pre-imported helper process (a "zygote"):
each is a real, separate process running ``editbench.cli.main`` (its own lock, files and signals),
but it skips the ~4 s of imports of a fresh interpreter, which keeps the many starts affordable.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from editbench.cli import main
from editbench.data import resolve_data_root

LINUX = sys.platform.startswith("linux")
needs_fork = pytest.mark.skipif(not LINUX, reason="forks helper processes and reads /proc")
TINY = ["--model", "tiny-llama", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _cases(n: int, offset: int = 0) -> list[dict]:
    # prompts of very different lengths: a batch's padding depends on which cases it holds
    return [{"case_id": offset + i, "prompt": f"The mother tongue of {'very ' * (7 * i % 16)}old Person{i} is",
             "target_new": "English",
             "subject": f"Person{i}", "ground_truth": "French", "rephrase_prompt": f"Person{i} speaks the language of",
             "locality_prompt": f"Other{i} is a native speaker of", "locality_ground_truth": "French"}
            for i in range(n)]


def _make_data(root: Path) -> Path:
    (root / "counterfact").mkdir(parents=True)
    (root / "counterfact" / "counterfact-edit.json").write_text(json.dumps(_cases(16)))
    (root / "counterfact" / "counterfact-train.json").write_text(json.dumps(_cases(4, offset=1000)))
    return root


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    """A data root: 16 EasyEdit-format CounterFact edit cases, 4 train cases (attribute study)."""
    return _make_data(tmp_path_factory.mktemp("data16") / "data")


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error(code, err, *needles):
    """Exit 2 and a stderr that is exactly one ``editbench: error:`` line containing the needles."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("editbench: error:") and err.count("\n") == 1, err
    for n in needles:
        assert str(n) in err, (n, err)


def snapshot(d: Path) -> dict:
    """Every file under ``d`` (but the lock file) and its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def reject_constant(name: str):
    raise AssertionError(f"non-standard JSON constant {name} (strict JSON has no NaN/Infinity)")


def strict_json(text: str | bytes):
    return json.loads(text, parse_constant=reject_constant)


def strict_lines(path: Path) -> list[dict]:
    """Every line strict JSON (no NaN/Infinity), an object, newline-terminated (no torn line)."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path} ends with a torn line"
    out = [strict_json(line) for line in raw.decode("utf-8").splitlines()]
    assert all(isinstance(r, dict) for r in out)
    return out


def complete_lines(path: Path) -> list[dict]:
    """The complete lines of a file another process may be appending to (strict JSON each)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    return [strict_json(l) for l in raw[:raw.rfind(b"\n") + 1].decode("utf-8").splitlines()]


def n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def without(rec: dict, *keys: str) -> dict:
    return {k: v for k, v in rec.items() if k not in keys}


def run_args(data_root: Path, out: Path, *extra) -> list[str]:
    return ["run", *TINY, "--data-root", str(data_root), "--out", str(out), *map(str, extra)]


# The run that is killed and resumed: post-edit path (steering) at two strengths, 6 chunks. In
# bfloat16 a score depends on the batch it was computed in (float32 on CPU is batch-invariant), so
# equal numbers after resumes show that chunks were recomputed whole, batched as uninterrupted.
KILL_RUN = ("--method", "steering", "--strengths", "1,2", "--limit", "12", "--chunk-size", "2", "--dtype", "bfloat16")


def sweep_yaml(path: Path, out: Path, **extra) -> Path:
    cfg = {"model": "tiny-llama", "benchmark": "truthfulqa", "out": str(out), "limit": 4, "probe_limit": 4,
           "data_root": str(resolve_data_root()),
           "benchmark_options": {"probe": "dataset"},  # a random model's own answers match no reference answer
           "utility": {"tasks": ["arc_easy"], "limit": 3, "wikitext_windows": 1, "window": 16, "neutral": 2,
                       "max_new_tokens": 8},
           "methods": [{"name": "steering", "strengths": [0.5, 2]}], **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------------
# the zygote: real processes without the import cost
# ---------------------------------------------------------------------------------------------
ZYGOTE = r"""
import json, os, signal, sys, traceback
import editbench.cli
import editbench.runs.runner, editbench.runs.sweep, editbench.runs.attribution_study
import editbench.evaluation.evaluator, editbench.evaluation.tradeoff, editbench.evaluation.utility
import editbench.methods.steering, editbench.methods.ft, editbench.benchmarks.counterfact
import editbench.benchmarks.truthfulqa
import transformers.models.llama.modeling_llama
import tqdm.auto, filelock, yaml
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, seaborn
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job["op"] == "start":
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                # as in a terminal: a shell starts background jobs (nohup ... &) with SIGINT ignored,
                # and Python then keeps it ignored, so the Ctrl-C test would see no interrupt
                signal.signal(signal.SIGINT, signal.default_int_handler)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                for fd, path in ((1, job["out"]), (2, job["err"])):
                    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(f, fd)
                    os.close(f)
                rc = editbench.cli.main(job["argv"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(rc)
        print(json.dumps({"pid": pid}), flush=True)
    elif job["op"] == "wait":
        _, status = os.waitpid(job["pid"], 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Child:
    def __init__(self, pid: int, out: Path, err: Path, started: float):
        self.pid, self.out_path, self.err_path, self.started = pid, out, err, started
        self.rc: int | None = None
        self.out = self.err = ""

    def finished(self) -> bool:
        """Exited (a zombie waiting for the zygote's waitpid) or gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class Zygote:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.p = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=ENV, cwd=workdir)
        self.n = 0
        self.live: set[int] = set()
        assert "ready" in self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("the zygote helper process died")
        return json.loads(line)

    def _ask(self, **job) -> dict:
        self.p.stdin.write(json.dumps(job) + "\n")
        self.p.stdin.flush()
        return self._read()

    def start(self, argv) -> Child:
        self.n += 1
        out, err = self.workdir / f"{self.n}.out", self.workdir / f"{self.n}.err"
        pid = self._ask(op="start", argv=[str(a) for a in argv], out=str(out), err=str(err))["pid"]
        self.live.add(pid)
        return Child(pid, out, err, time.monotonic())

    def wait(self, child: Child, timeout: float = 180) -> Child:
        deadline = time.monotonic() + timeout
        while not child.finished():
            if time.monotonic() > deadline:
                os.kill(child.pid, signal.SIGKILL)
                self._ask(op="wait", pid=child.pid)
                self.live.discard(child.pid)
                pytest.fail(f"process {child.pid} ran longer than {timeout} s: {child.err_path.read_text()[-2000:]}")
            time.sleep(0.01)
        child.rc = self._ask(op="wait", pid=child.pid)["rc"]
        self.live.discard(child.pid)
        child.out, child.err = child.out_path.read_text(), child.err_path.read_text()
        return child

    def run(self, argv, timeout: float = 180) -> Child:
        return self.wait(self.start(argv), timeout)

    def close(self) -> None:
        for pid in list(self.live):
            try:
                os.kill(pid, signal.SIGKILL)
                self._ask(op="wait", pid=pid)
            except (OSError, RuntimeError):
                pass
        self.p.stdin.close()
        self.p.wait(timeout=30)
        self.p.stdout.close()


@pytest.fixture(scope="module")
def zyg(tmp_path_factory):
    if not LINUX:
        pytest.skip("forks helper processes and reads /proc")
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def watch(z: Zygote, child: Child, path: Path) -> tuple[Child, list[tuple[float, int]]]:
    """Wait for ``child``, noting when the line count of ``path`` changed (seconds from start)."""
    seen, last = [], -1
    while not child.finished():
        n = n_lines(path)
        if n != last:
            seen.append((time.monotonic() - child.started, n))
            last = n
        time.sleep(0.005)
    return z.wait(child), seen


def _timing(seen: list[tuple[float, int]]) -> dict:
    """Seconds until the first unit of work is written, and per unit, from an uninterrupted run."""
    changes = [(t, n) for t, n in seen if n > 0]
    per_unit = max((changes[-1][0] - changes[0][0]) / max(len(changes) - 1, 1), 0.02)
    return {"first": changes[0][0], "per_unit": per_unit}


@pytest.fixture(scope="module")
def ref_run(zyg, data16, tmp_path_factory):
    """An uninterrupted run of KILL_RUN: its directory and timing."""
    out = tmp_path_factory.mktemp("ref") / "run"
    child, seen = watch(zyg, zyg.start(run_args(data16, out, *KILL_RUN)), out / "cases.jsonl")
    assert child.rc == 0, child.err
    return {"dir": out, **_timing(seen)}


@pytest.fixture(scope="module")
def ref_sweep(zyg, tmp_path_factory):
    base = tmp_path_factory.mktemp("refsweep")
    out = base / "sweep"
    child, seen = watch(zyg, zyg.start(["sweep", sweep_yaml(base / "s.yaml", out), "--quiet"]),
                        out / "points.jsonl")
    assert child.rc == 0, child.err
    return {"dir": out, **_timing(seen)}


def run_copy(ref: Path, dest: Path) -> Path:
    shutil.copytree(ref, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def by_key(records: list[dict], *keys: str) -> dict:
    out = {}
    for r in records:
        k = tuple(r[x] for x in keys)
        assert k not in out, f"duplicate record {k}"
        out[k] = r
    return out


# =============================================================================================
# 1. concurrent writers
# =============================================================================================
def _writer_argv(kind: str, data16: Path, tmp: Path, out: Path) -> tuple[list, str, tuple]:
    """(argv, records file, key fields) of a small run / sweep / attribute study into ``out``."""
    if kind == "run":
        return run_args(data16, out, "--limit", 16, "--chunk-size", 4), "cases.jsonl", ("case_id", "strength")
    if kind == "sweep":
        return ["sweep", sweep_yaml(tmp / "s.yaml", out), "--quiet"], "points.jsonl", ("key", "split")
    return (["attribute", *TINY, "--editor", "ft", "--limit", 2, "--data-root", data16, "--out", out],
            "cases.jsonl", ("case_id",))


@needs_fork
@pytest.mark.parametrize("kind", ["run", "sweep", "attribute"])
def test_concurrent_writers_one_wins_the_other_is_refused_or_waits(kind, zyg, data16, tmp_path):
    out = tmp_path / "out"
    argv, records, key = _writer_argv(kind, data16, tmp_path, out)
    # started together: exactly one writes, the other exits 2 with one line
    a, b = zyg.start(argv), zyg.start(argv)
    a, b = zyg.wait(a), zyg.wait(b)
    assert sorted([a.rc, b.rc]) == [0, 2], (a.err, b.err)
    loser = a if a.rc == 2 else b
    assert loser.err.count("\n") == 1 and loser.err.startswith("editbench: error:"), loser.err
    assert "is being written by another editbench process" in loser.err and str(out) in loser.err
    first = strict_lines(out / records)
    by_key(first, *key)  # no duplicates
    expect = {"run": 16, "sweep": 6, "attribute": 2}[kind]
    assert len(first) == expect
    # --wait: while the directory is held (here by the test itself), a writer without --wait is
    # refused at once and writers with --wait wait; released, one does the work, the other finds it done
    from filelock import FileLock

    out2 = tmp_path / "out2"
    out2.mkdir()
    argv2, _, _ = _writer_argv(kind, data16, tmp_path, out2)
    held = FileLock(str(out2 / ".lock"))
    held.acquire()
    try:
        w1, w2 = zyg.start([*argv2, "--wait"]), zyg.start([*argv2, "--wait"])
        refused = zyg.wait(zyg.start(argv2))
        assert refused.rc == 2 and "is being written by another editbench process" in refused.err, refused.err
        time.sleep(0.5)
        assert not w1.finished() and not w2.finished(), "a --wait writer did not wait"
        assert not (out2 / "config.json").exists() and not (out2 / records).exists()
    finally:
        held.release()
    w1, w2 = zyg.wait(w1), zyg.wait(w2)
    assert w1.rc == 0 and w2.rc == 0, (w1.err, w2.err)
    recs = strict_lines(out2 / records)
    by_key(recs, *key)
    assert len(recs) == expect
    if kind == "sweep":  # every point's items once
        assert len(strict_lines(out2 / "items.jsonl")) == len(strict_lines(out / "items.jsonl"))


# =============================================================================================
# 2. kill -9, SIGTERM, SIGINT
# =============================================================================================
def _records_equal(got: list[dict], ref: list[dict], keys: tuple, drop: tuple) -> None:
    g, r = by_key(got, *keys), by_key(ref, *keys)
    assert set(g) == set(r)
    for k in r:
        assert without(g[k], *drop) == without(r[k], *drop), k


def _kill_chain(zyg, argv, path: Path, n_kills: int, step: int, total: int, timing: dict, seed: int,
                check) -> tuple[list[int], Child]:
    """Start ``argv`` ``n_kills`` times, SIGKILL each at a seeded random point, then resume to the end.
    A kill comes either at a random moment of the process's early life (startup: model load, config
    and record checks; perhaps its first unit of work) or a random moment after it appended one more
    unit (``step`` lines) to ``path``: kills are spread over the whole run, appends and the summary
    included. Returns the line counts at which kills landed, and the final resume."""
    rng = random.Random(seed)
    landed = []
    for i in range(n_kills):
        child = zyg.start(argv)
        if i == 0 or rng.random() < 0.3:
            deadline = child.started + rng.uniform(0.0, timing["first"])
        else:
            target = min(n_lines(path) + step, total)
            while n_lines(path) < target and not child.finished():
                time.sleep(0.002)
            deadline = time.monotonic() + rng.uniform(0.0, 1.2 * timing["per_unit"])
        while time.monotonic() < deadline and not child.finished():
            time.sleep(0.002)
        if not child.finished():
            os.kill(child.pid, signal.SIGKILL)
            landed.append(n_lines(path))
        child = zyg.wait(child)
        assert child.rc in (0, -signal.SIGKILL), child.err
        check()
    return landed, zyg.wait(zyg.start(argv))


@needs_fork
def test_kill9_run_at_many_points_then_resume_equals_uninterrupted(zyg, ref_run, data16, tmp_path):
    ref, timing = ref_run["dir"], ref_run
    out = tmp_path / "run"
    cases = out / "cases.jsonl"

    def check():  # after every kill: complete lines strict, no duplicates (a torn last line is allowed)
        by_key(complete_lines(cases), "case_id", "strength")

    # 6 chunks of 2 cases x 2 strengths = 4 lines each: kill during startup, in every chunk, in the
    # moment a chunk is appended, and while the summary is written
    landed, last = _kill_chain(zyg, run_args(data16, out, *KILL_RUN), cases, 16, 4, 24, timing, 7, check)
    assert len(landed) >= 12, f"only {len(landed)} kills landed in a running process"
    assert len(set(landed)) >= 5, landed  # spread over the run
    assert last.rc == 0, last.err
    _records_equal(strict_lines(cases), strict_lines(ref / "cases.jsonl"), ("case_id", "strength"),
                   ("seconds", "code"))
    summ, ref_summ = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert summ["n_cases"] == 12
    for s in ref_summ["points"]:
        assert summ["points"][s]["post"] == ref_summ["points"][s]["post"]
    assert summ["pre"] == ref_summ["pre"]
    assert not list(out.glob("*.tmp"))


@needs_fork
def test_kill9_sweep_at_several_points_then_resume_equals_uninterrupted(zyg, ref_sweep, tmp_path):
    ref, timing = ref_sweep["dir"], ref_sweep
    out = tmp_path / "sweep"
    argv = ["sweep", sweep_yaml(tmp_path / "s.yaml", out), "--quiet"]

    def check():
        by_key(complete_lines(out / "points.jsonl"), "key", "split")

    landed, last = _kill_chain(zyg, argv, out / "points.jsonl", 9, 1, 6, timing, 11, check)
    assert len(landed) >= 5 and len(set(landed)) >= 3, landed
    assert last.rc == 0, last.err
    _records_equal(strict_lines(out / "points.jsonl"), strict_lines(ref / "points.jsonl"), ("key", "split"),
                   ("seconds", "code"))

    def grouped(path):
        g: dict = {}
        for r in strict_lines(path):
            g.setdefault((r["key"], r["split"]), []).append(r)
        return g

    assert grouped(out / "items.jsonl") == grouped(ref / "items.jsonl")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert a["analysis"] == b["analysis"]


@needs_fork
def test_sigterm_and_sigint_exit_with_message_keep_records_and_resume(zyg, ref_run, data16, tmp_path):
    ref = ref_run["dir"]
    out = tmp_path / "run"
    cases = out / "cases.jsonl"
    argv = run_args(data16, out, *KILL_RUN)
    with_bar = [a for a in argv if a != "--quiet"]  # a progress bar on stderr: the message still gets its own line
    for sig, rc, msg, target, args in ((signal.SIGTERM, 143, "editbench: terminated (SIGTERM)", 4, argv),
                                       (signal.SIGINT, 130, "editbench: interrupted", 12, with_bar)):
        child = zyg.start(args)
        while n_lines(cases) < target and not child.finished():
            time.sleep(0.002)
        kept = cases.read_bytes()
        assert not child.finished(), "the run finished before it could be signalled"
        os.kill(child.pid, sig)
        child = zyg.wait(child)
        assert child.rc == rc, child.err
        lines = child.err.split("\n")  # not splitlines(): a progress bar's \r must not count as a line end
        last = [l for l in lines if l.strip()][-1]  # the message is what the user sees last
        assert last.startswith(msg) and "rerun the same command to resume" in last, child.err
        assert "Traceback" not in child.err
        assert cases.read_bytes().startswith(kept)  # finished records are kept
        by_key(complete_lines(cases), "case_id", "strength")
    done = zyg.run(argv)
    assert done.rc == 0, done.err
    _records_equal(strict_lines(cases), strict_lines(ref / "cases.jsonl"), ("case_id", "strength"),
                   ("seconds", "code"))


@pytest.mark.parametrize("keep", [
    [0, 1, 2, 3, 4],  # chunk 2 holds 1 of its 4 records
    [i for i in range(24) if i % 4 != 1],  # every chunk 1 record short, inside the file
    list(range(21)),  # the last chunk 1 record short
])
def test_partial_chunk_recomputed_whole_equals_uninterrupted(keep, ref_run, data16, tmp_path, capsys):
    """A chunk with missing records is recomputed whole: its batches, hence its numbers, are an
    uninterrupted run's, whatever subset of it survived (and a torn last line is cut)."""
    ref = ref_run["dir"]
    out = run_copy(ref, tmp_path / "run")
    lines = (ref / "cases.jsonl").read_bytes().splitlines(keepends=True)
    (out / "cases.jsonl").write_bytes(b"".join(lines[i] for i in keep) + lines[23][:40])
    (out / "summary.json").unlink()
    code, _, err = cli(run_args(data16, out, *KILL_RUN), capsys)
    assert code == 0, err
    got = (out / "cases.jsonl").read_bytes().splitlines(keepends=True)
    assert got[:len(keep)] == [lines[i] for i in keep]  # nothing already written is rewritten
    _records_equal(strict_lines(out / "cases.jsonl"), strict_lines(ref / "cases.jsonl"), ("case_id", "strength"),
                   ("seconds", "code"))


# =============================================================================================
# 3. corrupted and crafted files
# =============================================================================================
@pytest.mark.parametrize("content", [b"[1, 2]", b"null", b"\xff\xfe{\"model\": 1}", b"{\"model\": NaN}", b"{"])
def test_corrupt_config_json_refused_results_untouched(content, ref_run, data16, tmp_path, capsys):
    out = run_copy(ref_run["dir"], tmp_path / "run")
    (out / "config.json").write_bytes(content)
    before = snapshot(out)
    code, _, err = cli(run_args(data16, out, *KILL_RUN), capsys)
    assert_one_error(code, err, out / "config.json")
    assert snapshot(out) == before


CORRUPT_LINES = {
    "no case_id": lambda r: json.dumps(without(r, "case_id")).encode(),
    "no post": lambda r: json.dumps(without(r, "post")).encode(),
    "post a list": lambda r: json.dumps({**r, "post": [1]}).encode(),
    "strength a string": lambda r: json.dumps({**r, "strength": "x"}).encode(),
    "a JSON array": lambda r: b"[1, 2, 3]",
    "a JSON string": lambda r: b'"case"',
    "not UTF-8": lambda r: json.dumps(r).encode().replace(b"English", b"Engl\xffish"),
    "bare NaN": lambda r: json.dumps({**r, "post": {**r["post"], "efficacy": float("nan")}}).encode(),
    "bare Infinity": lambda r: json.dumps({**r, "pre": {**r["pre"], "efficacy": float("inf")}}).encode(),
    "not JSON": lambda r: b"{\"case_id\": 1,",
}


@pytest.mark.parametrize("what", list(CORRUPT_LINES))
def test_corrupt_cases_line_refused_by_writer_skipped_by_readers(what, ref_run, data16, tmp_path, capsys):
    out = run_copy(ref_run["dir"], tmp_path / "run")
    lines = (out / "cases.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = CORRUPT_LINES[what](json.loads(lines[5])) + b"\n"  # a middle line
    (out / "cases.jsonl").write_bytes(b"".join(lines))
    before = snapshot(out)
    code, _, err = cli(run_args(data16, out, *KILL_RUN), capsys)
    assert_one_error(code, err, out / "cases.jsonl", "line 6" if what in ("a JSON array", "a JSON string", "not UTF-8",
                                                                         "bare NaN", "bare Infinity", "not JSON")
                     else "record 6")
    assert snapshot(out) == before
    # the readers (report's drill-down, compare) skip the line, never crash on it, never modify it
    code, _, err = cli(["report", out, "--out", tmp_path / "rep", "--no-figures"], capsys)
    assert code == 0, err
    code, _, err = cli(["compare", out, ref_run["dir"]], capsys)
    assert code == 0, err
    assert snapshot(out) == before


def test_gz_records_corrupt_is_one_line(ref_run, data16, tmp_path, capsys):
    out = run_copy(ref_run["dir"], tmp_path / "run")
    (out / "cases.jsonl").unlink()
    (out / "cases.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    before = snapshot(out)
    code, _, err = cli(run_args(data16, out, *KILL_RUN), capsys)
    assert_one_error(code, err, "cases.jsonl.gz")
    assert snapshot(out) == before


def _float_params(module: str, cls: str) -> list[str]:
    import dataclasses
    import importlib
    import typing

    P = getattr(importlib.import_module(module), cls).Params
    hints = typing.get_type_hints(P)
    return [f.name for f in dataclasses.fields(P) if hints[f.name] is float]


FLOAT_PARAMS = [("mega", p) for p in _float_params("editbench.methods.mega", "MEGA")] + \
               [("ft", p) for p in _float_params("editbench.methods.ft", "FT")]


def test_float_params_are_known():
    assert {("mega", "lr"), ("mega", "norm_penalty"), ("ft", "lr"), ("ft", "norm_constraint")} <= set(FLOAT_PARAMS)


@pytest.mark.parametrize("method, param", FLOAT_PARAMS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_hyperparameter_refused_before_anything_is_written(method, param, value, data16, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = cli(run_args(data16, out, "--method", method, "--param", f"{param}={value}"), capsys)
    assert_one_error(code, err, param, "finite")
    assert not out.exists()


@pytest.mark.parametrize("grid", ["lr=0.1,nan", "lr=inf,0.1", "norm_constraint=0.1,-inf"])
def test_non_finite_grid_value_refused_before_any_point_runs(grid, data16, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = cli(run_args(data16, out, "--method", "ft", "--grid", grid), capsys)
    assert_one_error(code, err, "finite")
    assert not out.exists()


@pytest.mark.parametrize("strengths, msg", [("1e308", "at most"), ("1e309", "finite"), ("-1e308", "at most"),
                                            ("inf", "finite"), ("1,nan", "finite"), ("", "invalid strength")])
def test_extreme_strengths_refused(strengths, msg, data16, tmp_path, capsys):
    code, _, err = cli(run_args(data16, tmp_path / "o", f"--strengths={strengths}"), capsys)
    assert_one_error(code, err, msg)
    assert not (tmp_path / "o").exists()


SWEEP_YAMLS = {
    "grid a list": b"benchmark: safety\nout: OUT\nmethods:\n  - {name: steering, grid: [1, 2]}\n",
    "grid values not lists": b"benchmark: safety\nout: OUT\nmethods:\n  - {name: steering, grid: {alpha: 1}}\n",
    "params a string": b"benchmark: safety\nout: OUT\nmethods:\n  - {name: steering, params: x}\n",
    "name a list": b"benchmark: safety\nout: OUT\nmethods:\n  - {name: [steering]}\n",
    "methods a mapping": b"benchmark: safety\nout: OUT\nmethods: {name: steering}\n",
    "method entry a string": b"benchmark: safety\nout: OUT\nmethods: [steering]\n",
    "not UTF-8": b"benchmark: safety\nout: OUT\nmethods: [{name: st\xffeering}]\n",
    "list at top level": b"- benchmark: safety\n- out: OUT\n",
    "empty file": b"",
    "scalar": b"42\n",
    "not YAML": b"benchmark: [unclosed\n",
    "out a list": b"benchmark: safety\nout: [a]\nmethods: [{name: steering}]\n",
    "utility a list": b"benchmark: safety\nout: OUT\nutility: [1]\nmethods: [{name: steering}]\n",
    "limit a string": b"benchmark: safety\nout: OUT\nlimit: many\nmethods: [{name: steering}]\n",
    "strengths nan": b"benchmark: safety\nout: OUT\nmethods: [{name: steering, strengths: [.nan]}]\n",
    "unknown key": b"benchmark: safety\nout: OUT\nmetods: [{name: steering}]\n",
    "unknown param": b"benchmark: safety\nout: OUT\nmethods: [{name: steering, params: {nope: 1}}]\n",
    "param nan": b"benchmark: safety\nout: OUT\nmethods: [{name: steer2edit, params: {alpha: .nan}}]\n",
}


@pytest.mark.parametrize("what", list(SWEEP_YAMLS))
def test_crafted_sweep_yaml_one_line_naming_the_file(what, tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    out = tmp_path / "sweep-out"
    p.write_bytes(SWEEP_YAMLS[what].replace(b"OUT", str(out).encode()))
    code, _, err = cli(["sweep", p, "--quiet"], capsys)
    assert_one_error(code, err, p)
    # run --config reads the same methods: shape
    code, _, err = cli(["run", *TINY, "--config", p], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()


SUMMARY_EDITS = {
    "config a list": lambda s: s.update(config=[1]),
    "model a list": lambda s: s.update(model=[1]),
    "data a list": lambda s: s.update(data=[1]),
    "versions a list": lambda s: s.update(versions=[1]),
    "pre a list": lambda s: s.update(pre=[1]),
    "pre metric a list": lambda s: s["pre"].update(efficacy=[1]),
    "record_code a string": lambda s: s.update(record_code="abc"),
    "record_code items strings": lambda s: s.update(record_code=["abc"]),
    "n_cases a string": lambda s: s.update(n_cases="12"),
    "point n a string": lambda s: s["points"]["1.0"]["post"]["efficacy"].update(n="12"),
    "point mean a string": lambda s: s["points"]["1.0"]["post"]["efficacy"].update(mean="1"),
    "point ci95 short": lambda s: s["points"]["1.0"]["post"]["efficacy"].update(ci95=[1]),
    "point post a list": lambda s: s["points"]["1.0"].update(post=[1]),
    "point not a mapping": lambda s: s["points"].update({"1.0": 3}),
    "point key not a strength": lambda s: s["points"].update({"strong": s["points"]["1.0"]}),
    "points empty": lambda s: s.update(points={}),
    "points a list": lambda s: s.update(points=[1]),
    "format_version 99": lambda s: s.update(format_version=99),
    "format_version a string": lambda s: s.update(format_version="1"),
    "kind unknown": lambda s: s.update(kind="banana"),
    "a list": None,
}


def _edited_summary(ref: Path, dest: Path, what: str) -> Path:
    out = run_copy(ref, dest)
    s = json.loads((out / "summary.json").read_text())
    edit = SUMMARY_EDITS[what]
    if edit is None:
        s = [s]
    else:
        edit(s)
    (out / "summary.json").write_text(json.dumps(s))
    return out


@pytest.mark.parametrize("what", list(SUMMARY_EDITS))
def test_crafted_summary_report_and_compare_one_line(what, ref_run, tmp_path, capsys):
    ref = ref_run["dir"]
    bad = _edited_summary(ref, tmp_path / "bad", what)
    before = snapshot(bad)
    code, _, err = cli(["report", bad, "--out", tmp_path / "rep", "--no-figures"], capsys)
    assert_one_error(code, err, bad / "summary.json")
    code, _, err = cli(["compare", bad, ref], capsys)
    assert_one_error(code, err, "NEW", bad / "summary.json")
    code, _, err = cli(["compare", ref, bad], capsys)  # an unreadable baseline is exit 2, never 1
    assert_one_error(code, err, "BASELINE", bad / "summary.json")
    # found under a parent directory instead of named, it is skipped with a note
    parent = tmp_path / "tree"
    shutil.move(str(bad), str(parent / "bad"))
    code, out, err = cli(["report", parent, ref, "--out", tmp_path / "rep2", "--no-figures"], capsys)
    assert code == 0, err
    assert f"skipped: {parent / 'bad'}" in out and "1 runs" in out
    assert snapshot(parent / "bad") == before


SUMMARY_VALUE_EDITS = {  # well-formed types, odd values: reported or one line, never a traceback
    "method_params a list": lambda s: s["config"].update(method_params=[1]),
    "strengths a string": lambda s: s["config"].update(strengths="x"),
    "dtype a number": lambda s: s["config"].update(dtype=5),
    "data files a list": lambda s: s["data"].update(files=["x"]),
    "model id a number": lambda s: s["model"].update(model_id=5),
    "metric_directions a list": lambda s: s.update(metric_directions=[1]),
    "seconds_per_case missing": lambda s: [p.pop("seconds_per_case", None) for p in s["points"].values()],
    "aggregate a number": lambda s: s["points"]["1.0"]["post"].update(efficacy=5),
    "pre missing": lambda s: s.pop("pre"),
}


@pytest.mark.parametrize("what", list(SUMMARY_VALUE_EDITS))
def test_odd_summary_values_never_traceback(what, ref_run, tmp_path, capsys):
    ref = ref_run["dir"]
    out = run_copy(ref, tmp_path / "odd")
    s = json.loads((out / "summary.json").read_text())
    SUMMARY_VALUE_EDITS[what](s)
    (out / "summary.json").write_text(json.dumps(s))
    for args in (["report", out, "--out", tmp_path / "rep", "--no-figures"], ["compare", out, ref],
                 ["compare", ref, out]):
        code, _, err = cli(args, capsys)
        assert "Traceback" not in err
        assert code in (0, 1, 2), err
        if code == 2:
            assert_one_error(code, err)


def test_compare_unreadable_baseline_exits_2_from_the_console(ref_run, tmp_path, capsys):
    ref = ref_run["dir"]
    base = run_copy(ref, tmp_path / "base")
    (base / "summary.json").write_bytes(b"{\"kind\": \"run\", \"points\": {\"1.0\": ")  # truncated
    p = subprocess.run([sys.executable, "-m", "editbench.cli", "compare", str(ref), str(base)],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "BASELINE" in p.stderr and "summary.json" in p.stderr
    code, _, err = cli(["compare", ref, tmp_path / "missing"], capsys)
    assert_one_error(code, err, "BASELINE", "does not exist")


CURVE_LINES = {
    "a JSON array": b"[1, 2]",
    "a number": b"3",
    "not JSON": b"{\"key\": ",
    "not UTF-8": b"{\"key\": \"\xff\"}",
    "no strength": None,
    "strength a string": None,
    "split unknown": None,
    "attribute a list": None,
}


@pytest.mark.parametrize("what", list(CURVE_LINES))
def test_curves_on_crafted_points_one_line(what, ref_sweep, tmp_path, capsys):
    sw = run_copy(ref_sweep["dir"], tmp_path / "sweep")
    lines = (sw / "points.jsonl").read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[3])  # a test-split point (curves draw the test split)
    bad = CURVE_LINES[what]
    if bad is None:
        bad = json.dumps({"no strength": lambda: without(rec, "strength"),
                          "strength a string": lambda: {**rec, "strength": "x"},
                          "split unknown": lambda: {**rec, "split": "train"},
                          "attribute a list": lambda: {**rec, "attribute": [1]}}[what]()).encode()
    lines[3] = bad + b"\n"
    (sw / "points.jsonl").write_bytes(b"".join(lines))
    before = snapshot(sw)
    code, _, err = cli(["curves", sw, "--out", tmp_path / "fig" / "f"], capsys)
    assert_one_error(code, err, sw / "points.jsonl")
    code, _, err = cli(["report", sw, "--out", tmp_path / "rep", "--no-figures"], capsys)
    assert_one_error(code, err, sw / "points.jsonl")
    assert snapshot(sw) == before


@pytest.mark.parametrize("content, msg", [
    (b"not json", "not an attribution artifact"),
    pytest.param(b"\xff\xfe", "region_file"),
    (b"[1, 2]", "not an attribution artifact"),
    (b"{\"region\": [7]}", "invalid for a 3-layer model"),
    (b"{\"region\": []}", "invalid"),
    (b"{\"region\": [\"a\"]}", "invalid"),
    (b"{\"region\": NaN}", "region_file"),
    (b"{\"region\": [2], \"model\": {\"n_layers\": 30, \"model_id\": \"big\"}}", "30-layer"),
])
def test_bad_region_file_one_line(content, msg, data16, tmp_path, capsys):
    region = tmp_path / "region.json"
    region.write_bytes(content)
    out = tmp_path / "o"
    code, _, err = cli(run_args(data16, out, "--method", "mega", "--limit", 1, "--param", f"region_file={region}"),
                       capsys)
    assert_one_error(code, err, msg)
    # a failed start leaves nothing that blocks a corrected rerun with another configuration
    assert not (out / "cases.jsonl").exists()
    code, _, err = cli(run_args(data16, out, "--limit", 1), capsys)
    assert code == 0, err


def test_grid_value_with_dots_and_slashes_stays_inside_out(data16, tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "x").write_text(json.dumps({"region": [2], "model": {"n_layers": 3}}))
    monkeypatch.chdir(work)
    before = {p for p in tmp_path.rglob("*")}
    out = work / "grid"
    code, _, err = cli(run_args(data16, out, "--method", "mega", "--limit", 1, "--param", "steps=1",
                                "--grid", "region_file=../../x"), capsys)
    assert code == 0, err
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new), sorted(map(str, new))
    (d,) = out.iterdir()
    assert "/" not in d.name and not d.name.startswith(".") and d.name.rsplit("-", 1)[1].isalnum()


@pytest.mark.parametrize("out", ["", "   "])
def test_empty_out_refused(out, data16, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = sweep_yaml(tmp_path / "s.yaml", tmp_path / "sw")
    for args in (run_args(data16, out), [*run_args(data16, out), "--grid", "alpha=0.1,0.2", "--method", "steer2edit"],
                 ["sweep", cfg, "--out", out, "--quiet"],
                 ["attribute", *TINY, "--editor", "ft", "--limit", 1, "--data-root", data16, "--out", out]):
        code, _, err = cli(args, capsys)
        assert_one_error(code, err, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written anywhere


def test_resume_after_data_changed_refused_naming_data_sha256(tmp_path, capsys):
    data = _make_data(tmp_path / "data")
    out = tmp_path / "run"
    assert cli(run_args(data, out, "--limit", 2), capsys)[0] == 0
    f = data / "counterfact" / "counterfact-edit.json"
    cases = json.loads(f.read_text())
    cases[5]["target_new"] = "German"
    f.write_text(json.dumps(cases))
    before = snapshot(out)
    code, _, err = cli(run_args(data, out, "--limit", 2), capsys)
    assert_one_error(code, err, "data_sha256", "counterfact-edit.json")
    assert snapshot(out) == before


def test_failed_start_does_not_block_a_corrected_rerun(data16, tmp_path, capsys):
    out = tmp_path / "run"
    # an invalid hyperparameter found only once the model is loaded (the layer count)
    code, _, err = cli(run_args(data16, out, "--method", "ft", "--param", "layer=99", "--limit", 1), capsys)
    assert_one_error(code, err, "layer 99")
    code, _, err = cli(run_args(data16, out, "--method", "ft", "--param", "layer=1", "--param", "steps=1",
                                "--limit", 1), capsys)
    assert code == 0, err
    # a crash before any complete record: config.json written, cases.jsonl empty or holding a torn line
    for leftover in (b"", b"{\"case_id\": 0, \"stre"):
        out = tmp_path / f"crash{len(leftover)}"
        assert cli(run_args(data16, out, "--limit", 1), capsys)[0] == 0
        (out / "cases.jsonl").write_bytes(leftover)
        (out / "summary.json").unlink()
        code, _, err = cli(run_args(data16, out, "--limit", 1, "--seed", 3), capsys)
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["seed"] == 3
        assert [r["case_id"] for r in strict_lines(out / "cases.jsonl")] == [0]
    # a sweep whose configuration is refused after the model loaded
    bad = sweep_yaml(tmp_path / "bad.yaml", tmp_path / "sw", methods=[{"name": "rome"}])
    code, _, err = cli(["sweep", bad, "--quiet"], capsys)
    assert_one_error(code, err, "rome")


def test_sweep_crash_between_items_and_first_point_does_not_block_a_corrected_rerun(ref_sweep, tmp_path, capsys):
    """Items of a point are appended before its line in points.jsonl: a crash in between leaves
    items but no finished point, which must not count as results of the old configuration."""
    sw = run_copy(ref_sweep["dir"], tmp_path / "sweep")
    first = json.loads((sw / "points.jsonl").read_text().splitlines()[0])
    items = [l for l in (sw / "items.jsonl").read_text().splitlines(keepends=True)
             if json.loads(l)["key"] == first["key"] and json.loads(l)["split"] == first["split"]]
    (sw / "items.jsonl").write_text("".join(items))
    for name in ("points.jsonl", "summary.json"):
        (sw / name).unlink()
    cfg = sweep_yaml(tmp_path / "s.yaml", sw, methods=[{"name": "steering", "strengths": [1]}], limit=3)
    code, _, err = cli(["sweep", cfg, "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((sw / "config.json").read_text())["limit"] == 3
    points = strict_lines(sw / "points.jsonl")
    assert len(points) == 4 and {p["strength"] for p in points} == {0.0, 1.0}
    by_key(points, "key", "split")


def test_sweep_resume_with_corrupt_records_refused_untouched(ref_sweep, tmp_path, capsys):
    for name, bad in (("points.jsonl", b"[1]\n"), ("items.jsonl", b"{\"key\": 1, \"split\": \"val\"}\n"),
                      ("points.jsonl", b"{\"key\": \"k\", \"split\": \"val\", \"x\": NaN}\n"),
                      ("config.json", None)):
        sw = run_copy(ref_sweep["dir"], tmp_path / f"sweep-{name}-{len(bad or b'')}")
        if bad is None:
            (sw / name).write_bytes(b"[]")
        else:
            lines = (sw / name).read_bytes().splitlines(keepends=True)
            (sw / name).write_bytes(b"".join(lines[:1] + [bad] + lines[1:]))
        before = snapshot(sw)
        code, _, err = cli(["sweep", sweep_yaml(tmp_path / "s.yaml", sw), "--quiet"], capsys)
        assert_one_error(code, err, sw / name)
        assert snapshot(sw) == before


def test_attribute_resume_with_corrupt_files_refused_untouched(data16, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["attribute", *TINY, "--editor", "ft", "--param", "steps=2", "--limit", 2, "--data-root", data16,
            "--out", out]
    code, _, err = cli(args, capsys)
    assert code == 0, err
    good = snapshot(out)
    for name, content in (("cases.jsonl", good["cases.jsonl"] + b"[1, 2]\n" + good["cases.jsonl"]),
                          ("cases.jsonl", re.sub(rb'"success": (true|false)', b'"success": 1', good["cases.jsonl"], count=1)),
                          ("cases.jsonl", b"\xff" + good["cases.jsonl"]),
                          ("config.json", b"null")):
        (out / name).write_bytes(content)
        before = snapshot(out)
        code, _, err = cli(args, capsys)
        assert_one_error(code, err, out / name)
        assert snapshot(out) == before
        (out / name).write_bytes(good[name])


def test_stale_temporary_files_removed_on_next_start(ref_run, data16, tmp_path, capsys):
    out = run_copy(ref_run["dir"], tmp_path / "run")
    for name in ("cases.jsonl.tmp", "summary.json.tmp", "config.json.tmp"):
        (out / name).write_text("half")
    (out / "notes.txt").write_text("mine")
    records = (out / "cases.jsonl").read_bytes()
    assert cli(run_args(data16, out, *KILL_RUN), capsys)[0] == 0
    assert not list(out.glob("*.tmp"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "cases.jsonl").read_bytes() == records


def test_fp32_and_float32_are_one_protocol(ref_run, data16, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(run_args(data16, a, "--limit", 2, "--dtype", "fp32"), capsys)[0] == 0
    assert cli(run_args(data16, b, "--limit", 2, "--dtype", "float32"), capsys)[0] == 0
    code, out, err = cli(["compare", a, b], capsys)
    assert code == 0, err
    # resuming a float32 directory with fp32 is the same configuration
    code, _, err = cli(run_args(data16, b, "--limit", 2, "--dtype", "FP32"), capsys)
    assert code == 0, err
    # an older summary that spelled the dtype fp32
    s = json.loads((a / "summary.json").read_text())
    s["config"]["dtype"] = "fp32"
    s["model"]["dtype"] = "torch.float32"
    (a / "summary.json").write_text(json.dumps(s))
    code, out, err = cli(["compare", a, b], capsys)
    assert code == 0, err
    code, out, err = cli(["compare", b, a], capsys)
    assert code == 0, err


# =============================================================================================
# 4. non-finite scores
# =============================================================================================
def _nan_run(data16: Path, out: Path, monkeypatch) -> dict:
    """A run of a plugin whose odd cases get a NaN steering vector at every position of layer 1
    (every post-edit logit NaN), even cases a zero vector; returns the summary."""
    from editbench.modeling.interventions import ActivationIntervention, SteeringVector
    from editbench.plugins import registry
    from editbench.plugins.method import Method
    from editbench.runs.runner import RunConfig, execute

    class NaNSteer(Method):
        name = "nan-steer"
        method_class = "activation-steering"

        def fit_edit(self, request):
            h = self.lm.adapter.hidden_size
            fill = float("nan") if int(request.case_id) % 2 else 0.0
            return ActivationIntervention([SteeringVector(1, "resid", torch.full((h,), fill), "all")])

    real = registry.load
    monkeypatch.setattr(registry, "load", lambda kind, name: NaNSteer if name == "nan-steer" else real(kind, name))
    cfg = RunConfig(model="tiny-llama", data_root=str(data16), method="nan-steer", limit=6, chunk_size=4,
                    out=str(out))
    return execute(cfg, progress=False)


def test_non_finite_scores_strict_json_flagged_counted_not_failures(data16, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    summary = _nan_run(data16, out, monkeypatch)
    err = capsys.readouterr().err
    warn = [l for l in err.splitlines() if "non-finite" in l]
    assert len(warn) == 1 and warn[0].startswith("editbench: warning:"), err

    recs = strict_lines(out / "cases.jsonl")  # strict JSON: no NaN/Infinity anywhere
    assert len(recs) == 6
    for r in recs:
        if r["case_id"] % 2:
            assert {"efficacy", "generalization", "specificity"} <= set(r["non_finite"]["post"])
            assert r["post"]["efficacy"] is None and r["pre"]["efficacy"] is not None
            assert not r["non_finite"]["pre"]
        else:
            assert "non_finite" not in r
    post = summary["points"]["1.0"]["post"]
    finite = [r["post"]["efficacy"] for r in recs if r["case_id"] % 2 == 0]
    for m in ("efficacy", "generalization", "specificity"):
        assert post[m]["n"] == 3 and post[m]["non_finite"] == 3, (m, post[m])  # NaN is not a failure
        assert "non_finite" not in summary["pre"][m] and summary["pre"][m]["n"] == 6
    assert post["efficacy"]["mean"] == pytest.approx(100 * sum(finite) / 3)
    assert post["score"]["n"] == 3
    on_disk = strict_json((out / "summary.json").read_text())
    assert on_disk["points"]["1.0"]["post"]["efficacy"]["non_finite"] == 3
    # and the readers take it: report and compare against itself
    assert cli(["report", out, "--out", tmp_path / "rep", "--no-figures"], capsys)[0] == 0
    assert cli(["compare", out, out], capsys)[0] == 0


def test_non_finite_logits_are_never_failures_for_argmax_metrics(data16, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _nan_run(data16, out, monkeypatch)
    for r in strict_lines(out / "cases.jsonl"):
        if r["case_id"] % 2:
            for m in ("ee_rewrite_acc", "ee_rephrase_acc", "ee_locality", "ft_acc", "ft_gen", "ft_spec"):
                assert r["post"][m] is None and m in r["non_finite"]["post"], (m, r["post"][m])
