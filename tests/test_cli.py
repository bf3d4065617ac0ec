import json
import subprocess
import sys

import pytest

from editbench.cli import main

TINY = ["--model", "tiny-llama", "--quiet"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_config_cases_summary(cf_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["run", *TINY, "--data-root", str(cf_root), "--out", str(out), "--strengths", "1,2"], capsys)
    assert code == 0, err
    assert "| efficacy |" in stdout and "post s=2" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "tiny-llama" and cfg["strengths"] == [1.0, 2.0] and cfg["split"] == "edit"
    lines = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {l["case_id"] for l in lines} == set(range(6))
    assert {"efficacy", "generalization", "specificity", "ee_rewrite_acc"} <= set(lines[0]["post"])
    assert lines[0]["request"]["target_new"] == "English"
    summ = json.loads((out / "summary.json").read_text())
    assert summ["n_cases"] == 6
    assert summ["versions"]["editbench"] and "git_commit" in summ["versions"]
    assert summ["model"]["weights_sha256"] and len(list(summ["data"]["files"].values())[0]) == 64
    assert summ["pre"]["efficacy"]["n"] == 6


def test_resume_no_duplicates_and_torn_line(cf_root, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", *TINY, "--data-root", str(cf_root), "--out", str(out), "--chunk-size", "2"]
    assert run([*base, "--limit", "3"], capsys)[0] == 0
    first = (out / "cases.jsonl").read_text().splitlines()
    assert len(first) == 3
    # simulate a crash mid-write: a torn last line
    with open(out / "cases.jsonl", "a") as f:
        f.write('{"case_id": 3, "stren')
    assert run(base, capsys)[0] == 0
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert lines[:3] == first  # nothing already written was rewritten
    ids = [json.loads(l)["case_id"] for l in lines]
    assert sorted(ids) == list(range(6)) and len(ids) == 6
    # a complete rerun does nothing new
    assert run(base, capsys)[0] == 0
    assert (out / "cases.jsonl").read_text().splitlines() == lines
    # a smaller --limit summarises the selected cases only, says so, and keeps every record
    code, _, err = run([*base, "--limit", "2"], capsys)
    assert code == 0 and "holds 4 record(s) outside this selection" in err
    assert (out / "cases.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2


def test_gzipped_records_are_read_and_resumed(cf_root, tmp_path, capsys):
    """Committed results may keep records as cases.jsonl.gz: readers read it as is, a resume expands
    it and appends, losing nothing."""
    import gzip

    from editbench.results import read_jsonl

    out = tmp_path / "run"
    base = ["run", *TINY, "--data-root", str(cf_root), "--out", str(out)]
    assert run([*base, "--limit", "2"], capsys)[0] == 0
    plain = (out / "cases.jsonl").read_bytes()
    (out / "cases.jsonl.gz").write_bytes(gzip.compress(plain))
    (out / "cases.jsonl").unlink()
    assert read_jsonl(out / "cases.jsonl") == [json.loads(l) for l in plain.splitlines()]
    assert (out / "cases.jsonl.gz").exists() and not (out / "cases.jsonl").exists()  # a reader changes nothing
    assert run([*base, "--limit", "3"], capsys)[0] == 0
    lines = (out / "cases.jsonl").read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:2]) == plain and len(lines) == 3 and not (out / "cases.jsonl.gz").exists()


def test_resume_keeps_code_version_of_older_records(cf_root, tmp_path, capsys):
    """A resume must not relabel records computed by other code with the current commit."""
    from editbench.report.report import Run

    out = tmp_path / "run"
    base = ["run", *TINY, "--data-root", str(cf_root), "--out", str(out)]
    assert run([*base, "--limit", "2"], capsys)[0] == 0
    summ = json.loads((out / "summary.json").read_text())
    now = {k: v for k, v in summ["versions"].items() if k == "editbench" or k.startswith("git_")}
    assert summ["record_code"] == [{**now, "n_records": 2}]
    assert all(json.loads(l)["code"] == now for l in (out / "cases.jsonl").read_text().splitlines())
    # pretend the first two records came from an older editbench that stored no per-record code
    old = {"editbench": "0.0.9", "git_commit": "abcdef0123456789", "git_dirty": False}
    lines = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    (out / "cases.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "code"}) + "\n" for r in lines))
    (out / "summary.json").write_text(json.dumps({**summ, "versions": {**summ["versions"], **old}}))
    assert run([*base, "--limit", "3"], capsys)[0] == 0
    summ = json.loads((out / "summary.json").read_text())
    by_commit = {c["git_commit"]: c["n_records"] for c in summ["record_code"]}
    assert by_commit == {"abcdef0123456789": 2, now["git_commit"]: 1}
    assert "abcdef0" in Run("R1", out, summ).code_version.split(", ")


def test_config_mismatch_refused_and_kept(cf_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["run", *TINY, "--data-root", str(cf_root), "--out", str(out), "--limit", "2"], capsys)[0] == 0
    before = (out / "cases.jsonl").read_bytes(), (out / "config.json").read_bytes()
    code, _, err = run(["run", *TINY, "--data-root", str(cf_root), "--out", str(out), "--seed", "5"], capsys)
    assert code == 2 and "different seed" in err and err.count("\n") == 1
    assert ((out / "cases.jsonl").read_bytes(), (out / "config.json").read_bytes()) == before


@pytest.mark.parametrize("args, msg", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--strengths", "1,abc"], "invalid strength 'abc'"),
    (["--strengths", "nan"], "must be finite"),
    (["--strengths", "1,1"], "duplicate strengths"),
    (["--split", "test"], "no split 'test'"),
    (["--limit", "0"], "limit must be >= 1"),
    (["--param", "x=1"], "has no hyperparameter 'x'"),
    (["--dtype", "int3"], "unknown dtype"),
])
def test_bad_input_one_line(cf_root, tmp_path, capsys, args, msg):
    code, _, err = run(["run", *TINY, "--data-root", str(cf_root), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2
    assert msg in err and err.startswith("editbench: error:") and err.count("\n") == 1


def test_run_refuses_attribute_benchmark_and_file_out(cf_root, tmp_path, capsys):
    code, _, err = run(["run", *TINY, "--benchmark", "safety", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "editbench sweep" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything is written
    (tmp_path / "afile").write_text("keep")
    code, _, err = run(["run", *TINY, "--data-root", str(cf_root), "--out", str(tmp_path / "afile")], capsys)
    assert code == 2 and "is not a directory" in err and err.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "keep"


def test_run_grid_one_directory_per_point(cf_root, tmp_path, capsys):
    out = tmp_path / "grid"
    base = ["run", *TINY, "--data-root", str(cf_root), "--limit", "2", "--method", "steer2edit", "--out", str(out)]
    code, stdout, err = run([*base, "--grid", "rho_attn=0.1,0.3", "--param", "alpha=0.5", "--strengths", "1,2"], capsys)
    assert code == 0, err
    dirs = sorted(p.name for p in out.iterdir())
    assert [d.rsplit("-", 1)[0] for d in dirs] == ["rho_attn=0.1", "rho_attn=0.3"]  # slug + hash of the exact value
    for d in dirs:
        cfg = json.loads((out / d / "config.json").read_text())
        assert cfg["method_params"]["rho_attn"] == float(d.rsplit("-", 1)[0].split("=")[1])
        assert cfg["method_params"]["alpha"] == 0.5
        assert len((out / d / "cases.jsonl").read_text().splitlines()) == 4  # 2 cases x 2 strengths
    table = stdout.split("# grid: trade-off across configurations and strengths")[1]
    rows = [l for l in table.splitlines() if l.startswith("| rho_attn=")]
    assert [r.split(" | ")[:2] for r in rows] == [["| rho_attn=0.1", "1"], ["| rho_attn=0.1", "2"],
                                                  ["| rho_attn=0.3", "1"], ["| rho_attn=0.3", "2"]]
    for bad, msg in ((["--grid", "rho_attn="], "needs comma-separated values"),
                     (["--grid", "alpha=0.1,0.2", "--param", "alpha=0.5"], "both as a fixed parameter and as a grid axis"),
                     (["--grid", "nope=1,2"], "has no hyperparameter 'nope'")):
        code, _, err = run([*base, *bad], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1


def test_missing_data_and_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the network
    code, _, err = run(["run", *TINY, "--data-root", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["run", *TINY, "--data-root", str(empty)], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run(["run", "--model", "no/such-model-here", "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "cannot load model" in err and err.count("\n") == 1


def test_listing_commands(capsys):
    assert run(["methods"], capsys)[1].startswith("unedited") or "unedited" in run(["methods"], capsys)[1]
    assert "counterfact" in run(["benchmarks"], capsys)[1]
    assert "smollm2-135m" in run(["models"], capsys)[1]


def test_console_script_exit_code(tmp_path):
    """The installed entry point exits non-zero with one line and no traceback."""
    p = subprocess.run([sys.executable, "-m", "editbench.cli", "run", "--method", "nope", "--model", "tiny-llama"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown method" in p.stderr


def test_run_config_file_runs_every_method_entry(cf_root, tmp_path, capsys):
    """`editbench run --config` reads the sweep's `methods:` shape: one run directory per
    configuration, named from the resolved values (slug + hash), refused as a whole when any entry
    is invalid (nothing written)."""
    import yaml

    cfg = {"model": "tiny-llama", "benchmark": "counterfact", "limit": 2, "data_root": str(cf_root),
           "out": str(tmp_path / "runs"),
           "methods": [{"name": "unedited"},
                       {"name": "steer2edit", "grid": {"alpha": [0.3, 0.6]}, "strengths": [1, 2]}]}
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, stdout, err = run(["run", "--config", str(path), "--quiet"], capsys)
    assert code == 0, err
    dirs = sorted(str(p.parent.relative_to(tmp_path / "runs")) for p in (tmp_path / "runs").rglob("summary.json"))
    assert dirs[2] == "unedited/default"
    assert [d.rsplit("-", 1)[0] for d in dirs[:2]] == ["steer2edit/alpha=0.3", "steer2edit/alpha=0.6"]
    for d in dirs:
        c = json.loads((tmp_path / "runs" / d / "config.json").read_text())
        if d.startswith("steer2edit/"):
            assert c["method_params"]["alpha"] == float(d.split("=")[1].rsplit("-", 1)[0]) and c["strengths"] == [1.0, 2.0]
    assert "# grid: trade-off across configurations and strengths" in stdout
    # an invalid entry refuses the whole config before anything runs
    bad = {**cfg, "out": str(tmp_path / "bad"), "methods": [{"name": "unedited"}, {"name": "steer2edit", "params": {"nope": 1}}]}
    path.write_text(yaml.safe_dump(bad))
    code, _, err = run(["run", "--config", str(path)], capsys)
    assert code == 2 and "has no hyperparameter 'nope'" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    for text, msg in (("methods: [{name: unedited, grid: [1, 2]}]\nout: x\n", "'grid' must map"),
                      ("methods: [{name: [steering]}]\nout: x\n", "'name' must be a string"),
                      ("- 1\n- 2\n", "must be a mapping"),
                      ("methods: [{name: unedited}]\n", "needs 'out'")):
        path.write_text(text)
        code, _, err = run(["run", "--config", str(path)], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, err
