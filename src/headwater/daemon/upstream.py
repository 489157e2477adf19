"""The daemon's side of the remote: ask for its heads, fetch the tracked branches that moved
into the mirror, clone the mirror again when it is corrupt, and read which branch each
instance follows from headwater.yaml. Runs in the loop's thread only."""

from __future__ import annotations

import time
from logging import DEBUG, INFO, WARNING
from typing import TYPE_CHECKING

from headwater import gitrepo
from headwater.daemon import syncing
from headwater.daemon.runtime import InstanceRuntime, instance_map
from headwater.daemon.triggers import backoff_delay
from headwater.errors import ConfigError, GitError, HeadwaterError
from headwater.gitrepo import GitRepo

if TYPE_CHECKING:
    from headwater.daemon.loop import Daemon

_FALLBACK_CONFIG_BRANCHES = ("main", "master")


def load(d: Daemon) -> None:
    """Start from what the mirror holds, so a daemon restarted while the remote is down
    still knows its instances' branches and heads (and serves the last good revisions)."""
    assert d.repo is not None
    heads = d.repo.branches()
    with d.mu:
        d.remote.mirror = heads
    branch = d.conf.repository.config_branch or d.mirror.remembered_config_branch()
    if branch is not None and needs_config(d) and branch in heads:
        map_branches(d, branch)


def tracked_branches(d: Daemon) -> set[str]:
    with d.mu:
        return {rt.branch for rt in d.instances.values() if rt.branch}


def needs_config(d: Daemon) -> bool:
    return d.dynamic or any(not rt.branch_fixed for rt in d.instances.values())


def refresh(d: Daemon) -> set[str]:
    """Ask the remote for its heads and fetch the tracked branches that moved.

    Returns the instances whose branch head in the mirror moved. A remote that cannot be
    reached is reported and retried with backoff; the mirror keeps what it has.
    """
    before = dict(d.remote.mirror)
    d.remote.last_contact = time.time()
    try:
        advertised = d.mirror.heads()
    except GitError as exc:
        remote_failed(d, "unreachable", exc.message)
        return set()
    config_branch = None
    if needs_config(d):
        config_branch = d.conf.repository.config_branch or advertised.default_branch
        if config_branch is None:
            config_branch = next(
                (b for b in _FALLBACK_CONFIG_BRANCHES if b in advertised.heads), None
            )
        if config_branch is None:
            set_branch_errors(
                d,
                "the remote names no default branch to read headwater.yaml from;"
                " set repository.config_branch",
            )
    try:
        fetch(
            d,
            advertised.heads,
            tracked_branches(d) | ({config_branch} if config_branch else set()),
        )
        if config_branch is not None:
            map_branches(d, config_branch)
            d.mirror.remember_config_branch(config_branch)
            fetch(d, advertised.heads, tracked_branches(d))
    except GitError as exc:
        remote_failed(
            d,
            d.remote.condition if d.remote.condition == "corrupt" else "error",
            exc.message,
        )
        return set()
    with d.mu:
        d.remote.heads = dict(advertised.heads)
        d.remote.default_branch = advertised.default_branch
        d.remote.config_branch = config_branch
        if d.remote.condition != "ok":
            d.event(
                INFO,
                "remote.ok",
                f"the remote {d.remote_spec.display} answers again"
                if d.remote.condition != "unknown"
                else f"connected to {d.remote_spec.display}",
                repository=d.remote_spec.display,
            )
        d.remote.condition, d.remote.error = "ok", None
        d.remote.failures, d.remote.retry_at = 0, None
        d.remote.last_success = time.time()
    d.metrics.remote_up.set(1)
    d.metrics.fetches.labels("ok").inc()
    d.start_watch()
    return {
        rt.name
        for rt in d.instances.values()
        if rt.branch and d.remote.mirror.get(rt.branch) != before.get(rt.branch)
    }


