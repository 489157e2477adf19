"""A commit, loaded: layout, parsed configs and flows, and per-instance effective views.

Loading reads the tree listing once and every needed blob in one batch. Parse and validation
results are cached by blob id, so an unchanged file is parsed once per process, whatever the
number of commits or instances that contain it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pathspec

from headwater import heap, inherit, layout, schemas, yamlio
from headwater.cache import ResultCache, model_fingerprint
from headwater.cache import key as cache_key
from headwater.errors import Diagnostic
from headwater.flowbatch import validate_many
from headwater.gitrepo import GitRepo, TreeEntry
from headwater.kestra_types import TypeRegistry
from headwater.rules.flow_rules import FlowReferences
from headwater.rules.references import check_namespace

NAMESPACE_SCHEMA = "namespace.schema.json"
REPO_SCHEMA = "headwater.schema.json"
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")
_MAX_FILE_BYTES = layout.DEFAULT_MAX_FILE_BYTES
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float | None) -> float:
    """``30m`` → 1800.0, ``1h30m`` → 5400.0 (units s, m, h, d, w); numbers are seconds."""
    if text is None:
        return 0.0
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if not _DURATION.match(text):
        raise ValueError(f"invalid duration {text!r}")
    return sum(int(n) * float(_UNITS[unit]) for n, unit in _PART.findall(text))


@dataclass(frozen=True)
class InstanceSpec:
    """An instance as the repository describes it (``headwater.yaml`` ``instances.<name>``)."""

    name: str
    branch: str
    tenants: tuple[str, ...] = ("*",)
    promotion_from: str | None = None
    soak_seconds: float = 0.0
    max_delete_percent: float | None = None
    self_heal: bool = False

    def carries(self, tenant: str) -> bool:
        return any(fnmatch.fnmatchcase(tenant, pattern) for pattern in self.tenants)


@dataclass(slots=True)
class FlowInfo:
    tenant: str
    namespace: str
    flow_id: str
    entry: TreeEntry
    refs: FlowReferences | None


@dataclass
class NamespaceView:
    """One namespace as one instance sees it."""

    tenant: str
    name: str
    effective: inherit.Effective
    files: dict[str, tuple[str, TreeEntry]]  # path → (origin namespace, blob)
    flows: dict[str, FlowInfo]


NsKey = tuple[str, str]


@dataclass
class InstanceView:
    spec: InstanceSpec
    namespaces: dict[NsKey, NamespaceView]
    # Diagnostics by where they come from: "" the repository layers, ("tenant", t) a tenant's
    # merge, ("merge", t, ns) a namespace's merge, ("check", t, ns) its reference checks.
    parts: dict[Any, list[Diagnostic]]
    root: inherit.Effective  # the repository's layers, merged
    bases: dict[str, inherit.Effective]  # tenant → the effective config its namespaces start from
    files_inherit: dict[NsKey, bool]

    @functools.cached_property
    def diagnostics(self) -> list[Diagnostic]:
        found = {d for part in self.parts.values() for d in part}
        return sorted(found, key=lambda d: (d.path, d.line or 0, d.code, d.message))


@dataclass
class Snapshot:
    revision: str
    layout: layout.Layout
    repo_doc: yamlio.Document | None
    instances: dict[str, InstanceSpec]
    configs: dict[str, yamlio.Document]  # repo path → parsed tenant.yaml / namespace.yaml
    flows: dict[tuple[str, str, str], FlowInfo]
    diagnostics: list[Diagnostic]  # instance-independent problems
    registry: TypeRegistry
    # What an incremental update (``update``) needs: the diagnostics of the layout and of
    # headwater.yaml, those of each parsed flow and config by path, the loading options.
    fixed_diagnostics: list[Diagnostic] = field(default_factory=list)
    parsed: dict[str, list[Diagnostic]] = field(default_factory=dict)
    max_file_bytes: int = _MAX_FILE_BYTES
    extra_types: tuple[str, ...] = ()
    cache: ResultCache | None = field(default=None, repr=False, compare=False)
    _views: dict[str, InstanceView] = field(default_factory=dict)
    _paths: dict[str, tuple[str, str, str, str]] | None = None

    def view(self, instance: str) -> InstanceView:
        cached = self._views.get(instance)
        if cached is None:
            with heap.paused():
                cached = self._views[instance] = _build_view(self, self.instances[instance])
        return cached

    def path_index(self) -> dict[str, tuple[str, str, str, str]]:
        """Repository path → (role, tenant, namespace, name) of every file in the model; role
        is ``flow``, ``file``, ``config`` or ``tenant``."""
        if self._paths is None:
            index: dict[str, tuple[str, str, str, str]] = {}
            for t in self.layout.tenants.values():
                if t.config is not None:
                    index[t.config.path] = ("tenant", t.name, "", "")
                for ns in t.namespaces.values():
                    if ns.config is not None:
                        index[ns.config.path] = ("config", t.name, ns.name, "")
                    for fid, e in ns.flows.items():
                        index[e.path] = ("flow", t.name, ns.name, fid)
                    for rel, e in ns.files.items():
                        index[e.path] = ("file", t.name, ns.name, rel)
            self._paths = index
        return self._paths

    def report(self, instances: Iterable[str]) -> list[Diagnostic]:
        """Every diagnostic for the given instances, instance-specific ones labelled."""
        names = list(instances)
        result = list(self.diagnostics)
        counts: dict[Diagnostic, list[str]] = {}
        for name in names:
            for diag in self.view(name).diagnostics:
                counts.setdefault(diag, []).append(name)
        for diag, where in counts.items():
            if len(where) == len(names):
                result.append(diag)
            else:
                result.append(
                    Diagnostic(
                        diag.path, diag.line, diag.column, diag.code,
                        f"{diag.message} (instance {', '.join(where)})",
                        diag.hint, diag.severity, diag.related,
                    )
                )
        return sorted(set(result), key=lambda d: (d.path, d.line or 0, d.column or 0, d.code, d.message))


# -- caches ----------------------------------------------------------------------------------

_CONFIG_CACHE: dict[tuple[str, str], tuple[yamlio.Document | None, list[Diagnostic]]] = {}
_CACHE_LIMIT = 200_000


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _parse_config(data: bytes, path: str, oid: str, schema: str) -> tuple[yamlio.Document | None, list[Diagnostic]]:
    key = (oid, path)
    cached = _CONFIG_CACHE.get(key)
    if cached is not None:
        return cached
    diags: list[Diagnostic] = []
    doc: yamlio.Document | None
    try:
        doc = yamlio.load(data, path)
    except yamlio.YamlError as exc:
        doc, diags = None, [exc.diagnostic]
    if doc is not None:
        if doc.value is None:
            doc = yamlio.Document(path, {}, doc.marks)
        if not isinstance(doc.value, dict):
            diags.append(
                Diagnostic(path, 1, 1, "config.not-a-mapping", "the file must hold a YAML mapping",
                           hint="start with keys such as `variables:`")
            )
            doc = None
        else:
            diags.extend(schemas.validate(doc, schema))
    result = (doc, diags)
    _remember(_CONFIG_CACHE, key, result)
    return result


# -- loading ---------------------------------------------------------------------------------


@heap.paused()
def load(
    repo: GitRepo, rev: str, *, extra_types: Iterable[str] = (), cache: ResultCache | None = None
) -> Snapshot:
    """Load and validate (instance-independent part) the commit ``rev`` of ``repo``.

    With a ``cache``, flows and configs already seen (same blob, path and code) are neither
    read nor parsed again.
    """
    sha = repo.resolve(rev)
    entries = repo.ls_tree(sha)
    by_path = {e.path: e for e in entries}
    diags: list[Diagnostic] = []

    first = [by_path[p] for p in (layout.REPO_CONFIG, layout.IGNORE_FILE) if p in by_path]
    early = repo.read_blobs(e.oid for e in first)
    ignored = None
    if layout.IGNORE_FILE in by_path:
        text = early[by_path[layout.IGNORE_FILE].oid].decode("utf-8", "replace")
        spec = pathspec.GitIgnoreSpec.from_lines(text.splitlines())
        ignored = spec.match_file

    repo_doc: yamlio.Document | None = None
    if layout.REPO_CONFIG in by_path:
        entry = by_path[layout.REPO_CONFIG]
        repo_doc, found = _parse_config(early[entry.oid], entry.path, entry.oid, REPO_SCHEMA)
        diags.extend(found)
    else:
        diags.append(
            Diagnostic(layout.REPO_CONFIG, None, None, "repo.no-config",
                       "headwater.yaml is missing at the repository root",
                       hint="run `headwater init` or add a headwater.yaml with `version: 1` and `instances:`")
        )
    repo_value: Mapping[str, Any] = repo_doc.value if repo_doc is not None else {}
    instances = _instances(repo_value)
    max_bytes = _get(repo_value, "limits", "maxFileBytes", default=layout.DEFAULT_MAX_FILE_BYTES)
    extra = list(extra_types) + list(_get(repo_value, "types", "extra", default=[]) or [])
    registry = TypeRegistry.builtin(extra)

    tree = layout.build(entries, ignored=ignored, max_file_bytes=int(max_bytes))
    diags.extend(tree.diagnostics)

    config_entries = [t.config for t in tree.tenants.values() if t.config is not None]
    config_entries += [
        ns.config for t in tree.tenants.values() for ns in t.namespaces.values() if ns.config is not None
    ]
    flow_entries = [
        (t.name, ns.name, fid, e)
        for t in tree.tenants.values()
        for ns in t.namespaces.values()
        for fid, e in ns.flows.items()
    ]
    store = cache if cache is not None else ResultCache(None)
    config_keys = {e.path: cache_key("config", e.oid, e.path) for e in config_entries}
    flow_keys = {
        e.path: cache_key("flow", e.oid, e.path, registry.fingerprint, fid, ns)
        for (_t, ns, fid, e) in flow_entries
    }
    known = store.get_many([*config_keys.values(), *flow_keys.values()])
    fresh: dict[str, Any] = {}
    parsed: dict[str, list[Diagnostic]] = {}
    configs: dict[str, yamlio.Document] = {}

    def parse_configs() -> None:
        blobs = repo.read_blobs(e.oid for e in config_entries if config_keys[e.path] not in known)
        for entry in config_entries:
            ckey = config_keys[entry.path]
            if ckey in known:
                doc, found = known[ckey]
            else:
                doc, found = _parse_config(blobs[entry.oid], entry.path, entry.oid, NAMESPACE_SCHEMA)
                fresh[ckey] = (doc, found)
            parsed[entry.path] = found
            if doc is not None:
                configs[entry.path] = doc

    todo = [(e.oid, e.path, fid, ns) for (_t, ns, fid, e) in flow_entries if flow_keys[e.path] not in known]
    # The configs are parsed here while the validation workers start on the flows.
    validated = validate_many(repo, todo, registry, extra, meanwhile=parse_configs)
    flows: dict[tuple[str, str, str], FlowInfo] = {}
    for tenant, ns, fid, entry in flow_entries:
        fkey = flow_keys[entry.path]
        if fkey in known:
            found, refs = known[fkey]
        else:
            found, refs = fresh[fkey] = validated[entry.path]
        parsed[entry.path] = found
        flows[(tenant, ns, fid)] = FlowInfo(tenant, ns, fid, entry, refs)
    store.put_many(fresh)

    return Snapshot(
        sha, tree, repo_doc, instances, configs, flows, [*diags, *_flatten(parsed)], registry,
        fixed_diagnostics=diags, parsed=parsed, max_file_bytes=int(max_bytes), extra_types=tuple(extra),
        cache=cache,
    )


def _flatten(parsed: Mapping[str, list[Diagnostic]]) -> list[Diagnostic]:
    return [d for found in parsed.values() for d in found]


def _get(value: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    current: Any = value
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


def _instances(repo_value: Mapping[str, Any]) -> dict[str, InstanceSpec]:
    result: dict[str, InstanceSpec] = {}
    raw = repo_value.get("instances")
    if not isinstance(raw, Mapping):
        return result
    for name, spec in raw.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("branch"), str):
            continue
        tenants = spec.get("tenants") or ["*"]
        try:
            soak = parse_duration(_get(spec, "promotion", "soak"))
        except ValueError:
            soak = 0.0  # the schema reports the bad duration
        percent = _get(spec, "prune", "maxDeletePercent")
        result[str(name)] = InstanceSpec(
            name=str(name),
            branch=spec["branch"],
            tenants=tuple(str(t) for t in tenants),
            promotion_from=_get(spec, "promotion", "from"),
            soak_seconds=soak,
            max_delete_percent=float(percent) if isinstance(percent, int | float) else None,
            self_heal=bool(spec.get("selfHeal", False)),
        )
    return result


# -- per-instance views ----------------------------------------------------------------------


def _files_inherit(doc: yamlio.Document | None, instance: str) -> bool:
    """A namespace's own ``files.inherit`` (its overlay for the instance wins); default true."""
    if doc is None:
        return True
    flag = _get(doc.value, "files", "inherit")
    overlay = _get(doc.value, "environments", instance, "files", "inherit")
    if isinstance(overlay, bool):
        flag = overlay
    return flag is not False


