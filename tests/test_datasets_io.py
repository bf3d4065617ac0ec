"""Loading through ``datasets`` (editbench.datasets_io): records equal plain json/csv reads of the
real data bundle, malformed files give the same one-line errors, hub ids fail offline in one line."""

import csv
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from editbench.benchmarks.counterfact import SPLIT_FILES, CounterFact, load_counterfact_file, parse_counterfact_records
from editbench.benchmarks.reasoning import FILES as GSM8K_FILES, ReasoningLength, clean_solution
from editbench.benchmarks.safety import FILES as SAFETY_FILES, Safety
from editbench.benchmarks.truthfulqa import FILES as TQA_FILES, TruthfulQA
from editbench.cli import main
from editbench.data import resolve_data_root
from editbench.datasets_io import HubSource, jsonl_line, load_local, load_records
from editbench.errors import ConfigError, DataError
from editbench.evaluation.scope import NEUTRAL_TEXT
from editbench.evaluation.utility import ALPACA, MC_TASKS, WIKITEXT, UtilityConfig, UtilitySuite, _mc_rows


def _bundle() -> Path:
    try:
        root = resolve_data_root()
    except DataError:
        pytest.skip("shared data bundle not present")
    if not (root / "MANIFEST.md").is_file():
        pytest.skip("data root is not the shared bundle")
    return root


#: every data file a benchmark, the utility suite or the scope tests read
FILES_IN_USE = sorted({*SPLIT_FILES.values(), *SAFETY_FILES.values(), *TQA_FILES.values(), *GSM8K_FILES.values(),
                       *MC_TASKS.values(), WIKITEXT, ALPACA, NEUTRAL_TEXT})


def plain_read(path: Path) -> list:
    """The straightforward read the loaders did before ``datasets``."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [r if isinstance(r, dict) else {"text": r} for r in data]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".raw":
        return [{"text": path.read_text(encoding="utf-8")}]
    return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines()]


def _key_orders(value):
    """Every object's key order, depth first (dict equality ignores it; MC answer order does not)."""
    if isinstance(value, dict):
        yield list(value)
        for v in value.values():
            yield from _key_orders(v)
    elif isinstance(value, list):
        for v in value:
            yield from _key_orders(v)


@pytest.mark.parametrize("rel", FILES_IN_USE)
def test_bundle_file_equals_plain_read(rel):
    root = _bundle()
    path = root / rel
    got = load_local(path, by="document" if path.suffix == ".raw" else "line")
    want = plain_read(path)
    assert len(got) == len(want) > 0
    assert list(got) == want  # values and types: ints stay ints, strings stay strings, nothing None-filled
    assert list(_key_orders(list(got))) == list(_key_orders(want))
    assert got.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


