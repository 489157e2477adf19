"""Results with and without the persistent result cache must be identical.

    .venv/bin/python benchmarks/cache_identity.py --size M       # the cached generated repo
    .venv/bin/python benchmarks/cache_identity.py REPO [--rev dev]

"Results" are, for every instance of headwater.yaml, the validation diagnostics (as JSON,
``Snapshot.report([instance])``) and the desired state (resource key → content hash and
binary flag, missing secrets, subflow calls; ``Engine.desired``). They are computed by the
engine's own path (``Engine.load`` + ``Engine.desired``), each time in a fresh process (no
in-process memo survives from one computation to the next), in these modes:

* at the base commit: no cache; a fresh cache (cold); the same cache again (warm);
* at a commit made on top of it that breaks things (an invalid flow, a flow that is not YAML,
  a flow with unresolved references, an unknown key in a namespace.yaml, one valid flow
  edit): no cache; the cache warmed by the base commit only (partly warm); warm.

Each run writes its results as sorted lines; runs of one commit must be byte-identical. The
repository is never changed: the breaking commit lives on a scratch ref that is deleted
afterwards. Prints ``identical: yes/no`` with what was compared.

Then the incremental path, what the daemon does between two commits (``snapshot.update`` of
the snapshot it holds, then ``Engine.desired_update`` of the namespaces the update touched),
must give the same results as a full load. On three commits c1 → c2 → c3 made on top of the
base that only edit existing flows, namespace files, namespace.yaml and tenant.yaml in place
(``inplace_commits``: things made invalid and repaired, effective configs, locks and allowed
plugins changed, c2 changing nothing for the first instance), one fresh process per cache mode
(cold: an empty cache; warm: as the cold run left it) derives: the chain base → c1 → c2 → c3,
each step from the previous one's snapshot and desired state (in place, as the daemon does);
c2 and c3 each from a full load of the commit before; c3 straight from the base. Each
result is compared with a full load of its commit without cache, in a fresh process. Prints
``incremental identical: yes/no``; ``--no-incremental`` skips it, ``--no-cache-identity``
skips the first check.

Exit 1 when anything differs, or the cache was not used as a mode claims.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import generate  # noqa: E402

SCRATCH_REF = "hw-cache-identity"
MODES_BASE = ("none", "cold", "warm")
MODES_EDIT = ("none", "partial", "warm")

BAD_FLOW = """\
id: not-the-file-name
namespace: not.the.folder
description: broken on purpose by benchmarks/cache_identity.py
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Lgo
    message: a misspelt type
  - id: first
    type: io.kestra.plugin.core.log.Log
  - id: parallel
    type: io.kestra.plugin.core.flow.Parallel
    tasks: []
"""
NOT_YAML = "id: [unclosed\nnamespace: {\n  - nope\n"
UNRESOLVED = """\
- id: unresolved_refs
  type: io.kestra.plugin.core.log.Log
  message: "{{ read('no/such/file.py') }} {{ secret('NO_SUCH_SECRET') }}"
