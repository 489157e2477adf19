"""What the daemon knows between syncs: per instance and about the remote, plus the rules
that read the state store (is a failed commit to be retried? was the instance rolled back?)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from headwater import yamlio
from headwater.daemon.mirror import check_branch
from headwater.errors import ConfigError
from headwater.state import HistoryEntry, InstanceState

# Error codes of attempts that failed for a passing reason: retried (with backoff).
TRANSIENT_CODES = frozenset({"apply.failed", "interrupted"})
# Codes of a plan refused (``refused``); a permanent failure with none of them is ``invalid``.
REFUSED_CODES = frozenset({"prune.refused", "sync.refused"})
# Outcomes after which the instance has no verdict yet.
NO_VERDICT = frozenset({"locked"})


@dataclass
class InstanceRuntime:
    name: str
    branch: str | None = None
    branch_fixed: bool = False  # the branch comes from daemon.yaml, not headwater.yaml
    branch_error: str | None = None
    self_heal: bool = False
    self_heal_setting: bool | None = None
    verdict: str | None = None  # the last outcome that counts as a verdict
    outcome: str | None = None  # the last outcome
    error: str | None = None
    head: str | None = None  # the mirror's head of the branch at the last sync
    target_revision: str | None = None
    last_sync: float | None = None  # unix time
    failures: int = 0  # consecutive transient failures
    retry_at: float | None = None  # monotonic
    drift: list[str] = field(default_factory=list)
    drift_checked: float | None = None
    heal: bool = False  # a self-heal apply is due
    lock_holder: str | None = None
    # While a sync runs: the state store's record of the instance (``engine.status_of``) as it
    # was when the sync began. /status shows it beside the fields above, which change when the
    # sync ends, so it never shows a sync half recorded (its attempt, not yet its verdict).
    recorded: dict[str, Any] | None = None


@dataclass
class RemoteRuntime:
    condition: str = "unknown"  # ok | unreachable | corrupt | error | unknown
    error: str | None = None
    default_branch: str | None = None
    config_branch: str | None = None
    heads: dict[str, str] | None = None  # as advertised at the last successful contact
    mirror: dict[str, str] = field(default_factory=dict)
    config_revision: str | None = None  # the commit whose headwater.yaml mapped the branches
    config_error: str | None = None
    last_contact: float | None = None
    last_success: float | None = None
    failures: int = 0
    retry_at: float | None = None  # monotonic
    reclones: int = 0


@dataclass(frozen=True)
class SyncResult:
    outcome: str
    revision: str | None
    error: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    verdict: bool = True
    # The verdict it stands for, when not its outcome: a head skipped because it failed for
    # good keeps that failure's verdict (``invalid``, ``refused``), poll after poll.
    verdict_of: str | None = None
    transient: bool = False
    incremental: bool = False
    loaded: tuple[str, ...] = ()  # tenants loaded for it (the first change to reach them)


def permanent_failure(state: InstanceState) -> bool:
    """The attempted revision failed for a reason a retry cannot fix (invalid, refused)."""
    if state.outcome != "failed" or not state.errors:
        return False
    return not {str(e.get("code")) for e in state.errors} & TRANSIENT_CODES


def failure_verdict(state: InstanceState) -> str:
    """The verdict of a permanent failure (``permanent_failure``): refused or invalid."""
    return "refused" if {str(e.get("code")) for e in state.errors} & REFUSED_CODES else "invalid"


def first_error(errors: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str | None:
    if not errors:
        return None
    err = errors[0]
    where = str(err.get("path") or "")
    if err.get("line"):
        where += f":{err['line']}"
    text = f"[{err.get('code')}] {err.get('message')}"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {text}{more}" if where else text + more


def rolled_back_from(history: list[HistoryEntry], head: str) -> HistoryEntry | None:
    """The rollback entry when the instance was rolled back away from ``head``.

    A break-glass ``headwater rollback`` must stick until the branch moves on: the daemon does
    not re-apply a head that was applied before the latest rollback.
    """
    if not history or history[0].action != "rollback" or history[0].revision == head:
        return None
    if any(e.revision == head for e in history[1:]):
        return history[0]
    return None


def instance_map(data: bytes) -> dict[str, tuple[str, bool]]:
    """``instances`` of a headwater.yaml: name → (branch, selfHeal); ConfigError if unreadable."""
    try:
        doc = yamlio.load(data, "headwater.yaml")
    except yamlio.YamlError as exc:
        raise ConfigError(f"headwater.yaml: {exc.diagnostic.message}") from None
    value = doc.value if isinstance(doc.value, dict) else {}
    raw = value.get("instances")
    result: dict[str, tuple[str, bool]] = {}
    if not isinstance(raw, dict):
        return result
    for name, spec in raw.items():
        if isinstance(spec, dict) and isinstance(spec.get("branch"), str):
            try:
                branch = check_branch(spec["branch"])
            except ConfigError:
                continue
            result[str(name)] = (branch, spec.get("selfHeal") is True)
    return result


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def retry_in(at: float | None) -> float | None:
    return None if at is None else round(max(0.0, at - time.monotonic()), 3)


def instance_body(
    rt: InstanceRuntime, base: dict[str, Any], remote: RemoteRuntime
) -> dict[str, Any]:
    """One instance of /status: the store's view (``base``) plus what the daemon knows."""
    remote_head = None
    if remote.heads is not None and rt.branch is not None:
        remote_head = remote.heads.get(rt.branch)
    return {
        **base,
        "branch": rt.branch,
        "head_revision": remote.mirror.get(rt.branch) if rt.branch else None,
        "remote_revision": remote_head,
        "target_revision": rt.target_revision,
        "verdict": rt.verdict,
        "last_result": rt.outcome,
        "error": rt.error or rt.branch_error,
        "last_sync_at": iso(rt.last_sync),
        "retry_in_seconds": retry_in(rt.retry_at),
        "consecutive_failures": rt.failures,
        "drift": list(rt.drift),
        "drift_checked_at": iso(rt.drift_checked),
        "self_heal": rt.self_heal,
        "locked_by": rt.lock_holder,
        "in_sync": bool(
            base.get("applied_revision")
            and rt.target_revision == base.get("applied_revision")
            and not rt.drift
            and rt.head == base.get("applied_revision")
        ),
    }


def remote_body(
    remote: RemoteRuntime, display: str, scheme: str, branches: set[str]
) -> dict[str, Any]:
    tracked = {}
    for branch in sorted(branches):
        on_remote = None if remote.heads is None else remote.heads.get(branch)
        tracked[branch] = {
            "remote": on_remote,
            "mirror": remote.mirror.get(branch),
            "exists_on_remote": None if remote.heads is None else on_remote is not None,
        }
    return {
        "url": display,
        "transport": scheme,
        "condition": remote.condition,
        "error": remote.error,
        "default_branch": remote.default_branch,
        "config_branch": remote.config_branch,
        "config_revision": remote.config_revision,
        "config_error": remote.config_error,
        "last_contact_at": iso(remote.last_contact),
        "last_success_at": iso(remote.last_success),
        "retry_in_seconds": retry_in(remote.retry_at),
        "consecutive_failures": remote.failures,
        "mirror_reclones": remote.reclones,
        "branches": tracked,
    }
