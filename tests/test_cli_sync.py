"""`plan`, `apply`, `status`, `history` and `rollback` as a user runs them: outputs and exit codes,
saved plans, rollback, secrets that never leak, and bad input that fails in one clear line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from headwater import render, snapshot
from headwater.plan import Plan
from headwater.targets.local import LocalTarget
from tests.gitutil import ROOT, commit, git
from tests.test_engine import HELLO_DEV, Headwater, blob, commit_on

PLAN_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas/plan.schema.json").read_text()))


@pytest.fixture
def hw(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Headwater:
    return Headwater(sample, tmp_path / "state", capsys)


def valid_plan(text: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(text)
    errors = sorted(PLAN_SCHEMA.iter_errors(plan), key=str)
    assert not errors, [e.message for e in errors]
    return plan


# -- 2. plan -----------------------------------------------------------------------------------


def test_plan_right_after_an_apply_has_no_changes(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    text = hw.plan("dev", "--detailed-exitcode")
    assert text.code == 0
    assert "no changes" in text.out.lower()
    plan = valid_plan(hw.plan("dev", "--detailed-exitcode", "-o", "json").out)
    assert plan["changes"] == [] and plan["summary"]["create"] == 0
    assert plan["summary"]["unchanged"] == 41
    markdown = hw.plan("dev", "-o", "markdown")
    assert "**No changes.** Instance `dev` is up to date." in markdown.out


def test_missing_secret_values_are_warnings_that_quiet_silences(hw: Headwater) -> None:
    loud = hw.plan("dev")
    assert "warning: secret DB_PASSWORD of acme/company, acme/company.team" in loud.err
    warnings = [line for line in loud.err.splitlines() if line.startswith("warning: secret")]
    assert len(warnings) == 3  # one per secret name (DB_PASSWORD, PAGER_TOKEN, SLACK_WEBHOOK)
    quiet = hw.run("-q", "plan", "-C", str(hw.repo), "--state-dir", str(hw.state), "--instance", "dev")
    assert quiet.code == 0 and quiet.err == "" and "Plan: 41 to create" in quiet.out


@pytest.mark.parametrize("by_tenant_from", [0, snapshot.BY_TENANT_FROM])
def test_plan_text_and_json_are_made_tenant_by_tenant_and_are_the_whole_plans(
    hw: Headwater, monkeypatch: pytest.MonkeyPatch, by_tenant_from: int, tmp_path: Path
) -> None:
    """The text, JSON and Markdown plans of a large commit go tenant by tenant: the same
    output, shown or saved, for a commit with changes in two tenants, a drift, and a tenant
    gone."""
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)
    assert hw.apply("dev").code == 0
    commit_on(hw, {
        "tenants/acme/company/flows/hello.yaml": HELLO_DEV,
        "tenants/globex": None,
    })
    flow = next((hw.instance_dir("dev") / "current/acme/company.team/flows").iterdir())
    flow.chmod(0o644)
    flow.write_text("changed by hand\n")
    for args in ([], ["--no-color"]):
        monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 10**9)
        reference = hw.plan("dev", "-o", "json", *args).out  # made whole
        comment = hw.plan("dev", "-o", "markdown", *args).out
        whole = Plan.from_json(valid_plan(reference))
        monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)
        text = hw.plan("dev", "--detailed-exitcode", *args)
        assert text.code == 2
        assert text.out == render.plan_text(whole, color=False) + "\n"
        assert whole.summary()["delete"] and whole.summary()["update"] and whole.drift
        assert hw.plan("dev", "-o", "json", *args).out == reference
        assert hw.plan("dev", "-o", "markdown", *args).out == comment
        saved = tmp_path / "saved.json"
        shown = hw.plan("dev", "--out", str(saved), *args)
        assert shown.out == text.out and saved.read_text() == reference
        assert hw.plan("dev", "-o", "json", "--out", str(saved), *args).out == reference == saved.read_text()
    assert len({c.key.tenant for c in whole.changes}) > 1


@pytest.mark.parametrize("by_tenant_from", [0, snapshot.BY_TENANT_FROM])
def test_a_plan_of_an_invalid_commit_shows_no_part_of_a_plan(
    hw: Headwater, monkeypatch: pytest.MonkeyPatch, by_tenant_from: int
) -> None:
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)
    commit_on(hw, {
        "tenants/acme/company/flows/hello.yaml": HELLO_DEV,  # a change in the first tenant
        "tenants/zeta/ops/flows/broken.yaml": "id: broken\n  tasks: [\n",  # an error in the last
    })
    result = hw.plan("dev")
    assert result.code == 1 and result.out == ""
    assert result.err == hw.plan("dev", "-o", "markdown").err  # as the whole plan says it
    assert "1 validation error(s)" in result.err
    saved = hw.repo.parent / "saved.json"
    refused = hw.plan("dev", "-o", "json", "--out", str(saved))
    assert (refused.code, refused.out, refused.err) == (1, "", result.err) and not saved.exists()


def test_plan_after_editing_one_flow_is_one_update(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    rev = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})

    text = hw.plan("dev", "--detailed-exitcode")
    assert text.code == 2
    assert "~ flow hello" in text.out
    assert "+    message: hello from dev" in text.out
    assert "Plan: 0 to create, 1 to update, 0 to delete." in text.out

    result = hw.plan("dev", "--detailed-exitcode", "-o", "json")
    assert result.code == 2
    plan = valid_plan(result.out)
    assert plan["revision"] == rev
    assert plan["summary"] == {"create": 0, "update": 1, "delete": 0, "drift": 0, "unchanged": 40}
    [change] = plan["changes"]
    assert (change["address"], change["action"], change["binary"]) == ("acme/company/flow/hello", "update", False)
    assert change["source"] == "tenants/acme/company/flows/hello.yaml"
    assert "+    message: hello from dev\n" in change["diff"]

    markdown = hw.plan("dev", "-o", "markdown", "--detailed-exitcode")
    assert markdown.code == 2
    assert "**Plan:** 0 to create, 1 to update, 0 to delete" in markdown.out
    assert "<details><summary>acme/company — +0 ~1 -0</summary>" in markdown.out


def test_plan_lists_the_deletions_of_a_removed_namespace(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    commit_on(hw, {"tenants/acme/company/team/project-a": None})
    result = hw.plan("dev", "--detailed-exitcode", "-o", "json")
    assert result.code == 2
    plan = valid_plan(result.out)
    assert {c["action"] for c in plan["changes"]} == {"delete"}
    assert {(c["namespace"], c["kind"], c["name"]) for c in plan["changes"]} == {
        ("company.team.project-a", "config", "config"),
        ("company.team.project-a", "kv", "feature_flags"),
        ("company.team.project-a", "kv", "last_backfill"),
        ("company.team.project-a", "file", "report.py"),
        ("company.team.project-a", "file", "scripts/common.py"),
        ("company.team.project-a", "file", "sql/load.sql"),
        ("company.team.project-a", "file", "sql/schema.sql"),
        ("company.team.project-a", "flow", "daily"),
        ("company.team.project-a", "flow", "report"),
    }
    # deletions go callers first, kinds in reverse: flows, then files, then kv, then config
    kinds = [c["kind"] for c in plan["changes"]]
    assert kinds == sorted(kinds, key=["flow", "file", "secret", "kv", "config"].index)
    text = hw.plan("dev").out
    assert "- flow daily" in text and "- config config" in text
    assert "Plan: 0 to create, 0 to update, 9 to delete." in text


PNG_1 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
PNG_2 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(reversed(range(256)))


def test_a_changed_binary_file_shows_a_hash_change_and_no_diff(hw: Headwater) -> None:
    commit_on(hw, {"tenants/acme/marketing.emea/files/img/logo.png": PNG_1})
    assert hw.apply("dev").code == 0
    assert (hw.instance_dir("dev") / "current/acme/marketing.emea/files/img/logo.png").read_bytes() == PNG_1
    commit(hw.repo, "new logo", {"tenants/acme/marketing.emea/files/img/logo.png": PNG_2})

    plan = valid_plan(hw.plan("dev", "-o", "json").out)
    [change] = plan["changes"]
    assert change["address"] == "acme/marketing.emea/file/img/logo.png"
    assert change["action"] == "update" and change["binary"] is True and change["diff"] is None
    old = "sha256:" + hashlib.sha256(PNG_1).hexdigest()
    new = "sha256:" + hashlib.sha256(PNG_2).hexdigest()
    assert (change["before_hash"], change["after_hash"]) == (old, new)

    text = hw.plan("dev").out
    assert f"~ file img/logo.png  (tenants/acme/marketing.emea/files/img/logo.png) (binary) sha256:{old[7:19]}… → sha256:{new[7:19]}…" in text
    assert "@@" not in text
    markdown = hw.plan("dev", "-o", "markdown").out
    assert "binary" in markdown and "```diff" not in markdown


def test_plan_of_two_refs_needs_no_instance(hw: Headwater) -> None:
    base = git(hw.repo, "rev-parse", "main")
    head = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    result = hw.plan("prod", "--base", base, "--head", head, "-o", "json", "--detailed-exitcode")
    assert result.code == 2
    plan = valid_plan(result.out)
    assert (plan["base"], plan["revision"]) == (base, head)
    assert [c["address"] for c in plan["changes"]] == ["acme/company/flow/hello"]
    assert not (hw.state / "instances").exists()


# -- 8. saved plans ------------------------------------------------------------------------------


def test_a_saved_plan_applies_exactly(hw: Headwater, tmp_path: Path) -> None:
    assert hw.apply("dev").code == 0
    rev = commit_on(hw, {
        "tenants/acme/company/flows/hello.yaml": HELLO_DEV,
        "tenants/acme/company/team/project-a/flows/daily.yaml": None,
    })
    planfile = tmp_path / "dev.plan.json"
    shown = hw.plan("dev", "-o", "json", "--out", str(planfile))
    assert shown.code == 0
    saved = valid_plan(planfile.read_text())
    assert saved == json.loads(shown.out)

    result = hw.cmd("apply", str(planfile))
    assert result.code == 0, result.err
    assert f"Applied {rev[:12]} to dev: 0 created, 1 updated, 1 deleted." in result.out
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == rev
    history = json.loads(hw.run("history", "--instance", "dev", "-o", "json", "--state-dir", str(hw.state)).out)
    latest = history["history"][0]
    assert latest["revision"] == rev
    assert {k: latest["summary"][k] for k in saved["summary"]} == saved["summary"]
    assert hw.plan("dev", "--detailed-exitcode").code == 0


def test_a_saved_plan_is_refused_once_the_instance_changed(hw: Headwater, tmp_path: Path) -> None:
    assert hw.apply("dev").code == 0
    old = git(hw.repo, "rev-parse", "dev")
    commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    planfile = tmp_path / "dev.plan.json"
    assert hw.plan("dev", "--out", str(planfile)).code == 0
    # someone edits the instance by hand after the plan was made
    config = hw.instance_dir("dev") / "current/acme/company/config.json"
    config.chmod(0o644)
    config.write_text("{}\n")

    result = hw.cmd("apply", str(planfile))
    assert result.code == 1
    assert result.err.startswith("error: the saved plan is stale")
    assert "Traceback" not in result.err
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == old


def test_a_saved_plan_is_refused_once_another_apply_happened(hw: Headwater, tmp_path: Path) -> None:
    assert hw.apply("dev").code == 0
    first = git(hw.repo, "rev-parse", "dev")
    second = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    planfile = tmp_path / "dev.plan.json"
    assert hw.plan("dev", "--rev", second, "--out", str(planfile)).code == 0
    git(hw.repo, "checkout", "-q", "-b", "hotfix", first)
    hotfix = commit(hw.repo, "hotfix", {"tenants/acme/company/flows/hello.yaml": HELLO_DEV + "# hotfix\n"})
    assert hw.apply("dev", "--rev", hotfix).code == 0

    result = hw.cmd("apply", str(planfile))
    assert result.code == 1
    assert "the saved plan is stale" in result.err
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == hotfix


def test_a_saved_plan_is_refused_once_the_branch_moved(hw: Headwater, tmp_path: Path) -> None:
    assert hw.apply("dev").code == 0
    old = git(hw.repo, "rev-parse", "dev")
    planned = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    planfile = tmp_path / "dev.plan.json"
    assert hw.plan("dev", "--out", str(planfile)).code == 0
    moved = commit(hw.repo, "another", {"tenants/acme/company/flows/notify.yaml": None})

    result = hw.cmd("apply", str(planfile))
    assert result.code == 1
    assert result.err.splitlines()[0] == (
        f"error: the saved plan is stale: the branch of instance dev moved from {planned[:12]}"
        f" to {moved[:12]} since the plan was made"
    )
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == old


def test_a_saved_plan_of_a_commit_off_the_branch_applies(hw: Headwater, tmp_path: Path) -> None:
    assert hw.apply("dev").code == 0
    git(hw.repo, "checkout", "-q", "-b", "feature", "dev")
    feature = commit(hw.repo, "feature", {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    planfile = tmp_path / "dev.plan.json"
    assert hw.plan("dev", "--rev", "feature", "--out", str(planfile)).code == 0
    assert hw.cmd("apply", str(planfile)).code == 0
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == feature


def test_a_saved_plan_of_a_large_commit_is_checked_tenant_by_tenant(
    hw: Headwater, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved plan is read a change at a time and compared with the sets of each tenant's
    changes as a large commit is applied tenant by tenant: the whole plan is never held."""
    from headwater.engine import Engine

    paths: list[bool] = []
    real = Engine._apply_by_tenant

    def counted(self: Engine, *args: Any, **kwargs: Any) -> Any:
        paths.append(kwargs.get("saved") is not None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_apply_by_tenant", counted)
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 0)  # a large commit, as far as the CLI knows
    assert hw.apply("dev").code == 0
    rev = commit_on(hw, {
        "tenants/acme/company/flows/hello.yaml": HELLO_DEV,
        "tenants/acme/company/team/project-a/flows/daily.yaml": None,
    })
    planfile = tmp_path / "dev.plan.json"
    assert hw.plan("dev", "--out", str(planfile)).code == 0
    body = json.loads(planfile.read_text())
    for tamper in ("hash", "drop"):  # a change that would make something else; one missing
        changes = [dict(c) for c in body["changes"]]
        if tamper == "hash":
            changes[0]["after_hash"] = "sha256:" + "0" * 64
        else:
            changes.pop()
        tampered = tmp_path / f"{tamper}.plan.json"
        tampered.write_text(json.dumps({**body, "changes": changes}))
        result = hw.cmd("apply", str(tampered))
        assert result.code == 1 and "applying now would make different changes" in one_clear_line(result.err)
    assert LocalTarget(hw.instance_dir("dev")).current_revision() != rev

    result = hw.cmd("apply", str(planfile))
    assert result.code == 0, result.err
    assert f"Applied {rev[:12]} to dev: 0 created, 1 updated, 1 deleted." in result.out
    assert "~ flow hello" in result.out  # the plan applied is shown, as the tenants are checked
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == rev
    assert paths and all(paths[-3:]) and not paths[0]  # the three saved plans went tenant by tenant

    # the instance changed by hand since a plan was made: refused as stale, as whole
    commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV + "# again\n"})
    assert hw.plan("dev", "--out", str(planfile)).code == 0
    config = hw.instance_dir("dev") / "current/acme/company/config.json"
    config.chmod(0o644)
    config.write_text("{}\n")
    result = hw.cmd("apply", str(planfile))
    assert result.code == 1 and one_clear_line(result.err).startswith("error: the saved plan is stale: the instance")