"""


# -- one computation (in a fresh process) ----------------------------------------------------


def _settings(state: Path) -> Any:
    from headwater.settings import Settings

    return Settings.model_validate({
        "state_dir": str(state),
        "secrets": {"type": "directory", "path": str(state.parent / "secrets")},
    })


def result_lines(snap: Any, instance: str, desired: Any, counts: dict[str, int]) -> list[str]:
    """The results of one instance as lines (unsorted): its diagnostics, then its desired
    state (resource key → hash and binary flag, missing secrets, subflow calls)."""
    lines: list[str] = []
    for diag in snap.report([instance]):
        lines.append(f"diag\t{instance}\t{json.dumps(diag.to_json(), sort_keys=True)}")
        counts["diagnostics"] = counts.get("diagnostics", 0) + 1
    for key, res in desired.state.items():
        binary = getattr(res, "binary", None)
        lines.append(f"res\t{instance}\t{key}\t{res.hash}\t{binary}")
    counts["resources"] = counts.get("resources", 0) + len(desired.state)
    for key in desired.missing_secrets:
        lines.append(f"missing\t{instance}\t{key}")
    for caller, callees in desired.calls.items():
        lines.extend(f"call\t{instance}\t{caller}\t{callee}" for callee in callees)
    return lines


def write_lines(lines: list[str], out: Path) -> None:
    lines.sort()
    out.write_text("".join(line + "\n" for line in lines), "utf-8")


def compute(repo_path: Path, rev: str, state: Path, use_cache: bool, out: Path) -> dict[str, Any]:
    """Results of ``rev`` as sorted lines in ``out``; counts and cache statistics returned."""
    from headwater.cache import ResultCache
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo

    lines: list[str] = []
    counts: dict[str, int] = {}
    started = time.perf_counter()
    with GitRepo(repo_path) as repo, Engine(repo, _settings(state)) as engine:
        if not use_cache:
            engine.cache.close()
            engine.cache = ResultCache(None)
        snap = engine.load(rev)
        for instance in sorted(snap.instances):
            desired = engine.desired(snap, instance, content=False)
            lines.extend(result_lines(snap, instance, desired, counts))
        hits, misses = engine.cache.hits, engine.cache.misses
    write_lines(lines, out)
    return {
        "revision": snap.revision,
        "instances": sorted(snap.instances),
        "diagnostics": counts.get("diagnostics", 0),
        "resources": counts.get("resources", 0),
        "lines": len(lines),
        "hits": hits,
        "misses": misses,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_child(repo: Path, rev: str, state: Path, use_cache: bool, out: Path,
              timeout: float = 3600.0) -> dict[str, Any]:
    """``compute`` in a fresh interpreter."""
    command = [sys.executable, str(Path(__file__).resolve()), "_compute", str(repo), rev,
               str(state), "cache" if use_cache else "none", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"computing the results of {rev[:12]} failed:\n{proc.stderr[-3000:]}")
    stats: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return stats


# -- comparison ------------------------------------------------------------------------------


@dataclass
class Comparison:
    identical: bool
    lines: int  # lines in common
    differences: list[str] = field(default_factory=list)  # the first few, as -/+ lines
    kinds: dict[str, int] = field(default_factory=dict)  # differing lines by kind (diag, res, …)


def compare(expected: Path, actual: Path, limit: int = 10) -> Comparison:
    """Line by line; both files are sorted, so a merge walk lists what differs."""
    differences: list[str] = []
    kinds: dict[str, int] = {}
    lines = 0
    with expected.open("r", encoding="utf-8") as a, actual.open("r", encoding="utf-8") as b:
        left, right = a.readline(), b.readline()
        while left or right:
            if left == right:
                lines += 1
                left, right = a.readline(), b.readline()
                continue
            if right == "" or (left != "" and left < right):
                differences.append("- " + left.rstrip("\n"))
                left = a.readline()
            else:
                differences.append("+ " + right.rstrip("\n"))
                right = b.readline()
    for line in differences:
        kind = line[2:].split("\t", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return Comparison(not differences, lines, differences[:limit] + (
        [f"… {len(differences) - limit} more"] if len(differences) > limit else []), kinds)


@dataclass
class CommitCheck:
    label: str
    revision: str
    runs: dict[str, dict[str, Any]]
    comparisons: dict[str, Comparison]  # "none vs <mode>"
    problems: list[str]  # the cache not used as the mode claims

    @property
    def identical(self) -> bool:
        return all(c.identical for c in self.comparisons.values())


def _cache_problems(mode: str, stats: dict[str, Any]) -> list[str]:
    hits, misses = stats["hits"], stats["misses"]
    wrong = {
        "none": hits != 0,
        "cold": misses == 0,
        "warm": hits == 0 or misses != 0,
        "partial": hits == 0 or misses == 0,
    }[mode]
    return [f"{mode}: cache hits {hits}, misses {misses}"] if wrong else []


def check_commit(repo: Path, label: str, rev: str, state: Path, work: Path,
                 modes: tuple[str, ...], between: Any = None) -> CommitCheck:
    """Results of ``rev`` in each mode, each compared with the no-cache run. ``cold`` starts
    from an empty cache; ``between(mode)`` (tests) runs before each cached mode."""
    runs: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for mode in modes:
        if mode == "cold":
            for suffix in ("", "-wal", "-shm"):
                (state / f"cache.db{suffix}").unlink(missing_ok=True)
        if between is not None and mode != "none":
            between(mode)
        files[mode] = work / f"{label}-{mode}.txt"
        runs[mode] = run_child(repo, rev, state, mode != "none", files[mode])
    comparisons = {f"none vs {m}": compare(files["none"], files[m]) for m in modes if m != "none"}
    problems = [p for m in modes for p in _cache_problems(m, runs[m])]
    return CommitCheck(label, runs["none"]["revision"], runs, comparisons, problems)


# -- the breaking commit ---------------------------------------------------------------------


def git_dir(repo: Path) -> Path:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--absolute-git-dir"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


def breaking_commit(repo: Path, base: str) -> str:
    """A commit on top of ``base`` (on a scratch ref) that breaks validation in several ways
    and edits one flow validly; the scratch ref is left for the caller to delete."""
    gd = git_dir(repo)
    paths = generate.git(gd, "ls-tree", "-r", "--name-only", base).split("\n")
    flows = sorted(p for p in paths if "/flows/" in p and p.endswith((".yaml", ".yml")))
    configs = sorted(p for p in paths if p.endswith("/namespace.yaml"))
    if len(flows) < 4 or not configs:
        raise ValueError("the repository needs at least 4 flows and one namespace.yaml")
    changes: dict[str, bytes | None] = {
        flows[0]: BAD_FLOW.encode(),
        flows[1]: NOT_YAML.encode(),
        configs[0]: generate.read_blob(gd, base, configs[0]) + b"\nvariabls: {typo: true}\n",
    }
    third = generate.read_blob(gd, base, flows[2])
    at = third.find(b"\ntasks:\n")
    if at >= 0:  # a first task with references that do not resolve, indented like the others
        at += len(b"\ntasks:\n")
        indent = third[at : at + 40].split(b"-", 1)[0]
        task = b"".join(indent + line + b"\n" for line in UNRESOLVED.encode().splitlines())
        changes[flows[2]] = third[:at] + task + third[at:]
    fourth = generate.read_blob(gd, base, flows[3])
    changes[flows[3]] = fourth + b"# edited by benchmarks/cache_identity.py\n"
    generate.git(gd, "update-ref", f"refs/heads/{SCRATCH_REF}", base)
    return generate.commit_changes(gd, SCRATCH_REF, changes, "cache identity: break things", base)


def check(repo: Path, rev: str, work: Path) -> list[CommitCheck]:
    """Both commits, every mode; ``work`` holds the state directory and the result files."""
    gd = git_dir(repo)
    base = generate.git(gd, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    results = [check_commit(repo, "base", base, state, work, MODES_BASE)]
    broken = breaking_commit(repo, base)
    try:
        results.append(check_commit(repo, "broken", broken, state, work, MODES_EDIT))
    finally:
        generate.git(gd, "update-ref", "-d", f"refs/heads/{SCRATCH_REF}")
    return results


def summary(results: list[CommitCheck]) -> dict[str, Any]:
    return {
        "identical": all(r.identical for r in results),
        "cache_used_as_claimed": not any(r.problems for r in results),
        "commits": {
            r.label: {
                "revision": r.revision,
                "identical": r.identical,
                "instances": r.runs["none"]["instances"],
                "diagnostics": r.runs["none"]["diagnostics"],
                "resources": r.runs["none"]["resources"],
                "lines": r.runs["none"]["lines"],
                "runs": r.runs,
                "differences": {k: {"kinds": c.kinds, "first": c.differences}
                                for k, c in r.comparisons.items() if not c.identical},
                "problems": r.problems,
            }
            for r in results
        },
    }


def describe(results: list[CommitCheck]) -> str:
    """``identical: yes/no`` and what was compared, one line per commit below it."""
    ok = all(r.identical for r in results)
    diags = sum(r.runs["none"]["diagnostics"] for r in results)
    resources = sum(r.runs["none"]["resources"] for r in results)
    out = [f"identical: {'yes' if ok else 'no'} ({diags} diagnostics and {resources} resources "
           f"compared over {len(results)} commits, each without cache, cold/partly warm and warm)"]
    for r in results:
        runs = ", ".join(f"{m} {s['seconds']:.1f}s ({s['hits']} hits, {s['misses']} misses)"
                         for m, s in r.runs.items())
        out.append(f"  {r.label} {r.revision[:12]}: {'identical' if r.identical else 'DIFFERENT'}; "
                   f"{r.runs['none']['diagnostics']} diagnostics, {r.runs['none']['resources']} "
                   f"resources, {r.runs['none']['lines']} lines; {runs}")
        for name, comparison in r.comparisons.items():
            if not comparison.identical:
                kinds = ", ".join(f"{n} {k}" for k, n in sorted(comparison.kinds.items()))
                out.append(f"    {name}: differing lines: {kinds}")
                out.extend(f"      {line[:300]}" for line in comparison.differences)
        out.extend(f"    cache not used as claimed: {p}" for p in r.problems)
    return "\n".join(out)


# -- the incremental path --------------------------------------------------------------------
#
# The daemon keeps the snapshot (and desired state) of the commit it applied last and derives
# the next commit's with ``snapshot.update`` + ``Engine.desired_update``. That must give what a
# full load gives. ``update`` only handles commits that edit paths in place, so the commits
# made here only modify existing flows, namespace files, namespace.yaml and tenant.yaml.

INC_REF = "hw-cache-identity-incremental"
MODES_INC = ("cold", "warm")
EDIT_MARK = "edited by benchmarks/cache_identity.py"
CROSS_TASK = """\
- id: cross_namespace_read
  type: io.kestra.plugin.core.log.Log
  message: "{{{{ read('{path}', '{namespace}') }}}}"
