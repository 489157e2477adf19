"""Crash safety (DESIGN §12): `headwater apply` killed with SIGKILL at any instant leaves the
instance at exactly the old or the new revision, the state store agreeing with it once the engine
reconciles, and the next apply converging without temporary debris.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.cli.main import main
from headwater.state import StateStore
from headwater.targets.local import LocalTarget
from tests.gitutil import commit, git, sample_repo

BULK = 200  # files that differ between the two commits the test alternates between
KILLS = 50
SEED = 20240603


def bulk(tag: str) -> dict[str, str | bytes | None]:
    return {f"tenants/acme/company/team/project-a/files/bulk/f{i:03}.txt": f"{tag} {i}\n" * 40 for i in range(BULK)}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def debris(root: Path) -> list[str]:
    """Work-in-progress names anywhere in a directory (symlinks not followed)."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.join(folder, n) for n in (*dirs, *files) if ".tmp" in n]
    return found


def finish(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def pending_row(db: Path, instance: str) -> tuple[str, str] | None:
    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute(
            "SELECT revision, action FROM pending WHERE instance = ?", (instance,)
        ).fetchone()
    finally:
        con.close()
    return None if row is None else (row[0], row[1])


# A real `headwater` process whose interpreter has started and imported the CLI, waiting for its
# arguments. Without this, start-up (~0.5 s of imports) is most of a run and most kills would land
# before the apply touches anything; with it, the random instants are spread over the apply itself.
WARM = (
    "import json, os, sys\n"
    "from headwater.cli.main import main\n"
    "print('ready', flush=True)\n"
    "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
    "main(json.loads(sys.stdin.readline()))\n"
)


class Warm:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WARM],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline() == b"ready\n"
        self.proc.stdin.write(json.dumps(argv).encode() + b"\n")
        self.proc.stdin.close()
        return self.proc


class Instance:
    def __init__(self, repo: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.repo, self.state, self.capsys = repo, state, capsys
        self.root = state / "instances" / "dev"
        self.db = state / "state.db"
        self.warm = Warm()

    def argv(self, command: str, *args: str) -> list[str]:
        return [command, "-C", str(self.repo), "--state-dir", str(self.state), *args]

    def apply_in_process(self, rev: str) -> None:
        code, _, err = run_cli(self.capsys, "-q", *self.argv("apply", "--instance", "dev", "--rev", rev, "--yes"))
        assert code == 0, err

    def status(self) -> dict[str, Any]:
        code, out, err = run_cli(self.capsys, *self.argv("status", "--instance", "dev", "-o", "json"))
        assert code == 0, err
        body: dict[str, Any] = json.loads(out)["instances"][0]
        return body

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """Start `headwater ARGS` in the waiting process, and get the next one ready."""
        proc = self.warm.start(self.argv(*args))
        self.warm = Warm()
        return proc

    def close(self) -> None:
        self.warm.proc.kill()
        self.warm.proc.wait()
        for stream in (self.warm.proc.stdin, self.warm.proc.stdout):
            if stream is not None:
                stream.close()

    def hashes(self) -> dict[Any, str]:
        return {k: r.hash for k, r in LocalTarget(self.root).inventory().items()}


@pytest.fixture
def instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Instance]:
    repo = sample_repo(tmp_path / "gitops")
    git(repo, "checkout", "-q", "dev")
    inst = Instance(repo, tmp_path / "state", capsys)
    yield inst
    inst.close()


