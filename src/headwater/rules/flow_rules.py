"""Kestra's flow rules beyond the schema, and what a flow refers to outside itself.

``check_flow`` reports what Kestra's own validators reject although the shape is right: ids
repeated anywhere in the task tree, a subflow calling its own flow, reserved ``system.``
labels, Dag dependency cycles, an empty Switch, flowable tasks inside a WorkingDirectory,
invalid input definitions, and unknown core plugin types (typos).

``flow_references`` lists what other checks resolve against a namespace's effective state:
namespace files read, secrets used, subflows called, plugin types used, plugin defaults set.

Both walk the task tree once and tolerate any malformed shape (the schema reports those).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from headwater.errors import Diagnostic, Severity
from headwater.kestra_types import TypeRegistry
from headwater.schemas import format_path
from headwater.yamlio import Document, Key, Path, key_mentions, mentions

_CORE = TypeRegistry.builtin()  # structure (which task is a Dag, a Switch, …) is core knowledge
_FLOW = "io.kestra.plugin.core.flow."
DAG, SWITCH, WORKING_DIR = _FLOW + "Dag", _FLOW + "Switch", _FLOW + "WorkingDirectory"
SUBFLOW_TYPES = frozenset({_FLOW + "Subflow", _FLOW + "ForEachItem"})
RUNNABLE_FLOW_TYPES = frozenset({_FLOW + "Sleep"})  # the only runnable task in core.flow
CHILD_KEYS = ("tasks", "errors", "finally", "then", "else")  # lists of child tasks
_CHILD_KEY_SET = frozenset(CHILD_KEYS)
READ_ONLY_LABEL = "system.readOnly"

TypeKind = Literal["task", "trigger", "condition", "taskRunner"]


class FileRef(NamedTuple):
    """A namespace file the flow reads: ``read('path')`` or an ``nsfile://`` URI."""

    path: str
    namespace: str | None  # None: the flow's own namespace
    line: int | None
    column: int | None
    via: Literal["read", "nsfile"] = "read"


class SecretRef(NamedTuple):
    name: str
    line: int | None
    column: int | None


class FlowTarget(NamedTuple):
    """A flow a Subflow or ForEachItem task runs."""

    namespace: str
    flow_id: str
    line: int | None
    column: int | None
    task_id: str | None = None
    dynamic: bool = False  # namespace or flowId is an expression: it cannot be checked


_KINDS: dict[str, TypeKind] = {kind: kind for kind in ("task", "trigger", "condition", "taskRunner")}
# One string per plugin type name: tens of thousands of flows name a few dozen types. A table of
# this process's (not sys.intern: interned strings are never freed on Python 3.12), let go
# when it grows past what a repository names.
_NAMES: dict[str, str] = {}
_NAMES_LIMIT = 10_000


def _name(text: str) -> str:
    if len(_NAMES) >= _NAMES_LIMIT:
        _NAMES.clear()
    return _NAMES.setdefault(text, text)


class TypeUse(NamedTuple):
    type: str
    kind: TypeKind
    line: int | None
    column: int | None


@dataclass(frozen=True)
class PluginDefault:
    """One entry of the flow's own ``pluginDefaults`` (or legacy ``taskDefaults``)."""

    type: str
    values: Mapping[str, Any] = field(hash=False)
    forced: bool
    line: int | None
    column: int | None
    legacy: bool = False