"""
BINARY_SUFFIXES = (".png", ".jpg", ".gif", ".bin", ".zip", ".parquet")


@dataclass
class Edited:
    """In-place commits c1, c2, c3 on top of ``base`` (each on top of the previous)."""

    base: str
    commits: list[tuple[str, str]]  # (label, commit id)
    edits: dict[str, list[str]]  # label → what the commit does, one entry per edited path
    kinds: dict[str, dict[str, int]]  # label → edited paths by kind (flow, file, namespace.yaml…)
    noop_instance: str | None  # the instance c2 changes nothing for
    cross_read: str | None  # the flow that reads a file of another namespace (None: not made)


class _Editor:
    """Commits of in-place edits, each edit applied to the path's content as of the last one."""

    def __init__(self, gd: Path, base: str) -> None:
        self.gd, self.base, self.head = gd, base, base
        self.current: dict[str, bytes] = {}
        self.pending: dict[str, bytes] = {}
        self.notes: list[str] = []
        self.kinds: dict[str, int] = {}

    def read(self, path: str) -> bytes:
        if path not in self.current:
            self.current[path] = generate.read_blob(self.gd, self.base, path)
        return self.current[path]

    def put(self, path: str, data: bytes, note: str) -> None:
        if data == self.read(path):
            raise ValueError(f"the edit of {path} ({note}) changes nothing")
        self.current[path] = self.pending[path] = data
        self.notes.append(f"{path}: {note}")
        kind = _kind(path)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def yaml(self, path: str, change: Any, note: str) -> None:
        import yaml

        doc = yaml.safe_load(self.read(path)) or {}
        change(doc)
        self.put(path, generate.dump(doc), note)

    def commit(self, label: str) -> tuple[str, list[str], dict[str, int]]:
        sha = generate.commit_changes(self.gd, INC_REF, self.pending, f"cache identity: {label}", self.head)
        self.head = sha
        result = (sha, self.notes, self.kinds)
        self.pending, self.notes, self.kinds = {}, [], {}
        return result


def _kind(path: str) -> str:
    if path.endswith("/tenant.yaml"):
        return "tenant.yaml"
    if path.endswith("/namespace.yaml"):
        return "namespace.yaml"
    return "file" if "/files/" in path else "flow"


