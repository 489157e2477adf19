"""What the daemon's HTTP endpoints answer (the ``App`` the server calls, in its threads).

Nothing here touches git, a target or the engine: webhooks only raise trigger flags, and
/status reads the state store and a copy of the daemon's runtime taken under its lock.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import replace
from logging import DEBUG, INFO, WARNING
from typing import TYPE_CHECKING, Any

from headwater import __version__
from headwater.daemon import webhooks
from headwater.daemon.runtime import instance_body, iso, remote_body
from headwater.daemon.server import Response, json_response
from headwater.engine import status_of

if TYPE_CHECKING:
    from headwater.daemon.loop import Daemon


def _forge(headers: dict[str, str]) -> str:
    for header, name in (
        ("x-github-event", "github"),
        ("x-gitlab-event", "gitlab"),
        ("x-forgejo-event", "forgejo"),
        ("x-gitea-event", "gitea"),
        ("x-gogs-event", "gogs"),
    ):
        if header in headers:
            return name
    return "generic"


class DaemonHttp:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.max_body_bytes = daemon.conf.webhook.max_body_bytes

    # -- probes ----------------------------------------------------------------------------

    def healthz(self) -> Response:
        return json_response(
            200, {"status": "ok", "uptime_seconds": round(time.time() - self.d.started, 3)}
        )

    def waiting(self) -> list[str]:
        """Instances without a first verdict (all of them while none is known)."""
        with self.d.mu:
            if not self.d.instances:
                return ["*"]
            return sorted(rt.name for rt in self.d.instances.values() if rt.verdict is None)

    def readyz(self) -> Response:
        waiting = self.waiting()
        if waiting:
            return json_response(503, {"ready": False, "waiting_for": waiting})
        return json_response(200, {"ready": True})

    def metrics(self) -> Response:
        return Response(200, self.d.metrics.render(), self.d.metrics.CONTENT_TYPE)

    # -- status ----------------------------------------------------------------------------

    def status(self, authorization: str | None) -> Response:
        token = self.d.status_token
        if token is not None:
            given = (authorization or "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, b"Bearer " + token.encode("utf-8")):
                return json_response(
                    401,
                    {"error": "a bearer token is required"},
                    {"WWW-Authenticate": 'Bearer realm="headwater"'},
                )
        return json_response(200, self.status_body())

    def status_body(self) -> dict[str, Any]:
        d = self.d
        with d.mu:
            runtimes = [replace(rt, drift=list(rt.drift)) for rt in d.instances.values()]
            # The store's record, read with the runtime fields: as a sync ends both change
            # together (under d.mu); while one runs, what the store held when it began.
            recorded = {
                rt.name: rt.recorded if rt.recorded is not None else status_of(d.store, None, rt.name)
                for rt in runtimes
            }
            remote = replace(
                d.remote,
                mirror=dict(d.remote.mirror),
                heads=None if d.remote.heads is None else dict(d.remote.heads),
            )
        instances: dict[str, Any] = {}
        for rt in sorted(runtimes, key=lambda r: r.name):
            instances[rt.name] = instance_body(rt, recorded[rt.name], remote)
        branches = {rt.branch for rt in runtimes if rt.branch}
        body = {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": iso(d.started),
                "ready": not self.waiting(),
                "pending_triggers": d.board.counts(),
                "watching": d.watcher is not None,
            },
            "repository": remote_body(
                remote, d.remote_spec.display, d.remote_spec.scheme, branches
            ),
            "instances": instances,
        }
        redacted: dict[str, Any] = self._redacted(body)
        return redacted

    def _redacted(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.d.secrets:
                value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self._redacted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redacted(v) for v in value]
        return value

    # -- webhooks --------------------------------------------------------------------------

    def webhook_refused(self, path: str, headers: dict[str, str], status: int, reason: str) -> None:
        forge = _forge(headers)
        result = {413: "too_large", 411: "no_length"}.get(status, "bad_request")
        self.d.metrics.webhooks.labels(forge, result).inc()
        self.d.event(
            WARNING,
            "webhook.refused",
            f"webhook refused ({status}): {reason}",
            forge=forge,
            status=status,
            reason=reason,
            path=path,
        )

    def webhook(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        d = self.d
        forge = _forge(headers)
        if d.webhook_secret is None:
            d.metrics.webhooks.labels(forge, "disabled").inc()
            return json_response(403, {"error": "webhooks are disabled: set webhook.secret_env"})
        try:
            header = webhooks.verify(headers, body, d.webhook_secret.encode("utf-8"))
            event = webhooks.parse(headers, body)
        except webhooks.Rejected as exc:
            result = "unauthorized" if exc.status == 401 else "bad_request"
            d.metrics.webhooks.labels(forge, result).inc()
            d.event(
                WARNING,
                "webhook.refused",
                f"{forge} webhook refused ({exc.status}): {exc.reason}",
                forge=forge,
                status=exc.status,
                reason=exc.reason,
                path=path,
            )
            headers_out = (
                {"WWW-Authenticate": 'HMAC realm="headwater"'} if exc.status == 401 else {}
            )
            return json_response(exc.status, {"error": exc.reason}, headers_out)
        if event.ignored is not None:
            d.metrics.webhooks.labels(event.forge, "ignored").inc()
            d.event(
                DEBUG,
                "webhook.ignored",
                f"{event.forge} webhook ignored: {event.ignored}",
                forge=event.forge,
                reason=event.ignored,
            )
            return json_response(200, {"ignored": event.ignored})
        names = d.instances_for(event.branch)
        if names == []:
            reason = f"branch {event.branch} is not tracked"
            d.metrics.webhooks.labels(event.forge, "ignored").inc()
            d.event(
                DEBUG,
                "webhook.ignored",
                f"{event.forge} webhook ignored: {reason}",
                forge=event.forge,
                branch=event.branch,
                reason=reason,
            )
            return json_response(200, {"ignored": reason})
        d.metrics.webhooks.labels(event.forge, "accepted").inc()
        pending = d.board.counts()
        coalesced = ("*" in pending) or (names is not None and all(n in pending for n in names))
        d.trigger(names, "webhook")
        d.event(
            DEBUG if coalesced else INFO,
            "webhook",
            f"{event.forge} push to "
            f"{event.branch or 'any branch'}: sync {', '.join(names) if names else 'every instance'}",
            forge=event.forge,
            branch=event.branch,
            instances=names,
            verified_by=header,
        )
        return json_response(202, {"triggered": names if names is not None else ["*"]})
