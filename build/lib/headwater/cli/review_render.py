"""Renderers of a review (`check`) and of a promotion: text, Markdown, GitHub annotations. Pure.

Owners are shown in code spans, so a pull-request comment names teams without pinging them on
every update. Nothing here sees a secret value: reviews hold paths and config keys, plans hold
``(sensitive)`` for secrets.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

from headwater import render
from headwater.cli.output import diagnostics_github, diagnostics_text
from headwater.plan import Plan
from headwater.promote import Promotion, human
from headwater.review import Deletion, Review

MAX_ITEMS = 30
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_TICKS = re.compile("`+")


def _safe(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _code(text: str) -> str:
    text = _safe(text)
    fence = "`" * (max((len(m) for m in _TICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _where(path: str, line: int | None) -> str:
    return f"{path}:{line}" if line else path


def summary(r: Review) -> str:
    """One line: valid or not, and the counts review cares about."""
    warnings = len(r.diagnostics) - r.errors
    state = (
        f"valid for {', '.join(r.instances) or 'no instance'}"
        if not r.errors
        else f"{_plural(r.errors, 'error')}, {_plural(warnings, 'warning')}"
    )
    return (
        f"{state} — {_plural(len(r.namespaces), 'namespace')} changed, "
        f"{_plural(len(r.locks), 'locked path')} touched, "
        f"{_plural(len(r.forced) + len(r.forced_uses), 'forced default')} affected, "
        f"{_plural(len(r.deletions), 'deletion')}"
    )


# -- text ------------------------------------------------------------------------------------


def check_text(r: Review, color: bool) -> str:
    def bold(text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if color else text

    out = [f"Check {r.base[:12]} → {r.head[:12]}: {summary(r)}", ""]
    if r.diagnostics:
        out += [diagnostics_text(r.diagnostics, color), ""]
    if r.scopes:
        out.append(bold("Changed above the namespaces:"))
        for scope in r.scopes:
            name = f"tenant {scope.tenant}" if scope.tenant else "repository"
            out.append(f"  {name}  owners: {' '.join(scope.owners) or '(none)'}")
            out += [f"    {s} {_safe(p)}" for s, p in scope.paths]
    if r.namespaces:
        out.append(bold(f"Changed namespaces ({len(r.namespaces)}):"))
        for ns in r.namespaces:
            out.append(
                f"  {ns.tenant}/{ns.namespace}  ({ns.status})  owners: {' '.join(ns.owners) or '(none)'}"
            )
            out += [f"    {s} {_safe(p)}" for s, p in ns.paths]
    if r.locks or r.lock_changes:
        out.append(bold(f"Locked paths touched ({len(r.locks)}):"))
        for t in r.locks:
            mark = "✗" if t.violation else "•"
            who = f"{t.tenant}/{t.namespace}" if t.namespace else f"tenant {t.tenant}"
            verb = "may not set" if t.violation else "changes its own locked"
            out.append(
                f"  {mark} {who} {verb} {t.path} ({_where(t.file, t.line)}); {t.lock} is locked by "
                f"{t.locked_by}; ask {' '.join(t.ask) or 'its owners'}"
            )
        out += [f"  • lock {c.lock} {c.change} in {_where(c.file, c.line)}" for c in r.lock_changes]
    if r.forced or r.forced_uses:
        out.append(bold("Forced plugin defaults affected:"))
        out += [
            f"  • {f.type} {f.change} in {_where(f.file, f.line)} ({_plural(f.namespaces_below, 'namespace')} below)"
            for f in r.forced
        ]
        out += [
            f"  • {_where(u.file, u.line)} uses {u.type}: forced by {u.forced_at} ({u.forced_type})"
            for u in r.forced_uses
        ]
    if r.deletions:
        out.append(bold(f"Deletions ({len(r.deletions)}):"))
        out += [f"  - {d.kind} {_deleted_name(d)}  ({_safe(d.path)})" for d in r.deletions]
    if r.other_paths:
        out.append(f"Other paths changed: {len(r.other_paths)}")
    return "\n".join(out).rstrip()


def _deleted_name(d: Deletion) -> str:
    if d.kind == "tenant":
        return d.tenant
    return _safe("/".join(p for p in (d.tenant, d.namespace, d.name) if p))


# -- Markdown --------------------------------------------------------------------------------


def check_markdown(
    r: Review,
    plans: Sequence[Plan] | None = None,
    note: str = "",
    max_chars: int = render.MAX_COMMENT_CHARS,
) -> str:
    """The pull-request comment: the review, then (with ``plans``) each instance's plan.

    With ``plans`` (even none) the comment starts with ``<!-- headwater-plan-comment -->``, so
    CI finds and updates it by the ``<!-- headwater-plan`` prefix whether or not plans were made.
    """
    icon = "❌" if r.errors else "✅"
    out = [
        *(["<!-- headwater-plan-comment -->"] if plans is not None else []),
        "<!-- headwater-check -->",
        "### Headwater check",
        "",
        f"{_code(r.base[:12])} → {_code(r.head[:12])}",
        "",
        f"{icon} **Check:** {_safe(summary(r))}",
        "",
    ]
    for scope in r.scopes:
        name = f"tenant {_code(scope.tenant)}" if scope.tenant else "the repository config"
        out.append(
            f"- Changes {name}, owners {_owners(scope.owners)}: "
            + ", ".join(_code(p) for _s, p in scope.paths[:MAX_ITEMS])
        )
    if r.scopes:
        out.append("")
    if r.namespaces:
        out += ["#### Changed namespaces", ""]
        for ns in r.namespaces[:MAX_ITEMS]:
            owners = " ".join(f"<code>{html.escape(o)}</code>" for o in ns.owners) or "no owners"
            title = html.escape(_safe(f"{ns.tenant}/{ns.namespace}"))
            out.append(f"<details><summary>{title} — {ns.status} — {owners}</summary>\n")
            out += [f"- {_code(s)} {_code(p)}" for s, p in ns.paths[:MAX_ITEMS]]
            out += [*_more(ns.paths), "", "</details>", ""]
        out += _more(r.namespaces, "namespaces")
    if r.locks or r.lock_changes:
        out += ["#### Locked paths touched", ""]
        for t in r.locks[:MAX_ITEMS]:
            who = _code(f"{t.tenant}/{t.namespace}" if t.namespace else f"tenant {t.tenant}")
            if t.violation:
                out.append(
                    f"- ❌ {who} sets {_code(t.path)} ({_code(_where(t.file, t.line))}), locked by "
                    f"{_code(t.locked_by)}: only its owners {_owners(t.ask)} may change it"
                )
            else:
                out.append(
                    f"- ⚠️ {who} changes {_code(t.path)} ({_code(_where(t.file, t.line))}), which it "
                    f"locks for every namespace below"
                )
        out += [
            f"- ⚠️ lock {_code(c.lock)} {c.change} in {_code(_where(c.file, c.line))}"
            for c in r.lock_changes[:MAX_ITEMS]
        ]
        out += [""]
    if r.forced or r.forced_uses:
        out += ["#### Forced plugin defaults affected", ""]
        out += [
            f"- {_code(f.type)} {f.change} in {_code(_where(f.file, f.line))}: applies to "
            f"{_plural(f.namespaces_below, 'namespace')} and their flows"
            for f in r.forced[:MAX_ITEMS]
        ]
        out += [
            f"- {_code(_where(u.file, u.line))} uses {_code(u.type)}: {_code(u.forced_type)} "
            f"defaults are forced by {_code(u.forced_at)}"
            for u in r.forced_uses[:MAX_ITEMS]
        ]
        out += [""]
    if r.deletions:
        out += ["#### Deletions", ""]
        out += [f"- {d.kind} {_code(_deleted_name(d))}" for d in r.deletions[:MAX_ITEMS]]
        out += [*_more(r.deletions), ""]
    if r.diagnostics:
        out.append(
            f"<details><summary>Diagnostics ({_plural(len(r.diagnostics), 'problem')})</summary>\n"
        )
        for d in r.diagnostics[: MAX_ITEMS * 2]:
            mark = "❌" if d.severity == "error" else "⚠️"
            out.append(f"- {mark} {_code(d.location())} {_code(d.code)} {_safe(d.message)}")
        out += ["", "</details>", ""]
    text = "\n".join(out) + "\n"
    if plans is not None:
        text += render.plans_markdown(
            list(plans), max_chars=max(max_chars - len(text) - len(note) - 2, 2000)
        )
    if note:
        text += "\n" + note + "\n"
    return text


def _owners(owners: Iterable[str]) -> str:
    return " ".join(_code(o) for o in owners) or "(none)"


def _more(items: Sequence[object], what: str = "more") -> list[str]:
    hidden = len(items) - MAX_ITEMS
    return [f"_… and {hidden} {what} not shown._"] if hidden > 0 else []


def promotion_markdown(p: Promotion) -> str:
    """A pull-request body for a promotion: what, from where, proof, then the plan."""
    what = (
        ", ".join(_code(n) for n in p.namespaces)
        + (" and their children" if p.recursive else "")
        + " (namespace.yaml, flows/, files/ only)"
        if p.namespaces
        else "the whole commit"
    )
    out = [
        "<!-- headwater-promotion -->",
        f"### Promote {_code(f'{p.source_instance}@{p.source[:7]}')} to {_code(p.target_instance)}",
        "",
        f"- **Source:** {_code(p.source)}"
        + (
            f", applied on {_code(p.source_instance)} at {p.applied_at:%Y-%m-%d %H:%M:%S}Z, ran "
            f"{human(p.proven_seconds)} (soak {human(p.soak_seconds)})"
            if p.applied_at is not None and p.proven_seconds is not None
            else f", never applied on {_code(p.source_instance)}"
        ),
        f"- **Target:** {_code(p.target_branch)} at {_code(p.move.base_head[:12])}",
        f"- **Scope:** {what}",
    ]
    if p.noop:
        out.append(f"- **Nothing to promote:** {_code(p.target_branch)} already holds it.")
    else:
        how = "fast-forward" if p.fast_forward else "commit"
        out.append(
            f"- **{how.capitalize()}:** {_code(p.commit[:12])} on {_code(p.move.ref.removeprefix('refs/heads/'))}"
        )
    if p.forced:
        out.append(f"- **Forced:** {_safe(p.forced)}")
    text = "\n".join(out) + "\n\n"
    return text + render.plan_markdown(p.plan, max_chars=render.MAX_COMMENT_CHARS - len(text))


# -- GitHub annotations ----------------------------------------------------------------------


def _escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _annotation(
    level: str, message: str, title: str, file: str = "", line: int | None = None
) -> str:
    props = [f"file={_escape(file, True)}"] if file else []
    if file and line:
        props.append(f"line={line}")
    props.append(f"title={_escape(title, True)}")
    return f"::{level} {','.join(props)}::{_escape(message)}"


def check_github(r: Review) -> str:
    """Workflow commands: the diagnostics, then review notes; the summary line last."""
    lines = [diagnostics_github(r.diagnostics)] if r.diagnostics else []
    for ns in r.namespaces:
        lines.append(
            _annotation(
                "notice",
                f"{ns.tenant}/{ns.namespace} {ns.status}; owners: {' '.join(ns.owners) or 'none'}",
                "headwater: namespace changed",
            )
        )
    for t in r.locks:
        message = (
            f"{t.path} is locked by {t.locked_by}; ask {' '.join(t.ask) or 'its owners'}"
            if t.violation
            else f"{t.path} is locked here for every namespace below"
        )
        lines.append(
            _annotation(
                "warning" if t.violation else "notice",
                message,
                "headwater: locked path",
                t.file,
                t.line,
            )
        )
    for f in r.forced:
        lines.append(
            _annotation(
                "warning",
                f"forced plugin default {f.type} {f.change} ({f.namespaces_below} namespaces below)",
                "headwater: forced default",
                f.file,
                f.line,
            )
        )
    for d in r.deletions:
        lines.append(
            _annotation(
                "notice", f"{d.kind} {_deleted_name(d)} deleted ({d.path})", "headwater: deletion"
            )
        )
    lines.append(f"headwater check: {summary(r)}")
    return "\n".join(lines)
