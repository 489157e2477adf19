"""flows.py: one flow file through YAML, schema, rules and its place in the repository."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from headwater import flows
from headwater.kestra_types import TypeRegistry

REGISTRY = TypeRegistry.builtin()
PATH = "tenants/acme/company/flows/hello.yaml"
HELLO = b"""\
id: hello
namespace: company
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    flows.clear_cache()
    yield
    flows.clear_cache()


def test_a_valid_flow_gives_its_document_and_no_diagnostic() -> None:
    doc, diags = flows.validate_flow(HELLO, PATH, REGISTRY, expect_id="hello",
                                     expect_namespace="company")
    assert diags == []
    assert doc is not None and doc.value["id"] == "hello" and doc.path == PATH


@pytest.mark.parametrize("data", [b"", b"# only a comment\n", b"---\n"])
def test_an_empty_file(data: bytes) -> None:
    doc, diags = flows.validate_flow(data, PATH, REGISTRY)
    assert doc is None
    assert [(d.code, d.path, d.line) for d in diags] == [("flow.empty", PATH, 1)]


@pytest.mark.parametrize("data", [b"- id: hello\n", b"just a string\n", b"42\n"])
def test_a_flow_that_is_not_a_mapping(data: bytes) -> None:
    doc, diags = flows.validate_flow(data, PATH, REGISTRY)
    assert doc is None
    assert [d.code for d in diags] == ["flow.not-a-mapping"]


def test_a_yaml_error_becomes_its_diagnostic() -> None:
    doc, diags = flows.validate_flow(HELLO + b"id: again\n", PATH, REGISTRY)
    assert doc is None
    assert [(d.code, d.line) for d in diags] == [("yaml.duplicate-key", 7)]


def test_id_must_equal_the_file_stem() -> None:
    _, diags = flows.validate_flow(HELLO, PATH.replace("hello", "bye"), REGISTRY, expect_id="bye")
    (diag,) = diags
    assert (diag.code, diag.line, diag.column) == ("flow.id-mismatch", 1, 1)
    assert diag.hint and "file name" in diag.hint and "id: bye" in diag.hint


def test_namespace_must_equal_the_folder_namespace() -> None:
    _, diags = flows.validate_flow(HELLO, PATH, REGISTRY, expect_namespace="company.team")
    (diag,) = diags
    assert (diag.code, diag.line) == ("flow.namespace-mismatch", 2)
    assert "company.team" in diag.message


def test_schema_and_rule_problems_are_reported_together_in_file_order() -> None:
    data = b"""\
id: hello
namespace: company
labels: {system.id: x}
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
  - id: a
    type: io.kestra.plugin.core.log.Lgo
    message: m
"""
    _, diags = flows.validate_flow(data, PATH, REGISTRY)
    assert [(d.line, d.code) for d in diags] == [
        (3, "flow.system-label"),
        (5, "schema.required"),
        (7, "flow.duplicate-task-id"),
        (8, "flow.unknown-type"),
    ]


def test_rules_still_run_when_the_schema_fails_structurally() -> None:
    data = b"id: hello\nnamespace: company\ntasks: {not: a list}\nlabels: {system.x: y}\n"
    _, diags = flows.validate_flow(data, PATH, REGISTRY)
    assert {d.code for d in diags} == {"schema.type", "flow.system-label"}


def test_results_are_cached_by_key_and_path() -> None:
    first = flows.validate_flow(HELLO, PATH, REGISTRY, cache_key="blob1")
    # Same key: the cached result, even for other bytes (the key says they are the same blob).
    again = flows.validate_flow(b"garbage: [", PATH, REGISTRY, cache_key="blob1")
    assert again[0] is first[0] and again[1] == first[1]
    # Another path: validated afresh, and diagnostics carry that path.
    _, diags = flows.validate_flow(b"[]", "other.yaml", REGISTRY, cache_key="blob1")
    assert [d.path for d in diags] == ["other.yaml"]


def test_the_cache_separates_registries_and_expectations() -> None:
    data = b"id: hello\nnamespace: company\ntasks:\n  - {id: l, type: io.kestra.plugin.core.flow.Loop}\n"
    _, plain = flows.validate_flow(data, PATH, REGISTRY, cache_key="b")
    extended = REGISTRY.with_extra(["io.kestra.plugin.core.flow.Loop"])
    _, with_loop = flows.validate_flow(data, PATH, extended, cache_key="b")
    assert [d.code for d in plain] == ["flow.unknown-type"] and with_loop == []
    _, expecting = flows.validate_flow(data, PATH, extended, cache_key="b", expect_id="other")
    assert [d.code for d in expecting] == ["flow.id-mismatch"]


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "CACHE_SIZE", 2)
    for key in ("a", "b", "c"):
        flows.validate_flow(HELLO, PATH, REGISTRY, cache_key=key)
    assert len(flows._cache) == 2


def test_callers_may_change_the_returned_list() -> None:
    _, diags = flows.validate_flow(b"", PATH, REGISTRY, cache_key="k")
    diags.clear()
    assert flows.validate_flow(b"", PATH, REGISTRY, cache_key="k")[1] != []
