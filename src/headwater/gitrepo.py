"""The only module that talks to git: trees, blobs, revisions, diffs, commits and branches.

Everything Headwater validates is read from Git objects (``ls-tree`` + ``cat-file --batch``),
never from a working copy, so what is validated is exactly what is applied.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from headwater.errors import GitError

MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a recursive tree listing."""

    path: str
    mode: str
    type: str  # "blob" or "commit" (a submodule)
    oid: str
    size: int  # -1 for submodules


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"
    return env


class GitRepo:
    """A repository on disk (bare or not), read through git plumbing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._repo = git.Repo(self.path, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(
                f"{self.path} is not a Git repository",
                hint="pass the repository with -C PATH, or run `git init` there",
            ) from None
        self.git_dir = Path(self._repo.git_dir)

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> GitRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level -------------------------------------------------------------------------

    def _run(self, args: Sequence[str], stdin: bytes | None = None) -> bytes:
        proc = subprocess.run(
            ["git", "--git-dir", str(self.git_dir), *args],
            input=stdin,
            capture_output=True,
            env=_git_env(),
            check=False,
        )
        if proc.returncode != 0:
            message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise GitError(
                f"git {args[0]} failed: {message[-1] if message else 'exit ' + str(proc.returncode)}"
            )
        return proc.stdout

    # -- revisions -------------------------------------------------------------------------

    def resolve(self, rev: str) -> str:
        """The full commit id of ``rev`` (a branch, tag, sha or expression)."""
        if rev.startswith("-"):
            raise GitError(f"invalid revision {rev!r}", hint="revisions cannot start with '-'")
        try:
            return self._repo.rev_parse(rev + "^{commit}").hexsha
        except (git.BadName, ValueError, git.BadObject):
            raise GitError(
                f"unknown revision {rev!r}",
                hint="give a branch, tag or commit id that exists in the repository",
            ) from None

    def try_resolve(self, rev: str) -> str | None:
        try:
            return self.resolve(rev)
        except GitError:
            return None

    def commit_info(self, rev: str) -> dict[str, str]:
        commit = self._repo.commit(self.resolve(rev))
        return {
            "sha": commit.hexsha,
            "author": str(commit.author),
            "date": commit.committed_datetime.isoformat(),
            "summary": str(commit.summary),
            "message": str(commit.message),
        }

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        proc = subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "merge-base", "--is-ancestor",
             self.resolve(ancestor), self.resolve(descendant)],
            capture_output=True, env=_git_env(), check=False,
        )
        return proc.returncode == 0

    def branches(self) -> dict[str, str]:
        """Local branches (refs/heads) → commit id."""
        out = self._run(["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"])
        result: dict[str, str] = {}
        for line in out.decode().splitlines():
            name, _, sha = line.partition(" ")
            result[name] = sha
        return result

    # -- trees and blobs -------------------------------------------------------------------

    def ls_tree(self, rev: str) -> list[TreeEntry]:
        """Every path of the commit's tree with mode, type, blob id and size, in one call."""
        sha = self.resolve(rev)
        out = self._run(["ls-tree", "-r", "-z", "-l", "--full-tree", sha])
        entries: list[TreeEntry] = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid, size = meta.decode().split()
            try:
                path = raw_path.decode("utf-8")
            except UnicodeDecodeError:
                path = raw_path.decode("utf-8", "backslashreplace")
            entries.append(TreeEntry(path, mode, kind, oid, int(size) if size != "-" else -1))
        return entries

    def read_blobs(self, oids: Iterable[str]) -> dict[str, bytes]:
        """Contents of many blobs through one ``git cat-file --batch`` process."""
        wanted = list(dict.fromkeys(oids))
        if not wanted:
            return {}
        proc = subprocess.Popen(
            ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_git_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        request = "".join(oid + "\n" for oid in wanted).encode()
        stdin = proc.stdin

        def feed() -> None:
            try:
                stdin.write(request)
            finally:
                stdin.close()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        result: dict[str, bytes] = {}
        try:
            for oid in _batch_reader(proc.stdout, len(wanted)):
                result[oid[0]] = oid[1]
        finally:
            writer.join()
            proc.stdout.close()
            proc.wait()
        missing = [oid for oid in wanted if oid not in result]
        if missing:
            raise GitError(f"missing Git object {missing[0]}", hint="the repository may be corrupt")
        return result

    def read_blob(self, oid: str) -> bytes:
        return self.read_blobs([oid])[oid]

    def diff_tree(self, old: str, new: str) -> list[tuple[str, str]]:
        """Changed paths between two commits: (status letter, path)."""
        out = self._run(["diff-tree", "-r", "-z", "--no-renames", "--name-status", old, new])
        fields = [f for f in out.split(b"\0") if f]
        return [
            (fields[i].decode(), fields[i + 1].decode("utf-8", "backslashreplace"))
            for i in range(0, len(fields) - 1, 2)
        ]


def _batch_reader(stream: object, count: int) -> Iterator[tuple[str, bytes]]:
    from typing import BinaryIO, cast

    out = cast(BinaryIO, stream)
    for _ in range(count):
        header = out.readline()
        if not header:
            return
        parts = header.split()
        if len(parts) == 2 and parts[1] == b"missing":
            continue
        oid, _kind, size = parts[0].decode(), parts[1], int(parts[2])
        data = out.read(size)
        out.read(1)  # the newline after the content
        yield oid, data
