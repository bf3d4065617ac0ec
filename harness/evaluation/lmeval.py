"""lm-evaluation-harness as a utility backend: any lm-eval task, scored on the edited model.

``utility: {backend: lm-eval, tasks: [arc_easy_local, ...], limit: N}`` in a sweep replaces the
built-in multiple-choice tasks with lm-eval tasks, run through lm-eval's ``HFLM`` wrapped around
the model the sweep already loaded (no second copy, no reload). The rest of the utility suite
(wikitext perplexity, fluency, ``neutral_kl``) stays built-in, because a sweep's validity bounds
are defined on it (:mod:`editbench.evaluation.validity`).

Offline tasks: ``benchmarks/lmeval_tasks/*.yaml`` define ``arc_easy_local``, ``arc_challenge_local``,
``csqa_local`` and ``piqa_local`` (tag ``editbench_local``) on the shared data bundle, with the
built-in suite's prompts (``"Question: ...\\nAnswer:"``, each choice scored as ``" " + choice``),
so both backends score the same items the same way. Their ``data_files`` are relative to the data
root; resolved copies are written to a temporary include directory when a suite is built. Any
other task lm-eval knows is accepted too (it loads its data the way lm-eval does, e.g. from the hub).

What is exact under an edit (the intervention's ``uniform`` context is entered around the lm-eval
call, so every forward pass lm-eval makes sees it):

* weight edits: the edited weights are in place for the whole call;
* activation interventions applied at every position (no per-batch context): hooks on the modules
  lm-eval's forward passes run through.

Interventions that need each batch's prompt positions (``positions="last"``/``"prompt"``, the scope
gates of ``mega``/``steering-gated``/``grace``) are refused with one line: lm-eval concatenates
context and continuation, truncates, re-sorts and re-batches requests inside ``HFLM``, so a hook
cannot know where a row's prompt ends, and a guess would silently score a different edit. A sweep
asks ``check_context`` for every configuration before it computes a point (``preflight``).

Items: per split, the built-in suite's seeded 50/50 halves over the task's evaluation documents,
the first ``limit`` of each (lm-eval ``samples``), so a local task scores exactly the items
(``item_id`` = row) of its built-in counterpart. lm-eval left-truncates inputs longer than the
model's maximum length, the built-in suite does not; embedded models never reach it on these tasks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import yaml

from editbench.data import data_file, resolve_data_root, sha256_file
from editbench.errors import ConfigError, DataError, EditbenchError
from editbench.evaluation import metrics as M
from editbench.evaluation.utility import UtilityConfig, UtilitySuite, _halves, mc_record, mean_of_tasks

LOCAL_TAG = "editbench_local"
DEFAULT_TASKS = ("arc_easy_local", "arc_challenge_local", "csqa_local")
#: the built-in task each local lm-eval task reproduces (``--utility-backend lm-eval`` maps them)
BUILTIN_EQUIVALENT = {"arc_easy": "arc_easy_local", "arc_challenge": "arc_challenge_local", "csqa": "csqa_local",
                      "piqa": "piqa_local"}
#: per-item proportions a task's utility score may come from, after the configured ``metric``
HEADLINE_FALLBACKS = ("acc", "exact_match")
REFUSAL = ("the lm-eval utility backend cannot apply an intervention that needs each batch's prompt positions "
           "(position-restricted or scope-gated activation edits): lm-eval's HFLM joins, truncates and re-batches "
           "prompts internally; use utility backend 'builtin' for this method")


def lm_eval_version() -> str:
    """The installed lm-eval's version, or a one-line error saying how to install it."""
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("utility backend 'lm-eval' needs the lm-eval package: pip install -e '.[lmeval]'") from None


