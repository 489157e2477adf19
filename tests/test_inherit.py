from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.errors import Diagnostic
from headwater.inherit import (
    EMPTY,
    Effective,
    Layer,
    check_flow_plugin_defaults,
    config_layers,
    effective_files,
    forced_defaults,
    merge,
    repository_layers,
)
from headwater.yamlio import Document, load

PY = "io.kestra.plugin.scripts.python.Script"


def doc(path: str, text: str) -> Document:
    return load(text.encode(), path)


def chain(
    *docs: tuple[str, Document], instance: str = "prod"
) -> tuple[Effective, list[Diagnostic]]:
    """Merge config documents root first, the way the engine does: one call per file."""
    effective, found = EMPTY, []
    for label, document in docs:
        if document.path == "headwater.yaml":
            layers = repository_layers(document, instance)
        else:
            layers = config_layers(document.path, label, document, instance)
        effective, new = merge(layers, effective)
        found += new
    return effective, found


def codes(found: list[Diagnostic]) -> list[str]:
    return [d.code for d in found]


def get(config: Mapping[str, Any], path: Sequence[str | int]) -> Any:
    value: Any = config
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


# --- maps, scalars, lists, null -------------------------------------------------------------


def test_maps_merge_and_nearer_scalar_wins() -> None:
    parent = doc("t.yaml", "variables:\n  db: {host: a, port: 5432}\n  org: acme\n")
    child = doc("n.yaml", "variables:\n  db: {host: b}\n  team: data\n")
    effective, found = chain(("tenant", parent), ("ns", child))
    assert found == []
    assert effective.config["variables"] == {
        "db": {"host": "b", "port": 5432},
        "org": "acme",
        "team": "data",
    }


def test_lists_are_replaced() -> None:
    parent = doc("t.yaml", "owners: ['@acme/a', '@acme/b']\nvariables: {l: [1, 2, 3]}\n")
    child = doc("n.yaml", "owners: ['@acme/c']\nvariables: {l: [9]}\n")
    effective, _ = chain(("tenant", parent), ("ns", child))
    assert effective.config["owners"] == ["@acme/c"]
    assert effective.config["variables"]["l"] == [9]
    assert effective.origin(("owners", 0)) == effective.provenance[("owners",)]
    assert effective.provenance[("owners",)].source == "n.yaml"


def test_null_removes_key_and_its_provenance() -> None:
    parent = doc("t.yaml", "variables:\n  db: {host: a, port: 1}\n  org: acme\ndescription: x\n")
    child = doc("n.yaml", "variables:\n  db: null\n  missing: null\ndescription: null\n")
    effective, found = chain(("tenant", parent), ("ns", child))
    assert found == []
    assert effective.config["variables"] == {"org": "acme"}
    assert "description" not in effective.config
    assert not any(path[:2] == ("variables", "db") for path in effective.provenance)
    assert ("description",) not in effective.provenance


def test_null_inside_missing_map_creates_nothing() -> None:
    effective, _ = merge([Layer("n.yaml", "ns", {"variables": {"a": {"b": None}}})])
    assert effective.config == {}


def test_map_and_scalar_replace_each_other() -> None:
    layers = [
        Layer("a.yaml", "a", {"variables": {"x": {"y": 1, "z": 2}, "s": "text"}}),
        Layer("b.yaml", "b", {"variables": {"x": "flat", "s": {"now": "map"}}}),
    ]
    effective, _ = merge(layers)
    assert effective.config["variables"] == {"x": "flat", "s": {"now": "map"}}
    assert set(effective.provenance) == {("variables", "x"), ("variables", "s", "now")}


def test_secrets_and_kv_merge_like_maps() -> None:
    parent = doc(
        "t.yaml", "secrets:\n  A: {description: one}\n  B: {}\nkv:\n  flags: {beta: false}\n"
    )
    child = doc("n.yaml", "secrets:\n  B: null\n  C: {}\nkv:\n  flags: {gamma: 1}\n  k.2: [1]\n")
    effective, _ = chain(("tenant", parent), ("ns", child))
    assert effective.config["secrets"] == {"A": {"description": "one"}, "C": {}}
    assert effective.config["kv"] == {"flags": {"beta": False, "gamma": 1}, "k.2": [1]}
    assert effective.provenance[("secrets", "C")].source == "n.yaml"


