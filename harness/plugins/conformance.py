"""Conformance suite for method plugins: ``editbench check-method NAME`` or :func:`assert_conforms`.

Every method, built-in or third-party, must behave in the ways the evaluator silently relies on;
a plugin that breaks one of them produces numbers that look fine and are wrong. The suite runs a
method on a tiny random model (seconds, no data, no network) and reports one
:class:`CheckResult` per property:

``interface``
    the class has a name, a ``Params`` dataclass, constructs with default (or given) params and
    ``fit_edit`` returns an :class:`~editbench.modeling.interventions.Intervention`.
``restores-model``
    constructing, fitting, applying the intervention (one forward pass inside the context) and an
    exception raised inside the context all leave every parameter and buffer bit-identical
    (``torch.equal``), the ``requires_grad``/``training`` flags unchanged and no hook behind.
``strength-zero``
    scores at strength 0 equal the unedited model's, on the very same batches (see
    :data:`STRENGTH0_ATOL`).
``deterministic``
    with the same seed, a fresh instance and a reused one (after fitting another case) give
    bit-identical interventions and scores: the evaluator seeds once per case and relies on it.
``request-only``
    ``fit_edit`` gets exactly an :class:`~editbench.requests.EditRequest`; while it runs, no evaluation
    field of the case is read (the cases handed to the evaluator record attribute access), and
    replacing the case's evaluation prompts leaves the fitted intervention identical.
``batch-size``
    :class:`~editbench.evaluation.evaluator.KnowledgeEditEvaluator` with ``batch_size`` 1 and 16 agrees within
    float noise (:data:`BATCH_ATOL`): row-batched interventions must land on their own row only.
``behaviour``
    only if the class declares ``"behaviour"`` in ``supports``: ``fit_behaviour`` on a tiny probe
    set exists, restores the model, leaves no hooks and is the identity at strength 0.

Each check runs on a clean model: when a check leaves it dirty, a fresh one is loaded, so one
failure does not cascade into the others.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from editbench.plugins import registry
from editbench.plugins.method import METHOD_CLASSES, Method
from editbench.plugins.inspection import (_Injected, _max_diff, _summarise, fingerprint, fingerprint_diff,  # noqa: F401
                                          score_under, score_uniform, snapshot, state_problems)
from editbench.modeling.directions import ProbeExample
from editbench.errors import ConfigError, EditbenchError
from editbench.evaluation.evaluator import KnowledgeEditEvaluator, seed_everything
from editbench.modeling.interventions import Intervention
from editbench.modeling.loading import TINY_MODELS, load_model
from editbench.requests import EditCase, EditRequest
from editbench.modeling.scoring import ScoreRequest

DEFAULT_CHECK_MODEL = "tiny-llama"
#: Strength 0 must reproduce the unedited scores on identical batches. All built-in interventions
#: are bit-exact there (weight transactions skip the add at scale 0; activation hooks add an exact
#: 0), but a correct plugin may reach the identity through an arithmetically different path
#: (an interpolation ``(1-s)*x + s*y``, a float64 detour) that rounds differently. 1e-6 nats is
#: below the 6-decimal precision of the NLLs written to ``cases.jsonl``, so such a difference can
#: never show in any result; the table says which of the two held.
STRENGTH0_ATOL = 1e-6
#: Batch size changes padding lengths and matmul shapes, hence float32 rounding (about 1e-6 on the
#: tiny models); a row-batching bug (a vector landing on the wrong row) moves NLLs by orders more.
BATCH_ATOL = 1e-4
BATCH_SIZES = (1, 16)

CHECKS = ("interface", "restores-model", "strength-zero", "deterministic", "request-only", "batch-size", "behaviour")


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    skipped: bool = False  # not applicable (counts as passed)


# ---------------------------------------------------------------------------------------------
# Fixed inputs: two CounterFact-like cases, evaluation prompts to swap in, a tiny behaviour probe set
# ---------------------------------------------------------------------------------------------
CASES: tuple[EditCase, ...] = (
    EditCase(EditRequest("conformance-0", "The mother tongue of Danielle Darrieux is", "Danielle Darrieux",
                         "English", "French"),
             paraphrase_prompts=("Danielle Darrieux grew up speaking",
                                 "Where Danielle Darrieux is from, people speak the language of"),
             neighborhood_prompts=("The mother tongue of Jean Gabin is", "Michel Rocard is a native speaker of"),
             neighborhood_target="French"),
    EditCase(EditRequest("conformance-1", "Toko Yasuda plays the", "Toko Yasuda", "piano", "guitar"),
             paraphrase_prompts=("The instrument Toko Yasuda is known for is the",),
             neighborhood_prompts=("Jimi Hendrix plays the", "The instrument of Ringo Starr is the"),
             neighborhood_target="drums"),  # differs from target_true: exercises EasyEdit locality slots
)
SWAPPED_EVAL = dict(paraphrase_prompts=("In her films, Danielle Darrieux speaks",),
                    neighborhood_prompts=("Alain Delon's first language is",),
                    neighborhood_target="German", generation_prompts=("Danielle Darrieux was",))
EVAL_FIELDS = frozenset({"paraphrase_prompts", "neighborhood_prompts", "neighborhood_target",
                         "generation_prompts", "extra"})
BEHAVIOUR_POS = (ProbeExample("Q: Is the sky blue?\nA:", " Yes, it is."), ProbeExample("Q: Is water wet?\nA:", " Yes."))
BEHAVIOUR_NEG = (ProbeExample("Q: Is the sky blue?\nA:", " No."), ProbeExample("Q: Is water wet?\nA:", " No, never."))


def _requests(case: EditCase) -> list[ScoreRequest]:
    """Every (prompt, target) pair of a case, like the evaluator's slots (without the doubt probes)."""
    r = case.request
    prompts = (r.prompt, *case.paraphrase_prompts, *case.neighborhood_prompts)
    out = [ScoreRequest(p, t) for p in prompts for t in (r.target_new, r.target_true)]
    return out + [ScoreRequest(p, case.neighborhood_target) for p in case.neighborhood_prompts]


