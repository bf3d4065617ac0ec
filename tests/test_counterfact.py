import json

import pytest

from editbench.benchmarks.counterfact import CounterFact, load_counterfact_file
from editbench.data import resolve_data_root
from editbench.errors import ConfigError, DataError


def test_fixture_formats(cf_root):
    ee = CounterFact(cf_root, "edit").load()
    assert len(ee) == 6 and ee[0].request.target_true == "French"
    assert ee[0].paraphrase_prompts == ("Person0 speaks the language of",)
    rome = CounterFact(cf_root, "rome500").load(limit=2)
    assert len(rome) == 2
    c = rome[0]
    assert c.request.prompt == "Land0 is located in" and c.request.target_new == "Antarctica"
    assert len(c.paraphrase_prompts) == 2 and len(c.neighborhood_prompts) == 3 and len(c.generation_prompts) == 2
    assert c.neighborhood_target == "Africa"


@pytest.mark.parametrize("mutate, msg", [
    (lambda r: r.pop("target_new"), "record 1 \\(case_id 1\\): field 'target_new'"),
    (lambda r: r.update(prompt=""), "field 'prompt'"),
    (lambda r: r.update(case_id="x"), "case_id"),
    (lambda r: r.update(subject="Nobody"), "does not occur in prompt"),
    (lambda r: r.update(case_id=0), "duplicate case_id 0"),
])
def test_malformed_records_named(cf_root, mutate, msg):
    path = cf_root / "counterfact" / "counterfact-edit.json"
    data = json.loads(path.read_text())
    mutate(data[1])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=msg):
        load_counterfact_file(path)


def test_bad_files(tmp_path, cf_root):
    with pytest.raises(DataError, match="not found"):
        load_counterfact_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_counterfact_file(bad)
    bad.write_text("[]")
    with pytest.raises(DataError, match="non-empty JSON array"):
        load_counterfact_file(bad)
    rome = json.loads((cf_root / "counterfact/rome/counterfact_500.json").read_text())
    rome[0]["requested_rewrite"]["prompt"] = "no placeholder"
    bad.write_text(json.dumps(rome))
    with pytest.raises(DataError, match="placeholder"):
        load_counterfact_file(bad)
    with pytest.raises(ConfigError, match="no split 'test'"):
        CounterFact(cf_root, "test")
    with pytest.raises(DataError, match="not found"):
        CounterFact(cf_root, "val").load()
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_root(tmp_path / "nowhere")


def test_shared_data_files():
    """The real bundle (../shared/data) parses completely in both formats."""
    try:
        root = resolve_data_root()
    except DataError:
        pytest.skip("shared data bundle not present")
    ee = CounterFact(root, "edit").load()
    assert len(ee) == 10000
    rome = CounterFact(root, "rome500").load()
    assert len(rome) == 500
    assert all(len(c.paraphrase_prompts) == 2 and len(c.neighborhood_prompts) == 10 for c in rome)
    prov = CounterFact(root, "rome500").provenance()
    assert list(prov["files"].values()) == ["99a455fe1b99dc332ec1fa921e69fd9297606e9c51d4f108522782f6ad125803"]


def test_cases_with_subject_facts(tmp_path, capsys):
    """``--cases with-subject-facts`` keeps the split's cases that have another fact about their
    subject (5 of the first 100 `edit` cases; 546 of all), so subject_specificity covers every case;
    the selection is a result key and part of the default directory; a bad value is one line."""
    from editbench.cli import main

    first = CounterFact(split="edit").load(100)
    with_facts = [c.case_id for c in first if c.extra["subject_neighbours"]]
    assert len(with_facts) == 5
    picked = CounterFact(split="edit").load(5, with_subject_facts=True)
    assert [c.case_id for c in picked] == with_facts and all(c.extra["subject_neighbours"] for c in picked)
    assert len(CounterFact(split="edit").load(None, with_subject_facts=True)) == 546

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-llama", "--limit", "2", "--cases", "with-subject-facts", "--quiet",
                 "--out", str(out)]) == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["pre"]["subject_specificity"]["n"] == 2
    assert json.loads((out / "config.json").read_text())["cases"] == "with-subject-facts"
    capsys.readouterr()
    assert main(["run", "--model", "tiny-llama", "--limit", "2", "--quiet", "--out", str(out)]) == 2  # other cases
    assert "different cases" in capsys.readouterr().err
    assert main(["run", "--model", "tiny-llama", "--cases", "all-of-them", "--quiet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown --cases selection" in err[0]
