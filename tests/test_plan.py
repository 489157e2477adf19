from __future__ import annotations

import io
import json
from pathlib import Path

import ijson
import pytest
from jsonschema import Draft202012Validator

from headwater import render
from headwater.errors import PlanRefused
from headwater.plan import (
    SENSITIVE,
    Change,
    ChangeSets,
    Plan,
    Saved,
    add_change_sets,
    compare_refs,
    compute,
    fingerprint,
    guard_prune,
    read_saved,
)
from headwater.resources import Kind, Resource, ResourceKey, State, make, secret_hash

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "plan.schema.json").read_text())
HMAC_KEY = b"test-hmac-key"
SECRET_VALUE = "hunter2-very-secret-value"
NEW_SECRET_VALUE = "correct-horse-battery-staple"


def res(ns: str, kind: Kind, name: str, content: bytes | str, tenant: str = "acme") -> Resource:
    data = content.encode() if isinstance(content, str) else content
    folder = {"flow": "flows", "file": "files"}.get(kind, "")
    source = f"tenants/{tenant}/{ns.replace('.', '/')}/{folder}/{name}" if folder else ""
    return make(tenant, ns, kind, name, data, source)


def secret(ns: str, name: str, value: str | None, tenant: str = "acme") -> Resource:
    return Resource(ResourceKey(tenant, ns, "secret", name), secret_hash(HMAC_KEY, value))


def state(*resources: Resource) -> State:
    return {r.key: r for r in resources}


def flow(ns: str, name: str, body: str = "tasks: []\n", tenant: str = "acme") -> Resource:
    return res(ns, "flow", f"{name}.yaml", f"id: {name}\nnamespace: {ns}\n{body}", tenant)


def base_state() -> State:
    return state(
        flow("company", "hello"),
        flow("company.team", "etl", "tasks:\n  - id: a\n    type: Log\n"),
        res("company", "file", "query.sql", "select 1;\n"),
        res("company", "file", "logo.png", b"\x89PNG\x00\x01"),
        res("company", "config", "config", '{"variables": {"env": "dev"}}\n'),
        res("company", "kv", "kv", '{"region": "eu"}\n'),
        secret("company", "TOKEN", SECRET_VALUE),
    )


def plan_of(desired: State, actual: State, **kwargs: object) -> Plan:
    return compute(desired, actual, instance="dev", revision="b" * 40, base="a" * 40, **kwargs)  # type: ignore[arg-type]


def managed_of(st: State) -> dict[ResourceKey, str]:
    return {k: r.hash for k, r in st.items()}


def validate(doc: object) -> None:
    Draft202012Validator.check_schema(SCHEMA)
    errors = list(Draft202012Validator(SCHEMA).iter_errors(doc))
    assert not errors, [e.message for e in errors]


# --- basics ---------------------------------------------------------------------------------


def test_no_changes_is_empty() -> None:
    st = base_state()
    plan = plan_of(st, dict(st), managed=managed_of(st))
    assert plan.is_empty
    assert plan.changes == ()
    assert plan.summary() == {
        "create": 0,
        "update": 0,
        "delete": 0,
        "drift": 0,
        "unchanged": len(st),
    }


def test_one_edit_is_exactly_one_update_with_a_diff() -> None:
    actual = base_state()
    desired = dict(actual)
    edited = flow("company", "hello", "tasks:\n  - id: log\n")
    desired[edited.key] = edited
    plan = plan_of(desired, actual, managed=managed_of(actual))
    assert [(c.key, c.action) for c in plan.changes] == [(edited.key, "update")]
    change = plan.changes[0]
    assert change.before_hash == actual[edited.key].hash
    assert change.after_hash == edited.hash
    assert change.diff is not None
    assert change.diff.startswith(
        "--- a/tenants/acme/company/flows/hello.yaml\n+++ b/tenants/acme/company/flows/hello.yaml\n"
    )
    assert "-tasks: []\n" in change.diff
    assert "+tasks:\n+  - id: log\n" in change.diff
    assert not change.drift and not change.binary and not change.sensitive


def test_diff_labels_fall_back_to_the_key_and_mark_missing_newline() -> None:
    before = res("company", "kv", "kv", '{"a": 1}')
    after = res("company", "kv", "kv", '{"a": 2}')
    (change,) = plan_of(state(after), state(before)).changes
    assert change.diff is not None
    assert change.diff.startswith("--- a/acme/company/kv/kv\n+++ b/acme/company/kv/kv\n")
    assert change.diff.count("\\ No newline at end of file\n") == 2


