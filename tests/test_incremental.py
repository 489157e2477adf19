"""The incremental path: a snapshot derived from the previous one by `git diff-tree` equals a
full load of the new commit, and recomputes only what the change reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from headwater import inherit, snapshot
from headwater.cache import ResultCache
from headwater.gitrepo import GitRepo
from tests.gitutil import commit, git, sample_repo

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
    "tenant.yaml": {"tenants/acme/tenant.yaml": "variables:\n  tenant_wide: yes\n"},
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


def test_updates_chain_and_share_the_persistent_cache(repo_dir: Path, tmp_path: Path) -> None:
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
        update = snapshot.update(snap, repo, "HEAD", cache=cache)
        assert update is not None
        assert_same(update.snapshot, loaded(repo, "HEAD", cache))