# ---------------------------------------------------------------------------------------------
# Model state: snapshot and diff (weights, buffers, flags, hooks)
# ---------------------------------------------------------------------------------------------


class _Watch:
    def __init__(self) -> None:
        self.active = False
        self.reads: list[str] = []


class _WatchedCase(EditCase):
    """An EditCase that records reads of its evaluation fields while a fit is running."""

    @classmethod
    def wrap(cls, case: EditCase, watch: _Watch) -> "_WatchedCase":
        obj = cls(**{f.name: getattr(case, f.name) for f in dataclasses.fields(case)})
        object.__setattr__(obj, "_watch", watch)
        return obj

    def __getattribute__(self, name: str) -> Any:
        if name in EVAL_FIELDS:
            watch = object.__getattribute__(self, "_watch")
            if watch.active:
                watch.reads.append(name)
        return object.__getattribute__(self, name)


class _FitProxy:
    """Stands in for the method inside the evaluator: records what ``fit_edit`` gets and returns,
    flags the watch while it runs, and optionally serves cached fits (keyed by case id)."""

    def __init__(self, method: Any, watch: _Watch | None = None, cache: Mapping[Any, Intervention] | None = None):
        self.method, self.watch, self.cache = method, watch, cache
        self.arg_types: list[type] = []
        self.fitted: list[Intervention] = []

    def fit_edit(self, request: EditRequest) -> Intervention:
        self.arg_types.append(type(request))
        if self.cache is not None:
            iv = self.cache[request.case_id]
        else:
            if self.watch:
                self.watch.active = True
            try:
                iv = self.method.fit_edit(request)
            finally:
                if self.watch:
                    self.watch.active = False
        self.fitted.append(iv)
        return iv

    def __getattr__(self, name: str) -> Any:
        return getattr(self.method, name)


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


