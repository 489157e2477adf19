"""The sync daemon: push-to-applied latency (webhook, polling), restart, memory and idle CPU.

    .venv/bin/python benchmarks/daemon_latency.py benchmarks/.work/S-seed42-v1/repo.git
    .venv/bin/python benchmarks/daemon_latency.py --size M --samples 20 --json m.json
    .venv/bin/python benchmarks/daemon_latency.py --size L --phases webhook,restart --cold-timeout 600

REPO is a repository with `dev` and `main` branches and a headwater.yaml (e.g. one written
by benchmarks/generate.py; ``--size`` takes the generated one of benchmarks/.work/, making it
when missing); it is cloned, never changed. The daemon runs as a real process
(`python -m headwater.cli.main daemon --log-format json`) syncing the `dev` instance from a
bare clone over file://, with its HTTP server on 127.0.0.1. Phases, one state directory:

1. cold start: the first daemon applies the whole repository (``--cold-timeout``); then
   webhooks (polling off): each sample commits a one-flow edit to `dev` in the remote (a
   comment appended to one flow), sends a signed generic webhook at once, and measures until
   the daemon logs the commit applied (checked against /status afterwards). After each
   sample, with the daemon idle, the incremental floor of the same two commits is measured:
   ``git diff-tree`` + reading the changed blobs (benchmarks/floors.py), in this process
   (the daemon pays no interpreter start either) and as a fresh process (as run.py does);
2. restart: the daemon is stopped, one more commit is pushed while it is down, and a new
   daemon starts on the same state directory (mirror and result cache kept); measured:
   process start → listening, process start → /readyz ready, the first sync's duration as
   the daemon logs it (a full load and plan of the commit, then its apply), and one more
   webhook push → applied;
3. drift: with the daemon stopped, one flow of the instance is replaced by hand; a daemon
   with self-heal on starts, its start-up drift check (which reads the whole instance back)
   finds it, and the full sync that follows restores it; measured: the drift check's end,
   the full sync's duration, and the daemon's peak RSS through both;
4. polling (webhooks unused, poll interval --poll-interval): the same edit, measured until
   applied; expect about half the interval on average plus the apply;
5. idle: a daemon with the default poll (60 s) and drift check (300 s), already in sync;
   user + system CPU of the daemon and the git processes it ran, over --idle seconds.

Memory: the daemon's peak RSS (VmHWM of /proc/PID/status, read before stopping it; reset
with /proc/PID/clear_refs after the cold start, so the webhook phase has its own peak), and
the process tree (daemon + worker and git processes) sampled 4 times a second.

Output: a table, and JSON with --json FILE.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import floors  # noqa: E402

SECRET = "bench-webhook-secret"
PHASES = ("webhook", "restart", "drift", "polling", "idle")
COLD_KEYS = ("result", "duration", "create", "update", "delete")


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


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Probe:
    """Commits one-flow edits on a branch of a bare repository, without a working copy."""

    def __init__(self, repo: Path, branch: str, other_than: Probe | None = None) -> None:
        """Edits the first flow of the branch (``other_than``: the first of another tenant)."""
        self.repo, self.branch = repo, branch
        listing = git(repo, "ls-tree", "-r", "--name-only", f"refs/heads/{branch}")
        avoid = other_than.path.split("/")[:2] if other_than is not None else None
        self.path = next(
            p for p in listing.splitlines()
            if "/flows/" in p and p.endswith((".yaml", ".yml")) and p.split("/")[:2] != avoid
        )
        self.count = 0
        self.parent = ""  # the parent of the last commit

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
        self.parent = parent
        return sha


# -- memory ----------------------------------------------------------------------------------


def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (Linux /proc, from each process's parent id)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and of its descendants (workers, git) 4 times a second."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.tree_peak_kb = 0  # the largest sum of VmRSS over the tree seen in one sample
        self.helper_peak_kb = 0  # the largest VmHWM of a descendant seen
        self.helper_peak_name = ""
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            total = proc_status_kb(self.pid, "VmRSS") or 0
            for child in descendants(self.pid):
                total += proc_status_kb(child, "VmRSS") or 0
                hwm = proc_status_kb(child, "VmHWM") or 0
                if hwm > self.helper_peak_kb:
                    self.helper_peak_kb = hwm
                    try:
                        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                        self.helper_peak_name = " ".join(c.decode(errors="replace") for c in cmd[:3])
                    except OSError:
                        pass
            self.tree_peak_kb = max(self.tree_peak_kb, total)

    def reset(self) -> None:
        self.tree_peak_kb = self.helper_peak_kb = 0
        self.helper_peak_name = ""

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# -- the daemon ------------------------------------------------------------------------------


class LogTail:
    """The JSON lines of a daemon's log, read as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith(b"{"):
                try:
                    new.append(json.loads(line))
                except ValueError:
                    continue
        self.events.extend(new)
        return new

    def find(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((e for e in self.events if check(e)), None)

    def last(self) -> str:
        if not self.events:
            return "nothing logged yet"
        e = self.events[-1]
        return f"{e.get('event')}: {str(e.get('msg', ''))[:160]}"


class DaemonProcess:
    def __init__(self, work: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config_path = work / f"{name}.yaml"
        self.config_path.write_text(json.dumps(config))
        self.log_path = work / f"{name}.log"
        self.log = LogTail(self.log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: TreeSampler | None = None
        self.port = 0
        self.started = 0.0
        self.started_wall = 0.0
        self.listening_seconds = 0.0

    def start(self, timeout: float, progress: float = 0.0) -> float:
        """Start the daemon and wait for /readyz; the seconds from process start to ready.
        With ``progress``, says every that many seconds what the daemon logged last."""
        self.started = time.monotonic()
        self.started_wall = time.time()
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
        self.sampler = TreeSampler(self.proc.pid)
        self.sampler.start()
        deadline = self.started + timeout
        next_report = self.started + progress if progress else float("inf")
        next_probe = 0.0
        synced = False
        # The log is read every 2 ms; /readyz is asked every 50 ms until a sync is logged (an
        # up-to-date start logs none at INFO), then every 2 ms: asking often would slow the
        # daemon down while it works.
        while True:
            self._check_alive()
            self.log.poll()
            begun = self.log.find(lambda e: e.get("event") == "daemon.start")
            if begun is not None and not self.port:
                self.port = int(begun["port"])
                self.listening_seconds = time.monotonic() - self.started
            synced = synced or self.log.find(lambda e: e.get("event") == "sync") is not None
            now = time.monotonic()
            if self.port and (synced or now >= next_probe):
                next_probe = now + 0.05
                try:
                    if self.get("/readyz")[0] == 200:
                        break
                except (OSError, http.client.HTTPException):
                    pass
            if now > deadline:
                raise RuntimeError(
                    f"timed out after {timeout:g}s waiting for the {self.name} daemon to be "
                    f"ready; {self.memory_text()}; last logged: {self.log.last()}"
                )
            if now >= next_report:
                say(f"  … {now - self.started:.0f}s, {self.memory_text()}, load {load()}; "
                    f"last logged: {self.log.last()}")
                next_report = now + progress
            time.sleep(0.002)
        return time.monotonic() - self.started

    def memory_text(self) -> str:
        if self.proc is None:
            return "not running"
        rss = proc_status_kb(self.proc.pid, "VmRSS") or 0
        hwm = proc_status_kb(self.proc.pid, "VmHWM") or 0
        return f"daemon RSS {rss / 1024:.0f} MB (peak {hwm / 1024:.0f} MB)"

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

    def wait_sync(self, sha: str, timeout: float) -> dict[str, Any]:
        """The logged sync of ``sha``, once the daemon has logged it; an error unless applied."""
        deadline = time.monotonic() + timeout
        since = time.time() - 1.0
        new = list(self.log.events)  # the sync may have been read already
        while True:
            for event in new:
                if event.get("event") == "sync" and event.get("revision") == sha:
                    if event.get("result") != "applied":
                        raise RuntimeError(f"{sha[:12]}: {event.get('msg')}")
                    return event
                if event.get("event") == "internal.error" and event.get("ts", 0) >= since:
                    raise RuntimeError(f"{sha[:12]}: the daemon logged {event.get('msg')}")
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout:g}s waiting for {sha[:12]} to be applied; "
                    f"last logged: {self.log.last()}"
                )
            time.sleep(0.002)
            new = self.log.poll()

    def began(self, event: dict[str, Any]) -> float:
        """Seconds from process start to the start of a logged event with a duration."""
        return float(event["ts"]) - float(event.get("duration") or 0.0) - self.started_wall

    def syncs(self) -> list[dict[str, Any]]:
        self.log.poll()
        return [e for e in self.log.events if e.get("event") == "sync"]

    def first_sync(self, timeout: float) -> dict[str, Any]:
        """The first sync logged; /readyz answers once a sync has its verdict, a moment before
        the sync is logged."""
        deadline = time.monotonic() + timeout
        while not self.syncs():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no sync logged by the {self.name} daemon within {timeout:g}s")
            time.sleep(0.002)
        return self.syncs()[0]

    def cpu_seconds(self) -> float:
        """User + system time of the daemon and of the children it waited for (git)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_kb(self) -> int:
        assert self.proc is not None
        return proc_status_kb(self.proc.pid, "VmHWM") or 0

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if refused."""
        assert self.proc is not None
        if self.sampler is not None:
            self.sampler.reset()
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def memory(self) -> dict[str, Any]:
        """Peak RSS figures, in MB, read while the daemon still runs."""
        assert self.proc is not None and self.sampler is not None
        return {
            "daemon_peak_mb": round(self.peak_kb() / 1024, 1),
            "daemon_rss_mb": round((proc_status_kb(self.proc.pid, "VmRSS") or 0) / 1024, 1),
            "tree_peak_mb": round(self.sampler.tree_peak_kb / 1024, 1),
            "helper_peak_mb": round(self.sampler.helper_peak_kb / 1024, 1),
            "helper_peak_process": self.sampler.helper_peak_name,
        }

    def stop(self, timeout: float = 600.0) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None


def until(
    check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None] | None = None
) -> None:
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