# -- 9. rollback -----------------------------------------------------------------------------------


@pytest.mark.parametrize("by_tenant_from", [snapshot.BY_TENANT_FROM, 0])  # 0: as a large commit
def test_rollback_to_an_earlier_applied_revision(
    hw: Headwater, monkeypatch: pytest.MonkeyPatch, by_tenant_from: int
) -> None:
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", by_tenant_from)
    assert hw.apply("dev").code == 0
    first = git(hw.repo, "rev-parse", "dev")
    second = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    assert hw.apply("dev").code == 0

    result = hw.cmd("rollback", "--instance", "dev", "--to", first[:10])
    assert result.code == 0, result.err
    *plan, counts, rolled = result.out.splitlines()  # the plan, then what was done
    assert (counts, rolled) == ("Plan: 0 to create, 1 to update, 0 to delete.", f"Rolled dev back to {first[:12]}.")
    assert any(line.strip().startswith("~ flow hello") for line in plan)
    current = hw.instance_dir("dev") / "current"
    assert (current / "acme/company/flows/hello.yaml").read_bytes() == blob(
        hw.repo, first, "tenants/acme/company/flows/hello.yaml"
    )
    assert LocalTarget(hw.instance_dir("dev")).current_revision() == first

    history = hw.run("history", "--instance", "dev", "-o", "json", "--state-dir", str(hw.state))
    entries = json.loads(history.out)["history"]
    assert [(e["action"], e["revision"]) for e in entries] == [
        ("rollback", first), ("apply", second), ("apply", first),
    ]
    text = hw.run("history", "--instance", "dev", "--state-dir", str(hw.state)).out
    assert f"rollback  {first[:12]}  +0 ~1 -0" in text.splitlines()[0]

    body = hw.status("dev")
    assert body["applied_revision"] == body["target_revision"] == first
    assert body["branch_revision"] == second
    assert body["behind_git"] is True
    assert "(the instance differs from its branch)" in hw.cmd("status", "--instance", "dev").out
    # the next apply of the branch brings it back
    assert hw.apply("dev").code == 0
    assert hw.status("dev")["behind_git"] is False


