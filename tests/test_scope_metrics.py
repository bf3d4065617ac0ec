"""Scope tests and model health (subject_specificity, subject_kl/leak, CounterFact+, neutral_kl,
fluency): the subject index, exact re-derivation of every metric from direct unbatched scoring,
batch-size invariance, out-of-scope behaviour of a subject-gated edit, and bad input."""

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch

from editbench.benchmarks.counterfact import SUBJECT_NEIGHBOURS_MAX, CounterFact, subject_index
from editbench.cli import main
from editbench.errors import ConfigError, DataError
from editbench.evaluation import metric_registry
from editbench.evaluation import metrics as M
from editbench.evaluation.evaluator import KnowledgeEditEvaluator
from editbench.evaluation.scope import (CFPLUS_TEMPLATE, FLUENCY_MAX_NEW_TOKENS, FLUENCY_PROMPTS,
                                        NEUTRAL_WINDOW_TOKENS, SUBJECT_TEMPLATES, check_subject_templates,
                                        neutral_windows)
from editbench.methods.unedited import Unedited
from editbench.modeling.interventions import ActivationIntervention, SteeringVector, WeightIntervention
from editbench.modeling.scoring import (Batch, encode_prompt, encode_target, generate, kl_divergence,
                                        next_token_logprobs, window_logprobs)
from editbench.modeling.weights import ColumnDelta
from editbench.plugins.method import Method
from tests.conftest import tiny


# ---------------------------------------------------------------------------------------------
# fixture: facts sharing subjects across the three EasyEdit files, a relation map, neutral text
# ---------------------------------------------------------------------------------------------
def _ee(cid, prompt, subject, new, true, i=0):
    return {"case_id": cid, "prompt": prompt, "target_new": new, "subject": subject, "ground_truth": true,
            "rephrase_prompt": f"{subject} speaks the language of", "locality_prompt": f"Other{i} is a native speaker of",
            "locality_ground_truth": true}


RELATIONS = {"The mother tongue of {} is": "P103", "{} was born in": "P19", "{} is a citizen of": "P27",
             "{} speaks": "P103", "{} works in": "P937", "{} died in": "P20", "{} is employed by": "P108",
             "{} follows the religion of": "P140"}


def _rome(cid, template, rel, subject, new="German", true="Dutch"):
    return {"case_id": cid, "pararel_idx": 0,
            "requested_rewrite": {"prompt": template, "relation_id": rel, "subject": subject,
                                  "target_new": {"str": new, "id": "Q1"}, "target_true": {"str": true, "id": "Q2"}},
            "paraphrase_prompts": [f"{subject} grew up speaking"], "neighborhood_prompts": ["Other is a native speaker of",
                                                                                           "Another is a native of"],
            "generation_prompts": [f"{subject} is famous for", f"People like {subject} because"]}


PARAGRAPH = ("The history of the old town begins in the early period of settlement, when farmers from the "
             "river valley built houses along the northern bank and traded grain with the coastal cities. ")