def test_benchmark_records_equal_plain_reads():
    """What each benchmark builds from its files equals what it built from plain reads before."""
    root = _bundle()
    for split, rel in SPLIT_FILES.items():
        assert (CounterFact(root, split).load(limit=300) ==
                _attach(root, parse_counterfact_records(plain_read(root / rel), Path(rel).name, rel, 300)))
    # TruthfulQA, by the pre-datasets construction
    rows, mc = plain_read(root / TQA_FILES["csv"]), plain_read(root / TQA_FILES["mc"])
    want = []
    for r, m in zip(rows, mc):
        best = r["Best Answer"].strip()
        correct, incorrect = ([a.strip() for a in r[c].split(";") if a.strip()] for c in ("Correct Answers", "Incorrect Answers"))
        want.append({"question": r["Question"].strip(), "best": best, "incorrect": incorrect[0],
                     "correct_answers": [best, *correct], "incorrect_answers": incorrect,
                     "mc_question": str(m.get("question", r["Question"])).strip(),
                     "mc1": list(m["mc1_targets"].items()), "mc2": list(m["mc2_targets"].items())})
    assert TruthfulQA(root).pool() == want
    # Safety: AdvBench rows then MaliciousInstruct lines
    adv = plain_read(root / SAFETY_FILES["advbench"])
    lines = (root / SAFETY_FILES["malicious"]).read_text(encoding="utf-8").splitlines()
    assert Safety(root).pool() == (
        [{"instruction": r["goal"].strip(), "compliance": r["target"].strip(), "source": "advbench"} for r in adv]
        + [{"instruction": x.strip(), "compliance": None, "source": "maliciousinstruct"} for x in lines if x.strip()])
    assert Safety(root).benign() == [r["instruction"] for r in plain_read(root / SAFETY_FILES["benign"])]
    gsm = ReasoningLength(root)
    for which, read in (("test", gsm.pool), ("train", lambda: gsm._read("train"))):
        assert read() == [dict(zip(("question", "solution", "answer"), (r["question"], *clean_solution(r["answer"]))))
                          for r in plain_read(root / GSM8K_FILES[which])]
    # utility: MC items, the wikitext text, the Alpaca instructions
    for task, rel in MC_TASKS.items():
        items = _mc_rows(task, root / rel)
        raw = plain_read(root / rel)
        assert len(items) == len(raw)
        if task == "csqa":
            assert [it["gold"] for it in items] == [r["choices"]["label"].index(r["answerKey"]) for r in raw]
            assert [it["choices"] for it in items] == [r["choices"]["text"] for r in raw]
        else:
            assert [(it["choices"], it["gold"]) for it in items] == [(r["choices"], r["gold"]) for r in raw]
    suite = UtilitySuite(UtilityConfig(), root)
    text = "\n\n".join(json.loads((root / WIKITEXT).read_text(encoding="utf-8")))

    class Tok:  # the window builder only slices the text and tokenises it: record what it is given
        seen: list = []

        def __call__(self, s, add_special_tokens=True):
            Tok.seen.append((s, add_special_tokens))
            return {"input_ids": list(range(len(s)))}

    suite._windows(type("LM", (), {"tokenizer": Tok()})(), "val")
    # the text itself, without special tokens (the special prefix is asked for with an empty text)
    assert [s for s, special in Tok.seen if not special] == [text[: 400 * suite.cfg.window * suite.cfg.wikitext_windows]]
    assert [s for s, special in Tok.seen if special] == [""]


def _attach(root, cases):
    from editbench.benchmarks.counterfact import attach_subject_neighbours, subject_index

    return attach_subject_neighbours(cases, subject_index(root))


# --------------------------------------------------------------------------------------------
# what datasets does to data, on fixtures
# --------------------------------------------------------------------------------------------
def test_types_nulls_and_order_survive(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"a": 1, "b": "x", "m": {"z": 1, "y": 0}, "l": [["p"]]},
                             {"a": 2, "m": {"y": 1, "q": 0}, "l": []},  # no "b": datasets fills None
                             {"a": 3, "b": None, "m": {"w": 1}, "l": [["q", "r"]]}]))
    rows = load_local(p)
    assert list(rows) == [{"a": 1, "b": "x", "m": {"z": 1, "y": 0}, "l": [["p"]]},
                          {"a": 2, "m": {"y": 1, "q": 0}, "l": []}, {"a": 3, "m": {"w": 1}, "l": [["q", "r"]]}]
    assert [list(r["m"]) for r in rows] == [["z", "y"], ["y", "q"], ["w"]]
    c = tmp_path / "c.csv"
    c.write_text('goal,target\n007,NA\nNone,""\n"a, b\nc",null\nshort\n')
    assert list(load_local(c)) == [{"goal": "007", "target": "NA"}, {"goal": "None", "target": ""},
                                   {"goal": "a, b\nc", "target": "null"}, {"goal": "short", "target": ""}]
    for name, text in (("e.json", "[]"), ("e.jsonl", ""), ("e.csv", "goal,target\n"), ("e.txt", "")):
        (tmp_path / name).write_text(text)
        assert list(load_local(tmp_path / name)) == []