def test_rollback_refuses_a_revision_never_applied(hw: Headwater) -> None:
    assert hw.apply("dev").code == 0
    other = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    result = hw.cmd("rollback", "--instance", "dev", "--to", other)
    assert result.code == 1
    assert result.err.startswith(f"error: {other[:12]} was never applied to dev")
    assert "Traceback" not in result.err


# -- 7. secrets never leak ---------------------------------------------------------------------------

SECRETS = {
    "acme/company/DB_PASSWORD": "hw-DB-pa55-Qz8vK3mW",
    "acme/SLACK_WEBHOOK": "https://hooks.example/T0-hw-sl4ck-Xy7Rt",
    "globex/ops/PAGER_TOKEN": "pgr-tok-hw-9f8e7d6c5b4a",
}
NEW_DB_PASSWORD = "hw-DB-r0tated-Lm2Np4Qr"


def needles(value: str) -> list[str]:
    raw = value.encode()
    encoded = [base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b32encode(raw)]
    forms = [value, raw.hex(), *(e.decode() for e in encoded), *(e.decode().rstrip("=") for e in encoded)]
    return forms


def assert_clean(where: str, text: str | bytes) -> None:
    data = text if isinstance(text, str) else text.decode("latin-1")
    for value in [*SECRETS.values(), NEW_DB_PASSWORD]:
        for form in needles(value):
            assert form not in data, f"a secret value ({form[:6]}…) leaked into {where}"


