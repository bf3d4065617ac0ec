"""CounterFact (Meng et al. 2022): counterfactual knowledge edits with paraphrase and neighbourhood prompts.

Two on-disk formats are read:
* EasyEdit/MEND (``counterfact-{train,val,edit}.json``): one rephrase and one locality prompt per case;
* original ROME (``rome/counterfact_500.json``): lists of paraphrase, neighbourhood and generation prompts.

Both are read through :mod:`editbench.datasets_io` (``datasets``), from the data root by default or,
with ``dataset="hub:OWNER/NAME[@REVISION][?split=S]"`` (``editbench run --dataset``), from a hub
dataset whose columns are either format's fields, one row per case: EasyEdit ``case_id, prompt,
subject, target_new, ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``, or
ROME ``case_id, requested_rewrite{prompt, subject, target_new{str}, target_true{str}, relation_id},
paraphrase_prompts, neighborhood_prompts, generation_prompts, attribute_prompts`` (e.g.
``hub:azhx/counterfact``). The run's split is then the hub split (default ``train``).

Every loaded case also carries, in ``EditCase.extra["subject_neighbours"]`` (evaluation data, never
in the :class:`EditRequest`), up to :data:`SUBJECT_NEIGHBOURS_MAX` other CounterFact facts about the
same subject under a *different relation*, from the subject index (:func:`subject_index`) over all
three EasyEdit files; see :meth:`SubjectIndex.neighbours` for the exact rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from editbench.data import check_placeholders, sha256_file
from editbench.datasets_io import HubSource, Records, load_hub, load_local
from editbench.errors import ConfigError, DataError
from editbench.requests import EditCase, EditRequest

from editbench.plugins.benchmark import Benchmark

SPLIT_FILES = {
    "edit": "counterfact/counterfact-edit.json",
    "train": "counterfact/counterfact-train.json",
    "val": "counterfact/counterfact-val.json",
    "rome500": "counterfact/rome/counterfact_500.json",
}
#: the files the subject index reads: the three disjoint EasyEdit splits (all 21,919 CounterFact
#: records) for the facts, the ROME-format file for the relation id of each prompt template
INDEX_FILES = (SPLIT_FILES["edit"], SPLIT_FILES["train"], SPLIT_FILES["val"])
RELATION_FILE = SPLIT_FILES["rome500"]
#: other-relation facts kept per case (the first ones by case_id)
SUBJECT_NEIGHBOURS_MAX = 5

log = logging.getLogger(__name__)


def _str(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: field '{key}' missing or not a non-empty string")
    return v


def _str_list(rec: dict, key: str, where: str) -> tuple[str, ...]:
    v = rec.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise DataError(f"{where}: field '{key}' must be a list of non-empty strings")
    return tuple(v)


def parse_easyedit(rec: dict, where: str) -> EditCase:
    cid = rec.get("case_id")
    if not isinstance(cid, int):
        raise DataError(f"{where}: field 'case_id' missing or not an integer")
    req = EditRequest(case_id=cid, prompt=_str(rec, "prompt", where), subject=_str(rec, "subject", where),
                      target_new=_str(rec, "target_new", where), target_true=_str(rec, "ground_truth", where))
    if req.subject not in req.prompt:
        raise DataError(f"{where}: subject {req.subject!r} does not occur in prompt {req.prompt!r}")
    return EditCase(request=req, paraphrase_prompts=(_str(rec, "rephrase_prompt", where),),
                    neighborhood_prompts=(_str(rec, "locality_prompt", where),),
                    neighborhood_target=_str(rec, "locality_ground_truth", where))


def parse_rome(rec: dict, where: str) -> EditCase:
    cid = rec.get("case_id")
    rw = rec.get("requested_rewrite")
    if not isinstance(cid, int):
        raise DataError(f"{where}: field 'case_id' missing or not an integer")
    if not isinstance(rw, dict):
        raise DataError(f"{where}: field 'requested_rewrite' missing or not an object")
    template, subject = _str(rw, "prompt", where + ".requested_rewrite"), _str(rw, "subject", where + ".requested_rewrite")
    _check_template(template, where)
    tn, tt = rw.get("target_new"), rw.get("target_true")
    if not (isinstance(tn, dict) and isinstance(tt, dict)):
        raise DataError(f"{where}: requested_rewrite.target_new/target_true must be objects with 'str'")
    req = EditRequest(case_id=cid, prompt=template.format(subject), subject=subject,
                      target_new=_str(tn, "str", where + ".target_new"), target_true=_str(tt, "str", where + ".target_true"))
    gen = _str_list(rec, "generation_prompts", where) if "generation_prompts" in rec else ()
    return EditCase(request=req, paraphrase_prompts=_str_list(rec, "paraphrase_prompts", where),
                    neighborhood_prompts=_str_list(rec, "neighborhood_prompts", where),
                    neighborhood_target=req.target_true, generation_prompts=gen,
                    extra={"attribute_prompts": tuple(rec.get("attribute_prompts") or ()),
                           "relation_id": rw["relation_id"] if isinstance(rw.get("relation_id"), str) else None,
                           "template": template})


def _check_template(template: str, where: str) -> None:
    """A relation template holds exactly the subject placeholder ``{}`` (nothing else in braces)."""
    check_placeholders(template, "", f"{where}: requested_rewrite.prompt (the subject is '{{}}')")


def load_counterfact_file(path: str | Path, limit: int | None = None) -> list[EditCase]:
    """Parse either format; errors name the file, the record index and its case_id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CounterFact file {path} not found")
    return parse_counterfact_records(load_local(path), path.name, str(path), limit)