def _model(repo: Path, base: str) -> tuple[Any, list[str]]:
    """The layout of ``base`` (as ``snapshot.load`` builds it) and the instance names."""
    import pathspec
    import yaml

    from headwater import layout
    from headwater.gitrepo import GitRepo

    with GitRepo(repo) as g:
        entries = g.ls_tree(g.resolve(base))
        by_path = {e.path: e for e in entries}
        wanted = [by_path[p].oid for p in (layout.REPO_CONFIG, layout.IGNORE_FILE) if p in by_path]
        blobs = g.read_blobs(wanted)
    ignored = None
    if layout.IGNORE_FILE in by_path:
        text = blobs[by_path[layout.IGNORE_FILE].oid].decode("utf-8", "replace")
        ignored = pathspec.GitIgnoreSpec.from_lines(text.splitlines()).match_file
    config: dict[str, Any] = {}
    if layout.REPO_CONFIG in by_path:
        config = yaml.safe_load(blobs[by_path[layout.REPO_CONFIG].oid]) or {}
    limit = (config.get("limits") or {}).get("maxFileBytes", layout.DEFAULT_MAX_FILE_BYTES)
    tree = layout.build(entries, ignored=ignored, max_file_bytes=int(limit))
    return tree, sorted(config.get("instances") or {})


def _below(tenant: Any, name: str) -> set[tuple[str, str]]:
    return {(tenant.name, n) for n in tenant.namespaces if n == name or n.startswith(name + ".")}


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def _insert_task(flow: bytes, task: str) -> bytes | None:
    """``flow`` with ``task`` (a one-item YAML list) first in its top-level ``tasks``."""
    at = flow.find(b"\ntasks:\n")
    if at < 0:
        return None
    at += len(b"\ntasks:\n")
    indent = flow[at : at + 40].split(b"-", 1)[0]
    lines = b"".join(indent + line + b"\n" for line in task.encode().splitlines())
    return flow[:at] + lines + flow[at:]


def _valid_edit(flow: bytes, label: str) -> bytes:
    new, count = generate._DESCRIPTION.subn(f"description: {label} ({EDIT_MARK})".encode(), flow, 1)
    return new if count else flow + f"# {label}, {EDIT_MARK}\n".encode()