def test_provenance_names_file_line_and_layer() -> None:
    tenant = doc(
        "tenants/acme/tenant.yaml",
        "variables:\n  db:\n    host: dev\n    port: 1\nenvironments:\n  prod:\n"
        "    variables:\n      db: {host: prod}\n",
    )
    effective, _ = chain(("tenant acme", tenant))
    host = effective.origin(("variables", "db", "host"))
    port = effective.origin(("variables", "db", "port"))
    assert host is not None and port is not None
    assert (host.source, host.line, host.layer) == (
        "tenants/acme/tenant.yaml",
        8,
        "environments.prod of tenant acme",
    )
    assert (port.line, port.layer) == (4, "tenant acme")
    assert effective.origin(("variables", "db")) is None
    assert effective.origin(("nothing",)) is None


def test_environment_of_another_instance_is_ignored() -> None:
    tenant = doc("t.yaml", "variables: {a: 1}\nenvironments:\n  dev: {variables: {a: 2}}\n")
    effective, _ = chain(("tenant", tenant))
    assert effective.config["variables"] == {"a": 1}
    assert "environments" not in effective.config


def test_repository_layers_and_full_design_chain() -> None:
    hw = doc(
        "headwater.yaml",
        "version: 1\ndefaults:\n  variables: {org: acme}\ninstances:\n  prod:\n    branch: main\n"
        "    defaults: {variables: {env: prod}}\n",
    )
    layers = repository_layers(hw, "prod")
    assert [(x.label, x.loc) for x in layers] == [
        ("headwater.yaml defaults", ("defaults",)),
        ("instances.prod.defaults", ("instances", "prod", "defaults")),
    ]
    tenant = doc("tenants/acme/tenant.yaml", "variables: {tier: gold}\n")
    company = doc("tenants/acme/company/namespace.yaml", "variables: {team: none}\n")
    team = doc("tenants/acme/company/team/namespace.yaml", "variables: {team: data}\n")
    effective, found = chain(
        ("hw", hw),
        ("tenant acme", tenant),
        ("namespace company", company),
        ("namespace company.team", team),
    )
    assert found == []
    assert effective.config["variables"] == {
        "org": "acme",
        "env": "prod",
        "tier": "gold",
        "team": "data",
    }
    assert repository_layers(None, "prod") == []
    assert config_layers("x.yaml", "x", None, "prod") == []


def test_empty_layers_return_the_base() -> None:
    base, _ = merge([Layer("a.yaml", "a", {"variables": {"a": 1}})])
    assert merge([], base)[0] is base
    assert merge([Layer("b.yaml", "b", None), Layer("c.yaml", "c", {})], base)[0] is base


def test_merge_does_not_mutate_base_or_documents() -> None:
    data = {"variables": {"x": {"y": 1}}}
    base, _ = merge([Layer("a.yaml", "a", data)])
    before = repr(base)
    merge([Layer("b.yaml", "b", {"variables": {"x": {"y": 2, "z": None}}})], base)
    assert repr(base) == before
    assert data == {"variables": {"x": {"y": 1}}}


def test_garbage_shapes_do_not_crash() -> None:
    weird: list[Any] = [
        {"variables": [1, 2]},
        {"pluginDefaults": {"type": "x"}},
        {"pluginDefaults": [1, {}]},
        {"allowedPlugins": [1, None]},
        {"deniedPlugins": "x"},
        {"locked": [1, ""]},
        {"workerGroup": "eu"},
        {1: 2},
        {"pluginDefaults": [{"type": "t", "values": [1]}]},
    ]
    effective = EMPTY
    for index, data in enumerate(weird):
        effective, _ = merge([Layer(f"{index}.yaml", str(index), data)], effective)
    assert isinstance(effective.config, dict)


# --- locked ---------------------------------------------------------------------------------

LOCKING = (
    "variables:\n  db: {host: h, port: 1}\nworkerGroup: {key: eu}\n"
    "locked: [variables.db.host, workerGroup]\n"
)


