"""rules/flow_rules.py: Kestra's rules beyond the schema, and the references a flow makes."""

from __future__ import annotations

import pickle
from textwrap import dedent
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import schemas
from headwater.errors import Diagnostic
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import (
    FileRef,
    FlowTarget,
    SecretRef,
    TypeUse,
    check_flow,
    flow_references,
)
from headwater.yamlio import Document, load

REGISTRY = TypeRegistry.builtin()
PATH = "tenants/acme/company/flows/f.yaml"
HEAD = "id: f\nnamespace: company\n"


def doc(text: str) -> Document:
    return load(dedent(text).encode(), PATH)


def run(text: str, registry: TypeRegistry = REGISTRY) -> list[Diagnostic]:
    return check_flow(doc(text), registry)


def found(text: str, code: str) -> list[Diagnostic]:
    return [d for d in run(text) if d.code == code]


def log(task_id: str, indent: int = 2) -> str:
    pad = " " * indent
    return f"{pad}- id: {task_id}\n{pad}  type: io.kestra.plugin.core.log.Log\n{pad}  message: m\n"


# --- task ids -------------------------------------------------------------------------------


def test_a_flow_with_distinct_ids_has_no_finding() -> None:
    assert run(HEAD + "tasks:\n" + log("a") + log("b")) == []


def test_duplicate_task_id_is_located_at_the_repeat_and_points_to_the_first() -> None:
    (diag,) = found(HEAD + "tasks:\n" + log("a") + log("a"), "flow.duplicate-task-id")
    assert (diag.line, diag.column) == (7, 5)
    assert "'a'" in diag.message and "tasks[0]" in diag.message
    assert diag.related == (f"{PATH}:4",)
    assert diag.severity == "error"


@pytest.mark.parametrize("where", [
    "errors:\n" + log("dup"),
    "finally:\n" + log("dup"),
    "afterExecution:\n" + log("dup"),
    "listeners:\n  - tasks:\n" + log("dup", 6),
    "tasks:\n  - id: seq\n    type: io.kestra.plugin.core.flow.Sequential\n    tasks:\n"
    + log("x", 6) + "    errors:\n" + log("dup", 6),
    "tasks:\n  - id: if\n    type: io.kestra.plugin.core.flow.If\n    condition: c\n"
    "    then:\n" + log("x", 6) + "    else:\n" + log("dup", 6),
    "tasks:\n  - id: sw\n    type: io.kestra.plugin.core.flow.Switch\n    value: v\n"
    "    cases:\n      A:\n" + log("dup", 8),
    "tasks:\n  - id: sw\n    type: io.kestra.plugin.core.flow.Switch\n    value: v\n"
    "    defaults:\n" + log("dup", 6),
    "tasks:\n  - id: dag\n    type: io.kestra.plugin.core.flow.Dag\n    tasks:\n"
    "      - task: {id: dup, type: io.kestra.plugin.core.log.Log, message: m}\n",
    "tasks:\n  - id: wd\n    type: io.kestra.plugin.core.flow.WorkingDirectory\n    tasks:\n"
    + log("dup", 6),
    "tasks:\n  - id: plugin-container\n    type: io.kestra.plugin.ee.flow.Group\n    tasks:\n"
    + log("dup", 6),
])
def test_task_ids_are_unique_across_the_whole_tree(where: str) -> None:
    # `where` either adds top-level tasks (after the first "dup") or another top-level list.
    text = HEAD + "tasks:\n" + log("dup") + where.removeprefix("tasks:\n")
    diags = found(text, "flow.duplicate-task-id")
    assert len(diags) == 1 and "'dup'" in diags[0].message


def test_same_task_id_in_two_flows_is_fine() -> None:
    first = HEAD + "tasks:\n" + log("shared")
    second = "id: g\nnamespace: company\ntasks:\n" + log("shared")
    assert run(first) == [] and run(second) == []


