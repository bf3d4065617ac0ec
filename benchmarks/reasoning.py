"""Reasoning length on GSM8K: generated tokens (lower is wanted) and final-answer accuracy.

Evaluation items are GSM8K test problems split into val/test (the probe never uses them). Generation
is greedy with a token budget (``max_new_tokens``); the length counts generated tokens up to EOS, a
response that hits the budget without EOS counts the budget and is marked ``censored``. Accuracy:
the last number in the response equals the gold answer.

Budget [ours]: the default of 512 tokens is one SmolLM2-135M finishes within when it finishes at all
(16 GSM8K train problems: 11 ended by 397 tokens, 5 repeat a line until any budget; censored at 128:
14, at 256: 7, at 512: 5); the paper's models get 8192. At 128 the length mostly measured the budget,
not the model. The data bundle holds no easier reasoning set than GSM8K, so none is offered.

Probe protocols (benchmark option ``probe``), on ``probe_pool`` seeded GSM8K train problems:
* ``self`` (default, the Steer2Edit paper's official code): the model's own greedy responses (same
  prompt and budget as evaluation) to the first ``probe_limit`` of them; the shortest ``tail``
  (default 5%) of the non-empty responses by generated tokens (positive) vs the longest ``tail``
  (negative), at least two per side (ours, for small pools; the official code keeps at least one).
  Censored responses rank as the longest. Deviation: the official code uses every probe problem.
* ``gold`` [ours, the earlier default]: the dataset's own solutions, cleaned of calculator
  annotations and ending in "The answer is N.", shortest vs longest; ``probe_limit`` solutions per side.

Data (benchmark option ``dataset``): the data root's ``gsm8k/{train,test}.jsonl`` by default, read
through :mod:`editbench.datasets_io`; or a hub dataset with GSM8K's columns ``question``, ``answer``
and splits ``train`` and ``test``, e.g. ``dataset: "hub:openai/gsm8k"`` (config ``main`` unless
``?name=`` says otherwise; both splits are read, so no ``?split=``).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from editbench.data import data_file
from editbench.modeling.directions import ProbeSet, probe_examples
from editbench.errors import ConfigError, DataError
from editbench.modeling.scoring import generate

from editbench.benchmarks.attribute import AttributeBenchmark, format_instruction, read_jsonl

FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def clean_solution(answer: str) -> tuple[str, str]:
    """(worked solution without ``<<...>>`` annotations ending "The answer is N.", N)."""
    if "####" not in answer:
        raise ValueError("no '####' final answer")
    body, final = answer.rsplit("####", 1)
    final = final.strip().replace(",", "")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final}.", final


def last_number(text: str) -> str | None:
    found = _NUM.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def numbers_equal(a: str | None, b: str) -> bool:
    try:
        return a is not None and abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def length_tails(lengths: Sequence[int], fraction: float, minimum: int = 2) -> tuple[list[int], list[int]]:
    """Indices of the shortest and longest ``fraction`` of the non-empty (length > 0) responses:
    ``max(minimum, floor(fraction * n))`` per side but at most half of them; ties broken by index."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (lengths[i], i))
    k = min(max(minimum, int(fraction * len(order))), len(order) // 2)
    return order[:k], order[len(order) - k:]


def problem_prompt(tokenizer, question: str) -> str:
    return format_instruction(tokenizer, f"{question.strip()}\nSolve step by step and end with 'The answer is N.'")


class ReasoningLength(AttributeBenchmark):
    name = "reasoning_length"
    description = "GSM8K: generated tokens (shorter wanted) and final-number accuracy"
    attribute = "length"
    higher_is_better = False
    scale = 1.0
    rate = False
    fractions = {"val": 0.3, "test": 0.7}
    extra_metrics = ("accuracy", "censored")
    files = FILES
    hub_parts = ("split", ("train", "test"), {"name": "main"})  # train: the probe pool; test: evaluation
    default_options = {"probe": "self", "max_new_tokens": 512, "probe_pool": 400, "tail": 0.05, "dataset": None}
    option_choices = {"probe": ("self", "gold")}

    def __init__(self, data_root=None, split=None, seed: int = 0, options=None):
        super().__init__(data_root, split, seed, options)
        if not 0 < self.options["tail"] <= 0.5:
            raise ConfigError(f"reasoning_length: tail must be in (0, 0.5], got {self.options['tail']!r}")
        self._pool: dict[str, list[dict]] = {}

    def _read(self, which: str) -> list[dict]:
        if which not in self._pool:
            if self.hub is not None:
                records = self.hub_rows(which)
                path = records.origin
            else:
                path = data_file(FILES[which], self._data_root)
                records = read_jsonl(path)
            rows = []
            for i, r in enumerate(records, 1):
                try:
                    sol, final = clean_solution(r["answer"])
                    rows.append({"question": r["question"], "solution": sol, "answer": final})
                except (KeyError, TypeError, ValueError) as e:
                    raise DataError(f"{path}: record {i} needs 'question' and an 'answer' ending in '#### N' ({e})") from None
            self._pool[which] = rows
        return self._pool[which]

    def pool(self) -> list[dict]:
        return self._read("test")

    def items(self, split: str, limit: int | None = None) -> list[dict]:
        if split == "probe":
            train = self._read("train")
            idx = np.random.default_rng(self.seed).permutation(len(train))[: int(self.options["probe_pool"])]
            return [dict(train[i], item_id=f"train-{i}") for i in sorted(idx.tolist())][:limit]
        return super().items(split, limit)

    def probe_set(self, lm, limit: int | None = None) -> ProbeSet:
        tok = lm.tokenizer
        gold = self.options["probe"] == "gold"
        items = self.items("probe", None if gold else limit)
        prompts = [problem_prompt(tok, it["question"]) for it in items]
        if gold:
            order = sorted(range(len(items)), key=lambda i: (
                len(tok(items[i]["solution"], add_special_tokens=False)["input_ids"]), items[i]["item_id"]))
            k = min(limit or len(items) // 4, len(items) // 2)
            responses, (short, long) = [it["solution"] for it in items], (order[:k], order[len(order) - k:])
            stats: dict = {"protocol": "gold"}
        else:
            responses, lengths, censored = self._responses(lm, prompts)
            short, long = length_tails(lengths, float(self.options["tail"]))
            stats = {"protocol": "self", "n": len(items), "censored": sum(censored), "per_side": len(short),
                     "short_lengths": [lengths[i] for i in short], "long_lengths": [lengths[i] for i in long]}
        return ProbeSet(probe_examples(tok, [(prompts[i], responses[i]) for i in short]),
                        probe_examples(tok, [(prompts[i], responses[i]) for i in long]), stats=stats)

    def _responses(self, lm, prompts: list[str], batch_size: int = 16,
                   batch_context=None) -> tuple[list[str], list[int], list[bool]]:
        """Greedy responses, their generated-token counts (EOS excluded) and whether each hit the
        budget without EOS (censored)."""
        budget = int(self.options["max_new_tokens"])
        lengths: list[int] = []
        texts = generate(lm, prompts, max_new_tokens=budget, batch_size=batch_size, batch_context=batch_context,
                         lengths_out=lengths)
        return texts, lengths, [n >= budget for n in lengths]

    def evaluate(self, lm, context, items: Sequence[dict], batch_size: int = 16) -> list[dict]:
        outer, bctx = context
        with outer:
            texts, lengths, censored = self._responses(
                lm, [problem_prompt(lm.tokenizer, it["question"]) for it in items], batch_size, bctx)
        return [{"item_id": it["item_id"], "value": float(n), "censored": c,
                 "accuracy": float(numbers_equal(last_number(t), it["answer"])), "response": t}
                for it, t, n, c in zip(items, texts, lengths, censored)]
