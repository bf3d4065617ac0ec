"""The lm-evaluation-harness utility backend: the same per-item choices as the built-in suite on
the same ARC-Easy items (unedited, under a weight edit, under an activation intervention), the
refusal of per-batch interventions, config errors, and an offline sweep end to end."""

import json

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from editbench.cli import main  # noqa: E402
from editbench.data import resolve_data_root  # noqa: E402
from editbench.errors import ConfigError  # noqa: E402
from editbench.evaluation.lmeval import LmEvalConfig, LmEvalSuite, local_tasks  # noqa: E402
from editbench.evaluation.utility import UtilityConfig, UtilitySuite, utility_config, with_backend  # noqa: E402
from editbench.modeling.interventions import (ActivationIntervention, NoIntervention, SteeringVector,  # noqa: E402
                                              WeightIntervention)
from editbench.modeling.loading import load_model  # noqa: E402
from editbench.modeling.weights import ColumnDelta  # noqa: E402
from editbench.runs.sweep import SweepConfig  # noqa: E402
from tests.conftest import tiny  # noqa: E402

DATA = resolve_data_root()
N_ITEMS = 20


def _edits(lm, scale: float):
    """One weight edit and one all-position activation intervention of comparable size."""
    g = torch.Generator().manual_seed(0)
    d = lm.adapter.hidden_size
    mid = lm.adapter.n_layers // 2
    weight = WeightIntervention([ColumnDelta(mid, "mlp", slice(0, 8), scale * torch.randn(d, 1, generator=g),
                                             torch.randn(8, 1, generator=g))])
    act = ActivationIntervention([SteeringVector(mid, "attn", scale * torch.randn(d, generator=g))])
    return {"weight": weight, "activation": act}


def _both(lm, root, edits, strength: float, batch_size: int = 8):
    """{context name: (built-in records, lm-eval records)} of the ARC-Easy val items."""
    common = dict(limit=N_ITEMS, wikitext_windows=0, neutral=0)
    builtin = UtilitySuite(UtilityConfig(tasks=["arc_easy"], **common), root)
    lmeval = LmEvalSuite(LmEvalConfig(tasks=["arc_easy_local"], **common), root)
    out = {}
    for name, iv in {"unedited": NoIntervention(), **edits}.items():
        recs = [[r for r in s.evaluate(lm, iv.uniform(lm, strength), "val", batch_size) if "lls" in r]
                for s in (builtin, lmeval)]
        out[name] = tuple(recs)
    return out


def _check_agreement(results, atol: float):
    for name, (ours, theirs) in results.items():
        assert len(ours) == len(theirs) == N_ITEMS, name
        for a, b in zip(ours, theirs):
            assert (a["item_id"], a["gold"], a["n_choices"]) == (b["item_id"], b["gold"], b["n_choices"]), name
            assert (a["choice"], a["choice_norm"], a["acc"], a["acc_norm"]) == \
                   (b["choice"], b["choice_norm"], b["acc"], b["acc_norm"]), (name, a, b)
            assert a["lls"] == pytest.approx(b["lls"], abs=atol), name
    # the edits reach lm-eval's forward passes: its scores move with them
    base = [ll for r in results["unedited"][1] for ll in r["lls"]]
    for name in set(results) - {"unedited"}:
        moved = [ll for r in results[name][1] for ll in r["lls"]]
        assert max(abs(x - y) for x, y in zip(base, moved)) > 0.1, name


