"""Promotion and `rollback --git` (promote.py) on real repositories: a bare remote (file://), a
clone to work in, and a real SQLite state store filled by applying with the real engine.

The soak window is tested with an injected clock (``now=``), never by sleeping.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from headwater import promote, settings, snapshot
from headwater.engine import Engine
from headwater.errors import HeadwaterError
from headwater.gitrepo import GitRepo
from headwater.promote import PromotionInvalid, PromotionRefused, Request
from headwater.snapshot import parse_duration
from tests.gitutil import Result, commit, git, run_cli, sample_repo

SECRET = "hunter2-never-shown-7f3a"
TEAM_NS = "tenants/acme/company/team/namespace.yaml"
TEAM_FLOW = "tenants/acme/company/team/flows/ingest.yaml"
PROJECT_FLOW = "tenants/acme/company/team/project-a/flows/report.yaml"
COMPANY_FLOW = "tenants/acme/company/flows/hello.yaml"
CAMPAIGN_FLOW = "tenants/acme/marketing.emea/flows/campaign.yaml"


@dataclass
class World:
    """A bare remote, a clone (HEAD detached, local main and dev) and a state directory."""

    remote: Path
    work: Path
    state: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> Result:
        return run_cli(self.capsys, *argv)

    def cmd(self, command: str, *args: str) -> Result:
        return self.run(command, "-C", str(self.work), "--state-dir", str(self.state), *args)

    def git(self, *args: str) -> str:
        return git(self.work, *args)

    def on(self, branch: str, edits: dict[str, str | bytes | None], push: bool = True) -> str:
        """Commit ``edits`` on ``branch`` (and push it), leaving HEAD detached."""
        self.git("switch", "-q", branch)
        sha = commit(self.work, f"edit {branch}", edits)
        if push:
            self.git("push", "-q", "origin", branch)
        self.git("switch", "-q", "--detach")
        return sha

    def ref(self, name: str) -> str | None:
        out = git(self.work, "for-each-ref", "--format=%(objectname)", f"refs/heads/{name}")
        return out or None

    def remote_ref(self, name: str) -> str | None:
        out = git(self.remote, "for-each-ref", "--format=%(objectname)", f"refs/heads/{name}")
        return out or None

    def refs(self) -> dict[str, str]:
        local = git(self.work, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
        remote = git(self.remote, "for-each-ref", "--format=remote:%(refname) %(objectname)")
        return dict(line.split(" ") for line in (local + "\n" + remote).splitlines() if line)

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        with (
            GitRepo(self.work) as repo,
            Engine(repo, settings.load(None, str(self.state))) as engine,
        ):
            yield engine

    def apply(self, instance: str, rev: str) -> str:
        with self.engine() as engine:
            return engine.apply(instance, rev, trigger="test").plan.revision

    def status_applied(self, instance: str) -> str | None:
        with self.engine() as engine:
            return engine.store.get(instance).applied_revision

    def applied_at(self, instance: str) -> datetime:
        with self.engine() as engine:
            at = engine.store.get(instance).applied_at
        assert at is not None
        return at

    def age(self, instance: str, seconds: float) -> None:
        """Pretend the instance's applies happened ``seconds`` earlier (the state is real SQLite)."""
        db = sqlite3.connect(self.state / "state.db")
        with db:
            db.execute("UPDATE history SET at = at - ? WHERE instance = ?", (seconds, instance))
            db.execute(
                "UPDATE instances SET applied_at = applied_at - ? WHERE name = ?",
                (seconds, instance),
            )
        db.close()

    def config(self, instance: str, namespace: str) -> dict[str, Any]:
        path = self.state / "instances" / instance / "current" / namespace / "config.json"
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def show(self, rev: str, path: str) -> str:
        return git(self.work, "show", f"{rev}:{path}")


