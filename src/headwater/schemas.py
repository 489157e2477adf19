"""JSON schemas: loading, a fast validity check, and located diagnostics for every failure.

The schemas in ``schemas/`` (packaged as ``headwater/data/schemas``) are the single source of
the file formats. Validation has two paths:

* the fast path, taken by almost every file: the schema compiled once into plain Python
  closures that only answer "valid or not" (``jsonschema`` spends most of its time building
  errors nobody reads; a flow takes ~1 ms with it and ~30 µs here);
* the explanation path, taken only when the fast path says "invalid": ``jsonschema`` walks the
  document again and each of its errors becomes a :class:`~headwater.errors.Diagnostic`.

The compiler knows the keywords the project's schemas use; a schema using any other keyword
simply has no fast path, so ``jsonschema`` stays the authority for what is valid.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import referencing
from jsonschema.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    ValidationError,
    best_match,
)
from referencing.jsonschema import DRAFT202012

from headwater.errors import Diagnostic
from headwater.yamlio import Document, Key

SCHEMA_DIR = Path(__file__).parent / "data" / "schemas"
MAX_DIAGNOSTICS = 100  # per document: past this, the rest is noise

Check = Callable[[Any], bool]
INLINE_URI = "urn:headwater:inline"


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
    return str(load_schema(name).get("$id") or f"urn:headwater:schema:{_file_name(name)}")


@functools.cache
def _registry() -> referencing.Registry[Any]:
    """Every packaged schema, under its ``$id`` and its file name, so schemas may refer to each other."""
    names = schema_names()
    bases = {_schema_uri(name) for name in names}
    resources: list[tuple[str, referencing.Resource[Any]]] = []
    for name in names:
        resource = DRAFT202012.create_resource(load_schema(name))
        uris = {_schema_uri(name), name} | {urljoin(base, name) for base in bases}
        resources.extend((uri, resource) for uri in uris)
    return referencing.Registry().with_resources(resources)


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name), registry=_registry())


def is_valid(value: Any, schema_name: str) -> bool:
    """Whether ``value`` satisfies the schema (the fast path when the schema allows one)."""
    name = _file_name(schema_name)
    check = _fast_check(name)
    if check is not None:
        return check(value)
    return bool(_validator(name).is_valid(value))


def validate(doc: Document, schema_name: str) -> list[Diagnostic]:
    """One located diagnostic per schema violation in ``doc`` (empty when it is valid)."""
    if is_valid(doc.value, schema_name):
        return []
    found: dict[tuple[Any, ...], Diagnostic] = {}
    for error in _validator(_file_name(schema_name)).iter_errors(doc.value):
        for diag in _diagnostics(doc, _most_specific(error)):
            found.setdefault((diag.line, diag.column, diag.code, diag.message), diag)
        if len(found) >= MAX_DIAGNOSTICS:
            break
    return sorted(found.values(), key=lambda d: (d.line or 0, d.column or 0, d.code, d.message))


# --- explanations ---------------------------------------------------------------------------


def _most_specific(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, the cause that best explains them instead of the alternatives."""
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


# --- the fast path: schema → closures ------------------------------------------------------


class _Unsupported(Exception):
    """The schema uses a keyword the compiler does not know: no fast path for it."""


_ANNOTATIONS = frozenset({
    "$schema", "$id", "$defs", "definitions", "$comment", "title", "description", "default",
    "examples", "deprecated", "readOnly", "writeOnly", "format", "contentMediaType",
    "contentEncoding", "markdownDescription",
})


_TYPE_NAMES = frozenset({"string", "object", "array", "boolean", "null", "number", "integer"})


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if name == "number":
        return True
    return isinstance(value, int) or value.is_integer()  # "integer"


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, and containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    return bool(a == b) and (isinstance(a, str) == isinstance(b, str))


