"""The documentation is complete and connected: every command and flag of ``editbench --help`` is
documented in the README or docs/, and every relative link between the pages resolves."""

import argparse
import re
from pathlib import Path

import pytest

from editbench.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _commands() -> dict[str, list[str]]:
    """{subcommand: its long flags} of the CLI."""
    out = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sorted({o for a in sub._actions for o in a.option_strings
                                    if o.startswith("--") and o != "--help"})
    return out


def test_every_command_and_flag_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    missing = []
    for cmd, flags in _commands().items():
        if not re.search(rf"editbench {re.escape(cmd)}\b", text):
            missing.append(f"editbench {cmd}")
        missing += [f"editbench {cmd} {f}" for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", text)]
    assert not missing, "undocumented: " + ", ".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail into docs/"
    linked = set(LINK.findall("\n".join(lines)))
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"