def test_creation_and_deletion_diffs_use_dev_null() -> None:
    new = flow("company", "new")
    old = flow("company", "old")
    plan = plan_of(state(new), state(old))
    created, deleted = plan.changes
    assert created.action == "create" and created.before_hash is None
    assert created.diff is not None and created.diff.startswith("--- /dev/null\n+++ b/")
    assert deleted.action == "delete" and deleted.after_hash is None
    assert deleted.diff is not None and deleted.diff.startswith("--- a/")
    assert deleted.diff.split("\n")[1] == "+++ /dev/null"


@pytest.mark.parametrize("text", ["", "one", "one\n", "a\nb\n", "a\nb", "a\r\nb\u2028c\n"])
def test_creation_and_deletion_diffs_match_difflib(text: str) -> None:
    import difflib

    new = res("company", "kv", "kv", text)
    *complete, last = text.split("\n")
    lines = [part + "\n" for part in complete] + ([last] if last else [])
    for plan, a, b in (
        (plan_of(state(new), {}), [], lines),
        (plan_of({}, state(new)), lines, []),
    ):
        expected = "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            for line in difflib.unified_diff(a, b, "x", "y")
        )
        (change,) = plan.changes
        if not text:
            assert change.diff is None
            continue
        assert change.diff is not None
        assert change.diff.split("\n", 2)[2] == expected.split("\n", 2)[2]


def test_oversized_text_shows_no_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("headwater.plan.MAX_DIFF_BYTES", 10)
    before = res("company", "kv", "kv", "short\n")
    after = res("company", "kv", "kv", "much longer text\n")
    (change,) = plan_of(state(after), state(before)).changes
    assert change.diff is None and not change.binary


def test_removed_namespace_lists_its_deletions() -> None:
    actual = base_state()
    desired = {k: r for k, r in actual.items() if k.namespace != "company.team"}
    plan = plan_of(desired, actual, managed=managed_of(actual))
    gone = [k for k in actual if k.namespace == "company.team"]
    assert [c.key for c in plan.changes] == gone
    assert all(c.action == "delete" for c in plan.changes)
    assert list(plan.namespaces()) == [("acme", "company.team")]


def test_binary_change_shows_a_hash_change_and_no_diff() -> None:
    actual = base_state()
    logo = res("company", "file", "logo.png", b"\x89PNG\x00\x02")
    plan = plan_of({**actual, logo.key: logo}, actual)
    (change,) = plan.changes
    assert change.binary and change.diff is None
    assert change.before_hash == actual[logo.key].hash
    assert change.after_hash == logo.hash != change.before_hash


def test_text_to_binary_counts_as_binary() -> None:
    before = res("company", "file", "data", "text\n")
    after = res("company", "file", "data", b"\x00\x01")
    (change,) = plan_of(state(after), state(before)).changes
    assert change.binary and change.diff is None


def test_missing_content_gives_no_diff() -> None:
    before = res("company", "flow", "x.yaml", "id: x\n")
    hash_only = Resource(before.key, before.hash)  # read back as a hash only
    after = res("company", "flow", "x.yaml", "id: y\n")
    (change,) = plan_of(state(after), state(hash_only)).changes
    assert change.action == "update" and change.diff is None and not change.binary


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_show_values_or_hashes() -> None:
    actual = base_state()
    rotated = secret("company", "TOKEN", NEW_SECRET_VALUE)
    added = secret("company.team", "API_KEY", SECRET_VALUE + "-2")
    desired = {**actual, rotated.key: rotated, added.key: added}
    plan = plan_of(desired, actual, managed=managed_of(actual))
    by_key = {c.key: c for c in plan.changes}
    assert by_key[rotated.key].action == "update"
    assert by_key[added.key].action == "create"
    for change in plan.changes:
        assert change.sensitive
        assert change.diff is None
        assert change.before_hash in (None, SENSITIVE) and change.after_hash in (None, SENSITIVE)
    removed = plan_of({}, desired)
    renderings = [render.plan_text(p, color=c) for p in (plan, removed) for c in (True, False)] + [
        render.plan_json(plan),
        render.plan_markdown(plan),
        render.plans_markdown([plan, removed]),
    ]
    leaks = [SECRET_VALUE, NEW_SECRET_VALUE, rotated.hash, added.hash, actual[rotated.key].hash]
    leaks += [h.removeprefix("hmac:") for h in leaks if h.startswith("hmac:")]
    for text in renderings:
        assert SENSITIVE in text
        for leak in leaks:
            assert leak not in text
    assert json.dumps(plan.to_json()).count(SENSITIVE) == 3  # before+after, after


