"""The local target: materialisation, sharing, drift, safety, atomicity and crash recovery."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from headwater.errors import TargetError
from headwater.resources import (
    Kind,
    Resource,
    ResourceKey,
    State,
    content_hash,
    make,
    secret_hash,
)
from headwater.state import StateStore
from headwater.targets import LocalTarget, Target
from headwater.targets.local import BaseMoved

HASH_KEY = b"k" * 32
PASSWORD = "correct horse battery staple"
FLOW = b"id: hello\nnamespace: company\n\ntasks:\n  - id: t\n    type: io.kestra.Log\n"


def res(kind: Kind, name: str, content: bytes, ns: str = "company", tenant: str = "acme"):
    return make(tenant, ns, kind, name, content)


def secret(name: str, value: str, ns: str = "company", tenant: str = "acme") -> Resource:
    return Resource(ResourceKey(tenant, ns, "secret", name), secret_hash(HASH_KEY, value))


def state(*resources: Resource) -> State:
    return {r.key: r for r in resources}


def sample(version: int = 0) -> State:
    return state(
        res("flow", "hello", FLOW),
        res("flow", "child", b"id: child\nnamespace: company.team\n", ns="company.team"),
        res("file", "scripts/etl/load.py", f"print({version})\n".encode()),
        res("file", "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00binary"),
        res("file", "scripts/etl/load.py", f"print({version})\n".encode(), ns="company.team"),
        res("config", "config", b'{"variables": {"env": "dev"}}\n'),
        res("kv", "region", b'"eu-west-1"'),
        res("kv", "limits", b'{"cpu": 2, "tags": ["a", "b"]}'),
        secret("DB_PASSWORD", PASSWORD),
    )


SECRETS = {("acme", "company"): {"DB_PASSWORD": PASSWORD}}


def hashes(s: State) -> dict[ResourceKey, str]:
    return {k: r.hash for k, r in s.items()}


def debris(root: Path) -> list[str]:
    found = [p.name for p in root.iterdir() if ".tmp-" in p.name]
    for sub in ("revisions", "objects", "spaces", "indexes"):
        if (root / sub).is_dir():
            found += [f"{sub}/{p.name}" for p in (root / sub).iterdir() if ".tmp-" in p.name]
    return found


def objects(root: Path) -> set[Path]:
    return {p for p in (root / "objects").rglob("*") if p.is_file()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def target(root: Path) -> LocalTarget:
    return LocalTarget(root, keep=3, secret_hash_key=HASH_KEY, durable=False)



def fail_link_number(n: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the ``n``-th ``os.link`` from now fail as a full disk would (the others link);
    returns the destinations of the calls, as they are made."""
    real_link = os.link
    calls: list[str] = []

    def flaky_link(src: Any, dst: Any, **kw: Any) -> None:
        calls.append(str(dst))
        if len(calls) == n:
            raise OSError(28, "No space left on device")
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", flaky_link)
    return calls

def test_is_a_target(target: LocalTarget) -> None:
    checked: Target = target
    assert checked.current_revision() is None


def test_unapplied_instance_is_empty_and_untouched(tmp_path: Path) -> None:
    t = LocalTarget(tmp_path / "nothing")
    assert t.current_revision() is None
    assert t.inventory() == {}
    assert t.revisions() == []
    assert t.read(ResourceKey("acme", "company", "flow", "hello")) is None
    assert not (tmp_path / "nothing").exists()


def test_materialisation_layout(root: Path, target: LocalTarget) -> None:
    target.apply("aaa111", sample(), SECRETS)
    assert os.readlink(root / "current") == "revisions/aaa111"
    assert target.current_revision() == "aaa111"
    assert target.revisions() == ["aaa111"]
    ns = root / "current" / "acme" / "company"
    assert (ns / "flows" / "hello.yaml").read_bytes() == FLOW
    assert (ns / "files" / "scripts" / "etl" / "load.py").read_bytes() == b"print(0)\n"
    assert (ns / "files" / "logo.png").read_bytes().startswith(b"\x89PNG")
    assert (ns / "config.json").read_bytes() == b'{"variables": {"env": "dev"}}\n'
    assert json.loads((ns / "kv.json").read_bytes()) == {
        "region": "eu-west-1",
        "limits": {"cpu": 2, "tags": ["a", "b"]},
    }
    child = root / "current" / "acme" / "company.team"
    assert (child / "flows" / "child.yaml").exists()
    assert (child / "files" / "scripts" / "etl" / "load.py").read_bytes() == b"print(0)\n"
    assert not (child / "kv.json").exists()
    assert not (child / "secrets.env").exists()
    assert stat.S_IMODE((ns / "flows" / "hello.yaml").stat().st_mode) == 0o444
    manifest = json.loads((root / "current" / ".manifest.json").read_bytes())
    assert manifest["revision"] == "aaa111"
    # each tenant folder is a link to its index, whose links lead to the namespaces' spaces
    # (one namespace at one content): both are shared by every revision where they are the same
    assert [row[:2] for row in manifest["namespaces"]] == [["acme", "company"], ["acme", "company.team"]]
    assert [row[0] for row in manifest["tenants"]] == ["acme"]
    index = manifest["tenants"][0][1]
    assert os.readlink(root / "current/acme") == f"../../indexes/{index}"
    assert sorted(p.name for p in (root / "indexes" / index).iterdir()) == ["company", "company.team"]
    for tenant, namespace, space, _digest in manifest["namespaces"]:
        link = root / "indexes" / index / namespace
        assert os.readlink(link) == f"../../spaces/{space}/tree"
        resolved = (root / "current" / tenant / namespace).resolve()
        assert resolved == (root / "spaces" / space / "tree").resolve()
    assert target.manifest() == hashes(sample())


def test_flows_are_byte_identical(target: LocalTarget, root: Path) -> None:
    odd = b"# comment\r\nid: odd   \r\nnamespace: company\r\n\r\n\xe2\x9c\x93 no newline"
    target.apply("r1", state(res("flow", "odd", odd)), {})
    assert (root / "current/acme/company/flows/odd.yaml").read_bytes() == odd


def test_secrets_env_is_private_base64_and_kept_out_of_the_store(
    root: Path, target: LocalTarget
) -> None:
    target.apply("r1", sample(), SECRETS)
    env = root / "current" / "acme" / "company" / "secrets.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env.read_text() == f"SECRET_DB_PASSWORD={base64.b64encode(PASSWORD.encode()).decode()}\n"
    encoded = base64.b64encode(PASSWORD.encode())
    for path in root.rglob("*"):
        if path.is_file() and path.name != "secrets.env":
            data = path.read_bytes()
            assert PASSWORD.encode() not in data and encoded not in data, path
    assert env.stat().st_ino not in {p.stat().st_ino for p in objects(root)}


def test_inventory_and_read_back(target: LocalTarget) -> None:
    desired = sample()
    target.apply("r1", desired, SECRETS)
    inventory = target.inventory()
    assert hashes(inventory) == hashes(desired)
    assert all(r.content is None for r in inventory.values())
    assert inventory[ResourceKey("acme", "company", "file", "logo.png")].binary
    for key, r in desired.items():
        if key.kind in ("flow", "file", "config"):
            assert target.read(key) == r.content
    assert target.read(ResourceKey("acme", "company", "kv", "limits")) == (
        b'{"cpu":2,"tags":["a","b"]}'
    )
    assert target.read(ResourceKey("acme", "company", "secret", "DB_PASSWORD")) is None
    assert target.read(ResourceKey("acme", "company", "flow", "absent")) is None
    assert target.read(ResourceKey("acme", "company", "file", "../../etc/passwd")) is None


