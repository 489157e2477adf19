"""The inheritance engine (DESIGN §2): effective config, provenance, locks, file sets. Pure.

A namespace's effective config is its **layers** merged lowest first. For namespace
``company.team`` of tenant ``acme`` on instance ``prod``::

    headwater.yaml defaults → instances.prod.defaults → tenant.yaml → its environments.prod
    → company/namespace.yaml → its environments.prod → company/team/namespace.yaml → …

:func:`repository_layers` and :func:`config_layers` build those layers from loaded documents,
and :func:`merge` accepts a ``base`` so a tree is computed once per level, parent before child::

    root, d1 = merge(repository_layers(hw_doc, "prod"))
    tenant, d2 = merge(config_layers("tenants/acme/tenant.yaml", "tenant acme", doc, "prod"), root)
    company, d3 = merge(config_layers(ns_path, "namespace company", ns_doc, "prod"), tenant)
    team, d4 = merge(config_layers(..., "namespace company.team", ...), company)

Each diagnostic is then reported once, by the layer that causes it. A namespace without a
``namespace.yaml`` is ``merge([], parent)`` (which returns ``parent`` itself).

Rules:

- Maps merge key by key, recursively; scalars and lists are replaced by the nearer layer; an
  explicit ``null`` removes the inherited key (and its provenance). ``secrets``, ``kv``,
  ``variables``, ``workerGroup`` and ``files`` are maps; ``owners`` and ``description`` are
  replaced. ``environments`` is not a value: the caller turns it into overlay layers.
- **Owners.** Layers with the same :attr:`Layer.owner` (an int or str, by default the
  ``source``) are one config and its overlays: ``headwater.yaml`` defaults and
  ``instances.X.defaults`` should be one owner, a ``namespace.yaml`` and its ``environments.X``
  another. An overlay may set what its own file
  locked or forced, and replaces (rather than narrows) its own file's plugin lists.
- ``locked`` paths accumulate (reported as ``config["locked"]``). A layer of another owner
  setting a locked path — the path, something below it, or a non-map value at a map above it —
  is ``config.locked`` (error); the value is not applied, so the effective config keeps the
  locked one. Setting the same value counts as setting it.
- ``pluginDefaults`` merge by exact ``type``; the nearer ``values`` deep-merge over the farther.
  Once an entry is ``forced: true``, every value it holds is fixed: a layer of another owner
  that sets one is ``config.forced-override`` (error, value not applied), and so is
  ``forced: false`` on it. New keys may still be added, and are fixed in turn. Flows are
  checked with :func:`check_flow_plugin_defaults` (``governance.forced-default``).
- ``allowedPlugins``: a type must match a pattern of *every* list down the chain
  (:attr:`Effective.allowed_chain`), so a child can only narrow. A child pattern that no
  pattern of an ancestor list covers is ``config.allowed-widened`` — a **warning**, not an
  error, because it cannot widen anything (the intersection is what is enforced) and because
  an ancestor that narrows its own list must not break every descendant's commit.
  ``config["allowedPlugins"]`` shows the intersection as one list, exact when each pair of
  patterns is nested or disjoint (always so for prefix patterns like ``io.kestra.plugin.*``).
- ``deniedPlugins``: the union; deny wins over allow.
- A pattern's ``*`` matches any run of characters, dots included; all else is literal.
- ``null`` for ``pluginDefaults``, ``allowedPlugins``, ``deniedPlugins`` or ``locked`` is ignored
  (the schema refuses it): these accumulate and cannot be removed by a descendant.

Provenance: every leaf of the effective config (a scalar, a list, an empty map) maps its path
to an :class:`Origin`; plugin default values live under ``("pluginDefaults", type, "values",
…)``, the forced flag under ``("pluginDefaults", type, "forced")``, plugin lists under their key
and ``("deniedPlugins", i)`` / ``("locked", i)`` per item.

The returned config shares unchanged sub-maps and lists with the base and the documents: treat
it as read-only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from headwater.errors import Diagnostic, Severity
from headwater.yamlio import Document

Key = str | int
Path = tuple[Key, ...]
Owner = int | str
T = TypeVar("T")

_SPECIAL = frozenset(
    {"pluginDefaults", "allowedPlugins", "deniedPlugins", "locked", "environments"}
)
_MISSING: Any = object()
_PLAIN = frozenset({str, int, float, bool, list, type(None)})  # YAML values that are no map


@dataclass(frozen=True)
class Layer:
    """One config mapping in a namespace's chain of layers."""

    source: str  # repository-relative file, e.g. "tenants/acme/company/namespace.yaml"
    label: str  # human name, e.g. "environments.prod of namespace company"
    data: Mapping[str, Any] | None  # None or {}: an empty layer
    doc: Document | None = None  # for line lookup
    loc: Path = ()  # where ``data`` sits inside ``doc``, e.g. ("environments", "prod")
    owner: Owner | None = None  # default: ``source``; same owner = one config and its overlays

    @property
    def owner_key(self) -> Owner:
        return self.source if self.owner is None else self.owner


