"""Renderers of a plan: text for a terminal, JSON for programs, Markdown for a pull request.

Pure: each returns a string and never prints. The CLI decides whether to colour the text
(``NO_COLOR``, ``--no-color``, a terminal) and passes ``color``. Nothing here can show a
secret value: a plan never holds one (see ``plan.py``); secrets render as ``(sensitive)``.
"""

from __future__ import annotations

import codecs
import dataclasses
import html
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring

from headwater import plan as planning
from headwater.plan import SENSITIVE, Change, Plan
from headwater.resources import ResourceKey, pretty_json

# GitHub refuses a comment over 65536 characters; keep a margin for what CI wraps around it.
MAX_COMMENT_CHARS = 60_000
MAX_UNMANAGED_LISTED = 10

_SYMBOL = {"create": "+", "update": "~", "delete": "-"}
_GREEN, _YELLOW, _RED, _CYAN, _MAGENTA, _BOLD = "32", "33", "31", "36", "35", "1"
_COLOR = {"create": _GREEN, "update": _YELLOW, "delete": _RED}
# Terminal control characters, C1 controls and bidirectional overrides ("trojan source"):
# shown escaped so content cannot move the cursor, recolour the terminal or hide text.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_HEX_REV = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_BACKTICKS = re.compile("`+")


# --- text ------------------------------------------------------------------------------------


MAX_TEXT_DIFF_LINES = 4000


def plan_text(plan: Plan, color: bool, *, max_diff_lines: int = MAX_TEXT_DIFF_LINES) -> str:
    """Terraform-like: ``+`` create, ``~`` update, ``-`` delete, ``!`` drift, by namespace.

    Diffs stop after ``max_diff_lines`` lines in all (every change is still listed), so a plan
    of a hundred thousand creations stays readable; `-o json` carries every diff.
    """
    out: list[str] = []
    text = PlanText(plan, color, out.append, max_diff_lines=max_diff_lines)
    text.add(plan)
    text.finish(plan.summary())
    return "".join(out)


class PlanText:
    """``plan_text`` written as it goes, for a plan computed in parts (one tenant at a time,
    in order: ``Engine.plan``'s ``each``): ``add`` each part, then ``finish`` with the whole
    plan's counts. The text ``write`` receives is, joined, what ``plan_text`` returns for
    the whole plan; only a part is held at a time."""

    def __init__(
        self, plan: Plan, color: bool, write: Callable[[str], object], *, max_diff_lines: int = MAX_TEXT_DIFF_LINES,
    ) -> None:
        self.color, self.write, self.max_diff_lines = color, write, max_diff_lines
        self.budget = max_diff_lines
        self.omitted = 0
        self.instance = plan.instance
        self.unmanaged: list[str] = []  # the first ones, shown
        self.unmanaged_count = 0
        self.write(f"Instance {_safe(plan.instance)}: {_revisions(plan)}\n")

    def paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def add(self, plan: Plan) -> None:
        paint = self.paint
        out: list[str] = []
        for (tenant, namespace), changes in plan.namespaces().items():
            out.append("")
            out.append(paint(_BOLD, _safe(f"{tenant}/{namespace}")))
            for change in changes:
                marker = paint(_MAGENTA, "!") if change.drift else " "
                line = f"{_SYMBOL[change.action]} {change.key.kind} {_safe(change.key.name)}"
                detail = _detail(change)
                if change.source:
                    line += f"  ({_safe(change.source)})"
                out.append(f"{marker} {paint(_COLOR[change.action], line)}{detail}")
                if change.drift:
                    out.append("      " + paint(_MAGENTA, "! changed outside Git since the last apply"))
                if change.has_diff:
                    # Past the budget a diff is only counted: it is not even computed (plan.Change).
                    diff = change.diff if self.budget else None
                    if diff is not None and (size := diff.rstrip("\n").count("\n") + 1) <= self.budget:
                        self.budget -= size
                        out.extend("      " + _diff_line(d, paint) for d in _diff_lines(diff))
                    else:
                        self.budget = 0
                        self.omitted += 1
        if out:
            self.write("\n".join(out) + "\n")
        self.unmanaged_count += len(plan.unmanaged)
        room = MAX_UNMANAGED_LISTED - len(self.unmanaged)
        self.unmanaged += [_safe(str(key)) for key in plan.unmanaged[:room]]

    def finish(self, counts: Mapping[str, int]) -> None:
        paint = self.paint
        out = [""]
        if self.omitted:
            out.append(f"({self.omitted} diff(s) omitted past {self.max_diff_lines} lines; `-o json` has them all)")
        if counts["drift"]:
            out.append(paint(_MAGENTA, f"Drift: {_resources(counts['drift'])} changed outside Git."))
        if self.unmanaged_count:
            out.append(f"Unmanaged: {_resources(self.unmanaged_count)} left alone (never applied):")
            out.extend(f"  {key}" for key in self.unmanaged)
            if self.unmanaged_count > MAX_UNMANAGED_LISTED:
                out.append(f"  … and {self.unmanaged_count - MAX_UNMANAGED_LISTED} more")
        if not any(counts[action] for action in ("create", "update", "delete")):
            out.append(paint(_GREEN, f"No changes. Instance {_safe(self.instance)} is up to date."))
        else:
            out.append(
                paint(
                    _BOLD,
                    f"Plan: {counts['create']} to create, {counts['update']} to update,"
                    f" {counts['delete']} to delete.",
                )
            )
        self.write("\n".join(out))


