"""Runs and sweeps on Ray (``--backend ray``): a local two-worker instance writes the serial records.

The driver stays the single writer; the workers only compute. What may differ between a serial and a
Ray directory: timing fields (``seconds``, ``seconds_per_case``, ``wall_seconds_this_invocation``) and
the output path. Everything else, every metric included, must be equal: the same code computes each
item on a model built with the same seed, with one intra-op thread on both sides (conftest sets
OMP_NUM_THREADS=1, which the local Ray instance and its workers inherit).
"""

import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from editbench.cli import main
from editbench.errors import ConfigError
from editbench.runs.distributed import BackendOptions, RayExecutor
from editbench.runs.runner import RunConfig, execute
from editbench.runs.sweep import SweepConfig, run_sweep

TIMING = {"seconds", "seconds_per_case", "wall_seconds_this_invocation"}


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _config(path):
    return {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k != "out"}


def _summary(path):
    s = json.loads((path / "summary.json").read_text())
    s["config"] = {k: v for k, v in s["config"].items() if k != "out"}
    return _untimed(s)


class Spy(RayExecutor):
    """The Ray executor, recording the items each ``map`` was given."""

    def __init__(self, options):
        super().__init__(options)
        self.seen: list[list] = []

    def map(self, work, items, local):
        items = list(items)
        self.seen.append(items)
        return super().map(work, items, local)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")  # an optional extra for users; scripts/setup.sh (CI) installs it
    # 4 logical CPUs (on any machine): the module's executor and one CLI invocation hold 2 actors each
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_instance):
    ex = Spy(BackendOptions("ray", workers=2))
    yield ex
    ex.close()


