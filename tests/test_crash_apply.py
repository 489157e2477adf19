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
from headwater.resources import make
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


class Pending:
    """Reads the store's pending-apply marker through one connection kept open: opening and
    closing one per poll would make this process the last one out, checkpointing the WAL and
    removing it under the feet of the process being watched."""

    def __init__(self, db: Path) -> None:
        self.db = sqlite3.connect(db, timeout=30, isolation_level=None)

    def row(self, instance: str = "dev") -> tuple[str, str] | None:
        rows = self.db.execute(
            "SELECT revision, action FROM pending WHERE instance = ?", (instance,)
        ).fetchall()
        return (rows[0][0], rows[0][1]) if rows else None

    def close(self) -> None:
        self.db.close()


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
        self._pending: Pending | None = None

    def pending(self) -> tuple[str, str] | None:
        if self._pending is None:
            self._pending = Pending(self.db)
        return self._pending.row()

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
        if self._pending is not None:
            self._pending.close()
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

    # Calibrate on whole runs: how long one takes, and how long its pending marker stays (from
    # begin_apply to finish_apply: the target write, the swap of `current`, the state writes).
    # Both are measured again on every run that shows them, so the instants follow the machine.
    current = revs["B"]
    totals: list[float] = []
    windows: list[float] = []

    def watch(proc: subprocess.Popen[bytes], delay: float | None, after_begin: float | None) -> bool:
        """Kill ``proc`` ``delay`` s after its start, or ``after_begin`` s after its pending
        marker appears; True if it was killed, False if it ended first."""
        start = time.monotonic()
        begin: float | None = None
        gone = False
        while proc.poll() is None:
            now = time.monotonic() - start
            if not gone:
                marked = instance.pending() is not None
                if marked and begin is None:
                    begin = now
                elif not marked and begin is not None:
                    windows.append(now - begin)
                    gone = True
            if (delay is not None and now >= delay) or (
                after_begin is not None and begin is not None and now - begin >= after_begin
            ):
                proc.send_signal(signal.SIGKILL)
                finish(proc)  # reaped: a zombie would look like a live lock holder
                return True
            time.sleep(0.0005)
        totals.append(time.monotonic() - start)
        finish(proc)
        return False

    for _ in range(3):
        current = other(current)
        assert not watch(instance.spawn("apply", "--instance", "dev", "--rev", current, "--yes"), None, None)
    assert windows, "the pending marker was never seen"

    rng = random.Random(SEED)
    phases: collections.Counter[str] = collections.Counter()
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 2 * KILLS, f"only {kills} kills landed in {attempts} attempts"
        old, new = current, other(current)
        proc = instance.spawn("apply", "--instance", "dev", "--rev", new, "--yes")
        # A quarter of the instants anywhere in a run; the rest from begin_apply to a little
        # past finish_apply, where the target and the state store are written.
        if attempts % 4 == 1:
            killed = watch(proc, rng.uniform(0, statistics.median(totals[-5:])), None)
        else:
            window = statistics.median(windows[-7:])
            killed = watch(proc, None, rng.uniform(0, 1.3 * window))
        kills += killed

        # What the kill left, read without touching anything (opening a LocalTarget would
        # already clear its debris).
        pending = instance.pending()
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
    report = f"kills by phase: {dict(phases)}; runs {totals[:3]}, pending windows {windows[:3]}"
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
        row = instance.pending()
        time.sleep(0.0005)
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
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    body = instance.status()
    assert body["applied_revision"] == body["target_revision"] == first
    latest = history()[0]
    assert (latest["revision"], latest["action"]) == (first, "rollback")


# -- a crash at every step of the local target's apply ---------------------------------------------


class Crash(BaseException):
    """The process dies here: not an Exception, so nothing cleans up after it."""


STEPS = ("mkdir", "symlink", "rename", "replace", "link", "unlink", "rmdir")


