"""`plan`, `apply`, `status`, `history` and `rollback`."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from headwater import heap, render, settings
from headwater.cli import output
from headwater.cli.validate import open_repo, repo_option
from headwater.engine import Engine, PlanResult, read_plan_file, status_of
from headwater.errors import HeadwaterError, PlanRefused
from headwater.gitrepo import GitRepo
from headwater.plan import Plan
from headwater.promote import instance_spec
from headwater.snapshot import instances as instances_at
from headwater.state import StateStore

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    envvar="HEADWATER_CONFIG", help="daemon.yaml with targets and secret providers.",
)
state_option = click.option(
    "--state-dir", envvar="HEADWATER_STATE_DIR",
    help=f"State directory (default {settings.DEFAULT_STATE_DIR}, or state_dir of --config).",
)
instance_option = click.option("--instance", required=True, help="The instance (from headwater.yaml).")


@contextmanager
def engine_for(repo_path: str, config_path: str | None, state_dir: str | None) -> Iterator[Engine]:
    conf = settings.load(config_path, state_dir)
    with open_repo(repo_path) as repo, Engine(repo, conf) as engine:
        yield engine


def default_rev(repo: GitRepo, instance: str) -> str:
    """The branch an instance follows, read from headwater.yaml at HEAD."""
    _, spec = instance_spec(repo, instance)
    for candidate in (spec.branch, f"origin/{spec.branch}"):
        sha = repo.try_resolve(candidate)
        if sha is not None:
            return sha
    raise HeadwaterError(
        f"instance {instance} follows branch {spec.branch!r}, which does not exist here",
        hint="create the branch, fetch it, or pass --rev",
    )


def warn_missing_secrets(result: PlanResult) -> None:
    """One warning per secret name declared without a value, not one per namespace."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and (ctx.find_root().obj or {}).get("quiet"):
        return  # -q: only errors
    where: dict[str, list[str]] = {}
    for key in result.desired.missing_secrets:
        where.setdefault(key.name, []).append(f"{key.tenant}/{key.namespace}")
    for name, places in sorted(where.items()):
        shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
        click.echo(
            f"warning: secret {name} of {shown} has no value in the secret provider; it is not written",
            err=True,
        )


