"""The YAML loader: libyaml events, YAML 1.2 core scalars, marks for every node, hard limits.

Why events and not ``yaml.load``: libyaml's composer and PyYAML's constructor recurse once per
nesting level and expand aliases without bound, so hostile input can exhaust the stack or the
memory. Here libyaml only tokenises (it keeps its own explicit stack) and this module builds
the value iteratively, counting depth, nodes and alias expansions as it goes.

Scalars follow the YAML 1.2 core schema: ``on``/``yes``/``no`` stay strings, ``0777`` is the
integer 777, and there are no implicit timestamps, so every value is plain JSON data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from headwater.errors import Diagnostic, HeadwaterError

try:  # libyaml is the fast path; the pure-Python parser gives identical events.
    from yaml import CSafeLoader as _EventLoader
except ImportError:  # pragma: no cover - libyaml is a hard expectation of the project
    from yaml import SafeLoader as _EventLoader  # type: ignore[assignment]

Key = str | int
Path = tuple[Key, ...]
Mark = tuple[int, int]

MAX_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000  # nodes built, alias expansions included


class YamlError(HeadwaterError):
    """A YAML document could not be loaded; carries one diagnostic."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message, diagnostic.hint)
        self.diagnostic = diagnostic


@dataclass(frozen=True)
class Document:
    """A loaded document: its plain value and the (line, column) of every node, 1-based.

    A mapping entry is marked at its key; a sequence item at its first character.
    """

    path: str
    value: Any
    marks: dict[Path, Mark]

    def mark(self, loc: Sequence[Key]) -> tuple[int | None, int | None]:
        """The mark of ``loc``, or of its nearest marked ancestor."""
        key = tuple(loc)
        while True:
            found = self.marks.get(key)
            if found is not None:
                return found
            if not key:
                return None, None
            key = key[:-1]

    def line(self, loc: Sequence[Key]) -> int | None:
        return self.mark(loc)[0]


_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_FIRST = frozenset("-+.0123456789~nNtTfF")


def resolve_plain(text: str) -> Any:
    """The YAML 1.2 core-schema value of a plain (unquoted, untagged) scalar."""
    if text == "":
        return None
    if text[0] not in _FIRST:
        return text
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text[0] == "-" else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


_TAGS = "tag:yaml.org,2002:"


def _tagged(text: str, tag: str, path: str, mark: Mark) -> Any:
    name = tag[len(_TAGS) :] if tag.startswith(_TAGS) else tag
    try:
        if name in ("str", "!"):
            return text
        if name == "null":
            return None
        if name == "bool" and (text in _TRUE or text in _FALSE):
            return text in _TRUE
        if name == "int":
            value = resolve_plain(text)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        if name == "float":
            return float(text)
    except ValueError:
        pass
    raise YamlError(
        Diagnostic(
            path,
            *mark,
            "yaml.tag",
            f"unsupported tag or value: {tag} {text!r}",
            hint="remove the explicit tag; plain YAML scalars, maps and lists are supported",
        )
    )


def _diag(path: str, mark: tuple[int | None, int | None], code: str, message: str, hint: str) -> YamlError:
    return YamlError(Diagnostic(path, mark[0], mark[1], code, message, hint=hint))