def _detail(change: Change) -> str:
    if change.sensitive:
        return f" {SENSITIVE}"
    if change.has_diff:
        return ""
    prefix = " (binary)" if change.binary else ""
    return f"{prefix} {_hash_change(change)}"


def _diff_line(line: str, paint: Callable[[str, str], str]) -> str:
    if line.startswith(("--- ", "+++ ")):
        return paint(_BOLD, line)
    if line.startswith("@@"):
        return paint(_CYAN, line)
    if line.startswith("+"):
        return paint(_GREEN, line)
    if line.startswith("-"):
        return paint(_RED, line)
    return line


# --- JSON ------------------------------------------------------------------------------------


def plan_json(plan: Plan) -> str:
    """Stable JSON (sorted keys, indent 2) matching ``schemas/plan.schema.json``."""
    out: list[str] = []
    write_plan_json(plan, out.append)
    return "".join(out)


def write_plan_json(plan: Plan, write: Callable[[str], object]) -> None:
    """``plan_json``'s text, written a change at a time: each diff is made as its change is
    written, and not kept. A plan of every resource of a large instance (600,000 creations,
    each with the diff of its whole content) took 6.6 GB written as one document."""
    _write_document(plan, ([_change_json(change)] for change in plan.changes), write)


def _change_json(change: Change) -> str:
    """A change of the plan's JSON, as it is indented in ``changes``."""
    return pretty_json(change.to_json(keep_diff=False)).replace("\n", "\n    ")


def _write_document(plan: Plan, runs: Iterable[Iterable[str]], write: Callable[[str], object]) -> None:
    """The plan's JSON, its ``changes`` written from ``runs``: each the text of one or more
    changes, separated within the run."""
    body = plan.to_json(changes=False)
    write("{")
    separator = "\n  "
    for key in sorted(body):
        write(f"{separator}{encode_basestring(key)}: ")
        separator = ",\n  "
        if key != "changes":
            write(pretty_json(body[key]).replace("\n", "\n  "))
            continue
        opened = False
        for run in runs:
            write(",\n    " if opened else "[\n    ")
            opened = True
            for piece in run:
                write(piece)
        write("\n  ]" if opened else "[]")
    write("\n}")


class PlanJson:
    """``write_plan_json`` for a plan made in parts, one tenant at a time in tenant order
    (``Engine.plan``'s ``each``): ``add`` each part, then ``finish`` with the whole plan (its
    counts and fingerprint). The text ``write`` receives is ``plan_json`` of the whole plan,
    which is never held: each part's changes wait in a temporary file, a run per section of
    the whole plan's order (``plan.section``), until ``finish`` writes them in that order. A
    context: the file exists inside it."""

    def __init__(self) -> None:
        self.runs: list[list[tuple[int, int]]] = [[] for _ in range(planning.SECTIONS)]
        self.drift: list[ResourceKey] = []
        self.unmanaged: list[ResourceKey] = []

    def __enter__(self) -> PlanJson:
        self.file = tempfile.TemporaryFile()
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def add(self, part: Plan) -> None:
        file, current, start = self.file, -1, 0
        file.seek(0, os.SEEK_END)
        for change in part.changes:
            section = planning.section(change)
            if section != current:
                if current >= 0:
                    self.runs[current].append((start, file.tell() - start))
                current, start = section, file.tell()
            else:
                file.write(b",\n    ")
            file.write(_change_json(change).encode("utf-8", "surrogatepass"))
        if current >= 0:
            self.runs[current].append((start, file.tell() - start))
        self.drift += part.drift
        self.unmanaged += part.unmanaged

    def finish(self, plan: Plan, write: Callable[[str], object]) -> None:
        whole = dataclasses.replace(plan, drift=tuple(self.drift), unmanaged=tuple(self.unmanaged))
        _write_document(whole, self._runs(), write)

    def _runs(self) -> Iterator[Iterator[str]]:
        for section, runs in enumerate(self.runs):
            yield from map(self._read, reversed(runs) if section >= planning.DELETIONS_FROM else runs)

    def _read(self, run: tuple[int, int]) -> Iterator[str]:
        start, left = run
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        self.file.seek(start)
        while left:
            chunk = self.file.read(min(left, 1 << 20))
            left -= len(chunk)
            yield decoder.decode(chunk, final=not left)