def _build_view(snap: Snapshot, spec: InstanceSpec) -> InstanceView:
    root, found = inherit.merge(inherit.repository_layers(snap.repo_doc, spec.name))
    view = InstanceView(spec, {}, {"": found}, root, {}, {})
    for tenant in sorted(snap.layout.tenants.values(), key=lambda t: t.name):
        if spec.carries(tenant.name):
            _tenant_base(snap, view, tenant)
            for name in sorted(tenant.namespaces, key=_depth_order):
                _namespace_view(snap, view, tenant, name, merge=True)
    _check_all(snap, view)
    return view


def _check_all(snap: Snapshot, view: InstanceView) -> None:
    """The reference checks of every namespace of ``view``: from the result cache when this
    commit was checked for this instance before (by the same code and types), else run."""
    keys = list(view.namespaces)
    if snap.cache is None:
        for key in keys:
            _check(snap, view, key)
        return
    ckey = _checks_key(snap, view)
    found = snap.cache.get_many([ckey]).get(ckey)
    if isinstance(found, tuple) and len(found) == 2 and found[0] == len(keys):
        by_ns: dict[NsKey, list[Diagnostic]] = found[1]
        for key in keys:
            view.parts[("check", *key)] = list(by_ns.get(key, ()))
        return
    for key in keys:
        _check(snap, view, key)
    _remember_checks(snap, view)


