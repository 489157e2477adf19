"""Validate one Kestra flow file: YAML, schema, Kestra's rules, and its place in the repository.

Every problem is reported at once. Results are cached in process by the caller's key (the Git
blob id), so an unchanged flow is validated once per process whatever the number of commits
and instances that carry it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from headwater import schemas
from headwater.errors import Diagnostic
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import check_flow
from headwater.yamlio import Document, YamlError, load

CACHE_SIZE = 20_000  # flows; the cold path of a 10k-flow repository fits

Result = tuple[Document | None, list[Diagnostic]]
_CacheKey = tuple[str, str, str, str | None, str | None]

_cache: OrderedDict[_CacheKey, tuple[Document | None, tuple[Diagnostic, ...]]] = OrderedDict()
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached result (tests; a registry reload does not need it)."""
    with _lock:
        _cache.clear()


def validate_flow(
    data: bytes,
    path: str,
    registry: TypeRegistry,
    *,
    expect_id: str | None = None,
    expect_namespace: str | None = None,
    cache_key: str | None = None,
) -> Result:
    """The loaded flow (None when there is no usable one) and every problem found in it.

    ``expect_id`` / ``expect_namespace`` are what the file's place in the repository says the
    flow must be (its file stem, its folder's namespace). ``cache_key`` identifies ``data``
    (the Git blob id); results are cached under it together with ``path``, the registry and
    the expectations. The returned Document is shared between callers: do not mutate it.
    """
    key: _CacheKey | None = None
    if cache_key is not None:
        key = (cache_key, path, registry.fingerprint, expect_id, expect_namespace)
        with _lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit[0], list(hit[1])
    doc, diagnostics = _validate(data, path, registry, expect_id, expect_namespace)
    if key is not None:
        with _lock:
            _cache[key] = (doc, tuple(diagnostics))
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return doc, diagnostics


def _validate(
    data: bytes,
    path: str,
    registry: TypeRegistry,
    expect_id: str | None,
    expect_namespace: str | None,
) -> Result:
    try:
        doc = load(data, path)
    except YamlError as exc:
        return None, [exc.diagnostic]
    if doc.value is None:
        return None, [Diagnostic(
            path, 1, 1, "flow.empty", "the flow file is empty",
            hint="a flow needs at least `id`, `namespace` and `tasks`",
        )]
    if not isinstance(doc.value, dict):
        return None, [Diagnostic(
            path, *doc.mark(()), "flow.not-a-mapping",
            f"a flow must be a YAML mapping, not {_kind(doc.value)}",
            hint="start the file with `id: …`, `namespace: …` and `tasks:`",
        )]
    diagnostics = schemas.validate(doc, "flow") + check_flow(doc, registry)
    diagnostics += _placement(doc, expect_id, expect_namespace)
    diagnostics.sort(key=lambda d: (d.line or 0, d.column or 0))
    return doc, diagnostics


def _placement(
    doc: Document, expect_id: str | None, expect_namespace: str | None
) -> list[Diagnostic]:
    found = []
    flow_id, namespace = doc.value.get("id"), doc.value.get("namespace")
    if expect_id is not None and isinstance(flow_id, str) and flow_id != expect_id:
        found.append(Diagnostic(
            doc.path, *doc.mark(("id",)), "flow.id-mismatch",
            f"flow id '{flow_id}' differs from the file name '{expect_id}'",
            hint=f"the id must equal the file name stem: set `id: {expect_id}` "
                 f"or rename the file to {flow_id}.yaml",
        ))
    if expect_namespace is not None and isinstance(namespace, str) and namespace != expect_namespace:
        found.append(Diagnostic(
            doc.path, *doc.mark(("namespace",)), "flow.namespace-mismatch",
            f"flow namespace '{namespace}' differs from its folder's namespace "
            f"'{expect_namespace}'",
            hint=f"set `namespace: {expect_namespace}`, or move the file to the folder of "
                 f"namespace {namespace}",
        ))
    return found


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "a scalar value"
