"""Validating many flows at once, on every core.

A cold load of a large repository spends most of its time parsing and checking flows, each
independent of the others. Above a threshold the work is split: this process reads the blobs
(one ``git cat-file --batch``) and hands them out in chunks to worker processes, which only
validate, while this process does its share. A process running no other thread (the CLI)
forks the workers: they start at once, with everything imported. One that does (the daemon)
spawns them, since a fork would copy the locks its other threads hold.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Protocol

from headwater.cache import key as cache_key
from headwater.errors import Diagnostic, GitError
from headwater.flows import validate_flow
from headwater.gitrepo import GitRepo
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import FlowReferences, flow_references

log = logging.getLogger(__name__)

Item = tuple[str, str, str, str]  # blob id, path, expected flow id, expected namespace
Result = tuple[list[Diagnostic], FlowReferences | None]
Blobs = Mapping[str, bytes]  # content by blob id

PARALLEL_MIN = 1500  # below this, starting a process costs more than it saves
CHUNK = 250  # flows per piece of work: small enough to even out, large enough to batch reads


def result_key(item: Item, registry: TypeRegistry) -> str:
    """The result cache key of an item's validation result."""
    oid, path, flow_id, namespace = item
    return cache_key("flow", oid, path, registry.fingerprint, flow_id, namespace)


def validate_many(
    repo: GitRepo,
    items: Sequence[Item],
    registry: TypeRegistry,
    extra_types: Sequence[str],
    meanwhile: Callable[[Blobs], None] | None = None,
) -> dict[str, Result]:
    """Validation result of every item, by path.

    The items are cut into chunks, each queued for the workers as soon as its blobs are read;
    this process then takes chunks from the far end of the queue (those no worker has
    started), so the work splits evenly however long the workers take to start.
    ``meanwhile`` is other work of the caller's, done in this process while the workers
    validate; it is given the items' blobs, all read by then. The caller keeps the results
    (the result cache, under ``result_key``): a forked worker must not open the cache this
    process has open (SQLite's locks are per process, and a fork shares this one's).
    """
    workers = _workers() if len(items) >= PARALLEL_MIN else 0
    if workers <= 0:
        return _alone(repo, items, registry, meanwhile)
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    blobs: dict[str, bytes] = {}
    try:
        # The reader outlives the pool: a forked worker holds a copy of its pipes until the
        # pool ends, and closing the reader waits for its Git to see them closed.
        with repo.blob_reader() as reader, ProcessPoolExecutor(workers, mp_context=_start_method()) as pool:
            futures: list[Future[dict[str, Result]]] = []
            for chunk in chunks:
                read = reader.read(oid for (oid, _p, _f, _n) in chunk)
                blobs.update(read)
                futures.append(pool.submit(_worker, list(extra_types), read, list(chunk)))
            if meanwhile is not None:
                run, meanwhile = meanwhile, None  # once, whatever happens
                try:
                    run(blobs)
                except BaseException as exc:  # the caller's error, not the pool's
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise _CallerFailed() from exc
            results: dict[str, Result] = {}
            for chunk, future in zip(reversed(chunks), reversed(futures), strict=True):
                if not future.cancel():
                    break  # a worker has it, and every chunk before it
                results.update(_validate(blobs, chunk, registry))
            for future in futures:
                if not future.cancelled():
                    results.update(future.result())
        return results
    except _CallerFailed as failed:
        assert failed.__cause__ is not None
        raise failed.__cause__ from None
    except (BrokenProcessPool, OSError) as exc:  # no processes here: do it all in this one
        log.warning("parallel validation unavailable (%s); continuing in one process", exc)
        return _alone(repo, items, registry, meanwhile)


class Validator(Protocol):
    """``validate_many``'s signature: what loads a snapshot's flows (``Pipeline.validate``)."""

    def __call__(
        self, repo: GitRepo, items: Sequence[Item], registry: TypeRegistry, extra_types: Sequence[str],
        meanwhile: Callable[[Blobs], None] | None = None,
    ) -> dict[str, Result]: ...


@dataclass
class _Queued:
    """A chunk a ``Pipeline`` submitted: its items, their blobs, and the worker's answer."""

    items: list[Item]
    blobs: dict[str, bytes]
    future: Future[dict[str, Result]]


