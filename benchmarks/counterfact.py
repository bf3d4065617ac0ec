"""CounterFact (Meng et al. 2022): counterfactual knowledge edits with paraphrase and neighbourhood prompts.

Two on-disk formats are read:
* EasyEdit/MEND (``counterfact-{train,val,edit}.json``): one rephrase and one locality prompt per case;
* original ROME (``rome/counterfact_500.json``): lists of paraphrase, neighbourhood and generation prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from editbench.errors import ConfigError, DataError
from editbench.requests import EditCase, EditRequest

from editbench.plugins.benchmark import Benchmark

SPLIT_FILES = {
    "edit": "counterfact/counterfact-edit.json",
    "train": "counterfact/counterfact-train.json",
    "val": "counterfact/counterfact-val.json",
    "rome500": "counterfact/rome/counterfact_500.json",
}


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
    if "{}" not in template:
        raise DataError(f"{where}: requested_rewrite.prompt has no '{{}}' subject placeholder")
    tn, tt = rw.get("target_new"), rw.get("target_true")
    if not (isinstance(tn, dict) and isinstance(tt, dict)):
        raise DataError(f"{where}: requested_rewrite.target_new/target_true must be objects with 'str'")
    req = EditRequest(case_id=cid, prompt=template.format(subject), subject=subject,
                      target_new=_str(tn, "str", where + ".target_new"), target_true=_str(tt, "str", where + ".target_true"))
    gen = _str_list(rec, "generation_prompts", where) if "generation_prompts" in rec else ()
    return EditCase(request=req, paraphrase_prompts=_str_list(rec, "paraphrase_prompts", where),
                    neighborhood_prompts=_str_list(rec, "neighborhood_prompts", where),
                    neighborhood_target=req.target_true, generation_prompts=gen,
                    extra={"attribute_prompts": tuple(rec.get("attribute_prompts") or ())})


def load_counterfact_file(path: str | Path, limit: int | None = None) -> list[EditCase]:
    """Parse either format; errors name the file, the record index and its case_id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CounterFact file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON array of records")
    cases, seen = [], set()
    for i, rec in enumerate(data[: limit if limit is not None else len(data)]):
        where = f"{path.name} record {i}" + (f" (case_id {rec.get('case_id')})" if isinstance(rec, dict) and "case_id" in rec else "")
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected an object")
        case = parse_rome(rec, where) if "requested_rewrite" in rec else parse_easyedit(rec, where)
        if case.case_id in seen:
            raise DataError(f"{where}: duplicate case_id {case.case_id}")
        seen.add(case.case_id)
        cases.append(case)
    return cases


class CounterFact(Benchmark):
    name = "counterfact"
    description = "CounterFact knowledge edits (ROME + EasyEdit metrics); splits edit/train/val (EasyEdit format), rome500"
    splits = tuple(SPLIT_FILES)
    default_split = "edit"

    def __init__(self, data_root=None, split=None, path: str | Path | None = None):
        super().__init__(data_root, split)
        self._path = Path(path) if path else None

    def data_files(self) -> list[Path]:
        if self._path:
            return [self._path]
        path = self.data_root / SPLIT_FILES[self.split]
        if not path.is_file():
            raise DataError(f"CounterFact split '{self.split}' file {path} not found")
        return [path]

    def load(self, limit: int | None = None) -> list[EditCase]:
        return load_counterfact_file(self.data_files()[0], limit)

    def make_evaluator(self, lm, method, **options):
        from editbench.evaluation.evaluator import KnowledgeEditEvaluator

        return KnowledgeEditEvaluator(lm, method, **options)

    @classmethod
    def sweep_track(cls, lm, cfg):
        from editbench.runs.tracks import EditTrack

        if cfg.benchmark_options:
            raise ConfigError(f"benchmark '{cls.name}' takes no benchmark_options")
        return EditTrack(cls, lm, cfg)