def inplace_commits(repo: Path, base: str, *, cross_reads: bool = True) -> Edited:
    """Commits c1 → c2 → c3 on top of ``base`` that only edit existing paths in place (on a
    scratch ref, deleted before returning; the commits stay readable by id):

    * c1 breaks things and changes effective configs: a flow with a wrong id, namespace, type
      and duplicate task ids; a flow that is not YAML; a flow with unresolved references; a
      valid flow edit; text and binary namespace files; an unknown key in a child
      namespace.yaml; a child namespace.yaml setting a path its root locks; a new variable in
      another root namespace.yaml and in a tenant.yaml;
    * c2 changes nothing for the first instance: overlays for the other instance only
      (``environments.<other>``) in a tenant.yaml and a root namespace.yaml, a comment in a
      child namespace.yaml;
    * c3 repairs and breaks again: the first flow back to its base content (a blob the cache
      knows), the second valid again, another valid flow edit, the root unlocks the path its
      child sets, another root narrows ``allowedPlugins`` (flows below use plugins it no longer
      allows), a tenant.yaml locks ``variables.batch_size`` and another gets an unknown key,
      a child namespace.yaml that is not YAML, more namespace files.

    With ``cross_reads``, c1 also makes a flow read a file of a namespace in another part of
    the tree (``read(path, namespace)``) and c3 sets ``files.inherit: false`` in that
    namespace, so the file is no longer visible there: only the reading flow's check changes.
    """
    import yaml

    gd = git_dir(repo)
    tree, instances = _model(repo, base)
    tenants = [t for _, t in sorted(tree.tenants.items()) if t.config is not None]
    namespaces = [(t, ns) for t in tenants for _, ns in sorted(t.namespaces.items())]
    configured = [(t, ns) for t, ns in namespaces if ns.config is not None]
    roots = [(t, ns) for t, ns in configured if ns.parent is None and len(_below(t, ns.name)) > 1]
    children = [(t, ns) for t, ns in configured if ns.parent is not None]
    flows = sorted(((e.path, t, ns) for t, ns in namespaces for e in ns.flows.values()),
                   key=lambda item: item[0])
    files = sorted(((e.path, t, ns) for t, ns in namespaces for e in ns.files.values()),
                   key=lambda item: item[0])
    texts = [f for f in files if not f[0].endswith(BINARY_SUFFIXES)]
    binaries = [f for f in files if f[0].endswith(BINARY_SUFFIXES)]
    if len(flows) < 6 or len(texts) < 4 or not tenants or not roots or not children:
        raise ValueError("the repository needs at least 6 flows, 4 namespace files, a tenant.yaml, "
                         "a root namespace.yaml with namespaces below it and a child namespace.yaml")
    used: set[str] = set()

    def pick(items: list[Any], fraction: float, accept: Any = None, reuse: bool = False) -> Any:
        """The first acceptable unused item from ``fraction`` of the list on (wrapping); with
        ``reuse``, a used one when every acceptable item is (its edits then add up)."""
        start = int(len(items) * fraction)
        for fresh in (True, False) if reuse else (True,):
            for item in items[start:] + items[:start]:
                path = item[0] if isinstance(item[0], str) else item[1].config.path
                if (path not in used or not fresh) and (accept is None or accept(item)):
                    used.add(path)
                    return item
        return None

    def doc_of(path: str) -> dict[str, Any]:
        value = yaml.safe_load(generate.read_blob(gd, base, path))
        return value if isinstance(value, dict) else {}

    def locked_variable(item: tuple[Any, Any]) -> bool:
        t, ns = item
        return any(isinstance(p, str) and p.startswith("variables.") for p in doc_of(ns.config.path).get("locked") or []) \
            and any(c.name.startswith(ns.name + ".") for _t, c in children if _t is t)

    # -- what each commit edits, chosen before any is made -----------------------------------
    f_bad, f_notyaml, f_unresolved, f_valid, f_again = (
        pick(flows, fraction) for fraction in (0.0, 0.2, 0.4, 0.6, 0.8))
    text1, text2, text3, text4 = (pick(texts, fraction) for fraction in (0.1, 0.35, 0.6, 0.85))
    binary = pick(binaries, 0.5)
    lock_root = pick(roots, 0.0, locked_variable)
    lock_path = ""
    lock_child = None
    if lock_root is not None:
        lock_path = next(p for p in doc_of(lock_root[1].config.path)["locked"]
                         if isinstance(p, str) and p.startswith("variables."))
        lock_child = pick(children, 0.0, lambda c: c[0] is lock_root[0]
                          and c[1].name.startswith(lock_root[1].name + "."))
    var_root = pick(roots, 0.3, reuse=True)
    narrow_root = pick(roots, 0.6, reuse=True)
    overlay_root = pick(roots, 0.9, reuse=True)
    typo_child = pick(children, 0.25, reuse=True)
    comment_child = pick(children, 0.5, reuse=True)
    broken_child = pick(children, 0.75, reuse=True)
    tenant_var = tenants[0]
    tenant_overlay = tenants[1 % len(tenants)]
    tenant_lock = tenants[2 % len(tenants)]
    tenant_typo = tenants[0]  # with two tenants, the same tenant.yaml as the lock: one stays untouched
    noop = instances[0] if instances else None
    other = next((i for i in instances if i != noop), None)

    cross: tuple[str, Any, Any, str] | None = None  # reading flow, its tenant, namespace X, file
    if cross_reads:
        # Where c3's other edits reach: the reading flow must be outside, or it would be
        # checked again for their sake.
        reach = {(t.name, n) for t in (tenant_lock, tenant_typo) for n in t.namespaces}
        for item in (lock_root, narrow_root, broken_child):
            if item is not None:
                reach |= _below(item[0], item[1].name)
        for _path, t, ns in (f_bad, f_notyaml, f_again):
            reach.add((t.name, ns.name))
        for _path, t, ns in (text3, text4):
            reach |= _below(t, ns.name)
        for t, x in children:
            if x.config.path in used or t.name in (tenant_lock.name, tenant_typo.name) or _below(t, x.name) & reach:
                continue
            parent = t.namespaces.get(x.parent or "")
            visible = sorted(rel for rel in (parent.files if parent is not None else {}) if rel not in x.files)
            if not visible or "files" in doc_of(x.config.path):
                continue
            reader = pick(flows, 0.5, lambda f, t=t, x=x: f[1] is t and (t.name, f[2].name) not in reach
                          and (t.name, f[2].name) not in _below(t, x.name))
            if reader is not None:
                used.add(x.config.path)
                cross = (reader[0], t, x, visible[0])
                break

    editor = _Editor(gd, base)
    commits: list[tuple[str, str]] = []
    edits: dict[str, list[str]] = {}
    kinds: dict[str, dict[str, int]] = {}

    def commit(label: str) -> None:
        sha, notes, counted = editor.commit(label)
        commits.append((label, sha))
        edits[label], kinds[label] = notes, counted

    generate.git(gd, "update-ref", f"refs/heads/{INC_REF}", base)
    try:
        # c1: break things, change effective configs
        editor.put(f_bad[0], BAD_FLOW.encode(), "wrong id and namespace, unknown type, duplicate task ids")
        editor.put(f_notyaml[0], NOT_YAML.encode(), "not YAML")
        unresolved = _insert_task(editor.read(f_unresolved[0]), UNRESOLVED)
        editor.put(f_unresolved[0], unresolved if unresolved is not None
                   else editor.read(f_unresolved[0]) + b"\n# " + EDIT_MARK.encode() + b"\n",
                   "a task with a missing file and an undeclared secret")
        editor.put(f_valid[0], _valid_edit(editor.read(f_valid[0]), "c1"), "valid edit")
        if cross is not None:
            reading = _insert_task(editor.read(cross[0]), CROSS_TASK.format(path=cross[3], namespace=cross[2].name))
            if reading is None:
                cross = None
            else:
                editor.put(cross[0], reading, f"reads {cross[3]} of namespace {cross[2].name}")
        for item in (text1, text2):
            editor.put(item[0], editor.read(item[0]) + f"\n{EDIT_MARK} (c1)\n".encode(), "text edit")
        if binary is not None:
            editor.put(binary[0], editor.read(binary[0]) + b"\x00\x01" + EDIT_MARK.encode(), "binary edit")
        editor.yaml(typo_child[1].config.path, lambda d: d.update(variabls={"typo": True}), "unknown key")
        if lock_child is not None:
            editor.yaml(lock_child[1].config.path, lambda d: _set_path(d, lock_path, "overridden"),
                        f"sets {lock_path}, locked by {lock_root[1].name}")
        editor.yaml(var_root[1].config.path,
                    lambda d: _set_path(d, "variables.cache_identity", "c1"), "new variable (inherited below)")
        editor.yaml(tenant_var.config.path,
                    lambda d: _set_path(d, "variables.cache_identity_tenant", "c1"), "new tenant variable")
        commit("c1")

        # c2: nothing changes for the first instance
        if other is not None:
            for path in (tenant_overlay.config.path, overlay_root[1].config.path):
                editor.yaml(path, lambda d: _set_path(d, f"environments.{other}.variables.only_{other}", "c2"),
                            f"variable for {other} only")
        editor.put(comment_child[1].config.path,
                   editor.read(comment_child[1].config.path) + f"# {EDIT_MARK} (c2)\n".encode(), "a comment")
        commit("c2")

        # c3: repair some, break others, narrow, lock, unlock
        editor.put(f_bad[0], generate.read_blob(gd, base, f_bad[0]), "back to its base content")
        editor.put(f_notyaml[0], _valid_edit(generate.read_blob(gd, base, f_notyaml[0]), "c3"),
                   "valid again (edited)")
        editor.put(f_again[0], _valid_edit(editor.read(f_again[0]), "c3"), "valid edit")
        if lock_root is not None and lock_child is not None:
            editor.yaml(lock_root[1].config.path,
                        lambda d: d.update(locked=[p for p in d["locked"] if p != lock_path]),
                        f"unlocks {lock_path}")
        editor.yaml(narrow_root[1].config.path,
                    lambda d: d.update(allowedPlugins=["io.kestra.plugin.core.*"]), "allowedPlugins narrowed")
        editor.yaml(tenant_lock.config.path,
                    lambda d: d.update(locked=[*(d.get("locked") or []), "variables.batch_size"]),
                    "locks variables.batch_size")
        editor.yaml(tenant_typo.config.path, lambda d: d.update(ownerz=["nobody"]), "unknown key")
        editor.put(broken_child[1].config.path, b"variables: [unclosed\n", "not YAML")
        for item in (text3, text4):
            editor.put(item[0], editor.read(item[0]) + f"\n{EDIT_MARK} (c3)\n".encode(), "text edit")
        if cross is not None:
            editor.yaml(cross[2].config.path, lambda d: d.update(files={"inherit": False}),
                        f"files.inherit: false ({cross[3]}, read by {cross[0]}, no longer visible)")
        commit("c3")
    finally:
        generate.git(gd, "update-ref", "-d", f"refs/heads/{INC_REF}")
    return Edited(base, commits, edits, kinds, noop if other is not None else None,
                  cross[0] if cross is not None else None)


