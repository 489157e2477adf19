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
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pathspec

from headwater import heap, inherit, layout, schemas, yamlio
from headwater.cache import ResultCache, model_fingerprint
from headwater.cache import key as cache_key
from headwater.errors import Diagnostic
from headwater.flowbatch import Item, Validator, result_key, validate_many
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


@dataclass(frozen=True)
class Partial:
    """What a snapshot loaded tenant by tenant for one instance (``load_partial``) knows of
    the tenant folders it has not loaded: their diagnostics for that instance, recorded when
    the commit was last checked whole (``remember_summary``). Diagnostics outside every tenant
    folder are under ``""``: the root files, which it does load, may repeat some of them."""

    instance: str
    absent: Mapping[str, tuple[Diagnostic, ...]]  # tenant folder name → its diagnostics
    outside: tuple[Diagnostic, ...] = ()


class _Root(NamedTuple):
    """What ``headwater.yaml`` and ``.headwaterignore`` of a commit say, parsed."""

    doc: yamlio.Document | None
    diagnostics: list[Diagnostic]
    instances: dict[str, InstanceSpec]
    max_bytes: int
    extra: tuple[str, ...]
    registry: TypeRegistry
    ignored: Callable[[str], bool] | None


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
    # Set when only some tenants are loaded (``load_partial``): then the snapshot serves one
    # instance, and ``update`` loads a tenant the first time a change reaches it.
    partial: Partial | None = None
    _root: _Root | None = field(default=None, repr=False, compare=False)
    _views: dict[str, InstanceView] = field(default_factory=dict)
    _paths: dict[str, tuple[str, str, str, str]] | None = None

    def view(self, instance: str) -> InstanceView:
        self._only(instance)
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
        for name in names:
            self._only(name)
        result = list(self.diagnostics)
        if self.partial is not None:
            result += [*self.partial.outside, *(d for found in self.partial.absent.values() for d in found)]
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
        return ordered(set(result))

    def _only(self, instance: str) -> None:
        if self.partial is not None and instance != self.partial.instance:
            raise ValueError(f"a snapshot loaded for instance {self.partial.instance!r} asked about {instance!r}")


