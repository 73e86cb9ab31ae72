"""The command list of ``labvault --help`` (and of every group) shows each command's first
help paragraph: one line each, so that no description is cut mid-sentence in the table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from labvault.cli import app


def _commands(command: Any, path: str = "labvault") -> Iterator[tuple[str, str]]:
    """Every command and group under ``command`` (Typer's own click), with its help text."""
    yield path, command.help or ""
    if hasattr(command, "commands"):
        for name, child in command.commands.items():
            yield from _commands(child, f"{path} {name}")


def test_every_command_has_a_one_line_summary() -> None:
    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) > 40  # the walk reached the nested groups
    undocumented = [path for path, text in commands if not text.strip()]
    assert undocumented == []
    wrapped = [path for path, text in commands if "\n" in text.strip().split("\n\n", 1)[0].strip()]
    assert wrapped == []
