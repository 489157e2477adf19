"""The daemon's Prometheus metrics, in a registry of their own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Every outcome of one sync of one instance.
OUTCOMES = (
    "applied",  # the branch head (or a drift restore) was applied
    "up_to_date",  # the instance already holds the head
    "invalid",  # the head failed validation; kept the last good revision
    "refused",  # the plan was refused (mass delete, instance missing from headwater.yaml)
    "skipped",  # the head is a commit already refused; not retried until a new commit
    "failed",  # a transient failure (target, state store, git); retried with backoff
    "locked",  # another process holds the instance's lock; retried
    "no_branch",  # the tracked branch is missing on the remote or not fetched yet
)


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sync_duration = Histogram(
            "headwater_sync_duration_seconds",
            "Duration of one sync of one instance.",
            ["instance"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.sync_results = Counter(
            "headwater_sync_results",
            "Syncs by instance and outcome.",
            ["instance", "outcome"],
            registry=r,
        )
        self.last_applied = Gauge(
            "headwater_last_applied_timestamp_seconds",
            "Unix time of the last successful apply to the instance.",
            ["instance"],
            registry=r,
        )
        self.drift = Gauge(
            "headwater_drift_resources",
            "Managed resources changed outside Git at the last check.",
            ["instance"],
            registry=r,
        )
        self.pending = Gauge(
            "headwater_pending_triggers",
            "Triggers waiting for the next sync (coalesced; '*' means every instance).",
            ["instance"],
            registry=r,
        )
        self.triggers = Counter(
            "headwater_triggers",
            "Triggers received, by source.",
            ["source"],
            registry=r,
        )
        self.webhooks = Counter(
            "headwater_webhooks",
            "Webhook requests by forge and result.",
            ["forge", "result"],
            registry=r,
        )
        self.remote_up = Gauge(
            "headwater_remote_up",
            "1 when the last contact with the remote succeeded.",
            registry=r,
        )
        self.fetches = Counter(
            "headwater_fetches",
            "Contacts with the remote, by result.",
            ["result"],
            registry=r,
        )
        self.reclones = Counter(
            "headwater_mirror_reclones",
            "Times the mirror was found corrupt and cloned again.",
            registry=r,
        )
        self.instance_ready = Gauge(
            "headwater_instance_ready",
            "1 once the instance has a verdict.",
            ["instance"],
            registry=r,
        )

    def set_pending(self, counts: dict[str, int]) -> None:
        for name, count in counts.items():
            self.pending.labels(name).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
