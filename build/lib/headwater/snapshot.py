"""A commit, loaded: layout, parsed configs and flows, and per-instance effective views.

Loading reads the tree listing once and every needed blob in one batch. Parse and validation
results are cached by blob id, so an unchanged file is parsed once per process, whatever the
number of commits or instances that contain it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pathspec

from headwater import inherit, layout, schemas, yamlio
from headwater.cache import ResultCache
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


@dataclass
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


@dataclass
class InstanceView:
    spec: InstanceSpec
    namespaces: dict[tuple[str, str], NamespaceView]
    diagnostics: list[Diagnostic]


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
    _views: dict[str, InstanceView] = field(default_factory=dict)

    def view(self, instance: str) -> InstanceView:
        cached = self._views.get(instance)
        if cached is None:
            cached = self._views[instance] = _build_view(self, self.instances[instance])
        return cached

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
    needed = [e.oid for e in config_entries if config_keys[e.path] not in known]
    blobs = repo.read_blobs(needed)
    fresh: dict[str, Any] = {}

    configs: dict[str, yamlio.Document] = {}
    for entry in config_entries:
        ckey = config_keys[entry.path]
        if ckey in known:
            doc, found = known[ckey]
        else:
            doc, found = _parse_config(blobs[entry.oid], entry.path, entry.oid, NAMESPACE_SCHEMA)
            fresh[ckey] = (doc, found)
        diags.extend(found)
        if doc is not None:
            configs[entry.path] = doc

    todo = [(e.oid, e.path, fid, ns) for (_t, ns, fid, e) in flow_entries if flow_keys[e.path] not in known]
    validated = validate_many(repo, todo, registry, extra)
    flows: dict[tuple[str, str, str], FlowInfo] = {}
    for tenant, ns, fid, entry in flow_entries:
        fkey = flow_keys[entry.path]
        if fkey in known:
            found, refs = known[fkey]
        else:
            found, refs = fresh[fkey] = validated[entry.path]
        diags.extend(found)
        flows[(tenant, ns, fid)] = FlowInfo(tenant, ns, fid, entry, refs)
    store.put_many(fresh)

    return Snapshot(sha, tree, repo_doc, instances, configs, flows, diags, registry)


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
    diags: list[Diagnostic] = []
    root, found = inherit.merge(inherit.repository_layers(snap.repo_doc, spec.name))
    diags.extend(found)
    namespaces: dict[tuple[str, str], NamespaceView] = {}
    for tenant in sorted(snap.layout.tenants.values(), key=lambda t: t.name):
        if not spec.carries(tenant.name):
            continue
        base = root
        if tenant.config is not None:
            doc = snap.configs.get(tenant.config.path)
            base, found = inherit.merge(
                inherit.config_layers(tenant.config.path, f"tenant {tenant.name}", doc, spec.name), base
            )
            diags.extend(found)
        effective_of: dict[str, inherit.Effective] = {}
        inherit_of: dict[str, bool] = {}
        for name in sorted(tenant.namespaces, key=lambda n: (n.count("."), n)):
            ns = tenant.namespaces[name]
            parent = ns.parent
            effective = effective_of[parent] if parent is not None else base
            doc = snap.configs.get(ns.config.path) if ns.config is not None else None
            if ns.config is not None:
                effective, found = inherit.merge(
                    inherit.config_layers(ns.config.path, f"namespace {name}", doc, spec.name), effective
                )
                diags.extend(found)
            effective_of[name] = effective
            inherit_of[name] = _files_inherit(doc, spec.name)
            chain = []
            for ancestor in ns.ancestry():
                node = tenant.namespaces.get(ancestor)
                chain.append((ancestor, node.files if node is not None else {}, inherit_of.get(ancestor, True)))
            files = inherit.effective_files(chain)
            flows = {
                fid: snap.flows[(tenant.name, name, fid)]
                for fid in ns.flows
                if (tenant.name, name, fid) in snap.flows
            }
            namespaces[(tenant.name, name)] = NamespaceView(tenant.name, name, effective, files, flows)
    for view in namespaces.values():
        diags.extend(check_namespace(view, namespaces, snap))
    unique = sorted(set(diags), key=lambda d: (d.path, d.line or 0, d.code, d.message))
    return InstanceView(spec, namespaces, unique)
