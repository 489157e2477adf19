"""Real Git repositories for tests, built from dictionaries or folders on disk."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from headwater.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample-repo"


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def write_files(root: Path, files: Mapping[str, str | bytes | None]) -> None:
    """Write (or, with None, delete) files below root."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, "utf-8")


def commit(repo: Path, message: str = "change", files: Mapping[str, str | bytes | None] | None = None) -> str:
    if files:
        write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def init_repo(path: Path, files: Mapping[str, str | bytes | None] | None = None, branch: str = "main") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    if files is not None:
        commit(path, "initial", files)
    return path


def sample_repo(path: Path) -> Path:
    """A Git repository holding sample-repo/ on `main`, with `dev` at the same commit."""
    shutil.copytree(SAMPLE, path)
    git(path, "init", "-q", "-b", "main")
    commit(path, "sample repository")
    git(path, "branch", "dev")
    return path


@dataclass(frozen=True)
class Result:
    """What one in-process run of the CLI printed and returned."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """The real `headwater` entry point, in-process; its exit code and captured output."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)
