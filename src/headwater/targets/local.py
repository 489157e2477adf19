"""The embedded default target: an instance directory of materialised revisions.

Layout, all inside the instance directory::

    current  -> revisions/<dir>          the published revision, swapped atomically
    previous -> revisions/<dir>          what ``current`` pointed to before the last swap
    .lock                                flock: one writer (apply, activate, cleanup) at a time
    .writing                             there while a writer works: left by one that died
    objects/<hh>/<sha256 hex>            content-addressed store, 0444, hard-linked into spaces
    spaces/<id>/tree/                    one namespace at one content (see local_space.py):
        flows/<flow id>.yaml             byte-identical to Git
        files/<path>                     the effective set, inherited files included
        config.json, kv.json
        secrets.env                      0600, SECRET_<NAME>=<base64>; never in objects/
    spaces/<id>/manifest.json            its resources and the stat of every file
    indexes/<id>/                        one tenant at one content: its namespaces' spaces
        <namespace> -> ../../spaces/<id>/tree
    revisions/<sha>/                     one applied commit (``<sha>.<n>`` when re-materialised)
        .revision.json                   {"format", "revision", "seq", "created"}
        .manifest.json                   (tenant, namespace) -> space id and digest;
                                         tenant -> index id
        <tenant> -> ../../indexes/<id>
    revisions/.tmp-*, objects/.tmp-*, spaces/.tmp-*, indexes/.tmp-*, current.tmp-*, previous.tmp-*
                                         work in progress; debris after a crash, removed later

So ``current/<tenant>/<namespace>/flows/<id>.yaml`` resolves for a reader through two links,
while a revision that changes one namespace writes one space, one index (the links of that
tenant's namespaces) and a small revision folder: unchanged namespaces share their space, and
unchanged tenants their index, with the previous revision. An index's id is derived from its
(namespace, space id) pairs, so two revisions in which a tenant is the same share one. A
revision is built complete under ``revisions/.tmp-…`` (its new spaces and indexes renamed into
place before it), renamed into place, then published by replacing the ``current`` symlink
(git-sync's technique), so a reader never sees a half-applied commit and a crash at any
instant leaves ``current`` at the old or the new one. Spaces and indexes never change once
written; one changed by hand is drift, read back as such and never shared by a full apply. A
folder made by hand inside an index shows in every revision sharing it: it is read back as
unmanaged, and ``activate`` refuses a revision that holds it.

``apply_namespaces`` is given only the namespaces that changed and takes every other one
from the current revision's manifest without reading it, every tenant without a changed
namespace keeping its index unread; pruning finds the indexes, spaces and objects to collect
from the manifests of the revisions it removes: the cost of such an apply follows the change,
plus the links of the changed tenants and a manifest entry per namespace.

Revisions written before indexes existed (format 2: real tenant folders holding
``<namespace> -> ../../../spaces/<id>/tree``) are still read and activated; the next apply
writes the current layout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets as _random
import shutil
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

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

FORMAT = 3
_FORMAT2 = 2  # tenant folders of links to spaces, no indexes: still read
MANIFEST = ".manifest.json"
REVISION_META = ".revision.json"
SPACE_MANIFEST = "manifest.json"
_DIR_RE = re.compile(r"([0-9A-Za-z_-]{1,128})(?:\.([1-9][0-9]{0,8}))?\Z")
_ID_RE = re.compile(r"[0-9a-f]{32}(?:\.[1-9][0-9]{0,8})?\Z")  # a space or an index
_SPACE_LINK = "../../spaces/{}/tree"  # indexes/<iid>/<namespace>, and spaces/<sid>/link
# Each space holds one symbolic link to its own tree (``_SPACE_LINK`` resolves alike from
# spaces/<sid>/ and from indexes/<iid>/): index entries are hard links of it, cheaper to make
# than symbolic links (a directory entry, no new inode) and read the same.
_SPACE_LINK_NAME = "link"
_FORMAT2_SPACE_LINK = "../../../spaces/{}/tree"  # revisions/<dir>/<tenant>/<namespace>
_INDEX_LINK = "../../indexes/{}"  # revisions/<dir>/<tenant>
_WRITING = ".writing"
_SYNC_BATCH = 256  # above this many files and directories to flush, one sync() is cheaper
# A space read back clean by ``inventory`` is shared by an apply within this many seconds
# without walking it again (the engine reads the target back right before it applies).
_VERIFIED_FOR = 60.0
_REVISIONS_KEPT = 32  # parsed revision manifests kept in memory
_SPACE_ROWS_KEPT = 50_000  # rows of the parsed space manifests kept in memory


class BaseMoved(TargetError):
    """``apply_namespaces`` was given a base that is not (or no longer) the current revision,
    or whose manifest is lost: apply the whole revision instead."""


@dataclass(frozen=True)
class _Revision:
    """A revision's manifest: which space each namespace folder is, and which index each
    tenant folder is (None in a format 2 revision, whose tenant folders hold the links)."""

    revision: str
    spaces: dict[tuple[str, str], tuple[str, str]]  # (tenant, namespace) -> (space id, digest)
    indexes: dict[str, str] | None  # tenant -> index id

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "revision": self.revision,
            "namespaces": [[t, n, sid, d] for (t, n), (sid, d) in sorted(self.spaces.items())],
            "tenants": [[t, iid] for t, iid in sorted((self.indexes or {}).items())],
        }

    @classmethod
    def from_json(cls, data: Any) -> _Revision:
        if not isinstance(data, dict) or data.get("format") not in (FORMAT, _FORMAT2):
            raise ValueError("unknown manifest format")
        spaces = {(str(t), str(n)): (str(s), str(d)) for t, n, s, d in data["namespaces"]}
        indexes = None
        if data["format"] == FORMAT:
            indexes = {str(t): str(iid) for t, iid in data["tenants"]}
        ids = [*(s for s, _ in spaces.values()), *(indexes or {}).values()]
        if not all(_ID_RE.match(i) for i in ids):
            raise ValueError("bad space or index id")
        return cls(str(data["revision"]), spaces, indexes)

    def by_tenant(self) -> dict[str, dict[str, str]]:
        """tenant -> namespace -> space id."""
        tenants: dict[str, dict[str, str]] = {}
        for (tenant, namespace), (sid, _) in self.spaces.items():
            tenants.setdefault(tenant, {})[namespace] = sid
        return tenants


class _Refs(NamedTuple):
    """Space and index ids (used by some revisions, or to collect)."""

    spaces: set[str]
    indexes: set[str]

    def add(self, other: _Refs) -> None:
        self.spaces.update(other.spaces)
        self.indexes.update(other.indexes)


def _index_digest(namespaces: Mapping[str, str]) -> str:
    """The id of the index of these namespace -> space id links, before any ``.<n>``."""
    h = hashlib.sha256(b"index 1\n")
    for namespace, sid in sorted(namespaces.items()):
        h.update(f"{namespace}\0{sid}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def _linked_id(text: str, link: str) -> str | None:
    """The id in the text of a symlink of the form ``link`` (one of the ``_*_LINK``)."""
    head, _, tail = link.partition("{}")
    if not (text.startswith(head) and text.endswith(tail)):
        return None
    found = text[len(head) : len(text) - len(tail)]
    return found if _ID_RE.match(found) else None


def _links_in(folder: str, link: str) -> set[str]:
    """The ids in the symlinks of the form ``link`` in a folder."""
    found: set[str] = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                linked = _linked_id(os.readlink(entry.path), link)
                if linked is not None:
                    found.add(linked)
    return found


def _index_problem(folder: str, link: str, namespaces: Mapping[str, str]) -> str | None:
    """The first name in a folder of namespace links that is not the ``link`` to the space
    ``namespaces`` gives it (extra, missing or different); None when the folder is exact."""
    seen: set[str] = set()
    bad: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            seen.add(entry.name)
            sid = namespaces.get(entry.name)
            if sid is None or not entry.is_symlink() or os.readlink(entry.path) != link.format(sid):
                bad.append(entry.name)
    return min([*bad, *(namespaces.keys() - seen)], default=None)


@dataclass
class _Mark:
    """A writer's mark (``LocalTarget._writing``)."""

    unclean: bool  # left by a writer that died
    keep: bool = False  # leave it: this writer left something to clean up too