@pytest.mark.parametrize(
    "child",
    [
        "variables: {db: {host: other}}\n",  # the path itself
        "variables: {db: {host: h}}\n",  # the same value is still setting it
        "workerGroup: {fallback: WAIT}\n",  # below a locked path
        "variables: {db: null}\n",  # removing the map holding it
        "variables: {db: flat}\n",  # replacing the map holding it
        "variables: null\n",
    ],
)
def test_locked_path_cannot_be_set_below(child: str) -> None:
    parent = doc("tenants/acme/tenant.yaml", LOCKING)
    effective, found = chain(("tenant acme", parent), ("namespace a", doc("n.yaml", child)))
    assert codes(found) == ["config.locked"]
    error = found[0]
    assert error.path == "n.yaml" and error.line == 1 and error.severity == "error"
    assert error.related[0] in ("tenants/acme/tenant.yaml:4",)
    assert "tenants/acme/tenant.yaml:4" in error.message
    assert effective.config["variables"]["db"]["host"] == "h"
    assert effective.config["workerGroup"] == {"key": "eu"}


def test_locked_siblings_and_containing_maps_may_be_merged() -> None:
    parent = doc("t.yaml", LOCKING)
    child = doc("n.yaml", "variables: {db: {port: 2}, other: 1}\n")
    effective, found = chain(("tenant", parent), ("ns", child))
    assert found == []
    assert effective.config["variables"]["db"] == {"host": "h", "port": 2}
    assert effective.config["locked"] == ["variables.db.host", "workerGroup"]


def test_overlay_of_the_locking_file_may_set_it_but_not_a_child_overlay() -> None:
    parent = doc("t.yaml", LOCKING + "environments:\n  prod: {variables: {db: {host: p}}}\n")
    child = doc("n.yaml", "environments:\n  prod: {workerGroup: {key: us}}\n")
    effective, found = chain(("tenant", parent), ("ns", child))
    assert codes(found) == ["config.locked"]
    assert found[0].line == 2 and found[0].path == "n.yaml"
    assert effective.config["variables"]["db"]["host"] == "p"
    assert effective.config["workerGroup"] == {"key": "eu"}


def test_locks_accumulate_and_repository_layers_share_an_owner() -> None:
    hw = doc(
        "headwater.yaml",
        "version: 1\ndefaults:\n  variables: {org: acme}\n  locked: [variables.org]\n"
        "instances:\n  prod:\n    branch: main\n    defaults: {variables: {org: acme-prod}}\n",
    )
    tenant = doc("t.yaml", "locked: [kv]\n")
    child = doc("n.yaml", "variables: {org: x}\nkv: {a: 1}\n")
    effective, found = chain(("hw", hw), ("tenant", tenant), ("ns", child))
    assert codes(found) == ["config.locked", "config.locked"]
    assert [d.related for d in found] == [("headwater.yaml:4",), ("t.yaml:1",)]
    assert effective.config["variables"] == {"org": "acme-prod"}
    assert effective.config["locked"] == ["variables.org", "kv"]
    assert [lock.text for lock in effective.locks] == ["variables.org", "kv"]


def test_explicit_owner_ids() -> None:
    layers = [
        Layer("headwater.yaml", "defaults", {"kv": {"a": 1}, "locked": ["kv"]}, owner=1),
        Layer("headwater.yaml", "instances.prod.defaults", {"kv": {"a": 2}}, owner=1),
        Layer("headwater.yaml", "other owner", {"kv": {"a": 3}}, owner=2),
    ]
    effective, found = merge(layers)
    assert codes(found) == ["config.locked"]
    assert effective.config["kv"] == {"a": 2}


def test_locked_plugin_lists() -> None:
    parent = doc("t.yaml", "locked: [deniedPlugins, pluginDefaults]\n")
    child = doc(
        "n.yaml",
        f"deniedPlugins: [a.*]\npluginDefaults:\n  - type: {PY}\n    values: {{a: 1}}\n",
    )
    effective, found = chain(("tenant", parent), ("ns", child))
    assert codes(found) == ["config.locked", "config.locked"]
    assert "deniedPlugins" not in effective.config and "pluginDefaults" not in effective.config


# --- plugin defaults ------------------------------------------------------------------------

FORCING = f"""pluginDefaults:
  - type: {PY}
    forced: true
    values: {{containerImage: "python:3.12", env: {{A: 1}}}}
  - type: io.kestra.plugin.core.log.Log
    values: {{level: INFO}}
"""