def parse_counterfact_records(rows: Sequence[Any], name: str, origin: str, limit: int | None = None) -> list[EditCase]:
    """Cases from rows of either format (a file's or a hub dataset's); ``name`` starts each record's
    error line, ``origin`` the errors about the whole source."""
    if not rows:
        raise DataError(f"{origin}: expected a non-empty JSON array of records")
    cases, seen = [], set()
    for i, rec in enumerate(rows[: limit if limit is not None else len(rows)]):
        where = f"{name} record {i}" + (f" (case_id {rec.get('case_id')})" if isinstance(rec, dict) and "case_id" in rec else "")
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object")
        case = parse_rome(rec, where) if "requested_rewrite" in rec else parse_easyedit(rec, where)
        if case.case_id in seen:
            raise DataError(f"{where}: duplicate case_id {case.case_id}")
        seen.add(case.case_id)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------
# The subject index: other facts about an edited subject (scope tests for subject-gated editors)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    case_id: int
    prompt: str
    true: str  # the record's ground truth (the model should keep preferring it)
    relations: frozenset  # relation ids of the prompt's template; empty when unknown


def _template(prompt: str, subject: str) -> str:
    return prompt.replace(subject, "{}", 1)


class SubjectIndex:
    """CounterFact facts by subject string, with the relation id(s) of each prompt template.

    Relations: the EasyEdit files carry no relation id, so a template (the prompt with its subject
    replaced by ``{}``) gets the ids it has in the ROME-format file (172 templates, 20,437 of the
    21,919 records; a template used by several relations, e.g. ``"{} is located in"``, counts as all
    of them). A fact whose template is not there has an unknown relation and is never used."""

    def __init__(self, by_subject: dict[str, list[Fact]], template_relations: dict[str, frozenset],
                 files: dict[str, str], missing: list[str]):
        self.by_subject, self.template_relations = by_subject, template_relations
        self.files, self.missing = files, missing

    def relations_of(self, case: EditCase) -> frozenset:
        rid = case.extra.get("relation_id")
        if rid:
            return frozenset([rid])
        r = case.request
        return self.template_relations.get(_template(r.prompt, r.subject), frozenset())

    def neighbours(self, case: EditCase, cap: int = SUBJECT_NEIGHBOURS_MAX) -> tuple[tuple[int, str, str], ...]:
        """``(case_id, prompt, true object)`` of the other facts Y about ``case``'s subject X, at most
        ``cap``, in case_id order: same subject string, another record (a ``rome500`` case is also in
        an EasyEdit file under its own case_id: excluded), another prompt, both relations known and
        disjoint (a same-relation record with another prompt is a paraphrase, e.g. the 1,718
        twin-city pairs), Y's true object neither X's new nor X's true object (case-insensitive),
        and each (prompt, object) once. Empty when X's relation is unknown."""
        r = case.request
        mine = self.relations_of(case)
        if not mine:
            return ()
        taken = {r.target_new.casefold(), r.target_true.casefold()}
        out, seen = [], set()
        for f in self.by_subject.get(r.subject, ()):
            if (f.case_id == case.case_id or f.prompt == r.prompt or not f.relations or f.relations & mine
                    or f.true.casefold() in taken or (f.prompt, f.true) in seen):
                continue
            seen.add((f.prompt, f.true))
            out.append((f.case_id, f.prompt, f.true))
            if len(out) >= cap:
                break
        return tuple(out)


