"""One instance: new head → validate → plan → apply → record, and the periodic drift check.

The rules: a head already applied is left alone; a head that failed validation (or was
refused) is not tried again until the branch moves; a transient failure is retried with
backoff; a break-glass rollback sticks until the branch moves; ``selfHeal`` re-applies to
restore drift. The engine does the work under the instance's lock in the state store.
"""

from __future__ import annotations

import os
import time
from logging import DEBUG, INFO, WARNING
from typing import TYPE_CHECKING, Any

from headwater import heap
from headwater.daemon import upstream
from headwater.daemon.runtime import (
    NO_VERDICT,
    InstanceRuntime,
    SyncResult,
    failure_verdict,
    first_error,
    permanent_failure,
    rolled_back_from,
)
from headwater.daemon.triggers import backoff_delay
from headwater.engine import status_of
from headwater.errors import (
    GitError,
    HeadwaterError,
    PlanRefused,
    StateError,
    TargetError,
    ValidationFailed,
)
from headwater.plan import Plan
from headwater.state import HistoryEntry

if TYPE_CHECKING:
    from headwater.daemon.loop import Daemon


def load_instance(d: Daemon, rt: InstanceRuntime) -> None:
    """Seed the metrics of an instance from the state store."""
    state = d.store.get(rt.name)
    if state.applied_at is not None:
        d.metrics.last_applied.labels(rt.name).set(state.applied_at.timestamp())
    d.metrics.instance_ready.labels(rt.name).set(0)
    d.metrics.drift.labels(rt.name).set(0)
    if d.engine is not None:
        rt.target_revision = d.engine.target(rt.name).current_revision()


def sync(d: Daemon, rt: InstanceRuntime, reason: str) -> None:
    assert d.engine is not None
    started = time.monotonic()
    was_primed, had = d.engine.primed(rt.name), d.engine.resident_tenants(rt.name)
    with d.mu:
        rt.recorded = status_of(d.store, None, rt.name)  # what /status shows until the sync ends
    try:
        result = _attempt(d, rt, reason, was_primed, had)
    except BaseException:
        with d.mu:
            rt.recorded = None
        raise
    duration = time.monotonic() - started
    target_revision = d.engine.target(rt.name).current_revision()
    with d.mu:
        rt.recorded = None
        repeated = (result.outcome, result.error) == (rt.outcome, rt.error)
        rt.outcome, rt.error, rt.last_sync = result.outcome, result.error, time.time()
        rt.target_revision = target_revision
        rt.lock_holder = result.error if result.outcome == "locked" else None
        if result.verdict and result.outcome not in NO_VERDICT:
            rt.verdict = result.verdict_of or result.outcome
        if result.transient:
            rt.failures += 1
            rt.retry_at = time.monotonic() + backoff_delay(
                rt.failures, d.conf.backoff.initial, d.conf.backoff.max
            )
        else:
            rt.failures, rt.retry_at = 0, None
        if result.outcome in ("applied", "up_to_date", "skipped", "invalid", "refused"):
            rt.heal = False
        if result.outcome == "applied":
            rt.drift = []
    m = d.metrics
    m.sync_results.labels(rt.name, result.outcome).inc()
    m.sync_duration.labels(rt.name).observe(duration)
    m.instance_ready.labels(rt.name).set(1 if rt.verdict is not None else 0)
    if result.outcome == "applied":
        m.drift.labels(rt.name).set(0)
        applied_at = d.store.get(rt.name).applied_at
        if applied_at is not None:
            m.last_applied.labels(rt.name).set(applied_at.timestamp())
    log_sync(d, rt, result, duration, reason, repeated)
    if result.outcome == "applied":
        prune(d, rt)


def _attempt(
    d: Daemon, rt: InstanceRuntime, reason: str, was_primed: bool, had: frozenset[str]
) -> SyncResult:
    assert d.engine is not None
    with heap.paused():
        result = attempt(d, rt, reason)
        if d.engine.primed(rt.name):
            # The engine keeps what it built: spare it later collections. After a full apply
            # or a prime it keeps little, and the garbage cycles the sync left go first; a
            # tenant it loaded (even for a commit then refused) is kept whole: frozen only.
            if not was_primed or (result.outcome == "applied" and not result.incremental):
                heap.settle()
            elif d.engine.resident_tenants(rt.name) - had:
                heap.settle(collect=False)
    return result