def test_secret_change_detected_by_keyed_hash() -> None:
    before = secret("company", "TOKEN", SECRET_VALUE)
    same = secret("company", "TOKEN", SECRET_VALUE)
    assert plan_of(state(same), state(before)).is_empty
    missing = secret("company", "TOKEN", None)
    (change,) = plan_of(state(missing), state(before)).changes
    assert change.action == "update" and change.sensitive


# --- drift and prune -------------------------------------------------------------------------


def test_drift_is_detected_and_restored() -> None:
    applied = base_state()
    managed = managed_of(applied)
    actual = dict(applied)
    hello = flow("company", "hello")
    actual[hello.key] = flow("company", "hello", "tasks: [edited by hand]\n")
    query = res("company", "file", "query.sql", "")
    del actual[query.key]  # deleted by hand
    plan = plan_of(applied, actual, managed=managed)
    by_key = {c.key: c for c in plan.changes}
    assert set(by_key) == {hello.key, query.key}
    assert by_key[hello.key].action == "update" and by_key[hello.key].drift
    assert by_key[hello.key].after_hash == applied[hello.key].hash
    assert by_key[query.key].action == "create" and by_key[query.key].drift
    assert set(plan.drift) == {hello.key, query.key}
    assert plan.summary()["drift"] == 2


def test_drift_on_a_resource_git_removed_is_a_drifted_delete() -> None:
    applied = base_state()
    hello = flow("company", "hello")
    actual = {**applied, hello.key: flow("company", "hello", "tasks: [edited]\n")}
    desired = {k: r for k, r in applied.items() if k != hello.key}
    (change,) = plan_of(desired, actual, managed=managed_of(applied)).changes
    assert change.action == "delete" and change.drift


def test_hand_edit_that_matches_git_is_not_drift() -> None:
    applied = base_state()
    hello = flow("company", "hello", "tasks: [v2]\n")
    desired = {**applied, hello.key: hello}
    actual = {**applied, hello.key: hello}  # someone applied v2 by hand
    plan = plan_of(desired, actual, managed=managed_of(applied))
    assert plan.is_empty and plan.drift == ()


def test_without_managed_there_is_no_drift_and_everything_is_managed() -> None:
    applied = base_state()
    hello = flow("company", "hello")
    actual = {**applied, hello.key: flow("company", "hello", "tasks: [edited]\n")}
    stray = flow("other", "stray")
    actual[stray.key] = stray
    plan = plan_of(applied, actual)
    assert plan.drift == () and plan.unmanaged == ()
    assert not any(c.drift for c in plan.changes)
    assert {(c.key, c.action) for c in plan.changes} == {
        (hello.key, "update"),
        (stray.key, "delete"),
    }


def test_unmanaged_resources_are_never_deleted() -> None:
    applied = base_state()
    stray = flow("company", "made-in-ui")
    actual = {**applied, stray.key: stray}
    plan = plan_of({}, actual, managed=managed_of(applied))
    assert stray.key not in {c.key for c in plan.changes}
    assert plan.unmanaged == (stray.key,)
    assert {c.key for c in plan.changes} == set(applied)


def test_unmanaged_resource_in_desired_is_adopted() -> None:
    mine = flow("company", "adopt")
    actual = state(flow("company", "adopt", "tasks: [ui]\n"))
    (change,) = plan_of(state(mine), actual, managed={}).changes
    assert change.action == "update" and not change.drift
    assert plan_of(state(mine), state(mine), managed={}).is_empty


def test_no_prune_keeps_removed_resources() -> None:
    actual = base_state()
    plan = plan_of({}, actual, managed=managed_of(actual), prune=False)
    assert plan.is_empty and plan.unmanaged == ()


# --- ordering --------------------------------------------------------------------------------