def test_every_repeat_is_reported() -> None:
    diags = found(HEAD + "tasks:\n" + log("a") + log("a") + log("a"), "flow.duplicate-task-id")
    assert [d.line for d in diags] == [7, 10]


def test_a_task_id_may_equal_a_trigger_id() -> None:
    text = HEAD + "tasks:\n" + log("same") + dedent("""\
        triggers:
          - id: same
            type: io.kestra.plugin.core.trigger.Schedule
            cron: "* * * * *"
        """)
    assert run(text) == []


# --- trigger and input ids ------------------------------------------------------------------


def test_duplicate_trigger_id() -> None:
    text = HEAD + "tasks:\n" + log("a") + dedent("""\
        triggers:
          - id: t
            type: io.kestra.plugin.core.trigger.Schedule
            cron: "* * * * *"
          - id: t
            type: io.kestra.plugin.core.trigger.Webhook
            key: k
        """)
    (diag,) = run(text)
    assert diag.code == "flow.duplicate-trigger-id" and diag.line == 11


def test_distinct_trigger_ids_are_fine() -> None:
    text = HEAD + "tasks:\n" + log("a") + (
        "triggers:\n  - {id: t1, type: io.kestra.plugin.core.trigger.Webhook, key: k}\n"
        "  - {id: t2, type: io.kestra.plugin.core.trigger.Webhook, key: k}\n"
    )
    assert run(text) == []


def test_duplicate_input_id_including_the_legacy_name_field() -> None:
    text = HEAD + "inputs:\n  - {id: x, type: STRING}\n  - {name: x, type: INT}\n" + "tasks:\n" + log("a")
    (diag,) = run(text)
    assert diag.code == "flow.duplicate-input-id" and diag.line == 5


def test_distinct_input_ids_are_fine() -> None:
    text = HEAD + "inputs:\n  - {id: x, type: STRING}\n  - {id: y, type: STRING}\ntasks:\n" + log("a")
    assert run(text) == []


# --- recursive subflows ---------------------------------------------------------------------

SUBFLOW = """\
tasks:
  - id: call
    type: {type}
    namespace: {namespace}
    flowId: {flow_id}
    items: "{{{{ inputs.file }}}}"
"""


@pytest.mark.parametrize("kind", [
    "io.kestra.plugin.core.flow.Subflow",
    "io.kestra.core.tasks.flows.Flow",  # legacy alias
    "io.kestra.plugin.core.flow.ForEachItem",
])
def test_a_subflow_calling_its_own_flow_is_recursive(kind: str) -> None:
    (diag,) = run(HEAD + SUBFLOW.format(type=kind, namespace="company", flow_id="f"))
    assert diag.code == "flow.recursive-subflow" and diag.line == 4
    assert "company.f" in diag.message


@pytest.mark.parametrize(("namespace", "flow_id"), [
    ("company", "other"),
    ("company.team", "f"),
    ("'{{ inputs.ns }}'", "f"),
])
def test_calling_another_flow_is_fine(namespace: str, flow_id: str) -> None:
    text = HEAD + SUBFLOW.format(type="io.kestra.plugin.core.flow.Subflow", namespace=namespace,
                                 flow_id=flow_id)
    assert run(text) == []


# --- labels ---------------------------------------------------------------------------------


def test_system_labels_are_reserved_as_map() -> None:
    text = HEAD + "labels:\n  system.id: x\n  team: data\n  system.readOnly: 'true'\ntasks:\n" + log("a")
    (diag,) = run(text)
    assert (diag.code, diag.line, diag.column) == ("flow.system-label", 4, 3)
    assert "system.id" in diag.message


def test_system_labels_are_reserved_as_list() -> None:
    text = HEAD + "labels:\n  - key: system.correlationId\n    value: x\ntasks:\n" + log("a")
    (diag,) = run(text)
    assert (diag.code, diag.line) == ("flow.system-label", 4)


def test_read_only_and_look_alike_labels_are_fine() -> None:
    text = HEAD + "labels:\n  system.readOnly: 'true'\n  systemic: x\n  my.system.x: y\ntasks:\n" + log("a")
    assert run(text) == []