def test_second_apply_writes_only_what_changed(root: Path, target: LocalTarget) -> None:
    def many(changed: int) -> State:
        return state(
            *(
                res("file", f"f{i}.txt", f"file {i} {'v2' if i == changed else 'v1'}\n".encode())
                for i in range(50)
            )
        )

    target.apply("r1", many(-1), {})
    before = objects(root)
    target.apply("r2", many(7), {})
    after = objects(root)
    assert len(after - before) == 1
    assert (after - before).pop().read_bytes() == b"file 7 v2\n"
    old = root / "revisions/r1/acme/company/files"
    new = root / "revisions/r2/acme/company/files"
    assert (old / "f3.txt").stat().st_ino == (new / "f3.txt").stat().st_ino
    assert (new / "f3.txt").stat().st_nlink == 3  # the object, r1 and r2
    assert (old / "f7.txt").stat().st_ino != (new / "f7.txt").stat().st_ino


def test_hand_edit_shows_as_drift_only_where_it_happened(root: Path, target: LocalTarget) -> None:
    desired = sample()
    target.apply("r1", desired, SECRETS)
    script = root / "current/acme/company/files/scripts/etl/load.py"
    with open(script, "r+b") as f:  # in place, same size: only the mtime gives it away
        f.write(b"print(9)\n")
    flow_key = ResourceKey("acme", "company", "flow", "hello")
    (root / "current/acme/company/flows/hello.yaml").unlink()
    (root / "current/acme/company/files/extra.txt").write_bytes(b"added by hand\n")

    inventory = target.inventory()
    script_key = ResourceKey("acme", "company", "file", "scripts/etl/load.py")
    extra_key = ResourceKey("acme", "company", "file", "extra.txt")
    assert inventory[script_key].hash == content_hash(b"print(9)\n")
    assert target.read(script_key) == b"print(9)\n"
    assert flow_key not in inventory
    assert inventory[extra_key].hash == content_hash(b"added by hand\n")
    drifted = {k for k in desired if k not in inventory or inventory[k].hash != desired[k].hash}
    # The child namespace's identical (inherited) script shares the inode, so it changed too.
    child_key = ResourceKey("acme", "company.team", "file", "scripts/etl/load.py")
    assert drifted == {script_key, flow_key, child_key}


def test_kv_drift_is_by_value_not_by_formatting(root: Path, target: LocalTarget) -> None:
    desired = sample()
    target.apply("r1", desired, SECRETS)
    kv = root / "current/acme/company/kv.json"
    kv.chmod(0o644)
    values = json.loads(kv.read_bytes())
    kv.write_text(json.dumps(values, separators=(",", ":")))  # reformatted, same values
    assert hashes(target.inventory()) == hashes(desired)
    values["region"] = "us-east-1"
    values["new"] = 1
    kv.write_text(json.dumps(values))
    inventory = target.inventory()
    region = ResourceKey("acme", "company", "kv", "region")
    assert inventory[region].hash == content_hash(b'"us-east-1"')
    assert target.read(region) == b'"us-east-1"'
    assert inventory[ResourceKey("acme", "company", "kv", "new")].hash == content_hash(b"1")
    limits = ResourceKey("acme", "company", "kv", "limits")
    assert inventory[limits].hash == desired[limits].hash


