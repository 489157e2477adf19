"""The incremental path: a snapshot derived from the previous one by `git diff-tree` equals a
full load of the new commit, and recomputes only what the change reaches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater import inherit, snapshot
from headwater.cache import ResultCache
from headwater.engine import Engine, PlanResult
from headwater.errors import Diagnostic, ValidationFailed
from headwater.gitrepo import GitRepo
from headwater.resources import ResourceKey
from headwater.settings import Settings
from headwater.targets.local import LocalTarget
from tests.gitutil import SAMPLE, commit, git, sample_repo

COMPANY = "tenants/acme/company"
INSTANCES = ("dev", "prod")


def loaded(repo: GitRepo, rev: str, cache: ResultCache | None = None) -> snapshot.Snapshot:
    snap = snapshot.load(repo, rev, cache=cache)
    for name in INSTANCES:
        snap.view(name)
    return snap


def assert_same(got: snapshot.Snapshot, want: snapshot.Snapshot) -> None:
    assert got.revision == want.revision
    assert got.diagnostics == want.diagnostics
    assert got.configs == want.configs
    assert got.flows == want.flows
    assert got.layout.tenants == want.layout.tenants
    for name in INSTANCES:
        assert got.view(name).namespaces == want.view(name).namespaces
        assert got.view(name).diagnostics == want.view(name).diagnostics
    assert got.report(INSTANCES) == want.report(INSTANCES)


EDITS: dict[str, dict[str, str]] = {
    "flow": {f"{COMPANY}/flows/hello.yaml": "id: hello\nnamespace: company\ntasks:\n  - id: hi\n"
             "    type: io.kestra.plugin.core.log.Log\n    message: hello again\n"},
    "invalid flow": {f"{COMPANY}/flows/hello.yaml": "id: hello\nnamespace: company\ntasks: []\n"
                     "bogus: 1\n"},
    "broken yaml": {f"{COMPANY}/flows/hello.yaml": "id: hello\n  tasks: [\n"},
    "namespace file": {f"{COMPANY}/files/sql/schema.sql": "create table t (id int);\n"},
    "root namespace.yaml": {f"{COMPANY}/namespace.yaml": "variables:\n  region: eu\n"
                            "secrets:\n  DB_PASSWORD: {}\nlocked: [variables.region]\n"},
    "child namespace.yaml overriding a lock": {
        f"{COMPANY}/team/namespace.yaml": "variables:\n  db:\n    host: mine\n"},
    "tenant.yaml": {"tenants/acme/tenant.yaml": (SAMPLE / "tenants/acme/tenant.yaml").read_text()
                    .replace("company: ACME", "company: ACME Corp")},
    "tenant.yaml dropping a secret": {"tenants/acme/tenant.yaml": "variables:\n  tenant_wide: yes\n"},
    "outside the model": {"README.md": "# changed\n"},
}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = sample_repo(tmp_path / "repo")
    commit(path, "readme", {"README.md": "# sample\n"})
    return path


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_update_equals_a_full_load(repo_dir: Path, edit: str) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    head = commit(repo_dir, edit, EDITS[edit])
    update = snapshot.update(old, repo, head)
    assert update is not None, edit
    assert_same(update.snapshot, loaded(repo, head))
    assert old.revision != head and old.view("dev").namespaces  # the old snapshot is untouched
    assert_same(old, loaded(repo, "HEAD~1"))


def test_a_commit_changing_nothing_in_the_model_updates_nothing(repo_dir: Path) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    head = commit(repo_dir, "empty")
    update = snapshot.update(old, repo, head)
    assert update is not None
    assert update.changed == {} and update.touched == {}
    assert_same(update.snapshot, loaded(repo, head))


@pytest.mark.parametrize(
    "files",
    [
        {f"{COMPANY}/flows/new.yaml": "id: new\nnamespace: company\ntasks:\n  - id: a\n"
         "    type: io.kestra.plugin.core.log.Log\n    message: x\n"},
        {f"{COMPANY}/flows/hello.yaml": None},
        {f"{COMPANY}/files/new.txt": "x\n"},
        {"headwater.yaml": None},
        {".headwaterignore": "*.md\n"},
        {"tenants/acme/company/stray/notes.txt": "x\n"},
    ],
    ids=["flow added", "flow deleted", "file added", "headwater.yaml", "ignore file", "unknown path"],
)
def test_structural_changes_need_a_full_load(repo_dir: Path, files: dict[str, str | None]) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    head = commit(repo_dir, "structure", files)
    assert snapshot.update(old, repo, head) is None


def test_a_mode_change_needs_a_full_load(repo_dir: Path) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    git(repo_dir, "update-index", "--chmod=+x", f"{COMPANY}/files/scripts/common.py")
    git(repo_dir, "commit", "-q", "-m", "exec")
    assert snapshot.update(old, repo, "HEAD") is None


def test_a_file_over_the_size_limit_needs_a_full_load(repo_dir: Path) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    old.max_file_bytes = 100
    head = commit(repo_dir, "big", {f"{COMPANY}/files/sql/schema.sql": "x" * 101})
    assert snapshot.update(old, repo, head) is None


def namespaces_below(snap: snapshot.Snapshot, tenant: str, prefix: str) -> set[tuple[str, str]]:
    return {
        (tenant, n) for n in snap.layout.tenants[tenant].namespaces
        if n == prefix or n.startswith(prefix + ".")
    }


def counting_merge(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the real merges of namespace layers (the wrapped function still does the work)."""
    calls: list[str] = []
    real = inherit.merge

    def merge(layers: Any, *args: Any, **kw: Any) -> Any:
        calls.append(layers[0].label if layers else "")
        return real(layers, *args, **kw)

    monkeypatch.setattr(inherit, "merge", merge)
    return calls


