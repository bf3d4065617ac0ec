"""Utility suite: what an edit costs in general capability.

Tasks (data under ``utility/`` of the data bundle), each split 50/50 into seeded val/test halves:
* multiple choice by log-likelihood (``acc``: highest summed log-probability; ``acc_norm``:
  highest log-probability per character of the choice, as lm-evaluation-harness): ``csqa``
  (CommonsenseQA dev), ``arc_easy``, ``arc_challenge``, ``piqa``;
* ``wikitext``: perplexity over non-overlapping ``window``-token windows of wikitext-2 test
  (``"\\n\\n".join(rows)``), windows alternating between val and test, each after the
  tokenizer's special prefix (BOS where it adds one), scored on its tokens after the first;
* ``fluency``: n-gram entropy of greedy responses to held-out Alpaca instructions;
* ``neutral_kl`` [ours]: mean next-token ``KL(unedited || edited)`` over neutral text, per text
  (mean over its positions), then over texts: the fixed wikitext-2 windows of the CounterFact
  health probe (:func:`editbench.evaluation.scope.neutral_windows`, the same on both splits) and
  ``neutral`` held-out Alpaca instructions per split with the response the *unedited* model gives
  (greedy, ``max_new_tokens``; KL over the response positions only). Texts and the unedited
  distributions are computed once per suite (one sweep), before any intervention is entered.
  Accuracy on four-way multiple choice cannot see a model that still ranks choices but babbles;
  this can (a sweep's validity check, :mod:`editbench.evaluation.validity`).
The ``utility`` score is the mean of the chosen MC tasks' accuracies (``metric``: acc or acc_norm),
with a bootstrap CI that resamples items within each task; ``utility_chance`` is its value for a
model that guesses (mean over items of 1/number of choices, per task, then over tasks).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np
import torch

from editbench.evaluation import metrics as M
from editbench.data import data_file, sha256_file
from editbench.datasets_io import jsonl_line, load_local
from editbench.errors import ConfigError, DataError
from editbench.evaluation.scope import NEUTRAL_TEXT, neutral_windows
from editbench.modeling.scoring import encode_prompt, generate, score_choices, special_prefix, window_logprobs

MC_TASKS = {
    "csqa": "utility/csqa_dev_rand_split.jsonl",
    "arc_easy": "utility/arc_easy_test.jsonl",
    "arc_challenge": "utility/arc_challenge_test.jsonl",
    "piqa": "utility/piqa_validation.jsonl",
}
WIKITEXT = "utility/wikitext-2-raw/wikitext2_raw_test_rows.json"
ALPACA = "safety/alpaca_2k.json"
FLUENCY_OFFSET = 1000  # Alpaca rows from here on: never used by the safety probe (which takes the first ones)


@dataclass
class UtilityConfig:
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "arc_challenge", "csqa"])
    limit: int | None = 50  # items per MC task and split
    metric: str = "acc"
    wikitext_windows: int = 8  # per split; 0 switches perplexity off
    window: int = 256
    fluency: int = 0  # Alpaca prompts per split; 0 switches fluency off
    neutral: int = 8  # Alpaca responses per split in neutral_kl (0: the wikitext windows only)
    max_new_tokens: int = 48  # fluency's and the neutral responses' generation budget
    seed: int = 0

    def __post_init__(self):
        self._check_tasks()
        for key in ("limit", "wikitext_windows", "window", "fluency", "neutral", "max_new_tokens", "seed"):
            v = getattr(self, key)
            if (v is not None or key != "limit") and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"utility: '{key}' must be an integer, got {v!r}")
        if self.metric not in ("acc", "acc_norm"):
            raise ConfigError(f"utility metric must be 'acc' or 'acc_norm', got {self.metric!r}")
        if ((self.limit is not None and self.limit < 1) or self.wikitext_windows < 0 or self.fluency < 0
                or self.neutral < 0 or self.window < 8 or self.max_new_tokens < 1):
            raise ConfigError("utility: limit >= 1, wikitext_windows >= 0, fluency >= 0, neutral >= 0, window >= 8 "
                              "and max_new_tokens >= 1 are required")

    def _check_tasks(self) -> None:
        if not isinstance(self.tasks, list):
            raise ConfigError(f"utility: 'tasks' must be a list of task names, got {self.tasks!r}")
        bad = [t for t in self.tasks if t not in MC_TASKS]
        if bad:
            raise ConfigError(f"unknown utility task '{bad[0]}' (tasks: {', '.join(MC_TASKS)}; any lm-eval task "
                              "with backend: lm-eval)")

    def suite(self, data_root=None) -> "UtilitySuite":
        """The suite that evaluates this configuration (each backend's config names its own)."""
        return UtilitySuite(self, data_root)


BACKENDS = ("builtin", "lm-eval")


def utility_config(d: dict) -> UtilityConfig:
    """A sweep's ``utility:`` mapping as the config of its backend (``backend``: ``builtin``, the
    default, or ``lm-eval``). A built-in config holds no ``backend`` key, so the resolved config of
    a sweep written before backends existed is unchanged and it still resumes."""
    d = dict(d)
    backend = d.pop("backend", "builtin")
    if backend == "builtin":
        return UtilityConfig(**d)
    if backend == "lm-eval":
        from editbench.evaluation.lmeval import LmEvalConfig

        return LmEvalConfig(**d)
    raise ConfigError(f"utility backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def with_backend(cfg: UtilityConfig, backend: str | None = None, tasks: Sequence[str] | None = None) -> UtilityConfig:
    """``cfg`` under another backend and/or task list (``editbench sweep --utility-backend``), its
    other options kept. Switching backend without new tasks maps each built-in task to the local
    lm-eval task that reproduces it (``arc_easy`` <-> ``arc_easy_local``, ...)."""
    from editbench.evaluation.lmeval import BUILTIN_EQUIVALENT

    d = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.init}
    old, new = getattr(cfg, "backend", "builtin"), backend or getattr(cfg, "backend", "builtin")
    if new not in BACKENDS:
        raise ConfigError(f"utility backend must be one of {', '.join(BACKENDS)}, got {new!r}")
    if tasks is not None:
        d["tasks"] = list(tasks)
    elif new != old:
        mapping = BUILTIN_EQUIVALENT if new == "lm-eval" else {v: k for k, v in BUILTIN_EQUIVALENT.items()}
        missing = [t for t in d["tasks"] if t not in mapping]
        if missing:
            raise ConfigError(f"utility task '{missing[0]}' has no {new} equivalent; name the tasks with --utility-tasks")
        d["tasks"] = [mapping[t] for t in d["tasks"]]
    return utility_config({**d, "backend": new})


def _mc_rows(task: str, path) -> list[dict]:
    """The task's items from its JSON-lines file (read through ``datasets``); a bad record is one
    error line naming the file and its line."""
    out = []
    records = load_local(path)
    for k, r in enumerate(records):
        try:
            if task == "csqa":
                labels, texts = r["choices"]["label"], r["choices"]["text"]
                out.append({"prompt": f"Question: {r['question'].strip()}\nAnswer:", "choices": list(texts),
                            "gold": labels.index(r["answerKey"])})
            else:
                query = r["query"].rstrip("\n")
                out.append({"prompt": f"{query}\nAnswer:", "choices": list(r["choices"]), "gold": int(r["gold"])})
            assert 0 <= out[-1]["gold"] < len(out[-1]["choices"]) and all(c.strip() for c in out[-1]["choices"])
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError):
            raise DataError(f"{path}: line {jsonl_line(path, k)} is not a valid {task} record") from None
    return out