@click.command()
@repo_option
@instance_option
@click.option("--rev", help="Commit to plan (default: the branch the instance follows).")
@click.option("--base", help="Pull-request view: compare this ref…")
@click.option("--head", help="…with this ref, without touching the instance.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True, help="Output format.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 without changes, 2 with changes, 1 on error.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Also save the plan (JSON) for `apply PLANFILE`.")
@click.option("--no-color", is_flag=True, help="Plain text output (also NO_COLOR).")
@config_option
@state_option
def plan(
    repo_path: str, instance: str, rev: str | None, base: str | None, head: str | None, fmt: str,
    detailed_exitcode: bool, out_file: str | None, no_color: bool, config_path: str | None,
    state_dir: str | None,
) -> None:
    """Show what applying a commit would change on an instance, drift included.

    With --base and --head, show what merging HEAD into BASE would change for the instance
    (the pull-request view); no instance state is read.
    """
    if base is None or head is None:
        if base is not None or head is not None:
            raise click.UsageError("--base and --head go together")
        _plan_in_parts(repo_path, instance, rev, fmt, detailed_exitcode, out_file, no_color, config_path, state_dir)
        return
    with engine_for(repo_path, config_path, state_dir) as engine:
        result = engine.compare(instance, base, head)  # (tenant by tenant, for a large head)
        heap.keep(result)
    warn_missing_secrets(result)
    if out_file:
        _save_plan(lambda write: render.write_plan_json(result.plan, write), Path(out_file))
    if fmt == "json":  # written a change at a time (see render.write_plan_json)
        with _Batched(lambda text: click.echo(text, nl=False)) as out:
            render.write_plan_json(result.plan, out.write)
        click.echo()
    elif fmt == "markdown":
        click.echo(render.plan_markdown(result.plan))
    else:
        click.echo(render.plan_text(result.plan, output.use_color(no_color)))
    if detailed_exitcode and not result.plan.is_empty:
        sys.exit(2)


def _plan_in_parts(
    repo_path: str, instance: str, rev: str | None, fmt: str, detailed_exitcode: bool, out_file: str | None,
    no_color: bool, config_path: str | None, state_dir: str | None,
) -> None:
    """``plan``'s output (and the plan saved), made as the plan is: a large commit's plan is
    made one tenant at a time, and shown or saved once every tenant is checked, never held
    whole (``_Spool``, ``render.PlanJson``, ``render.PlanMarkdown``)."""
    comment = render.PlanMarkdown()
    with (
        engine_for(repo_path, config_path, state_dir) as engine,
        _Spool(output.use_color(no_color)) as text,
        render.PlanJson() as document,
    ):
        def each(part: Plan) -> None:
            if fmt == "text":
                text.add(part)
            elif fmt == "markdown":
                comment.add(part)
            if fmt == "json" or out_file:
                document.add(part)

        result = engine.plan(instance, rev or default_rev(engine.repo, instance), each=each)
        heap.keep(result)
        warn_missing_secrets(result)
        if out_file:
            _save_plan(lambda write: document.finish(result.plan, write), Path(out_file))
        if fmt == "text":
            text.show(result.plan)
        elif fmt == "markdown":
            click.echo(comment.finish(result.plan))
        else:
            with _Batched(lambda piece: click.echo(piece, nl=False)) as out:
                document.finish(result.plan, out.write)
            click.echo()
    if detailed_exitcode and not result.plan.is_empty:
        sys.exit(2)


@click.command()
@repo_option
@click.option("--instance", help="The instance (from headwater.yaml).")
@click.option("--rev", help="Commit to apply (default: the branch the instance follows).")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--allow-mass-delete", is_flag=True, help="Allow a plan that deletes above prune.maxDeletePercent.")
@click.option("--no-color", is_flag=True, help="Plain text output (also NO_COLOR).")
@config_option
@state_option
@click.argument("planfile", required=False, type=click.Path(dir_okay=False))
def apply(
    repo_path: str, instance: str | None, rev: str | None, yes: bool, allow_mass_delete: bool,
    no_color: bool, config_path: str | None, state_dir: str | None, planfile: str | None,
) -> None:
    """Apply a commit to an instance, all or nothing, or apply a saved PLANFILE exactly.

    A saved plan is refused as stale when the instance or the commit changed since it was made.
    """
    saved = read_plan_file(planfile) if planfile else None
    if saved is not None:
        if instance is not None and instance != saved.instance:
            raise click.UsageError(f"the plan is for instance {saved.instance}, not {instance}")
        instance, rev, yes = saved.instance, saved.revision, True
    if instance is None:
        raise click.UsageError("give --instance NAME or a PLANFILE")
    color = output.use_color(no_color)
    quiet = bool((click.get_current_context().find_root().obj or {}).get("quiet"))
    # A large commit is applied tenant by tenant, holding one tenant at a time, as the daemon
    # does; the plan's text, when someone reads it, is written as the tenants are checked and
    # shown once all are. A saved plan is checked against the sets of the changes made now.
    spool = _Spool(color) if not (quiet and yes) else None

    def confirm(p: Plan) -> bool:
        if not quiet or not (p.is_empty or yes):
            if spool is not None:
                spool.show(p)
            else:
                click.echo(render.plan_text(p, color))
        if p.is_empty or yes:
            return True
        if not sys.stdin.isatty():
            raise HeadwaterError("refusing to apply without confirmation", hint="pass --yes to apply non-interactively")
        return click.confirm("Apply these changes?", default=False)

    with engine_for(repo_path, config_path, state_dir) as engine, spool or contextlib.nullcontext():
        target_rev = rev or default_rev(engine.repo, instance)
        if saved is not None:
            _refuse_if_branch_moved(engine.repo, instance, saved.revision)
        applied = engine.apply(
            instance, target_rev, allow_mass_delete=allow_mass_delete, saved=saved, confirm=confirm,
            by_tenant=None, each=spool.add if spool is not None else None,
        )
    heap.keep(applied)
    warn_missing_secrets(applied)
    result = applied.plan
    counts = result.summary()
    click.echo(
        f"Applied {result.revision[:12]} to {instance}: {counts['create']} created, "
        f"{counts['update']} updated, {counts['delete']} deleted"
        + (f", {counts['drift']} drifted restored" if counts.get("drift") else "")
        + "."
    )


def _save_plan(write_json: Callable[[Callable[[str], object]], None], path: Path) -> None:
    """A plan's JSON (what ``write_json`` writes) into ``path``, whole or not at all (written
    aside, then renamed)."""
    def refused(exc: OSError) -> HeadwaterError:
        return HeadwaterError(f"cannot write plan file {path}: {exc.strerror}")

    try:
        aside = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, renamed or removed)
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
        )
    except OSError as exc:
        raise refused(exc) from None
    try:
        with aside:
            write_json(aside.write)
            aside.write("\n")
        os.chmod(aside.name, _mode_of(path))
        os.replace(aside.name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(aside.name)  # what a write that failed part way left
        if isinstance(exc, OSError):
            raise refused(exc) from None
        raise


def _mode_of(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the file there, or what the
    umask leaves of rw-rw-rw- (a temporary file is created rw-------)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class _Batched:
    """Text gathered into writes of about a megabyte (a plan is written in many small
    pieces; each ``click.echo`` flushes)."""

    def __init__(self, write: Callable[[str], object], size: int = 1 << 20) -> None:
        self._write, self._size = write, size
        self._pieces: list[str] = []
        self._length = 0

    def write(self, text: str) -> None:
        self._pieces.append(text)
        self._length += len(text)
        if self._length >= self._size:
            self.flush()

    def flush(self) -> None:
        if self._pieces:
            self._write("".join(self._pieces))
            self._pieces, self._length = [], 0

    def __enter__(self) -> _Batched:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()


class _Spool:
    """A plan's text, written tenant by tenant (``add``, ``Engine.plan``'s ``each``) to a
    temporary file, then shown whole (``show``, given the whole plan's counts): the same
    text as ``render.plan_text`` of the whole plan, which is never held. A context: the
    file exists inside it."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.text: render.PlanText | None = None

    def __enter__(self) -> _Spool:
        self.file = tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogatepass")
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def add(self, part: Plan) -> None:
        if self.text is None:
            self.text = render.PlanText(part, self.color, self.file.write)
        self.text.add(part)

    def show(self, plan: Plan) -> None:
        if self.text is None:  # no tenant: the header is the whole plan's
            self.text = render.PlanText(plan, self.color, self.file.write)
        self.text.finish(plan.summary())
        self.file.seek(0)
        while lines := self.file.readlines(1 << 16):  # whole lines: a colour code is never cut
            click.echo("".join(lines), nl=False)
        click.echo()


def _refuse_if_branch_moved(repo: GitRepo, instance: str, revision: str) -> None:
    """A saved plan of a commit its instance's branch has since moved past is stale.

    (A plan of a commit off the branch, made with --rev, is applied as planned.)
    """
    head = _branch_head(repo, instance)
    if head is not None and head != revision and repo.is_ancestor(revision, head):
        raise PlanRefused(
            f"the saved plan is stale: the branch of instance {instance} moved from "
            f"{revision[:12]} to {head[:12]} since the plan was made",
            hint="run `headwater plan --out FILE` again and review the new plan",
        )


@click.command()
@repo_option
@click.option("--instance", help="One instance (default: every instance known to the state store).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
@config_option
@state_option
def status(repo_path: str, instance: str | None, fmt: str, config_path: str | None, state_dir: str | None) -> None:
    """Applied vs attempted revision, errors and drift of each instance."""
    with engine_for(repo_path, config_path, state_dir) as engine:
        names = [instance] if instance else sorted(set(engine.store.instances()) | _repo_instances(engine.repo))
        bodies = []
        for name in names:
            engine.reconcile_if_idle(name)  # after a crash, report what the target holds
            body = status_of(engine.store, engine, name)
            branch_head = _branch_head(engine.repo, name)
            body["branch_revision"] = branch_head
            applied = body["applied_revision"]
            body["behind_git"] = bool(branch_head and applied and applied != branch_head)
            bodies.append(body)
    if fmt == "json":
        click.echo(json.dumps({"instances": bodies}, indent=2, sort_keys=True))
        return
    for body in bodies:
        click.echo(_status_text(body))


def _repo_instances(repo: GitRepo) -> set[str]:
    try:
        return set(instances_at(repo, "HEAD"))
    except HeadwaterError:
        return set()


def _branch_head(repo: GitRepo, instance: str) -> str | None:
    try:
        return default_rev(repo, instance)
    except HeadwaterError:
        return None


def _short(rev: str | None) -> str:
    return rev[:12] if rev else "-"


def _status_text(body: dict[str, object]) -> str:
    lines = [f"{body['instance']}:"]
    lines.append(f"  applied:   {_short(body['applied_revision'])}  {body['applied_at'] or ''}".rstrip())  # type: ignore[arg-type]
    lines.append(
        f"  attempted: {_short(body['attempted_revision'])}  {body['outcome'] or ''}".rstrip()  # type: ignore[arg-type]
    )
    lines.append(f"  target:    {_short(body.get('target_revision'))}")  # type: ignore[arg-type]
    if body.get("branch_revision"):
        note = "  (the instance differs from its branch)" if body.get("behind_git") else ""
        lines.append(f"  branch:    {_short(body['branch_revision'])}{note}")  # type: ignore[arg-type]
    drift = body.get("drift") or []
    lines.append(f"  drift:     {len(drift)} resource(s)")  # type: ignore[arg-type]
    for key in drift[:20]:  # type: ignore[index]
        lines.append(f"    ! {key}")
    errors = body.get("errors") or []
    if errors and body.get("outcome") == "failed":
        lines.append(f"  errors of the attempted revision ({len(errors)}):")  # type: ignore[arg-type]
        for err in errors[:20]:  # type: ignore[index]
            where = err.get("path") or ""
            if err.get("line"):
                where += f":{err['line']}"
            lines.append(f"    {where}: [{err.get('code')}] {err.get('message')}")
    return "\n".join(lines)


@click.command()
@click.option("--instance", required=True, help="The instance.")
@click.option("--limit", default=20, show_default=True, help="How many entries.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
@config_option
@state_option
def history(instance: str, limit: int, fmt: str, config_path: str | None, state_dir: str | None) -> None:
    """The applies and rollbacks of an instance, newest first."""
    conf = settings.load(config_path, state_dir)
    store = StateStore(conf.state_path / "state.db")
    try:
        entries = store.history(instance, limit)
    finally:
        store.close()
    if fmt == "json":
        rows = [
            {"id": e.id, "revision": e.revision, "at": e.at.isoformat(), "action": e.action,
             "summary": e.summary, "trigger": e.trigger}
            for e in entries
        ]
        click.echo(json.dumps({"instance": instance, "history": rows}, indent=2, sort_keys=True))
        return
    if not entries:
        click.echo(f"{instance}: no applies yet")
    for e in entries:
        s = e.summary
        counts = f"+{s.get('create', 0)} ~{s.get('update', 0)} -{s.get('delete', 0)}"
        click.echo(f"{e.id:>4}  {e.at:%Y-%m-%d %H:%M:%S}Z  {e.action:<8}  {e.revision[:12]}  {counts}  {e.trigger}")


@click.command()
@repo_option
@instance_option
@click.option("--to", "to_rev", required=True, help="An earlier applied revision.")
@click.option("--allow-mass-delete", is_flag=True, help="Allow a rollback that deletes many resources.")
@click.option("--git", "in_git", is_flag=True,
              help="Instead: commit the revision's tree on the instance's branch; the next sync applies it.")
@click.option("--push", "remote", metavar="REMOTE", help="With --git: push the branch to REMOTE.")
@config_option
@state_option
def rollback(
    repo_path: str, instance: str, to_rev: str, allow_mass_delete: bool, in_git: bool,
    remote: str | None, config_path: str | None, state_dir: str | None,
) -> None:
    """Re-apply an earlier applied revision at once (break-glass).

    The instance is then ahead of (or behind) its branch until the branch catches up. With
    --git, nothing is applied: a commit on the instance's branch restores the revision's tree
    for the instance's paths, so Git stays the source of truth.
    """
    with engine_for(repo_path, config_path, state_dir) as engine:
        sha = engine.repo.resolve(to_rev)
        applied = {e.revision for e in engine.store.history(instance, 10_000) if e.action in ("apply", "rollback")}
        if sha not in applied:
            raise HeadwaterError(
                f"{sha[:12]} was never applied to {instance}",
                hint="`headwater history --instance " + instance + "` lists the revisions you can roll back to",
            )
        if in_git:
            from headwater.cli.review import rollback_git

            return rollback_git(engine, instance, sha, remote)
        if remote:
            raise click.UsageError("--push goes with --git")
        # A large commit goes tenant by tenant, as an apply: its plan is shown before it is written.
        with _Spool(color=False) as spool:

            def shown(plan: Plan) -> bool:
                spool.show(plan)
                return True

            engine.apply(
                instance, sha, action="rollback", allow_mass_delete=allow_mass_delete, by_tenant=None,
                each=spool.add, confirm=shown,
            )
    click.echo(f"Rolled {instance} back to {sha[:12]}.")


COMMANDS = [plan, apply, status, history, rollback]
