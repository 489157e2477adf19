"""schemas.py: loading, the jsonschema-rs verdict, and located diagnostics (flow.schema.json)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from headwater import render, schemas
from headwater.errors import Diagnostic
from headwater.plan import compute
from headwater.resources import make
from headwater.yamlio import Key, YamlError, load
from tests.test_conformance import CORPUS

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


# --- jsonschema-rs gives the verdict, and agrees with jsonschema --------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
    | st.sampled_from(["", "x", "id", "tasks", "STRING", "PT1S", "{{ x }}", "io.kestra.plugin.core.log.Log"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "type", "tasks", "namespace", "message", "value", "a", "limit",
                         "labels", "revision", "version", "instances", "count"]),
        children, max_size=5,
    ),
    max_leaves=20,
)
# numbers YAML can produce that jsonschema-rs reads differently or not at all
odd_numbers = (
    st.floats() | st.integers()
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**63, -(2**63) - 1, 10**400])
)
odd_values = st.recursive(
    odd_numbers | st.sampled_from(["x", "id", "{{ x }}"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["id", "namespace", "tasks", "labels", "revision", "version", "count"]),
        children, max_size=4,
    ),
    max_leaves=10,
)


def reference(name: str) -> Draft202012Validator:
    """Plain jsonschema over the packaged schema, with the same cross-schema registry."""
    return Draft202012Validator(schemas.load_schema(name), registry=schemas._registry())


REFERENCES = {name: reference(name) for name in schemas.schema_names()}


def fast(name: str) -> jsonschema_rs.Validator:
    validator = schemas._fast_validator(name)
    assert validator is not None, f"jsonschema-rs cannot compile {name}: every verdict is slow"
    return validator


def sample_documents() -> list[tuple[str, Any]]:
    """Every YAML file of the sample repository and of the conformance corpus that loads."""
    repo = Path(__file__).resolve().parents[1] / "sample-repo"
    paths = sorted(repo.rglob("*.yaml"))
    if CORPUS is not None:
        paths += sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml"))
    docs = []
    for path in paths:
        try:
            docs.append((str(path), load(path.read_bytes(), str(path)).value))
        except YamlError:
            continue
    return docs


def sample_plan() -> Any:
    """A plan as `headwater plan -o json` writes it: a create, an update, a delete and drift."""
    hello, old_hello = (make("acme", "company", "flow", "hello.yaml", t) for t in (b"a", b"b"))
    kv, drifted = (make("acme", "company", "kv", "k", t) for t in (b"v", b"w"))
    gone = make("acme", "company", "file", "x.sql", b"x")
    managed = {r.key: r.hash for r in (old_hello, gone, kv)}
    actual = {r.key: r for r in (old_hello, gone, drifted)}
    plan = compute({hello.key: hello, kv.key: kv}, actual, instance="dev", revision="b" * 40,
                   base="a" * 40, managed=managed)
    return json.loads(render.plan_json(plan))


SAMPLES = [*sample_documents(), ("a plan", sample_plan())]


@pytest.mark.parametrize("name", schemas.schema_names())
def test_every_packaged_schema_compiles_with_jsonschema_rs(name: str) -> None:
    fast(name)


@pytest.mark.parametrize("name", schemas.schema_names())
@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_jsonschema_rs_agrees_with_jsonschema(name: str, value: Any) -> None:
    assert fast(name).is_valid(value) == REFERENCES[name].is_valid(value)


@pytest.mark.parametrize("name", schemas.schema_names())
def test_jsonschema_rs_agrees_with_jsonschema_on_sample_documents(name: str) -> None:
    assert len(SAMPLES) >= 15
    for label, value in SAMPLES:
        assert fast(name).is_valid(value) == REFERENCES[name].is_valid(value), label


def test_jsonschema_rs_agrees_on_flows_near_valid() -> None:
    base = load(MINIMAL.encode(), "x.yaml").value
    variants: list[Any] = [base, {**base, "tasks": []}, {**base, "tasks": [{"id": "a"}]}]
    variants += [{**base, "tasks": [{"id": "a", "type": t}]} for t in (
        "io.kestra.plugin.core.debug.Return", "io.kestra.plugin.core.flow.Sequential", 5, None)]
    name = "flow.schema.json"
    for value in variants:
        assert fast(name).is_valid(value) == REFERENCES[name].is_valid(value)


def _node_paths(value: Any, path: tuple[Key, ...] = ()) -> Iterator[tuple[Key, ...]]:
    yield path
    if isinstance(value, list):
        value = dict(enumerate(value))
    for key, item in value.items() if isinstance(value, dict) else ():
        yield from _node_paths(item, (*path, key))


def _at(value: Any, path: tuple[Key, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _replaced(value: Any, path: tuple[Key, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)  # type: ignore[index]
    return copy


VALID_SAMPLES = {
    name: [v for _, v in SAMPLES if ref.is_valid(v)] for name, ref in REFERENCES.items()
}


@pytest.mark.parametrize("name", schemas.schema_names())
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_is_valid_agrees_with_jsonschema_on_infinities_nan_and_huge_integers(
    name: str, data: st.DataObject,
) -> None:
    """A valid sample document with one node replaced by odd numbers: jsonschema-rs alone
    would misjudge infinities and NaN."""
    assert VALID_SAMPLES[name], f"no valid sample document for {name}"
    base = data.draw(st.sampled_from(VALID_SAMPLES[name]))
    paths = list(_node_paths(base))
    numbers = [p for p in paths if _is_number(_at(base, p))]  # where a schema accepts numbers
    where = (st.sampled_from(paths) | st.sampled_from(numbers)) if numbers else st.sampled_from(paths)
    value = _replaced(base, data.draw(where), data.draw(odd_numbers | odd_values))
    assert schemas.is_valid(value, name) == REFERENCES[name].is_valid(value)


def test_labels_may_be_infinite_or_nan_like_any_number() -> None:
    # jsonschema-rs alone takes .inf and .nan for non-numbers, and would reject these labels
    labels = "labels: {tier: .inf, ratio: .nan, huge: 1e400, big: 1" + "0" * 30 + "}\n"
    assert check(MINIMAL + labels) == []


def test_an_infinite_percentage_is_above_the_maximum() -> None:
    text = "version: 1\ninstances:\n  prod:\n    branch: main\n    prune: {maxDeletePercent: .inf}\n"
    diags = schemas.validate(load(text.encode(), "headwater.yaml"), "headwater")
    assert [(d.code, d.line) for d in diags] == [("schema.maximum", 5)]


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {"id": "a"}
    value["tasks"] = [value]
    return value


@pytest.mark.parametrize("value", [
    {1: "a"},  # jsonschema-rs raises on keys that are not strings
    {"labels": {"a": datetime.date(2024, 1, 1)}},  # jsonschema-rs raises on types beyond JSON
    {"labels": [{"key": "a", "value": {1, 2}}]},
    _deep(100_000),  # jsonschema-rs can overflow its stack on nesting this deep
    _circular(),
], ids=["int-key", "date", "set", "deep", "circular"])
@pytest.mark.parametrize("name", schemas.schema_names())
def test_values_beyond_json_get_the_verdict_of_jsonschema(name: str, value: Any) -> None:
    try:
        expected = REFERENCES[name].is_valid(value)
    except RecursionError:
        with pytest.raises(RecursionError):
            schemas.is_valid(value, name)
        return
    assert schemas.is_valid(value, name) == expected


def test_where_jsonschema_alone_would_accept_a_pattern_jsonschema_rs_explains() -> None:
    # JSON Schema patterns are ECMA-262; Python's `$` also matches before a final newline
    text = MINIMAL.replace("id: hello", 'id: "hello\\n"')
    assert REFERENCES["flow.schema.json"].is_valid(load(text.encode(), "x.yaml").value)
    (diag,) = check(text)
    assert (diag.code, diag.line, diag.column) == ("schema.pattern", 1, 1)
    assert diag.message.startswith("id: ")


@pytest.fixture
def schema_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty schema folder in place of the packaged one, with every cache emptied."""
    caches = [schemas._load, schemas._resources, schemas._registry, schemas._validator,
              schemas._fast_validator]
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setattr(schemas, "SCHEMA_DIR", tmp_path)
    yield tmp_path
    for cache in caches:
        cache.cache_clear()