def compute_incremental(repo_path: Path, base: str, commits: list[str], state: Path, use_cache: bool,
                        out: Path, prefix: str = "") -> dict[str, Any]:
    """The daemon's path over ``commits``, each step's results as sorted lines in
    ``out/<prefix><step>.txt``:

    * ``skip-cN``: from a full load of ``base`` straight to the last commit (what the daemon
      does when it refused the commits in between), not in place;
    * ``chain-ck``: base → c1 → c2 → … each derived from the previous update's snapshot and
      desired state (``desired_update(..., in_place=True)``, as ``Engine._apply_changes``);
    * ``single-ck``: from a full load of the commit before, not in place.

    Returns the statistics of each step and the cache's hits and misses."""
    from headwater import snapshot
    from headwater.cache import ResultCache
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo

    steps: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with GitRepo(repo_path) as repo, Engine(repo, _settings(state)) as engine:
        if not use_cache:
            engine.cache.close()
            engine.cache = ResultCache(None)

        def full(rev: str) -> tuple[Any, dict[str, Any]]:
            snap = engine.load(rev)
            return snap, {i: engine.desired(snap, i, content=False) for i in sorted(snap.instances)}

        def step(name: str, old: tuple[Any, dict[str, Any]], rev: str,
                 in_place: bool) -> tuple[Any, dict[str, Any]] | None:
            old_snap, old_desired = old
            begun = time.perf_counter()
            update = snapshot.update(old_snap, repo, rev, cache=engine.cache)
            if update is None:
                steps[name] = {"update": None}
                return None
            snap = update.snapshot
            desired = {
                i: engine.desired_update(old_desired[i], snap, i, update.touched.get(i, set()), in_place=in_place)
                for i in sorted(snap.instances)
            }
            took = time.perf_counter() - begun
            counts: dict[str, int] = {}
            lines = [line for i in sorted(snap.instances) for line in result_lines(snap, i, desired[i], counts)]
            write_lines(lines, out / f"{prefix}{name}.txt")
            steps[name] = {
                "update": snap.revision, "changed": len(update.changed),
                "touched": {i: len(update.touched.get(i, ())) for i in sorted(snap.instances)},
                "remerged": {i: len(update.remerged.get(i, ())) for i in sorted(snap.instances)},
                "seconds": round(took, 3), "lines": len(lines),
                "diagnostics": counts.get("diagnostics", 0), "resources": counts.get("resources", 0),
            }
            return snap, desired

        first = full(base)
        if len(commits) > 1:
            step(f"skip-c{len(commits)}", first, commits[-1], in_place=False)
        current: tuple[Any, dict[str, Any]] | None = first
        for k, rev in enumerate(commits, 1):
            assert current is not None
            current = step(f"chain-c{k}", current, rev, in_place=True)
            if current is None:
                break
        del first, current
        for k in range(2, len(commits) + 1):
            step(f"single-c{k}", full(commits[k - 2]), commits[k - 1], in_place=False)
        hits, misses = engine.cache.hits, engine.cache.misses
    return {"steps": steps, "hits": hits, "misses": misses,
            "seconds": round(time.perf_counter() - started, 3)}