def tenants(version: int) -> dict[Any, Any]:
    """Three tenants of four namespaces; acme/ns1 holds ``version``, and from version 2 on
    initech/ns3 is gone."""
    desired = {}
    for tenant in ("acme", "globex", "initech"):
        for n in range(4):
            if (tenant, n) == ("initech", 3) and version >= 2:
                continue
            v = version if (tenant, n) == ("acme", 1) else 0
            for r in (
                make(tenant, f"ns{n}", "flow", "hello", f"id: hello\n# {tenant} {n} {v}\n".encode()),
                make(tenant, f"ns{n}", "file", "lib/a.py", f"print({n}, {v})\n".encode()),
            ):
                desired[r.key] = r
    return desired


def by_namespace(desired: dict[Any, Any], *namespaces: tuple[str, str]) -> dict[Any, Any]:
    return {ns: {k: r for k, r in desired.items() if (k.tenant, k.namespace) == ns} for ns in namespaces}


def on_disk(root: Path) -> tuple[set[str], set[str]]:
    """(indexes, spaces) in the instance, and check that they are exactly those the revision
    folders name: nothing a crash left behind, nothing a revision needs missing."""
    named: tuple[set[str], set[str]] = (set(), set())
    for rev in (root / "revisions").iterdir():
        manifest = json.loads((rev / ".manifest.json").read_bytes())
        named[0].update(iid for _, iid in manifest["tenants"])
        named[1].update(row[2] for row in manifest["namespaces"])
    found = ({p.name for p in (root / "indexes").iterdir()}, {p.name for p in (root / "spaces").iterdir()})
    assert found == named
    return found


@pytest.mark.parametrize("incremental", [True, False], ids=["apply_namespaces", "apply"])
def test_a_crash_at_any_step_of_an_apply_leaves_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, incremental: bool
) -> None:
    """Every file-system change an apply makes (spaces, indexes, the revision, the swap, the
    pruning and collection of indexes, spaces and objects) is a point where it may die."""
    expected = {f"r{v}": {k: r.hash for k, r in tenants(v).items()} for v in range(3)}
    changed = [("acme", "ns1"), ("initech", "ns3")]

    def prepare(root: Path) -> LocalTarget:
        target = LocalTarget(root, keep=1, durable=False)
        target.apply("r0", tenants(0), {})
        target.apply("r1", tenants(1), {})
        return target

    def run(target: LocalTarget) -> None:
        if incremental:
            target.apply_namespaces("r2", "r1", by_namespace(tenants(2), *changed), {})
        else:
            target.apply("r2", tenants(2), {})

    def crashing(at: int) -> list[str]:
        done: list[str] = []
        for name in STEPS:
            real = getattr(os, name)

            def step(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                if len(done) + 1 == at:
                    raise Crash
                done.append(f"{_name} {args[0]}")
                return _real(*args, **kw)

            monkeypatch.setattr(os, name, step)
        return done

    whole = prepare(tmp_path / "whole")
    steps = crashing(0)
    run(whole)
    monkeypatch.undo()
    total = len(steps)
    assert any("/indexes/.tmp-" in s for s in steps) and any("/indexes/.tmp-gc-" in s for s in steps)

    outcomes = {"r1": 0, "r2": 0}
    for at in range(1, total + 1):
        root = tmp_path / f"crash{at}"
        target = prepare(root)
        crashing(at)
        with pytest.raises(Crash):
            run(target)
        monkeypatch.undo()

        reopened = LocalTarget(root, keep=1, durable=False)  # removes the debris, collects
        assert debris(root) == [], at
        current = reopened.current_revision()
        assert current in ("r1", "r2"), at
        outcomes[current] += 1
        assert reopened.manifest() == expected[current], at
        assert {k: r.hash for k, r in reopened.inventory().items()} == expected[current], at
        on_disk(root)
        reopened.apply("r2", tenants(2), {})  # the next apply converges
        assert {k: r.hash for k, r in reopened.inventory().items()} == expected["r2"], at
        assert debris(root) == [], at
        on_disk(root)
    assert outcomes["r1"] > 0 and outcomes["r2"] > 0, outcomes