def floor_in_process(remote: Path, old: str, new: str) -> float:
    started = time.perf_counter()
    floors.incremental(str(remote), old, new)
    return time.perf_counter() - started


def floor_fresh_process(remote: Path, old: str, new: str) -> float:
    command = [sys.executable, str(ROOT / "benchmarks" / "floors.py"), "incremental", str(remote), old, new]
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - started


def measure(
    daemon: DaemonProcess,
    probe: Probe,
    samples: int,
    via_webhook: bool,
    spread: float,
    timeout: float,
    floors_out: dict[str, list[float]] | None = None,
) -> tuple[list[float], list[float]]:
    """Push → applied of ``samples`` commits, and the sync durations the daemon logged."""
    results: list[float] = []
    syncs: list[float] = []
    for _ in range(samples):
        if spread:
            time.sleep(random.uniform(0, spread))  # do not line up with the poll timer
        sha = probe.commit()
        pushed = time.monotonic()
        if via_webhook:
            daemon.webhook(probe.branch)
        event = daemon.wait_sync(sha, timeout)
        results.append(time.monotonic() - pushed)
        syncs.append(float(event["duration"]))
        if daemon.applied("dev") != sha:
            raise RuntimeError(f"the daemon logged {sha[:12]} applied but /status disagrees")
        if floors_out is not None:  # the daemon is idle now: the floor of the same two commits
            floors_out["in_process"].append(floor_in_process(probe.repo, probe.parent, sha))
            floors_out["fresh_process"].append(floor_fresh_process(probe.repo, probe.parent, sha))
    return results, syncs