def dump_sqlite(path: Path) -> list[tuple[str, tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [(t, row) for t in tables for row in db.execute(f'SELECT * FROM "{t}"')]
    finally:
        db.close()


def test_secret_values_reach_only_the_target(
    hw: Headwater, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    for path, value in SECRETS.items():
        file = hw.state / "secrets" / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(value)
    outputs: list[tuple[str, str]] = []

    def run(*argv: str) -> str:
        result = hw.run(*argv)
        assert result.code == 0, (argv, result.err)
        outputs.append((" ".join(argv), result.out + result.err))
        return result.out

    repo, state = ("-C", str(hw.repo)), ("--state-dir", str(hw.state))
    planfile = tmp_path / "plan.json"
    for fmt in ("text", "json", "github"):
        run("-v", "validate", *repo, "-o", fmt)
    for ns in ("acme/company", "acme/company.team.project-a", "globex/ops.monitoring.alerts"):
        for fmt in ("text", "json"):
            run("-v", "explain", *repo, "--instance", "dev", "-o", fmt, ns)
    for fmt in ("text", "json", "markdown"):
        run("-vv", "plan", *repo, *state, "--instance", "dev", "-o", fmt, "--out", str(planfile))
        outputs.append(("plan file", planfile.read_text()))
    run("-vv", "apply", *repo, *state, "--instance", "dev", "--yes")
    first = git(hw.repo, "rev-parse", "dev")

    # the values reach the target: 0600 secrets.env in Kestra's SECRET_<NAME>=<base64> form
    current = hw.instance_dir("dev") / "current"

    def env(namespace: str) -> dict[str, str]:
        path = current / namespace / "secrets.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = path.read_text().splitlines()
        return {k: base64.b64decode(v).decode() for k, _, v in (line.partition("=") for line in lines)}

    db, slack, pager = SECRETS.values()
    assert env("acme/company") == {"SECRET_DB_PASSWORD": db, "SECRET_SLACK_WEBHOOK": slack}
    assert env("acme/company.team.project-a") == {"SECRET_DB_PASSWORD": db, "SECRET_SLACK_WEBHOOK": slack}
    assert env("acme/marketing.emea") == {"SECRET_SLACK_WEBHOOK": slack}
    assert env("globex/ops.monitoring.alerts") == {"SECRET_PAGER_TOKEN": pager}

    # a rotated value and a hand-edited secrets.env: both plans show "(sensitive)" only
    (hw.state / "secrets/acme/company/DB_PASSWORD").write_text(NEW_DB_PASSWORD + "\n")
    text = run("-v", "plan", *repo, *state, "--instance", "dev")
    assert "~ secret DB_PASSWORD  (secret DB_PASSWORD) (sensitive)" in text
    rotated = valid_plan(run("-v", "plan", *repo, *state, "--instance", "dev", "-o", "json"))
    assert {c["address"] for c in rotated["changes"]} == {
        f"acme/{ns}/secret/DB_PASSWORD" for ns in ("company", "company.team", "company.team.project-a")
    }
    assert all(c["before_hash"] == c["after_hash"] == "(sensitive)" for c in rotated["changes"])
    assert "(sensitive)" in run("-v", "plan", *repo, *state, "--instance", "dev", "-o", "markdown")
    run("-vv", "apply", *repo, *state, "--instance", "dev", "--yes")
    assert env("acme/company")["SECRET_DB_PASSWORD"] == NEW_DB_PASSWORD
    secrets_env = current / "globex/ops/secrets.env"
    secrets_env.write_text("SECRET_PAGER_TOKEN=" + base64.b64encode(b"changed").decode() + "\n")
    text = run("-v", "plan", *repo, *state, "--instance", "dev")
    assert "! ~ secret PAGER_TOKEN  (secret PAGER_TOKEN) (sensitive)" in text
    run("-v", "status", *repo, *state)
    run("-v", "status", *repo, *state, "-o", "json")
    run("-v", "apply", *repo, *state, "--instance", "dev", "--yes")
    run("-v", "rollback", *repo, *state, "--instance", "dev", "--to", first)
    for fmt in ("text", "json"):
        run("-v", "history", *state, "--instance", "dev", "-o", fmt)
        run("-v", "status", *repo, *state, "-o", fmt)

    # and in a real process, where -vv sends every log record to stderr
    proc = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "-vv", "apply", *repo, *state, "--instance", "dev", "--yes"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    outputs.append(("subprocess apply -vv", proc.stdout + proc.stderr))

    for where, text in outputs:
        assert_clean(where, text)
    assert_clean("logs", caplog.text)
    databases = [p for p in hw.state.iterdir() if p.suffix == ".db"]
    assert hw.state / "state.db" in databases
    for path in databases:
        rows = dump_sqlite(path)
        assert rows
        for table, row in rows:
            assert_clean(f"{path.name} table {table}", repr(row))
    for path in hw.state.glob("*.db*"):
        assert_clean(path.name, path.read_bytes())
    # in the instance, only secrets.env files hold them
    for path in hw.instance_dir("dev").rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "secrets.env":
            assert_clean(str(path), path.read_bytes())


# -- bad input ---------------------------------------------------------------------------------------


def one_clear_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) <= 2 and all(line.startswith("  hint: ") for line in lines[1:]), err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "--instance", "staging", "--yes"], "error: unknown instance 'staging'"),
        (["apply", "--instance", "dev", "--rev", "no-such-ref", "--yes"], "error: unknown revision 'no-such-ref'"),
        # An unknown full commit id is checked like any other revision.
        (["apply", "--instance", "dev", "--rev", "0" * 40, "--yes"], "error: unknown revision '000"),
        (["plan", "--instance", "staging"], "error: unknown instance 'staging'"),
        (["rollback", "--instance", "dev", "--to", "nope"], "error: unknown revision 'nope'"),
    ],
)
def test_bad_input_is_one_clear_line(hw: Headwater, args: list[str], message: str) -> None:
    result = hw.cmd(*args)
    assert result.code == 1
    assert one_clear_line(result.err).startswith(message)


