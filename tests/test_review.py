"""review.py: what `check` reports between two commits, and the CODEOWNERS rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater import flowbatch, review, snapshot
from headwater.cli.review import review_of
from headwater.gitrepo import GitRepo
from tests.gitutil import commit, git

TEAM_NS = "tenants/acme/company/team/namespace.yaml"
COMPANY_NS = "tenants/acme/company/namespace.yaml"
TENANT = "tenants/acme/tenant.yaml"
REPORT = "tenants/acme/company/team/project-a/flows/report.yaml"
PYTHON = "io.kestra.plugin.scripts.python.Script"


def change(repo: Path, edits: dict[str, str | None], base: str = "main") -> review.Review:
    """The review of ``edits`` on top of ``base``; ``check``'s, tenant by tenant (as for a
    large commit), is the same."""
    git(repo, "switch", "-q", "-C", "feature", base)
    files: dict[str, str | bytes | None] = {}
    for path, new in edits.items():
        files[path] = new
    head = commit(repo, "feature", files)
    with GitRepo(repo) as r:
        since = r.merge_base(base, head) or r.resolve(base)
        whole = review.review(snapshot.load(r, since), snapshot.load(r, head), r.diff_tree(since, head))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(snapshot, "BY_TENANT_FROM", 0)
            assert review_of(r, since, head) == whole
        return whole


def text(repo: Path, path: str) -> str:
    return (repo / path).read_text()


def test_owners_of_every_changed_namespace(sample: Path) -> None:
    r = change(
        sample,
        {
            REPORT: text(sample, REPORT).replace("report ready", "report done"),
            "tenants/acme/marketing.emea/flows/new.yaml": "id: new\nnamespace: marketing.emea\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: x\n",
            "tenants/globex/ops/files/backup.sh": "#!/bin/sh\necho changed\n",
            "README.md": "changed\n",
        },
    )
    assert r.errors == 0
    owners = {(ns.tenant, ns.namespace): (ns.status, ns.owners) for ns in r.namespaces}
    assert owners == {
        ("acme", "company.team.project-a"): ("modified", ("@acme/project-a",)),
        ("acme", "marketing.emea"): ("modified", ("@acme/platform",)),  # inherited from the tenant
        ("globex", "ops"): ("modified", ("ops@globex.example",)),
    }
    assert r.other_paths == (("M", "README.md"),)
    assert not r.locks and not r.deletions


def test_a_child_setting_a_locked_path_is_flagged_with_who_to_ask(sample: Path) -> None:
    team = text(sample, TEAM_NS).replace(
        "  batch_size: 500\n", "  batch_size: 500\n  db: {host: rogue}\n"
    )
    company = text(sample, COMPANY_NS).replace(
        "db: {host: db.prod.internal}", "db: {host: db2.prod.internal}"
    )
    r = change(sample, {TEAM_NS: team, COMPANY_NS: company})
    assert any(d.code == "config.locked" for d in r.diagnostics) and r.errors
    by_file = {t.file: t for t in r.locks}
    violation = by_file[TEAM_NS]
    assert violation.violation and violation.path == "variables.db.host"
    assert violation.lock == "variables.db.host" and violation.locked_by == f"{COMPANY_NS}:13"
    assert violation.ask == ("@acme/platform",) and violation.line == 6
    assert violation.instances == ("dev", "prod")
    own = by_file[COMPANY_NS]  # the locking file's own prod overlay: allowed, still worth a look
    assert not own.violation and own.instances == ("prod",)


def test_an_overlay_setting_a_locked_path_is_flagged_for_its_instance_only(sample: Path) -> None:
    team = text(sample, TEAM_NS).replace(
        "variables: {batch_size: 5000}", "variables: {batch_size: 5000, db: {host: x}}"
    )
    r = change(sample, {TEAM_NS: team})
    [touch] = r.locks
    assert touch.violation and touch.instances == ("prod",) and touch.path == "variables.db.host"


def test_lock_changes_and_forced_defaults(sample: Path) -> None:
    tenant = text(sample, TENANT).replace("python:3.12-slim", "python:3.13-slim")
    company = text(sample, COMPANY_NS).replace(
        "  - variables.db.host\n", "  - variables.db.host\n  - variables.db.port\n"
    )
    report = text(sample, REPORT).replace("report ready", "report done")
    r = change(sample, {TENANT: tenant, COMPANY_NS: company, REPORT: report})
    assert [(c.lock, c.change, c.file) for c in r.lock_changes] == [
        ("variables.db.port", "added", COMPANY_NS)
    ]
    [forced] = r.forced
    assert (forced.type, forced.change, forced.file, forced.namespaces_below) == (
        PYTHON,
        "forced values changed",
        TENANT,
        5,
    )
    [use] = r.forced_uses
    assert (use.file, use.type, use.forced_type) == (REPORT, PYTHON, PYTHON)
    assert use.values == {"containerImage": "python:3.13-slim"}
    assert [s.tenant for s in r.scopes] == ["acme"] and r.scopes[0].owners == ("@acme/platform",)


def test_unforcing_a_default_is_reported(sample: Path) -> None:
    tenant = text(sample, TENANT).replace("forced: true", "forced: false")
    [forced] = change(sample, {TENANT: tenant}).forced
    assert forced.change == "no longer forced"


def test_a_root_change_is_reviewed_across_every_tenant(sample: Path) -> None:
    """A forced default at the repository's root concerns every namespace, and an ignore rule
    may take a namespace out of a tenant the change does not touch: tenant by tenant
    (``change`` compares), the whole commits' layouts say so."""
    root = text(sample, "headwater.yaml").replace(
        "defaults:\n  variables:",
        f"defaults:\n  pluginDefaults:\n    - type: {PYTHON}\n      forced: true\n"
        "      values: {containerImage: 'python:3.13-slim'}\n  variables:",
        1,
    )
    r = change(sample, {"headwater.yaml": root, ".headwaterignore": "tenants/globex/ops/monitoring/alerts/\n"})
    [forced] = r.forced
    assert (forced.file, forced.tenant, forced.change, forced.namespaces_below) == (
        "headwater.yaml", "", "added, forced", 7  # every namespace of the head, alerts ignored
    )
    assert [(d.kind, d.tenant, d.namespace) for d in r.deletions] == [("namespace", "globex", "ops.monitoring.alerts")]
    assert [s.tenant for s in r.scopes] == [""] and not r.namespaces


