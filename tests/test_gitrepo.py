from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from headwater import gitrepo
from headwater.errors import GitError
from headwater.gitrepo import MODE_SYMLINK, GitRepo
from tests.gitutil import commit, git, init_repo


def test_tree_listing_and_batch_read(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a.txt": "alpha\n", "d/b.bin": b"\x00\x01\x02", "d/e/c.txt": "gamma"})
    os.symlink("a.txt", repo_dir / "link")
    sha = commit(repo_dir, "link")
    with GitRepo(repo_dir) as repo:
        entries = {e.path: e for e in repo.ls_tree(sha)}
        assert set(entries) == {"a.txt", "d/b.bin", "d/e/c.txt", "link"}
        assert entries["link"].mode == MODE_SYMLINK
        assert entries["d/b.bin"].size == 3
        blobs = repo.read_blobs(e.oid for e in entries.values())
        assert blobs[entries["a.txt"].oid] == b"alpha\n"
        assert blobs[entries["d/b.bin"].oid] == b"\x00\x01\x02"


def test_reads_commits_not_the_working_copy(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a.txt": "committed"})
    (repo_dir / "a.txt").write_text("edited, not committed")
    (repo_dir / "new.txt").write_text("untracked")
    with GitRepo(repo_dir) as repo:
        entries = repo.ls_tree("HEAD")
        assert [e.path for e in entries] == ["a.txt"]
        assert repo.read_blob(entries[0].oid) == b"committed"


@pytest.mark.usefixtures("either_batch")
def test_many_blobs_in_one_batch(tmp_path: Path) -> None:
    files = {f"f{i}.txt": f"content {i}\n" * (i % 50) for i in range(400)}
    repo_dir = init_repo(tmp_path / "r", files)
    with GitRepo(repo_dir) as repo:
        entries = repo.ls_tree("HEAD")
        blobs = repo.read_blobs(e.oid for e in entries)
        by_path = {e.path: blobs[e.oid] for e in entries}
        assert by_path == {k: v.encode() for k, v in files.items()}


@pytest.fixture(params=[True, False], ids=["batch-command", "batch"])
def either_batch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Blob readers with Git's buffered ``--batch-command`` (2.36 on), and without it."""
    buffered: bool = request.param
    if buffered and not gitrepo._buffered_batch():
        pytest.skip("this Git has no cat-file --batch-command (2.36 on): blobs are read with --batch")
    monkeypatch.setattr(gitrepo, "_buffered_batch", lambda: buffered)
    return buffered


def test_a_blob_reader_uses_the_mode_it_is_given(tmp_path: Path, either_batch: bool) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a.txt": "alpha"})
    with GitRepo(repo_dir) as repo, repo.blob_reader() as reader:
        oid = repo.ls_tree("HEAD")[0].oid
        assert reader.read([oid]) == {oid: b"alpha"}
        assert reader._proc is not None
        assert ("--batch-command" in reader._proc.args) is either_batch


@pytest.mark.usefixtures("either_batch")
def test_a_blob_reader_reads_batch_after_batch_through_one_git_process(tmp_path: Path) -> None:
    files = {f"f{i}.txt": f"content {i}\n" * (i % 50) for i in range(300)}  # past a pipe's buffer
    repo_dir = init_repo(tmp_path / "r", files)
    with GitRepo(repo_dir) as repo, repo.blob_reader() as reader:
        entries = repo.ls_tree("HEAD")
        seen = {}
        pids = set()
        for start in range(0, len(entries), 100):
            seen.update(reader.read(e.oid for e in entries[start : start + 100]))
            assert reader._proc is not None
            pids.add(reader._proc.pid)
        assert len(pids) == 1
        assert {e.path: seen[e.oid] for e in entries} == {k: v.encode() for k, v in files.items()}
        assert reader.read([]) == {}


@pytest.mark.usefixtures("either_batch")
def test_a_blob_reader_names_a_missing_object_and_reads_on(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a.txt": "alpha"})
    with GitRepo(repo_dir) as repo, repo.blob_reader() as reader:
        oid = repo.ls_tree("HEAD")[0].oid
        with pytest.raises(GitError, match=r"missing Git object 0{40}"):
            reader.read([oid, "0" * 40])
        assert reader.read([oid]) == {oid: b"alpha"}


@pytest.mark.usefixtures("either_batch")
def test_a_blob_reader_whose_git_died_says_so_and_starts_another(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a.txt": "alpha"})
    with GitRepo(repo_dir) as repo, repo.blob_reader() as reader:
        oid = repo.ls_tree("HEAD")[0].oid
        assert reader.read([oid]) == {oid: b"alpha"}
        assert reader._proc is not None
        reader._proc.kill()
        reader._proc.wait()
        with pytest.raises(GitError, match="git cat-file stopped"):
            reader.read([oid])
        assert reader.read([oid]) == {oid: b"alpha"}


@pytest.mark.usefixtures("either_batch")
def test_a_blob_reader_interrupted_mid_read_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while answers are read (Ctrl-C, say) must not leave them to the next read,
    which would take one blob's content for another's."""
    files = {f"f{i}.txt": f"content {i}\n" * 2000 for i in range(50)}  # more than the pipes hold
    repo_dir = init_repo(tmp_path / "r", files)
    with GitRepo(repo_dir) as repo, repo.blob_reader() as reader:
        entries = repo.ls_tree("HEAD")
        real = gitrepo._batch_reader

        def interrupted(stream: object, count: int) -> Any:
            for n, item in enumerate(real(stream, count)):
                if n == 3:
                    raise KeyboardInterrupt
                yield item

        monkeypatch.setattr(gitrepo, "_batch_reader", interrupted)
        with pytest.raises(KeyboardInterrupt):
            reader.read(e.oid for e in entries)
        monkeypatch.undo()
        last = entries[-1]
        assert reader.read([last.oid]) == {last.oid: files[last.path].encode()}


def test_diff_tree(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a": "1", "b": "2"})
    first = git(repo_dir, "rev-parse", "HEAD")
    second = commit(repo_dir, "c", {"a": "changed", "b": None, "c": "new"})
    with GitRepo(repo_dir) as repo:
        assert sorted(repo.diff_tree(first, second)) == [("A", "c"), ("D", "b"), ("M", "a")]


def test_bad_revision_and_not_a_repository(tmp_path: Path) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a": "1"})
    with GitRepo(repo_dir) as repo:
        with pytest.raises(GitError, match="unknown revision"):
            repo.resolve("nope")
        with pytest.raises(GitError, match="invalid revision"):
            repo.resolve("--output=/tmp/x")
        assert repo.branches() == {"main": repo.resolve("HEAD")}
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitError, match="not a Git repository"):
        GitRepo(tmp_path / "plain")


@pytest.mark.parametrize(
    "where", ["missing", "a file", "a folder inside a work tree", "the same through ..", "the same through a link"]
)
def test_what_is_not_a_repository(tmp_path: Path, where: str) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a": "1", "sub/b": "2", "sub/deeper/c": "3"})
    os.symlink(repo_dir / "sub", tmp_path / "link")
    path = {
        "missing": tmp_path / "nope", "a file": repo_dir / "a", "a folder inside a work tree": repo_dir / "sub",
        "the same through ..": repo_dir / "sub" / "deeper" / "..", "the same through a link": tmp_path / "link",
    }
    with pytest.raises(GitError, match="not a Git repository") as caught:
        GitRepo(path[where])
    assert caught.value.hint is not None and "-C PATH" in caught.value.hint


def test_a_repository_is_found_by_its_work_tree_its_git_directory_or_a_bare_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_dir = init_repo(tmp_path / "r", {"a": "1"})
    git(tmp_path, "clone", "-q", "--bare", str(repo_dir), str(tmp_path / "bare.git"))
    git(repo_dir, "worktree", "add", "-q", str(tmp_path / "wt"))
    other = init_repo(tmp_path / "other", {"b": "2"})
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # the path given wins over the environment
    expected = {
        repo_dir: repo_dir / ".git", repo_dir / ".git": repo_dir / ".git",
        tmp_path / "bare.git": tmp_path / "bare.git", tmp_path / "wt": repo_dir / ".git" / "worktrees" / "wt",
    }
    for path, git_dir in expected.items():
        with GitRepo(path) as repo:
            assert repo.git_dir.resolve() == git_dir.resolve(), path
            assert [e.path for e in repo.ls_tree("HEAD")] == ["a"]
            assert repo.commit_info("HEAD")["sha"] == repo.resolve("HEAD")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another user")
def test_a_repository_another_user_owns_is_read(tmp_path: Path) -> None:
    """Git's discovery refuses a repository another user owns (safe.directory), as on a
    mounted volume; the repository at the path given is read all the same."""
    repo_dir = init_repo(tmp_path / "r", {"a": "1"})
    for folder, _dirs, files in os.walk(repo_dir):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, 65534, 65534)
    with GitRepo(repo_dir) as repo:
        assert [e.path for e in repo.ls_tree("HEAD")] == ["a"]