def run_incremental_child(repo: Path, base: str, commits: list[str], state: Path, use_cache: bool,
                          out: Path, prefix: str, timeout: float = 3600.0) -> dict[str, Any]:
    """``compute_incremental`` in a fresh interpreter."""
    command = [sys.executable, str(Path(__file__).resolve()), "_incremental", str(repo), base,
               ",".join(commits), str(state), "cache" if use_cache else "none", str(out), prefix]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the incremental path from {base[:12]} failed:\n{proc.stderr[-3000:]}")
    stats: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return stats


@dataclass
class IncrementalSetup:
    repo: Path
    edited: Edited
    work: Path  # result files and the state directory of the incremental runs
    references: dict[str, dict[str, Any]]  # commit label → the full load's statistics (no cache)


@dataclass
class IncrementalCheck:
    setup: IncrementalSetup
    runs: dict[str, dict[str, Any]]  # cache mode → ``compute_incremental``'s statistics
    comparisons: dict[str, Comparison]  # "<mode> <step>" → the step vs the full load
    noop_identical: bool | None  # the first instance's results at c1 and c2 are the same
    problems: list[str]  # a step the update refused, the cache not used as claimed, …

    @property
    def identical(self) -> bool:
        return bool(self.comparisons) and all(c.identical for c in self.comparisons.values())

    @property
    def ok(self) -> bool:
        return self.identical and not self.problems


