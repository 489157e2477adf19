"""Promotion between instances, and `rollback --git` (DESIGN §8).

A promotion is prepared, then written::

    promotion = prepare(engine, Request(target="prod"))   # nothing written: see .plan
    write(engine.repo, promotion, remote="origin")         # one ref, compare-and-swap

``prepare`` takes the commit the source instance last applied successfully (from the state
store; or ``rev``), refuses one it never applied or applied less than the target's
``promotion.soak`` ago unless forced with a reason, validates it for the target instance, builds
the promotion commit from Git objects (``merge-tree --write-tree`` or a temporary index, then
``commit-tree``; no working copy) and computes the target's plan against its branch head.
``write`` moves one ref by compare-and-swap, so a branch that moved since ``prepare`` is never
overwritten: the promotion is refused, and preparing it again rebases it on the new head.

Whole promotion merges the source commit into the target branch, on a ``promote/…`` branch or,
``direct``, onto the branch itself (a fast-forward when possible, which adds no commit and so no
trailers). Selective promotion is one commit on top of the target branch that takes from the
source only the named namespaces' **own content** — ``namespace.yaml``, ``flows/`` and
``files/`` of their folders. Child namespaces are folders of their own, with their own owners;
they come along only with ``recursive``. Siblings and parents stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from headwater import layout as layouts
from headwater import plan as planning
from headwater import snapshot
from headwater.engine import Engine
from headwater.errors import Diagnostic, GitError, HeadwaterError, ValidationFailed
from headwater.gitrepo import GitRepo, RefMoved
from headwater.snapshot import InstanceSpec
from headwater.snapshot import instances as instances_at
from headwater.state import StateStore

_BRANCH = re.compile(
    r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*/\.)(?!\.)[A-Za-z0-9._/-]*[A-Za-z0-9_-]$"
)


class PromotionRefused(HeadwaterError):
    """A promotion or a Git rollback was refused; no ref was written."""


class PromotionInvalid(PromotionRefused):
    """The commit to write does not validate for the target instance."""

    def __init__(self, message: str, diagnostics: list[Diagnostic]) -> None:
        super().__init__(message, hint="fix it on the source branch first; nothing was written")
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class Request:
    target: str
    source: str | None = None  # default: the target's promotion.from
    rev: str | None = None  # default: what the source instance last applied successfully
    namespaces: tuple[str, ...] = ()  # "tenant/namespace"; empty: the whole commit
    recursive: bool = False
    branch: str | None = None
    direct: bool = False
    force_reason: str | None = None
    expect_head: str | None = None
    remote: str | None = None  # where to find the target branch when it has no local branch
    trigger: str = ""


@dataclass(frozen=True)
class Move:
    """One compare-and-swap ref update, guarded by the branch it was computed against."""

    ref: str  # the ref to write
    old: str | None  # its expected value (None: it must not exist)
    new: str
    base_ref: str  # the target branch ref read by prepare
    base_head: str  # its value then


@dataclass(frozen=True)
class Promotion:
    source_instance: str
    target_instance: str
    source: str
    target_branch: str
    move: Move
    fast_forward: bool
    namespaces: tuple[str, ...]
    recursive: bool
    paths: tuple[str, ...]  # selective: the paths the commit changes
    plan: planning.Plan
    soak_seconds: float
    applied_at: datetime | None
    proven_seconds: float | None
    forced: str | None
    noop: bool  # the target branch already holds what would be promoted

    @property
    def commit(self) -> str:
        return self.move.new

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source_instance,
            "to": self.target_instance,
            "source": self.source,
            "source_applied_at": self.applied_at.isoformat() if self.applied_at else None,
            "proven_seconds": self.proven_seconds,
            "soak_seconds": self.soak_seconds,
            "forced": self.forced,
            "kind": "selective" if self.namespaces else "whole",
            "namespaces": list(self.namespaces),
            "recursive": self.recursive,
            "paths": list(self.paths),
            "target_branch": self.target_branch,
            "target_head": self.move.base_head,
            "ref": self.move.ref,
            "commit": self.move.new,
            "fast_forward": self.fast_forward,
            "noop": self.noop,
        }


@dataclass(frozen=True)
class Rollback:
    instance: str
    revision: str
    branch: str
    move: Move
    paths: tuple[str, ...]
    plan: planning.Plan
    noop: bool


# -- durations and proof -----------------------------------------------------------------------


def human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])


def proven_for(
    store: StateStore, instance: str, revision: str, now: datetime
) -> tuple[float | None, datetime | None]:
    """How long ``revision`` ran on ``instance`` without interruption, at most (None: never),
    and when its latest run began. A run ends when another revision is applied."""
    history = store.history(instance, 1_000_000)[::-1]
    longest: float | None = None
    started: datetime | None = None
    for i, entry in enumerate(history):
        if entry.revision != revision or entry.action not in ("apply", "rollback"):
            continue
        if i > 0 and history[i - 1].revision == revision:
            continue  # the same run, applied again
        end = next((e.at for e in history[i + 1 :] if e.revision != revision), now)
        ran = max((end - entry.at).total_seconds(), 0.0)
        longest = ran if longest is None else max(longest, ran)
        started = entry.at
    return longest, started


# -- the target branch -------------------------------------------------------------------------


def instance_spec(repo: GitRepo, instance: str) -> tuple[dict[str, InstanceSpec], InstanceSpec]:
    """The instance as headwater.yaml at HEAD describes it, and every instance it defines."""
    defined = instances_at(repo, "HEAD")
    spec = defined.get(instance)
    if spec is None:
        known = ", ".join(sorted(defined)) or "none"
        raise HeadwaterError(
            f"unknown instance {instance!r}", hint=f"instances in headwater.yaml: {known}"
        )
    return defined, spec


def branch_ref(repo: GitRepo, branch: str, remote: str | None) -> tuple[str, str]:
    """The local branch, or else the remote-tracking one: (full ref, commit)."""
    candidates = [f"refs/heads/{branch}", f"refs/remotes/{remote or 'origin'}/{branch}"]
    for ref in candidates:
        sha = repo.ref(ref)
        if sha is not None:
            return ref, sha
    raise PromotionRefused(
        f"branch {branch!r} does not exist here (looked for {' and '.join(candidates)})",
        hint="create or fetch the branch first",
    )


# -- prepare -----------------------------------------------------------------------------------


def prepare(engine: Engine, request: Request, *, now: datetime | None = None) -> Promotion:
    """Check and build a promotion; writes Git objects but moves no ref."""
    repo = engine.repo
    head_instances, spec = instance_spec(repo, request.target)
    base_ref, base_head = branch_ref(repo, spec.branch, request.remote)
    target_instances = instances_at(repo, base_head)  # headwater.yaml alone
    spec = target_instances.get(request.target, spec)
    forced = _reason(request.force_reason)
    known = set(head_instances) | set(target_instances)
    source_instance = _source_instance(request, spec, known, forced)
    if request.expect_head is not None and repo.resolve(request.expect_head) != base_head:
        raise _moved(spec.branch, repo.resolve(request.expect_head), base_head)

    source = _source(engine.store, repo, source_instance, request.rev)
    soak = spec.soak_seconds  # (promotion.soak; a bad value is a schema error)
    proven, applied_at = proven_for(engine.store, source_instance, source, now or datetime.now(UTC))
    if forced is None:
        current = engine.store.get(source_instance).applied_revision == source
        _check_proof(source, source_instance, request.target, soak, proven, applied_at, current)
    what = f"{source_instance}@{source[:12]}"
    _validate(engine, source, request.target, f"{what} does not validate")

    message = _message(
        source_instance, request.target, source, spec.branch, request.namespaces,
        applied_at, proven, soak, forced,
    )  # fmt: skip
    commit, paths, fast_forward = _build(
        repo, request, spec, source, what, base_head, message
    )
    noop = commit == base_head
    if noop:
        plan = planning.compare_refs(
            {}, {}, instance=request.target, base_rev=base_head, head_rev=base_head
        )
    else:
        try:
            plan = engine.compare(request.target, base_head, commit).plan
        except ValidationFailed as exc:
            raise PromotionInvalid(
                f"the promotion of {what} onto {spec.branch} does not validate for "
                f"{request.target}: {_errors(exc.diagnostics)}",
                exc.diagnostics,
            ) from None
    ref, old = _destination(repo, request, spec.branch, source_instance, source, commit)
    if not noop:
        refuse_checked_out(repo, ref)
    return Promotion(
        source_instance, request.target, source, spec.branch, Move(ref, old, commit, base_ref, base_head),
        fast_forward, tuple(request.namespaces), request.recursive, paths, plan, soak, applied_at,
        proven, forced, noop,
    )  # fmt: skip


def _source_instance(
    request: Request, spec: InstanceSpec, known: set[str], forced: str | None
) -> str:
    source = request.source or spec.promotion_from
    if source is None:
        raise PromotionRefused(
            f"{request.target} has no promotion.from in headwater.yaml", hint="pass --from INSTANCE"
        )
    if source not in known:
        raise HeadwaterError(
            f"unknown instance {source!r}",
            hint=f"instances in headwater.yaml: {', '.join(sorted(known))}",
        )
    if source == request.target:
        raise PromotionRefused(f"cannot promote {request.target} to itself")
    if spec.promotion_from not in (None, source) and forced is None:
        raise PromotionRefused(
            f"{request.target} is promoted from {spec.promotion_from} (promotion.from), "
            f"not from {source}",
            hint="promote from the configured instance, or pass --force --reason TEXT",
        )
    return source


def _validate(engine: Engine, rev: str, instance: str, what: str) -> None:
    """PromotionInvalid unless the commit ``rev`` validates for ``instance`` (a large commit is
    checked tenant by tenant, and nothing of it is kept: the plan goes the same way)."""
    try:
        engine.check_commit(snapshot.split(engine.repo, rev), instance)
    except ValidationFailed as exc:
        raise PromotionInvalid(
            f"{what} for {instance}: {_errors(exc.diagnostics)}", exc.diagnostics
        ) from None


def _build(
    repo: GitRepo,
    request: Request,
    spec: InstanceSpec,
    source: str,
    what: str,
    base_head: str,
    message: str,
) -> tuple[str, tuple[str, ...], bool]:
    """The promotion commit (``base_head`` when nothing changes), its paths, fast-forward."""
    base_tree = repo.tree_of(base_head)
    if request.namespaces:
        tree, paths = _selective_tree(
            repo, snapshot.split(repo, source), snapshot.split(repo, base_head), spec, base_tree, request.namespaces,
            request.recursive,
        )  # fmt: skip
        commit = base_head if tree == base_tree else repo.commit_tree(tree, [base_head], message)
        return commit, paths, False
    if repo.is_ancestor(source, base_head):
        return base_head, (), False
    if request.direct and repo.is_ancestor(base_head, source):
        return source, (), True
    tree, conflicts = repo.merge_trees(base_head, source)
    if conflicts:
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise PromotionRefused(
            f"merging {what} into {spec.branch} conflicts in {', '.join(conflicts[:5])}{more}",
            hint=f"merge {spec.branch} into the source branch and let it apply there first, "
            "or promote single namespaces with --namespace",
        )
    if tree == base_tree:
        return base_head, (), False
    return repo.commit_tree(tree, [base_head, source], message), (), False


def _reason(text: str | None) -> str | None:
    if text is None:
        return None
    reason = " ".join(text.split())
    if not reason:
        raise PromotionRefused("--force needs a reason", hint="pass --reason TEXT")
    return reason


def _source(store: StateStore, repo: GitRepo, instance: str, rev: str | None) -> str:
    if rev is not None:
        return repo.resolve(rev)
    applied = store.get(instance).applied_revision
    if applied is None:
        raise PromotionRefused(
            f"{instance} has no successfully applied revision in the state store ({store.path})",
            hint=f"apply {instance} first, or pass the --state-dir/--config of the daemon that "
            "syncs it",
        )
    return applied


def _check_proof(
    source: str,
    instance: str,
    target: str,
    soak: float,
    proven: float | None,
    applied_at: datetime | None,
    current: bool,
) -> None:
    if proven is None:
        raise PromotionRefused(
            f"{source[:12]} was never applied on {instance}",
            hint=f"promote what {instance} runs (omit --rev), or pass --force --reason TEXT",
        )
    if proven < soak:
        ready = (applied_at or datetime.now(UTC)) + timedelta(seconds=soak)
        when = (
            f"promote after {ready:%Y-%m-%d %H:%M:%S}Z"
            if current
            else (f"it no longer runs on {instance}: promote what {instance} runs now")
        )
        raise PromotionRefused(
            f"{source[:12]} has run on {instance} for {human(proven)}, less than the "
            f"{human(soak)} soak of {target} (promotion.soak)",
            hint=f"{when}, or pass --force --reason TEXT",
        )


def _errors(diags: list[Diagnostic]) -> str:
    errors = [d for d in diags if d.severity == "error"]
    first = errors[0] if errors else None
    where = f"; first: {first.location()}: {first.message}" if first else ""
    return f"{len(errors)} error(s){where}"


def _moved(branch: str, expected: str, found: str) -> PromotionRefused:
    return PromotionRefused(
        f"{branch} moved since the plan was shown: expected {expected[:12]}, found {found[:12]}; "
        "nothing was written",
        hint="run the command again: the promotion is rebuilt on the new head and its plan shown",
    )


def _message(
    source_instance: str,
    target: str,
    source: str,
    branch: str,
    namespaces: tuple[str, ...],
    applied_at: datetime | None,
    proven: float | None,
    soak: float,
    forced: str | None,
) -> str:
    what = f" ({', '.join(namespaces)})" if namespaces else ""
    lines = [f"Promote {source_instance}@{source[:7]} to {target}{what}", ""]
    if namespaces:
        lines.append(f"Takes only these namespaces from {source} onto {branch}.")
    else:
        lines.append(f"Merges {source} into {branch}.")
    if applied_at is not None and proven is not None:
        lines.append(
            f"Applied on {source_instance} at {applied_at:%Y-%m-%d %H:%M:%S}Z, ran {human(proven)}"
            f" (soak {human(soak)})."
        )
    if forced is not None:
        lines.append(f"Forced: {forced}")
    lines += ["", f"Promoted-From: {source_instance}@{source}"]
    if namespaces:
        lines.append(f"Promoted-Namespaces: {', '.join(namespaces)}")
    if forced is not None:
        lines.append(f"Promotion-Forced: {forced}")
    return "\n".join(lines) + "\n"


def _selective_tree(
    repo: GitRepo,
    source_commit: snapshot.Pieces,
    target: snapshot.Pieces,
    spec: InstanceSpec,
    base_tree: str,
    names: Iterable[str],
    recursive: bool,
) -> tuple[str, tuple[str, ...]]:
    """The target tree with the named namespaces' own content taken from the source."""
    source, source_layout, target_layout = source_commit.revision, source_commit.layout(), target.layout()
    folders: set[str] = set()
    for item in names:
        tenant, sep, namespace = item.partition("/")
        if not sep or not tenant or not namespace:
            raise HeadwaterError(
                f"invalid namespace {item!r}",
                hint="give it as TENANT/NAMESPACE, e.g. acme/company.team",
            )
        if not spec.carries(tenant):
            raise PromotionRefused(
                f"{spec.name} does not carry tenant {tenant!r} (instances.{spec.name}.tenants)"
            )
        found = _folders(source_layout, tenant, namespace, recursive)
        found |= _folders(target_layout, tenant, namespace, recursive)
        if not found:
            known = sorted(
                f"{t}/{n}"
                for t, tree in source_layout.tenants.items()
                for n in tree.namespaces
            )
            raise HeadwaterError(
                f"unknown namespace {item!r}: neither {source[:12]} nor {spec.branch} has a folder for it",
                hint="namespaces: " + ", ".join(known[:10]) + (" …" if len(known) > 10 else ""),
            )
        folders |= found
    own = _own_content(folders)
    old = {e.path: (e.mode, e.oid) for e in target.entries if own(e.path)}
    new = {e.path: (e.mode, e.oid) for e in source_commit.entries if own(e.path)}
    changes: dict[str, tuple[str, str] | None] = {p: None for p in old.keys() - new.keys()}
    changes.update({p: entry for p, entry in new.items() if old.get(p) != entry})
    return repo.write_tree(base_tree, changes), tuple(sorted(changes))