@pytest.mark.parametrize("name, text, msg", [
    ("mix.json", json.dumps([{"case_id": 1}, {"case_id": "5"}]), "record 0: field 'case_id' holds values of different types"),
    ("mixlist.json", json.dumps([{"l": ["a", 1]}]), "field 'l.\\[\\]' holds values of different types"),
    ("bad.json", '[{"a": 1},', "bad.json: not valid JSON \\(Expecting value"),
    ("obj.json", '{"a": 1}', "expected a non-empty JSON array of records, got a JSON object"),
    ("nonobj.json", json.dumps([{"a": 1}, 5]), "nonobj.json record 1: expected an object"),
    ("bad.jsonl", '{"a": 1}\n\n{"a": \n', "bad.jsonl: line 3 is not valid JSON"),
    ("list.jsonl", '{"a": 1}\n[1]\n', "list.jsonl: line 2 is a JSON list, not an object"),
    ("long.csv", "a,b\n1,2,3\n", "long.csv: could not be read as csv"),
    ("dup.csv", "a,a\n1,2\n", "repeated column name"),
    ("missing.json", None, "missing.json not found"),
])
def test_malformed_files_one_line(tmp_path, name, text, msg):
    p = tmp_path / name
    if text is not None:
        p.write_text(text)
    with pytest.raises(DataError, match=msg) as e:
        load_local(p)
    assert "\n" not in str(e.value)


def test_malformed_records_keep_their_error_lines(tmp_path, cf_root):
    """A key missing from one record (datasets fills it with None) is still a missing field; the
    error lines are the loaders' own."""
    path = cf_root / "counterfact" / "counterfact-edit.json"
    data = json.loads(path.read_text())
    del data[2]["target_new"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"^counterfact-edit.json record 2 \(case_id 2\): field 'target_new' missing"):
        load_counterfact_file(path)
    # utility MC items name the line as the file shows it (blank lines count)
    (tmp_path / "utility").mkdir()
    arc = tmp_path / "utility" / "arc.jsonl"
    arc.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 0}\n\n{"query": "Q", "choices": ["a"], "gold": 3}\n')
    with pytest.raises(DataError, match=r"arc.jsonl: line 3 is not a valid arc_easy record"):
        _mc_rows("arc_easy", arc)
    assert jsonl_line(arc, 1) == 3
    # safety: an empty cell is named by its CSV row
    (tmp_path / "safety").mkdir()
    (tmp_path / "safety" / "harmful_behaviors.csv").write_text("goal,target\nDo x,Sure\n,Sure\n")
    (tmp_path / "safety" / "MaliciousInstruct.txt").write_text("How to y?\n")
    with pytest.raises(DataError, match="harmful_behaviors.csv: row 3 has an empty goal or target"):
        Safety(tmp_path).pool()


def test_reread_after_change_and_no_cache_left(tmp_path, monkeypatch):
    """Loaded files are kept per process by path, size and mtime: a changed file is read again. The
    Arrow cache of a local file is throwaway: nothing stays in the temp dir or the datasets cache."""
    import datasets.config

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    hf_cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache))
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n')
    assert list(load_local(p)) == [{"a": 1}]
    p.write_text('{"a": 2}\n{"a": 3}\n')
    assert list(load_local(p)) == [{"a": 2}, {"a": 3}]
    rows = load_local(p)
    rows[0]["a"] = 99  # a caller's change is its own
    assert list(load_local(p)) == [{"a": 2}, {"a": 3}]
    assert list(scratch.iterdir()) == [] and not hf_cache.exists()