# --- Markdown --------------------------------------------------------------------------------


def plan_markdown(plan: Plan, *, max_chars: int = MAX_COMMENT_CHARS) -> str:
    """A pull-request comment: marker, heading, summary, one collapsible section per namespace.

    The hidden ``<!-- headwater-plan:<instance> -->`` marker lets CI update its one comment.
    Diffs are cut, with a note, so that the whole comment stays within ``max_chars``.
    """
    return _Budget(max_chars).render(_md_head(plan, len(plan.unmanaged)), plan.namespaces().items())


def _md_head(plan: Plan, unmanaged: int) -> str:
    counts = plan.summary()
    head = [
        f"<!-- headwater-plan:{_comment_safe(plan.instance)} -->",
        f"### Headwater plan for {_code(plan.instance)}",
        "",
        _md_revisions(plan),
        "",
    ]
    if plan.is_empty:
        head.append(f"**No changes.** Instance {_code(plan.instance)} is up to date.")
    else:
        head.append(
            f"**Plan:** {counts['create']} to create, {counts['update']} to update,"
            f" {counts['delete']} to delete"
        )
    head.append("")
    if counts["drift"]:
        head += [
            f"**Drift:** {_resources(counts['drift'])} changed outside Git since the last apply"
            " (marked below); this plan puts back what Git holds.",
            "",
        ]
    if unmanaged:
        head += [
            f"{_resources(unmanaged)} on the instance never applied by Headwater,"
            " left alone.",
            "",
        ]
    return "\n".join(head) + "\n"


class PlanMarkdown:
    """``plan_markdown`` for a plan made in parts, one tenant at a time in tenant order
    (``Engine.plan``'s ``each``): ``add`` each part, then ``finish`` with the whole plan's
    counts. The comment is the whole plan's, which is never held: a namespace is kept while
    the comment might still show it, and only counted once even a comment without its head
    could not (the budget hides every namespace after the first it cannot show)."""

    def __init__(self, *, max_chars: int = MAX_COMMENT_CHARS) -> None:
        self.max_chars = max_chars
        self.kept: list[tuple[tuple[str, str], tuple[Change, ...]]] = []
        self.least = 0  # what the namespaces kept take at least: openings, entries, closings
        self.hidden = 0  # the changes of the namespaces after them
        self.unmanaged = 0

    def add(self, part: Plan) -> None:
        for namespace, changes in part.namespaces().items():
            if self.least > self.max_chars - _Budget.RESERVE:  # (the budget's limit)
                self.hidden += len(changes)
                continue
            self.kept.append((namespace, changes))
            self.least += len(_md_opening(namespace, changes)) + len(_MD_CLOSING)
            self.least += sum(len(_md_change(change)) for change in changes)
        self.unmanaged += len(part.unmanaged)

    def finish(self, plan: Plan) -> str:
        return _Budget(self.max_chars).render(_md_head(plan, self.unmanaged), self.kept, self.hidden)


def plans_markdown(plans: list[Plan], *, max_chars: int = MAX_COMMENT_CHARS) -> str:
    """One comment for several instances: an overview line each, then each plan's sections."""
    head = ["<!-- headwater-plans -->", "## Headwater plans", ""]
    for plan in plans:
        counts = plan.summary()
        status = (
            "no changes"
            if plan.is_empty
            else f"{counts['create']} to create, {counts['update']} to update,"
            f" {counts['delete']} to delete"
        )
        head.append(f"- {_code(plan.instance)}: {status}")
    if not plans:
        head.append("No instance is affected.")
    text = "\n".join(head) + "\n\n"
    share = (max_chars - len(text)) // max(len(plans), 1) - 1
    return text + "".join(plan_markdown(plan, max_chars=share) + "\n" for plan in plans)