def test_deletions(sample: Path) -> None:
    r = change(
        sample,
        {
            "tenants/acme/company/team/flows/backfill.yaml": None,
            "tenants/acme/company/files/sql/schema.sql": None,
            "tenants/globex/ops/monitoring": None,
        },
    )
    kinds = {(d.kind, d.tenant, d.namespace, d.name) for d in r.deletions}
    assert ("flow", "acme", "company.team", "backfill") in kinds
    assert ("file", "acme", "company", "sql/schema.sql") in kinds
    assert ("namespace", "globex", "ops.monitoring", "") in kinds
    assert ("namespace", "globex", "ops.monitoring.alerts", "") in kinds
    deleted = {(ns.namespace, ns.status) for ns in r.namespaces if ns.tenant == "globex"}
    assert deleted == {("ops.monitoring", "deleted"), ("ops.monitoring.alerts", "deleted")}


def test_changes_are_those_of_the_pull_request_not_of_the_base_since(sample: Path) -> None:
    git(sample, "switch", "-q", "-c", "pr", "main")
    commit(sample, "pr", {REPORT: text(sample, REPORT).replace("report ready", "report done")})
    git(sample, "switch", "-q", "main")
    commit(sample, "main moves", {"tenants/globex/ops/files/backup.sh": "#!/bin/sh\necho main\n"})
    with GitRepo(sample) as r:
        since = r.merge_base("main", "pr")
        assert since is not None
        result = review.review(
            snapshot.load(r, since), snapshot.load(r, "pr"), r.diff_tree(since, "pr")
        )
    assert [ns.namespace for ns in result.namespaces] == ["company.team.project-a"]


# -- CODEOWNERS ------------------------------------------------------------------------------


def rules_of(repo: Path, rev: str = "HEAD") -> list[tuple[str, tuple[str, ...]]]:
    """The CODEOWNERS rules of ``rev``; the same from its configs alone (what the CLI reads)."""
    with GitRepo(repo) as r:
        rules = review.codeowners(snapshot.load(r, rev))
        assert review.codeowners(snapshot.configs_only(r, rev)) == rules
        return rules