def test_secret_drift(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    key = ResourceKey("acme", "company", "secret", "DB_PASSWORD")
    env = root / "current/acme/company/secrets.env"
    assert target.inventory()[key].hash == secret_hash(HASH_KEY, PASSWORD)
    env.write_text("SECRET_DB_PASSWORD=" + base64.b64encode(b"changed").decode() + "\n")
    assert target.inventory()[key].hash == secret_hash(HASH_KEY, "changed")
    blind = LocalTarget(root, durable=False)  # no hash key: a value edit cannot be seen
    assert blind.inventory()[key].hash == secret_hash(HASH_KEY, PASSWORD)
    env.chmod(0o644)
    assert target.inventory()[key].hash == "hmac:exposed"
    env.unlink()
    assert key not in target.inventory()


def test_apply_restores_drift_by_rematerialising(root: Path, target: LocalTarget) -> None:
    desired = sample()
    target.apply("r1", desired, SECRETS)
    (root / "current/acme/company/config.json").write_bytes(b"{}")
    target.apply("r1", desired, SECRETS)
    assert os.readlink(root / "current") == "revisions/r1.1"
    assert target.current_revision() == "r1"
    assert target.revisions() == ["r1"]
    assert hashes(target.inventory()) == hashes(desired)
    assert (root / "current/acme/company/config.json").read_bytes() == (
        b'{"variables": {"env": "dev"}}\n'
    )


def test_store_corrupted_through_a_hard_link_is_repaired(root: Path, target: LocalTarget) -> None:
    desired = sample()
    target.apply("r1", desired, SECRETS)
    flow = root / "current/acme/company/flows/hello.yaml"
    obj = next(p for p in objects(root) if p.stat().st_ino == flow.stat().st_ino)
    with open(flow, "r+b") as f:  # edits the shared object too
        f.write(b"ID")
    assert obj.read_bytes() != FLOW
    target.apply("r2", desired, SECRETS)
    assert (root / "current/acme/company/flows/hello.yaml").read_bytes() == FLOW
    for p in objects(root):
        assert "sha256:" + p.name == content_hash(p.read_bytes()), p
    assert hashes(target.inventory()) == hashes(desired)


@pytest.mark.parametrize(
    ("kind", "name", "tenant", "namespace"),
    [
        ("file", "../escape.txt", "acme", "company"),
        ("file", "a/../../escape.txt", "acme", "company"),
        ("file", "/etc/passwd", "acme", "company"),
        ("file", "a//b", "acme", "company"),
        ("file", "./a", "acme", "company"),
        ("file", "a/", "acme", "company"),
        ("file", "", "acme", "company"),
        ("file", "a\x00b", "acme", "company"),
        ("file", "x" * 256, "acme", "company"),
        ("flow", "../../../escape", "acme", "company"),
        ("flow", "a/b", "acme", "company"),
        ("flow", "..", "acme", "company"),
        ("file", "ok.txt", "..", "company"),
        ("file", "ok.txt", ".manifest.json", "company"),
        ("file", "ok.txt", "acme/../..", "company"),
        ("file", "ok.txt", "acme", ".."),
        ("file", "ok.txt", "acme", "a/b"),
        ("config", "other", "acme", "company"),
        ("kv", "", "acme", "company"),
    ],
)
def test_unsafe_names_are_refused(
    root: Path, target: LocalTarget, kind: Kind, name: str, tenant: str, namespace: str
) -> None:
    target.apply("good", sample(), SECRETS)
    bad = make(tenant, namespace, kind, name, b'"x"')
    with pytest.raises(TargetError):
        target.apply("bad", {**sample(), bad.key: bad}, SECRETS)
    assert target.current_revision() == "good"
    assert sorted(p.name for p in root.parent.iterdir()) == ["instance"]
    assert debris(root) == []


@pytest.mark.parametrize("name", ["DB-PASSWORD", "../X", "1ABC", "A B"])
def test_unsafe_secret_names_are_refused(target: LocalTarget, name: str) -> None:
    with pytest.raises(TargetError, match="secret name"):
        target.apply("r1", state(secret(name, "v")), {("acme", "company"): {name: "v"}})


def test_bad_desired_states_are_refused(target: LocalTarget) -> None:
    with pytest.raises(TargetError, match="no value for secret DB_PASSWORD"):
        target.apply("r1", sample(), {})
    wrong = Resource(ResourceKey("acme", "company", "flow", "f"), content_hash(b"a"), b"b")
    with pytest.raises(TargetError, match="does not match its hash"):
        target.apply("r1", state(wrong), {})
    with pytest.raises(TargetError, match="no content"):
        target.apply("r1", state(Resource(wrong.key, wrong.hash)), {})
    for content in (b"{not json", b"NaN", b"\xff"):
        with pytest.raises(TargetError, match="not JSON"):
            target.apply("r1", state(res("kv", "k", content)), {})
    clash = state(res("file", "a", b"1"), res("file", "a/b", b"2"))
    with pytest.raises(TargetError, match="both a file and a folder"):
        target.apply("r1", clash, {})
    for revision in ("../x", "", "a.b", "a/b"):
        with pytest.raises(TargetError, match="invalid revision"):
            target.apply(revision, sample(), SECRETS)
    assert target.current_revision() is None


def test_symlinks_placed_by_hand_are_not_followed(
    tmp_path: Path, root: Path, target: LocalTarget
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"private data\n")
    target.apply("r1", sample(), SECRETS)
    script = root / "current/acme/company/files/scripts/etl/load.py"
    script.unlink()
    script.symlink_to(outside)
    folder = root / "current/acme/company.team/files/scripts"
    os.rename(folder, tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved")
    key = ResourceKey("acme", "company", "file", "scripts/etl/load.py")
    child_key = ResourceKey("acme", "company.team", "file", "scripts/etl/load.py")
    inventory = target.inventory()
    assert key not in inventory and child_key not in inventory
    assert target.read(key) is None and target.read(child_key) is None


def test_a_failed_apply_leaves_the_instance_as_it_was(
    root: Path, target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.apply("r1", sample(0), SECRETS)
    fail_link_number(4, monkeypatch)
    with pytest.raises(TargetError, match="No space left") as info:
        target.apply("r2", sample(1), SECRETS)
    assert info.value.hint and "unchanged" in info.value.hint

    def failing_replace(*args: Any, **kw: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(TargetError):
        target.apply("r2", sample(1), SECRETS)
    monkeypatch.undo()
    assert target.current_revision() == "r1"
    assert hashes(target.inventory()) == hashes(sample(0))
    target.apply("r3", sample(1), SECRETS)
    assert debris(root) == []


def test_readers_always_see_a_complete_revision(root: Path) -> None:
    writer = LocalTarget(root, keep=100, durable=False)
    versions = {f"r{i}": sample(i) for i in range(25)}
    writer.apply("r0", versions["r0"], SECRETS)
    problems: list[str] = []
    done = threading.Event()

    def read_continuously() -> None:
        reader = LocalTarget(root, durable=False)
        while not done.is_set():
            revision = reader.current_revision()
            if revision is None:
                problems.append("no current revision")
            try:
                got = hashes(reader.inventory())
            except Exception as e:  # pragma: no cover - reported below
                problems.append(repr(e))
                continue
            expected = [hashes(v) for v in versions.values()]
            if got not in expected:
                problems.append(f"incomplete view near {revision}")

    readers = [threading.Thread(target=read_continuously) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for name, desired in list(versions.items())[1:]:
            writer.apply(name, desired, SECRETS)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert problems == []
    assert writer.current_revision() == "r24"


def test_pruning_keeps_n_and_never_current_or_previous(root: Path) -> None:
    target = LocalTarget(root, keep=3, durable=False)
    for i in range(6):
        target.apply(f"r{i}", sample(i), SECRETS)
    assert target.revisions() == ["r5", "r4", "r3"]
    assert sorted(p.name for p in (root / "revisions").iterdir()) == ["r3", "r4", "r5"]
    for p in objects(root):
        assert p.stat().st_nlink >= 2, "objects no revision uses are collected"
    one = LocalTarget(root, keep=1, durable=False)
    one.activate("r3")
    one.apply("r6", sample(6), SECRETS)
    assert os.readlink(root / "previous") == "revisions/r3"
    assert one.revisions() == ["r6", "r3"]


def test_prune_later_leaves_old_revisions_to_prune(root: Path) -> None:
    target = LocalTarget(root, keep=2, durable=False, prune_later=True)
    for i in range(5):
        target.apply(f"r{i}", sample(i), SECRETS)
    assert len(target.revisions()) == 5  # none pruned by the applies
    target.prune()
    assert target.revisions() == ["r4", "r3"]
    for p in objects(root):
        assert p.stat().st_nlink >= 2, "objects only the pruned revisions used are collected"
    assert hashes(target.inventory()) == hashes(sample(4))
    assert not (root / ".writing").exists()


def test_a_prune_that_fails_leaves_the_mark_and_the_next_writer_finishes_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = LocalTarget(root, keep=1, durable=False)
    for i in range(2):
        target.apply(f"r{i}", sample(i), SECRETS)
    real = shutil.rmtree
    failed: list[str] = []

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if ".tmp-prune-" in str(path) and not failed:
            failed.append(str(path))
            raise OSError(5, "Input/output error")
        real(path, *args, **kwargs)

    monkeypatch.setattr("headwater.targets.local.shutil.rmtree", rmtree)
    target.apply("r2", sample(2), SECRETS)  # prunes r0, whose folder cannot be removed
    assert failed and (root / ".writing").exists()
    assert debris(root) != []
    monkeypatch.undo()
    target.apply("r3", sample(3), SECRETS)
    assert debris(root) == [] and not (root / ".writing").exists()
    assert target.revisions() == ["r3", "r2"]
    for p in objects(root):
        assert p.stat().st_nlink >= 2, "what only the pruned revisions used is collected"


def test_activate_cleans_up_after_a_dead_writer(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(1), SECRETS)
    target.apply("r2", sample(2), SECRETS)
    (root / "spaces/.tmp-left-by-a-dead-writer").mkdir()
    (root / "spaces" / ("0" * 32)).mkdir()  # a space no revision uses
    (root / ".writing").touch()
    target.activate("r1")
    assert target.current_revision() == "r1"
    assert debris(root) == [] and not (root / "spaces" / ("0" * 32)).exists()
    assert not (root / ".writing").exists()


def test_prune_while_another_writer_works_does_nothing(root: Path) -> None:
    target = LocalTarget(root, keep=1, durable=False, prune_later=True)
    for i in range(3):
        target.apply(f"r{i}", sample(i), SECRETS)
    fd = os.open(root / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        target.prune()  # does not wait
        assert len(target.revisions()) == 3
    finally:
        os.close(fd)
    target.prune()
    assert target.revisions() == ["r2", "r1"]


def test_activate_is_a_fast_rollback(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(1), SECRETS)
    target.apply("r2", sample(2), SECRETS)
    target.activate("r1")
    assert target.current_revision() == "r1"
    assert os.readlink(root / "previous") == "revisions/r2"
    assert hashes(target.inventory()) == hashes(sample(1))
    target.activate("r1")  # already there
    with pytest.raises(TargetError, match="no longer materialised"):
        target.activate("r0")
    (root / "revisions/r2/acme/company/config.json").unlink()
    with pytest.raises(TargetError, match="modified on disk"):
        target.activate("r2")
    assert target.current_revision() == "r1"


def test_debris_is_removed_on_open_and_on_apply(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    (root / "revisions/.tmp-r2-0123").mkdir()
    (root / "revisions/.tmp-r2-0123/half.txt").write_bytes(b"x")
    (root / "current.tmp-abcd").symlink_to("revisions/.tmp-r2-0123")
    (root / "objects/.tmp-beef").write_bytes(b"partial")
    orphan = root / "objects/ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"linked by nothing")
    LocalTarget(root)
    assert debris(root) == []
    assert not orphan.exists()
    assert target.current_revision() == "r1"
    # A writer that dies at work leaves its mark: the next writer looks for its debris.
    (root / "previous.tmp-1").symlink_to("revisions/r1")
    (root / ".writing").touch()
    target.apply("r2", sample(2), SECRETS)
    assert debris(root) == []
    assert not (root / ".writing").exists()


def test_a_writer_that_fails_leaves_its_mark_and_the_next_one_cleans_up(
    root: Path, target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.apply("r1", sample(), SECRETS)
    assert not (root / ".writing").exists()  # a clean apply takes its mark away

    def publish(dirname: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target, "_publish", publish)
    with pytest.raises(TargetError, match="No space left"):
        target.apply("r2", sample(2), SECRETS)
    assert (root / ".writing").exists()
    monkeypatch.undo()
    (root / "spaces/.tmp-left-by-a-dead-writer").mkdir()
    target.apply("r2", sample(2), SECRETS)
    assert debris(root) == []
    assert not (root / ".writing").exists()
    assert target.current_revision() == "r2"


def test_a_concurrent_writer_is_refused(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    fd = os.open(root / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        busy = LocalTarget(root, lock_timeout=0.1, durable=False)
        with pytest.raises(TargetError, match="another process"):
            busy.apply("r2", sample(2), SECRETS)
    finally:
        os.close(fd)
    assert target.current_revision() == "r1"


def test_a_lost_manifest_is_reported_and_repaired(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    (root / "current" / ".manifest.json").unlink()
    with pytest.raises(TargetError, match="lost its manifest"):
        target.inventory()
    with pytest.raises(TargetError, match="lost its manifest"):
        target.manifest()
    target.apply("r1", sample(), SECRETS)
    assert hashes(target.inventory()) == hashes(sample())


def test_durable_apply(root: Path) -> None:
    target = LocalTarget(root, keep=2)
    target.apply("r1", sample(), SECRETS)
    assert hashes(target.inventory()) == hashes(sample())


# -- crash safety -------------------------------------------------------------------------

BUILDER = r"""
from headwater.resources import Resource, ResourceKey, make, secret_hash

def build(version):
    desired = {}
    for i in range(300):
        v = version if i % 4 == 0 else 0
        body = f"file {i} version {v}\n".encode() * 40
        r = make("acme", f"company.ns{i % 10}", "file", f"d{i % 7}/f{i}.txt", body)
        desired[r.key] = r
    for n in range(10):
        ns = f"company.ns{n}"
        for r in (
            make("acme", ns, "flow", f"flow{n}", f"id: flow{n}\n# {version}\n".encode()),
            make("acme", ns, "config", "config", b'{"variables": {}}'),
            make("acme", ns, "kv", "version", str(version).encode()),
        ):
            desired[r.key] = r
        k = ResourceKey("acme", ns, "secret", "TOKEN")
        desired[k] = Resource(k, secret_hash(b"k" * 32, f"token-{version}"))
    for n in range(3):  # a tenant that never changes: its index is shared
        r = make("globex", f"team{n}", "flow", "hello", f"id: hello\n# {n}\n".encode())
        desired[r.key] = r
    secrets = {("acme", f"company.ns{n}"): {"TOKEN": f"token-{version}"} for n in range(10)}
    return desired, secrets
"""

DRIVER = (
    BUILDER
    + r"""
import sys, time
from headwater.state import StateStore
from headwater.targets.local import LocalTarget

root, db, revision, version = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
desired, secrets = build(version)
target = LocalTarget(root, keep=3)
store = StateStore(db)
try:
    with store.lock("dev", owner="test:driver", ttl=120):
        store.reconcile("dev", target.current_revision(), target.manifest())
        print("go", flush=True)
        started = time.monotonic()
        store.begin_apply("dev", revision, trigger="test:driver")
        target.apply(revision, desired, secrets)
        store.finish_apply("dev", revision, target.manifest(), {"resources": len(desired)},
                           "test:driver")
        print("done", time.monotonic() - started, flush=True)
finally:
    store.close()
"""
)


def start_driver(root: Path, db: Path, revision: str, version: int) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", DRIVER, str(root), str(db), revision, str(version)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "go\n":
        _, err = proc.communicate()
        raise AssertionError(f"driver failed to start: {line!r} {err}")
    return proc


def run_driver(root: Path, db: Path, revision: str, version: int) -> float:
    proc = start_driver(root, db, revision, version)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return float(out.split()[1])


@pytest.mark.slow
def test_sigkill_at_random_instants_leaves_old_or_new(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    exec(BUILDER, namespace)
    build = namespace["build"]
    root, db = tmp_path / "instance", tmp_path / "state.db"
    revision = [hashlib.sha1(str(v).encode()).hexdigest() for v in range(100)]
    expected = {revision[v]: hashes(build(v)[0]) for v in range(100)}

    run_driver(root, db, revision[0], 0)
    # Apply times vary a lot on a busy machine: draw kill instants over the 90th percentile of
    # the full applies seen so far (plus a margin), so they span the whole apply.
    durations = [run_driver(root, db, revision[v], v) for v in (1, 2, 3)]
    rng = random.Random(20240611)
    old, outcomes, reconciled = revision[3], {"old": 0, "new": 0}, set()
    for attempt in range(52):
        version = attempt + 4
        new = revision[version]
        span = sorted(durations)[int(len(durations) * 0.9)] * 1.3
        proc = start_driver(root, db, new, version)
        time.sleep(rng.uniform(0, span))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()

        target = LocalTarget(root)  # opening removes the debris
        assert debris(root) == [], attempt
        assert (indexes(root), spaces(root)) == referenced(root), attempt  # nothing left over
        current = target.current_revision()
        assert current in (old, new), attempt
        outcomes["old" if current == old else "new"] += 1
        manifest = target.manifest()
        assert manifest == expected[current], attempt
        assert hashes(target.inventory()) == manifest, attempt  # the files match the manifest
        with StateStore(db) as store:
            reconciled.add(store.reconcile("dev", current, manifest))
            now = store.get("dev")
            assert now.applied_revision == current and now.pending_revision is None, attempt
            assert store.inventory("dev") == manifest, attempt

        durations.append(run_driver(root, db, new, version))  # the next apply converges
        assert LocalTarget(root).current_revision() == new
        assert debris(root) == [], attempt
        old = new
    assert outcomes["old"] > 0 and outcomes["new"] > 0, (outcomes, reconciled)
    assert reconciled <= {"clean", "completed", "dropped"}, reconciled
    assert len(list((root / "revisions").iterdir())) <= 5
    with StateStore(db) as store:
        assert store.get("dev").applied_revision == old
        assert store.lock_holder("dev") is None


# -- namespace folders shared between revisions --------------------------------------------------


def spaces(root: Path) -> set[str]:
    return {p.name for p in (root / "spaces").iterdir()}


def test_unchanged_namespaces_are_shared_with_the_previous_revision(
    root: Path, target: LocalTarget
) -> None:
    first = sample()
    target.apply("r1", first, SECRETS)
    before = spaces(root)
    flow = res("flow", "child", b"id: child\nnamespace: company.team\n# v2\n", ns="company.team")
    target.apply("r2", {**first, flow.key: flow}, SECRETS)
    assert len(spaces(root) - before) == 1  # only company.team was written again
    r1, r2 = root / "revisions/r1/acme", root / "revisions/r2/acme"
    assert os.readlink(r1 / "company") == os.readlink(r2 / "company")
    assert os.readlink(r1 / "company.team") != os.readlink(r2 / "company.team")
    assert (r1 / "company.team/flows/child.yaml").read_bytes() == b"id: child\nnamespace: company.team\n"
    assert hashes(target.inventory()) == hashes({**first, flow.key: flow})


def test_a_namespace_changed_by_hand_is_not_shared(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    (root / "current/acme/company/files/extra.txt").write_bytes(b"by hand\n")
    target.apply("r2", sample(), SECRETS)
    assert not (root / "current/acme/company/files/extra.txt").exists()
    assert (root / "previous/acme/company/files/extra.txt").exists()
    assert os.readlink(root / "previous/acme/company.team") == os.readlink(
        root / "current/acme/company.team"
    )
    assert hashes(target.inventory()) == hashes(sample())


def test_a_namespace_link_replaced_by_hand_is_not_followed(
    tmp_path: Path, root: Path, target: LocalTarget
) -> None:
    target.apply("r1", sample(), SECRETS)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "flows").mkdir(parents=True)
    (elsewhere / "flows/hello.yaml").write_bytes(FLOW)
    link = root / "current/acme/company"
    link.unlink()
    link.symlink_to(elsewhere)
    inventory = target.inventory()
    assert not any(k.namespace == "company" for k in inventory)
    assert target.read(ResourceKey("acme", "company", "flow", "hello")) is None
    target.apply("r2", sample(), SECRETS)
    assert hashes(target.inventory()) == hashes(sample())
    # the link was replaced inside r1's index: r2 has an index of its own, r1 keeps the edit
    assert os.readlink(root / "current/acme") == os.readlink(root / "previous/acme") + ".1"
    assert os.readlink(root / "previous/acme/company") == str(elsewhere)
    with pytest.raises(TargetError, match=r"modified on disk \(acme/company\)"):
        target.activate("r1")


def test_spaces_no_revision_uses_are_collected(root: Path) -> None:
    target = LocalTarget(root, keep=1, durable=False)
    for i in range(4):
        target.apply(f"r{i}", sample(i), SECRETS)
    used = {os.readlink(p).split("/")[3] for d in ("current", "previous")
            for p in (root / d / "acme").iterdir()}
    assert spaces(root) == used


# -- applying only the namespaces that changed ----------------------------------------------------


def wide(version: int = 0, changed: str = "team3") -> State:
    """Twelve namespaces in two tenants; ``changed`` holds ``version``, the others do not."""
    result: State = {}
    for tenant in ("acme", "globex"):
        for n in range(6):
            ns = f"team{n}"
            v = version if ns == changed and tenant == "acme" else 0
            for r in (
                res("flow", "hello", f"id: hello\nnamespace: {ns}\n# {v}\n".encode(), ns, tenant),
                res("file", "lib/a.py", f"print({n})\n".encode(), ns, tenant),  # shared
                res("file", "lib/b.py", f"print('{tenant} {ns} {v}')\n".encode(), ns, tenant),
                res("kv", "size", str(n).encode(), ns, tenant),
            ):
                result[r.key] = r
    return result


def by_namespace(s: State, *namespaces: tuple[str, str]) -> dict[tuple[str, str], State]:
    """What ``apply_namespaces`` is given for ``namespaces`` out of a whole desired state."""
    return {ns: {k: r for k, r in s.items() if (k.tenant, k.namespace) == ns} for ns in namespaces}


def space_of(root: Path, revision: str, tenant: str, namespace: str) -> str:
    return os.readlink(root / "revisions" / revision / tenant / namespace).split("/")[-2]


def test_applying_the_changed_namespaces_equals_a_full_apply(tmp_path: Path) -> None:
    incremental = LocalTarget(tmp_path / "a", keep=1, durable=False)
    full = LocalTarget(tmp_path / "b", keep=1, durable=False)
    old = wide(0)
    new = {**wide(1), **sample()}  # team3 changes, acme/company and company.team are new
    del new[ResourceKey("globex", "team5", "file", "lib/a.py")]
    for target in (incremental, full):
        target.apply("r1", old, SECRETS)
    changed = [("acme", "team3"), ("acme", "company"), ("acme", "company.team"), ("globex", "team5")]
    incremental.apply_namespaces("r2", "r1", by_namespace(new, *changed), SECRETS)
    full.apply("r2", new, SECRETS)
    assert incremental.current_revision() == "r2"
    assert incremental.manifest() == full.manifest() == hashes(new)
    assert hashes(incremental.inventory()) == hashes(full.inventory()) == hashes(new)
    assert (tmp_path / "a/current/acme/company/secrets.env").read_bytes() == (
        tmp_path / "b/current/acme/company/secrets.env"
    ).read_bytes()
    a = json.loads((tmp_path / "a/current/.manifest.json").read_bytes())
    b = json.loads((tmp_path / "b/current/.manifest.json").read_bytes())
    assert a == b
    root = tmp_path / "a"
    for tenant in ("acme", "globex"):  # the namespaces it was not given share their folder
        for n in range(5):
            if (tenant, f"team{n}") not in changed:
                assert space_of(root, "r1", tenant, f"team{n}") == space_of(root, "r2", tenant, f"team{n}")
    assert space_of(root, "r1", "acme", "team3") != space_of(root, "r2", "acme", "team3")
    assert debris(root) == []


def test_applying_an_empty_namespace_removes_it(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    target.apply_namespaces("r2", "r1", {("acme", "company.team"): {}, ("acme", "gone"): {}}, SECRETS)
    expected = {k: r for k, r in sample().items() if k.namespace != "company.team"}
    assert target.manifest() == hashes(expected)
    assert hashes(target.inventory()) == hashes(expected)
    assert not (root / "current/acme/company.team").exists()
    assert (root / "previous/acme/company.team/flows/child.yaml").exists()
    assert os.readlink(root / "current/acme/company") == os.readlink(root / "previous/acme/company")
    target.apply_namespaces("r3", "r2", {("acme", "company"): {}}, SECRETS)
    assert target.manifest() == {}
    assert sorted(p.name for p in (root / "current").iterdir()) == [".manifest.json", ".revision.json"]


def test_applying_namespaces_on_a_moved_base_is_refused(root: Path, target: LocalTarget) -> None:
    changed = by_namespace(sample(1), ("acme", "company"))
    with pytest.raises(BaseMoved):
        target.apply_namespaces("r1", "r0", changed, SECRETS)  # nothing applied yet
    target.apply("r1", sample(), SECRETS)
    target.apply("r2", sample(2), SECRETS)
    with pytest.raises(BaseMoved, match="no longer at r1") as info:
        target.apply_namespaces("r3", "r1", changed, SECRETS)
    assert isinstance(info.value, TargetError) and info.value.hint
    assert not (root / ".writing").exists()  # refused before writing anything: no mark left
    assert target.current_revision() == "r2" and target.revisions() == ["r2", "r1"]
    assert hashes(target.inventory()) == hashes(sample(2))
    (root / "current" / ".manifest.json").unlink()
    with pytest.raises(BaseMoved, match="lost its manifest"):
        target.apply_namespaces("r3", "r2", changed, SECRETS)
    assert debris(root) == []
    with pytest.raises(TargetError, match=r"under acme/company\.team"):
        target.apply_namespaces("r3", "r2", {("acme", "company.team"): sample()}, SECRETS)


def test_a_failed_namespace_apply_leaves_the_instance_as_it_was(
    root: Path, target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.apply("r1", wide(0), {})
    before = (spaces(root), objects(root), os.readlink(root / "current"))
    calls = fail_link_number(2, monkeypatch)
    changed = by_namespace(wide(1), ("acme", "team3"))
    with pytest.raises(TargetError, match="No space left") as info:
        target.apply_namespaces("r2", "r1", changed, {})
    assert info.value.hint and "unchanged" in info.value.hint
    assert len(calls) == 2
    monkeypatch.undo()
    assert (spaces(root), objects(root), os.readlink(root / "current")) == before
    assert debris(root) == []
    assert target.revisions() == ["r1"]
    assert hashes(target.inventory()) == hashes(wide(0))
    target.apply_namespaces("r2", "r1", changed, {})
    assert hashes(target.inventory()) == hashes(wide(1))


def test_namespaces_not_given_are_not_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    LocalTarget(root, keep=1, durable=False).apply("r0", wide(0, changed="team1"), {})
    LocalTarget(root, keep=1, durable=False).apply("r1", wide(1, changed="team1"), {})
    target = LocalTarget(root, keep=1, durable=False)  # nothing cached: as a new process
    given = [("acme", "team3"), ("acme", "team4")]  # team4 given, but unchanged
    untouched = {
        (tenant, f"team{n}") for tenant in ("acme", "globex") for n in range(6)
    } - set(given)
    untouched_spaces = {space_of(root, "r1", *ns) for ns in untouched}
    # the links of r1 are not read: its tenant links, and its indexes (even acme's, rewritten)
    untouched_links = {f"revisions/r1/{t}" for t in ("acme", "globex")} | {
        f"indexes/{os.readlink(root / 'revisions/r1' / t).split('/')[-1]}" for t in ("acme", "globex")
    }
    looked_at: list[str] = []
    touched: list[str] = []

    def counting(real: Any) -> Any:
        def wrapper(tree: str, *args: Any) -> Any:
            looked_at.append(tree)
            return real(tree, *args)

        return wrapper

    def spying(real: Any) -> Any:
        def wrapper(path: Any, *args: Any, **kw: Any) -> Any:
            if isinstance(path, (str, os.PathLike)):
                text = os.fspath(path)
                if any(f"spaces/{sid}" in text for sid in untouched_spaces) or any(
                    text.endswith(link) or f"{link}/" in text for link in untouched_links
                ):
                    touched.append(f"{real.__name__} {text}")
                if real.__name__ == "scandir" and "/objects/" in text:
                    touched.append(f"scandir {text}")  # the whole store of objects
            return real(path, *args, **kw)

        return wrapper

    import headwater.targets.local as local

    monkeypatch.setattr(local, "is_clean", counting(local.is_clean))
    monkeypatch.setattr(local, "read_back", counting(local.read_back))
    for name in ("stat", "lstat", "readlink", "scandir", "open", "rename", "unlink", "listdir"):
        monkeypatch.setattr(os, name, spying(getattr(os, name)))
    changes = by_namespace(wide(2), *given)
    target.apply_namespaces("r2", "r1", changes, {})
    monkeypatch.undo()
    team4 = space_of(root, "r1", "acme", "team4")
    assert looked_at == [str(root / "spaces" / team4 / "tree")]  # to share it, as apply does
    assert touched == []
    assert space_of(root, "r2", "acme", "team4") == team4
    assert target.revisions() == ["r2", "r1"]  # r0 was pruned, and its own spaces collected
    assert spaces(root) == {space_of(root, r, *ns) for r in ("r1", "r2") for ns in untouched | set(given)}
    assert all(p.stat().st_nlink >= 2 for p in objects(root)), "objects only r0 used are collected"
    expected = {**wide(1, changed="team1"), **changes[("acme", "team3")]}
    assert hashes(target.inventory()) == hashes(expected)


def test_a_revision_that_lost_its_manifest_keeps_its_spaces(root: Path) -> None:
    target = LocalTarget(root, keep=1, durable=False)
    target.apply("r1", sample(1), SECRETS)
    extra = res("flow", "extra", b"id: extra\nnamespace: company\n")
    target.apply("r2", {**sample(1), extra.key: extra}, SECRETS)  # company.team is shared
    (root / "revisions/r2/.manifest.json").unlink()
    target.apply("r3", sample(3), SECRETS)  # prunes r1; r2 is the previous revision
    assert target.revisions() == ["r3", "r2"]
    team = root / "previous/acme/company.team"
    assert (team / "flows/child.yaml").read_bytes() == b"id: child\nnamespace: company.team\n"
    assert (team / "files/scripts/etl/load.py").read_bytes() == b"print(1)\n"
    assert (root / "previous/acme/company/flows/extra.yaml").exists()


def test_an_apply_that_finds_a_dead_writers_mark_collects_everything(root: Path, target: LocalTarget) -> None:
    target.apply("r1", sample(), SECRETS)
    orphan = root / "objects/ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"linked by nothing")
    (root / "spaces" / ("0" * 32)).mkdir()  # a space no revision uses
    (root / "spaces/.tmp-0123").mkdir()
    (root / "indexes" / ("0" * 32)).mkdir()  # an index no revision uses
    (root / "indexes" / ("0" * 32) / "company").symlink_to("../../spaces/" + "0" * 32 + "/tree")
    (root / ".writing").touch()  # the mark of the writer that died leaving all that
    target.apply("r2", sample(2), SECRETS)  # prunes nothing (keep=3), but found the mark
    assert debris(root) == []
    assert not orphan.exists()
    assert "0" * 32 not in spaces(root)
    assert "0" * 32 not in indexes(root)


# -- tenant indexes shared between revisions ------------------------------------------------------


def indexes(root: Path) -> set[str]:
    return {p.name for p in (root / "indexes").iterdir()}


def index_of(root: Path, revision: str, tenant: str) -> str:
    return os.readlink(root / "revisions" / revision / tenant).split("/")[-1]


def referenced(root: Path) -> tuple[set[str], set[str]]:
    """The indexes and spaces the revision folders' manifests name."""
    found: tuple[set[str], set[str]] = (set(), set())
    for rev in (root / "revisions").iterdir():
        manifest = json.loads((rev / ".manifest.json").read_bytes())
        found[0].update(iid for _, iid in manifest.get("tenants", []))
        found[1].update(row[2] for row in manifest["namespaces"])
    return found


def test_an_unchanged_tenant_shares_its_index(tmp_path: Path) -> None:
    incremental = LocalTarget(tmp_path / "a", keep=3, durable=False)
    full = LocalTarget(tmp_path / "b", keep=3, durable=False)
    for target in (incremental, full):
        target.apply("r1", wide(0), {})
    incremental.apply_namespaces("r2", "r1", by_namespace(wide(1), ("acme", "team3")), {})
    full.apply("r2", wide(1), {})
    for root in (tmp_path / "a", tmp_path / "b"):
        r1, r2 = root / "revisions/r1", root / "revisions/r2"
        assert os.readlink(r1 / "globex") == os.readlink(r2 / "globex")  # the same text
        assert os.readlink(r1 / "acme") != os.readlink(r2 / "acme")
        assert len(indexes(root)) == 3
        assert os.readlink(r1 / "acme/team0") == os.readlink(r2 / "acme/team0")  # same space
        assert os.readlink(r1 / "acme/team3") != os.readlink(r2 / "acme/team3")
    assert indexes(tmp_path / "a") == indexes(tmp_path / "b")  # named after what they hold
    # back to the first content: its index (checked intact first) serves again
    incremental.apply_namespaces("r3", "r2", by_namespace(wide(0), ("acme", "team3")), {})
    full.apply("r3", wide(0), {})
    for root in (tmp_path / "a", tmp_path / "b"):
        assert index_of(root, "r3", "acme") == index_of(root, "r1", "acme")
        assert len(indexes(root)) == 3


def test_applying_one_namespace_creates_the_links_of_its_tenant_only(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def many(version: int) -> State:
        """Five tenants of 30 namespaces; acme/team7 holds ``version``."""
        result: State = {}
        for tenant in ("acme", "globex", "initech", "hooli", "umbrella"):
            for n in range(30):
                v = version if (tenant, n) == ("acme", 7) else 0
                r = res("flow", "hello", f"id: hello\n# {tenant} {n} {v}\n".encode(), f"team{n}", tenant)
                result[r.key] = r
        return result

    target = LocalTarget(root, keep=1, durable=False)
    target.apply("r1", many(0), {})
    target.apply("r2", many(1), {})
    made: list[str] = []
    linked: list[str] = []

    def counting(real: Any, into: list[str]) -> Any:
        def wrapper(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            real(src, dst, *args, **kw)
            into.append(os.fspath(dst))  # made: a link whose target was missing is not

        return wrapper

    monkeypatch.setattr(os, "symlink", counting(os.symlink, made))
    monkeypatch.setattr(os, "link", counting(os.link, linked))
    target.apply_namespaces("r3", "r2", by_namespace(many(2), ("acme", "team7")), {})
    monkeypatch.undo()
    # 5 tenant links, the temporary current and previous links, the new space's own link
    assert len(made) <= 8, made
    assert not any("/indexes/" in m for m in made)
    # acme's new index: 30 hard links of its spaces' own links
    assert sum("/indexes/" in m for m in linked) == 30
    new_index = root / "indexes" / index_of(root, "r3", "acme")
    for entry in new_index.iterdir():
        own = root / "spaces" / space_of(root, "r3", "acme", entry.name) / "link"
        assert os.path.samestat(entry.lstat(), own.lstat())
        assert os.readlink(entry) == os.readlink(own)
        assert entry.resolve() == (own.parent / "tree").resolve()
    assert hashes(target.inventory()) == hashes(many(2))
    assert target.revisions() == ["r3", "r2"]


def test_spaces_written_without_their_own_link_get_one_when_an_index_needs_it(root: Path) -> None:
    target = LocalTarget(root, keep=2, durable=False)
    target.apply("r1", wide(1), {})
    for link in (root / "spaces").glob("*/link"):
        link.unlink()  # as an instance written before spaces had their own link
    target.apply_namespaces("r2", "r1", by_namespace(wide(2), ("acme", "team3")), {})
    index = root / "indexes" / index_of(root, "r2", "acme")
    entries = list(index.iterdir())
    assert entries
    for entry in entries:
        own = root / "spaces" / space_of(root, "r2", "acme", entry.name) / "link"
        assert os.path.samestat(entry.lstat(), own.lstat())
    assert hashes(target.inventory()) == hashes(wide(2))


def test_indexes_no_revision_uses_are_collected(root: Path) -> None:
    target = LocalTarget(root, keep=1, durable=False)
    target.apply("r1", wide(1), {})
    for i in (2, 3, 4):
        target.apply_namespaces(f"r{i}", f"r{i - 1}", by_namespace(wide(i), ("acme", "team3")), {})
    assert target.revisions() == ["r4", "r3"]
    used = {index_of(root, r, t) for r in ("r4", "r3") for t in ("acme", "globex")}
    assert indexes(root) == used and len(used) == 3  # globex's is shared
    assert (indexes(root), spaces(root)) == referenced(root)
    target.apply("r5", {}, {})  # nothing left: a revision without tenants
    target.apply("r6", {}, {})
    assert indexes(root) == set() and spaces(root) == set()
    assert sorted(p.name for p in (root / "current").iterdir()) == [".manifest.json", ".revision.json"]


def test_a_folder_made_by_hand_in_an_index(root: Path, target: LocalTarget) -> None:
    target.apply("r1", wide(0), {})
    target.apply_namespaces("r2", "r1", {("globex", "team5"): {}}, {})
    second = {k: r for k, r in wide(0).items() if (k.tenant, k.namespace) != ("globex", "team5")}
    shared = index_of(root, "r2", "acme")
    assert shared == index_of(root, "r1", "acme")
    extra = root / "current/acme/byhand"  # inside the index r1 and r2 share
    (extra / "flows").mkdir(parents=True)
    (extra / "flows/made.yaml").write_bytes(b"id: made\n")
    made = ResourceKey("acme", "byhand", "flow", "made")
    # the current revision reports it as unmanaged (the plan deletes it) and reads it
    assert target.inventory()[made].hash == content_hash(b"id: made\n")
    assert target.read(made) == b"id: made\n"
    # a revision sharing the index holds it too: activating one is refused
    with pytest.raises(TargetError, match=r"modified on disk \(acme/byhand\)"):
        target.activate("r1")
    # an incremental apply reaching the tenant writes the tenant's index anew, without it
    target.apply_namespaces("r3", "r2", by_namespace(wide(2), ("acme", "team3")), {})
    assert made not in target.inventory()
    assert not (root / "current/acme/byhand").exists()
    # a full apply never shares an index holding more than its links (r2's content again)
    target.apply("r4", second, {})
    assert index_of(root, "r4", "acme") == f"{shared}.1"
    assert hashes(target.inventory()) == hashes(second)


def test_a_tenant_link_replaced_by_hand(tmp_path: Path, root: Path, target: LocalTarget) -> None:
    target.apply("r1", wide(0), {})
    tenant = root / "current/acme"
    index = root / "indexes" / index_of(root, "r1", "acme")
    copy = tmp_path / "copy"
    copy.mkdir()
    for link in index.iterdir():
        (copy / link.name).symlink_to(os.readlink(link))
    tenant.unlink()
    tenant.symlink_to(copy)  # the same links, elsewhere: not followed
    key = ResourceKey("acme", "team1", "flow", "hello")
    assert not any(k.tenant == "acme" for k in target.inventory())
    assert target.read(key) is None
    tenant.unlink()
    (tenant / "team1/flows").mkdir(parents=True)  # a folder by hand: read as unmanaged
    (tenant / "team1/flows/hello.yaml").write_bytes(b"by hand\n")
    (tenant / "team2").symlink_to(f"../../../spaces/{space_of(root, 'r1', 'globex', 'team2')}/tree")
    inventory = target.inventory()
    assert {k for k in inventory if k.tenant == "acme"} == {key}
    assert inventory[key].hash == content_hash(b"by hand\n")
    assert target.read(key) == b"by hand\n"
    assert target.read(ResourceKey("acme", "team2", "flow", "hello")) is None
    target.apply("r2", wide(0), {})
    assert hashes(target.inventory()) == hashes(wide(0))
    assert index_of(root, "r2", "acme") == index.name  # the index itself was intact
    with pytest.raises(TargetError, match=r"modified on disk \(acme\)"):
        target.activate("r1")


def test_a_damaged_index(root: Path, target: LocalTarget) -> None:
    target.apply("r1", wide(0), {})
    index = root / "indexes" / index_of(root, "r1", "acme")
    (index / "team1").unlink()
    (index / "team2").unlink()
    (index / "team2").symlink_to(os.readlink(index / "team3"))  # leads to team3's space
    inventory = target.inventory()
    assert {k.namespace for k in inventory if k.tenant == "acme"} == {"team0", "team3", "team4", "team5"}
    assert target.read(ResourceKey("acme", "team2", "flow", "hello")) is None
    target.apply("r2", wide(0), {})
    assert index_of(root, "r2", "acme") == f"{index.name}.1"
    assert hashes(target.inventory()) == hashes(wide(0))
    with pytest.raises(TargetError, match=r"modified on disk \(acme/team1\)"):
        target.activate("r1")
    shutil.rmtree(root / "indexes" / index_of(root, "r2", "acme"))  # gone entirely
    assert not any(k.tenant == "acme" for k in target.inventory())
    assert hashes(target.inventory()) == hashes({k: r for k, r in wide(0).items() if k.tenant != "acme"})
    target.apply("r3", wide(0), {})
    assert hashes(target.inventory()) == hashes(wide(0))


def to_format2(root: Path, dirname: str) -> None:
    """Rewrite a revision folder as Headwater wrote it before indexes (format 2): a real
    folder per tenant holding the links to spaces, and no tenants in the manifest."""
    rev = root / "revisions" / dirname
    manifest = json.loads((rev / ".manifest.json").read_bytes())
    for tenant, index in manifest.pop("tenants"):
        (rev / tenant).unlink()
        (rev / tenant).mkdir()
        for link in (root / "indexes" / index).iterdir():
            (rev / tenant / link.name).symlink_to("../" + os.readlink(link))
    manifest["format"] = 2
    meta = json.loads((rev / ".revision.json").read_bytes())
    meta["format"] = 2
    for name, data in ((".manifest.json", manifest), (".revision.json", meta)):
        (rev / name).unlink()
        (rev / name).write_text(json.dumps(data))


def test_an_instance_of_format_2_is_read_then_upgraded(root: Path) -> None:
    LocalTarget(root, durable=False).apply("r1", wide(0), {})
    to_format2(root, "r1")
    shutil.rmtree(root / "indexes")
    team1 = space_of(root, "r1", "acme", "team1")
    assert os.readlink(root / "current/acme/team1") == f"../../../spaces/{team1}/tree"
    target = LocalTarget(root, keep=1, durable=False)
    assert target.current_revision() == "r1" and target.revisions() == ["r1"]
    assert target.manifest() == target.manifest("r1") == hashes(wide(0))
    assert hashes(target.inventory()) == hashes(wide(0))
    key = ResourceKey("acme", "team3", "file", "lib/b.py")
    assert target.read(key) == b"print('acme team3 0')\n"
    # the next apply plans against it and writes the new layout, sharing its spaces
    target.apply_namespaces("r2", "r1", by_namespace(wide(1), ("acme", "team3")), {})
    assert hashes(target.inventory()) == hashes(wide(1))
    assert sorted(indexes(root)) == sorted(index_of(root, "r2", t) for t in ("acme", "globex"))
    assert space_of(root, "r2", "globex", "team0") == space_of(root, "r1", "globex", "team0")
    assert os.readlink(root / "previous") == "revisions/r1"
    target.activate("r1")  # a rollback to it still works
    assert target.current_revision() == "r1" and hashes(target.inventory()) == hashes(wide(0))
    target.activate("r2")
    (root / "previous/acme/team4/kv.json").unlink()
    with pytest.raises(TargetError, match=r"modified on disk \(acme/team4\)"):
        target.activate("r1")
    target.apply("r3", wide(3), {})  # prunes r1 (keep=1: r2 becomes previous), then r2
    target.apply("r4", wide(4), {})
    assert target.revisions() == ["r4", "r3"]
    assert (indexes(root), spaces(root)) == referenced(root)
    assert all(p.stat().st_nlink >= 2 for p in objects(root))


def of_tenant(s: State, tenant: str) -> State:
    return {k: r for k, r in s.items() if k.tenant == tenant}


def test_a_revision_staged_tenant_by_tenant_equals_a_whole_apply(tmp_path: Path) -> None:
    staged = LocalTarget(tmp_path / "a", keep=1, durable=False)
    whole = LocalTarget(tmp_path / "b", keep=1, durable=False)
    new = {**wide(1), **sample()}
    del new[ResourceKey("globex", "team5", "file", "lib/a.py")]
    for target in (staged, whole):
        target.apply("r1", wide(0), SECRETS)
    assert staged.tenants() == {"acme", "globex"}
    with staged.staged("r2", "r1", ["acme", "globex"]) as stage:
        stage.add(of_tenant(new, "acme"), SECRETS)
        assert staged.current_revision() == "r1"  # nothing published before the block ends
        stage.add(of_tenant(new, "globex"), SECRETS)
    whole.apply("r2", new, SECRETS)
    assert staged.current_revision() == "r2"
    assert staged.manifest() == whole.manifest() == hashes(new)
    assert hashes(staged.inventory()) == hashes(new)
    assert hashes(staged.inventory("globex")) == hashes(of_tenant(new, "globex"))
    assert staged.inventory("initech") == {}
    root = tmp_path / "a"
    assert space_of(root, "r1", "globex", "team1") == space_of(root, "r2", "globex", "team1")  # shared
    assert debris(root) == []


def test_a_staged_revision_keeps_the_tenants_it_does_not_rebuild(root: Path, target: LocalTarget) -> None:
    target.apply("r1", wide(0), {})
    with target.staged("r2", "r1", ["acme", "initech"]) as stage:
        stage.add(of_tenant(wide(1), "acme"), {})
    assert hashes(target.inventory()) == hashes(wide(1))
    assert os.readlink(root / "revisions/r2/globex") == os.readlink(root / "revisions/r1/globex")  # its index
    with target.staged("r3", "r2", ["globex"]):
        pass  # rebuilt with nothing: the tenant goes
    assert hashes(target.inventory()) == hashes(of_tenant(wide(1), "acme"))
    assert target.tenants() == {"acme"}
    with target.staged("r4", None, ["acme"]) as stage:  # no base: only what the block adds
        stage.add(of_tenant(wide(2), "acme"), {})
    assert hashes(target.inventory()) == hashes(of_tenant(wide(2), "acme"))
    assert debris(root) == []


def test_a_staged_revision_that_fails_leaves_the_instance_as_it_was(
    root: Path, target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.apply("r1", wide(0), {})
    before = (spaces(root), objects(root), os.readlink(root / "current"))
    with (
        pytest.raises(RuntimeError, match="the second tenant failed"),
        target.staged("r2", "r1", ["acme", "globex"]) as stage,
    ):
        stage.add(of_tenant(wide(1), "acme"), {})
        raise RuntimeError("the second tenant failed")
    assert (spaces(root), objects(root), os.readlink(root / "current")) == before
    assert debris(root) == []
    fail_link_number(2, monkeypatch)
    with pytest.raises(TargetError, match="No space left") as info, target.staged("r2", "r1", ["acme"]) as stage:
        stage.add(of_tenant(wide(1), "acme"), {})
    assert info.value.hint and "unchanged" in info.value.hint
    monkeypatch.undo()
    assert (spaces(root), objects(root), os.readlink(root / "current")) == before
    assert hashes(target.inventory()) == hashes(wide(0))
    with pytest.raises(TargetError, match="does not rebuild"), target.staged("r2", "r1", ["acme"]) as stage:
        stage.add(wide(1), {})  # globex is kept as it is: not the stage's to change
    with pytest.raises(BaseMoved), target.staged("r2", "r0", ["acme"]):
        pass
    # the caller's own error (e.g. its git process) is its own, not a failed write of the target
    with pytest.raises(OSError, match="git died") as raised, target.staged("r2", "r1", ["acme"]) as stage:
        stage.add(of_tenant(wide(1), "acme"), {})
        raise OSError(5, "git died")
    assert not isinstance(raised.value, TargetError)
    assert target.current_revision() == "r1" and target.revisions() == ["r1"]
    assert debris(root) == []


def test_reading_a_large_instance_back_keeps_a_bounded_number_of_space_manifests(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("headwater.targets.local._SPACE_ROWS_KEPT", 12)
    target = LocalTarget(root, keep=1, durable=False)
    target.apply("r1", wide(0), {})  # twelve namespaces of four resources
    assert hashes(target.inventory()) == hashes(wide(0))
    assert 1 <= len(target._space_cache) <= 3
    target.apply("r2", wide(1), {})  # what was dropped from memory is read again when needed
    assert hashes(target.inventory()) == hashes(wide(1))
    assert target.manifest() == hashes(wide(1))


def test_a_revision_complete_but_never_published_is_not_left_as_one(
    root: Path, target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the revision folder is in place but before ``current`` points at it
    (e.g. no space left for the new link) leaves no folder that passes for that revision."""
    target.apply("r1", sample(0), SECRETS)

    def no_space(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalTarget, "_publish", no_space)
    for attempt in (lambda: target.apply("r1", sample(1), SECRETS), lambda: target.apply("r2", sample(1), SECRETS)):
        with pytest.raises(TargetError, match="No space left"):
            attempt()
        assert target.revisions() == ["r1"] and target.current_revision() == "r1"
        assert target.manifest("r1") == hashes(sample(0))
        assert debris(root) == []
    monkeypatch.undo()
    target.apply("r1", sample(1), SECRETS)
    assert target.manifest() == hashes(sample(1))