# -- the phases ------------------------------------------------------------------------------


def phase_webhook(daemon: DaemonProcess, probe: Probe, args: argparse.Namespace,
                  results: dict[str, Any]) -> None:
    say(f"[cold start] first apply of the whole repository (limit {args.cold_timeout:g}s), "
        f"load {load()}")
    results["load_cold_start"] = load()
    results["cold_start_seconds"] = daemon.start(args.cold_timeout, progress=args.progress)
    first = daemon.first_sync(args.timeout)
    results["cold_sync"] = {k: first.get(k) for k in COLD_KEYS}
    results["cold_sync"]["began_seconds"] = daemon.began(first)
    results["memory_cold_start"] = daemon.memory()
    say(f"  ready in {results['cold_start_seconds']:.1f}s; {daemon.memory_text()}")
    reset = daemon.reset_peak()
    results["load_webhook"] = load()
    say(f"[webhook] {args.samples} pushes, load {load()}")
    measure(daemon, probe, 1, True, 0, args.timeout)  # warm-up, not counted
    floor_times: dict[str, list[float]] = {"in_process": [], "fresh_process": []}
    latency, syncs = measure(daemon, probe, args.samples, True, 0, args.timeout, floor_times)
    results["webhook"] = summary(latency)
    results["webhook_sync"] = summary(syncs)
    results["webhook_floor"] = summary(floor_times["in_process"])
    results["webhook_floor_process"] = summary(floor_times["fresh_process"])
    results["webhook_ratio"] = results["webhook"]["p50"] / results["webhook_floor"]["p50"]
    results["webhook_ratio_process"] = (
        results["webhook"]["p50"] / results["webhook_floor_process"]["p50"]
    )
    memory = daemon.memory()
    memory["peak_was_reset_after_cold_start"] = reset
    results["memory_webhook"] = memory
    say(f"  p50 {results['webhook']['p50']:.3f}s; {daemon.memory_text()}")