def test_codeowners_read_no_flow(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a flow was validated")

    monkeypatch.setattr(flowbatch, "validate_flow", refuse)
    with GitRepo(sample) as r:
        snap = snapshot.configs_only(r, "HEAD")
    assert not snap.flows and len(snap.configs) == 6
    assert ("/tenants/globex/ops/monitoring/alerts/", ("ops@globex.example",)) in review.codeowners(snap)


def test_codeowners_rules_of_the_sample(sample: Path) -> None:
    assert rules_of(sample) == [
        ("/tenants/acme/", ("@acme/platform",)),
        ("/tenants/acme/company/", ("@acme/platform",)),
        ("/tenants/acme/company/team/", ("@acme/data",)),
        ("/tenants/acme/company/team/project-a/", ("@acme/project-a",)),
        ("/tenants/acme/marketing.emea/", ("@acme/platform",)),
        ("/tenants/globex/", ("ops@globex.example",)),
        ("/tenants/globex/ops/", ("ops@globex.example",)),
        ("/tenants/globex/ops/monitoring/", ("ops@globex.example",)),
        ("/tenants/globex/ops/monitoring/alerts/", ("ops@globex.example",)),
    ]


def test_codeowners_inherit_remove_and_unite_overlays(sample: Path) -> None:
    project = "tenants/acme/company/team/project-a/namespace.yaml"
    commit(
        sample,
        "owners",
        {
            project: text(sample, project).replace('owners: ["@acme/project-a"]', "owners: null"),
            TEAM_NS: text(sample, TEAM_NS).replace(
                "  dev:\n    variables: {batch_size: 50}",
                "  dev:\n    owners: ['@acme/data-oncall']\n    variables: {batch_size: 50}",
            ),
            "headwater.yaml": text(sample, "headwater.yaml").replace(
                "defaults:\n  variables:", "defaults:\n  owners: ['@acme/gitops']\n  variables:", 1
            ),
            "tenants/acme/marketing.emea/namespace.yaml": "description: m\n",
        },
    )
    rules = dict(rules_of(sample))
    assert rules["/headwater.yaml"] == ("@acme/gitops",)
    assert rules["/tenants/acme/company/team/"] == ("@acme/data-oncall", "@acme/data")  # dev, prod
    assert rules["/tenants/acme/company/team/project-a/"] == ()  # owners: null cancels the parent
    assert rules["/tenants/acme/marketing.emea/"] == ("@acme/platform",)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "BLOCK"),
        ("* @someone\n", "* @someone\n\nBLOCK"),
        (f"* @a\n{review.BEGIN}\nold\n{review.END}\n/docs/ @b\n", "* @a\nBLOCK/docs/ @b\n"),
    ],
)
def test_merge_codeowners_keeps_other_lines(existing: str | None, expected: str) -> None:
    block = review.codeowners_block([("/x/", ("@o",))])
    assert review.merge_codeowners(existing, block) == expected.replace("BLOCK", block)


def test_malformed_configs_are_reported_not_crashed_on(sample: Path) -> None:
    r = change(
        sample,
        {
            TEAM_NS: "locked: [{a: 1}, variables.x]\nenvironments: 5\npluginDefaults: nope\n"
            "owners: {a: b}\nvariables: [1, 2]\n",
            TENANT: "pluginDefaults: [{type: 7}, 3, {forced: true}]\nenvironments: {prod: [1]}\n",
            "headwater.yaml": "version: 1\ninstances: [dev]\n",
        },
    )
    assert r.errors  # the validator says what is wrong; the review still completes
    assert [c.lock for c in r.lock_changes] == ["variables.x"]


def test_a_review_reports_what_is_wrong_in_tenants_the_change_does_not_touch(sample: Path) -> None:
    """A large head is checked tenant by tenant and only the touched tenants loaded whole
    (``change`` compares both): an error elsewhere in the head is still reported."""
    commit(sample, "a broken flow in globex", {"tenants/globex/ops/flows/broken.yaml": "id: broken\n  tasks: [\n"})
    r = change(sample, {REPORT: text(sample, REPORT).replace("report ready", "report done")})
    assert r.errors == 1
    assert [d.path for d in r.diagnostics if d.severity == "error"] == ["tenants/globex/ops/flows/broken.yaml"]
    assert [(ns.tenant, ns.namespace) for ns in r.namespaces] == [("acme", "company.team.project-a")]


def test_a_commit_reported_tenant_by_tenant_is_reported_as_whole(sample: Path) -> None:
    """``check`` of a large head reports it one tenant folder at a time: errors and warnings
    in several tenants, at the root and under tenants/, and one that concerns an instance
    only, labelled so, for every instance or some."""
    from tests.test_partial import ERRORS, WARNINGS

    tenant = text(sample, TENANT).replace("environments:", "locked: [variables.company]\nenvironments:")
    child = text(sample, COMPANY_NS).replace(
        "  prod:\n    variables:\n", "  prod:\n    variables:\n      company: NotACME\n")
    head = commit(sample, "everything at once", {
        **ERRORS, **WARNINGS, TENANT: tenant, COMPANY_NS: child,
        "headwater.yaml": text(sample, "headwater.yaml") + "colour: blue\n",  # a root file's error
    })
    with GitRepo(sample) as repo:
        whole = snapshot.load(repo, head)
        for names in (["dev", "prod"], ["prod"], ["dev"]):
            assert snapshot.report_by_tenant(repo, snapshot.split(repo, head), names) == whole.report(names)
        found = whole.report(["dev", "prod"])
    assert {d.path.split("/")[1] for d in found if d.path.startswith("tenants/")} >= {"acme", "globex"}
    assert any("(instance prod)" in d.message for d in found)
    assert any(d.path == "headwater.yaml" for d in found)
