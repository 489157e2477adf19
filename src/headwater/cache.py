"""A persistent, content-addressed cache of parse and validation results.

Entries are keyed by what determines the result — the Git blob id, the path it was read at,
and the fingerprint of the code and schemas that produced it — so an unchanged file is never
parsed twice, across commits, instances and restarts. The cache is an optimisation only:
every entry carries a checksum and a torn or corrupt entry is dropped and recomputed, and a
cache that cannot be opened or written is switched off, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from headwater import __version__

log = logging.getLogger(__name__)

FORMAT = 1
_CHUNK = 500
# Rows kept per table: beyond it, the rows written longest ago go (a result needed again is
# computed and written again). About 1 KB a row: a 50k-flow repository needs some 60,000
# result rows and 150,000 blob rows; every code change writes them anew under new keys.
MAX_ROWS = 1_000_000


@cache
def code_fingerprint() -> str:
    """Changes whenever the code or data that produce cached results change."""
    digest = hashlib.sha256(f"{FORMAT}:{__version__}".encode())
    package = resources.files("headwater")
    for name in ("flows.py", "schemas.py", "yamlio.py", "kestra_types.py", "rules/flow_rules.py"):
        digest.update(package.joinpath(name).read_bytes())
    data = package.joinpath("data")
    for name in sorted(p.name for p in data.iterdir() if p.is_file()):
        digest.update(data.joinpath(name).read_bytes())
    schemas = data.joinpath("schemas")
    for name in sorted(p.name for p in schemas.iterdir() if p.name.endswith(".json")):
        digest.update(schemas.joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


@cache
def model_fingerprint() -> str:
    """Changes whenever any code of the package changes: for results, such as an instance's
    reference checks, that depend on more than the parsing and flow rules."""
    digest = hashlib.sha256(code_fingerprint().encode())
    root = Path(str(resources.files("headwater")))
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_path() -> Path:
    """``$HEADWATER_CACHE_DIR`` or ``$XDG_CACHE_HOME/headwater`` (``~/.cache/headwater``)."""
    base = os.environ.get("HEADWATER_CACHE_DIR")
    if base:
        return Path(base) / "cache.db"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "headwater" / "cache.db"


class ResultCache:
    """Results by key in SQLite; ``ResultCache(None)`` is a cache that keeps nothing.

    Several processes may share one file (two commands at once, the daemon and a CLI
    command): SQLite serialises their writes, each waiting up to ``TIMEOUT`` seconds. A
    process must not use a connection it inherited through a fork, nor open one to a file
    its parent has open (SQLite's locks are per process): the validation workers never touch
    the cache."""

    TIMEOUT = 10.0

    def __init__(self, path: str | os.PathLike[str] | None, *, max_rows: int = MAX_ROWS) -> None:
        self.path = Path(path) if path is not None else None
        self.max_rows = max_rows
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.dropped = 0
        if self.path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        for attempt in range(2):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=self.TIMEOUT, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
                    " payload BLOB NOT NULL)"
                )
                # The sha256 of a blob's content, by blob id: a plain row (no pickle) with a
                # check of its own, since a large desired state asks for 150k of them at once.
                db.execute(
                    "CREATE TABLE IF NOT EXISTS blob_hashes (oid TEXT PRIMARY KEY,"
                    " digest TEXT NOT NULL, binary INTEGER NOT NULL, checksum TEXT NOT NULL)"
                )
                db.execute("SELECT count(*) FROM entries LIMIT 1").fetchone()
                self._db = db
                return
            except (sqlite3.DatabaseError, OSError) as exc:
                with contextlib.suppress(UnboundLocalError, sqlite3.Error):
                    db.close()
                # A damaged file is replaced; one another process holds locked (an
                # OperationalError, as is a file that cannot be opened) is left alone.
                damaged = isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
                if attempt == 0 and damaged:
                    log.warning("cache %s is unusable (%s); starting a new one", self.path, exc)
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(OSError):
                            Path(f"{self.path}{suffix}").unlink()
                    continue
                log.warning("cache %s disabled: %s", self.path, exc)
                return

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_many(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` that have an entry (not read: it may still prove torn)."""
        wanted, found = list(keys), set[str]()
        with self._lock:
            if self._db is None:
                return found
            try:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = self._db.execute(f"SELECT key FROM entries WHERE key IN ({marks})", chunk)
                    found.update(row[0] for row in rows)
            except sqlite3.Error as exc:
                self._disable(exc)
        return found

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._read("entries", "key, checksum, payload", list(keys), lambda r: _decode(r[1], r[2]))

    def _read(
        self, table: str, columns: str, wanted: list[str], decode: Callable[[tuple[Any, ...]], Any]
    ) -> dict[str, Any]:
        """The rows of ``table`` whose first column (of ``columns``) is among ``wanted``, each
        through ``decode``; a row it finds torn (``_TORN``) is deleted, to be computed again."""
        found: dict[str, Any] = {}
        with self._lock:
            if self._db is None:
                self.misses += len(wanted)
                return found
            key = columns.split(",")[0]
            torn: list[str] = []
            try:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = self._db.execute(
                        f"SELECT {columns} FROM {table} WHERE {key} IN ({marks})", chunk
                    ).fetchall()
                    for row in rows:
                        value = decode(row)
                        if value is _TORN:
                            torn.append(row[0])
                        else:
                            found[row[0]] = value
                if torn:
                    self.dropped += len(torn)
                    self._db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k in torn])
                    self._db.commit()
            except sqlite3.Error as exc:
                self._disable(exc)
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        if not items:
            return
        with self._lock:
            if self._db is None:
                return
            rows = []
            for key, value in items.items():
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                rows.append((key, hashlib.sha256(payload).hexdigest(), payload))
            try:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO entries (key, checksum, payload) VALUES (?, ?, ?)", rows
                    )
                    self._evict("entries")
            except sqlite3.Error as exc:
                self._disable(exc)

    def blob_hashes(self, oids: Iterable[str]) -> dict[str, tuple[str, bool]]:
        """The remembered ``(sha256 digest, binary)`` of the blobs among ``oids``."""
        return self._read("blob_hashes", "oid, digest, binary, checksum", list(oids), _decode_blob)

    def put_blob_hashes(self, items: Mapping[str, tuple[str, bool]]) -> None:
        if not items:
            return
        rows = [
            (oid, digest, int(binary), _blob_check(oid, digest, int(binary)))
            for oid, (digest, binary) in items.items()
        ]
        with self._lock:
            if self._db is None:
                return
            try:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO blob_hashes (oid, digest, binary, checksum)"
                        " VALUES (?, ?, ?, ?)", rows
                    )
                    self._evict("blob_hashes")
            except sqlite3.Error as exc:
                self._disable(exc)

    def _evict(self, table: str) -> None:
        """Keep the ``max_rows`` rows of ``table`` written last (a replaced row is a new one,
        with the next rowid), by rowid range: two lookups of the rowid index, and a range
        delete once in a while. Within the caller's transaction."""
        assert self._db is not None
        low, high = self._db.execute(_BOUNDS.format(table=table)).fetchone()
        if low is not None and high - low >= self.max_rows:
            # down to nine tenths, so that this is not done again at the next write
            keep = max(1, self.max_rows * 9 // 10)
            self._db.execute(f"DELETE FROM {table} WHERE rowid <= ?", (high - keep,))

    def _disable(self, exc: Exception) -> None:
        log.warning("cache %s disabled: %s", self.path, exc)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None


_TORN = object()
# Two subqueries, each one lookup of the rowid index: a single SELECT of both min() and max()
# scans the whole table (44 ms on 145k rows, at every write).
_BOUNDS = "SELECT (SELECT min(rowid) FROM {table}), (SELECT max(rowid) FROM {table})"


def _decode(checksum: str, payload: bytes) -> Any:
    if hashlib.sha256(payload).hexdigest() != checksum:
        return _TORN
    try:
        return pickle.loads(payload)
    except Exception:  # a torn or foreign entry; recomputed by the caller
        return _TORN


def _decode_blob(row: tuple[Any, ...]) -> Any:
    oid, digest, binary, checksum = row
    if isinstance(digest, str) and checksum == _blob_check(oid, digest, binary):
        return digest, bool(binary)
    return _TORN


def _blob_check(oid: object, digest: object, binary: object) -> str:
    return hashlib.blake2b(f"{FORMAT}:{oid}:{digest}:{binary}".encode(), digest_size=8).hexdigest()


def key(*parts: str) -> str:
    return hashlib.sha256("\0".join((code_fingerprint(), *parts)).encode()).hexdigest()
