"""The YAML loader: libyaml events, YAML 1.2 core scalars, marks for every node, hard limits.

Why events and not ``yaml.load``: libyaml's composer and PyYAML's constructor recurse once per
nesting level and expand aliases without bound, so hostile input can exhaust the stack or the
memory. Here libyaml only tokenises (it keeps its own explicit stack) and this module builds
the value iteratively, counting depth, nodes and alias expansions as it goes. Its common case
(no anchor, alias or explicit tag, no error) is compiled (``_compose.c``); this module's
composer (``compose_events``) stays the reference and takes everything else.

Scalars follow the YAML 1.2 core schema: ``on``/``yes``/``no`` stay strings, ``0777`` is the
integer 777, and there are no implicit timestamps, so every value is plain JSON data.
"""

from __future__ import annotations

import math
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

try:  # the common case of _compose, compiled (src/headwater/_compose.c)
    from headwater._compose import compose as _compiled
except ImportError:  # pragma: no cover - built by `make`; a plain pip install may lack it
    _compiled = None  # type: ignore[assignment]

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

    What the loader notes on the way, so no one walks the value again for it (None / False:
    not noted, as in a Document made by hand):

    - ``mentions``: every string that may name a namespace file or a secret (one holding
      ``read``, ``nsfile:`` or ``secret``; a key only if it also holds ``(`` or ``nsfile:``),
      in document order, keys before their values, each with the mark ``mark`` gives its
      place (an alias repeats those of its anchor, at the alias's mark);
    - ``plain``: the value is plain JSON, no NaN or ±Infinity in it, nested at most
      ``MAX_DEPTH`` deep (see ``schemas``); not noted when an alias repeats a map or a list
      (it may nest deeper than the text does).
    """

    path: str
    value: Any
    marks: dict[Path, Mark]
    mentions: tuple[tuple[Mark, str], ...] | None = None
    plain: bool = False

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
_WORDS = frozenset("~nNtTfF")
_NUMBER_FIRST = _FIRST - _WORDS


def mentions(text: str) -> bool:
    """Whether a string value may name a namespace file or a secret (``Document.mentions``)."""
    return "read" in text or "nsfile:" in text or "secret" in text


def key_mentions(text: str) -> bool:
    """Whether a mapping key may: it must hold a call or a URI as well."""
    return ("(" in text or "nsfile:" in text) and mentions(text)


def resolve_plain(text: str) -> Any:
    """The YAML 1.2 core-schema value of a plain (unquoted, untagged) scalar."""
    if text == "":
        return None
    first = text[0]
    if first not in _FIRST:
        return text
    if first in _WORDS:  # null, true, false or a string: no number starts with a letter or ~
        if text in _NULLS:
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return text
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


def _build(text: str, path: str, max_depth: int, max_nodes: int, allow_multi: bool) -> Document:
    if _compiled is not None:
        done = _compiled(text, max_depth, max_nodes, max_depth <= MAX_DEPTH, resolve_plain)
        if done is not None:
            return Document(path, *done)
    return compose_events(text, path, max_depth, max_nodes, allow_multi)


def compose_events(
    text: str, path: str, max_depth: int, max_nodes: int, allow_multi: bool
) -> Document:
    """The reference composer, over PyYAML's events of libyaml's parse.

    The compiled one (``_compose.c``) builds the same for a document without anchors, aliases
    or explicit scalar tags that loads without an error, and leaves the rest to this one.
    """
    loader = _EventLoader(text)
    try:
        return _compose(loader, path, max_depth, max_nodes, allow_multi)
    finally:
        loader.dispose()


_SCALAR = yaml.ScalarEvent
_MAP_START, _SEQ_START = yaml.MappingStartEvent, yaml.SequenceStartEvent
_MAP_END, _SEQ_END = yaml.MappingEndEvent, yaml.SequenceEndEvent
_ALIAS, _DOC_START = yaml.AliasEvent, yaml.DocumentStartEvent


def _compose(
    loader: Any, path: str, max_depth: int, max_nodes: int, allow_multi: bool
) -> Document:
    """Build the value of the first document from the loader's events, with its marks.

    One loop over the events; the open container's state is kept in local variables (its
    parents' on ``stack``), since this runs for every node of every file.
    """
    marks: dict[Path, Mark] = {}
    # anchor -> (value, weight, the texts of its mentions)
    anchors: dict[str, tuple[Any, int, tuple[str, ...]]] = {}
    found: list[tuple[Mark, str]] = []  # Document.mentions
    plain = max_depth <= MAX_DEPTH  # until a NaN or an infinity
    # The open containers but the innermost: (container, is_map, loc, key, key_mark, weight,
    # anchor, since), as they were when their child container opened.
    stack: list[tuple[Any, bool, Path, str | None, Mark, int, str | None, int]] = []
    depth = 0  # open containers, the innermost included
    # The innermost open container; at depth 0 the "container" is the document itself.
    container: Any = None
    is_map = False
    loc: Path = ()
    key: str | None = None  # in a map, the key whose value comes next
    key_mark: Mark = (0, 0)
    weight = 1  # nodes in the container, itself and expanded aliases included
    anchor: str | None = None
    since = 0  # the container's first mention in ``found``
    root: Any = None
    documents = 0
    nodes = 0
    get_event = loader.get_event

    while (event := get_event()) is not None:
        kind = event.__class__
        if kind is _SCALAR:
            nodes += 1
            start = event.start_mark
            mark = (start.line + 1, start.column + 1)
            tag = event.tag
            text = event.value
            if is_map and key is None:  # a key
                if tag is not None and tag != "!":
                    value = _tagged(text, tag, path, mark)
                elif not event.implicit[0]:
                    value = text
                elif event.anchor is not None or (text and text[0] in _NUMBER_FIRST):
                    value = resolve_plain(text)  # (a number: int() refuses too many digits)
                else:
                    value = text  # a key's own value only matters to an anchor
                if value.__class__ is float and not math.isfinite(value):
                    plain = False
                if text in container:
                    first = marks.get((*loc, text), (None, None))
                    raise _diag(
                        path, mark, "yaml.duplicate-key",
                        f"duplicate key {text!r} (first defined on line {first[0]})",
                        "remove or rename one of the two entries",
                    )
                if ("(" in text or "nsfile:" in text) and mentions(text):
                    found.append((mark, text))
                key = text
                key_mark = mark
            else:
                if tag is not None and tag != "!":
                    value = _tagged(text, tag, path, mark)
                    if value.__class__ is float and not math.isfinite(value):
                        plain = False
                elif event.implicit[0]:
                    if text and text[0] not in _FIRST:  # resolve_plain, inlined for a plain word
                        value = text
                    else:
                        value = resolve_plain(text)
                        if value.__class__ is float and not math.isfinite(value):
                            plain = False
                else:
                    value = text
                if value.__class__ is str and ("read" in value or "nsfile:" in value or "secret" in value):
                    found.append((key_mark if key is not None else mark, value))
                weight += 1
                if key is not None:  # (past a key: in a map, a key is always pending here)
                    marks[(*loc, key)] = key_mark
                    container[key] = value
                    key = None
                elif depth:
                    marks[(*loc, len(container))] = mark
                    container.append(value)
                else:
                    root = value
                    marks[()] = mark
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1, (value,) if value.__class__ is str and mentions(value) else ())
        elif kind is _MAP_START or kind is _SEQ_START:
            nodes += 1
            start = event.start_mark
            mark = (start.line + 1, start.column + 1)
            if is_map and key is None:
                raise _diag(
                    path, mark, "yaml.complex-key", "a map or list cannot be used as a key",
                    "keys must be plain strings",
                )
            if depth >= max_depth:
                raise _diag(
                    path, mark, "yaml.too-deep", f"nesting deeper than {max_depth} levels",
                    "flatten the structure",
                )
            if key is not None:
                child: Path = (*loc, key)
                marks[child] = key_mark
            elif depth:
                child = (*loc, len(container))
                marks[child] = mark
            else:
                child = ()
                marks[()] = mark
            stack.append((container, is_map, loc, key, key_mark, weight, anchor, since))
            depth += 1
            is_map = kind is _MAP_START
            container = {} if is_map else []
            loc = child
            key = None
            key_mark = mark
            weight = 1
            anchor = event.anchor
            since = len(found)
        elif kind is _MAP_END or kind is _SEQ_END:
            done, done_weight = container, weight
            if anchor is not None:
                anchors[anchor] = (done, done_weight, tuple(text for _m, text in found[since:]))
            container, is_map, loc, key, key_mark, weight, anchor, since = stack.pop()
            depth -= 1
            if is_map:  # its mark was recorded at its key when it opened
                weight += done_weight
                container[key] = done
                key = None
            elif depth:
                weight += done_weight
                container.append(done)
            else:
                root = done
        elif kind is _ALIAS:
            start = event.start_mark
            mark = (start.line + 1, start.column + 1)
            if event.anchor not in anchors:
                raise _diag(
                    path, mark, "yaml.alias", f"alias *{event.anchor} refers to no finished anchor",
                    "define the anchor before using it; an anchor cannot contain itself",
                )
            value, count, texts = anchors[event.anchor]
            nodes += count
            if nodes > max_nodes:
                raise _diag(
                    path, mark, "yaml.alias-limit",
                    f"document expands to more than {max_nodes} nodes (alias expansion)",
                    "aliases that expand exponentially are refused; write the values out",
                )
            if is_map and key is None:
                raise _diag(
                    path, mark, "yaml.complex-key", "an alias cannot be used as a key",
                    "keys must be plain strings",
                )
            weight += count
            if value.__class__ is dict or value.__class__ is list:
                plain = False  # (how deep it nests, the text does not say)
            if texts:  # inside an alias, every place has the alias's mark
                at = key_mark if key is not None else mark
                found.extend((at, text) for text in texts)
            if key is not None:
                marks[(*loc, key)] = key_mark
                container[key] = value
                key = None
            elif depth:
                marks[(*loc, len(container))] = mark
                container.append(value)
            else:  # pragma: no cover - an alias needs an anchor, so it is never the root
                root = value
                marks[()] = mark
            continue
        elif kind is _DOC_START:
            documents += 1
            if documents > 1:
                if allow_multi:
                    break
                start = event.start_mark
                raise _diag(
                    path, (start.line + 1, start.column + 1), "yaml.multi-document",
                    "file holds more than one YAML document (a `---` separator)",
                    "put each flow in its own file",
                )
            continue
        else:  # stream and document ends: no node
            continue
        if nodes > max_nodes:
            raise _diag(
                path, mark, "yaml.too-many-nodes", f"document has more than {max_nodes} nodes",
                "split the file",
            )
    # Marks of nested containers were recorded at their key; fix the root of the document.
    marks.setdefault((), (1, 1))
    return Document(path, root, marks, tuple(found), plain)
