"""The SQLite state store: round trips, crash bracketing, schema, and locks across processes."""

from __future__ import annotations

import gc
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater import state as state_module
from headwater.errors import StateError
from headwater.resources import ResourceKey
from headwater.state import SCHEMA_VERSION, InstanceState, StateStore

A = ResourceKey("acme", "company", "flow", "hello")
B = ResourceKey("acme", "company", "file", "scripts/a.py")
C = ResourceKey("acme", "company", "secret", "DB_PASSWORD")
D = ResourceKey("acme", "company.team", "kv", "region")
ERROR = {"path": "tenants/acme/x.yaml", "line": 3, "code": "E1", "message": "bad"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state" / "headwater.db", clock=clock) as s:
        yield s


def apply(store: StateStore, revision: str, inventory: dict[ResourceKey, str]) -> int:
    store.begin_apply("dev", revision, trigger="cli:me@host")
    return store.finish_apply("dev", revision, inventory, {"create": 1}, "cli:me@host")


def test_a_new_store(store: StateStore, tmp_path: Path) -> None:
    assert store.instances() == []
    assert store.get("dev") == InstanceState("dev")
    assert store.inventory("dev") == {}
    assert store.history("dev") == []
    assert store.lock_holder("dev") is None
    db = sqlite3.connect(tmp_path / "state" / "headwater.db")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_apply_round_trip(store: StateStore, clock: Clock) -> None:
    store.begin_apply("dev", "r1", trigger="daemon:webhook", summary={"create": 2})
    pending = store.get("dev")
    assert pending.pending_revision == "r1" and pending.outcome == "pending"
    assert pending.applied_revision is None
    clock.now += 5
    entry_id = store.finish_apply(
        "dev", "r1", {A: "sha256:a", C: "hmac:c"}, {"create": 2}, "daemon:webhook"
    )
    state = store.get("dev")
    assert state.applied_revision == state.attempted_revision == "r1"
    assert state.outcome == "applied" and state.errors == () and state.pending_revision is None
    assert state.applied_at is not None and state.applied_at.timestamp() == clock.now
    assert store.inventory("dev") == {A: "sha256:a", C: "hmac:c"}
    [entry] = store.history("dev")
    assert (entry.id, entry.revision, entry.action) == (entry_id, "r1", "apply")
    assert (entry.summary, entry.trigger) == ({"create": 2}, "daemon:webhook")
    assert store.instances() == ["dev"]


def test_inventory_is_replaced(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b"})
    apply(store, "r2", {A: "sha256:a2", C: "hmac:c"})
    assert store.inventory("dev") == {A: "sha256:a2", C: "hmac:c"}
    apply(store, "r3", {})
    assert store.inventory("dev") == {}


def test_failure_keeps_the_applied_revision(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.record_failure("dev", "r2", [ERROR])
    state = store.get("dev")
    assert state.applied_revision == "r1"
    assert (state.attempted_revision, state.outcome) == ("r2", "failed")
    assert state.errors == (ERROR,)
    assert store.inventory("dev") == {A: "sha256:a"}
    store.begin_apply("dev", "r3")
    store.record_failure("dev", "r3", [ERROR])
    assert store.get("dev").pending_revision is None


def test_history_is_newest_first_and_limited(store: StateStore) -> None:
    for i in range(5):
        apply(store, f"r{i}", {A: f"sha256:{i}"})
    store.begin_apply("dev", "r1", action="rollback", trigger="cli:me@host")
    store.finish_apply("dev", "r1", {A: "sha256:1"}, {}, "cli:me@host", action="rollback")
    entries = store.history("dev", limit=3)
    assert [(e.revision, e.action) for e in entries] == [
        ("r1", "rollback"),
        ("r4", "apply"),
        ("r3", "apply"),
    ]
    assert store.history("prod") == []


def test_instances_are_separate(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.begin_apply("prod", "r9")
    assert store.instances() == ["dev", "prod"]
    assert store.inventory("prod") == {}
    assert store.get("prod").pending_revision == "r9"
    assert store.get("dev").pending_revision is None


def test_pending_apply_must_be_reconciled(store: StateStore) -> None:
    store.begin_apply("dev", "r1")
    with pytest.raises(StateError, match="did not finish") as info:
        store.begin_apply("dev", "r2")
    assert info.value.hint and "reconcile" in info.value.hint
    with pytest.raises(StateError, match="is pending"):
        store.finish_apply("dev", "r2", {}, {}, "t")


def test_reconcile_completes_an_apply_that_reached_the_target(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.begin_apply("dev", "r2", trigger="daemon:poll", summary={"update": 1})
    with pytest.raises(StateError, match="needs the target's inventory"):
        store.reconcile("dev", "r2")
    assert store.reconcile("dev", "r2", {A: "sha256:a2"}) == "completed"
    state = store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == (
        "r2",
        "applied",
        None,
    )
    assert store.inventory("dev") == {A: "sha256:a2"}
    entry = store.history("dev")[0]
    assert entry.summary == {"update": 1, "recovered": True}
    assert entry.trigger == "daemon:poll"
    assert store.reconcile("dev", "r2") == "clean"


def test_reconcile_drops_an_apply_that_did_not(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.begin_apply("dev", "r2")
    assert store.reconcile("dev", "r1") == "dropped"
    state = store.get("dev")
    assert (state.applied_revision, state.attempted_revision) == ("r1", "r2")
    assert state.outcome == "failed" and state.errors[0]["code"] == "interrupted"
    assert state.pending_revision is None
    assert store.inventory("dev") == {A: "sha256:a"}
    assert len(store.history("dev")) == 1
    assert store.reconcile("dev", "elsewhere") == "diverged"
    assert store.reconcile("new-instance", None) == "clean"


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateStore(path) as store:
        apply(store, "r1", {A: "sha256:a", B: "sha256:b"})
        store.begin_apply("dev", "r2")
    with StateStore(path) as store:
        assert store.get("dev").applied_revision == "r1"
        assert store.get("dev").pending_revision == "r2"
        assert store.inventory("dev") == {A: "sha256:a", B: "sha256:b"}


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StateError, match="schema v99"):
        StateStore(path)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="unusable") as info:
        StateStore(path)
    assert info.value.hint


def test_an_unopenable_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot open"):
        StateStore(tmp_path / "file" / "s.db")


# -- locks ------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(store: StateStore) -> None:
    with store.lock("dev", owner="daemon:poll", ttl=60) as held:
        assert held.owner == "daemon:poll"
        holder = store.lock_holder("dev")
        assert holder is not None and holder.owner == "daemon:poll"
        with (
            pytest.raises(StateError, match="locked by daemon:poll") as info,
            store.lock("dev", owner="cli:me@host"),
        ):
            pass  # pragma: no cover
        assert info.value.hint
        with store.lock("prod", owner="cli:me@host"):
            pass
    assert store.lock_holder("dev") is None
    with store.lock("dev", owner="cli:me@host"):
        pass


def test_lock_released_when_the_block_raises(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.lock("dev", owner="a"):
        raise RuntimeError("boom")
    assert store.lock_holder("dev") is None


def test_an_expired_lock_is_taken_over(store: StateStore, clock: Clock) -> None:
    with store.lock("dev", owner="first", ttl=10) as first:
        first.refresh(ttl=20)
        clock.now += 15
        with pytest.raises(StateError, match="locked by first"), store.lock("dev", owner="x"):
            pass  # pragma: no cover
        clock.now += 10
        with store.lock("dev", owner="second"):
            with pytest.raises(StateError, match="was lost"):
                first.refresh(ttl=10)
            holder = store.lock_holder("dev")
            assert holder is not None and holder.owner == "second"
        assert store.lock_holder("dev") is None


def test_a_lock_of_a_dead_process_is_taken_over(store: StateStore, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    pid = int(dead.stdout)
    db = sqlite3.connect(store.path)
    try:
        with db:
            db.execute(
                "INSERT INTO locks VALUES ('dev', 'ghost', 't', ?, ?, NULL, 0, 9e18)",
                (pid, socket.gethostname()),
            )
    finally:
        db.close()
    with store.lock("dev", owner="alive"):
        holder = store.lock_holder("dev")
        assert holder is not None and holder.owner == "alive"


HOLDER = r"""
import sys
from headwater.state import StateStore
store = StateStore(sys.argv[1])
with store.lock("dev", owner="daemon:holder", ttl=120):
    print("locked", flush=True)
    sys.stdin.readline()
store.close()
print("released", flush=True)
"""


def hold_lock(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_lock_across_processes(store: StateStore) -> None:
    proc = hold_lock(store.path)
    try:
        with (
            pytest.raises(StateError, match=r"locked by daemon:holder \(pid \d+ on "),
            store.lock("dev", owner="cli:me@host"),
        ):
            pass  # pragma: no cover
        out, _ = proc.communicate("\n", timeout=30)
        assert out == "released\n"
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()
    with store.lock("dev", owner="cli:me@host"):
        pass


def test_lock_of_a_killed_process_is_taken_over(store: StateStore) -> None:
    proc = hold_lock(store.path)
    proc.kill()
    proc.communicate()
    with store.lock("dev", owner="cli:me@host"):
        holder = store.lock_holder("dev")
        assert holder is not None and holder.owner == "cli:me@host"


WRITER = r"""
import sys
from headwater.resources import ResourceKey
from headwater.state import StateStore
store = StateStore(sys.argv[1])
name = sys.argv[2]
for i in range(40):
    store.begin_apply(name, f"r{i}")
    inventory = {ResourceKey("acme", "ns", "file", f"f{j}"): f"sha256:{i}" for j in range(20)}
    store.finish_apply(name, f"r{i}", inventory, {"i": i}, "test")
store.close()
"""


def test_concurrent_writers_wait_instead_of_failing(store: StateStore) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.path), f"i{n}"], stderr=subprocess.PIPE
        )
        for n in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for n in range(3):
        assert store.get(f"i{n}").applied_revision == "r39"
        assert len(store.history(f"i{n}", limit=100)) == 40
        assert set(store.inventory(f"i{n}").values()) == {"sha256:39"}


def test_a_delta_writes_only_the_given_rows(store: StateStore, clock: Clock) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b"})
    store.begin_apply("prod", "p1")
    store.finish_apply("prod", "p1", {A: "sha256:prod"}, {}, "t")
    store.begin_apply("dev", "r2", trigger="daemon:poll")
    clock.now += 5
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        entry_id = store.finish_apply_delta(
            "dev", "r2", {A: "sha256:a2", B: None, C: "hmac:c"}, {"update": 1}, "daemon:poll"
        )
    finally:
        store._db.set_trace_callback(None)
    assert not any("FROM inventory" in s and s.startswith("SELECT") for s in statements)
    assert store.inventory("dev") == {A: "sha256:a2", C: "hmac:c"}
    assert store.inventory("prod") == {A: "sha256:prod"}
    state = store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == ("r2", "applied", None)
    assert state.applied_at is not None and state.applied_at.timestamp() == clock.now
    [entry, _] = store.history("dev")
    assert (entry.id, entry.revision, entry.summary, entry.trigger) == (
        entry_id, "r2", {"update": 1}, "daemon:poll"
    )


def test_a_delta_deletes_rows_and_ignores_absent_ones(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b", C: "hmac:c"})
    store.begin_apply("dev", "r2")
    store.finish_apply_delta("dev", "r2", {A: None, C: None, D: None}, {}, "t")
    assert store.inventory("dev") == {B: "sha256:b"}
    store.begin_apply("dev", "r3", action="rollback")
    store.finish_apply_delta("dev", "r3", {B: None}, {}, "t", action="rollback")
    assert store.inventory("dev") == {}
    assert store.history("dev")[0].action == "rollback"


def test_a_delta_is_refused_while_another_apply_is_pending(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.begin_apply("dev", "r2")
    with pytest.raises(StateError, match="is pending") as info:
        store.finish_apply_delta("dev", "r3", {A: None, B: "sha256:b"}, {}, "t")
    assert info.value.hint and "reconcile" in info.value.hint
    assert store.inventory("dev") == {A: "sha256:a"}  # nothing of it was written
    state = store.get("dev")
    assert (state.applied_revision, state.pending_revision) == ("r1", "r2")
    assert len(store.history("dev")) == 1


def test_reading_the_inventory_leaves_the_garbage_collector_as_it_was(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b"})
    assert gc.isenabled()
    assert store.inventory("dev") == {A: "sha256:a", B: "sha256:b"}
    assert gc.isenabled()
    gc.disable()
    try:
        assert store.inventory("dev") == {A: "sha256:a", B: "sha256:b"}
        assert not gc.isenabled()
    finally:
        gc.enable()


G = ResourceKey("globex", "ops", "flow", "hello")
H = ResourceKey("globex", "ops", "kv", "region")


def test_the_inventory_by_tenant_and_its_tenants(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b", G: "sha256:g"})
    assert store.tenants("dev") == {"acme", "globex"} and store.tenants("prod") == set()
    assert store.inventory("dev", tenant="globex") == {G: "sha256:g"}
    assert store.inventory("dev", tenant="acme") == {A: "sha256:a", B: "sha256:b"}
    assert store.inventory("dev", tenant="initech") == {}


def test_a_staged_apply_replaces_the_staged_tenants_only(store: StateStore, clock: Clock) -> None:
    apply(store, "r1", {A: "sha256:a", B: "sha256:b", G: "sha256:g"})
    store.begin_apply("prod", "p1")
    store.finish_apply("prod", "p1", {A: "sha256:prod"}, {}, "t")
    store.unstage("dev")
    store.stage("dev", "acme", {A: "sha256:old", C: "hmac:c"})
    store.stage("dev", "acme", {A: "sha256:a2", C: "hmac:c"})  # staged again: replaces
    store.stage("dev", "initech", {})  # a tenant with nothing left
    store.stage("prod", "acme", {})  # another instance's staging is its own
    store.begin_apply("dev", "r2", trigger="daemon:poll")
    clock.now += 5
    entry_id = store.finish_apply_staged("dev", "r2", {"update": 1}, "daemon:poll")
    assert store.inventory("dev") == {A: "sha256:a2", C: "hmac:c", G: "sha256:g"}
    assert store.inventory("prod") == {A: "sha256:prod"}
    state = store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == ("r2", "applied", None)
    [entry, _] = store.history("dev")
    assert (entry.id, entry.revision, entry.summary) == (entry_id, "r2", {"update": 1})
    # the staging was emptied: the next staged apply starts from nothing
    store.begin_apply("dev", "r3")
    store.finish_apply_staged("dev", "r3", {}, "t")
    assert store.inventory("dev") == {A: "sha256:a2", C: "hmac:c", G: "sha256:g"}
    store.begin_apply("prod", "p2")
    store.finish_apply_staged("prod", "p2", {}, "t")
    assert store.inventory("prod") == {}  # its staged tenant, emptied


def test_only_a_tenants_own_rows_are_staged_for_it(store: StateStore) -> None:
    with pytest.raises(ValueError, match="another tenant's"):
        store.stage("dev", "globex", {G: "sha256:g", A: "sha256:a"})


def test_an_unstaged_apply_records_nothing_of_what_was_staged(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a", G: "sha256:g"})
    store.stage("dev", "acme", {})
    store.unstage("dev")
    store.begin_apply("dev", "r2")
    store.finish_apply_staged("dev", "r2", {}, "t")
    assert store.inventory("dev") == {A: "sha256:a", G: "sha256:g"}


def test_a_staged_apply_is_refused_while_another_apply_is_pending(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})
    store.stage("dev", "acme", {})
    store.begin_apply("dev", "r2")
    with pytest.raises(StateError, match="is pending"):
        store.finish_apply_staged("dev", "r3", {}, "t")
    assert store.inventory("dev") == {A: "sha256:a"}


def test_staged_rows_do_not_outlive_the_connection(tmp_path: Path) -> None:
    """A crash (here: closing) drops what was staged along with the apply it was for."""
    path = tmp_path / "state.db"
    with StateStore(path) as first:
        apply(first, "r1", {A: "sha256:a"})
        first.stage("dev", "acme", {})
    with StateStore(path) as second:
        second.begin_apply("dev", "r2")
        second.finish_apply_staged("dev", "r2", {}, "t")
        assert second.inventory("dev") == {A: "sha256:a"}


def test_reconcile_reads_the_targets_manifest_only_to_complete_an_apply(store: StateStore) -> None:
    apply(store, "r1", {A: "sha256:a"})

    def unread() -> dict[ResourceKey, str]:
        raise AssertionError("the manifest was read")

    assert store.reconcile("dev", "r1", unread) == "clean"
    assert store.reconcile("dev", "other", unread) == "diverged"
    store.begin_apply("dev", "r2")
    assert store.reconcile("dev", "r2", lambda: {A: "sha256:a2"}) == "completed"
    assert store.inventory("dev") == {A: "sha256:a2"}
    store.begin_apply("dev", "r3")
    assert store.reconcile("dev", "r2", unread) == "dropped"


def test_a_pending_reapply_of_the_revision_there_completes_only_if_current_moved(store: StateStore) -> None:
    """Restoring drift re-applies the revision the target is at: after a crash, whether it
    took effect shows in the folder ``current`` points at, not in the revision."""
    apply(store, "r1", {A: "sha256:a"})
    store.begin_apply("dev", "r1", summary={"update": 1}, base="r1")
    assert store.reconcile("dev", "r1", {A: "sha256:a2"}, current="r1") == "dropped"
    assert store.inventory("dev") == {A: "sha256:a"} and len(store.history("dev")) == 1
    assert store.get("dev").errors[0]["code"] == "interrupted"
    store.begin_apply("dev", "r1", summary={"update": 1}, base="r1")
    assert store.reconcile("dev", "r1", lambda: {A: "sha256:a2"}, current="r1.1") == "completed"
    assert store.inventory("dev") == {A: "sha256:a2"} and len(store.history("dev")) == 2


def test_a_store_of_schema_1_is_migrated_with_its_pending_apply(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for statement in state_module._MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO instances (name, applied_revision) VALUES ('dev', 'r1')")
    db.execute(
        "INSERT INTO pending (instance, revision, started_at, action, trigger, summary)"
        " VALUES ('dev', 'r2', 0, 'apply', 't', '{}')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with StateStore(path) as store:
        assert store.get("dev").pending_revision == "r2"
        assert store.reconcile("dev", "r2", {A: "sha256:a"}, current="r2") == "completed"  # no base known
        assert store.inventory("dev") == {A: "sha256:a"}
