"""`headwater daemon`: keep every instance equal to its branch, unattended."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import click

from headwater import heap
from headwater.daemon import config, logs
from headwater.daemon.loop import Daemon


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(config.OPTIONS):
        kwargs: dict[str, Any] = {
            "envvar": option.env,
            "default": None,
            "help": f"{option.help} [{option.key}; {option.env}]",
        }
        if option.kind == "int":
            kwargs["type"] = int
        elif option.kind == "choice":
            kwargs["type"] = click.Choice(["text", "json"])
        elif option.kind == "bool":
            kwargs["is_flag"] = True
        func = click.option(option.flag, option.dest, **kwargs)(func)
    return func


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="HEADWATER_CONFIG",
    help="daemon.yaml (see docs/daemon.md). [HEADWATER_CONFIG]",
)
@click.option(
    "--instance",
    "instances",
    multiple=True,
    envvar="HEADWATER_INSTANCES",
    help="An instance to sync, NAME or NAME=PATH (its local target); repeatable. "
    "Default: every instance of headwater.yaml. [instances; HEADWATER_INSTANCES]",
)
@click.option(
    "--self-heal",
    "self_heal",
    multiple=True,
    envvar="HEADWATER_SELF_HEAL",
    help="Restore drift of this instance; repeatable. [instances.NAME.selfHeal; HEADWATER_SELF_HEAL]",
)
@_options
@click.pass_context
def daemon(
    ctx: click.Context,
    /,
    config_path: str | None,
    instances: tuple[str, ...],
    self_heal: tuple[str, ...],
    **values: Any,
) -> None:
    """Mirror the repository and keep every instance equal to its branch.

    New commits arrive by polling, push webhooks (GitHub, GitLab, Gitea/Forgejo, generic
    HMAC), a filesystem watch of a local repository, or SIGHUP. Each is validated, planned
    and applied all or nothing; an invalid commit is recorded and never applied. Serves
    /healthz, /readyz, /metrics, /status and /webhook. SIGTERM finishes the apply in flight,
    then exits 0.
    """
    conf = config.load(config_path, config.overrides(values, instances, self_heal))
    obj = ctx.find_root().obj or {}
    level = (
        logging.WARNING
        if obj.get("quiet")
        else logging.DEBUG
        if obj.get("verbose")
        else logging.INFO
    )
    secrets_env = [
        conf.repository.auth.token_env,
        conf.webhook.secret_env,
        conf.webhook.status_token_env,
    ]

    logger = logs.setup(conf.log_format, level, [os.environ.get(v, "") for v in secrets_env if v])
    heap.long_run()
    code = Daemon(conf, logger).run()
    ctx.exit(code)


COMMANDS = [daemon]
