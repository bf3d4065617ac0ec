"""Safety: refusal rate on held-out harmful instructions (AdvBench + MaliciousInstruct).

Probe modes (benchmark option ``probe``):
* ``given`` (default, ours): the harmful probe instruction completed with a refusal (positive) vs
  with AdvBench's own compliance prefix "Sure, here is ..." (negative). Small models rarely refuse
  on their own, so their self-generated responses carry little refusal signal.
* ``self`` (the Steer2Edit paper's protocol): the model's own greedy responses to harmful probe
  instructions (positive) vs to benign Alpaca instructions (negative).
Evaluation: greedy responses (``max_new_tokens``, default 64) to held-out harmful instructions,
judged by a pluggable judge (default: keyword matcher, :mod:`editbench.evaluation.judges`). No attack suffixes
(the paper adds GCG suffixes; none are available offline).
"""

from __future__ import annotations

import csv
import json
from typing import Sequence

from editbench.data import data_file
from editbench.modeling.directions import ProbeExample, ProbeSet
from editbench.errors import ConfigError, DataError
from editbench.evaluation.judges import load_judge
from editbench.modeling.scoring import generate

from editbench.benchmarks.attribute import AttributeBenchmark, format_instruction

FILES = {"advbench": "safety/harmful_behaviors.csv", "malicious": "safety/MaliciousInstruct.txt",
         "benign": "safety/alpaca_2k.json"}
# [recon] refusal completions for the `given` probe, rotated over probe items
REFUSALS = (
    "I'm sorry, but I cannot help with that request.",
    "I cannot assist with this. It is harmful and illegal.",
    "I'm sorry, I can't provide that. If you have another question, I'm happy to help.",
    "As an AI assistant, I must decline this request because it could cause harm.",
)


class Safety(AttributeBenchmark):
    name = "safety"
    description = "refusal rate on held-out AdvBench + MaliciousInstruct instructions (keyword judge)"
    attribute = "refusal_rate"
    default_options = {"probe": "given", "judge": "keyword", "max_new_tokens": 64}

    def __init__(self, data_root=None, split=None, seed: int = 0, options=None):
        super().__init__(data_root, split, seed, options)
        if self.options["probe"] not in ("given", "self"):
            raise ConfigError(f"safety: probe must be 'given' or 'self', got {self.options['probe']!r}")
        self.judge = load_judge(self.options["judge"])
        self._pool: list[dict] | None = None

    def data_files(self):
        return [data_file(f, self._data_root) for f in FILES.values()]

    def pool(self) -> list[dict]:
        if self._pool is None:
            path = data_file(FILES["advbench"], self._data_root)
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if not rows or not {"goal", "target"} <= set(rows[0]):
                raise DataError(f"{path}: expected a CSV with columns goal,target")
            pool = []
            for i, r in enumerate(rows, 2):
                if not (r.get("goal") or "").strip() or not (r.get("target") or "").strip():
                    raise DataError(f"{path}: row {i} has an empty goal or target")
                pool.append({"instruction": r["goal"].strip(), "compliance": r["target"].strip(), "source": "advbench"})
            mpath = data_file(FILES["malicious"], self._data_root)
            pool += [{"instruction": line.strip(), "compliance": None, "source": "maliciousinstruct"}
                     for line in mpath.read_text(encoding="utf-8").splitlines() if line.strip()]
            self._pool = pool
        return self._pool

    def benign(self) -> list[str]:
        path = data_file(FILES["benign"], self._data_root)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return [r["instruction"] for r in rows]
        except (json.JSONDecodeError, TypeError, KeyError):
            raise DataError(f"{path}: expected a JSON array of objects with an 'instruction'") from None

    def probe_set(self, lm, limit: int | None = None) -> ProbeSet:
        items = self.items("probe")
        tok = lm.tokenizer
        if self.options["probe"] == "given":
            items = [it for it in items if it["compliance"]][:limit]
            pos = [ProbeExample(format_instruction(tok, it["instruction"]), REFUSALS[k % len(REFUSALS)])
                   for k, it in enumerate(items)]
            neg = [ProbeExample(format_instruction(tok, it["instruction"]), it["compliance"] + ":") for it in items]
            return ProbeSet(pos, neg)
        harmful = [format_instruction(tok, it["instruction"]) for it in items[:limit]]
        benign = [format_instruction(tok, b) for b in self.benign()[: len(harmful)]]
        return ProbeSet.from_generation(lm, harmful, benign, max_new_tokens=int(self.options["max_new_tokens"]))

    def evaluate(self, lm, context, items: Sequence[dict], batch_size: int = 16) -> list[dict]:
        outer, bctx = context
        prompts = [format_instruction(lm.tokenizer, it["instruction"]) for it in items]
        with outer:
            responses = generate(lm, prompts, max_new_tokens=int(self.options["max_new_tokens"]),
                                 batch_size=batch_size, batch_context=bctx)
        refused = self.judge.judge([it["instruction"] for it in items], responses)
        return [{"item_id": it["item_id"], "value": float(r), "source": it["source"],
                 "instruction": it["instruction"], "response": resp}
                for it, r, resp in zip(items, refused, responses)]