def ordered(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics in the order of a report."""
    return sorted(diagnostics, key=lambda d: (d.path, d.line or 0, d.column or 0, d.code, d.message))


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

# The CLI checks, plans and applies a commit listing this many entries or more (files and
# folders of its tree) tenant by tenant, holding one tenant at a time; a smaller one whole,
# which is faster (one validation pool, blobs hashed meanwhile). The whole plan's memory grows
# with the commit: 10,000 flows and 20,000 files list some 32,000 entries (whole: 0.3 GB);
# 50,000 flows and 100,000 files, 152,000 (whole: 1.25 GB, by tenant: 0.35 GB).
BY_TENANT_FROM = 50_000

# Work of a caller's on a commit's layout (given with its instances and the blobs of the flows
# being validated, by blob id), done while worker processes validate the commit's flows.
Meanwhile = Callable[[layout.Layout, Mapping[str, InstanceSpec], Mapping[str, bytes]], None]


@heap.paused()
def load(
    repo: GitRepo, rev: str, *, extra_types: Iterable[str] = (), cache: ResultCache | None = None,
    meanwhile: Meanwhile | None = None, listed: Pieces | None = None,
) -> Snapshot:
    """Load and validate (instance-independent part) the commit ``rev`` of ``repo``.

    With a ``cache``, flows and configs already seen (same blob, path and code) are neither
    read nor parsed again. ``meanwhile`` is work of the caller's on the commit's layout, done
    in this process while worker processes validate the flows (see ``validate_many``).
    ``listed``: the commit ``split`` already listed (``rev`` is then its revision).
    """
    if listed is not None and not extra_types:
        return _load(repo, listed.revision, listed.entries, listed.root, cache, meanwhile=meanwhile)
    sha = repo.resolve(rev)
    entries = repo.ls_tree(sha)
    root = _read_root(repo, [e for e in entries if e.path in layout.ROOT_FILES], extra_types)
    return _load(repo, sha, entries, root, cache, meanwhile=meanwhile)


@heap.paused()
def configs_only(repo: GitRepo, rev: str) -> Snapshot:
    """The commit ``rev`` with its layout, root files and tenant and namespace configs, but
    no flow read or validated: what the owners of its namespaces depend on
    (``review.codeowners``), in a fraction of a load. Its views and report are not the
    commit's (it has no flows)."""
    sha = repo.resolve(rev)
    entries = repo.ls_tree(sha)
    root = _read_root(repo, [e for e in entries if e.path in layout.ROOT_FILES], ())
    return _load(repo, sha, entries, root, None, with_flows=False)


def instances(repo: GitRepo, rev: str) -> dict[str, InstanceSpec]:
    """The instances ``headwater.yaml`` at ``rev`` defines (as ``load`` gives them), read
    without the rest of the commit."""
    sha = repo.resolve(rev)
    return _read_root(repo, repo.ls_tree(sha, layout.ROOT_FILES), ()).instances


@heap.paused()
def load_partial(repo: GitRepo, rev: str, instance: str, *, cache: ResultCache) -> Snapshot | None:
    """The commit ``rev`` for ``instance`` with its root files loaded and no tenant yet, in
    time independent of its size: what the tenants hold for the instance comes from the
    summary ``remember_summary`` recorded in ``cache`` (None when there is none, for this
    commit and this code). ``update`` loads a tenant when a change reaches it."""
    sha = repo.resolve(rev)
    entries = repo.ls_tree(sha, layout.ROOT_FILES)
    root = _read_root(repo, entries, ())
    key = _summary_key(instance, root)
    record = cache.get_many([key]).get(key)
    if not isinstance(record, tuple) or len(record) != 2 or record[0] != sha:
        return None  # none, or of another commit
    summary = record[1]
    if not isinstance(summary, dict) or not all(isinstance(v, tuple) for v in summary.values()):
        return None
    snap = _load(repo, sha, entries, root, cache)
    snap.partial = _partial(instance, summary)
    return snap


Summary = dict[str, tuple[Diagnostic, ...]]  # tenant folder → its diagnostics; "" outside them


@dataclass(frozen=True)
class Pieces:
    """A commit listed once and split by tenant folder (``split``), to load one folder at a
    time (``piece``): how a whole apply goes through a large commit without holding it
    whole. Together the pieces report what the whole commit does."""

    revision: str
    root: _Root
    outside: list[TreeEntry]  # what is outside every tenant folder, root files included
    folders: dict[str, list[TreeEntry]]  # tenant folder name → what it holds
    entries: list[TreeEntry]  # the whole listing, in Git's order (``load``'s ``listed``)

    @property
    def instances(self) -> dict[str, InstanceSpec]:
        return self.root.instances

    @property
    def root_files(self) -> list[TreeEntry]:
        """The files outside the tenant folders that every folder's meaning depends on."""
        return [e for e in self.outside if e.path in layout.ROOT_FILES]

    def layout(self) -> layout.Layout:
        """The whole commit's layout (paths only: no file is read), as ``load`` makes it."""
        return layout.build(self.entries, ignored=self.root.ignored, max_file_bytes=self.root.max_bytes)


@heap.paused()
def split(repo: GitRepo, rev: str) -> Pieces:
    """The commit ``rev`` listed and split by tenant folder; only its root files are read."""
    sha = repo.resolve(rev)
    groups: dict[str, list[TreeEntry]] = {}
    entries = repo.ls_tree(sha)
    for entry in entries:
        groups.setdefault(tenant_folder(entry.path), []).append(entry)
    outside = groups.pop("", [])
    root = _read_root(repo, [e for e in outside if e.path in layout.ROOT_FILES], ())
    return Pieces(sha, root, outside, groups, entries)


@heap.paused()
def piece(
    repo: GitRepo, pieces: Pieces, instance: str, folder: str | None, *, cache: ResultCache,
    meanwhile: Meanwhile | None = None, validator: Validator = validate_many, tree: layout.Layout | None = None,
) -> Snapshot:
    """One tenant folder of ``pieces`` (None: what is outside them, the root files with
    their diagnostics) loaded for ``instance``: its report is that folder's part of the whole
    commit's (``summarize`` files it under the folder). ``meanwhile`` as for ``load``; the
    flows go through ``validator``; ``tree``: the folder's layout, from ``to_validate``."""
    entries = pieces.outside if folder is None else pieces.folders[folder]
    snap = _load(
        repo, pieces.revision, entries, pieces.root, cache, root_diagnostics=folder is None, meanwhile=meanwhile,
        validator=validator, tree=tree,
    )
    snap.partial = Partial(instance, {})
    return snap


def folders(repo: GitRepo, pieces: Pieces, names: Iterable[str]) -> Snapshot:
    """The commit of ``pieces`` with its root files and, of its tenant folders, those of
    ``names`` it has: for what concerns those folders alone (the review of a change inside
    them). Its report is not the whole commit's (``report_by_tenant`` is). Without a result
    cache: it would take the checks of these folders for the commit's."""
    wanted = sorted(set(names) & pieces.folders.keys())
    return _load(repo, pieces.revision, [*pieces.outside, *(e for n in wanted for e in pieces.folders[n])],
                 pieces.root, None)


def report_by_tenant(repo: GitRepo, pieces: Pieces, instances: Iterable[str]) -> list[Diagnostic]:
    """``Snapshot.report`` of the whole commit of ``pieces`` for ``instances``, made one tenant
    folder at a time: each folder's diagnostics, and which instances they concern, are its own.
    Without a result cache (see ``folders``)."""
    names, found = list(instances), set[Diagnostic]()
    for folder in [None, *sorted(pieces.folders)]:
        entries = pieces.outside if folder is None else pieces.folders[folder]
        found.update(_load(repo, pieces.revision, entries, pieces.root, None, root_diagnostics=folder is None).report(names))
    return ordered(found)


def remember_summary(snap: Snapshot, instance: str, summary: Summary | None = None) -> None:
    """Record what each tenant folder of ``snap`` holds for ``instance`` (its diagnostics:
    ``summarize``, if not given) in the result cache, for ``load_partial`` (e.g. a restarted
    daemon) to do without loading it. One record per instance: the commit applied last."""
    found = summarize(snap, instance) if summary is None else summary
    if snap.cache is not None and snap._root is not None:
        snap.cache.put_many({_summary_key(instance, snap._root): (snap.revision, found)})


def unloaded(snap: Snapshot, instance: str, summary: Summary | None = None) -> Snapshot:
    """``snap`` for ``instance`` with no tenant loaded, as ``load_partial`` gives it once its
    summary (``summary``, if already made) is recorded, without reading anything: what a
    daemon keeps of a commit it applied whole (a tenant is loaded when a change reaches it)."""
    assert snap._root is not None
    root, found = snap._root, summarize(snap, instance) if summary is None else summary
    return Snapshot(
        snap.revision, layout.Layout(snap.layout.repo_config, {}, []), root.doc, root.instances, {}, {},
        list(root.diagnostics), root.registry, fixed_diagnostics=list(root.diagnostics), parsed={},
        max_file_bytes=root.max_bytes, extra_types=root.extra, cache=snap.cache,
        partial=_partial(instance, found), _root=root,
    )


def _partial(instance: str, summary: Summary) -> Partial:
    return Partial(instance, {k: v for k, v in summary.items() if k}, summary.get("", ()))


def summarize(snap: Snapshot, instance: str, report: Iterable[Diagnostic] | None = None) -> Summary:
    """Every tenant folder of ``snap`` with its diagnostics for ``instance`` (from ``report``,
    ``snap.report([instance])`` when already made); those outside tenant folders under ""."""
    names = [*snap.layout.tenants, *(snap.partial.absent if snap.partial is not None else ())]
    return summary_of(names, snap.report([instance]) if report is None else report)


def summary_of(tenants: Iterable[str], report: Iterable[Diagnostic]) -> Summary:
    """The summary of a commit with these tenant folders and this report."""
    found: dict[str, list[Diagnostic]] = {name: [] for name in tenants}
    for diag in report:
        found.setdefault(tenant_folder(diag.path), []).append(diag)
    return {name: tuple(diags) for name, diags in found.items()}


def _summary_key(instance: str, root: _Root) -> str:
    return cache_key("summary", instance, root.registry.fingerprint, model_fingerprint())


def tenant_folder(path: str) -> str:
    """The tenant folder a repository path is in ("" outside ``tenants/``)."""
    head, _, rest = path.partition("/")
    return rest.partition("/")[0] if head == layout.TENANTS_DIR else ""


def _read_root(repo: GitRepo, entries: Iterable[TreeEntry], extra_types: Iterable[str]) -> _Root:
    by_path = {e.path: e for e in entries}
    diags: list[Diagnostic] = []
    first = [by_path[p] for p in layout.ROOT_FILES if p in by_path]
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
    max_bytes = _get(repo_value, "limits", "maxFileBytes", default=layout.DEFAULT_MAX_FILE_BYTES)
    extra = (*extra_types, *(_get(repo_value, "types", "extra", default=[]) or []))
    return _Root(repo_doc, diags, _instances(repo_value), int(max_bytes), extra, TypeRegistry.builtin(extra), ignored)


def to_validate(pieces: Pieces, folder: str, cache: ResultCache) -> tuple[layout.Layout, list[Item]]:
    """The layout of tenant folder ``folder`` of ``pieces``, and the flows in it ``piece``
    will validate (``cache`` holds no result for them): what a ``flowbatch.Pipeline`` is
    given ahead of the folder's turn. ``piece`` then takes the layout (``tree``)."""
    root = pieces.root
    tree = layout.build(pieces.folders[folder], ignored=root.ignored, max_file_bytes=root.max_bytes)
    flow_entries, flow_keys = _flow_entries(tree, root.registry)
    known = cache.has_many(flow_keys.values())
    return tree, [(e.oid, e.path, fid, ns) for (_t, ns, fid, e) in flow_entries if flow_keys[e.path] not in known]


def _flow_entries(
    tree: layout.Layout, registry: TypeRegistry
) -> tuple[list[tuple[str, str, str, TreeEntry]], dict[str, str]]:
    """The flows of ``tree`` (tenant, namespace, id, entry) and their result cache keys, by path."""
    flow_entries = [
        (t.name, ns.name, fid, e)
        for t in tree.tenants.values()
        for ns in t.namespaces.values()
        for fid, e in ns.flows.items()
    ]
    flow_keys = {e.path: result_key((e.oid, e.path, fid, ns), registry) for (_t, ns, fid, e) in flow_entries}
    return flow_entries, flow_keys


def _load(
    repo: GitRepo, sha: str, entries: Iterable[TreeEntry], root: _Root, cache: ResultCache | None,
    *, root_diagnostics: bool = True, meanwhile: Meanwhile | None = None, with_flows: bool = True,
    validator: Validator = validate_many, tree: layout.Layout | None = None,
) -> Snapshot:
    """The snapshot of ``entries`` (all of the commit's, or its root files and some tenants');
    ``meanwhile`` as for ``load``; without its flows unless ``with_flows``. The flows go
    through ``validator``; ``tree``, when given, is the layout of ``entries``."""
    registry, extra = root.registry, list(root.extra)
    if tree is None:
        tree = layout.build(entries, ignored=root.ignored, max_file_bytes=root.max_bytes)
    diags = [*root.diagnostics, *tree.diagnostics] if root_diagnostics else list(tree.diagnostics)

    config_entries = [t.config for t in tree.tenants.values() if t.config is not None]
    config_entries += [
        ns.config for t in tree.tenants.values() for ns in t.namespaces.values() if ns.config is not None
    ]
    flow_entries, flow_keys = _flow_entries(tree, registry) if with_flows else ([], {})
    store = cache if cache is not None else ResultCache(None)
    config_keys = {e.path: cache_key("config", e.oid, e.path) for e in config_entries}
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

    def own_work(flow_blobs: Mapping[str, bytes]) -> None:
        parse_configs()
        if meanwhile is not None:
            meanwhile(tree, root.instances, flow_blobs)

    todo = [(e.oid, e.path, fid, ns) for (_t, ns, fid, e) in flow_entries if flow_keys[e.path] not in known]
    # The configs are parsed here while the validation workers start on the flows.
    validated = validator(repo, todo, registry, extra, meanwhile=own_work)
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
        sha, tree, root.doc, root.instances, configs, flows, [*diags, *_flatten(parsed)], registry,
        fixed_diagnostics=diags, parsed=parsed, max_file_bytes=root.max_bytes, extra_types=root.extra,
        cache=cache, _root=root,
    )


