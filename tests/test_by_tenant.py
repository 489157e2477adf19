"""A full apply made one tenant at a time (``Engine.apply(by_tenant=True)``, the daemon's): it
must leave the target, the state store and the summary a restart starts from exactly as a
whole apply does, refuse what a whole apply refuses, and write nothing when it fails."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from headwater import flowbatch, render, snapshot
from headwater import plan as planning
from headwater.engine import Engine, PlanResult
from headwater.errors import HeadwaterError, PlanRefused, TargetError, ValidationFailed
from headwater.gitrepo import GitRepo
from headwater.settings import Settings
from headwater.state import Lock, LockLost, StateStore
from headwater.targets.local import LocalTarget, Stage
from tests.gitutil import commit, git, sample_repo
from tests.test_partial import ERRORS, WARNINGS

INSTANCES = ("dev", "prod")
E = TypeVar("E", bound=BaseException)
FLOW = "id: {id}\nnamespace: {ns}\ntasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: {msg}\n"
# Commits that change every kind of thing a full apply meets: an edit, a new flow, a new
# namespace, a new tenant; then a tenant gone from the commit with all it held.
CHANGES: list[dict[str, str | None]] = [
    {
        "tenants/acme/company/flows/new.yaml": FLOW.format(id="new", ns="company", msg="new"),
        "tenants/acme/company/team/flows/edit.yaml": FLOW.format(id="edit", ns="company.team", msg="edited"),
        "tenants/initech/billing/flows/run.yaml": FLOW.format(id="run", ns="billing", msg="run"),
    },
    {"tenants/acme/company/flows/new.yaml": None, "tenants/globex/ops/monitoring/flows/x.yaml": None},
]


@pytest.fixture(autouse=True, params=["alone", "pipelined"])
def every_commit_by_tenant(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The CLI's plan and apply go tenant by tenant above a size; here, always: in this
    process alone, or with a worker validating each tenant's flows while the tenant before
    it is planned (``flowbatch.Pipeline``; above a size too)."""
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 0)
    if request.param == "pipelined":
        monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
        monkeypatch.setattr(flowbatch, "CHUNK", 1)
        monkeypatch.setenv("HEADWATER_WORKERS", "1")


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = sample_repo(tmp_path / "repo")
    commit(path, "warnings", WARNINGS)
    return path


