"""`check`, `codeowners`, `promote` and `rollback --git` as a user and CI run them, on a clone of a
bare remote with a real state store: outputs (text, JSON, GitHub, Markdown parsed with
markdown-it), exit codes, and bad input that fails in one clear line without a traceback.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from headwater import snapshot
from headwater.cli.main import cli
from tests.gitutil import ROOT, commit
from tests.test_promote import (
    COMPANY_FLOW,
    SECRET,
    TEAM_FLOW,
    TEAM_NS,
    Result,
    World,
    edited,
    make_world,
)


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> World:
    return make_world(tmp_path, capsys)


def clean_error(result: Result, message: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err and "Traceback" not in result.out
    assert f"error: {message}" in result.err, result.err


def tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").parse(text)


def paragraphs(text: str) -> list[str]:
    return [t.content for t in tokens(text) if t.type == "inline"]


def html_blocks(text: str) -> list[str]:
    return [t.content for t in tokens(text) if t.type == "html_block"]


def no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert SECRET not in MarkdownIt("commonmark").render(text)


def feature(world: World, edits: dict[str, str | bytes | None], base: str = "main") -> None:
    world.git("switch", "-q", "-c", "feature", base)
    commit(world.work, "feature", edits)
    world.git("push", "-q", "origin", "feature")
    world.git("switch", "-q", "--detach")


def with_secret(world: World, rev: str = "main") -> str:
    text = world.show(rev, TEAM_NS)
    return text.replace("kv:\n", "secrets:\n  API_KEY: {description: partner API}\nkv:\n", 1)


# -- 4. check --------------------------------------------------------------------------------


@pytest.mark.parametrize("by_tenant_from", [0, snapshot.BY_TENANT_FROM])
def test_check_reports_owners_and_a_locked_path_set_by_a_child(
    world: World, monkeypatch: pytest.MonkeyPatch, by_tenant_from: int
) -> None:
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)  # large: tenant by tenant
    locked = world.show("main", TEAM_NS).replace(
        "  batch_size: 500\n", "  batch_size: 500\n  db: {host: rogue}\n"
    )
    feature(
        world,
        {TEAM_NS: locked, "tenants/acme/company/team/project-a/files/report.py": "print('v2')\n"},
    )
    args = ("--base", "origin/main", "--head", "origin/feature")

    text = world.cmd("check", *args)
    assert text.code == 1
    assert "acme/company.team  (modified)  owners: @acme/data" in text.out
    assert "acme/company.team.project-a  (modified)  owners: @acme/project-a" in text.out
    assert "✗ acme/company.team may not set variables.db.host" in text.out
    assert "locked by tenants/acme/company/namespace.yaml:13; ask @acme/platform" in text.out

    body = world.cmd("check", *args, "-o", "json").json()
    assert body["valid"] is False and body["summary"]["lock_violations"] == 1
    owners = {(n["tenant"], n["namespace"]): n["owners"] for n in body["namespaces"]}
    assert owners == {
        ("acme", "company.team"): ["@acme/data"],
        ("acme", "company.team.project-a"): ["@acme/project-a"],
    }
    [lock] = body["locks"]
    assert (lock["path"], lock["violation"], lock["ask"]) == (
        "variables.db.host",
        True,
        ["@acme/platform"],
    )

    github = world.cmd("check", *args, "-o", "github")
    assert github.code == 1
    assert "::error file=tenants/acme/company/team/namespace.yaml,line=6" in github.out
    assert (
        "::warning file=tenants/acme/company/team/namespace.yaml,line=6,title=headwater%3A locked path"
        in github.out
    )
    assert github.out.rstrip().splitlines()[-1].startswith("headwater check: 1 error")

    markdown = world.cmd("check", *args, "-o", "markdown", "--with-plans")
    assert markdown.code == 1
    assert any(p.startswith("❌ **Check:** 1 error, 0 warnings") for p in paragraphs(markdown.out))
    assert "_Plans not computed: the head does not validate._" in markdown.out
    assert markdown.out.startswith("<!-- headwater-plan-comment -->")  # CI still finds its comment


@pytest.mark.parametrize("by_tenant_from", [0, snapshot.BY_TENANT_FROM])
def test_check_markdown_with_plans_is_the_pull_request_comment(
    world: World, monkeypatch: pytest.MonkeyPatch, by_tenant_from: int
) -> None:
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)  # large: tenant by tenant
    feature(
        world,
        {
            TEAM_NS: with_secret(world),
            TEAM_FLOW: edited(world, TEAM_FLOW, "ingest failed", "ingest broke", rev="main"),
        },
    )
    result = world.cmd(
        "check",
        "--base",
        "origin/main",
        "--head",
        "origin/feature",
        "-o",
        "markdown",
        "--with-plans",
    )
    assert result.code == 0, result.err
    md = result.out
    assert md.startswith("<!-- headwater-plan-comment -->\n<!-- headwater-check -->\n")
    summary = [p for p in paragraphs(md) if "**Check:**" in p]
    assert summary == [
        "✅ **Check:** valid for dev, prod — 1 namespace changed, 0 locked paths touched, "
        "1 forced default affected, 0 deletions"
    ]
    blocks = html_blocks(md)
    assert any(
        b.startswith("<details><summary>acme/company.team — modified — <code>@acme/data</code>")
        for b in blocks
    )
    # the plans of the instances main feeds: prod only, one section per namespace
    assert "<!-- headwater-plans -->" in md and "<!-- headwater-plan:prod -->" in md
    assert "<!-- headwater-plan:dev -->" not in md
    assert "**Plan:** 2 to create, 3 to update, 0 to delete" in paragraphs(md)
    sections = [b.split("</summary>")[0] for b in blocks if b.startswith("<details><summary>acme/")]
    assert "<details><summary>acme/company.team — +1 ~2 -0" in sections
    assert "<details><summary>acme/company.team.project-a — +1 ~1 -0" in sections
    assert any(
        p.startswith("`+ create` secret `API_KEY`") and p.endswith("— (sensitive)")
        for p in paragraphs(md)
    )
    no_secret(md, result.err)


def test_check_with_plans_needs_to_know_the_base_branch(world: World) -> None:
    main = world.ref("main") or ""
    result = world.cmd("check", "--base", main, "--head", "HEAD", "--with-plans")
    clean_error(result, f"cannot tell which branch '{main}' is")
    assert (
        world.cmd(
            "check", "--base", main, "--head", "HEAD", "--with-plans", "--branch", "main"
        ).code
        == 0
    )


def test_check_bad_refs_fail_cleanly(world: World) -> None:
    clean_error(world.cmd("check", "--base", "nope", "--head", "HEAD"), "unknown revision 'nope'")


# -- 5. codeowners ---------------------------------------------------------------------------


def test_codeowners_check_fails_after_an_owners_change_until_regenerated(world: World) -> None:
    run = lambda *a: world.run("codeowners", "-C", str(world.work), *a)  # noqa: E731
    assert run("--check").code == 1  # no file yet
    written = run()
    assert written.code == 0 and "Wrote CODEOWNERS (9 rules)." in written.out
    assert "/tenants/acme/company/team/ @acme/data\n" in (world.work / "CODEOWNERS").read_text()
    assert run("--check").code == 0

    world.git("add", "CODEOWNERS")
    world.on(
        "main", {TEAM_NS: world.show("main", TEAM_NS).replace("@acme/data", "@acme/analytics")}
    )
    stale = run("--check")
    assert stale.code == 1
    assert "-/tenants/acme/company/team/ @acme/data" in stale.out
    assert "+/tenants/acme/company/team/ @acme/analytics" in stale.out
    assert "CODEOWNERS is out of date" in stale.err
    assert run().code == 0 and run("--check").code == 0


def test_codeowners_staged_sees_the_index(world: World) -> None:
    world.git("switch", "-q", "main")
    assert world.run("codeowners", "-C", str(world.work)).code == 0
    path = world.work / TEAM_NS
    path.write_text(path.read_text().replace("@acme/data", "@acme/analytics"))
    world.git("add", TEAM_NS)
    assert world.run("codeowners", "-C", str(world.work), "--check").code == 0  # HEAD: unchanged
    assert world.run("codeowners", "-C", str(world.work), "--check", "--staged").code == 1


# -- promote ---------------------------------------------------------------------------------


def test_promote_prints_the_prod_plan_as_the_pull_request_body(world: World) -> None:
    dev = world.on(
        "dev",
        {
            TEAM_NS: with_secret(world, "dev"),
            COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from"),
        },
    )
    assert world.cmd("apply", "--instance", "dev", "--yes").code == 0
    world.age("dev", 3600)
    before = world.refs()

    dry = world.cmd("promote", "--from", "dev", "--to", "prod", "--dry-run", "-o", "json")
    assert dry.code == 0, dry.err
    body = dry.json()
    assert body["promotion"]["source"] == dev and body["promotion"]["written"] is False
    assert world.refs() == before

    result = world.cmd(
        "promote",
        "--to",
        "prod",
        "--push",
        "origin",
        "-o",
        "markdown",
        "--expect-head",
        body["promotion"]["target_head"],
    )
    assert result.code == 0, result.err
    md = result.out
    branch = f"promote/dev-to-prod/{dev[:7]}"
    assert world.remote_ref(branch) == world.ref(branch)
    assert md.startswith("<!-- headwater-promotion -->")
    assert any(p.startswith("Promote `dev@" + dev[:7] + "` to `prod`") for p in paragraphs(md))
    assert "**Plan:** 2 to create, 3 to update, 0 to delete" in paragraphs(md)
    sections = [b.split(" — ")[0] for b in html_blocks(md) if b.startswith("<details>")]
    assert sections == [
        "<details><summary>acme/company",
        "<details><summary>acme/company.team",
        "<details><summary>acme/company.team.project-a",
    ]
    no_secret(md, result.err)

    again = world.cmd("promote", "--to", "prod", "--push", "origin")
    assert again.code == 0 and "commit:" in again.out  # the same promotion, same branch


def test_selective_promote_via_the_cli(world: World) -> None:
    world.on(
        "dev",
        {
            TEAM_FLOW: edited(world, TEAM_FLOW, "ingest failed", "ingest broke"),
            COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from"),
        },
    )
    assert world.cmd("apply", "--instance", "dev", "--yes").code == 0
    world.age("dev", 3600)
    result = world.cmd(
        "promote", "--to", "prod", "--namespace", "acme/company.team", "--direct", "-o", "json"
    )
    assert result.code == 0, result.err
    body = result.json()
    assert [c["address"] for c in body["plan"]["changes"]] == ["acme/company.team/flow/ingest"]
    assert world.ref("main") == body["promotion"]["commit"]
    assert world.show("main", COMPANY_FLOW) == world.show("origin/main", COMPANY_FLOW)


def test_promote_refusals_are_one_clean_line(world: World) -> None:
    clean_error(world.cmd("promote", "--to", "prod"), "dev has no successfully applied revision")
    world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    assert world.cmd("apply", "--instance", "dev", "--yes").code == 0
    before = world.refs()
    clean_error(world.cmd("promote", "--to", "qa"), "unknown instance 'qa'")
    clean_error(
        world.cmd("promote", "--from", "staging", "--to", "prod"), "unknown instance 'staging'"
    )
    soak = world.cmd("promote", "--to", "prod")
    clean_error(soak, "")
    assert "less than the 30m soak of prod" in soak.err and "--force --reason" in soak.err
    clean_error(
        world.cmd(
            "promote", "--to", "prod", "--force", "--reason", "x", "--namespace", "acme/nope"
        ),
        "unknown namespace 'acme/nope'",
    )
    old_main = world.ref("main") or ""
    world.on("main", {"tenants/globex/ops/files/README.md": "moved\n"})
    world.age("dev", 3600)
    moved = world.cmd("promote", "--to", "prod", "--expect-head", old_main)
    clean_error(moved, "main moved since the plan was shown")
    world.git("switch", "-q", "main")
    clean_error(
        world.cmd("promote", "--to", "prod", "--direct", "--force", "--reason", "x"),
        "main is checked out in",
    )
    assert world.refs() == {
        **before,
        "refs/heads/main": world.ref("main") or "",
        "remote:refs/heads/main": world.remote_ref("main") or "",
    }
    usage = world.cmd("promote", "--to", "prod", "--direct", "--branch", "x")
    assert usage.code == 2 and "--branch and --direct exclude each other" in usage.err
    assert world.cmd("promote", "--to", "prod", "--force").code == 2


def test_promote_invalid_for_prod_shows_the_diagnostics(world: World) -> None:
    bad = world.show("dev", TEAM_NS).replace(
        "variables: {batch_size: 5000}", "variables: {batch_size: 5000, db: {host: x}}"
    )
    world.on("dev", {TEAM_NS: bad})
    assert world.cmd("apply", "--instance", "dev", "--yes").code == 0
    world.age("dev", 3600)
    before = world.refs()
    result = world.cmd("promote", "--to", "prod")
    clean_error(result, "")
    assert "does not validate for prod" in result.err and "[config.locked]" in result.err
    assert world.refs() == before


# -- 6. rollback --git -----------------------------------------------------------------------


def test_rollback_git_commits_the_earlier_tree_and_the_next_sync_applies_it(world: World) -> None:
    first = world.ref("main") or ""
    assert world.cmd("apply", "--instance", "prod", "--yes").code == 0
    world.on(
        "main", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from", rev="main")}
    )
    assert world.cmd("apply", "--instance", "prod", "--yes").code == 0
    hello = world.state / "instances/prod/current/acme/company/flows/hello.yaml"
    assert "Hi from" in hello.read_text()

    result = world.cmd("rollback", "--instance", "prod", "--to", first, "--git", "--push", "origin")
    assert result.code == 0, result.err
    assert "~ flow hello" in result.out and "The next sync applies it" in result.out
    head = world.ref("main") or ""
    assert head == world.remote_ref("main")
    assert world.git("rev-parse", f"{head}^{{tree}}") == world.git("rev-parse", f"{first}^{{tree}}")
    assert world.status_applied("prod") != head  # nothing applied yet

    assert world.cmd("apply", "--instance", "prod", "--yes").code == 0
    assert world.status_applied("prod") == head
    assert "Hello from" in hello.read_text()


def test_rollback_git_refusals(world: World) -> None:
    clean_error(world.cmd("rollback", "--instance", "prod", "--to", "main", "--git"), "")
    assert world.cmd("apply", "--instance", "prod", "--yes").code == 0
    done = world.cmd("rollback", "--instance", "prod", "--to", "main", "--git")
    assert done.code == 0 and "nothing to do" in done.out
    assert world.cmd("rollback", "--instance", "prod", "--to", "main", "--push", "origin").code == 2


def test_ci_without_a_git_identity(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    feature(
        world, {TEAM_FLOW: edited(world, TEAM_FLOW, "ingest failed", "ingest broke", rev="main")}
    )
    # main moves on: the plan compares main with the merge (a scratch commit), so main's own
    # change does not show as reverted
    world.on("main", {"tenants/globex/ops/files/backup.sh": "#!/bin/sh\necho main moved on\n"})
    world.on("dev", {COMPANY_FLOW: edited(world, COMPANY_FLOW, "Hello from", "Hi from")})
    assert world.cmd("apply", "--instance", "dev", "--yes").code == 0
    world.age("dev", 3600)
    for role in ("AUTHOR", "COMMITTER"):
        for what in ("NAME", "EMAIL"):
            monkeypatch.delenv(f"GIT_{role}_{what}")
    monkeypatch.setenv("EMAIL", "")
    args = ("--base", "origin/main", "--head", "origin/feature", "-o", "json", "--with-plans")
    result = world.cmd("check", *args)
    assert result.code == 0, result.err
    [plan] = result.json()["plans"]
    assert [c["address"] for c in plan["changes"]] == ["acme/company.team/flow/ingest"]
    # a promotion is a real commit: it needs the user's identity, and says so
    refused = world.cmd("promote", "--to", "prod")
    clean_error(refused, "git commit-tree failed")
    assert "hint: set a git identity" in refused.err


# -- examples and pre-commit hooks -----------------------------------------------------------


def test_examples_and_hooks_are_valid_and_name_real_commands() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert {h["id"] for h in hooks} == {"headwater-validate-flows", "headwater-codeowners"}
    for hook in hooks:
        words = shlex.split(hook["entry"])
        assert words[0] == "headwater" and words[1] in cli.commands
        options = {o for p in cli.commands[words[1]].params for o in p.opts}
        assert set(words[2:]) <= options, hook["entry"]
    for path in [
        *(ROOT / "examples/github-actions").glob("*.yml"),
        ROOT / "examples/gitlab-ci/.gitlab-ci.yml",
    ]:
        assert yaml.safe_load(path.read_text()), path
    pull_request = (ROOT / "examples/github-actions/pull-request.yml").read_text()
    assert "'<!-- headwater-plan'" in pull_request and "--with-plans" in pull_request
    assert "<!-- headwater-plan" in (ROOT / "examples/gitlab-ci/.gitlab-ci.yml").read_text()