# --------------------------------------------------------------------------------------------
# hub sources
# --------------------------------------------------------------------------------------------
def test_hub_source_syntax():
    s = HubSource.parse("hub:truthfulqa/truthful_qa@abc123?name=generation&split=validation")
    assert (s.id, s.name, s.split, s.revision) == ("truthfulqa/truthful_qa", "generation", "validation", "abc123")
    assert HubSource.parse(str(s)) == s and str(HubSource.parse("hub:gsm8k")) == "hub:gsm8k"
    assert HubSource.parse({"hub": "azhx/counterfact", "split": "train"}) == HubSource("azhx/counterfact", split="train")
    assert HubSource.parse("hub:a/b").with_defaults(split="train", name=None).split == "train"
    for bad in ("azhx/counterfact", "hub:", "hub:a/b/c", "hub:../x", "hub:a/b@", "hub:a/b?config=x", "hub:a/b?split=",
                "hub:a/b?split=x&split=y", {"hub": "a/b", "splits": "x"}, {"hub": "a/b", "split": 3}):
        with pytest.raises(ConfigError):
            HubSource.parse(bad)
    with pytest.raises(ConfigError, match="both configs"):
        TruthfulQA(options={"dataset": "hub:truthfulqa/truthful_qa?name=generation"})
    with pytest.raises(ConfigError, match="both splits"):
        ReasoningLength(options={"dataset": "hub:openai/gsm8k?split=test"})
    with pytest.raises(ConfigError, match="differs"):
        CounterFact(split="val", dataset="hub:azhx/counterfact?split=train")


def _offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


NO_SUCH = "hub:editbench-tests/no-such-dataset"