def decode(data: bytes, path: str) -> str:
    """Strict UTF-8 text of ``data`` (a BOM is dropped); binary and other encodings refused."""
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise _diag(
            path, (line, None), "yaml.binary", "file is binary (contains NUL bytes), not YAML",
            "flows and configs are UTF-8 YAML text; put binary content under files/",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _diag(
            path, (line, None), "yaml.encoding",
            f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8",
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def load(
    data: bytes,
    path: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    allow_multi: bool = False,
) -> Document:
    """Load one YAML document from ``data``; raise :class:`YamlError` with a located diagnostic.

    An empty document (nothing but comments or whitespace) loads as ``None``.
    """
    if len(data) > max_bytes:
        raise _diag(
            path, (None, None), "yaml.too-large",
            f"file is {len(data)} bytes, above the limit of {max_bytes} bytes",
            "split it, or move large content to namespace files",
        )
    text = decode(data, path)
    try:
        return _build(text, path, max_depth, max_nodes, allow_multi)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where: tuple[int | None, int | None] = (
            (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        )
        problem = exc.problem or exc.context or "syntax error"
        raise _diag(
            path, where, "yaml.syntax", f"YAML syntax error: {problem}",
            "check indentation and quoting around this line",
        ) from None
    except yaml.YAMLError as exc:  # reader errors (control characters) have no problem_mark
        raise _diag(path, (None, None), "yaml.syntax", f"YAML error: {exc}", "fix the YAML") from None


class _Frame:
    __slots__ = ("anchor", "container", "key", "key_mark", "loc", "weight")

    def __init__(self, container: dict[str, Any] | list[Any], loc: Path, anchor: str | None) -> None:
        self.container = container
        self.loc = loc
        self.anchor = anchor
        self.key: str | None = None
        self.key_mark: Mark = (0, 0)
        self.weight = 1


def _build(text: str, path: str, max_depth: int, max_nodes: int, allow_multi: bool) -> Document:
    loader = _EventLoader(text)
    try:
        return _compose(loader, path, max_depth, max_nodes, allow_multi)
    finally:
        loader.dispose()


def _compose(
    loader: Any, path: str, max_depth: int, max_nodes: int, allow_multi: bool
) -> Document:
    marks: dict[Path, Mark] = {}
    anchors: dict[str, tuple[Any, int]] = {}
    stack: list[_Frame] = []
    root: Any = None
    documents = 0
    nodes = 0

    def place(value: Any, mark: Mark, weight: int) -> None:
        nonlocal root
        if not stack:
            root = value
            marks[()] = mark
            return
        frame = stack[-1]
        frame.weight += weight
        container = frame.container
        if isinstance(container, list):
            marks[(*frame.loc, len(container))] = mark
            container.append(value)
        else:
            assert frame.key is not None
            marks[(*frame.loc, frame.key)] = frame.key_mark
            container[frame.key] = value
            frame.key = None

    def child_loc() -> Path:
        if not stack:
            return ()
        frame = stack[-1]
        if isinstance(frame.container, list):
            return (*frame.loc, len(frame.container))
        assert frame.key is not None
        return (*frame.loc, frame.key)

    def expecting_key() -> bool:
        return bool(stack) and isinstance(stack[-1].container, dict) and stack[-1].key is None

    while loader.check_event():
        event = loader.get_event()
        mark = (event.start_mark.line + 1, event.start_mark.column + 1)
        kind = type(event)
        if kind is yaml.ScalarEvent:
            nodes += 1
            if event.tag is not None and event.tag != "!":
                value = _tagged(event.value, event.tag, path, mark)
            elif event.implicit[0]:
                value = resolve_plain(event.value)
            else:
                value = event.value
            if expecting_key():
                frame = stack[-1]
                key = event.value
                if key in frame.container:
                    first = marks.get((*frame.loc, key), (None, None))
                    raise _diag(
                        path, mark, "yaml.duplicate-key",
                        f"duplicate key {key!r} (first defined on line {first[0]})",
                        "remove or rename one of the two entries",
                    )
                frame.key = key
                frame.key_mark = mark
            else:
                place(value, mark, 1)
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            nodes += 1
            if expecting_key():
                raise _diag(
                    path, mark, "yaml.complex-key", "a map or list cannot be used as a key",
                    "keys must be plain strings",
                )
            if len(stack) >= max_depth:
                raise _diag(
                    path, mark, "yaml.too-deep", f"nesting deeper than {max_depth} levels",
                    "flatten the structure",
                )
            loc = child_loc()
            container: dict[str, Any] | list[Any] = {} if kind is yaml.MappingStartEvent else []
            if stack:
                parent = stack[-1]
                marks.setdefault(loc, parent.key_mark if isinstance(parent.container, dict) else mark)
            else:
                marks[()] = mark
            stack.append(_Frame(container, loc, event.anchor))
            stack[-1].key_mark = mark
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            frame = stack.pop()
            if frame.anchor is not None:
                anchors[frame.anchor] = (frame.container, frame.weight)
            if stack:
                parent = stack[-1]
                parent.weight += frame.weight
                if isinstance(parent.container, list):
                    parent.container.append(frame.container)
                else:
                    assert parent.key is not None
                    marks[(*parent.loc, parent.key)] = parent.key_mark
                    parent.container[parent.key] = frame.container
                    parent.key = None
            else:
                root = frame.container
        elif kind is yaml.AliasEvent:
            if event.anchor not in anchors:
                raise _diag(
                    path, mark, "yaml.alias", f"alias *{event.anchor} refers to no finished anchor",
                    "define the anchor before using it; an anchor cannot contain itself",
                )
            value, weight = anchors[event.anchor]
            nodes += weight
            if nodes > max_nodes:
                raise _diag(
                    path, mark, "yaml.alias-limit",
                    f"document expands to more than {max_nodes} nodes (alias expansion)",
                    "aliases that expand exponentially are refused; write the values out",
                )
            if expecting_key():
                raise _diag(
                    path, mark, "yaml.complex-key", "an alias cannot be used as a key",
                    "keys must be plain strings",
                )
            place(value, mark, weight)
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                if allow_multi:
                    break
                raise _diag(
                    path, mark, "yaml.multi-document",
                    "file holds more than one YAML document (a `---` separator)",
                    "put each flow in its own file",
                )
        if nodes > max_nodes:
            raise _diag(
                path, mark, "yaml.too-many-nodes", f"document has more than {max_nodes} nodes",
                "split the file",
            )
    # Marks of nested containers were recorded at their key; fix the root of the document.
    marks.setdefault((), (1, 1))
    return Document(path, root, marks)