def phase_restart(old: DaemonProcess | None, make: Callable[[str], DaemonProcess], probe: Probe,
                  args: argparse.Namespace, results: dict[str, Any]) -> DaemonProcess:
    say(f"[restart] stop, push one commit, start on the same state directory, load {load()}")
    stopping = time.monotonic()
    if old is not None:
        old.stop(args.timeout)
    results["restart_stop_seconds"] = time.monotonic() - stopping
    sha = probe.commit()
    daemon = make("restart")
    try:
        restart_measure(daemon, sha, probe, args, results)
    except BaseException:
        daemon.stop(args.timeout)
        raise
    return daemon


def restart_measure(daemon: DaemonProcess, sha: str, probe: Probe, args: argparse.Namespace,
                    results: dict[str, Any]) -> None:
    results["load_restart"] = load()
    ready = daemon.start(args.cold_timeout, progress=args.progress)
    first = daemon.first_sync(args.timeout)
    if first.get("revision") != sha or first.get("result") != "applied":
        raise RuntimeError(f"the first sync after the restart was not the new commit: {first.get('msg')}")

    def at(name: str) -> float | None:
        event = daemon.log.find(lambda e: e.get("event") == name)
        return None if event is None else float(event["ts"]) - daemon.started_wall

    primed = daemon.log.find(lambda e: e.get("event") == "primed")
    results["restart"] = {
        "remote_ok_seconds": at("remote.ok"),  # the first fetch done (after a start-up drift check)
        "primed_seconds": None if primed is None else float(primed.get("duration") or 0.0),
        "listening_seconds": daemon.listening_seconds,
        "ready_seconds": ready,
        "first_sync_seconds": float(first["duration"]),
        "first_sync_began_seconds": daemon.began(first),
        "first_sync": first.get("msg"),
    }
    latency, syncs = measure(daemon, probe, 1, True, 0, args.timeout)
    results["restart"]["next_webhook_seconds"] = latency[0]
    results["restart"]["next_webhook_sync_seconds"] = syncs[0]
    # a restarted daemon loads a tenant when a change first reaches it
    latency, syncs = measure(daemon, Probe(probe.repo, probe.branch, other_than=probe), 1, True, 0, args.timeout)
    results["restart"]["other_tenant_seconds"] = latency[0]
    results["restart"]["other_tenant_sync_seconds"] = syncs[0]
    results["memory_restart"] = daemon.memory()
    say(f"  ready in {ready:.2f}s, first sync {first['duration']}s; {daemon.memory_text()}")


def phase_drift(make: Callable[[str], DaemonProcess], work: Path, args: argparse.Namespace,
                results: dict[str, Any]) -> None:
    say(f"[drift] a flow replaced by hand in the stopped instance; a self-healing daemon starts, load {load()}")
    results["load_drift"] = load()
    current = work / "instances" / "dev" / "current"
    flow = next(current.glob("*/*/flows/*.yaml"))
    replacement = flow.with_name(".hand-edit")
    replacement.write_bytes(flow.read_bytes() + b"# changed by hand\n")
    os.replace(replacement, flow)  # a new file: the object it was linked to stays intact
    daemon = make("drift")
    try:
        daemon.start(args.cold_timeout, progress=args.progress)
        deadline = time.monotonic() + args.cold_timeout
        while True:
            daemon.log.poll()
            drift = daemon.log.find(lambda e: e.get("event") == "drift")
            if drift is not None:
                found = float(drift["ts"])
                syncs = [e for e in daemon.log.events if e.get("event") == "sync" and e.get("result") == "applied"]
                heal = next((e for e in syncs if float(e.get("ts", 0)) >= found), None)
                if heal is not None:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no drift healed within {args.cold_timeout:g}s; last logged: {daemon.log.last()}")
            time.sleep(0.05)
        results["drift"] = {
            "found_seconds": float(drift["ts"]) - daemon.started_wall,
            "count": drift.get("count"),
            "heal_sync_seconds": float(heal["duration"]),
            "heal_sync": heal.get("msg"),
        }
        results["memory_drift"] = daemon.memory()
        say(f"  drift found {results['drift']['found_seconds']:.1f}s after start, healed by a full sync of "
            f"{float(heal['duration']):.1f}s; {daemon.memory_text()}")
    finally:
        daemon.stop(args.timeout)