# --- Dag ------------------------------------------------------------------------------------


def dag(*entries: str) -> str:
    body = "".join(
        f"      - task: {{id: {e.split(':')[0]}, type: io.kestra.plugin.core.log.Log, message: m}}\n"
        + (f"        dependsOn: [{e.split(':')[1]}]\n" if ":" in e else "")
        for e in entries
    )
    return HEAD + "tasks:\n  - id: dag\n    type: io.kestra.plugin.core.flow.Dag\n    tasks:\n" + body


def test_dag_cycle_names_the_tasks_in_it() -> None:
    (diag,) = run(dag("a:c", "b:a", "c:b", "d:a"))
    assert diag.code == "flow.dag-cycle"
    assert "a, b, c" in diag.message and "d" not in diag.message.split("tasks")[-1]
    assert diag.line == 8  # the first cyclic task's dependsOn


def test_a_task_depending_on_itself_is_a_cycle() -> None:
    (diag,) = run(dag("a:a"))
    assert diag.code == "flow.dag-cycle"


def test_diamond_dag_is_fine() -> None:
    assert run(dag("a", "b:a", "c:a", "d:b, c")) == []


def test_dag_dependency_on_an_unknown_task() -> None:
    (diag,) = run(dag("a", "b:x"))
    assert diag.code == "flow.dag-unknown-task" and "'x'" in diag.message
    assert (diag.line, diag.column) == (9, 21)  # the unknown entry of dependsOn


def test_dag_dependency_on_a_task_outside_the_dag_is_unknown() -> None:
    text = dag("a", "b:outside") + log("outside")
    assert [d.code for d in run(text)] == ["flow.dag-unknown-task"]


# --- Switch ---------------------------------------------------------------------------------

SWITCH = HEAD + "tasks:\n  - id: sw\n    type: io.kestra.plugin.core.flow.Switch\n    value: v\n"


@pytest.mark.parametrize("body", ["", "    cases: {}\n", "    cases: {}\n    defaults: null\n",
                                  "    defaults: []\n"])
def test_switch_with_no_task_at_all(body: str) -> None:
    (diag,) = run(SWITCH + body)
    assert (diag.code, diag.line) == ("flow.switch-empty", 4)


@pytest.mark.parametrize("body", [
    "    cases:\n      A:\n" + log("a", 8),
    "    defaults:\n" + log("a", 6),
    "    cases:\n      A:\n" + log("a", 8) + "    defaults: null\n",
])
def test_switch_with_cases_or_defaults_is_fine(body: str) -> None:
    assert run(SWITCH + body) == []


# --- WorkingDirectory -----------------------------------------------------------------------

WD = HEAD + "tasks:\n  - id: wd\n    type: io.kestra.plugin.core.flow.WorkingDirectory\n    tasks:\n"


@pytest.mark.parametrize("child", [
    "io.kestra.plugin.core.flow.Parallel",
    "io.kestra.plugin.core.flow.Pause",
    "io.kestra.core.tasks.flows.Sequential",  # legacy alias of a flowable
    "io.kestra.plugin.core.flow.Subflow",  # executable, not runnable
])
def test_working_directory_children_must_be_runnable(child: str) -> None:
    text = WD + log("ok", 6) + f"      - id: bad\n        type: {child}\n        tasks:\n" + log("x", 10)
    (diag,) = found(text, "flow.workingdirectory-not-runnable")
    assert (diag.line, diag.column) == (11, 9)
    assert "'bad'" in diag.message


@pytest.mark.parametrize("child", [
    "io.kestra.plugin.core.flow.Sleep",
    "io.kestra.plugin.core.storage.LocalFiles",
    "io.kestra.plugin.scripts.python.Script",
])
def test_runnable_children_are_fine(child: str) -> None:
    assert run(WD + f"      - id: t\n        type: {child}\n") == []


# --- inputs ---------------------------------------------------------------------------------