@pytest.fixture
def engines(repo_dir: Path, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """An engine that applies whole, and one that applies tenant by tenant."""
    whole = Engine(GitRepo(repo_dir), Settings(state_dir=str(tmp_path / "whole")))
    by_tenant = Engine(GitRepo(repo_dir), Settings(state_dir=str(tmp_path / "by-tenant")))
    with whole, by_tenant:
        yield whole, by_tenant


def full_apply(engine: Engine, instance: str, *, by_tenant: bool, **kw: Any) -> PlanResult:
    engine.forget(instance)  # a full apply, as after the daemon's drift check
    branch = engine.repo.resolve("HEAD")
    return engine.apply(instance, branch, trigger="test", by_tenant=by_tenant, **kw)


def both(engines: tuple[Engine, Engine], instance: str, **kw: Any) -> tuple[PlanResult, PlanResult]:
    whole, by_tenant = engines
    return full_apply(whole, instance, by_tenant=False, **kw), full_apply(by_tenant, instance, by_tenant=True, **kw)


def refused_alike(engines: tuple[Engine, Engine], error: type[E], instance: str = "dev", **kw: Any) -> list[E]:
    """The errors a whole and a by-tenant full apply raise, both of type ``error``."""
    raised: list[E] = []
    for engine, by_tenant in zip(engines, (False, True), strict=True):
        with pytest.raises(error) as info:
            full_apply(engine, instance, by_tenant=by_tenant, **kw)
        raised.append(info.value)
    return raised


def hashes(state: Any) -> dict[Any, str]:
    return {k: r.hash for k, r in state.items()}


def assert_same_outcome(engines: tuple[Engine, Engine], instance: str) -> None:
    whole, by_tenant = engines
    a, b = whole.target(instance), by_tenant.target(instance)
    assert a.current_revision() == b.current_revision()
    assert a.manifest() == b.manifest()
    assert hashes(a.inventory()) == hashes(b.inventory()) == a.manifest()
    assert a.tenants() == b.tenants()
    assert whole.store.inventory(instance) == by_tenant.store.inventory(instance) == a.manifest()
    sa, sb = whole.store.get(instance), by_tenant.store.get(instance)
    assert (sa.applied_revision, sa.attempted_revision, sa.outcome, sa.errors, sa.pending_revision) == (
        sb.applied_revision, sb.attempted_revision, sb.outcome, sb.errors, sb.pending_revision,
    )
    history = [[(h.revision, h.summary) for h in e.store.history(instance)] for e in engines]
    assert history[0] == history[1]
    # what a restart starts from: the commit's summary, recorded alike
    if sa.applied_revision is not None:
        pa = snapshot.load_partial(whole.repo, sa.applied_revision, instance, cache=whole.cache)
        pb = snapshot.load_partial(by_tenant.repo, sa.applied_revision, instance, cache=by_tenant.cache)
        assert pa is not None and pb is not None and pa.partial == pb.partial
        # and the commit's reference checks, which a tenant loaded later takes from the cache
        key = snapshot._checks_key(pa, pa.view(instance))
        checks = [e.cache.get_many([key]).get(key) for e in engines]
        assert checks[0] == checks[1]
        assert (checks[1] is not None) == bool(a.manifest())  # recorded when there is a namespace


def assert_plans_alike(engine: Engine, instance: str) -> planning.Plan:
    """A plan made tenant by tenant (``Engine.plan``'s ``each``) has the whole plan's changes,
    namespace by namespace in its order, and its counts; its text, written part by part, is
    the whole plan's. The whole plan is returned."""
    rev = engine.repo.resolve("HEAD")
    whole = engine.plan(instance, rev).plan
    parts: list[planning.Plan] = []
    counted = engine.plan(instance, rev, each=parts.append).plan
    assert counted.summary() == whole.summary() and counted.is_empty == whole.is_empty
    assert counted.counted is not None and not counted.changes
    by_namespace = [(ns, changes) for p in parts for ns, changes in p.namespaces().items()]
    assert by_namespace == list(whole.namespaces().items())
    assert [k for p in parts for k in p.drift] == list(whole.drift)
    assert [k for p in parts for k in p.unmanaged] == list(whole.unmanaged)
    assert {(p.instance, p.revision, p.base) for p in parts} <= {(whole.instance, whole.revision, whole.base)}
    for color in (False, True):
        for lines in (0, 3, render.MAX_TEXT_DIFF_LINES):  # the diff budget runs across tenants
            out: list[str] = []
            text = render.PlanText(parts[0] if parts else counted, color, out.append, max_diff_lines=lines)
            for part in parts:
                text.add(part)
            text.finish(counted.summary())
            assert "".join(out) == render.plan_text(whole, color, max_diff_lines=lines)
    # and its JSON, the changes in the whole plan's order across tenants, with its fingerprint
    assert counted.fingerprint == whole.fingerprint
    with render.PlanJson() as document:
        for part in parts:
            document.add(part)
        out = []
        document.finish(counted, out.append)
    assert "".join(out) == render.plan_json(whole)
    # and its Markdown, wherever the size limit cuts it (in the first tenant, or in the last)
    full = len(render.plan_markdown(whole, max_chars=10**9))
    for limit in sorted({500, full // 3, full // 2, 2 * full // 3, full - 100, render.MAX_COMMENT_CHARS}):
        comment = render.PlanMarkdown(max_chars=limit)
        for part in parts:
            comment.add(part)
        assert comment.finish(counted) == render.plan_markdown(whole, max_chars=limit)
    return whole


@pytest.mark.parametrize("instance", INSTANCES)
def test_applied_tenant_by_tenant_an_instance_ends_as_applied_whole(
    engines: tuple[Engine, Engine], repo_dir: Path, instance: str
) -> None:
    assert assert_plans_alike(engines[1], instance).summary()["create"] > 0
    whole, by_tenant = both(engines, instance)
    assert by_tenant.plan.summary() == whole.plan.summary() and whole.plan.summary()["create"] > 0
    assert by_tenant.desired.missing_secrets == whole.desired.missing_secrets
    assert not by_tenant.incremental and by_tenant.plan.revision == whole.plan.revision
    assert_same_outcome(engines, instance)
    again = both(engines, instance)  # nothing to do: no new revision, no history row
    assert again[1].plan.is_empty and again[1].plan.summary() == again[0].plan.summary()
    assert_same_outcome(engines, instance)
    for n, files in enumerate(CHANGES):
        commit(repo_dir, f"change {n}", files)
        assert not assert_plans_alike(engines[1], instance).is_empty
        results = both(engines, instance)
        assert results[1].plan.summary() == results[0].plan.summary()
        assert_same_outcome(engines, instance)
    assert engines[1].target(instance).tenants() == {"acme", "globex", "initech"}


def test_a_tenant_gone_from_the_commit_goes_from_the_instance(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    both(engines, "dev")
    commit(repo_dir, "globex goes", {"tenants/globex": None})
    assert assert_plans_alike(engines[1], "dev").summary()["delete"] > 0
    whole, by_tenant = both(engines, "dev")
    assert by_tenant.plan.summary() == whole.plan.summary() and whole.plan.summary()["delete"] > 0
    assert_same_outcome(engines, "dev")
    assert engines[1].target("dev").tenants() == {"acme"} and engines[1].store.tenants("dev") == {"acme"}


def test_a_plan_lists_a_tenant_gone_in_its_place_among_the_others(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    """A tenant gone from the commit sorts before one that stays: its deletions come first,
    in the text as in the whole plan (with a diff budget that runs out in them)."""
    both(engines, "dev")
    commit(repo_dir, "acme goes, globex changes", {
        "tenants/acme": None,
        "tenants/globex/ops/flows/new.yaml": FLOW.format(id="new", ns="ops", msg="new"),
    })
    whole = assert_plans_alike(engines[1], "dev")
    order = [tenant for tenant, _ns in whole.namespaces()]
    assert order[0] == "acme" and order[-1] == "globex"


def test_drift_is_counted_and_restored_alike(engines: tuple[Engine, Engine]) -> None:
    both(engines, "dev")
    for engine in engines:
        path = next((engine.settings.instance_path("dev") / "current/globex/ops/flows").iterdir())
        os.chmod(path, 0o644)
        path.write_text("changed by hand\n")
        assert engine.drift("dev")
    assert assert_plans_alike(engines[1], "dev").drift
    whole, by_tenant = both(engines, "dev")
    assert by_tenant.plan.summary() == whole.plan.summary()
    assert whole.plan.summary()["drift"] == whole.plan.summary()["update"] == 1
    assert engines[1].drift("dev") == []
    assert_same_outcome(engines, "dev")


def test_an_invalid_commit_is_refused_alike_and_nothing_is_written(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    both(engines, "dev")
    commit(repo_dir, "errors", ERRORS)
    refused = [e.diagnostics for e in refused_alike(engines, ValidationFailed)]
    assert refused[0] == refused[1]
    assert {d.code for d in refused[1]} >= {"layout.stray-file", "layout.bad-tenant", "yaml.syntax"}
    assert_same_outcome(engines, "dev")
    assert engines[1].store.get("dev").outcome == "failed"


def test_a_mass_delete_is_refused_alike(engines: tuple[Engine, Engine], repo_dir: Path) -> None:
    both(engines, "prod")  # prod allows deleting 20 % of what it holds
    commit(repo_dir, "acme goes", {"tenants/acme": None})
    messages = [e.message for e in refused_alike(engines, PlanRefused, "prod")]
    assert messages[0] == messages[1] and "deletes" in messages[1]
    assert_same_outcome(engines, "prod")
    # what the refused apply staged is dropped: the next one records only what it writes
    commit(repo_dir, "acme is back, one flow more", {
        "tenants/acme/company/flows/new.yaml": FLOW.format(id="new", ns="company", msg="new"),
    })
    git(repo_dir, "checkout", "-q", "HEAD~2", "--", "tenants/acme")
    commit(repo_dir, "restore acme")
    results = both(engines, "prod")
    assert results[1].plan.summary() == results[0].plan.summary()
    assert_same_outcome(engines, "prod")


def test_a_write_that_fails_part_way_leaves_target_and_store_as_they_were(
    engines: tuple[Engine, Engine], repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines[1]
    both(engines, "dev")
    before = engine.target("dev").current_revision()
    recorded = engine.store.inventory("dev")
    commit(repo_dir, "two tenants change", CHANGES[0])
    real_build, added = Stage.build, []

    def build_then_fail(stage: Stage, *args: Any) -> None:  # the disk fills up at the second tenant
        added.append(stage)
        if len(added) == 2:
            raise OSError(28, "No space left on device")
        real_build(stage, *args)

    monkeypatch.setattr(Stage, "build", build_then_fail)
    with pytest.raises(TargetError, match="No space left"):
        full_apply(engine, "dev", by_tenant=True)
    monkeypatch.undo()
    assert len(added) == 2
    target = engine.target("dev")
    assert target.current_revision() == before and engine.store.inventory("dev") == recorded
    state = engine.store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == (before, "failed", None)
    assert hashes(target.inventory()) == recorded
    assert engine.store.history("dev")[0].revision == before
    both(engines, "dev")
    state = engine.store.get("dev")
    assert (state.applied_revision, state.outcome) == (engine.repo.resolve("HEAD"), "applied")
    assert engine.store.inventory("dev") == engines[0].store.inventory("dev") != recorded


def test_an_instance_headwater_yaml_does_not_define_is_refused(engines: tuple[Engine, Engine]) -> None:
    with pytest.raises(HeadwaterError, match=r"not defined in headwater\.yaml"):
        full_apply(engines[1], "staging", by_tenant=True)
    assert engines[1].store.get("staging").applied_revision is None


def test_the_whole_instance_is_never_read_at_once(
    engines: tuple[Engine, Engine], repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target and the recorded inventory are read one tenant at a time, and nothing
    loads the commit whole."""
    engine = engines[1]
    full_apply(engine, "dev", by_tenant=True)
    commit(repo_dir, "a change", CHANGES[0])
    reads: list[str | None] = []
    real_inventory = LocalTarget.inventory

    def inventory(target: LocalTarget, tenant: str | None = None) -> Any:
        reads.append(tenant)
        return real_inventory(target, tenant)

    def whole_load(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the commit was loaded whole")

    real_manifest = LocalTarget.manifest

    def manifest(target: LocalTarget, revision: str | None = None, *, tenant: str | None = None) -> Any:
        assert tenant is not None, "the whole manifest was read"
        return real_manifest(target, revision, tenant=tenant)

    monkeypatch.setattr(LocalTarget, "inventory", inventory)
    monkeypatch.setattr(snapshot, "load", whole_load)
    monkeypatch.setattr(LocalTarget, "manifest", manifest)
    real_store_inventory = StateStore.inventory

    def store_inventory(store: StateStore, instance: str, *args: Any, tenant: str | None = None) -> Any:
        assert args or tenant is not None, "the whole recorded inventory was read"
        return real_store_inventory(store, instance, *args, tenant=tenant)

    monkeypatch.setattr(StateStore, "inventory", store_inventory)
    parts: list[planning.Plan] = []
    engine.plan("dev", engine.repo.resolve("HEAD"), each=parts.append)
    assert len(parts) == 3 and all(len({(c.key.tenant) for c in p.changes}) <= 1 for p in parts)
    full_apply(engine, "dev", by_tenant=None, each=parts.append)  # the CLI's: by the size
    assert len(parts) == 6
    engine.drift("dev")
    assert reads and None not in reads
    assert sorted(set(reads)) == ["acme", "globex", "initech"]


def test_priming_without_a_summary_goes_tenant_by_tenant_and_records_it(
    engines: tuple[Engine, Engine], repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade (no summary for this code) a restarted engine reads each tenant folder
    in turn, never the whole commit, and records the summary the whole commit gives."""
    whole, engine = engines  # the commit has warnings: the summary holds them
    full_apply(whole, "dev", by_tenant=False)
    full_apply(engine, "dev", by_tenant=True)
    revision = engine.store.get("dev").applied_revision
    assert revision is not None
    want = snapshot.load_partial(whole.repo, revision, "dev", cache=whole.cache)
    monkeypatch.setattr(snapshot, "model_fingerprint", lambda: "the next version")
    assert snapshot.load_partial(engine.repo, revision, "dev", cache=engine.cache) is None

    def whole_load(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the commit was loaded whole")

    monkeypatch.setattr(snapshot, "load", whole_load)
    with Engine(GitRepo(repo_dir), Settings(state_dir=str(tmp_path / "by-tenant"))) as restarted:
        assert restarted.prime("dev")
        got = snapshot.load_partial(restarted.repo, revision, "dev", cache=restarted.cache)
        assert want is not None and got is not None and got.partial == want.partial
        commit(repo_dir, "one flow more", {
            "tenants/acme/company/flows/new.yaml": FLOW.format(id="new", ns="company", msg="new"),
        })
        result = restarted.apply("dev", restarted.repo.resolve("HEAD"), trigger="test", by_tenant=True)
        assert result.plan.summary()["create"] == 1


def test_the_lock_is_extended_tenant_by_tenant_and_a_lost_lock_writes_nothing(
    engines: tuple[Engine, Engine], repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long a large instance takes, its lock does not expire under the apply; and if
    another process took it over all the same, the apply stops with the instance unchanged."""
    engine = engines[1]
    refreshed: list[str] = []
    real_refresh = Lock.refresh

    def counted(lock: Lock, ttl: float) -> None:
        refreshed.append(lock.instance)
        real_refresh(lock, ttl)

    monkeypatch.setattr(Lock, "refresh", counted)
    full_apply(engine, "dev", by_tenant=True)
    assert len(refreshed) >= 2 * len(engine.target("dev").tenants())  # each pass, each tenant
    before = engine.target("dev").current_revision()
    commit(repo_dir, "two tenants change", CHANGES[0])
    real_add = Stage.add

    def taken_over(stage: Stage, *args: Any) -> None:
        real_add(stage, *args)
        engine.store._db.execute("UPDATE locks SET token = 'another process' WHERE instance = 'dev'")

    monkeypatch.setattr(Stage, "add", taken_over)
    with pytest.raises(LockLost, match="lock on instance dev was lost"):
        full_apply(engine, "dev", by_tenant=True)
    assert engine.target("dev").current_revision() == before
    # nothing recorded over what the process holding the lock now does: the pending apply is
    # left for it to reconcile (the target never saw this one: it is dropped)
    state = engine.store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == (before, "pending", engine.repo.resolve("HEAD"))
    assert engine.reconcile("dev") == "dropped"


def test_a_tenant_put_back_by_hand_is_written_into_the_revision(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    """Folders copied into the instance by hand can read back as exactly what a commit wants;
    the revision does not list them, so the tenant is written again, as a whole apply does."""
    both(engines, "dev")
    commit(repo_dir, "globex goes", {"tenants/globex": None})
    both(engines, "dev")
    for engine in engines:
        current = (engine.settings.instance_path("dev") / "current").resolve()
        current.chmod(0o755)
        subprocess.run(["cp", "-rL", str(current.parent.parent / "previous" / "globex"), str(current)], check=True)
        assert engine.target("dev").tenants() == {"acme", "globex"}
    git(repo_dir, "checkout", "-q", "HEAD~1", "--", "tenants/globex")
    commit(repo_dir, "globex is back")
    whole, by_tenant = both(engines, "dev")
    assert by_tenant.plan.summary() == whole.plan.summary() and whole.plan.is_empty
    assert_same_outcome(engines, "dev")
    assert {k.tenant for k in engines[1].target("dev").manifest()} == {"acme", "globex"}
    assert engines[1].drift("dev") == []


def test_a_file_added_by_hand_goes_as_with_a_whole_apply(engines: tuple[Engine, Engine], repo_dir: Path) -> None:
    both(engines, "dev")
    for engine in engines:
        flows = (engine.settings.instance_path("dev") / "current/globex/ops/flows").resolve()
        flows.chmod(0o755)
        (flows / "handmade.yaml").write_text("id: handmade\nnamespace: ops\ntasks: []\n")
    commit(repo_dir, "acme only", {"tenants/acme/company/flows/new.yaml": FLOW.format(id="new", ns="company", msg="x")})
    assert assert_plans_alike(engines[1], "dev").unmanaged
    whole, by_tenant = both(engines, "dev")
    assert [str(k) for k in whole.plan.unmanaged] == ["globex/ops/flow/handmade"]
    assert by_tenant.plan.summary() == whole.plan.summary()
    assert_same_outcome(engines, "dev")
    for engine in engines:
        assert not any(k.name == "handmade" for k in engine.target("dev").inventory("globex"))


@pytest.mark.parametrize("by_tenant", [False, True])
def test_a_failed_write_of_the_revision_already_there_is_recorded_as_failed(
    engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch, by_tenant: bool
) -> None:
    """Restoring drift re-applies the revision the target is at: when that write fails, the
    target still shows that revision, yet nothing of the apply took effect."""
    engine = engines[1]
    full_apply(engine, "dev", by_tenant=by_tenant)
    applied = engine.store.history("dev")
    path = next((engine.settings.instance_path("dev") / "current/globex/ops/flows").iterdir())
    os.chmod(path, 0o644)
    path.write_text("changed by hand\n")

    def fail(*args: Any) -> None:
        raise RuntimeError("git cat-file died")

    monkeypatch.setattr(Stage, "add", fail)
    monkeypatch.setattr(LocalTarget, "apply", fail)
    with pytest.raises(RuntimeError, match="git cat-file died"):
        full_apply(engine, "dev", by_tenant=by_tenant)
    state = engine.store.get("dev")
    assert (state.outcome, state.pending_revision) == ("failed", None)
    assert state.errors[0]["code"] == "apply.failed" and "git cat-file died" in state.errors[0]["message"]
    assert engine.store.history("dev") == applied  # no apply recorded
    assert len(engine.drift("dev")) == 1


def test_a_commit_without_tenants_empties_the_instance_alike_when_allowed(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    both(engines, "dev")
    commit(repo_dir, "no tenants at all", {"tenants": None})
    assert all("deletes all" in e.message for e in refused_alike(engines, PlanRefused))
    assert_same_outcome(engines, "dev")
    whole, by_tenant = both(engines, "dev", allow_mass_delete=True)
    assert by_tenant.plan.summary() == whole.plan.summary() and whole.plan.summary()["delete"] > 0
    assert_same_outcome(engines, "dev")
    assert engines[1].target("dev").tenants() == set() and engines[1].store.inventory("dev") == {}


def test_a_broken_headwater_yaml_is_refused_alike(engines: tuple[Engine, Engine], repo_dir: Path) -> None:
    both(engines, "dev")
    commit(repo_dir, "broken", {"headwater.yaml": "version: 1\ninstances: [\n"})
    messages = [e.message for e in refused_alike(engines, HeadwaterError)]
    assert messages[0] == messages[1]
    assert_same_outcome(engines, "dev")


def hand_edit(engine: Engine, kind: str) -> None:
    """Change the applied instance by hand in a way that adds no resource."""
    current = engine.target("dev").current_path()
    assert current is not None
    if kind == "index":
        index = (current / "acme").resolve()
        os.symlink("/etc", index / "elsewhere")
        (index / "empty").mkdir()
    else:
        flows = (current / "acme" / "company" / "flows").resolve()
        flows.chmod(0o755)
        (flows / "NOTES.txt").write_text("by hand\n")


@pytest.mark.parametrize("kind", ["index", "space"])
def test_hand_made_entries_that_are_no_resource_go_as_with_a_whole_apply(
    engines: tuple[Engine, Engine], repo_dir: Path, kind: str
) -> None:
    """A link or an empty folder among a tenant's namespaces, a stray file in a namespace:
    none reads back as a resource, yet a full sync must not carry them into the new revision
    (which a rollback to it would then refuse as modified on disk)."""
    both(engines, "dev")
    for engine in engines:
        hand_edit(engine, kind)
    commit(repo_dir, "globex only", {"tenants/globex/ops/flows/x.yaml": FLOW.format(id="x", ns="ops", msg="x")})
    both(engines, "dev")
    assert_same_outcome(engines, "dev")
    for engine in engines:
        target = engine.target("dev")
        assert target._modified_namespace(target._current_dir() or "") is None
        current = target.current_path()
        assert current is not None and not os.path.lexists(current / "acme" / "elsewhere")
        assert not (current / "acme" / "company" / "flows" / "NOTES.txt").exists()


def test_a_tenant_the_revision_lists_goes_even_when_its_link_and_rows_were_lost(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    both(engines, "dev")
    for engine in engines:
        current = engine.target("dev").current_path()
        assert current is not None
        os.unlink(current / "globex")  # the tenant's link removed by hand
        engine.store._db.execute("DELETE FROM inventory WHERE tenant = 'globex'")  # its rows lost
    commit(repo_dir, "globex goes", {"tenants/globex": None})
    both(engines, "dev", allow_mass_delete=True)
    assert_same_outcome(engines, "dev")
    assert engines[1].target("dev").tenants() == {"acme"}


@pytest.mark.parametrize("by_tenant", [False, True])
def test_a_crash_while_reapplying_the_revision_there_is_not_recorded_as_applied(
    engines: tuple[Engine, Engine], by_tenant: bool
) -> None:
    """The process dies after marking the re-apply (the drift restore) as pending, before
    anything is published: the next start records it as interrupted, not as applied."""
    engine = engines[1]
    full_apply(engine, "dev", by_tenant=by_tenant)
    revision, history = engine.store.get("dev").applied_revision, engine.store.history("dev")
    assert revision is not None
    current = engine.target("dev").current_path()
    assert current is not None
    engine.store.begin_apply("dev", revision, summary={"update": 1, "drift": 1}, base=current.name)
    assert engine.reconcile("dev") == "dropped"
    state = engine.store.get("dev")
    assert (state.applied_revision, state.outcome, state.pending_revision) == (revision, "failed", None)
    assert engine.store.history("dev") == history


def test_a_lock_lost_while_a_whole_apply_awaited_its_confirmation_writes_nothing(
    engines: tuple[Engine, Engine], repo_dir: Path
) -> None:
    """A user left `headwater apply` at its prompt past the lock's expiry, and a daemon took the
    instance over: the plan confirmed is stale, so nothing of it is written."""
    engine = engines[0]
    full_apply(engine, "dev", by_tenant=False)
    before = engine.target("dev").current_revision()
    commit(repo_dir, "a change", CHANGES[0])

    def slow_confirm(plan: Any) -> bool:
        engine.store._db.execute("UPDATE locks SET token = 'a daemon' WHERE instance = 'dev'")
        return True

    with pytest.raises(LockLost, match="lock on instance dev was lost") as info:
        full_apply(engine, "dev", by_tenant=False, confirm=slow_confirm)
    assert info.value.hint is not None and "plan and apply again" in info.value.hint
    assert engine.target("dev").current_revision() == before
    state = engine.store.get("dev")
    assert (state.applied_revision, state.pending_revision) == (before, None)


def test_below_the_size_a_plan_and_an_apply_go_whole_and_each_sees_the_whole_plan(
    engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines[1]
    listed = len(snapshot.split(engine.repo, "HEAD").entries)
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", listed + 1)
    monkeypatch.setattr(Engine, "_count_by_tenant", lambda *a, **k: pytest.fail("went tenant by tenant"))
    rev = engine.repo.resolve("HEAD")
    parts: list[planning.Plan] = []
    planned = engine.plan("dev", rev, each=parts.append).plan
    assert parts == [planned] and planned.counted is None and planned.summary()["create"] > 0
    applied = full_apply(engine, "dev", by_tenant=None, each=parts.append).plan
    assert parts == [planned, applied] and applied.changes == planned.changes
    monkeypatch.undo()  # _count_by_tenant back
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", listed)  # at the size: by tenant
    parts.clear()
    assert engine.plan("dev", rev, each=parts.append).plan.counted is not None
    assert len(parts) == len(engine.target("dev").tenants()) > 1


# -- the pull-request view ------------------------------------------------------------------------

CALLER = """\
id: a-caller
namespace: billing
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: billing
    flowId: z-callee
"""


def compared_alike(engine: Engine, monkeypatch: pytest.MonkeyPatch, instance: str, base: str, head: str) -> planning.Plan:
    """``compare`` tenant by tenant makes the whole compare's plan, change for change in its
    order, with its fingerprint and counts; its Markdown and JSON are the same."""
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 10**9)
    whole = engine.compare(instance, base, head)
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 0)
    loaded: list[str | None] = []
    real = snapshot.piece

    def piece(repo: Any, pieces: snapshot.Pieces, inst: str, folder: str | None, **kw: Any) -> snapshot.Snapshot:
        loaded.append(folder)
        return real(repo, pieces, inst, folder, **kw)

    monkeypatch.setattr(snapshot, "piece", piece)
    parts = engine.compare(instance, base, head)
    monkeypatch.setattr(snapshot, "piece", real)
    assert parts.plan == whole.plan
    assert parts.plan.fingerprint == whole.plan.fingerprint and parts.plan.summary() == whole.plan.summary()
    assert render.plan_markdown(parts.plan) == render.plan_markdown(whole.plan)
    assert render.plan_json(parts.plan) == render.plan_json(whole.plan)
    assert parts.desired.missing_secrets == whole.desired.missing_secrets
    assert None in loaded and loaded.count(None) == 1  # the root files, of the head only
    folders = [f for f in loaded if f is not None]
    assert len(folders) <= 2 * len(set(folders))  # each folder of each commit once at most
    return whole.plan


def test_a_pull_request_view_made_tenant_by_tenant_is_the_whole_one(
    engines: tuple[Engine, Engine], repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines[1]
    first = engine.repo.resolve("HEAD")
    edits = [commit(repo_dir, f"change {n}", files) for n, files in enumerate(CHANGES)]
    calling = commit(repo_dir, "a caller sorted before its callee", {
        "tenants/initech/billing/flows/a-caller.yaml": CALLER,
        "tenants/initech/billing/flows/z-callee.yaml": FLOW.format(id="z-callee", ns="billing", msg="called"),
    })
    readme = commit(repo_dir, "a readme", {"README.md": "# not a tenant\n"})
    config = (repo_dir / "headwater.yaml").read_text()
    rooted = commit(repo_dir, "a root variable", {
        "headwater.yaml": config.replace("retention_days: 30", "retention_days: 31"),
    })
    for instance in INSTANCES:
        for base, head in [(first, edits[0]), (edits[0], edits[1]), (first, edits[1]), (edits[1], first),
                           (edits[1], calling), (calling, edits[1]), (calling, readme), (readme, rooted),
                           (first, rooted), (first, first)]:
            plan = compared_alike(engine, monkeypatch, instance, base, head)
            # (prod sets retention_days itself: the root's new value changes nothing there)
            unchanged = base == head or head == readme or (instance, base, head) == ("prod", readme, rooted)
            assert plan.is_empty == unchanged
            if (base, head) == (edits[1], calling):  # the callee first, though it sorts after its caller
                assert [c.key.name for c in plan.changes] == ["z-callee", "a-caller"]
    # root files changed: every folder loaded from both commits; the same ones: only those changed
    loaded: list[str | None] = []
    real = snapshot.piece
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 0)
    monkeypatch.setattr(snapshot, "piece", lambda repo, pieces, inst, folder, **kw: (
        loaded.append(folder), real(repo, pieces, inst, folder, **kw))[1])
    assert engine.compare("dev", readme, rooted).plan.summary()["update"] > 0
    tenants = sorted(f for f in loaded if f is not None)
    assert tenants == sorted([*set(tenants), *set(tenants)])
    loaded.clear()
    engine.compare("dev", edits[0], edits[1])
    changed = {p.split("/")[1] for p in git(repo_dir, "diff", "--name-only", edits[0], edits[1]).split()}
    folders = set(git(repo_dir, "ls-tree", "--name-only", f"{edits[1]}:tenants").split())
    assert changed and changed < folders
    assert sorted(f for f in loaded if f is not None) == sorted([*folders, *changed])


def test_a_pull_request_view_made_tenant_by_tenant_refuses_an_invalid_head_alike(
    engines: tuple[Engine, Engine], repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines[1]
    base = engine.repo.resolve("HEAD")
    head = commit(repo_dir, "errors", ERRORS)
    raised = []
    for size in (10**9, 0):
        monkeypatch.setattr(snapshot, "BY_TENANT_FROM", size)
        with pytest.raises(ValidationFailed) as info:
            engine.compare("dev", base, head)
        raised.append(info.value)
    assert [d.to_json() for d in raised[0].diagnostics] == [d.to_json() for d in raised[1].diagnostics]
    assert raised[0].diagnostics and raised[0].revision == raised[1].revision == head
    # an invalid base is taken as it is, as the whole compare takes it
    assert compared_alike(engine, monkeypatch, "dev", head, base).summary()["delete"] > 0


def test_every_chunk_a_pass_submits_is_collected(engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's flows submitted ahead are each collected in the folder's turn, cold or
    warm: none is left to the end of the pass (found in the result cache instead, say)."""
    left: list[int] = []
    real = flowbatch.Pipeline.close

    def close(self: flowbatch.Pipeline) -> None:
        left.append(len(self._queued))
        real(self)

    monkeypatch.setattr(flowbatch.Pipeline, "close", close)
    _whole, by_tenant = engines
    for _ in range(2):  # cold, then with every result cached
        full_apply(by_tenant, "dev", by_tenant=True)
        by_tenant.plan("dev", by_tenant.repo.resolve("HEAD"), each=lambda part: None)
    assert len(left) == 4 and left == [0, 0, 0, 0]
