"""Results with and without the persistent result cache are identical (benchmarks/cache_identity.py).

Validation diagnostics of every instance and the desired state (resource key → hash) are
computed in fresh processes without a cache, with a cold one, a partly warm one and a warm one,
on the sample repository and on a generated one, at a clean commit and at one that breaks
things; a poisoned cache shows that the comparison looks at real outputs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from benchmarks import cache_identity, generate

from headwater.cache import ResultCache
from tests.gitutil import git

SMALL = generate.Size("identity", flows=150, namespaces=24, files=300, tenants=3)


BROKEN_CODES = {"flow.id-mismatch", "flow.namespace-mismatch", "flow.unknown-type",
                "flow.duplicate-task-id", "schema.required", "schema.minItems",
                "schema.additionalProperties", "yaml.syntax", "ref.read-missing",
                "ref.secret-undeclared"}


def codes(work: Path, name: str) -> set[str]:
    lines = (work / name).read_text().splitlines()
    return {json.loads(line.split("\t", 2)[2])["code"] for line in lines if line.startswith("diag\t")}


def assert_identical(results: list[cache_identity.CommitCheck]) -> None:
    text = cache_identity.describe(results)
    assert [r.label for r in results] == ["base", "broken"], text
    for r in results:
        assert r.identical, text
        assert not r.problems, text
        assert r.runs["none"]["resources"] > 0, text
        assert len({s["lines"] for s in r.runs.values()}) == 1, text
    assert results[0].revision != results[1].revision
    assert results[1].runs["none"]["diagnostics"] >= 20, text  # the broken commit is broken
    assert text.startswith("identical: yes")


def test_identical_on_the_sample_repository(sample: Path, tmp_path: Path) -> None:
    before = git(sample, "for-each-ref")
    results = cache_identity.check(sample, "dev", tmp_path / "work")
    assert_identical(results)
    assert codes(tmp_path / "work", "broken-none.txt") == BROKEN_CODES
    assert results[0].runs["none"]["diagnostics"] == 0  # the sample repository is valid
    assert sorted(results[0].runs["none"]["instances"]) == ["dev", "prod"]
    assert git(sample, "for-each-ref") == before  # the scratch ref is gone


def test_identical_on_a_generated_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo.git"
    manifest = generate.generate(repo, SMALL, seed=11)
    results = cache_identity.check(repo, manifest.base, tmp_path / "work")
    assert_identical(results)
    assert codes(tmp_path / "work", "broken-warm.txt") == BROKEN_CODES
    assert results[0].runs["none"]["diagnostics"] == 0
    # two instances, each with at least every flow and file of the repository
    assert results[0].runs["none"]["resources"] >= 2 * (manifest.flows + manifest.files)


def _poison(state: Path) -> int:
    """Rewrite cached results with wrong but well-formed ones: blob hashes and the
    diagnostics of flows and configs. Returns how many entries were changed."""
    db = sqlite3.connect(state / "cache.db")
    keys = [k for (k,) in db.execute("SELECT key FROM entries")]
    db.close()
    wrong: dict[str, Any] = {}
    with ResultCache(state / "cache.db") as cache:
        for key, value in cache.get_many(keys).items():
            if not (isinstance(value, tuple) and len(value) == 2):
                continue
            first, second = value
            if isinstance(first, str) and first.startswith("sha256:"):
                wrong[key] = ("sha256:" + "0" * 64, second)
            elif isinstance(first, list) and first:
                wrong[key] = ([], second)
        cache.put_many(wrong)
    return len(wrong)


def test_a_poisoned_cache_is_caught(sample: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    state = work / "state"
    state.mkdir(parents=True)
    broken = cache_identity.breaking_commit(sample, git(sample, "rev-parse", "dev"))
    poisoned: list[int] = []

    def between(mode: str) -> None:
        if mode == "warm":
            poisoned.append(_poison(state))

    result = cache_identity.check_commit(sample, "poisoned", broken, state, work,
                                         ("none", "cold", "warm"), between)
    assert poisoned and poisoned[0] > 0
    assert result.comparisons["none vs cold"].identical
    warm = result.comparisons["none vs warm"]
    assert not warm.identical
    assert any(line.startswith("- diag\t") for line in warm.differences), warm.differences
    assert warm.kinds.get("diag", 0) > 0 and warm.kinds.get("res", 0) > 0, warm.kinds
    assert cache_identity.describe([result]).startswith("identical: no")


def test_compare_lists_what_differs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("diag\tdev\tx\nres\tdev\tk1\th1\nres\tdev\tk2\th2\n")
    b.write_text("diag\tdev\tx\nres\tdev\tk1\th1\nres\tdev\tk2\th3\nres\tdev\tk3\th4\n")
    assert cache_identity.compare(a, a).identical
    result = cache_identity.compare(a, b)
    assert not result.identical
    assert result.lines == 2
    assert result.differences == ["- res\tdev\tk2\th2", "+ res\tdev\tk2\th3", "+ res\tdev\tk3\th4"]
    assert result.kinds == {"res": 3}
    assert cache_identity.compare(a, b, limit=1).differences == ["- res\tdev\tk2\th2", "… 2 more"]
