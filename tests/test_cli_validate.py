"""`headwater validate`, `explain` and `schema export` through the real CLI on real repositories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from headwater import snapshot
from headwater.cli.validate import explain_rows
from headwater.gitrepo import GitRepo
from tests.gitutil import commit, git, run_cli

FLOW = "tenants/acme/company/team/flows"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    result = run_cli(capsys, *args)
    assert "Traceback" not in result.out + result.err
    return result.code, result.out, result.err


def validate_json(capsys: pytest.CaptureFixture[str], repo: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run(capsys, "validate", "-C", str(repo), "-o", "json", *extra)
    return code, json.loads(out)


def test_sample_validates_for_both_instances(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rev in ("main", "dev"):
        code, body = validate_json(capsys, sample, "--rev", rev)
        assert code == 0, body["diagnostics"]
        assert body["instances"] == ["dev", "prod"]
        assert body["valid"] is True
    code, out, _ = run(capsys, "validate", "-C", str(sample), "--instance", "prod")
    assert code == 0 and "0 error(s)" in out


def test_explain_shows_overlay_on_prod_and_parent_on_dev(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (sample / "tenants/acme/company/namespace.yaml").read_text().splitlines()
    parent_line = next(i for i, text in enumerate(lines, 1) if "host: db.dev.internal" in text)
    overlay_line = next(i for i, text in enumerate(lines, 1) if "db.prod.internal" in text)
    rows = {}
    for instance in ("prod", "dev"):
        code, out, _ = run(capsys, "explain", "-C", str(sample), "acme/company.team.project-a",
                           "--instance", instance, "-o", "json")
        assert code == 0
        body = json.loads(out)
        rows[instance] = {r["path"]: r for r in body["values"]}
        files = {f["path"]: f["from"] for f in body["files"]}
        assert files["scripts/common.py"] == "company"  # inherited from two levels up
        assert files["report.py"] == "company.team.project-a"
    prod, dev = rows["prod"]["variables.db.host"], rows["dev"]["variables.db.host"]
    assert (prod["value"], prod["source"], prod["line"]) == (
        "db.prod.internal", "tenants/acme/company/namespace.yaml", overlay_line)
    assert "environments.prod" in prod["layer"]
    assert (dev["value"], dev["line"]) == ("db.dev.internal", parent_line)
    assert rows["prod"]["variables.batch_size"]["value"] == 5000
    assert rows["dev"]["variables.batch_size"]["value"] == 50
    assert rows["prod"]["variables.env"]["source"] == "headwater.yaml"
    code, out, _ = run(capsys, "explain", "-C", str(sample), "acme/company.team", "--instance", "prod")
    assert code == 0
    assert f"tenants/acme/company/namespace.yaml:{overlay_line}" in out


def test_explain_loads_one_tenant_and_says_what_the_whole_commit_says(
    sample: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every namespace of the sample, on both instances, is explained as from the whole
    commit (explain loads the root files and the namespace's tenant folder only)."""
    with GitRepo(sample) as repo:
        whole = snapshot.load(repo, "HEAD")
        views = {name: whole.view(name).namespaces for name in ("dev", "prod")}
    for instance, namespaces in views.items():
        for (tenant, name), view in namespaces.items():
            code, out, _ = run(capsys, "explain", "-C", str(sample), f"{tenant}/{name}", "--instance", instance, "-o", "json")
            assert code == 0
            body = json.loads(out)
            assert body["values"] == json.loads(json.dumps(explain_rows(view), default=str)), (instance, tenant, name)
            assert body["config"] == json.loads(json.dumps(view.effective.config, default=str))
            assert body["flows"] == sorted(view.flows)
            assert [f["path"] for f in body["files"]] == sorted(view.files)


