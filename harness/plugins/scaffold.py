"""``editbench new-method NAME``: scaffold an installable method-plugin package.

The package registers its method through the ``editbench.methods`` entry point (so
``editbench run --method NAME`` finds it once installed), ships a small but real method as the
starting point, and a pytest file that runs the conformance suite on it, so a plugin author starts
from something that passes ``editbench check-method NAME`` and can see when a change breaks it.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path
from typing import Any

from editbench.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 40

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "editbench-__NAME__"
version = "0.1.0"
description = "__CLASS__: a method plugin for editbench"
requires-python = ">=3.10"
dependencies = ["editbench"]

# This is what makes `editbench run --method __NAME__` find the class once the package is installed.
[project.entry-points."editbench.methods"]
__NAME__ = "__PKG__.method:__CLASS__"

[tool.setuptools]
packages = ["__PKG__"]
'''

_README = '''\
# editbench-__NAME__

An editbench method plugin, scaffolded by `editbench new-method __NAME__`.

```bash
pip install -e .                          # offline: pip install --no-deps --no-build-isolation -e .
editbench methods                         # lists __NAME__
editbench check-method __NAME__           # conformance suite (seconds, tiny random model)
python -m pytest tests                    # the same, from pytest
editbench run --method __NAME__ --param scale=2 --strengths 0.5,1,2 --limit 20
```

The method lives in `__PKG__/method.py`; see editbench's `docs/plugins.md` for the interface.
'''

_INIT = '''\
"""editbench method plugin __NAME__ (entry point: __PKG__.method:__CLASS__)."""

from .method import __CLASS__

__all__ = ["__CLASS__"]
'''

_METHOD = '''\
"""__CLASS__: single-layer residual steering from the edit probe (a template: replace it with your method).

Fitting one knowledge edit uses only the :class:`~editbench.requests.EditRequest`: the rewrite prompt
completed with ``" " + target_new`` (positive) and with ``" " + target_true`` (negative). The
direction ``r`` is the difference of the residual stream after decoder layer ``layer``, averaged
over the target tokens (``window="response"``: with a shared prompt, the positions *predicting* the
target would coincide and give ``r = 0``). The edit adds ``scale * strength * r`` to that residual
stream at every position. It changes no weights, so the evaluator can batch many cases' edits
(one row each).

A weight editor would instead return
``WeightIntervention([ColumnDelta(layer, "mlp", slice(None), delta)])`` (see ``editbench.modeling.weights``):
the evaluator applies it in place, scaled by strength, and restores the weights bit-exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from editbench import (ActivationIntervention, ConfigError, EditRequest, Method, ProbeExample, SteeringVector,
                       edit_probe_pair, extract_directions)


class __CLASS__(Method):
    name = "__NAME__"  # must equal the entry-point name in pyproject.toml
    description = "single-layer residual steering from the edit probe (template method)"
    supports = frozenset({"edit", "behaviour"})

    @dataclass
    class Params:
        """Hyperparameters (``--param layer=1 --param scale=2``; CLI strings are converted to these
        types). Validate here and raise ConfigError: the CLI prints it as one line, exit 2."""

        layer: int | None = None  # decoder layer whose output is steered; None: the middle one
        scale: float = 1.0  # multiplies the direction; the evaluator's strength multiplies again

        def __post_init__(self):
            if not math.isfinite(self.scale):
                raise ConfigError(f"__NAME__: scale must be a finite number, got {self.scale}")

    def __init__(self, lm, params=None, seed: int = 0):
        super().__init__(lm, params, seed)  # parses and validates Params
        n = lm.adapter.n_layers
        self.layer = n // 2 if self.params.layer is None else self.params.layer
        if not 0 <= self.layer < n:  # checks that depend on the model belong here
            raise ConfigError(f"__NAME__: layer must be in [0, {n - 1}] for this model, got {self.layer}")

    def fit_edit(self, request: EditRequest) -> ActivationIntervention:
        pos, neg = edit_probe_pair(request, self.lm.tokenizer)
        d = extract_directions(self.lm, [pos], [neg], batch_size=2, window="response")
        return self._steer(d.resid[self.layer])

    def fit_behaviour(self, positives: Sequence[ProbeExample], negatives: Sequence[ProbeExample],
                      window: str = "predict") -> ActivationIntervention:
        """Behaviour probes (many prompts with wanted / unwanted responses), the paper-style window."""
        d = extract_directions(self.lm, positives, negatives, window=window)  # type: ignore[arg-type]
        return self._steer(d.resid[self.layer])

    def _steer(self, r: torch.Tensor) -> ActivationIntervention:
        v = (self.params.scale * r).to(self.lm.dtype)
        return ActivationIntervention([SteeringVector(self.layer, "resid", v, positions="all")])
