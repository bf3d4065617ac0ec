"""Activation hooks as context managers: capture or add vectors at module inputs/outputs.

All hooks are removed on exit, also when the body raises. Additions support one vector for the
whole batch ``[d]``, one per row ``[B, d]`` (many steered cases in one batch), or one per row and
position ``[B, T, d]``; a boolean ``positions`` mask ``[B, T]`` restricts where they land.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Hashable, Iterator, Mapping

import torch
from torch import nn


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


@contextmanager
def hooked(module: nn.Module, hook, kind: str = "forward") -> Iterator[None]:
    """Register a forward (``kind='forward'``) or pre-forward hook for the duration of the block."""
    if kind == "forward":
        handle = module.register_forward_hook(hook)
    elif kind == "pre":
        handle = module.register_forward_pre_hook(hook)
    elif kind == "pre_kwargs":
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        raise ValueError(f"unknown hook kind {kind!r}")
    try:
        yield
    finally:
        handle.remove()


class Capture:
    """Records tensors seen at hooked modules; ``store[key]`` is a list, one entry per forward call."""

    def __init__(self):
        self.store: dict[Hashable, list[torch.Tensor]] = {}

    def last(self, key: Hashable) -> torch.Tensor:
        return self.store[key][-1]


@contextmanager
def capture(modules: Mapping[Hashable, nn.Module], what: str = "output", detach: bool = True) -> Iterator[Capture]:
    """Capture each module's output (``what='output'``) or first positional input (``'input'``)."""
    cap = Capture()

    def make(key):
        def out_hook(_m, _inp, out):
            t = _first(out)
            cap.store.setdefault(key, []).append(t.detach() if detach else t)

        def in_hook(_m, inp, kwargs):
            t = inp[0] if inp else kwargs["hidden_states"]  # decoder layers may get it by keyword
            cap.store.setdefault(key, []).append(t.detach() if detach else t)

        return out_hook if what == "output" else in_hook

    if what not in ("output", "input"):
        raise ValueError(f"what must be 'output' or 'input', got {what!r}")
    with ExitStack() as stack:
        for key, mod in modules.items():
            stack.enter_context(hooked(mod, make(key), "forward" if what == "output" else "pre_kwargs"))
        yield cap


def _broadcast_addend(x: torch.Tensor, vector: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Return the ``[B, T, d]`` tensor to add to activation ``x``."""
    B, T, _ = x.shape
    v = vector.to(device=x.device, dtype=x.dtype)
    if v.dim() == 1:
        v = v.view(1, 1, -1)
    elif v.dim() == 2:
        if v.shape[0] != B:
            raise ValueError(f"per-row vectors have {v.shape[0]} rows, batch has {B}")
        v = v.unsqueeze(1)
    elif v.dim() == 3:
        if v.shape[0] != B or v.shape[1] != T:
            raise ValueError(f"per-position vectors shaped {tuple(v.shape)} do not match activation {tuple(x.shape)}")
    else:
        raise ValueError(f"vector must be 1-, 2- or 3-D, got shape {tuple(v.shape)}")
    if positions is not None:
        if positions.shape != (B, T):
            # During cached generation T shrinks to the new tokens; callers steer the prompt only.
            if positions.shape[0] == B and positions.shape[1] > T:
                return torch.zeros_like(x)
            raise ValueError(f"positions mask {tuple(positions.shape)} does not match activation {(B, T)}")
        v = v * positions.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
    return v  # broadcasts against x


@contextmanager
def add_to_output(module: nn.Module, vector: torch.Tensor, positions: torch.Tensor | None = None,
                  scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * vector`` to ``module``'s output (first element if it returns a tuple)."""

    def hook(_m, _inp, out):
        x = _first(out)
        return _replace_first(out, x + scale * _broadcast_addend(x, vector, positions))

    with hooked(module, hook, "forward"):
        yield


@contextmanager
def add_to_input(module: nn.Module, vector: torch.Tensor, positions: torch.Tensor | None = None,
                 scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * vector`` to ``module``'s first positional input."""

    def hook(_m, inp):
        x = inp[0]
        return (x + scale * _broadcast_addend(x, vector, positions), *inp[1:])

    with hooked(module, hook, "pre"):
        yield