def _folders(tree: layouts.Layout, tenant: str, namespace: str, recursive: bool) -> set[str]:
    """The folders holding the namespace's own content (and its descendants' when recursive)."""
    found: set[str] = set()
    spaces = tree.tenants[tenant].namespaces if tenant in tree.tenants else {}
    for name, node in spaces.items():
        if node.folder is None:
            continue
        if name == namespace or (recursive and name.startswith(namespace + ".")):
            found.add(node.folder)
    return found


def _own_content(folders: set[str]) -> Callable[[str], bool]:
    prefixes = tuple(f"{f}/{sub}/" for f in folders for sub in layouts.RESERVED)
    configs = {f"{f}/{layouts.NAMESPACE_CONFIG}" for f in folders}
    return lambda path: path in configs or path.startswith(prefixes)


def _destination(
    repo: GitRepo, request: Request, branch: str, source_instance: str, source: str, commit: str
) -> tuple[str, str | None]:
    if request.direct:
        ref = f"refs/heads/{branch}"
        return ref, repo.ref(ref)
    name = request.branch or f"promote/{source_instance}-to-{request.target}/{source[:7]}"
    if not _BRANCH.match(name) or name.endswith(".lock"):
        raise HeadwaterError(
            f"invalid branch name {name!r}", hint="use letters, digits, '/', '.', '_' and '-'"
        )
    if name == branch:
        raise PromotionRefused(
            f"{name} is the branch of {request.target}", hint="pass --direct to promote onto it"
        )
    ref = f"refs/heads/{name}"
    existing = repo.ref(ref)
    if existing is None or existing == commit:
        return ref, existing
    trailers = _trailers(repo.commit_info(existing)["message"])
    same = trailers.get("Promoted-From") == f"{source_instance}@{source}" and trailers.get(
        "Promoted-Namespaces", ""
    ) == ", ".join(request.namespaces)
    if not same:
        raise PromotionRefused(
            f"branch {name} already exists and holds another promotion ({existing[:12]})",
            hint="pass --branch NAME, or delete that branch",
        )
    return ref, existing  # the same promotion, rebuilt on the current head: replace it