_INDEX_CACHE: dict[tuple, SubjectIndex] = {}


def subject_index(root: str | Path) -> SubjectIndex:
    """The index over ``root``'s CounterFact files, built once per data root (and file state).

    A malformed file is a :class:`DataError` naming it, and so is an absent one in a data bundle
    (a root with a ``MANIFEST.md``, which promises every file). A hand-made data root (tests, a
    custom split) may hold only the split it runs: absent files leave their facts out and are listed
    in ``missing``; the files used and their sha256 are in ``files`` (both in the run's provenance)."""
    root = Path(root)
    paths = [root / rel for rel in (*INDEX_FILES, RELATION_FILE)]
    key = (str(root.resolve()), *((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in paths))
    missing = [rel for rel, p in zip((*INDEX_FILES, RELATION_FILE), paths) if not p.is_file()]
    if missing and is_bundle(root):
        raise DataError(f"data bundle {root} lacks {missing[0]} (read by the CounterFact subject index for "
                        "subject_specificity); restore the file or pass another --data-root")
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    relations: dict[str, set] = {}
    if paths[-1].is_file():
        for c in load_counterfact_file(paths[-1]):
            if "template" in c.extra and c.extra.get("relation_id"):
                relations.setdefault(c.extra["template"], set()).add(c.extra["relation_id"])
    template_relations = {t: frozenset(v) for t, v in relations.items()}
    by_subject: dict[str, list[Fact]] = {}
    for p in paths[:-1]:
        if not p.is_file():
            continue
        for c in load_counterfact_file(p):
            r = c.request
            by_subject.setdefault(r.subject, []).append(
                Fact(int(c.case_id), r.prompt, r.target_true,
                     template_relations.get(_template(r.prompt, r.subject), frozenset())))
    for facts in by_subject.values():
        facts.sort(key=lambda f: f.case_id)
    if missing:  # not printed: a hand-made root is allowed to be partial; provenance lists it
        log.info("subject index for %s built without %s", root, ", ".join(missing))
    idx = SubjectIndex(by_subject, template_relations, {str(p): sha256_file(p) for p in paths if p.is_file()}, missing)
    _INDEX_CACHE[key] = idx
    return idx


def is_bundle(root: str | Path) -> bool:
    """A complete data bundle (it carries the MANIFEST.md that lists every file), not a partial root."""
    return (Path(root) / "MANIFEST.md").is_file()


def attach_subject_neighbours(cases: list[EditCase], index: SubjectIndex) -> list[EditCase]:
    """Store each case's other-relation facts in ``extra["subject_neighbours"]`` (in place)."""
    for c in cases:
        c.extra["subject_neighbours"] = index.neighbours(c)
    return cases


class CounterFact(Benchmark):
    name = "counterfact"
    description = "CounterFact knowledge edits (ROME + EasyEdit metrics); splits edit/train/val (EasyEdit format), rome500"
    splits = tuple(SPLIT_FILES)
    default_split = "edit"
    case_selections = ("with-subject-facts",)

    def __init__(self, data_root=None, split=None, path: str | Path | None = None,
                 dataset: str | Mapping[str, Any] | None = None):
        self._path = Path(path) if path else None
        self.hub: HubSource | None = None
        self._hub_records: Records | None = None
        if dataset is None:
            super().__init__(data_root, split)
            return
        if path:
            raise ConfigError("counterfact: give a file path or a hub dataset, not both")
        hub = HubSource.parse(dataset)
        if split and hub.split and split != hub.split:
            raise ConfigError(f"counterfact: split '{split}' differs from the hub dataset's split '{hub.split}'")
        self.hub = hub.with_defaults(split=split or "train")
        self.split, self._data_root = self.hub.split, data_root

    def data_files(self) -> list[Path]:
        if self.hub is not None:
            return []
        if self._path:
            return [self._path]
        path = self.data_root / SPLIT_FILES[self.split]
        if not path.is_file():
            raise DataError(f"CounterFact split '{self.split}' file {path} not found")
        return [path]

    def _hub_rows(self) -> Records:
        if self._hub_records is None:
            self._hub_records = load_hub(self.hub)
        return self._hub_records

    def _scope_root(self) -> Path | None:
        """The data root the scope metrics read; None only for an explicit ``path`` or a hub dataset
        with no data root anywhere (its cases then have no other-relation facts and no neutral text)."""
        try:
            return self.data_root
        except DataError:
            if self._path or self.hub is not None:
                return None
            raise

    def load(self, limit: int | None = None, with_subject_facts: bool = False) -> list[EditCase]:
        """The split's cases, each with its other-relation facts about the subject in
        ``extra["subject_neighbours"]`` (from the index over the data root).

        ``with_subject_facts``: only the cases that have at least one such fact (the first ``limit``
        of them), so that ``subject_specificity`` applies to every case instead of a few (5 of the
        first 100 ``edit`` cases, 546 of all 10,000)."""
        filtered = with_subject_facts
        if self.hub is not None:
            rows = self._hub_rows()
            cases = parse_counterfact_records(rows, rows.origin, rows.origin, None if filtered else limit)
        else:
            cases = load_counterfact_file(self.data_files()[0], None if filtered else limit)
        root = self._scope_root()
        if root is None:
            if filtered:
                raise DataError("counterfact: cases with subject facts need the data root's CounterFact files "
                                "(the subject index); none was found")
            for c in cases:
                c.extra["subject_neighbours"] = ()
            return cases
        from editbench.evaluation.scope import neutral_text_path

        index = subject_index(root)
        neutral_text_path(root)  # a data bundle without the neutral text fails here, before anything is written
        cases = attach_subject_neighbours(cases, index)
        if filtered:
            cases = [c for c in cases if c.extra["subject_neighbours"]][:limit]
            if not cases:
                raise DataError(f"counterfact: no case of split '{self.split}' has another fact about its subject")
        return cases

    def provenance(self) -> dict:
        """The split file (``files``: what defines the protocol), plus the files the scope and
        health metrics read (``scope_files``: the subject index and the neutral text) and, for a
        partial data root, those it lacks (``scope_missing``)."""
        from editbench.evaluation.scope import NEUTRAL_TEXT, neutral_text_path

        if self.hub is not None:
            rows = self._hub_rows()
            out = {"benchmark": self.name, "split": self.split, "files": rows.provenance(), "hub": rows.info}
        else:
            out = super().provenance()
        root = self._scope_root()
        if root is None:
            return {**out, "scope_files": {}, "scope_missing": [*INDEX_FILES, RELATION_FILE, NEUTRAL_TEXT]}
        index = subject_index(root)
        scope, missing = dict(index.files), list(index.missing)
        neutral = neutral_text_path(root)
        if neutral is not None:
            scope[str(neutral)] = sha256_file(neutral)
        else:
            missing.append(NEUTRAL_TEXT)
        out["scope_files"] = scope
        if missing:
            out["scope_missing"] = missing
        return out

    def make_evaluator(self, lm, method, **options):
        from editbench.evaluation.evaluator import KnowledgeEditEvaluator

        options.setdefault("data_root", self._scope_root())
        return KnowledgeEditEvaluator(lm, method, **options)

    @classmethod
    def sweep_track(cls, lm, cfg):
        from editbench.runs.tracks import EditTrack

        if cfg.benchmark_options:
            raise ConfigError(f"benchmark '{cls.name}' takes no benchmark_options")
        return EditTrack(cls, lm, cfg)
