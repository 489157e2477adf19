"""The engine through the CLI, on real Git repositories, a real SQLite store and the local target:
materialisation, invalid commits, prune and its guard, drift, and recovery of an interrupted apply.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from headwater.resources import ResourceKey
from headwater.state import StateStore
from headwater.targets.local import LocalTarget
from tests.gitutil import Result, commit, git, run_cli


class Headwater:
    """The real CLI, in-process, against one repository and one state directory."""

    def __init__(self, repo: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.repo, self.state, self.capsys = repo, state, capsys

    def run(self, *argv: str) -> Result:
        return run_cli(self.capsys, *argv)

    def cmd(self, command: str, *args: str) -> Result:
        return self.run(command, "-C", str(self.repo), "--state-dir", str(self.state), *args)

    def apply(self, instance: str, *args: str) -> Result:
        return self.cmd("apply", "--instance", instance, "--yes", *args)

    def plan(self, instance: str, *args: str) -> Result:
        return self.cmd("plan", "--instance", instance, *args)

    def status(self, instance: str) -> dict[str, Any]:
        result = self.cmd("status", "--instance", instance, "-o", "json")
        assert result.code == 0, result.err
        body: dict[str, Any] = result.json()["instances"][0]
        return body

    def instance_dir(self, instance: str) -> Path:
        return self.state / "instances" / instance


@pytest.fixture
def hw(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Headwater:
    return Headwater(sample, tmp_path / "state", capsys)


def blob(repo: Path, rev: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "cat-file", "blob", f"{rev}:{path}"], cwd=repo, capture_output=True, check=True
    ).stdout


def git_flows(repo: Path, rev: str) -> dict[str, bytes]:
    """Every flow at ``rev`` as ``<tenant>/<namespace>/flows/<id>.yaml`` -> its bytes."""
    flows = {}
    for path in git(repo, "ls-tree", "-r", "--name-only", rev, "tenants").splitlines():
        parts = path.split("/")
        if parts[-2] == "flows":
            namespace = ".".join(parts[2:-2])
            flow_id = parts[-1].rsplit(".", 1)[0]
            flows[f"{parts[1]}/{namespace}/flows/{flow_id}.yaml"] = blob(repo, rev, path)
    return flows


def files_under(base: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.glob(pattern) if p.is_file()}


def commit_on(hw: Headwater, edits: dict[str, str | bytes | None], branch: str = "dev") -> str:
    git(hw.repo, "checkout", "-q", branch)
    return commit(hw.repo, "edit", edits)


# The effective file set of every namespace of the sample: name -> the repository file it is.
SAMPLE_FILES = {
    "acme/company": {
        "scripts/common.py": "tenants/acme/company/files/scripts/common.py",
        "sql/schema.sql": "tenants/acme/company/files/sql/schema.sql",
    },
    "acme/company.team": {
        "scripts/common.py": "tenants/acme/company/files/scripts/common.py",
        "sql/schema.sql": "tenants/acme/company/files/sql/schema.sql",
        "sql/load.sql": "tenants/acme/company/team/files/sql/load.sql",
    },
    "acme/company.team.project-a": {
        "scripts/common.py": "tenants/acme/company/files/scripts/common.py",
        "sql/schema.sql": "tenants/acme/company/files/sql/schema.sql",
        "sql/load.sql": "tenants/acme/company/team/files/sql/load.sql",
        "report.py": "tenants/acme/company/team/project-a/files/report.py",
    },
    "acme/marketing": {},
    "acme/marketing.emea": {},
    "globex/ops": {"backup.sh": "tenants/globex/ops/files/backup.sh"},
    "globex/ops.monitoring": {"backup.sh": "tenants/globex/ops/files/backup.sh"},
    "globex/ops.monitoring.alerts": {"backup.sh": "tenants/globex/ops/files/backup.sh"},
}
HELLO_DEV = (
    "id: hello\nnamespace: company\ntasks:\n  - id: say_hello\n"
    "    type: io.kestra.plugin.core.log.Log\n    message: hello from dev\n"
)


# -- 1. materialisation ---------------------------------------------------------------------------


def test_applying_dev_and_main_materialises_both_instances(hw: Headwater) -> None:
    dev = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    main_rev = git(hw.repo, "rev-parse", "main")
    assert dev != main_rev

    assert hw.apply("dev").code == 0
    assert hw.apply("prod").code == 0

    for instance, rev in (("dev", dev), ("prod", main_rev)):
        root = hw.instance_dir(instance)
        assert os.readlink(root / "current") == f"revisions/{rev}"
        base = root / "revisions" / rev
        # flows: byte-identical to Git, one folder per (tenant, namespace)
        assert files_under(base, "*/*/flows/*") == git_flows(hw.repo, rev)
        # files: the effective set, inherited files included, each byte-identical to its source
        namespaces = {f"{p.parent.name}/{p.name}" for p in base.glob("*/*") if p.is_dir()}
        assert namespaces == set(SAMPLE_FILES)
        for namespace, files in SAMPLE_FILES.items():
            got = files_under(base / namespace / "files", "**/*")
            assert got == {name: blob(hw.repo, rev, src) for name, src in files.items()}, namespace
            config = json.loads((base / namespace / "config.json").read_bytes())
            assert config["variables"]["env"] == instance
        # read-only content shared through objects/ by hard links
        common = base / "acme/company.team.project-a/files/scripts/common.py"
        assert stat.S_IMODE(common.stat().st_mode) == 0o444
        assert common.stat().st_nlink >= 2

        company = json.loads((base / "acme/company/config.json").read_bytes())
        kv = json.loads((base / "acme/company/kv.json").read_bytes())
        team_kv = json.loads((base / "acme/company.team/kv.json").read_bytes())
        if instance == "dev":
            assert company["variables"]["db"]["host"] == "db.dev.internal"
            assert company["variables"]["retention_days"] == 30
            assert kv == {"feature_flags": {"beta": True}}
        else:  # headwater.yaml's prod defaults and company's environments.prod overlay
            assert company["variables"]["db"]["host"] == "db.prod.internal"
            assert company["variables"]["retention_days"] == 90
            assert kv == {"feature_flags": {"beta": False}}
        assert team_kv["last_backfill"] == "2026-01-01"  # its own entry, next to the inherited one
        assert "feature_flags" in team_kv

    hello = "acme/company/flows/hello.yaml"
    assert (hw.instance_dir("dev") / "current" / hello).read_text() == HELLO_DEV
    assert (hw.instance_dir("prod") / "current" / hello).read_bytes() == blob(
        hw.repo, main_rev, "tenants/acme/company/flows/hello.yaml"
    )
    for instance in ("dev", "prod"):
        body = hw.status(instance)
        assert body["in_sync"] is True
        assert body["applied_revision"] == body["target_revision"]


def test_a_child_namespace_reads_inherited_files_from_its_own_files_folder(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    current = hw.instance_dir("dev") / "current"
    reads = 0
    for flow in current.glob("*/*/flows/*.yaml"):
        namespace_dir = flow.parent.parent
        for name in re.findall(r"read\('([^']+)'\)", flow.read_text()):
            assert (namespace_dir / "files" / name).is_file(), f"{flow}: read('{name}')"
            reads += 1
    assert reads >= 5
    # report (company.team.project-a) reads scripts/common.py, which lives in `company`
    report = (current / "acme/company.team.project-a/flows/report.yaml").read_text()
    assert "read('scripts/common.py')" in report
    common = current / "acme/company.team.project-a/files/scripts/common.py"
    assert common.read_bytes() == (current / "acme/company/files/scripts/common.py").read_bytes()
    assert common.stat().st_ino == (current / "acme/company/files/scripts/common.py").stat().st_ino


# -- 3. an invalid commit is never applied ----------------------------------------------------------


def test_an_invalid_commit_is_never_applied_and_status_says_why(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    good = git(hw.repo, "rev-parse", "dev")
    before = LocalTarget(hw.instance_dir("dev")).inventory()
    bad = commit_on(hw, {
        "tenants/acme/company/flows/broken.yaml": "id: wrong\nnamespace: company\ntasks: []\n",
        "tenants/acme/company/flows/hello.yaml": HELLO_DEV,
    })

    result = hw.apply("dev")
    assert result.code == 1
    assert "validation error" in result.err and "Traceback" not in result.err
    assert hw.plan("dev").code == 1

    target = LocalTarget(hw.instance_dir("dev"))
    assert target.current_revision() == good
    assert target.inventory() == before
    assert not (hw.instance_dir("dev") / "revisions" / bad).exists()

    body = hw.status("dev")
    assert body["applied_revision"] == good
    assert body["attempted_revision"] == bad
    assert body["outcome"] == "failed"
    assert body["target_revision"] == good
    codes = {e["code"] for e in body["errors"]}
    assert "flow.id-mismatch" in codes
    assert all(e["path"] == "tenants/acme/company/flows/broken.yaml" for e in body["errors"])
    assert all(e["code"] and e["line"] for e in body["errors"])

    text = hw.cmd("status", "--instance", "dev")
    assert f"applied:   {good[:12]}" in text.out
    assert f"attempted: {bad[:12]}  failed" in text.out
    assert "[flow.id-mismatch]" in text.out

    # fixing the commit applies it, and the failure is gone from the status
    fixed = commit(hw.repo, "fix", {"tenants/acme/company/flows/broken.yaml": None})
    assert hw.apply("dev").code == 0
    body = hw.status("dev")
    assert (body["applied_revision"], body["outcome"], body["errors"]) == (fixed, "applied", [])


# -- 4. prune and its guard -----------------------------------------------------------------------


def test_prune_deletes_what_the_commit_no_longer_has(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    commit_on(hw, {"tenants/acme/company/team/project-a": None})
    result = hw.apply("dev")
    assert result.code == 0, result.err
    assert "9 deleted" in result.out
    current = hw.instance_dir("dev") / "current"
    assert not (current / "acme/company.team.project-a").exists()
    assert (current / "acme/company.team/flows/ingest.yaml").is_file()
    inventory = StateStore(hw.state / "state.db").inventory("dev")
    assert not [k for k in inventory if k.namespace == "company.team.project-a"]


def test_prune_leaves_alone_what_headwater_never_applied(hw: Headwater) -> None:
    """What "unmanaged" means for the local target, pinned down.

    The instance directory is Headwater's: every apply publishes a new revision directory built
    from Git alone. A file put by hand into ``current/`` is a resource Headwater never applied:
    the plan lists it under ``unmanaged`` (never as a deletion, and it does not count for the
    mass-delete guard), status does not count it as drift, and apply never deletes it — it stays
    in the revision directory it was put into (``previous`` after the next apply, until that
    revision is pruned beyond ``keep``), but it is not carried into the newly published one.
    """
    assert hw.apply("dev").code == 0
    root = hw.instance_dir("dev")
    old = os.readlink(root / "current")
    (root / "current/acme/company/files/handmade.txt").write_text("by hand\n")
    (root / "current/acme/handmade/flows").mkdir(parents=True)
    (root / "current/acme/handmade/flows/x.yaml").write_text("id: x\n")

    result = hw.plan("dev", "-o", "json", "--detailed-exitcode")
    assert result.code == 0
    plan = result.json()
    assert plan["changes"] == [] and plan["drift"] == []
    assert plan["unmanaged"] == [
        {"tenant": "acme", "namespace": "company", "kind": "file", "name": "handmade.txt"},
        {"tenant": "acme", "namespace": "handmade", "kind": "flow", "name": "x"},
    ]
    text = hw.plan("dev").out
    assert "Unmanaged: 2 resources left alone (never applied):" in text
    assert "acme/company/file/handmade.txt" in text
    assert hw.status("dev")["drift"] == []

    commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    result = hw.apply("dev")
    assert result.code == 0
    assert "0 created, 1 updated, 0 deleted" in result.out
    assert os.readlink(root / "previous") == old
    assert (root / "previous/acme/company/files/handmade.txt").read_text() == "by hand\n"
    assert (root / "previous/acme/handmade/flows/x.yaml").is_file()
    assert not (root / "current/acme/company/files/handmade.txt").exists()
    assert not (root / "current/acme/handmade").exists()


def test_mass_delete_above_max_delete_percent_needs_the_override(hw: Headwater) -> None:
    assert hw.apply("prod").code == 0
    assert len(StateStore(hw.state / "state.db").inventory("prod")) == 41
    # a small deletion is fine under prod's prune.maxDeletePercent of 20
    small = commit_on(hw, {"tenants/globex/ops/flows/cleanup.yaml": None}, branch="main")
    assert hw.apply("prod").code == 0
    # removing tenant globex deletes 12 more of the managed resources: above 20%
    big = commit(hw.repo, "drop globex", {"tenants/globex": None})

    refused = hw.apply("prod")
    assert refused.code == 1
    lines = refused.err.strip().splitlines()
    assert lines[0] == (
        "error: plan for instance 'prod' deletes 12 of 40 managed resources (30.0%),"
        " more than prune.maxDeletePercent (20%)"
    )
    assert "--allow-mass-delete" in lines[1] and len(lines) == 2
    assert LocalTarget(hw.instance_dir("prod")).current_revision() == small
    body = hw.status("prod")
    assert (body["applied_revision"], body["attempted_revision"]) == (small, big)
    assert body["outcome"] == "failed"
    assert [e["code"] for e in body["errors"]] == ["prune.refused"]

    accepted = hw.apply("prod", "--allow-mass-delete")
    assert accepted.code == 0, accepted.err
    assert "12 deleted" in accepted.out
    assert not (hw.instance_dir("prod") / "current/globex").exists()
    assert hw.status("prod")["applied_revision"] == big


def test_deleting_everything_needs_the_override(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0  # dev has no maxDeletePercent: only the "everything" guard
    empty = commit_on(hw, {"tenants": None})
    refused = hw.apply("dev")
    assert refused.code == 1
    assert "deletes all" in refused.err and "creates nothing" in refused.err
    assert "Traceback" not in refused.err
    assert (hw.instance_dir("dev") / "current/acme").is_dir()

    accepted = hw.apply("dev", "--allow-mass-delete")
    assert accepted.code == 0
    current = hw.instance_dir("dev") / "current"
    assert [p.name for p in current.iterdir() if not p.name.startswith(".")] == []
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == empty
    assert StateStore(hw.state / "state.db").inventory("dev") == {}


# -- 5. drift -----------------------------------------------------------------------------------


def hand_edit(path: Path, data: bytes) -> None:
    """What an operator does to a read-only, hard-linked file: chmod, then write in place."""
    path.chmod(0o644)
    with path.open("ab") as f:
        f.write(data)


def test_a_hand_edit_shows_as_drift_and_apply_restores_it(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    rev = git(hw.repo, "rev-parse", "dev")
    current = hw.instance_dir("dev") / "current"
    hello = current / "acme/company/flows/hello.yaml"
    original = hello.read_bytes()
    hand_edit(hello, b"# edited by hand\n")
    (current / "acme/company.team/files/sql/load.sql").unlink()

    result = hw.plan("dev", "--detailed-exitcode", "-o", "json")
    assert result.code == 2
    plan = result.json()
    assert plan["summary"]["drift"] == 2
    changes = {c["address"]: (c["action"], c["drift"]) for c in plan["changes"]}
    assert changes == {
        "acme/company/flow/hello": ("update", True),
        "acme/company.team/file/sql/load.sql": ("create", True),
    }
    assert "-# edited by hand" in plan["changes"][-1]["diff"]
    text = hw.plan("dev").out
    assert "! changed outside Git since the last apply" in text
    assert "Drift: 2 resources changed outside Git." in text

    body = hw.status("dev")
    assert body["drift"] == ["acme/company/flow/hello", "acme/company.team/file/sql/load.sql"]
    assert body["in_sync"] is False
    status_text = hw.cmd("status", "--instance", "dev").out
    assert "drift:     2 resource(s)" in status_text
    assert "! acme/company/flow/hello" in status_text

    result = hw.apply("dev")
    assert result.code == 0
    assert "2 drifted restored" in result.out
    assert hello.read_bytes() == original == blob(hw.repo, rev, "tenants/acme/company/flows/hello.yaml")
    assert stat.S_IMODE(hello.stat().st_mode) == 0o444
    assert (current / "acme/company.team/files/sql/load.sql").is_file()
    assert hw.plan("dev", "--detailed-exitcode").code == 0
    body = hw.status("dev")
    assert body["drift"] == [] and body["in_sync"] is True


def test_a_hand_edit_of_config_and_kv_is_drift_too(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    current = hw.instance_dir("dev") / "current/acme/company"
    kv = current / "kv.json"
    kv.chmod(0o644)
    kv.write_text(json.dumps({"feature_flags": {"beta": False}}))
    hand_edit(current / "config.json", b" ")
    assert set(hw.status("dev")["drift"]) == {"acme/company/kv/feature_flags", "acme/company/config/config"}
    assert hw.apply("dev").code == 0
    assert json.loads(kv.read_bytes()) == {"feature_flags": {"beta": True}}
    assert hw.status("dev")["drift"] == []


# -- recovery of an interrupted apply (the crash test kills real processes; these are exact) -------


def interrupt_after_begin(hw: Headwater, rev: str, *, reach_target: bool, action: str) -> None:
    """Leave the store and the target as an apply killed after ``begin_apply`` leaves them."""
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo
    from headwater.settings import Settings

    with GitRepo(hw.repo) as repo, Engine(repo, Settings(state_dir=str(hw.state))) as engine:
        snap = engine.valid_snapshot(rev, "dev")
        desired = engine.desired(snap, "dev")
        engine.store.begin_apply("dev", rev, action=action, trigger="test")  # type: ignore[arg-type]
        if reach_target:
            engine.target("dev").apply(rev, desired.state, desired.secrets)


@pytest.mark.parametrize("reached", [True, False])
def test_status_reconciles_an_interrupted_apply(hw: Headwater, reached: bool) -> None:
    assert hw.apply("dev").code == 0
    old = git(hw.repo, "rev-parse", "dev")
    new = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    interrupt_after_begin(hw, new, reach_target=reached, action="apply")

    body = hw.status("dev")
    expected = new if reached else old
    assert body["pending_revision"] is None
    assert body["applied_revision"] == body["target_revision"] == expected
    assert body["drift"] == [] and body["in_sync"] is True
    assert body["attempted_revision"] == new
    if reached:
        assert body["outcome"] == "applied"
        entry = json.loads(hw.run("history", "--instance", "dev", "-o", "json",
                                  "--state-dir", str(hw.state)).out)["history"][0]
        assert (entry["revision"], entry["action"], entry["summary"]["recovered"]) == (new, "apply", True)
    else:
        assert body["outcome"] == "failed"
        assert [e["code"] for e in body["errors"]] == ["interrupted"]
    assert hw.apply("dev").code == 0
    assert hw.status("dev")["applied_revision"] == new


def test_managed_inventory_matches_the_target_manifest(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    store = StateStore(hw.state / "state.db")
    target = LocalTarget(hw.instance_dir("dev"))
    assert store.inventory("dev") == target.manifest()
    assert ResourceKey("acme", "company.team.project-a", "file", "scripts/common.py") in store.inventory("dev")


def test_a_cold_plan_reads_each_blob_once_and_shows_what_git_holds(
    hw: Headwater, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing a blob and showing its content share one read (the hash cache is cold)."""
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo
    from headwater.settings import Settings

    reads: list[str] = []
    real = GitRepo.read_blobs

    def counting(self: GitRepo, oids: Any) -> dict[str, bytes]:
        wanted = list(oids)
        reads.extend(wanted)
        return real(self, wanted)

    monkeypatch.setattr(GitRepo, "read_blobs", counting)
    with GitRepo(hw.repo) as repo, Engine(repo, Settings(state_dir=str(hw.state))) as engine:
        result = engine.plan("dev", "dev")
        sources = set(result.desired.sources.values())
        files = {oid for key, oid in result.desired.sources.items() if key.kind == "file"}
        # A flow is also read to validate it; a namespace file only to hash and show it.
        assert files and all(reads.count(oid) == 1 for oid in files), reads
        assert all(reads.count(oid) <= 2 for oid in sources), reads
        for key, oid in result.desired.sources.items():
            assert result.desired.state[key].content == real(repo, [oid])[oid]
        again = Engine(repo, Settings(state_dir=str(hw.state)))  # warm hashes: reads content only
        reads.clear()
        assert again.plan("dev", "dev").plan.summary() == result.plan.summary()
        assert all(reads.count(oid) == 1 for oid in sources), reads  # hashes cached, flows too
        again.close()