def _checks_key(snap: Snapshot, view: InstanceView) -> str:
    return cache_key("checks", snap.revision, view.spec.name, snap.registry.fingerprint, model_fingerprint())


def _remember_checks(snap: Snapshot, view: InstanceView) -> None:
    """Cache the reference checks of ``view`` for its commit (see ``_check_all``)."""
    if snap.cache is not None:
        found = {
            (k[1], k[2]): diags for k, diags in view.parts.items()
            if isinstance(k, tuple) and k[0] == "check" and diags
        }
        snap.cache.put_many({_checks_key(snap, view): (len(view.namespaces), found)})


def _depth_order(name: str) -> tuple[int, str]:
    return (name.count("."), name)


def _tenant_base(snap: Snapshot, view: InstanceView, tenant: layout.Tenant) -> None:
    base, found = view.root, list[Diagnostic]()
    if tenant.config is not None:
        doc = snap.configs.get(tenant.config.path)
        layers = inherit.config_layers(tenant.config.path, f"tenant {tenant.name}", doc, view.spec.name)
        base, found = inherit.merge(layers, view.root)
    view.bases[tenant.name] = base
    view.parts[("tenant", tenant.name)] = found


def _namespace_view(
    snap: Snapshot, view: InstanceView, tenant: layout.Tenant, name: str, *, merge: bool
) -> None:
    """(Re)build one namespace's view; its parent's must be up to date. Without ``merge`` the
    effective config is kept (only its flows or files changed)."""
    key = (tenant.name, name)
    ns = tenant.namespaces[name]
    doc = snap.configs.get(ns.config.path) if ns.config is not None else None
    old = view.namespaces.get(key)
    if merge or old is None:
        effective = view.namespaces[(tenant.name, ns.parent)].effective if ns.parent else view.bases[tenant.name]
        found: list[Diagnostic] = []
        if ns.config is not None:
            layers = inherit.config_layers(ns.config.path, f"namespace {name}", doc, view.spec.name)
            effective, found = inherit.merge(layers, effective)
        view.parts[("merge", *key)] = found
    else:
        effective = old.effective
    inherits = view.files_inherit[key] = _files_inherit(doc, view.spec.name)
    # ``inherit.effective_files`` of the ancestry, built on the parent's result: its entries
    # (a large instance has hundreds of thousands of inherited ones) are shared, not copied.
    parent = view.namespaces[(tenant.name, ns.parent)].files if ns.parent and inherits else {}
    files = {**parent, **{path: (name, entry) for path, entry in ns.files.items()}}
    flows = {fid: snap.flows[(tenant.name, name, fid)] for fid in ns.flows if (tenant.name, name, fid) in snap.flows}
    view.namespaces[key] = NamespaceView(tenant.name, name, effective, files, flows)


