"""Daemon settings from three places: daemon.yaml, then ``HEADWATER_*`` variables, then flags.

Each setting of ``daemon.yaml`` has a flag and a variable named after its path
(``webhook.listen`` → ``--listen`` / ``HEADWATER_WEBHOOK_LISTEN``); ``OPTIONS`` is the table
the CLI is built from and docs/daemon.md documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from headwater import settings
from headwater.errors import ConfigError


@dataclass(frozen=True)
class Option:
    flag: str  # e.g. "--listen"
    key: str  # the dotted path in daemon.yaml, e.g. "webhook.listen"
    help: str
    kind: str = "str"  # str | int | bool | choice

    @property
    def env(self) -> str:
        return "HEADWATER_" + self.key.replace(".", "_").upper()

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")


OPTIONS: tuple[Option, ...] = (
    Option("--state-dir", "state_dir", "State directory: state store, mirror, caches."),
    Option(
        "--repository",
        "repository.url",
        "The GitOps repository: https://, ssh://, git://, file:// or a path.",
    ),
    Option(
        "--token-env",
        "repository.auth.token_env",
        "Variable holding the https token (never the token itself).",
    ),
    Option(
        "--username",
        "repository.auth.username",
        "User name sent with the token (default x-access-token).",
    ),
    Option(
        "--config-branch",
        "repository.config_branch",
        "Branch whose headwater.yaml maps instances to branches (default: the remote's HEAD).",
    ),
    Option(
        "--watch/--no-watch",
        "repository.watch",
        "Watch a local-path repository for commits.",
        "bool",
    ),
    Option(
        "--git-timeout",
        "repository.timeout",
        "Time limit of one git contact with the remote (e.g. 2m).",
    ),
    Option("--secrets-type", "secrets.type", "Secret provider: directory, env or none."),
    Option("--secrets-path", "secrets.path", "Root of the directory secret provider."),
    Option("--secrets-prefix", "secrets.prefix", "Variable prefix of the env secret provider."),
    Option(
        "--poll-interval", "poll.interval", "Poll the remote this often (e.g. 60s; 0 disables)."
    ),
    Option("--poll-jitter", "poll.jitter", "Random spread of the poll interval (e.g. 10%)."),
    Option("--listen", "webhook.listen", "HTTP address for webhooks, probes, metrics and status."),
    Option("--webhook-secret-env", "webhook.secret_env", "Variable holding the webhook secret."),
    Option(
        "--max-body-bytes",
        "webhook.max_body_bytes",
        "Largest webhook body accepted (413 above).",
        "int",
    ),
    Option(
        "--status-token-env",
        "webhook.status_token_env",
        "Variable holding a bearer token for /status.",
    ),
    Option(
        "--drift-interval",
        "drift_interval",
        "Check the instances for drift this often (0 disables).",
    ),
    Option(
        "--min-interval",
        "min_interval",
        "Least time between two syncs caused by triggers (bursts coalesce).",
    ),
    Option("--backoff-initial", "backoff.initial", "First retry delay after a transient failure."),
    Option("--backoff-max", "backoff.max", "Longest retry delay."),
    Option(
        "--log-format",
        "log_format",
        "Log lines for people (text) or one JSON object per line (json).",
        "choice",
    ),
)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def overrides(
    values: dict[str, Any], instances: tuple[str, ...] = (), self_heal: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The settings tree the given flag values (by ``Option.dest``) describe; None is unset.

    ``instances``: ``NAME`` or ``NAME=PATH`` (the local target's directory);
    ``self_heal``: instance names that restore drift.
    """
    tree: dict[str, Any] = {}
    for option in OPTIONS:
        value = values.get(option.dest)
        if value is not None:
            _set(tree, option.key, value)
    for item in instances:
        for part in item.replace(",", " ").split():
            name, sep, path = part.partition("=")
            entry = tree.setdefault("instances", {}).setdefault(name, {})
            if sep:
                entry.setdefault("target", {})["path"] = path
    for item in self_heal:
        for name in item.replace(",", " ").split():
            tree.setdefault("instances", {}).setdefault(name, {})["selfHeal"] = True
    return tree


def load(config: str | None, extra: dict[str, Any]) -> settings.Settings:
    """daemon.yaml (when given) with ``extra`` (from variables and flags) laid over it."""
    base = settings.load(config)
    merged = _merge(base.model_dump(), extra)
    try:
        return settings.Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{where}: {first['msg']}",
            hint="check the flag, the HEADWATER_* variable or daemon.yaml; see docs/daemon.md",
        ) from None