def test_plugin_defaults_merge_by_type() -> None:
    child = doc(
        "n.yaml",
        "pluginDefaults:\n  - type: io.kestra.plugin.core.log.Log\n"
        "    values: {level: WARN, x: 1}\n"
        "  - type: other.Task\n    values: {y: 2}\n",
    )
    effective, found = chain(("tenant", doc("t.yaml", FORCING)), ("ns", child))
    assert found == []
    assert effective.config["pluginDefaults"] == [
        {"type": PY, "forced": True, "values": {"containerImage": "python:3.12", "env": {"A": 1}}},
        {
            "type": "io.kestra.plugin.core.log.Log",
            "forced": False,
            "values": {"level": "WARN", "x": 1},
        },
        {"type": "other.Task", "forced": False, "values": {"y": 2}},
    ]
    level = effective.origin(("pluginDefaults", "io.kestra.plugin.core.log.Log", "values", "level"))
    assert level is not None and (level.source, level.line) == ("n.yaml", 3)


def test_forced_value_cannot_be_overridden_below() -> None:
    child = doc(
        "n.yaml",
        f"pluginDefaults:\n  - type: {PY}\n    values: {{containerImage: x, env: {{B: 2}}}}\n",
    )
    effective, found = chain(("tenant", doc("t.yaml", FORCING)), ("ns", child))
    assert codes(found) == ["config.forced-override"]
    assert (found[0].path, found[0].line) == ("n.yaml", 3)
    assert found[0].related == ("t.yaml:4", "t.yaml:3")
    values = effective.config["pluginDefaults"][0]["values"]
    assert values == {"containerImage": "python:3.12", "env": {"A": 1, "B": 2}}


def test_forcing_fixes_inherited_values_and_new_keys_become_fixed() -> None:
    layers = [
        Layer("a.yaml", "a", {"pluginDefaults": [{"type": "T", "values": {"x": 1}}]}),
        Layer("b.yaml", "b", {"pluginDefaults": [{"type": "T", "forced": True}]}),
        Layer("b.yaml", "b overlay", {"pluginDefaults": [{"type": "T", "values": {"x": 5}}]}),
        Layer("c.yaml", "c", {"pluginDefaults": [{"type": "T", "values": {"y": 2}}]}),
        Layer("c.yaml", "c overlay", {"pluginDefaults": [{"type": "T", "values": {"y": 3}}]}),
        Layer("d.yaml", "d", {"pluginDefaults": [{"type": "T", "values": {"x": 9, "y": 9}}]}),
    ]
    effective, found = merge(layers)
    assert [(d.code, d.path) for d in found] == [
        ("config.forced-override", "d.yaml"),
        ("config.forced-override", "d.yaml"),
    ]
    assert effective.config["pluginDefaults"][0]["values"] == {"x": 5, "y": 3}
    fixed = forced_defaults(effective)["T"]
    assert fixed.forced_at.source == "b.yaml"
    assert {path: o.layer for path, o in fixed.fixed.items()} == {
        ("x",): "b overlay",
        ("y",): "c overlay",
    }


def test_overlay_of_forcing_file_may_change_and_child_may_not_unforce() -> None:
    parent = doc(
        "t.yaml",
        FORCING + f"environments:\n  prod:\n    pluginDefaults:\n"
        f"      - type: {PY}\n        values: {{containerImage: prod}}\n",
    )
    child = doc("n.yaml", f"pluginDefaults:\n  - type: {PY}\n    forced: false\n")
    effective, found = chain(("tenant", parent), ("ns", child))
    assert codes(found) == ["config.forced-override"]
    assert found[0].line == 3
    entry = effective.config["pluginDefaults"][0]
    assert entry["forced"] is True and entry["values"]["containerImage"] == "prod"


def test_duplicate_type_in_one_file_is_a_warning() -> None:
    layer = Layer(
        "a.yaml",
        "a",
        {
            "pluginDefaults": [
                {"type": "T", "values": {"x": 1}},
                {"type": "T", "values": {"x": 2}},
            ]
        },
    )
    effective, found = merge([layer])
    assert [(d.code, d.severity) for d in found] == [("config.duplicate-plugin-default", "warning")]
    assert effective.config["pluginDefaults"][0]["values"] == {"x": 2}