def test_hub_offline_fails_fast_in_one_line(monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    # HF_HUB_OFFLINE: no request at all, the cache has no copy
    with monkeypatch.context() as m:
        _offline(m)
        t = time.time()
        with pytest.raises(DataError) as e:
            load_records(NO_SUCH)
        assert time.time() - t < 10
    msg = str(e.value)
    assert msg.startswith(f"could not load dataset '{NO_SUCH}?split=train' from the Hugging Face hub (offline?)")
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg
    # no offline flag and no hub to reach (a closed local port): the one metadata request fails, no retries
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    t = time.time()
    with pytest.raises(DataError) as e:
        load_records(NO_SUCH)
    assert time.time() - t < 10
    assert "(offline?)" in str(e.value) and "\n" not in str(e.value) and "HF_HUB_OFFLINE=1" in str(e.value)


def test_hub_offline_through_the_cli(monkeypatch, tmp_path, capsys, cf_root):
    _offline(monkeypatch)
    out = tmp_path / "o"
    code = main(["run", "--model", "tiny-llama", "--quiet", "--data-root", str(cf_root), "--dataset", NO_SUCH,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("editbench: error: could not load dataset") and err.count("\n") == 1
    assert not out.exists()
    for bad, msg in ((["--dataset", "azhx/counterfact"], "not a hub dataset"),
                     (["--dataset", NO_SUCH, "--benchmark", "safety"], "takes no --dataset")):
        code = main(["run", "--model", "tiny-llama", "--quiet", "--out", str(out), *bad])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and err.count("\n") == 1


def test_hub_offline_console_script(tmp_path):
    """The real environment variable, in a fresh process: one line, exit 2."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "-m", "editbench.cli", "run", "--model", "tiny-llama", "--quiet",
                        "--dataset", NO_SUCH, "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "(offline?)" in p.stderr, p.stderr


# --------------------------------------------------------------------------------------------
# hub column mappings, on a local directory laid out as the hub repository (no network)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """``hub:OWNER/NAME`` resolves to ``tmp/hub/OWNER/NAME`` (parquet files and a README with the
    configs, as on the hub); offline, so nothing is requested."""
    import datasets

    _offline(monkeypatch)
    base, cache = tmp_path / "hub", tmp_path / "hf-cache"
    real = datasets.load_dataset_builder

    def builder(path, name=None, revision=None, **kw):
        return real(str(base / path), name, cache_dir=str(cache), **kw)

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)

    def publish(repo: str, configs: dict[str, dict[str, list[dict]]]) -> None:
        root = base / repo
        lines = ["---", "configs:"]
        for config, splits in configs.items():
            lines += [f"- config_name: {config}", "  data_files:"]
            for split, rows in splits.items():
                (root / config).mkdir(parents=True, exist_ok=True)
                datasets.Dataset.from_list(rows).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
                lines += [f"  - split: {split}", f"    path: {config}/{split}-*.parquet"]
        (root / "README.md").write_text("\n".join(lines + ["---", ""]))

    return publish


def test_truthfulqa_from_the_hub_layout(fake_hub):
    root = _bundle()
    rows, mc = plain_read(root / TQA_FILES["csv"]), plain_read(root / TQA_FILES["mc"])
    split = lambda s: [a.strip() for a in s.split(";") if a.strip()]  # noqa: E731
    fake_hub("truthfulqa/truthful_qa", {
        "generation": {"validation": [{"type": r["Type"], "category": r["Category"], "question": r["Question"],
                                       "best_answer": r["Best Answer"], "correct_answers": split(r["Correct Answers"]),
                                       "incorrect_answers": split(r["Incorrect Answers"]), "source": r["Source"]}
                                      for r in rows]},
        "multiple_choice": {"validation": [
            {"question": m["question"], **{k: {"choices": list(m[k]), "labels": list(m[k].values())}
                                           for k in ("mc1_targets", "mc2_targets")}} for m in mc]}})
    hub = TruthfulQA(options={"dataset": "hub:truthfulqa/truthful_qa"})
    assert hub.pool() == TruthfulQA(root).pool()
    prov = hub.provenance()
    assert [h["name"] for h in prov["hub"]] == ["generation", "multiple_choice"] and len(prov["files"]) == 2
    assert all(k.startswith("hub:truthfulqa/truthful_qa@") for k in prov["files"])


def test_counterfact_and_gsm8k_from_the_hub_layout(fake_hub, tmp_path, capsys, cf_root):
    root = _bundle()
    fake_hub("openai/gsm8k", {"main": {s: plain_read(root / GSM8K_FILES[s]) for s in ("train", "test")}})
    hub, local = ReasoningLength(options={"dataset": "hub:openai/gsm8k"}), ReasoningLength(root)
    assert hub.pool() == local.pool() and hub.items("probe") == local.items("probe")
    ee = json.loads((cf_root / "counterfact" / "counterfact-edit.json").read_text())
    rome = json.loads((cf_root / "counterfact" / "rome" / "counterfact_500.json").read_text())
    fake_hub("someone/counterfact", {"easyedit": {"train": ee}, "rome": {"test": rome}})
    with pytest.raises(DataError, match="Config name is missing"):  # two configs: the source must name one
        CounterFact(cf_root, dataset="hub:someone/counterfact").load()
    assert [c.request for c in CounterFact(cf_root, dataset="hub:someone/counterfact?name=easyedit").load()] == [
        c.request for c in CounterFact(cf_root, "edit").load()]
    got = CounterFact(cf_root, dataset="hub:someone/counterfact?name=rome&split=test").load()
    want = CounterFact(cf_root, "rome500").load()
    assert [(c.request, c.paraphrase_prompts, c.generation_prompts) for c in got] == [
        (c.request, c.paraphrase_prompts, c.generation_prompts) for c in want]
    # a run from the hub dataset records it; a resume with another source is refused
    out = tmp_path / "run"
    base = ["run", "--model", "tiny-llama", "--quiet", "--data-root", str(cf_root), "--limit", "2", "--out", str(out)]
    assert main([*base, "--dataset", "hub:someone/counterfact?name=easyedit"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "hub:someone/counterfact?name=easyedit" and cfg["split"] == "train"
    assert [k.split("@")[0] for k in cfg["data_sha256"]] == ["counterfact"]  # the hub commit, by dataset name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["hub"]["id"] == "someone/counterfact" and summary["data"]["hub"]["num_rows"] == 6
    capsys.readouterr()
    assert main([*base, "--dataset", "hub:someone/counterfact?name=rome&split=test"]) == 2
    assert "holds results of a different" in capsys.readouterr().err