class LocalTarget:
    """An instance directory; see the module docstring for its layout.

    ``keep``: how many materialised revisions to keep (the current and the previous one are
    always kept on top). ``secret_hash_key``: the keyed-hash key, so that a hand edit of a
    secrets.env shows as drift of its values; without it only added or removed entries show.
    ``durable``: fsync what an apply wrote before publishing it (turn off only for tests and
    benchmarks). ``lock_timeout``: how long an apply waits for another writer to finish.
    ``prune_later``: an apply leaves the old revisions beyond ``keep`` for ``prune`` to
    remove, so a long-running writer can do that once the apply is reported.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep: int = 5,
        secret_hash_key: bytes | None = None,
        durable: bool = True,
        lock_timeout: float = 30.0,
        prune_later: bool = False,
    ) -> None:
        if keep < 1:
            raise TargetError(f"keep must be at least 1, not {keep}")
        self.root = Path(root)
        # Joined once: an apply names thousands of paths below them.
        self.revisions_dir = self.root / "revisions"
        self.objects_dir = self.root / "objects"
        self.spaces_dir = self.root / "spaces"
        self.indexes_dir = self.root / "indexes"
        self.keep = keep
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.prune_later = prune_later
        self._hash_key = secret_hash_key
        self._revision_cache: _Manifests[_Revision] = _Manifests(_REVISIONS_KEPT, lambda r: 1)
        # Bounded by rows: reading a large instance back (drift, a full apply) reads every
        # space, and kept them all (600,000 rows: 0.4 GB).
        self._space_cache: _Manifests[SpaceManifest] = _Manifests(_SPACE_ROWS_KEPT, lambda m: len(m.rows) + 1)
        self._verified: dict[str, float] = {}  # space id -> when inventory found it clean
        if self.root.is_dir():
            # Leftovers of a crash are removed on open, unless a writer is at work right now.
            with contextlib.suppress(OSError), self._exclusive(wait=0.0) as locked:
                if locked:
                    mark = self.root / _WRITING  # left by a writer that died
                    if self._remove_debris() or mark.exists():
                        self._collect_garbage(None)
                    mark.unlink(missing_ok=True)

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

    def manifest(self, revision: str | None = None, *, tenant: str | None = None) -> dict[ResourceKey, str]:
        """What a materialised revision (default: the current one) was applied with (only
        ``tenant``'s part): key -> hash. The state store completes an interrupted apply from
        this."""
        d = self._current_dir() if revision is None else self._newest_dir(revision)
        if d is None:
            return {}
        try:
            result: dict[ResourceKey, str] = {}
            for (owner, _), (sid, _) in self._revision(d).spaces.items():
                if tenant is not None and owner != tenant:
                    continue
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

    def tenants(self) -> set[str]:
        """The tenants of the current revision: the folders it holds and those it lists."""
        d = self._current_dir()
        if d is None:
            return set()
        try:
            folders = {e.name for e in os.scandir(self.revisions_dir / d) if not e.name.startswith(".")}
            return folders | self._revision(d).by_tenant().keys()
        except FileNotFoundError:
            return self.tenants() if self._current_dir() != d else set()
        except OSError as e:
            raise TargetError(f"cannot read instance {self.root}: {e.strerror}") from e

    def unclean(self, tenant: str) -> set[tuple[str, str]]:
        """The namespaces of ``tenant`` in the current revision that may not hold exactly what
        was written there, hand-made entries that are no resource included: a space the last
        ``inventory`` did not find clean, or all of them when the tenant's index (its folder
        of links) was changed by hand."""
        d = self._current_dir()
        if d is None:
            return set()
        try:
            recorded = self._revision(d)
        except (OSError, TargetError):
            return set()
        namespaces = recorded.by_tenant().get(tenant, {})
        everything = {(tenant, ns) for ns in namespaces}
        where = self._tenant_folder(d, tenant, recorded)
        try:
            if where is None or where[1] is None or _index_problem(where[0], where[1], namespaces) is not None:
                return everything
        except OSError:
            return everything
        return {(tenant, ns) for ns, sid in namespaces.items() if sid not in self._verified}

    def inventory(self, tenant: str | None = None) -> State:
        """The resources the current revision holds, read back (only those of ``tenant``)."""
        for _ in range(10):
            d = self._current_dir()
            if d is None:
                return {}
            try:
                state = self._inventory_of(d, tenant)
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

    @contextlib.contextmanager
    def staged(self, revision: str, base: str | None, tenants: Collection[str]) -> Iterator[Stage]:
        """A revision written tenant by tenant, all or nothing: the block gives ``Stage.add``
        the complete desired resources of each of ``tenants`` (none: the tenant goes), one
        or more at a time; every other tenant of ``base``, the current revision (when
        given), keeps its namespaces as they are there, trusted without being read. The
        revision is published when the block ends, and nothing of it when the block fails.
        BaseMoved, with the instance unchanged, when ``base`` is not current."""
        check_revision(revision)
        try:
            with self._locked(revision):
                kept, indexes = ({}, {}) if base is None else self._kept(base, (), tenants)
                with self._staging(revision, kept, indexes, tenants) as stage:
                    try:
                        yield stage
                    except Exception as exc:  # the caller's own: not the target's to explain
                        raise _Carried() from exc
        except _Carried as carried:
            assert carried.__cause__ is not None
            raise carried.__cause__ from None

    def _write(
        self,
        revision: str,
        wanted: dict[tuple[str, str], Wanted],
        secrets: SecretValues,
        base: str | None = None,
        changed: Collection[tuple[str, str]] = (),
    ) -> None:
        """Materialise and publish a revision of the namespaces ``wanted`` and, given
        ``base``, of every namespace of ``base`` not ``changed``, with the space it has (and
        of every tenant of ``base`` with no namespace ``changed``, with the index it has)."""
        with self._locked(revision):
            kept, indexes = ({}, {}) if base is None else self._kept(base, changed)
            spaces, builds, contents = self._plan(wanted, secrets, kept)  # reads only
            with self._staging(revision, spaces, indexes) as stage:
                stage.build(builds, contents)

    @contextlib.contextmanager
    def _locked(self, revision: str) -> Iterator[None]:
        """The writer's lock on the instance for the block; an OSError in it is a TargetError."""
        self._ensure_dirs()
        with self._exclusive(wait=self.lock_timeout) as locked:
            if not locked:
                raise TargetError(
                    f"instance {self.root} is being written by another process",
                    hint="wait for the other apply to finish, then retry",
                )
            try:
                yield
            except OSError as e:
                raise TargetError(
                    f"cannot apply {revision[:12]} to {self.root}: {e.strerror or e}",
                    hint="the instance is unchanged; check free space and permissions",
                ) from e
            finally:
                self._verified.clear()

    @contextlib.contextmanager
    def _staging(
        self,
        revision: str,
        spaces: dict[tuple[str, str], tuple[str, str]],
        indexes: dict[str, str],
        tenants: Collection[str] = (),
    ) -> Iterator[Stage]:
        """A revision of ``spaces`` (existing), ``indexes`` (existing, of tenants none of whose
        namespaces changes) and what the block builds (of ``tenants``, through ``Stage.add``),
        published when it ends; a failure leaves the instance as it was (see ``_undo``)."""
        with self._writing() as mark:
            if mark.unclean:
                self._remove_debris()
            done: str | None = None  # the revision folder, once complete
            try:
                # First: a crash from here on leaves debris that triggers a collection.
                work = self.revisions_dir / f".tmp-{revision}-{_random.token_hex(8)}"
                work.mkdir()
                stage = Stage(self, dict(spaces), frozenset(tenants))
                yield stage
                indexes = self._write_indexes(stage.spaces, indexes)
                done = self._fill(work, revision, stage.spaces, indexes, stage.object_dirs)
                self._publish(done)
            except BaseException:
                if done is not None and self._current_dir() != done:
                    # Complete but never published: debris, or it would pass for a revision.
                    self._revision_cache.discard(done)
                    with contextlib.suppress(OSError):
                        os.rename(self.revisions_dir / done, self.revisions_dir / f".tmp-unpublished-{done}")
                self._undo()
                raise
            if mark.unclean or not self.prune_later:
                mark.keep = not self._prune(everything=mark.unclean)

    def _kept(
        self, base: str, changed: Collection[tuple[str, str]], tenants: Collection[str] = ()
    ) -> tuple[dict[tuple[str, str], tuple[str, str]], dict[str, str]]:
        """The spaces of the namespaces of ``base``, the current revision, not ``changed`` nor
        of ``tenants``, and the indexes of its tenants not in ``tenants`` and with no namespace
        ``changed`` (none for a format 2 base)."""
        d = self._current_dir()
        if d is None or self._revision_of(d) != base:
            raise BaseMoved(
                f"instance {self.root} is no longer at {base[:12]}",
                hint="apply the whole revision",
            )
        try:
            recorded = self._revision(d)
        except FileNotFoundError:
            raise BaseMoved(self._no_manifest(d).message, hint="apply the whole revision") from None
        except TargetError as e:
            raise BaseMoved(e.message, hint="apply the whole revision") from e
        rebuilt = set(tenants)
        touched = {tenant for tenant, _ in changed} | rebuilt
        spaces = {ns: space for ns, space in recorded.spaces.items() if ns not in changed and ns[0] not in rebuilt}
        indexes = {t: iid for t, iid in (recorded.indexes or {}).items() if t not in touched}
        return spaces, indexes

    def prune(self) -> None:
        """Remove the old revisions beyond ``keep`` and what only they used; what an apply
        does itself unless the target was made with ``prune_later``. Nothing when another
        writer is at work: it prunes, or a later call does."""
        self._ensure_dirs()
        with self._exclusive(wait=0.0) as locked:
            if locked:
                with self._writing() as mark:
                    if mark.unclean:
                        self._remove_debris()
                    mark.keep = not self._prune(everything=mark.unclean)

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
                with self._writing() as mark:
                    self._publish(d)
                    if mark.unclean:
                        self._clean_up_after_a_dead_writer()
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

    def _write_indexes(
        self, spaces: dict[tuple[str, str], tuple[str, str]], kept: dict[str, str]
    ) -> dict[str, str]:
        """The index of every tenant of ``spaces``: as ``kept``, else an existing intact one,
        else one written now (complete under a temporary name, then renamed into place)."""
        tenants: dict[str, dict[str, str]] = {}
        for (tenant, namespace), (sid, _) in spaces.items():
            if tenant not in kept:
                tenants.setdefault(tenant, {})[namespace] = sid
        indexes = dict(kept)
        fresh: list[tuple[str, str, Path]] = []
        for tenant, namespaces in sorted(tenants.items()):
            digest = _index_digest(namespaces)
            shared = self._shareable_index(digest, namespaces)
            if shared is not None:
                indexes[tenant] = shared
                continue
            work = self.indexes_dir / f".tmp-{_random.token_hex(8)}"
            work.mkdir()
            for namespace, sid in namespaces.items():
                self._link_space(sid, f"{work}/{namespace}")
            fresh.append((tenant, digest, work))
        self._sync([folder for _, _, folder in fresh])
        for tenant, digest, work in fresh:
            indexes[tenant] = self._free_id(self.indexes_dir, digest)
            os.rename(work, self.indexes_dir / indexes[tenant])
        return indexes

    def _link_space(self, sid: str, dest: str) -> None:
        """Make ``dest`` (indexes/<iid>/<namespace>) a link to space ``sid``'s tree: a hard
        link of the space's own link (made with the space; for a space written before spaces
        had one, made now, complete, then renamed into place); a symbolic link of its own
        where hard links fail."""
        master = f"{self.spaces_dir}/{sid}/{_SPACE_LINK_NAME}"
        target = _SPACE_LINK.format(sid)
        for attempt in range(2):
            try:
                os.link(master, dest, follow_symlinks=False)
                return
            except FileNotFoundError:
                if attempt:
                    break
                tmp = f"{self.spaces_dir}/.tmp-{_random.token_hex(8)}"
                os.symlink(target, tmp)
                try:
                    os.replace(tmp, master)
                except OSError:
                    os.unlink(tmp)
                    break
            except OSError as e:
                if e.errno not in (errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP):
                    raise
                break
        os.symlink(target, dest)

    def _shareable_index(self, digest: str, namespaces: dict[str, str]) -> str | None:
        """An existing index holding exactly these links and nothing else."""
        for n in range(100):
            iid = digest if n == 0 else f"{digest}.{n}"
            folder = self.indexes_dir / iid
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    continue
            except FileNotFoundError:
                return None
            if _index_problem(str(folder), _SPACE_LINK, namespaces) is None:
                return iid
        return None

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

    def _free_id(self, folder: Path, digest: str) -> str:
        """The first name ``<digest>``, ``<digest>.1``, … not taken in ``folder``."""
        for n in range(1_000_000):
            name = digest if n == 0 else f"{digest}.{n}"
            path = folder / name
            if not path.exists() and not path.is_symlink():
                return name
        raise TargetError(f"too many copies of {folder.name}/{digest} in {self.root}")

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
        indexes: dict[str, str],
        object_dirs: set[Path],
    ) -> str:
        for tenant, iid in indexes.items():
            os.symlink(_INDEX_LINK.format(iid), f"{work}/{tenant}")
        record = _Revision(revision, spaces, indexes)
        seq = max((s for s, _ in self._complete_dirs()), default=0) + 1
        meta = {
            "format": FORMAT,
            "revision": revision,
            "seq": seq,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for name, data in ((MANIFEST, record.to_json()), (REVISION_META, meta)):
            text = json.dumps(data, separators=(",", ":"), sort_keys=True)
            write_new(work / name, text.encode("utf-8"), 0o444, time.time_ns())
        self._sync([
            work / MANIFEST, work / REVISION_META, work, *object_dirs, self.spaces_dir,
            self.indexes_dir,
        ])

        final = revision
        n = 0
        while (self.revisions_dir / final).exists() or (self.revisions_dir / final).is_symlink():
            n += 1
            final = f"{revision}.{n}"
        os.rename(work, self.revisions_dir / final)
        self._sync([self.revisions_dir])
        st = os.stat(self.revisions_dir / final / MANIFEST)  # known: not parsed again when read
        self._revision_cache[final] = ((st.st_ino, st.st_mtime_ns), record)
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
            for folder in (self.revisions_dir, self.objects_dir, self.spaces_dir, self.indexes_dir):
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

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Mark]:
        """Mark the instance as being written while the block runs (the writer lock held).
        ``unclean``: an earlier writer left its mark, having died at work, and what it left
        behind (debris, spaces no revision uses) must be cleaned up now. A block that fails,
        or sets ``keep`` (it left something to clean up), leaves the mark for the next writer;
        a clean one costs no scan at all."""
        path = self.root / _WRITING
        mark = _Mark(path.exists())
        path.touch()
        yield mark
        if not mark.keep:
            path.unlink()

    def _clean_up_after_a_dead_writer(self) -> None:
        """Its debris, then every index, space and object no revision uses."""
        self._remove_debris()
        self._collect_garbage(None)

    def _remove_debris(self) -> bool:
        """Remove what an interrupted apply, activate or prune left behind."""
        removed = False
        places: list[tuple[Path, tuple[str, ...]]] = [
            (self.root, ("current.tmp-", "previous.tmp-")),
            (self.revisions_dir, (".tmp-",)),
            (self.spaces_dir, (".tmp-",)),
            (self.indexes_dir, (".tmp-",)),
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
        """After a failed apply: remove its debris, and the spaces, indexes and objects it
        wrote."""
        with contextlib.suppress(OSError):
            self._remove_debris()
            self._collect_garbage(None)

    def _prune(self, *, everything: bool = False) -> bool:
        """Remove old revisions beyond ``keep``, never the current or the previous one, then
        the indexes and spaces only they used (or, with ``everything``, every index and space
        no revision uses). False when it failed part of the way.

        The apply has already succeeded: a failure here is left for the next writer to retry
        (its caller leaves the writer's mark).
        The pruned revisions stay (renamed away, as debris) until their spaces are collected,
        so that a crash in between leads the next writer to a whole collection.
        """
        with contextlib.suppress(OSError):
            dirs = [d for _, d in self._complete_dirs()]
            protected = {self._link_dir("current"), self._link_dir("previous")}
            doomed = [d for d in dirs[self.keep :] if d not in protected]
            unused = _Refs(set(), set())
            trash: list[Path] = []
            for d in doomed:
                unused.add(self._refs_of(d))
                trash.append(self.revisions_dir / f".tmp-prune-{_random.token_hex(8)}")
                os.rename(self.revisions_dir / d, trash[-1])
                self._revision_cache.discard(d)
            if doomed or everything:
                self._collect_garbage(None if everything else unused)
            for folder in trash:
                shutil.rmtree(folder)
            return True
        return False

    def _refs_of(self, dirname: str) -> _Refs:
        """The spaces and indexes a revision folder uses: from its manifest, or, when that is
        unreadable, from its links (so that a revision that lost its manifest keeps them)."""
        if _DIR_RE.match(dirname):
            with contextlib.suppress(FileNotFoundError, TargetError):
                recorded = self._revision(dirname)
                spaces = {sid for sid, _ in recorded.spaces.values()}
                return _Refs(spaces, set((recorded.indexes or {}).values()))
        found = _Refs(set(), set())
        for tenant in os.scandir(self.revisions_dir / dirname):
            if tenant.name.startswith("."):
                continue
            if tenant.is_dir(follow_symlinks=False):
                found.spaces.update(_links_in(tenant.path, _FORMAT2_SPACE_LINK))
            elif tenant.is_symlink():
                iid = _linked_id(os.readlink(tenant.path), _INDEX_LINK)
                if iid is not None:
                    found.indexes.add(iid)
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                        found.spaces.update(_links_in(f"{self.indexes_dir}/{iid}", _SPACE_LINK))
        return found

    def _referenced(self) -> _Refs:
        """Spaces and indexes the revision folders use (``.tmp-`` ones are debris, or pruned)."""
        found = _Refs(set(), set())
        with contextlib.suppress(FileNotFoundError):
            for rev in list(os.scandir(self.revisions_dir)):
                if rev.is_dir(follow_symlinks=False) and not rev.name.startswith(".tmp-"):
                    found.add(self._refs_of(rev.name))
        return found

    def _collect_garbage(self, candidates: _Refs | None) -> None:
        """Delete the indexes and spaces among ``candidates`` (None: all) no revision uses,
        then the objects only those spaces linked to (None: every object nothing links to,
        link count 1).

        A deleted index or space is renamed away first, as debris; a space stays so until its
        objects are collected, so that a crash in between leads the next writer to a whole
        collection."""
        referenced = self._referenced()
        objects: set[str] | None = None if candidates is None else set()
        if candidates is None:
            candidates = _Refs(set(), set())
            for ids, folder in zip(candidates, (self.spaces_dir, self.indexes_dir), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    ids.update(e.name for e in os.scandir(folder))
        for iid in sorted(candidates.indexes - referenced.indexes):
            gone = _rename_away(self.indexes_dir, iid)
            if gone is not None:
                shutil.rmtree(gone)
        trash: list[Path] = []
        for sid in sorted(candidates.spaces - referenced.spaces):
            moved = _rename_away(self.spaces_dir, sid)
            if moved is None:
                continue
            trash.append(moved)
            if objects is not None:
                try:
                    space = _read_manifest(
                        moved / SPACE_MANIFEST, self._space_cache, sid, SpaceManifest.from_json
                    )
                    objects.update(rec.hash for rec in space.files.values() if rec.hash is not None)
                except (OSError, TargetError):
                    objects = None  # which objects it linked to is unknown: look at them all
            self._space_cache.discard(sid)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(moved / "tree")
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

    def _tenant_folder(
        self, dirname: str, tenant: str, recorded: _Revision
    ) -> tuple[str, str | None] | None:
        """The folder of a tenant's namespaces in a revision (its index, if the revision's
        link to it is intact) and the form of their links to spaces, None for a folder made
        there by hand (whose links are not followed); None when there is no such folder."""
        path = f"{self.revisions_dir}/{dirname}/{tenant}"
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                return path, (_FORMAT2_SPACE_LINK if recorded.indexes is None else None)
            iid = (recorded.indexes or {}).get(tenant)
            if iid is None or not stat.S_ISLNK(mode) or os.readlink(path) != _INDEX_LINK.format(iid):
                return None  # a symlink put there by hand: not followed
            index = f"{self.indexes_dir}/{iid}"
            return (index, _SPACE_LINK) if stat.S_ISDIR(os.lstat(index).st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _namespace_folder(self, dirname: str, tenant: str, namespace: str) -> str | None:
        """The real folder behind ``<revision>/<tenant>/<namespace>``: the tree of the space
        the revision recorded, if its links are intact; a folder made there by hand; or None."""
        try:
            recorded = self._revision(dirname)
        except (FileNotFoundError, TargetError):
            return None
        where = self._tenant_folder(dirname, tenant, recorded)
        if where is None:
            return None
        path = f"{where[0]}/{namespace}"
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(st.st_mode):
            return path
        sid = recorded.spaces.get((tenant, namespace), ("", ""))[0]
        if not sid or where[1] is None or not stat.S_ISLNK(st.st_mode):
            return None
        if os.readlink(path) != where[1].format(sid):
            return None  # a symlink put there by hand: not followed
        return f"{self.spaces_dir}/{sid}/tree"

    def _modified_namespace(self, dirname: str) -> str | None:
        """A tenant or namespace of a revision that no longer holds what was materialised (or
        holds more), if any."""
        try:
            recorded = self._revision(dirname)
            folders = {e.name for e in os.scandir(self.revisions_dir / dirname)}
        except (OSError, TargetError):
            return MANIFEST
        tenants = recorded.by_tenant()
        extra = sorted(f for f in folders - tenants.keys() if not f.startswith("."))
        if extra:
            return extra[0]
        for tenant, namespaces in sorted(tenants.items()):
            where = self._tenant_folder(dirname, tenant, recorded)
            if where is None or where[1] is None:
                return tenant
            try:
                problem = _index_problem(where[0], where[1], namespaces)
            except OSError:
                return tenant
            if problem is not None:
                return f"{tenant}/{problem}"
            for namespace, sid in sorted(namespaces.items()):
                try:
                    if not is_clean(f"{self.spaces_dir}/{sid}/tree", self._space(sid)):
                        return f"{tenant}/{namespace}"
                except (OSError, TargetError):
                    return f"{tenant}/{namespace}"
        return None

    # -- internals: reading back -----------------------------------------------------------

    def _inventory_of(self, dirname: str, only: str | None = None) -> State:
        recorded = self._revision(dirname)
        state: State = {}
        now = time.monotonic()
        for tenant in os.scandir(self.revisions_dir / dirname):
            if tenant.name.startswith(".") or only not in (None, tenant.name):
                continue
            where = self._tenant_folder(dirname, tenant.name, recorded)
            if where is None:
                continue  # gone, or a symlink we did not make: not followed
            folder, link = where
            for entry in os.scandir(folder):
                ns = (tenant.name, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    state.update(read_unmanaged(entry.path, *ns))
                    continue
                sid = recorded.spaces.get(ns, ("", ""))[0]
                if not sid or link is None or not entry.is_symlink():
                    continue
                if os.readlink(entry.path) != link.format(sid):
                    continue  # a symlink we did not make: not followed
                try:
                    space = self._space(sid)
                    found, clean = read_back(f"{self.spaces_dir}/{sid}/tree", space, self._hash_key)
                except (FileNotFoundError, TargetError):
                    continue  # the space was removed or damaged by hand: its resources are missing
                state.update(found)
                if clean:
                    self._verified[sid] = now
        return state


_M = TypeVar("_M")


class _Carried(Exception):
    """Carries an error of the caller's block out of ``LocalTarget.staged`` unconverted."""


class Stage:
    """A revision being written (``LocalTarget.staged``): the spaces it has so far."""

    def __init__(
        self, target: LocalTarget, spaces: dict[tuple[str, str], tuple[str, str]], tenants: frozenset[str]
    ) -> None:
        self._target = target
        self.spaces = spaces
        self.tenants = tenants  # those ``add`` may write
        self.object_dirs: set[Path] = set()

    def add(self, desired: Mapping[ResourceKey, Resource], secrets: SecretValues) -> None:
        """Add the namespaces of ``desired`` (of the tenants being rebuilt), each with all
        its resources: a space that holds them already is shared, the others are written.
        ContentMissing, with nothing written, when a space to write lacks some content."""
        wanted = group(desired, secrets)
        strays = sorted({t for t, _ in wanted} - self.tenants)
        if strays:
            raise TargetError(f"desired state lists tenant {strays[0]!r}, which this revision does not rebuild")
        try:
            spaces, builds, contents = self._target._plan(wanted, secrets, {})  # reads only
            self.spaces.update(spaces)
            self.build(builds, contents)
        except OSError as e:
            raise TargetError(
                f"cannot write {self._target.root}: {e.strerror or e}",
                hint="the instance is unchanged; check free space and permissions",
            ) from e

    def build(self, builds: list[Build], contents: dict[str, bytes]) -> None:
        """Write the spaces of ``builds`` and their objects (``contents``)."""
        target = self._target
        stats, object_dirs = target._store_objects(contents, builds)
        self.object_dirs |= object_dirs
        mtime = second_ago_ns()
        written: list[tuple[Build, Path]] = []
        to_sync: list[Path] = []
        for b in builds:
            written.append((b, target._write_space(b, stats, mtime, to_sync)))
        target._sync(to_sync)
        for b, folder in written:
            w = b.wanted
            sid = target._free_id(target.spaces_dir, w.digest[:32])
            os.symlink(_SPACE_LINK.format(sid), folder / _SPACE_LINK_NAME)  # see _link_space
            os.rename(folder, target.spaces_dir / sid)
            self.spaces[(w.tenant, w.namespace)] = (sid, w.digest)


def _rename_away(parent: Path, name: str) -> Path | None:
    """Rename a space or index to remove to a temporary name (debris if a crash follows);
    None if it is not one Headwater made (debris, or not ours) or is already gone."""
    if not _ID_RE.match(name):
        return None
    folder = parent / f".tmp-gc-{_random.token_hex(8)}"
    try:
        os.rename(parent / name, folder)
    except FileNotFoundError:
        return None
    return folder


class _Manifests(Generic[_M]):
    """Parsed manifests by name, with the version of the file each was read from (inode and
    mtime); the least recently used go beyond ``limit`` (in ``weight`` units)."""

    def __init__(self, limit: int, weight: Callable[[_M], int]) -> None:
        self._items: OrderedDict[str, tuple[tuple[int, int], _M, int]] = OrderedDict()
        self._limit, self._weight, self._total = limit, weight, 0

    def get(self, name: str) -> tuple[tuple[int, int], _M] | None:
        item = self._items.get(name)
        if item is None:
            return None
        self._items.move_to_end(name)
        return item[0], item[1]

    def __setitem__(self, name: str, value: tuple[tuple[int, int], _M]) -> None:
        self.discard(name)
        weight = self._weight(value[1])
        self._items[name] = (*value, weight)
        self._total += weight
        while self._total > self._limit and len(self._items) > 1:
            self._total -= self._items.popitem(last=False)[1][2]

    def discard(self, name: str) -> None:
        item = self._items.pop(name, None)
        if item is not None:
            self._total -= item[2]

    def __len__(self) -> int:
        return len(self._items)


def _read_manifest(path: Path, cache: _Manifests[_M], name: str, parse: Callable[[Any], _M]) -> _M:
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