class _Budget:
    """Appends sections while they fit; cuts diffs, then drops whole changes, with notes."""

    RESERVE = 300  # room for the closing notes, whatever was cut

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.limit = max_chars - self.RESERVE
        self.parts: list[str] = []
        self.used = 0

    def fits(self, text: str, pending: int = 0) -> bool:
        return self.used + len(text) + pending <= self.limit

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.used += len(text)

    def render(
        self, head: str, namespaces: Iterable[tuple[tuple[str, str], tuple[Change, ...]]], more: int = 0
    ) -> str:
        """The comment: ``head``, then a section per namespace while they fit; ``more``
        changes after them, not shown."""
        self.add(head)
        hidden = 0
        closing = _MD_CLOSING
        for namespace, changes in namespaces:
            opening = _md_opening(namespace, changes)
            if hidden or not self.fits(opening, len(closing)):
                hidden += len(changes)
                continue
            self.add(opening)
            for i, change in enumerate(changes):
                entry = _md_change(change)
                if not self.fits(entry, len(closing)):
                    hidden += len(changes) - i
                    self.add(f"_… {len(changes) - i} more change(s) not shown._\n\n")
                    break
                self.add(entry)
                diff = change.diff
                if diff is not None:
                    room = min(self.limit - self.used - len(closing), self.max_chars // 4)
                    self.add(_md_diff(diff, room))
            self.add(closing)
        hidden += more
        if hidden:
            self.add(
                f"_{_resources(hidden)} not shown: the comment size limit was reached."
                " Run `headwater plan` for the full plan._\n"
            )
        return "".join(self.parts)


_MD_CLOSING = "</details>\n\n"


def _md_opening(namespace: tuple[str, str], changes: tuple[Change, ...]) -> str:
    counts = {action: 0 for action in _SYMBOL}
    for change in changes:
        counts[change.action] += 1
    title = html.escape(_safe(f"{namespace[0]}/{namespace[1]}"))
    return (
        f"<details><summary>{title} — +{counts['create']} ~{counts['update']}"
        f" -{counts['delete']}</summary>\n\n"
    )


def _md_change(change: Change) -> str:
    line = f"{_code(_SYMBOL[change.action] + ' ' + change.action)} {change.key.kind}"
    line += f" {_code(change.key.name)}"
    if change.source:
        line += f" ({_code(change.source)})"
    if change.sensitive:
        line += f" — {SENSITIVE}"
    elif not change.has_diff:
        what = "binary " if change.binary else ""
        line += f" — {what}{_hash_change(change, code=True)}"
    if change.drift:
        line += " — **drift:** changed outside Git"
    return line + "\n\n"


def _md_diff(diff: str, room: int) -> str:
    """A ```diff block longer than any backtick run inside, cut to ``room`` characters."""
    longest = max((len(m) for m in _BACKTICKS.findall(diff)), default=0)
    fence = "`" * max(3, longest + 1)
    lines = _diff_lines(diff)
    overhead = 2 * len(fence) + len("diff\n\n\n")
    note_room = 80
    body: list[str] = []
    size = overhead
    for line in lines:
        if size + len(line) + 1 + note_room > room:
            break
        body.append(line)
        size += len(line) + 1
    if len(body) == len(lines):
        return f"{fence}diff\n" + "".join(f"{line}\n" for line in body) + f"{fence}\n\n"
    if not body:
        return "_Diff not shown: the comment size limit was reached._\n\n" if room > 60 else ""
    return (
        f"{fence}diff\n"
        + "".join(f"{line}\n" for line in body)
        + f"{fence}\n\n_… diff cut: {len(lines) - len(body)} more line(s)._\n\n"
    )


# --- shared ----------------------------------------------------------------------------------


def _diff_lines(diff: str) -> list[str]:
    return [_safe(line) for line in diff.rstrip("\n").split("\n")]


def _safe(text: str) -> str:
    # A printable text has none of _UNSAFE's characters (all controls or format characters):
    # the check is a fraction of the substitution's cost, and a plan renders every key.
    return text if text.isprintable() else _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _code(text: str) -> str:
    """An inline code span that holds any text, backticks included."""
    text = _safe(text)
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _comment_safe(text: str) -> str:
    return _safe(text).replace("--", "-\u2010")  # "--" could end the HTML comment early


def _short_hash(value: str | None) -> str:
    if value is None:
        return "(none)"
    algo, _, digest = value.partition(":")
    return f"{algo}:{digest[:12]}…" if digest and len(digest) > 12 else value


def _hash_change(change: Change, code: bool = False) -> str:
    def show(value: str | None) -> str:
        text = _short_hash(value)
        return _code(text) if code and value is not None else text

    if change.action == "create":
        return show(change.after_hash)
    if change.action == "delete":
        return f"was {show(change.before_hash)}"
    return f"{show(change.before_hash)} → {show(change.after_hash)}"


def _short_rev(rev: str) -> str:
    return rev[:12] if _HEX_REV.fullmatch(rev) else _safe(rev)


def _revisions(plan: Plan) -> str:
    if plan.base is None:
        return f"at {_short_rev(plan.revision)}"
    return f"{_short_rev(plan.base)} → {_short_rev(plan.revision)}"


def _md_revisions(plan: Plan) -> str:
    if plan.base is None:
        return f"At {_code(_short_rev(plan.revision))}."
    return f"{_code(_short_rev(plan.base))} → {_code(_short_rev(plan.revision))}"


def _resources(count: int) -> str:
    return f"{count} resource{'' if count == 1 else 's'}"