def prune(d: Daemon, rt: InstanceRuntime) -> None:
    """Remove the target's old revisions, after the apply is reported (``prune_later``)."""
    assert d.engine is not None
    try:
        d.engine.target(rt.name).prune()
    except (HeadwaterError, OSError) as exc:  # the next apply's prune tries again
        d.event(WARNING, "prune.failed", f"{rt.name}: pruning old revisions failed: {exc}", instance=rt.name)


def log_sync(
    d: Daemon, rt: InstanceRuntime, result: SyncResult, duration: float, reason: str, repeated: bool
) -> None:
    c = result.counts
    rev = (result.revision or "")[:12] or "-"
    text = f"{rt.name}: {result.outcome.replace('_', '-')} {rev}"
    if c:
        text += f" (+{c.get('create', 0)} ~{c.get('update', 0)} -{c.get('delete', 0)}"
        text += f", {c['drift']} drift restored)" if c.get("drift") else ")"
    if result.incremental:
        text += " incrementally"
    if result.loaded:
        text += f", loading tenant {', '.join(result.loaded)}"
    text += f" in {duration:.2f}s [{reason}]"
    if result.error:
        text += f": {result.error}"
    if result.outcome == "applied":
        level = INFO
    elif result.outcome in ("up_to_date", "skipped") or repeated:
        level = DEBUG
    else:
        level = WARNING
    counts: dict[str, Any] = {}
    if c:
        counts = {k: c.get(k, 0) for k in ("create", "update", "delete", "drift", "unchanged")}
    d.event(
        level,
        "sync",
        text,
        instance=rt.name,
        revision=result.revision,
        result=result.outcome,
        duration=round(duration, 4),
        trigger=reason,
        error=result.error,
        incremental=result.incremental,
        loaded=list(result.loaded),
        **counts,
    )


def attempt(d: Daemon, rt: InstanceRuntime, reason: str) -> SyncResult:
    assert d.engine is not None
    if rt.branch is None:
        return SyncResult(
            "refused",
            None,
            rt.branch_error or "no branch is known for this instance",
            verdict=d.remote.config_revision is not None,
        )
    head = d.remote.mirror.get(rt.branch)
    if d.remote.heads is not None and rt.branch not in d.remote.heads:
        kept = f"; keeping {head[:12]}" if head else ""
        return SyncResult(
            "no_branch",
            head,
            f"branch {rt.branch} does not exist on the remote{kept}",
            verdict=head is not None,
        )
    if head is None:
        return SyncResult(
            "no_branch", None, f"branch {rt.branch} has not been fetched yet", verdict=False
        )
    rt.head = head
    name = rt.name
    state = d.store.get(name)
    candidate = head
    if state.pending_revision is None:
        current = d.engine.target(name).current_revision()
        if head == state.applied_revision == current and not rt.heal:
            prime(d, rt)
            return SyncResult("up_to_date", head)
        if head == state.attempted_revision and permanent_failure(state):
            if not (rt.heal and state.applied_revision):
                return SyncResult("skipped", head, first_error(state.errors), verdict_of=failure_verdict(state))
            candidate = state.applied_revision
        rollback = rolled_back_from(d.store.history(name, 200), head)
        if rollback is not None and not rt.heal:
            return SyncResult("skipped", head, _rolled_back(rollback, rt))
        if rollback is not None:
            candidate = rollback.revision
    if candidate == head and not rt.heal:
        prime(d, rt)
    return apply(d, rt, candidate, reason)


def prime(d: Daemon, rt: InstanceRuntime) -> None:
    """Make the next sync of an instance incremental (see ``Engine.prime``); on a failure
    the next sync is simply a full one."""
    assert d.engine is not None
    if d.engine.primed(rt.name):
        return
    started = time.monotonic()
    try:
        primed = d.engine.prime(rt.name)
    except (HeadwaterError, OSError) as exc:
        d.event(DEBUG, "prime.skipped", f"{rt.name}: next sync is a full one ({exc})", instance=rt.name)
        return
    if primed:
        duration = time.monotonic() - started
        d.event(
            INFO, "primed", f"{rt.name}: ready for incremental syncs ({duration:.2f}s)",
            instance=rt.name, duration=round(duration, 3),
        )


def _rolled_back(rollback: HistoryEntry, rt: InstanceRuntime) -> str:
    return (
        f"rolled back to {rollback.revision[:12]} by {rollback.trigger}; "
        f"waiting for a new commit on {rt.branch}"
    )


