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
afterwards. Prints ``identical: yes/no`` with what was compared; exit 1 when not identical.
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


def compute(repo_path: Path, rev: str, state: Path, use_cache: bool, out: Path) -> dict[str, Any]:
    """Results of ``rev`` as sorted lines in ``out``; counts and cache statistics returned."""
    from headwater.cache import ResultCache
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo
    from headwater.settings import Settings

    settings = Settings.model_validate({
        "state_dir": str(state),
        "secrets": {"type": "directory", "path": str(state.parent / "secrets")},
    })
    lines: list[str] = []
    counts: dict[str, int] = {}
    started = time.perf_counter()
    with GitRepo(repo_path) as repo, Engine(repo, settings) as engine:
        if not use_cache:
            engine.cache.close()
            engine.cache = ResultCache(None)
        snap = engine.load(rev)
        for instance in sorted(snap.instances):
            for diag in snap.report([instance]):
                lines.append(f"diag\t{instance}\t{json.dumps(diag.to_json(), sort_keys=True)}")
                counts["diagnostics"] = counts.get("diagnostics", 0) + 1
            desired = engine.desired(snap, instance, content=False)
            for key, res in desired.state.items():
                binary = getattr(res, "binary", None)
                lines.append(f"res\t{instance}\t{key}\t{res.hash}\t{binary}")
            counts["resources"] = counts.get("resources", 0) + len(desired.state)
            for key in desired.missing_secrets:
                lines.append(f"missing\t{instance}\t{key}")
            for caller, callees in desired.calls.items():
                lines.extend(f"call\t{instance}\t{caller}\t{callee}" for callee in callees)
        hits, misses = engine.cache.hits, engine.cache.misses
    lines.sort()
    out.write_text("".join(line + "\n" for line in lines), "utf-8")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_compute"]:
        repo, rev, state, mode, out = argv[1:6]
        stats = compute(Path(repo), rev, Path(state), mode == "cache", Path(out))
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
    args = parser.parse_args(argv)
    if (args.repo is None) == (args.size is None):
        parser.error("give REPO or --size")
    if args.size:
        from benchmarks import run

        args.repo, manifest, _took = run.ensure_repo(args.size.upper(), args.seed)
        args.rev = manifest.base
    work = Path(tempfile.mkdtemp(prefix="headwater-cache-identity-"))
    try:
        results = check(args.repo, args.rev, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"cache identity on {args.repo}")
    print(describe(results))
    if args.json:
        args.json.write_text(json.dumps(summary(results), indent=2, sort_keys=True) + "\n")
    ok = all(r.identical for r in results) and not any(r.problems for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
