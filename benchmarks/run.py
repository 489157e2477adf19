"""`make bench`: Headwater end to end on generated repositories, each figure beside its floor.

    benchmarks/run.py --size S          # make bench
    benchmarks/run.py --size S,M        # make bench SIZE=S,M

For each size the generated repository is cached under benchmarks/.work/ (git-ignored). Every
measurement runs the `headwater` CLI (or a floor) as a fresh process inside a fresh wrapper
(benchmarks/measure.py) that reports wall time and peak RSS; each is repeated (3 times by
default) and the median is reported. Measured, in this order:

1. cold floor: ls-tree + `git cat-file --batch` of every flow and config blob + libyaml parse,
   run right before each cold `validate` and each cold `plan` below: this machine's speed
   may drift within minutes, so each is compared with the floor runs next to its own (the
   floor row has them all); the disk's pending writes are flushed before each;
2. cold `headwater validate` (both instances) in a fresh working directory and HOME;
3. cold `headwater plan` then `apply` of `dev` into a fresh state directory (local target);
4. no-op `headwater plan --detailed-exitcode` right after the apply;
5. incremental floor: `git diff-tree` between two commits + reading the changed blobs, and
   `headwater apply` of a commit that edits one flow, from the applied previous commit;
6. `headwater apply` of a commit that edits a root namespace.yaml (inherited below it);
7. results with and without the result cache are identical (benchmarks/cache_identity.py:
   diagnostics and desired state of every instance, no cache vs cold vs warm, at the
   generated commit and at one that breaks things), and the incremental path (what the daemon
   does between commits) against full loads over in-place commits; ``--no-identity`` skips both.

The table goes to stdout and, with machine details, into benchmarks/RESULTS.md, replacing
the section of each size that was run. The package's bytecode is written first, as an
installed copy has it (``compile_bytecode``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import cache_identity, generate  # noqa: E402

BENCH = ROOT / "benchmarks"
WORK = BENCH / ".work"
RESULTS = BENCH / "RESULTS.md"
HEADWATER = Path(sys.executable).parent / "headwater"


class BenchError(Exception):
    """A measured command failed or took too long."""


@dataclass
class Sample:
    seconds: float
    rss: int
    stdout: str
    stderr: str
    stdout_bytes: int


@dataclass
class Row:
    key: str  # short, for the list of every run
    name: str
    samples: list[float] = field(default_factory=list)
    rss: int = 0
    floor: Row | None = None
    note: str = ""

    def add(self, *samples: Sample) -> None:
        self.samples.append(sum(s.seconds for s in samples))
        self.rss = max([self.rss, *(s.rss for s in samples)])

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float | None:
        return self.median / self.floor.median if self.floor is not None else None


@dataclass
class Run:
    """One size: its scratch space and how headwater is run there."""

    size: str
    repo: Path
    scratch: Path
    manifest: generate.Manifest
    timeout: float
    env: dict[str, str]

    def measure(self, command: list[str], *, expect: tuple[int, ...] = (0,), cwd: Path | None = None,
                home: Path | None = None) -> Sample:
        env = dict(self.env)
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
        wrapper = [sys.executable, str(BENCH / "measure.py"), "--timeout", str(self.timeout), "--", *command]
        proc = subprocess.run(wrapper, capture_output=True, text=True, env=env, cwd=cwd or self.scratch,
                              check=False)
        if proc.returncode != 0:
            raise BenchError(f"the measuring wrapper failed: {proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        if result["returncode"] not in expect:
            what = "timed out" if result["returncode"] == -1 else f"exited {result['returncode']}"
            raise BenchError(
                f"{' '.join(command)} {what} after {result['seconds']:.1f}s:\n"
                f"{result['stderr'][-1500:] or result['stdout'][-1500:]}"
            )
        return Sample(result["seconds"], result["max_rss_bytes"], result["stdout"], result["stderr"],
                      result["stdout_bytes"])

    def headwater(self, *args: str, state: Path | None = None, **kw: object) -> Sample:
        command = [str(HEADWATER), *args]
        if state is not None:
            command += ["--state-dir", str(state)]
        return self.measure(command, **kw)  # type: ignore[arg-type]

    def floor(self, *args: str) -> Sample:
        return self.measure([sys.executable, str(BENCH / "floors.py"), *args])

    def fresh_state(self, name: str) -> Path:
        state = self.scratch / name
        shutil.rmtree(state, ignore_errors=True)
        secrets = state / "secrets"
        for tenant, names in self.manifest.secrets.items():
            folder = secrets / tenant
            folder.mkdir(parents=True, exist_ok=True)
            for secret in names:
                (folder / secret).write_text(f"bench-{tenant}-{secret.lower()}\n", "utf-8")
        return state


# -- repositories ----------------------------------------------------------------------------


def ensure_repo(size: str, seed: int) -> tuple[Path, generate.Manifest, float | None]:
    """The cached repository of ``size`` (generated when missing), branches reset to the
    generated commit; the generation time when it was generated now."""
    home = WORK / f"{size}-seed{seed}-v{generate.GENERATOR_VERSION}"
    repo, manifest_path = home / "repo.git", home / "manifest.json"
    took = None
    if not manifest_path.exists():
        shutil.rmtree(home, ignore_errors=True)
        print(f"[{size}] generating the repository (cached in {home.relative_to(ROOT)}) …", flush=True)
        start = time.perf_counter()
        manifest = generate.generate(repo, size, seed)
        took = time.perf_counter() - start
        manifest.save(manifest_path)
    manifest = generate.Manifest.read(manifest_path)
    for branch in ("dev", "main"):
        generate.git(repo, "update-ref", f"refs/heads/{branch}", manifest.base)
    return repo, manifest, took


# -- the measurements ------------------------------------------------------------------------


def bench_size(size: str, seed: int, repeats: int, timeout: float,
               identity: bool = True) -> tuple[list[Row], dict[str, object]]:
    repo, manifest, generated_in = ensure_repo(size, seed)
    scratch = WORK / f"{size}-runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(NO_COLOR="1", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    run = Run(size, repo, scratch, manifest, timeout, env)

    base = manifest.base
    edited = generate.edit_flow(repo, "dev", manifest.edit_flow, parent=base)
    rooted = generate.edit_config(repo, "dev", manifest.root_config, parent=edited)
    generate.git(repo, "update-ref", "refs/heads/dev", base)
    repo_arg = ["-C", str(repo)]

    def step(label: str) -> None:
        print(f"[{size}] {label}", flush=True)

    cold_floor = Row("floor", "cold floor: ls-tree + cat-file --batch + libyaml of flows and configs")
    # The floor runs next to each cold measurement: each cold row is compared with its own.
    validate_floor = Row("floor-validate", "cold floor, the runs before each cold validate")
    plan_floor = Row("floor-plan", "cold floor, the runs before each cold plan")

    def floor_run(row: Row) -> None:
        # The disk's pending writes (the apply before, its state removed) are flushed first:
        # the kernel writing them back would take a core from whichever run comes next.
        os.sync()
        sample = run.floor("cold", str(repo), base)
        row.add(sample)
        cold_floor.add(sample)
        cold_floor.note = f"{json.loads(sample.stdout)['blobs']} blobs"

    step("cold floor, cold and warm validate")
    validate = Row("validate", "cold `validate` (dev + prod)", floor=validate_floor)
    warm = Row("validate-warm", "warm `validate`, its result cache kept", floor=cold_floor)
    for i in range(repeats):
        fresh = scratch / f"validate-{i}"  # a fresh HOME and cwd: no cache of an earlier run
        fresh.mkdir()
        floor_run(validate_floor)
        validate.add(run.headwater("validate", *repo_arg, "--rev", base, cwd=fresh, home=fresh / "home"))
        warm.add(run.headwater("validate", *repo_arg, "--rev", base, cwd=fresh, home=fresh / "home"))

    step("cold floor, cold plan + apply (dev)")
    plan = Row("plan", "cold `plan` dev, empty state", floor=plan_floor)
    apply = Row("apply", "`apply` dev, empty state, right after that plan", floor=cold_floor)
    both = Row("plan+apply", "cold `plan` + `apply` dev", floor=cold_floor)
    state = scratch / "state"
    for i in range(repeats):
        if i:
            shutil.rmtree(state)  # keep one instance on disk at a time
        state = run.fresh_state(f"state-{i}")
        floor_run(plan_floor)
        planned = run.headwater("plan", *repo_arg, "--instance", "dev", "--rev", base, state=state)
        applied = run.headwater("apply", *repo_arg, "--instance", "dev", "--rev", base, "--yes", state=state)
        plan.add(planned)
        apply.add(applied)
        both.add(planned, applied)
    plan.note = f"{_last_line(planned.stdout)} ({_mb(planned.stdout_bytes)} of output)"
    apply.note = f"{_last_line(applied.stdout)} ({_mb(applied.stdout_bytes)} of output)"

    step("no-op plan")
    noop = Row("no-op-plan", "no-op `plan` right after apply", floor=cold_floor)
    for _ in range(repeats):
        sample = run.headwater("plan", *repo_arg, "--instance", "dev", "--rev", base,
                               "--detailed-exitcode", state=state)
        noop.add(sample)
    noop.note = _last_line(sample.stdout)

    step("incremental: one flow edited")
    inc_floor, inc = _edit_rows(
        run, repo, state, repeats, base, edited, "incremental", "one flow",
        "CLI `apply`, one flow edited (a full sync: reads the instance back)",
    )
    step("root namespace.yaml edited")
    root_floor, root = _edit_rows(
        run, repo, state, repeats, edited, rooted, "root", "root namespace.yaml",
        f"CLI `apply`, root namespace.yaml edited ({manifest.below_root} namespaces below)",
    )

    identical: str | None = None
    incremental: str | None = None
    identity_ok = True
    if identity:
        step("cache identity: no cache vs cold vs warm")
        started = time.perf_counter()
        try:
            checks = cache_identity.check(repo, base, scratch / "identity")
        except (RuntimeError, subprocess.SubprocessError) as exc:
            identical, identity_ok = f"the check failed: {str(exc)[-500:]}", False
        else:
            identical = cache_identity.describe(checks)
            print(identical, flush=True)
            identical = identical.splitlines()[0] + f", in {time.perf_counter() - started:.0f} s"
            identity_ok = all(c.identical for c in checks) and not any(c.problems for c in checks)
        step("incremental path vs full loads")
        started = time.perf_counter()
        try:
            paths = cache_identity.check_incremental(repo, base, scratch / "incremental")
        except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            incremental, identity_ok = f"the check failed: {str(exc)[-500:]}", False
        else:
            incremental = cache_identity.describe_incremental(paths)
            print(incremental, flush=True)
            incremental = incremental.splitlines()[0] + f", in {time.perf_counter() - started:.0f} s"
            identity_ok = identity_ok and paths.ok

    shutil.rmtree(scratch, ignore_errors=True)
    facts: dict[str, object] = {
        "flows": manifest.flows, "namespaces": manifest.namespaces, "files": manifest.files,
        "tenants": len(manifest.tenants), "max_depth": manifest.max_depth,
        "bytes": manifest.bytes, "generated_in": generated_in, "repeats": repeats,
        "edit_flow": manifest.edit_flow, "root_config": manifest.root_config,
        "identity": identical, "incremental": incremental, "identity_ok": identity_ok,
    }
    rows = [cold_floor, validate, warm, plan, apply, both, noop, inc_floor, inc, root_floor, root]
    return rows, facts


def _edit_rows(
    run: Run, repo: Path, state: Path, repeats: int, before: str, after: str, name: str, what: str,
    label: str,
) -> tuple[Row, Row]:
    """The incremental floor from ``before`` to ``after`` and the CLI `apply` of ``after`` on an
    instance at ``before`` (set back to it between runs)."""
    floor = Row(f"{name}-floor", f"incremental floor: diff-tree + changed blobs ({what})")
    for _ in range(repeats):
        floor.add(run.floor("incremental", str(repo), before, after))
    row = Row(f"{name}-apply", label, floor=floor)
    for i in range(repeats):
        if i:
            run.headwater("apply", "-C", str(repo), "--instance", "dev", "--rev", before, "--yes", state=state)
        sample = run.headwater("apply", "-C", str(repo), "--instance", "dev", "--rev", after, "--yes", state=state)
        row.add(sample)
    row.note = _last_line(sample.stdout)
    return floor, row


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- reporting -------------------------------------------------------------------------------


def _cells(row: Row) -> list[str]:
    floor = f"{row.floor.median:.3f}" if row.floor is not None else "—"
    ratio = f"{row.ratio:.2f}×" if row.ratio is not None else "—"
    return [row.name, f"{row.median:.3f}", floor, ratio, f"{row.rss / 2**20:.0f}", row.note]


HEADERS = ["measurement", "seconds", "floor (s)", "ratio", "peak RSS MB", "note"]


def text_table(rows: list[Row]) -> str:
    cells = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS) - 1)]
    lines = []
    for index, row in enumerate(cells):
        left = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(widths))]
        lines.append("  ".join([*left, row[-1]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---", "--:", "--:", "--:", "--:", "---"]) + "|"]
    for row in rows:
        cells = _cells(row)
        cells[-1] = cells[-1].replace("|", "\\|")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    checkout = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    version = subprocess.run([str(HEADWATER), "--version"], capture_output=True, text=True, check=False)
    version_text = version.stdout.split()[-1] if version.stdout.split() else "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git": git_version.removeprefix("git version "),
        "headwater": f"headwater {version_text} at {checkout}" + (" (src/ modified)" if dirty else ""),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def section(size: str, rows: list[Row], facts: dict[str, object], info: dict[str, str]) -> str:
    generated = facts["generated_in"]
    lines = [
        f"<!-- size:{size} -->",
        f"## {size}: {facts['flows']:,} flows, {facts['namespaces']:,} namespaces, {facts['files']:,} files",
        "",
        f"{facts['tenants']} tenants, namespaces up to {facts['max_depth']} levels deep, "
        f"{int(facts['bytes']) / 2**20:.0f} MiB of content (seed 42)"  # type: ignore[call-overload]
        + (f", generated in {generated:.1f} s." if isinstance(generated, float) else "."),
        "",
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, {info['ram']} RAM), "
        f"{info['os']}, Python {info['python']}, git {info['git']}, {info['headwater']}. "
        f"Load average when the run started: {info['load']} (the machine may be shared). "
        f"Median of {facts['repeats']} runs, each a fresh process; peak RSS is the largest "
        "process of the command (git included).",
        "",
        markdown_table(rows),
        "",
        "All runs (seconds): "
        + "; ".join(f"{r.key} " + ", ".join(f"{s:.2f}" for s in r.samples) for r in rows)
        + ".",
    ]
    if facts.get("identity"):
        lines += ["", f"Results with and without the result cache (benchmarks/cache_identity.py): "
                  f"{facts['identity']}."]
    if facts.get("incremental"):
        lines += ["", f"The incremental path against full loads (benchmarks/cache_identity.py): "
                  f"{facts['incremental']}."]
    lines.append(f"<!-- /size:{size} -->")
    return "\n".join(lines)


INTRO = """# Benchmark results