def _trailers(message: str) -> dict[str, str]:
    last = message.strip().split("\n\n")[-1]
    result: dict[str, str] = {}
    for line in last.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            result[key.strip()] = value.strip()
    return result


def refuse_checked_out(repo: GitRepo, ref: str) -> None:
    """Moving a branch checked out in a working copy would leave that copy behind: refuse."""
    folder = repo.checked_out().get(ref)
    if folder is not None:
        name = ref.removeprefix("refs/heads/")
        raise PromotionRefused(
            f"{name} is checked out in {folder}; moving it would leave that working copy behind",
            hint=f"switch that working copy to another branch (git switch --detach), or run from "
            f"a clone where {name} is not checked out",
        )


# -- write -------------------------------------------------------------------------------------


def write(repo: GitRepo, move: Move, remote: str | None, reason: str) -> None:
    """Move ``move.ref`` by compare-and-swap (and push it); refuses rather than overwrite.

    A refused push puts the local ref back, so a refusal leaves every ref as it was.
    """
    refuse_checked_out(repo, move.ref)
    current = repo.ref(move.base_ref)
    if current != move.base_head:
        raise _moved(_short_ref(move.base_ref), move.base_head, current or "(absent)")
    try:
        repo.update_ref(move.ref, move.new, move.old, reason)
    except RefMoved as exc:
        raise _moved(
            _short_ref(move.ref), move.old or "(absent)", exc.actual or "(absent)"
        ) from None
    if remote is None:
        return
    leases = None
    if (
        move.old is not None
        and move.old != move.new
        and move.ref != f"refs/heads/{_short_ref(move.base_ref)}"
    ):
        # replacing our own promotion branch: only while the remote holds what we last saw
        tracking = (
            repo.ref(f"refs/remotes/{remote}/{_short_ref(move.ref)}") if "/" not in remote else None
        )
        leases = {move.ref: tracking or ("" if "/" not in remote else move.old)}
    try:
        repo.push(remote, [f"{move.new}:{move.ref}"], leases)
    except GitError as exc:
        if move.old != move.new:
            if move.old is None:
                repo.delete_ref(move.ref, move.new)
            else:
                repo.update_ref(
                    move.ref, move.old, move.new, "headwater: undo after a refused push"
                )
        raise PromotionRefused(
            f"{exc.message}; the local {_short_ref(move.ref)} was put back", hint=exc.hint
        ) from None