def _fill(snap: Snapshot, repo: GitRepo, tenants: Collection[str]) -> Snapshot:
    """``snap`` (loaded partially) with the tenant folders ``tenants`` loaded too, at its
    commit; its views gain them."""
    assert snap.partial is not None and snap._root is not None
    names = sorted(t for t in tenants if t in snap.partial.absent)
    if not names:
        return snap
    entries = repo.ls_tree(snap.revision, [f"{layout.TENANTS_DIR}/{name}" for name in names])
    piece = _load(repo, snap.revision, entries, snap._root, snap.cache, root_diagnostics=False)
    tree = dataclasses.replace(
        snap.layout, tenants={**snap.layout.tenants, **piece.layout.tenants},
        diagnostics=[*snap.layout.diagnostics, *piece.layout.diagnostics],
    )
    fixed = [*snap.fixed_diagnostics, *piece.fixed_diagnostics]
    parsed = {**snap.parsed, **piece.parsed}
    absent = {name: found for name, found in snap.partial.absent.items() if name not in names}
    filled = dataclasses.replace(
        snap, layout=tree, configs={**snap.configs, **piece.configs}, flows={**snap.flows, **piece.flows},
        diagnostics=[*fixed, *_flatten(parsed)], fixed_diagnostics=fixed, parsed=parsed,
        partial=dataclasses.replace(snap.partial, absent=absent), _views={}, _paths=None,
    )
    for name, view in snap._views.items():
        grown = InstanceView(
            view.spec, dict(view.namespaces), dict(view.parts), view.root, dict(view.bases), dict(view.files_inherit)
        )
        keys: list[NsKey] = []
        for tenant in (filled.layout.tenants[t] for t in names if t in piece.layout.tenants):
            if view.spec.carries(tenant.name):
                _tenant_view(filled, grown, tenant)
                keys += [(tenant.name, ns) for ns in tenant.namespaces]
        _check_all(filled, grown, keys)
        filled._views[name] = grown
    return filled


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
            _tenant_view(snap, view, tenant)
    _check_all(snap, view)
    return view