def test_explain_bad_arguments(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "-C", str(sample), "acme/nope", "--instance", "prod")
    assert code == 1 and "no namespace 'acme/nope'" in err and "hint: namespaces of acme: company, " in err
    code, _, err = run(capsys, "explain", "-C", str(sample), "nope/company", "--instance", "prod")
    assert code == 1 and "no tenant 'nope'" in err and "hint: tenants: acme, globex" in err
    root = (sample / "headwater.yaml").read_text()
    commit(sample, "prod carries acme only", {"headwater.yaml": root.replace('tenants: ["*"]\n    defaults:\n      variables: {env: prod', 'tenants: ["acme"]\n    defaults:\n      variables: {env: prod')})
    code, _, err = run(capsys, "explain", "-C", str(sample), "globex/ops", "--instance", "prod")
    assert code == 1 and "instance 'prod' does not carry tenant 'globex'" in err and "hint: its tenants in headwater.yaml: acme" in err
    code, _, _ = run(capsys, "explain", "-C", str(sample), "globex/ops", "--instance", "dev")
    assert code == 0
    code, _, err = run(capsys, "explain", "-C", str(sample), "acme/company", "--instance", "qa")
    assert code == 1 and "unknown instance" in err
    code, _, err = run(capsys, "explain", "-C", str(sample), "company", "--instance", "prod")
    assert code == 2 and "TENANT/NAMESPACE" in err