def make_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> World:
    seed = sample_repo(tmp_path / "seed")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(seed, "push", "-q", f"file://{remote}", "main", "dev")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", f"file://{remote}", str(work))
    git(work, "branch", "-q", "dev", "origin/dev")
    git(work, "switch", "-q", "--detach")
    state = tmp_path / "state"
    for rel in (
        "acme/company/DB_PASSWORD",
        "acme/SLACK_WEBHOOK",
        "globex/PAGER_TOKEN",
        "acme/company.team/API_KEY",
    ):
        (state / "secrets" / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / "secrets" / rel).write_text(SECRET + "\n")
    return World(remote, work, state, capsys)


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> World:
    return make_world(tmp_path, capsys)


def edited(world: World, path: str, old: str, new: str, rev: str = "dev") -> str:
    text = world.show(rev, path)
    assert old in text, (path, old)
    return text.replace(old, new, 1)


TEAM_WITH_TIMEOUT = """\
description: Data team
owners: ["@acme/data"]
variables:
  team: data
  batch_size: 500
  timeout: 10
kv:
  last_backfill: "2026-01-01"
environments:
  dev:
    variables: {batch_size: 50, timeout: 5}
  prod:
    variables: {batch_size: 5000, timeout: 60}
"""


def prepare(world: World, now: datetime | None = None, **kwargs: Any) -> promote.Promotion:
    with world.engine() as engine:
        return promote.prepare(engine, Request(target="prod", **kwargs), now=now)


def write(world: World, p: promote.Promotion, remote: str | None = None) -> None:
    with GitRepo(world.work) as repo:
        promote.write(repo, p.move, remote, "test")


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h30m", 5400), ("2w", 1209600), ("45s", 45), (None, 0), (90, 90)],
)
def test_parse_soak(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["30 minutes", "m30", "1.5h", ""])
def test_parse_soak_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# -- 1. whole promotion ------------------------------------------------------------------------


def test_whole_promotion_merges_and_prod_shows_prod_values(world: World) -> None:
    # main gets a change of its own, so the promotion is a real merge, not a fast-forward
    world.on("main", {"tenants/globex/ops/files/README.md": "prod-only notes\n"})
    dev = world.on(
        "dev",
        {
            TEAM_NS: TEAM_WITH_TIMEOUT,
            TEAM_FLOW: edited(world, TEAM_FLOW, "ingest failed", "ingest broke"),
        },
    )
    world.apply("dev", dev)
    assert world.config("dev", "acme/company.team")["variables"]["timeout"] == 5
    main_before = world.ref("main")

    p = prepare(world, now=world.applied_at("dev") + timedelta(minutes=31))
    assert (p.source, p.target_branch, p.noop, p.fast_forward) == (dev, "main", False, False)
    assert p.move.ref == f"refs/heads/promote/dev-to-prod/{dev[:7]}"
    addresses = {str(c.key) for c in p.plan.changes}
    assert addresses == {
        "acme/company.team/config/config",
        "acme/company.team.project-a/config/config",
        "acme/company.team/flow/ingest",
    }
    write(world, p, remote="origin")

    # the promotion branch: a merge of main and the dev commit, with the trailers
    assert (
        world.ref(f"promote/dev-to-prod/{dev[:7]}")
        == p.commit
        == world.remote_ref(f"promote/dev-to-prod/{dev[:7]}")
    )
    assert world.git("rev-list", "--parents", "-n1", p.commit).split()[1:] == [main_before, dev]
    trailers = world.git("log", "-1", "--format=%(trailers:key=Promoted-From,valueonly)", p.commit)
    assert trailers.strip() == f"dev@{dev}"
    assert world.ref("main") == main_before  # the pull request merges it, not the promotion

    # the same tree for acme on both branches; each instance reads its own overlay
    assert world.git("rev-parse", f"{p.commit}:tenants/acme") == world.git(
        "rev-parse", f"{dev}:tenants/acme"
    )
    assert world.show(p.commit, "tenants/globex/ops/files/README.md") == "prod-only notes"
    world.apply("prod", p.commit)
    prod = world.config("prod", "acme/company.team")
    assert prod["variables"]["timeout"] == 60 and prod["variables"]["batch_size"] == 5000
    assert prod["variables"]["db"]["host"] == "db.prod.internal"
    assert prod["variables"]["env"] == "prod"
    assert world.config("dev", "acme/company.team")["variables"]["db"]["host"] == "db.dev.internal"