def _tenant_view(snap: Snapshot, view: InstanceView, tenant: layout.Tenant) -> None:
    """Add a tenant's namespaces to ``view`` (checks apart)."""
    _tenant_base(snap, view, tenant)
    for name in sorted(tenant.namespaces, key=_depth_order):
        _namespace_view(snap, view, tenant, name, merge=True)


def _check_all(snap: Snapshot, view: InstanceView, keys: list[NsKey] | None = None) -> None:
    """The reference checks of namespaces ``keys`` of ``view`` (all by default): from the
    result cache when this commit was checked whole for this instance before (by the same
    code and types), else run."""
    wanted = list(view.namespaces) if keys is None else keys
    if not wanted:
        return
    whole = keys is None and snap.partial is None
    by_ns = _cached_checks(snap, view, len(wanted) if whole else None)
    if by_ns is not None:
        for key in wanted:
            view.parts[("check", *key)] = list(by_ns.get(key, ()))
        return
    for key in wanted:
        _check(snap, view, key)
    if whole:
        _remember_checks(snap, view)


def _cached_checks(snap: Snapshot, view: InstanceView, count: int | None) -> dict[NsKey, list[Diagnostic]] | None:
    """The checks recorded for the commit and instance by namespace (those with a problem),
    if any (of ``count`` namespaces, when given: a view built whole must match)."""
    if snap.cache is None:
        return None
    ckey = _checks_key(snap, view)
    found = snap.cache.get_many([ckey]).get(ckey)
    if isinstance(found, tuple) and len(found) == 2 and isinstance(found[1], dict) and count in (None, found[0]):
        return found[1]
    return None


