from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from headwater import snapshot
from headwater.cache import _BOUNDS, ResultCache
from headwater.gitrepo import GitRepo
from tests.gitutil import commit, git

FLOW = "tenants/acme/company/team/flows/ingest.yaml"


def report(repo_dir: Path, cache: ResultCache | None, rev: str = "HEAD") -> list[tuple[object, ...]]:
    with GitRepo(repo_dir) as repo:
        snap = snapshot.load(repo, rev, cache=cache)
        return [(d.path, d.line, d.code, d.message) for d in snap.report(sorted(snap.instances))]


def test_cache_round_trip_and_torn_entries(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.db") as cache:
        cache.put_many({"a": {"x": 1}, "b": [1, 2]})
        assert cache.get_many(["a", "b", "c"]) == {"a": {"x": 1}, "b": [1, 2]}
    db = sqlite3.connect(tmp_path / "c.db")
    db.execute("UPDATE entries SET payload = substr(payload, 1, 5) WHERE key = 'a'")
    db.commit()
    db.close()
    with ResultCache(tmp_path / "c.db") as cache:
        assert cache.get_many(["a", "b"]) == {"b": [1, 2]}
        assert cache.dropped == 1
        assert cache.get_many(["a"]) == {}  # the torn entry is gone, to be rebuilt


def test_which_keys_have_an_entry(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.db") as cache:
        cache.put_many({f"k{i}": i for i in range(1200)})  # more than one query's worth
        assert cache.has_many([f"k{i}" for i in range(0, 1500, 3)]) == {f"k{i}" for i in range(0, 1200, 3)}
        assert cache.has_many([]) == set()
    assert ResultCache(None).has_many(["k1"]) == set()


def test_the_flows_a_folder_will_validate_are_those_the_cache_lacks(sample: Path, tmp_path: Path) -> None:
    """``snapshot.to_validate``: what a pipeline is given ahead of a folder's turn."""
    with GitRepo(sample) as repo, ResultCache(tmp_path / "c.db") as cache:
        pieces = snapshot.split(repo, "HEAD")
        tree, items = snapshot.to_validate(pieces, "acme", cache)
        whole = snapshot.load(repo, "HEAD")
        flows = {(i.entry.oid, i.entry.path, i.flow_id, i.namespace) for i in whole.flows.values() if i.tenant == "acme"}
        assert set(items) == flows and len(items) == len(flows) > 1
        assert tree.tenants.keys() == {"acme"}
        snapshot.piece(repo, pieces, "dev", "acme", cache=cache, tree=tree)  # its results now cached
        assert snapshot.to_validate(pieces, "acme", cache)[1] == []


def test_blob_hashes_round_trip_and_torn_rows(tmp_path: Path) -> None:
    a, b = "a" * 40, "b" * 40
    with ResultCache(tmp_path / "c.db") as cache:
        cache.put_blob_hashes({a: ("sha256:" + "1" * 64, False), b: ("sha256:" + "2" * 64, True)})
        assert cache.blob_hashes([a, b, "c" * 40]) == {
            a: ("sha256:" + "1" * 64, False),
            b: ("sha256:" + "2" * 64, True),
        }
    db = sqlite3.connect(tmp_path / "c.db")
    db.execute("UPDATE blob_hashes SET digest = 'sha256:' || substr(digest, 9) || '0' WHERE oid = ?", (a,))
    db.execute("UPDATE blob_hashes SET binary = 0 WHERE oid = ?", (b,))
    db.commit()
    db.close()
    with ResultCache(tmp_path / "c.db") as cache:
        assert cache.blob_hashes([a, b]) == {}  # a changed digest or flag is never trusted
        assert cache.dropped == 2
    with ResultCache(tmp_path / "nowhere" / "x" / "c.db") as cache:
        cache.close()
        cache.put_blob_hashes({a: ("sha256:" + "1" * 64, False)})  # switched off: a no-op
        assert cache.blob_hashes([a]) == {}


def test_the_rows_written_longest_ago_go_beyond_max_rows(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.db", max_rows=10) as cache:
        for i in range(10):
            cache.put_many({f"k{i}": i})
        assert len(cache.get_many(f"k{i}" for i in range(10))) == 10  # up to the limit: all kept
        cache.put_many({"k0": 0})  # written again: now the newest
        for i in range(10, 25):
            cache.put_many({f"k{i}": i})
        kept = cache.get_many(f"k{i}" for i in range(25))
        assert 9 <= len(kept) <= 10 and "k24" in kept
        assert "k0" not in kept and "k1" not in kept  # the oldest writes went first
        cache.put_many({f"b{i}": i for i in range(30)})  # one write larger than the limit
        assert 1 <= len(cache.get_many(f"b{i}" for i in range(30))) <= 10
        assert "b29" in cache.get_many(["b29"])
        for i in range(15):
            cache.put_blob_hashes({f"{i:040x}": ("sha256:" + "1" * 64, False)})
        hashes = cache.blob_hashes(f"{i:040x}" for i in range(15))
        assert 9 <= len(hashes) <= 10 and f"{14:040x}" in hashes and f"{0:040x}" not in hashes


@pytest.mark.parametrize("table", ["entries", "blob_hashes"])
def test_eviction_looks_up_the_rowid_bounds_without_a_scan(tmp_path: Path, table: str) -> None:
    """It runs at every write: two index lookups, never a scan of the table."""
    with ResultCache(tmp_path / "c.db") as cache:
        cache.put_many({"a": 1})
    db = sqlite3.connect(tmp_path / "c.db")
    plan = db.execute("EXPLAIN QUERY PLAN " + _BOUNDS.format(table=table)).fetchall()
    db.close()
    steps = [row[-1] for row in plan]
    assert not any(step.startswith("SCAN") and table in step for step in steps), steps
    assert sum(step.startswith("SEARCH") for step in steps) == 2, steps


def test_a_replaced_row_counts_as_written_last(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "c.db", max_rows=4) as cache:
        for i in range(4):
            cache.put_many({f"k{i}": i})
        for i in range(4, 8):
            cache.put_many({"k0": "again"})  # kept alive by being written again
            cache.put_many({f"k{i}": i})
        assert cache.get_many(["k0"]) == {"k0": "again"}
        assert cache.get_many(["k1", "k2", "k3"]) == {}


def test_garbage_cache_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not a database" * 100)
    with ResultCache(path) as cache:
        cache.put_many({"k": 1})
        assert cache.get_many(["k"]) == {"k": 1}


def test_a_cache_another_process_holds_locked_is_switched_off_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE mine (x)")
    holder.execute("INSERT INTO mine VALUES (1)")
    holder.execute("BEGIN EXCLUSIVE")  # a rollback-journal file, locked: WAL cannot be set
    monkeypatch.setattr(ResultCache, "TIMEOUT", 0.05)
    with ResultCache(path) as cache:  # switched off
        cache.put_many({"k": 1})
        assert cache.get_many(["k"]) == {}
    holder.execute("COMMIT")
    assert holder.execute("SELECT x FROM mine").fetchall() == [(1,)]  # the file is whole
    holder.close()


def test_unwritable_cache_is_switched_off(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with ResultCache(blocker / "sub" / "c.db") as cache:  # a parent is a file: cannot open
        cache.put_many({"k": 1})
        assert cache.get_many(["k"]) == {}


def test_results_identical_with_and_without_cache(sample: Path, tmp_path: Path) -> None:
    commit(sample, "errors", {
        FLOW: "id: ingest\nnamespace: company.team\ntasks: []\n",
        "tenants/acme/company/team/namespace.yaml": "variabls: {}\n",
    })
    plain = report(sample, None)
    assert plain
    with ResultCache(tmp_path / "c.db") as cache:
        cold = report(sample, cache)
        assert cache.misses > 0 and cache.hits == 0
    with ResultCache(tmp_path / "c.db") as cache:
        warm = report(sample, cache)
        assert cache.hits > 0 and cache.misses == 0
    assert plain == cold == warm


def test_reference_checks_of_a_checked_commit_come_from_the_cache(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subflow = (
        "id: ingest\nnamespace: company.team\ntasks:\n"
        "  - id: s\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: company\n    flowId: nosuch\n"
        "  - id: r\n    type: io.kestra.plugin.core.log.Log\n    message: \"{{ read('scripts/missing.py') }}\"\n"
    )
    commit(sample, "references", {FLOW: subflow})
    plain = report(sample, None)
    assert {"ref.subflow-missing", "ref.read-missing"} <= {code for (_p, _l, code, _m) in plain}
    ran: list[object] = []
    real = snapshot.check_namespace

    def counting(*args: object) -> object:
        ran.append(args[0])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot, "check_namespace", counting)
    with ResultCache(tmp_path / "c.db") as cache:
        assert report(sample, cache) == plain
        first = len(ran)
        assert first > 0
        assert report(sample, cache) == plain  # the same commit again: checks not run
        assert len(ran) == first
        commit(sample, "another", {"README.md": "a commit of its own\n"})
        assert report(sample, cache) == plain  # another commit is checked afresh
        assert len(ran) == 2 * first
        # a commit reached by an incremental update is remembered too, checks as it found them
        with GitRepo(sample) as repo:
            old = snapshot.load(repo, "HEAD", cache=cache)
            old.report(sorted(old.instances))
            edited = commit(sample, "edit", {"tenants/acme/company/team/flows/ingest.yaml": subflow + "# x\n"})
            update = snapshot.update(old, repo, edited, cache=cache)
            assert update is not None
            incremental = [(d.path, d.line, d.code, d.message) for d in update.snapshot.report(sorted(old.instances))]
        before = len(ran)
        assert report(sample, cache, edited) == incremental == plain
        assert len(ran) == before


@pytest.mark.parametrize("change", ["edit", "revert", "rename"])
def test_never_stale(change: str, sample: Path, tmp_path: Path) -> None:
    original = (sample / FLOW).read_text()
    with ResultCache(tmp_path / "c.db") as cache:
        assert report(sample, cache) == []
        if change == "edit":
            commit(sample, "edit", {FLOW: original.replace("tasks:", "tasks: []\nold_tasks:")})
            codes = {c for (_p, _l, c, _m) in report(sample, cache)}
            assert "schema.minItems" in codes or "schema.additionalProperties" in codes
        elif change == "revert":
            commit(sample, "edit", {FLOW: "id: ingest\nnamespace: company.team\ntasks: []\n"})
            assert report(sample, cache)
            commit(sample, "revert", {FLOW: original})
            assert report(sample, cache) == []
        else:
            git(sample, "mv", FLOW, FLOW.replace("ingest.yaml", "renamed.yaml"))
            commit(sample, "rename")
            codes = {c for (_p, _l, c, _m) in report(sample, cache)}
            assert "flow.id-mismatch" in codes  # same blob, new path: not served from the old entry
