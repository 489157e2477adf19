"""Rendering of diagnostics and small CLI helpers shared by the commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from headwater.errors import Diagnostic


def use_color(no_color: bool) -> bool:
    if no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def diagnostics_text(diags: Sequence[Diagnostic], color: bool = False) -> str:
    lines: list[str] = []
    for d in diags:
        level = _paint(d.severity, "31;1" if d.severity == "error" else "33;1", color)
        lines.append(f"{d.location()}: {level} [{d.code}] {d.message}")
        for other in d.related:
            lines.append(f"    see: {other}")
        if d.hint:
            lines.append(f"    hint: {d.hint}")
    errors = sum(1 for d in diags if d.severity == "error")
    warnings = len(diags) - errors
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


def diagnostics_json(diags: Sequence[Diagnostic], **extra: object) -> str:
    errors = sum(1 for d in diags if d.severity == "error")
    body = {
        **extra,
        "valid": errors == 0,
        "summary": {"errors": errors, "warnings": len(diags) - errors},
        "diagnostics": [d.to_json() for d in diags],
    }
    return json.dumps(body, indent=2, sort_keys=True)


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def diagnostics_github(diags: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: one annotation per diagnostic."""
    lines = []
    for d in diags:
        props = [f"file={_gh_escape(d.path, True)}"]
        if d.line is not None:
            props.append(f"line={d.line}")
        if d.column is not None:
            props.append(f"col={d.column}")
        props.append(f"title={_gh_escape(d.code, True)}")
        message = d.message + (f" (hint: {d.hint})" if d.hint else "")
        lines.append(f"::{d.severity} {','.join(props)}::{_gh_escape(message)}")
    return "\n".join(lines)
