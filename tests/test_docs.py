"""The documents a new user reads first stay true to the code: every module has its line in
docs/architecture.md, every command the README shows parses, and every option the contract
names exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from edge_recorder.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edge_recorder"
EXAMPLE_ID = "20261126T100000123Z-3f9a1c07b2"


def _modules() -> list[str]:
    """Every module's path inside the package, as architecture.md names it; the emulators
    share the one line of their folder, ``sensors/emulation/``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" or rel.startswith("sensors/emulation/"):
            continue
        found.append(rel)
    return found


def test_every_module_has_its_line_in_the_architecture_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)`", text, flags=re.MULTILINE))
    assert "sensors/emulation/" in rows
    assert [m for m in _modules() if m not in rows] == []
    assert [r for r in rows if r.endswith(".py") and not (PACKAGE / r).is_file()] == []


def _readme_commands() -> list[str]:
    """Every ``edge-recorder …`` line of the README's shell blocks, continuations joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("edge-recorder "):
                commands.append(line)
    return commands


def _argv(line: str) -> list[str]:
    line = line.split("  #")[0]  # the comment after a command
    line = line.replace("<id>", EXAMPLE_ID).replace("<device>", "demo-pi")
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # [--label walking]: shown optional, try it
    return shlex.split(line)[1:]


def test_the_readme_shows_commands_and_each_one_parses():
    commands = _readme_commands()
    assert len(commands) >= 15, commands
    parser = build_parser()
    failed = []
    for line in commands:
        try:
            parser.parse_args(_argv(line))
        except SystemExit:
            failed.append(line)
    assert failed == []


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _contract_usages() -> list[str]:
    """The usage cell of each row of the contract's §1 table (``\\|`` is a ``|`` in a cell)."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text.split("## 1. Command line", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(edge-recorder [^|]*?(?:\\\|[^|]*?)*)` \|", section,
                      flags=re.MULTILINE)


@pytest.mark.parametrize("usage", _contract_usages())
def test_every_option_the_contract_names_exists(usage):
    words = usage.split()[1:]
    parser = build_parser()
    names = []
    for word in words:  # the command and its action, e.g. sessions list
        subs = _subparsers(parser)
        if word not in subs:
            break
        parser = subs[word]
        names.append(word)
    assert names, f"{usage}: no such command"
    known = {s for a in parser._actions for s in a.option_strings}
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", usage))
    assert named - known == set(), f"{' '.join(names)}: the contract names {named - known}"


def test_the_contract_lists_every_command():
    listed = {u.split()[1] for u in _contract_usages()}
    assert set(_subparsers(build_parser())) == listed
