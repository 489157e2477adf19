"""The `headwater` command: parse, dispatch, and map errors to exit codes once.

Exit codes: 0 success, 1 an expected failure (validation errors, a refused plan, a git
problem), 2 usage errors (click) or `--detailed-exitcode` changes, 3 an unexpected failure,
130 interrupted.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from gettext import gettext as _

import click

from headwater import __version__, heap
from headwater.errors import HeadwaterError

# Each command: the module that defines it (in its ``COMMANDS``) and the first paragraph of its
# help, so `headwater --help` lists every command and `headwater validate` imports only the
# validate module: the daemon, the engine, pydantic and the rest load when a command needs them.
# (tests/test_perf_cli_lazy.py checks this table against the commands themselves.)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "apply": (
        "headwater.cli.sync",
        "Apply a commit to an instance, all or nothing, or apply a saved PLANFILE exactly.",
    ),
    "check": ("headwater.cli.review", "Validate HEAD for every instance and show what review needs."),
    "codeowners": (
        "headwater.cli.review",
        "Write CODEOWNERS (GitHub/GitLab) from the namespaces' owners, inherited downward.",
    ),
    "daemon": (
        "headwater.cli.daemon",
        "Mirror the repository and keep every instance equal to its branch.",
    ),
    "explain": (
        "headwater.cli.validate",
        "Show a namespace's effective config, where every value comes from, and its files.",
    ),
    "history": ("headwater.cli.sync", "The applies and rollbacks of an instance, newest first."),
    "init": (
        "headwater.cli.scaffold",
        "Create a repository skeleton: headwater.yaml, one tenant, one namespace, one flow.",
    ),
    "plan": (
        "headwater.cli.sync",
        "Show what applying a commit would change on an instance, drift included.",
    ),
    "promote": (
        "headwater.cli.review",
        "Promote what FROM proved to TO, by branch, with the plan TO would apply.",
    ),
    "rollback": ("headwater.cli.sync", "Re-apply an earlier applied revision at once (break-glass)."),
    "schema": ("headwater.cli.validate", "JSON schemas of the file formats."),
    "status": (
        "headwater.cli.sync",
        "Applied vs attempted revision, errors and drift of each instance.",
    ),
    "validate": (
        "headwater.cli.validate",
        "Validate the repository at REV for each instance, or flow files with --flows.",
    ),
}


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands, each imported with its module the first time it is looked up."""

    def __init__(self, table: dict[str, tuple[str, str]]) -> None:
        self._table = table
        self._loaded: dict[str, click.Command] = {}

    def summary(self, name: str) -> str | None:
        """The first paragraph of a command's help, without importing it (None if unknown)."""
        entry = self._table.get(name)
        return entry[1] if entry is not None and name not in self._loaded else None

    def __getitem__(self, name: str) -> click.Command:
        command = self._loaded.get(name)
        if command is None and name in self._table:
            module = importlib.import_module(self._table[name][0])
            for found in module.COMMANDS:
                if found.name is not None:
                    self._loaded.setdefault(found.name, found)
            command = self._loaded.get(name)
        if command is None:
            raise KeyError(name)
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        known = name in self._loaded or name in self._table
        self._loaded.pop(name, None)
        self._table = {k: v for k, v in self._table.items() if k != name}
        if not known:
            raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        yield from self._table
        yield from (name for name in self._loaded if name not in self._table)

    def __len__(self) -> int:
        return len(self._table) + sum(1 for name in self._loaded if name not in self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table or name in self._loaded


class LazyGroup(click.Group):
    """A group whose `--help` lists the commands from ``LAZY_COMMANDS`` without importing them."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = self.commands
        if not isinstance(commands, LazyCommands):  # pragma: no cover - always lazy here
            super().format_commands(ctx, formatter)
            return
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            summary = commands.summary(name)
            # A stand-in with the same first paragraph shortens its help exactly as the command.
            command = click.Command(name, help=summary) if summary is not None else self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section(_("Commands")):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])


@click.group(
    cls=LazyGroup,
    commands=LazyCommands(LAZY_COMMANDS),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="headwater")
@click.option("-v", "--verbose", count=True, help="More output; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Headwater: GitOps for Kestra-style orchestration.

    Validate a repository of tenants, namespaces and flows, explain every effective value,
    plan and apply it to instances, and promote changes between them.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet


GC_THRESHOLDS = (50_000, 20, 20)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error becomes one line plus a hint and an exit code."""
    # A large repository's model is millions of small objects built at once; with the
    # default thresholds the cyclic collector scans them over and over (35-45 % of priming
    # a 10k-flow instance). Collections stay frequent enough for a long-running daemon.
    gc.set_threshold(*GC_THRESHOLDS)
    if argv is not None:
        _run(argv)
        return
    # The process's own command line: it exits when the command is done, without freeing
    # what the command built (heap.end).
    heap.one_command()
    try:
        _run(sys.argv[1:])
    except SystemExit as exc:
        if exc.code is not None and not isinstance(exc.code, int):
            raise  # a message: the usual exit prints it
        heap.end(exc.code or 0)
    heap.end(0)


def _run(args: list[str]) -> None:
    verbose = any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in args)
    try:
        cli.main(args, prog_name="headwater", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except HeadwaterError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"unexpected error: {type(exc).__name__}: {exc}", err=True)
        click.echo(f"  hint: run with -v for the traceback; headwater {__version__}", err=True)
        sys.exit(3)


if __name__ == "__main__":  # pragma: no cover
    main()
