"""schemas.py: loading, the compiled fast path, and located diagnostics (flow.schema.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from headwater import schemas
from headwater.errors import Diagnostic
from headwater.yamlio import load

SCHEMA_FOLDER = Path(__file__).resolve().parents[1] / "schemas"

MINIMAL = """\
id: hello
namespace: company.team
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


def check(text: str) -> list[Diagnostic]:
    return schemas.validate(load(text.encode(), "flows/hello.yaml"), "flow")


def codes(text: str) -> list[str]:
    return [d.code for d in check(text)]


# --- loading --------------------------------------------------------------------------------


def test_load_schema_by_short_or_file_name() -> None:
    assert schemas.load_schema("flow") is schemas.load_schema("flow.schema.json")
    assert schemas.load_schema("flow")["title"] == "Kestra flow"


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        schemas.load_schema("nope")


def test_packaged_folder_is_the_top_level_schemas_folder() -> None:
    assert "flow.schema.json" in schemas.schema_names()
    assert set(schemas.schema_names()) == {p.name for p in SCHEMA_FOLDER.glob("*.json")}


@pytest.mark.parametrize("name", schemas.schema_names())
def test_every_packaged_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    Draft202012Validator.check_schema(schemas.load_schema(name))


# --- flow.schema.json: what passes ----------------------------------------------------------


def test_minimal_flow_is_valid() -> None:
    assert check(MINIMAL) == []


def test_plugin_types_outside_core_accept_any_property() -> None:
    assert check(MINIMAL + """\
  - id: script
    type: io.kestra.plugin.scripts.python.Script
    containerImage: python:3.12
    anything: {goes: [1, 2]}
""") == []


@pytest.mark.parametrize("value", ["3", "{{ inputs.n }}", 3])
def test_expressions_are_accepted_where_kestra_renders_non_string_properties(value: Any) -> None:
    assert check(MINIMAL + f"""\
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    concurrent: {value!r}
    timeout: "{{{{ vars.timeout }}}}"
    disabled: "{{{{ inputs.off }}}}"
    tasks:
      - id: inner
        type: io.kestra.plugin.core.debug.Return
""") == []


def test_labels_as_map_or_as_list_of_key_value() -> None:
    assert check(MINIMAL + "labels: {team: data, tier: 1}\n") == []
    assert check(MINIMAL + "labels:\n  - key: team\n    value: data\n") == []
    assert codes(MINIMAL + "labels:\n  - key: team\n") == ["schema.required"]


def test_legacy_properties_are_still_accepted() -> None:
    text = MINIMAL + """\
taskDefaults:
  - type: io.kestra.plugin.core.log.Log
    values: {level: WARN}
listeners:
  - tasks:
      - id: notify
        type: io.kestra.plugin.core.log.Log
        message: done
inputs:
  - name: legacy
    type: STRING
"""
    assert check(text) == []


# --- flow.schema.json: what fails, with which code, where ----------------------------------


def test_missing_tasks_is_reported_at_the_top_with_a_hint() -> None:
    (diag,) = check("id: hello\nnamespace: company.team\n")
    assert (diag.code, diag.line, diag.column) == ("schema.required", 1, 1)
    assert "'tasks'" in diag.message
    assert diag.hint and "at least one task" in diag.hint
    assert diag.path == "flows/hello.yaml"


def test_unknown_top_level_property_suggests_the_closest_one() -> None:
    (diag,) = check(MINIMAL + "variabels: {a: 1}\n")
    assert diag.code == "schema.additionalProperties"
    assert diag.line == 7 and "variabels" in diag.message
    assert diag.hint == "did you mean 'variables'?"


def test_unknown_property_on_a_strict_core_task_names_the_task_type() -> None:
    (diag,) = check(MINIMAL.replace("message: hi", "message: hi\n    mesage: typo"))
    assert diag.code == "schema.additionalProperties"
    assert (diag.line, diag.column) == (7, 5)
    assert "io.kestra.plugin.core.log.Log" in diag.message
    assert diag.hint == "did you mean 'message'?"


@pytest.mark.parametrize("return_type", [
    "io.kestra.plugin.core.debug.Return",
    "io.kestra.core.tasks.debugs.Return",  # legacy alias: same strict shape
])
def test_return_is_strict_under_every_name(return_type: str) -> None:
    diags = check(MINIMAL + f"  - id: r\n    type: {return_type}\n    invalid: x\n")
    assert [d.code for d in diags] == ["schema.additionalProperties"]