def test_uncommitted_changes_do_not_count(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (sample / FLOW / "ingest.yaml").write_text("id: [broken\n")
    (sample / FLOW / "stray.txt").write_text("untracked")
    code, body = validate_json(capsys, sample, "--rev", "HEAD")
    assert code == 0 and body["diagnostics"] == []


def test_output_formats(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(sample, "bad", {f"{FLOW}/ingest.yaml": "id: ingest\nnamespace: company.team\ntasks: []\n"})
    code, out, _ = run(capsys, "validate", "-C", str(sample), "-o", "github")
    assert code == 1
    assert f"::error file={FLOW}/ingest.yaml,line=3" in out
    code, out, _ = run(capsys, "validate", "-C", str(sample), "--no-color")
    assert code == 1 and f"{FLOW}/ingest.yaml:3" in out and "\x1b[" not in out


def _graft(repo: Path, parts: list[str], blob: str, tree: str) -> str:
    """A copy of ``tree`` with ``blob`` added at ``parts`` (names git itself would refuse)."""
    listing = git(repo, "ls-tree", tree).splitlines() if tree else []
    head, rest = parts[0], parts[1:]
    entries = [line for line in listing if line.split("\t", 1)[1] != head]
    if rest:
        current = next((ln.split()[2] for ln in listing if ln.split("\t", 1)[1] == head), "")
        entries.append(f"040000 tree {_graft(repo, rest, blob, current)}\t{head}")
    else:
        entries.append(f"100644 blob {blob}\t{head}")
    proc = subprocess.run(["git", "mktree"], cwd=repo, input="\n".join(entries) + "\n",
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def _commit_tree(repo: Path, tree: str) -> None:
    sha = git(repo, "commit-tree", tree, "-p", "HEAD", "-m", "crafted")
    git(repo, "update-ref", "refs/heads/main", sha)


LOCKED_CHILD = """\
variables:
  db: {host: sneaky.example.com}
"""
FORCED_FLOW = """\
id: ingest
namespace: company.team
pluginDefaults:
  - type: io.kestra.plugin.scripts.python.Script
    values: {containerImage: "python:2.7"}
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


def flow(body: str, fid: str = "ingest", ns: str = "company.team") -> str:
    return f"id: {fid}\nnamespace: {ns}\ntasks:\n{body}"


LOG = "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"

# (files to write or delete, expected code, expected path, expected line or None)
MALFORMED: dict[str, tuple[dict[str, Any], str, str, int | None]] = {
    "yaml-syntax": ({f"{FLOW}/ingest.yaml": "id: ingest\ntasks: [\n"}, "yaml.syntax", f"{FLOW}/ingest.yaml", 3),
    "duplicate-key": ({f"{FLOW}/ingest.yaml": "id: ingest\nnamespace: company.team\nid: x\n"},
                      "yaml.duplicate-key", f"{FLOW}/ingest.yaml", 3),
    "alias-bomb": ({f"{FLOW}/ingest.yaml": "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdef", "bcdefg", strict=True))},
        "yaml.alias-limit", f"{FLOW}/ingest.yaml", None),
    "huge-flow": ({f"{FLOW}/ingest.yaml": "id: ingest\n" + "# padding\n" * 2_100_000},
                  "yaml.too-large", f"{FLOW}/ingest.yaml", None),
    "huge-file": ({"tenants/acme/company/files/big.bin": b"\0" * (20 * 1024 * 1024)},
                  "layout.file-too-large", "tenants/acme/company/files/big.bin", None),
    "deep-nesting": ({f"{FLOW}/ingest.yaml": "id: " + "[" * 5000 + "]" * 5000 + "\n"},
                     "yaml.too-deep", f"{FLOW}/ingest.yaml", 1),
    "non-utf8": ({f"{FLOW}/ingest.yaml": b"id: ingest\nnamespace: caf\xe9\n"}, "yaml.encoding", f"{FLOW}/ingest.yaml", 2),
    "binary-flow": ({f"{FLOW}/ingest.yaml": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"}, "yaml.binary", f"{FLOW}/ingest.yaml", 3),
    "empty-flow": ({f"{FLOW}/ingest.yaml": ""}, "flow.empty", f"{FLOW}/ingest.yaml", None),
    "multi-document": ({f"{FLOW}/ingest.yaml": flow(LOG) + "---\nid: other\n"},
                       "yaml.multi-document", f"{FLOW}/ingest.yaml", 7),
    "case-collision": ({"tenants/acme/company/files/Readme.txt": "a", "tenants/acme/company/files/readme.txt": "b"},
                       "layout.case-collision", "tenants/acme/company/files/", None),
    "namespace-twice": ({"tenants/acme/company.team/flows/x.yaml": flow(LOG, "x")},
                        "layout.duplicate-namespace", "tenants/acme/company", None),
    "reserved-segment": ({"tenants/acme/company/files.old/flows/x.yaml": flow(LOG, "x", "company.files.old")},
                         "layout.reserved-namespace", "tenants/acme/company/files.old", None),
    "bad-tenant": ({"tenants/ACME_Corp/ns/flows/x.yaml": flow(LOG, "x", "ns")}, "layout.bad-tenant", "tenants/ACME_Corp", None),
    "bad-namespace": ({"tenants/acme/Team!/flows/x.yaml": flow(LOG, "x")}, "layout.bad-namespace", "tenants/acme/Team!", None),
    "bad-flow-name": ({f"{FLOW}/-x.yaml": flow(LOG, "-x")}, "layout.bad-flow-id", f"{FLOW}/-x.yaml", None),
    "id-not-stem": ({f"{FLOW}/ingest.yaml": flow(LOG, "other")}, "flow.id-mismatch", f"{FLOW}/ingest.yaml", 1),
    "namespace-not-folder": ({f"{FLOW}/ingest.yaml": flow(LOG, ns="company")}, "flow.namespace-mismatch",
                             f"{FLOW}/ingest.yaml", 2),
    "flows-subfolder": ({f"{FLOW}/old/x.yaml": flow(LOG, "x")}, "layout.flows-subfolder", f"{FLOW}/old/x.yaml", None),
    "stray-file": ({"tenants/acme/company/notes.txt": "todo"}, "layout.stray-file", "tenants/acme/company/notes.txt", None),
    "empty-tasks": ({f"{FLOW}/ingest.yaml": "id: ingest\nnamespace: company.team\ntasks: []\n"},
                    "schema.minItems", f"{FLOW}/ingest.yaml", 3),
    "unknown-core-type": ({f"{FLOW}/ingest.yaml": flow("  - id: t\n    type: io.kestra.plugin.core.log.Logg\n")},
                          "flow.unknown-type", f"{FLOW}/ingest.yaml", 5),
    "duplicate-task-id-deep": ({f"{FLOW}/ingest.yaml": flow(
        LOG + "  - id: p\n    type: io.kestra.plugin.core.flow.Parallel\n    tasks:\n"
        "      - id: t\n        type: io.kestra.plugin.core.log.Log\n        message: again\n")},
        "flow.duplicate-task-id", f"{FLOW}/ingest.yaml", 10),
    "recursive-subflow": ({f"{FLOW}/ingest.yaml": flow(
        "  - id: me\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: company.team\n    flowId: ingest\n")},
        "flow.recursive-subflow", f"{FLOW}/ingest.yaml", 4),
    "system-label": ({f"{FLOW}/ingest.yaml": "id: ingest\nnamespace: company.team\nlabels:\n  system.owner: me\ntasks:\n" + LOG},
                     "flow.system-label", f"{FLOW}/ingest.yaml", 4),
    "undeclared-secret": ({f"{FLOW}/ingest.yaml": flow(LOG.replace("hi", "\"{{ secret('NOPE') }}\""))},
                          "ref.secret-undeclared", f"{FLOW}/ingest.yaml", 6),
    "read-not-visible": ({f"{FLOW}/ingest.yaml": flow(LOG.replace("hi", "\"{{ read('scripts/missing.py') }}\""))},
                         "ref.read-missing", f"{FLOW}/ingest.yaml", 6),
    "read-sibling-file": ({f"{FLOW}/ingest.yaml": flow(LOG.replace("hi", "\"{{ read('report.py') }}\""))},
                          "ref.read-missing", f"{FLOW}/ingest.yaml", 6),
    "subflow-missing": ({f"{FLOW}/ingest.yaml": flow(
        "  - id: s\n    type: io.kestra.plugin.core.flow.Subflow\n    namespace: company\n    flowId: nosuch\n")},
        "ref.subflow-missing", f"{FLOW}/ingest.yaml", 4),
    "locked-path": ({"tenants/acme/company/team/namespace.yaml": LOCKED_CHILD}, "config.locked",
                    "tenants/acme/company/team/namespace.yaml", 2),
    "forced-default-overridden": ({f"{FLOW}/ingest.yaml": FORCED_FLOW}, "governance.forced-default",
                                  f"{FLOW}/ingest.yaml", None),
    "denied-plugin": ({f"{FLOW}/ingest.yaml": flow("  - id: sh\n    type: io.kestra.plugin.scripts.shell.Commands\n"
                                                   "    commands: [ls]\n")},
                      "governance.plugin-denied", f"{FLOW}/ingest.yaml", 5),
    "unknown-namespace-key": ({"tenants/acme/company/team/namespace.yaml": "variabls: {a: 1}\n"},
                              "schema.additionalProperties", "tenants/acme/company/team/namespace.yaml", 1),
    "namespace-not-a-map": ({"tenants/acme/company/team/namespace.yaml": "- a\n- b\n"}, "config.not-a-mapping",
                            "tenants/acme/company/team/namespace.yaml", 1),
    "bad-soak": ({"headwater.yaml": "version: 1\ninstances:\n  prod: {branch: main, promotion: {from: dev, soak: soon}}\n"},
                 "schema.pattern", "headwater.yaml", 3),
    "no-repo-config": ({"headwater.yaml": None}, "repo.no-config", "headwater.yaml", None),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_gives_a_clean_error(case: str, sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files, code, path, line = MALFORMED[case]
    commit(sample, case, files)
    rc, body = validate_json(capsys, sample)
    assert rc == 1
    found = [d for d in body["diagnostics"] if d["code"] == code]
    assert found, f"expected {code}, got {[(d['code'], d['message']) for d in body['diagnostics']]}"
    diag = found[0]
    assert diag["path"].startswith(path), diag
    if line is not None:
        assert diag["line"] == line, diag
    assert diag["message"] and diag["severity"] == "error"


def test_symlink_under_files(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("/etc/passwd", sample / "tenants/acme/company/files/passwd")
    commit(sample, "symlink")
    rc, body = validate_json(capsys, sample)
    assert rc == 1
    assert [d["path"] for d in body["diagnostics"] if d["code"] == "layout.symlink"] == [
        "tenants/acme/company/files/passwd"]


def test_submodule(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = git(sample, "rev-parse", "HEAD")
    git(sample, "update-index", "--add", "--cacheinfo", f"160000,{head},tenants/acme/company/files/vendor")
    git(sample, "commit", "-q", "-m", "submodule")
    rc, body = validate_json(capsys, sample)
    assert rc == 1
    assert any(d["code"] == "layout.submodule" for d in body["diagnostics"])


def test_dotdot_path_in_a_crafted_tree(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=sample, input="x", capture_output=True,
                          text=True, check=True).stdout.strip()
    tree = git(sample, "rev-parse", "HEAD^{tree}")
    _commit_tree(sample, _graft(sample, ["tenants", "acme", "company", "files", ".."], blob, tree))
    rc, body = validate_json(capsys, sample)
    assert rc == 1
    assert any(d["code"] == "layout.bad-path" for d in body["diagnostics"])


def test_every_problem_at_once(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(sample, "several", {
        f"{FLOW}/ingest.yaml": "id: ingest\nnamespace: company.team\ntasks: []\n",
        "tenants/acme/company/notes.txt": "x",
        "tenants/acme/company/team/namespace.yaml": "variabls: {}\n",
    })
    rc, body = validate_json(capsys, sample)
    codes = {d["code"] for d in body["diagnostics"]}
    assert rc == 1
    assert {"schema.minItems", "layout.stray-file", "schema.additionalProperties"} <= codes


def test_instance_specific_problems_are_labelled(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a prod-only overlay sets a path locked by the tenant: only prod fails
    text = (sample / "tenants/acme/tenant.yaml").read_text().replace(
        "environments:", "locked: [variables.company]\nenvironments:")
    child = (sample / "tenants/acme/company/namespace.yaml").read_text().replace(
        "  prod:\n    variables:\n", "  prod:\n    variables:\n      company: NotACME\n")
    commit(sample, "lock", {"tenants/acme/tenant.yaml": text, "tenants/acme/company/namespace.yaml": child})
    rc, body = validate_json(capsys, sample, "--instance", "dev")
    assert rc == 0, body
    rc, body = validate_json(capsys, sample)
    assert rc == 1
    diag = next(d for d in body["diagnostics"] if d["code"] == "config.locked")
    assert "(instance prod)" in diag["message"]
    assert any("tenants/acme/tenant.yaml" in r for r in diag["related"])


def test_flows_mode_and_extra_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(flow(LOG, "good", "any.where"))
    custom = tmp_path / "custom.yaml"
    custom.write_text(flow("  - id: c\n    type: io.kestra.core.tasks.test.Custom\n", "custom", "x"))
    code, out, _ = run(capsys, "validate", "--flows", str(good))
    assert code == 0
    code, out, _ = run(capsys, "validate", "--flows", str(custom), "-o", "json")
    assert code == 1 and "flow.unknown-type" in out
    extra = tmp_path / "types.txt"
    extra.write_text("# test types\nio.kestra.core.tasks.test.Custom\n")
    code, out, _ = run(capsys, "validate", "--flows", "--extra-types", str(extra), str(tmp_path))
    assert code == 0, out  # the directory walk takes only *.yaml/*.yml: types.txt is not a flow
    code, out, _ = run(capsys, "validate", "--flows", "--extra-types", str(extra), str(custom), str(good))
    assert code == 0, out
    code, out, _ = run(capsys, "validate", "--flows", str(tmp_path / "missing.yaml"))
    assert code == 1 and "file.unreadable" in out


def test_validate_usage_and_git_errors(tmp_path: Path, sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "validate", "-C", str(tmp_path))
    assert code == 1 and "not a Git repository" in err
    code, _, err = run(capsys, "validate", "-C", str(sample), "--rev", "nope")
    assert code == 1 and "unknown revision" in err
    code, _, err = run(capsys, "validate", "-C", str(sample), "--instance", "qa")
    assert code == 1 and "unknown instance" in err
    code, _, err = run(capsys, "validate", "-C", str(sample), "somefile.yaml")
    assert code == 2


def test_schema_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema", "export", str(tmp_path / "out"))
    assert code == 0 and "wrote" in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"flow.schema.json", "namespace.schema.json", "headwater.schema.json", "plan.schema.json"} <= set(names)
    for name in names:
        assert json.loads((tmp_path / "out" / name).read_text())["$schema"].endswith("2020-12/schema")


def test_init_creates_a_repository_that_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "new"
    code, out, _ = run(capsys, "init", str(repo), "--tenant", "acme", "--namespace", "data.team")
    assert code == 0 and "created" in out
    assert (repo / "tenants/acme/data/team/flows/hello.yaml").is_file()
    git(repo, "init", "-q")
    commit(repo, "init")
    code, body = validate_json(capsys, repo)
    assert code == 0, body
    code, _, err = run(capsys, "init", str(repo))
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "init", str(tmp_path / "x"), "--tenant", "Bad Name")
    assert code == 2
