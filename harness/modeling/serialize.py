"""Fitted interventions to disk and back, exactly (safetensors + JSON, no pickle).

A sequential run stores every fitted edit, so a resumed run rebuilds the cumulative model from the
very factors an uninterrupted run applied instead of refitting them. Any intervention that is a
dataclass of tensors, numbers, strings, slices and (nested) lists, tuples, dicts or dataclasses of
those is stored: tensors go into one safetensors file (bit-exact), the structure into a JSON file
next to it. Fields declared with ``compare=False`` are runtime handles (e.g. the model a
:class:`~editbench.methods.steer2edit.Rank1Edits` is bound to) and are not stored; they come back
as their defaults. Classes are re-imported only from editbench itself or from the module of a
registered method plugin.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editbench.errors import DataError, writing

FORMAT = "editbench-intervention/1"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # own storage: views of one tensor (a Rank1Edits' v_hat) are stored apart
        return {"__tensor__": key}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        fields = {f.name: _encode(getattr(obj, f.name), tensors) for f in dataclasses.fields(obj)
                  if f.init and f.compare}
        return {"__class__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(obj, slice):
        return {"__slice__": [obj.start, obj.stop, obj.step]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x, tensors) for x in obj]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in an intervention file")


def _allowed(module: str) -> bool:
    if module == "editbench" or module.startswith("editbench."):
        return True
    from importlib.metadata import entry_points

    return any(ep.value.split(":")[0] == module for ep in entry_points(group="editbench.methods"))


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(x, tensors, where) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise DataError(f"{where}: tensor {obj['__tensor__']} missing from its safetensors file")
        return tensors[obj["__tensor__"]]
    if "__slice__" in obj:
        return slice(*obj["__slice__"])
    if "__tuple__" in obj:
        return tuple(_decode(x, tensors, where) for x in obj["__tuple__"])
    if "__dict__" in obj:
        return {_hashable(_decode(k, tensors, where)): _decode(v, tensors, where) for k, v in obj["__dict__"]}
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__class__" in obj:
        module, _, name = str(obj["__class__"]).partition(":")
        if not _allowed(module):
            raise DataError(f"{where}: refusing to load class {obj['__class__']} (not editbench's nor a registered "
                            "method plugin's)")
        try:
            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            raise DataError(f"{where}: class {obj['__class__']} not found") from None
        if not dataclasses.is_dataclass(cls):
            raise DataError(f"{where}: {obj['__class__']} is not a dataclass")
        return cls(**{k: _decode(v, tensors, where) for k, v in obj["fields"].items()})
    raise DataError(f"{where}: unexpected entry {sorted(obj)[:3]}")


def _hashable(x: Any) -> Any:
    return tuple(_hashable(v) for v in x) if isinstance(x, list) else x


def save_intervention(iv: Any, path: str | os.PathLike, meta: dict | None = None) -> None:
    """``PATH.safetensors`` + ``PATH.json`` (written last: a JSON file means a complete pair)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    state = {"format": FORMAT, "intervention": _encode(iv, tensors), "meta": meta or {}}
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for target, write in ((st, lambda t: save_file(tensors, str(t))),
                          (js, lambda t: t.write_text(json.dumps(state, allow_nan=False), encoding="utf-8"))):
        tmp = target.with_name(target.name + ".tmp")
        with writing(target):
            try:
                write(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except Exception:
                tmp.unlink(missing_ok=True)
                raise


def load_intervention(path: str | os.PathLike) -> tuple[Any, dict]:
    """(the intervention, its meta) from :func:`save_intervention`'s pair; one-line errors."""
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    try:
        state = json.loads(js.read_text(encoding="utf-8"))
        tensors = load_file(str(st))
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: stored edit not found") from None
    except Exception as e:  # noqa: BLE001 - JSON, decoding and safetensors' own error types alike
        raise DataError(f"{path}: unreadable stored edit ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{js}: not an editbench intervention file")
    return _decode(state["intervention"], tensors, str(js)), state.get("meta") or {}
