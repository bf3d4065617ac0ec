"""Inspection helpers of the conformance suite: snapshots of a model's parameters, buffers, flags
and hooks (to prove an intervention left nothing behind), scoring under one or many interventions
on identical batches, and fingerprints of fitted interventions (to compare two fits exactly)."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Mapping, Sequence

import torch
from torch import nn

from editbench.modeling.interventions import Intervention
from editbench.modeling.loading import LoadedModel
from editbench.modeling.scoring import RowsContext, ScoreRequest, TargetScore, score_targets

_HOOK_DICTS = (("forward hook", "_forward_hooks"), ("forward pre-hook", "_forward_pre_hooks"),
               ("backward hook", "_backward_hooks"), ("backward pre-hook", "_backward_pre_hooks"))


def _hooks(model: nn.Module) -> set[tuple[str, str, int]]:
    out = set()
    for name, mod in model.named_modules(remove_duplicate=False):
        for kind, attr in _HOOK_DICTS:
            out.update((name or "<model>", kind, hid) for hid in getattr(mod, attr, {}) or {})
    glob = torch.nn.modules.module
    for kind, attr in (("global forward hook", "_global_forward_hooks"),
                       ("global forward pre-hook", "_global_forward_pre_hooks"),
                       ("global backward hook", "_global_backward_hooks")):
        out.update(("<all modules>", kind, hid) for hid in getattr(glob, attr, {}) or {})
    return out


@dataclass
class _Snapshot:
    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    hooks: set[tuple[str, str, int]]


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # state_dict misses non-persistent buffers (e.g. rotary inv_freq), which a method could also touch.
    out = dict(model.state_dict())
    for name, buf in model.named_buffers(remove_duplicate=False):
        out.setdefault(name, buf)
    return out


def snapshot(model: nn.Module) -> _Snapshot:
    """A bit-exact copy of everything a method must leave as it found it."""
    return _Snapshot(tensors={k: v.detach().clone() for k, v in _state_tensors(model).items()},
                     requires_grad={k: p.requires_grad for k, p in model.named_parameters(remove_duplicate=False)},
                     training={k: m.training for k, m in model.named_modules(remove_duplicate=False)},
                     hooks=_hooks(model))


def state_problems(model: nn.Module, snap: _Snapshot) -> list[str]:
    """Human-readable differences from ``snap`` (empty when the model is exactly as it was)."""
    probs: list[str] = []
    now = _state_tensors(model)
    for name in sorted(set(snap.tensors) ^ set(now)):
        probs.append(f"tensor {name} {'added' if name in now else 'removed'}")
    for name in sorted(set(snap.tensors) & set(now)):
        a, b = snap.tensors[name], now[name].detach()
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            probs.append(f"{name} changed dtype/shape/device to {b.dtype}/{tuple(b.shape)}/{b.device}")
        elif not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else float("nan")
            probs.append(f"{name} not restored (max abs diff {diff:.3g})")
    for name, rg in snap.requires_grad.items():
        p = dict(model.named_parameters(remove_duplicate=False)).get(name)
        if p is not None and p.requires_grad != rg:
            probs.append(f"{name}.requires_grad changed to {p.requires_grad}")
    mods = dict(model.named_modules(remove_duplicate=False))
    changed = [k or "<model>" for k, t in snap.training.items() if k in mods and mods[k].training != t]
    if changed:
        probs.append(f"training flag changed on {changed[0]}" + (f" and {len(changed) - 1} more" if len(changed) > 1 else ""))
    for mod, kind, _hid in sorted(_hooks(model) - snap.hooks):
        probs.append(f"{kind} left on {mod}")
    return probs


def _summarise(problems: Sequence[str], limit: int = 2) -> str:
    more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Scoring exactly as the evaluator's post-edit path does
# ---------------------------------------------------------------------------------------------
class _Injected(Exception):
    """Raised by the suite inside an intervention's context to test restore-on-error."""


@contextmanager
def _raise_inside(cm: ContextManager) -> Iterator[None]:
    with cm:
        yield
        raise _Injected("injected by the conformance suite")


