"""Many edits in one model: the sequential (lifelong) protocol, batch editing, AlphaEdit, zsRE,
stored edits and their exact resume, the composition contract and its refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from editbench.benchmarks.zsre import ZsRE, parse_zsre
from editbench.cli import main
from editbench.errors import ConfigError, DataError
from editbench.methods.alphaedit import AlphaEdit, AlphaEditIntervention, null_space_projector
from editbench.methods.grace import GRACE, GraceIntervention
from editbench.methods.memit import MEMIT
from editbench.methods.rome import ROME
from editbench.modeling.interventions import ActivationIntervention, StackedIntervention, SteeringVector, WeightIntervention
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.modeling.serialize import load_intervention, save_intervention
from editbench.modeling.weights import ColumnDelta, CumulativeWeights, WeightEditTransaction
from editbench.requests import EditRequest
from editbench.runs.sequential import check_plan, default_checkpoints
from tests.conftest import tiny

TINY = ["--model", "tiny-llama", "--quiet"]
REQS = [EditRequest(i, f"The mother tongue of Person{i} is", f"Person{i}", "English", "French") for i in range(3)]


def _run(tmp_path, *args) -> tuple[int, dict | None]:
    out = tmp_path / "run"
    code = main(["run", *TINY, "--out", str(out), *map(str, args)])
    s = out / "summary.json"
    return code, json.loads(s.read_text()) if s.exists() else None


def _records(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


def _comparable(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("seconds", "code")}


# ---- the protocol ----------------------------------------------------------------------------
def test_sequential_run_writes_checkpoints_with_aggregates(tmp_path, capsys):
    code, s = _run(tmp_path, "--method", "rome", "--param", "steps=3", "--sequential", "--checkpoints", "1,2,4",
                   "--limit", "4")
    assert code == 0
    assert list(s["checkpoints"]) == ["1", "2", "4"]
    for T, agg in s["checkpoints"].items():
        assert agg["n_cases"] == int(T)
        for m in ("efficacy", "generalization", "specificity", "neutral_kl"):
            assert agg[m]["mean"] is not None and "n" in agg[m], (T, m)
        assert agg["efficacy"]["n"] == int(T) and "ci95" in agg["efficacy"]
    assert s["protocol"] == {"sequential": True, "edit_batch_size": 1, "checkpoints": [1, 2, 4],
                             "composition": "weights"}
    from editbench.benchmarks.counterfact import CounterFact

    ids = [c.case_id for c in CounterFact(split="edit").load(4)]
    recs = _records(tmp_path / "run" / "cases.jsonl")
    assert sorted((r["checkpoint"], r["case_id"]) for r in recs) == sorted((T, c) for T in (1, 2, 4) for c in ids[:T])
    assert sorted(p.name for p in (tmp_path / "run" / "edits").iterdir()) == [
        f"{k:05d}.{ext}" for k in range(4) for ext in ("json", "safetensors")]
    assert "| 4 | 4 |" in capsys.readouterr().out  # the retention table


def test_weights_accumulate_each_edit_fitted_on_the_edited_model(tmp_path):
    """Checkpoint 2's numbers are those of the model with both stored deltas added, and edit 2 was
    fitted with edit 1 in force (refitting it on the unedited model gives another delta)."""
    assert _run(tmp_path, "--method", "rome", "--param", "steps=3", "--sequential", "--checkpoints", "2",
                "--limit", "2")[0] == 0
    lm = tiny("tiny-llama")
    e1, _ = load_intervention(tmp_path / "run" / "edits" / "00000")
    e2, _ = load_intervention(tmp_path / "run" / "edits" / "00001")
    first = _records(tmp_path / "run" / "cases.jsonl")[0]
    r0 = first["request"]
    with WeightEditTransaction(lm.adapter, e1.deltas), WeightEditTransaction(lm.adapter, e2.deltas):
        nll = score_targets(lm, [ScoreRequest(r0["prompt"], r0["target_new"])])[0].nll
    assert nll == pytest.approx(first["nll"]["post"]["rewrite"]["new"][0], abs=1e-5)
    from editbench.benchmarks.counterfact import CounterFact
    from editbench.evaluation.evaluator import seed_everything

    case1 = CounterFact(split="edit").load(2)[1]
    seed_everything(0)
    alone = ROME(lm, {"steps": "3"}).fit_edit(case1.request)
    assert not torch.allclose(alone.deltas[0].dense(), e2.deltas[0].dense())
    with WeightEditTransaction(lm.adapter, e1.deltas):
        seed_everything(0)
        again = ROME(lm, {"steps": "3"}).fit_edit(case1.request)
    torch.testing.assert_close(again.deltas[0].dense(), e2.deltas[0].dense())


def test_independent_composition_stacks_the_edits(tmp_path):
    """steering (independent): every edit fitted on the unedited model, all in force together."""
    assert _run(tmp_path, "--method", "steering", "--sequential", "--checkpoints", "3", "--limit", "3")[0] == 0
    lm = tiny("tiny-llama")
    edits = [load_intervention(tmp_path / "run" / "edits" / f"{k:05d}")[0] for k in range(3)]
    last = _records(tmp_path / "run" / "cases.jsonl")[-1]
    r2 = last["request"]
    outer, _ = StackedIntervention(edits).uniform(lm, 1.0)
    with outer:
        nll = score_targets(lm, [ScoreRequest(r2["prompt"], r2["target_new"])])[0].nll
    assert nll == pytest.approx(last["nll"]["post"]["rewrite"]["new"][0], abs=1e-5)


def test_grace_composes_into_one_codebook():
    lm = tiny("tiny-llama")
    g = GRACE(lm, {"eps": "1.0"})
    a = GraceIntervention(3, torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([1.0]), ("x",))
    b = GraceIntervention(3, torch.full((1, 4), 10.0), torch.ones(1, 4), torch.tensor([1.0]), ("y",))
    near = GraceIntervention(3, torch.full((1, 4), 0.25), torch.ones(1, 4), torch.tensor([1.0]), ("z",))
    book = g.compose([a, b])
    assert book.keys.shape[0] == 2 and book.targets == ("x", "y")
    split = g.compose([a, near])  # a conflicting key within the radius: both radii halve to the distance / 2
    assert split.keys.shape[0] == 2 and split.eps.tolist() == pytest.approx([0.25, 0.25])


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_edit_batch_size_fits_batches(tmp_path, method):
    code, s = _run(tmp_path, "--method", method, "--param", "steps=2", "--edit-batch-size", "2", "--limit", "4",
                   "--sequential", "--checkpoints", "2,4")
    assert code == 0 and list(s["checkpoints"]) == ["2", "4"]
    assert len(list((tmp_path / "run" / "edits").glob("*.json"))) == 2  # two batches of two
    single = tmp_path / "single"
    assert main(["run", *TINY, "--out", str(single), "--method", method, "--param", "steps=2", "--edit-batch-size",
                 "2", "--limit", "4"]) == 0
    recs = _records(single / "cases.jsonl")
    assert len(recs) == 4 and recs[0]["intervention"] == recs[1]["intervention"]  # one edit for the pair


def test_alphaedit_projects_onto_the_null_space_and_preserves_earlier_keys():
    C = torch.diag(torch.tensor([5.0, 1.0, 1e-3, 1e-4]))
    P, k = null_space_projector(C, 2e-2)
    assert k == 2 and torch.allclose(P, torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0])).double())
    lm = tiny("tiny-llama")
    m = AlphaEdit(lm, {"steps": "2", "nullspace_threshold": "1e9"})  # every direction is "null": plain ridge
    iv = m.fit_edits(REQS[:2])
    assert isinstance(iv, AlphaEditIntervention) and all(K.shape[1] == 2 for K in iv.keys.values())
    for d in iv.deltas:  # Delta W maps into the span of the batch's residuals; the keys are kept for later edits
        assert torch.isfinite(d.up).all() and torch.isfinite(d.down).all()
    m.after_edit(iv)
    assert set(m.preserved) == set(m.layers)
    l = m.layers[0]
    K = iv.keys[l].double()
    torch.testing.assert_close(m.preserved[l], K @ K.T)
    # a preserved key is (nearly) untouched by the next edit when the null space is its orthogonal complement
    strict = AlphaEdit(lm, {"steps": "2"})
    strict.P = {l2: torch.eye(strict.P[l2].shape[0], dtype=torch.float64) - _proj(iv.keys[l2]) for l2 in strict.layers}
    nxt = strict.fit_edits(REQS[2:])
    for d in nxt.deltas:
        assert (d.dense().double() @ iv.keys[d.layer].double()).abs().max() < 1e-6


def _proj(K: torch.Tensor) -> torch.Tensor:
    Q, _ = torch.linalg.qr(K.double())
    return Q @ Q.T


def test_cumulative_weights_restore_bit_exactly():
    lm = tiny("tiny-gpt2")
    W = lm.adapter.out_weight(1, "mlp")
    before = W.detach().clone()
    cw = CumulativeWeights(lm.adapter)
    for k in range(3):
        cw.add([ColumnDelta(1, "mlp", slice(None), torch.randn(W.shape[0], 1), torch.randn(W.shape[1], 1))], 0.5)
    assert not torch.equal(W, before) and cw.saved_numel == W.numel()  # one copy, not one per edit
    cw.restore()
    assert torch.equal(W, before)


def test_stored_edits_round_trip_bit_exactly(tmp_path):
    lm = tiny("tiny-llama")
    from editbench.methods.mega import MEGA
    from editbench.methods.steer2edit import Steer2Edit

    ivs = [WeightIntervention([ColumnDelta(1, "mlp", slice(2, 5), torch.randn(8, 1), torch.randn(3, 1)),
                               ColumnDelta(0, "attn", torch.tensor([1, 4]), torch.randn(8, 2), torch.randn(2, 2))]),
           ActivationIntervention([SteeringVector(1, "attn", torch.randn(8), "last")]),
           Steer2Edit(lm, {}).fit_edit(REQS[0]),
           MEGA(lm, {"mode": "contrast", "layers": "2", "gate_layer": "1"}).fit_edit(REQS[0]),
           GRACE(lm, {"steps": "2"}).fit_edit(REQS[0])]
    for i, iv in enumerate(ivs):
        save_intervention(iv, tmp_path / f"e{i}", meta={"i": i})
        back, meta = load_intervention(tmp_path / f"e{i}")
        assert type(back) is type(iv) and meta == {"i": i}
        a, b = _flat(iv), _flat(back)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                            for k in a), type(iv).__name__
    (tmp_path / "bad.json").write_text('{"format": "editbench-intervention/1", "intervention": '
                                       '{"__class__": "os:system", "fields": {}}}')
    save_intervention(ivs[0], tmp_path / "bad_t")
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "bad_t.safetensors").read_bytes())
    with pytest.raises(DataError, match="refusing to load class os:system"):
        load_intervention(tmp_path / "bad")


def _flat(obj, prefix="") -> dict:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.compare:
                out.update(_flat(getattr(obj, f.name), f"{prefix}.{f.name}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, x in enumerate(obj):
            out.update(_flat(x, f"{prefix}[{i}]"))
        return out
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{{{k}}}"))
        return out
    return {prefix: obj}


# ---- refusals ----------------------------------------------------------------------------------
def _one_line(code, err, needle):
    assert code == 2 and err.startswith("editbench: error:") and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("args, needle", [
    (["--sequential", "--checkpoints", "2,1", "--limit", "3"], "strictly increasing"),
    (["--sequential", "--checkpoints", "1,8", "--limit", "4"], "beyond the 4 selected cases"),
    (["--checkpoints", "1,2", "--limit", "4"], "--checkpoints needs --sequential"),
    (["--sequential", "--checkpoints", "1,x"], "comma-separated integers"),
    (["--edit-batch-size", "0", "--limit", "2"], "--edit-batch-size must be an integer >= 1"),
    (["--edit-batch-size", "2", "--limit", "2"], "cannot fit several edits at once"),
    (["--sequential", "--strengths", "0.5,1", "--limit", "2"], "single --strengths value"),
    (["--sequential", "--edit-batch-size", "2", "--checkpoints", "1,2", "--limit", "2", "--method", "memit"],
     "falls inside a batch of 2 edits"),
])
def test_bad_many_edit_input_is_one_line(tmp_path, capsys, args, needle):
    code = main(["run", *TINY, "--out", str(tmp_path / "x"), "--method", "rome", *args])  # a later --method wins
    _one_line(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "x" / "cases.jsonl").exists()


def test_a_method_that_cannot_compose_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ROME, "composition", None)
    code = main(["run", *TINY, "--out", str(tmp_path / "x"), "--method", "rome", "--sequential", "--limit", "2"])
    _one_line(code, capsys.readouterr().err, "declares no composition of edits: it cannot run --sequential")
    with pytest.raises(ConfigError, match="cannot run --sequential"):
        check_plan(ROME, 2, None, 1, [1.0], True)


def test_default_checkpoints():
    assert default_checkpoints(4) == [1, 4] and default_checkpoints(100) == [1, 10, 100]
    assert default_checkpoints(1000, 100) == [100, 1000] and default_checkpoints(250, 10) == [10, 100, 250]


# ---- zsRE ---------------------------------------------------------------------------------------
def test_zsre_cases_and_bad_records(tmp_path):
    cases = ZsRE().load(20)
    c = cases[0]
    assert c.request.prompt == "What is the product made by UniFirst?" and c.request.target_new == "unmanned aircraft"
    assert c.request.target_true == "uniform" and c.neighborhood_target == "Walter Sobchak"
    assert c.neighborhood_prompts[0].startswith("nq question:")
    all_cases = ZsRE().load()
    assert len(all_cases) == 998 and {534, 723}.isdisjoint(c.case_id for c in all_cases)  # empty alt: skipped
    good = {"subject": "X", "src": "What is X?", "rephrase": "X is?", "alt": "a", "answers": ["b"], "loc": "nq q",
            "loc_ans": "c"}
    for bad, needle in (({k: v for k, v in good.items() if k != "alt"}, "missing field 'alt'"),
                        ({**good, "answers": []}, "'answers' must be a non-empty list"),
                        ({**good, "src": "What is Y?"}, "does not occur in the question"),
                        ({**good, "loc_ans": 3}, "'loc_ans' must be a non-empty string")):
        with pytest.raises(DataError, match=needle):
            parse_zsre([good, bad], "f.json")
    path = tmp_path / "z.json"
    path.write_text(json.dumps([good]))
    assert ZsRE(dataset=str(path)).load()[0].request.target_new == "a"


def test_zsre_metrics_and_not_applicable_comparisons(tmp_path):
    """zsRE specificity compares the NQ answer with the new one; a record whose new answer is its
    old one has no NLL comparison (None, left out of n), its EasyEdit accuracy stays."""
    root = tmp_path / "data"
    (root / "zsre").mkdir(parents=True)
    rows = [{"subject": "X", "src": "What is X?", "rephrase": "X is what?", "alt": "a cat", "answers": ["a dog"],
             "loc": "nq question: who", "loc_ans": "Bob"},
            {"subject": "Y", "src": "What is Y?", "rephrase": "Y is what?", "alt": "a cat", "answers": ["a cat"],
             "loc": "nq question: when", "loc_ans": "today"}]
    (root / "zsre" / "zsre_mend_train-1k.json").write_text(json.dumps(rows))
    assert main(["run", *TINY, "--benchmark", "zsre", "--data-root", str(root), "--out", str(tmp_path / "z")]) == 0
    recs = {r["case_id"]: r for r in _records(tmp_path / "z" / "cases.jsonl")}
    nll = recs[0]["nll"]["pre"]["neighborhood"]
    assert recs[0]["pre"]["specificity"] == float(nll["loc"][0] < nll["new"][0])
    assert recs[1]["pre"]["efficacy"] is None and recs[1]["pre"]["ee_rewrite_acc"] is not None
    s = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert s["pre"]["efficacy"]["n"] == 1 and s["pre"]["ee_rewrite_acc"]["n"] == 2


def test_benchmarks_and_methods_are_listed(capsys):
    assert main(["benchmarks"]) == 0 and "zsre" in capsys.readouterr().out
    assert main(["methods"]) == 0 and "alphaedit" in capsys.readouterr().out


# ---- kill -9 and resume -------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
def test_kill9_during_a_sequential_run_then_resume_equals_uninterrupted(tmp_path):
    args = ["run", "--model", "tiny-llama", "--quiet", "--method", "rome", "--param", "steps=3", "--sequential",
            "--checkpoints", "2,4,6", "--limit", "6", "--chunk-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "editbench", *args, "--out", str(ref)], check=True, env=env,
                   capture_output=True)
    out = tmp_path / "killed"
    # kill once while edits are being fitted (after the 3rd is stored: its checkpoint 2 is written,
    # checkpoint 4 is not), once in the middle of a checkpoint's evaluation, then resume
    for when in (lambda: (out / "edits" / "00002.json").exists(),
                 lambda: (out / "cases.jsonl").exists() and len((out / "cases.jsonl").read_text().splitlines()) >= 8):
        child = subprocess.Popen([sys.executable, "-m", "editbench", *args, "--out", str(out)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while child.poll() is None and not when() and time.time() < deadline:
            time.sleep(0.01)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    subprocess.run([sys.executable, "-m", "editbench", *args, "--out", str(out)], check=True, env=env,
                   capture_output=True)
    a = sorted(map(_comparable, _records(ref / "cases.jsonl")), key=lambda r: (r["checkpoint"], r["case_id"]))
    b = sorted(map(_comparable, _records(out / "cases.jsonl")), key=lambda r: (r["checkpoint"], r["case_id"]))
    assert a == b
    ha = [_comparable(r) for r in _records(ref / "checkpoints.jsonl")]
    hb = sorted((_comparable(r) for r in _records(out / "checkpoints.jsonl")), key=lambda r: r["checkpoint"])
    assert ha == hb
    sa = json.loads((ref / "summary.json").read_text())["checkpoints"]
    sb = json.loads((out / "summary.json").read_text())["checkpoints"]
    assert sa == sb
