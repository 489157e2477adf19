from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pin git's identity and configuration; never read or write the real home directory."""
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Headwater Test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.com")
    monkeypatch.delenv("NO_COLOR", raising=False)
    for key in list(os.environ):
        if key.startswith("HEADWATER_") and key != "HEADWATER_CONFORMANCE_DIR":
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    from tests.gitutil import sample_repo

    return sample_repo(tmp_path / "gitops")
