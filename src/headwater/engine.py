"""Load → validate → plan → apply for one instance at one commit.

The engine takes a repository reader, the operator's settings and a state store; targets and
secret providers are built from the settings, so the CLI and the daemon share one path.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import getpass
import itertools
import json
import socket
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from headwater import flowbatch, heap, layout, snapshot
from headwater import plan as planning
from headwater.cache import ResultCache
from headwater.errors import (
    ContentMissing,
    Diagnostic,
    HeadwaterError,
    PlanRefused,
    StateError,
    ValidationFailed,
)
from headwater.gitrepo import GitRepo, TreeEntry
from headwater.resources import (
    Resource,
    ResourceKey,
    State,
    content_hash,
    is_binary,
    pretty_json,
    secret_hash,
)
from headwater.rules.flow_rules import FlowReferences
from headwater.secrets import (
    DirectoryProvider,
    EnvProvider,
    SecretProvider,
    load_or_create_hash_key,
    lookup_scope,
)
from headwater.settings import Settings
from headwater.state import Action, Lock, LockLost, StateStore
from headwater.targets.local import LocalTarget, Stage

SecretValues = dict[tuple[str, str], dict[str, str]]
# How long an apply's lock on its instance lasts without being extended: an apply going
# tenant by tenant extends it after each tenant, however long the whole takes.
LOCK_TTL = 300.0
NsKey = tuple[str, str]
# Given each tenant's part of a plan made tenant by tenant (``Engine.plan``, ``apply``).
Each = Callable[[planning.Plan], None]


def canonical_json(value: Any) -> bytes:
    return (pretty_json(value) + "\n").encode("utf-8")


def kv_json(value: Any) -> bytes:
    """A KV value as the local target stores it: compact, sorted, canonical JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def default_trigger() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Desired:
    """The desired state of an instance at a commit, with what applying it needs."""

    revision: str
    state: State
    calls: dict[ResourceKey, set[ResourceKey]]
    secrets: SecretValues
    missing_secrets: tuple[ResourceKey, ...]
    sources: dict[ResourceKey, str] = dataclasses.field(default_factory=dict)  # blob id of files and flows
    ns_keys: dict[NsKey, tuple[ResourceKey, ...]] = dataclasses.field(default_factory=dict)
    # Blobs read to hash them while this was built (their hashes were not cached): the content
    # loaded later comes from here first, so a cold plan reads each blob once, not twice.
    read: dict[str, bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclass
class _ReadAhead:
    """The blob hashes of an instance's files and flows, and the blobs read to take them,
    gathered while worker processes validate the commit's flows (``snapshot.load``'s
    ``meanwhile``): a cold plan's reading and hashing overlaps the validation instead of
    following it. The desired state built with it carries the content of those blobs."""

    instance: str
    hashes: dict[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    read: dict[str, bytes] = dataclasses.field(default_factory=dict)


@dataclass
class _Resident:
    """What the engine applied last to an instance, kept for the next incremental apply.

    It starts (after a full apply, or primed from the state store by ``Engine.prime``) with
    the commit's root files and summary only (``snapshot.unloaded``): a tenant's snapshot
    and flow call graph are loaded the first time a change reaches it, and the desired state
    and recorded inventory of a namespace built (``known`` lists those built). So the engine
    does not keep half a million resources, or 50,000 flows, to change a few (a 50k-flow
    instance: 1.2 GB when it kept every resource, 0.45 GB with the whole snapshot).
    """

    snapshot: snapshot.Snapshot
    desired: Desired  # without content; the namespaces of ``known``
    inventory: dict[ResourceKey, str]  # as recorded in the state store; likewise
    size: int  # resources in the recorded inventory
    known: set[NsKey]


def _fresh_resident(snap: snapshot.Snapshot, calls: dict[ResourceKey, set[ResourceKey]], size: int) -> _Resident:
    """A resident state with nothing built yet (see ``_Resident``)."""
    return _Resident(snap, Desired(snap.revision, {}, calls, {}, ()), {}, size, set())


@dataclass(frozen=True)
class _Counted:
    """What the first pass of a full apply made tenant by tenant found (``_count_by_tenant``)."""

    outside: snapshot.Snapshot  # the commit's root files
    report: list[Diagnostic]  # the whole commit's, for the instance
    tenants: list[str]  # the commit's tenant folders
    # While the report has no error:
    counts: dict[str, int]  # the plan's summary
    changing: dict[str, set[NsKey]]  # tenant → the namespaces to write (the others are shared)
    size: int  # resources in the desired state
    missing: list[ResourceKey]  # secrets declared without a value
    fingerprint: str = ""  # of the instance's state, when each tenant's plan was given out

    def plan(self, instance: str, revision: str, base: str | None) -> planning.Plan:
        """The plan counted, without its changes (``Plan.counted``)."""
        counts = self.counts
        return planning.Plan(instance, revision, base, (), (), (), self.fingerprint, counts["unchanged"], counts)


@dataclass(frozen=True)
class PlanResult:
    plan: planning.Plan
    desired: Desired
    snapshot: snapshot.Snapshot
    incremental: bool = False  # applied from the changed paths only (``Engine._apply_changes``)
    loaded: tuple[str, ...] = ()  # tenants the engine loaded to apply it incrementally


class Engine:
    def __init__(
        self, repo: GitRepo, settings: Settings, store: StateStore | None = None, *, prune_later: bool = False
    ) -> None:
        """``prune_later``: applies leave old revisions on targets for ``LocalTarget.prune``
        (the daemon prunes once an apply is reported)."""
        self.repo = repo
        self.settings = settings
        self.prune_later = prune_later
        try:
            settings.state_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. the state directory is a file
            raise StateError(
                f"cannot use {settings.state_path} as the state directory: {exc.strerror}",
                hint="give --state-dir (or state_dir in --config) a directory path",
            ) from None
        self.store = store if store is not None else StateStore(settings.state_path / "state.db")
        self._owns_store = store is None
        self.hash_key = load_or_create_hash_key(settings.state_path)
        self.cache = ResultCache(settings.state_path / "cache.db")
        self.provider = self._provider()
        self._targets: dict[str, LocalTarget] = {}
        self._resident: dict[str, _Resident] = {}
        self._unprimable: dict[str, str] = {}  # instance -> applied revision prime() refused

    def close(self) -> None:
        self.cache.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _provider(self) -> SecretProvider:
        conf = self.settings.secrets
        if conf.type == "env":
            return EnvProvider(conf.prefix)
        if conf.type == "none":
            return _NoSecrets()
        root = Path(conf.path) if conf.path else self.settings.state_path / "secrets"
        return DirectoryProvider(root)

    def target(self, instance: str) -> LocalTarget:
        target = self._targets.get(instance)
        if target is None:
            target = LocalTarget(
                self.settings.instance_path(instance),
                keep=self.settings.keep(instance),
                secret_hash_key=self.hash_key,
                prune_later=self.prune_later,
            )
            self._targets[instance] = target
        return target

    # -- desired state ---------------------------------------------------------------------

    def load(
        self, rev: str, *, ahead: _ReadAhead | None = None, listed: snapshot.Pieces | None = None
    ) -> snapshot.Snapshot:
        """The snapshot at ``rev`` (``listed`` already, when given); with ``ahead``, the
        hashes of the blobs its instance's desired state holds are gathered meanwhile (see
        ``_ReadAhead``)."""
        if ahead is None:
            return snapshot.load(self.repo, rev, cache=self.cache, listed=listed)
        return snapshot.load(self.repo, rev, cache=self.cache, meanwhile=self._reading(ahead), listed=listed)

    def _piece(
        self, pieces: snapshot.Pieces, instance: str, folder: str, ahead: _ReadAhead | None = None,
        pipeline: flowbatch.Pipeline | None = None, tree: layout.Layout | None = None,
    ) -> snapshot.Snapshot:
        """``snapshot.piece`` of ``folder``, with ``ahead`` as ``load`` takes it; its flows
        through ``pipeline``, when given, and ``tree`` its layout, when known."""
        meanwhile = None if ahead is None else self._reading(ahead)
        validator = flowbatch.validate_many if pipeline is None else pipeline.validate
        return snapshot.piece(
            self.repo, pieces, instance, folder, cache=self.cache, meanwhile=meanwhile, validator=validator, tree=tree,
        )

    def _reading(self, ahead: _ReadAhead) -> snapshot.Meanwhile:
        """The work that fills ``ahead`` while a snapshot's flows are validated."""

        def read_ahead(
            tree: layout.Layout, instances: Mapping[str, snapshot.InstanceSpec], flows: Mapping[str, bytes]
        ) -> None:
            spec = instances.get(ahead.instance)
            if spec is None:
                return  # undefined: the check reports it
            oids = {
                entry.oid
                for tenant in tree.tenants.values() if spec.carries(tenant.name)
                for ns in tenant.namespaces.values()
                for entry in (*ns.flows.values(), *ns.files.values())
            }
            ahead.hashes, ahead.read = self._blob_hashes(oids, at_hand=flows)

        return read_ahead

    def check(self, snap: snapshot.Snapshot, instance: str) -> list[Diagnostic]:
        _defined(instance, snap.revision, snap.instances)
        return snap.report([instance])

    def desired(
        self, snap: snapshot.Snapshot, instance: str, *, content: bool = True, ahead: _ReadAhead | None = None,
    ) -> Desired:
        """The desired state of ``instance`` at the snapshot's commit.

        Blob hashes come from the result cache by blob id; with ``content=False`` files and
        flows carry no content (``with_content`` loads it where it is needed), so an unchanged
        repository is not read again. With ``ahead`` (given to ``load``), the hashes come from
        there first, and the blobs it read carry their content, whatever ``content`` says.
        """
        view = snap.view(instance)
        return self._desired(snap, view, list(view.namespaces), content, None, ahead=ahead)

    def desired_update(
        self, old: Desired, snap: snapshot.Snapshot, instance: str, namespaces: Iterable[NsKey],
        *, in_place: bool = False,
    ) -> Desired:
        """``old`` brought to ``snap`` by rebuilding only ``namespaces`` (without content).

        ``in_place`` reuses (and changes) ``old``'s mappings instead of copying them: for a
        caller that drops ``old``, it saves a copy of the whole state.
        """
        return self._desired(snap, snap.view(instance), sorted(namespaces), False, old, in_place)

    def _desired(
        self,
        snap: snapshot.Snapshot,
        view: snapshot.InstanceView,
        namespaces: list[NsKey],
        content: bool,
        base: Desired | None,
        in_place: bool = False,
        *,
        ahead: _ReadAhead | None = None,
    ) -> Desired:
        views = [view.namespaces[k] for k in namespaces if k in view.namespaces]
        oids = {info.entry.oid for ns in views for info in ns.flows.values()}
        oids |= {entry.oid for ns in views for (_o, entry) in ns.files.values()}
        if ahead is not None:
            hashes, read = self._blob_hashes(oids - ahead.hashes.keys())
            hashes.update(ahead.hashes)
            read.update(ahead.read)
        else:
            hashes, read = self._blob_hashes(oids)
        if content:
            blobs = _with_read(self.repo, read, oids)
        else:  # what was read ahead is at hand: its content costs nothing
            blobs = ahead.read if ahead is not None else {}
        if base is None:
            state: State = {}
            calls: dict[ResourceKey, set[ResourceKey]] = {}
            secret_values: SecretValues = {}
            sources: dict[ResourceKey, str] = {}
            ns_keys: dict[NsKey, tuple[ResourceKey, ...]] = {}
            missing: list[ResourceKey] = []
        elif in_place:
            state, calls, sources, secret_values, ns_keys = (
                base.state, base.calls, base.sources, base.secrets, base.ns_keys
            )
        else:
            state, calls, sources = dict(base.state), dict(base.calls), dict(base.sources)
            secret_values, ns_keys = dict(base.secrets), dict(base.ns_keys)
        if base is not None:
            gone = set(namespaces)
            missing = [k for k in base.missing_secrets if (k.tenant, k.namespace) not in gone]
            for ns_key in gone:
                secret_values.pop(ns_key, None)
                for key in ns_keys.pop(ns_key, ()):
                    del state[key]
                    calls.pop(key, None)
                    sources.pop(key, None)

        def add(here: list[ResourceKey], res: Resource) -> None:
            state[res.key] = res
            here.append(res.key)

        # A ResourceKey without NamedTuple's __new__ (a Python call; blob resources number
        # ten per flow in a repository that shares files down deep namespace trees).
        new_key, blobs_get = tuple.__new__, blobs.get

        with lookup_scope(self.provider):  # one listing per secret folder
            for ns in views:
                tenant, name = ns.tenant, ns.name
                here: list[ResourceKey] = []
                config = dict(ns.effective.config)
                data = canonical_json(config)
                key = ResourceKey(tenant, name, "config", "config")
                add(here, Resource(key, content_hash(data), data, False, ns_source(snap, tenant, name)))
                for kv_name, value in (config.get("kv") or {}).items():
                    data = kv_json(value)
                    key = ResourceKey(tenant, name, "kv", str(kv_name))
                    add(here, Resource(key, content_hash(data), data, False, f"kv {kv_name}"))
                for secret in sorted(config.get("secrets") or {}):
                    key = ResourceKey(tenant, name, "secret", secret)
                    value = self.provider.get(tenant, name, secret)
                    if value is None:
                        missing.append(key)  # declared but without a value: reported, not written
                        continue
                    secret_values.setdefault((tenant, name), {})[secret] = value
                    add(here, Resource(key, secret_hash(self.hash_key, value), None, False, f"secret {secret}"))
                for rel, (_origin, entry) in ns.files.items():
                    key = new_key(ResourceKey, (tenant, name, "file", rel))
                    oid = entry.oid
                    digest, binary = hashes[oid]
                    sources[key] = oid
                    state[key] = Resource(key, digest, blobs_get(oid), binary, entry.path)
                    here.append(key)
                for fid, info in ns.flows.items():
                    key = new_key(ResourceKey, (tenant, name, "flow", fid))
                    oid = info.entry.oid
                    digest, binary = hashes[oid]
                    sources[key] = oid
                    state[key] = Resource(key, digest, blobs_get(oid), binary, info.entry.path)
                    here.append(key)
                    if info.refs is not None:
                        calls[key] = _callees(tenant, info.refs)
                ns_keys[(tenant, name)] = tuple(here)
        return Desired(snap.revision, state, calls, secret_values, tuple(missing), sources, ns_keys, read)

    def _blob_hashes(
        self, oids: set[str], *, at_hand: Mapping[str, bytes] | None = None
    ) -> tuple[dict[str, tuple[str, bool]], dict[str, bytes]]:
        """sha256 and binary flag of each blob, from the cache or read once and remembered;
        and the blobs it read. The blobs among ``oids`` that are ``at_hand`` are not read
        again, and are among the blobs returned."""
        result = self.cache.blob_hashes(oids)
        read = {o: at_hand[o] for o in oids if o in at_hand} if at_hand else {}
        read.update(self.repo.read_blobs([o for o in oids if o not in result and o not in read]))
        fresh = {oid: (content_hash(data), is_binary(data)) for oid, data in read.items() if oid not in result}
        result.update(fresh)
        self.cache.put_blob_hashes(fresh)
        return result, read

    def with_content(self, desired: Desired, keys: Iterable[ResourceKey] | None = None) -> Desired:
        """``desired`` with the content of ``keys`` (default: every blob resource) loaded."""
        wanted = [k for k in (desired.sources if keys is None else keys)
                  if k in desired.sources and desired.state[k].content is None]
        if not wanted:
            return desired
        blobs = _with_read(self.repo, desired.read, {desired.sources[k] for k in wanted})
        state = dict(desired.state)
        for k in wanted:
            res = state[k]
            state[k] = Resource(k, res.hash, blobs[desired.sources[k]], res.binary, res.source)
        return dataclasses.replace(desired, state=state)

    def valid_snapshot(
        self, rev: str, instance: str, *, record: bool = False, ahead: _ReadAhead | None = None,
        listed: snapshot.Pieces | None = None,
    ) -> snapshot.Snapshot:
        """The snapshot at ``rev`` (``listed`` already, when given); ValidationFailed
        (recorded when asked) if it has errors."""
        snap = self.load(rev, ahead=ahead, listed=listed)
        errors = [d for d in self.check(snap, instance) if d.severity == "error"]
        if errors:
            if record:
                self.store.record_failure(instance, snap.revision, [d.to_json() for d in errors])
            raise ValidationFailed(errors, snap.revision)
        return snap

    def check_commit(self, pieces: snapshot.Pieces, instance: str) -> None:
        """ValidationFailed if the commit of ``pieces`` has an error for ``instance``: checked
        one tenant folder at a time when it lists ``snapshot.BY_TENANT_FROM`` entries or more,
        else whole (with the result cache), as ``valid_snapshot``."""
        _defined(instance, pieces.revision, pieces.instances)
        if len(pieces.entries) < snapshot.BY_TENANT_FROM:
            self.valid_snapshot(pieces.revision, instance, listed=pieces)
            return
        report = snapshot.report_by_tenant(self.repo, pieces, [instance])
        errors = [d for d in report if d.severity == "error"]
        if errors:
            raise ValidationFailed(errors, pieces.revision)

    # -- plan ------------------------------------------------------------------------------

    @heap.paused()
    def plan(self, instance: str, rev: str, *, each: Each | None = None) -> PlanResult:
        """What applying ``rev`` to the instance would change, drift included.

        With ``each``, a commit listing ``snapshot.BY_TENANT_FROM`` entries or more is planned one
        tenant folder at a time, as a full apply by tenant goes (``_count_by_tenant``),
        holding one tenant's snapshot, desired state and plan at a time: ``each`` is given
        each tenant's plan, in order (together, the changes of the whole plan, namespace by
        namespace in its order), and the plan returned has the counts only. A smaller commit
        is planned whole, and ``each`` given the whole plan. A commit with an error raises
        ValidationFailed once every folder is checked, as without ``each``: what ``each`` was
        given then is no plan.
        """
        listed = None
        if each is not None:
            listed = snapshot.split(self.repo, rev)
            if len(listed.entries) >= snapshot.BY_TENANT_FROM:
                return self._plan_by_tenant(instance, listed, each)
        ahead = _ReadAhead(instance)
        snap = self.valid_snapshot(rev, instance, ahead=ahead, listed=listed)
        target = self.target(instance)
        actual = target.inventory()
        desired = self.desired(snap, instance, content=False, ahead=ahead)
        del ahead
        desired = self.with_content(desired, _differing(desired.state, actual))
        managed = self.store.inventory(instance)
        current = target.current_revision()
        result = planning.compute(
            desired.state, _with_content(actual, target, desired.state), instance=instance,
            revision=snap.revision,
            base=current, managed=managed, calls=desired.calls,
        )
        if each is not None:
            each(result)
        return PlanResult(result, desired, snap)

    def _plan_by_tenant(self, instance: str, pieces: snapshot.Pieces, each: Each) -> PlanResult:
        revision = pieces.revision
        _defined(instance, revision, pieces.instances)
        base = self.target(instance).current_revision()
        first = self._count_by_tenant(instance, pieces, base, each=each, stage=False)
        errors = [d for d in first.report if d.severity == "error"]
        if errors:
            raise ValidationFailed(errors, revision)
        result = first.plan(instance, revision, base)
        return PlanResult(result, Desired(revision, {}, {}, {}, tuple(first.missing)), first.outside)

    @heap.paused()
    def compare(self, instance: str, base: str, head: str) -> PlanResult:
        """The pull-request view: desired state at ``base`` vs at ``head``; no instance needed.

        A ``head`` listing ``snapshot.BY_TENANT_FROM`` entries or more is compared one tenant folder
        at a time (``_compare_by_tenant``): the same plan, without holding either commit whole.
        """
        listed = snapshot.split(self.repo, head)
        if len(listed.entries) >= snapshot.BY_TENANT_FROM:
            return self._compare_by_tenant(instance, snapshot.split(self.repo, base), listed)
        head_snap = self.valid_snapshot(listed.revision, instance, listed=listed)
        head_state = self.desired(head_snap, instance, content=False)
        base_snap = self.load(base)
        base_state: State = {}
        if instance in base_snap.instances:
            base_desired = self.desired(base_snap, instance, content=False)
            base_desired = self.with_content(base_desired, _differing(base_desired.state, head_state.state))
            base_state = base_desired.state
        head_state = self.with_content(head_state, _differing(head_state.state, base_state))
        result = planning.compare_refs(
            base_state, head_state.state, instance=instance, base_rev=base_snap.revision,
            head_rev=head_snap.revision, calls=head_state.calls,
        )
        return PlanResult(result, head_state, head_snap)

    def _compare_by_tenant(self, instance: str, base: snapshot.Pieces, head: snapshot.Pieces) -> PlanResult:
        """``compare``, holding one tenant folder of each commit at a time. A folder that is
        the same in both commits, under the same root files, wants the same in both: it is
        loaded once. ValidationFailed once every folder of ``head`` is checked, if it has
        errors (``base`` is taken as it is, as ``compare`` takes it)."""
        _defined(instance, head.revision, head.instances)
        outside = snapshot.piece(self.repo, head, instance, None, cache=self.cache)
        report = set(outside.report([instance]))
        failed = _has_error(report)  # once it has, only the report matters (the commit is refused)
        in_base = instance in base.instances
        same_root = in_base and _listed(base.root_files) == _listed(head.root_files)
        parts: list[planning.Plan] = []
        calls: dict[ResourceKey, set[ResourceKey]] = {}
        missing: list[ResourceKey] = []
        based = planning.Fingerprint()  # of the base state, as compare_refs takes it
        for folder in sorted({*head.folders, *(base.folders if in_base else ())}):
            wanted = Desired(head.revision, {}, {}, {}, ())  # a tenant gone in the head
            if folder in head.folders:
                ahead = None if failed else _ReadAhead(instance)  # (read and hashed meanwhile)
                snap = self._piece(head, instance, folder, ahead)
                found = snap.report([instance])
                report.update(found)
                failed = failed or _has_error(found)
                if not failed:
                    wanted = self.desired(snap, instance, content=False, ahead=ahead)
                    missing += wanted.missing_secrets
                del snap, ahead
            if failed:
                continue
            if not in_base or folder not in base.folders:
                had = Desired(base.revision, {}, {}, {}, ())  # a tenant new in the head
            elif same_root and folder in head.folders and _listed(base.folders[folder]) == _listed(head.folders[folder]):
                based.add(wanted.state)  # the same folder: no change
                parts.append(planning.Plan(
                    instance, head.revision, base.revision, (), (), (), "", unchanged=len(wanted.state),
                ))
                continue
            else:
                ahead = _ReadAhead(instance)
                snap = self._piece(base, instance, folder, ahead)
                had = self.desired(snap, instance, content=False, ahead=ahead)
                del snap, ahead
            based.add(had.state)
            had = self.with_content(had, _differing(had.state, wanted.state))
            wanted = self.with_content(wanted, _differing(wanted.state, had.state))
            calls.update(wanted.calls)
            parts.append(planning.compare_refs(
                had.state, wanted.state, instance=instance, base_rev=base.revision, head_rev=head.revision,
                calls=wanted.calls,
            ))
        errors = [d for d in snapshot.ordered(report) if d.severity == "error"]
        if errors:
            raise ValidationFailed(errors, head.revision)
        result = planning.assemble(
            parts, calls, instance=instance, revision=head.revision, base=base.revision, fingerprint=based.value(),
        )
        return PlanResult(result, Desired(head.revision, {}, calls, {}, tuple(missing)), outside)

    # -- apply -----------------------------------------------------------------------------

    @heap.paused()
    def apply(
        self,
        instance: str,
        rev: str,
        *,
        trigger: str | None = None,
        allow_mass_delete: bool = False,
        saved: planning.Saved | None = None,
        action: Action = "apply",
        confirm: Callable[[planning.Plan], bool] | None = None,
        by_tenant: bool | None = False,
        each: Each | None = None,
    ) -> PlanResult:
        """Validate, plan and apply ``rev`` all or nothing; returns the plan that was applied.

        An invalid commit is recorded as a failed attempt and never reaches the target. After
        an apply the engine keeps what it applied (see ``_Resident``): the next
        apply of a descendant commit then works from ``git diff-tree`` and touches only the
        namespaces the change reaches (``_apply_changes``). ``by_tenant`` (the daemon): a
        full apply goes through the commit one tenant at a time and returns the plan's counts
        only (``_apply_by_tenant``); None: only a commit of ``snapshot.BY_TENANT_FROM`` entries or more
        does (the CLI). ``each`` is given the plan before ``confirm`` is asked, as ``plan``
        gives it: tenant by tenant, or whole.
        """
        trigger = trigger or default_trigger()
        asked = confirm if each is None else _shown(each, confirm)
        listed = None
        if action == "apply" and saved is None:  # (a saved plan is checked against a full plan)
            done = self._apply_changes(instance, rev, trigger, allow_mass_delete, asked)
            if done is not None:
                return done
        if by_tenant is not False:
            listed = snapshot.split(self.repo, rev)
            if by_tenant or len(listed.entries) >= snapshot.BY_TENANT_FROM:
                return self._apply_by_tenant(
                    instance, listed, trigger, allow_mass_delete, confirm, each, saved=saved,
                    action=action,
                )
        self.forget(instance)
        ahead = _ReadAhead(instance)
        snap = self.valid_snapshot(rev, instance, record=True, ahead=ahead, listed=listed)
        spec = snap.instances[instance]
        desired = self.desired(snap, instance, content=False, ahead=ahead)
        del ahead
        target = self.target(instance)
        with self.store.lock(instance, trigger, ttl=LOCK_TTL) as lock:
            self.reconcile(instance)
            actual = target.inventory()
            desired = self.with_content(desired, _differing(desired.state, actual))
            managed = self.store.inventory(instance)
            result = planning.compute(
                desired.state, _with_content(actual, target, desired.state), instance=instance,
                revision=snap.revision, base=target.current_revision(), managed=managed,
                calls=desired.calls,
            )
            if saved is not None:
                _check_saved(saved, result)
            self._guard(instance, result, len(managed), spec.max_delete_percent, allow_mass_delete, asked)
            # The lock may have expired while the plan was computed or awaited a confirmation;
            # if another process took it over, what was confirmed is stale: stop here.
            lock.refresh(LOCK_TTL)
            summary = {**result.summary(), "action": action}
            inventory = {key: res.hash for key, res in desired.state.items()}
            if (
                result.is_empty and action == "apply"
                and target.current_revision() == snap.revision
                and self.store.get(instance).applied_revision == snap.revision
            ):
                self._keep_whole(instance, snap, len(inventory))
                return PlanResult(result, desired, snap)  # already there: no new revision, no history row
            revision = snap.revision
            self.store.begin_apply(
                instance, revision, action=action, trigger=trigger, summary=summary,
                base=_folder(target),
            )
            # What is kept of the commit is made now, and the whole snapshot let go before the
            # target's write: the peak of a full apply.
            found = snapshot.summarize(snap, instance)
            snap = snapshot.unloaded(snap, instance, found)
            # The target rebuilds the namespaces that change; it reuses the others by hash.
            touched = {(c.key.tenant, c.key.namespace) for c in result.changes}
            desired = self.with_content(desired, [k for k in desired.sources if (k.tenant, k.namespace) in touched])

            def write() -> None:
                nonlocal desired
                try:
                    target.apply(revision, desired.state, desired.secrets)
                except ContentMissing:  # it could not reuse something after all: give it everything
                    desired = self.with_content(desired)
                    target.apply(revision, desired.state, desired.secrets)

            self._write(instance, revision, write)
            self.store.finish_apply(instance, revision, inventory, summary, trigger, action)
        if action == "apply":
            self._keep_whole(instance, snap, len(inventory), summary=found)
        return PlanResult(result, desired, snap)

    def _apply_by_tenant(
        self,
        instance: str,
        pieces: snapshot.Pieces,
        trigger: str,
        allow_mass_delete: bool,
        confirm: Callable[[planning.Plan], bool] | None,
        each: Each | None = None,
        *,
        saved: planning.Saved | None = None,
        action: Action = "apply",
    ) -> PlanResult:
        """The full apply, one tenant folder at a time: what ``apply`` does, holding one
        tenant's snapshot, desired state and read-back resources at a time, never the whole
        commit or instance (a 50,000-flow instance applied whole peaked at 1.1 GB).

        A first pass checks every folder and counts the plan against the target and the
        recorded inventory, tenant by tenant, staging in the state store each tenant's
        inventory that differs. Nothing is written when a folder has an error or the plan is
        refused. A second pass loads the tenants that change again and writes them into one
        staged revision of the target, published at the end: all or nothing, as ``apply``.
        The plan returned has the counts only (``Plan.counted``). A ``saved`` plan is checked
        against the sets of each tenant's changes as they are counted. A rollback (``action``)
        always writes a revision, and keeps nothing for the next incremental apply (as whole).
        """
        self.forget(instance)
        sets: planning.ChangeSets = {}
        if saved is not None:  # each tenant's whole plan is made (its fingerprint with it)
            each = _counting(sets, each)

        revision = pieces.revision
        _defined(instance, revision, pieces.instances)
        spec, target = pieces.instances[instance], self.target(instance)
        with self.store.lock(instance, trigger, ttl=LOCK_TTL) as lock:
            self.reconcile(instance)
            base = target.current_revision()
            managed_size = self.store.inventory_size(instance)
            self.store.unstage(instance)
            try:
                first = self._count_by_tenant(instance, pieces, base, lock=lock, each=each)
                errors = [d for d in first.report if d.severity == "error"]
                if errors:
                    self.store.record_failure(instance, revision, [d.to_json() for d in errors])
                    raise ValidationFailed(errors, revision)
                result = first.plan(instance, revision, base)
                if saved is not None:
                    _check_saved(saved, result, sets)
                self._guard(instance, result, managed_size, spec.max_delete_percent, allow_mass_delete, confirm)
                found = snapshot.summary_of(first.tenants, first.report)
                kept = snapshot.unloaded(first.outside, instance, found)
                desired = Desired(revision, {}, {}, {}, tuple(first.missing))
                if (
                    result.is_empty and action == "apply"
                    and base == revision and self.store.get(instance).applied_revision == revision
                ):
                    self._keep_whole(instance, kept, first.size, summary=found)
                    return PlanResult(result, desired, kept)  # already there
                summary = {**result.summary(), "action": action}
                self.store.begin_apply(
                    instance, revision, action=action, trigger=trigger, summary=summary, base=_folder(target)
                )
                changing = first.changing

                def write() -> None:
                    with target.staged(revision, base, changing) as stage:
                        for tenant in sorted(changing.keys() & pieces.folders.keys()):
                            self._write_tenant(instance, pieces, tenant, changing[tenant], stage)
                            lock.refresh(LOCK_TTL)

                self._write(instance, revision, write)
                self.store.finish_apply_staged(instance, revision, summary, trigger, action)
            finally:
                with contextlib.suppress(StateError):
                    self.store.unstage(instance)
        if action == "apply":
            self._keep_whole(instance, kept, first.size, summary=found)
        return PlanResult(result, desired, kept)

    def _count_by_tenant(
        self, instance: str, pieces: snapshot.Pieces, base: str | None, *, plan: bool = True,
        lock: Lock | None = None, each: Each | None = None, stage: bool = True,
    ) -> _Counted:
        """The first pass of ``_apply_by_tenant`` (see ``_Counted``): the commit's tenant
        folders, and with ``plan`` the tenants the instance holds that the commit has not (the
        target's and the store's); without ``plan``, the report and tenants only. The instance's ``lock``, when given, is extended after each
        tenant. ``each`` is given each tenant's whole plan, in order, while the report has no
        error. Without ``stage``, nothing is staged and ``changing`` stays empty (a plan)."""
        target = self.target(instance)
        outside = snapshot.piece(self.repo, pieces, instance, None, cache=self.cache)
        report = set(outside.report([instance]))
        gone = (target.tenants() | self.store.tenants(instance)) - pieces.folders.keys() if plan else set()
        with self._pipeline(pieces) as pipeline:
            return self._count_folders(
                instance, pieces, base, plan=plan, lock=lock, each=each, stage=stage, outside=outside,
                report=report, gone=gone, pipeline=pipeline,
            )

    def _pipeline(self, pieces: snapshot.Pieces) -> flowbatch.Pipeline:
        """The workers of a pass over ``pieces``' tenant folders (``flowbatch.Pipeline``)."""
        flows = sum(1 for e in pieces.entries if "/flows/" in e.path)
        return flowbatch.Pipeline(self.repo, pieces.root.extra, expected=flows)

    def _count_folders(
        self, instance: str, pieces: snapshot.Pieces, base: str | None, *, plan: bool, lock: Lock | None,
        each: Each | None, stage: bool, outside: snapshot.Snapshot, report: set[Diagnostic], gone: set[str],
        pipeline: flowbatch.Pipeline,
    ) -> _Counted:
        """``_count_by_tenant``'s pass over the folders, after the root files (``outside``,
        whose diagnostics ``report`` holds). Each folder's flows go to the ``pipeline``
        while the folder before it is planned (``_ahead``)."""
        target, revision = self.target(instance), pieces.revision
        failed = _has_error(report)  # once it has, only the report matters (the commit is refused)
        state = planning.Fingerprint()  # of the instance's state, as the whole plan's
        counts = dict.fromkeys([*planning.ACTIONS, "drift", "unchanged"], 0)
        changing: dict[str, set[NsKey]] = {}
        names: list[str] = []
        size, missing = 0, list[ResourceKey]()
        checks: dict[NsKey, list[Diagnostic]] = {}
        checked = 0  # namespaces the instance sees
        loading = sorted(pieces.folders)
        following = dict(itertools.pairwise(loading))  # folder -> the next one loaded
        trees = self._ahead(pipeline, pieces, loading[:1], {})
        for folder in sorted({*pieces.folders, *gone}):  # the order of a whole plan's namespaces
            if lock is not None:
                lock.refresh(LOCK_TTL)
            desired = Desired(revision, {}, {}, {}, ())  # a tenant gone from the commit
            if folder in pieces.folders:
                trees = self._ahead(pipeline, pieces, [following[folder]] if folder in following else [], trees)
                # A plan shown reads and hashes the blobs while the flows are validated (whole
                # plans do): they are all shown. (An apply's shares the namespaces unchanged.)
                ahead = _ReadAhead(instance) if plan and each is not None and not failed else None
                snap = self._piece(pieces, instance, folder, ahead, pipeline, trees.pop(folder, None))
                found = snap.report([instance])
                report.update(found)
                failed = failed or _has_error(found)
                names += snap.layout.tenants
                view = snap.view(instance)
                checks.update(snapshot.checks_of(view))
                checked += len(view.namespaces)
                if not plan or failed:
                    continue
                desired = self.desired(snap, instance, content=False, ahead=ahead)
                del snap, view, ahead
            elif failed:
                continue
            managed = self.store.inventory(instance, tenant=folder)
            actual = target.inventory(folder)
            if each is not None:  # the whole plan of the tenant, diffs included
                state.add(actual)
                desired = self.with_content(desired, _differing(desired.state, actual))
                actual = _with_content(actual, target, desired.state)
            result = planning.compute(
                desired.state, actual, instance=instance, revision=revision, base=base,
                managed=managed, calls=desired.calls,
            )
            del actual
            if each is not None:
                each(result)
            for name, count in result.summary().items():
                counts[name] += count
            inventory = {k: res.hash for k, res in desired.state.items()}
            size += len(inventory)
            missing += desired.missing_secrets
            if not stage:
                continue
            # The tenant is written again unless the current revision holds exactly what it
            # wants: what was read back can also come from folders made by hand, which the
            # revision does not list (resources never managed, and namespaces that match).
            recorded = target.manifest(tenant=folder) if base is not None else {}
            rebuilt = {(c.key.tenant, c.key.namespace) for c in result.changes}
            rebuilt |= {(k.tenant, k.namespace) for k in result.unmanaged}
            rebuilt |= {(k.tenant, k.namespace) for k in recorded.keys() ^ inventory.keys()}
            rebuilt |= {(k.tenant, k.namespace) for k, h in inventory.items() if recorded.get(k, h) != h}
            rebuilt |= target.unclean(folder)  # e.g. a link or a stray file made by hand
            if rebuilt:
                changing[folder] = rebuilt
            if inventory != managed:
                self.store.stage(instance, folder, inventory)
        # The commit's reference checks, as a whole load records them: a tenant loaded later
        # (``snapshot.update``) takes its checks from there instead of running them.
        if checked:
            snapshot.remember_checks(outside, outside.view(instance), checked, checks)
        return _Counted(
            outside, snapshot.ordered(report), names, counts, changing, size, missing,
            state.value() if each is not None else "",
        )

    def _ahead(
        self, pipeline: flowbatch.Pipeline, pieces: snapshot.Pieces, folders: list[str],
        trees: dict[str, layout.Layout],
    ) -> dict[str, layout.Layout]:
        """``trees`` with the layouts of ``folders``, whose flows ``pipeline`` now has."""
        if pipeline.workers <= 0:
            return trees
        for folder in folders:
            trees[folder], items = snapshot.to_validate(pieces, folder, self.cache)
            pipeline.ahead(items)
        return trees

    def _write_tenant(
        self, instance: str, pieces: snapshot.Pieces, tenant: str, touched: set[NsKey], stage: Stage
    ) -> None:
        """The second pass of ``_apply_by_tenant`` for one tenant: its namespaces into the
        target's ``stage`` (the content of those ``touched`` loaded, the others' spaces
        shared), and its inventory as written staged in the state store."""
        snap = snapshot.piece(self.repo, pieces, instance, tenant, cache=self.cache)
        desired = self.desired(snap, instance, content=False)
        del snap
        desired = self.with_content(desired, [k for k in desired.sources if (k.tenant, k.namespace) in touched])
        try:
            stage.add(desired.state, desired.secrets)
        except ContentMissing:  # a space it meant to share is gone: give it everything
            desired = self.with_content(desired)
            stage.add(desired.state, desired.secrets)
        self.store.stage(instance, tenant, {k: res.hash for k, res in desired.state.items()})

    def _keep(self, instance: str, resident: _Resident, report: list[Diagnostic]) -> None:
        """Keep what the instance holds now for its next incremental apply, and record the
        commit's summary (``report`` is its check), from which a restarted engine starts
        without loading it whole."""
        self._remember(instance, resident.snapshot, snapshot.summarize(resident.snapshot, instance, report))
        self._resident[instance] = resident

    def _keep_whole(
        self, instance: str, snap: snapshot.Snapshot, size: int, summary: snapshot.Summary | None = None
    ) -> None:
        """``_keep`` for a commit loaded whole (``size`` resources; ``snap`` already
        ``unloaded`` when its ``summary`` is given): only its root files and summary are kept,
        and a tenant is loaded again when a change reaches it (a daemon that applied 50,000
        flows whole would otherwise hold them: 0.9 GB)."""
        if summary is None:
            summary = snapshot.summarize(snap, instance)
            snap = snapshot.unloaded(snap, instance, summary)
        self._remember(instance, snap, summary)
        self._resident[instance] = _fresh_resident(snap, {}, size)

    def _remember(self, instance: str, snap: snapshot.Snapshot, summary: snapshot.Summary) -> None:
        """Record the commit's summary, unless another process applied since."""
        if self.store.get(instance).applied_revision == snap.revision:
            snapshot.remember_summary(snap, instance, summary)

    def resident_tenants(self, instance: str) -> frozenset[str]:
        """The tenants the engine holds loaded for ``instance`` (see ``_Resident``)."""
        resident = self._resident.get(instance)
        return frozenset(resident.snapshot.layout.tenants) if resident is not None else frozenset()

    def _apply_changes(
        self,
        instance: str,
        rev: str,
        trigger: str,
        allow_mass_delete: bool,
        confirm: Callable[[planning.Plan], bool] | None,
    ) -> PlanResult | None:
        """The incremental apply: from the commit this engine applied last, only the paths
        that changed are read, only the namespaces they reach are rebuilt, planned (against the
        inventory recorded for them) and written. None when it does not apply: nothing
        applied by this engine yet, a change ``snapshot.update`` does not handle, or an
        instance another process changed since; the caller then does a full apply.

        Drift in namespaces the change does not reach is left to the drift check.
        """
        resident = self._resident.get(instance)
        if resident is None:
            return None
        update = snapshot.update(resident.snapshot, self.repo, rev, cache=self.cache)
        if update is not None and update.filled:
            # Tenants the resident snapshot loaded for this change: their call graph joins
            # the resident's, which is valid at its commit whatever comes next.
            resident = self._resident[instance] = dataclasses.replace(resident, snapshot=update.base)
            resident.desired.calls.update(_calls(update.base.view(instance), update.filled))
        if update is None or instance not in update.snapshot.instances:
            return None
        if update.changed and instance not in update.touched:
            return None  # no view of the instance to tell what the change touches: the full path
        if update.snapshot.revision == resident.snapshot.revision:
            return None  # applying it again restores drift: the full path reads the target back
        snap = update.snapshot
        report = self.check(snap, instance)
        errors = [d for d in report if d.severity == "error"]
        if errors:
            self.store.record_failure(instance, snap.revision, [d.to_json() for d in errors])
            raise ValidationFailed(errors, snap.revision)
        touched = sorted(update.touched.get(instance, set()))
        target = self.target(instance)
        base = resident.snapshot.revision
        with self.store.lock(instance, trigger):
            state = self.store.get(instance)
            if state.pending_revision is not None or state.applied_revision != base or target.current_revision() != base:
                return None
            # From here the resident state is updated in place: it is kept only on success.
            del self._resident[instance]
            self._complete(instance, resident, touched)
            old_keys = [k for ns in touched for k in resident.desired.ns_keys.get(ns, ())]
            bare = self.desired_update(resident.desired, snap, instance, touched, in_place=True)
            new_keys = [k for ns in touched for k in bare.ns_keys.get(ns, ())]
            managed = {k: resident.inventory[k] for k in old_keys if k in resident.inventory}
            actual: State = {k: Resource(k, h, None, False, "") for k, h in managed.items()}
            wanted = self._loaded(bare, new_keys)
            result = planning.compute(
                wanted, _with_content(actual, target, wanted), instance=instance, revision=snap.revision,
                base=base, managed=managed, calls=bare.calls,
            )
            result = dataclasses.replace(result, unchanged=result.unchanged + resident.size - len(managed))
            spec = snap.instances[instance]
            self._guard(instance, result, resident.size, spec.max_delete_percent, allow_mass_delete, confirm)
            summary = {**result.summary(), "action": "apply"}
            self.store.begin_apply(
                instance, snap.revision, action="apply", trigger=trigger, summary=summary, base=_folder(target)
            )
            by_ns = {ns: {k: wanted[k] for k in bare.ns_keys.get(ns, ())} for ns in touched}
            self._write(instance, snap.revision, lambda: target.apply_namespaces(snap.revision, base, by_ns, bare.secrets))
            changes: dict[ResourceKey, str | None] = {k: None for k in old_keys}
            changes.update((k, wanted[k].hash) for k in new_keys)
            self.store.finish_apply_delta(instance, snap.revision, changes, summary, trigger, "apply")
        inventory, size = resident.inventory, resident.size
        for k, h in changes.items():
            if h is None:
                size -= inventory.pop(k, None) is not None
            else:
                size += k not in inventory
                inventory[k] = h
        self._keep(instance, _Resident(snap, bare, inventory, size, resident.known), report)
        return PlanResult(result, bare, snap, incremental=True, loaded=update.filled)

    def _complete(self, instance: str, resident: _Resident, namespaces: Iterable[NsKey]) -> None:
        """Build what a primed ``resident`` lacks of ``namespaces``: their desired state at its
        commit and their recorded inventory."""
        view = resident.snapshot.view(instance)
        asked = set(namespaces)
        wanted = sorted(ns for ns in asked - resident.known if ns in view.namespaces)
        resident.known |= asked
        if not wanted:
            return
        self._desired(resident.snapshot, view, wanted, False, resident.desired, in_place=True)
        for key, digest in self.store.inventory(instance, wanted).items():
            resident.inventory.setdefault(key, digest)

    def _loaded(self, desired: Desired, keys: list[ResourceKey]) -> State:
        """The resources ``keys`` of ``desired``, with their content (read in one batch)."""
        blobs = _with_read(self.repo, desired.read, {desired.sources[k] for k in keys if k in desired.sources})
        result: State = {}
        for k in keys:
            res = desired.state[k]
            oid = desired.sources.get(k)
            result[k] = res if oid is None else Resource(k, res.hash, blobs[oid], res.binary, res.source)
        return result

    @heap.paused()
    def prime(self, instance: str) -> bool:
        """Take what the instance holds as the starting point of incremental applies, without
        an apply: the daemon calls this when it starts on an instance that is up to date, so
        its first sync after a restart is an incremental one. Only when the state store and
        the target agree (nothing pending, the target at the applied revision); the commit's
        results come from the persistent cache. True when primed."""
        if instance in self._resident:
            return True
        state = self.store.get(instance)
        revision = state.applied_revision
        if revision is None or state.pending_revision is not None:
            return False
        if self.target(instance).current_revision() != revision or self._unprimable.get(instance) == revision:
            return False
        # From the commit's summary, which the last apply recorded; without it (another
        # version of Headwater applied it), from each tenant folder in turn, and it is
        # recorded then.
        snap = snapshot.load_partial(self.repo, revision, instance, cache=self.cache)
        found: snapshot.Summary | None = None
        if snap is None:
            pieces = snapshot.split(self.repo, revision)
            if instance in pieces.instances:
                first = self._count_by_tenant(instance, pieces, None, plan=False)
                found = snapshot.summary_of(first.tenants, first.report)
                snap = snapshot.unloaded(first.outside, instance, found)
        report = self.check(snap, instance) if snap is not None and instance in snap.instances else None
        if snap is None or report is None or any(d.severity == "error" for d in report):
            # e.g. rules that changed since it was applied: the full path decides; not loaded
            # again for this revision (the daemon asks at every poll)
            self._unprimable[instance] = revision
            return False
        # No tenant is kept loaded: each is, with its call graph, when a change first reaches
        # it; the desired state and inventory of a namespace likewise.
        size = self.store.inventory_size(instance)
        if found is not None:
            self._keep_whole(instance, snap, size, summary=found)  # and its summary recorded
        else:
            self._resident[instance] = _fresh_resident(snap, {}, size)
        return True

    def primed(self, instance: str) -> bool:
        """Whether the next apply of ``instance`` can be an incremental one."""
        return instance in self._resident

    def forget(self, instance: str) -> None:
        """Make the next apply of ``instance`` a full one (reads the target back, rereads
        every secret value): the daemon calls this with its periodic drift check."""
        self._resident.pop(instance, None)
        heap.release()  # what it held is garbage now, cycles included

    def _guard(
        self,
        instance: str,
        result: planning.Plan,
        managed_count: int,
        max_delete_percent: float | None,
        allow_mass_delete: bool,
        confirm: Callable[[planning.Plan], bool] | None,
    ) -> None:
        try:
            planning.guard_prune(result, managed_count, max_delete_percent, allow_mass_delete)
        except PlanRefused as exc:
            # A refused commit is an attempt that failed: status (and the daemon) say why.
            self.store.record_failure(instance, result.revision, [{
                "path": "", "line": None, "column": None, "code": "prune.refused",
                "severity": "error", "message": exc.message, "hint": exc.hint, "related": [],
            }])
            raise
        if confirm is not None and not confirm(result):
            raise PlanRefused("apply cancelled", hint="nothing was changed")

    def _write(self, instance: str, revision: str, write: Callable[[], None]) -> None:
        """Run the target's write of ``revision``; a failure is recorded, unless the write
        took effect before it was interrupted (then the store is brought in line)."""
        target = self.target(instance)
        before = target.current_path()
        try:
            write()
        except BaseException as exc:
            self.forget(instance)
            if isinstance(exc, LockLost):
                raise  # another process holds the instance now: its record is not ours to touch
            if target.current_revision() == revision and target.current_path() != before:
                # Interrupted after the atomic swap: the apply took effect; record it as such.
                self.reconcile(instance)
                raise
            self.store.record_failure(instance, revision, [{
                "path": "", "line": None, "column": None, "code": "apply.failed",
                "severity": "error", "message": str(exc), "hint": None, "related": [],
            }])
            raise

    def reconcile(self, instance: str) -> str:
        """Bring the state store in line with the target after a crash."""
        target = self.target(instance)
        current = target.current_revision()
        # The manifest is read only to complete an interrupted apply: it lists every resource.
        # (That of the folder ``current`` points at: an older one may have the same revision.)
        manifest = target.manifest if current is not None else None
        return self.store.reconcile(instance, current, manifest, current=_folder(target))

    def reconcile_if_idle(self, instance: str) -> str | None:
        """``reconcile`` unless an apply holds the instance's lock (None then: it is under way).

        A read such as ``status`` calls this so that, after a crash, it reports what the target
        holds rather than an apply that died; the lock of a dead process is taken over.
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.store.lock(instance, "status", ttl=60.0))
            except StateError:
                return None
            return self.reconcile(instance)
        return None  # pragma: no cover  (mypy: ExitStack may swallow exceptions)

    def drift(self, instance: str) -> list[ResourceKey]:
        """Managed resources whose content on the target differs from what was applied; read
        tenant by tenant (an instance of 600,000 resources read whole held 1 GB)."""
        target, found = self.target(instance), []
        for tenant in sorted(self.store.tenants(instance)):
            managed = self.store.inventory(instance, tenant=tenant)
            actual = target.inventory(tenant)
            found += [k for k, h in managed.items() if k not in actual or actual[k].hash != h]
        return sorted(found)


def _folder(target: LocalTarget) -> str | None:
    """The revision folder the target's ``current`` points at (its name)."""
    path = target.current_path()
    return None if path is None else path.name


def _defined(instance: str, revision: str, instances: Mapping[str, snapshot.InstanceSpec]) -> None:
    if instance not in instances:
        known = ", ".join(sorted(instances)) or "none"
        raise HeadwaterError(
            f"instance {instance!r} is not defined in headwater.yaml at {revision[:12]}",
            hint=f"instances there: {known}",
        )


class _NoSecrets:
    def get(self, tenant: str, namespace: str, name: str) -> str | None:
        return None


def _with_read(repo: GitRepo, read: dict[str, bytes], oids: Iterable[str]) -> dict[str, bytes]:
    """The content of blobs ``oids``: from ``read`` (blobs already in memory) where it has
    them, else read now. Blobs are content-addressed: either way it is what Git holds."""
    wanted = sorted(set(oids))
    found = repo.read_blobs(o for o in wanted if o not in read)
    return {o: read[o] if o in read else found[o] for o in wanted}


def ns_source(snap: snapshot.Snapshot, tenant: str, namespace: str) -> str:
    node = snap.layout.namespace(tenant, namespace)
    if node is not None and node.config is not None:
        return node.config.path
    return f"{tenant}/{namespace} config"


def _callees(tenant: str, refs: FlowReferences) -> set[ResourceKey]:
    """The flows a flow calls as subflows (static ones: a dynamic target is not known)."""
    return {
        ResourceKey(tenant, call.namespace, "flow", call.flow_id)
        for call in refs.subflows
        if not call.dynamic
    }


def _calls(view: snapshot.InstanceView, tenants: Collection[str] | None = None) -> dict[ResourceKey, set[ResourceKey]]:
    """The call graph of every flow an instance view holds (of ``tenants`` only, if given),
    as ``Desired.calls``."""
    return {
        ResourceKey(ns.tenant, ns.name, "flow", fid): _callees(ns.tenant, info.refs)
        for ns in view.namespaces.values()
        if tenants is None or ns.tenant in tenants
        for fid, info in ns.flows.items()
        if info.refs is not None
    }


def _listed(entries: Iterable[TreeEntry]) -> list[tuple[str, str, str]]:
    """What a listing holds: equal listings, equal content."""
    return [(e.path, e.mode, e.oid) for e in entries]


def _has_error(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def _shown(each: Each, confirm: Callable[[planning.Plan], bool] | None) -> Callable[[planning.Plan], bool]:
    """``confirm``, given the plan after ``each`` saw it."""

    def asked(plan: planning.Plan) -> bool:
        each(plan)
        return True if confirm is None else confirm(plan)

    return asked


def _differing(desired: State, other: State) -> list[ResourceKey]:
    """Keys whose content differs between the two states (or that ``other`` lacks)."""
    return [k for k, res in desired.items() if (o := other.get(k)) is None or o.hash != res.hash]


def _with_content(actual: State, target: LocalTarget, desired: State) -> State:
    """The actual state with content loaded where a plan shows a diff: resources it updates or
    deletes. Unchanged resources (most of them) are never read back."""
    result: State = {}
    for key, res in actual.items():
        want = desired.get(key)
        if want is not None and want.hash == res.hash:
            result[key] = res
            continue
        if res.content is None and key.kind != "secret":
            data = target.read(key)
            res = Resource(key, res.hash, data, is_binary(data) if data is not None else res.binary, res.source)
        result[key] = res
    return result


def _counting(sets: planning.ChangeSets, each: Each | None) -> Each:
    """``each``, counting each plan's changes into ``sets`` first."""
    def counted(part: planning.Plan) -> None:
        planning.add_change_sets(sets, part.changes)
        if each is not None:
            each(part)

    return counted


def _check_saved(saved: planning.Saved, current: planning.Plan, changes: planning.ChangeSets | None = None) -> None:
    """PlanRefused unless applying now makes the changes ``saved`` lists: the same instance,
    commit and state (its fingerprint), and the same sets of changes (``changes``: those of
    ``current``'s parts, when it has only counts)."""
    if changes is None:
        changes = {}
        planning.add_change_sets(changes, current.changes)
    if saved.instance != current.instance:
        raise PlanRefused(
            f"the plan is for instance {saved.instance!r}, not {current.instance!r}",
            hint="apply the plan with the instance it was made for",
        )
    if saved.revision != current.revision or saved.header.fingerprint != current.fingerprint:
        raise PlanRefused(
            "the saved plan is stale: the instance or the revision changed since it was made",
            hint="run `headwater plan --out FILE` again and review the new plan",
        )
    if saved.changes != changes:
        raise PlanRefused(
            "the saved plan is stale: applying now would make different changes",
            hint="run `headwater plan --out FILE` again and review the new plan",
        )


def status_of(store: StateStore, engine: Engine | None, instance: str) -> dict[str, Any]:
    state = store.get(instance)
    body: dict[str, Any] = {
        "instance": instance,
        "applied_revision": state.applied_revision,
        "applied_at": state.applied_at.isoformat() if state.applied_at else None,
        "attempted_revision": state.attempted_revision,
        "attempted_at": state.attempted_at.isoformat() if state.attempted_at else None,
        "outcome": state.outcome,
        "errors": list(state.errors),
        "pending_revision": state.pending_revision,
    }
    if engine is not None:
        target = engine.target(instance)
        body["target_revision"] = target.current_revision()
        drift = engine.drift(instance)
        body["drift"] = [str(k) for k in drift]
        body["in_sync"] = (
            not drift and state.applied_revision is not None
            and body["target_revision"] == state.applied_revision
        )
    return body


def read_plan_file(path: str) -> planning.Saved:
    """The saved plan in the file ``path`` (see ``planning.read_saved``), or a clear error."""
    hint = "give a file written by `headwater plan --out FILE`"
    try:
        with open(path, "rb") as stream:
            return planning.read_saved(stream)
    except OSError as exc:
        raise HeadwaterError(f"cannot read plan file {path}: {exc.strerror}") from None
    except ijson.JSONError as exc:
        if not _utf8(path):
            raise HeadwaterError(f"{path}: not a plan file (not UTF-8 text)", hint=hint) from None
        text = exc.args[0] if exc.args else ""  # (bytes when yajl's excerpt cuts a character)
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        problem = next((line.strip() for line in text.splitlines() if line.strip()), "not JSON")
        raise HeadwaterError(f"{path}: not a plan file ({problem})", hint=hint) from None
    except planning.NotAPlan:
        raise HeadwaterError(f"{path}: not a plan file", hint=hint) from None


def _utf8(path: str) -> bool:
    """Whether the file at ``path`` is UTF-8 text throughout (read a piece at a time)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as stream:
            while piece := stream.read(1 << 20):
                decoder.decode(piece)
            decoder.decode(b"", final=True)
    except (OSError, UnicodeDecodeError):
        return False
    return True