def test_file_input_cannot_have_defaults() -> None:
    (diag,) = run(HEAD + "inputs:\n  - {id: f, type: FILE, defaults: x}\ntasks:\n" + log("a"))
    assert (diag.code, diag.line) == ("flow.input-invalid", 4)
    assert "FILE" in diag.message


def test_array_input_cannot_hold_arrays() -> None:
    (diag,) = run(HEAD + "inputs:\n  - {id: a, type: ARRAY, itemType: ARRAY}\ntasks:\n" + log("a"))
    assert diag.code == "flow.input-invalid" and "itemType" in diag.message


def test_valid_input_definitions_are_fine() -> None:
    text = HEAD + dedent("""\
        inputs:
          - {id: f, type: FILE}
          - {id: s, type: STRING, defaults: x, validator: "^A\\\\d+$"}
          - {id: a, type: ARRAY, itemType: INT}
        tasks:
        """) + log("a")
    assert run(text) == []


def test_a_validator_that_is_no_regex_is_only_a_warning() -> None:
    (diag,) = run(HEAD + "inputs:\n  - id: s\n    type: STRING\n    validator: \\\ntasks:\n" + log("a"))
    assert (diag.code, diag.severity, diag.line) == ("flow.input-invalid", "warning", 6)


# --- types ----------------------------------------------------------------------------------


def test_unknown_core_type_suggests_the_closest_known_type() -> None:
    text = HEAD + "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Lgo\n    message: m\n"
    (diag,) = run(text)
    assert (diag.code, diag.line, diag.column) == ("flow.unknown-type", 5, 5)
    assert diag.hint == "did you mean io.kestra.plugin.core.log.Log?"


def test_unknown_legacy_core_type_is_an_error_too() -> None:
    (diag,) = run(HEAD + "tasks:\n  - id: a\n    type: io.kestra.core.tasks.test.Read\n")
    assert diag.code == "flow.unknown-type" and "--extra-types" in (diag.hint or "")


def test_unknown_core_types_in_triggers_conditions_and_task_runners() -> None:
    text = HEAD + dedent("""\
        tasks:
          - id: script
            type: io.kestra.plugin.scripts.shell.Commands
            taskRunner:
              type: io.kestra.plugin.core.runner.Proces
        triggers:
          - id: t
            type: io.kestra.plugin.core.trigger.Shedule
            conditions:
              - type: io.kestra.plugin.core.condition.MultipleCondition
                conditions:
                  one:
                    type: io.kestra.plugin.core.condition.ExecutionStatu
        listeners:
          - conditions:
              - type: io.kestra.plugin.core.condition.Nope
            tasks:
              - {id: l, type: io.kestra.plugin.core.log.Log, message: m}
        """)
    diags = run(text)
    assert [(d.code, d.line) for d in diags] == [("flow.unknown-type", n) for n in (7, 10, 15, 18)]
    assert "task type" not in diags[0].message and "taskRunner" in diags[0].message


def test_plugin_types_outside_core_and_known_aliases_are_accepted() -> None:
    text = HEAD + dedent("""\
        tasks:
          - {id: a, type: io.kestra.plugin.scripts.python.Script}
          - {id: b, type: io.kestra.core.tasks.log.Log, message: m}
          - {id: c, type: com.acme.kestra.Custom}
        triggers:
          - {id: t, type: io.kestra.plugin.fs.http.Trigger, uri: "https://x"}
        """)
    assert run(text) == []


def test_extra_types_make_new_core_types_known() -> None:
    text = HEAD + "tasks:\n  - {id: l, type: io.kestra.plugin.core.flow.Loop}\n"
    assert [d.code for d in run(text)] == ["flow.unknown-type"]
    assert run(text, TypeRegistry.builtin(["io.kestra.plugin.core.flow.Loop"])) == []