@dataclass(frozen=True)
class Origin:
    """Where an effective value was set."""

    source: str
    line: int | None
    layer: str
    column: int | None = None

    def where(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Lock:
    """A locked path, where it was locked and by which owner."""

    path: tuple[str, ...]
    text: str
    origin: Origin
    owner: Owner


@dataclass(frozen=True)
class _Plugin:
    values: dict[str, Any]
    forced: bool = False
    forced_at: Origin | None = None
    forced_owner: Owner | None = None
    setters: dict[Path, Owner] = field(default_factory=dict)  # provenance path of leaf → owner


@dataclass(frozen=True)
class ForcedDefault:
    """A forced plugin default: its values and where each fixed value was set."""

    type: str
    values: Mapping[str, Any]
    forced_at: Origin
    fixed: dict[Path, Origin]  # leaf path inside ``values`` → origin


@dataclass(frozen=True)
class Effective:
    """The effective config of one namespace, with provenance and the state to extend it."""

    config: dict[str, Any]
    provenance: dict[Path, Origin]
    allowed_chain: tuple[tuple[str, ...], ...] = ()
    allowed_origins: tuple[Origin, ...] = ()
    denied: tuple[str, ...] = ()
    denied_origins: tuple[Origin, ...] = ()
    locks: tuple[Lock, ...] = ()
    allowed_owners: tuple[Owner, ...] = field(default=(), repr=False)
    denied_owners: tuple[Owner, ...] = field(default=(), repr=False)
    plugins: Mapping[str, _Plugin] = field(default_factory=dict, repr=False)
    # plugin_allowed's answers by type: a namespace's flows use a few types many times
    _verdicts: dict[str, tuple[bool, str | None]] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    def origin(self, path: Sequence[Key]) -> Origin | None:
        """The origin of ``path``, or of its nearest ancestor that has one (a list's items)."""
        key = tuple(path)
        while key:
            found = self.provenance.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return None

    def plugin_allowed(self, type_name: str) -> tuple[bool, str | None]:
        """Whether ``type_name`` may be used here; if not, why, naming the refusing layer."""
        if not self.denied and not self.allowed_chain:
            return True, None
        verdict = self._verdicts.get(type_name)
        if verdict is None:
            verdict = self._verdicts[type_name] = self._plugin_verdict(type_name)
        return verdict

    def _plugin_verdict(self, type_name: str) -> tuple[bool, str | None]:
        for pattern, where in zip(self.denied, self.denied_origins, strict=True):
            if _glob(pattern).fullmatch(type_name):
                return False, (
                    f"{type_name} matches deniedPlugins pattern {pattern!r} "
                    f"of {where.layer} ({where.where()})"
                )
        for patterns, where in zip(self.allowed_chain, self.allowed_origins, strict=True):
            if not any(_glob(p).fullmatch(type_name) for p in patterns):
                return (
                    False,
                    f"{type_name} is not in allowedPlugins of {where.layer} ({where.where()})",
                )
        return True, None


EMPTY = Effective(config={}, provenance={})


def merge(
    layers: Sequence[Layer], base: Effective | None = None
) -> tuple[Effective, list[Diagnostic]]:
    """Apply ``layers`` (lowest first) over ``base``; diagnostics concern these layers only."""
    base = EMPTY if base is None else base
    live = [layer for layer in layers if isinstance(layer.data, Mapping) and layer.data]
    if not live:
        return base, []
    merger = _Merger(base)
    for layer in live:
        merger.apply(layer)
    return merger.result(), merger.diagnostics


def repository_layers(doc: Document | None, instance: str) -> list[Layer]:
    """The lowest layers: ``defaults`` and ``instances.<instance>.defaults`` of headwater.yaml."""
    value = doc.value if doc is not None else None
    if not isinstance(value, Mapping):
        return []
    source = doc.path if doc is not None else "headwater.yaml"
    instances = value.get("instances")
    spec = instances.get(instance) if isinstance(instances, Mapping) else None
    own = spec.get("defaults") if isinstance(spec, Mapping) else None
    return [
        Layer(
            source, "headwater.yaml defaults", _mapping(value.get("defaults")), doc, ("defaults",)
        ),
        Layer(
            source,
            f"instances.{instance}.defaults",
            _mapping(own),
            doc,
            ("instances", instance, "defaults"),
        ),
    ]


def config_layers(source: str, label: str, doc: Document | None, instance: str) -> list[Layer]:
    """A tenant.yaml / namespace.yaml and its ``environments.<instance>`` overlay, as layers."""
    value = _mapping(doc.value if doc is not None else None)
    if value is None:
        return []
    envs = value.get("environments")
    overlay = envs.get(instance) if isinstance(envs, Mapping) else None
    return [
        Layer(source, label, value, doc),
        Layer(
            source,
            f"environments.{instance} of {label}",
            _mapping(overlay),
            doc,
            ("environments", instance),
        ),
    ]


def forced_defaults(effective: Effective) -> dict[str, ForcedDefault]:
    """The forced plugin defaults of ``effective``, by type."""
    result: dict[str, ForcedDefault] = {}
    for type_name, plugin in effective.plugins.items():
        if not plugin.forced or plugin.forced_at is None:
            continue
        fixed = {}
        for path in plugin.setters:
            where = effective.provenance.get(path)
            if where is not None:
                fixed[path[3:]] = where
        result[type_name] = ForcedDefault(type_name, plugin.values, plugin.forced_at, fixed)
    return result


def check_flow_plugin_defaults(
    effective: Effective,
    flow_defaults: Sequence[tuple[str, Mapping[str, Any] | None, int | None]],
    flow_path: str,
) -> list[Diagnostic]:
    """``governance.forced-default`` for each value a flow's own ``pluginDefaults`` sets that
    the namespace forces. ``flow_defaults`` holds ``(type, values, line)`` per entry; types match
    as Kestra's do, by prefix (``io.kestra.plugin.scripts`` covers every scripts task)."""
    forced = forced_defaults(effective)
    found: list[Diagnostic] = []
    for flow_type, values, line in flow_defaults:
        for type_name, default in forced.items():
            if not (flow_type.startswith(type_name) or type_name.startswith(flow_type)):
                continue
            for path, replacing in _leaves(values, ()):
                for fixed, where in default.fixed.items():
                    if _overlaps(path, replacing, fixed):
                        found.append(
                            Diagnostic(
                                flow_path,
                                line,
                                None,
                                "governance.forced-default",
                                f"pluginDefaults of {flow_type} sets {_dotted(path)}, which "
                                f"{default.forced_at.layer} forces for {type_name} "
                                f"({where.where()})",
                                hint="remove it from the flow: a forced namespace default always "
                                "wins over the flow's own",
                                related=(where.where(),),
                            )
                        )
                        break
    return found


def effective_files(chain: Sequence[tuple[str, Mapping[str, T], bool]]) -> dict[str, tuple[str, T]]:
    """The files visible in the last namespace of ``chain``: path → (providing namespace, entry).

    ``chain`` runs from the root namespace to the leaf: (namespace, its own files by relative
    path, its ``files.inherit`` flag). Nearer wins on the same path; the namespace nearest the
    leaf whose flag is false cuts the chain: files above it are not seen.

    Which flag to pass is the caller's reading of ``files.inherit`` (default true): the
    namespace's own setting (its file and overlay: children of an ``inherit: false`` namespace
    see it again) or its effective one (inherited: they stop at themselves unless they set
    ``inherit: true``).
    """
    start = 0
    for index, (_, _, inherit) in enumerate(chain):
        if not inherit:
            start = index
    result: dict[str, tuple[str, T]] = {}
    for namespace, files, _ in chain[start:]:
        for path, entry in files.items():
            result[path] = (namespace, entry)
    return result


@dataclass(frozen=True)
class _Guard:
    """What a layer may not set: ``refuse(path, replacing, rel)`` reports and refuses one leaf;
    ``covers(path)`` says whether anything at or below ``path`` may be refused at all."""

    refuse: Callable[[Path, bool, Path], bool]
    covers: Callable[[Path], bool] = field(default=lambda path: True)


class _Merger:
    """The working copy of an :class:`Effective` while layers are applied (copy-on-write)."""

    def __init__(self, base: Effective) -> None:
        self.config = dict(base.config)
        self.prov = dict(base.provenance)
        self.allowed = list(
            zip(base.allowed_chain, base.allowed_origins, base.allowed_owners, strict=True)
        )
        self.denied = list(zip(base.denied, base.denied_origins, base.denied_owners, strict=True))
        self.locks = list(base.locks)
        self.plugins = dict(base.plugins)
        self.diagnostics: list[Diagnostic] = []
        self.layer = Layer("", "", None)
        self.owner: Owner = ""

    def result(self) -> Effective:
        return Effective(
            config=self.config,
            provenance=self.prov,
            allowed_chain=tuple(a[0] for a in self.allowed),
            allowed_origins=tuple(a[1] for a in self.allowed),
            denied=tuple(d[0] for d in self.denied),
            denied_origins=tuple(d[1] for d in self.denied),
            locks=tuple(self.locks),
            allowed_owners=tuple(a[2] for a in self.allowed),
            denied_owners=tuple(d[2] for d in self.denied),
            plugins=self.plugins,
        )

    def origin(self, rel: Path) -> Origin:
        layer = self.layer
        line, column = layer.doc.mark(layer.loc + rel) if layer.doc is not None else (None, None)
        return Origin(layer.source, line, layer.label, column)

    def error(
        self,
        rel: Path,
        code: str,
        message: str,
        hint: str,
        *related: Origin,
        severity: Severity = "error",
    ) -> None:
        where = self.origin(rel)
        self.diagnostics.append(
            Diagnostic(
                where.source,
                where.line,
                where.column,
                code,
                message,
                hint=hint,
                severity=severity,
                related=tuple(dict.fromkeys(r.where() for r in related)),
            )
        )

    def apply(self, layer: Layer) -> None:
        assert layer.data is not None
        self.layer, self.owner = layer, layer.owner_key
        data = layer.data
        locks = [lock for lock in self.locks if lock.owner != self.owner]
        guard = self._lock_guard(locks) if locks else None
        for key, value in data.items():
            if isinstance(key, str) and key not in _SPECIAL:
                self.merge_into(self.config, key, value, (key,), (key,), guard, None)
        for key, handler in (
            ("pluginDefaults", self._plugin_defaults),
            ("allowedPlugins", self._allowed),
            ("deniedPlugins", self._denied),
        ):
            value = data.get(key)
            if not isinstance(value, list):
                continue
            # [] adds nothing, except an empty allow-list (nothing allowed) and an overlay
            # emptying its own file's deny-list.
            if not value and key == "pluginDefaults":
                continue
            if not value and key == "deniedPlugins" and self.owner not in self._deny_owners():
                continue
            if guard is None or not guard.refuse((key,), True, (key,)):
                handler(value)
        if isinstance(data.get("locked"), list):
            self._add_locks(data["locked"])

    def _deny_owners(self) -> set[Owner]:
        return {item[2] for item in self.denied}

    def merge_into(
        self,
        parent: dict[str, Any],
        key: str,
        value: Any,
        path: Path,
        rel: Path,
        guard: _Guard | None,
        setters: dict[Path, Owner] | None,
    ) -> bool:
        """Merge ``value`` into ``parent[key]`` (``parent`` is already a private copy)."""
        old = parent.get(key, _MISSING)
        is_map = type(value) is dict or (type(value) not in _PLAIN and isinstance(value, Mapping))
        if is_map and value:
            child = dict(old) if isinstance(old, dict) else {}
            inner = guard if guard is not None and guard.covers(path) else None
            changed = False
            for sub, item in value.items():
                if isinstance(sub, str):
                    changed |= self.merge_into(
                        child, sub, item, (*path, sub), (*rel, sub), inner, setters
                    )
            if not changed:
                return False
            if old is not _MISSING and not (isinstance(old, dict) and old):
                self._drop(path, old, setters)  # a scalar, or an empty map, is no leaf any more
            parent[key] = child
            return True
        replacing = not is_map
        if guard is not None and guard.refuse(path, replacing, rel):
            return False
        if not replacing and isinstance(old, dict):
            return False  # {} merged into a map changes nothing
        if old is not _MISSING:
            self._drop(path, old, setters)
        if value is None:
            if old is _MISSING:
                return False
            del parent[key]
            return True
        parent[key] = {} if not replacing else value
        self.prov[path] = self.origin(rel)
        if setters is not None:
            setters[path] = self.owner
        return True

    def _drop(self, path: Path, old: Any, setters: dict[Path, Owner] | None) -> None:
        """Forget the provenance of ``old``, the value being replaced or removed at ``path``."""
        self.prov.pop(path, None)
        if setters is not None:
            setters.pop(path, None)
        if isinstance(old, dict):
            for key, item in old.items():
                self._drop((*path, key), item, setters)

    def _lock_guard(self, locks: list[Lock]) -> _Guard:
        # Indexed so a map costs a few lookups, and a subtree no lock touches costs none.
        exact: dict[Path, Lock] = {}
        above: dict[Path, Lock] = {}  # every strict prefix of a locked path
        for lock in locks:
            exact.setdefault(lock.path, lock)
            for end in range(1, len(lock.path)):
                above.setdefault(lock.path[:end], lock)

        def guard(path: Path, replacing: bool, rel: Path) -> bool:
            lock = above.get(path) if replacing else None
            for end in range(1, len(path) + 1):
                if lock is not None:
                    break
                lock = exact.get(path[:end])
            if lock is None:
                return False
            self.error(
                rel,
                "config.locked",
                f"{lock.text} is locked by {lock.origin.layer} ({lock.origin.where()}); "
                f"{self.layer.label} may not set {_dotted(path)}",
                f"remove it here, or ask the owners of {lock.origin.source} to unlock it",
                lock.origin,
            )
            return True

        def covers(path: Path) -> bool:
            return path in above or any(path[:end] in exact for end in range(1, len(path) + 1))

        return _Guard(guard, covers)

    def _plugin_defaults(self, entries: list[Any]) -> None:
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            type_name = entry.get("type") if isinstance(entry, Mapping) else None
            if not isinstance(type_name, str):
                continue
            if type_name in seen:
                first = self.origin(("pluginDefaults", seen[type_name]))
                self.error(
                    ("pluginDefaults", index),
                    "config.duplicate-plugin-default",
                    f"{type_name} has two pluginDefaults entries in {self.layer.label}; "
                    "they are merged in order",
                    "merge them into one entry",
                    first,
                    severity="warning",
                )
            seen.setdefault(type_name, index)
            self._plugin_entry(type_name, entry, ("pluginDefaults", index))
        self.config["pluginDefaults"] = [
            {"type": name, "forced": plugin.forced, "values": plugin.values}
            for name, plugin in self.plugins.items()
        ]
        self.prov[("pluginDefaults",)] = self.origin(("pluginDefaults",))

    def _plugin_entry(self, type_name: str, entry: Mapping[str, Any], rel: Path) -> None:
        old = self.plugins.get(type_name)
        setters = dict(old.setters) if old is not None else {}
        values = dict(old.values) if old is not None else {}
        plugin = old if old is not None else _Plugin(values)
        path: Path = ("pluginDefaults", type_name)
        guard = None
        if plugin.forced and plugin.forced_at is not None:
            guard = self._forced_guard(type_name, plugin.forced_at, setters)
        new_values = entry.get("values")
        if isinstance(new_values, Mapping):
            for key, value in new_values.items():
                if isinstance(key, str):
                    self.merge_into(
                        values,
                        key,
                        value,
                        (*path, "values", key),
                        (*rel, "values", key),
                        guard,
                        setters,
                    )
        forced = entry.get("forced")
        forced_at, forced_owner, is_forced = plugin.forced_at, plugin.forced_owner, plugin.forced
        if isinstance(forced, bool) and forced != is_forced:
            if not forced and forced_at is not None and forced_owner != self.owner:
                self.error(
                    (*rel, "forced"),
                    "config.forced-override",
                    f"{type_name} is forced by {forced_at.layer} ({forced_at.where()}); "
                    f"{self.layer.label} may not unforce it",
                    "remove `forced: false`",
                    forced_at,
                )
            else:
                is_forced = forced
                forced_at = self.origin((*rel, "forced")) if forced else None
                forced_owner = self.owner if forced else None
                self.prov[(*path, "forced")] = self.origin((*rel, "forced"))
                if forced:  # every value it now holds is fixed by this owner
                    setters = dict.fromkeys(setters, self.owner)
        self.prov[path] = self.origin(rel)
        self.plugins[type_name] = _Plugin(values, is_forced, forced_at, forced_owner, setters)

    def _forced_guard(
        self, type_name: str, forced_at: Origin, setters: dict[Path, Owner]
    ) -> _Guard:
        def guard(path: Path, replacing: bool, rel: Path) -> bool:
            for fixed, owner in setters.items():
                if owner != self.owner and _overlaps(path, replacing, fixed):
                    value_at = self.prov.get(fixed, forced_at)
                    self.error(
                        rel,
                        "config.forced-override",
                        f"plugin default {type_name} {_dotted(fixed[3:])} is forced by "
                        f"{forced_at.layer} ({value_at.where()}); "
                        f"{self.layer.label} may not override it",
                        "remove it here; forced values can only change where they are forced",
                        value_at,
                        forced_at,
                    )
                    return True
            return False

        return _Guard(guard)

    def _allowed(self, patterns_list: list[Any]) -> None:
        patterns = tuple(p for p in patterns_list if isinstance(p, str))
        where = self.origin(("allowedPlugins",))
        chain = [item for item in self.allowed if item[2] != self.owner]
        if len(chain) == len(self.allowed):  # the usual case: the config holds the intersection
            above_all: list[str] | None = self.config.get("allowedPlugins")
        else:
            above_all = _intersection([item[0] for item in chain]) if chain else None
        for index, pattern in enumerate(patterns):
            if above_all is None or any(_subsumes(outer, pattern) for outer in above_all):
                continue  # within every list above (each pattern of the intersection is)
            for above, above_at, _ in reversed(chain):
                if not any(_subsumes(outer, pattern) for outer in above):
                    self.error(
                        ("allowedPlugins", index),
                        "config.allowed-widened",
                        f"allowedPlugins pattern {pattern!r} of {self.layer.label} is not "
                        f"within allowedPlugins of {above_at.layer} ({above_at.where()}); "
                        "it cannot widen it and only the overlap applies",
                        "a namespace can only narrow the plugins its parents allow",
                        above_at,
                        severity="warning",
                    )
                    break
        chain.append((patterns, where, self.owner))
        self.allowed = chain
        self.config["allowedPlugins"] = (
            list(dict.fromkeys(patterns)) if above_all is None else _narrow(above_all, patterns)
        )
        self.prov[("allowedPlugins",)] = where

    def _denied(self, patterns_list: list[Any]) -> None:
        denied = [item for item in self.denied if item[2] != self.owner]
        known = {item[0] for item in denied}
        for index, pattern in enumerate(patterns_list):
            if isinstance(pattern, str) and pattern not in known:
                known.add(pattern)
                denied.append((pattern, self.origin(("deniedPlugins", index)), self.owner))
        for index in range(len(self.denied)):
            self.prov.pop(("deniedPlugins", index), None)
        self.denied = denied
        self.config["deniedPlugins"] = [item[0] for item in denied]
        self.prov[("deniedPlugins",)] = self.origin(("deniedPlugins",))
        for index, item in enumerate(denied):
            self.prov[("deniedPlugins", index)] = item[1]

    def _add_locks(self, paths: list[Any]) -> None:
        known = {lock.path for lock in self.locks}
        for index, text in enumerate(paths):
            if not isinstance(text, str) or not text:
                continue
            path = tuple(text.split("."))
            if path not in known:
                known.add(path)
                where = self.origin(("locked", index))
                self.prov[("locked", len(self.locks))] = where
                self.locks.append(Lock(path, text, where, self.owner))
        self.config["locked"] = [lock.text for lock in self.locks]
        self.prov[("locked",)] = self.origin(("locked",))


def _overlaps(path: Path, replacing: bool, fixed: Path) -> bool:
    """Whether setting ``path`` (a non-map value when ``replacing``) touches ``fixed``."""
    if path[: len(fixed)] == fixed:
        return True
    return replacing and len(path) < len(fixed) and fixed[: len(path)] == path


def _leaves(value: Any, path: Path) -> list[tuple[Path, bool]]:
    """The paths a map sets: non-map values (True) and empty maps (False)."""
    if not isinstance(value, Mapping):
        return [(path, True)] if path else []
    if not value:
        return [(path, False)] if path else []
    found: list[tuple[Path, bool]] = []
    for key, item in value.items():
        found.extend(_leaves(item, (*path, key)))
    return found


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _subsumes(outer: str, inner: str) -> bool:
    """Whether every type ``inner`` matches is matched by ``outer``.

    ``inner`` is matched as text: its ``*`` can only be matched by a ``*`` of ``outer``.
    """
    return _glob(outer).fullmatch(inner) is not None


def _intersection(lists: Sequence[Sequence[str]]) -> list[str]:
    current = list(dict.fromkeys(lists[0]))
    for nearer in lists[1:]:
        current = _narrow(current, nearer)
    return current


def _narrow(current: Sequence[str], nearer: Sequence[str]) -> list[str]:
    """The patterns of ``nearer`` inside ``current`` and those of ``current`` inside ``nearer``."""
    narrowed = [p for p in nearer if any(_subsumes(q, p) for q in current)]
    narrowed += [q for q in current if any(_subsumes(p, q) for p in nearer)]
    return list(dict.fromkeys(narrowed))


def _dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None
