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
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from headwater.errors import Diagnostic
from headwater.flows import validate_flow
from headwater.gitrepo import GitRepo
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import FlowReferences, flow_references

log = logging.getLogger(__name__)

Item = tuple[str, str, str, str]  # blob id, path, expected flow id, expected namespace
Result = tuple[list[Diagnostic], FlowReferences | None]

PARALLEL_MIN = 1500  # below this, starting a process costs more than it saves


def validate_many(
    repo: GitRepo, items: Sequence[Item], registry: TypeRegistry, extra_types: Sequence[str]
) -> dict[str, Result]:
    """Validation result of every item, by path."""
    workers = _workers() if len(items) >= PARALLEL_MIN else 0
    if workers <= 0:
        return _validate(repo, items, registry)
    # This process starts at once, the workers only after importing: give it a larger share.
    own = len(items) * 6 // (5 * (workers + 1))
    mine, rest = items[:own], items[own:]
    size = -(-len(rest) // workers)
    chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
    try:
        with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, str(repo.git_dir), list(extra_types), list(c)) for c in chunks]
            results = _validate(repo, mine, registry)
            for future in futures:
                results.update(future.result())
        return results
    except (BrokenProcessPool, OSError) as exc:  # no processes here: do it all in this one
        log.warning("parallel validation unavailable (%s); continuing in one process", exc)
        return _validate(repo, items, registry)


def _workers() -> int:
    """Extra processes: ``$HEADWATER_WORKERS`` (0 = this process only), else one per spare core."""
    setting = os.environ.get("HEADWATER_WORKERS", "")
    if setting.isdigit():
        return min(int(setting), 16)
    return min((os.cpu_count() or 1) - 1, 7)


def _validate(repo: GitRepo, items: Sequence[Item], registry: TypeRegistry) -> dict[str, Result]:
    blobs = repo.read_blobs(oid for (oid, _p, _f, _n) in items)
    results: dict[str, Result] = {}
    for oid, path, flow_id, namespace in items:
        doc, found = validate_flow(
            blobs[oid], path, registry, expect_id=flow_id, expect_namespace=namespace
        )
        refs = flow_references(doc) if doc is not None and isinstance(doc.value, dict) else None
        results[path] = (found, refs)
    return results


def _worker(git_dir: str, extra_types: list[str], items: list[Item]) -> dict[str, Result]:
    with GitRepo(git_dir) as repo:
        return _validate(repo, items, TypeRegistry.builtin(extra_types))