def _short_ref(ref: str) -> str:
    if ref.startswith("refs/remotes/"):
        return ref.removeprefix("refs/remotes/").partition("/")[2]
    return ref.removeprefix("refs/heads/")


# -- rollback --git ----------------------------------------------------------------------------


def prepare_rollback(
    engine: Engine, instance: str, revision: str, remote: str | None = None
) -> Rollback:
    """A commit on the instance's branch whose tree holds ``revision``'s for the instance's
    paths (headwater.yaml, .headwaterignore and the tenants it carries); other paths stay."""
    repo = engine.repo
    _head, spec = instance_spec(repo, instance)
    base_ref, base_head = branch_ref(repo, spec.branch, remote)
    # listed, their root files read: what the tenants hold does not matter here
    restored, current = snapshot.split(repo, revision), snapshot.split(repo, base_head)
    specs = [s for s in (restored.instances.get(instance), current.instances.get(instance), spec) if s]
    tenants = set(restored.layout().tenants) | set(current.layout().tenants)
    carried = {t for t in tenants if any(s.carries(t) for s in specs)}
    roots = tuple(f"{layouts.TENANTS_DIR}/{t}/" for t in sorted(carried))
    top = {layouts.REPO_CONFIG, layouts.IGNORE_FILE}

    def mine(path: str) -> bool:
        return path in top or path.startswith(roots)

    old = {e.path: (e.mode, e.oid) for e in current.entries if mine(e.path)}
    new = {e.path: (e.mode, e.oid) for e in restored.entries if mine(e.path)}
    changes: dict[str, tuple[str, str] | None] = {p: None for p in old.keys() - new.keys()}
    changes.update({p: entry for p, entry in new.items() if old.get(p) != entry})
    base_tree = repo.tree_of(base_head)
    tree = repo.write_tree(base_tree, changes)
    ref = f"refs/heads/{spec.branch}"
    if tree == base_tree:
        plan = planning.compare_refs(
            {}, {}, instance=instance, base_rev=base_head, head_rev=base_head
        )
        return Rollback(
            instance,
            revision,
            spec.branch,
            Move(ref, repo.ref(ref), base_head, base_ref, base_head),
            (),
            plan,
            True,
        )
    message = (
        f"Roll {instance} back to {revision[:7]}\n\n"
        f"Restores the tree of {revision} for the paths of instance {instance}\n"
        f"({', '.join(sorted(top | set(roots)))}).\n\n"
        f"Rolled-Back-To: {instance}@{revision}\nRolled-Back-From: {base_head}\n"
    )
    commit = repo.commit_tree(tree, [base_head], message)
    try:
        plan = engine.compare(instance, base_head, commit).plan
    except ValidationFailed as exc:
        raise PromotionInvalid(
            f"the rollback commit does not validate for {instance}: {_errors(exc.diagnostics)}",
            exc.diagnostics,
        ) from None
    move = Move(ref, repo.ref(ref), commit, base_ref, base_head)
    refuse_checked_out(repo, ref)
    return Rollback(instance, revision, spec.branch, move, tuple(sorted(changes)), plan, False)
