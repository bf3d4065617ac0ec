"""The metric registry: one place that says, for every metric name, which way is better, on what
scale it is reported, whether it belongs in a headline table, and where it sits in table order.

The evaluator, the report, ``compare`` and the sweep analysis all ask here, so a metric's
direction is never rediscovered by loading plugin classes at report time. Plugins extend it with
:func:`register_metric` (at import time of the plugin module); a summary may also carry
``metric_directions`` for metrics this installation does not know (reports of foreign runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

from editbench.errors import ConfigError

Scale = Literal["percent", "raw", "tokens", "nats", "bits"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool = True
    #: "percent": rates and probabilities stored x100; others are stored as measured.
    scale: Scale = "percent"
    headline: bool = False
    description: str = ""
    #: table position (lower first); unknown metrics follow alphabetically.
    order: int = 1000
    #: per-case values are rates in [0, 1]: a CI the bootstrap cannot give (every case 0, or every
    #: case 1, or one case) is the Wilson score interval instead of zero width
    proportion: bool = False


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add a metric; re-registering the same spec is a no-op, a different one needs ``replace``."""
    if not spec.name or not isinstance(spec.name, str):
        raise ConfigError(f"metric name must be a non-empty string, got {spec.name!r}")
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ConfigError(f"metric '{spec.name}' is already registered with other properties")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> MetricSpec | None:
    return _REGISTRY.get(name)


def spec_of(name: str, overrides: Mapping[str, str] | None = None) -> MetricSpec:
    """The registered spec, or a default (higher is better, raw scale); ``overrides`` is a
    summary's ``metric_directions`` ({"metric": "lower"|"higher"}) and wins."""
    spec = _REGISTRY.get(name) or MetricSpec(name, scale="raw")
    if overrides and name in overrides:
        hib = str(overrides[name]).lower() not in ("lower", "min", "false", "down")
        spec = MetricSpec(spec.name, hib, spec.scale, spec.headline, spec.description, spec.order, spec.proportion)
    return spec


def higher_is_better(name: str, overrides: Mapping[str, str] | None = None) -> bool:
    return spec_of(name, overrides).higher_is_better


def directions(names: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, bool]:
    """``{metric: higher_is_better}`` for the given names."""
    return {n: higher_is_better(n, overrides) for n in names}


def order(names: Iterable[str]) -> list[str]:
    """Presentation order: registered order first, then the rest alphabetically."""
    names = set(names)
    return sorted(names, key=lambda n: (get(n).order if get(n) else 10_000, n))


def headline(names: Iterable[str]) -> list[str]:
    return [n for n in order(names) if (get(n) and get(n).headline)]


def all_specs() -> dict[str, MetricSpec]:
    return dict(_REGISTRY)


# The built-in metrics (CounterFact, attribute benchmarks, utility suite). Order is the report's.
_BUILTIN = [
    MetricSpec("scope_score", headline=True,
               description="[ours] harmonic mean of efficacy, generalization, specificity, cfplus_specificity and "
                           "100 - subject_leak: the Score with the scope tests a gated editor must also pass"),
    MetricSpec("score", headline=True, description="harmonic mean of efficacy, generalization, specificity"),
    MetricSpec("efficacy", proportion=True, headline=True, description="ES: P(o*) > P(o) on the rewrite prompt"),
    MetricSpec("generalization", proportion=True, headline=True, description="PS: ES on paraphrases"),
    MetricSpec("specificity", proportion=True, headline=True, description="NS: P(o) > P(o*) on neighbourhood prompts"),
    MetricSpec("subject_specificity", proportion=True, headline=True,
               description="NS rule on other-relation facts about the edited subject: P(Y's true object) > P(o*)"),
    MetricSpec("cfplus_specificity", proportion=True, headline=True,
               description="CounterFact+ NS: P(o) > P(o*) on neighbourhood prompts after the edit statement"),
    MetricSpec("subject_leak", proportion=True, higher_is_better=False, headline=True,
               description="share of same-subject probes whose greedy next token becomes o*'s first token"),
    MetricSpec("neutral_kl", higher_is_better=False, scale="nats", headline=True,
               description="mean next-token KL(unedited || edited) over fixed wikitext-2 windows"),
    MetricSpec("fluency", scale="bits", headline=True,
               description="n-gram entropy of short greedy generations (generation prompts, else subject probes)"),
    MetricSpec("attribute", headline=True, description="the benchmark's attribute (direction per benchmark)"),
    MetricSpec("utility", headline=True, description="mean accuracy of the utility suite"),
    MetricSpec("efficacy_magnitude", description="EM: p(o*) - p(o) on the rewrite prompt"),
    MetricSpec("generalization_magnitude", description="PM: p(o*) - p(o) on paraphrases"),
    MetricSpec("specificity_magnitude", description="NM: p(o) - p(o*) on neighbourhood prompts"),
    MetricSpec("ee_rewrite_acc", proportion=True, description="EasyEdit teacher-forced token accuracy of target_new"),
    MetricSpec("ee_rephrase_acc", proportion=True, description="EasyEdit token accuracy on the paraphrase"),
    MetricSpec("ee_locality", proportion=True, description="EasyEdit share of unchanged argmax tokens on neighbourhood"),
    MetricSpec("ft_acc", proportion=True, description="greedy first token equals target_new's (rewrite prompt)"),
    MetricSpec("ft_gen", proportion=True, description="greedy first token equals target_new's (paraphrases)"),
    MetricSpec("ft_spec", proportion=True, description="greedy first token unchanged (neighbourhood)"),
    MetricSpec("doubt_1", proportion=True, description="doubt probe 1"),
    MetricSpec("doubt_2", proportion=True, description="doubt probe 2"),
    MetricSpec("subject_specificity_magnitude", description="p(Y's true object) - p(o*) on other-relation facts"),
    MetricSpec("cfplus_specificity_magnitude", description="CounterFact+ NM: p(o) - p(o*)"),
    MetricSpec("subject_kl", higher_is_better=False, scale="nats",
               description="mean next-token KL(unedited || edited) after fixed same-subject probes"),
    MetricSpec("subject_leak_any", proportion=True, higher_is_better=False,
               description="share of same-subject probes whose greedy next token is o*'s first token"),
    MetricSpec("cfplus_kl", higher_is_better=False, scale="nats",
               description="CounterFact+ NKL: next-token KL(unedited || edited) on the prepended prompts"),
    MetricSpec("fluency_long", scale="bits",
               description="n-gram entropy of max_new_tokens greedy generations (--generation)"),
]
for _i, _s in enumerate(_BUILTIN):
    register_metric(MetricSpec(_s.name, _s.higher_is_better, _s.scale, _s.headline, _s.description, order=_i,
                               proportion=_s.proportion))