@pytest.fixture
def scope_root(tmp_path):
    root = tmp_path / "data"
    (root / "counterfact" / "rome").mkdir(parents=True)
    edit = [_ee(0, "The mother tongue of Person0 is", "Person0", "English", "French", 0),
            _ee(1, "The mother tongue of Person1 is", "Person1", "German", "Dutch", 1),
            _ee(2, "The mother tongue of Person2 is", "Person2", "Italian", "Greek", 2)]
    train = [_ee(1000, "Person0 was born in", "Person0", "Rome", "Paris"),              # kept
             _ee(1001, "Person0 is a citizen of", "Person0", "Spain", "France"),        # kept
             _ee(1002, "Person0 speaks", "Person0", "Polish", "Basque"),                # same relation (P103)
             _ee(1003, "Person0 works in", "Person0", "Oslo", "English"),               # true object == X's new
             _ee(1004, "Person0 plays", "Person0", "piano", "violin"),                  # unknown template
             _ee(1005, "The mother tongue of Person0 is", "Person0", "Welsh", "Spanish"),  # same prompt
             _ee(1006, "Person1 was born in", "Person1", "Rome", "Utrecht"),
             _ee(1007, "Person1 is a citizen of", "Person1", "Spain", "Belgium"),
             _ee(1008, "Person1 works in", "Person1", "Oslo", "Ghent"),
             _ee(1009, "Person1 is employed by", "Person1", "BBC", "Philips")]
    val = [_ee(2000, "Person0 died in", "Person0", "Bern", "Lyon"),                         # kept
           _ee(2001, "Person1 died in", "Person1", "Bern", "Antwerp"),
           _ee(2002, "Person1 follows the religion of", "Person1", "Islam", "Christianity")]
    rome = [_rome(1, "The mother tongue of {} is", "P103", "Person1")]  # also edit case 1 (same case_id)
    rome += [_rome(500 + i, t, r, f"Def{i}") for i, (t, r) in enumerate(RELATIONS.items())]
    for name, recs in (("edit", edit), ("train", train), ("val", val)):
        (root / "counterfact" / f"counterfact-{name}.json").write_text(json.dumps(recs))
    (root / "counterfact" / "rome" / "counterfact_500.json").write_text(json.dumps(rome))
    wiki = root / "utility" / "wikitext-2-raw"
    wiki.mkdir(parents=True)
    lines = []
    for k in range(12):
        lines += [" \n", f" = Section {k} = \n", " \n", f" {PARAGRAPH * 2}Part {k}. \n"]
    (wiki / "wiki.test.raw").write_text("".join(lines))
    return root


# ---------------------------------------------------------------------------------------------
# toy methods
# ---------------------------------------------------------------------------------------------
class RandomSteer(Method):
    """Row-batchable: per-case random vectors at the last prompt token and at all positions."""

    name = "random-steer"

    def fit_edit(self, request):
        d = self.lm.adapter.hidden_size
        g = torch.Generator().manual_seed(int(request.case_id) % 1000)
        return ActivationIntervention([SteeringVector(1, "attn", torch.randn(d, generator=g) * 3, "last"),
                                       SteeringVector(2, "mlp", torch.randn(d, generator=g), "all")])


class RandomWeights(Method):
    name = "random-weights"

    def fit_edit(self, request):
        d = self.lm.adapter.hidden_size
        g = torch.Generator().manual_seed(int(request.case_id) % 1000 + 7)
        return WeightIntervention([ColumnDelta(1, "mlp", slice(0, 4), torch.randn(d, 1, generator=g),
                                               torch.randn(4, 1, generator=g))])


@dataclass
class SubjectGated(ActivationIntervention):
    """A subject gate: the vectors act only on rows whose text contains the subject."""

    subject: str = ""

    @classmethod
    def apply_rows(cls, lm, rows, batch):
        gated = []
        for r, (iv, s) in enumerate(rows):
            text = lm.tokenizer.decode(batch.input_ids[r][batch.attention_mask[r].bool()].tolist())
            gated.append((iv if iv.subject in text else ActivationIntervention([]), s))
        return ActivationIntervention._install(lm, gated, batch)


class GatedPush(Method):
    """Pushes o*'s first token at the last prompt token, only where the subject occurs."""

    name = "gated-push"

    def fit_edit(self, request):
        ad = self.lm.adapter
        tok = encode_target(self.lm.tokenizer, request.target_new)[0]
        v = ad.lm_head.weight[tok].detach().float() * 200.0
        return SubjectGated([SteeringVector(ad.n_layers - 1, "resid", v, "last")], subject=request.subject)


class NaNSteer(Method):
    name = "nan-steer"

    def fit_edit(self, request):
        return ActivationIntervention([SteeringVector(1, "attn", torch.full((self.lm.adapter.hidden_size,), math.nan),
                                                      "last")])


