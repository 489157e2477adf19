"""The CLI imports a command's module only when that command runs (or is looked up)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import click
from click.testing import CliRunner

from headwater.cli.main import LAZY_COMMANDS, cli

MODULES = sorted({module for module, _summary in LAZY_COMMANDS.values()})


def _defined() -> dict[str, tuple[str, click.Command]]:
    found: dict[str, tuple[str, click.Command]] = {}
    for name in MODULES:
        for command in importlib.import_module(name).COMMANDS:
            assert command.name not in found, f"{command.name} is defined twice"
            found[command.name] = (name, command)
    return found


def test_table_names_every_command_with_its_module_and_summary() -> None:
    defined = _defined()
    assert set(LAZY_COMMANDS) == set(defined)
    for name, (module, summary) in LAZY_COMMANDS.items():
        where, command = defined[name]
        assert module == where, name
        assert summary == inspect.cleandoc(command.help or "").partition("\n\n")[0], name
        assert command.short_help is None and not command.hidden and not command.deprecated


def test_help_lists_every_command_as_the_commands_themselves_would() -> None:
    lazy = CliRunner().invoke(cli, ["--help"], terminal_width=100)
    assert lazy.exit_code == 0, lazy.output
    eager = click.Group(
        name=cli.name,
        params=cli.params,
        callback=cli.callback,
        help=cli.help,
        context_settings=cli.context_settings,
        commands=[command for _module, command in _defined().values()],
    )
    expected = CliRunner().invoke(eager, ["--help"], terminal_width=100)
    assert expected.exit_code == 0, expected.output
    assert lazy.output == expected.output
    for name in LAZY_COMMANDS:
        assert f"\n  {name} " in lazy.output


def _imported_by(*args: str) -> set[str]:
    code = (
        "import sys\n"
        "from headwater.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stderr.split())


def test_help_and_validate_import_no_daemon_engine_or_pydantic() -> None:
    heavy = {"headwater.daemon", "headwater.engine", "headwater.cli.review", "pydantic"}
    assert not _imported_by("--help") & (heavy | {"headwater.snapshot", "jsonschema", "git"})
    assert not _imported_by("validate", "--help") & heavy
    planning = _imported_by("plan", "--help")
    assert "headwater.engine" in planning
    assert not planning & {"headwater.daemon", "headwater.cli.review", "headwater.cli.daemon"}
