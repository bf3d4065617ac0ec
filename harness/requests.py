"""Edit requests (what a method may see) and edit cases (request + held-out evaluation prompts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EditRequest:
    """Everything a knowledge editor may use to fit an edit. Evaluation prompts are *not* here, so
    a method cannot fit on them by construction."""

    case_id: int | str
    prompt: str  # rewrite prompt with the subject filled in
    subject: str
    target_new: str
    target_true: str


@dataclass(frozen=True)
class EditCase:
    request: EditRequest
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    # The object the neighbourhood prompts should keep predicting (EasyEdit's locality_ground_truth;
    # in CounterFact the neighbours share the edited relation's true object).
    neighborhood_target: str
    generation_prompts: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def case_id(self) -> int | str:
        return self.request.case_id

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d
