"""Validating many flows at once, on every core.

A cold load of a large repository spends most of its time parsing and checking flows, each
independent of the others. Above a threshold the work is split: worker processes (spawned,
never forked, so a daemon's threads are safe) read their own blobs through their own
``git cat-file --batch`` and validate them while this process does its share.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from headwater.errors import Diagnostic
from headwater.flows import validate_flow
from headwater.gitrepo import BlobReader, GitRepo
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import FlowReferences, flow_references

log = logging.getLogger(__name__)

Item = tuple[str, str, str, str]  # blob id, path, expected flow id, expected namespace
Result = tuple[list[Diagnostic], FlowReferences | None]

PARALLEL_MIN = 1500  # below this, starting a process costs more than it saves
CHUNK = 250  # flows per piece of work: small enough to even out, large enough to batch reads


def validate_many(
    repo: GitRepo,
    items: Sequence[Item],
    registry: TypeRegistry,
    extra_types: Sequence[str],
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, Result]:
    """Validation result of every item, by path.

    The items are cut into chunks, all queued for the workers; this process takes chunks from
    the far end of the queue (those no worker has started), so the work splits evenly however
    long the workers take to start. ``meanwhile`` is other work of the caller's, done in this
    process while the workers start.
    """
    workers = _workers() if len(items) >= PARALLEL_MIN else 0
    if workers <= 0:
        if meanwhile is not None:
            meanwhile()
        return _validate(repo.read_blobs, items, registry)
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    try:
        with (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
            repo.blob_reader() as reader,
        ):
            futures = [pool.submit(_worker, str(repo.git_dir), list(extra_types), list(c)) for c in chunks]
            if meanwhile is not None:
                run, meanwhile = meanwhile, None  # once, whatever happens
                try:
                    run()
                except BaseException as exc:  # the caller's error, not the pool's
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise _CallerFailed() from exc
            results: dict[str, Result] = {}
            for chunk, future in zip(reversed(chunks), reversed(futures), strict=True):
                if not future.cancel():
                    break  # a worker has it, and every chunk before it
                results.update(_validate(reader.read, chunk, registry))
            for future in futures:
                if not future.cancelled():
                    results.update(future.result())
        return results
    except _CallerFailed as failed:
        assert failed.__cause__ is not None
        raise failed.__cause__ from None
    except (BrokenProcessPool, OSError) as exc:  # no processes here: do it all in this one
        log.warning("parallel validation unavailable (%s); continuing in one process", exc)
        if meanwhile is not None:
            meanwhile()
        return _validate(repo.read_blobs, items, registry)


class _CallerFailed(Exception):
    """Carries an error of ``meanwhile`` past the pool's own error handling."""


def _workers() -> int:
    """Extra processes: ``$HEADWATER_WORKERS`` (0 = this process only), else one per spare core."""
    setting = os.environ.get("HEADWATER_WORKERS", "")
    if setting.isdigit():
        return min(int(setting), 16)
    return min((os.cpu_count() or 1) - 1, 7)


def _validate(
    read: Callable[[Iterable[str]], dict[str, bytes]], items: Sequence[Item], registry: TypeRegistry
) -> dict[str, Result]:
    blobs = read(oid for (oid, _p, _f, _n) in items)
    results: dict[str, Result] = {}
    for oid, path, flow_id, namespace in items:
        doc, found = validate_flow(
            blobs[oid], path, registry, expect_id=flow_id, expect_namespace=namespace
        )
        refs = flow_references(doc) if doc is not None and isinstance(doc.value, dict) else None
        results[path] = (found, refs)
    return results


# A worker process keeps its repository, its ``git cat-file`` and its type registry from
# one chunk to the next.
_WORKER_STATE: dict[tuple[str, tuple[str, ...]], tuple[GitRepo, BlobReader, TypeRegistry]] = {}


def _worker(git_dir: str, extra_types: list[str], items: list[Item]) -> dict[str, Result]:
    key = (git_dir, tuple(extra_types))
    state = _WORKER_STATE.get(key)
    if state is None:
        for repo, reader, _registry in _WORKER_STATE.values():
            reader.close()
            repo.close()
        _WORKER_STATE.clear()
        repo = GitRepo(git_dir)
        state = _WORKER_STATE[key] = (repo, repo.blob_reader(), TypeRegistry.builtin(extra_types))
    return _validate(state[1].read, items, state[2])
