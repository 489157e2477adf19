"""The plan: what applying a desired state to another state would create, update and delete.

Pure: ``compute`` takes two states (and what Headwater last applied) and returns a ``Plan``;
rendering lives in ``render.py`` and execution in the engine and the targets.

Two comparisons share this code (DESIGN §5):
- desired state at a commit vs the instance's actual state, with the ``managed`` inventory
  recorded at the last apply: prune only what Headwater manages, report and restore drift;
- desired state at ref A vs at ref B (``compare_refs``), the pull-request view: every resource
  of the base is managed and there is no drift.

Secret values never reach a plan: a secret's change carries ``(sensitive)`` instead of its
keyed hash and never a diff, so every plan, and every rendering of one, is safe to show.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, BinaryIO, Literal, cast, get_args

import ijson
from ijson.common import ObjectBuilder

from headwater.errors import PlanRefused
from headwater.resources import KINDS, Kind, Resource, ResourceKey, State

Action = Literal["create", "update", "delete"]
ACTIONS: tuple[Action, ...] = get_args(Action)

FORMAT_VERSION = 1
SENSITIVE = "(sensitive)"
# difflib is quadratic in the worst case: beyond this size a text change shows as a hash change.
MAX_DIFF_BYTES = 1024 * 1024

_KIND_ORDER: dict[str, int] = {kind: i for i, kind in enumerate(KINDS)}


class Change:
    """One resource to create, update or delete.

    ``drift`` says the actual content differs from what Headwater last applied (it was
    changed outside Git); the change restores it. ``diff`` is a unified diff of the text
    content, None for binaries, secrets, oversized or unreadable content. For a secret
    (``sensitive``) both hashes are ``(sensitive)`` when present.

    Immutable, and equal by value like a frozen dataclass. A plan of a large instance holds
    a hundred thousand changes while a terminal shows a few thousand diff lines, so a change
    made by ``compute`` computes its diff the first time ``diff`` (or ``has_diff``) is read.
    """

    __slots__ = (
        "_diff", "_pending", "action", "after_hash", "before_hash", "binary", "drift", "key",
        "sensitive", "source",
    )
    __match_args__ = (
        "key", "action", "before_hash", "after_hash", "binary", "sensitive", "drift", "diff", "source"
    )

    key: ResourceKey
    action: Action
    before_hash: str | None
    after_hash: str | None
    binary: bool
    sensitive: bool
    drift: bool
    source: str  # where the content comes from (a repository path), for display
    _diff: str | None
    # A diff not computed yet: _diff's (have, want, label), and True when the diff is known
    # not to be None (a creation or a deletion of non-empty text), so has_diff need not make it.
    _pending: tuple[Resource | None, Resource | None, str, bool] | None

    def __init__(
        self,
        key: ResourceKey,
        action: Action,
        before_hash: str | None,
        after_hash: str | None,
        binary: bool = False,
        sensitive: bool = False,
        drift: bool = False,
        diff: str | None = None,
        source: str = "",
    ) -> None:
        _set_key(self, key)
        _set_action(self, action)
        _set_before_hash(self, before_hash)
        _set_after_hash(self, after_hash)
        _set_binary(self, binary)
        _set_sensitive(self, sensitive)
        _set_drift(self, drift)
        _set_source(self, source)
        _set_diff(self, diff)
        _set_pending(self, None)

    @property
    def diff(self) -> str | None:
        pending = self._pending
        if pending is not None:
            _set_diff(self, _diff(pending[0], pending[1], pending[2]))
            _set_pending(self, None)
        return self._diff

    @property
    def has_diff(self) -> bool:
        """``diff is not None``, without computing a creation's or a deletion's diff."""
        pending = self._pending
        if pending is not None and pending[3]:
            return True
        return self.diff is not None

    def _values(self) -> tuple[Any, ...]:
        return (
            self.key, self.action, self.before_hash, self.after_hash, self.binary,
            self.sensitive, self.drift, self.diff, self.source,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Change):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        values = zip(self.__match_args__, self._values(), strict=True)
        return f"Change({', '.join(f'{name}={value!r}' for name, value in values)})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[Change], tuple[Any, ...]]:
        return (Change, self._values())

    def to_json(self, *, keep_diff: bool = True) -> dict[str, Any]:
        """Plain JSON data; without ``keep_diff``, a diff not computed yet is computed for it
        and not kept (a writer going through a large plan once)."""
        pending = self._pending
        diff = _diff(pending[0], pending[1], pending[2]) if pending is not None and not keep_diff else self.diff
        return {
            **_key_json(self.key),
            "address": str(self.key),
            "action": self.action,
            "before_hash": self.before_hash,
            "after_hash": self.after_hash,
            "binary": self.binary,
            "sensitive": self.sensitive,
            "drift": self.drift,
            "source": self.source,
            "diff": diff,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        action = data["action"]
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        change = cls(
            key=_key_from_json(data),
            action=action,
            before_hash=_opt_str(data["before_hash"]),
            after_hash=_opt_str(data["after_hash"]),
            binary=_bool(data["binary"]),
            sensitive=_bool(data["sensitive"]),
            drift=_bool(data["drift"]),
            diff=_opt_str(data["diff"]),
            source=_str(data.get("source", "")),
        )
        if change.sensitive != (change.key.kind == "secret"):
            raise ValueError(f"{change.key}: only a secret is sensitive, and always")
        if change.sensitive and (
            change.diff is not None
            or any(h not in (None, SENSITIVE) for h in (change.before_hash, change.after_hash))
        ):
            raise ValueError(f"sensitive change {change.key} carries a hash or a diff")
        return change


# Change's fields are set through their slots' own descriptors, past its __setattr__: through
# object.__setattr__ a change took 1.3 us to make, through these 0.5 us, and a plan of a
# large instance makes a hundred thousand changes.
(
    _set_key, _set_action, _set_before_hash, _set_after_hash, _set_binary, _set_sensitive,
    _set_drift, _set_source, _set_diff, _set_pending,
) = (
    Change.__dict__[name].__set__
    for name in (
        "key", "action", "before_hash", "after_hash", "binary", "sensitive", "drift", "source",
        "_diff", "_pending",
    )
)


@dataclass(frozen=True)
class Plan:
    """The changes that bring a state to the desired one, in apply order.

    ``changes``: creations and updates in kind order (config, kv, secret, file, flow; flows
    callee before caller), then deletions in reverse kind order (callers before callees).
    ``drift``: managed resources changed outside Git that this plan restores or deletes.
    ``unmanaged``: resources on the target Headwater never managed; left alone.
    ``fingerprint``: of the state the plan was computed against; an apply compares it with
    ``fingerprint(actual)`` read again and refuses a stale plan.
    """

    instance: str
    revision: str
    base: str | None
    changes: tuple[Change, ...]
    drift: tuple[ResourceKey, ...]
    unmanaged: tuple[ResourceKey, ...]
    fingerprint: str
    unchanged: int = 0
    # A plan counted part by part and not kept (a whole apply of a large instance by the
    # daemon, ``Engine.apply(by_tenant=True)``): its summary, without its changes.
    counted: Mapping[str, int] | None = None

    @property
    def is_empty(self) -> bool:
        if self.counted is not None:
            return not any(self.counted[a] for a in ACTIONS)
        return not self.changes

    def summary(self) -> dict[str, int]:
        if self.counted is not None:
            return dict(self.counted)
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for change in self.changes:
            counts[change.action] += 1
        return {**counts, "drift": len(self.drift), "unchanged": self.unchanged}

    def namespaces(self) -> dict[tuple[str, str], tuple[Change, ...]]:
        """The changes grouped by (tenant, namespace), sorted; apply order within a group."""
        groups: dict[tuple[str, str], list[Change]] = {}
        for change in self.changes:
            groups.setdefault((change.key.tenant, change.key.namespace), []).append(change)
        return {ns: tuple(groups[ns]) for ns in sorted(groups)}

    def to_json(self, *, changes: bool = True) -> dict[str, Any]:
        """Plain JSON data, described by ``schemas/plan.schema.json``; no secret value.
        Without ``changes``, their list is left empty (for a writer that writes them one by
        one: ``render.write_plan_json``)."""
        return {
            "format_version": FORMAT_VERSION,
            "instance": self.instance,
            "revision": self.revision,
            "base": self.base,
            "fingerprint": self.fingerprint,
            "summary": self.summary(),
            "changes": [change.to_json() for change in self.changes] if changes else [],
            "drift": [_key_json(key) for key in self.drift],
            "unmanaged": [_key_json(key) for key in self.unmanaged],
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        """The inverse of ``to_json``; a malformed document raises ``PlanRefused``."""
        try:
            if not isinstance(data, Mapping):
                raise ValueError("not a JSON object")
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {data.get('format_version')!r}")
            return cls(
                instance=_str(data["instance"]),
                revision=_str(data["revision"]),
                base=_opt_str(data["base"]),
                changes=tuple(Change.from_json(c) for c in _list(data["changes"])),
                drift=tuple(_key_from_json(k) for k in _list(data["drift"])),
                unmanaged=tuple(_key_from_json(k) for k in _list(data["unmanaged"])),
                fingerprint=_str(data["fingerprint"]),
                unchanged=_int(data["summary"]["unchanged"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(exc) from None


def _invalid(exc: KeyError | TypeError | ValueError) -> PlanRefused:
    detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
    return PlanRefused(
        f"not a valid Headwater plan: {detail}", hint="save a plan with `headwater plan -o json --out FILE`"
    )


# -- a saved plan, as ``apply PLANFILE`` checks it ---------------------------------------------

ChangeSets = dict[str, tuple[int, int]]  # tenant → (changes, sum of their digests mod 2**2048)
# Wide enough that no one finds two different sets with the same sum (a sum of short digests
# can be matched on purpose, by the generalized birthday attack).
_DIGEST_BYTES = 256


def add_change_sets(sets: ChangeSets, changes: Iterable[Change]) -> None:
    """Count ``changes`` into ``sets``: what a set of changes is, as far as applying it goes
    (each change's key, action and hash after), tenant by tenant, whatever their order. Two
    plans with equal sets make the same changes (a plan lists a change once)."""
    for change in changes:
        line = f"{change.key}\0{change.action}\0{change.after_hash}".encode("utf-8", "surrogatepass")
        digest = int.from_bytes(hashlib.shake_256(line).digest(_DIGEST_BYTES), "big")
        count, total = sets.get(change.key.tenant, (0, 0))
        sets[change.key.tenant] = (count + 1, (total + digest) % (1 << (8 * _DIGEST_BYTES)))


@dataclass(frozen=True)
class Saved:
    """A plan file as ``apply PLANFILE`` checks it (``read_saved``): the plan without its
    changes (``header``) and the sets of its changes (``changes``), so that a saved plan of
    a large instance (every resource created, each with its content as a diff: 876 MB of
    JSON for 600,000 resources) is read without being held."""

    header: Plan
    changes: ChangeSets

    @property
    def instance(self) -> str:
        return self.header.instance

    @property
    def revision(self) -> str:
        return self.header.revision


class NotAPlan(PlanRefused):
    """A saved plan's document is not a JSON object (``read_saved``)."""


def read_saved(stream: BinaryIO) -> Saved:
    """A saved plan (``plan_json``'s text) from ``stream``, read a change at a time.
    ``NotAPlan`` when it is JSON but not an object; ``PlanRefused`` when it is an object
    but not a plan (its header's problems first, as ``Plan.from_json`` finds them); ijson's
    error when it is not JSON."""
    # (basic_parse: without the path of each value, which costs the square of the nesting)
    events = ijson.basic_parse(stream, use_float=True)
    first = next(events, None)
    if first is None or first[0] != "start_map":
        raise NotAPlan("not a plan file", hint="give a file written by `headwater plan --out FILE`")
    header: dict[str, Any] = {}
    sets: ChangeSets = {}
    wrong: KeyError | TypeError | ValueError | None = None  # the first change that is not one
    key = ""
    builder: ObjectBuilder | None = None
    depth = 0  # containers open inside the value being built
    in_changes = False  # among the items of "changes": each is built, counted and let go
    for event, value in events:
        if depth == 0:
            if in_changes and event == "end_array":
                in_changes = False
                continue
            if not in_changes:
                if event == "end_map":
                    break
                if event == "map_key":
                    key = value
                    continue
                if key == "changes" and event == "start_array":  # (a second one replaces the first)
                    in_changes, header["changes"], sets, wrong = True, [], {}, None
                    continue
            builder = ObjectBuilder()
        assert builder is not None
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if depth:
            continue
        if not in_changes:
            header[key] = builder.value
        elif wrong is None:
            try:
                if not isinstance(builder.value, Mapping):
                    raise ValueError("a change is not a JSON object")
                add_change_sets(sets, [Change.from_json(builder.value)])
            except (KeyError, TypeError, ValueError) as exc:
                wrong = exc
    for _rest in events:  # nothing may follow the plan (ijson says what does)
        pass
    saved = Saved(Plan.from_json(header), sets)
    if wrong is not None:
        raise _invalid(wrong)
    return saved


def fingerprint(state: Mapping[ResourceKey, Resource]) -> str:
    """sha256 over the sorted key and hash lines of a state: equal states, equal fingerprints."""
    whole = Fingerprint()
    whole.add(state)
    return whole.value()


class Fingerprint:
    """``fingerprint`` of a state given in parts: each part the resources of some tenants, the
    parts in tenant order (a line starts with its tenant and a NUL, so the sorted lines of
    each part, one part after the other, are the sorted lines of the whole)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, part: Mapping[ResourceKey, Resource]) -> None:
        # NUL never occurs in a key field and hashes hold no newline: the encoding is injective.
        lines = sorted(
            f"{k.tenant}\0{k.namespace}\0{k.kind}\0{k.name}\0{r.hash}\n" for k, r in part.items()
        )
        self._digest.update("".join(lines).encode("utf-8", "surrogatepass"))

    def value(self) -> str:
        return "sha256:" + self._digest.hexdigest()


def compute(
    desired: State,
    actual: State,
    *,
    instance: str,
    revision: str,
    base: str | None,
    managed: Mapping[ResourceKey, str] | None = None,
    prune: bool = True,
    calls: Mapping[ResourceKey, set[ResourceKey]] | None = None,
) -> Plan:
    """The plan that brings ``actual`` to ``desired``.

    ``managed`` is the inventory Headwater recorded at its last apply (key → hash); None
    means every actual resource is managed and nothing drifted (a ref-vs-ref comparison).
    Deletions only touch managed keys, and only when ``prune``. ``calls`` maps a flow to the
    flows it calls, so callees are created before their callers. O(n) in the resources,
    plus sorting; diffs are computed only for changed text resources.
    """
    upserts: list[Change] = []
    deletes: list[Change] = []
    drifted: list[ResourceKey] = []
    unmanaged: list[ResourceKey] = []
    unchanged = 0

    for key, want in desired.items():
        have = actual.get(key)
        if have is None:
            action: Action = "create"
        elif have.hash != want.hash:
            action = "update"
        else:
            unchanged += 1
            continue
        drift = _drifted(key, have, managed)
        if drift:
            drifted.append(key)
        upserts.append(_change(key, action, have, want, drift))

    for key, have in actual.items():
        if key in desired:
            continue
        if managed is not None and key not in managed:
            unmanaged.append(key)
        elif prune:
            drift = _drifted(key, have, managed)
            if drift:
                drifted.append(key)
            deletes.append(_change(key, "delete", have, None, drift))

    return Plan(
        instance=instance,
        revision=revision,
        base=base,
        changes=tuple(_ordered(upserts, deletes, calls or {})),
        drift=tuple(sorted(drifted, key=_key_order)),
        unmanaged=tuple(sorted(unmanaged, key=_key_order)),
        fingerprint=fingerprint(actual),
        unchanged=unchanged,
    )


def compare_refs(
    base_state: State,
    head_state: State,
    *,
    instance: str,
    base_rev: str,
    head_rev: str,
    calls: Mapping[ResourceKey, set[ResourceKey]] | None = None,
) -> Plan:
    """What merging ``head`` into ``base`` would change on ``instance``: the pull-request view."""
    return compute(
        head_state,
        base_state,
        instance=instance,
        revision=head_rev,
        base=base_rev,
        managed=None,
        calls=calls,
    )


def assemble(
    parts: Iterable[Plan],
    calls: Mapping[ResourceKey, set[ResourceKey]],
    *,
    instance: str,
    revision: str,
    base: str | None,
    fingerprint: str,
) -> Plan:
    """The plan of ref-vs-ref ``parts`` (``compare_refs`` of each tenant folder) as one: the
    plan ``compare_refs`` makes of the whole states, given their ``fingerprint`` and the calls
    of every flow of the folders with changes."""
    upserts: list[Change] = []
    deletes: list[Change] = []
    unchanged = 0
    for part in parts:
        assert part.counted is None and not part.drift and not part.unmanaged
        for change in part.changes:
            (deletes if change.action == "delete" else upserts).append(change)
        unchanged += part.unchanged
    return Plan(
        instance=instance,
        revision=revision,
        base=base,
        changes=tuple(_ordered(upserts, deletes, calls)),
        drift=(),
        unmanaged=(),
        fingerprint=fingerprint,
        unchanged=unchanged,
    )


# A plan's changes come in sections (``_ordered``): creations and updates of each kind, in
# kind order (flows last), then deletions of each kind in reverse kind order (flows first).
SECTIONS = 2 * len(KINDS)
DELETIONS_FROM = len(KINDS)  # the first section of deletions


def section(change: Change) -> int:
    """The section of the plan's changes ``change`` is in. A plan of several tenants, made
    tenant by tenant in tenant order (``Engine.plan``'s ``each``), has its changes in the
    sections of the parts: the parts in tenant order in a section of creations and updates,
    in the reverse order in a section of deletions, each part's as it has them."""
    kind = _KIND_ORDER[change.key.kind]
    return kind if change.action != "delete" else SECTIONS - 1 - kind


def guard_prune(
    plan: Plan,
    managed_count: int,
    max_delete_percent: float | None,
    allow_mass_delete: bool,
) -> None:
    """Refuse a plan deleting too much of an instance (Argo CD's ``allowEmpty`` lesson).

    Refused, unless ``allow_mass_delete``: deleting more than ``max_delete_percent`` of the
    ``managed_count`` managed resources, or deleting every one of them while creating nothing.
    """
    counts = plan.summary()
    deleting = counts["delete"]
    if allow_mass_delete or deleting == 0:
        return
    hint = "review the plan; pass --allow-mass-delete to apply it anyway"
    total = max(managed_count, deleting)
    if deleting >= total and counts["create"] == 0:
        raise PlanRefused(
            f"plan for instance {plan.instance!r} deletes all {total} managed resource(s)"
            " and creates nothing",
            hint="check that the revision really holds this instance's resources; " + hint,
        )
    percent = 100.0 * deleting / total
    if max_delete_percent is not None and percent > max_delete_percent:
        raise PlanRefused(
            f"plan for instance {plan.instance!r} deletes {deleting} of {total} managed"
            f" resources ({percent:.1f}%), more than prune.maxDeletePercent"
            f" ({max_delete_percent:g}%)",
            hint=hint,
        )


# --- internals -------------------------------------------------------------------------------


def _drifted(
    key: ResourceKey, have: Resource | None, managed: Mapping[ResourceKey, str] | None
) -> bool:
    if managed is None:
        return False
    recorded = managed.get(key)
    return recorded is not None and (have.hash if have is not None else None) != recorded


def _change(
    key: ResourceKey, action: Action, have: Resource | None, want: Resource | None, drift: bool
) -> Change:
    sensitive = key.kind == "secret"
    before = have.hash if have is not None else None
    after = want.hash if want is not None else None
    binary = (have is not None and have.binary) or (want is not None and want.binary)
    source = (want.source if want is not None else "") or (have.source if have is not None else "")
    if sensitive:
        return Change(
            key,
            action,
            SENSITIVE if before is not None else None,
            SENSITIVE if after is not None else None,
            binary=False,
            sensitive=True,
            drift=drift,
            source=source,
        )
    change = Change(key, action, before, after, binary, False, drift, None, source)
    if not binary:
        old = have.content if have is not None else b""
        new = want.content if want is not None else b""
        if old is not None and new is not None and max(len(old), len(new)) <= MAX_DIFF_BYTES:
            # The diff of a creation or a deletion is empty exactly when the content is.
            known = (have is None or want is None) and bool(old or new)
            _set_pending(change, (have, want, source or str(key), known))
    return change


def _diff(have: Resource | None, want: Resource | None, label: str) -> str | None:
    old = have.content if have is not None else b""
    new = want.content if want is not None else b""
    if old is None or new is None or max(len(old), len(new)) > MAX_DIFF_BYTES:
        return None
    lines: Iterable[str]
    if have is None or want is None:
        # A creation or deletion: every line added or removed; no need for difflib.
        body = _lines(new if have is None else old)
        if not body:
            return None
        count = "1" if len(body) == 1 else f"1,{len(body)}"
        if have is None:
            head = ["--- /dev/null\n", f"+++ b/{label}\n", f"@@ -0,0 +{count} @@\n"]
        else:
            head = [f"--- a/{label}\n", "+++ /dev/null\n", f"@@ -{count} +0,0 @@\n"]
        sign = "+" if have is None else "-"
        lines = [*head, *(sign + line for line in body)]
    else:
        lines = difflib.unified_diff(_lines(old), _lines(new), f"a/{label}", f"b/{label}")
    out = []
    for line in lines:
        out.append(line)
        if not line.endswith("\n"):  # as git shows it
            out.append("\n\\ No newline at end of file\n")
    return "".join(out) or None


def _lines(content: bytes) -> list[str]:
    # Split on "\n" only: str.splitlines would also split on \r, \f, \x1c, U+2028…
    parts = content.decode("utf-8", "replace").split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _key_order(key: ResourceKey) -> tuple[str, str, str, str]:
    # ResourceKey's own order, without a dataclass __lt__ call per comparison.
    return (key.tenant, key.namespace, key.kind, key.name)


def _sort_key(change: Change) -> tuple[int, str, str, str]:
    key = change.key
    return (_KIND_ORDER[key.kind], key.tenant, key.namespace, key.name)


def _ordered(
    upserts: list[Change], deletes: list[Change], calls: Mapping[ResourceKey, set[ResourceKey]]
) -> Iterator[Change]:
    upserts.sort(key=_sort_key)
    deletes.sort(key=_sort_key)
    yield from (c for c in upserts if c.key.kind != "flow")
    yield from _callees_first([c for c in upserts if c.key.kind == "flow"], calls)
    yield from reversed(list(_callees_first([c for c in deletes if c.key.kind == "flow"], calls)))
    yield from reversed([c for c in deletes if c.key.kind != "flow"])


def _callees_first(
    changes: list[Change], calls: Mapping[ResourceKey, set[ResourceKey]]
) -> Iterator[Change]:
    """Depth-first post-order over ``calls``, through unchanged flows too, so a callee comes
    before every caller that reaches it; a cycle is broken where it is first met. Roots are
    taken in the order given (sorted), so the result is deterministic."""
    if not calls:
        yield from changes
        return
    by_key = {c.key: c for c in changes}
    done: set[ResourceKey] = set()
    for root in by_key:
        if root in done:
            continue
        done.add(root)
        stack = [(root, _callees(root, calls))]
        while stack:
            node, callees = stack[-1]
            for callee in callees:
                if callee not in done:
                    done.add(callee)
                    stack.append((callee, _callees(callee, calls)))
                    break
            else:
                stack.pop()
                if node in by_key:
                    yield by_key[node]


def _callees(
    key: ResourceKey, calls: Mapping[ResourceKey, set[ResourceKey]]
) -> Iterator[ResourceKey]:
    return iter(sorted(calls.get(key, ())))


def _key_json(key: ResourceKey) -> dict[str, str]:
    return {"tenant": key.tenant, "namespace": key.namespace, "kind": key.kind, "name": key.name}


def _key_from_json(data: Mapping[str, Any]) -> ResourceKey:
    kind = data["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return ResourceKey(
        _str(data["tenant"]), _str(data["namespace"]), cast(Kind, kind), _str(data["name"])
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _list(value: object) -> Iterable[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value
