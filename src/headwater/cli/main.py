"""The `headwater` command: parse, dispatch, and map errors to exit codes once.

Exit codes: 0 success, 1 an expected failure (validation errors, a refused plan, a git
problem), 2 usage errors (click) or `--detailed-exitcode` changes, 3 an unexpected failure,
130 interrupted.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback

import click

from headwater import __version__
from headwater.errors import HeadwaterError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    from headwater.cli import daemon, review, scaffold, sync, validate

    for module in (validate, sync, review, daemon, scaffold):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


GC_THRESHOLDS = (50_000, 20, 20)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error becomes one line plus a hint and an exit code."""
    # A large repository's model is millions of small objects built at once; with the
    # default thresholds the cyclic collector scans them over and over (35-45 % of priming
    # a 10k-flow instance). Collections stay frequent enough for a long-running daemon.
    gc.set_threshold(*GC_THRESHOLDS)
    args = sys.argv[1:] if argv is None else argv
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