def score_under(lm: LoadedModel, ivs: Sequence[Intervention], strength: float, requests: Sequence[Sequence[ScoreRequest]],
                batch_size: int = 16, edited: bool = True, inject: bool = False) -> list[list[TargetScore]]:
    """Score ``requests[c]`` under ``ivs[c]`` as the evaluator does: row-batchable interventions of
    one class share batches (one row per request, each row its own case's intervention), others are
    applied one case at a time. ``edited=False`` scores the very same batches with no intervention,
    which makes bit-exact comparisons meaningful. ``inject`` raises inside each context."""
    groups: dict[Any, list[int]] = {}
    for c, iv in enumerate(ivs):
        groups.setdefault(type(iv) if iv.row_batchable else ("case", c), []).append(c)
    out: list[list[TargetScore]] = [[] for _ in ivs]
    wrap = _raise_inside if inject else (lambda cm: cm)
    for key, cs in groups.items():
        flat: list[ScoreRequest] = []
        owner: list[int] = []
        for c in cs:
            flat += requests[c]
            owner += [c] * len(requests[c])
        if not edited:
            res = score_targets(lm, flat, batch_size)
        elif isinstance(key, type):
            rows = [(ivs[c], strength) for c in owner]
            res = score_targets(lm, flat, batch_size,
                                batch_context=RowsContext(lambda b, k=key: wrap(k.apply_rows(lm, [rows[i] for i in b.indices], b)),
                                                          owner))
        else:
            with wrap(ivs[cs[0]].apply(lm, strength)):
                res = score_targets(lm, flat, batch_size)
        for c, s in zip(owner, res):
            out[c].append(s)
    return out


def score_uniform(lm: LoadedModel, iv: Intervention, strength: float, requests: Sequence[ScoreRequest],
                  batch_size: int = 16, inject: bool = False) -> list[TargetScore]:
    """Score with ``iv.uniform`` (one intervention on every row: how behaviour and utility
    benchmarks apply a fit), where the Intervention API has it."""
    outer, per_batch = iv.uniform(lm, strength)
    wrap = _raise_inside if inject else (lambda cm: cm)
    if per_batch is None:
        with wrap(outer):
            return score_targets(lm, requests, batch_size)
    with outer:
        return score_targets(lm, requests, batch_size, batch_context=RowsContext(lambda b: wrap(per_batch(b))))


def _max_diff(a: Sequence[Sequence[TargetScore]], b: Sequence[Sequence[TargetScore]]) -> tuple[float, bool, bool]:
    """(max abs diff of token NLLs, bit-equal, same argmax tokens)."""
    worst, exact, same_argmax = 0.0, True, True
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            for u, v in zip(x.token_nll, y.token_nll):
                if u != v and not (math.isnan(u) and math.isnan(v)):
                    exact = False
                    worst = max(worst, abs(u - v)) if math.isfinite(u - v) else math.inf
            same_argmax &= x.argmax_ids == y.argmax_ids
    return worst, exact, same_argmax


def fingerprint(obj: Any, path: str = "iv", depth: int = 0, out: dict | None = None) -> dict[str, Any]:
    """Every tensor and scalar reachable from an intervention (dataclass fields, lists, dicts,
    attributes), by path: two fits are identical when their fingerprints are."""
    out = {} if out is None else out
    if depth > 8 or isinstance(obj, (nn.Module, LoadedModel)) or callable(obj) and not isinstance(obj, torch.Tensor):
        return out
    if isinstance(obj, torch.Tensor):
        out[path] = obj.detach()
    elif isinstance(obj, (str, int, float, bool, type(None), slice)):
        out[path] = repr(obj)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            fingerprint(v, f"{path}[{i}]", depth + 1, out)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            fingerprint(obj[k], f"{path}[{k!r}]", depth + 1, out)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            fingerprint(getattr(obj, f.name), f"{path}.{f.name}", depth + 1, out)
    elif hasattr(obj, "__dict__"):
        for k, v in sorted(vars(obj).items()):
            fingerprint(v, f"{path}.{k}", depth + 1, out)
    return out


def fingerprint_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """None when identical, else the first difference."""
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            return f"{k} present in only one fit"
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return f"{k} differs in type"
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.cpu(), y.cpu()):
                return f"{k} differs"
        elif x != y:
            return f"{k} differs ({x} vs {y})"
    return None


# ---------------------------------------------------------------------------------------------
# Watching the evaluator's fit calls
# ---------------------------------------------------------------------------------------------
