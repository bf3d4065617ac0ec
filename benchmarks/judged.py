"""Attributes of free-form responses scored by an offline judge: sentiment (VADER) and response
language (lingua) [ours: the benchmark design; the judges are the packages'].

Items: Alpaca instructions (``safety/alpaca_2k.json``, its rows 0-999: the utility suite's fluency
and neutral-KL texts come from rows 1000 on, so no text is shared), put into the benchmark's
``template`` and then into the model's prompt frame (:func:`format_instruction`: the chat template,
else the Alpaca frame whose response section opens with ``response_header``). Seeded split probe
40% / val 20% / test 40% (400 / 200 / 400 instructions).

Evaluation: one greedy response per item (``max_new_tokens``), cut where a base model starts a new
section of its frame (``"\\n###"``), scored by the judge. The item's ``value`` is 1 when the score is
on the wanted side of ``threshold`` (``direction``: the side the edit should move responses to),
else 0, so the attribute is a rate; the mean score is reported beside it (``extra_means``).

Probe (``probe: self``, the safety protocol's shape): one response per probe instruction *sampled*
at ``temperature`` (seeded) from the unedited model, ranked by the judge in the wanted direction;
the top ``tail`` share (positives) against the bottom ``tail`` share (negatives), at least two per
side, ties broken by item order. ``ProbeSet.stats`` records the counts and the two sides' mean
scores. The probe never sees a val or test instruction.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

from editbench.data import data_file
from editbench.datasets_io import load_local
from editbench.errors import ConfigError, DataError
from editbench.evaluation.judges import TextScorer, load_scorer
from editbench.modeling.directions import ProbeSet, probe_examples
from editbench.modeling.scoring import generate

from editbench.benchmarks.attribute import AttributeBenchmark, format_instruction

ALPACA = "safety/alpaca_2k.json"
#: Alpaca rows the pool may use; rows from here on belong to the utility suite (fluency, neutral KL)
POOL_ROWS = 1000


def cut_response(text: str) -> str:
    """The response as judged: a base model in the Alpaca frame goes on with a new ``### ...``
    section after answering; that continuation is not its response."""
    return text.split("\n###", 1)[0].strip()


def tails(scores: Sequence[float], fraction: float, minimum: int = 2) -> tuple[list[int], list[int]]:
    """Indices of the highest and lowest ``fraction`` of ``scores`` (``max(minimum, floor(fraction
    * n))`` per side, at most half of them), ties broken by index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    k = min(max(minimum, int(fraction * len(order))), len(order) // 2)
    return order[:k], sorted(order[len(order) - k:], key=lambda i: (scores[i], i))


class JudgedGeneration(AttributeBenchmark):
    """Base class: a judge (:data:`editbench.evaluation.judges.SCORERS`), the wanted direction on
    its scale and a threshold; subclasses set the defaults and judge options."""

    files = {"alpaca": ALPACA}
    #: direction option value -> +1 (higher scores wanted) or -1 (lower scores wanted)
    directions: ClassVar[Mapping[str, int]] = {}
    #: default threshold per direction (used when the option is null)
    default_thresholds: ClassVar[Mapping[str, float]] = {}
    #: the judges this benchmark accepts
    judges: ClassVar[tuple[str, ...]] = ()
    #: name of the per-item judge score in records and aggregates
    score_name: ClassVar[str] = "score"
    common_options: ClassVar[Mapping[str, Any]] = {
        "probe": "self", "threshold": None, "max_new_tokens": 32, "temperature": 1.0, "tail": 0.25,
        "response_header": "### Response:", "template": "{instruction}"}
    #: the direction always comes from the model's own judged responses (no fixed completions)
    option_choices: ClassVar[Mapping[str, tuple[str, ...]]] = {"probe": ("self",)}

    def __init__(self, data_root=None, split=None, seed: int = 0, options=None):
        super().__init__(data_root, split, seed, options)
        o = self.options
        if o["judge"] not in self.judges:
            raise ConfigError(f"{self.name}: unknown judge {o['judge']!r} (available: {', '.join(self.judges)})")
        if o["direction"] not in self.directions:
            raise ConfigError(f"{self.name}: direction must be one of {', '.join(self.directions)}, got {o['direction']!r}")
        for key, ok, need in (("max_new_tokens", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                              ("temperature", lambda v: _number(v) and v > 0, "a number > 0"),
                              ("tail", lambda v: _number(v) and 0 < v <= 0.5, "a number in (0, 0.5]")):
            if isinstance(o[key], bool) or not ok(o[key]):
                raise ConfigError(f"{self.name}: {key} must be {need}, got {o[key]!r}")
        for key in ("response_header", "template"):
            if not isinstance(o[key], str):
                raise ConfigError(f"{self.name}: {key} must be a string, got {o[key]!r}")
        if "{instruction}" not in o["template"]:
            raise ConfigError(f"{self.name}: template must contain '{{instruction}}', got {o['template']!r}")
        self.scorer: TextScorer = load_scorer(o["judge"], **self.judge_options())
        t = self.default_thresholds[o["direction"]] if o["threshold"] is None else o["threshold"]
        if isinstance(t, bool) or not _number(t) or not self.scorer.low <= t <= self.scorer.high:
            raise ConfigError(f"{self.name}: threshold must be a number in [{self.scorer.low:g}, {self.scorer.high:g}] "
                              f"(the {o['judge']} scale), got {t!r}")
        self.threshold = o["threshold"] = float(t)  # resolved: a sweep's config.json states the rule in use
        self.sign = self.directions[o["direction"]]
        self._pool: list[dict] | None = None

    def judge_options(self) -> dict:
        """Keyword arguments of the judge (e.g. the target language)."""
        return {}

    # -- data ----------------------------------------------------------------------------------
    def pool(self) -> list[dict]:
        if self._pool is None:
            path = data_file(ALPACA, self._data_root)
            rows = load_local(path)
            pool = []
            for i, r in enumerate(rows[:POOL_ROWS]):
                text = r.get("instruction") if isinstance(r, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{path}: record {i} needs a non-empty 'instruction'")
                pool.append({"instruction": text.strip()})
            self._pool = pool
        return self._pool

    def prompt(self, tokenizer, item: Mapping[str, Any]) -> str:
        text = self.options["template"].replace("{instruction}", item["instruction"])
        return format_instruction(tokenizer, text, self.options["response_header"])

    # -- judging -------------------------------------------------------------------------------
    def wanted(self, score: float) -> bool:
        """Whether a response's score lies on the wanted side of the threshold (inclusive)."""
        return score >= self.threshold if self.sign > 0 else score <= self.threshold

    def describe_rule(self) -> str:
        side = ">=" if self.sign > 0 else "<="
        return f"{self.options['judge']} {self.score_name} {side} {self.threshold:g}"

    def _responses(self, lm, prompts: list[str], batch_size: int = 16, batch_context=None, **sampling) -> list[str]:
        texts = generate(lm, prompts, max_new_tokens=int(self.options["max_new_tokens"]), batch_size=batch_size,
                         batch_context=batch_context, **sampling)
        return [cut_response(t) for t in texts]

    def probe_set(self, lm, limit: int | None = None) -> ProbeSet:
        items = self.items("probe", limit)
        prompts = [self.prompt(lm.tokenizer, it) for it in items]
        texts = self._responses(lm, prompts, do_sample=True, seed=self.seed,
                                temperature=float(self.options["temperature"]), top_k=0, top_p=1.0)
        scores = self.scorer.score(texts)
        keep = [i for i, t in enumerate(texts) if t]  # an empty response has no position to average over
        hi, lo = tails([self.sign * scores[i] for i in keep], float(self.options["tail"]))
        pos, neg = [keep[i] for i in hi], [keep[i] for i in lo]
        stats = {"protocol": "self", "n": len(items), "empty": len(items) - len(keep), "per_side": len(pos),
                 "rule": self.describe_rule(),
                 "wanted_share": sum(self.wanted(s) for s in scores) / max(len(scores), 1),
                 f"positive_mean_{self.score_name}": _mean([scores[i] for i in pos]),
                 f"negative_mean_{self.score_name}": _mean([scores[i] for i in neg])}
        if not pos or not neg:
            raise DataError(f"{self.name}: the own-response probe has too few non-empty responses ({stats}); "
                            "raise probe_limit")
        return ProbeSet(probe_examples(lm.tokenizer, [(prompts[i], texts[i]) for i in pos]),
                        probe_examples(lm.tokenizer, [(prompts[i], texts[i]) for i in neg]), stats=stats)

    def evaluate(self, lm, context, items: Sequence[dict], batch_size: int = 16) -> list[dict]:
        outer, bctx = context
        with outer:
            texts = self._responses(lm, [self.prompt(lm.tokenizer, it) for it in items], batch_size, bctx)
        scores = self.scorer.score(texts)
        return [{"item_id": it["item_id"], "value": float(self.wanted(s)), self.score_name: s,
                 "instruction": it["instruction"], "response": t} for it, t, s in zip(items, texts, scores)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class Sentiment(JudgedGeneration):
    """Sentiment of the model's responses to Alpaca instructions, judged by VADER.

    Attribute ``sentiment_rate``: the share of responses whose VADER compound score is at least
    ``threshold`` (``direction: positive``, default threshold 0.05, VADER's own positive cut-off) or
    at most it (``direction: negative``, default -0.05). ``compound``: the mean compound score."""

    name = "sentiment"
    description = "sentiment of responses to Alpaca instructions (VADER compound; rate on the wanted side)"
    attribute = "sentiment_rate"
    extra_means = ("compound",)
    score_name = "compound"
    judges = ("vader",)
    directions = {"positive": 1, "negative": -1}
    default_thresholds = {"positive": 0.05, "negative": -0.05}
    default_options = {**JudgedGeneration.common_options, "judge": "vader", "direction": "positive"}


class Language(JudgedGeneration):
    """The language of the model's responses when asked to answer in ``language``, judged by
    lingua among :data:`editbench.evaluation.judges.LINGUA_CANDIDATES`.

    Attribute ``language_rate``: the share of responses whose lingua confidence for ``language`` is
    at least ``threshold`` (default 0.5: more likely than all five other candidates together).
    ``confidence``: the mean confidence. The default request (``template``) asks in French for an
    answer in French, the instruction itself staying English; a base model's Alpaca frame opens its
    response section with a French header (``response_header``), since on Gemma-3-270M the English
    header alone gave 2 French answers of 48 (4%), the French one 8 of 48 (17%)."""

    name = "language"
    description = "share of responses written in the requested language (lingua), Alpaca instructions"
    attribute = "language_rate"
    extra_means = ("confidence",)
    score_name = "confidence"
    judges = ("lingua",)
    directions = {"target": 1}
    default_thresholds = {"target": 0.5}
    default_options = {**JudgedGeneration.common_options, "judge": "lingua", "direction": "target", "language": "fr",
                       "template": "Réponds en français : {instruction}", "response_header": "### Réponse:"}

    def judge_options(self) -> dict:
        if not isinstance(self.options["language"], str):
            raise ConfigError(f"language: language must be an ISO 639-1 code such as 'fr', got {self.options['language']!r}")
        return {"target": self.options["language"]}
