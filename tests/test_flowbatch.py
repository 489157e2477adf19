from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from headwater import flowbatch, snapshot
from headwater.cache import ResultCache
from headwater.gitrepo import GitRepo
from headwater.kestra_types import TypeRegistry
from tests.gitutil import commit

FLOW = "tenants/acme/company/team/flows/ingest.yaml"


def _items(repo: GitRepo) -> list[flowbatch.Item]:
    snap = snapshot.load(repo, "HEAD")
    return [
        (info.entry.oid, info.entry.path, info.flow_id, info.namespace) for info in snap.flows.values()
    ]


def test_parallel_results_equal_sequential(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit(sample, "one bad flow", {FLOW: "id: ingest\nnamespace: company.team\ntasks: []\n"})
    with GitRepo(sample) as repo:
        items = _items(repo)
        registry = snapshot.load(repo, "HEAD").registry
        monkeypatch.setenv("HEADWATER_WORKERS", "0")
        sequential = flowbatch.validate_many(repo, items, registry, [])
        monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
        monkeypatch.setenv("HEADWATER_WORKERS", "2")
        parallel = flowbatch.validate_many(repo, items, registry, [])
        monkeypatch.setattr(flowbatch, "CHUNK", 1)  # one flow per chunk: shared out one by one
        chunked = flowbatch.validate_many(repo, items, registry, [])
        with _another_thread():  # spawned workers, as in the daemon
            assert flowbatch._start_method().get_start_method() == "spawn"
            spawned = flowbatch.validate_many(repo, items, registry, [])
    assert len(items) > 3
    assert parallel.keys() == sequential.keys() == {item[1] for item in items}
    assert parallel == sequential == chunked == spawned
    assert any(diags for diags, _refs in parallel.values())  # the bad flow is reported by either path


@contextlib.contextmanager
def _another_thread() -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_workers_are_forked_only_by_a_process_without_other_threads() -> None:
    """A fork would copy the locks other threads hold (the daemon's), so they get spawned."""
    assert threading.active_count() == 1
    assert flowbatch._start_method().get_start_method() == "fork"
    with _another_thread():
        assert flowbatch._start_method().get_start_method() == "spawn"


def test_workers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_WORKERS", "0")
    assert flowbatch._workers() == 0
    monkeypatch.setenv("HEADWATER_WORKERS", "99")
    assert flowbatch._workers() == 16
    monkeypatch.setenv("HEADWATER_WORKERS", "lots")
    assert flowbatch._workers() >= 0


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("fails", [False, True])
def test_the_callers_other_work_runs_once_and_its_error_is_its_own(
    sample: Path, monkeypatch: pytest.MonkeyPatch, workers: str, fails: bool
) -> None:
    """``meanwhile`` runs once, with workers or without; its error is raised as it is, not
    taken for a failure of the pool (which would run it again)."""
    monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
    monkeypatch.setenv("HEADWATER_WORKERS", workers)
    ran: list[int] = []
    given: list[Mapping[str, bytes]] = []

    def meanwhile(blobs: Mapping[str, bytes]) -> None:
        ran.append(1)
        given.append(dict(blobs))
        if fails:
            raise OSError(2, "the caller's own failure")

    with GitRepo(sample) as repo:
        items = _items(repo)
        registry = snapshot.load(repo, "HEAD").registry
        if fails:
            with pytest.raises(OSError, match="the caller's own failure"):
                flowbatch.validate_many(repo, items, registry, [], meanwhile=meanwhile)
        else:
            results = flowbatch.validate_many(repo, items, registry, [], meanwhile=meanwhile)
            assert results.keys() == {item[1] for item in items}
        # it is given the items' blobs, read once for it and the validation
        assert given == [repo.read_blobs(oid for (oid, *_rest) in items)]
    assert ran == [1]


def test_a_loaded_snapshot_is_the_same_with_workers_or_without(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs are parsed while the workers validate the flows: the result is the same."""
    monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
    with GitRepo(sample) as repo:
        monkeypatch.setenv("HEADWATER_WORKERS", "0")
        alone = snapshot.load(repo, "HEAD")
        monkeypatch.setenv("HEADWATER_WORKERS", "1")
        shared = snapshot.load(repo, "HEAD")
    assert alone.configs.keys() == shared.configs.keys() and alone.configs
    assert alone.diagnostics == shared.diagnostics
    assert alone.parsed == shared.parsed and alone.flows == shared.flows


# How the script below validates: through validate_many, or a folder through a Pipeline.
VALIDATE_MANY = "        flowbatch.validate_many(repo, items, snap.registry, [])\n"
PIPELINE = (
    "        with flowbatch.Pipeline(repo, [], expected=len(items)) as pipeline:\n"
    "            pipeline.ahead(items)\n"
    "            pipeline.validate(repo, items, snap.registry, [])\n"
)


@pytest.mark.parametrize("call", [VALIDATE_MANY, PIPELINE], ids=["validate_many", "pipeline"])
def test_a_missing_blob_among_forked_workers_is_an_error_not_a_hang(
    sample: Path, tmp_path: Path, call: str
) -> None:
    """Forked workers hold a copy of the reader's pipe to Git: a blob found missing after they
    start must still end that Git (run apart, so that a hang fails the test, not the run)."""
    script = tmp_path / "missing.py"
    script.write_text(
        "import sys\n"
        "from headwater import flowbatch, snapshot\n"
        "from headwater.errors import GitError\n"
        "from headwater.gitrepo import GitRepo\n"
        "flowbatch.PARALLEL_MIN, flowbatch.CHUNK = 1, 1\n"
        "assert flowbatch._start_method().get_start_method() == 'fork'\n"
        f"with GitRepo({str(sample)!r}) as repo:\n"
        "    snap = snapshot.load(repo, 'HEAD')\n"
        "    items = [(i.entry.oid, i.entry.path, i.flow_id, i.namespace) for i in snap.flows.values()]\n"
        "    items.insert(2, ('0' * 40, 'tenants/acme/company/flows/gone.yaml', 'gone', 'company'))\n"
        "    try:\n"
        f"{call}"
        "    except GitError as exc:\n"
        "        print(exc.message)\n"
    )
    env = {**os.environ, "HEADWATER_WORKERS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"missing Git object {'0' * 40}"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_pipeline_validates_each_folder_as_validate_many_does(
    sample: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Folders submitted ahead (the next one before the first is collected), one not
    submitted at all, chunks taken back by this process: the results are validate_many's,
    and ``meanwhile`` is given the folder's blobs once."""
    commit(sample, "one bad flow", {FLOW: "id: ingest\nnamespace: company.team\ntasks: []\n"})
    monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
    monkeypatch.setattr(flowbatch, "CHUNK", 1)
    monkeypatch.setenv("HEADWATER_WORKERS", workers)
    with GitRepo(sample) as repo:
        items = _items(repo)
        registry = snapshot.load(repo, "HEAD").registry
        expected = flowbatch.validate_many(repo, items, registry, [])
        first, second = items[: len(items) // 2], items[len(items) // 2 :]
        given: list[dict[str, bytes]] = []
        with flowbatch.Pipeline(repo, [], expected=len(items)) as pipeline:
            assert pipeline.workers == int(workers)
            pipeline.ahead(first)
            pipeline.ahead(second)
            got = pipeline.validate(repo, first, registry, [], lambda blobs: given.append(dict(blobs)))
            got.update(pipeline.validate(repo, second, registry, []))
            assert not pipeline._queued  # each chunk collected once
            again = pipeline.validate(repo, items, registry, [])  # nothing submitted ahead
        assert pipeline._pool is None
        assert given == [repo.read_blobs(oid for (oid, *_rest) in first)]
    assert len(first) > 1 and len(second) > 1
    assert got == expected == again
    assert any(diags for diags, _refs in got.values())


def test_a_pipeline_of_few_flows_starts_no_worker(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_WORKERS", "2")
    with GitRepo(sample) as repo, flowbatch.Pipeline(repo, [], expected=flowbatch.PARALLEL_MIN - 1) as pipeline:
        items = _items(repo)
        pipeline.ahead(items)
        results = pipeline.validate(repo, items, snapshot.load(repo, "HEAD").registry, [])
        assert pipeline.workers == 0 and pipeline._pool is None
    assert results.keys() == {item[1] for item in items}


def _stored(cache: ResultCache, items: list[flowbatch.Item], registry: TypeRegistry) -> dict[str, object]:
    """What ``cache`` holds for ``items``, by path."""
    keys = {flowbatch.result_key(item, registry): item[1] for item in items}
    return {keys[key]: value for key, value in cache.get_many(keys).items()}


@pytest.mark.parametrize("how", ["alone", "workers", "one flow a chunk", "spawned", "pipeline"])
def test_every_result_is_written_to_the_store(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Whichever process made a result (a worker, or this one taking a chunk back), the
    result cache has it after a load, under ``result_key``, as it was returned."""
    commit(sample, "one bad flow", {FLOW: "id: ingest\nnamespace: company.team\ntasks: []\n"})
    monkeypatch.setattr(flowbatch, "PARALLEL_MIN", 1)
    monkeypatch.setenv("HEADWATER_WORKERS", "0" if how == "alone" else "2")
    if how == "one flow a chunk":
        monkeypatch.setattr(flowbatch, "CHUNK", 1)
    with GitRepo(sample) as repo, ResultCache(tmp_path / "c.db") as cache:
        items = _items(repo)
        registry = snapshot.load(repo, "HEAD").registry
        results = flowbatch.validate_many(repo, items, registry, [])
        if how == "pipeline":  # folder by folder, each submitted before the first is loaded
            pieces = snapshot.split(repo, "HEAD")
            with flowbatch.Pipeline(repo, [], expected=len(items)) as pipeline:
                for folder in sorted(pieces.folders):
                    pipeline.ahead(snapshot.to_validate(pieces, folder, cache)[1])
                for folder in sorted(pieces.folders):
                    snapshot.piece(repo, pieces, "dev", folder, cache=cache, validator=pipeline.validate)
        elif how == "spawned":
            with _another_thread():
                snapshot.load(repo, "HEAD", cache=cache)
        else:
            snapshot.load(repo, "HEAD", cache=cache)
        assert _stored(cache, items, registry) == results
        assert results.keys() == {item[1] for item in items}