def test_direct_promotion_fast_forwards_when_possible(world: World) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    p = prepare(world, now=world.applied_at("dev") + timedelta(hours=1), direct=True)
    assert p.fast_forward and p.commit == dev and p.move.ref == "refs/heads/main"
    write(world, p, remote="origin")
    assert world.ref("main") == world.remote_ref("main") == dev


def test_promoting_what_the_target_already_holds_is_a_noop(world: World) -> None:
    world.apply("dev", world.ref("dev") or "")
    before = world.refs()
    p = prepare(world, now=world.applied_at("dev") + timedelta(hours=1))
    assert p.noop and p.plan.is_empty
    assert world.refs() == before


def test_rebuilding_the_same_promotion_replaces_its_branch(world: World) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    later = world.applied_at("dev") + timedelta(hours=1)
    first = prepare(world, now=later)
    write(world, first, remote="origin")
    world.on("main", {"tenants/globex/ops/files/README.md": "moved on\n"})
    second = prepare(world, now=later)  # rebased on the new main
    assert second.move.old == first.commit and second.commit != first.commit
    write(world, second, remote="origin")
    branch = f"promote/dev-to-prod/{dev[:7]}"
    assert world.ref(branch) == world.remote_ref(branch) == second.commit


# -- 2. selective promotion --------------------------------------------------------------------


def dev_changes_everywhere(world: World) -> str:
    return world.on(
        "dev",
        {
            TEAM_FLOW: edited(world, TEAM_FLOW, "ingest failed", "ingest broke"),
            "tenants/acme/company/team/files/sql/extra.sql": "select 1;\n",
            PROJECT_FLOW: edited(world, PROJECT_FLOW, "report ready", "report done"),
            COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from"),
            CAMPAIGN_FLOW: edited(world, CAMPAIGN_FLOW, "leads", "prospects"),
        },
    )


def test_selective_promotion_takes_only_the_namespace_folder(world: World) -> None:
    dev = dev_changes_everywhere(world)
    world.apply("dev", dev)
    main_before = world.ref("main") or ""
    p = prepare(
        world,
        now=world.applied_at("dev") + timedelta(hours=1),
        namespaces=("acme/company.team",),
        direct=True,
    )
    assert p.paths == ("tenants/acme/company/team/files/sql/extra.sql", TEAM_FLOW)
    with pytest.MonkeyPatch.context() as patch:  # a large commit is checked tenant by tenant
        patch.setattr(snapshot, "BY_TENANT_FROM", 0)
        again = prepare(
            world, now=world.applied_at("dev") + timedelta(hours=1), namespaces=("acme/company.team",), direct=True,
        )
    assert (again.paths, again.plan.changes) == (p.paths, p.plan.changes)
    write(world, p, remote="origin")
    assert world.ref("main") == world.remote_ref("main") == p.commit
    assert world.git("rev-list", "--parents", "-n1", p.commit).split()[1:] == [main_before]
    changed = world.git("diff", "--name-only", main_before, p.commit).splitlines()
    assert changed == ["tenants/acme/company/team/files/sql/extra.sql", TEAM_FLOW]
    for untouched in (PROJECT_FLOW, COMPANY_FLOW, CAMPAIGN_FLOW):  # child, parent, sibling
        assert world.show(p.commit, untouched) == world.show(main_before, untouched)
    message = world.git("log", "-1", "--format=%B", p.commit)
    assert f"Promoted-From: dev@{dev}" in message
    assert "Promoted-Namespaces: acme/company.team" in message
    # the plan lists only that namespace's resources (the new file is inherited below it)
    assert {(c.key.namespace, c.key.kind, c.key.name) for c in p.plan.changes} == {
        ("company.team", "flow", "ingest"),
        ("company.team", "file", "sql/extra.sql"),
        ("company.team.project-a", "file", "sql/extra.sql"),
    }