class _Compiler:
    def __init__(self, roots: dict[str, Any] | None = None) -> None:
        self.roots: dict[str, Any] = dict(roots or {})
        self.done: dict[str, Check] = {}

    def root(self, uri: str) -> Any:
        if uri not in self.roots:
            for name in schema_names():
                if uri in (_schema_uri(name), name) or uri.endswith("/" + name):
                    self.roots[uri] = load_schema(name)
                    break
            else:
                raise _Unsupported(f"unknown schema {uri}")
        return self.roots[uri]

    def resolve(self, base: str, ref: str) -> tuple[str, Any]:
        if ref.startswith("#"):  # urljoin knows nothing of urn: bases
            uri, fragment = urldefrag(base)[0], ref[1:]
        else:
            uri, fragment = urldefrag(urljoin(base, ref))
        if fragment and not fragment.startswith("/"):
            raise _Unsupported(f"anchor {ref}")
        node: Any = self.root(uri)
        try:
            for part in fragment.split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise _Unsupported(f"unresolvable $ref {ref}") from None
        return f"{uri}#{fragment}", node

    def ref(self, base: str, ref: str) -> Check:
        key, node = self.resolve(base, ref)
        if key not in self.done:
            slot: list[Check] = []
            self.done[key] = lambda value: slot[0](value)  # recursion goes through the slot
            slot.append(self.compile(node, urldefrag(key)[0]))
        return self.done[key]

    def compile(self, schema: Any, base: str) -> Check:
        if schema is True or schema == {}:
            return lambda value: True
        if schema is False:
            return lambda value: False
        if not isinstance(schema, dict):
            raise _Unsupported("schema is not an object")
        if "$id" in schema and not any(schema is root for root in self.roots.values()):
            raise _Unsupported("$id below the root changes the base URI")
        checks: list[Check] = []
        unknown = [k for k in schema if k not in _ANNOTATIONS and not k.startswith("x-")]
        for key in unknown:
            handler = getattr(self, "kw_" + key.replace("$", "_"), None)
            if handler is None:
                if key in ("then", "else"):  # read by `if`; alone they mean nothing
                    continue
                raise _Unsupported(key)
            check = handler(schema, base)
            if check is not None:
                checks.append(check)
        return _all(checks)

    # keywords (each returns a check, or None when it constrains nothing)
    def kw__ref(self, schema: dict[str, Any], base: str) -> Check:
        return self.ref(base, schema["$ref"])

    def kw_type(self, schema: dict[str, Any], base: str) -> Check:
        names = schema["type"]
        listed = (names,) if isinstance(names, str) else tuple(names)
        if not _TYPE_NAMES.issuperset(listed):
            raise _Unsupported(f"type {names}")
        if listed == ("object",):
            return lambda value: isinstance(value, dict)
        if listed == ("string",):
            return lambda value: isinstance(value, str)
        if listed == ("array",):
            return lambda value: isinstance(value, list)
        return lambda value: any(_is_type(value, name) for name in listed)

    def kw_enum(self, schema: dict[str, Any], base: str) -> Check:
        options = list(schema["enum"])
        if all(isinstance(o, str) for o in options):
            allowed = frozenset(options)
            return lambda value: isinstance(value, str) and value in allowed
        return lambda value: any(_json_equal(value, o) for o in options)

    def kw_const(self, schema: dict[str, Any], base: str) -> Check:
        return self.kw_enum({"enum": [schema["const"]]}, base)

    def kw_required(self, schema: dict[str, Any], base: str) -> Check:
        names = tuple(schema["required"])
        return lambda value: not isinstance(value, dict) or all(n in value for n in names)

    def kw_properties(self, schema: dict[str, Any], base: str) -> Check:
        props = {k: self.compile(v, base) for k, v in schema["properties"].items()}
        patterns = [(re.compile(p), self.compile(s, base))
                    for p, s in schema.get("patternProperties", {}).items()]
        extra = schema.get("additionalProperties", True)
        other = None if extra is True else self.compile(extra, base)

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for key, item in value.items():
                prop = props.get(key)
                if prop is not None:
                    if not prop(item):
                        return False
                    continue
                matched = False
                for pattern, sub in patterns:
                    if pattern.search(key):
                        matched = True
                        if not sub(item):
                            return False
                if not matched and other is not None and not other(item):
                    return False
            return True

        return check

    def kw_patternProperties(self, schema: dict[str, Any], base: str) -> Check | None:
        if "properties" in schema:
            return None  # handled with properties
        return self.kw_properties({"properties": {}, **schema}, base)

    def kw_additionalProperties(self, schema: dict[str, Any], base: str) -> Check | None:
        if "properties" in schema or "patternProperties" in schema:
            return None
        return self.kw_properties({"properties": {}, **schema}, base)

    def kw_propertyNames(self, schema: dict[str, Any], base: str) -> Check:
        sub = self.compile(schema["propertyNames"], base)
        return lambda value: not isinstance(value, dict) or all(sub(k) for k in value)

    def kw_items(self, schema: dict[str, Any], base: str) -> Check:
        sub = self.compile(schema["items"], base)

        def check(value: Any) -> bool:
            if isinstance(value, list):
                for item in value:
                    if not sub(item):
                        return False
            return True

        return check

    def _bound(self, key: str, kind: type, size: Callable[[Any], float],
               ok: Callable[[float, float], bool], schema: dict[str, Any]) -> Check:
        limit = schema[key]
        return lambda value: (not isinstance(value, kind) or isinstance(value, bool)
                              or ok(size(value), limit))

    def kw_minItems(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("minItems", list, len, lambda n, m: n >= m, schema)

    def kw_maxItems(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("maxItems", list, len, lambda n, m: n <= m, schema)

    def kw_minProperties(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("minProperties", dict, len, lambda n, m: n >= m, schema)

    def kw_maxProperties(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("maxProperties", dict, len, lambda n, m: n <= m, schema)

    def kw_minLength(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("minLength", str, len, lambda n, m: n >= m, schema)

    def kw_maxLength(self, schema: dict[str, Any], base: str) -> Check:
        return self._bound("maxLength", str, len, lambda n, m: n <= m, schema)

    def _number(self, key: str, ok: Callable[[float, float], bool], schema: dict[str, Any]) -> Check:
        return self._bound(key, int | float, float, ok, schema)  # type: ignore[arg-type]

    def kw_minimum(self, schema: dict[str, Any], base: str) -> Check:
        return self._number("minimum", lambda n, m: n >= m, schema)

    def kw_maximum(self, schema: dict[str, Any], base: str) -> Check:
        return self._number("maximum", lambda n, m: n <= m, schema)

    def kw_exclusiveMinimum(self, schema: dict[str, Any], base: str) -> Check:
        return self._number("exclusiveMinimum", lambda n, m: n > m, schema)

    def kw_exclusiveMaximum(self, schema: dict[str, Any], base: str) -> Check:
        return self._number("exclusiveMaximum", lambda n, m: n < m, schema)

    def kw_pattern(self, schema: dict[str, Any], base: str) -> Check:
        search = re.compile(schema["pattern"]).search
        return lambda value: not isinstance(value, str) or search(value) is not None

    def kw_uniqueItems(self, schema: dict[str, Any], base: str) -> Check | None:
        if not schema["uniqueItems"]:
            return None

        def check(value: Any) -> bool:
            if not isinstance(value, list):
                return True
            return not any(_json_equal(a, b) for i, a in enumerate(value) for b in value[i + 1:])

        return check

    def kw_allOf(self, schema: dict[str, Any], base: str) -> Check:
        parts = schema["allOf"]
        keys = {key for key in map(_discriminated, parts) if key is not None}
        if len(keys) == 1:
            checks = [self._dispatch(parts, keys.pop(), base)]
            checks += [self.compile(p, base) for p in parts if _discriminated(p) is None]
        else:
            checks = [self.compile(p, base) for p in parts]
        return _all(checks)

    def kw_anyOf(self, schema: dict[str, Any], base: str) -> Check:
        subs = [self.compile(s, base) for s in schema["anyOf"]]
        return lambda value: any(sub(value) for sub in subs)

    def kw_oneOf(self, schema: dict[str, Any], base: str) -> Check:
        subs = [self.compile(s, base) for s in schema["oneOf"]]
        return lambda value: sum(1 for sub in subs if sub(value)) == 1

    def kw_not(self, schema: dict[str, Any], base: str) -> Check:
        sub = self.compile(schema["not"], base)
        return lambda value: not sub(value)

    def kw_if(self, schema: dict[str, Any], base: str) -> Check:
        cond = self.compile(schema["if"], base)
        then = self.compile(schema.get("then", True), base)
        other = self.compile(schema.get("else", True), base)
        return lambda value: then(value) if cond(value) else other(value)

    def _dispatch(self, parts: Iterable[Any], field: str, base: str) -> Check:
        """``allOf`` items ``if {field: const/enum} then S`` as one dictionary lookup."""
        table: dict[str, list[Check]] = {}
        everything: list[Check] = []
        for part in parts:
            if _discriminated(part) != field:
                continue
            sub = part["if"]["properties"][field]
            then = self.compile(part["then"], base)
            everything.append(then)
            for option in sub["enum"] if "enum" in sub else [sub["const"]]:
                table.setdefault(option, []).append(then)

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return all(then(value) for then in everything)  # `if` holds vacuously
            kind = value.get(field)
            if not isinstance(kind, str):
                return True
            return all(then(value) for then in table.get(kind, ()))

        return check


def _all(checks: list[Check]) -> Check:
    """A check passing when every one of ``checks`` passes (unrolled: this is the hot path)."""
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    if len(checks) == 3:
        first, second, third = checks
        return lambda value: first(value) and second(value) and third(value)

    def check(value: Any) -> bool:
        for one in checks:  # noqa: SIM110 - a plain loop is faster than all(<generator>)
            if not one(value):
                return False
        return True

    return check


def _discriminated(part: Any) -> str | None:
    """K when ``part`` is ``{"if": {"properties": {K: {"const"|"enum": strings}},
    "required": [K]}, "then": S}``, else None."""
    if not isinstance(part, dict) or set(part) != {"if", "then"}:
        return None
    cond = part["if"]
    if not isinstance(cond, dict) or set(cond) != {"properties", "required"}:
        return None
    props = cond["properties"]
    if not isinstance(props, dict) or len(props) != 1 or cond["required"] != list(props):
        return None
    ((key, sub),) = props.items()
    if not isinstance(sub, dict) or len(sub) != 1:
        return None
    options = sub.get("enum", [sub["const"]] if "const" in sub else None)
    if isinstance(options, list) and all(isinstance(o, str) for o in options):
        return str(key)
    return None


@functools.cache
def _fast_check(name: str) -> Check | None:
    try:
        return _Compiler().ref(_schema_uri(name), "#")
    except _Unsupported:
        return None


def compile_check(schema: Any) -> Check | None:
    """``schema`` compiled into a validity check, or None when it uses unsupported keywords.

    ``$ref`` may point inside ``schema`` or into the packaged schemas (by file name).
    """
    base = str(schema.get("$id", INLINE_URI)) if isinstance(schema, dict) else INLINE_URI
    try:
        return _Compiler({base: schema}).ref(base, "#")
    except _Unsupported:
        return None