def prepare_incremental(repo: Path, rev: str, work: Path, *, cross_reads: bool = True) -> IncrementalSetup:
    """The in-place commits on top of ``rev`` and, for each, a full load without cache in a
    fresh process (the reference)."""
    gd = git_dir(repo)
    base = generate.git(gd, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    work.mkdir(parents=True, exist_ok=True)
    (work / "state").mkdir(exist_ok=True)
    edited = inplace_commits(repo, base, cross_reads=cross_reads)
    references = {label: run_child(repo, sha, work / "state", False, work / f"full-{label}.txt")
                  for label, sha in edited.commits}
    return IncrementalSetup(repo, edited, work, references)


def _step_target(step: str) -> str:
    return step.rsplit("-", 1)[1]


def _instance_lines(path: Path, instance: str) -> list[str]:
    with path.open("r", encoding="utf-8") as f:
        return [line for line in f if line.split("\t", 2)[1] == instance]


def run_incremental(setup: IncrementalSetup, modes: tuple[str, ...] = MODES_INC, *,
                    in_process: bool = False) -> IncrementalCheck:
    """The incremental path in each cache mode (``cold``: from an empty cache; ``warm``: the
    cache as the runs before left it; ``none``: without), each step compared with the full
    load of its commit. ``in_process`` (tests) runs it in this process."""
    state, work = setup.work / "state", setup.work
    commits = [sha for _label, sha in setup.edited.commits]
    runs: dict[str, dict[str, Any]] = {}
    comparisons: dict[str, Comparison] = {}
    problems: list[str] = []
    for mode in modes:
        if mode == "cold":
            for suffix in ("", "-wal", "-shm"):
                (state / f"cache.db{suffix}").unlink(missing_ok=True)
        if in_process:
            stats = compute_incremental(setup.repo, setup.edited.base, commits, state, mode != "none",
                                        work, f"{mode}-")
        else:
            stats = run_incremental_child(setup.repo, setup.edited.base, commits, state, mode != "none",
                                          work, f"{mode}-")
        runs[mode] = stats
        for step, facts in stats["steps"].items():
            if facts["update"] is None:
                problems.append(f"{mode} {step}: snapshot.update refused an in-place commit (None)")
                continue
            comparisons[f"{mode} {step}"] = compare(work / f"full-{_step_target(step)}.txt",
                                                    work / f"{mode}-{step}.txt")
        if mode != "none":
            problems += [f"incremental {p}" for p in _cache_problems(mode, stats)]
    noop: bool | None = None
    instance = setup.edited.noop_instance
    if instance is not None and len(setup.edited.commits) > 1:
        noop = _instance_lines(work / "full-c1.txt", instance) == _instance_lines(work / "full-c2.txt", instance)
        if not noop:
            problems.append(f"c2 was to change nothing for {instance}, but its full load differs from c1's")
    return IncrementalCheck(setup, runs, comparisons, noop, problems)


def check_incremental(repo: Path, rev: str, work: Path, *, cross_reads: bool = True,
                      modes: tuple[str, ...] = MODES_INC, in_process: bool = False) -> IncrementalCheck:
    """``prepare_incremental`` then ``run_incremental``."""
    return run_incremental(prepare_incremental(repo, rev, work, cross_reads=cross_reads), modes,
                           in_process=in_process)


def incremental_summary(result: IncrementalCheck) -> dict[str, Any]:
    edited = result.setup.edited
    return {
        "identical": result.identical,
        "problems": result.problems,
        "base": edited.base,
        "commits": {label: {"revision": sha, "edits": edited.edits[label],
                            "reference": result.setup.references[label]}
                    for label, sha in edited.commits},
        "noop_instance": edited.noop_instance,
        "noop_identical": result.noop_identical,
        "cross_read": edited.cross_read,
        "runs": result.runs,
        "differences": {k: {"kinds": c.kinds, "first": c.differences}
                        for k, c in result.comparisons.items() if not c.identical},
    }


def describe_incremental(result: IncrementalCheck) -> str:
    """``incremental identical: yes/no`` and what was compared, details below it."""
    setup, edited = result.setup, result.setup.edited
    refs = setup.references
    compared = list(result.comparisons)
    diags = sum(refs[_step_target(k.split(" ", 1)[1])]["diagnostics"] for k in compared)
    resources = sum(refs[_step_target(k.split(" ", 1)[1])]["resources"] for k in compared)
    steps = sorted({k.split(" ", 1)[1] for k in compared})
    differing = [k for k, c in result.comparisons.items() if not c.identical]
    out = [f"incremental identical: {'yes' if result.identical else 'no'} ({diags} diagnostics and "
           f"{resources} resources compared in {len(compared)} comparisons: {len(steps)} updates "
           f"(chain base→{'→'.join(label for label, _ in edited.commits)}, single steps, base→"
           f"{edited.commits[-1][0]}) × cache {' and '.join(result.runs)}, each against a full load "
           f"without cache; {len(differing)} differ)"]
    for label, sha in edited.commits:
        ref = refs[label]
        what = ", ".join(f"{n} {k}" for k, n in sorted(edited.kinds[label].items()))
        note = ""
        if label == "c2" and edited.noop_instance is not None:
            note = f"; changes nothing for {edited.noop_instance}: {'yes' if result.noop_identical else 'NO'}"
        out.append(f"  {label} {sha[:12]}: edits {what}; full load {ref['diagnostics']} diagnostics, "
                   f"{ref['resources']} resources in {ref['seconds']:.1f}s{note}")
    if edited.cross_read is not None:
        out.append(f"  cross-namespace read: {edited.cross_read} (c1), its namespace's files.inherit off (c3)")
    for mode, stats in result.runs.items():
        parts = []
        for step, facts in stats["steps"].items():
            if facts["update"] is None:
                parts.append(f"{step} REFUSED")
                continue
            touched = "/".join(str(n) for n in facts["touched"].values())
            remerged = "/".join(str(n) for n in facts["remerged"].values())
            same = "" if result.comparisons[f"{mode} {step}"].identical else " DIFFERENT"
            parts.append(f"{step} {facts['changed']} paths, {touched} namespaces touched "
                         f"({remerged} remerged), {facts['seconds']:.2f}s{same}")
        out.append(f"  {mode} {stats['seconds']:.1f}s ({stats['hits']} hits, {stats['misses']} misses): "
                   + "; ".join(parts))
    for name in differing:
        comparison = result.comparisons[name]
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(comparison.kinds.items()))
        out.append(f"    {name}: differing lines: {kinds}")
        out.extend(f"      {line[:300]}" for line in comparison.differences)
    out.extend(f"    problem: {p}" for p in result.problems)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_compute"]:
        repo, rev, state, mode, out = argv[1:6]
        stats = compute(Path(repo), rev, Path(state), mode == "cache", Path(out))
        print(json.dumps(stats))
        return 0
    if argv[:1] == ["_incremental"]:
        repo, base, commits, state, mode, out, prefix = argv[1:8]
        stats = compute_incremental(Path(repo), base, commits.split(","), Path(state), mode == "cache",
                                    Path(out), prefix)
        print(json.dumps(stats))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, nargs="?", help="A repository (not changed).")
    parser.add_argument("--size", help="Instead of REPO: the generated repository of this size "
                        "(benchmarks/.work/, generated when missing).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rev", default="dev", help="The base commit (default dev).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    parser.add_argument("--no-incremental", action="store_true",
                        help="Skip the check that the incremental path gives what a full load gives.")
    parser.add_argument("--no-cache-identity", action="store_true",
                        help="Skip the check with and without the cache (only the incremental one).")
    parser.add_argument("--no-cross-namespace-reads", action="store_true",
                        help="In the incremental check, make no flow read another namespace's file.")
    args = parser.parse_args(argv)
    if (args.repo is None) == (args.size is None):
        parser.error("give REPO or --size")
    if args.no_incremental and args.no_cache_identity:
        parser.error("nothing to check")
    if args.size:
        from benchmarks import run

        args.repo, manifest, _took = run.ensure_repo(args.size.upper(), args.seed)
        args.rev = manifest.base
    work = Path(tempfile.mkdtemp(prefix="headwater-cache-identity-"))
    results: list[CommitCheck] = []
    incremental: IncrementalCheck | None = None
    try:
        if not args.no_cache_identity:
            results = check(args.repo, args.rev, work)
        if not args.no_incremental:
            incremental = check_incremental(args.repo, args.rev, work / "incremental",
                                            cross_reads=not args.no_cross_namespace_reads)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"cache identity on {args.repo}" + (f" (work directory kept: {work})" if args.keep else ""))
    if results:
        print(describe(results))
    if incremental is not None:
        print(describe_incremental(incremental))
    if args.json:
        body = summary(results) if results else {}
        if incremental is not None:
            body["incremental"] = incremental_summary(incremental)
        args.json.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    ok = all(r.identical for r in results) and not any(r.problems for r in results)
    ok = ok and (incremental is None or incremental.ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