def _halves(n: int, seed: int) -> dict[str, list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return {"val": sorted(perm[: n // 2]), "test": sorted(perm[n // 2:])}


class UtilitySuite:
    #: the backend refuses some interventions (``check_context``): a sweep checks every configuration
    #: before it computes a point, rather than failing at that method's first point
    preflight: bool = False

    def __init__(self, config: UtilityConfig, data_root=None):
        self.cfg = config
        self.data_root = data_root
        self._cache: dict = {}

    def data_files(self) -> dict[str, str]:
        return self._files([MC_TASKS[t] for t in self.cfg.tasks])

    def _files(self, rels: list[str]) -> dict[str, str]:
        """{path: sha256} of the data files ``rels`` plus those of the perplexity, fluency and
        neutral-text parts."""
        rels = rels + ([WIKITEXT] if self.cfg.wikitext_windows else [])
        files = {str(data_file(r, self.data_root)): sha256_file(data_file(r, self.data_root)) for r in rels}
        if self.cfg.fluency or self.cfg.neutral:
            try:
                alpaca = data_file(ALPACA, self.data_root)
            except DataError as e:
                raise DataError(f"{e} (Alpaca instructions for utility.fluency / utility.neutral; set both to 0 "
                                "to do without)") from None
            files[str(alpaca)] = sha256_file(alpaca)
        try:
            neutral = data_file(NEUTRAL_TEXT, self.data_root)
        except DataError:  # a hand-made root without it: neutral_kl has the Alpaca part only
            return files
        return {**files, str(neutral): sha256_file(neutral)}

    def items(self, task: str, split: str) -> list[dict]:
        key = (task, split)
        if key not in self._cache:
            rows = _mc_rows(task, data_file(MC_TASKS[task], self.data_root))
            idx = _halves(len(rows), self.cfg.seed)[split][: self.cfg.limit]
            self._cache[key] = [dict(rows[i], item_id=i) for i in idx]
        return self._cache[key]

    def _windows(self, lm, split: str) -> list[list[int]]:
        key = ("wikitext", split, self.cfg.window)
        if key not in self._cache:
            path = data_file(WIKITEXT, self.data_root)
            records = load_local(path)  # an array of strings: one {"text": row} per row
            if not all(set(r) == {"text"} and isinstance(r["text"], str) for r in records):
                raise DataError(f"{path}: expected a JSON array of strings")
            text = "\n\n".join(r["text"] for r in records)
            ids = lm.tokenizer(text[: 400 * self.cfg.window * self.cfg.wikitext_windows], add_special_tokens=False)["input_ids"]
            W = self.cfg.window
            # each window starts with the tokenizer's special prefix, as every prompt does (Gemma
            # without its BOS is a different model: wikitext perplexity 140 instead of 31)
            prefix = special_prefix(lm.tokenizer)
            wins = [prefix + ids[i:i + W] for i in range(0, len(ids) - W + 1, W)]
            self._cache[key] = wins[(0 if split == "val" else 1)::2][: self.cfg.wikitext_windows]
        return self._cache[key]

    def check_context(self, context) -> None:
        """Raise ConfigError if this backend cannot evaluate under ``context`` (the built-in one can)."""

    def evaluate(self, lm, context, split: str, batch_size: int = 16) -> list[dict]:
        """Per-item records ``{"task", "item_id", metric fields}`` under ``context`` = (outer, batch_context)."""
        outer, bctx = context
        recs: list[dict] = []
        self._neutral_reference(lm, split, batch_size)  # the unedited model: before the intervention is entered
        with outer:
            recs += self._mc_records(lm, bctx, split, batch_size)
            if self.cfg.wikitext_windows:
                recs += self._perplexity(lm, bctx, split, batch_size)
            if self.cfg.fluency:
                recs += self._fluency(lm, bctx, split, batch_size)
            recs += self._neutral_kl(lm, bctx, split, batch_size)
        return recs

    def _mc_records(self, lm, bctx, split: str, batch_size: int) -> list[dict]:
        """One record per multiple-choice item: the summed log-likelihood of every choice (``lls``),
        the chosen index by ``acc`` (``choice``) and by ``acc_norm`` (``choice_norm``) and whether
        each is the gold one."""
        recs = []
        for task in self.cfg.tasks:
            items = self.items(task, split)
            scores = score_choices(lm, [it["prompt"] for it in items], [it["choices"] for it in items],
                                   batch_size=batch_size, batch_context=bctx)
            for it, sc in zip(items, scores):
                recs.append(mc_record(task, it["item_id"], [lp for lp, _ in sc], it["choices"], it["gold"]))
        return recs

    @torch.no_grad()
    def _perplexity(self, lm, bctx, split: str, batch_size: int) -> list[dict]:
        from editbench.modeling.scoring import Batch

        wins = self._windows(lm, split)
        skip = len(special_prefix(lm.tokenizer))  # score the window's own tokens after its first
        out = []
        for s in range(0, len(wins), batch_size):
            chunk = wins[s:s + batch_size]
            ids = torch.tensor(chunk, device=lm.device)
            mask = torch.ones_like(ids)
            batch = Batch(indices=list(range(len(chunk))), input_ids=ids, attention_mask=mask,
                          prompt_lengths=torch.full((len(chunk),), ids.shape[1], device=lm.device))
            with bctx(batch) if bctx else nullcontext():
                hidden = lm.adapter.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            logp = torch.log_softmax(lm.adapter.logits(hidden[:, skip:-1]).float(), -1)
            nll = -logp.gather(-1, ids[:, skip + 1:].unsqueeze(-1)).squeeze(-1).mean(1)
            out += [{"task": "wikitext", "item_id": f"w{split}{s + k}", "nll": float(v)} for k, v in enumerate(nll.tolist())]
        return out

    def _alpaca(self, lm, split: str, n: int) -> tuple[list[int], list[str]]:
        """(row ids, chat-formatted prompts) of the split's first ``n`` held-out Alpaca instructions."""
        from editbench.benchmarks.attribute import format_instruction

        path = data_file(ALPACA, self.data_root)
        rows = [r["instruction"] for r in load_local(path)[FLUENCY_OFFSET:]]
        idx = _halves(len(rows), self.cfg.seed)[split][:n]
        return idx, [format_instruction(lm.tokenizer, rows[i]) for i in idx]

    def _fluency(self, lm, bctx, split: str, batch_size: int) -> list[dict]:
        idx, prompts = self._alpaca(lm, split, self.cfg.fluency)
        texts = generate(lm, prompts, max_new_tokens=self.cfg.max_new_tokens, batch_size=batch_size, batch_context=bctx)
        return [{"task": "fluency", "item_id": i, "entropy": M.ngram_entropy(t), "response": t} for i, t in zip(idx, texts)]

    def _neutral_reference(self, lm, split: str, batch_size: int) -> None:
        """The split's neutral texts (token window, first KL position, item id) and the unedited
        model's log-probs on them, once per suite (every point of a sweep compares with these;
        the wikitext windows, the same on both splits, are computed once for both)."""
        def reference(texts: list[tuple[list[int], int, str]]) -> tuple[list, list]:
            ref = window_logprobs(lm, [w for w, _, _ in texts], batch_size, starts=[s for _, s, _ in texts])
            return texts, ref

        if ("neutral", "wikitext") not in self._cache:
            wins = neutral_windows(lm, self.data_root) or []
            self._cache[("neutral", "wikitext")] = reference([(w, 0, f"wikitext-{k}") for k, w in enumerate(wins)])
        if ("neutral", split) not in self._cache:
            texts = []
            if self.cfg.neutral:
                idx, prompts = self._alpaca(lm, split, self.cfg.neutral)
                replies: list[list[int]] = []
                generate(lm, prompts, max_new_tokens=self.cfg.max_new_tokens, batch_size=batch_size, ids_out=replies)
                for i, p, reply in zip(idx, prompts, replies):
                    prompt = encode_prompt(lm.tokenizer, p)
                    if reply:  # positions len(prompt)-1 .. predict the reply's tokens (its last one is not input)
                        texts.append((prompt + reply[:-1], len(prompt) - 1, f"alpaca-{i}"))
            self._cache[("neutral", split)] = reference(texts)

    def _neutral_kl(self, lm, bctx, split: str, batch_size: int) -> list[dict]:
        parts = [self._cache[("neutral", "wikitext")], self._cache[("neutral", split)]]
        texts = [t for ts, _ in parts for t in ts]
        if not texts:
            return []
        kl = window_logprobs(lm, [w for w, _, _ in texts], batch_size, bctx, reference=[r for _, rs in parts for r in rs],
                             starts=[s for _, s, _ in texts])
        return [{"task": "neutral", "item_id": name, "kl": float(k.clamp_min(0.0).mean()), "positions": int(k.numel())}
                for (_, _, name), k in zip(texts, kl)]  # clamp: >= 0 up to float noise; NaN stays NaN

    def summarize(self, recs: Sequence[dict]) -> dict:
        """``utility`` (mean task accuracy, x100, bootstrap CI within tasks) plus per-task aggregates."""
        out = self._mc_summary(recs)
        nll = [r["nll"] for r in recs if r["task"] == "wikitext"]
        if nll:
            agg = M.aggregate(nll, scale=1.0)
            out["wikitext_ppl"] = {"n": agg["n"], "mean": _exp(agg["mean"]), "ci95": [_exp(v) for v in agg["ci95"]],
                                   "std": None, "note": "exp(mean window NLL); CI from the NLL bootstrap",
                                   **({"non_finite": agg["non_finite"]} if "non_finite" in agg else {})}
        ent = [r["entropy"] for r in recs if r["task"] == "fluency"]
        if ent:
            out["fluency"] = M.aggregate(ent, scale=1.0)
        kl = [r["kl"] for r in recs if r["task"] == "neutral"]
        if kl:
            out["neutral_kl"] = {**M.aggregate(kl, scale=1.0),
                                 "note": "nats; mean over neutral texts of the mean next-token KL(unedited || edited)"}
        return out


    def _mc_summary(self, recs: Sequence[dict]) -> dict:
        out: dict = {}
        per_task = {t: np.array([r[self.cfg.metric] for r in recs if r["task"] == t]) for t in self.cfg.tasks}
        for t in self.cfg.tasks:
            for m in ("acc", "acc_norm"):
                out[f"{t}_{m}"] = M.aggregate([r[m] for r in recs if r["task"] == t], proportion=True)
        out["utility"] = mean_of_tasks(list(per_task.values()))
        choices = [np.array([1.0 / r["n_choices"] for r in recs if r["task"] == t and "n_choices" in r])
                   for t in self.cfg.tasks]
        if all(len(c) for c in choices):
            out["utility_chance"] = 100.0 * float(np.mean([c.mean() for c in choices]))
        return out


def mc_record(task: str, item_id, lls: Sequence[float], choices: Sequence[str], gold: int | None) -> dict:
    """The per-item record of a multiple-choice item, from each choice's summed log-likelihood
    (``acc_norm`` divides by the choice's characters, as lm-evaluation-harness does); the same
    shape for every utility backend, so sweeps and reports read them alike. Without a single
    ``gold`` index the caller supplies ``acc``/``acc_norm``."""
    norm = [lp / len(c) for lp, c in zip(lls, choices)]
    choice, choice_norm = int(np.argmax(lls)), int(np.argmax(norm))
    rec = {"task": task, "item_id": item_id, "n_choices": len(choices), "choice": choice, "choice_norm": choice_norm,
           "lls": [float(v) for v in lls]}
    if gold is not None:
        rec.update(gold=int(gold), acc=float(choice == gold), acc_norm=float(choice_norm == gold))
    return rec


def _exp(v: float | None) -> float | None:
    """exp that overflows to inf (a broken model's NLL), None for None."""
    return None if v is None else math.exp(v) if v < 709.0 else math.inf


def mean_of_tasks(tasks: Sequence[np.ndarray], scale: float = 100.0) -> dict:
    """Mean over tasks of each task's mean; bootstrap resamples items within every task."""
    tasks = [np.asarray(t, dtype=float) for t in tasks if len(t)]
    if not tasks:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    rng = np.random.default_rng(M.BOOTSTRAP_SEED)
    boots = np.mean([t[rng.integers(0, len(t), (M.BOOTSTRAP_RESAMPLES, len(t)))].mean(1) for t in tasks], axis=0)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    mean = float(np.mean([t.mean() for t in tasks]))
    return {"mean": mean * scale, "std": float(boots.std() * scale), "n": int(sum(len(t) for t in tasks)),
            "ci95": [float(lo) * scale, float(hi) * scale], "note": "std is the bootstrap standard error"}

