"""Plugin kit: the conformance suite (built-ins pass, deliberately broken toys fail the right
check), `editbench check-method` / `editbench new-method`, and a scaffolded package installed into
the venv, listed and checked through entry points."""

from __future__ import annotations

import inspect
import ast
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from editbench.plugins import registry
from editbench.cli import main
from editbench.plugins.conformance import CHECKS, assert_conforms, check_method, format_table
from editbench.modeling.directions import edit_probe_pair, extract_directions
from editbench.errors import ConfigError
from editbench.modeling.interventions import ActivationIntervention, Intervention, NoIntervention, SteeringVector
from editbench.requests import EditCase
from editbench.plugins.scaffold import names_for, scaffold
from editbench.plugins.method import Method

BUILTINS = ("unedited", "steering", "steering-layer", "steering-gated", "steer2edit", "ft", "mega", "rome", "memit",
            "grace", "alphaedit")


# ---------------------------------------------------------------------------------------------
# Built-in methods
# ---------------------------------------------------------------------------------------------
def test_builtins_list_is_complete():
    """A new built-in method must be added to BUILTINS (and so to the conformance tests)."""
    ours = {ep.name for ep in entry_points(group="editbench.methods") if ep.dist and ep.dist.name == "editbench"}
    assert ours == set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_method_conforms(name):
    results = assert_conforms(name)
    assert [r.name for r in results] == list(CHECKS)


def test_builtin_conforms_on_post_norm_architecture_with_params():
    assert_conforms("mega", model="tiny-gemma3", params={"mode": "contrast", "positions": "last+subject"})


# ---------------------------------------------------------------------------------------------
# Deliberately broken toy methods: each must fail the check that targets its bug
# ---------------------------------------------------------------------------------------------
def probe_vector(lm, request, layer: int = 1) -> torch.Tensor:
    """A real, request-dependent residual direction (so different cases get different vectors)."""
    pos, neg = edit_probe_pair(request, lm.tokenizer)
    return extract_directions(lm, [pos], [neg], batch_size=2, window="response").resid[layer]


class Toy(Method):
    name = "toy"

    @dataclass
    class Params:
        pass

    def fit_edit(self, request):
        return ActivationIntervention([SteeringVector(1, "resid", probe_vector(self.lm, request), "all")])


class LeavesHookWhenFitting(Toy):
    def fit_edit(self, request):
        self.lm.adapter.layers[0].register_forward_hook(lambda m, i, o: None)  # never removed
        return super().fit_edit(request)


@dataclass
class _ScaledMlp(Intervention):
    """Edits W_down in place; ``exact_restore`` / ``restore_on_error`` switch the two bugs on."""

    delta: torch.Tensor
    exact_restore: bool = True
    restore_on_error: bool = True

    def apply(self, lm, strength=1.0):
        return self._ctx(lm, strength)

    @contextmanager
    def _ctx(self, lm, strength):
        W = lm.adapter.out_weight(1, "mlp")
        saved = W.detach().clone()
        with torch.no_grad():
            W += strength * self.delta
        if self.restore_on_error:
            try:
                yield
            finally:
                self._undo(W, saved, strength)
        else:
            yield
            self._undo(W, saved, strength)

    def _undo(self, W, saved, strength):
        with torch.no_grad():
            if self.exact_restore:
                W.copy_(saved)
            else:
                W -= strength * self.delta  # (W + d) - d != W in floating point


class SubtractsInsteadOfRestoring(Toy):
    def fit_edit(self, request):
        W = self.lm.adapter.out_weight(1, "mlp")
        return _ScaledMlp(0.1 * torch.linspace(-1, 1, W.numel()).reshape(W.shape), exact_restore=False)


class NoRestoreOnError(Toy):
    def fit_edit(self, request):
        W = self.lm.adapter.out_weight(1, "mlp")
        return _ScaledMlp(0.1 * torch.ones_like(W), restore_on_error=False)


@dataclass
class _FullStrength(ActivationIntervention):
    @classmethod
    def apply_rows(cls, lm, rows, batch):
        return cls._install(lm, [(iv, 1.0) for iv, _s in rows], batch)  # ignores strength


class IgnoresStrength(Toy):
    def fit_edit(self, request):
        return _FullStrength(super().fit_edit(request).vectors)


class CarriesStateAcrossFits(Toy):
    def __init__(self, lm, params=None, seed=0):
        super().__init__(lm, params, seed)
        self.fits = 0

    def fit_edit(self, request):
        self.fits += 1
        iv = super().fit_edit(request)
        iv.vectors[0].vector = iv.vectors[0].vector * self.fits
        return iv


