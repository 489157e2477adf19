"""The embedded default target: an instance directory of materialised revisions.

Layout, all inside the instance directory::

    current  -> revisions/<dir>          the published revision, swapped atomically
    previous -> revisions/<dir>          what ``current`` pointed to before the last swap
    .lock                                flock: one writer (apply, activate, cleanup) at a time
    objects/<hh>/<sha256 hex>            content-addressed store, 0444, hard-linked into revisions
    revisions/<sha>/                     one applied commit (``<sha>.<n>`` when re-materialised)
        .revision.json                   {"format", "revision", "seq", "created"}
        .manifest.json                   every resource key -> hash; the stat of every file
        <tenant>/<namespace>/flows/<flow id>.yaml
        <tenant>/<namespace>/files/<path>
        <tenant>/<namespace>/config.json
        <tenant>/<namespace>/kv.json
        <tenant>/<namespace>/secrets.env  0600, SECRET_<NAME>=<base64>; never in objects/
    revisions/.tmp-*, objects/.tmp-*, current.tmp-*, previous.tmp-*
                                         work in progress; debris after a crash, removed later

A revision is built complete under ``revisions/.tmp-…``, renamed into place, then published
by replacing the ``current`` symlink (git-sync's technique), so a reader never sees a
half-applied commit and a crash at any instant leaves ``current`` at the old or the new one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import os
import posixpath
import re
import secrets as _random
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headwater.errors import TargetError
from headwater.resources import (
    Kind,
    Resource,
    ResourceKey,
    State,
    content_hash,
    is_binary,
    secret_hash,
)
from headwater.targets.base import SecretValues

FORMAT = 1
MANIFEST = ".manifest.json"
REVISION_META = ".revision.json"
_REVISION_RE = re.compile(r"[0-9A-Za-z_-]{1,128}\Z")
_DIR_RE = re.compile(r"([0-9A-Za-z_-]{1,128})(?:\.([1-9][0-9]{0,8}))?\Z")
_SECRET_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
_OBJECT_KINDS = ("flow", "file", "config")
_SYNC_BATCH = 256  # above this many files and directories to flush, one sync() is cheaper
_HINT_NAME = "rename it in the repository; names must stay inside their namespace folder"


# -- what one revision holds --------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One resource of a revision, as recorded in its manifest."""

    key: ResourceKey
    hash: str
    path: str  # relative to the revision directory
    binary: bool = False
    canonical: str = ""  # kv only: hash of the value's canonical JSON

    def to_json(self) -> dict[str, Any]:
        k = self.key
        row: dict[str, Any] = {
            "tenant": k.tenant,
            "namespace": k.namespace,
            "kind": k.kind,
            "name": k.name,
            "hash": self.hash,
            "path": self.path,
        }
        if self.binary:
            row["binary"] = True
        if self.canonical:
            row["canonical"] = self.canonical
        return row


@dataclass(frozen=True)
class _FileRecord:
    """The stat of one file when it was materialised; hash is None for secrets.env."""

    hash: str | None
    size: int
    mtime_ns: int
    ino: int
    mode: int

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ino) and (
            self.hash is not None or stat.S_IMODE(st.st_mode) == self.mode
        )

    @classmethod
    def of(cls, digest: str | None, st: os.stat_result) -> _FileRecord:
        return cls(digest, st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode))


