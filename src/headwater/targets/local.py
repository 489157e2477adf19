"""The embedded default target: an instance directory of materialised revisions.

Layout, all inside the instance directory::

    current  -> revisions/<dir>          the published revision, swapped atomically
    previous -> revisions/<dir>          what ``current`` pointed to before the last swap
    .lock                                flock: one writer (apply, activate, cleanup) at a time
    objects/<hh>/<sha256 hex>            content-addressed store, 0444, hard-linked into spaces
    spaces/<id>/tree/                    one namespace at one content (see local_space.py):
        flows/<flow id>.yaml             byte-identical to Git
        files/<path>                     the effective set, inherited files included
        config.json, kv.json
        secrets.env                      0600, SECRET_<NAME>=<base64>; never in objects/
    spaces/<id>/manifest.json            its resources and the stat of every file
    revisions/<sha>/                     one applied commit (``<sha>.<n>`` when re-materialised)
        .revision.json                   {"format", "revision", "seq", "created"}
        .manifest.json                   (tenant, namespace) -> space id and digest
        <tenant>/<namespace> -> ../../../spaces/<id>/tree
    revisions/.tmp-*, objects/.tmp-*, spaces/.tmp-*, current.tmp-*, previous.tmp-*
                                         work in progress; debris after a crash, removed later

So ``current/<tenant>/<namespace>/flows/<id>.yaml`` resolves for a reader as before, while a
revision that changes one namespace writes one space and a small revision folder: unchanged
namespaces share their space with the previous revision. A revision is built complete under
``revisions/.tmp-…``, renamed into place, then published by replacing the ``current`` symlink
(git-sync's technique), so a reader never sees a half-applied commit and a crash at any
instant leaves ``current`` at the old or the new one. Spaces never change once written; a
space changed by hand is drift, read back as such and never shared with a new revision.

``apply_namespaces`` is given only the namespaces that changed and takes every other one
from the current revision's manifest without reading it, and pruning finds the spaces and
objects to collect from the manifests of the revisions it removes: the cost of such an apply
follows the change, plus writing a manifest and a link per namespace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets as _random
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from headwater.errors import TargetError
from headwater.resources import Resource, ResourceKey, State
from headwater.targets.base import SecretValues
from headwater.targets.local_files import (
    FileRecord,
    fsync_path,
    read_under,
    second_ago_ns,
    write_new,
)
from headwater.targets.local_names import (
    canonical,
    check_namespace,
    check_revision,
    kv_values,
    path_in_namespace,
)
from headwater.targets.local_space import (
    Build,
    SpaceManifest,
    Wanted,
    group,
    is_clean,
    prepare,
    read_back,
    read_unmanaged,
)

FORMAT = 2
MANIFEST = ".manifest.json"
REVISION_META = ".revision.json"
SPACE_MANIFEST = "manifest.json"
_DIR_RE = re.compile(r"([0-9A-Za-z_-]{1,128})(?:\.([1-9][0-9]{0,8}))?\Z")
_SPACE_RE = re.compile(r"[0-9a-f]{32}(?:\.[1-9][0-9]{0,8})?\Z")
_SYNC_BATCH = 256  # above this many files and directories to flush, one sync() is cheaper
# A space read back clean by ``inventory`` is shared by an apply within this many seconds
# without walking it again (the engine reads the target back right before it applies).
_VERIFIED_FOR = 60.0


class BaseMoved(TargetError):
    """``apply_namespaces`` was given a base that is not (or no longer) the current revision,
    or whose manifest is lost: apply the whole revision instead."""


@dataclass(frozen=True)
class _Revision:
    """A revision's manifest: which space each namespace folder is."""

    revision: str
    spaces: dict[tuple[str, str], tuple[str, str]]  # (tenant, namespace) -> (space id, digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "revision": self.revision,
            "namespaces": [[t, n, sid, d] for (t, n), (sid, d) in sorted(self.spaces.items())],
        }

    @classmethod
    def from_json(cls, data: Any) -> _Revision:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("unknown manifest format")
        spaces = {(str(t), str(n)): (str(s), str(d)) for t, n, s, d in data["namespaces"]}
        if not all(_SPACE_RE.match(s) for s, _ in spaces.values()):
            raise ValueError("bad space id")
        return cls(str(data["revision"]), spaces)


