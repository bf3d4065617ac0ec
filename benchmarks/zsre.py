"""zsRE (Levy et al. 2017) question-answering edits in the MEND / EasyEdit format.

Split ``train1k`` (the default and the only one in the data bundle): ``zsre/zsre_mend_train-1k.json``,
the first 1,000 records of MEND's zsRE *training* file. It is **not** the standard evaluation file
(``zsre_mend_eval.json``, 19,086 records, which EasyEdit, ROME, MEMIT and AlphaEdit report on; it
is not obtainable offline): numbers on ``train1k`` are not comparable with published zsRE tables.
Users who have the evaluation file pass it with ``--dataset PATH`` (a local JSON file of the same
format) or ``--dataset hub:OWNER/NAME[@REV][?split=S]``.

Each record ``{subject, src, pred, rephrase, alt, answers, loc, loc_ans}`` becomes one edit case:

* request: prompt = the question ``src`` (which contains ``subject``), target_new = ``alt``,
  target_true = ``answers[0]`` (the original answer; ``pred`` is a model's prediction, not used);
* paraphrase prompt: ``rephrase``;
* neighbourhood (locality) prompt: ``loc`` (an NQ question, "nq question: ..."), whose answer
  ``loc_ans`` the edit should leave alone.

Metrics are the CounterFact evaluator's (:mod:`editbench.evaluation.evaluator`): EasyEdit's
``ee_rewrite_acc`` / ``ee_rephrase_acc`` (teacher-forced token accuracy of ``alt``) and
``ee_locality`` (share of the locality answer's teacher-forced argmax tokens the edit leaves
unchanged), as EasyEdit computes them; and the ROME-protocol NLL comparisons: efficacy /
generalization = ``alt`` beats the original answer after the question / its rephrasing, specificity
= ``loc_ans`` still beats ``alt`` after the NQ question. 17 of the 1,000 records ask for the answer
the record already has (``alt == answers[0]``); for them the NLL comparisons are not applicable
(left out of those aggregates' ``n``), the EasyEdit accuracies are kept. Two records (file indices 534 and 723) have an empty
``alt`` (no new answer: nothing to edit) and are skipped, so the file gives 998 cases; a case's id
is its record's index in the file. Of the scope and health metrics, the
other-relation facts about the subject (``subject_specificity``) have no zsRE data and are not
applicable; the subject probes, the CounterFact+-style test (the edit stated before the NQ
question) and model health (neutral KL, fluency) are computed as for CounterFact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from editbench.datasets_io import HubSource, Records, load_hub, load_local
from editbench.errors import ConfigError, DataError
from editbench.requests import EditCase, EditRequest

from editbench.plugins.benchmark import Benchmark

SPLIT_FILES = {"train1k": "zsre/zsre_mend_train-1k.json"}
FIELDS = ("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")


def parse_zsre(rows: Sequence[Any], origin: str, limit: int | None = None) -> list[EditCase]:
    """Edit cases from MEND-format zsRE rows; one-line errors naming the source and the record."""
    if not rows:
        raise DataError(f"{origin}: expected a non-empty JSON array of zsRE records")
    cases = []
    for i, rec in enumerate(rows[: limit if limit is not None else len(rows)]):
        where = f"{origin} record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object")
        missing = [k for k in FIELDS if k not in rec]
        if missing:
            raise DataError(f"{where}: missing field '{missing[0]}' (zsRE records need {', '.join(FIELDS)})")
        if rec["alt"] == "":  # no new answer: nothing to edit (2 records of the bundle's file); skipped
            continue
        for k in ("subject", "src", "rephrase", "alt", "loc", "loc_ans"):
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise DataError(f"{where}: field '{k}' must be a non-empty string")
        answers = rec["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(f"{where}: field 'answers' must be a non-empty list of strings")
        if rec["subject"] not in rec["src"]:
            raise DataError(f"{where}: subject {rec['subject']!r} does not occur in the question {rec['src']!r}")
        req = EditRequest(case_id=i, prompt=rec["src"].strip(), subject=rec["subject"], target_new=rec["alt"].strip(),
                          target_true=answers[0].strip())
        cases.append(EditCase(request=req, paraphrase_prompts=(rec["rephrase"].strip(),),
                              neighborhood_prompts=(rec["loc"].strip(),), neighborhood_target=rec["loc_ans"].strip(),
                              extra={"answers": tuple(a.strip() for a in answers)}))
    return cases


class ZsRE(Benchmark):
    name = "zsre"
    description = "zsRE question edits (MEND format; EasyEdit metrics + ROME NLL comparisons); split train1k"
    splits = tuple(SPLIT_FILES)
    default_split = "train1k"

    def __init__(self, data_root=None, split=None, dataset: str | None = None):
        self.hub: HubSource | None = None
        self._path: Path | None = None
        self._hub_records: Records | None = None
        if dataset is None:
            super().__init__(data_root, split)
            return
        if isinstance(dataset, str) and dataset.startswith("hub:"):
            hub = HubSource.parse(dataset)
            if split and hub.split and split != hub.split:
                raise ConfigError(f"zsre: split '{split}' differs from the hub dataset's split '{hub.split}'")
            self.hub = hub.with_defaults(split=split or "train")
            self.split = self.hub.split
        else:
            self._path = Path(str(dataset)).expanduser()
            if not self._path.is_file():
                raise DataError(f"zsre: dataset file {self._path} not found")
            self.split = split or self._path.stem
        self._data_root = data_root

    def data_files(self) -> list[Path]:
        if self.hub is not None:
            return []
        if self._path is not None:
            return [self._path]
        path = self.data_root / SPLIT_FILES[self.split]
        if not path.is_file():
            raise DataError(f"zsRE split '{self.split}' file {path} not found")
        return [path]

    def _rows(self) -> tuple[Sequence[Any], str]:
        if self.hub is not None:
            if self._hub_records is None:
                self._hub_records = load_hub(self.hub)
            return self._hub_records, self._hub_records.origin
        path = self.data_files()[0]
        return load_local(path), str(path)

    def load(self, limit: int | None = None) -> list[EditCase]:
        rows, origin = self._rows()
        return parse_zsre(rows, origin, limit)

    def provenance(self) -> dict:
        if self.hub is not None:
            rows, _ = self._rows()
            return {"benchmark": self.name, "split": self.split, "files": rows.provenance(), "hub": rows.info}
        return super().provenance()

    def _scope_root(self):
        try:
            return self.data_root
        except DataError:
            return None

    def make_evaluator(self, lm, method, **options):
        from editbench.evaluation.evaluator import KnowledgeEditEvaluator

        options.setdefault("data_root", self._scope_root())
        return KnowledgeEditEvaluator(lm, method, **options)