Written by `make bench` (`benchmarks/run.py`); each size's section is replaced when that size is
run again. Every figure is an end-to-end CLI run (`.venv/bin/headwater …` in a fresh process)
beside the floor measured in the same run:

- **cold floor**: `git ls-tree -r` + `git cat-file --batch` of every flow and config blob +
  `yaml.load(..., Loader=yaml.CSafeLoader)` of each, one process, one core;
- **incremental floor**: `git diff-tree` between the two commits + reading the changed blobs.

The ratio is the median time over the floor's median time. The floor runs right before each
cold `validate` and each cold `plan`, and each is compared with the floor runs next to its own.
The disk's pending writes are flushed (`sync`) before each of those floor runs.
"""


def write_results(sections: dict[str, str]) -> None:
    """Replace (or add) each size's section, sizes in order; text outside them is kept."""
    text = RESULTS.read_text("utf-8") if RESULTS.exists() else INTRO
    slot = "\0size-sections\0"
    bodies: dict[str, str] = {}
    for size in generate.SIZES:
        start, end = f"<!-- size:{size} -->", f"<!-- /size:{size} -->"
        if start in text and end in text:
            i, j = text.index(start), text.index(end) + len(end)
            bodies[size] = text[i:j]
            text = text[:i] + slot + text[j:]
    bodies.update(sections)
    head, _, rest = text.partition(slot)
    rest = rest.replace(slot, "").strip("\n")
    joined = "\n\n".join(bodies[s] for s in generate.SIZES if s in bodies)
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + joined + "\n" + (f"\n{rest}\n" if rest else ""), "utf-8")