def test_plugin_defaults_for_an_unknown_core_type_are_a_warning() -> None:
    text = HEAD + "tasks:\n" + log("a") + dedent("""\
        pluginDefaults:
          - {type: io.kestra.plugin.core.log.Lgo, values: {level: WARN}}
          - {type: io.kestra.plugin.core.log, values: {level: WARN}}
          - {type: io.kestra.plugin.scripts, values: {x: 1}}
        """)
    (diag,) = run(text)
    assert (diag.code, diag.severity, diag.line) == ("flow.unknown-type", "warning", 8)


# --- robustness -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.sampled_from(["io.kestra.plugin.core.flow.Dag", "io.kestra.plugin.core.flow.Switch",
                       "io.kestra.plugin.core.flow.WorkingDirectory", "FILE", "ARRAY", "f",
                       "company", "io.kestra.plugin.core.flow.Subflow", "system.x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "type", "tasks", "task", "dependsOn", "cases", "defaults", "then",
                         "errors", "inputs", "labels", "triggers", "conditions", "namespace",
                         "flowId", "itemType", "key", "listeners", "taskRunner", "values",
                         "pluginDefaults", "validator"]),
        children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_rules_and_references_never_crash_on_any_shape(value: Any) -> None:
    document = Document(PATH, value, {})
    for diag in check_flow(document, REGISTRY):
        assert diag.code.startswith("flow.")
    flow_references(document)


def test_check_flow_ignores_a_document_that_is_not_a_mapping() -> None:
    assert check_flow(Document(PATH, [1, 2], {}), REGISTRY) == []


# --- references -----------------------------------------------------------------------------


def test_file_references_from_read_calls_and_nsfile_uris() -> None:
    text = HEAD + dedent("""\
        tasks:
          - id: a
            type: io.kestra.plugin.core.log.Log
            message: "{{ read('scripts/a.py') }} {{ read(\\"/sql/b.sql\\") }}"
          - id: b
            type: io.kestra.plugin.scripts.python.Script
            script: "{{ read('common.py', namespace='company.shared') }}"
            inputFiles:
              x.sql: "{{ read('x.sql', 'other.ns') }}"
              y.py: nsfile:///lib/y.py
              z.py: "nsfile://company.team/lib/z.py"
            beforeCommands:
              - "{{ read('nsfile:///lib/w.py') }}"
              - "{{ read(inputs.path) }} {{ read('kestra:///x/y') }} {{ read('v.txt', version=2) }}"
              - "{{ read('dyn.txt', namespace=flow.namespace) }}"
        """)
    refs = flow_references(doc(text))
    assert refs.files == (
        FileRef("scripts/a.py", None, 6, 5, "read"),
        FileRef("sql/b.sql", None, 6, 5, "read"),
        FileRef("common.py", "company.shared", 9, 5, "read"),
        FileRef("x.sql", "other.ns", 11, 7, "read"),
        FileRef("lib/y.py", None, 12, 7, "nsfile"),
        FileRef("lib/z.py", "company.team", 13, 7, "nsfile"),
        FileRef("lib/w.py", None, 15, 9, "nsfile"),
        FileRef("v.txt", None, 16, 9, "read"),
    )


def test_secret_references() -> None:
    text = HEAD + dedent("""\
        tasks:
          - id: a
            type: io.kestra.plugin.core.log.Log
            message: "{{ secret('DB_PASSWORD') }} {{ secret(\\"API_TOKEN\\") }}"
        triggers:
          - {id: w, type: io.kestra.plugin.core.trigger.Webhook, key: "{{ secret('HOOK') }}"}
        """)
    assert flow_references(doc(text)).secrets == (
        SecretRef("DB_PASSWORD", 6, 5), SecretRef("API_TOKEN", 6, 5), SecretRef("HOOK", 8, 58),
    )