def test_a_directory_that_is_not_a_repository(hw: Headwater, tmp_path: Path) -> None:
    for path in (tmp_path / "empty", tmp_path / "missing"):
        if path.name == "empty":
            path.mkdir()
        hw.repo = path
        result = hw.apply("dev")
        assert result.code == 1
        assert one_clear_line(result.err) == f"error: {path} is not a Git repository"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not a plan file"),
        ("[]", "not a plan file"),
        ('{"format_version": 1}', "not a valid Headwater plan: missing field 'instance'"),
        ('{"format_version": 99}', "not a valid Headwater plan: unsupported format_version"),
        (b"\xff\xfe\x00garbage", "not a plan file (not UTF-8 text)"),
        ('{"instance": "d\u00e9v", "revision": "caf\u00e9"]', "not a plan file (parse error: "),
    ],
)
def test_a_corrupt_plan_file(hw: Headwater, tmp_path: Path, content: str | bytes, message: str) -> None:
    planfile = tmp_path / "plan.json"
    if isinstance(content, bytes):
        planfile.write_bytes(content)
    else:
        planfile.write_text(content)
    result = hw.cmd("apply", str(planfile))
    assert result.code == 1
    assert message in one_clear_line(result.err)


def test_a_missing_plan_file_and_an_unwritable_out(hw: Headwater, tmp_path: Path) -> None:
    result = hw.cmd("apply", str(tmp_path / "missing.json"))
    assert result.code == 1
    assert "cannot read plan file" in one_clear_line(result.err)
    result = hw.plan("dev", "--out", str(tmp_path / "no" / "such" / "dir.json"))
    assert result.code == 1
    assert "cannot write plan file" in one_clear_line(result.err)


