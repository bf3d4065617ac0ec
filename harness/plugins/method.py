"""The method plugin interface.

A method is a class registered under the ``editbench.methods`` entry-point group::

    class MyMethod(Method):
        name = "my-method"
        @dataclass
        class Params:            # hyperparameters, validated in __post_init__
            lr: float = 0.1
        def fit_edit(self, request: EditRequest) -> Intervention: ...

``fit_edit`` sees only the :class:`~editbench.requests.EditRequest` (never evaluation prompts) and
returns an :class:`~editbench.modeling.interventions.Intervention`; the evaluator applies it with a
``strength`` (0 = unedited) as a context manager. ``fit_behaviour`` (declared in ``supports``) fits
one intervention from contrastive probe examples for the attribute benchmarks.

This class is the whole contract: the core calls nothing on a method that is not declared here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from editbench.errors import ConfigError
from editbench.modeling.interventions import Intervention, StackedIntervention
from editbench.modeling.loading import LoadedModel
from editbench.requests import EditRequest

#: How edits compose in a sequential run: ``weights`` - each edit is fitted on the model with the
#: earlier edits in force, and is a :class:`~editbench.modeling.interventions.WeightIntervention`
#: whose deltas add to theirs; ``independent`` - each edit is fitted on the unedited model and
#: :meth:`Method.compose` puts all of them in force together (steering vectors sum, each gate decides
#: for its own edit, a codebook grows).
COMPOSITIONS: tuple[str, ...] = ("weights", "independent")

#: How a method changes the model; reports label and group rows by it, so a gated (semi-parametric)
#: editor is never ranked against ungated ones without a label.
MethodClass = Literal["reference", "weight-edit", "activation-steering", "gated"]
METHOD_CLASSES: tuple[str, ...] = ("reference", "weight-edit", "activation-steering", "gated")


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Which kinds of fitting the method supports: "edit" (one knowledge edit) and/or "behaviour".
    supports: ClassVar[frozenset[str]] = frozenset({"edit"})
    #: See :data:`MethodClass`.
    method_class: ClassVar[str] = "weight-edit"
    #: How this method's edits accumulate in a sequential (lifelong) run, ``editbench run
    #: --sequential`` (see :data:`COMPOSITIONS`); None: they cannot, and such a run is refused.
    composition: ClassVar[str | None] = None

    @dataclass
    class Params:
        pass

    def __init__(self, lm: LoadedModel, params: Mapping[str, Any] | None = None, seed: int = 0):
        self.lm = lm
        self.seed = seed
        self.params = parse_params(self.Params, params or {}, self.name)

    def fit_edit(self, request: EditRequest) -> Intervention:
        """One knowledge edit (``"edit" in supports``)."""
        raise ConfigError(f"method '{self.name}' does not support knowledge edits")

    def fit_each(self, requests: Sequence[EditRequest]) -> list[Intervention]:
        """One independent edit per request, each what ``fit_edit`` gives it alone (up to float
        tolerance): a method may fit them together for speed (ROME, MEMIT: one batched value
        optimisation). The evaluator calls it for a chunk of cases only when a method overrides it;
        by default every case is fitted on its own, after its own seeding."""
        return [self.fit_edit(r) for r in requests]

    def fit_edits(self, requests: Sequence[EditRequest]) -> Intervention:
        """Several knowledge edits fitted at once into one intervention (``"batch" in supports``;
        ``editbench run --edit-batch-size``)."""
        raise ConfigError(f"method '{self.name}' cannot fit several edits at once; use --edit-batch-size 1")

    def after_edit(self, edit: Intervention) -> None:
        """Called by a sequential run once ``edit`` is in force (fitted now, or loaded from the run's
        stored edits on a resume), in edit order: a method that carries state from one edit to the
        next (AlphaEdit's keys of earlier edits) updates it from the stored edit alone, so that a
        resumed run rebuilds it exactly. Default: nothing."""

    def compose(self, edits: Sequence[Intervention]) -> Intervention:
        """The edits of a sequential run (``composition: independent``) in force together, in order.
        Default: all of them stacked (:class:`~editbench.modeling.interventions.StackedIntervention`)."""
        return StackedIntervention(list(edits))

    def fit_behaviour(self, positives: Sequence[Any], negatives: Sequence[Any], window: str = "predict") -> Intervention:
        """One behaviour edit from contrastive :class:`~editbench.modeling.directions.ProbeExample`
        lists (``"behaviour" in supports``); ``window`` selects the token positions the probe
        activations are averaged over (see :func:`~editbench.modeling.directions.extract_directions`)."""
        raise ConfigError(f"method '{self.name}' does not support behaviour edits")

    @property
    def effective_class(self) -> str:
        """This configured instance's class (what reports label it): the declared ``method_class``
        unless a hyperparameter changes what the method is (MEGA with ``gate=off`` is ungated
        activation steering)."""
        return type(self).method_class

    def class_of(self, fitted: Intervention) -> str:
        """The class of one fitted edit (what a sweep point is labelled): ``effective_class`` unless
        the kind of fit changes it (MEGA's behaviour edits have no subject gate)."""
        return self.effective_class

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The default hyperparameters as plain JSON values."""
        return json.loads(json.dumps(dataclasses.asdict(cls.Params()), default=str))


def _convert(value: Any, typ: Any, key: str, method: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        typ = args[0]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ in (int, float):
            out = typ(value)
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if typ is float and not math.isfinite(out):
                raise ConfigError(f"method '{method}': hyperparameter '{key}' must be a finite number, got {value!r}")
            return out
        if typing.get_origin(typ) in (tuple, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner, *_rest) = typing.get_args(typ) or (str,)
            return typing.get_origin(typ)(_convert(v, inner, key, method) for v in items)
        if typ is str:
            return str(value)
        if typ is Path:
            return Path(str(value))
    except (TypeError, ValueError):
        raise ConfigError(f"method '{method}': hyperparameter '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def parse_params(cls: type, given: Mapping[str, Any], method: str = "") -> Any:
    """Build the Params dataclass from user values (strings from the CLI are converted)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:  # resolves postponed (string) annotations, e.g. ``Path | None`` under ``from __future__ import annotations``
        hints = typing.get_type_hints(cls)
    except Exception as e:  # noqa: BLE001 - a plugin's broken annotation is its author's one-line error
        raise ConfigError(f"method '{method}': cannot resolve the Params annotations ({type(e).__name__}: {e})") from None
    unknown = sorted(set(given) - set(fields))
    if unknown:
        have = ", ".join(fields) or "none"
        raise ConfigError(f"method '{method}' has no hyperparameter '{unknown[0]}' (has: {have})")
    kwargs = {k: _convert(v, hints.get(k, fields[k].type), k, method) for k, v in given.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method '{method}': {e}") from None