def fetch(d: Daemon, advertised: dict[str, str], branches: set[str]) -> None:
    assert d.repo is not None
    wanted = {b for b in branches if b in advertised}
    have = d.repo.branches()
    stale = {b for b in wanted if have.get(b) != advertised[b]}
    if stale:
        started = time.monotonic()
        how = "fetch"
        try:
            with d.mirror.exclusive():
                how = d.mirror.fetch(stale, have)
        except GitError as exc:
            if not repair_mirror(d, exc, wanted):
                raise
        d.event(
            DEBUG,
            "mirror.fetch",
            f"fetched {', '.join(sorted(stale))}",
            branches=sorted(stale),
            method=how,
            duration=round(time.monotonic() - started, 3),
        )
    mirror = d.repo.branches()
    with d.mu:
        d.remote.mirror = mirror


def repair_mirror(d: Daemon, exc: HeadwaterError, branches: set[str]) -> bool:
    """Clone the mirror again when git reports it corrupt; False when it is sound."""
    problem = d.mirror.integrity()
    if problem is None:
        return False
    d.event(
        WARNING,
        "mirror.corrupt",
        f"the mirror is corrupt ({problem}); cloning it again",
        error=exc.message,
        problem=problem,
    )
    with d.mu:
        d.remote.condition, d.remote.error = "corrupt", problem
    assert d.repo is not None and d.engine is not None
    d.repo.close()
    with d.mirror.exclusive():
        d.mirror.reclone(branches)
    d.repo = GitRepo(d.mirror.path)
    d.engine.repo = d.repo
    with d.mu:
        d.remote.reclones += 1
    d.metrics.reclones.inc()
    d.event(
        WARNING,
        "mirror.recloned",
        f"the mirror was cloned again ({', '.join(sorted(branches))})",
        branches=sorted(branches),
    )
    return True


def remote_failed(d: Daemon, condition: str, message: str) -> None:
    with d.mu:
        changed = (condition, message) != (d.remote.condition, d.remote.error)
        d.remote.condition, d.remote.error = condition, message
        d.remote.failures += 1
        delay = backoff_delay(d.remote.failures, d.conf.backoff.initial, d.conf.backoff.max)
        d.remote.retry_at = time.monotonic() + delay
    d.metrics.remote_up.set(0)
    d.metrics.fetches.labels("error").inc()
    d.event(
        WARNING if changed else DEBUG,
        "remote.error",
        f"the remote {d.remote_spec.display} failed: {message}; retry in {delay:.1f}s",
        condition=condition,
        error=message,
        retry_in=round(delay, 3),
    )


def map_branches(d: Daemon, config_branch: str) -> None:
    """Read which branch each instance follows from headwater.yaml on ``config_branch``."""
    assert d.repo is not None
    sha = d.repo.ref(f"refs/heads/{config_branch}")
    if sha is None or sha == d.remote.config_revision:
        if sha is None:
            set_branch_errors(
                d, f"cannot read headwater.yaml: branch {config_branch} is not on the remote"
            )
        return
    try:
        data = gitrepo.read_path(d.repo, sha, "headwater.yaml")
        mapping = instance_map(data) if data is not None else {}
    except ConfigError as exc:
        with d.mu:
            d.remote.config_error = f"{config_branch}@{sha[:12]}: {exc.message}"
        return
    with d.mu:
        d.remote.config_revision, d.remote.config_error = sha, None
        if d.dynamic:
            for name in mapping:
                if name not in d.instances:
                    d.instances[name] = InstanceRuntime(name)
                    syncing.load_instance(d, d.instances[name])
        for rt in d.instances.values():
            if rt.branch_fixed:
                continue
            if rt.name in mapping:
                rt.branch, heal = mapping[rt.name]
                rt.self_heal = rt.self_heal_setting if rt.self_heal_setting is not None else heal
                rt.branch_error = None
            else:
                rt.branch_error = (
                    f"instance {rt.name} is not in headwater.yaml on branch {config_branch}"
                )


def set_branch_errors(d: Daemon, message: str) -> None:
    with d.mu:
        for rt in d.instances.values():
            if not rt.branch_fixed and rt.branch is None:
                rt.branch_error = message