@pytest.mark.parametrize(("snippet", "code"), [
    ("id: 'my flow'", "schema.pattern"),
    ("id: ''", "schema.pattern"),
    ("namespace: Company", "schema.pattern"),
    ("revision: 0", "schema.minimum"),
    ("disabled: maybe", "schema.type"),
    ("concurrency: {limit: 1, behavior: WAIT}", "schema.enum"),
])
def test_top_level_constraints(snippet: str, code: str) -> None:
    key = snippet.split(":")[0]
    lines = [row for row in MINIMAL.splitlines() if not row.startswith(key + ":")]
    diags = check(snippet + "\n" + "\n".join(lines) + "\n")  # the offending line comes first
    assert [(d.code, d.line) for d in diags] == [(code, 1)]


def test_empty_id_says_must_not_be_empty() -> None:
    (diag,) = check(MINIMAL.replace("id: hello", "id: ''"))
    assert diag.message == "id: must not be empty"


def test_too_long_flow_id() -> None:
    (diag,) = check(MINIMAL.replace("id: hello", "id: " + "a" * 101))
    assert diag.code == "schema.maxLength"


def test_input_type_outside_the_enum_lists_the_allowed_types() -> None:
    (diag,) = check(MINIMAL + "inputs:\n  - id: x\n    type: FOO\n")
    assert diag.code == "schema.enum"
    assert (diag.line, diag.column) == (9, 5)
    assert diag.hint and "STRING" in diag.hint and "MULTISELECT" in diag.hint


def test_input_without_id_or_name_reports_the_missing_id_not_the_alternatives() -> None:
    (diag,) = check(MINIMAL + "inputs:\n  - type: STRING\n")
    assert diag.code == "schema.required" and "'id'" in diag.message


def test_nested_tasks_are_validated_recursively_and_located() -> None:
    text = MINIMAL + """\
  - id: outer
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: if
        type: io.kestra.plugin.core.flow.If
        condition: "{{ true }}"
        then:
          - id: deep
            type: io.kestra.plugin.core.log.Log
"""
    (diag,) = check(text)
    assert diag.code == "schema.required"
    assert diag.message.startswith("tasks[1].tasks[0].then[0]: missing required property 'message'")
    assert (diag.line, diag.column) == (14, 13)  # the item's first key


@pytest.mark.parametrize(("tasks", "code"), [
    ("", "schema.required"),
    ("    tasks: []\n", "schema.minItems"),
    ("    tasks: null\n", "schema.type"),
])
def test_container_tasks_must_be_a_non_empty_list(tasks: str, code: str) -> None:
    text = MINIMAL + "  - id: par\n    type: io.kestra.plugin.core.flow.Parallel\n" + tasks
    assert codes(text) == [code]


def test_dag_entries_are_strict_and_their_tasks_validated() -> None:
    text = MINIMAL + """\
  - id: dag
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task: {id: a, type: io.kestra.plugin.core.log.Log}
        dependOn: [b]
"""
    assert sorted(codes(text)) == ["schema.additionalProperties", "schema.required"]


def test_duration_must_be_iso_8601_or_an_expression() -> None:
    sleep = MINIMAL + "  - id: s\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: {}\n"
    assert check(sleep.format("PT1.5s")) == []
    assert check(sleep.format("'{{ inputs.wait }}'")) == []
    (diag,) = check(sleep.format("5 minutes"))
    assert diag.code == "schema.pattern" and diag.hint and "PT" in diag.hint


def test_switch_defaults_may_be_null_but_not_empty() -> None:
    switch = MINIMAL + """\
  - id: sw
    type: io.kestra.plugin.core.flow.Switch
    value: x
    cases: {{x: [{{id: a, type: io.kestra.plugin.core.log.Log, message: m}}]}}
    defaults: {}
"""
    assert check(switch.format("null")) == []
    assert codes(switch.format("[]")) == ["schema.minItems"]


def test_every_problem_is_reported_at_once_sorted_by_location() -> None:
    text = "id: 'bad id'\nnamespace: UPPER\ntasks:\n  - type: io.kestra.plugin.core.log.Log\n"
    diags = check(text)
    assert [(d.line, d.code) for d in diags] == [
        (1, "schema.pattern"), (2, "schema.pattern"),
        (4, "schema.required"), (4, "schema.required"),
    ]


