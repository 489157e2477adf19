"""Helpers for the daemon tests (no tests here): real remotes, a real `git daemon`, a real
git smart-HTTP server, and the daemon itself as a subprocess on 127.0.0.1.

Nothing is mocked. Waiting is always a bounded poll of a condition (``wait_until``) that
fails with what it waited for and the daemon's last log lines.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from headwater.daemon.webhooks import sign
from tests.gitutil import commit, git, sample_repo

T = TypeVar("T")
WEBHOOK_SECRET = "webhook-secret-for-tests"
WEBHOOK_SECRET_ENV = "HW_TEST_WEBHOOK_SECRET"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T],
    what: str,
    timeout: float = 60.0,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail clearly after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, http.client.HTTPException, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}{extra}"
            )
        time.sleep(0.05)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flow(name: str, namespace: str = "company", message: str = "hi") -> str:
    return (
        f"id: {name}\nnamespace: {namespace}\ntasks:\n  - id: log\n"
        f"    type: io.kestra.plugin.core.log.Log\n    message: {json.dumps(message)}\n"
    )


FLOW_DIR = "tenants/acme/company/flows"
INVALID_FLOW = {f"{FLOW_DIR}/broken.yaml": "id: not-the-file-name\nnamespace: company\ntasks: []\n"}


class Remote:
    """A bare remote repository holding the sample on `main` and `dev`, and a clone to push from."""

    def __init__(self, root: Path) -> None:
        self.work = sample_repo(root / "work")
        self.bare = root / "remote.git"
        git(root, "clone", "-q", "--bare", str(self.work), str(self.bare))
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.counter = 0

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def head(self, branch: str) -> str:
        return git(self.bare, "rev-parse", f"refs/heads/{branch}")

    def commit(
        self,
        branch: str,
        files: Mapping[str, str | bytes | None] | None = None,
        force: bool = False,
    ) -> str:
        """Commit on ``branch`` (a new flow unless ``files``) and push it; returns the commit."""
        git(self.work, "checkout", "-q", branch)
        if files is None:
            self.counter += 1
            files = {f"{FLOW_DIR}/added-{self.counter}.yaml": flow(f"added-{self.counter}")}
        sha = commit(self.work, f"change {self.counter} on {branch}", files)
        git(self.work, "push", "-q", *(["-f"] if force else []), "origin", f"{branch}:{branch}")
        return sha


class GitDaemon:
    """`git daemon` serving a folder on 127.0.0.1."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> GitDaemon:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--base-path={self.base}",
                "--export-all",
                f"--port={self.port}",
                "--listen=127.0.0.1",
                str(self.base),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(accepting, f"git daemon on port {self.port}", timeout=15)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            self.proc = None

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GitHttpServer:
    """Git's smart HTTP protocol (`git http-backend`) on 127.0.0.1, behind Basic auth whose
    password must be ``token``. Counts the requests it refused and accepted."""

    def __init__(self, root: Path, token: str) -> None:
        self.root, self.token = root, token
        self.refused = 0
        self.accepted = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                password = ""
                if auth.startswith("Basic "):
                    password = base64.b64decode(auth[6:]).decode().partition(":")[2]
                if password != outer.token:
                    outer.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.accepted += 1
                path, _, query = self.path.partition("?")
                env = {
                    **os.environ,
                    "GIT_PROJECT_ROOT": str(outer.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "REMOTE_USER": "user",
                    "REMOTE_ADDR": "127.0.0.1",
                    "CONTENT_LENGTH": str(len(body)),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                proc = subprocess.run(
                    ["git", "http-backend"], input=body, capture_output=True, env=env, check=False
                )
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self) -> GitHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


def base_config(root: Path, url: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "state_dir": str(root / "state"),
        "repository": {"url": url, "watch": False},
        "instances": {
            "dev": {"target": {"path": str(root / "instances" / "dev")}},
            "prod": {"target": {"path": str(root / "instances" / "prod")}},
        },
        "secrets": {"type": "none"},
        "poll": {"interval": "1h"},
        "webhook": {
            "listen": "127.0.0.1:0",
            "secret_env": WEBHOOK_SECRET_ENV,
            "max_body_bytes": 4096,
        },
        "drift_interval": "1h",
        "min_interval": "0.05s",
        "backoff": {"initial": "0.2s", "max": "1s"},
    }
    return deep_merge(conf, extra)


class Daemon:
    """`python -m headwater.cli.main daemon` with JSON logs, as a subprocess."""

    def __init__(
        self,
        root: Path,
        config: dict[str, Any],
        name: str = "daemon",
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = root / f"{name}.log"
        self.env = {**os.environ, WEBHOOK_SECRET_ENV: WEBHOOK_SECRET, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- process -------------------------------------------------------------------------

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headwater.cli.main",
                    "-v",
                    "daemon",
                    "--config",
                    str(self.config_path),
                    "--log-format",
                    "json",
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        started = wait_until(lambda: self._started(), "the daemon to listen", diagnose=self.tail)
        self.port = int(started["port"])
        return self

    def _started(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.tail()}")
        starts = [e for e in self.events() if e.get("event") == "daemon.start"]
        return starts[-1] if starts else None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    # -- logs ------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    out.append(value)
        return out

    def tail(self, lines: int = 30) -> str:
        return "daemon log (last lines):\n" + "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(
                method, path, body=body if method == "POST" else None, headers=dict(headers or {})
            )
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        status, body, _ = self.request("GET", path, headers=headers)
        return status, body

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def instance(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.status()["instances"][name]
        return result

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, body = self.get("/metrics")
        assert code == 200
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= set(ls))

    def webhook(
        self, body: bytes, headers: Mapping[str, str], path: str = "/webhook"
    ) -> tuple[int, bytes]:
        status, data, _ = self.request("POST", path, body, headers)
        return status, data

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, check: Callable[[], T], what: str, timeout: float = 60.0) -> T:
        return wait_until(check, what, timeout, diagnose=self.tail)

    def wait_ready(self) -> None:
        self.wait(lambda: self.get("/readyz")[0] == 200, "/readyz to answer 200")

    def wait_applied(self, instance: str, sha: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait(
            lambda: (
                lambda s: (
                    s if s["applied_revision"] == sha and s["target_revision"] == sha else None
                )
            )(self.instance(instance)),
            f"{instance} to apply {sha[:12]}",
            timeout,
        )


def push_payload(
    kind: str, branch: str, secret: str = WEBHOOK_SECRET
) -> tuple[bytes, dict[str, str]]:
    """A push webhook of ``kind`` for ``branch``, signed as that forge signs."""
    body = json.dumps({"ref": f"refs/heads/{branch}", "after": "0" * 40}).encode()
    digest = sign(secret.encode(), body)
    headers = {"Content-Type": "application/json"}
    if kind == "github":
        headers |= {"X-GitHub-Event": "push", "X-Hub-Signature-256": digest}
    elif kind == "gitlab":
        headers |= {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret}
    elif kind == "gitea":
        headers |= {"X-Gitea-Event": "push", "X-Gitea-Signature": digest[len("sha256=") :]}
    elif kind == "forgejo":
        headers |= {"X-Forgejo-Event": "push", "X-Forgejo-Signature": digest[len("sha256=") :]}
    else:
        headers |= {"X-Headwater-Signature": digest}
    return body, headers


def target_files(instance_dir: Path) -> set[str]:
    # Namespace folders are symlinks to shared spaces (targets/local.py): follow them.
    current = instance_dir / "current"
    return {
        os.path.relpath(os.path.join(folder, name), current)
        for folder, _dirs, files in os.walk(current, followlinks=True)
        for name in files
    }


def debris(instance_dir: Path) -> list[str]:
    return sorted(str(p) for p in instance_dir.rglob("*") if ".tmp-" in p.name)


@contextlib.contextmanager
def cmdline_watch(needle: str) -> Iterator[list[str]]:
    """Record every process whose argument list contains ``needle`` while the block runs."""
    seen: list[str] = []
    done = threading.Event()
    raw = needle.encode()

    def scan() -> None:
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    data = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if raw in data:
                    seen.append(data.replace(b"\0", b" ").decode("utf-8", "replace"))
            done.wait(0.005)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
