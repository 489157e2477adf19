"""The state store: what Headwater knows about each instance, in one SQLite file.

Per instance: the last applied revision, the last attempted one with its outcome and errors,
the inventory of managed resources (key -> hash), the history of applies, a pending-apply
marker and a lock. Every write is one transaction (WAL, ``synchronous=FULL``), so a crash at
any instant leaves the store at the state before or after it.

An apply is bracketed so that a crash between the target and the store can be repaired::

    with store.lock(instance, owner="daemon:webhook", ttl=600):
        store.reconcile(instance, target.current_revision(), target.manifest())
        store.begin_apply(instance, revision)          # pending marker, before the target
        target.apply(revision, desired, secrets)       # all or nothing
        store.finish_apply(instance, revision, inventory, summary, trigger)

If the process dies after ``begin_apply``, the next ``reconcile`` finds the marker: when the
target holds the pending revision it completes the record, otherwise it drops the marker and
records the attempt as interrupted. Either way store and target agree again. An apply that
changed only some namespaces is recorded with ``finish_apply_delta``, which writes the rows
that changed without reading the inventory. An apply written tenant by tenant stages each
tenant's rows as it goes (``stage``, in a temporary table of this connection) and
``finish_apply_staged`` swaps them in, in one transaction, so that no process holds the
inventory of a large instance whole.

No secret value is ever passed to this module: inventories hold keyed hashes for secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from headwater import heap
from headwater.errors import StateError
from headwater.resources import ResourceKey

Action = Literal["apply", "rollback"]
Outcome = Literal["pending", "applied", "failed"]
Reconciled = Literal["clean", "completed", "dropped", "diverged"]

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE instances (
            name TEXT PRIMARY KEY,
            applied_revision TEXT,
            applied_at REAL,
            attempted_revision TEXT,
            attempted_at REAL,
            outcome TEXT,
            errors TEXT NOT NULL DEFAULT '[]'
        )""",
        """CREATE TABLE pending (
            instance TEXT PRIMARY KEY,
            revision TEXT NOT NULL,
            started_at REAL NOT NULL,
            action TEXT NOT NULL,
            trigger TEXT NOT NULL,
            summary TEXT NOT NULL
        )""",
        """CREATE TABLE inventory (
            instance TEXT NOT NULL,
            tenant TEXT NOT NULL,
            namespace TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (instance, tenant, namespace, kind, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            instance TEXT NOT NULL,
            revision TEXT NOT NULL,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            summary TEXT NOT NULL,
            trigger TEXT NOT NULL
        )""",
        "CREATE INDEX history_by_instance ON history (instance, id)",
        """CREATE TABLE locks (
            instance TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            token TEXT NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            process_start TEXT,
            acquired_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ),
    (
        # The target folder ``current`` pointed at when the pending apply began: if it still
        # does, the apply never took effect, even when it was of the revision already there.
        "ALTER TABLE pending ADD COLUMN base TEXT",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux), to tell a live holder from a reused pid."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class InstanceState:
    """What the store knows about one instance; every field empty for an unknown one."""

    instance: str
    applied_revision: str | None = None
    applied_at: datetime | None = None
    attempted_revision: str | None = None
    attempted_at: datetime | None = None
    outcome: Outcome | None = None
    errors: tuple[dict[str, Any], ...] = ()
    pending_revision: str | None = None
    pending_since: datetime | None = None


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    instance: str
    revision: str
    at: datetime
    action: Action
    summary: dict[str, Any]
    trigger: str


@dataclass(frozen=True)
class LockHolder:
    instance: str
    owner: str
    pid: int
    host: str
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return f"{self.owner} (pid {self.pid} on {self.host}, until {self.expires_at:%H:%M:%S}Z)"


class LockLost(StateError):
    """A held lock expired and another process took it over."""


@dataclass
class Lock:
    """A held instance lock; ``refresh`` extends it during a long apply."""

    store: StateStore = field(repr=False)
    instance: str
    owner: str
    token: str = field(repr=False)

    def refresh(self, ttl: float) -> None:
        """Extend the lock; StateError if it was lost (expired and taken over)."""
        with self.store._tx() as db:
            cur = db.execute(
                "UPDATE locks SET expires_at = ? WHERE instance = ? AND token = ?",
                (self.store._clock() + ttl, self.instance, self.token),
            )
            if cur.rowcount != 1:
                raise LockLost(
                    f"the lock on instance {self.instance} was lost",
                    hint="it expired while this apply ran (or waited for a confirmation) and another"
                    " process took it over; nothing more was written: plan and apply again",
                )


class StateStore:
    """The SQLite state store; one per state directory, safe to share between threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._mutex = threading.RLock()
        self._host = socket.gethostname()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise StateError(
                f"cannot open the state store {self.path}: {e}",
                hint="check that the state directory exists and is writable",
            ) from e
        self._db = db
        try:
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(
                    f"the state store {self.path} cannot use write-ahead logging",
                    hint="put the state directory on a local file system",
                )
            db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            db.close()
            raise StateError(
                f"the state store {self.path} is unusable: {e}",
                hint="restore it from a backup, or move it away to start afresh",
            ) from e
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; writers take the write lock at once (BEGIN IMMEDIATE)."""
        with self._mutex:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StateError(
                    f"the state store {self.path} is unavailable: {e}",
                    hint="another process may hold it for too long; retry",
                ) from e
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StateError(f"state store {self.path}: {e}") from e
                raise

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state store {self.path} has schema v{version}; "
                    f"this Headwater knows v{SCHEMA_VERSION}",
                    hint="upgrade Headwater, or use another state directory",
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- reading ---------------------------------------------------------------------------

    def instances(self) -> list[str]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT name FROM instances UNION SELECT instance FROM pending ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def get(self, instance: str) -> InstanceState:
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT applied_revision, applied_at, attempted_revision, attempted_at, outcome,"
                " errors FROM instances WHERE name = ?",
                (instance,),
            ).fetchone()
            pending = db.execute(
                "SELECT revision, started_at FROM pending WHERE instance = ?", (instance,)
            ).fetchone()
        state = InstanceState(instance)
        if row is not None:
            state = InstanceState(
                instance,
                row[0],
                _when(row[1]),
                row[2],
                _when(row[3]),
                row[4],
                tuple(json.loads(row[5])),
            )
        if pending is not None:
            state = replace(state, pending_revision=pending[0], pending_since=_when(pending[1]))
        return state

    def inventory(
        self,
        instance: str,
        namespaces: Iterable[tuple[str, str]] | None = None,
        *,
        tenant: str | None = None,
    ) -> dict[ResourceKey, str]:
        """The recorded resources of ``instance`` (only those of ``namespaces``, given as
        ``(tenant, namespace)``, or of ``tenant``) and their hashes."""
        with self._tx(write=False) as db:
            if tenant is not None:
                rows = db.execute(
                    "SELECT namespace, kind, name, hash FROM inventory WHERE instance = ? AND tenant = ?",
                    (instance, tenant),
                )
                with heap.paused():
                    return {ResourceKey(tenant, n, k, name): h for n, k, name, h in rows}
            if namespaces is None:
                return self._inventory(db, instance)
            found: dict[ResourceKey, str] = {}
            for tenant, namespace in namespaces:
                rows = db.execute(
                    "SELECT kind, name, hash FROM inventory"
                    " WHERE instance = ? AND tenant = ? AND namespace = ?",
                    (instance, tenant, namespace),
                )
                found.update((ResourceKey(tenant, namespace, k, name), h) for k, name, h in rows)
            return found

    def tenants(self, instance: str) -> set[str]:
        """The tenants with recorded resources on ``instance``."""
        with self._tx(write=False) as db:
            rows = db.execute("SELECT DISTINCT tenant FROM inventory WHERE instance = ?", (instance,))
            return {t for (t,) in rows}

    def inventory_size(self, instance: str) -> int:
        with self._tx(write=False) as db:
            (count,) = db.execute(
                "SELECT count(*) FROM inventory WHERE instance = ?", (instance,)
            ).fetchone()
            return int(count)

    @staticmethod
    def _inventory(db: sqlite3.Connection, instance: str) -> dict[ResourceKey, str]:
        rows = db.execute(
            "SELECT tenant, namespace, kind, name, hash FROM inventory WHERE instance = ?",
            (instance,),
        )
        with heap.paused():
            return {ResourceKey(t, n, k, name): h for t, n, k, name, h in rows}

    def history(self, instance: str, limit: int = 50) -> list[HistoryEntry]:
        """The instance's applies and rollbacks, newest first."""
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT id, revision, at, action, summary, trigger FROM history"
                " WHERE instance = ? ORDER BY id DESC LIMIT ?",
                (instance, limit),
            ).fetchall()
        return [
            HistoryEntry(i, instance, rev, datetime.fromtimestamp(at, UTC), act, json.loads(s), t)
            for i, rev, at, act, s, t in rows
        ]

    def lock_holder(self, instance: str) -> LockHolder | None:
        """Who holds the instance's lock, if anyone does (a stale holder included)."""
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT owner, pid, host, acquired_at, expires_at FROM locks WHERE instance = ?",
                (instance,),
            ).fetchone()
        if row is None:
            return None
        owner, pid, host, acquired, expires = row
        return LockHolder(
            instance, owner, pid, host, datetime.fromtimestamp(acquired, UTC),
            datetime.fromtimestamp(expires, UTC),
        )  # fmt: skip

    # -- applying --------------------------------------------------------------------------

    def begin_apply(
        self,
        instance: str,
        revision: str,
        *,
        action: Action = "apply",
        trigger: str = "",
        summary: Mapping[str, Any] | None = None,
        base: str | None = None,
    ) -> None:
        """Mark an apply as under way; call before the target is touched. ``base``: what the
        target's ``current`` points at now (see ``reconcile``).

        Refused while an earlier apply is still pending: ``reconcile`` it first.
        """
        now = self._clock()
        with self._tx() as db:
            pending = db.execute(
                "SELECT revision FROM pending WHERE instance = ?", (instance,)
            ).fetchone()
            if pending is not None:
                raise StateError(
                    f"an apply of {pending[0][:12]} to {instance} did not finish",
                    hint="reconcile the instance with its target first",
                )
            db.execute(
                "INSERT INTO pending (instance, revision, started_at, action, trigger, summary, base)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (instance, revision, now, action, trigger, self._json(summary or {}), base),
            )
            self._attempt(db, instance, revision, now, "pending", [])

    def finish_apply(
        self,
        instance: str,
        revision: str,
        inventory: Mapping[ResourceKey, str],
        summary: Mapping[str, Any],
        trigger: str,
        action: Action = "apply",
    ) -> int:
        """Record a successful apply in one transaction; returns its history id."""
        with self._tx() as db:
            self._check_pending(db, instance, revision)
            changes = self._changes(db, instance, inventory)
            return self._complete(db, instance, revision, changes, summary, trigger, action)

    def finish_apply_delta(
        self,
        instance: str,
        revision: str,
        changes: Mapping[ResourceKey, str | None],
        summary: Mapping[str, Any],
        trigger: str,
        action: Action = "apply",
    ) -> int:
        """``finish_apply`` for an apply that changed only some resources: ``changes`` maps
        each changed key to its new hash, or None when it was deleted; the other rows of the
        inventory stay as they are and are not read."""
        with self._tx() as db:
            self._check_pending(db, instance, revision)
            return self._complete(db, instance, revision, changes, summary, trigger, action)

    def stage(self, instance: str, tenant: str, inventory: Mapping[ResourceKey, str]) -> None:
        """Stage ``inventory`` as the whole recorded inventory of ``tenant`` on ``instance``,
        for ``finish_apply_staged``; staged again, it replaces what was staged for the tenant.
        Staged rows live in this connection only: a crash drops them with the apply."""
        strays = [k for k in inventory if k.tenant != tenant]
        if strays:
            raise ValueError(f"staging tenant {tenant!r} of {instance}: {strays[0]} is another tenant's")
        with self._tx() as db:
            self._staging(db)
            db.execute("DELETE FROM temp.staged WHERE instance = ? AND tenant = ?", (instance, tenant))
            db.execute("INSERT OR IGNORE INTO temp.staged_tenants VALUES (?, ?)", (instance, tenant))
            db.executemany(
                "INSERT INTO temp.staged VALUES (?, ?, ?, ?, ?, ?)",
                ((instance, k.tenant, k.namespace, k.kind, k.name, h) for k, h in inventory.items()),
            )

    def unstage(self, instance: str) -> None:
        """Drop what was staged for ``instance``."""
        with self._tx() as db:
            self._staging(db)
            db.execute("DELETE FROM temp.staged WHERE instance = ?", (instance,))
            db.execute("DELETE FROM temp.staged_tenants WHERE instance = ?", (instance,))

    def finish_apply_staged(
        self,
        instance: str,
        revision: str,
        summary: Mapping[str, Any],
        trigger: str,
        action: Action = "apply",
    ) -> int:
        """``finish_apply`` for an apply whose inventory was staged tenant by tenant
        (``stage``): each staged tenant's recorded rows are replaced by its staged ones; the
        other tenants' rows stay as they are. One transaction; the staging is emptied."""
        with self._tx() as db:
            self._check_pending(db, instance, revision)
            self._staging(db)
            db.execute(
                "DELETE FROM inventory WHERE instance = ? AND tenant IN"
                " (SELECT tenant FROM temp.staged_tenants WHERE instance = ?)",
                (instance, instance),
            )
            db.execute(
                "INSERT INTO inventory (instance, tenant, namespace, kind, name, hash)"
                " SELECT instance, tenant, namespace, kind, name, hash FROM temp.staged WHERE instance = ?",
                (instance,),
            )
            db.execute("DELETE FROM temp.staged WHERE instance = ?", (instance,))
            db.execute("DELETE FROM temp.staged_tenants WHERE instance = ?", (instance,))
            return self._complete(db, instance, revision, {}, summary, trigger, action)

    @staticmethod
    def _staging(db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged (instance TEXT NOT NULL, tenant TEXT NOT NULL,"
            " namespace TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL,"
            " PRIMARY KEY (instance, tenant, namespace, kind, name)) WITHOUT ROWID"
        )
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged_tenants (instance TEXT NOT NULL, tenant TEXT NOT NULL,"
            " PRIMARY KEY (instance, tenant))"
        )

    @staticmethod
    def _check_pending(db: sqlite3.Connection, instance: str, revision: str) -> None:
        pending = db.execute(
            "SELECT revision FROM pending WHERE instance = ?", (instance,)
        ).fetchone()
        if pending is not None and pending[0] != revision:
            raise StateError(
                f"{instance}: finishing {revision[:12]} but {pending[0][:12]} is pending",
                hint="reconcile the instance with its target first",
            )

    def record_failure(self, instance: str, revision: str, errors: list[dict[str, Any]]) -> None:
        """Record a failed attempt (errors are plain diagnostic dicts, never secret values).

        Clears the pending marker of that revision: a target's apply is all or nothing, so
        after it failed the target still holds what it held before.
        """
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "DELETE FROM pending WHERE instance = ? AND revision = ?", (instance, revision)
            )
            self._attempt(db, instance, revision, now, "failed", errors)

    def reconcile(
        self,
        instance: str,
        target_revision: str | None,
        inventory: Mapping[ResourceKey, str] | Callable[[], Mapping[ResourceKey, str]] | None = None,
        *,
        current: str | None = None,
    ) -> Reconciled:
        """Make the store agree with the target after a crash.

        - ``clean``: nothing pending and the store agrees with the target;
        - ``completed``: the pending apply reached the target; recorded from ``inventory``
          (the target's manifest of that revision — required in this case; a function
          returning it is called only then, for it may be large);
        - ``dropped``: the pending apply never reached the target; recorded as interrupted
          (also when the target is at its revision but ``current``, what the target's
          ``current`` points at, is what it pointed at when the apply began: a re-apply of
          the revision already there that did not take effect);
        - ``diverged``: nothing pending, yet the target is not at the applied revision
          (changed outside Headwater); nothing is changed, the caller decides.
        """
        now = self._clock()
        with self._tx() as db:
            pending = db.execute(
                "SELECT revision, action, trigger, summary, base FROM pending WHERE instance = ?",
                (instance,),
            ).fetchone()
            if pending is None:
                row = db.execute(
                    "SELECT applied_revision FROM instances WHERE name = ?", (instance,)
                ).fetchone()
                applied = None if row is None else row[0]
                return "clean" if applied == target_revision else "diverged"
            revision, action, trigger, summary, base = pending
            if revision == target_revision and (base is None or current is None or base != current):
                if inventory is None:
                    raise StateError(
                        f"{instance}: completing the interrupted apply of {revision[:12]}"
                        " needs the target's inventory",
                        hint="pass the target's manifest to reconcile",
                    )
                recovered = {**json.loads(summary), "recovered": True}
                if callable(inventory):
                    inventory = inventory()
                changes = self._changes(db, instance, inventory)
                self._complete(db, instance, revision, changes, recovered, trigger, action)
                return "completed"
            db.execute("DELETE FROM pending WHERE instance = ?", (instance,))
            error: dict[str, Any] = {
                "path": "",
                "line": None,
                "column": None,
                "code": "interrupted",
                "severity": "error",
                "message": f"the apply of {revision[:12]} was interrupted before it took effect",
                "hint": "it is retried with the next sync",
                "related": [],
            }
            self._attempt(db, instance, revision, now, "failed", [error])
            return "dropped"

    def _complete(
        self,
        db: sqlite3.Connection,
        instance: str,
        revision: str,
        changes: Mapping[ResourceKey, str | None],
        summary: Mapping[str, Any],
        trigger: str,
        action: str,
    ) -> int:
        now = self._clock()
        self._write_changes(db, instance, changes)
        self._attempt(db, instance, revision, now, "applied", [])
        db.execute(
            "UPDATE instances SET applied_revision = ?, applied_at = ? WHERE name = ?",
            (revision, now, instance),
        )
        cur = db.execute(
            "INSERT INTO history (instance, revision, at, action, summary, trigger)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (instance, revision, now, action, self._json(summary), trigger),
        )
        db.execute("DELETE FROM pending WHERE instance = ?", (instance,))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _attempt(
        self,
        db: sqlite3.Connection,
        instance: str,
        revision: str,
        now: float,
        outcome: Outcome,
        errors: list[dict[str, Any]],
    ) -> None:
        db.execute(
            "INSERT INTO instances (name, attempted_revision, attempted_at, outcome, errors)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " attempted_revision = excluded.attempted_revision,"
            " attempted_at = excluded.attempted_at, outcome = excluded.outcome,"
            " errors = excluded.errors",
            (instance, revision, now, outcome, self._json(errors)),
        )

    def _changes(
        self, db: sqlite3.Connection, instance: str, inventory: Mapping[ResourceKey, str]
    ) -> dict[ResourceKey, str | None]:
        """The rows to write so that the inventory becomes ``inventory`` (None: delete)."""
        old = self._inventory(db, instance)
        changes: dict[ResourceKey, str | None] = dict.fromkeys(old.keys() - inventory.keys())
        changes.update((k, h) for k, h in inventory.items() if old.get(k) != h)
        return changes

    @staticmethod
    def _write_changes(
        db: sqlite3.Connection, instance: str, changes: Mapping[ResourceKey, str | None]
    ) -> None:
        """Write the given inventory rows: a hash replaces the row, None deletes it."""
        db.executemany(
            "DELETE FROM inventory"
            " WHERE instance = ? AND tenant = ? AND namespace = ? AND kind = ? AND name = ?",
            [
                (instance, k.tenant, k.namespace, k.kind, k.name)
                for k, h in changes.items()
                if h is None
            ],
        )
        db.executemany(
            "INSERT OR REPLACE INTO inventory (instance, tenant, namespace, kind, name, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (instance, k.tenant, k.namespace, k.kind, k.name, h)
                for k, h in changes.items()
                if h is not None
            ],
        )

    @staticmethod
    def _json(value: object) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    # -- locks -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, instance: str, owner: str, ttl: float = 300.0) -> Iterator[Lock]:
        """Hold the instance's lock for the block; StateError naming the holder if taken.

        A lock past its expiry, or held by a dead process on this host, is taken over.
        """
        token = secrets.token_hex(16)
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT owner, pid, host, process_start, acquired_at, expires_at"
                " FROM locks WHERE instance = ?",
                (instance,),
            ).fetchone()
            if row is not None and self._live(row[1], row[2], row[3], row[5], now):
                holder = LockHolder(
                    instance, row[0], row[1], row[2], datetime.fromtimestamp(row[4], UTC),
                    datetime.fromtimestamp(row[5], UTC),
                )  # fmt: skip
                raise StateError(
                    f"instance {instance} is locked by {holder.describe()}",
                    hint="wait for it to finish; a lock whose holder died or expired is taken"
                    " over automatically",
                )
            pid = os.getpid()
            db.execute(
                "INSERT OR REPLACE INTO locks (instance, owner, token, pid, host, process_start,"
                " acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (instance, owner, token, pid, self._host, _process_start(pid), now, now + ttl),
            )
        try:
            yield Lock(self, instance, owner, token)
        finally:
            with self._tx() as db:
                db.execute("DELETE FROM locks WHERE instance = ? AND token = ?", (instance, token))

    def _live(
        self, pid: int, host: str, started: str | None, expires_at: float, now: float
    ) -> bool:
        if expires_at <= now:
            return False
        if host != self._host:
            return True  # cannot see that process: trust the expiry
        if not _pid_alive(pid):
            return False
        return started is None or _process_start(pid) in (None, started)