@pytest.fixture(scope="module")
def short_arc_root(tmp_path_factory):
    """ARC-Easy rows short enough for the tiny models' 256 positions (byte tokenizer): lm-eval
    left-truncates longer inputs, the built-in suite does not."""
    root = tmp_path_factory.mktemp("data")
    (root / "utility").mkdir()
    rows = []
    for line in (DATA / "utility" / "arc_easy_test.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if len((r["query"] + "\nAnswer: " + max(r["choices"], key=len)).encode()) < 200:
            rows.append(line)
    (root / "utility" / "arc_easy_test.jsonl").write_text("\n".join(rows[:120]) + "\n", encoding="utf-8")
    return root


def test_same_choices_as_builtin_on_tiny_model(short_arc_root):
    lm = tiny("tiny-llama")
    _check_agreement(_both(lm, short_arc_root, _edits(lm, 2.0), 1.0), atol=1e-3)


def test_local_tasks_are_the_builtin_prompts():
    assert {"arc_easy_local", "arc_challenge_local", "csqa_local", "piqa_local"} <= set(local_tasks())
    for path in local_tasks().values():  # never a copy of the data: relative paths under the data root
        cfg = yaml.safe_load(path.read_text())
        assert cfg["dataset_path"] == "json"
        assert all(not f.startswith("/") for f in cfg["dataset_kwargs"]["data_files"].values())
    cfg = LmEvalConfig(tasks=["csqa_local", "piqa_local"], limit=2, wikitext_windows=0, neutral=0)
    lm_suite, ours = LmEvalSuite(cfg, DATA), UtilitySuite(UtilityConfig(tasks=["csqa", "piqa"], limit=2), DATA)
    for local, builtin in (("csqa_local", "csqa"), ("piqa_local", "piqa")):
        task = lm_suite._tasks[local]
        ids = lm_suite.doc_ids(local, "test")
        assert ids == [it["item_id"] for it in ours.items(builtin, "test")]
        for i, it in zip(ids, ours.items(builtin, "test")):
            doc = task.eval_docs[i]
            assert task.doc_to_text(doc) == it["prompt"] and list(task.doc_to_choice(doc)) == it["choices"]
            assert task.doc_to_target(doc) in (it["gold"], str(it["gold"]))


def test_per_batch_interventions_are_refused(short_arc_root):
    lm = tiny("tiny-llama")
    suite = LmEvalSuite(LmEvalConfig(tasks=["arc_easy_local"], limit=2, wikitext_windows=0, neutral=0), short_arc_root)
    last = ActivationIntervention([SteeringVector(1, "attn", torch.ones(lm.adapter.hidden_size), positions="last")])
    with pytest.raises(ConfigError, match="needs each batch's prompt positions"):
        suite.evaluate(lm, last.uniform(lm, 1.0), "val")


def test_sweep_refuses_a_gated_method_before_any_point(short_arc_root, tmp_path, capsys):
    """A configuration the backend cannot evaluate (the scope-gated ``steering-gated``, listed after
    one it can) is refused with one line before any point is computed or the config written."""
    for sub in ("counterfact", "safety"):
        if not (short_arc_root / sub).is_symlink():
            (short_arc_root / sub).symlink_to(DATA / sub)
    cfg = {"model": "tiny-llama", "benchmark": "counterfact", "out": str(tmp_path / "sweep"), "limit": 2,
           "data_root": str(short_arc_root), "utility_edits": 1,
           "utility": {"backend": "lm-eval", "tasks": ["arc_easy_local"], "limit": 2, "wikitext_windows": 0,
                       "neutral": 0},
           "methods": [{"name": "steering", "strengths": [1.0]}, {"name": "steering-gated", "strengths": [1.0]}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["sweep", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench: error: the lm-eval utility backend cannot apply") and err.count("\n") == 1
    assert not (tmp_path / "sweep" / "points.jsonl").exists() and not (tmp_path / "sweep" / "config.json").exists()
    cfg["methods"] = cfg["methods"][:1]  # without it the same sweep runs
    path.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(path), "--quiet"]) == 0, capsys.readouterr().err
    assert len((tmp_path / "sweep" / "points.jsonl").read_text().splitlines()) == 2 * 2


def test_config_errors(tmp_path, capsys):
    base = {"benchmark": "truthfulqa", "out": str(tmp_path / "s"), "methods": [{"name": "steering"}]}
    for util, msg in (({"backend": "lmeval"}, "utility backend must be one of builtin, lm-eval"),
                      ({"backend": "lm-eval", "tasks": []}, "non-empty list of lm-eval task names"),
                      ({"backend": "lm-eval", "tasks": "arc_easy_local"}, "non-empty list of lm-eval task names"),
                      ({"backend": "lm-eval", "tasks": ["arc_easy_local"] * 2}, "duplicate task"),
                      ({"backend": "lm-eval", "limit": 0}, "limit >= 1"),
                      ({"backend": "lm-eval", "limit": 2.5}, "'limit' must be an integer"),
                      ({"backend": "lm-eval", "limit": "all"}, "'limit' must be an integer"),
                      ({"backend": "lm-eval", "metric": "f1"}, "metric must be 'acc' or 'acc_norm'")):
        with pytest.raises(ConfigError, match=msg):
            SweepConfig.from_dict({**base, "utility": util})
    with pytest.raises(ConfigError, match="invalid sweep config"):
        SweepConfig.from_dict({**base, "utility": {"backend": "lm-eval", "taks": ["arc_easy_local"]}})
    # the resolved config of a built-in sweep is what it was before backends existed (resumes stay valid)
    assert "backend" not in SweepConfig.from_dict(base).utility.__dict__
    # an unknown task: one line and exit 2, before any model is loaded
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({**base, "model": "no-such-model",
                                   "utility": {"backend": "lm-eval", "tasks": ["arc_easy_local", "no_such_task"]}}))
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("editbench: error: unknown lm-eval task 'no_such_task'") and err.count("\n") == 1
    assert main(["sweep", str(cfg), "--quiet", "--utility-backend", "nope"]) == 2
    assert "utility backend must be one of" in capsys.readouterr().err


def test_with_backend_maps_builtin_tasks():
    cfg = UtilityConfig(tasks=["arc_easy", "csqa"], limit=7, neutral=3)
    lm = with_backend(cfg, "lm-eval")
    assert isinstance(lm, LmEvalConfig) and lm.tasks == ["arc_easy_local", "csqa_local"]
    assert (lm.limit, lm.neutral) == (7, 3)
    back = with_backend(lm, "builtin")
    assert type(back) is UtilityConfig and back == cfg
    assert with_backend(cfg, "lm-eval", ["piqa_local"]).tasks == ["piqa_local"]
    with pytest.raises(ConfigError, match="has no builtin equivalent"):
        with_backend(utility_config({"backend": "lm-eval", "tasks": ["editbench_local"]}), "builtin")


def test_sweep_with_lmeval_backend_end_to_end(short_arc_root, tmp_path, capsys):
    for sub in ("truthfulqa", "safety"):  # the benchmark's data and neutral_kl's Alpaca instructions
        if not (short_arc_root / sub).is_symlink():
            (short_arc_root / sub).symlink_to(DATA / sub)
    cfg = {"model": "tiny-llama", "benchmark": "truthfulqa", "benchmark_options": {"probe": "dataset"},
           "out": str(tmp_path / "sweep"), "limit": 3, "probe_limit": 4, "data_root": str(short_arc_root),
           "utility": {"backend": "lm-eval", "tasks": ["arc_easy_local"], "limit": 4, "wikitext_windows": 0,
                       "neutral": 1, "max_new_tokens": 4},
           "methods": [{"name": "steering", "strengths": [1.0]}, {"name": "steer2edit", "strengths": [1.0]}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(path), "--quiet"]) == 0, capsys.readouterr().err
    out = tmp_path / "sweep"
    config = json.loads((out / "config.json").read_text())
    assert config["utility"]["backend"] == "lm-eval" and config["utility"]["lm_eval_version"]
    assert "lm-eval task arc_easy_local" in config["data_sha256"]
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(points) == 2 * 3
    for p in points:  # the utility score comes from lm-eval's per-item records, in the built-in shape
        mine = [r for r in items if r["key"] == p["key"] and r["split"] == p["split"] and r["kind"] == "utility"
                and r["task"] == "arc_easy_local"]
        assert len(mine) == 4 and all({"item_id", "choice", "choice_norm", "lls", "acc", "acc_norm"} <= set(r)
                                      for r in mine)
        assert p["utility"]["mean"] == pytest.approx(100 * sum(r["acc"] for r in mine) / 4)
        assert p["arc_easy_local_acc"]["n"] == 4 and "neutral_kl" in p
    val = {r["item_id"] for r in items if r["split"] == "val" and r.get("task") == "arc_easy_local"}
    test = {r["item_id"] for r in items if r["split"] == "test" and r.get("task") == "arc_easy_local"}
    assert len(val) == len(test) == 4 and not val & test
    # the steering edit moved lm-eval's scores (the intervention was installed for its calls)
    lls = {p["method"]: [r["lls"] for r in items if r["key"] == p["key"] and r["split"] == "val"
                         and r.get("task") == "arc_easy_local"] for p in points if p["split"] == "val"}
    assert lls["steering"] != lls["unedited"]
    # --utility-backend on a built-in config names the same sweep: it resumes with nothing to do;
    # the built-in backend on this directory is refused (different utility protocol)
    builtin = dict(cfg, utility={**cfg["utility"], "tasks": ["arc_easy"]})
    del builtin["utility"]["backend"]
    path.write_text(yaml.safe_dump(builtin))
    assert main(["sweep", str(path), "--quiet", "--utility-backend", "lm-eval"]) == 0
    assert len((out / "items.jsonl").read_text().splitlines()) == len(items)
    capsys.readouterr()
    assert main(["sweep", str(path), "--quiet"]) == 2
    assert "holds results of a different utility" in capsys.readouterr().err


@pytest.mark.slow
def test_same_choices_as_builtin_on_smollm2():
    lm = load_model("smollm2-135m")
    _check_agreement(_both(lm, DATA, _edits(lm, 0.5), 1.0, batch_size=16), atol=1e-3)