def _check(snap: Snapshot, view: InstanceView, key: NsKey) -> None:
    view.parts[("check", *key)] = check_namespace(view.namespaces[key], view.namespaces, snap)


# -- incremental update ----------------------------------------------------------------------


@dataclass
class Update:
    """A snapshot derived from an earlier one by the paths that changed between them."""

    snapshot: Snapshot
    changed: dict[str, tuple[str, str, str, str]]  # path → its place (``Snapshot.path_index``)
    # Per instance: namespaces whose effective config was recomputed (below a changed
    # namespace.yaml or tenant.yaml), and every namespace whose resources may differ.
    remerged: dict[str, set[NsKey]] = field(default_factory=dict)
    touched: dict[str, set[NsKey]] = field(default_factory=dict)


def update(
    old: Snapshot, repo: GitRepo, rev: str, *, cache: ResultCache | None = None
) -> Update | None:
    """The snapshot at ``rev`` derived from ``old`` with work proportional to the change.

    Handles commits that only edit flows, namespace files, ``namespace.yaml`` and
    ``tenant.yaml`` in place (the common case); None when anything else changed (a path
    added, removed or retyped, ``headwater.yaml``, ``.headwaterignore``, a file over the size
    limit…): then ``load`` the commit instead. The result equals what ``load`` gives.
    """
    sha = repo.resolve(rev)
    index = old.path_index()
    changed: dict[str, tuple[str, str, str, str]] = {}
    new_oids: dict[str, str] = {}
    for change in repo.changes(old.revision, sha):
        if change.path in (layout.REPO_CONFIG, layout.IGNORE_FILE):
            return None
        place = index.get(change.path)
        if place is None:
            if change.path.startswith(layout.TENANTS_DIR + "/"):
                return None  # a path the model ignores today (or a new one) may count tomorrow
            continue  # README, CI files: outside the model
        if change.status != "M" or change.old_mode != change.new_mode:
            return None
        changed[change.path] = place
        new_oids[change.path] = change.new_oid
    if not changed:
        return Update(dataclasses.replace(old, revision=sha, cache=cache, _views=dict(old._views), _paths=old._paths), {})

    blobs = repo.read_blobs(new_oids.values())
    if any(len(blobs[oid]) > old.max_file_bytes for oid in new_oids.values()):
        return None
    tree = _relayout(old, changed, new_oids, blobs)
    store = cache if cache is not None else ResultCache(None)
    parsed = dict(old.parsed)
    configs = dict(old.configs)
    flows = dict(old.flows)
    fresh: dict[str, Any] = {}
    todo = []
    for path, (role, _t, ns, name) in changed.items():
        oid = new_oids[path]
        if role in ("config", "tenant"):
            ckey = cache_key("config", oid, path)
            known = store.get_many([ckey])
            doc, found = known[ckey] if ckey in known else _parse_config(blobs[oid], path, oid, NAMESPACE_SCHEMA)
            fresh[ckey] = (doc, found)
            parsed[path] = found
            configs.pop(path, None)
            if doc is not None:
                configs[path] = doc
        elif role == "flow":
            todo.append((oid, path, name, ns))
    flow_keys = {path: cache_key("flow", oid, path, old.registry.fingerprint, fid, ns) for oid, path, fid, ns in todo}
    known = store.get_many(flow_keys.values())
    validated = validate_many(repo, [t for t in todo if flow_keys[t[1]] not in known], old.registry,
                              list(old.extra_types))
    for _oid, path, fid, ns in todo:
        fkey = flow_keys[path]
        if fkey in known:
            found, refs = known[fkey]
        else:
            found, refs = fresh[fkey] = validated[path]
        parsed[path] = found
        tenant = changed[path][1]
        flows[(tenant, ns, fid)] = FlowInfo(tenant, ns, fid, tree.tenants[tenant].namespaces[ns].flows[fid], refs)
    store.put_many(fresh)

    clean = not any(old.parsed.get(path) or parsed.get(path) for path in changed)
    diagnostics = old.diagnostics if clean else [*old.fixed_diagnostics, *_flatten(parsed)]
    snap = dataclasses.replace(
        old, revision=sha, layout=tree, configs=configs, flows=flows, parsed=parsed,
        diagnostics=diagnostics, cache=cache, _views={}, _paths=old._paths,
    )
    result = Update(snap, changed)
    for name, view in old._views.items():
        spec = snap.instances[name]
        snap._views[name], result.remerged[name], result.touched[name] = _update_view(snap, spec, view, changed)
        _remember_checks(snap, snap._views[name])  # a restart on this commit then skips them
    return result