def test_a_plan_file_is_written_whole_or_not_at_all(
    hw: Headwater, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "plans" / "dev.json"
    out.parent.mkdir()
    assert hw.plan("dev", "--out", str(out)).code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # as any file the user writes
    out.chmod(0o640)
    assert hw.plan("dev", "--out", str(out)).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # a file there keeps its permissions
    saved = out.read_bytes()
    assert json.loads(saved) == json.loads(hw.plan("dev", "-o", "json").out)
    whole, in_parts = render.write_plan_json, render.PlanJson.finish

    def disk_full(plan: Plan, write: Any) -> None:
        whole(plan, write)  # all of it, then the disk fills
        raise OSError(28, "No space left on device")

    def disk_full_in_parts(self: render.PlanJson, plan: Plan, write: Any) -> None:
        in_parts(self, plan, write)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render, "write_plan_json", disk_full)
    monkeypatch.setattr(render.PlanJson, "finish", disk_full_in_parts)
    base = git(hw.repo, "rev-parse", "dev")
    head = commit_on(hw, {"tenants/acme/company/flows/hello.yaml": HELLO_DEV})
    for args in (["dev"], ["dev", "-o", "json"], ["dev", "--base", base, "--head", head]):
        result = hw.plan(*args, "--out", str(out))
        assert result.code == 1 and "cannot write plan file" in one_clear_line(result.err)
        assert "No space left on device" in result.err
        assert out.read_bytes() == saved and sorted(out.parent.iterdir()) == [out]


