"""The method plugin interface.

A method is a class registered under the ``editbench.methods`` entry-point group::

    class MyMethod(Method):
        name = "my-method"
        @dataclass
        class Params:            # hyperparameters, validated in __post_init__
            lr: float = 0.1
        def fit_edit(self, request: EditRequest) -> Intervention: ...

``fit_edit`` sees only the :class:`~harness.records.EditRequest` (never evaluation prompts) and
returns an :class:`~harness.interventions.Intervention`; the evaluator applies it with a
``strength`` (0 = unedited) as a context manager.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from harness.errors import ConfigError
from harness.interventions import Intervention
from harness.models import LoadedModel
from harness.records import EditRequest


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Which kinds of fitting the method supports: "edit" (one knowledge edit) and/or "behaviour".
    supports: ClassVar[frozenset[str]] = frozenset({"edit"})

    @dataclass
    class Params:
        pass

    def __init__(self, lm: LoadedModel, params: Mapping[str, Any] | None = None, seed: int = 0):
        self.lm = lm
        self.seed = seed
        self.params = parse_params(self.Params, params or {}, self.name)

    def fit_edit(self, request: EditRequest) -> Intervention:
        raise ConfigError(f"method '{self.name}' does not support knowledge edits")


def _convert(value: Any, typ: Any, key: str, method: str) -> Any:
    if isinstance(typ, str):  # postponed annotations
        typ = eval(typ, vars(typing))  # noqa: S307 - annotation strings of our own dataclasses
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
            return out
        if typing.get_origin(typ) in (tuple, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner, *_rest) = typing.get_args(typ) or (str,)
            return typing.get_origin(typ)(_convert(v, inner, key, method) for v in items)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"method '{method}': hyperparameter '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def parse_params(cls: type, given: Mapping[str, Any], method: str = "") -> Any:
    """Build the Params dataclass from user values (strings from the CLI are converted)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        have = ", ".join(fields) or "none"
        raise ConfigError(f"method '{method}' has no hyperparameter '{unknown[0]}' (has: {have})")
    kwargs = {k: _convert(v, fields[k].type, k, method) for k, v in given.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method '{method}': {e}") from None