def _link_text(space: str) -> str:
    """The symlink ``revisions/<dir>/<tenant>/<namespace>`` -> the tree of a space."""
    return f"../../../spaces/{space}/tree"


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
        self._revision_cache: dict[str, tuple[tuple[int, int], _Revision]] = {}
        self._space_cache: dict[str, tuple[tuple[int, int], SpaceManifest]] = {}
        self._verified: dict[str, float] = {}  # space id -> when inventory found it clean
        if self.root.is_dir():
            # Leftovers of a crash are removed on open, unless a writer is at work right now.
            with contextlib.suppress(OSError), self._exclusive(wait=0.0) as locked:
                if locked and self._remove_debris():
                    self._collect_garbage(None)

    @property
    def revisions_dir(self) -> Path:
        return self.root / "revisions"

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def spaces_dir(self) -> Path:
        return self.root / "spaces"

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
            result: dict[ResourceKey, str] = {}
            for sid, _ in self._revision(d).spaces.values():
                space = self._space(sid)
                for row in space.rows:
                    result[space.key(row)] = row.hash
            return result
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
        for _ in range(10):
            d = self._current_dir()
            if d is None:
                return {}
            try:
                state = self._inventory_of(d)
            except FileNotFoundError:
                if self._current_dir() == d and not (self.revisions_dir / d / MANIFEST).exists():
                    raise self._no_manifest(d) from None
                continue  # pruned by a concurrent apply while we read it: read the new one
            except OSError as e:
                raise TargetError(
                    f"cannot read instance {self.root}: {e.strerror}",
                    hint="check the permissions of the instance directory",
                ) from e
            # Revision folders are immutable and a pruned one is renamed away before it is
            # removed: if it is still in place, what was read is that whole revision, the
            # one that was current when the read began.
            if (self.revisions_dir / d / REVISION_META).is_file():
                return state
        raise TargetError(f"instance {self.root} kept changing while it was read", hint="retry")

    def read(self, key: ResourceKey) -> bytes | None:
        d = self._current_dir()
        if d is None or key.kind == "secret":
            return None
        try:
            check_namespace(key.tenant, key.namespace)
            path = path_in_namespace(key)
        except TargetError:
            return None
        try:
            folder = self._namespace_folder(d, key.tenant, key.namespace)
            data = None if folder is None else read_under(folder, path)
        except OSError as e:
            raise TargetError(f"cannot read {key} in {self.root}: {e.strerror}") from e
        if key.kind != "kv" or data is None:
            return data
        values = kv_values(data)
        if values is None or key.name not in values:
            return None
        return canonical(values[key.name])

    # -- writing ---------------------------------------------------------------------------

    def apply(
        self, revision: str, desired: Mapping[ResourceKey, Resource], secrets: SecretValues
    ) -> None:
        check_revision(revision)
        self._write(revision, group(desired, secrets), secrets)

    def apply_namespaces(
        self,
        revision: str,
        base: str,
        desired: Mapping[tuple[str, str], Mapping[ResourceKey, Resource]],
        secrets: SecretValues,
    ) -> None:
        """``apply`` for a revision that differs from ``base``, the current one, only in the
        namespaces of ``desired``: each with its complete desired resources, none when it is
        removed. Every other namespace keeps the folder it has in ``base``, trusted without
        being read. BaseMoved, with the instance unchanged, when ``base`` is not current."""
        check_revision(revision)
        resources: dict[ResourceKey, Resource] = {}
        for (tenant, namespace), listed in desired.items():
            check_namespace(tenant, namespace)
            for key, res in listed.items():
                if (key.tenant, key.namespace) != (tenant, namespace):
                    raise TargetError(f"desired state lists {key} under {tenant}/{namespace}")
                resources[key] = res
        self._write(revision, group(resources, secrets), secrets, base, desired.keys())

    def _write(
        self,
        revision: str,
        wanted: dict[tuple[str, str], Wanted],
        secrets: SecretValues,
        base: str | None = None,
        changed: Collection[tuple[str, str]] = (),
    ) -> None:
        """Materialise and publish a revision of the namespaces ``wanted`` and, given
        ``base``, of every namespace of ``base`` not ``changed``, with the space it has."""
        self._ensure_dirs()
        with self._exclusive(wait=self.lock_timeout) as locked:
            if not locked:
                raise TargetError(
                    f"instance {self.root} is being written by another process",
                    hint="wait for the other apply to finish, then retry",
                )
            try:
                kept = {} if base is None else self._kept_spaces(base, changed)
                spaces, builds, contents = self._plan(wanted, secrets, kept)
                debris = self._remove_debris()
                try:
                    self._publish(self._materialise(revision, spaces, builds, contents))
                except Exception:
                    self._undo()
                    raise
            except OSError as e:
                raise TargetError(
                    f"cannot apply {revision[:12]} to {self.root}: {e.strerror or e}",
                    hint="the instance is unchanged; check free space and permissions",
                ) from e
            finally:
                self._verified.clear()
            self._prune(everything=debris)

    def _kept_spaces(
        self, base: str, changed: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """The spaces of the namespaces of ``base``, the current revision, not ``changed``."""
        d = self._current_dir()
        if d is None or self._revision_of(d) != base:
            raise BaseMoved(
                f"instance {self.root} is no longer at {base[:12]}",
                hint="apply the whole revision",
            )
        try:
            recorded = self._revision(d).spaces
        except FileNotFoundError:
            raise BaseMoved(self._no_manifest(d).message, hint="apply the whole revision") from None
        except TargetError as e:
            raise BaseMoved(e.message, hint="apply the whole revision") from e
        return {ns: space for ns, space in recorded.items() if ns not in changed}

    def activate(self, revision: str) -> None:
        check_revision(revision)
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
            changed = self._modified_namespace(d)
            if changed:
                raise TargetError(
                    f"revision {revision[:12]} was modified on disk ({changed})",
                    hint="apply it from Git instead",
                )
            try:
                self._publish(d)
            except OSError as e:
                raise TargetError(f"cannot activate {revision[:12]}: {e.strerror}") from e

    # -- internals: building a revision ----------------------------------------------------

    def _plan(
        self,
        wanted: dict[tuple[str, str], Wanted],
        secrets: SecretValues,
        kept: dict[tuple[str, str], tuple[str, str]],
    ) -> tuple[dict[tuple[str, str], tuple[str, str]], list[Build], dict[str, bytes]]:
        """The spaces of the new revision that exist already (``kept``, and the wanted ones
        an existing space holds), the spaces to build, and the contents of their objects.
        Nothing is written."""
        spaces = dict(kept)
        builds: list[Build] = []
        contents: dict[str, bytes] = {}
        for ns in sorted(wanted):
            w = wanted[ns]
            shared = self._shareable_space(w.digest)
            if shared is not None:
                spaces[ns] = (shared, w.digest)
            else:
                builds.append(prepare(w, secrets, contents))
        return spaces, builds, contents

    def _materialise(
        self,
        revision: str,
        spaces: dict[tuple[str, str], tuple[str, str]],
        builds: list[Build],
        contents: dict[str, bytes],
    ) -> str:
        """Write the spaces of ``builds``, then the revision folder of them and ``spaces``;
        its name. A failure leaves debris and unused spaces: see ``_undo``."""
        work = self.revisions_dir / f".tmp-{revision}-{_random.token_hex(8)}"
        work.mkdir()  # first: a crash from here on leaves debris that triggers a collection
        stats, object_dirs = self._store_objects(contents, builds)
        mtime = second_ago_ns()
        written: list[tuple[Build, Path]] = []
        to_sync: list[Path] = []
        for build in builds:
            written.append((build, self._write_space(build, stats, mtime, to_sync)))
        self._sync(to_sync)
        spaces = dict(spaces)
        for build, folder in written:
            w = build.wanted
            sid = self._new_space_id(w.digest)
            os.rename(folder, self.spaces_dir / sid)
            spaces[(w.tenant, w.namespace)] = (sid, w.digest)
        return self._fill(work, revision, spaces, object_dirs)

    def _shareable_space(self, digest: str) -> str | None:
        """An existing space holding exactly these resources, untouched since it was written."""
        for n in range(100):
            sid = digest[:32] if n == 0 else f"{digest[:32]}.{n}"
            folder = self.spaces_dir / sid
            if not folder.is_dir():
                return None
            try:
                space = self._space(sid)
            except (OSError, TargetError):
                continue
            if space.digest != digest:
                continue
            verified = self._verified.get(sid)
            if verified is not None and time.monotonic() - verified < _VERIFIED_FOR:
                return sid
            if is_clean(str(folder / "tree"), space):
                return sid
        return None

    def _new_space_id(self, digest: str) -> str:
        for n in range(1_000_000):
            sid = digest[:32] if n == 0 else f"{digest[:32]}.{n}"
            path = self.spaces_dir / sid
            if not path.exists() and not path.is_symlink():
                return sid
        raise TargetError(f"too many copies of space {digest[:32]} in {self.root}")

    def _store_objects(
        self, contents: dict[str, bytes], builds: list[Build]
    ) -> tuple[dict[str, os.stat_result], set[Path]]:
        """Make sure every object exists and holds its content; their stats, and the folders
        that got new objects (to fsync)."""
        known = self._recorded_objects(builds)
        mtime = second_ago_ns()
        stats: dict[str, os.stat_result] = {}
        fresh: list[tuple[str, Path]] = []
        for digest, content in contents.items():
            st = self._usable_object(digest, content, known)
            if st is not None:
                stats[digest] = st
                continue
            tmp = self.objects_dir / f".tmp-{_random.token_hex(8)}"
            write_new(tmp, content, 0o444, mtime)
            fresh.append((digest, tmp))
        self._sync([tmp for _, tmp in fresh])
        object_dirs: set[Path] = set()
        for digest, tmp in fresh:
            final = self._object_path(digest)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            stats[digest] = os.lstat(final)
            object_dirs.add(final.parent)
        return stats, object_dirs

    def _write_space(
        self, build: Build, stats: dict[str, os.stat_result], mtime: int, to_sync: list[Path]
    ) -> Path:
        """Write one space complete under a temporary name (renamed into place once it is on
        disk); what to fsync is added to ``to_sync``."""
        work = self.spaces_dir / f".tmp-{_random.token_hex(8)}"
        tree = work / "tree"
        tree.mkdir(parents=True)
        folders: set[str] = {""}
        written: list[str] = []
        files: dict[str, FileRecord] = {}
        base = str(tree)

        def folder_for(rel: str) -> None:
            parent = rel.rpartition("/")[0]
            if parent not in folders:
                os.makedirs(f"{base}/{parent}", exist_ok=True)
                while parent not in folders:
                    folders.add(parent)
                    parent = parent.rpartition("/")[0]

        for rel, digest in build.objects.items():
            folder_for(rel)
            dest = f"{base}/{rel}"
            try:
                os.link(self._object_path(digest), dest)
                st = stats[digest]
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                with open(self._object_path(digest), "rb") as f:
                    st = write_new(dest, f.read(), 0o444, mtime)
                written.append(dest)
            files[rel] = FileRecord.of(digest, st)
        if build.secret_file is not None:
            dest = f"{base}/secrets.env"
            files["secrets.env"] = FileRecord.of(None, write_new(dest, build.secret_file, 0o600, mtime))
            written.append(dest)
        w = build.wanted
        space = SpaceManifest(w.tenant, w.namespace, w.digest, tuple(build.rows), files)
        text = json.dumps(space.to_json(), separators=(",", ":")).encode("utf-8")
        write_new(work / SPACE_MANIFEST, text, 0o444, time.time_ns())
        written.append(str(work / SPACE_MANIFEST))
        if self.durable:
            to_sync += [*map(Path, written), *(tree / f for f in sorted(folders, reverse=True)), work]
        return work

    def _fill(
        self,
        work: Path,
        revision: str,
        spaces: dict[tuple[str, str], tuple[str, str]],
        object_dirs: set[Path],
    ) -> str:
        tenants: set[str] = set()
        base = str(work)
        for (tenant, namespace), (sid, _) in spaces.items():
            if tenant not in tenants:
                os.mkdir(f"{base}/{tenant}")
                tenants.add(tenant)
            os.symlink(_link_text(sid), f"{base}/{tenant}/{namespace}")
        seq = max((s for s, _ in self._complete_dirs()), default=0) + 1
        meta = {
            "format": FORMAT,
            "revision": revision,
            "seq": seq,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for name, record in ((MANIFEST, _Revision(revision, spaces).to_json()), (REVISION_META, meta)):
            text = json.dumps(record, separators=(",", ":"), sort_keys=True)
            write_new(work / name, text.encode("utf-8"), 0o444, time.time_ns())
        self._sync([
            work / MANIFEST, work / REVISION_META, *(work / t for t in sorted(tenants)), work,
            *object_dirs, self.spaces_dir,
        ])

        final = revision
        n = 0
        while (self.revisions_dir / final).exists() or (self.revisions_dir / final).is_symlink():
            n += 1
            final = f"{revision}.{n}"
        os.rename(work, self.revisions_dir / final)
        self._sync([self.revisions_dir])
        st = os.stat(self.revisions_dir / final / MANIFEST)  # known: not parsed again when read
        self._revision_cache[final] = ((st.st_ino, st.st_mtime_ns), _Revision(revision, spaces))
        return final

    def _object_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.objects_dir / hexd[:2] / hexd

    def _recorded_objects(self, builds: list[Build]) -> dict[str, FileRecord]:
        """Object stats recorded by the spaces the current and previous revisions had for the
        namespaces being built, by digest (to trust an object without reading it)."""
        building = {(b.wanted.tenant, b.wanted.namespace) for b in builds}
        known: dict[str, FileRecord] = {}
        for name in ("previous", "current"):
            d = self._link_dir(name)
            if d is None:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, TargetError):
                recorded = self._revision(d).spaces
                for ns in building:
                    if ns not in recorded:
                        continue
                    for rec in self._space(recorded[ns][0]).files.values():
                        if rec.hash is not None:
                            known[rec.hash] = rec
        return known

    def _usable_object(
        self, digest: str, content: bytes, known: dict[str, FileRecord]
    ) -> os.stat_result | None:
        """The stat of a stored object if it still holds ``content``, else None.

        Objects are shared by hard links, so an in-place edit of a file in any space edits
        the object: verify before sharing it again (stat as recorded, or compare).
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
            fsync_path(p)

    # -- internals: housekeeping -----------------------------------------------------------

    def _ensure_dirs(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for folder in (self.revisions_dir, self.objects_dir, self.spaces_dir):
                folder.mkdir(exist_ok=True)
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
            (self.spaces_dir, (".tmp-",)),
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

    def _undo(self) -> None:
        """After a failed apply: remove its debris, and the spaces and objects it wrote."""
        with contextlib.suppress(OSError):
            self._remove_debris()
            self._collect_garbage(None)

    def _prune(self, *, everything: bool = False) -> None:
        """Remove old revisions beyond ``keep``, never the current or the previous one, then
        the spaces only they used (or, with ``everything``, every space no revision uses).

        The apply has already succeeded: a failure here is left for the next apply to retry.
        The pruned revisions stay (renamed away, as debris) until their spaces are collected,
        so that a crash in between leads the next writer to a whole collection.
        """
        with contextlib.suppress(OSError):
            dirs = [d for _, d in self._complete_dirs()]
            protected = {self._link_dir("current"), self._link_dir("previous")}
            doomed = [d for d in dirs[self.keep :] if d not in protected]
            unused: set[str] = set()
            trash: list[Path] = []
            for d in doomed:
                unused |= self._spaces_of(d)
                trash.append(self.revisions_dir / f".tmp-prune-{_random.token_hex(8)}")
                os.rename(self.revisions_dir / d, trash[-1])
                self._revision_cache.pop(d, None)
            if doomed or everything:
                self._collect_garbage(None if everything else unused)
            for folder in trash:
                shutil.rmtree(folder)

    def _spaces_of(self, dirname: str) -> set[str]:
        """Space ids a revision folder uses: from its manifest, or, when that is unreadable,
        from its links (so that a revision that lost its manifest keeps its spaces)."""
        if _DIR_RE.match(dirname):
            with contextlib.suppress(FileNotFoundError, TargetError):
                return {sid for sid, _ in self._revision(dirname).spaces.values()}
        found: set[str] = set()
        for tenant in os.scandir(self.revisions_dir / dirname):
            if not tenant.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(tenant.path):
                if entry.is_symlink():
                    parts = os.readlink(entry.path).split("/")
                    if len(parts) == 6 and parts[:3] == ["..", "..", ".."] and parts[3] == "spaces":
                        found.add(parts[4])
        return found

    def _referenced_spaces(self) -> set[str]:
        """Space ids the revision folders use (``.tmp-`` ones are debris, or pruned)."""
        found: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for rev in list(os.scandir(self.revisions_dir)):
                if rev.is_dir(follow_symlinks=False) and not rev.name.startswith(".tmp-"):
                    found |= self._spaces_of(rev.name)
        return found

    def _collect_garbage(self, candidates: Iterable[str] | None) -> None:
        """Delete the spaces among ``candidates`` (None: all) no revision uses, then the
        objects only they linked to (None: every object nothing links to, link count 1).

        A deleted space stays, renamed away as debris, until its objects are collected, so
        that a crash in between leads the next writer to a whole collection."""
        referenced = self._referenced_spaces()
        objects: set[str] | None = None if candidates is None else set()
        if candidates is None:
            with contextlib.suppress(FileNotFoundError):
                candidates = [e.name for e in os.scandir(self.spaces_dir)]
        trash: list[Path] = []
        for sid in sorted(set(candidates or ()) - referenced):
            if not _SPACE_RE.match(sid):
                continue  # debris (removed as such) or not made by Headwater
            folder = self.spaces_dir / f".tmp-gc-{_random.token_hex(8)}"
            try:
                os.rename(self.spaces_dir / sid, folder)
            except FileNotFoundError:
                continue
            trash.append(folder)
            if objects is not None:
                try:
                    space = _read_manifest(
                        folder / SPACE_MANIFEST, self._space_cache, sid, SpaceManifest.from_json
                    )
                    objects.update(rec.hash for rec in space.files.values() if rec.hash is not None)
                except (OSError, TargetError):
                    objects = None  # which objects it linked to is unknown: look at them all
            self._space_cache.pop(sid, None)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(folder / "tree")
        if objects is None:
            self._collect_all_objects()
        else:
            for digest in sorted(objects):
                path = self._object_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_nlink <= 1:
                        os.unlink(path)
        for folder in trash:
            shutil.rmtree(folder)

    def _collect_all_objects(self) -> None:
        """Delete every object no space links to (link count 1)."""
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

    def _revision(self, dirname: str) -> _Revision:
        return _read_manifest(
            self.revisions_dir / dirname / MANIFEST, self._revision_cache, dirname, _Revision.from_json
        )

    def _space(self, sid: str) -> SpaceManifest:
        return _read_manifest(
            self.spaces_dir / sid / SPACE_MANIFEST, self._space_cache, sid, SpaceManifest.from_json
        )

    def _namespace_folder(self, dirname: str, tenant: str, namespace: str) -> str | None:
        """The real folder behind ``<revision>/<tenant>/<namespace>``: the tree of the space
        the revision recorded, if its link is intact; a folder made there by hand; or None."""
        link = self.revisions_dir / dirname / tenant / namespace
        try:
            st = os.lstat(link)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return str(link)
        if not stat.S_ISLNK(st.st_mode):
            return None
        try:
            recorded = self._revision(dirname).spaces.get((tenant, namespace))
        except (FileNotFoundError, TargetError):
            return None
        if recorded is None or os.readlink(link) != _link_text(recorded[0]):
            return None  # a symlink put there by hand: not followed
        return str(self.spaces_dir / recorded[0] / "tree")

    def _modified_namespace(self, dirname: str) -> str | None:
        """A namespace of a revision that no longer holds what was materialised, if any."""
        try:
            recorded = self._revision(dirname).spaces
        except (OSError, TargetError):
            return MANIFEST
        for (tenant, namespace), (sid, _) in sorted(recorded.items()):
            where = f"{tenant}/{namespace}"
            if self._namespace_folder(dirname, tenant, namespace) != str(self.spaces_dir / sid / "tree"):
                return where
            try:
                if not is_clean(str(self.spaces_dir / sid / "tree"), self._space(sid)):
                    return where
            except (OSError, TargetError):
                return where
        return None

    # -- internals: reading back -----------------------------------------------------------

    def _inventory_of(self, dirname: str) -> State:
        base = self.revisions_dir / dirname
        recorded = self._revision(dirname).spaces
        state: State = {}
        now = time.monotonic()
        for tenant in os.scandir(base):
            if tenant.name.startswith(".") or not tenant.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(tenant.path):
                ns = (tenant.name, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    state.update(read_unmanaged(entry.path, *ns))
                    continue
                sid = recorded.get(ns, ("", ""))[0]
                if not sid or not entry.is_symlink() or os.readlink(entry.path) != _link_text(sid):
                    continue  # gone, or a symlink we did not make: not followed
                try:
                    space = self._space(sid)
                    found, clean = read_back(str(self.spaces_dir / sid / "tree"), space, self._hash_key)
                except (FileNotFoundError, TargetError):
                    continue  # the space was removed or damaged by hand: its resources are missing
                state.update(found)
                if clean:
                    self._verified[sid] = now
        return state


_M = TypeVar("_M")


def _read_manifest(
    path: Path, cache: dict[str, tuple[tuple[int, int], _M]], name: str, parse: Callable[[Any], _M]
) -> _M:
    """A manifest file, parsed once per version of the file (inode and mtime)."""
    st = os.stat(path)
    stamp = (st.st_ino, st.st_mtime_ns)
    cached = cache.get(name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        manifest = parse(json.loads(path.read_bytes()))
    except (ValueError, KeyError, TypeError) as e:
        raise TargetError(
            f"the manifest of {path.parent} is unreadable", hint="apply the revision again from Git"
        ) from e
    cache[name] = (stamp, manifest)
    return manifest