def test_subflow_targets_with_their_task_and_dynamic_flag() -> None:
    text = HEAD + dedent("""\
        tasks:
          - id: call
            type: io.kestra.plugin.core.flow.Subflow
            namespace: company.team
            flowId: ingest
          - id: each
            type: io.kestra.plugin.core.flow.ForEachItem
            items: "{{ inputs.file }}"
            namespace: company
            flowId: "{{ inputs.target }}"
          - id: not-a-subflow
            type: io.kestra.plugin.scripts.python.Script
            namespace: x
            flowId: y
        """)
    assert flow_references(doc(text)).subflows == (
        FlowTarget("company.team", "ingest", 4, 5, "call", False),
        FlowTarget("company", "{{ inputs.target }}", 8, 5, "each", True),
    )


def test_type_uses_with_kind_and_location() -> None:
    text = HEAD + dedent("""\
        tasks:
          - id: s
            type: io.kestra.plugin.scripts.shell.Commands
            taskRunner: {type: io.kestra.plugin.core.runner.Process}
        triggers:
          - id: t
            type: io.kestra.plugin.core.trigger.Flow
            conditions:
              - type: io.kestra.plugin.core.condition.ExecutionStatus
        """)
    assert flow_references(doc(text)).types == (
        TypeUse("io.kestra.plugin.scripts.shell.Commands", "task", 5, 5),
        TypeUse("io.kestra.plugin.core.runner.Process", "taskRunner", 6, 18),
        TypeUse("io.kestra.plugin.core.trigger.Flow", "trigger", 9, 5),
        TypeUse("io.kestra.plugin.core.condition.ExecutionStatus", "condition", 11, 9),
    )


def test_plugin_defaults_of_the_flow() -> None:
    text = HEAD + "tasks:\n" + log("a") + dedent("""\
        pluginDefaults:
          - type: io.kestra.plugin.scripts.python.Script
            forced: true
            values: {containerImage: "python:3.12"}
        taskDefaults:
          - {type: io.kestra.plugin.core.log.Log, values: {level: WARN}}
        """)
    first, second = flow_references(doc(text)).plugin_defaults
    assert (first.type, first.forced, dict(first.values), first.line, first.legacy) == (
        "io.kestra.plugin.scripts.python.Script", True, {"containerImage": "python:3.12"}, 8, False,
    )
    assert (second.type, second.forced, second.legacy, second.line) == (
        "io.kestra.plugin.core.log.Log", False, True, 12,
    )


def test_references_of_a_flow_without_any() -> None:
    refs = flow_references(doc(HEAD + "tasks:\n" + log("a")))
    assert (refs.files, refs.secrets, refs.subflows, refs.plugin_defaults) == ((), (), (), ())
    assert [t.type for t in refs.types] == ["io.kestra.plugin.core.log.Log"]


def test_type_names_are_one_string_however_many_flows_and_pickles() -> None:
    """Tens of thousands of flows name a few dozen types: each name is held once, whether the
    references were made here or came from a worker or the cache (pickled)."""
    texts = [HEAD + "tasks:\n" + log(name) for name in ("a", "b")]
    made = [flow_references(doc(text)) for text in texts]
    came = [pickle.loads(pickle.dumps(refs)) for refs in made]
    names = [refs.types[0].type for refs in (*made, *came)]
    assert names == ["io.kestra.plugin.core.log.Log"] * 4
    assert all(name is names[0] for name in names)
    assert all(refs.types[0].kind is made[0].types[0].kind for refs in came)