def _relayout(
    old: Snapshot, changed: Mapping[str, tuple[str, str, str, str]], oids: Mapping[str, str],
    blobs: Mapping[str, bytes],
) -> layout.Layout:
    """``old.layout`` with the changed entries' blob ids (copy on write: unchanged tenants and
    namespaces are shared with the old layout)."""
    tenants = dict(old.layout.tenants)
    copied: set[tuple[str, str]] = set()
    for path, (role, t, ns, name) in changed.items():
        if (t, "") not in copied:
            tenants[t] = dataclasses.replace(tenants[t], namespaces=dict(tenants[t].namespaces))
            copied.add((t, ""))
        tenant = tenants[t]
        if role == "tenant":
            assert tenant.config is not None
            tenant.config = _retarget(tenant.config, oids[path], blobs)
            continue
        if (t, ns) not in copied:
            node = tenant.namespaces[ns]
            tenant.namespaces[ns] = dataclasses.replace(node, flows=dict(node.flows), files=dict(node.files))
            copied.add((t, ns))
        node = tenant.namespaces[ns]
        if role == "config":
            assert node.config is not None
            node.config = _retarget(node.config, oids[path], blobs)
        elif role == "flow":
            node.flows[name] = _retarget(node.flows[name], oids[path], blobs)
        else:
            node.files[name] = _retarget(node.files[name], oids[path], blobs)
    return dataclasses.replace(old.layout, tenants=tenants)


