from __future__ import annotations

import pytest

from headwater import layout
from headwater.gitrepo import MODE_SUBMODULE, MODE_SYMLINK, TreeEntry


def entry(path: str, mode: str = "100644", size: int = 10) -> TreeEntry:
    kind = "commit" if mode == MODE_SUBMODULE else "blob"
    return TreeEntry(path, mode, kind, f"oid-{path}", size)


def build(*paths: str | TreeEntry, **kwargs: object) -> layout.Layout:
    entries = [p if isinstance(p, TreeEntry) else entry(p) for p in paths]
    return layout.build(entries, **kwargs)  # type: ignore[arg-type]


def codes(tree: layout.Layout) -> list[str]:
    return [d.code for d in tree.diagnostics]


def test_nested_and_dotted_namespaces() -> None:
    tree = build(
        "headwater.yaml",
        "README.md",
        ".github/workflows/ci.yml",
        "tenants/acme/tenant.yaml",
        "tenants/acme/company/namespace.yaml",
        "tenants/acme/company/flows/hello.yaml",
        "tenants/acme/company/files/scripts/common.py",
        "tenants/acme/company/team/flows/ingest.yml",
        "tenants/acme/company/team/project-a/files/a/b/c.sql",
        "tenants/acme/marketing.emea/flows/campaign.yaml",
    )
    assert codes(tree) == []
    acme = tree.tenants["acme"]
    assert acme.config is not None
    assert sorted(acme.namespaces) == [
        "company", "company.team", "company.team.project-a", "marketing", "marketing.emea",
    ]
    assert acme.namespaces["marketing"].folder is None  # implied, an empty layer
    assert acme.namespaces["marketing.emea"].folder == "tenants/acme/marketing.emea"
    assert set(acme.namespaces["company"].flows) == {"hello"}
    assert set(acme.namespaces["company.team"].flows) == {"ingest"}
    assert set(acme.namespaces["company"].files) == {"scripts/common.py"}
    assert set(acme.namespaces["company.team.project-a"].files) == {"a/b/c.sql"}
    assert acme.namespaces["company.team.project-a"].ancestry() == [
        "company", "company.team", "company.team.project-a",
    ]


@pytest.mark.parametrize(
    ("paths", "code"),
    [
        (["tenants/acme/a/b/flows/x.yaml", "tenants/acme/a.b/flows/y.yaml"], "layout.duplicate-namespace"),
        (["tenants/acme/a/flows/x/y.yaml"], "layout.flows-subfolder"),
        (["tenants/acme/a/flows/x.json"], "layout.not-a-flow"),
        (["tenants/acme/a/flows/-x.yaml"], "layout.bad-flow-id"),
        (["tenants/acme/a/flows/x.yaml", "tenants/acme/a/flows/x.yml"], "layout.duplicate-flow"),
        (["tenants/acme/a/notes.txt"], "layout.stray-file"),
        (["tenants/acme/notes.txt"], "layout.stray-file"),
        (["tenants/notes.txt"], "layout.stray-file"),
        (["tenants"], "layout.tenants-not-a-folder"),
        (["tenants/Acme/a/flows/x.yaml"], "layout.bad-tenant"),
        (["tenants/acme/Team/flows/x.yaml"], "layout.bad-namespace"),
        (["tenants/acme/a..b/flows/x.yaml"], "layout.bad-namespace"),
        (["tenants/acme/a/b$c/flows/x.yaml"], "layout.bad-namespace"),
        (["tenants/acme/flows/x.yaml"], "layout.reserved-namespace"),
        (["tenants/acme/a.files/flows/x.yaml"], "layout.reserved-namespace"),
        (["tenants/acme/a/files/X.sql", "tenants/acme/a/files/x.sql"], "layout.case-collision"),
        (["tenants/acme/a/files/../../../etc/passwd"], "layout.bad-path"),
        (["tenants/acme/a//files/x"], "layout.bad-path"),
        (["tenants/acme/a/./files/x"], "layout.bad-path"),
        (["tenants/acme/a/files/x/.."], "layout.bad-path"),
        (["tenants/acme/a/files/x\\y"], "layout.bad-path"),
        (["tenants/acme/a/files/x\0y"], "layout.bad-path"),
        (["tenants/acme/a/files/"], "layout.bad-path"),
    ],
)
def test_layout_errors(paths: list[str], code: str) -> None:
    tree = build(*paths)
    assert code in codes(tree), tree.diagnostics
    diag = next(d for d in tree.diagnostics if d.code == code)
    assert diag.path.startswith("tenants") and diag.hint


def test_duplicate_namespace_names_both_folders() -> None:
    tree = build("tenants/acme/a/b/flows/x.yaml", "tenants/acme/a.b/flows/y.yaml")
    diag = next(d for d in tree.diagnostics if d.code == "layout.duplicate-namespace")
    assert "tenants/acme/a/b/" in diag.message and "tenants/acme/a.b/" in diag.message


def test_long_namespace_refused() -> None:
    tree = build("tenants/acme/" + "/".join(["abcdefghij"] * 15) + "/flows/x.yaml")
    assert "layout.bad-namespace" in codes(tree)


def test_symlink_and_submodule_refused() -> None:
    tree = build(
        entry("tenants/acme/a/files/link", MODE_SYMLINK),
        entry("tenants/acme/a/files/vendored", MODE_SUBMODULE, -1),
    )
    assert sorted(codes(tree)) == ["layout.submodule", "layout.symlink"]


def test_file_size_limit() -> None:
    tree = build(entry("tenants/acme/a/files/big.bin", size=20 * 1024 * 1024))
    assert codes(tree) == ["layout.file-too-large"]
    tree = build(entry("tenants/acme/a/files/big.bin", size=20 * 1024 * 1024), max_file_bytes=30 * 1024 * 1024)
    assert codes(tree) == []


def test_ignore_function_excludes_paths() -> None:
    tree = build("tenants/acme/a/notes.txt", ignored=lambda p: p.endswith(".txt"))
    assert codes(tree) == []


def test_case_collision_is_per_namespace() -> None:
    tree = build("tenants/acme/a/files/X.sql", "tenants/acme/b/files/x.sql")
    assert codes(tree) == []


def test_dotted_names_that_are_plain_segments_are_kept() -> None:
    tree = build("tenants/acme/a/files/.env", "tenants/acme/a/files/.../x..y", "tenants/acme/a/files/..z")
    assert tree.diagnostics == []
    assert sorted(tree.tenants["acme"].namespaces["a"].files) == [".../x..y", "..z", ".env"]


def test_a_bad_folder_is_reported_once_for_all_its_files() -> None:
    tree = build(*(f"tenants/acme/Bad/flows/f{i}.yaml" for i in range(3)), "tenants/acme/Bad/files/x.sql",
                 "tenants/acme/ok/flows/g.yaml")
    assert [d.code for d in tree.diagnostics] == ["layout.bad-namespace"]
    assert list(tree.tenants["acme"].namespaces) == ["ok"]
    assert list(tree.tenants["acme"].namespaces["ok"].flows) == ["g"]
