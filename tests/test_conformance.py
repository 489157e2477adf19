"""Kestra's own valid and invalid test flows (../shared/conformance/kestra-flows), data-driven.

Every valid flow must pass; every invalid one must fail for the reason REASONS.tsv gives,
except the two whose reason is not structural: an Enterprise-only feature and a regex that
is only compiled at run time. Those two are asserted to pass, so a change is noticed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from headwater.errors import Diagnostic
from headwater.flows import validate_flow
from headwater.kestra_types import TypeRegistry, load_extra_types


def _corpus() -> Path | None:
    env = os.environ.get("HEADWATER_CONFORMANCE_DIR")
    checkout = Path(__file__).resolve().parent.parent
    candidates = [Path(env), Path(env) / "kestra-flows"] if env else []
    candidates.append(checkout.parent / "shared" / "conformance" / "kestra-flows")
    return next((c for c in candidates if (c / "valids").is_dir()), None)


CORPUS = _corpus()
needs_corpus = pytest.mark.skipif(CORPUS is None, reason="conformance corpus not found")


def _files(kind: str) -> list[str]:
    if CORPUS is None:
        return ["<no corpus>"]
    return sorted(p.name for p in (CORPUS / kind).iterdir() if p.suffix in (".yaml", ".yml"))


def _validate(kind: str, name: str) -> list[Diagnostic]:
    assert CORPUS is not None
    registry = TypeRegistry.builtin(load_extra_types(CORPUS / "valids" / "TEST_ONLY_TYPES.txt"))
    path = CORPUS / kind / name
    _, diags = validate_flow(path.read_bytes(), f"{kind}/{name}", registry)
    return diags


def _errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "error"]


@needs_corpus
@pytest.mark.parametrize("name", _files("valids"))
def test_valid_flow_passes(name: str) -> None:
    assert _errors(_validate("valids", name)) == []


# file → (code, text the message must contain, line): the cause REASONS.tsv names.
EXPECTED: dict[str, list[tuple[str, str, int]]] = {
    "dag-cyclicdependency.yaml": [("flow.dag-cycle", "task1, task2", 12)],
    "dag-notexist-task.yaml": [("flow.dag-unknown-task", "'taskX'", 17)],
    "duplicate-inputs.yaml": [("flow.duplicate-input-id", "'first_input'", 8)],
    "duplicate-key.yaml": [("yaml.duplicate-key", "'variables.tf'", 10)],
    "duplicate-parallel.yaml": [("flow.duplicate-task-id", "'t3'", 38)],
    "duplicate.yaml": [
        ("flow.duplicate-task-id", "'listen'", 6),
        ("flow.duplicate-task-id", "'date'", 21),
        ("flow.duplicate-task-id", "'date'", 25),
        ("flow.duplicate-task-id", "'date'", 30),
        ("flow.duplicate-trigger-id", "'trigger'", 37),
    ],
    "empty.yaml": [("schema.required", "'tasks'", 1)],
    "inputs-bad-type.yaml": [("schema.enum", "'FOO'", 5), ("schema.pattern", "'wrong one'", 4)],
    "inputs-validation.yaml": [
        ("flow.input-invalid", "FILE input 'file'", 7),
        ("flow.input-invalid", "ARRAY input 'array'", 10),
    ],
    "inputs.yaml": [("schema.required", "'type'", 4), ("schema.pattern", "'wrong one'", 4)],
    "invalid-parallel.yaml": [
        ("schema.pattern", "id: must not be empty", 1),
        ("schema.pattern", "namespace: must not be empty", 2),
        ("schema.required", "'tasks'", 12),
        ("schema.minItems", "tasks[1].tasks: must not be empty", 18),
        ("schema.type", "tasks[2].tasks: expected a list, got null", 22),
    ],
    "invalid-property.yaml": [("schema.additionalProperties", "'invalid'", 7)],
    "invalid-task.yaml": [
        ("flow.unknown-type", "io.kestra.plugin.core.debug.MissingOne", 7),
        ("flow.unknown-type", "io.kestra.plugin.core.debug.MissingTwo", 12),
        ("flow.unknown-type", "io.kestra.plugin.core.debug.MissingThree", 18),
    ],
    "invalid.yaml": [
        ("schema.pattern", "'my#flow'", 1),
        ("schema.pattern", "'MY$NAMESPACE'", 2),
        ("schema.required", "'id'", 4),
    ],
    "listener.yaml": [
        ("schema.minItems", "listeners[0].tasks: must not be empty", 7),
        ("schema.minItems", "listeners[1].tasks: must not be empty", 9),
    ],
    "recursive-flow.yaml": [("flow.recursive-subflow", "io.kestra.tests.recursive-flow", 5)],
    "switch-invalid.yaml": [("flow.switch-empty", "'impossible'", 9)],
    "system-labels.yaml": [
        ("flow.system-label", "'system.label'", 5),
        ("flow.system-label", "'system.id'", 6),
        ("schema.required", "'id'", 10),
    ],
    "workingdirectory-invalid.yaml": [("flow.workingdirectory-not-runnable", "'pause'", 12)],
    "workingdirectory-no-tasks.yaml": [("schema.required", "'tasks'", 5)],
}

# Kestra rejects these for reasons a repository validator cannot or should not check.
PASSES = {
    # An Enterprise Edition check (task-level workerGroup): the shape is valid, and whether the
    # target runs EE is a property of the instance, not of the flow.
    "worker-group.yaml": None,
    # The validator regex is only compiled at run time; Java and Python regex dialects differ,
    # so Headwater warns (it does not fail) when Python cannot compile it.
    "inputs-bad-validator-syntax.yaml": "flow.input-invalid",
}


@needs_corpus
@pytest.mark.parametrize("name", _files("invalids"))
def test_invalid_flow_fails_for_kestras_reason(name: str) -> None:
    diags = _validate("invalids", name)
    if name in PASSES:
        assert _errors(diags) == []
        warning = PASSES[name]
        assert [d.code for d in diags] == ([warning] if warning else [])
        return
    assert name in EXPECTED, f"new invalid flow {name}: add its expected cause"
    got = sorted((d.code, d.line) for d in _errors(diags))
    assert got == sorted((code, line) for code, _, line in EXPECTED[name])
    for code, text, line in EXPECTED[name]:
        assert any(d.code == code and d.line == line and text in d.message for d in diags), (
            code, text, line, diags)
    assert all(d.path == f"invalids/{name}" for d in diags)


@needs_corpus
def test_the_expectations_cover_reasons_tsv() -> None:
    assert CORPUS is not None
    with (CORPUS / "invalids" / "REASONS.tsv").open(encoding="utf-8") as handle:
        listed = {row["filename"] for row in csv.DictReader(handle, delimiter="\t")}
    assert listed == set(_files("invalids")) == set(EXPECTED) | set(PASSES)
    failing = [name for name in listed if _errors(_validate("invalids", name))]
    assert len(failing) >= 19


@needs_corpus
def test_test_only_types_are_needed_and_sufficient() -> None:
    assert CORPUS is not None
    plain = TypeRegistry.builtin()
    path = CORPUS / "valids" / "dynamic-task.yaml"
    _, diags = validate_flow(path.read_bytes(), path.name, plain)
    assert [d.code for d in diags] == ["flow.unknown-type"]