# ---------------------------------------------------------------------------------------------
# direct, unbatched reference computations (the full HF model, one sequence at a time)
# ---------------------------------------------------------------------------------------------
def _contexts(lm, iv, s):
    if iv is None:
        return nullcontext(), None
    if iv.row_batchable:
        return nullcontext(), lambda b: type(iv).apply_rows(lm, [(iv, s)] * len(b.indices), b)
    return iv.apply(lm, s), None


@torch.no_grad()
def direct_logp(lm, ids, iv=None, s=1.0, prompt_len=None):
    """[T, V] log-probs of one unpadded sequence under ``iv`` (prompt = the first prompt_len tokens)."""
    ids_t = torch.tensor([ids])
    batch = Batch([0], ids_t, torch.ones_like(ids_t), torch.tensor([prompt_len or len(ids)]))
    outer, bctx = _contexts(lm, iv, s)
    with outer, (bctx(batch) if bctx else nullcontext()):
        logits = lm.model(input_ids=ids_t, attention_mask=torch.ones_like(ids_t)).logits[0]
    return torch.log_softmax(logits.float(), -1)


def direct_nll(lm, prompt, target, iv=None, s=1.0):
    p, t = encode_prompt(lm.tokenizer, prompt), encode_target(lm.tokenizer, target)
    logp = direct_logp(lm, p + t[:-1], iv, s, prompt_len=len(p))
    return -sum(logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)) / len(t)


def direct_ns(lm, pairs, new, iv, s):
    """ROME NS rule and magnitude over (prompt, kept object) pairs against o*."""
    succ, mag = [], []
    for prompt, keep in pairs:
        a, b = direct_nll(lm, prompt, keep, iv, s), direct_nll(lm, prompt, new, iv, s)
        succ.append(float(a < b))
        mag.append(math.exp(-a) - math.exp(-b))
    return sum(succ) / len(succ), sum(mag) / len(mag)


def direct_next(lm, prompt, iv=None, s=1.0):
    ids = encode_prompt(lm.tokenizer, prompt)
    return direct_logp(lm, ids, iv, s)[-1]


def direct_fluency(lm, prompts, iv, s):
    outer, bctx = _contexts(lm, iv, s)
    with outer:
        texts = [generate(lm, [p], max_new_tokens=FLUENCY_MAX_NEW_TOKENS, batch_size=1, batch_context=bctx)[0]
                 for p in prompts]
    return sum(M.ngram_entropy(t) for t in texts) / len(texts)


def _mixed(root):
    """Edit cases 0 and 2 (one with other-relation facts, one without) and rome500 case 1 (shares
    its case_id with edit case 1, as in the real data: never evaluated together)."""
    edit = CounterFact(root, "edit").load()
    return [edit[0], edit[2], *CounterFact(root, "rome500").load(limit=1)]


def _rec(recs, cid, s):
    return next(r for r in recs if r["case_id"] == cid and r["strength"] == s)


# ---------------------------------------------------------------------------------------------
# the subject index
# ---------------------------------------------------------------------------------------------
def test_subject_index_rules(scope_root):
    cases = CounterFact(scope_root, "edit").load()
    nb = {c.case_id: c.extra["subject_neighbours"] for c in cases}
    # kept: other relation, other prompt, true object not o*/o; sorted by case_id; across all 3 files
    assert nb[0] == ((1000, "Person0 was born in", "Paris"), (1001, "Person0 is a citizen of", "France"),
                     (2000, "Person0 died in", "Lyon"))
    assert len(nb[1]) == SUBJECT_NEIGHBOURS_MAX == 5  # 6 candidates, capped, first by case_id
    assert [y[0] for y in nb[1]] == [1006, 1007, 1008, 1009, 2001]
    assert nb[2] == ()
    # a rome500 case is also in an EasyEdit file under its own case_id: never its own neighbour
    (r1,) = CounterFact(scope_root, "rome500").load(limit=1)
    assert r1.case_id == 1 and all(y[0] != 1 for y in r1.extra["subject_neighbours"])
    assert [y[0] for y in r1.extra["subject_neighbours"]] == [y[0] for y in nb[1]]
    # evaluation data: never in the request a method sees
    assert "subject_neighbours" not in cases[0].request.__dict__ and "Paris" not in json.dumps(cases[0].request.__dict__)
    idx = subject_index(scope_root)
    assert idx is subject_index(scope_root)  # built once per data root
    assert idx.template_relations["{} speaks"] == frozenset({"P103"}) and len(idx.files) == 4 and not idx.missing


