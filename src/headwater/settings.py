"""The operator's settings (`daemon.yaml`, flags, `HEADWATER_*` variables): where instances live.

The repository says what should exist; these settings say where. Without a config file every
instance gets a local target under ``<state_dir>/instances/<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from headwater import yamlio
from headwater.errors import ConfigError

DEFAULT_STATE_DIR = ".headwater"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetSettings(_Model):
    type: Literal["local"] = "local"
    path: str | None = None
    keep: int = Field(default=5, ge=1)


class InstanceSettings(_Model):
    target: TargetSettings = TargetSettings()
    selfHeal: bool | None = None
    branch: str | None = None  # daemon: overrides the branch headwater.yaml names


class AuthSettings(_Model):
    token_env: str | None = None
    username: str | None = None


class RepositorySettings(_Model):
    url: str | None = None
    auth: AuthSettings = AuthSettings()
    config_branch: str | None = None  # daemon: whose headwater.yaml maps instances to branches
    watch: bool = True  # daemon: watch a local-path repository for new commits
    timeout: float = Field(default=120.0, gt=0)  # daemon: limit of one git fetch

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)


class SecretsSettings(_Model):
    type: Literal["directory", "env", "none"] = "directory"
    path: str | None = None  # directory provider root; default <state_dir>/secrets
    prefix: str = "HEADWATER_SECRET_"


class PollSettings(_Model):
    interval: float = 60.0
    jitter: float = Field(default=0.1, ge=0, le=1)

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)

    @field_validator("jitter", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.endswith("%"):
            return float(value[:-1]) / 100
        return value


class WebhookSettings(_Model):
    listen: str = "127.0.0.1:9000"
    secret_env: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    status_token_env: str | None = None


class BackoffSettings(_Model):
    """Daemon retries after a transient failure: initial, doubled up to max."""

    initial: float = Field(default=2.0, gt=0)
    max: float = Field(default=300.0, gt=0)

    @field_validator("initial", "max", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)


class Settings(_Model):
    state_dir: str = DEFAULT_STATE_DIR
    repository: RepositorySettings = RepositorySettings()
    instances: dict[str, InstanceSettings] = {}
    secrets: SecretsSettings = SecretsSettings()
    poll: PollSettings = PollSettings()
    webhook: WebhookSettings = WebhookSettings()
    drift_interval: float = 300.0
    min_interval: float = Field(default=1.0, ge=0)  # daemon: least time between two fetches
    backoff: BackoffSettings = BackoffSettings()
    log_format: Literal["text", "json"] = "text"

    @field_validator("drift_interval", "min_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def instance_path(self, name: str) -> Path:
        spec = self.instances.get(name)
        if spec is not None and spec.target.path:
            return Path(spec.target.path)
        return self.state_path / "instances" / name

    def keep(self, name: str) -> int:
        spec = self.instances.get(name)
        return spec.target.keep if spec is not None else 5


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        for unit in ("ms", "s", "m", "h", "d"):
            if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
                return float(text[: -len(unit)]) * _UNITS[unit]
    return value


def load(config: str | None = None, state_dir: str | None = None) -> Settings:
    """Settings from the config file (if any), then ``HEADWATER_STATE_DIR``, then flags."""
    raw: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {config}: {exc.strerror}", hint="check the --config path") from None
        try:
            doc = yamlio.load(data, config)
        except yamlio.YamlError as exc:
            d = exc.diagnostic
            raise ConfigError(f"{d.location()}: {d.message}", hint=d.hint) from None
        if doc.value is not None and not isinstance(doc.value, dict):
            raise ConfigError(f"{config}: the file must hold a YAML mapping")
        raw = dict(doc.value or {})
    env_state = os.environ.get("HEADWATER_STATE_DIR")
    if state_dir is not None:
        raw["state_dir"] = state_dir
    elif env_state and "state_dir" not in raw:
        raw["state_dir"] = env_state
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{config or 'settings'}: {where}: {first['msg']}",
            hint=f"{len(exc.errors())} problem(s); see the configuration reference in docs/daemon.md",
        ) from None
