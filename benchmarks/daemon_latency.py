"""The sync daemon: push-to-applied latency (webhook and polling) and CPU while idle.

    .venv/bin/python benchmarks/daemon_latency.py benchmarks/.work/S-seed42-v1/repo.git
    .venv/bin/python benchmarks/daemon_latency.py REPO --samples 20 --poll-interval 2s --idle 60

REPO is a repository with `dev` and `main` branches and a headwater.yaml (e.g. one written
by benchmarks/generate.py); it is cloned, never changed. The daemon runs as a real process
(`python -m headwater.cli.main daemon`) syncing the `dev` instance from a bare clone over
file://, with its HTTP server on 127.0.0.1. Three phases, one state directory:

1. webhooks (polling off): each sample commits a one-flow edit to `dev` in the remote (a
   comment appended to one flow), sends a signed generic webhook at once, and measures until
   /status shows the commit applied and the target holding it;
2. polling (webhooks unused, poll interval --poll-interval): the same edit, measured until
   applied; expect about half the interval on average plus the apply;
3. idle: a daemon with the default poll (60 s) and drift check (300 s), already in sync;
   user + system CPU of the daemon and the git processes it ran, over --idle seconds.

The cold start (first apply of the whole repository) is reported too. Output: a table, and
JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "bench-webhook-secret"


def git(
    repo: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=stdin,
        capture_output=True,
        check=False,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.com",
            **(env or {}),
        },
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


def duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


class Probe:
    """Commits one-flow edits on a branch of a bare repository, without a working copy."""

    def __init__(self, repo: Path, branch: str) -> None:
        self.repo, self.branch = repo, branch
        listing = git(repo, "ls-tree", "-r", "--name-only", f"refs/heads/{branch}")
        self.path = next(
            p for p in listing.splitlines() if "/flows/" in p and p.endswith((".yaml", ".yml"))
        )
        self.count = 0

    def commit(self) -> str:
        self.count += 1
        parent = git(self.repo, "rev-parse", f"refs/heads/{self.branch}")
        content = git(self.repo, "cat-file", "blob", f"{parent}:{self.path}").encode() + b"\n"
        blob = git(
            self.repo,
            "hash-object",
            "-w",
            "--stdin",
            stdin=content + f"# latency probe {self.count} {time.time_ns()}\n".encode(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git(self.repo, "read-tree", parent, env=env)
            git(self.repo, "update-index", "--cacheinfo", f"100644,{blob},{self.path}", env=env)
            tree = git(self.repo, "write-tree", env=env)
        sha = git(self.repo, "commit-tree", tree, "-p", parent, "-m", f"latency probe {self.count}")
        git(self.repo, "update-ref", f"refs/heads/{self.branch}", sha, parent)
        return sha


class DaemonProcess:
    def __init__(self, work: Path, name: str, config: dict[str, Any]) -> None:
        self.config_path = work / f"{name}.yaml"
        self.config_path.write_text(json.dumps(config))
        self.log_path = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float) -> float:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headwater.cli.main",
                    "daemon",
                    "--config",
                    str(self.config_path),
                    "--log-format",
                    "json",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HW_BENCH_SECRET": SECRET},
            )
        while not self.port:
            self._check_alive()
            for line in self.log_path.read_text(errors="replace").splitlines():
                event = json.loads(line) if line.startswith("{") else {}
                if event.get("event") == "daemon.start":
                    self.port = int(event["port"])
            time.sleep(0.02)
        until(
            lambda: self.get("/readyz")[0] == 200,
            timeout,
            "the daemon to be ready",
            self._check_alive,
        )
        return time.monotonic() - started

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {self.log_path.read_text()[-2000:]}")

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def applied(self, instance: str) -> str | None:
        status = json.loads(self.get("/status")[1])["instances"][instance]
        return (
            status["applied_revision"]
            if status["target_revision"] == status["applied_revision"]
            else None
        )

    def webhook(self, branch: str) -> None:
        body = json.dumps({"ref": f"refs/heads/{branch}"}).encode()
        digest = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        code, answer = self.request("POST", "/webhook", body, {"X-Headwater-Signature": digest})
        if code != 202:
            raise RuntimeError(f"webhook answered {code}: {answer!r}")

    def apply_seconds(self) -> list[float]:
        """Durations of the syncs that applied a commit, as the daemon logged them."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "sync" and event.get("result") == "applied":
                out.append(float(event["duration"]))
        return out

    def cpu_seconds(self) -> float:
        """User + system time of the daemon and of the children it waited for (git)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            self.proc = None


def until(check: Any, timeout: float, what: str, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p95": pct(values, 95),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def measure(
    daemon: DaemonProcess,
    probe: Probe,
    samples: int,
    via_webhook: bool,
    spread: float,
    timeout: float,
) -> list[float]:
    results: list[float] = []
    for _ in range(samples):
        if spread:
            time.sleep(random.uniform(0, spread))  # do not line up with the poll timer
        sha = probe.commit()
        pushed = time.monotonic()
        if via_webhook:
            daemon.webhook(probe.branch)
        until(lambda sha=sha: daemon.applied("dev") == sha, timeout, f"{sha[:12]} to be applied")
        results.append(time.monotonic() - pushed)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "repo", type=Path, help="A repository with dev and main branches (not changed)."
    )
    parser.add_argument("--samples", type=int, default=20, help="Pushes per phase (default 20).")
    parser.add_argument(
        "--poll-interval", default="2s", help="Poll interval of phase 2 (default 2s)."
    )
    parser.add_argument("--idle", default="60s", help="Idle measurement length (default 60s).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Limit of one wait, seconds.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args(argv)
    poll, idle = duration(args.poll_interval), duration(args.idle)

    work = Path(tempfile.mkdtemp(prefix="headwater-daemon-bench-"))
    remote = work / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(args.repo), str(remote)], check=True)
    flows = sum(
        1
        for p in git(remote, "ls-tree", "-r", "--name-only", "refs/heads/dev").splitlines()
        if "/flows/" in p
    )
    probe = Probe(remote, "dev")

    def config(**over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "state_dir": str(work / "state"),
            "repository": {"url": remote.as_uri(), "watch": False},
            "instances": {"dev": {"target": {"path": str(work / "instances" / "dev")}}},
            "secrets": {"type": "none"},
            "webhook": {"listen": "127.0.0.1:0", "secret_env": "HW_BENCH_SECRET"},
            "min_interval": "0s",
        }
        return {**base, **over}

    results: dict[str, Any] = {
        "repository": str(args.repo),
        "flows": flows,
        "samples": args.samples,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}",
    }
    daemon = DaemonProcess(work, "webhook", config(poll={"interval": 0}, drift_interval=0))
    try:
        results["cold_start_seconds"] = daemon.start(args.timeout)
        measure(daemon, probe, 1, True, 0, args.timeout)  # warm-up, not counted
        results["webhook"] = summary(measure(daemon, probe, args.samples, True, 0, args.timeout))
        results["webhook_sync"] = summary(daemon.apply_seconds()[-args.samples :])
    finally:
        daemon.stop()

    daemon = DaemonProcess(
        work, "poll", config(poll={"interval": poll, "jitter": 0.1}, drift_interval=0)
    )
    try:
        daemon.start(args.timeout)
        results["poll_interval_seconds"] = poll
        results["polling"] = summary(
            measure(daemon, probe, args.samples, False, poll, args.timeout)
        )
    finally:
        daemon.stop()

    daemon = DaemonProcess(work, "idle", config())
    try:
        daemon.start(args.timeout)
        time.sleep(2.0)
        before, started = daemon.cpu_seconds(), time.monotonic()
        time.sleep(idle)
        spent, elapsed = daemon.cpu_seconds() - before, time.monotonic() - started
        results["idle"] = {
            "seconds": round(elapsed, 1),
            "cpu_seconds": round(spent, 3),
            "cpu_percent": round(100 * spent / elapsed, 3),
        }
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    w, p, i = results["webhook"], results["polling"], results["idle"]
    print(f"daemon on {args.repo} ({flows} flows), {args.samples} pushes per phase")
    print(f"  cold start to ready:          {results['cold_start_seconds']:.2f} s")
    print(
        f"  push → applied, webhook:      p50 {w['p50']:.3f} s  p95 {w['p95']:.3f} s  max {w['max']:.3f} s"
    )
    ws = results["webhook_sync"]
    print(f"    of which the sync itself:   p50 {ws['p50']:.3f} s  p95 {ws['p95']:.3f} s")
    print(
        f"  push → applied, poll {poll:g}s:   p50 {p['p50']:.3f} s  p95 {p['p95']:.3f} s  max {p['max']:.3f} s"
    )
    print(
        f"  idle CPU over {i['seconds']:g} s:      {i['cpu_seconds']:.3f} s ({i['cpu_percent']:.3f} %)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