@dataclass(frozen=True)
class _Manifest:
    revision: str
    rows: tuple[_Row, ...]
    files: dict[str, _FileRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "revision": self.revision,
            "resources": [r.to_json() for r in self.rows],
            "files": {
                p: [f.hash, f.size, f.mtime_ns, f.ino, f.mode]
                for p, f in sorted(self.files.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> _Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("unknown manifest format")
        rows = tuple(
            _Row(
                ResourceKey(r["tenant"], r["namespace"], r["kind"], r["name"]),
                r["hash"],
                r["path"],
                bool(r.get("binary", False)),
                r.get("canonical", ""),
            )
            for r in data["resources"]
        )
        files = {p: _FileRecord(*v) for p, v in data["files"].items()}
        return cls(str(data["revision"]), rows, files)


@dataclass
class _Build:
    """A desired state turned into files, checked before the disk is touched."""

    rows: list[_Row] = field(default_factory=list)
    objects: dict[str, str] = field(default_factory=dict)  # path -> digest
    contents: dict[str, bytes] = field(default_factory=dict)  # digest -> content
    secret_files: dict[str, bytes] = field(default_factory=dict)  # path -> secrets.env bytes


# -- names and encodings ------------------------------------------------------------------


def _segment(value: str, what: str) -> str:
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\x00" in value
        or len(value.encode("utf-8", "surrogatepass")) > 255
    ):
        raise TargetError(f"unsafe {what} name {value!r}", hint=_HINT_NAME)
    return value


def _relative(value: str, what: str) -> str:
    if not value or value.startswith("/") or posixpath.normpath(value) != value:
        raise TargetError(f"unsafe {what} path {value!r}", hint=_HINT_NAME)
    for part in value.split("/"):
        _segment(part, what)
    return value


def _namespace_dir(key: ResourceKey) -> str:
    _segment(key.tenant, "tenant")
    if key.tenant.startswith("."):
        raise TargetError(f"unsafe tenant name {key.tenant!r}", hint=_HINT_NAME)
    return f"{key.tenant}/{_segment(key.namespace, 'namespace')}"


def _path_of(key: ResourceKey) -> str:
    """Where a resource lives inside a revision directory; TargetError for unsafe names."""
    ns = _namespace_dir(key)
    if key.kind == "flow":
        return f"{ns}/flows/{_segment(key.name, 'flow')}.yaml"
    if key.kind == "file":
        return f"{ns}/files/{_relative(key.name, 'file')}"
    if key.kind == "config":
        if key.name != "config":
            raise TargetError(f"{key}: a namespace config resource must be named 'config'")
        return f"{ns}/config.json"
    if key.kind == "kv":
        if "\x00" in key.name or not key.name:
            raise TargetError(f"unsafe kv name {key.name!r}", hint=_HINT_NAME)
        return f"{ns}/kv.json"
    if key.kind == "secret":
        if not _SECRET_NAME_RE.match(key.name):
            raise TargetError(
                f"secret name {key.name!r} cannot be written as SECRET_<NAME>",
                hint="use letters, digits and underscores, not starting with a digit",
            )
        return f"{ns}/secrets.env"
    raise TargetError(f"{key}: unknown resource kind {key.kind!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def _canonical(value: Any) -> bytes:
    """The canonical JSON of a kv value: what ``read`` returns and changed values hash to."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_revision(revision: str) -> str:
    if not _REVISION_RE.match(revision):
        raise TargetError(
            f"invalid revision {revision!r}",
            hint="a revision is a commit id: letters, digits, '-' and '_'",
        )
    return revision


# -- file system helpers ------------------------------------------------------------------


def _now_second_ago_ns() -> int:
    # Materialised files get an mtime a whole second in the past, so any later in-place edit
    # (whose mtime is "now", at the kernel's coarse granularity) always differs from it.
    return (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000


def _write_new(path: Path, content: bytes, mode: int, mtime_ns: int) -> os.stat_result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        return os.fstat(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_under(base: Path, rel: str) -> bytes | None:
    """Read ``base/rel`` without following any symlink below ``base``; None if not a file."""
    parts = rel.split("/")
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        for part in parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = sub
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        with os.fdopen(leaf, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
            return None
        raise
    finally:
        os.close(fd)


def _walk(base: Path) -> dict[str, os.stat_result]:
    """Every regular file below ``base`` (symlinks are not followed) -> its lstat."""
    found: dict[str, os.stat_result] = {}
    stack = [("", base)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    found[rel] = entry.stat(follow_symlinks=False)
    return found


def _kv_values(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = _parse_json(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _secret_lines(data: bytes) -> dict[str, str] | None:
    """secrets.env -> name -> base64 text (never decoded here); None if unreadable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("SECRET_"):
            found[name.removeprefix("SECRET_")] = value.strip()
    return found


def _classify(path: str) -> tuple[str, str, Kind, str] | None:
    """A revision-relative path -> (tenant, namespace, kind, name) of what it holds."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0].startswith("."):
        return None
    tenant, namespace, rest = parts[0], parts[1], parts[2:]
    if rest[0] == "flows" and len(rest) == 2 and rest[1].endswith(".yaml") and rest[1] != ".yaml":
        return tenant, namespace, "flow", rest[1].removesuffix(".yaml")
    if rest[0] == "files" and len(rest) >= 2:
        return tenant, namespace, "file", "/".join(rest[1:])
    if rest == ["config.json"]:
        return tenant, namespace, "config", "config"
    if rest == ["kv.json"]:
        return tenant, namespace, "kv", ""
    if rest == ["secrets.env"]:
        return tenant, namespace, "secret", ""
    return None


# -- the target ---------------------------------------------------------------------------


class LocalTarget:
    """An instance directory; see the module docstring for its layout.

    ``keep``: how many materialised revisions to keep (the current and the previous one are
    always kept on top). ``secret_hash_key``: the keyed-hash key, so that a hand edit of a
    secrets.env shows as drift of its values; without it only added or removed entries show.
    ``durable``: fsync what an apply wrote before publishing it (turn off only for tests and
    benchmarks). ``lock_timeout``: how long an apply waits for another writer to finish.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep: int = 5,
        secret_hash_key: bytes | None = None,
        durable: bool = True,
        lock_timeout: float = 30.0,
    ) -> None:
        if keep < 1:
            raise TargetError(f"keep must be at least 1, not {keep}")
        self.root = Path(root)
        self.keep = keep
        self.durable = durable
        self.lock_timeout = lock_timeout
        self._hash_key = secret_hash_key
        self._manifests: dict[str, tuple[tuple[int, int], _Manifest]] = {}
        if self.root.is_dir():
            # Leftovers of a crash are removed on open, unless a writer is at work right now.
            with contextlib.suppress(OSError), self._exclusive(wait=0.0) as locked:
                if locked and self._remove_debris():
                    self._collect_garbage()

    @property
    def revisions_dir(self) -> Path:
        return self.root / "revisions"

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    # -- reading ---------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        d = self._current_dir()
        return None if d is None else self._revision_of(d)

    def current_path(self) -> Path | None:
        """The directory ``current`` points at, or None when nothing is published."""
        d = self._current_dir()
        return None if d is None else self.revisions_dir / d

    def revisions(self) -> list[str]:
        seen: list[str] = []
        for _, d in self._complete_dirs():
            rev = self._revision_of(d)
            if rev not in seen:
                seen.append(rev)
        return seen

    def manifest(self, revision: str | None = None) -> dict[ResourceKey, str]:
        """What a materialised revision (default: the current one) was applied with: key ->
        hash. The state store completes an interrupted apply from this."""
        d = self._current_dir() if revision is None else self._newest_dir(revision)
        if d is None:
            return {}
        try:
            return {r.key: r.hash for r in self._manifest(d).rows}
        except FileNotFoundError:
            raise self._no_manifest(d) from None
        except OSError as e:
            raise TargetError(f"cannot read the manifest of {d}: {e.strerror}") from e

    def _no_manifest(self, dirname: str) -> TargetError:
        return TargetError(
            f"revision {dirname} in {self.root} has lost its manifest",
            hint="apply the revision again from Git",
        )

    def inventory(self) -> State:
        for _ in range(3):
            d = self._current_dir()
            if d is None:
                return {}
            try:
                return self._inventory_of(d)
            except FileNotFoundError:
                if self._current_dir() == d and not (self.revisions_dir / d / MANIFEST).exists():
                    raise self._no_manifest(d) from None
                continue  # pruned by a concurrent apply while we read it: read the new one
            except OSError as e:
                raise TargetError(
                    f"cannot read instance {self.root}: {e.strerror}",
                    hint="check the permissions of the instance directory",
                ) from e
        raise TargetError(f"instance {self.root} kept changing while it was read", hint="retry")

    def read(self, key: ResourceKey) -> bytes | None:
        d = self._current_dir()
        if d is None or key.kind == "secret":
            return None
        try:
            path = _path_of(key)
        except TargetError:
            return None
        try:
            data = _read_under(self.revisions_dir / d, path)
        except OSError as e:
            raise TargetError(f"cannot read {key} in {self.root}: {e.strerror}") from e
        if key.kind != "kv" or data is None:
            return data
        values = _kv_values(data)
        if values is None or key.name not in values:
            return None
        return _canonical(values[key.name])

    # -- writing ---------------------------------------------------------------------------

    def apply(
        self, revision: str, desired: Mapping[ResourceKey, Resource], secrets: SecretValues
    ) -> None:
        _check_revision(revision)
        build = self._prepare(desired, secrets)
        self._ensure_dirs()
        with self._exclusive(wait=self.lock_timeout) as locked:
            if not locked:
                raise TargetError(
                    f"instance {self.root} is being written by another process",
                    hint="wait for the other apply to finish, then retry",
                )
            self._remove_debris()
            try:
                final = self._materialise(revision, build)
                self._publish(final)
            except OSError as e:
                raise TargetError(
                    f"cannot apply {revision[:12]} to {self.root}: {e.strerror or e}",
                    hint="the instance is unchanged; check free space and permissions",
                ) from e
            self._prune()

    def activate(self, revision: str) -> None:
        _check_revision(revision)
        self._ensure_dirs()
        with self._exclusive(wait=self.lock_timeout) as locked:
            if not locked:
                raise TargetError(
                    f"instance {self.root} is being written by another process",
                    hint="wait for the other apply to finish, then retry",
                )
            d = self._newest_dir(revision)
            if d is None:
                raise TargetError(
                    f"revision {revision[:12]} is no longer materialised in {self.root}",
                    hint="apply it from Git instead",
                )
            if d == self._current_dir():
                return
            changed = self._modified_files(d)
            if changed:
                raise TargetError(
                    f"revision {revision[:12]} was modified on disk ({changed[0]})",
                    hint="apply it from Git instead",
                )
            try:
                self._publish(d)
            except OSError as e:
                raise TargetError(f"cannot activate {revision[:12]}: {e.strerror}") from e

    # -- internals: building a revision ----------------------------------------------------

    def _prepare(self, desired: Mapping[ResourceKey, Resource], secrets: SecretValues) -> _Build:
        build = _Build()
        kv: dict[str, dict[str, Any]] = {}
        env: dict[str, dict[str, str]] = {}
        for key in sorted(desired):
            res = desired[key]
            if res.key != key:
                raise TargetError(f"desired state lists {res.key} under {key}")
            path = _path_of(key)
            if key.kind == "secret":
                value = secrets.get((key.tenant, key.namespace), {}).get(key.name)
                if value is None:
                    raise TargetError(
                        f"no value for secret {key.name} of {key.tenant}/{key.namespace}",
                        hint="set it in the secret provider, or remove the reference",
                    )
                encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
                env.setdefault(path, {})[key.name] = encoded
                build.rows.append(_Row(key, res.hash, path))
                continue
            if res.content is None:
                raise TargetError(f"{key} has no content to apply")
            if content_hash(res.content) != res.hash:
                raise TargetError(f"{key}: content does not match its hash {res.hash}")
            if key.kind == "kv":
                try:
                    value = _parse_json(res.content)
                except ValueError as e:
                    raise TargetError(
                        f"kv {key}: content is not JSON",
                        hint="a kv resource holds the JSON of its value",
                    ) from e
                kv.setdefault(path, {})[key.name] = value
                build.rows.append(
                    _Row(key, res.hash, path, canonical=content_hash(_canonical(value)))
                )
                continue
            self._add_object(build, path, res.content)
            build.rows.append(_Row(key, res.hash, path, is_binary(res.content)))
        for path, values in kv.items():
            text = json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            self._add_object(build, path, text.encode("utf-8"))
        for path, entries in env.items():
            lines = "".join(f"SECRET_{n}={v}\n" for n, v in sorted(entries.items()))
            build.secret_files[path] = lines.encode("ascii")
        paths = [*build.objects, *build.secret_files]
        folders = set()
        for p in paths:
            parent = posixpath.dirname(p)
            while parent and parent not in folders:
                folders.add(parent)
                parent = posixpath.dirname(parent)
        for p in paths:
            if p in folders:
                raise TargetError(
                    f"{p} is both a file and a folder in this revision", hint=_HINT_NAME
                )
        return build

    @staticmethod
    def _add_object(build: _Build, path: str, content: bytes) -> None:
        digest = content_hash(content)
        build.objects[path] = digest
        build.contents.setdefault(digest, content)

    def _object_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.objects_dir / hexd[:2] / hexd

    def _recorded_objects(self) -> dict[str, _FileRecord]:
        """Object stats recorded by the current and previous revisions, by digest."""
        known: dict[str, _FileRecord] = {}
        for name in ("previous", "current"):
            d = self._link_dir(name)
            if d is None:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                for rec in self._manifest(d).files.values():
                    if rec.hash is not None:
                        known[rec.hash] = rec
        return known

    def _usable_object(
        self, digest: str, content: bytes, known: dict[str, _FileRecord]
    ) -> os.stat_result | None:
        """The stat of a stored object if it still holds ``content``, else None.

        Objects are shared by hard links, so an in-place edit of a file in any revision edits
        the object: verify before sharing it again (stat as recorded, or rehash).
        """
        path = self._object_path(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                path.unlink()
            return None
        rec = known.get(digest)
        if rec is not None and rec.matches(st):
            return st
        if st.st_size == len(content) and path.read_bytes() == content:
            return st
        return None

    def _materialise(self, revision: str, build: _Build) -> str:
        known = self._recorded_objects()
        mtime = _now_second_ago_ns()
        stats: dict[str, os.stat_result] = {}
        fresh: list[tuple[str, Path]] = []
        for digest, content in build.contents.items():
            st = self._usable_object(digest, content, known)
            if st is not None:
                stats[digest] = st
                continue
            tmp = self.objects_dir / f".tmp-{_random.token_hex(8)}"
            _write_new(tmp, content, 0o444, mtime)
            fresh.append((digest, tmp))
        self._sync([tmp for _, tmp in fresh])
        object_dirs: set[Path] = set()
        for digest, tmp in fresh:
            final = self._object_path(digest)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            stats[digest] = os.lstat(final)
            object_dirs.add(final.parent)

        work = self.revisions_dir / f".tmp-{revision}-{_random.token_hex(8)}"
        work.mkdir()
        try:
            return self._fill(work, revision, build, stats, mtime, object_dirs)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _fill(
        self,
        work: Path,
        revision: str,
        build: _Build,
        stats: dict[str, os.stat_result],
        mtime: int,
        object_dirs: set[Path],
    ) -> str:
        folders: set[Path] = {work}
        written: list[Path] = []
        files: dict[str, _FileRecord] = {}

        def folder_for(path: Path) -> None:
            parent = path.parent
            if parent not in folders:
                parent.mkdir(parents=True, exist_ok=True)
                while parent not in folders:
                    folders.add(parent)
                    parent = parent.parent

        for rel, digest in build.objects.items():
            dest = work / rel
            folder_for(dest)
            try:
                os.link(self._object_path(digest), dest)
                st = stats[digest]
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                st = _write_new(dest, build.contents[digest], 0o444, mtime)
                written.append(dest)
            files[rel] = _FileRecord.of(digest, st)
        for rel, data in build.secret_files.items():
            dest = work / rel
            folder_for(dest)
            files[rel] = _FileRecord.of(None, _write_new(dest, data, 0o600, mtime))
            written.append(dest)

        manifest = _Manifest(revision, tuple(build.rows), files)
        seq = max((s for s, _ in self._complete_dirs()), default=0) + 1
        meta = {
            "format": FORMAT,
            "revision": revision,
            "seq": seq,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for name, record in ((MANIFEST, manifest.to_json()), (REVISION_META, meta)):
            text = json.dumps(record, separators=(",", ":"), sort_keys=True)
            _write_new(work / name, text.encode("utf-8"), 0o444, time.time_ns())
            written.append(work / name)
        self._sync([*written, *sorted(folders, reverse=True), *object_dirs])

        final = revision
        n = 0
        while (self.revisions_dir / final).exists() or (self.revisions_dir / final).is_symlink():
            n += 1
            final = f"{revision}.{n}"
        os.rename(work, self.revisions_dir / final)
        self._sync([self.revisions_dir])
        return final

    def _publish(self, dirname: str) -> None:
        """Point ``current`` at a complete revision: one atomic rename of a symlink."""
        target = f"revisions/{dirname}"
        old = self._link_dir("current")
        if old is not None and old != dirname:
            self._swap_link("previous", f"revisions/{old}")
        self._swap_link("current", target)
        with contextlib.suppress(OSError):
            # The swap happened; a failing directory fsync must not make it look undone.
            self._sync([self.root])

    def _swap_link(self, name: str, target: str) -> None:
        tmp = self.root / f"{name}.tmp-{_random.token_hex(8)}"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, self.root / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _sync(self, paths: list[Path]) -> None:
        if not self.durable or not paths:
            return
        if len(paths) > _SYNC_BATCH:
            os.sync()
            return
        for p in paths:
            _fsync_path(p)

    # -- internals: housekeeping -----------------------------------------------------------

    def _ensure_dirs(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.revisions_dir.mkdir(exist_ok=True)
            self.objects_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise TargetError(
                f"cannot create instance directory {self.root}: {e.strerror}",
                hint="check that the path is a writable directory",
            ) from e

    @contextlib.contextmanager
    def _exclusive(self, wait: float) -> Iterator[bool]:
        """Hold the instance's writer lock (flock, released by the kernel if we die)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.02)
            yield True
        finally:
            os.close(fd)

    def _remove_debris(self) -> bool:
        """Remove what an interrupted apply, activate or prune left behind."""
        removed = False
        places: list[tuple[Path, tuple[str, ...]]] = [
            (self.root, ("current.tmp-", "previous.tmp-")),
            (self.revisions_dir, (".tmp-",)),
            (self.objects_dir, (".tmp-",)),
        ]
        for folder, prefixes in places:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.startswith(prefixes):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed = True
        return removed

    def _prune(self) -> None:
        """Remove old revisions beyond ``keep``; never the current or the previous one.

        The apply has already succeeded: a failure here is left for the next apply to retry.
        """
        with contextlib.suppress(OSError):
            dirs = [d for _, d in self._complete_dirs()]
            protected = {self._link_dir("current"), self._link_dir("previous")}
            doomed = [d for d in dirs[self.keep :] if d not in protected]
            for d in doomed:
                trash = self.revisions_dir / f".tmp-prune-{_random.token_hex(8)}"
                os.rename(self.revisions_dir / d, trash)
                self._manifests.pop(d, None)
                shutil.rmtree(trash)
            if doomed:
                self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete objects no revision links to any more (link count 1)."""
        try:
            buckets = [e for e in os.scandir(self.objects_dir) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for bucket in buckets:
            with os.scandir(bucket.path) as entries:
                for entry in entries:
                    if entry.stat(follow_symlinks=False).st_nlink <= 1:
                        os.unlink(entry.path)

    # -- internals: revisions and manifests ------------------------------------------------

    @staticmethod
    def _revision_of(dirname: str) -> str:
        m = _DIR_RE.match(dirname)
        assert m is not None
        return m.group(1)

    def _link_dir(self, name: str) -> str | None:
        """The revision directory a top-level symlink points at, if it is a sound one."""
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        prefix, _, dirname = target.partition("/")
        if prefix != "revisions" or not _DIR_RE.match(dirname):
            return None
        if not (self.revisions_dir / dirname / REVISION_META).is_file():
            return None
        return dirname

    def _current_dir(self) -> str | None:
        return self._link_dir("current")

    def _complete_dirs(self) -> list[tuple[int, str]]:
        """(seq, dirname) of every complete revision directory, newest first."""
        found: list[tuple[int, str]] = []
        try:
            entries = list(os.scandir(self.revisions_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not _DIR_RE.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                meta = json.loads(Path(entry.path, REVISION_META).read_bytes())
                found.append((int(meta["seq"]), entry.name))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a revision Headwater completed
        found.sort(reverse=True)
        return found

    def _newest_dir(self, revision: str) -> str | None:
        for _, d in self._complete_dirs():
            if self._revision_of(d) == revision:
                return d
        return None

    def _manifest(self, dirname: str) -> _Manifest:
        path = self.revisions_dir / dirname / MANIFEST
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
        cached = self._manifests.get(dirname)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            manifest = _Manifest.from_json(json.loads(path.read_bytes()))
        except (ValueError, KeyError, TypeError) as e:
            raise TargetError(
                f"the manifest of {path.parent} is unreadable",
                hint="apply the revision again from Git",
            ) from e
        self._manifests[dirname] = (stamp, manifest)
        return manifest

    def _modified_files(self, dirname: str) -> list[str]:
        """Files of a revision that no longer hold what was materialised."""
        base = self.revisions_dir / dirname
        changed: list[str] = []
        for rel, rec in self._manifest(dirname).files.items():
            try:
                st = os.lstat(base / rel)
            except FileNotFoundError:
                changed.append(rel)
                continue
            if rec.matches(st):
                continue
            data = _read_under(base, rel) if stat.S_ISREG(st.st_mode) else None
            if data is None or rec.hash is None or content_hash(data) != rec.hash:
                changed.append(rel)
        return sorted(changed)

    # -- internals: reading back -----------------------------------------------------------

    def _inventory_of(self, dirname: str) -> State:
        base = self.revisions_dir / dirname
        manifest = self._manifest(dirname)
        found = _walk(base)
        state: State = {}

        def actual(rel: str) -> tuple[str, bytes | None] | None:
            """(hash, content if it had to be read) of a file as it is now."""
            st = found.get(rel)
            if st is None:
                return None
            rec = manifest.files.get(rel)
            if rec is not None and rec.hash is not None and rec.matches(st):
                return rec.hash, None
            data = _read_under(base, rel)
            return None if data is None else (content_hash(data), data)

        by_file: dict[str, list[_Row]] = {}
        for row in manifest.rows:
            by_file.setdefault(row.path, []).append(row)

        for rel, rows in by_file.items():
            kind = rows[0].key.kind
            if kind in _OBJECT_KINDS:
                got = actual(rel)
                if got is not None:
                    row = rows[0]
                    binary = row.binary if got[1] is None else is_binary(got[1])
                    state[row.key] = Resource(row.key, got[0], None, binary, rel)
            elif kind == "kv":
                self._read_kv(state, base, rel, rows, found, manifest)
            else:
                self._read_secrets(state, base, rel, rows, found, manifest)

        for rel in found.keys() - by_file.keys():
            what = _classify(rel)
            if what is None:
                continue
            tenant, namespace, kind, name = what
            if kind == "kv":
                self._read_kv(state, base, rel, [], found, manifest)
            elif kind == "secret":
                self._read_secrets(state, base, rel, [], found, manifest)
            else:
                got = actual(rel)
                if got is not None and got[1] is not None:
                    key = ResourceKey(tenant, namespace, kind, name)
                    state[key] = Resource(key, got[0], None, is_binary(got[1]), rel)
        return state

    def _read_kv(
        self,
        state: State,
        base: Path,
        rel: str,
        rows: list[_Row],
        found: dict[str, os.stat_result],
        manifest: _Manifest,
    ) -> None:
        st = found.get(rel)
        if st is None:
            return
        rec = manifest.files.get(rel)
        if rows and rec is not None and rec.matches(st):
            for row in rows:
                state[row.key] = Resource(row.key, row.hash, None, False, rel)
            return
        data = _read_under(base, rel)
        values = None if data is None else _kv_values(data)
        if values is None:
            return  # unreadable: its entries are missing, and the next apply rewrites it
        recorded = {row.key.name: row for row in rows}
        tenant, namespace = rel.split("/")[:2]
        for name, value in values.items():
            key = ResourceKey(tenant, namespace, "kv", name)
            digest = content_hash(_canonical(value))
            known = recorded.get(name)
            if known is not None and known.canonical == digest:
                digest = known.hash  # the same value, written differently
            state[key] = Resource(key, digest, None, False, rel)

    def _read_secrets(
        self,
        state: State,
        base: Path,
        rel: str,
        rows: list[_Row],
        found: dict[str, os.stat_result],
        manifest: _Manifest,
    ) -> None:
        st = found.get(rel)
        if st is None:
            return
        rec = manifest.files.get(rel)
        if rows and rec is not None and rec.matches(st):
            for row in rows:
                state[row.key] = Resource(row.key, row.hash, None, False, rel)
            return
        data = _read_under(base, rel)
        lines = None if data is None else _secret_lines(data)
        if lines is None:
            return
        exposed = stat.S_IMODE(st.st_mode) & 0o077 != 0
        recorded = {row.key.name: row.hash for row in rows}
        tenant, namespace = rel.split("/")[:2]
        for name, encoded in lines.items():
            key = ResourceKey(tenant, namespace, "secret", name)
            if exposed:
                digest = "hmac:exposed"  # readable by others: show as drift so apply rewrites it
            elif self._hash_key is not None:
                try:
                    value = base64.b64decode(encoded, validate=True).decode("utf-8")
                    digest = secret_hash(self._hash_key, value)
                except (binascii.Error, UnicodeDecodeError):
                    digest = "hmac:invalid"
            else:
                digest = recorded.get(name, "hmac:unknown")
            state[key] = Resource(key, digest, None, False, rel)
