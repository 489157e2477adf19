"""kestra_types.py: the registry of core types, aliases, extras, and suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.kestra_types import (
    TypeRegistry,
    is_core_namespace,
    load_extra_types,
    types_from_text,
)

REGISTRY = TypeRegistry.builtin()


def test_builtin_knows_core_tasks_triggers_conditions_and_runners() -> None:
    for name in (
        "io.kestra.plugin.core.log.Log",
        "io.kestra.plugin.core.trigger.Schedule",
        "io.kestra.plugin.core.condition.ExecutionStatus",
        "io.kestra.plugin.core.runner.Process",
        "io.kestra.plugin.core.flow.ForEachItem",
    ):
        assert REGISTRY.is_known(name) and REGISTRY.canonical(name) == name


def test_package_info_is_not_a_type() -> None:
    assert not any(t.endswith("package-info") for t in REGISTRY.types)
    assert not REGISTRY.is_known("io.kestra.plugin.core.flow.package-info")


@pytest.mark.parametrize(("alias", "canonical"), [
    ("io.kestra.core.tasks.log.Log", "io.kestra.plugin.core.log.Log"),
    ("io.kestra.core.tasks.flows.Flow", "io.kestra.plugin.core.flow.Subflow"),
    ("io.kestra.core.tasks.flows.Worker", "io.kestra.plugin.core.flow.WorkingDirectory"),
    ("io.kestra.plugin.core.flow.WaitFor", "io.kestra.plugin.core.flow.LoopUntil"),
    ("io.kestra.plugin.fs.http.Trigger", "io.kestra.plugin.core.http.Trigger"),
    ("io.kestra.plugin.core.condition.ExpressionCondition", "io.kestra.plugin.core.condition.Expression"),
])
def test_aliases_resolve_to_the_current_type(alias: str, canonical: str) -> None:
    assert REGISTRY.is_known(alias)
    assert REGISTRY.canonical(alias) == canonical
    assert alias not in REGISTRY.types


def test_unknown_types_have_no_canonical_name() -> None:
    assert REGISTRY.canonical("io.kestra.plugin.scripts.python.Script") is None
    assert not REGISTRY.is_known("io.kestra.plugin.core.log.Lgo")
    assert "io.kestra.plugin.core.log.Log" in REGISTRY
    assert 42 not in REGISTRY


@pytest.mark.parametrize(("name", "core"), [
    ("io.kestra.plugin.core.log.Log", True),
    ("io.kestra.plugin.core.anything.New", True),
    ("io.kestra.core.tasks.test.Read", True),  # legacy core package (and Kestra's test types)
    ("io.kestra.plugin.scripts.python.Script", False),
    ("io.kestra.plugin.fs.http.Trigger", False),
    ("io.kestra.plugin.corex.Thing", False),
    ("com.example.Task", False),
])
def test_core_namespace(name: str, core: bool) -> None:
    assert is_core_namespace(name) is core
    assert REGISTRY.is_core_namespace(name) is core


@pytest.mark.parametrize(("typo", "meant"), [
    ("io.kestra.plugin.core.log.Lgo", "io.kestra.plugin.core.log.Log"),
    ("io.kestra.plugin.core.log.log", "io.kestra.plugin.core.log.Log"),
    ("io.kestra.plugin.core.flow.Parralel", "io.kestra.plugin.core.flow.Parallel"),
    ("io.kestra.plugin.core.flow.Log", "io.kestra.plugin.core.log.Log"),  # wrong package
    ("io.kestra.core.tasks.flows.Sequencial", "io.kestra.plugin.core.flow.Sequential"),  # legacy
])
def test_suggest_names_the_closest_canonical_type(typo: str, meant: str) -> None:
    assert REGISTRY.suggest(typo) == meant


def test_suggest_gives_nothing_for_names_unlike_any_type() -> None:
    assert REGISTRY.suggest("io.kestra.plugin.core.debug.MissingOne") is None


def test_extra_types_are_known_and_change_the_fingerprint() -> None:
    extra = TypeRegistry.builtin(["io.kestra.plugin.core.flow.Loop"])
    assert extra.is_known("io.kestra.plugin.core.flow.Loop")
    assert not REGISTRY.is_known("io.kestra.plugin.core.flow.Loop")
    assert extra.fingerprint != REGISTRY.fingerprint
    assert TypeRegistry.builtin().fingerprint == REGISTRY.fingerprint
    assert REGISTRY.with_extra(["io.kestra.plugin.core.flow.Loop"]).fingerprint == extra.fingerprint
    assert len(extra) == len(REGISTRY) + 1


def test_is_prefix_accepts_types_and_their_packages() -> None:
    assert REGISTRY.is_prefix("io.kestra.plugin.core.log.Log")
    assert REGISTRY.is_prefix("io.kestra.plugin.core.log")
    assert REGISTRY.is_prefix("io.kestra.plugin.core.")
    assert not REGISTRY.is_prefix("io.kestra.plugin.core.lo")
    assert not REGISTRY.is_prefix("io.kestra.plugin.core.log.Lgo")


def test_types_from_a_plain_list_with_comments() -> None:
    text = """\
# types of our Kestra 2.0 test instance
io.kestra.plugin.core.flow.Loop
  io.kestra.plugin.core.flow.Approval   # added in 1.1

io.kestra.plugin.core.flow.Loop
"""
    assert types_from_text(text) == [
        "io.kestra.plugin.core.flow.Loop", "io.kestra.plugin.core.flow.Approval",
    ]


def test_types_from_a_table_ignore_file_names_and_expand_slashes() -> None:
    text = """\
# Files that use types (io.kestra.core.tasks.test.*) from the test classpath.
alias-task.yaml\tio.kestra.core.runners.test.TaskWithAlias / io.kestra.core.runners.test.task.Alias (tests type aliases)
each-parallel-Integer.yml\tio.kestra.core.tasks.test.Encrypted/Read
dag.yaml\tcom.example.Outer$Inner
"""
    assert types_from_text(text) == [
        "io.kestra.core.runners.test.TaskWithAlias",
        "io.kestra.core.runners.test.task.Alias",
        "io.kestra.core.tasks.test.Encrypted",
        "io.kestra.core.tasks.test.Read",
        "com.example.Outer$Inner",
    ]


def test_load_extra_types_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "types.txt"
    path.write_text("io.kestra.plugin.core.flow.Loop\n", encoding="utf-8")
    assert load_extra_types(path) == ["io.kestra.plugin.core.flow.Loop"]


def test_registries_of_the_same_types_and_aliases_are_equal() -> None:
    from headwater.kestra_types import TypeRegistry

    assert TypeRegistry.builtin() == TypeRegistry.builtin()
    assert hash(TypeRegistry.builtin(["x.Y"])) == hash(TypeRegistry.builtin(["x.Y"]))
    assert TypeRegistry.builtin() != TypeRegistry.builtin(["x.Y"])
    assert TypeRegistry(["a.B"], {"c": "a.B"}) != TypeRegistry(["a.B"])
    assert TypeRegistry(["a.B"]) != "a.B"