@dataclass
class LmEvalConfig(UtilityConfig):
    """The built-in suite's options, with ``tasks`` naming lm-eval tasks, groups or tags. The
    installed lm-eval's version is part of the resolved config, so a sweep is never resumed under
    another version (its task definitions and scoring code may differ)."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    backend: str = field(default="lm-eval", init=False)
    lm_eval_version: str = field(default="", init=False)

    def _check_tasks(self) -> None:
        if (not isinstance(self.tasks, list) or not self.tasks
                or not all(isinstance(t, str) and t.strip() == t and t for t in self.tasks)):
            raise ConfigError(f"utility (lm-eval): 'tasks' must be a non-empty list of lm-eval task names, "
                              f"got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"utility (lm-eval): duplicate task in {self.tasks}")
        self.lm_eval_version = lm_eval_version()

    def suite(self, data_root=None) -> "LmEvalSuite":
        return LmEvalSuite(self, data_root)


# ---------------------------------------------------------------------------------------------
# Local task definitions
# ---------------------------------------------------------------------------------------------
def task_dir() -> Path:
    """The committed task YAMLs (``benchmarks/lmeval_tasks``; package data in a wheel)."""
    return Path(str(importlib.resources.files("editbench.benchmarks") / "lmeval_tasks"))


def local_tasks() -> dict[str, Path]:
    """{task name: committed YAML} of the offline tasks."""
    out = {}
    for path in sorted(task_dir().glob("*.yaml")):
        out[yaml.safe_load(path.read_text(encoding="utf-8"))["task"]] = path
    return out


def _write_resolved(names: Sequence[str], root: Path, dest: Path) -> None:
    """Copies of the named local tasks' YAMLs in ``dest`` with ``data_files`` under ``root``."""
    for name in names:
        cfg = yaml.safe_load(local_tasks()[name].read_text(encoding="utf-8"))
        files = cfg["dataset_kwargs"]["data_files"]
        cfg["dataset_kwargs"]["data_files"] = {split: str(data_file(rel, root)) for split, rel in files.items()}
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval logs every request batch and draws progress bars; a sweep has its own bar and
    prints one line per problem, so lm-eval's chatter below errors is muted while it runs."""
    import datasets
    import lm_eval.api.task as lm_task
    from tqdm import tqdm

    logger = logging.getLogger("lm_eval")
    level, bars, task_tqdm = logger.level, datasets.utils.are_progress_bars_disabled(), lm_task.tqdm
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    lm_task.tqdm = functools.partial(tqdm, disable=True)  # per-document request building
    try:
        yield
    finally:
        logger.setLevel(level)
        lm_task.tqdm = task_tqdm
        if not bars:
            datasets.enable_progress_bars()


@functools.lru_cache(maxsize=1)
def _hflm_class():
    """``HFLM`` without its per-call progress bars (imported on first use: lm-eval is optional)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def wrap_model(lm, batch_size: int):
    """lm-eval's ``HFLM`` around ``lm``'s model object, sharing its weights (so weight edits and
    hooks apply). The tokenizer is a copy because HFLM may give it a pad token. HFLM calls
    ``tie_weights()``; a model whose parameters that would change is refused rather than altered
    behind the caller's back."""
    params = [p.data_ptr() for p in lm.model.parameters()]
    with _quiet():
        wrapped = _hflm_class()(pretrained=lm.model, tokenizer=copy.deepcopy(lm.tokenizer), batch_size=batch_size,
                                softmax_dtype="float32")  # the built-in suite's log-softmax is float32 too
    if [p.data_ptr() for p in lm.model.parameters()] != params:
        raise EditbenchError(f"lm-eval's HFLM re-tied the weights of model '{lm.model_id}'; the lm-eval utility "
                             "backend cannot evaluate it")
    return wrapped