def phase_polling(make: Callable[[str], DaemonProcess], probe: Probe, poll: float,
                  args: argparse.Namespace, results: dict[str, Any]) -> None:
    say(f"[polling] every {poll:g}s, {args.samples} pushes, load {load()}")
    results["load_polling"] = load()
    daemon = make("poll")
    try:
        daemon.start(args.cold_timeout)
        results["poll_interval_seconds"] = poll
        latency, _syncs = measure(daemon, probe, args.samples, False, poll, args.timeout)
        results["polling"] = summary(latency)
    finally:
        daemon.stop(args.timeout)


def phase_idle(make: Callable[[str], DaemonProcess], idle: float, args: argparse.Namespace,
               results: dict[str, Any]) -> None:
    say(f"[idle] {idle:g}s, load {load()}")
    results["load_idle"] = load()
    daemon = make("idle")
    try:
        daemon.start(args.cold_timeout)
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
        daemon.stop(args.timeout)


# -- output ----------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    rows: list[list[str]] = [["measurement", "p50 s", "p95 s", "max s", "floor p50 s", "ratio", "note"]]

    def add(name: str, s: dict[str, float] | None, floor: float | None = None, note: str = "") -> None:
        if s is None:
            return
        ratio = f"{s['p50'] / floor:.1f}×" if floor else "—"
        rows.append([name, f"{s['p50']:.3f}", f"{s['p95']:.3f}", f"{s['max']:.3f}",
                     f"{floor:.4f}" if floor else "—", ratio, note])

    def one(name: str, value: float | None, note: str = "") -> None:
        if value is not None:
            rows.append([name, f"{value:.3f}", "", "", "—", "—", note])

    if "cold_start_seconds" in results:
        cold = results["cold_sync"]
        one("cold start: process start → ready", results["cold_start_seconds"],
            f"first sync {cold['result']} in {float(cold['duration']):.1f}s, began at "
            f"{cold.get('began_seconds') or 0:.1f}s "
            f"(+{cold.get('create')} ~{cold.get('update')} -{cold.get('delete')})")
    if "webhook" in results:
        fl, fp = results["webhook_floor"]["p50"], results["webhook_floor_process"]["p50"]
        add("webhook: push → applied (floor in-process)", results["webhook"], fl)
        add("webhook: push → applied (floor fresh process)", results["webhook"], fp)
        add("  of which the sync (daemon log)", results["webhook_sync"], fl)
        add("incremental floor, in-process", results["webhook_floor"], None,
            "diff-tree + cat-file of the changed blob")
        add("incremental floor, fresh process", results["webhook_floor_process"], None,
            "python benchmarks/floors.py incremental (as run.py)")
    if "restart" in results:
        r = results["restart"]
        one("restart: process start → listening", r["listening_seconds"])
        fetched = r.get("remote_ok_seconds")
        one("restart: process start → ready", r["ready_seconds"],
            f"the first sync began {r['first_sync_began_seconds']:.2f}s after process start"
            + (f", the first fetch ended at {fetched:.2f}s" if fetched is not None else ""))
        primed = r.get("primed_seconds")
        one("restart: first sync (daemon log)", r["first_sync_seconds"], (r["first_sync"] or "")
            + (f"; of which priming {primed:.2f}s" if primed is not None else ""))
        one("restart: next webhook push → applied", r["next_webhook_seconds"],
            f"its sync {r['next_webhook_sync_seconds']:.3f}s")
        one("restart: then a push to another tenant", r.get("other_tenant_seconds"),
            f"its sync {r.get('other_tenant_sync_seconds') or 0:.3f}s (loads that tenant)")
    if "drift" in results:
        d = results["drift"]
        one("drift: process start → drift found", d["found_seconds"],
            f"{d['count']} resource(s); the start-up drift check reads the whole instance back")
        one("drift: the full sync that restores it", d["heal_sync_seconds"], d.get("heal_sync") or "")
    if "polling" in results:
        add(f"polling every {results['poll_interval_seconds']:g}s: push → applied", results["polling"])
    if "idle" in results:
        i = results["idle"]
        rows.append([f"idle CPU over {i['seconds']:g}s", f"{i['cpu_seconds']:.3f}", "", "", "—", "—",
                     f"{i['cpu_percent']:.3f} % of one core"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    memory = []
    for key, label in (("memory_cold_start", "cold start"), ("memory_webhook", "webhook phase"),
                       ("memory_restart", "restart"), ("memory_drift", "drift check + full sync")):
        m = results.get(key)
        if m:
            memory.append(
                f"  {label}: daemon peak {m['daemon_peak_mb']:.0f} MB (now {m['daemon_rss_mb']:.0f}), "
                f"process tree peak {m['tree_peak_mb']:.0f} MB (sampled), largest helper "
                f"{m['helper_peak_mb']:.0f} MB ({m['helper_peak_process'] or '-'})"
            )
    if memory:
        webhook = results.get("memory_webhook")
        reset = "" if webhook is None else (
            ", the webhook phase's from the end of the cold start" if webhook.get("peak_was_reset_after_cold_start")
            else "; the kernel refused to reset VmHWM after the cold start")
        lines += ["", f"peak RSS (VmHWM of the daemon; the process tree sampled 4 times a second){reset}:", *memory]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "repo", type=Path, nargs="?", help="A repository with dev and main branches (not changed)."
    )
    parser.add_argument("--size", help="Instead of REPO: the generated repository of this size "
                        "(benchmarks/.work/, generated when missing).")
    parser.add_argument("--seed", type=int, default=42, help="With --size (default 42).")
    parser.add_argument("--samples", type=int, default=20, help="Pushes per phase (default 20).")
    parser.add_argument(
        "--poll-interval", default="2s", help="Poll interval of phase 3 (default 2s)."
    )
    parser.add_argument("--idle", default="60s", help="Idle measurement length (default 60s).")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"Comma-separated, from {','.join(PHASES)} (default all). The cold "
                        "start always runs first.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Limit of one wait, seconds.")
    parser.add_argument("--cold-timeout", type=float, default=3600.0,
                        help="Limit of a daemon's start until ready (the cold start applies the "
                        "whole repository), seconds (default 3600).")
    parser.add_argument("--progress", type=float, default=30.0,
                        help="While a daemon starts, say what it logged last every this many "
                        "seconds (default 30; 0: never).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args(argv)
    poll, idle = duration(args.poll_interval), duration(args.idle)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    if (args.repo is None) == (args.size is None):
        parser.error("give REPO or --size")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.size:
        from benchmarks import run

        args.repo, _manifest, _took = run.ensure_repo(args.size.upper(), args.seed)

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

    def webhook_daemon(name: str) -> DaemonProcess:
        return DaemonProcess(work, name, config(poll={"interval": 0}, drift_interval=0))

    results: dict[str, Any] = {
        "repository": str(args.repo),
        "flows": flows,
        "samples": args.samples,
        "phases": phases,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}",
        "load_start": load(),
    }
    say(f"daemon benchmark on {args.repo} ({flows} flows), work directory {work}")
    status = 0
    first_daemon = webhook_daemon("webhook")
    daemon: DaemonProcess | None = first_daemon
    try:
        try:
            if "webhook" in phases:
                phase_webhook(first_daemon, probe, args, results)
            else:
                results["cold_start_seconds"] = first_daemon.start(args.cold_timeout, args.progress)
                first = first_daemon.first_sync(args.timeout)
                results["cold_sync"] = {k: first.get(k) for k in COLD_KEYS}
                results["cold_sync"]["began_seconds"] = first_daemon.began(first)
            if "restart" in phases:
                daemon = phase_restart(daemon, webhook_daemon, probe, args, results)
        finally:
            if daemon is not None:
                daemon.stop(args.timeout)
        if "drift" in phases:
            phase_drift(lambda name: DaemonProcess(
                work, name, config(poll={"interval": 0}, drift_interval="1h",
                                   instances={"dev": {"target": {"path": str(work / "instances" / "dev")},
                                                      "selfHeal": True}})),
                work, args, results)
        if "polling" in phases:
            phase_polling(lambda name: DaemonProcess(
                work, name, config(poll={"interval": poll, "jitter": 0.1}, drift_interval=0)),
                probe, poll, args, results)
        if "idle" in phases:
            phase_idle(lambda name: DaemonProcess(work, name, config()), idle, args, results)
    except RuntimeError as exc:
        results["error"] = str(exc)
        say(f"FAILED: {exc}")
        status = 1
    finally:
        results["load_end"] = load()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"daemon on {args.repo} ({flows} flows), {args.samples} pushes per phase; "
          f"load average {results['load_start']} at the start, {results['load_end']} at the end")
    print(table(results))
    if "error" in results:
        print(f"FAILED: {results['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
