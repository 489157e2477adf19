"""Diagnostics and the exception hierarchy.

    HeadwaterError                 one user-facing failure, rendered by the CLI (exit 1)
     ├── GitError                  git could not do what was asked (bad ref, not a repository)
     ├── ConfigError               the daemon's or the CLI's own settings are wrong
     ├── ValidationFailed          a commit has validation errors; carries every Diagnostic
     ├── TargetError               a target could not be read or written
     │    └── ContentMissing       it needs content that was given by hash only
     ├── StateError                the state store is unusable or locked
     └── PlanRefused               a plan is stale, or a safety guard (mass delete) refused it

Library code raises these and never prints or exits; the CLI renders them once, at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem found in the repository, with where it is and how to fix it."""

    path: str
    line: int | None
    column: int | None
    code: str
    message: str
    hint: str | None = None
    severity: Severity = "error"
    related: tuple[str, ...] = field(default=())  # other places involved ("file:line")

    def location(self) -> str:
        where = self.path or "<repository>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "related": list(self.related),
        }


class HeadwaterError(Exception):
    """A failure to show the user as one line plus an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class GitError(HeadwaterError):
    """Git could not do what was asked."""


class ConfigError(HeadwaterError):
    """The daemon's or the command line's settings are wrong."""


class ValidationFailed(HeadwaterError):
    """A commit did not validate; carries every diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic], revision: str = "") -> None:
        errors = [d for d in diagnostics if d.severity == "error"]
        super().__init__(
            f"{len(errors)} validation error(s) at {revision[:12] or 'this revision'}",
            hint="run `headwater validate` to see them all",
        )
        self.diagnostics = diagnostics
        self.revision = revision


class TargetError(HeadwaterError):
    """A target could not be read or written."""


class ContentMissing(TargetError):
    """A target needs the content of a resource that was given by hash only."""


class StateError(HeadwaterError):
    """The state store is unusable or locked."""


class PlanRefused(HeadwaterError):
    """A plan is stale or a safety guard refused it."""
