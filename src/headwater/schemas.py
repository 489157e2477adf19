"""JSON schemas: loading, a fast validity verdict, and located diagnostics for every failure.

The schemas in ``schemas/`` (packaged as ``headwater/data/schemas``) are the single source of
the file formats. Validation has two paths:

* the verdict, taken by every file: jsonschema-rs, with each schema compiled once, answers only
  "valid or not" (a flow takes ~12 µs, guard included, against ~1.2 ms with ``jsonschema``,
  which spends most of it building errors nobody reads: benchmarks/validator_choice.py);
* the explanation, taken only when the verdict is "invalid": ``jsonschema`` walks the document
  again and each of its errors becomes a :class:`~headwater.errors.Diagnostic`.

``jsonschema`` also gives the verdict whenever jsonschema-rs would misread the value (see
:func:`_plain_json`) or cannot compile a schema, so a verdict never depends on those limits.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import jsonschema_rs

from headwater.errors import Diagnostic
from headwater.yamlio import Document, Key

if TYPE_CHECKING:  # imported where used: only an invalid file needs them (50 ms per process)
    import jsonschema  # type: ignore[import-untyped, unused-ignore]
    import referencing
    from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped, unused-ignore]

SCHEMA_DIR = Path(__file__).parent / "data" / "schemas"
MAX_DIAGNOSTICS = 100  # per document: past this, the rest is noise
# Where a packaged schema without ``$id`` lives, for resolving the relative ``$ref``s it holds
# (jsonschema-rs cannot resolve a relative reference against a ``urn:`` base).
SCHEMA_BASE = "https://headwater.dev/schemas/"


def _file_name(name: str) -> str:
    return name if name.endswith(".json") else f"{name}.schema.json"


def schema_names() -> list[str]:
    """The file names of the packaged schemas (``flow.schema.json``, …)."""
    return sorted(path.name for path in SCHEMA_DIR.glob("*.json"))


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` ("flow" or "flow.schema.json") from the packaged folder (shared:
    do not mutate it)."""
    return _load(_file_name(name))


@functools.cache
def _load(file_name: str) -> dict[str, Any]:
    path = SCHEMA_DIR / file_name
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(f"no schema named {file_name!r} in {SCHEMA_DIR}") from None
    return schema


def _schema_uri(name: str) -> str:
    return str(load_schema(name).get("$id") or urljoin(SCHEMA_BASE, _file_name(name)))


@functools.cache
def _resources() -> dict[str, dict[str, Any]]:
    """Every packaged schema under its URI and under its file name resolved against each
    schema's URI, so schemas may refer to each other by ``$id`` or by file name."""
    names = schema_names()
    found = {_schema_uri(name): load_schema(name) for name in names}
    for base in [_schema_uri(name) for name in names]:
        for name in names:
            found.setdefault(urljoin(base, name), load_schema(name))
    return found


@functools.cache
def _registry() -> referencing.Registry[Any]:
    """:func:`_resources` for ``jsonschema``, plus the bare file names: ``jsonschema`` resolves
    a relative ``$ref`` in a schema without ``$id`` against no base at all."""
    import referencing
    from referencing.jsonschema import DRAFT202012

    pairs = [*_resources().items(), *((name, load_schema(name)) for name in schema_names())]
    return referencing.Registry().with_resources(
        (uri, DRAFT202012.create_resource(schema)) for uri, schema in pairs
    )


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    import jsonschema  # type: ignore[import-untyped, unused-ignore]

    return jsonschema.Draft202012Validator(load_schema(name), registry=_registry())


@functools.cache
def _fast_validator(name: str) -> jsonschema_rs.Validator | None:
    """Schema ``name`` compiled by jsonschema-rs, or None when it cannot be (``jsonschema``
    then gives every verdict). ``offline``: a ``$ref`` outside the registry is an error, never
    a download."""
    try:
        resources = list(_resources().items())
        registry = jsonschema_rs.Registry(resources, draft=jsonschema_rs.Draft202012)
        return jsonschema_rs.Draft202012Validator(
            load_schema(name),
            registry=registry,
            base_uri=_schema_uri(name),
            validate_formats=False,  # formats are annotations only, as in jsonschema
            offline=True,
        )
    except (ValueError, jsonschema_rs.ReferencingError):
        return None


# NaN/±Infinity are refused; check_circular is off because a cycle ends in RecursionError anyway.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, check_circular=False)


def _plain_json(value: Any) -> bool:
    """Whether jsonschema-rs can judge ``value`` as ``jsonschema`` does.

    Not when it holds NaN or ±Infinity (YAML's ``.nan``, ``.inf``, ``1e400``): jsonschema-rs
    takes them for neither numbers nor null and answers differently, without raising. Nor when
    it is nested so deep that jsonschema-rs may overflow its stack, which kills the process. The
    C JSON encoder refuses both, and anything else that is not JSON, in about the time
    jsonschema-rs takes to validate. Tuples pass, and only jsonschema-rs takes them for arrays:
    YAML never yields them.
    """
    try:
        _STRICT_JSON.encode(value)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def is_valid(value: Any, schema_name: str, *, plain: bool = False) -> bool:
    """Whether ``value`` satisfies the schema: jsonschema-rs's verdict, or ``jsonschema``'s for a
    value jsonschema-rs would misread. ``plain``: the value is known to be plain JSON
    (``Document.plain``), and is not checked again."""
    name = _file_name(schema_name)
    fast = _fast_validator(name)
    if fast is not None and (plain or _plain_json(value)):
        try:
            return fast.is_valid(value)
        except ValueError:  # what it cannot convert, such as a key that is not a string
            pass
    return bool(_validator(name).is_valid(value))


