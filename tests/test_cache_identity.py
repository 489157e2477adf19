"""Results with and without the persistent result cache are identical (benchmarks/cache_identity.py).

Validation diagnostics of every instance and the desired state (resource key → hash) are
computed in fresh processes without a cache, with a cold one, a partly warm one and a warm one,
on the sample repository and on a generated one, at a clean commit and at one that breaks
things; a poisoned cache shows that the comparison looks at real outputs.

The incremental path (``snapshot.update`` + ``Engine.desired_update``, what the daemon does
between commits) gives what a full load gives, over in-place commits, chained and not, with
the cache cold and warm; an update that skips re-merging configs is caught.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks import cache_identity, generate

from headwater import snapshot
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
    oids = [o for (o,) in db.execute("SELECT oid FROM blob_hashes")]
    db.close()
    wrong: dict[str, Any] = {}
    with ResultCache(state / "cache.db") as cache:
        hashes = {oid: ("sha256:" + "0" * 64, binary) for oid, (_, binary) in cache.blob_hashes(oids).items()}
        cache.put_blob_hashes(hashes)
        for key, value in cache.get_many(keys).items():
            if not (isinstance(value, tuple) and len(value) == 2):
                continue
            first, second = value
            if isinstance(first, str) and first.startswith("sha256:"):
                wrong[key] = ("sha256:" + "0" * 64, second)
            elif isinstance(first, list) and first:
                wrong[key] = ([], second)
        cache.put_many(wrong)
    return len(wrong) + len(hashes)


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


# -- the incremental path (snapshot.update + Engine.desired_update) vs a full load -----------


@pytest.fixture(scope="module")
def incremental(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cache_identity.IncrementalSetup]:
    """A small generated repository, its in-place commits (without a cross-namespace read) and
    their full loads without cache; shared by the tests below (the references cost most)."""
    root = tmp_path_factory.mktemp("incremental")
    with pytest.MonkeyPatch.context() as mp:  # what conftest's isolation does, for this module
        (root / "home").mkdir()
        (root / "home" / ".gitconfig").write_text("")
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("GIT_CONFIG_GLOBAL", str(root / "home" / ".gitconfig"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for key in [k for k in os.environ if k.startswith("HEADWATER_")]:
            mp.delenv(key)
        repo = root / "repo.git"
        manifest = generate.generate(repo, SMALL, seed=11)
        refs = generate.git(repo, "for-each-ref")
        setup = cache_identity.prepare_incremental(repo, manifest.base, root / "work", cross_reads=False)
        assert generate.git(repo, "for-each-ref") == refs  # the scratch ref is gone
        yield setup


def reference_codes(setup: cache_identity.IncrementalSetup, label: str) -> set[str]:
    return codes(setup.work, f"full-{label}.txt")


def test_the_incremental_path_gives_what_a_full_load_gives(
    incremental: cache_identity.IncrementalSetup,
) -> None:
    edited = incremental.edited
    assert [label for label, _ in edited.commits] == ["c1", "c2", "c3"]
    assert edited.cross_read is None
    for label in ("c1", "c3"):  # several of each kind of path
        assert all(edited.kinds[label].get(k, 0) >= 1 for k in ("flow", "namespace.yaml", "tenant.yaml"))
    assert sum(edited.kinds[label].get("file", 0) for label in ("c1", "c3")) >= 4
    assert {"flow.id-mismatch", "yaml.syntax", "ref.read-missing", "config.locked",
            "schema.additionalProperties"} <= reference_codes(incremental, "c1")
    assert {"governance.plugin-denied", "config.locked", "yaml.syntax",
            "schema.additionalProperties"} <= reference_codes(incremental, "c3")
    assert "flow.id-mismatch" not in reference_codes(incremental, "c3")  # repaired

    result = cache_identity.run_incremental(incremental)
    text = cache_identity.describe_incremental(result)
    assert result.ok, text
    assert text.startswith("incremental identical: yes"), text
    assert sorted(result.comparisons) == sorted(
        f"{mode} {step}" for mode in ("cold", "warm")
        for step in ("skip-c3", "chain-c1", "chain-c2", "chain-c3", "single-c2", "single-c3"))
    assert result.noop_identical is True  # c2 changes nothing for dev …
    for mode, stats in result.runs.items():
        steps = stats["steps"]
        assert steps["chain-c2"]["touched"]["dev"] > 0  # … though it touches namespaces
        for step in ("chain-c1", "chain-c3", "skip-c3"):
            assert 0 < steps[step]["remerged"]["dev"] <= steps[step]["touched"]["dev"], (mode, step)
    assert result.runs["cold"]["misses"] > 0 and result.runs["warm"]["misses"] == 0


def test_a_wrong_update_is_caught(
    incremental: cache_identity.IncrementalSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that does not merge configs again below a changed namespace.yaml or
    tenant.yaml (flows and files are still handled, by the real function)."""
    real = snapshot._update_view
    calls: list[int] = []

    def skip_remerging(snap: Any, spec: Any, old: Any, changed: Any) -> Any:
        calls.append(len(changed))
        kept = {path: place for path, place in changed.items() if place[0] not in ("config", "tenant")}
        return real(snap, spec, old, kept)

    monkeypatch.setattr(snapshot, "_update_view", skip_remerging)
    result = cache_identity.run_incremental(incremental, ("cold",), in_process=True)
    text = cache_identity.describe_incremental(result)
    assert calls, "the wrapper was not used"
    assert not result.identical and not result.ok
    assert text.startswith("incremental identical: no"), text
    differing = {name for name, c in result.comparisons.items() if not c.identical}
    assert {"cold chain-c1", "cold chain-c3", "cold skip-c3"} <= differing, text
    kinds: dict[str, int] = {}
    for name in differing:
        for kind, n in result.comparisons[name].kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    assert kinds.get("res", 0) > 0 and kinds.get("diag", 0) > 0, kinds  # config resources, locks


def test_a_flow_reading_another_namespaces_file_is_checked_again(tmp_path: Path) -> None:
    """c3 turns ``files.inherit`` off in a namespace a flow of another one read()s from."""
    repo = tmp_path / "repo.git"
    manifest = generate.generate(repo, SMALL, seed=11)
    result = cache_identity.check_incremental(repo, manifest.base, tmp_path / "work", modes=("cold",),
                                              in_process=True)
    reader = result.setup.edited.cross_read
    assert reader is not None
    assert "ref.read-missing" in codes(result.setup.work, "full-c3.txt")
    assert not result.problems, result.problems
    assert result.identical, cache_identity.describe_incremental(result)