def test_recursive_selective_promotion_brings_the_children(world: World) -> None:
    dev = dev_changes_everywhere(world)
    world.apply("dev", dev)
    p = prepare(
        world,
        now=world.applied_at("dev") + timedelta(hours=1),
        namespaces=("acme/company.team",),
        recursive=True,
    )
    assert PROJECT_FLOW in p.paths and COMPANY_FLOW not in p.paths and CAMPAIGN_FLOW not in p.paths


def test_selective_promotion_of_a_new_and_of_a_deleted_namespace(world: World) -> None:
    dev = world.on(
        "dev",
        {
            "tenants/acme/company/newteam/flows/hi.yaml": "id: hi\nnamespace: company.newteam\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
            "tenants/acme/marketing.emea": None,
        },
    )
    world.apply("dev", dev)
    later = world.applied_at("dev") + timedelta(hours=1)
    p = prepare(world, now=later, namespaces=("acme/company.newteam", "acme/marketing.emea"))
    assert p.paths == ("tenants/acme/company/newteam/flows/hi.yaml", CAMPAIGN_FLOW)
    actions = {(c.key.namespace, c.action) for c in p.plan.changes}
    # (the implied parent namespace `marketing` goes with its only child folder)
    assert actions == {
        ("company.newteam", "create"),
        ("marketing.emea", "delete"),
        ("marketing", "delete"),
    }
    flows = {(str(c.key), c.action) for c in p.plan.changes if c.key.kind == "flow"}
    assert flows == {
        ("acme/company.newteam/flow/hi", "create"),
        ("acme/marketing.emea/flow/campaign", "delete"),
    }


# -- 3. refusals: nothing written -------------------------------------------------------------


def test_refuses_a_commit_dev_never_applied_unless_forced(world: World) -> None:
    applied = world.ref("dev") or ""
    world.apply("dev", applied)
    never = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    before = world.refs()
    with pytest.raises(PromotionRefused, match=f"{never[:12]} was never applied on dev"):
        prepare(world, now=world.applied_at("dev") + timedelta(days=1), rev=never)
    assert world.refs() == before
    p = prepare(world, rev=never, force_reason="hotfix  for\nincident 42")
    write(world, p)
    message = world.git("log", "-1", "--format=%B", p.commit)
    assert "Forced: hotfix for incident 42" in message
    assert "Promotion-Forced: hotfix for incident 42" in message


def test_refuses_inside_the_soak_window(world: World) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    at = world.applied_at("dev")
    before = world.refs()
    with pytest.raises(
        PromotionRefused, match="has run on dev for 10m, less than the 30m soak of prod"
    ):
        prepare(world, now=at + timedelta(minutes=10))
    assert world.refs() == before
    assert prepare(world, now=at + timedelta(minutes=30)).source == dev


def test_a_revision_replaced_before_the_soak_ended_is_not_proven(world: World) -> None:
    first = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", first)
    world.age("dev", 5 * 60)  # it ran five minutes, then the next commit replaced it
    second = world.on("dev", {CAMPAIGN_FLOW: edited(world, CAMPAIGN_FLOW, "leads", "prospects")})
    world.apply("dev", second)
    with pytest.raises(PromotionRefused, match="for 5m, less than") as info:
        prepare(world, now=world.applied_at("dev") + timedelta(days=1), rev=first)
    assert "it no longer runs on dev: promote what dev runs now" in (info.value.hint or "")


def test_refuses_a_commit_that_is_invalid_for_prod(world: World) -> None:
    # valid on dev, but prod's overlay sets a path `company` locks
    bad = TEAM_WITH_TIMEOUT.replace("timeout: 60}", "timeout: 60, db: {host: rogue}}")
    dev = world.on("dev", {TEAM_NS: bad})
    world.apply("dev", dev)
    before = world.refs()
    with pytest.raises(PromotionInvalid, match="does not validate for prod") as info:
        prepare(world, now=world.applied_at("dev") + timedelta(hours=1))
    assert any(d.code == "config.locked" for d in info.value.diagnostics)
    assert world.refs() == before
    with pytest.MonkeyPatch.context() as patch:  # a large commit is checked tenant by tenant
        patch.setattr(snapshot, "BY_TENANT_FROM", 0)
        with pytest.raises(PromotionInvalid, match="does not validate for prod") as by_tenant:
            prepare(world, now=world.applied_at("dev") + timedelta(hours=1))
    assert by_tenant.value.diagnostics == info.value.diagnostics
    assert world.refs() == before