class UnseededNoise(Toy):
    def fit_edit(self, request):
        g = torch.Generator().manual_seed(time.perf_counter_ns())
        iv = super().fit_edit(request)
        iv.vectors[0].vector = iv.vectors[0].vector + torch.randn(iv.vectors[0].vector.shape, generator=g)
        return iv


class ReadsEvaluationPrompts(Toy):
    """Cheats: finds the evaluator's EditCase on the call stack and fits on its paraphrases."""

    def fit_edit(self, request):
        prompt = request.prompt
        for fr in inspect.stack():
            case = fr.frame.f_locals.get("case")
            if isinstance(case, EditCase) and case.request == request and case.paraphrase_prompts:
                prompt = case.paraphrase_prompts[0]
                break
        req = type(request)(request.case_id, prompt, request.subject, request.target_new, request.target_true)
        return super().fit_edit(req)


@dataclass
class _FirstRowForAll(ActivationIntervention):
    @classmethod
    def apply_rows(cls, lm, rows, batch):
        return cls._install(lm, [rows[0]] * len(rows), batch)  # every row gets row 0's vector


class MixesRows(Toy):
    def fit_edit(self, request):
        return _FirstRowForAll(super().fit_edit(request).vectors)


class BehaviourWithoutFit(Toy):
    supports = frozenset({"edit", "behaviour"})


class BehaviourLeavesHook(Toy):
    supports = frozenset({"edit", "behaviour"})

    def fit_behaviour(self, positives, negatives, window="predict"):
        self.lm.adapter.layers[2].register_forward_pre_hook(lambda m, i: None)
        return NoIntervention()


class ReturnsTensor(Toy):
    def fit_edit(self, request):
        return torch.zeros(3)


@pytest.mark.parametrize("toy, failing, words", [
    (LeavesHookWhenFitting, {"restores-model"}, "forward hook left on model.layers.0"),
    (SubtractsInsteadOfRestoring, {"restores-model"}, "not restored"),
    (NoRestoreOnError, {"restores-model"}, "after an exception"),
    (IgnoresStrength, {"strength-zero"}, "not bit-equal"),
    (CarriesStateAcrossFits, {"deterministic"}, "reused"),
    (UnseededNoise, {"deterministic", "request-only"}, "fresh instance"),
    (ReadsEvaluationPrompts, {"request-only"}, "read the case's paraphrase_prompts"),
    (MixesRows, {"batch-size"}, "batch 1 vs 16"),
    (BehaviourWithoutFit, {"behaviour"}, "no fit_behaviour"),
    (BehaviourLeavesHook, {"behaviour"}, "forward pre-hook left on model.layers.2"),
])
def test_broken_toy_fails_the_right_check(toy, failing, words):
    results = check_method(toy)
    table = format_table(results)
    failed = {r.name for r in results if not r.passed}
    assert failed == failing, table
    first = next(r for r in CHECKS if r in failing)
    assert words in next(r.detail for r in results if r.name == first), table
    with pytest.raises(AssertionError, match="fails conformance"):
        assert_conforms(toy)


def test_toy_without_bugs_passes():
    assert_conforms(Toy)


class LastTokenToy(Toy):
    def fit_edit(self, request):
        return ActivationIntervention([SteeringVector(1, "resid", probe_vector(self.lm, request), "last")])


def test_position_restricted_activation_intervention_conforms():
    assert_conforms(LastTokenToy)


def test_interface_failure_stops_the_suite():
    results = check_method(ReturnsTensor)
    assert not results[0].passed and "not an Intervention" in results[0].detail
    assert all(not r.passed and r.detail.startswith("not run") for r in results[1:])


def test_bad_input_raises_one_line_errors():
    with pytest.raises(ConfigError, match="unknown method"):
        check_method("no-such-method")
    with pytest.raises(ConfigError, match="tiny random models"):
        check_method("ft", model="smollm2-135m")  # never loads a real model
    with pytest.raises(ConfigError, match="hyperparameter 'nope'"):
        check_method("ft", params={"nope": "1"})


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_method_cli_pass_and_fail(capsys, monkeypatch):
    code, out, err = run_cli(["check-method", "steering-layer", "--param", "layer=0"], capsys)
    assert code == 0, out + err
    assert "| restores-model | pass |" in out and "7/7 checks passed" in out
    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda kind, name: IgnoresStrength if name == "toy" else real_load(kind, name))
    code, out, err = run_cli(["check-method", "toy"], capsys)
    assert code == 1 and "| strength-zero | FAIL |" in out and "failed: strength-zero" in out
    # a check that does not apply is reported as skipped, not counted as passed
    code, out, err = run_cli(["check-method", "rome", "--param", "steps=2"], capsys)
    assert code == 0 and "| behaviour | skip |" in out, out + err
    assert "6/6 checks passed" in out and "skipped (not applicable): behaviour" in out