def test_subject_index_missing_and_malformed_files(scope_root, tmp_path, capsys):
    # a hand-made data root may be partial: what it lacks is left out and listed in the provenance
    (scope_root / "counterfact" / "counterfact-val.json").unlink()
    (scope_root / "utility" / "wikitext-2-raw" / "wiki.test.raw").unlink()
    cases = CounterFact(scope_root, "edit").load()
    assert [y[0] for y in cases[0].extra["subject_neighbours"]] == [1000, 1001]
    prov = CounterFact(scope_root, "edit").provenance()
    assert prov["scope_missing"] == ["counterfact/counterfact-val.json", "utility/wikitext-2-raw/wiki.test.raw"]
    assert len(prov["scope_files"]) == 3 and list(prov["files"]) == [str(scope_root / "counterfact/counterfact-edit.json")]
    lm = tiny("tiny-llama")
    rec = KnowledgeEditEvaluator(lm, Unedited(lm), data_root=scope_root).evaluate(cases[:1])[0]
    assert "neutral_kl" not in rec["post"] and "subject_kl" in rec["post"]
    # a data bundle (it has a MANIFEST.md) promises every file: one error line naming the missing one
    (scope_root / "MANIFEST.md").write_text("# Offline data bundle: MANIFEST\n")
    with pytest.raises(DataError, match="lacks counterfact/counterfact-val.json"):
        CounterFact(scope_root, "edit").load()
    (scope_root / "counterfact" / "counterfact-val.json").write_text("[]")
    with pytest.raises(DataError, match="counterfact-val.json: expected a non-empty JSON array"):
        CounterFact(scope_root, "edit").load()
    (scope_root / "counterfact" / "counterfact-val.json").write_text(json.dumps([_ee(2000, "Person0 died in", "Person0", "Bern", "Lyon")]))
    code = main(["run", "--model", "tiny-llama", "--quiet", "--data-root", str(scope_root), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("editbench: error:") and err.count("\n") == 1
    assert "lacks utility/wikitext-2-raw/wiki.test.raw" in err and not (tmp_path / "o").exists()
    (scope_root / "counterfact" / "counterfact-train.json").write_text("[{\"case_id\": 5}]")
    with pytest.raises(DataError, match="counterfact-train.json record 0 .*'prompt'"):
        CounterFact(scope_root, "edit").load()


def test_explicit_path_without_data_root(scope_root, tmp_path, monkeypatch):
    """A CounterFact file given by path still loads where no data root exists at all: its cases
    have no other-relation facts and the run records the scope inputs as missing."""
    import editbench.data

    f = tmp_path / "mine.json"
    f.write_text((scope_root / "counterfact" / "counterfact-edit.json").read_text())
    monkeypatch.setattr(editbench.data, "candidate_roots", lambda: [tmp_path / "none"])
    monkeypatch.delenv("EDITBENCH_DATA", raising=False)
    bench = CounterFact(path=f)
    cases = bench.load()
    assert len(cases) == 3 and all(c.extra["subject_neighbours"] == () for c in cases)
    assert bench.provenance()["scope_files"] == {} and "utility/wikitext-2-raw/wiki.test.raw" in bench.provenance()["scope_missing"]


def test_bad_templates_are_one_line_errors(scope_root, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown placeholder '\{object\}'"):
        check_subject_templates(["{subject} likes {object}"])
    with pytest.raises(ConfigError, match="no '{subject}' placeholder"):
        check_subject_templates(["Nobody is known for"])
    lm = tiny("tiny-llama")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        KnowledgeEditEvaluator(lm, Unedited(lm), subject_templates=["{subj} is"], data_root=scope_root)
    path = scope_root / "counterfact" / "rome" / "counterfact_500.json"
    rome = json.loads(path.read_text())
    rome[2]["requested_rewrite"]["prompt"] = "{} was born in {place}"
    path.write_text(json.dumps(rome))
    code = main(["run", "--model", "tiny-llama", "--quiet", "--data-root", str(scope_root), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("editbench: error:") and err.count("\n") == 1
    assert "counterfact_500.json record 2" in err and "unknown placeholder '{place}'" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# scoring helpers against unbatched computation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_next_token_and_window_logprobs_match_direct(model):
    lm = tiny(model)
    prompts = ["Hi", "The capital of France is", "A much longer prompt that needs padding in a batch of rows,"]
    got = next_token_logprobs(lm, prompts, batch_size=2)
    for p, row in zip(prompts, got):
        assert torch.allclose(row, direct_next(lm, p), atol=2e-4)
    wins = [encode_prompt(lm.tokenizer, p) for p in prompts]
    full = window_logprobs(lm, wins, batch_size=3)
    for w, lp in zip(wins, full):
        assert lp.shape == (len(w), lm.adapter.lm_head.weight.shape[0])
        assert torch.allclose(lp, direct_logp(lm, w), atol=2e-4)
    # the KL variant under a row-batched intervention equals KL of the direct computations
    iv = ActivationIntervention([SteeringVector(1, "attn", torch.randn(lm.adapter.hidden_size) * 3, "all")])
    kl = window_logprobs(lm, wins, batch_size=2, reference=full,
                         batch_context=lambda b: ActivationIntervention.apply_rows(lm, [(iv, 1.0)] * len(b.indices), b))
    for w, ref, k in zip(wins, full, kl):
        assert torch.allclose(k, kl_divergence(ref, direct_logp(lm, w, iv)), atol=1e-4)
        assert (k > 0).all()
    assert float(kl_divergence(full[0], full[0]).abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------
# the evaluator: exact re-derivation, batch-size invariance, pre-edit values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method_cls", [RandomSteer, RandomWeights])
def test_metrics_rederived_from_direct_scoring(scope_root, method_cls):
    lm = tiny("tiny-llama")
    cases = _mixed(scope_root)
    method = method_cls(lm)
    ev = KnowledgeEditEvaluator(lm, method, strengths=[1.0], batch_size=4, data_root=scope_root)
    recs = ev.evaluate(cases)
    wins = neutral_windows(lm, scope_root)
    assert len(wins) == 4 and all(len(w) == NEUTRAL_WINDOW_TOKENS for w in wins)
    for case in cases:
        rec, r = _rec(recs, case.case_id, 1.0), case.request
        iv = method.fit_edit(r)
        pre, post = rec["pre"], rec["post"]
        ys = case.extra["subject_neighbours"]
        if ys:
            ns, nm = direct_ns(lm, [(p, t) for _, p, t in ys], r.target_new, iv, 1.0)
            assert post["subject_specificity"] == pytest.approx(ns) and post["subject_specificity_magnitude"] == pytest.approx(nm, abs=1e-4)
            ns0, _ = direct_ns(lm, [(p, t) for _, p, t in ys], r.target_new, None, 1.0)
            assert pre["subject_specificity"] == pytest.approx(ns0)
        else:
            assert pre["subject_specificity"] is None and post["subject_specificity"] is None
        cf = [CFPLUS_TEMPLATE.format(prompt=r.prompt, new=r.target_new, neighbour=p) for p in case.neighborhood_prompts]
        assert rec["prompts"]["cfplus"] == cf
        ns, nm = direct_ns(lm, [(p, r.target_true) for p in cf], r.target_new, iv, 1.0)
        assert post["cfplus_specificity"] == pytest.approx(ns) and post["cfplus_specificity_magnitude"] == pytest.approx(nm, abs=1e-4)
        # next-token KLs and the leak, from direct per-prompt forwards
        probes = [t.format(subject=r.subject) for t in SUBJECT_TEMPLATES]
        assert rec["prompts"]["subject_probes"] == probes
        kl = lambda ps: sum(float(kl_divergence(direct_next(lm, p), direct_next(lm, p, iv))) for p in ps) / len(ps)  # noqa: E731
        assert post["subject_kl"] == pytest.approx(kl(probes), abs=1e-4) and post["subject_kl"] > 0
        assert post["cfplus_kl"] == pytest.approx(kl(cf), abs=1e-4) and post["cfplus_kl"] > 0
        new = encode_target(lm.tokenizer, r.target_new)[0]
        g0 = [int(direct_next(lm, p).argmax()) for p in probes]
        g1 = [int(direct_next(lm, p, iv).argmax()) for p in probes]
        assert rec["greedy"]["subject_probes"] == {"pre": g0, "post": g1}
        assert post["subject_leak"] == pytest.approx(sum(b == new != a for a, b in zip(g0, g1)) / len(probes))
        assert post["subject_leak_any"] == pytest.approx(sum(b == new for b in g1) / len(probes))
        assert pre["subject_leak_any"] == pytest.approx(sum(a == new for a in g0) / len(probes))
        nkl = torch.cat([kl_divergence(direct_logp(lm, w), direct_logp(lm, w, iv)) for w in wins]).mean()
        assert post["neutral_kl"] == pytest.approx(float(nkl), abs=1e-4) and post["neutral_kl"] > 0
        # fluency: the case's generation prompts, else the first subject probes; short greedy budget
        fp = list(case.generation_prompts[:FLUENCY_PROMPTS]) or probes[:FLUENCY_PROMPTS]
        assert rec["prompts"]["fluency"] == fp
        assert post["fluency"] == pytest.approx(direct_fluency(lm, fp, iv, 1.0), abs=1e-6)
        assert pre["fluency"] == pytest.approx(direct_fluency(lm, fp, None, 1.0), abs=1e-6)
        assert pre["subject_kl"] == pre["cfplus_kl"] == pre["neutral_kl"] == pre["subject_leak"] == 0.0


@pytest.mark.parametrize("method_cls", [RandomSteer, RandomWeights])
def test_batch_size_invariance(scope_root, method_cls):
    lm = tiny("tiny-llama")
    cases = _mixed(scope_root)
    runs = [{(r["case_id"], r["strength"]): r for r in KnowledgeEditEvaluator(
        lm, method_cls(lm), strengths=[0.5, 1.0], batch_size=bs, data_root=scope_root).evaluate(cases)}
        for bs in (1, 16)]
    a, b = runs
    assert set(a) == set(b) and len(a) == 2 * len(cases)
    new_metrics = ("subject_specificity", "cfplus_specificity", "subject_kl", "cfplus_kl", "neutral_kl",
                   "subject_leak", "subject_leak_any", "fluency")
    for k in a:
        for state in ("pre", "post"):
            assert set(a[k][state]) == set(b[k][state]) and set(new_metrics) <= set(a[k][state])
            for m, v in a[k][state].items():
                if v is None:
                    assert b[k][state][m] is None
                else:
                    assert b[k][state][m] == pytest.approx(v, abs=1e-4), (k, state, m)


def test_unedited_is_exactly_neutral(scope_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(scope_root, "edit").load()
    recs = KnowledgeEditEvaluator(lm, Unedited(lm), strengths=[1.0], data_root=scope_root).evaluate(cases)
    for r in recs:
        for m in ("subject_kl", "cfplus_kl", "neutral_kl", "subject_leak"):
            assert r["pre"][m] == 0.0 and r["post"][m] == 0.0
        for m in ("subject_specificity", "subject_specificity_magnitude", "cfplus_specificity", "fluency",
                  "subject_leak_any"):
            assert r["post"][m] == r["pre"][m]


def test_subject_gate_looks_perfect_on_specificity_but_not_on_scope(scope_root):
    """Out of scope: a gate keyed on the subject leaves neighbourhood prompts and neutral text
    untouched (specificity and neutral_kl say nothing happened) while the same-subject probes and
    the CounterFact+ prompts, which contain the subject, move."""
    lm = tiny("tiny-llama")
    cases = CounterFact(scope_root, "edit").load()
    recs = KnowledgeEditEvaluator(lm, GatedPush(lm), strengths=[1.0], data_root=scope_root).evaluate(cases)
    for r in recs:
        pre, post, nll = r["pre"], r["post"], r["nll"]
        assert post["specificity"] == pre["specificity"] and post["ee_locality"] == 1.0
        assert nll["post"]["neighborhood"] == nll["pre"]["neighborhood"]  # bit-identical: out of the gate
        assert post["neutral_kl"] < 1e-6
        # the tiny byte-level tokenizer gives every target the same first token (a space), the one
        # pushed: what the edit does to the probes shows in the KLs, the greedy token and the NLLs
        assert post["subject_kl"] > 0.1 and post["cfplus_kl"] > 0.1
        assert post["subject_leak_any"] == 1.0
        assert post["subject_leak"] == pytest.approx(1.0 - pre["subject_leak_any"])
        assert nll["post"]["cfplus"]["new"] != nll["pre"]["cfplus"]["new"]
        if r["case_id"] in (0, 1):
            assert nll["post"]["subject_other"]["true"] != nll["pre"]["subject_other"]["true"]


def test_non_finite_scores_are_flagged_not_failures(scope_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(scope_root, "edit").load()[:2]
    recs = KnowledgeEditEvaluator(lm, NaNSteer(lm), strengths=[1.0], data_root=scope_root).evaluate(cases)
    for r in recs:
        assert {"subject_kl", "cfplus_kl", "neutral_kl", "subject_leak", "subject_leak_any"} <= set(r["non_finite"]["post"])
        assert r["post"]["subject_kl"] is None and r["pre"]["subject_kl"] == 0.0
    agg = KnowledgeEditEvaluator.summarize(recs)["points"]["1.0"]["post"]
    assert agg["subject_kl"]["n"] == 0 and agg["subject_kl"]["non_finite"] == 2


def test_summary_counts_only_applicable_cases_and_registry(scope_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(scope_root, "edit").load()
    recs = KnowledgeEditEvaluator(lm, RandomSteer(lm), strengths=[1.0], data_root=scope_root).evaluate(cases)
    summ = KnowledgeEditEvaluator.summarize(recs)
    post = summ["points"]["1.0"]["post"]
    assert post["subject_specificity"]["n"] == 2 and post["cfplus_specificity"]["n"] == 3
    assert post["neutral_kl"]["n"] == 3 and post["neutral_kl"]["ci95"][0] <= post["neutral_kl"]["mean"]
    vals = [r["post"]["neutral_kl"] for r in recs]
    assert post["neutral_kl"]["mean"] == pytest.approx(sum(vals) / 3)  # nats: not scaled
    assert post["subject_specificity"]["mean"] == pytest.approx(
        100 * sum(r["post"]["subject_specificity"] for r in recs if r["case_id"] != 2) / 2)
    assert summ["pre"]["subject_kl"]["mean"] == 0.0
    spec = metric_registry.spec_of
    for m in ("subject_kl", "cfplus_kl", "neutral_kl"):
        assert spec(m).scale == "nats" and not spec(m).higher_is_better
    assert not spec("subject_leak").higher_is_better and spec("subject_leak").scale == "percent"
    assert spec("cfplus_specificity").higher_is_better and spec("subject_specificity_magnitude").scale == "percent"
    assert {"neutral_kl", "subject_specificity", "cfplus_specificity", "fluency"} <= set(
        metric_registry.headline(metric_registry.all_specs()))


def test_health_off_and_long_generation(scope_root):
    lm = tiny("tiny-llama")
    cases = CounterFact(scope_root, "rome500").load(limit=1)
    off = KnowledgeEditEvaluator(lm, RandomSteer(lm), health=False, data_root=scope_root).evaluate(cases)[0]
    assert not {"subject_kl", "neutral_kl", "fluency", "subject_specificity", "cfplus_kl"} & set(off["post"])
    assert "subject_other" not in off["nll"]["post"] and "greedy" not in off
    gen = KnowledgeEditEvaluator(lm, RandomSteer(lm), health=False, generation=True, max_new_tokens=8,
                                 data_root=scope_root).evaluate(cases)[0]
    assert set(gen["post"]) - set(off["post"]) == {"fluency_long"}
    on = KnowledgeEditEvaluator(lm, RandomSteer(lm), generation=True, max_new_tokens=8,
                                data_root=scope_root).evaluate(cases)[0]
    assert on["post"]["fluency_long"] == gen["post"]["fluency_long"] and "fluency" in on["post"]
    for fam, kinds in off["nll"]["post"].items():  # the ROME slots score the same with the scope slots added
        for kind, vals in kinds.items():
            assert on["nll"]["post"][fam][kind] == pytest.approx(vals, abs=1e-4)


def test_cli_run_records_and_summary(scope_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", "tiny-llama", "--quiet", "--data-root", str(scope_root), "--out", str(out),
                 "--method", "steering", "--strengths", "1"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "| subject_specificity |" in stdout and "| neutral_kl |" in stdout
    lines = [json.loads(l) for l in (out / "cases.jsonl").read_text().splitlines()]
    by = {r["case_id"]: r for r in lines}
    assert by[2]["post"]["subject_specificity"] is None and by[0]["post"]["subject_specificity"] is not None
    assert [y[0] for y in by[0]["prompts"]["subject_neighbours"]] == [1000, 1001, 2000]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["points"]["1.0"]["post"]["subject_specificity"]["n"] == 2
    assert summ["pre"]["neutral_kl"]["mean"] == 0.0 and summ["points"]["1.0"]["post"]["neutral_kl"]["mean"] > 0
    assert {k.rsplit("/", 1)[-1] for k in summ["data"]["scope_files"]} == {
        "counterfact-edit.json", "counterfact-train.json", "counterfact-val.json", "counterfact_500.json",
        "wiki.test.raw"}
    assert list(summ["data"]["files"]) == [str(scope_root / "counterfact" / "counterfact-edit.json")]


@pytest.mark.slow
def test_smollm2_scope_metrics():
    """Real model, real data: two rome500 cases with the unedited model and a steering edit."""
    from editbench.data import resolve_data_root
    from editbench.modeling.loading import load_model
    from editbench.plugins import registry

    try:
        root = resolve_data_root()
    except DataError:
        pytest.skip("shared data bundle not present")
    lm = load_model("smollm2-135m")
    cases = [c for c in CounterFact(root, "rome500").load() if c.case_id == 20952]  # Angola
    (y,) = cases[0].extra["subject_neighbours"]
    assert y[1:] == ("In Angola, they understand", "Portuguese")
    rec = KnowledgeEditEvaluator(lm, Unedited(lm), data_root=root).evaluate(cases)[0]
    assert rec["pre"]["subject_specificity"] == rec["post"]["subject_specificity"] == 1.0
    assert rec["post"]["neutral_kl"] == 0.0 and rec["pre"]["fluency"] > 1.0
    steer = registry.load("method", "steering-layer")(lm, {}, seed=0)
    rec = KnowledgeEditEvaluator(lm, steer, strengths=[4.0], data_root=root).evaluate(cases)[0]
    assert rec["post"]["neutral_kl"] > 0 and rec["post"]["subject_kl"] > 0 and rec["post"]["cfplus_kl"] > 0