def test_refuses_when_the_target_branch_moved_after_the_plan(world: World) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    p = prepare(world, now=world.applied_at("dev") + timedelta(hours=1), direct=True)
    moved = world.on("main", {"tenants/globex/ops/files/README.md": "meanwhile\n"})
    before = world.refs()
    with pytest.raises(PromotionRefused, match="main moved since the plan was shown"):
        write(world, p, remote="origin")
    assert world.refs() == before and world.ref("main") == moved


def test_a_refused_push_puts_the_local_branch_back(world: World, tmp_path: Path) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    # someone else pushes to main; this clone does not know yet
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", f"file://{world.remote}", str(other))
    commit(other, "elsewhere", {"tenants/globex/ops/files/README.md": "elsewhere\n"})
    git(other, "push", "-q", "origin", "main")
    remote_main = world.remote_ref("main")
    main_before = world.ref("main")
    p = prepare(world, now=world.applied_at("dev") + timedelta(hours=1), direct=True)
    with pytest.raises(PromotionRefused, match=r"push to origin was refused.*main was put back"):
        write(world, p, remote="origin")
    assert world.ref("main") == main_before and world.remote_ref("main") == remote_main


def test_refuses_to_move_a_checked_out_branch(world: World) -> None:
    dev = world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    world.apply("dev", dev)
    world.git("switch", "-q", "main")
    with pytest.raises(PromotionRefused, match="main is checked out in"):
        prepare(world, now=world.applied_at("dev") + timedelta(hours=1), direct=True)


def test_refuses_unknown_instances_and_namespaces_and_no_applied_revision(world: World) -> None:
    with pytest.raises(PromotionRefused, match="dev has no successfully applied revision"):
        prepare(world)
    world.apply("dev", world.ref("dev") or "")
    with pytest.raises(HeadwaterError, match="unknown instance 'staging'"):
        prepare(world, source="staging")
    with pytest.raises(HeadwaterError, match="unknown instance 'qa'"), world.engine() as engine:
        promote.prepare(engine, Request(target="qa"))
    with pytest.raises(HeadwaterError, match="unknown namespace 'acme/nope'"):
        prepare(world, force_reason="x", namespaces=("acme/nope",))


# -- 6. rollback --git -------------------------------------------------------------------------


def test_rollback_in_git_restores_the_instance_paths(world: World) -> None:
    first = world.ref("main") or ""
    world.apply("prod", first)
    second = world.on(
        "main",
        {
            COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from", rev="main"),
            "tenants/acme/company/team/flows/extra.yaml": "id: extra\nnamespace: company.team\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n",
            "docs/notes.md": "not an instance path\n",
        },
    )
    world.apply("prod", second)
    with world.engine() as engine:
        r = promote.prepare_rollback(engine, "prod", first)
        promote.write(engine.repo, r.move, "origin", "test")
    head = world.ref("main")
    assert head == world.remote_ref("main") == r.move.new
    assert world.git("rev-list", "--parents", "-n1", head or "").split()[1:] == [second]
    for path in ("tenants", "headwater.yaml"):
        assert world.git("rev-parse", f"{head}:{path}") == world.git("rev-parse", f"{first}:{path}")
    assert world.show(head or "", "docs/notes.md") == "not an instance path"
    assert "Rolled-Back-To: prod@" + first in world.git("log", "-1", "--format=%B", head or "")
    # the next sync applies it, and prod holds the first revision's content again
    world.apply("prod", "main")
    with world.engine() as engine:
        assert engine.compare("prod", first, "main").plan.is_empty
        assert engine.store.get("prod").applied_revision == head