class Pipeline:
    """One pool of workers for a pass over a commit's tenant folders, one after another (a
    plan or an apply made tenant by tenant).

    ``validate`` takes ``validate_many``'s place for each folder. The caller submits the next
    folder's flows (``ahead``) before it finishes the current one, so the workers validate
    them while this process makes the current folder's desired state, plan and output:
    between folders, no worker waits, and no pool starts again. As in ``validate_many``,
    this process takes the chunks of a folder no worker has started when it needs them.

    A pass of fewer than ``PARALLEL_MIN`` flows (``expected``) runs in this process alone.

    The workers never write the result cache (see ``validate_many``). Were the results
    written ahead, a folder's loading would find them there, and its queued chunks would
    never be collected.
    """

    def __init__(self, repo: GitRepo, extra_types: Sequence[str], expected: int) -> None:
        self.repo = repo
        self.extra = list(extra_types)
        self.workers = _workers() if expected >= PARALLEL_MIN else 0
        self._pool: ProcessPoolExecutor | None = None
        self._queued: dict[Item, _Queued] = {}

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers."""
        self._queued.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def ahead(self, items: Sequence[Item]) -> None:
        """Submit ``items`` (a folder's flows to validate) to the workers, in chunks."""
        items = [item for item in items if item not in self._queued]
        if self.workers <= 0 or not items:
            return
        try:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=_start_method())
                # The workers start now, before any reader: none holds a copy of a reader's
                # pipes (see validate_many), so each folder has a reader of its own, and Git's
                # memory (the pack it maps) does not grow over the whole pass.
                self._pool.submit(int).result()
            with self.repo.blob_reader() as reader:
                for start in range(0, len(items), CHUNK):
                    chunk = items[start : start + CHUNK]
                    read = reader.read(oid for (oid, _p, _f, _n) in chunk)
                    queued = _Queued(chunk, read, self._pool.submit(_worker, self.extra, read, chunk))
                    self._queued.update((item, queued) for item in chunk)
        except (BrokenProcessPool, OSError, GitError) as exc:  # ``validate`` does the rest
            log.warning("parallel validation unavailable (%s); continuing in one process", exc)
            self.workers = 0

    def validate(
        self, repo: GitRepo, items: Sequence[Item], registry: TypeRegistry, extra_types: Sequence[str],
        meanwhile: Callable[[Blobs], None] | None = None,
    ) -> dict[str, Result]:
        """The validation result of every item, by path, as ``validate_many`` gives it."""
        assert repo is self.repo and list(extra_types) == self.extra
        self.ahead(items)
        chunks = list({id(q): q for q in (self._queued.pop(item, None) for item in items) if q is not None}.values())
        blobs: dict[str, bytes] = {}
        for queued in chunks:
            blobs.update(queued.blobs)
        taken = {item for queued in chunks for item in queued.items}
        rest = [item for item in items if item not in taken]  # not submitted: done here
        blobs.update(self.repo.read_blobs(oid for (oid, _p, _f, _n) in rest))
        if meanwhile is not None:
            meanwhile(blobs)
        results = _validate(blobs, rest, registry)
        waiting: list[_Queued] = []
        for queued in reversed(chunks):  # from the far end: those no worker has started
            if waiting or not queued.future.cancel():
                waiting.append(queued)
                continue
            results.update(_validate(queued.blobs, queued.items, registry))
        for queued in reversed(waiting):
            try:
                results.update(queued.future.result())
            except BrokenProcessPool as exc:
                log.warning("parallel validation unavailable (%s); continuing in one process", exc)
                self.workers = 0
                results.update(_validate(queued.blobs, queued.items, registry))
        return results


def _alone(
    repo: GitRepo, items: Sequence[Item], registry: TypeRegistry, meanwhile: Callable[[Blobs], None] | None
) -> dict[str, Result]:
    blobs = repo.read_blobs(oid for (oid, _p, _f, _n) in items)
    if meanwhile is not None:
        meanwhile(blobs)
    return _validate(blobs, items, registry)


class _CallerFailed(Exception):
    """Carries an error of ``meanwhile`` past the pool's own error handling."""


def _start_method() -> BaseContext:
    """fork on Linux when this process runs no other thread, else spawn (see the module's
    text; macOS lists fork, but its system libraries are not safe across one)."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _workers() -> int:
    """Extra processes: ``$HEADWATER_WORKERS`` (0 = this process only), else one per spare core."""
    setting = os.environ.get("HEADWATER_WORKERS", "")
    if setting.isdigit():
        return min(int(setting), 16)
    return min((os.cpu_count() or 1) - 1, 7)


def _validate(blobs: Blobs, items: Sequence[Item], registry: TypeRegistry) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for oid, path, flow_id, namespace in items:
        doc, found = validate_flow(
            blobs[oid], path, registry, expect_id=flow_id, expect_namespace=namespace
        )
        refs = flow_references(doc) if doc is not None and isinstance(doc.value, dict) else None
        results[path] = (found, refs)
    return results


# A worker process keeps its type registry from one chunk to the next.
_REGISTRIES: dict[tuple[str, ...], TypeRegistry] = {}


def _worker(extra_types: list[str], blobs: dict[str, bytes], items: list[Item]) -> dict[str, Result]:
    key = tuple(extra_types)
    registry = _REGISTRIES.get(key)
    if registry is None:
        _REGISTRIES.clear()
        registry = _REGISTRIES[key] = TypeRegistry.builtin(extra_types)
    return _validate(blobs, items, registry)
