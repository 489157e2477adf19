"""Snapshots loaded tenant by tenant (``snapshot.load_partial``): what a restarted daemon
starts from. Each must say what the whole commit says, and grow into it as changes arrive."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from headwater import snapshot
from headwater.cache import ResultCache
from headwater.engine import Engine, _calls
from headwater.errors import Diagnostic, ValidationFailed
from headwater.gitrepo import GitRepo
from headwater.snapshot import NsKey
from tests.gitutil import commit, git, sample_repo
from tests.test_incremental import EDITS, SEQUENCE, Calls, apply_by, open_engine

INSTANCES = ("dev", "prod")
COMPANY = "tenants/acme/company"
SUBFLOW_ELSEWHERE = (
    "id: caller\nnamespace: ops\ntasks:\n  - id: call\n    type: io.kestra.plugin.core.flow.Subflow\n"
    "    namespace: elsewhere.far\n    flowId: other\n"
)
BAD_VALIDATOR = (
    "id: asks\nnamespace: company\ninputs:\n  - id: code\n    type: STRING\n    validator: \"([\"\n"
    "tasks:\n  - id: hi\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
)
# Problems in every place a diagnostic comes from: a flow's rules (acme), an instance's
# reference checks (globex), the layout inside and outside tenant folders.
WARNINGS = {
    f"{COMPANY}/flows/asks.yaml": BAD_VALIDATOR,
    "tenants/globex/ops/flows/caller.yaml": SUBFLOW_ELSEWHERE,
}
ERRORS = {
    "tenants/NOTES.md": "a stray file under tenants/\n",
    "tenants/Bad_Tenant/ops/flows/a.yaml": "id: a\n",
    f"{COMPANY}/flows/broken.yaml": "id: broken\n  tasks: [\n",
}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = sample_repo(tmp_path / "repo")
    commit(path, "warnings", WARNINGS)
    return path


def whole(repo: GitRepo, rev: str, instance: str, cache: ResultCache) -> snapshot.Snapshot:
    """The commit loaded whole, its summary recorded for ``instance``."""
    snap = snapshot.load(repo, rev, cache=cache)
    snap.view(instance)
    snapshot.remember_summary(snap, instance)
    return snap


def partial(repo: GitRepo, rev: str, instance: str, cache: ResultCache) -> snapshot.Snapshot:
    snap = snapshot.load_partial(repo, rev, instance, cache=cache)
    assert snap is not None and snap.partial is not None
    return snap


def assert_same_loaded(got: snapshot.Snapshot, want: snapshot.Snapshot, instance: str) -> None:
    """``got`` says what ``want`` says, and holds the same of each tenant it loaded."""
    assert got.revision == want.revision
    assert got.report([instance]) == want.report([instance])
    loaded = set(got.layout.tenants)
    assert {t: want.layout.tenants[t] for t in loaded} == got.layout.tenants
    assert got.flows == {k: v for k, v in want.flows.items() if k[0] in loaded}
    assert got.configs == {p: d for p, d in want.configs.items() if snapshot.tenant_folder(p) in loaded}
    namespaces = {k: v for k, v in want.view(instance).namespaces.items() if k[0] in loaded}
    assert got.view(instance).namespaces == namespaces
    assert got.partial is not None
    assert not loaded & set(got.partial.absent)


@pytest.mark.parametrize("problems", ["warnings", "errors"])
@pytest.mark.parametrize("instance", INSTANCES)
def test_a_partial_snapshot_says_what_the_whole_commit_says(
    repo_dir: Path, tmp_path: Path, instance: str, problems: str
) -> None:
    if problems == "errors":
        commit(repo_dir, "errors", ERRORS)
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    want = whole(repo, "HEAD", instance, cache)
    found = {d.code for d in want.report([instance])}
    assert {"flow.input-invalid", "ref.subflow-external"} <= found
    if problems == "errors":
        assert {"layout.stray-file", "layout.bad-tenant", "yaml.syntax"} <= found
    snap = partial(repo, "HEAD", instance, cache)
    assert snap.layout.tenants == {} and snap.flows == {}
    assert snap.partial is not None and set(snap.partial.absent) >= {"acme", "globex"}
    assert_same_loaded(snap, want, instance)
    # filled in any order and grouping, it stays the whole commit's
    for size in (1, 2):
        for group in itertools.combinations(["acme", "globex", "Bad_Tenant", "NOTES.md"], size):
            grown = snapshot._fill(snap, repo, group)
            assert_same_loaded(grown, want, instance)
            assert_same_loaded(snapshot._fill(grown, repo, ["acme", "globex"]), want, instance)
    assert_same_loaded(snap, want, instance)  # filling copies: the partial one is untouched


def test_without_a_summary_for_this_commit_and_code_there_is_no_partial_load(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    assert snapshot.load_partial(repo, "HEAD", "dev", cache=cache) is None
    whole(repo, "HEAD~1", "dev", cache)
    assert snapshot.load_partial(repo, "HEAD", "dev", cache=cache) is None  # another commit
    whole(repo, "HEAD", "dev", cache)
    assert snapshot.load_partial(repo, "HEAD", "prod", cache=cache) is None  # another instance
    assert snapshot.load_partial(repo, "HEAD", "dev", cache=cache) is not None
    monkeypatch.setattr(snapshot, "model_fingerprint", lambda: "other code")
    assert snapshot.load_partial(repo, "HEAD", "dev", cache=cache) is None


def test_a_torn_summary_is_not_trusted(repo_dir: Path, tmp_path: Path) -> None:
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    whole(repo, "HEAD", "dev", cache)
    cache.close()
    db = sqlite3.connect(tmp_path / "cache.db")
    db.execute("UPDATE entries SET payload = substr(payload, 1, length(payload) / 2)")
    db.commit()
    db.close()
    with ResultCache(tmp_path / "cache.db") as again:
        assert snapshot.load_partial(repo, "HEAD", "dev", cache=again) is None
        assert again.dropped > 0


@pytest.mark.parametrize("instance", INSTANCES)
def test_a_commit_unloaded_after_a_whole_load_equals_its_partial_load(
    repo_dir: Path, tmp_path: Path, instance: str
) -> None:
    commit(repo_dir, "errors", ERRORS)
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    want = whole(repo, "HEAD", instance, cache)
    got = snapshot.unloaded(want, instance)
    assert got == partial(repo, "HEAD", instance, cache)
    assert_same_loaded(got, want, instance)
    assert want.layout.tenants and want.view(instance).namespaces  # the whole one is untouched


def test_a_partial_snapshot_serves_its_instance_only(repo_dir: Path, tmp_path: Path) -> None:
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    whole(repo, "HEAD", "dev", cache)
    snap = partial(repo, "HEAD", "dev", cache)
    with pytest.raises(ValueError, match="loaded for instance 'dev'"):
        snap.view("prod")
    with pytest.raises(ValueError, match="loaded for instance 'dev'"):
        snap.report(INSTANCES)


@pytest.mark.parametrize("instance", INSTANCES)
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_update_of_a_partial_snapshot_equals_a_full_load(
    repo_dir: Path, tmp_path: Path, edit: str, instance: str
) -> None:
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    whole(repo, "HEAD", instance, cache)
    old = partial(repo, "HEAD", instance, cache)
    head = commit(repo_dir, edit, EDITS[edit])
    update = snapshot.update(old, repo, head, cache=cache)
    assert update is not None, edit
    reached = {snapshot.tenant_folder(p) for p in EDITS[edit]} - {""}
    assert set(update.filled) == reached
    # what it touches (to rebuild and apply) is what an update of the whole commit touches
    whole_update = snapshot.update(whole(repo, "HEAD~1", instance, cache), repo, head, cache=cache)
    assert whole_update is not None
    assert update.touched == whole_update.touched and update.remerged == whole_update.remerged
    assert bool(update.touched.get(instance)) == bool(reached)
    assert set(update.snapshot.layout.tenants) == reached == set(update.base.layout.tenants)
    assert_same_loaded(update.snapshot, snapshot.load(repo, head), instance)
    assert_same_loaded(update.base, snapshot.load(repo, "HEAD~1"), instance)
    assert old.layout.tenants == {}  # the partial snapshot it came from is untouched


@pytest.mark.parametrize(
    "files",
    [
        {"tenants/newco/ops/flows/a.yaml": "id: a\nnamespace: ops\n"},
        {"tenants/NOTES.md": "changed\n"},
        {"tenants/globex/ops/flows/new.yaml": "id: new\nnamespace: ops\n"},
    ],
    ids=["new tenant", "stray file", "flow added in an unloaded tenant"],
)
def test_structural_changes_to_a_partial_snapshot_need_a_full_load(
    repo_dir: Path, tmp_path: Path, files: dict[str, str]
) -> None:
    commit(repo_dir, "stray", {"tenants/NOTES.md": "x\n"})
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    whole(repo, "HEAD", "dev", cache)
    old = partial(repo, "HEAD", "dev", cache)
    assert snapshot.update(old, repo, commit(repo_dir, "structure", files), cache=cache) is None


def test_a_summary_recorded_from_a_partial_snapshot_is_the_whole_ones(repo_dir: Path, tmp_path: Path) -> None:
    """What a restarted daemon records after its first syncs is what a whole load records,
    restart after restart (no diagnostic counted twice)."""
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    want = snapshot.summarize(whole(repo, "HEAD", "dev", cache), "dev")
    assert sum(map(len, want.values())) >= 2
    for _ in range(3):
        snap = partial(repo, "HEAD", "dev", cache)
        assert snapshot.summarize(snap, "dev") == want
        grown = snapshot._fill(snap, repo, ["globex"])
        assert snapshot.summarize(grown, "dev") == want
        snapshot.remember_summary(grown, "dev")


@pytest.mark.parametrize(
    "files",
    [
        {"headwater.yaml": (Path(__file__).parents[1] / "sample-repo/headwater.yaml").read_text()
         .replace('tenants: ["*"]\n    defaults:\n      variables: {env: prod', 'tenants: ["acme"]\n    defaults:\n'
                  '      variables: {env: prod')},
        {".headwaterignore": "**/README.md\ntenants/globex/\n"},
        {".headwaterignore": "**/README.md\ntenants/*/company/files/\ntenants/globex/ops/flows/caller.yaml\n"},
    ],
    ids=["prod carries acme only", "a tenant ignored", "files inside tenants ignored"],
)
@pytest.mark.parametrize("instance", INSTANCES)
def test_partial_snapshots_follow_the_instances_tenants_and_the_ignore_file(
    repo_dir: Path, tmp_path: Path, files: dict[str, str], instance: str
) -> None:
    commit(repo_dir, "setup", files)
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    want = whole(repo, "HEAD", instance, cache)
    carried = {t for t, _ in want.view(instance).namespaces}
    globex_ignored = "tenants/globex/\n" in files.get(".headwaterignore", "")
    only_acme = ("headwater.yaml" in files and instance == "prod") or globex_ignored
    assert carried == ({"acme"} if only_acme else {"acme", "globex"})
    for group in (["acme"], ["globex"], ["acme", "globex"]):
        assert_same_loaded(snapshot._fill(partial(repo, "HEAD", instance, cache), repo, group), want, instance)
    head = commit(repo_dir, "edit", {"tenants/globex/ops/flows/backup.yaml": SUBFLOW_ELSEWHERE.replace("caller", "backup")})
    update = snapshot.update(partial(repo, "HEAD~1", instance, cache), repo, head, cache=cache)
    if globex_ignored:
        assert update is None  # a path the model ignores: as for a whole snapshot
        return
    assert update is not None
    assert_same_loaded(update.snapshot, snapshot.load(repo, head), instance)


@pytest.mark.parametrize("path", ["tenants/NOTES.md", "tenants/globex/ops/files/README.md"])
def test_a_stray_or_ignored_file_edited_needs_a_full_load_without_loading_a_tenant(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    commit(repo_dir, "extras", {"tenants/NOTES.md": "x\n", "tenants/globex/ops/files/README.md": "x\n"})
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    assert path not in snapshot.load(repo, "HEAD").path_index()  # stray, or ignored (**/README.md)
    old = snapshot.unloaded(whole(repo, "HEAD", "dev", cache), "dev")

    def refuse(*args: object) -> snapshot.Snapshot:
        raise AssertionError("a tenant was loaded")

    monkeypatch.setattr(snapshot, "_fill", refuse)
    assert snapshot.update(old, repo, commit(repo_dir, "edit", {path: "changed\n"}), cache=cache) is None


def test_the_tenants_folder_turned_into_a_link_needs_a_full_load(repo_dir: Path, tmp_path: Path) -> None:
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    old = whole(repo, "HEAD", "dev", cache)
    git(repo_dir, "rm", "-r", "-q", "tenants")
    (repo_dir / "tenants").symlink_to("elsewhere")
    git(repo_dir, "add", "tenants")
    git(repo_dir, "commit", "-q", "-m", "link")
    assert "layout.symlink" in {d.code for d in snapshot.load(repo, "HEAD").diagnostics}
    assert snapshot.update(old, repo, "HEAD", cache=cache) is None
    assert snapshot.update(partial(repo, "HEAD~1", "dev", cache), repo, "HEAD", cache=cache) is None


@pytest.mark.parametrize("how", ["added", "removed"])
def test_a_submodule_outside_the_tenants_needs_a_full_load(repo_dir: Path, how: str) -> None:
    """A full load reports a submodule wherever it is: an update must not step over it."""
    repo = GitRepo(repo_dir)
    oid = git(repo_dir, "rev-parse", "HEAD").strip()
    git(repo_dir, "update-index", "--add", "--cacheinfo", f"160000,{oid},vendor/lib")
    if how == "removed":
        git(repo_dir, "commit", "-q", "-m", "vendor")
    old = snapshot.load(repo, "HEAD")
    assert ("layout.submodule" in {d.code for d in old.diagnostics}) == (how == "removed")
    if how == "removed":
        git(repo_dir, "rm", "-q", "--cached", "vendor/lib")
    git(repo_dir, "commit", "-q", "-m", how)
    assert snapshot.update(old, repo, "HEAD") is None


@pytest.fixture
def engine_for(repo_dir: Path, tmp_path: Path) -> Iterator[Engine]:
    """An engine restarted on an instance a first engine applied HEAD to."""
    with open_engine(repo_dir, tmp_path / "state") as engine:
        engine.apply("dev", "HEAD", trigger="test")
    with open_engine(repo_dir, tmp_path / "state") as restarted:
        yield restarted


@pytest.fixture
def primed(engine_for: Engine, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Calls]:
    """The restarted engine, primed, and what it calls on the target from now on."""
    calls = Calls(monkeypatch)
    assert engine_for.prime("dev")
    calls.take()
    return engine_for, calls


def test_a_restarted_engine_loads_a_tenant_when_a_change_reaches_it(
    primed: tuple[Engine, Calls], repo_dir: Path
) -> None:
    engine, calls = primed
    resident = engine._resident["dev"]
    assert resident.snapshot.partial is not None and resident.snapshot.layout.tenants == {}
    assert resident.desired.calls == {}
    for edit, tenants in zip(SEQUENCE[:4], [{"acme"}] * 4, strict=True):
        apply_by("incremental", engine, repo_dir, commit(repo_dir, edit, EDITS[edit]), calls)
        resident = engine._resident["dev"]
        assert set(resident.snapshot.layout.tenants) == tenants
    backup = {"tenants/globex/ops/flows/backup.yaml": SUBFLOW_ELSEWHERE.replace("caller", "backup")}
    apply_by("incremental", engine, repo_dir, commit(repo_dir, "globex", backup), calls)
    resident = engine._resident["dev"]
    assert set(resident.snapshot.layout.tenants) == {"acme", "globex"}
    full = engine.load("HEAD")
    assert resident.desired.calls == _calls(full.view("dev"))
    assert resident.snapshot.report(["dev"]) == full.report(["dev"])


def test_a_tenant_loaded_later_takes_its_checks_from_the_commits_record(
    repo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit checked whole records its reference checks: loading a tenant of it later
    reuses them; without that record they run."""
    repo, cache = GitRepo(repo_dir), ResultCache(tmp_path / "cache.db")
    want = whole(repo, "HEAD", "dev", cache)
    checked: list[tuple[str, str]] = []
    real = snapshot.check_namespace

    def counted(view: snapshot.NamespaceView, views: Mapping[NsKey, snapshot.NamespaceView],
                snap: snapshot.Snapshot) -> list[Diagnostic]:
        checked.append((view.tenant, view.name))
        return real(view, views, snap)

    monkeypatch.setattr(snapshot, "check_namespace", counted)
    assert_same_loaded(snapshot._fill(partial(repo, "HEAD", "dev", cache), repo, ["globex"]), want, "dev")
    assert checked == []
    cache.put_many({snapshot._checks_key(want, want.view("dev")): None})  # no record now
    assert_same_loaded(snapshot._fill(partial(repo, "HEAD", "dev", cache), repo, ["globex"]), want, "dev")
    assert {t for t, _ in checked} == {"globex"} and len(checked) == len(want.layout.tenants["globex"].namespaces)


def test_a_restarted_engine_does_not_load_the_commit_whole(
    engine_for: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Engine, rev: str) -> snapshot.Snapshot:
        raise AssertionError("loaded whole")

    monkeypatch.setattr(Engine, "load", refuse)
    assert engine_for.prime("dev")


def test_after_loading_a_tenant_a_refused_or_structural_commit_leaves_a_sound_engine(
    primed: tuple[Engine, Calls], repo_dir: Path
) -> None:
    engine, calls = primed
    assert engine.resident_tenants("dev") == frozenset()
    with pytest.raises(ValidationFailed):  # loads acme, then refuses the commit
        engine.apply("dev", commit(repo_dir, "broken", EDITS["broken yaml"]), trigger="test")
    assert engine.resident_tenants("dev") == {"acme"}  # kept: the daemon settles it
    apply_by("incremental", engine, repo_dir, commit(repo_dir, "fixed", EDITS["flow"]), calls)
    added = {"tenants/globex/ops/flows/new.yaml": SUBFLOW_ELSEWHERE.replace("caller", "new")}
    apply_by("full", engine, repo_dir, commit(repo_dir, "added", added), calls)
    apply_by("incremental", engine, repo_dir, commit(repo_dir, "file", EDITS["namespace file"]), calls)