def _sweep_yaml(path, out, **extra):
    cfg = {"model": "tiny-llama", "benchmark": "truthfulqa", "benchmark_options": {"probe": "dataset"},
           "out": str(out), "limit": 4, "probe_limit": 4,
           "utility": {"tasks": ["arc_easy"], "limit": 3, "wikitext_windows": 1, "window": 16, "neutral": 2,
                       "max_new_tokens": 8},
           "methods": [{"name": "steering", "strengths": [0.5, 2]}, {"name": "steer2edit", "strengths": [1]}],
           **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("serial")
    cfg = _sweep_yaml(d / "sweep.yaml", d / "sweep")
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    return cfg, d / "sweep"


def _assert_same_sweep(a, b):
    assert _untimed(_lines(b / "points.jsonl")) == _untimed(_lines(a / "points.jsonl"))
    assert _lines(b / "items.jsonl") == _lines(a / "items.jsonl")
    assert _config(b) == _config(a)
    assert _summary(b) == _summary(a)


def test_sweep_on_ray_writes_the_serial_points(serial_sweep, ray_instance, tmp_path, capsys):
    cfg, serial = serial_sweep
    out = tmp_path / "ray"
    assert main(["sweep", str(cfg), "--quiet", "--out", str(out), "--backend", "ray", "--workers", "2"]) == 0
    assert "Sweep: truthfulqa on tiny-llama" in capsys.readouterr().out
    points = _lines(out / "points.jsonl")
    assert len(points) == 2 * (1 + 2 + 1) and [p["split"] for p in points[:2]] == ["val", "test"]
    _assert_same_sweep(serial, out)
    assert main(["sweep", str(cfg), "--quiet", "--out", str(out), "--backend", "ray"]) == 0  # complete: nothing to do
    assert len(_lines(out / "points.jsonl")) == len(points)


def test_sweep_resumed_on_ray_computes_only_the_missing_points(serial_sweep, executor, tmp_path):
    cfg_path, serial = serial_sweep
    out = tmp_path / "resumed"
    shutil.copytree(serial, out)
    kept = (out / "points.jsonl").read_text().splitlines()[:3]  # unedited val+test, steering 0.5 val
    (out / "points.jsonl").write_text("".join(line + "\n" for line in kept))
    with open(out / "items.jsonl", "a") as f:  # a crash mid-write: a torn line after orphaned items
        f.write('{"key": "torn')
    cfg = SweepConfig.load(cfg_path)
    cfg.out = str(out)
    executor.seen.clear()
    run_sweep(cfg, progress=False, executor=executor)
    todo = executor.seen[0]
    assert [(t.method, t.strength, t.split) for t in todo] == [
        ("steering", 0.5, "test"), ("steering", 2.0, "val"), ("steering", 2.0, "test"),
        ("steer2edit", 1.0, "val"), ("steer2edit", 1.0, "test")]
    assert (out / "points.jsonl").read_text().splitlines()[:3] == kept  # written lines are never rewritten
    assert len({w["pid"] for w in executor.workers}) == 2
    _assert_same_sweep(serial, out)


def test_sigterm_under_ray_exits_143_and_the_sweep_resumes(serial_sweep, executor, tmp_path):
    """Ray's core replaces the driver's SIGTERM handler (it aborts, exit 134); the CLI's must win."""
    cfg_path, serial = serial_sweep
    out = tmp_path / "term"
    p = subprocess.Popen([sys.executable, "-m", "editbench", "sweep", str(cfg_path), "--quiet", "--out", str(out),
                          "--backend", "ray", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "points.jsonl").exists() and (out / "points.jsonl").read_text()):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("editbench: terminated (SIGTERM); finished cases are saved, rerun the same "
                                            "command to resume")
    kept = (out / "points.jsonl").read_text().splitlines()
    assert 1 <= len(kept) < 8
    cfg = SweepConfig.load(cfg_path)
    cfg.out = str(out)
    run_sweep(cfg, progress=False, executor=executor)
    assert (out / "points.jsonl").read_text().splitlines()[:len(kept)] == kept
    _assert_same_sweep(serial, out)


def test_run_sharded_on_ray_equals_serial_and_resumes(cf_root, executor, tmp_path):
    def cfg(out):
        return RunConfig(model="tiny-llama", data_root=str(cf_root), method="steering", strengths=[0.5, 1.0],
                         chunk_size=2, out=str(out))

    serial, sharded = tmp_path / "serial", tmp_path / "ray"
    execute(cfg(serial), progress=False)
    executor.seen.clear()
    execute(cfg(sharded), progress=False, executor=executor)
    assert [[c.case_id for c in chunk] for chunk in executor.seen[0]] == [[0, 1], [2, 3], [4, 5]]
    assert len({w["pid"] for w in executor.workers}) == 2
    lines = (sharded / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert _untimed(_lines(sharded / "cases.jsonl")) == _untimed(_lines(serial / "cases.jsonl"))
    assert _config(sharded) == _config(serial)
    assert _summary(sharded) == _summary(serial)
    # resume: chunk 0 complete, chunk 1 with one of its four records: chunks 1 and 2 are computed,
    # only their missing records are appended
    (sharded / "cases.jsonl").write_text("".join(line + "\n" for line in lines[:5]))
    executor.seen.clear()
    execute(cfg(sharded), progress=False, executor=executor)
    assert [[c.case_id for c in chunk] for chunk in executor.seen[0]] == [[2, 3], [4, 5]]
    assert (sharded / "cases.jsonl").read_text().splitlines()[:5] == lines[:5]
    assert _untimed(_lines(sharded / "cases.jsonl")) == _untimed(_lines(serial / "cases.jsonl"))
    assert all(w["model_loads"] == 1 for w in executor.workers)  # each actor loaded the model once, for every run


def test_worker_errors_reach_the_driver_as_themselves(serial_sweep, executor, tmp_path):
    cfg_path, _ = serial_sweep
    cfg = SweepConfig.load(cfg_path)
    cfg.out = str(tmp_path / "mega")
    cfg.methods = SweepConfig.from_dict({"benchmark": "truthfulqa", "out": "x", "methods": [{"name": "rome"}]}).methods
    with pytest.raises(ConfigError, match="cannot be fitted to a behaviour"):  # raised on a worker
        run_sweep(cfg, progress=False, executor=executor)
    # the points before the failing one are written, as serially (the unedited model's, both splits)
    assert [(p["method"], p["split"]) for p in _lines(tmp_path / "mega" / "points.jsonl")] == [
        ("unedited", "val"), ("unedited", "test")]


@pytest.mark.parametrize("flags, msg", [
    (["--backend", "dask"], "--backend must be one of serial, ray"),
    (["--backend", "ray", "--workers", "0"], "--workers must be an integer >= 1"),
    (["--backend", "ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be a finite number >= 0"),
    (["--backend", "ray", "--gpus-per-worker", "nan"], "--gpus-per-worker must be a finite number >= 0"),
    (["--workers", "2"], "--workers: only used with --backend ray"),
    (["--backend", "ray", "--address", " "], "--address must not be empty"),
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_backend_options_one_line(command, flags, msg, cf_root, tmp_path, capsys):
    args = (["run", "--model", "tiny-llama", "--data-root", str(cf_root), "--out", str(tmp_path / "o")]
            if command == "run" else ["sweep", str(_sweep_yaml(tmp_path / "s.yaml", tmp_path / "o"))])
    assert main([*args, "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench: error:") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_backend_ray_without_ray_installed_one_line(command, cf_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = (["run", "--model", "tiny-llama", "--data-root", str(cf_root), "--out", str(tmp_path / "o")]
            if command == "run" else ["sweep", str(_sweep_yaml(tmp_path / "s.yaml", tmp_path / "o"))])
    assert main([*args, "--quiet", "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == ("editbench: error: --backend ray needs the ray package: pip install 'editbench[distributed]' "
                   "(or rerun scripts/setup.sh)\n")


def test_gpu_workers_need_a_cuda_device(cf_root, tmp_path, capsys):
    pytest.importorskip("ray")
    code = main(["run", "--model", "tiny-llama", "--data-root", str(cf_root), "--out", str(tmp_path / "o"), "--quiet",
                 "--backend", "ray", "--gpus-per-worker", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus-per-worker 1 reserves GPUs but the device is cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_worker_killed_mid_sweep_is_replaced_and_the_points_equal_serial(serial_sweep, executor, tmp_path):
    """kill -9 of a worker process while the sweep runs: Ray restarts the actor, the lost point is
    recomputed there, and the sweep ends with the serial run's points."""
    import os
    import threading

    cfg_path, serial = serial_sweep
    cfg = SweepConfig.load(cfg_path)
    cfg.out = str(tmp_path / "killed")
    killed = []

    def kill_one():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pts = tmp_path / "killed" / "points.jsonl"
            if executor.workers and pts.exists() and len(pts.read_text().splitlines()) >= 2:
                pid = executor.workers[-1]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=kill_one, daemon=True)
    t.start()
    run_sweep(cfg, progress=False, executor=executor)
    t.join(timeout=5)
    assert killed, "no worker was killed (the sweep finished before two points)"
    _assert_same_sweep(serial, tmp_path / "killed")


def test_an_item_that_kills_its_worker_every_time_is_named(monkeypatch):
    from editbench.runs import distributed

    class Dying:
        method, strength, split, key = "steering", 0.5, "val", "k"

    from ray.exceptions import RayActorError

    with pytest.raises(Exception, match=r"a Ray worker died while computing sweep point steering s=0.5 \(val\), 4 times"):
        with distributed._worker_errors(Dying()):
            raise RayActorError()