def test_flow_plugin_defaults_against_forced_ones() -> None:
    effective, _ = chain(("tenant acme", doc("t.yaml", FORCING)))
    flow: list[tuple[str, dict[str, Any], int]] = [
        ("io.kestra.plugin.scripts", {"containerImage": "mine", "other": 1}, 10),
        (PY, {"env": {"B": 1}}, 14),
        (PY, {"env": "flat"}, 16),
        ("io.kestra.plugin.core.log.Log", {"level": "DEBUG"}, 18),
    ]
    found = check_flow_plugin_defaults(effective, flow, "flows/x.yaml")
    assert [(d.code, d.line) for d in found] == [
        ("governance.forced-default", 10),
        ("governance.forced-default", 16),
    ]
    assert found[0].related == ("t.yaml:4",) and "tenant acme" in found[0].message


# --- allowed and denied plugins -------------------------------------------------------------


def test_allowed_plugins_narrow_and_widening_is_a_warning() -> None:
    parent = doc(
        "t.yaml", "allowedPlugins: ['io.kestra.plugin.core.*', 'io.kestra.plugin.scripts.*']\n"
    )
    child = doc(
        "n.yaml", "allowedPlugins: ['io.kestra.plugin.core.log.*', 'io.kestra.plugin.aws.*']\n"
    )
    effective, found = chain(("tenant acme", parent), ("namespace a", child))
    assert [(d.code, d.severity, d.path, d.related) for d in found] == [
        ("config.allowed-widened", "warning", "n.yaml", ("t.yaml:1",)),
    ]
    assert effective.config["allowedPlugins"] == ["io.kestra.plugin.core.log.*"]
    assert effective.plugin_allowed("io.kestra.plugin.core.log.Log") == (True, None)
    ok, why = effective.plugin_allowed("io.kestra.plugin.aws.s3.Upload")
    assert not ok and why is not None and "tenant acme (t.yaml:1)" in why
    ok, why = effective.plugin_allowed("io.kestra.plugin.scripts.python.Script")
    assert not ok and why is not None and "namespace a (n.yaml:1)" in why


def test_empty_allow_list_allows_nothing_and_no_list_allows_all() -> None:
    assert EMPTY.plugin_allowed("any.Thing") == (True, None)
    effective, _ = merge([Layer("a.yaml", "a", {"allowedPlugins": []})])
    assert effective.plugin_allowed("any.Thing")[0] is False


def test_overlay_replaces_its_own_allow_and_deny_lists() -> None:
    parent = doc("t.yaml", "allowedPlugins: [a.*]\ndeniedPlugins: [a.b.*]\n")
    own = doc(
        "n.yaml",
        "allowedPlugins: [a.x.*]\ndeniedPlugins: [a.x.y]\nenvironments:\n"
        "  prod: {allowedPlugins: [a.x.*, a.z.*], deniedPlugins: []}\n",
    )
    effective, found = chain(("tenant", parent), ("ns", own))
    assert found == []
    assert effective.allowed_chain == (("a.*",), ("a.x.*", "a.z.*"))
    assert effective.config["allowedPlugins"] == ["a.x.*", "a.z.*"]
    assert effective.denied == ("a.b.*",)
    assert effective.plugin_allowed("a.x.y") == (True, None)


def test_denied_plugins_union_and_deny_wins() -> None:
    parent = doc("t.yaml", "allowedPlugins: ['*']\ndeniedPlugins: [a.shell.*]\n")
    child = doc("n.yaml", "deniedPlugins: [a.shell.*, b.*]\n")
    effective, _ = chain(("tenant acme", parent), ("ns", child))
    assert effective.config["deniedPlugins"] == ["a.shell.*", "b.*"]
    assert effective.provenance[("deniedPlugins", 0)].source == "t.yaml"
    assert effective.provenance[("deniedPlugins", 1)].source == "n.yaml"
    ok, why = effective.plugin_allowed("a.shell.Commands")
    assert not ok and why is not None and "a.shell.*" in why and "t.yaml:2" in why
    assert effective.plugin_allowed("b.Task")[0] is False


# --- namespace files ------------------------------------------------------------------------


def test_effective_files_nearer_wins() -> None:
    files = effective_files(
        [
            ("company", {"a.py": 1, "b.py": 2}, True),
            ("company.team", {"b.py": 3}, True),
            ("company.team.x", {}, True),
        ]
    )
    assert files == {"a.py": ("company", 1), "b.py": ("company.team", 3)}


def test_effective_files_inherit_false_cuts_the_chain() -> None:
    chain_ = [("a", {"1": "a"}, True), ("a.b", {"2": "b"}, False), ("a.b.c", {"3": "c"}, True)]
    assert effective_files(chain_) == {"2": ("a.b", "b"), "3": ("a.b.c", "c")}
    assert effective_files(chain_[:2]) == {"2": ("a.b", "b")}
    assert effective_files([]) == {}