# ---------------------------------------------------------------------------------------------
class LmEvalSuite(UtilitySuite):
    """The utility suite with its multiple-choice part run by lm-eval (see the module docstring)."""

    cfg: LmEvalConfig

    def __init__(self, config: LmEvalConfig, data_root=None):
        super().__init__(config, data_root)
        from lm_eval.tasks import TaskManager

        local = local_tasks()
        wanted = list(local) if LOCAL_TAG in config.tasks else [t for t in config.tasks if t in local]
        hub = [t for t in config.tasks if t not in local and t != LOCAL_TAG]
        with tempfile.TemporaryDirectory(prefix="editbench-lmeval-") as tmp, _quiet():
            if wanted:
                _write_resolved(wanted, resolve_data_root(data_root), Path(tmp))
            # lm-eval's own task index takes seconds to build: only when a task needs it
            manager = TaskManager(include_path=tmp, include_defaults=bool(hub))
            unknown = [t for t in config.tasks if t not in manager.all_tasks]
            if unknown:
                raise ConfigError(f"unknown lm-eval task '{unknown[0]}' (offline tasks: {', '.join(local)}, tag "
                                  f"{LOCAL_TAG}; lm-eval {config.lm_eval_version} lists its own with: lm-eval ls tasks)")
            try:
                loaded = manager.load(list(config.tasks))
            except Exception as e:  # datasets/hub/Jinja errors of many kinds: one line naming the tasks
                raise DataError(f"lm-eval could not load task(s) {', '.join(config.tasks)} ({_first_line(e)}); "
                                f"offline, use the local tasks ({', '.join(local)})") from None
        self._tasks = loaded["tasks"]  # leaf task name -> lm-eval Task
        self._local = {name: local[name] for name in wanted}
        self._headline: dict[str, str] = {}
        for name, task in self._tasks.items():
            if task.get_config("num_fewshot") is None:  # as lm-eval's simple_evaluate does
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=config.seed)
            reported = set(task.aggregation())
            metric = next((m for m in (config.metric, *HEADLINE_FALLBACKS) if m in reported), None)
            if metric is None:
                raise ConfigError(f"lm-eval task '{name}' reports none of {config.metric}, "
                                  f"{', '.join(HEADLINE_FALLBACKS)} per item (it reports {', '.join(sorted(reported))}); "
                                  "the utility score is a mean accuracy")
            self._headline[name] = metric
        self._models: dict[tuple[int, int], Any] = {}

    @property
    def task_names(self) -> list[str]:
        """The leaf tasks (a group or tag in ``tasks`` stands for its members)."""
        return list(self._tasks)

    def data_files(self) -> dict[str, str]:
        """The built-in parts' files, each local task's data files, and a fingerprint of every
        task's definition (a changed prompt or metric refuses a resume like changed data)."""
        files = self._files([])
        for name, task in self._tasks.items():
            if name in self._local:
                cfg = yaml.safe_load(self._local[name].read_text(encoding="utf-8"))
                for rel in cfg["dataset_kwargs"]["data_files"].values():
                    path = data_file(rel, self.data_root)
                    files[str(path)] = sha256_file(path)
                definition = self._local[name].read_bytes()
            else:
                definition = json.dumps(task.dump_config(), sort_keys=True, default=str).encode()
            files[f"lm-eval task {name}"] = hashlib.sha256(definition).hexdigest()
        return files

    def doc_ids(self, task: str, split: str) -> list[int]:
        """The split's documents of ``task`` (indices into its evaluation docs, ascending: lm-eval
        maps logged samples back to these indices by position, which needs sorted indices)."""
        key = ("lm-eval", task, split)
        if key not in self._cache:
            self._cache[key] = _halves(len(self._tasks[task].eval_docs), self.cfg.seed)[split][: self.cfg.limit]
        return self._cache[key]

    preflight = True

    def check_context(self, context) -> None:
        if context[1] is not None:
            raise ConfigError(REFUSAL)

    def evaluate(self, lm, context, split: str, batch_size: int = 16) -> list[dict]:
        self.check_context(context)
        self._model(lm, batch_size)  # wrapped before the intervention is entered (HFLM touches the model)
        return super().evaluate(lm, context, split, batch_size)

    def _model(self, lm, batch_size: int):
        key = (id(lm.model), batch_size)
        if key not in self._models:
            self._models[key] = wrap_model(lm, batch_size)
        return self._models[key]

    def _mc_records(self, lm, bctx, split: str, batch_size: int) -> list[dict]:
        return self.run(lm, {t: self.doc_ids(t, split) for t in self._tasks}, batch_size)

    def run(self, lm, samples: dict[str, list[int]], batch_size: int = 16) -> list[dict]:
        """Per-item records of ``samples`` ({task: ascending doc indices}) under whatever
        intervention is active: one per multiple-choice item (the built-in suite's shape plus
        lm-eval's own per-item metrics), one per item and filter for other output types."""
        from lm_eval import evaluator

        samples = {t: list(ids) for t, ids in samples.items() if ids}  # lm-eval reads [] as "every doc"
        if any(ids != sorted(set(ids)) for ids in samples.values()):
            raise ValueError("doc indices must be ascending and distinct")
        if not samples:
            return []
        task_dict = {"tasks": {t: self._tasks[t] for t in samples}, "groups": {}, "group_map": {}}
        with _quiet():
            res = evaluator.evaluate(lm=self._model(lm, batch_size), task_dict=task_dict, samples=samples,
                                     log_samples=True, bootstrap_iters=0)
        recs: list[dict] = []
        for name in samples:
            task = self._tasks[name]
            for s in res["samples"][name]:
                recs.append(_record(name, task, s))
        return recs

    def _mc_summary(self, recs: Sequence[dict]) -> dict:
        """Per task: its headline proportion (``metric``, else acc, else exact_match) and acc /
        acc_norm / exact_match where reported (x100, under the task's first filter); ``utility``
        is their mean over tasks, as for the built-in suite."""
        out: dict = {}
        headline, chance = [], []
        for name in self._tasks:
            mine = [r for r in recs if r["task"] == name]
            first = mine[0].get("filter") if mine else None
            mine = [r for r in mine if r.get("filter") == first]
            for m in dict.fromkeys((self._headline[name], "acc", "acc_norm", "exact_match")):
                if mine and all(m in r for r in mine):
                    out[f"{name}_{m}"] = M.aggregate([r[m] for r in mine], proportion=True)
            headline.append(np.array([r[self._headline[name]] for r in mine], dtype=float))
            chance.append(np.array([1.0 / r["n_choices"] for r in mine if "n_choices" in r]))
        out["utility"] = mean_of_tasks(headline)
        if all(len(c) and len(c) == len(h) for c, h in zip(chance, headline)):
            out["utility_chance"] = 100.0 * float(np.mean([c.mean() for c in chance]))
        return out


def _record(name: str, task, sample: dict) -> dict:
    """One logged lm-eval sample as a per-item record, with lm-eval's own per-item metrics (for
    multiple choice, its acc / acc_norm follow the same rule as ours, from the same numbers)."""
    metrics = {m: float(sample[m]) for m in sample.get("metrics", ()) if isinstance(sample.get(m), (int, float))}
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = list(task.doc_to_choice(sample["doc"]))
        lls = [float(ll) for ll, _greedy in sample["filtered_resps"]][: len(choices)]  # [:n]: mutual-info extras
        gold = sample["target"]
        if isinstance(gold, str) and gold in choices:
            gold = choices.index(gold)
        rec = mc_record(name, sample["doc_id"], lls, choices, gold if isinstance(gold, int) else None)
        return {**rec, **({} if isinstance(gold, int) else {"gold": gold}), **metrics}
    rec = {"task": name, "item_id": sample["doc_id"], "filter": sample["filter"], **metrics}
    resp = sample["filtered_resps"][0] if sample["filtered_resps"] else None
    if isinstance(resp, str):
        rec["response"] = resp
    return rec