def test_references_survive_pickling_as_the_same_records() -> None:
    """The result cache and the validation workers pickle references in a compact form."""
    text = HEAD + dedent("""\
        tasks:
          - id: a
            type: io.kestra.plugin.core.log.Log
            message: "{{ read('a.sql') }} {{ secret('TOKEN') }}"
          - id: b
            type: io.kestra.plugin.core.flow.Subflow
            namespace: company.team
            flowId: ingest
        pluginDefaults:
          - {type: io.kestra.plugin.core.log.Log, values: {level: WARN}}
        """)
    refs = flow_references(doc(text))
    again = pickle.loads(pickle.dumps(refs, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == refs
    assert all(len(part) for part in (again.files, again.secrets, again.subflows, again.types))
    assert (type(again.files[0]), type(again.secrets[0]), type(again.subflows[0]), type(again.types[0])) == (
        FileRef, SecretRef, FlowTarget, TypeUse,
    )
    assert again.subflows[0].flow_id == "ingest" and dict(again.plugin_defaults[0].values) == {"level": "WARN"}


def _walked(document: Document) -> Document:
    """The same document without what the loader noted: references then walk the value."""
    return Document(document.path, document.value, document.marks)


def test_the_loaders_mentions_give_the_references_a_walk_gives() -> None:
    """Mentions are noted while loading, anchors and aliases included: an alias repeats its
    anchor's mentions at its own mark, as a walk of the value finds them there."""
    text = HEAD + dedent("""\
        variables: &vars
          token: "{{ secret('A') }}"
          "{{ read('key.sql') }}": x
          plain: 12
        tasks:
          - id: t
            type: io.kestra.plugin.core.log.Log
            message: *vars
            sql: &sql "{{ read('b.sql') }} nsfile:///c.txt"
            again: *sql
            list: [*sql, "{{ secret('B') }}", *vars, 3]
            nested: {deep: [{key: "{{ secret('C') }}"}]}
            "secret(": value
            "read": not a call
        """)
    loaded = doc(text)
    assert loaded.mentions is not None
    refs = flow_references(loaded)
    assert refs == flow_references(_walked(loaded))
    assert [(s.name, s.line) for s in refs.secrets] == [
        ("A", 4), ("A", 10), ("B", 13), ("A", 13), ("C", 14),
    ]
    assert [(f.path, f.via, f.line) for f in refs.files] == [
        ("key.sql", "read", 5), ("key.sql", "read", 10), ("b.sql", "read", 11),
        ("c.txt", "nsfile", 11), ("b.sql", "read", 12), ("c.txt", "nsfile", 12),
        ("b.sql", "read", 13), ("c.txt", "nsfile", 13), ("key.sql", "read", 13),
    ]


mention_values = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["x", "{{ read('a.sql') }}", "{{ secret('S') }}", "nsfile:///f.txt",
                       "read", "secret(", "{{ read('b.sql', namespace='o') }}"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "k", "{{ read('k.sql') }}", "secret('K')", "nsfile:///k", "read"]),
        children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.sampled_from(["id", "tasks", "variables", "labels"]), mention_values,
                             min_size=1, max_size=4),
       share=st.booleans())
def test_the_loaders_mentions_and_plainness_match_a_walk(value: dict[str, Any], share: bool) -> None:
    """Whatever the shape, what the loader noted is what a walk of the value finds; a value
    repeated in the document is written once with an anchor, then as aliases."""
    if share:
        value = {**value, "again": value.get("tasks"), "more": [value.get("tasks"), value.get("labels")]}
    text = yaml.dump(value, sort_keys=False)
    loaded = load(text.encode(), PATH)
    assert flow_references(loaded) == flow_references(_walked(loaded))
    if loaded.plain:
        assert schemas._plain_json(loaded.value)
    if "*id" not in text:  # without an alias of a map or a list, it is noted exactly
        assert loaded.plain == schemas._plain_json(loaded.value)


def test_a_value_nested_deep_through_aliases_is_not_taken_for_plain() -> None:
    """Each anchor may nest up to the depth limit, and an alias puts it that deep again: the
    value is checked before a compiled validator sees it (it could overflow its stack)."""
    lines = ["a0: &a0 [x]"]
    for k in range(1, 40):
        lines.append(f"a{k}: &a{k} " + "[" * 50 + f"*a{k - 1}" + "]" * 50)
    loaded = load(("\n".join(lines) + "\n").encode(), PATH)
    depth, value = 0, loaded.value["a39"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert depth > 1900 and not loaded.plain
    assert not schemas.is_valid(loaded.value, "flow")  # judged, without a crash
    plain = load(b"a: &a [x]\nb: a\n", PATH)
    assert plain.plain and not load(b"a: &a [x]\nb: *a\n", PATH).plain