def test_validate_is_generic_over_the_packaged_schemas() -> None:
    doc = load(b"[1, 2]\n", "tenants/acme/tenant.yaml")
    for name in schemas.schema_names():
        for diag in schemas.validate(doc, name):
            assert diag.code.startswith("schema.") and diag.path == doc.path


# --- the fast path agrees with jsonschema ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
    | st.sampled_from(["", "x", "id", "tasks", "STRING", "PT1S", "{{ x }}", "io.kestra.plugin.core.log.Log"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "type", "tasks", "namespace", "message", "value", "a", "limit"]),
        children, max_size=5,
    ),
    max_leaves=20,
)


def reference(name: str) -> Draft202012Validator:
    """Plain jsonschema over the packaged schema, with the same cross-schema registry."""
    return Draft202012Validator(schemas.load_schema(name), registry=schemas._registry())


REFERENCES = {name: reference(name) for name in schemas.schema_names()}


@pytest.mark.parametrize("name", schemas.schema_names())
@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_fast_path_agrees_with_jsonschema(name: str, value: Any) -> None:
    assert schemas.is_valid(value, name) == REFERENCES[name].is_valid(value)


def test_fast_path_agrees_on_flows_near_valid() -> None:
    base = load(MINIMAL.encode(), "x.yaml").value
    variants: list[Any] = [base, {**base, "tasks": []}, {**base, "tasks": [{"id": "a"}]}]
    variants += [{**base, "tasks": [{"id": "a", "type": t}]} for t in (
        "io.kestra.plugin.core.debug.Return", "io.kestra.plugin.core.flow.Sequential", 5, None)]
    for value in variants:
        assert schemas.is_valid(value, "flow") == REFERENCES["flow.schema.json"].is_valid(value)


SMALL_SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer", "minimum": 1, "exclusiveMaximum": 5},
    {"enum": [1, "a", True, None, [1]]},
    {"const": {"a": [1, 2]}},
    {"type": ["string", "null"], "minLength": 2, "maxLength": 3, "pattern": "^x"},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2,
     "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
     "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False},
    {"additionalProperties": {"type": "boolean"}, "propertyNames": {"maxLength": 2},
     "minProperties": 1, "maxProperties": 2},
    {"anyOf": [{"type": "integer"}, {"type": "object"}], "not": {"const": 2}},
    {"oneOf": [{"type": "number"}, {"type": "integer"}]},
    {"if": {"required": ["a"]}, "then": {"required": ["b"]}, "else": {"type": "array"}},
    {"allOf": [
        {"if": {"properties": {"k": {"const": "A"}}, "required": ["k"]}, "then": {"required": ["a"]}},
        {"if": {"properties": {"k": {"enum": ["B", "C"]}}, "required": ["k"]},
         "then": {"required": ["b"]}},
        {"type": "object"},
    ]},
    {"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "properties": {"k": {"type": "string"}, "a": {"$ref": "#/$defs/node"}},
    }}},
]
small_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 6) | st.sampled_from([1.0, 2.5, "", "x", "xy", "A", "B"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "k", "xa", "abc"]), children, max_size=3),
    max_leaves=10,
)


@pytest.mark.parametrize("schema", SMALL_SCHEMAS, ids=lambda s: next(iter(s)))
@settings(max_examples=200, deadline=None)
@given(value=small_values)
def test_compiled_keywords_agree_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    compiled = schemas.compile_check(schema)
    assert compiled is not None
    assert compiled(value) == Draft202012Validator(schema).is_valid(value)


@pytest.mark.parametrize("schema", [
    {"prefixItems": [{"type": "string"}]},
    {"unevaluatedProperties": False},
    {"$ref": "#anchor"},
    {"$ref": "other.json#/x"},
    {"properties": {"a": {"$id": "urn:x", "type": "string"}}},
    {"type": "integer", "multipleOf": 2},
])
def test_unsupported_keywords_have_no_fast_path(schema: dict[str, Any]) -> None:
    assert schemas.compile_check(schema) is None


def test_format_path() -> None:
    assert schemas.format_path(("tasks", 0, "then", 2, "id")) == "tasks[0].then[2].id"
    assert schemas.format_path(()) == ""