def compile_bytecode() -> None:
    """Write the package's bytecode before anything is measured, as `pip install` does. An
    editable install leaves it to the first import, which writes none under
    PYTHONDONTWRITEBYTECODE: every measured command would then compile the package again
    (about 0.1 s a run here), which no installed copy does."""
    import compileall

    compileall.compile_dir(ROOT / "src" / "headwater", quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S", help="Sizes, comma-separated: " + ", ".join(generate.SIZES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="Per command, in seconds.")
    parser.add_argument("--no-results", action="store_true", help="Do not update benchmarks/RESULTS.md.")
    parser.add_argument("--no-identity", action="store_true",
                        help="Skip the checks that results with and without the cache, and of the "
                        "incremental path and of full loads, are identical.")
    args = parser.parse_args(argv)
    sizes = [s.strip().upper() for s in args.size.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in generate.SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; choose from {', '.join(generate.SIZES)}")
    if not HEADWATER.exists():
        parser.error(f"{HEADWATER} not found: run with the project's virtualenv python (make bench)")

    compile_bytecode()
    info = machine()
    sections: dict[str, str] = {}
    status = 0
    for size in sizes:
        info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        try:
            rows, facts = bench_size(size, args.seed, args.repeats, args.timeout,
                                     identity=not args.no_identity)
        except BenchError as exc:
            print(f"[{size}] FAILED: {exc}", file=sys.stderr)
            status = 1
            continue
        print()
        print(f"{size}: {facts['flows']:,} flows, {facts['namespaces']:,} namespaces, {facts['files']:,} files")
        print(text_table(rows))
        if facts.get("identity"):
            print(f"results with and without the cache: {facts['identity']}")
        if facts.get("incremental"):
            print(f"results of the incremental path and of full loads: {facts['incremental']}")
        if not facts.get("identity_ok", True):
            print(f"[{size}] FAILED: results with and without the cache, or of the incremental path "
                  "and of full loads, differ", file=sys.stderr)
            status = 1
        print()
        sections[size] = section(size, rows, facts, info)
    if sections and not args.no_results:
        write_results(sections)
        print(f"results written to {RESULTS.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