# --- properties -----------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y", ""]), st.booleans())
VALUES = st.recursive(
    st.one_of(SCALARS, st.none(), st.lists(st.integers(0, 3), max_size=2)),
    lambda inner: st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
TREES = st.dictionaries(KEYS, VALUES, max_size=3)


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping) and value:
        return [leaf for key, item in value.items() for leaf in leaves(item, (*path, key))]
    return [(path, value)] if path else []


def touches(path: tuple[str, ...], value: Any, target: tuple[str, ...]) -> bool:
    """Whether a layer leaf (path, value) changes the final leaf at ``target``."""
    if path[: len(target)] == target:
        return not (value is None and len(path) > len(target))  # null under a scalar: no-op
    return not isinstance(value, Mapping) and target[: len(path)] == path


def attempts(path: tuple[str, ...], value: Any, locked: tuple[str, ...]) -> bool:
    """Whether a layer leaf (path, value) sets something at or below ``locked``."""
    if path[: len(locked)] == locked:
        return True
    return not isinstance(value, Mapping) and locked[: len(path)] == path


def var_layers(trees: list[dict[str, Any]]) -> list[Layer]:
    return [Layer(f"L{i}.yaml", f"layer {i}", {"variables": t}) for i, t in enumerate(trees)]


@given(st.lists(TREES, min_size=1, max_size=5))
def test_property_nearer_wins_null_removes_lists_replace(trees: list[dict[str, Any]]) -> None:
    effective, found = merge(var_layers(trees))
    assert found == []
    final = effective.config.get("variables", {})
    for path, value in leaves(trees[-1]):
        if value is None:
            assert get(final, path) is None
        elif not isinstance(value, Mapping):
            assert get(final, path) == value
            origin = effective.origin(("variables", *path))
            assert origin is not None and origin.layer == f"layer {len(trees) - 1}"


@given(st.lists(TREES, min_size=1, max_size=5))
def test_property_provenance_names_the_layer_that_set_each_value(
    trees: list[dict[str, Any]],
) -> None:
    effective, _ = merge(var_layers(trees))
    final = effective.config.get("variables", {})
    final_leaves = leaves(final)
    for path, value in final_leaves:
        origin = effective.provenance.get(("variables", *path))
        if value == {}:
            continue  # an empty map: recorded where it was written, or none if emptied by nulls
        assert origin is not None
        index = int(origin.source[1:].split(".")[0])
        assert get(trees[index], path) == value
        for later in trees[index + 1 :]:
            assert not any(touches(p, v, path) for p, v in leaves(later))
    # every recorded path is a leaf of the effective config
    for recorded in effective.provenance:
        assert get(effective.config, recorded) is not None


@given(st.lists(TREES, min_size=1, max_size=5))
def test_property_untouched_values_survive(trees: list[dict[str, Any]]) -> None:
    effective, _ = merge(var_layers(trees))
    final = effective.config.get("variables", {})
    for index, tree in enumerate(trees):
        for path, value in leaves(tree):
            if value is None or value == {}:
                continue
            if not any(touches(p, v, path) for t in trees[index + 1 :] for p, v in leaves(t)):
                assert get(final, path) == value


LOCK_PATHS = st.lists(
    st.lists(KEYS, min_size=1, max_size=3).map(lambda keys: "variables." + ".".join(keys)),
    max_size=2,
)


@given(st.lists(st.tuples(TREES, LOCK_PATHS), min_size=2, max_size=5))
def test_property_locked_path_is_never_overridden(
    layers_spec: list[tuple[dict[str, Any], list[str]]],
) -> None:
    layers = [
        Layer(f"L{i}.yaml", f"layer {i}", {"variables": tree, "locked": locked})
        for i, (tree, locked) in enumerate(layers_spec)
    ]
    final, found = merge(layers)
    for i, (_, locked) in enumerate(layers_spec):
        upto, _ = merge(layers[: i + 1])
        for text in locked:
            path = tuple(text.split("."))
            assert get(final.config, path) == get(upto.config, path)
            for j in range(i + 1, len(layers)):
                attempted = any(attempts(p, v, path[1:]) for p, v in leaves(layers_spec[j][0]))
                if attempted:
                    cited = [
                        d for d in found if d.path == f"L{j}.yaml" and d.code == "config.locked"
                    ]
                    assert cited and all(r.startswith("L") for d in cited for r in d.related)