def validate(doc: Document, schema_name: str) -> list[Diagnostic]:
    """One located diagnostic per schema violation in ``doc`` (empty when it is valid)."""
    if is_valid(doc.value, schema_name, plain=doc.plain):
        return []
    name = _file_name(schema_name)
    found: dict[tuple[Any, ...], Diagnostic] = {}
    for error in _validator(name).iter_errors(doc.value):
        for diag in _diagnostics(doc, _most_specific(error)):
            found.setdefault((diag.line, diag.column, diag.code, diag.message), diag)
        if len(found) >= MAX_DIAGNOSTICS:
            break
    fast = _fast_validator(name)
    if not found and fast is not None and (doc.plain or _plain_json(doc.value)):
        # Only jsonschema-rs objects: it reads `pattern` as ECMA-262, as JSON Schema says, where
        # jsonschema uses Python's `re` (whose `$` also matches before a final newline, and
        # whose `\d` and `\w` take any Unicode digit or letter). Its own errors then explain.
        for diag in _fast_diagnostics(doc, fast):
            found.setdefault((diag.line, diag.column, diag.code, diag.message), diag)
            if len(found) >= MAX_DIAGNOSTICS:
                break
    return sorted(found.values(), key=lambda d: (d.line or 0, d.column or 0, d.code, d.message))


# --- explanations ---------------------------------------------------------------------------


def _most_specific(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, the cause that best explains them instead of the alternatives."""
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]

    while error.validator in ("anyOf", "oneOf") and error.context:
        best = best_match(error.context)
        if best is None:
            break
        error = best
    return error


def format_path(path: Sequence[Key]) -> str:
    """``("tasks", 0, "id")`` → ``tasks[0].id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _owner_type(value: Any, path: Sequence[Key]) -> str | None:
    """The plugin ``type`` of ``value`` at ``path`` when it names one (for messages)."""
    node = value
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    kind = node.get("type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) and "." in kind else None


_JSON_TYPES = {dict: "a map", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}


def _describe(value: Any) -> str:
    for cls, text in _JSON_TYPES.items():
        if type(value) is cls:
            return text
    return "a number"


def _expected(types: Any) -> str:
    names = {"object": "a map", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "a boolean", "null": "null"}
    listed = [types] if isinstance(types, str) else list(types)
    return " or ".join(names.get(t, t) for t in listed)


def _diagnostics(doc: Document, error: ValidationError) -> Iterator[Diagnostic]:
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("x-hint")
    prefix = f"{format_path(path)}: " if path else ""
    code = f"schema.{error.validator}"
    instance = error.instance

    def at(loc: Sequence[Key], message: str, hint_text: str | None) -> Diagnostic:
        line, column = doc.mark(loc)
        return Diagnostic(doc.path, line, column, code, message, hint=hint_text)

    if error.validator == "required" and isinstance(instance, dict):
        owner = _owner_type(doc.value, path)
        suffix = f" ({owner})" if owner else ""
        properties = schema.get("properties", {})
        for prop in error.validator_value:
            if prop not in instance:
                prop_schema = properties.get(prop)
                prop_hint = prop_schema.get("x-hint") if isinstance(prop_schema, dict) else None
                yield at(path, f"{prefix}missing required property '{prop}'{suffix}",
                         prop_hint or f"add the `{prop}` property")
        return
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        owner = _owner_type(doc.value, path)
        known = list(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        for key in instance:
            if key in known or any(p.search(key) for p in patterns):
                continue
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                extra_hint = f"did you mean '{close[0]}'?"
            else:
                shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
                extra_hint = f"remove it; allowed here: {shown}" if known else "remove it"
            where = f" of {owner}" if owner else ""
            yield at((*path, key), f"{prefix}unknown property '{key}'{where}", extra_hint)
        return
    if error.validator in ("enum", "const"):
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        message = f"{prefix}{instance!r} is not an allowed value"
        hint = hint or "use one of: " + ", ".join(str(v) for v in allowed[:20])
    elif error.validator == "pattern" and instance == "":
        message = f"{prefix}must not be empty"
    elif error.validator == "pattern":
        message = f"{prefix}{instance!r} does not match the required pattern"
        hint = hint or f"it must match {error.validator_value}"
    elif error.validator == "type":
        message = f"{prefix}expected {_expected(error.validator_value)}, got {_describe(instance)}"
    elif error.validator in ("minItems", "minLength") and error.validator_value == 1:
        message = f"{prefix}must not be empty"
    elif error.validator == "minItems":
        message = f"{prefix}needs at least {error.validator_value} items"
    elif error.validator == "maxLength":
        message = f"{prefix}is longer than {error.validator_value} characters"
    else:
        message = f"{prefix}{error.message}"
    yield at(path, message, hint)


def _fast_diagnostics(doc: Document, fast: jsonschema_rs.Validator) -> Iterator[Diagnostic]:
    for error in fast.iter_errors(doc.value):
        path: tuple[Key, ...] = tuple(error.instance_path)
        line, column = doc.mark(path)
        prefix = f"{format_path(path)}: " if path else ""
        yield Diagnostic(doc.path, line, column, f"schema.{error.kind.name}",
                         f"{prefix}{error.message}")
