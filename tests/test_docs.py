"""Every command is documented: it has help text and the README names it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from headwater.cli.main import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{full} "))
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli), ids=lambda v: v if isinstance(v, str) else "")
def test_command_has_help_and_is_in_readme(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`headwater {name}` has no help text"
    assert f"headwater {name}" in README, f"README.md does not mention `headwater {name}`"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"option {param.opts} of `headwater {name}` has no help text"


def test_readme_first_screen_shows_demo_and_test() -> None:
    first = "\n".join(README.splitlines()[:60])
    assert "make demo" in first and "make test" in first
