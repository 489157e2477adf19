"""The benchmark generator: its repositories validate, its edits are the edits it claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import floors, generate, run

TINY = generate.Size("tiny", flows=50, namespaces=12, files=100, tenants=2)


def headwater(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", *args],
        capture_output=True, text=True, cwd=cwd, check=False,
    )


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, generate.Manifest]:
    repo = tmp_path / "repo.git"
    return repo, generate.generate(repo, TINY, seed=7)


def changed_paths(repo: Path, old: str, new: str) -> list[str]:
    out = generate.git(repo, "diff-tree", "-r", "--name-only", "--no-renames", old, new)
    return out.split()


def test_generated_repository_validates_for_both_instances(tiny: tuple[Path, generate.Manifest], tmp_path: Path) -> None:
    repo, manifest = tiny
    result = headwater("validate", "-C", str(repo), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s), 0 warning(s)" in result.stdout
    assert (manifest.flows, manifest.namespaces, manifest.files) == (50, 12, 100)
    assert generate.git(repo, "rev-parse", "dev", "main").split() == [manifest.base, manifest.base]


def test_generated_repository_has_what_the_benchmarks_need(tiny: tuple[Path, generate.Manifest]) -> None:
    repo, manifest = tiny
    paths = generate.git(repo, "ls-tree", "-r", "--name-only", manifest.base).split()
    flows = [p for p in paths if "/flows/" in p]
    assert len(flows) == manifest.flows
    assert sum("/files/" in p for p in paths) == manifest.files
    assert any(p.endswith("/tenant.yaml") for p in paths)
    bodies = b"".join(generate.read_blob(repo, manifest.base, p) for p in flows)
    for needle in (b"read(", b"secret(", generate.SUBFLOW.encode(), b"io.kestra.plugin.core.flow."):
        assert needle in bodies
    configs = b"".join(generate.read_blob(repo, manifest.base, p) for p in paths if p.endswith(".yaml") and "/flows/" not in p)
    for needle in (b"forced: true", b"locked:", b"environments:", b"kv:", b"allowedPlugins:", b"secrets:"):
        assert needle in configs


def test_tree_shape_of_size_s() -> None:
    tenants, trees = generate.build(generate.SIZES["S"], seed=42)
    namespaces = [ns for t in tenants for ns in trees[t]]
    assert len(namespaces) == 100
    assert sum(len(ns.flows) for ns in namespaces) == 1000
    assert sum(len(ns.files) for ns in namespaces) == 2000
    assert max(ns.depth for ns in namespaces) == generate.MAX_DEPTH
    assert any("." in ns.folder.rsplit("/", 1)[1] for ns in namespaces)  # dotted folder shortcuts
    assert any(not ns.inherit_files for ns in namespaces)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate.generate(tmp_path / "a.git", TINY, seed=3)
    second = generate.generate(tmp_path / "b.git", TINY, seed=3)
    other = generate.generate(tmp_path / "c.git", TINY, seed=4)
    assert first.base == second.base
    assert other.base != first.base


def test_one_flow_edit_and_root_config_edit(tiny: tuple[Path, generate.Manifest], tmp_path: Path) -> None:
    repo, manifest = tiny
    edited = generate.edit_flow(repo, "dev", manifest.edit_flow)
    assert changed_paths(repo, manifest.base, edited) == [manifest.edit_flow]
    assert generate.git(repo, "rev-parse", "dev").strip() == edited
    rooted = generate.edit_config(repo, "dev", manifest.root_config)
    assert changed_paths(repo, edited, rooted) == [manifest.root_config]

    result = headwater("validate", "-C", str(repo), "--rev", rooted, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert floors.incremental(str(repo), manifest.base, edited)["blobs"] == 1

    state = ["--state-dir", str(tmp_path / "state")]
    applied = headwater("apply", "-C", str(repo), "--instance", "dev", "--rev", manifest.base, "--yes", *state, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    one = headwater("plan", "-C", str(repo), "--instance", "dev", "--rev", edited, "--detailed-exitcode", *state, cwd=tmp_path)
    assert one.returncode == 2, one.stderr
    assert "0 to create, 1 to update, 0 to delete" in one.stdout
    applied = headwater("apply", "-C", str(repo), "--instance", "dev", "--rev", edited, "--yes", *state, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    below = headwater("plan", "-C", str(repo), "--instance", "dev", "--rev", rooted, "--detailed-exitcode", *state, cwd=tmp_path)
    # the root's config and that of every namespace below it, nothing else
    assert f"0 to create, {manifest.below_root} to update, 0 to delete" in below.stdout


def test_cold_floor_reads_every_flow_and_config(tiny: tuple[Path, generate.Manifest]) -> None:
    repo, manifest = tiny
    configs = [p for p in generate.git(repo, "ls-tree", "-r", "--name-only", manifest.base).split()
               if p.endswith(("headwater.yaml", "tenant.yaml", "namespace.yaml"))]
    assert floors.cold(str(repo), manifest.base)["blobs"] == manifest.flows + len(configs)


def test_results_sections_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path / "RESULTS.md")
    body = "<!-- size:{0} -->\n## {0} {1}\n<!-- /size:{0} -->"
    run.write_results({"M": body.format("M", "first")})
    with (tmp_path / "RESULTS.md").open("a") as f:
        f.write("\n## Written by hand\n\nkept\n")
    run.write_results({"S": body.format("S", "first")})
    run.write_results({"M": body.format("M", "second")})
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Benchmark results")
    assert "## M second" in text and "## M first" not in text
    assert text.index("## S first") < text.index("## M second") < text.index("## Written by hand")
    assert text.endswith("## Written by hand\n\nkept\n")


def test_results_section_reports_the_cache_identity() -> None:
    row = run.Row("floor", "cold floor", samples=[1.0])
    facts: dict[str, object] = {"flows": 1, "namespaces": 1, "files": 1, "tenants": 1, "max_depth": 1,
                                "bytes": 1, "generated_in": None, "repeats": 1,
                                "identity": "identical: yes (3 diagnostics and 9 resources compared)"}
    info = dict.fromkeys(("date", "cpu", "cores", "ram", "os", "python", "git", "headwater", "load"), "?")
    text = run.section("S", [row], facts, info)
    assert "benchmarks/cache_identity.py): identical: yes (3 diagnostics" in text
    assert text.endswith("<!-- /size:S -->")


def test_daemon_log_tail_reads_whole_json_lines(tmp_path: Path) -> None:
    from benchmarks import daemon_latency

    log = tmp_path / "daemon.log"
    log.write_bytes(b'{"event": "daemon.start", "port": 1}\nnot json\n{"event": "sy')
    tail = daemon_latency.LogTail(log)
    assert [e["event"] for e in tail.poll()] == ["daemon.start"]
    with log.open("ab") as f:
        f.write(b'nc", "revision": "abc", "result": "applied", "duration": 0.5}\n')
    assert tail.poll() == [{"event": "sync", "revision": "abc", "result": "applied", "duration": 0.5}]
    assert tail.poll() == []
    assert tail.find(lambda e: e.get("event") == "sync") is not None
    assert tail.last().startswith("sync")


def test_daemon_process_tree_and_table() -> None:
    from benchmarks import daemon_latency

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in daemon_latency.descendants(os.getpid())
        assert (daemon_latency.proc_status_kb(child.pid, "VmHWM") or 0) > 0
    finally:
        child.kill()
        child.wait()
    s = daemon_latency.summary([0.2, 0.1, 0.3])
    results = {
        "cold_start_seconds": 3.5,
        "cold_sync": {"result": "applied", "duration": 2.5, "create": 10, "update": 0, "delete": 0},
        "webhook": s, "webhook_sync": s, "webhook_floor": daemon_latency.summary([0.01]),
        "webhook_floor_process": daemon_latency.summary([0.05]),
        "restart": {"listening_seconds": 0.4, "ready_seconds": 1.3, "first_sync_seconds": 0.7,
                    "first_sync_began_seconds": 0.5,
                    "first_sync": "dev: applied", "next_webhook_seconds": 0.2,
                    "next_webhook_sync_seconds": 0.15, "other_tenant_seconds": 0.9,
                    "other_tenant_sync_seconds": 0.75},
        "memory_webhook": {"daemon_peak_mb": 120, "daemon_rss_mb": 110, "tree_peak_mb": 125,
                           "helper_peak_mb": 7, "helper_peak_process": "git",
                           "peak_was_reset_after_cold_start": True},
        "drift": {"found_seconds": 2.5, "count": 1, "heal_sync_seconds": 4.25, "heal_sync": "dev: applied"},
        "memory_drift": {"daemon_peak_mb": 140, "daemon_rss_mb": 90, "tree_peak_mb": 150,
                         "helper_peak_mb": 7, "helper_peak_process": "git"},
    }
    text = daemon_latency.table(results)
    assert "webhook: push → applied (floor in-process)     0.200" in text
    assert "20.0×" in text and "4.0×" in text  # 0.2 s over floors of 10 ms and 50 ms
    assert "restart: process start → ready" in text
    assert "restart: then a push to another tenant" in text and "0.900" in text and "its sync 0.750s" in text
    assert "webhook phase: daemon peak 120 MB" in text
    assert "drift: process start → drift found" in text and "2.500" in text and "1 resource(s)" in text
    assert "drift: the full sync that restores it" in text and "4.250" in text
    assert "drift check + full sync: daemon peak 140 MB" in text


def test_the_daemon_probe_can_edit_a_flow_of_another_tenant(tmp_path: Path) -> None:
    from benchmarks import daemon_latency

    from tests.gitutil import git, sample_repo

    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(sample_repo(tmp_path / "repo")), str(bare))
    first = daemon_latency.Probe(bare, "main")
    other = daemon_latency.Probe(bare, "main", other_than=first)
    assert first.path.split("/")[1] != other.path.split("/")[1]
    assert "/flows/" in other.path
    sha = other.commit()
    assert git(bare, "diff-tree", "-r", "--name-only", "--no-commit-id", sha).split() == [other.path]


def test_the_daemon_benchmark_heals_drift_with_a_full_sync(tmp_path: Path) -> None:
    """The drift phase end to end on the sample repository: a flow replaced by hand in the
    stopped instance is found by the start-up drift check and restored by a full sync."""
    from benchmarks import daemon_latency

    from tests.gitutil import sample_repo

    out = tmp_path / "drift.json"
    code = daemon_latency.main([
        str(sample_repo(tmp_path / "repo")), "--phases", "drift", "--samples", "1",
        "--timeout", "60", "--cold-timeout", "120", "--json", str(out),
    ])
    results = json.loads(out.read_text())
    assert code == 0, results.get("error")
    assert results["drift"]["count"] == 1
    assert "+0 ~1 -0" in results["drift"]["heal_sync"] or "1 updated" in results["drift"]["heal_sync"], results
    assert results["memory_drift"]["daemon_peak_mb"] > 0