def test_order_configs_and_files_before_flows_and_deletions_last() -> None:
    old_flow = flow("a", "old")
    old_file = res("a", "file", "old.txt", "x\n")
    old_config = res("a", "config", "config", "{}\n")
    actual = state(old_flow, old_file, old_config)
    desired = {k: r for k, r in base_state().items() if k.kind != "secret"}
    plan = plan_of(desired, actual)
    kinds = [(c.action, c.key.kind) for c in plan.changes]
    upserts = [k for a, k in kinds if a != "delete"]
    assert upserts == sorted(upserts, key=["config", "kv", "secret", "file", "flow"].index)
    assert kinds[-3:] == [("delete", "flow"), ("delete", "file"), ("delete", "config")]
    first_delete = next(i for i, (a, _) in enumerate(kinds) if a == "delete")
    assert all(a == "delete" for a, _ in kinds[first_delete:])


def test_callees_before_callers_even_through_unchanged_flows() -> None:
    top, mid, leaf, other = (flow("a", n) for n in ("a-top", "b-mid", "c-leaf", "d-other"))
    calls = {top.key: {mid.key}, mid.key: {leaf.key}, other.key: {top.key}}
    actual = state(mid)  # mid is unchanged; top still has to wait for leaf
    desired = state(top, mid, leaf, other)
    plan = plan_of(desired, actual, calls=calls)
    assert [c.key for c in plan.changes] == [leaf.key, top.key, other.key]
    # deletions: callers before callees
    gone = plan_of({}, desired, calls=calls)
    assert [c.key for c in gone.changes] == [other.key, top.key, mid.key, leaf.key]


def test_call_cycles_do_not_hang() -> None:
    a, b = flow("x", "a"), flow("x", "b")
    plan = plan_of(state(a, b), {}, calls={a.key: {b.key}, b.key: {a.key}})
    assert sorted(c.key for c in plan.changes) == sorted([a.key, b.key])


def test_order_is_deterministic_without_calls() -> None:
    desired = state(*(flow(f"ns{i % 3}", f"f{i}") for i in range(20)))
    keys = [c.key for c in plan_of(desired, {}).changes]
    assert keys == sorted(keys, key=lambda k: (k.tenant, k.namespace, k.name))


# --- guard -----------------------------------------------------------------------------------


def _deleting(n_delete: int, n_keep: int, n_create: int = 0) -> tuple[Plan, int]:
    actual = state(*(flow("a", f"f{i}") for i in range(n_delete + n_keep)))
    desired = state(*(flow("a", f"f{i}") for i in range(n_delete, n_delete + n_keep)))
    desired.update(state(*(flow("b", f"n{i}") for i in range(n_create))))
    return plan_of(desired, actual, managed=managed_of(actual)), len(actual)


@pytest.mark.parametrize(
    ("n_delete", "n_keep", "limit", "refused"),
    [
        (0, 10, 0.0, False),
        (2, 8, 20.0, False),  # exactly the limit is allowed
        (3, 7, 20.0, True),
        (3, 7, None, False),
        (9, 1, 95.0, False),
        (1, 0, None, True),  # everything, creating nothing
        (10, 0, 100.0, True),
    ],
)
def test_guard_prune_thresholds(
    n_delete: int, n_keep: int, limit: float | None, refused: bool
) -> None:
    plan, managed = _deleting(n_delete, n_keep)
    if refused:
        with pytest.raises(PlanRefused) as info:
            guard_prune(plan, managed, limit, allow_mass_delete=False)
        assert f"{n_delete}" in info.value.message
        assert info.value.hint is not None and "--allow-mass-delete" in info.value.hint
    else:
        guard_prune(plan, managed, limit, allow_mass_delete=False)
    guard_prune(plan, managed, limit, allow_mass_delete=True)  # the override always passes


def test_guard_prune_message_gives_the_numbers() -> None:
    plan, managed = _deleting(6, 4)
    with pytest.raises(PlanRefused, match=r"deletes 6 of 10 managed resources \(60\.0%\).*50%"):
        guard_prune(plan, managed, 50, allow_mass_delete=False)
    plan, managed = _deleting(5, 0)
    with pytest.raises(PlanRefused, match="deletes all 5 managed resource"):
        guard_prune(plan, managed, None, allow_mass_delete=False)


def test_guard_prune_allows_replacing_everything() -> None:
    plan, managed = _deleting(3, 0, n_create=3)
    guard_prune(plan, managed, None, allow_mass_delete=False)
    with pytest.raises(PlanRefused):
        guard_prune(plan, managed, 50, allow_mass_delete=False)