class _Suite:
    def __init__(self, cls: type, model: str, params: Mapping[str, Any] | None, seed: int, batch_size: int = 16):
        self.cls, self.model_spec, self.params, self.seed, self.batch_size = cls, model, dict(params or {}), seed, batch_size
        self._load()

    def _load(self) -> None:
        self.lm = load_model(self.model_spec, seed=0)
        self.snap = snapshot(self.lm.model)

    def fresh(self) -> Any:
        return self.cls(self.lm, self.params, seed=self.seed)

    def fit(self, method: Any, request: EditRequest) -> Intervention:
        seed_everything(self.seed)  # as the evaluator does before every case
        iv = method.fit_edit(request)
        if not isinstance(iv, Intervention):
            raise TypeError(f"fit_edit returned {type(iv).__name__}, not an Intervention")
        return iv

    def dirty(self) -> list[str]:
        return state_problems(self.lm.model, self.snap)

    def reset(self) -> None:
        """A fresh model if the last check left this one changed, so failures do not cascade."""
        if self.dirty():
            self._load()

    def reqs(self) -> list[list[ScoreRequest]]:
        return [_requests(c) for c in CASES]

    # ---- checks ----------------------------------------------------------------------------
    def check_interface(self) -> CheckResult:
        cls = self.cls
        probs = []
        if not isinstance(getattr(cls, "name", None), str) or not cls.name:
            probs.append("class attribute 'name' is empty")
        if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
            probs.append("'Params' is not a dataclass")
        supports = getattr(cls, "supports", frozenset({"edit"}))
        if "edit" not in supports:
            probs.append(f"supports {sorted(supports)} lacks 'edit' (the evaluator only fits edits)")
        if not callable(getattr(cls, "fit_edit", None)):
            probs.append("no fit_edit method")
        if probs:
            return CheckResult("interface", False, "; ".join(probs))
        m = self.fresh()
        if m.effective_class not in METHOD_CLASSES:
            return CheckResult("interface", False, f"method class {m.effective_class!r} is not one of "
                                                   f"{', '.join(METHOD_CLASSES)}")
        ivs = [self.fit(m, c.request) for c in CASES]
        self.base = ivs  # the reference fits (seeded, one instance, cases in order) other checks reuse
        self.fit_problems = self.dirty()  # judged by restores-model (the model is not reset in between)
        kinds = sorted({type(iv).__name__ for iv in ivs})
        rb = "row-batchable" if all(iv.row_batchable for iv in ivs) else "applied per case"
        return CheckResult("interface", True, f"fit_edit -> {', '.join(kinds)} ({rb})")

    def _apply_and_raise(self, ivs: Sequence[Intervention], reqs: list[list[ScoreRequest]], what: str) -> list[str]:
        """Apply (one scoring pass), then again with an exception raised inside; state after each."""
        probs: list[str] = []
        paths: list[tuple[str, Callable[[bool], Any]]] = [
            ("", lambda inject: score_under(self.lm, ivs, 1.0, reqs, self.batch_size, inject=inject))]
        if len(ivs) == 1 and callable(getattr(ivs[0], "uniform", None)):
            flat = [q for r in reqs for q in r]
            paths.append((" via uniform()", lambda inject: score_uniform(self.lm, ivs[0], 1.0, flat, self.batch_size, inject)))
        for how, run in paths:
            try:
                run(False)
            except Exception as e:  # noqa: BLE001 - report which application path is broken
                probs.append(f"applying {what}{how} raised {_err(e)}")
                break
            probs += [f"after applying {what}{how}: {p}" for p in self.dirty()]
            try:
                run(True)
                probs.append(f"{what}{how}: the context manager swallowed an exception raised inside it")
            except _Injected:
                pass
            probs += [f"after an exception inside {what}{how}: {p}" for p in self.dirty()]
            if probs:
                break
        return probs

    def check_restores_model(self) -> CheckResult:
        # Construction and fitting are covered too: the snapshot predates both.
        probs = [f"after __init__/fit_edit: {p}" for p in self.fit_problems]
        if probs:
            return CheckResult("restores-model", False, _summarise(probs))
        reqs = self.reqs()
        probs = self._apply_and_raise([self.base[0]], reqs[:1], "one case's intervention")
        if not probs:
            probs = self._apply_and_raise(self.base, reqs, "two cases' interventions")
        if probs:
            return CheckResult("restores-model", False, _summarise(probs))
        n = len(self.snap.tensors)
        return CheckResult("restores-model", True,
                           f"{n} tensors bit-identical (torch.equal), flags unchanged, no hooks left; also after an exception")

    def check_strength_zero(self) -> CheckResult:
        reqs = self.reqs()
        ref = score_under(self.lm, self.base, 0.0, reqs, self.batch_size, edited=False)
        zero = score_under(self.lm, self.base, 0.0, reqs, self.batch_size)
        one = score_under(self.lm, self.base, 1.0, reqs, self.batch_size)
        worst, exact, same_argmax = _max_diff(ref, zero)
        if callable(getattr(self.base[0], "uniform", None)):  # how utility benchmarks apply an edit
            u_ref = score_under(self.lm, self.base[:1], 0.0, reqs[:1], self.batch_size, edited=False)  # same batches
            try:
                u_zero = [score_uniform(self.lm, self.base[0], 0.0, reqs[0], self.batch_size)]
            except Exception as e:  # noqa: BLE001
                return CheckResult("strength-zero", False, f"applying via uniform() raised {_err(e)}")
            w2, e2, a2 = _max_diff(u_ref, u_zero)
            worst, exact, same_argmax = max(worst, w2), exact and e2, same_argmax and a2
        effect = _max_diff(ref, one)[0]
        n = sum(len(r) for r in reqs)
        eff = f"strength 1 moves NLL by up to {effect:.3g}" if effect else "strength 1 changes nothing either"
        if exact:
            return CheckResult("strength-zero", True, f"bit-equal to the unedited model on {n} scores; {eff}")
        ok = worst <= STRENGTH0_ATOL and same_argmax
        why = f"max NLL diff {worst:.3g}" + ("" if same_argmax else ", greedy tokens differ")
        return CheckResult("strength-zero", ok, f"not bit-equal: {why} (tolerance {STRENGTH0_ATOL:g}); {eff}")

    def check_deterministic(self) -> CheckResult:
        req0, req1 = CASES[0].request, CASES[1].request
        fresh_iv = self.fit(self.fresh(), req0)
        reused = self.fresh()
        self.fit(reused, req1)
        reused_iv = self.fit(reused, req0)  # after fitting another case: no state may leak between fits
        ref = fingerprint(self.base[0])
        reqs = self.reqs()[:1]
        base_scores = score_under(self.lm, [self.base[0]], 1.0, reqs, self.batch_size)
        for label, iv in (("a fresh instance", fresh_iv), ("an instance reused after another case", reused_iv)):
            d = fingerprint_diff(ref, fingerprint(iv))
            worst, exact, _ = _max_diff(base_scores, score_under(self.lm, [iv], 1.0, reqs, self.batch_size))
            if d or not exact:
                what = d if d else f"scores differ by up to {worst:.3g}"
                return CheckResult("deterministic", False, f"same seed {self.seed}, {label}: {what}")
        return CheckResult("deterministic", True,
                           f"seed {self.seed}: fresh and reused instances give bit-identical fits ({len(ref)} values) and scores")

    def check_request_only(self) -> CheckResult:
        case = CASES[0]
        swapped = dataclasses.replace(case, **SWAPPED_EVAL)
        fits, probs = [], []
        for c in (case, swapped):
            watch = _Watch()
            proxy = _FitProxy(self.fresh(), watch=watch)
            KnowledgeEditEvaluator(self.lm, proxy, strengths=(1.0,), batch_size=self.batch_size,
                                   seed=self.seed).evaluate([_WatchedCase.wrap(c, watch)])
            if [t for t in proxy.arg_types if t is not EditRequest]:
                probs.append(f"fit_edit got {proxy.arg_types[0].__name__}, not an EditRequest")
            if watch.reads:
                probs.append(f"fit_edit read the case's {', '.join(sorted(set(watch.reads)))}")
            fits.append(proxy.fitted[0])
        d = fingerprint_diff(fingerprint(fits[0]), fingerprint(fits[1]))
        if d:
            probs.append(f"the fit changed when only the evaluation prompts changed: {d}")
        else:
            reqs = self.reqs()[:1]
            worst, exact, _ = _max_diff(*(score_under(self.lm, [iv], 1.0, reqs, self.batch_size) for iv in fits))
            if not exact:
                probs.append(f"scores changed by up to {worst:.3g} when only the evaluation prompts changed")
        if probs:
            return CheckResult("request-only", False, _summarise(probs))
        return CheckResult("request-only", True,
                           "fit_edit got only the EditRequest, read no evaluation field; fit unchanged when they change")

    def check_batch_size(self) -> CheckResult:
        cache = {c.case_id: iv for c, iv in zip(CASES, self.base)}
        runs = []
        for bs in BATCH_SIZES:
            ev = KnowledgeEditEvaluator(self.lm, _FitProxy(None, cache=cache), strengths=(1.0, 0.5), batch_size=bs,
                                        seed=self.seed)
            runs.append({(r["case_id"], r["strength"]): r for r in ev.evaluate(list(CASES))})
        a, b = runs
        if set(a) != set(b):
            return CheckResult("batch-size", False, "the two runs produced different (case, strength) records")
        d_nll = max((_nested_max_diff(a[k]["nll"], b[k]["nll"]) for k in a), default=0.0)
        d_met = max((_nested_max_diff({"pre": a[k]["pre"], "post": a[k]["post"]},
                                      {"pre": b[k]["pre"], "post": b[k]["post"]}) for k in a), default=0.0)
        ok = d_nll <= BATCH_ATOL and d_met <= BATCH_ATOL
        return CheckResult("batch-size", ok,
                           f"evaluator batch {BATCH_SIZES[0]} vs {BATCH_SIZES[1]}: max NLL diff {d_nll:.3g}, "
                           f"max metric diff {d_met:.3g} (tolerance {BATCH_ATOL:g})")

    def check_behaviour(self) -> CheckResult:
        if "behaviour" not in getattr(self.cls, "supports", frozenset()):
            return CheckResult("behaviour", True, "not declared in supports: skipped", skipped=True)
        fb = getattr(self.cls, "fit_behaviour", None)
        if not callable(fb) or fb is Method.fit_behaviour:  # the contract's default only refuses
            return CheckResult("behaviour", False, "declares 'behaviour' in supports but has no fit_behaviour")
        m = self.fresh()
        seed_everything(self.seed)
        iv = m.fit_behaviour(list(BEHAVIOUR_POS), list(BEHAVIOUR_NEG))
        if not isinstance(iv, Intervention):
            return CheckResult("behaviour", False, f"fit_behaviour returned {type(iv).__name__}, not an Intervention")
        probs = [f"after fit_behaviour: {p}" for p in self.dirty()]
        reqs = [[ScoreRequest(e.prompt, e.response.strip()) for e in BEHAVIOUR_POS + BEHAVIOUR_NEG]]
        if not probs:
            probs = self._apply_and_raise([iv], reqs, "the behaviour intervention")
        if not probs:
            ref = score_under(self.lm, [iv], 0.0, reqs, self.batch_size, edited=False)
            zero = [score_under(self.lm, [iv], 0.0, reqs, self.batch_size)]
            if callable(getattr(iv, "uniform", None)):  # the path behaviour benchmarks use
                zero.append([score_uniform(self.lm, iv, 0.0, reqs[0], self.batch_size)])
            for z in zero:
                worst, exact, same_argmax = _max_diff(ref, z)
                if not exact and (worst > STRENGTH0_ATOL or not same_argmax):
                    probs.append(f"strength 0 is not the unedited model (max NLL diff {worst:.3g})")
        if probs:
            return CheckResult("behaviour", False, _summarise(probs))
        return CheckResult("behaviour", True,
                           f"fit_behaviour -> {type(iv).__name__}: restored, no hooks, strength 0 = unedited")