def apply(d: Daemon, rt: InstanceRuntime, revision: str, reason: str) -> SyncResult:
    assert d.engine is not None
    engine, name = d.engine, rt.name
    trigger = f"daemon[{os.getpid()}]:{reason}"
    cancelled: SyncResult | None = None

    def confirm(plan: Plan) -> bool:
        # Under the instance's lock, after reconciling: decide again, for another process
        # (a second daemon, `headwater rollback`) may have acted since ``attempt`` looked.
        nonlocal cancelled
        if (
            plan.is_empty
            and engine.target(name).current_revision() == plan.revision
            and d.store.get(name).applied_revision == plan.revision
        ):
            cancelled = SyncResult("up_to_date", plan.revision)
            return False
        rollback = rolled_back_from(d.store.history(name, 200), plan.revision)
        if rollback is not None:
            cancelled = SyncResult("skipped", plan.revision, _rolled_back(rollback, rt))
            return False
        s: dict[str, Any] = dict(plan.summary())
        d.event(
            INFO,
            "apply.begin",
            f"{name}: applying {plan.revision[:12]} "
            f"(+{s['create']} ~{s['update']} -{s['delete']}) [{reason}]",
            instance=name,
            revision=plan.revision,
            trigger=trigger,
            **s,
        )
        return True

    try:
        result = engine.apply(name, revision, trigger=trigger, confirm=confirm, by_tenant=True)
    except ValidationFailed as exc:
        errors = [diag.to_json() for diag in exc.diagnostics if diag.severity == "error"]
        return SyncResult(
            "invalid",
            exc.revision or revision,
            f"{len(errors)} validation error(s): {first_error(errors)}",
        )
    except PlanRefused as exc:
        if cancelled is not None:
            return cancelled
        return SyncResult("refused", revision, exc.message)
    except StateError as exc:
        if " is locked by " in exc.message:
            return SyncResult("locked", revision, exc.message, transient=True)
        return SyncResult("failed", revision, exc.message, transient=True)
    except GitError as exc:
        try:
            upstream.repair_mirror(d, exc, upstream.tracked_branches(d))
        except HeadwaterError as again:
            return SyncResult("failed", revision, f"{exc.message}; {again.message}", transient=True)
        return SyncResult("failed", revision, exc.message, transient=True)
    except TargetError as exc:
        return SyncResult("failed", revision, exc.message, transient=True)
    except HeadwaterError as exc:  # e.g. the instance is not in headwater.yaml at that commit
        d.store.record_failure(
            name,
            revision,
            [
                {
                    "path": "headwater.yaml",
                    "line": None,
                    "column": None,
                    "code": "sync.refused",
                    "severity": "error",
                    "message": exc.message,
                    "hint": exc.hint,
                    "related": [],
                }
            ],
        )
        return SyncResult("refused", revision, exc.message)
    except OSError as exc:
        return SyncResult("failed", revision, f"{type(exc).__name__}: {exc}", transient=True)
    missing = sorted({f"{k.tenant}/{k.namespace}:{k.name}" for k in result.desired.missing_secrets})
    if missing:
        d.event(
            WARNING,
            "secrets.missing",
            f"{name}: {len(missing)} declared secret(s) have no value "
            f"in the secret provider and were not written: {', '.join(missing[:10])}",
            instance=name,
            secrets=missing,
        )
    return SyncResult(
        "applied", result.plan.revision, counts=result.plan.summary(), incremental=result.incremental,
        loaded=result.loaded,
    )


# -- drift ----------------------------------------------------------------------------------


def check_drift(d: Daemon) -> None:
    if d.engine is None:
        return
    for rt in list(d.instances.values()):
        state = d.store.get(rt.name)
        if state.applied_revision is None or state.pending_revision is not None:
            continue
        try:
            drifted = [str(k) for k in d.engine.drift(rt.name)]
        except (HeadwaterError, OSError) as exc:
            d.event(
                WARNING,
                "drift.error",
                f"{rt.name}: cannot check drift: {exc}",
                instance=rt.name,
            )
            continue
        with d.mu:
            changed = drifted != rt.drift
            rt.drift, rt.drift_checked = drifted, time.time()
        d.metrics.drift.labels(rt.name).set(len(drifted))
        if drifted:
            d.engine.forget(rt.name)  # the next apply is a full one, which restores the drift
            heal = rt.self_heal
            d.event(
                WARNING if changed else DEBUG,
                "drift",
                f"{rt.name}: {len(drifted)} resource(s) changed outside Git"
                + ("; restoring (selfHeal)" if heal else ""),
                instance=rt.name,
                count=len(drifted),
                resources=drifted[:20],
                self_heal=heal,
            )
            if heal:
                rt.heal = True
                d.trigger([rt.name], "drift")