@pytest.mark.slow
def test_apply_killed_at_random_instants_leaves_old_or_new(instance: Instance) -> None:
    revs = {
        "A": commit(instance.repo, "bulk A", bulk("A")),
        "B": commit(instance.repo, "bulk B", bulk("B")),
    }
    tag_of = {sha: tag for tag, sha in revs.items()}
    expected: dict[str, dict[Any, str]] = {}
    for tag in ("A", "B"):
        instance.apply_in_process(revs[tag])
        expected[revs[tag]] = instance.hashes()
    changed = {k for k, h in expected[revs["A"]].items() if expected[revs["B"]].get(k) != h}
    assert len(changed) >= BULK

    def other(rev: str) -> str:
        return revs["A"] if rev == revs["B"] else revs["B"]

    # Calibrate on three whole runs: when the pending marker appears (begin_apply), when it goes
    # (finish_apply; `current` is swapped in between), and when the process ends.
    current = revs["B"]
    marks: dict[str, list[float]] = {"begin": [], "finish": [], "exit": []}
    for _ in range(3):
        current = other(current)
        seen: dict[str, float] = {}
        proc = instance.spawn("apply", "--instance", "dev", "--rev", current, "--yes")
        start = time.monotonic()
        while proc.poll() is None:
            pending = pending_row(instance.db, "dev") is not None
            now = time.monotonic() - start
            if pending:
                seen.setdefault("begin", now)
            elif "begin" in seen:
                seen.setdefault("finish", now)
            time.sleep(0.001)
        seen["exit"] = time.monotonic() - start
        seen.setdefault("begin", seen["exit"])
        seen.setdefault("finish", seen["exit"])
        finish(proc)
        assert proc.returncode == 0
        for name, at in seen.items():
            marks[name].append(at)
    begin, end, total = (statistics.median(marks[m]) for m in ("begin", "finish", "exit"))

    rng = random.Random(SEED)
    phases: collections.Counter[str] = collections.Counter()
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 2 * KILLS, f"only {kills} kills landed in {attempts} attempts"
        old, new = current, other(current)
        # A quarter of the instants anywhere in a run, the rest around the target and state
        # writes (from just before begin_apply to just after finish_apply).
        slack = 0.1 * total
        if attempts % 4 == 1:
            delay = rng.uniform(0, total)
        else:
            delay = rng.uniform(max(0.0, begin - slack), end + slack)
        proc = instance.spawn("apply", "--instance", "dev", "--rev", new, "--yes")
        start = time.monotonic()
        killed = False
        while proc.poll() is None:
            if time.monotonic() - start >= delay:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.001)
        finish(proc)  # reaped: a zombie would look like a live lock holder
        kills += killed

        # What the kill left, read without touching anything (opening a LocalTarget would
        # already clear its debris).
        pending = pending_row(instance.db, "dev")
        wip = debris(instance.root)
        link = os.readlink(instance.root / "current")
        meta = json.loads((instance.root / link / ".revision.json").read_bytes())
        at = meta["revision"]
        assert at in (old, new) and link.startswith(f"revisions/{at}"), f"current is {link}"
        if killed:
            phases[("pending" if pending else "settled") + ("-new" if at == new else "-old")] += 1
            phases["target-write"] += bool(wip) and at == old

        # status reconciles and agrees with the target
        body = instance.status()
        assert body["pending_revision"] is None
        assert body["applied_revision"] == body["target_revision"] == at
        assert body["drift"] == [] and body["in_sync"] is True
        if pending is not None:
            assert body["attempted_revision"] == new

        # current is exactly one of the two revisions: every resource, nothing else
        assert os.readlink(instance.root / "current") == link
        assert instance.hashes() == expected[at]
        assert LocalTarget(instance.root).manifest() == expected[at]
        sample = instance.root / "current/acme/company.team.project-a/files/bulk/f007.txt"
        assert sample.read_text() == f"{tag_of[at]} 7\n" * 40

        # the next apply converges and leaves no debris
        instance.apply_in_process(new)
        assert LocalTarget(instance.root).current_revision() == new
        assert instance.hashes() == expected[new]
        assert debris(instance.root) == [] and debris(instance.state) == []
        state = StateStore(instance.db)
        try:
            got = state.get("dev")
            assert (got.applied_revision, got.outcome, got.pending_revision) == (new, "applied", None)
            assert state.lock_holder("dev") is None
        finally:
            state.close()
        current = new

    # Kills landed while the target was being written (its work in progress on disk, `current`
    # still old, the pending marker set), after the swap before the store recorded it, and after.
    report = f"kills by phase: {dict(phases)}; calibration {begin:.2f}/{end:.2f}/{total:.2f}s"
    assert phases["target-write"] >= 1, report
    assert phases["pending-old"] + phases["pending-new"] >= 3, report
    assert phases["pending-new"] + phases["settled-new"] >= 1, report


def test_a_rollback_killed_mid_way_is_recorded_as_a_rollback(instance: Instance) -> None:
    first = commit(instance.repo, "bulk A", bulk("A"))
    second = commit(instance.repo, "bulk B", bulk("B"))
    instance.apply_in_process(first)
    instance.apply_in_process(second)

    def history() -> list[dict[str, Any]]:
        code, out, err = run_cli(instance.capsys, "history", "--instance", "dev", "-o", "json",
                                 "--state-dir", str(instance.state))
        assert code == 0, err
        entries: list[dict[str, Any]] = json.loads(out)["history"]
        return entries

    # killed as soon as its pending marker is there: the marker says "rollback"
    proc = instance.spawn("rollback", "--instance", "dev", "--to", first)
    row = None
    while row is None and proc.poll() is None:
        row = pending_row(instance.db, "dev")
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert row == (first, "rollback")
    body = instance.status()
    at = LocalTarget(instance.root).current_revision()
    assert body["applied_revision"] == body["target_revision"] == at

    # killed as soon as `current` shows the earlier revision: recorded as a rollback, completed
    # from the target's manifest when the store had not recorded it yet
    if at != first:
        proc = instance.spawn("rollback", "--instance", "dev", "--to", first)
        while proc.poll() is None and not os.readlink(instance.root / "current").startswith(
            f"revisions/{first}"
        ):
            pass
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    body = instance.status()
    assert body["applied_revision"] == body["target_revision"] == first
    latest = history()[0]
    assert (latest["revision"], latest["action"]) == (first, "rollback")
