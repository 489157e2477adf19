"""Namespace folders ("spaces") of the local target: what one holds, how it is built from a
desired state, and how it is read back.

A space is the folder of one namespace at one content: ``spaces/<id>/tree`` holds ``flows/``,
``files/``, ``config.json``, ``kv.json`` and ``secrets.env``, and ``spaces/<id>/manifest.json``
records every resource in it with its hash and the stat of every file as it was written. A
space never changes after it is built; revisions whose namespace has the same resources share
it (the namespace's entry in its tenant's index is a symlink to its tree), so an apply writes
only the namespaces that changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from headwater.errors import ContentMissing, TargetError
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
from headwater.targets.local_files import FileRecord, read_under, walk
from headwater.targets.local_names import (
    HINT_NAME,
    canonical,
    check_namespace,
    classify,
    kv_values,
    parse_json,
    path_in_namespace,
    secret_lines,
)

FORMAT = 1
_OBJECT_KINDS = ("flow", "file", "config")


class Row(NamedTuple):
    """One resource of a space, as recorded in its manifest (names checked when written)."""

    kind: Kind
    name: str
    hash: str
    binary: bool = False
    canonical: str = ""  # kv only: hash of the value's canonical JSON

    @property
    def path(self) -> str:
        return _ROW_PATHS[self.kind].format(self.name)


_ROW_PATHS = {
    "flow": "flows/{}.yaml", "file": "files/{}", "config": "config.json", "kv": "kv.json",
    "secret": "secrets.env",
}


@dataclass(frozen=True)
class SpaceManifest:
    tenant: str
    namespace: str
    digest: str
    rows: tuple[Row, ...]
    files: dict[str, FileRecord]  # path inside the tree -> its stat when written

    def key(self, row: Row) -> ResourceKey:
        return ResourceKey(self.tenant, self.namespace, row.kind, row.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tenant": self.tenant,
            "namespace": self.namespace,
            "digest": self.digest,
            "rows": [[r.kind, r.name, r.hash, r.binary, r.canonical] for r in self.rows],
            "files": {p: list(f) for p, f in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> SpaceManifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("unknown space manifest format")
        rows = tuple(Row(k, n, h, b, c) for k, n, h, b, c in data["rows"])
        files = {p: FileRecord._make(v) for p, v in data["files"].items()}
        if any(r.kind not in _ROW_PATHS for r in rows):
            raise ValueError("unknown resource kind")
        return cls(str(data["tenant"]), str(data["namespace"]), str(data["digest"]), rows, files)


@dataclass
class Wanted:
    """The desired resources of one namespace, names checked; ``digest`` identifies them."""

    tenant: str
    namespace: str
    items: list[tuple[ResourceKey, Resource, str]] = field(default_factory=list)
    digest: str = ""


@dataclass
class Build:
    """A space to write, checked before the disk is touched."""

    wanted: Wanted
    rows: list[Row] = field(default_factory=list)
    objects: dict[str, str] = field(default_factory=dict)  # path in tree -> digest
    secret_file: bytes | None = None


def group(desired: Mapping[ResourceKey, Resource], secrets: SecretValues) -> dict[tuple[str, str], Wanted]:
    """The desired state by namespace, every name checked and every secret value present."""
    spaces: dict[tuple[str, str], Wanted] = {}
    for key, res in desired.items():
        if res.key != key:
            raise TargetError(f"desired state lists {res.key} under {key}")
        ns = (key.tenant, key.namespace)
        wanted = spaces.get(ns)
        if wanted is None:
            check_namespace(*ns)
            wanted = spaces[ns] = Wanted(*ns)
        path = path_in_namespace(key)
        if key.kind == "secret" and secrets.get(ns, {}).get(key.name) is None:
            raise TargetError(
                f"no value for secret {key.name} of {key.tenant}/{key.namespace}",
                hint="set it in the secret provider, or remove the reference",
            )
        wanted.items.append((key, res, path))
    for wanted in spaces.values():
        lines = sorted(f"{k.kind}\0{k.name}\0{r.hash}\n" for k, r, _ in wanted.items)
        digest = hashlib.sha256(f"{FORMAT}\0{wanted.tenant}\0{wanted.namespace}\n".encode())
        digest.update("".join(lines).encode("utf-8", "surrogatepass"))
        wanted.digest = digest.hexdigest()
    return spaces


def prepare(wanted: Wanted, secrets: SecretValues, contents: dict[str, bytes]) -> Build:
    """The files of one space; new object contents are added to ``contents`` by digest."""
    build = Build(wanted)
    kv: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, res, path in sorted(wanted.items, key=lambda item: item[2]):
        if key.kind == "secret":
            value = secrets[(key.tenant, key.namespace)][key.name]
            env[key.name] = base64.b64encode(value.encode("utf-8")).decode("ascii")
            build.rows.append(Row(key.kind, key.name, res.hash))
            continue
        if res.content is None:
            raise ContentMissing(f"{key} has no content to apply")
        if content_hash(res.content) != res.hash:
            raise TargetError(f"{key}: content does not match its hash {res.hash}")
        if key.kind == "kv":
            try:
                value = parse_json(res.content)
            except ValueError as e:
                raise TargetError(
                    f"kv {key}: content is not JSON", hint="a kv resource holds the JSON of its value"
                ) from e
            kv[key.name] = value
            build.rows.append(Row(key.kind, key.name, res.hash, canonical=content_hash(canonical(value))))
            continue
        build.objects[path] = res.hash
        contents.setdefault(res.hash, res.content)
        build.rows.append(Row(key.kind, key.name, res.hash, is_binary(res.content)))
    if kv:
        text = (json.dumps(kv, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        build.objects["kv.json"] = digest = content_hash(text)
        contents.setdefault(digest, text)
    if env:
        build.secret_file = "".join(f"SECRET_{n}={v}\n" for n, v in sorted(env.items())).encode("ascii")
    paths = [*build.objects, *(["secrets.env"] if env else [])]
    folders = set()
    for p in paths:
        parent = posixpath.dirname(p)
        while parent and parent not in folders:
            folders.add(parent)
            parent = posixpath.dirname(parent)
    for p in paths:
        if p in folders:
            where = f"{wanted.tenant}/{wanted.namespace}/{p}"
            raise TargetError(f"{where} is both a file and a folder in this revision", hint=HINT_NAME)
    return build


# -- reading back ----------------------------------------------------------------------------


def is_clean(tree: str, manifest: SpaceManifest) -> bool:
    """Whether a space holds exactly the files it was written with (stat as recorded)."""
    try:
        found = walk(tree)
    except FileNotFoundError:
        return False
    if found.keys() != manifest.files.keys():
        return False
    return all(manifest.files[rel].matches(st) for rel, st in found.items())


def read_back(tree: str, manifest: SpaceManifest, hash_key: bytes | None) -> tuple[State, bool]:
    """The resources a space holds now, with their hashes, and whether it is untouched."""
    found = walk(tree)
    state: State = {}
    clean = found.keys() == manifest.files.keys()

    def actual(rel: str) -> tuple[str, bytes | None] | None:
        """(hash, content if it had to be read) of a file as it is now."""
        nonlocal clean
        st = found.get(rel)
        if st is None:
            return None
        rec = manifest.files.get(rel)
        if rec is not None and rec.hash is not None and rec.matches(st):
            return rec.hash, None
        clean = False
        data = read_under(tree, rel)
        return None if data is None else (content_hash(data), data)

    by_file: dict[str, list[Row]] = {}
    for row in manifest.rows:
        by_file.setdefault(row.path, []).append(row)

    for rel, rows in by_file.items():
        kind = rows[0].kind
        if kind in _OBJECT_KINDS:
            got = actual(rel)
            if got is not None:
                row = rows[0]
                binary = row.binary if got[1] is None else is_binary(got[1])
                key = manifest.key(row)
                state[key] = Resource(key, got[0], None, binary, rel)
        elif kind == "kv":
            clean &= _read_kv(state, tree, rel, rows, found, manifest)
        else:
            clean &= _read_secrets(state, tree, rel, rows, found, manifest, hash_key)

    for rel in found.keys() - by_file.keys():
        what = classify(rel)
        if what is None:
            continue
        kind, name = what
        if kind == "kv":
            _read_kv(state, tree, rel, [], found, manifest)
        elif kind == "secret":
            _read_secrets(state, tree, rel, [], found, manifest, hash_key)
        else:
            got = actual(rel)
            if got is not None and got[1] is not None:
                key = ResourceKey(manifest.tenant, manifest.namespace, kind, name)
                state[key] = Resource(key, got[0], None, is_binary(got[1]), rel)
    return state, clean


def read_unmanaged(folder: str, tenant: str, namespace: str) -> State:
    """The resources of a namespace folder Headwater never wrote (made by hand)."""
    empty = SpaceManifest(tenant, namespace, "", (), {})
    state, _ = read_back(folder, empty, None)
    return state


def _recorded_and_untouched(
    state: State, rel: str, rows: list[Row], st: os.stat_result, manifest: SpaceManifest
) -> bool:
    """When the file is as it was written, its resources are the recorded rows: no read."""
    rec = manifest.files.get(rel)
    if not rows or rec is None or not rec.matches(st):
        return False
    for row in rows:
        key = manifest.key(row)
        state[key] = Resource(key, row.hash, None, False, rel)
    return True


def _read_kv(
    state: State, tree: str, rel: str, rows: list[Row], found: dict[str, os.stat_result],
    manifest: SpaceManifest,
) -> bool:
    st = found.get(rel)
    if st is None:
        return False
    if _recorded_and_untouched(state, rel, rows, st, manifest):
        return True
    data = read_under(tree, rel)
    values = None if data is None else kv_values(data)
    if values is None:
        return False  # unreadable: its entries are missing, and the next apply rewrites it
    recorded = {row.name: row for row in rows}
    for name, value in values.items():
        key = ResourceKey(manifest.tenant, manifest.namespace, "kv", name)
        digest = content_hash(canonical(value))
        known = recorded.get(name)
        if known is not None and known.canonical == digest:
            digest = known.hash  # the same value, written differently
        state[key] = Resource(key, digest, None, False, rel)
    return False


def _read_secrets(
    state: State, tree: str, rel: str, rows: list[Row], found: dict[str, os.stat_result],
    manifest: SpaceManifest, hash_key: bytes | None,
) -> bool:
    st = found.get(rel)
    if st is None:
        return False
    if _recorded_and_untouched(state, rel, rows, st, manifest):
        return True
    data = read_under(tree, rel)
    lines = None if data is None else secret_lines(data)
    if lines is None:
        return False
    exposed = stat.S_IMODE(st.st_mode) & 0o077 != 0
    recorded = {row.name: row.hash for row in rows}
    for name, encoded in lines.items():
        key = ResourceKey(manifest.tenant, manifest.namespace, "secret", name)
        if exposed:
            digest = "hmac:exposed"  # readable by others: show as drift so apply rewrites it
        elif hash_key is not None:
            try:
                value = base64.b64decode(encoded, validate=True).decode("utf-8")
                digest = secret_hash(hash_key, value)
            except (binascii.Error, UnicodeDecodeError):
                digest = "hmac:invalid"
        else:
            digest = recorded.get(name, "hmac:unknown")
        state[key] = Resource(key, digest, None, False, rel)
    return False