@pytest.mark.parametrize("args, message", [
    (["check-method", "no-such-method"], "unknown method 'no-such-method'"),
    (["check-method", "ft", "--param", "steps"], "--param expects KEY=VALUE"),
    (["check-method", "ft", "--param", "steps=-1"], "steps must be >= 1"),
    (["check-method", "steering-layer", "--param", "layer=7"], "layer must be in [0, 2]"),
    (["check-method", "ft", "--model", "gpt2-xl"], "tiny random models"),
    (["new-method", "Bad Name"], "invalid method name"),
    (["new-method", "ft"], "already registered"),
    (["new-method", "9lives"], "invalid method name"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_new_method_refuses_existing_dir(tmp_path, capsys):
    code, _, err = run_cli(["new-method", "kit-exists", "--dir", str(tmp_path)], capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Scaffolding
# ---------------------------------------------------------------------------------------------
def test_scaffolded_method_conforms_without_install(tmp_path, monkeypatch, capsys):
    name = "kit-template"
    code, out, err = run_cli(["new-method", name, "--dir", str(tmp_path / "pkg")], capsys)
    assert code == 0, err
    root = tmp_path / "pkg"
    n = names_for(name)
    assert n == {"__NAME__": name, "__PKG__": "editbench_kit_template", "__CLASS__": "KitTemplate"}
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "editbench_kit_template/__init__.py", "editbench_kit_template/method.py", "pyproject.toml",
        "tests/test_conformance.py"]
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points."editbench.methods"]' in pyproject
    assert f'{name} = "editbench_kit_template.method:KitTemplate"' in pyproject
    assert f'assert_conforms("{name}"' in (root / "tests" / "test_conformance.py").read_text()
    allowed = {"editbench", "__future__", "dataclasses", "typing", "math", "torch"}  # editbench, stdlib, torch
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (f, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), f
    monkeypatch.syspath_prepend(str(root))
    from editbench_kit_template.method import KitTemplate

    assert KitTemplate.name == name
    assert_conforms(KitTemplate)
    assert_conforms(KitTemplate, model="tiny-gpt2", params={"layer": "0", "scale": "2"})
    with pytest.raises(ConfigError, match="layer must be in"):
        check_method(KitTemplate, params={"layer": "5"})


def test_scaffold_refuses_bad_names(tmp_path):
    for bad in ("", "a b", "UPPER", "trailing-", "double--dash", "x" * 41, "dot.name", "ok\n", "none", "true",
                "false"):
        with pytest.raises(ConfigError, match="invalid method name"):
            scaffold(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _editbench() -> list[str]:
    exe = Path(sys.executable).parent / "editbench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "editbench.cli"]


@pytest.mark.slow
def test_scaffold_install_list_check(tmp_path):
    """new-method -> pip install -e (offline) -> listed by `editbench methods` -> check-method passes
    -> the package's own pytest passes; uninstalled afterwards."""
    name = f"kit-probe-{os.getpid()}"
    root = scaffold(name, tmp_path / "plugin")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    dist = f"editbench-{name}"

    def run(cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)

    r = run([*pip, "install", "--no-index", "--no-deps", "--no-build-isolation", "-q", "-e", str(root)])
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        r = run([*_editbench(), "methods"])
        assert r.returncode == 0 and any(line.split()[0] == name for line in r.stdout.splitlines()), r.stdout + r.stderr
        r = run([*_editbench(), "check-method", name])
        assert r.returncode == 0 and "7/7 checks passed" in r.stdout, r.stdout + r.stderr
        r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root)
        assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr
    finally:
        r = run([*pip, "uninstall", "-y", "-q", dist])
        assert r.returncode == 0, r.stdout + r.stderr
    r = run([*_editbench(), "methods"])
    assert name not in r.stdout


def test_params_with_postponed_annotations(tmp_path, monkeypatch):
    """Params declared under ``from __future__ import annotations`` (the scaffold's style), with
    ``Path | None`` and ``tuple[int, ...]`` fields, convert CLI strings (typing.get_type_hints, no eval)."""
    from editbench.plugins.method import parse_params

    (tmp_path / "postponed_params_mod.py").write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\nfrom pathlib import Path\n\n\n"
        "@dataclass\nclass Params:\n    region: Path | None = None\n    layers: tuple[int, ...] = ()\n"
        "    lr: float = 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from postponed_params_mod import Params

    p = parse_params(Params, {"region": "/tmp/r.json", "layers": "1,2", "lr": "0.5"}, "m")
    assert p.region == Path("/tmp/r.json") and p.layers == (1, 2) and p.lr == 0.5
    assert parse_params(Params, {"region": "none"}, "m").region is None
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="finite"):
            parse_params(Params, {"lr": bad}, "m")