# --- JSON and fingerprint --------------------------------------------------------------------


def _rich_plan() -> Plan:
    applied = base_state()
    actual = dict(applied)
    hello = flow("company", "hello")
    actual[hello.key] = flow("company", "hello", "tasks: [hand]\n")
    stray = flow("company", "ui-made")
    actual[stray.key] = stray
    desired = {k: r for k, r in applied.items() if k.namespace != "company.team"}
    logo = res("company", "file", "logo.png", b"\x89PNG\x00\x09")
    rotated = secret("company", "TOKEN", NEW_SECRET_VALUE)
    desired |= {logo.key: logo, rotated.key: rotated}
    new = flow("ops", "new", tenant="beta")
    desired[new.key] = new
    return plan_of(desired, actual, managed=managed_of(applied))


def test_json_round_trip_and_stability() -> None:
    plan = _rich_plan()
    assert {"create", "update", "delete"} <= {c.action for c in plan.changes}
    assert plan.drift and plan.unmanaged
    text = render.plan_json(plan)
    again = Plan.from_json(json.loads(text))
    assert again == plan
    assert render.plan_json(again) == text
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_json_validates_against_the_schema() -> None:
    for plan in (_rich_plan(), plan_of({}, {}), plan_of({}, base_state())):
        validate(json.loads(render.plan_json(plan)))


def test_schema_rejects_a_secret_hash() -> None:
    doc = _rich_plan().to_json()
    change = next(c for c in doc["changes"] if c["kind"] == "secret")
    change["after_hash"] = "hmac:" + "0" * 64
    assert list(Draft202012Validator(SCHEMA).iter_errors(doc))
    with pytest.raises(PlanRefused, match="sensitive"):
        Plan.from_json(doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("changes"),
        lambda d: d.update(format_version=99),
        lambda d: d["changes"][0].update(action="replace"),
        lambda d: d["changes"][0].update(kind="table"),
        lambda d: d["changes"][0].update(binary="yes"),
        lambda d: d["summary"].update(unchanged=-1),
        lambda d: d.update(drift="all"),
    ],
)
def test_from_json_refuses_malformed_plans(mutate: object) -> None:
    doc = _rich_plan().to_json()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PlanRefused, match="not a valid Headwater plan"):
        Plan.from_json(doc)
    assert list(Draft202012Validator(SCHEMA).iter_errors(doc))


def test_from_json_refuses_non_objects() -> None:
    with pytest.raises(PlanRefused):
        Plan.from_json([])


def test_fingerprint_changes_when_actual_changes() -> None:
    actual = base_state()
    plan = plan_of({}, actual)
    assert plan.fingerprint == fingerprint(actual) == fingerprint(dict(reversed(actual.items())))
    edited = flow("company", "hello", "tasks: [x]\n")
    assert fingerprint({**actual, edited.key: edited}) != plan.fingerprint
    smaller = dict(actual)
    smaller.popitem()
    assert fingerprint(smaller) != plan.fingerprint
    renamed = {
        ResourceKey(k.tenant, k.namespace, k.kind, k.name + "x"): r for k, r in actual.items()
    }
    assert fingerprint(renamed) != plan.fingerprint
    assert fingerprint({}).startswith("sha256:")


def test_compare_refs_is_the_pull_request_view() -> None:
    base = base_state()
    hello = flow("company", "hello", "tasks: [v2]\n")
    head = {**base, hello.key: hello}
    plan = compare_refs(base, head, instance="prod", base_rev="a" * 40, head_rev="b" * 40)
    assert plan.base == "a" * 40 and plan.revision == "b" * 40 and plan.instance == "prod"
    assert [(c.key, c.action) for c in plan.changes] == [(hello.key, "update")]
    assert plan.drift == () and plan.unmanaged == ()


def test_namespaces_groups_in_sorted_order() -> None:
    plan = _rich_plan()
    groups = plan.namespaces()
    assert list(groups) == sorted(groups)
    assert sum(len(v) for v in groups.values()) == len(plan.changes)
    for (tenant, namespace), changes in groups.items():
        assert all((c.key.tenant, c.key.namespace) == (tenant, namespace) for c in changes)


def test_change_is_frozen() -> None:
    change = _rich_plan().changes[0]
    with pytest.raises(AttributeError):
        change.action = "delete"  # type: ignore[misc]
    assert isinstance(change, Change)


