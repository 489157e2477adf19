"""The daemon's HTTP server: health, readiness, metrics, status and webhooks (stdlib only).

The server knows HTTP (routes, methods, body limits); what the endpoints answer comes from
an ``App``. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from headwater.daemon.logs import LOGGER
from headwater.errors import ConfigError

WEBHOOK_PREFIX = "/webhook"
_DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read and dropped


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    body = (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    return Response(status, body, "application/json", headers or {})


class App(Protocol):
    max_body_bytes: int

    def healthz(self) -> Response: ...
    def readyz(self) -> Response: ...
    def metrics(self) -> Response: ...
    def status(self, authorization: str | None) -> Response: ...
    def webhook(self, path: str, headers: dict[str, str], body: bytes) -> Response: ...
    def webhook_refused(
        self, path: str, headers: dict[str, str], status: int, reason: str
    ) -> None: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every address)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"invalid listen address {listen!r}", hint="use host:port, e.g. 127.0.0.1:9000"
        )
    host = host.strip("[]")
    return host, int(port)


class _Handler(BaseHTTPRequestHandler):
    app: App
    protocol_version = "HTTP/1.1"
    server_version = "headwater"
    sys_version = ""
    timeout = 15  # a slow or idle client does not hold a thread for long

    def version_string(self) -> str:
        return "headwater"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged one by one; webhooks log their own events

    def _send(self, response: Response, head_only: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(response.body)

    def _route(self, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            "/healthz": self.app.healthz,
            "/readyz": self.app.readyz,
            "/metrics": self.app.metrics,
        }
        if path in routes:
            self._send(routes[path](), head_only)
        elif path == "/status":
            self._send(self.app.status(self.headers.get("Authorization")), head_only)
        elif _is_webhook(path):
            self._send(
                json_response(405, {"error": "webhooks are POST requests"}, {"Allow": "POST"})
            )
        else:
            self._send(json_response(404, {"error": f"no such endpoint: {path}"}))

    def _guarded(self, serve: Callable[[], None]) -> None:
        """A bug answers 500 and is logged; it never reaches stderr as a bare traceback."""
        try:
            serve()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            logging.getLogger(LOGGER).error(
                f"HTTP {self.command} {self.path} failed: {exc!r}",
                exc_info=True,
                extra={"event": "internal.error", "fields": {"path": self.path}},
            )
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(json_response(500, {"error": "internal error"}))

    def do_GET(self) -> None:
        self._guarded(lambda: self._route(head_only=False))

    def do_HEAD(self) -> None:
        self._guarded(lambda: self._route(head_only=True))

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if not _is_webhook(path):
            self._discard_body()
            self._send(json_response(404, {"error": f"no such endpoint: {path}"}))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        refusal = self._length_problem(headers)
        if refusal is not None:
            status, reason = refusal
            self.app.webhook_refused(path, headers, status, reason)
            self._send(json_response(status, {"error": reason}))
            return
        length = int(headers.get("content-length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        self._send(self.app.webhook(path, headers, body))

    def handle_expect_100(self) -> bool:
        headers = {k.lower(): v for k, v in self.headers.items()}
        refusal = self._length_problem(headers)
        if refusal is not None:
            self.close_connection = True  # the client has not sent the body: nothing to drain
            self.app.webhook_refused(self.path, headers, *refusal)
            self._send(json_response(refusal[0], {"error": refusal[1]}))
            return False
        return super().handle_expect_100()

    def _length_problem(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            return 411, "a Content-Length is required"
        raw = headers.get("content-length", "0").strip() or "0"
        if not raw.isdigit():
            self.close_connection = True
            return 400, "invalid Content-Length"
        length, limit = int(raw), self.app.max_body_bytes
        if length > limit:
            if (
                length <= limit * _DRAIN_FACTOR
                and self.headers.get("Expect", "").lower() != "100-continue"
            ):
                self._drain(length)
            self.close_connection = True
            return 413, f"the body exceeds {limit} bytes"
        return None

    def _drain(self, length: int) -> None:
        remaining = length
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(65536, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _discard_body(self) -> None:
        raw = self.headers.get("Content-Length", "0").strip()
        if raw.isdigit() and int(raw) <= 65536:
            self._drain(int(raw))
        else:
            self.close_connection = True


def _is_webhook(path: str) -> bool:
    return path == WEBHOOK_PREFIX or path.startswith(WEBHOOK_PREFIX + "/")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """The HTTP server, serving in a background thread until ``stop``."""

    def __init__(self, listen: str, app: App) -> None:
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"app": app})
        cls = _Server6 if ":" in host else _Server
        try:
            self._httpd = cls((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {listen}: {exc.strerror or exc}",
                hint="choose a free port with --listen (webhook.listen)",
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        addr = self._httpd.server_address
        return str(addr[0]), int(addr[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="headwater-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