def test_a_root_config_change_recomputes_exactly_the_namespaces_below_it(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    below = namespaces_below(old, "acme", "company")
    everything = {(t.name, n) for t in old.layout.tenants.values() for n in t.namespaces}
    assert 1 < len(below) < len(everything)
    head = commit(repo_dir, "root config", EDITS["root namespace.yaml"])
    calls = counting_merge(monkeypatch)
    update = snapshot.update(old, repo, head)
    assert update is not None
    for name in INSTANCES:
        assert update.remerged[name] == below
        assert update.touched[name] == below
    with_config = [c for c in calls if c.startswith("namespace ")]
    assert len(with_config) == len(INSTANCES) * sum(
        1 for t, n in below if old.layout.tenants[t].namespaces[n].config is not None
    )
    assert len(calls) == len(with_config)  # neither the repository nor a tenant merged again


def test_a_flow_edit_recomputes_no_config_and_touches_one_namespace(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    head = commit(repo_dir, "flow", EDITS["flow"])
    calls = counting_merge(monkeypatch)
    update = snapshot.update(old, repo, head)
    assert update is not None
    assert calls == []
    for name in INSTANCES:
        assert update.remerged[name] == set()
        assert update.touched[name] == {("acme", "company")}


def test_a_file_edit_touches_the_namespaces_that_inherit_it(repo_dir: Path) -> None:
    repo = GitRepo(repo_dir)
    old = loaded(repo, "HEAD")
    head = commit(repo_dir, "file", EDITS["namespace file"])
    update = snapshot.update(old, repo, head)
    assert update is not None
    assert update.touched["dev"] == namespaces_below(old, "acme", "company")
    assert update.remerged["dev"] == set()


def test_updates_chain_and_share_the_persistent_cache(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitRepo(repo_dir)
    with ResultCache(tmp_path / "cache.db") as cache:
        snap = loaded(repo, "HEAD", cache)
        for i in range(3):
            head = commit(repo_dir, f"edit {i}", {f"{COMPANY}/flows/hello.yaml": EDITS["flow"][
                f"{COMPANY}/flows/hello.yaml"].replace("hello again", f"hello {i}")})
            update = snapshot.update(snap, repo, head, cache=cache)
            assert update is not None
            snap = update.snapshot
        assert_same(snap, loaded(repo, "HEAD"))
        # back to the first edit: served from the cache, still equal to a full load
        git(repo_dir, "revert", "--no-edit", "HEAD")
        validated: list[int] = []
        real = snapshot.validate_many

        def counting(repo: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
            validated.append(len(items))
            return real(repo, items, *args, **kwargs)

        monkeypatch.setattr(snapshot, "validate_many", counting)
        update = snapshot.update(snap, repo, "HEAD", cache=cache)
        assert validated == [0]
        assert update is not None
        assert_same(update.snapshot, loaded(repo, "HEAD", cache))


# -- the engine's incremental apply --------------------------------------------------------


class Calls:
    """Which of the target's entry points an apply used (the wrapped methods still run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        for name in ("apply", "apply_namespaces", "inventory"):
            real = getattr(LocalTarget, name)
            monkeypatch.setattr(LocalTarget, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Any) -> Any:
        def wrapper(target: LocalTarget, *args: Any, **kw: Any) -> Any:
            self.names.append(name)
            return real(target, *args, **kw)

        return wrapper

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        kept = self.take()
        try:
            yield
        finally:
            self.names = kept

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


def open_engine(repo_dir: Path, state: Path) -> Engine:
    return Engine(GitRepo(repo_dir), Settings(state_dir=str(state)))


def assert_as_a_full_apply_leaves_it(repo_dir: Path, state: Path, rev: str, calls: Calls) -> None:
    """A fresh engine (the full path: reads the whole target back) sees nothing to do, and the
    store records exactly the desired state. (What it calls is not counted.)"""
    with open_engine(repo_dir, state) as fresh, calls.paused():
        result = fresh.plan("dev", rev)
        assert result.plan.is_empty and not result.plan.drift, result.plan.summary()
        desired = fresh.desired(fresh.load(rev), "dev", content=False)
        assert fresh.store.inventory("dev") == {k: r.hash for k, r in desired.state.items()}
        assert fresh.store.get("dev").applied_revision == fresh.repo.resolve(rev)
        assert fresh.target("dev").current_revision() == fresh.repo.resolve(rev)


def apply_by(path: str, engine: Engine, repo_dir: Path, rev: str, calls: Calls) -> PlanResult:
    """Apply ``rev`` to dev, check which ``path`` the engine took (``incremental`` or ``full``)
    and that the instance ends as a full apply leaves it."""
    result = engine.apply("dev", rev, trigger="test")
    used = calls.take()
    if path == "incremental":
        assert used == ["apply_namespaces"], used
    else:
        assert "apply" in used and "apply_namespaces" not in used, used
    assert_as_a_full_apply_leaves_it(repo_dir, engine.settings.state_path, rev, calls)
    return result


SEQUENCE = ["flow", "namespace file", "root namespace.yaml", "tenant.yaml", "outside the model"]


def test_an_engine_applies_in_place_edits_incrementally(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        engine.apply("dev", "HEAD", trigger="test")
        assert calls.take()[-1] == "apply"
        for edit in SEQUENCE:
            head = commit(repo_dir, edit, EDITS[edit])
            result = apply_by("incremental", engine, repo_dir, head, calls)
            assert result.plan.revision == head and result.incremental
        summaries = [h.summary for h in engine.store.history("dev", 10)]
        assert summaries[len(SEQUENCE) - 1]["update"] == 1  # the flow edit: one flow updated
        assert summaries[0]["update"] == 0  # README only: a new revision, nothing changed


def test_structural_changes_and_other_writers_fall_back_to_a_full_apply(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        first = engine.apply("dev", "HEAD", trigger="test").plan.revision
        head = commit(repo_dir, "add", {f"{COMPANY}/flows/extra.yaml": "id: extra\nnamespace: company\n"
                                        "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n"
                                        "    message: x\n"})
        apply_by("full", engine, repo_dir, head, calls)
        # another process moves the instance: the engine's memory of it is stale
        with open_engine(repo_dir, state) as other:
            other.apply("dev", first, trigger="other")
        apply_by("full", engine, repo_dir, commit(repo_dir, "flow", EDITS["flow"]), calls)
        apply_by("incremental", engine, repo_dir, commit(repo_dir, "file", EDITS["namespace file"]), calls)


def test_an_invalid_commit_is_refused_and_the_next_one_applies_from_the_last_good(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        good = engine.apply("dev", "HEAD", trigger="test").plan.revision
        bad = commit(repo_dir, "broken", EDITS["broken yaml"])
        with pytest.raises(ValidationFailed):
            engine.apply("dev", bad, trigger="test")
        status = engine.store.get("dev")
        assert (status.applied_revision, status.attempted_revision) == (good, bad)
        assert engine.target("dev").current_revision() == good
        calls.take()
        apply_by("incremental", engine, repo_dir, commit(repo_dir, "fixed", EDITS["flow"]), calls)


def test_drift_outside_the_change_is_left_to_the_drift_check_then_restored(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        engine.apply("dev", "HEAD", trigger="test")
        current = engine.target("dev").current_path()
        assert current is not None
        hand_edited = current / "globex" / "ops" / "flows" / "backup.yaml"
        os.chmod(hand_edited, 0o644)
        hand_edited.write_text("edited by hand\n")
        head = commit(repo_dir, "flow", EDITS["flow"])
        engine.apply("dev", head, trigger="test")
        drifted = ResourceKey("globex", "ops", "flow", "backup")
        assert engine.drift("dev") == [drifted]
        engine.forget("dev")  # what the daemon does when its drift check finds some
        head = commit(repo_dir, "file", EDITS["namespace file"])
        result = engine.apply("dev", head, trigger="test")
        assert drifted in result.plan.drift
        assert engine.drift("dev") == []
        assert_as_a_full_apply_leaves_it(repo_dir, state, head, calls)


def test_a_restarted_engine_primed_from_the_store_applies_incrementally(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        engine.apply("dev", "HEAD", trigger="test")
    with open_engine(repo_dir, state) as restarted:
        assert not restarted.primed("dev")
        assert restarted.prime("dev") and restarted.primed("dev")
        # primed: the commit's root files and summary (no tenant loaded), and the inventory's
        # size; no resource
        resident = restarted._resident["dev"]
        assert (resident.inventory, resident.desired.state, resident.known) == ({}, {}, set())
        assert resident.snapshot.partial is not None and resident.snapshot.layout.tenants == {}
        assert resident.size == len(restarted.store.inventory("dev")) > 0
        calls.take()
        for edit in SEQUENCE[:4]:  # a flow, a file, the root namespace.yaml, tenant.yaml
            apply_by("incremental", restarted, repo_dir, commit(repo_dir, edit, EDITS[edit]), calls)
            resident = restarted._resident["dev"]
            recorded = restarted.store.inventory("dev")
            assert resident.size == len(recorded)
            assert resident.known and {(k.tenant, k.namespace) for k in resident.inventory} <= resident.known
            assert resident.inventory == restarted.store.inventory("dev", sorted(resident.known))


def test_a_full_apply_keeps_only_the_commits_root_files_and_summary(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    calls = Calls(monkeypatch)
    with open_engine(repo_dir, state) as engine:
        full = engine.apply("dev", "HEAD", trigger="test")
        resident = engine._resident["dev"]
        assert (resident.inventory, resident.desired.state, resident.known) == ({}, {}, set())
        assert resident.size == len(engine.store.inventory("dev")) == len(full.desired.state) > 0
        assert resident.desired.calls == {} and resident.snapshot.layout.tenants == {}
        assert resident.snapshot == snapshot.load_partial(engine.repo, "HEAD", "dev", cache=engine.cache)
        calls.take()
        for edit in SEQUENCE[:4]:
            apply_by("incremental", engine, repo_dir, commit(repo_dir, edit, EDITS[edit]), calls)
            assert engine._resident["dev"].size == len(engine.store.inventory("dev"))


def test_priming_refuses_an_instance_the_store_and_target_disagree_on(repo_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with open_engine(repo_dir, state) as engine:
        assert not engine.prime("dev")  # nothing applied yet
        first = engine.apply("dev", "HEAD", trigger="test").plan.revision
        engine.apply("dev", commit(repo_dir, "flow", EDITS["flow"]), trigger="test")
    with open_engine(repo_dir, state) as engine:
        engine.target("dev").activate(first)  # the target moved behind the store's back
        assert not engine.prime("dev")
        engine.store.begin_apply("dev", first, trigger="test")  # an apply that did not finish
        engine.target("dev").activate(engine.store.get("dev").applied_revision or "")
        assert not engine.prime("dev")


def test_each_namespace_sees_the_files_of_inherit_effective_files(repo_dir: Path) -> None:
    """Views build each file set on the parent's; it must equal the rule stated by
    ``inherit.effective_files`` over the whole ancestry, ``files.inherit: false`` included."""
    commit(repo_dir, "cut", {
        f"{COMPANY}/team/namespace.yaml": (SAMPLE / "tenants/acme/company/team/namespace.yaml").read_text()
        + "files:\n  inherit: false\n",
    })
    snap = loaded(GitRepo(repo_dir), "HEAD")
    cut = 0
    for name in INSTANCES:
        view = snap.view(name)
        for (tenant, ns), ns_view in view.namespaces.items():
            node = snap.layout.tenants[tenant]
            chain = [
                (a, node.namespaces[a].files, view.files_inherit[(tenant, a)])
                for a in node.namespaces[ns].ancestry()
            ]
            assert ns_view.files == inherit.effective_files(chain), (name, ns)
            cut += not view.files_inherit[(tenant, ns)]
    assert cut == len(INSTANCES)


def test_a_flow_reading_another_namespaces_file_is_checked_again(repo_dir: Path) -> None:
    """``files.inherit`` turned off in one namespace hides files a flow of another one reads."""
    repo = GitRepo(repo_dir)
    campaign = "tenants/acme/marketing.emea/flows/campaign.yaml"
    reads = (repo_dir / campaign).read_text().replace(
        "tasks:\n", "tasks:\n  - id: cross_read\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: \"{{ read('sql/schema.sql', 'company.team') }}\"\n", 1)
    old = loaded(repo, commit(repo_dir, "cross read", {campaign: reads}))
    assert not [d for d in old.report(INSTANCES) if d.path == campaign]  # company.team sees it
    team = f"{COMPANY}/team/namespace.yaml"
    head = commit(repo_dir, "no inherit", {team: (repo_dir / team).read_text() + "files:\n  inherit: false\n"})
    want = loaded(repo, head)
    assert [d.code for d in want.report(INSTANCES) if d.path == campaign] == ["ref.read-missing"]
    update = snapshot.update(old, repo, head)
    assert update is not None
    assert_same(update.snapshot, want)


def test_an_applied_commit_the_rules_now_refuse_is_not_primed_twice(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules that changed since a commit was applied (simulated: the real check plus one error)
    leave priming to the full path, and the daemon's poll does not load that commit again."""
    state = tmp_path / "state"
    with open_engine(repo_dir, state) as engine:
        engine.apply("dev", "HEAD", trigger="test")
    real_check, real_load, real_partial = Engine.check, Engine.load, snapshot.load_partial
    loads: list[str] = []

    def stricter(self: Engine, snap: snapshot.Snapshot, instance: str) -> list[Diagnostic]:
        return [*real_check(self, snap, instance), Diagnostic("headwater.yaml", 1, 1, "rule.new", "refused now")]

    def counted(self: Engine, rev: str) -> snapshot.Snapshot:
        loads.append(rev)
        return real_load(self, rev)

    def counted_partial(repo: GitRepo, rev: str, instance: str, *, cache: ResultCache) -> snapshot.Snapshot | None:
        loads.append(rev)
        return real_partial(repo, rev, instance, cache=cache)

    monkeypatch.setattr(Engine, "check", stricter)
    monkeypatch.setattr(Engine, "load", counted)
    monkeypatch.setattr(snapshot, "load_partial", counted_partial)
    with open_engine(repo_dir, state) as restarted:
        assert not restarted.prime("dev") and not restarted.prime("dev")
        assert len(loads) == 1