def test_compute_scales_linearly() -> None:
    # 100k resources, one change: must stay well within a second or two.
    import time

    actual = {
        ResourceKey("t", f"ns{i % 1000}", "flow", f"f{i}.yaml"): Resource(
            ResourceKey("t", f"ns{i % 1000}", "flow", f"f{i}.yaml"), f"sha256:{i:064x}"
        )
        for i in range(100_000)
    }
    desired = dict(actual)
    key = next(iter(desired))
    desired[key] = Resource(key, "sha256:" + "f" * 64)
    start = time.perf_counter()
    plan = plan_of(desired, actual, managed={k: r.hash for k, r in actual.items()})
    elapsed = time.perf_counter() - start
    assert len(plan.changes) == 1 and plan.changes[0].drift is False
    assert elapsed < 5.0


# --- a saved plan, as apply reads it -------------------------------------------------------------


def saved_of(text: str) -> Saved:
    return read_saved(io.BytesIO(text.encode()))


def test_a_saved_plan_is_read_as_its_header_and_the_sets_of_its_changes() -> None:
    desired = {**base_state(), **state(flow("ops", "backup", tenant="globex"))}
    actual = state(*(r for k, r in base_state().items() if k.kind != "file"), flow("company", "gone"))
    plan = plan_of(desired, actual, managed=managed_of(actual))
    assert {c.action for c in plan.changes} == {"create", "delete"} and len({c.key.tenant for c in plan.changes}) == 2
    saved = saved_of(render.plan_json(plan))
    assert saved.header == Plan.from_json(json.loads(render.plan_json(plan)) | {"changes": []})
    sets: ChangeSets = {}
    add_change_sets(sets, plan.changes)
    assert saved.changes == sets and set(sets) == {"acme", "globex"}
    assert sets["acme"][0] == sum(c.key.tenant == "acme" for c in plan.changes)
    # the order of the changes does not matter; what each makes does
    reordered = json.loads(render.plan_json(plan))
    reordered["changes"].reverse()
    assert saved_of(json.dumps(reordered)).changes == sets
    reordered["changes"][0]["after_hash"] = "sha256:" + "0" * 64
    assert saved_of(json.dumps(reordered)).changes != sets
    split: ChangeSets = {}
    for change in plan.changes:  # counted a change at a time, as tenant by tenant
        add_change_sets(split, [change])
    assert split == sets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (5, "a change is not a JSON object"),
        ({"action": "create"}, "missing field 'kind'"),
        ({"action": "burn"}, "unknown action 'burn'"),
    ],
)
def test_a_saved_plan_with_a_wrong_change_is_refused_as_from_json_refuses_it(change: object, message: str) -> None:
    body = json.loads(render.plan_json(plan_of(base_state(), {})))
    body["changes"].insert(1, change)
    with pytest.raises(PlanRefused, match=f"not a valid Headwater plan: {message}"):
        saved_of(json.dumps(body))
    body["format_version"] = 99  # the header's problem is said first
    with pytest.raises(PlanRefused, match="unsupported format_version 99"):
        saved_of(json.dumps(body))


def test_a_saved_plan_with_changes_twice_counts_the_last_as_json_does() -> None:
    plan = plan_of(base_state(), {})
    text = render.plan_json(plan)
    sets: ChangeSets = {}
    add_change_sets(sets, plan.changes)
    twice = text.replace('"changes": [', '"changes": [], "changes": [', 1)
    assert saved_of(twice).changes == sets
    first_only = text.replace('"changes": [', '"changes": [5], "changes": [', 1)
    assert saved_of(first_only).changes == sets  # (json.loads keeps the last too)


@pytest.mark.parametrize("text", ["[]", "5", '"plan"'])
def test_a_saved_plan_that_is_not_an_object(text: str) -> None:
    with pytest.raises(PlanRefused, match="not a plan file"):
        saved_of(text)


@pytest.mark.parametrize("cut", ["trailing", "truncated", "deep"])
def test_a_saved_plan_that_is_not_json_is_refused(cut: str) -> None:
    text = render.plan_json(plan_of(base_state(), {}))
    if cut == "deep":  # nested past any plan, and unfinished: read in little memory
        text = '{"drift": ' + "[" * 200_000
    text = text + " {}" if cut == "trailing" else text[: len(text) // 2] if cut == "truncated" else text
    with pytest.raises(ijson.JSONError):
        saved_of(text)