def _retarget(entry: TreeEntry, oid: str, blobs: Mapping[str, bytes]) -> TreeEntry:
    return entry._replace(oid=oid, size=len(blobs[oid]))


def _update_view(
    snap: Snapshot, spec: InstanceSpec, old: InstanceView, changed: Mapping[str, tuple[str, str, str, str]]
) -> tuple[InstanceView, set[NsKey], set[NsKey]]:
    """``old`` brought to ``snap``: effective configs are merged again only below a changed
    config, file sets rebuilt only below a changed file or config, checks rerun only where a
    flow or what it is checked against changed."""
    view = InstanceView(
        spec, dict(old.namespaces), dict(old.parts), old.root, dict(old.bases), dict(old.files_inherit)
    )
    remerge: set[NsKey] = set()
    rebuild: set[NsKey] = set()
    for role, t, ns, _name in changed.values():
        tenant = snap.layout.tenants[t]
        if not spec.carries(t):
            continue
        if role == "tenant":
            _tenant_base(snap, view, tenant)
            remerge |= {(t, n) for n in tenant.namespaces}
        elif role in ("config", "file"):
            below = {(t, n) for n in tenant.namespaces if n == ns or n.startswith(ns + ".")}
            (remerge if role == "config" else rebuild).update(below)
        else:
            rebuild.add((t, ns))
    touched = remerge | rebuild
    for t, name in sorted(touched, key=lambda k: (k[0], *_depth_order(k[1]))):
        _namespace_view(snap, view, snap.layout.tenants[t], name, merge=(t, name) in remerge)
    # A flow's checks read its own namespace's view and the names of the files and flows of
    # others (``read()``, subflows). In-place edits keep flow names, but ``files.inherit``
    # may change which files a namespace sees: then every flow of that tenant is checked again.
    recheck = set(touched)
    for key in touched:
        if view.namespaces[key].files.keys() != old.namespaces[key].files.keys():
            recheck |= {(key[0], n) for n in snap.layout.tenants[key[0]].namespaces}
    for key in recheck:
        _check(snap, view, key)
    return view, remerge, touched