'''

_TEST = '''\
"""editbench's conformance suite on this plugin (the package must be installed: pip install -e .)."""

from editbench import assert_conforms


def test_conforms_with_default_params():
    assert_conforms("__NAME__")


def test_conforms_on_another_architecture_and_params():
    assert_conforms("__NAME__", model="tiny-gpt2", params={"layer": "0", "scale": "2"})
'''


def names_for(name: str) -> dict[str, str]:
    """Distribution, import package and class names derived from a method name."""
    parts = re.split(r"[-_]", name)
    return {"__NAME__": name, "__PKG__": "editbench_" + "_".join(parts),
            "__CLASS__": "".join(p[:1].upper() + p[1:] for p in parts)}


def validate_name(name: str) -> None:
    # fullmatch: re.match with "$" would accept a trailing newline
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(f"invalid method name {name!r}: use lowercase letters, digits and single '-' or '_' "
                          f"between them, starting with a letter (at most {MAX_NAME} characters)")
    derived = names_for(name)
    for what in ("__PKG__", "__CLASS__"):  # the generated code must compile: no keywords ("none" -> None)
        ident = derived[what]
        if not ident.isidentifier() or keyword.iskeyword(ident) or keyword.iskeyword(name.replace("-", "_")):
            raise ConfigError(f"invalid method name {name!r}: it gives the Python name {ident!r}, "
                              "a keyword; choose another name")
    from editbench.plugins import registry

    if name in registry.names("method"):
        raise ConfigError(f"a method named '{name}' is already registered (see `editbench methods`); choose another name")


def scaffold(name: str, directory: str | Path | None = None) -> Path:
    """Write the plugin package for ``name`` into ``directory`` (default ``./editbench-NAME``),
    which must not exist yet. Returns the package root."""
    validate_name(name)
    root = Path(directory) if directory is not None else Path.cwd() / f"editbench-{name}"
    if root.exists():
        raise ConfigError(f"{root} already exists; choose another --dir or remove it")
    subs = names_for(name)

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    files = {"pyproject.toml": _PYPROJECT, "README.md": _README, f"{subs['__PKG__']}/__init__.py": _INIT,
             f"{subs['__PKG__']}/method.py": _METHOD, "tests/test_conformance.py": _TEST}
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fill(text))
    except OSError as e:
        raise ConfigError(f"cannot write {root}: {e.strerror or e}") from None
    return root


def _cmd_new_method(a: argparse.Namespace) -> int:
    root = scaffold(a.name, a.dir)
    subs = names_for(a.name)
    print(f"created {root}: package {subs['__PKG__']}, class {subs['__CLASS__']} "
          f"(entry point editbench.methods:{a.name})")
    print("next steps:")
    print(f"  pip install -e {root}    # offline: add --no-deps --no-build-isolation")
    print(f"  editbench check-method {a.name}")
    print(f"  python -m pytest {root / 'tests'}")
    return 0


def _cmd_check_method(a: argparse.Namespace) -> int:
    from editbench.plugins.kit_cli import cmd_check_method  # imported on use: it pulls in the evaluator

    return cmd_check_method(a)


def add_subcommands(sub: Any) -> None:
    """Register the plugin-kit subcommands (``check-method``, ``new-method``) on the CLI's subparsers.
    Lives in this light module so that building the parser does not import the conformance suite."""
    from editbench.modeling.loading import TINY_MODELS

    c = sub.add_parser("check-method", help="run the plugin conformance suite on a method")
    c.add_argument("name", help="registered method name (see `editbench methods`)")
    c.add_argument("--model", default=None,
                   help=f"tiny random model to check on: {', '.join(TINY_MODELS)} (default tiny-llama)")
    c.add_argument("--param", action="append", metavar="KEY=VALUE", help="method hyperparameter (repeatable)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_check_method)

    n = sub.add_parser("new-method", help="scaffold an installable method-plugin package")
    n.add_argument("name", help="method name (entry-point name), e.g. my-method")
    n.add_argument("--dir", default=None, help="directory to create (default ./editbench-NAME; must not exist)")
    n.set_defaults(func=_cmd_new_method)
