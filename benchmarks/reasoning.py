"""Reasoning length on GSM8K: generated tokens (lower is wanted) and final-answer accuracy.

Evaluation items are GSM8K test problems split into val/test (the probe never uses them). Probe
(the Steer2Edit paper's): among ``probe_pool`` seeded train problems, the shortest solutions
(positive) vs the longest (negative), solutions cleaned of calculator annotations and ending in
"The answer is N.". Generation is greedy with a token budget (``max_new_tokens``, default 256);
the length counts generated tokens up to EOS (a response that hits the budget counts the budget).
Accuracy: the last number in the response equals the gold answer.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from editbench.data import data_file
from editbench.modeling.directions import ProbeExample, ProbeSet
from editbench.errors import DataError
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


def problem_prompt(tokenizer, question: str) -> str:
    return format_instruction(tokenizer, f"{question.strip()}\nSolve step by step and end with 'The answer is N.'")


class ReasoningLength(AttributeBenchmark):
    name = "reasoning_length"
    description = "GSM8K: generated tokens (shorter wanted) and final-number accuracy"
    attribute = "length"
    higher_is_better = False
    scale = 1.0
    fractions = {"val": 0.3, "test": 0.7}
    extra_metrics = ("accuracy", "hit_budget")
    default_options = {"max_new_tokens": 256, "probe_pool": 400}

    def __init__(self, data_root=None, split=None, seed: int = 0, options=None):
        super().__init__(data_root, split, seed, options)
        self._pool: dict[str, list[dict]] = {}

    def data_files(self):
        return [data_file(f, self._data_root) for f in FILES.values()]

    def _read(self, which: str) -> list[dict]:
        if which not in self._pool:
            path = data_file(FILES[which], self._data_root)
            rows = []
            for i, r in enumerate(read_jsonl(path), 1):
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
        items = self.items("probe")
        tok = lm.tokenizer
        items.sort(key=lambda it: (len(tok(it["solution"], add_special_tokens=False)["input_ids"]), it["item_id"]))
        k = min(limit or len(items) // 4, len(items) // 2)
        ex = lambda it: ProbeExample(problem_prompt(tok, it["question"]), it["solution"])  # noqa: E731
        return ProbeSet([ex(it) for it in items[:k]], [ex(it) for it in items[-k:]])

    def evaluate(self, lm, context, items: Sequence[dict], batch_size: int = 16) -> list[dict]:
        outer, bctx = context
        budget = int(self.options["max_new_tokens"])
        prompts = [problem_prompt(lm.tokenizer, it["question"]) for it in items]
        lengths: list[int] = []
        with outer:
            texts = generate(lm, prompts, max_new_tokens=budget, batch_size=batch_size, batch_context=bctx,
                             lengths_out=lengths)
        return [{"item_id": it["item_id"], "value": float(n), "hit_budget": float(n >= budget),
                 "accuracy": float(numbers_equal(last_number(t), it["answer"])), "response": t}
                for it, t, n in zip(items, texts, lengths)]