def _nested_max_diff(a: Any, b: Any) -> float:
    """Max |a - b| over matching numbers in nested dicts / lists; inf where the structure differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return math.inf
        return max((_nested_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return math.inf
        return max((_nested_max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(a - b)
    return 0.0 if a == b else math.inf


def resolve_method(name_or_class: str | type) -> type:
    """A registered method name (entry point) or a Method class."""
    if isinstance(name_or_class, str):
        return registry.load("method", name_or_class)
    if isinstance(name_or_class, type):
        return name_or_class
    raise ConfigError(f"expected a method name or class, got {type(name_or_class).__name__}")


def check_method(name_or_class: str | type, model: str = DEFAULT_CHECK_MODEL, params: Mapping[str, Any] | None = None,
                 seed: int = 0) -> list[CheckResult]:
    """Run every conformance check; one result per name in :data:`CHECKS`, in that order.

    Bad input (unknown method, invalid params, unknown model) raises :class:`EditbenchError`; a
    method that raises while being checked fails that check instead, with the error as detail."""
    if model not in TINY_MODELS:
        # The contract does not depend on the model's size; tiny random models cover every
        # architecture adapter, keep the suite at seconds and never touch the network.
        raise ConfigError(f"check-method runs on tiny random models ({', '.join(TINY_MODELS)}), got '{model}'")
    cls = resolve_method(name_or_class)
    try:
        suite = _Suite(cls, model, params, seed)
        suite.fresh()  # invalid hyperparameters are the caller's error, not a failed check
    except EditbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a plugin's own bug is a failed check, not a crash
        return [CheckResult("interface", False, f"constructing the method raised {_err(e)}")] + \
               [CheckResult(n, False, "not run: the method cannot be constructed") for n in CHECKS[1:]]
    results = []
    for name in CHECKS:
        try:
            res = getattr(suite, "check_" + name.replace("-", "_"))()
        except Exception as e:  # noqa: BLE001 - see above
            res = CheckResult(name, False, f"raised {_err(e)}")
        results.append(res)
        if name == "interface":
            if not res.passed:
                return results + [CheckResult(n, False, "not run: the interface check failed") for n in CHECKS[1:]]
            continue  # restores-model judges the state the fits left
        suite.reset()
    return results


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def format_table(results: Sequence[CheckResult]) -> str:
    """A Markdown table (readable in a terminal, pasteable into an issue)."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    for r in results:
        status = "skip" if r.skipped else ("pass" if r.passed else "FAIL")
        lines.append(f"| {r.name} | {status} | {r.detail.replace('|', '/')} |")
    return "\n".join(lines)


def assert_conforms(name_or_class: str | type, model: str = DEFAULT_CHECK_MODEL,
                    params: Mapping[str, Any] | None = None, seed: int = 0) -> list[CheckResult]:
    """For pytest: raise AssertionError with the table when any check fails."""
    results = check_method(name_or_class, model=model, params=params, seed=seed)
    failed = [r.name for r in results if not r.passed]
    assert not failed, f"method fails conformance checks {', '.join(failed)}:\n{format_table(results)}"
    return results


__all__ = ["CHECKS", "CheckResult", "assert_conforms", "check_method", "format_table", "score_under", "snapshot",
           "state_problems"]