def test_schemas_refer_to_each_other_by_file_name_with_or_without_id(schema_folder: Path) -> None:
    dialect = "https://json-schema.org/draft/2020-12/schema"
    (schema_folder / "a.schema.json").write_text(json.dumps({
        "$schema": dialect, "$id": "https://example.test/s/a.schema.json",
        "$defs": {"small": {"type": "integer", "maximum": 3}},
        "properties": {"b": {"$ref": "b.schema.json"}},
    }))
    (schema_folder / "b.schema.json").write_text(json.dumps({  # no $id
        "$schema": dialect, "type": "object",
        "properties": {"n": {"$ref": "a.schema.json#/$defs/small"}, "a": {"$ref": "a.schema.json"}},
    }))
    values = [{"b": {"n": 2}}, {"b": {"n": 4}}, {"b": {"a": {"b": {"n": 9}}}}, {"b": 1}, {"n": 4}]
    for name in ("a.schema.json", "b.schema.json"):
        verdicts = [schemas.is_valid(value, name) for value in values]
        assert verdicts == [reference(name).is_valid(value) for value in values]
        assert [fast(name).is_valid(value) for value in values] == verdicts
    assert [schemas.is_valid(v, "a") for v in values] == [True, False, False, False, True]


def test_format_path() -> None:
    assert schemas.format_path(("tasks", 0, "then", 2, "id")) == "tasks[0].then[2].id"
    assert schemas.format_path(()) == ""