@dataclass(frozen=True)
class FlowReferences:
    files: tuple[FileRef, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    subflows: tuple[FlowTarget, ...] = ()
    types: tuple[TypeUse, ...] = ()
    plugin_defaults: tuple[PluginDefault, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # Cached and sent between processes by the tens of thousands: its records go as
        # plain tuples, which unpickle several times faster than the records themselves.
        return (_references, (
            tuple(map(tuple, self.files)), tuple(map(tuple, self.secrets)),
            tuple(map(tuple, self.subflows)), tuple(map(tuple, self.types)), self.plugin_defaults,
        ))


def _references(
    files: tuple[tuple[Any, ...], ...], secrets: tuple[tuple[Any, ...], ...],
    subflows: tuple[tuple[Any, ...], ...], types: tuple[tuple[Any, ...], ...],
    plugin_defaults: tuple[PluginDefault, ...],
) -> FlowReferences:
    # The type names repeat across flows (a few dozen for tens of thousands of uses): one
    # string each, however many processes and cache entries the records come from.
    return FlowReferences(
        tuple(map(FileRef._make, files)), tuple(map(SecretRef._make, secrets)),
        tuple(map(FlowTarget._make, subflows)),
        tuple(TypeUse(_name(name), _KINDS[kind], line, column) for name, kind, line, column in types),
        plugin_defaults,
    )


class _Report(Protocol):
    def __call__(
        self, loc: Path, code: str, message: str, hint: str | None = None,
        related: tuple[str, ...] = (), severity: Severity = "error",
    ) -> None: ...


_Where = Callable[[Path], str]


@dataclass(frozen=True)
class _Task:
    loc: Path
    value: dict[str, Any]
    canonical: str | None


# --- the walk -------------------------------------------------------------------------------


def _tasks_in(items: Any, loc: Path, found: list[_Task]) -> None:
    """Append every task in the list ``items`` and below it to ``found``, depth first."""
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        here: Path = (*loc, index)
        if "type" not in item:
            task = item.get("task")
            if isinstance(task, dict):  # a Dag entry
                _task_tree(task, (*here, "task"), found)
            elif "id" in item:
                _task_tree(item, here, found)
            continue
        _task_tree(item, here, found)


def _task_tree(task: dict[str, Any], loc: Path, found: list[_Task]) -> None:
    kind = task.get("type")
    canonical = _CORE.canonical(kind) if isinstance(kind, str) else None
    found.append(_Task(loc, task, canonical))
    if not _CHILD_KEY_SET.isdisjoint(task):  # (most tasks have no children)
        for key in CHILD_KEYS:
            children = task.get(key)
            if children is not None:
                _tasks_in(children, (*loc, key), found)
    if canonical == SWITCH:
        cases = task.get("cases")
        if isinstance(cases, dict):
            for name, items in cases.items():
                _tasks_in(items, (*loc, "cases", name), found)
        _tasks_in(task.get("defaults"), (*loc, "defaults"), found)


def _all_tasks(flow: dict[str, Any]) -> list[_Task]:
    found: list[_Task] = []
    for key in ("tasks", "errors", "finally", "afterExecution"):
        _tasks_in(flow.get(key), (key,), found)
    listeners = flow.get("listeners")
    if isinstance(listeners, list):
        for index, listener in enumerate(listeners):
            if isinstance(listener, dict):
                _tasks_in(listener.get("tasks"), ("listeners", index, "tasks"), found)
    return found


def _conditions(items: Any, loc: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Conditions, as a list or (MultipleCondition) a map, and the conditions they nest."""
    if isinstance(items, dict):
        entries: Iterator[tuple[Any, Any]] = iter(items.items())
    elif isinstance(items, list):
        entries = enumerate(items)
    else:
        return
    for key, item in entries:
        if isinstance(item, dict):
            yield (*loc, key), item
            yield from _conditions(item.get("conditions"), (*loc, key, "conditions"))


def _type_uses(doc: Document, flow: dict[str, Any], tasks: list[_Task]) -> list[TypeUse]:
    uses: list[TypeUse] = []
    mark = doc.mark
    for task in tasks:
        value = task.value.get("type")
        if isinstance(value, str):
            uses.append(TypeUse(_name(value), "task", *mark((*task.loc, "type"))))
        runner = task.value.get("taskRunner")
        if isinstance(runner, dict):
            value = runner.get("type")
            if isinstance(value, str):
                uses.append(TypeUse(_name(value), "taskRunner", *mark((*task.loc, "taskRunner", "type"))))
    for key in ("triggers", "listeners"):
        items = flow.get(key)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if not isinstance(item, dict):
                continue
            if key == "triggers":
                value = item.get("type")
                if isinstance(value, str):
                    uses.append(TypeUse(_name(value), "trigger", *mark((key, index, "type"))))
            for loc, condition in _conditions(item.get("conditions"), (key, index, "conditions")):
                value = condition.get("type")
                if isinstance(value, str):
                    uses.append(TypeUse(_name(value), "condition", *mark((*loc, "type"))))
    return uses


@dataclass(frozen=True)
class _Walk:
    """What both ``check_flow`` and ``flow_references`` need of a flow, found once."""

    tasks: list[_Task]
    types: list[TypeUse]
    plugin_defaults: list[PluginDefault]


# The walk of the last flow seen: ``flow_references`` follows ``check_flow`` on each flow of a
# batch (flowbatch), so each flow is walked once. Holding the Document keeps its id unique.
_last: tuple[Document, _Walk] | None = None


def _walk(doc: Document, flow: dict[str, Any]) -> _Walk:
    global _last
    last = _last
    if last is not None and last[0] is doc and last[0].value is flow:
        return last[1]
    tasks = _all_tasks(flow)
    walk = _Walk(tasks, _type_uses(doc, flow, tasks), _plugin_defaults(doc, flow))
    _last = (doc, walk)
    return walk


# --- the rules ------------------------------------------------------------------------------


def check_flow(doc: Document, registry: TypeRegistry) -> list[Diagnostic]:
    """Kestra's semantic rules for the flow in ``doc``; one located diagnostic per problem."""
    flow = doc.value
    if not isinstance(flow, dict):
        return []
    out: list[Diagnostic] = []

    def report(loc: Path, code: str, message: str, hint: str | None = None,
               related: tuple[str, ...] = (), severity: Severity = "error") -> None:
        out.append(Diagnostic(doc.path, *doc.mark(loc), code, message, hint, severity, related))

    def where(loc: Path) -> str:
        return f"{doc.path}:{doc.line(loc)}"

    walk = _walk(doc, flow)
    seen: dict[str, Path] = {}
    for task in walk.tasks:
        task_id = task.value.get("id")
        if isinstance(task_id, str):
            first = seen.setdefault(task_id, task.loc)
            if first != task.loc:
                report((*task.loc, "id"), "flow.duplicate-task-id",
                       f"duplicate task id '{task_id}' (also at {format_path(first)})",
                       "task ids must be unique in the whole flow: tasks, errors, finally "
                       "and every nested task", (where(first),))
        _check_task(task, flow, registry, report)

    _check_unique(flow.get("triggers"), "triggers", "flow.duplicate-trigger-id", "trigger", report,
                  where)
    _check_unique(flow.get("inputs"), "inputs", "flow.duplicate-input-id", "input", report, where)
    _check_inputs(flow.get("inputs"), report)
    _check_labels(flow.get("labels"), report)

    for use in walk.types:
        if registry.is_unknown_core(use.type):
            suggestion = registry.suggest(use.type)
            out.append(Diagnostic(
                doc.path, use.line, use.column, "flow.unknown-type",
                f"unknown Kestra core {use.kind} type '{use.type}'",
                f"did you mean {suggestion}?" if suggestion else
                "check the spelling; if your Kestra version has this type, declare it "
                "with --extra-types",
            ))
    for entry in walk.plugin_defaults:
        if registry.is_core_namespace(entry.type) and not registry.is_prefix(entry.type):
            suggestion = registry.suggest(entry.type)
            out.append(Diagnostic(
                doc.path, entry.line, entry.column, "flow.unknown-type",
                f"plugin defaults for '{entry.type}' match no known Kestra core type",
                f"did you mean {suggestion}?" if suggestion else "check the spelling",
                severity="warning",
            ))
    return out


def _check_task(
    task: _Task, flow: dict[str, Any], registry: TypeRegistry, report: _Report
) -> None:
    value, loc, canonical = task.value, task.loc, task.canonical
    if canonical in SUBFLOW_TYPES:
        target = (value.get("namespace"), value.get("flowId"))
        if isinstance(flow.get("id"), str) and target == (flow.get("namespace"), flow.get("id")):
            report(loc, "flow.recursive-subflow",
                   f"task '{value.get('id')}' calls its own flow "
                   f"{flow.get('namespace')}.{flow.get('id')} (infinite recursion)",
                   "call another flow, or use a loop task inside this flow")
    elif canonical == DAG:
        _check_dag(value.get("tasks"), (*loc, "tasks"), report)
    elif canonical == SWITCH:
        cases, defaults = value.get("cases"), value.get("defaults")
        if not cases and not defaults:
            report(loc, "flow.switch-empty",
                   f"Switch '{value.get('id')}' has no task: neither `cases` nor `defaults` "
                   "holds any", "add at least one case or a `defaults` task list")
    elif canonical == WORKING_DIR:
        children = value.get("tasks")
        for index, child in enumerate(children if isinstance(children, list) else ()):
            kind = child.get("type") if isinstance(child, dict) else None
            child_type = (registry.canonical(kind) or kind) if isinstance(kind, str) else None
            if child_type and child_type.startswith(_FLOW) and child_type not in RUNNABLE_FLOW_TYPES:
                report((*loc, "tasks", index, "type"), "flow.workingdirectory-not-runnable",
                       f"WorkingDirectory '{value.get('id')}' holds '{child.get('id')}' ({kind}), "
                       "which is not a runnable task",
                       "only runnable tasks run inside a WorkingDirectory: move this one out, "
                       "or move its children in")


def _check_dag(items: Any, loc: Path, report: _Report) -> None:
    if not isinstance(items, list):
        return
    depends: dict[str, list[str]] = {}
    places: dict[str, Path] = {}
    for index, item in enumerate(items):
        task = item.get("task") if isinstance(item, dict) else None
        task_id = task.get("id") if isinstance(task, dict) else None
        if isinstance(task_id, str) and task_id not in depends:
            raw = item.get("dependsOn")
            depends[task_id] = [d for d in raw if isinstance(d, str)] if isinstance(raw, list) else []
            places[task_id] = (*loc, index, "dependsOn") if "dependsOn" in item else (*loc, index)
    for task_id, deps in depends.items():
        for position, dep in enumerate(deps):
            if dep not in depends:
                report((*places[task_id], position), "flow.dag-unknown-task",
                       f"Dag task '{task_id}' depends on '{dep}', which is not a task of this Dag",
                       "dependsOn may only name tasks of the same Dag block")
    cyclic = [t for t in depends if depends[t] and _reaches(t, t, depends)]
    if cyclic:
        report(places[cyclic[0]], "flow.dag-cycle",
               f"cyclic dependency between Dag tasks {', '.join(cyclic)}",
               "remove one dependsOn link so the dependencies form no loop")


def _reaches(start: str, goal: str, depends: dict[str, list[str]]) -> bool:
    stack, visited = list(depends.get(start, ())), set()
    while stack:
        current = stack.pop()
        if current == goal:
            return True
        if current not in visited:
            visited.add(current)
            stack.extend(depends.get(current, ()))
    return False


def _check_unique(
    items: Any, key: str, code: str, noun: str, report: _Report, where: _Where
) -> None:
    seen: dict[str, Path] = {}
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        field_name = "id" if "id" in item or noun != "input" else "name"
        item_id = item.get(field_name)
        if not isinstance(item_id, str):
            continue
        first = seen.setdefault(item_id, (key, index))
        if first != (key, index):
            report((key, index, field_name), code,
                   f"duplicate {noun} id '{item_id}' (also at {format_path(first)})",
                   f"{noun} ids must be unique within a flow", (where(first),))


def _check_inputs(inputs: Any, report: _Report) -> None:
    for index, item in enumerate(inputs if isinstance(inputs, list) else ()):
        if not isinstance(item, dict):
            continue
        name = item.get("id", item.get("name"))
        kind = item.get("type")
        if kind == "FILE" and item.get("defaults") is not None:
            report(("inputs", index, "defaults"), "flow.input-invalid",
                   f"FILE input '{name}' cannot have `defaults`",
                   "remove `defaults`: a FILE input's value is uploaded when the flow runs")
        if kind == "ARRAY" and item.get("itemType") == "ARRAY":
            report(("inputs", index, "itemType"), "flow.input-invalid",
                   f"ARRAY input '{name}' cannot have `itemType: ARRAY`",
                   "use a scalar item type, or a JSON input for nested lists")
        validator = item.get("validator")
        if isinstance(validator, str) and "{{" not in validator:
            try:
                re.compile(validator)
            except re.error as exc:
                report(("inputs", index, "validator"), "flow.input-invalid",
                       f"validator of input '{name}' is not a valid regular expression ({exc})",
                       "fix the pattern; Kestra rejects every value when it cannot compile it",
                       severity="warning")


def _check_labels(labels: Any, report: _Report) -> None:
    keys: list[tuple[Path, Any]]
    if isinstance(labels, dict):
        keys = [(("labels", k), k) for k in labels]
    elif isinstance(labels, list):
        keys = [(("labels", i, "key"), item.get("key")) for i, item in enumerate(labels)
                if isinstance(item, dict)]
    else:
        return
    for loc, key in keys:
        if isinstance(key, str) and key.startswith("system.") and key != READ_ONLY_LABEL:
            report(loc, "flow.system-label",
                   f"label '{key}' uses the reserved `system.` prefix",
                   f"only Kestra sets system labels ({READ_ONLY_LABEL} excepted); rename it")


# --- references -----------------------------------------------------------------------------

_READ = re.compile(r"""\bread\s*\(\s*(['"])([^'"]*)\1([^)]*)\)""")
_READ_NAMESPACE = re.compile(r"""^\s*,\s*(?:namespace\s*=\s*)?(['"])([^'"]*)\1""")
_NSFILE = re.compile(r"""nsfile://([^/\s'"{}]*)(/[^\s'"{}]*)""")
_SECRET = re.compile(r"""\bsecret\s*\(\s*(['"])([^'"]+)\1""")


def _strings(value: Any, loc: list[Key], found: list[tuple[Path, str]]) -> None:
    """Append to ``found`` every string below ``value`` (at ``loc``, a path reused as a stack)
    that may name a file or a secret, with its location, depth first: values, and keys with a
    call or a URI in them, each key before its value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key_mentions(key):
                found.append(((*loc, key), key))
            if isinstance(item, str):
                if "read" in item or "nsfile:" in item or "secret" in item:
                    found.append(((*loc, key), item))
            elif isinstance(item, (dict, list)):
                loc.append(key)
                _strings(item, loc, found)
                loc.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                if "read" in item or "nsfile:" in item or "secret" in item:
                    found.append(((*loc, index), item))
            elif isinstance(item, (dict, list)):
                loc.append(index)
                _strings(item, loc, found)
                loc.pop()
    elif isinstance(value, str) and mentions(value):
        found.append((tuple(loc), value))


def _file_refs(text: str, mark: tuple[int | None, int | None]) -> Iterator[FileRef]:
    if "read" in text:
        for match in _READ.finditer(text):
            path, rest = match.group(2), match.group(3)
            if path.startswith(("nsfile://", "kestra://")) or not path:
                continue  # nsfile URIs are found below; kestra:// is execution storage
            named = _READ_NAMESPACE.match(rest)
            if rest.strip(", ") and named is None and not re.match(r"^\s*,\s*version\s*=", rest):
                continue  # the namespace is an expression: nothing to check statically
            yield FileRef(path.lstrip("/"), named.group(2) if named else None, *mark, "read")
    if "nsfile://" in text:
        for match in _NSFILE.finditer(text):
            yield FileRef(match.group(2).lstrip("/"), match.group(1) or None, *mark, "nsfile")


def _plugin_defaults(doc: Document, flow: dict[str, Any]) -> list[PluginDefault]:
    found = []
    for key in ("pluginDefaults", "taskDefaults"):
        items = flow.get(key)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                values = item.get("values")
                found.append(PluginDefault(
                    item["type"], values if isinstance(values, dict) else {},
                    item.get("forced") is True, *doc.mark((key, index, "type")),
                    legacy=key == "taskDefaults",
                ))
    return found


def flow_references(doc: Document) -> FlowReferences:
    """What the flow in ``doc`` needs from outside itself, each with its location."""
    flow = doc.value
    if not isinstance(flow, dict):
        return FlowReferences()
    files: list[FileRef] = []
    secrets: list[SecretRef] = []
    candidates: tuple[tuple[tuple[int | None, int | None], str], ...] | None = doc.mentions
    if candidates is None:  # a Document not from the loader: walk it
        found: list[tuple[Path, str]] = []
        _strings(flow, [], found)
        candidates = tuple((doc.mark(loc), text) for loc, text in found)
    for mark, text in candidates:
        files.extend(_file_refs(text, mark))
        if "secret" in text:
            secrets.extend(SecretRef(m.group(2), *mark) for m in _SECRET.finditer(text))
    walk = _walk(doc, flow)
    subflows = []
    for task in walk.tasks:
        namespace, flow_id = task.value.get("namespace"), task.value.get("flowId")
        if task.canonical in SUBFLOW_TYPES and isinstance(namespace, str) and isinstance(flow_id, str):
            task_id = task.value.get("id")
            subflows.append(FlowTarget(
                namespace, flow_id, *doc.mark(task.loc),
                task_id if isinstance(task_id, str) else None,
                "{{" in namespace or "{{" in flow_id,
            ))
    return FlowReferences(
        tuple(files), tuple(secrets), tuple(subflows),
        tuple(walk.types), tuple(walk.plugin_defaults),
    )
