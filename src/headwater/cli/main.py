"""The `headwater` command: parse, dispatch, and map errors to exit codes once.

Exit codes: 0 success, 1 an expected failure (validation errors, a refused plan, a git
problem), 2 usage errors (click) or `--detailed-exitcode` changes, 3 an unexpected failure,
130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from headwater import __version__
from headwater.errors import HeadwaterError


class HeadwaterGroup(click.Group):
    def main(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:3]) or "-v" in sys.argv
        try:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[arg-type]
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except HeadwaterError as exc:
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            if verbose:
                traceback.print_exc()
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"unexpected error: {type(exc).__name__}: {exc}", err=True)
            click.echo(f"  hint: run with -v for details; headwater {__version__}", err=True)
            sys.exit(3)


@click.group(cls=HeadwaterGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    from headwater.cli import validate

    for command in validate.COMMANDS:
        cli.add_command(command)
    try:
        from headwater.cli import sync
    except ImportError:  # pragma: no cover - during partial builds
        return
    for command in sync.COMMANDS:
        cli.add_command(command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