TYPES = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(".".join)
PATTERNS = st.one_of(TYPES, TYPES.map(lambda t: t + ".*"), st.just("*"))
PLUGIN_LISTS = st.one_of(st.none(), st.lists(PATTERNS, max_size=3))


def plugin_layers(spec: list[tuple[list[str] | None, list[str] | None]]) -> list[Layer]:
    layers = []
    for i, (allowed, denied) in enumerate(spec):
        data: dict[str, Any] = {}
        if allowed is not None:
            data["allowedPlugins"] = allowed
        if denied is not None:
            data["deniedPlugins"] = denied
        layers.append(Layer(f"L{i}.yaml", f"layer {i}", data))
    return layers


@given(st.lists(st.tuples(PLUGIN_LISTS, PLUGIN_LISTS), min_size=1, max_size=4), st.lists(TYPES))
def test_property_allowed_only_narrows_denied_only_widens(
    spec: list[tuple[list[str] | None, list[str] | None]],
    types: list[str],
) -> None:
    layers = plugin_layers(spec)
    steps = [merge(layers[: k + 1])[0] for k in range(len(layers))]
    for type_name in types:
        verdicts = [step.plugin_allowed(type_name)[0] for step in steps]
        assert verdicts == sorted(verdicts, reverse=True)  # once refused, refused below
        final = steps[-1]
        for step in steps:
            if any(_matches(p, type_name) for p in step.denied):
                assert any(_matches(p, type_name) for p in final.denied)
        allowed_list = final.config.get("allowedPlugins")
        if allowed_list is not None:
            in_list = any(_matches(p, type_name) for p in allowed_list)
            in_chain = all(any(_matches(p, type_name) for p in ps) for ps in final.allowed_chain)
            assert in_list == in_chain


def _matches(pattern: str, type_name: str) -> bool:
    return fnmatch.fnmatchcase(type_name, pattern)  # patterns here hold no ? or [


@given(st.lists(st.tuples(TREES, st.sampled_from([None, True, False])), min_size=2, max_size=5))
def test_property_forced_plugin_defaults_win(
    spec: list[tuple[dict[str, Any], bool | None]],
) -> None:
    layers = []
    for i, (values, forced) in enumerate(spec):
        entry: dict[str, Any] = {"type": "T", "values": values}
        if forced is not None:
            entry["forced"] = forced
        layers.append(Layer(f"L{i}.yaml", f"layer {i}", {"pluginDefaults": [entry]}))
    final, found = merge(layers)
    first = next((i for i, (_, forced) in enumerate(spec) if forced), None)
    if first is None:
        assert found == []
        return
    at_forcing, _ = merge(layers[: first + 1])
    fixed_then = leaves(at_forcing.config["pluginDefaults"][0]["values"])
    final_values = final.config["pluginDefaults"][0]["values"]
    assert final.config["pluginDefaults"][0]["forced"] is True
    for path, value in fixed_then:
        assert get(final_values, path) == value or value == {}
    for j in range(first + 1, len(layers)):
        if spec[j][1] is False:
            assert any(d.path == f"L{j}.yaml" and d.code == "config.forced-override" for d in found)


@settings(max_examples=50)
@given(st.lists(st.tuples(TREES, LOCK_PATHS, PLUGIN_LISTS), min_size=1, max_size=5))
def test_property_merge_is_deterministic_and_chains(
    spec: list[tuple[dict[str, Any], list[str], list[str] | None]],
) -> None:
    layers = []
    for i, (tree, locked, allowed) in enumerate(spec):
        data: dict[str, Any] = {"variables": tree, "locked": locked}
        if allowed is not None:
            data["allowedPlugins"] = allowed
        # every second layer is the overlay of the one before (same file)
        layers.append(Layer(f"L{i // 2}.yaml", f"layer {i}", data))
    once, found_once = merge(layers)
    again, found_again = merge(layers)
    assert (once, found_once) == (again, found_again)
    stepped, found_stepped = EMPTY, []
    for layer in layers:
        stepped, new = merge([layer], stepped)
        found_stepped += new
    assert stepped.config == once.config and stepped.provenance == once.provenance
    assert found_stepped == found_once