def test_a_state_dir_that_is_a_file(hw: Headwater, tmp_path: Path) -> None:
    hw.state = tmp_path / "state-file"
    hw.state.write_text("not a directory\n")
    for result in (
        hw.apply("dev"), hw.plan("dev"), hw.cmd("status"),
        hw.cmd("rollback", "--instance", "dev", "--to", "HEAD"),
        hw.run("history", "--instance", "dev", "--state-dir", str(hw.state)),
    ):
        assert result.code == 1
        assert str(hw.state) in one_clear_line(result.err)


def test_an_apply_goes_tenant_by_tenant_shows_the_whole_plan_and_ends_as_a_quiet_one(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headwater.engine import Engine

    paths: list[bool] = []
    real = Engine._apply_by_tenant

    def counted(self: Engine, *args: Any, **kwargs: Any) -> Any:
        paths.append(True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_apply_by_tenant", counted)
    monkeypatch.setattr(snapshot, "BY_TENANT_FROM", 0)  # a large commit, as far as the CLI knows
    loud, quiet = Headwater(sample, tmp_path / "loud", capsys), Headwater(sample, tmp_path / "quiet", capsys)
    whole = loud.plan("dev", "-o", "json")  # the whole plan (JSON is made whole)
    expected = render.plan_text(Plan.from_json(json.loads(whole.out)), color=False)
    shown = loud.apply("dev")
    assert shown.code == 0 and paths == [True]
    assert shown.out.startswith(expected + "\n") and "to create" in expected
    silent = quiet.run("-q", "apply", "-C", str(sample), "--state-dir", str(quiet.state), "--instance", "dev", "--yes")
    assert silent.code == 0 and paths == [True, True]
    assert silent.out.strip() == "Applied " + shown.out.strip().rsplit("Applied ", 1)[1]
    targets = [LocalTarget(hw.instance_dir("dev"), keep=5) for hw in (loud, quiet)]
    assert targets[0].manifest() == targets[1].manifest() != {}
