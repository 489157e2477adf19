"""Daemon logs: one line per event, for people (text) or for machines (``--log-format json``).

Every record carries an ``event`` name and plain fields; the text form is the message, the
JSON form is ``{"ts", "time", "level", "event", "msg", **fields}`` on one line. A filter
replaces every known secret (the git token, the webhook secret, the status token) by
``***`` in messages and fields, whatever code logged them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

LOGGER = "headwater.daemon"


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {
                k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()
            }
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update({k: v for k, v in fields.items() if k not in body})
        exc = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else None
        )
        if exc:
            body["traceback"] = exc
        return json.dumps(body, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname:<7} {record.getMessage()}"
        exc = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else None
        )
        return f"{line}\n{exc}" if exc else line


def setup(
    fmt: str, level: int, secrets: Iterable[str], stream: TextIO | None = None
) -> logging.Logger:
    """The daemon's logger, writing to stderr (default) in the chosen format."""
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(Redactor(secrets))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    message: str,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log one event: ``message`` for people, ``fields`` for machines."""
    logger.log(level, message, exc_info=exc_info, extra={"event": name, "fields": fields})
