"""Which sweep points are valid operating points [ours].

Multiple-choice accuracy barely moves while a model falls apart (it still ranks four short
choices after it stopped writing sentences), so a point of a sweep is *valid* only when the model
under its intervention still models text like the unedited one:

* ``wikitext_ppl`` (edited) / ``wikitext_ppl`` (unedited, same split) <= ``max_ppl_ratio``;
* ``neutral_kl`` (mean next-token KL from the unedited model over neutral text, nats) <=
  ``max_neutral_kl``.

A check whose metric was not measured (e.g. ``wikitext_windows: 0``) is skipped; a non-finite value
fails it. A point where neither was measured has ``valid: null`` ("not measured"), as have points
written before these checks existed: they are treated as valid, and every analysis says so.
Invalid points stay in the tables and figures (greyed) and are left out of every Pareto front,
hypervolume and matched-utility selection (:mod:`editbench.evaluation.tradeoff`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from editbench.errors import ConfigError

#: defaults [ours]: a 50% perplexity increase is far outside seed noise (committed SmolLM2 sweeps:
#: steering that refuses everything sits at 2.2x); 0.5 nats mean KL means the edited model puts
#: about 40% less probability on the unedited model's typical next token, on text unrelated to the edit
DEFAULT_MAX_PPL_RATIO = 1.5
DEFAULT_MAX_NEUTRAL_KL = 0.5


@dataclass(frozen=True)
class ValidityBounds:
    """A sweep's ``validity: {max_ppl_ratio, max_neutral_kl}``."""

    max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO
    max_neutral_kl: float = DEFAULT_MAX_NEUTRAL_KL

    @classmethod
    def from_dict(cls, d: Any) -> "ValidityBounds":
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"sweep config: 'validity' must be a mapping, got {d!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"sweep config: 'validity' has no key '{unknown[0]}' (keys: {', '.join(names)})")
        bounds = cls(**d)
        bounds.check()
        return bounds

    def check(self) -> None:
        for name, lowest in (("max_ppl_ratio", 1.0), ("max_neutral_kl", 0.0)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 and v >= lowest
            if not ok:
                need = "a finite number >= 1" if lowest else "a finite number > 0"
                raise ConfigError(f"sweep config: validity.{name} must be {need}, got {v!r}")

    def describe(self) -> dict:
        return asdict(self)


def _mean(agg: Any) -> float | None:
    """An aggregate's mean (NaN when the aggregate left non-finite values out: they fail a check)."""
    if not isinstance(agg, Mapping) or agg.get("n") == 0:
        return None
    if agg.get("non_finite") or agg.get("mean") is None:
        return math.nan
    return float(agg["mean"])


def _over(value: float, bound: float) -> str:
    """``value`` with the fewest digits (3 or more) that still read as beyond ``bound``: a ratio of
    1.50075 against 1.5 prints 1.501, never "1.5 > 1.5"."""
    for digits in range(3, 13):
        text = f"{value:.{digits}g}"
        if not math.isfinite(value) or float(text) > bound:
            return text
    return repr(value)


def assess(point: Mapping[str, Any], reference: Mapping[str, Any] | None, bounds: ValidityBounds) -> dict:
    """``{"valid", "invalid_reasons", "ppl_ratio"}`` of a point against the unedited point of its split."""
    reasons: list[str] = []
    measured = False
    ppl, ref_ppl = _mean(point.get("wikitext_ppl")), _mean((reference or {}).get("wikitext_ppl"))
    ratio = None
    if ppl is not None and ref_ppl is not None and ref_ppl > 0:
        measured = True
        ratio = ppl / ref_ppl
        if not ratio <= bounds.max_ppl_ratio:  # NaN fails
            reasons.append(f"perplexity ratio {_over(ratio, bounds.max_ppl_ratio)} > {bounds.max_ppl_ratio:g}")
    kl = _mean(point.get("neutral_kl"))
    if kl is not None:
        measured = True
        if not math.isfinite(kl):
            bad = (point.get("neutral_kl") or {}).get("non_finite")
            reasons.append("neutral_kl is not finite" + (f" on {bad} texts" if bad else ""))
        elif kl > bounds.max_neutral_kl:
            reasons.append(f"neutral_kl {_over(kl, bounds.max_neutral_kl)} > {bounds.max_neutral_kl:g} nats")
    return {"valid": (not reasons) if measured else None, "invalid_reasons": reasons, "ppl_ratio": ratio}


def revalidate(points: Sequence[dict], bounds: ValidityBounds) -> list[dict]:
    """Every point with its validity under ``bounds`` (the unedited point of each split is the
    reference); points whose split has no unedited point keep only the KL check."""
    refs = {p["split"]: p for p in points if p.get("method") == "unedited"}
    return [{**p, **assess(p, refs.get(p["split"]), bounds)} for p in points]


def is_valid(point: Mapping[str, Any]) -> bool:
    """Whether a point may enter fronts and selections: invalid ones may not; not measured ones may."""
    return point.get("valid") is not False


def validity_note(points: Sequence[Mapping[str, Any]]) -> str | None:
    """"validity not measured" when some edited point has no validity (older sweeps), else None."""
    missing = [p for p in points if p.get("method") != "unedited" and p.get("valid") is None]
    if not missing:
        return None
    return (f"validity not measured for {len(missing)} of {sum(p.get('method') != 'unedited' for p in points)} "
            "edited points (written before the check, or neither neutral_kl nor perplexity measured): treated as valid")
