"""Secret providers and the secret-hash key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from headwater import secrets as secrets_module
from headwater.errors import ConfigError, StateError
from headwater.resources import ResourceKey
from headwater.secrets import (
    HASH_KEY_FILE,
    ChainProvider,
    DirectoryProvider,
    EnvProvider,
    SecretProvider,
    collect,
    load_or_create_hash_key,
    lookup_scope,
    namespace_chain,
)

VALUE = "s3cr3t value \u00e9"


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    root = tmp_path / "secrets"
    for rel, value in {
        "acme/company.team.x/ONLY_X": "x\n",
        "acme/company.team/TEAM": "team",
        "acme/company/COMPANY": "company\r\n",
        "acme/company/TEAM": "shadowed by company.team",
        "acme/TENANT": "tenant\n\n",
        "other/company/COMPANY": "other tenant",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.encode())
    return root


def test_namespace_chain() -> None:
    assert namespace_chain("company.team.x") == ["company.team.x", "company.team", "company"]
    assert namespace_chain("company") == ["company"]


@pytest.mark.parametrize(
    ("namespace", "name", "expected"),
    [
        ("company.team.x", "ONLY_X", "x"),
        ("company.team.x", "TEAM", "team"),
        ("company.team.x", "COMPANY", "company"),
        ("company.team.x", "TENANT", "tenant\n"),  # only one trailing newline goes
        ("company", "TEAM", "shadowed by company.team"),
        ("company", "ONLY_X", None),
        ("elsewhere", "TENANT", "tenant\n"),
        ("company", "MISSING", None),
    ],
)
def test_directory_provider_looks_up_the_namespace_chain(
    secrets_dir: Path, namespace: str, name: str, expected: str | None
) -> None:
    assert DirectoryProvider(secrets_dir).get("acme", namespace, name) == expected


def test_directory_provider_keeps_tenants_apart(secrets_dir: Path) -> None:
    provider = DirectoryProvider(secrets_dir)
    assert provider.get("other", "company", "COMPANY") == "other tenant"
    assert provider.get("other", "company", "TENANT") is None
    assert provider.get("nobody", "company", "COMPANY") is None


def test_directory_provider_follows_a_mounted_volume(secrets_dir: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "MOUNTED").write_text(VALUE)
    (secrets_dir / "acme" / "company" / "MOUNTED").symlink_to(volume / "MOUNTED")
    assert DirectoryProvider(secrets_dir).get("acme", "company.team", "MOUNTED") == VALUE


@pytest.mark.parametrize(
    ("tenant", "namespace", "name"),
    [
        ("acme", "company", "../TENANT"),
        ("acme", "company", ".."),
        ("acme", "company", "/etc/passwd"),
        ("acme", "company", "A\x00B"),
        ("..", "company", "X"),
        ("acme", "..", "X"),
        ("acme", "company..x", "X"),
        ("acme", "company/x", "X"),
        ("acme", "company", ""),
    ],
)
def test_directory_provider_refuses_unsafe_names(
    secrets_dir: Path, tenant: str, namespace: str, name: str
) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        DirectoryProvider(secrets_dir).get(tenant, namespace, name)


def test_directory_provider_errors_never_show_the_value(secrets_dir: Path) -> None:
    (secrets_dir / "acme" / "company" / "BINARY").write_bytes(b"\xff\xfe" + VALUE.encode())
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        DirectoryProvider(secrets_dir).get("acme", "company", "BINARY")
    assert VALUE not in str(info.value) and VALUE not in repr(info.value.__cause__)
    assert info.value.__cause__ is None


def test_directory_provider_ignores_a_folder_with_the_name(secrets_dir: Path) -> None:
    (secrets_dir / "acme" / "company.team" / "COMPANY").mkdir()
    assert DirectoryProvider(secrets_dir).get("acme", "company.team", "COMPANY") == "company"


def test_a_lookup_scope_answers_as_single_lookups_and_lists_each_folder_once(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secrets_dir / "acme" / "company.team" / "COMPANY").mkdir()  # a folder: skipped
    (secrets_dir / "acme" / "company.file").write_text("a file where a folder would be")
    (secrets_dir / "acme" / "company" / "BINARY").write_bytes(b"\xff")
    lookups = [
        (tenant, namespace, name)
        for tenant in ("acme", "other", "nobody")
        for namespace in ("company.team.x", "company.team", "company", "elsewhere", "company.file")
        for name in ("ONLY_X", "TEAM", "COMPANY", "TENANT", "MISSING")
    ]
    provider = DirectoryProvider(secrets_dir)
    single = {lookup: provider.get(*lookup) for lookup in lookups}
    listed: list[str] = []
    real = os.listdir

    def counting(path: str) -> list[str]:
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    opened: list[str] = []

    def opening(path: str, mode: str) -> Any:
        opened.append(path)
        return open(path, mode)

    monkeypatch.setattr(secrets_module, "open", opening, raising=False)
    chained = ChainProvider(EnvProvider(environ={}), provider)
    with lookup_scope(chained):
        scoped = {lookup: provider.get(*lookup) for lookup in lookups}
        again = {lookup: provider.get(*lookup) for lookup in lookups}
        with pytest.raises(ConfigError, match="not UTF-8"):
            provider.get("acme", "company", "BINARY")
    assert scoped == again == single
    assert sum(v is not None for v in scoped.values()) == 18
    assert len(listed) == len(set(listed)) == 3 * 6  # each folder of every chain, once
    assert opened and len(opened) == len(set(opened))  # each file, once
    with lookup_scope(provider):  # a new scope sees a value written since
        (secrets_dir / "acme" / "company" / "MISSING").write_text("now set")
        assert provider.get("acme", "company.team", "MISSING") == "now set"


def test_a_value_read_in_a_scope_is_not_kept_past_it(secrets_dir: Path) -> None:
    provider = DirectoryProvider(secrets_dir)
    secret = secrets_dir / "acme" / "company" / "ROTATED"
    secret.write_text("old\n")
    with lookup_scope(provider):
        assert provider.get("acme", "company.team", "ROTATED") == "old"
        secret.write_text("new\n")
        assert provider.get("acme", "company", "ROTATED") == "old"  # read once in a scope
    assert provider.get("acme", "company.team", "ROTATED") == "new"  # outside any scope
    secret.write_text("newer\n")
    assert provider.get("acme", "company.team", "ROTATED") == "newer"  # nothing kept outside
    with lookup_scope(provider):
        assert provider.get("acme", "company.team", "ROTATED") == "newer"  # a new scope reads again


def test_env_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EnvProvider(environ={"HEADWATER_SECRET_DB": VALUE}).get("a", "b", "DB") == VALUE
    assert EnvProvider("X_", environ={"X_DB": "x"}).get("a", "b", "DB") == "x"
    assert EnvProvider(environ={}).get("a", "b", "DB") is None
    monkeypatch.setenv("HEADWATER_SECRET_FROM_ENV", "yes")
    assert EnvProvider().get("acme", "company", "FROM_ENV") == "yes"


def test_chain_provider_and_collect(secrets_dir: Path) -> None:
    provider: SecretProvider = ChainProvider(
        EnvProvider(environ={"HEADWATER_SECRET_TEAM": "from env"}),
        DirectoryProvider(secrets_dir),
    )
    assert provider.get("acme", "company", "TEAM") == "from env"
    assert provider.get("acme", "company", "COMPANY") == "company"
    keys = [
        ResourceKey("acme", "company.team", "secret", "TEAM"),
        ResourceKey("acme", "company.team", "secret", "COMPANY"),
        ResourceKey("acme", "company", "secret", "MISSING"),
        ResourceKey("acme", "company", "flow", "COMPANY"),
    ]
    assert collect(provider, keys) == {
        ("acme", "company.team"): {"TEAM": "from env", "COMPANY": "company"},
    }


def test_hash_key_is_created_once_and_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    key = load_or_create_hash_key(state_dir)
    assert len(key) == 32
    path = state_dir / HASH_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_hash_key(state_dir) == key
    assert sorted(p.name for p in state_dir.iterdir()) == [HASH_KEY_FILE]
    assert load_or_create_hash_key(tmp_path / "other") != key


def test_a_damaged_hash_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / HASH_KEY_FILE).write_bytes(b"short")
    with pytest.raises(StateError, match="damaged") as info:
        load_or_create_hash_key(tmp_path)
    assert info.value.hint and "delete it" in info.value.hint


def test_an_unwritable_state_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot read or create"):
        load_or_create_hash_key(tmp_path / "file" / "state")


def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    code = (
        "import sys; from headwater.secrets import load_or_create_hash_key as f;"
        " sys.stdout.write(f(sys.argv[1]).hex())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    keys = {proc.communicate(timeout=60)[0] for proc in procs}
    assert len(keys) == 1 and all(proc.returncode == 0 for proc in procs)
    assert bytes.fromhex(keys.pop().decode()) == (tmp_path / HASH_KEY_FILE).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [HASH_KEY_FILE]