def _checks_key(snap: Snapshot, view: InstanceView) -> str:
    return cache_key("checks", snap.revision, view.spec.name, snap.registry.fingerprint, model_fingerprint())


def _remember_checks(snap: Snapshot, view: InstanceView) -> None:
    """Cache the reference checks of ``view`` for its commit (see ``_check_all``): those of
    whole views only."""
    if snap.partial is None:
        remember_checks(snap, view, len(view.namespaces), checks_of(view))


def checks_of(view: InstanceView) -> dict[NsKey, list[Diagnostic]]:
    """The reference checks of ``view`` with a problem, by namespace."""
    return {
        (k[1], k[2]): diags for k, diags in view.parts.items()
        if isinstance(k, tuple) and k[0] == "check" and diags
    }


def remember_checks(snap: Snapshot, view: InstanceView, count: int, found: dict[NsKey, list[Diagnostic]]) -> None:
    """Cache the reference checks of the whole commit of ``snap`` for the instance of
    ``view`` (``count`` namespaces, the problems ``found``), made whole or gathered piece by
    piece (``piece``), for ``_check_all`` to reuse when a tenant of it is loaded."""
    if snap.cache is not None:
        snap.cache.put_many({_checks_key(snap, view): (count, found)})


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
    # The snapshot it was derived from: the earlier one, or (loaded partially) that one with
    # the tenants the change reaches loaded too, listed in ``filled``.
    base: Snapshot
    filled: tuple[str, ...] = ()
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
    changes = repo.changes(old.revision, sha)
    inside = [c for c in changes if tenant_folder(c.path) or c.path == layout.TENANTS_DIR]
    for change in changes:
        if change.path in layout.ROOT_FILES:
            return None
        if any(layout.flagged_anywhere(change.path, mode) for mode in (change.old_mode, change.new_mode)):
            return None  # e.g. a submodule added or removed next to README: reported anywhere
    if any(c.status != "M" or c.old_mode != c.new_mode for c in inside):
        return None  # a path added, removed or retyped below tenants/ (or tenants itself)
    ignored = old._root.ignored if old._root is not None else None
    if any(c.path.count("/") < 2 or (ignored is not None and ignored(c.path)) for c in inside):
        return None  # a stray or ignored file the model does not hold (may count tomorrow)
    filled: tuple[str, ...] = ()
    if old.partial is not None:
        instance = old.partial.instance
        filled = tuple(sorted({tenant_folder(c.path) for c in inside} & old.partial.absent.keys()))
        old = _fill(old, repo, filled)
        old.view(instance)  # what the change touches is found in the views
    index = old.path_index()
    changed: dict[str, tuple[str, str, str, str]] = {}
    new_oids: dict[str, str] = {}
    for change in inside:
        place = index.get(change.path)
        if place is None:
            return None  # a path the model ignores today may count tomorrow
        changed[change.path] = place
        new_oids[change.path] = change.new_oid
    if not changed:
        return Update(
            dataclasses.replace(old, revision=sha, cache=cache, _views=dict(old._views), _paths=old._paths),
            {}, old, filled,
        )

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
    flow_keys = {item[1]: result_key(item, old.registry) for item in todo}
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
    result = Update(snap, changed, old, filled)
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

