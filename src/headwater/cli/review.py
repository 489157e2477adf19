"""`check`, `codeowners` and `promote`, and the Git side of `rollback --git`.

``headwater check --base B --head H -o markdown --with-plans`` prints the whole pull-request
comment: the review (validation, changed namespaces and owners, locks, forced defaults,
deletions) followed by the plan of every instance that follows B's branch.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import click

from headwater import layout, render, review, settings, snapshot
from headwater import promote as promotion
from headwater.cli import output
from headwater.cli.review_render import check_github, check_markdown, check_text, promotion_markdown
from headwater.cli.sync import config_option, engine_for, state_option, warn_missing_secrets
from headwater.cli.validate import open_repo, repo_option
from headwater.engine import Engine
from headwater.errors import HeadwaterError
from headwater.gitrepo import GitRepo
from headwater.plan import Plan

CODEOWNERS_PLACES = (".github/CODEOWNERS", ".gitlab/CODEOWNERS", "docs/CODEOWNERS", "CODEOWNERS")


# -- check ---------------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option("--base", required=True, help="The pull request's base, e.g. origin/main.")
@click.option("--head", default="HEAD", show_default=True, help="The pull request's head.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["text", "json", "markdown", "github"]),
    default="text",
    show_default=True,
    help="github: workflow annotations; markdown: a pull-request comment.",
)
@click.option(
    "--with-plans",
    is_flag=True,
    help="Add the plan of every instance that follows BASE's branch (the PR comment).",
)
@click.option(
    "--branch", help="The branch BASE stands for (default: from BASE, origin/main → main)."
)
@click.option("--no-color", is_flag=True, help="Plain text output (also NO_COLOR).")
@config_option
@state_option
def check(
    repo_path: str,
    base: str,
    head: str,
    fmt: str,
    with_plans: bool,
    branch: str | None,
    no_color: bool,
    config_path: str | None,
    state_dir: str | None,
) -> None:
    """Validate HEAD for every instance and show what review needs.

    The changes are those of the pull request (from the merge base of BASE and HEAD, like the
    forge's diff): changed namespaces with their owners, locked paths touched, forced plugin
    defaults affected, deletions. Exit 1 when HEAD has validation errors.
    """
    with open_repo(repo_path) as repo:
        head_sha = repo.resolve(head)
        base_sha = repo.resolve(base)
        since = repo.merge_base(base_sha, head_sha) or base_sha
        result = review_of(repo, since, head_sha)
        plans: list[Plan] | None = None
        note = ""
        if with_plans:
            plans, note = _plans(
                repo, result, base, base_sha, head_sha, branch, config_path, state_dir
            )
    if fmt == "json":
        body = result.to_json()
        if plans is not None:
            body["plans"] = [p.to_json() for p in plans]
        click.echo(json.dumps(body, indent=2, sort_keys=True, default=str))
    elif fmt == "markdown":
        click.echo(check_markdown(result, plans, note))
    elif fmt == "github":
        click.echo(check_github(result))
    else:
        click.echo(check_text(result, output.use_color(no_color)))
        for plan in plans or []:
            click.echo("")
            click.echo(render.plan_text(plan, output.use_color(no_color)))
        if note:
            click.echo(note)
    if result.errors:
        raise SystemExit(1)


def review_of(repo: GitRepo, since: str, head: str) -> review.Review:
    """``review.review`` of the change from ``since`` to ``head`` (commit ids). A head listing
    ``BY_TENANT_FROM`` entries or more is checked one tenant folder at a time, and only the
    folders the change touches are loaded whole (in both commits); a change to a root file
    takes the whole commits' layouts as well (paths only): the same review, without holding
    either commit whole."""
    changes = repo.diff_tree(since, head)
    listed = snapshot.split(repo, head)
    if len(listed.entries) < snapshot.BY_TENANT_FROM:
        return review.review(snapshot.load(repo, since), snapshot.load(repo, head, listed=listed), changes)
    touched = {snapshot.tenant_folder(path) for _status, path in changes}
    base = snapshot.split(repo, since)
    rooted = any(path in layout.ROOT_FILES for _status, path in changes)
    return review.review(
        snapshot.folders(repo, base, touched),
        snapshot.folders(repo, listed, touched),
        changes,
        diagnostics=snapshot.report_by_tenant(repo, listed, sorted(listed.instances)),
        layouts=(base.layout(), listed.layout()) if rooted else None,
    )


def base_branch(base: str, known: set[str]) -> str | None:
    """The branch a base ref names: ``origin/main``, ``refs/remotes/origin/main`` → ``main``."""
    candidates = [base, base.removeprefix("refs/heads/")]
    if base.startswith("refs/remotes/"):
        candidates.append(base.removeprefix("refs/remotes/").partition("/")[2])
    candidates.append(base.partition("/")[2])
    return next((c for c in candidates if c in known), None)


def _plans(
    repo: GitRepo,
    result: review.Review,
    base: str,
    base_sha: str,
    head_sha: str,
    branch: str | None,
    config_path: str | None,
    state_dir: str | None,
) -> tuple[list[Plan], str]:
    instances = snapshot.instances(repo, head_sha)  # headwater.yaml alone
    branches = {spec.branch for spec in instances.values()}
    branch = branch or base_branch(base, branches)
    if branch is None:
        raise HeadwaterError(
            f"cannot tell which branch {base!r} is",
            hint="pass --branch NAME (the pull request's base branch)",
        )
    names = sorted(n for n, spec in instances.items() if spec.branch == branch)
    if result.errors:
        return [], "_Plans not computed: the head does not validate._"
    target, note = head_sha, ""
    if not repo.is_ancestor(base_sha, head_sha):
        tree, conflicts = repo.merge_trees(base_sha, head_sha)
        if conflicts:
            note = f"_The head conflicts with {branch}; the plans compare the head itself._"
        else:  # what merging would produce, as an unreferenced commit
            target = repo.commit_tree(
                tree, [base_sha, head_sha], "headwater: merge preview\n", scratch=True
            )
    with Engine(repo, settings.load(config_path, state_dir)) as engine:
        plans = []
        for name in names:
            planned = engine.compare(name, base_sha, target)
            warn_missing_secrets(planned)
            plans.append(planned.plan)
    return plans, note


# -- codeowners ----------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option("--rev", default="HEAD", show_default=True, help="Commit whose owners to use.")
@click.option("--staged", is_flag=True, help="Use the index instead of --rev (for pre-commit).")
@click.option(
    "--file",
    "file_name",
    metavar="PATH",
    help="The CODEOWNERS file, relative to the repository (default: the existing one of "
    ".github/, .gitlab/, docs/ or the root, else CODEOWNERS); '-' prints it.",
)
@click.option(
    "--check", "check_only", is_flag=True, help="Write nothing; exit 1 with a diff if out of date."
)
def codeowners(
    repo_path: str, rev: str, staged: bool, file_name: str | None, check_only: bool
) -> None:
    """Write CODEOWNERS (GitHub/GitLab) from the namespaces' owners, inherited downward.

    Only the block between the `# BEGIN headwater` and `# END headwater` lines is managed;
    other lines are kept.
    """
    with open_repo(repo_path) as repo:
        commit = _index_commit(repo) if staged else repo.resolve(rev)
        snap = snapshot.configs_only(repo, commit)  # owners are in configs: no flow is read
    rules = review.codeowners(snap)
    block = review.codeowners_block(rules)
    if file_name == "-":
        click.echo(block, nl=False)
        return
    root = Path(repo_path)
    name = file_name or next((p for p in CODEOWNERS_PLACES if (root / p).is_file()), "CODEOWNERS")
    path = root / name
    try:
        existing = path.read_text("utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadwaterError(f"cannot read {name}: {exc}") from None
    wanted = review.merge_codeowners(existing, block)
    if check_only:
        if existing == wanted:
            click.echo(f"{name} is up to date ({len(rules)} rules).")
            return
        diff = difflib.unified_diff(
            (existing or "").splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            f"a/{name}",
            f"b/{name}",
        )
        click.echo("".join(diff), nl=False)
        click.echo(f"{name} is out of date: run `headwater codeowners`.", err=True)
        raise SystemExit(1)
    if existing == wanted:
        click.echo(f"{name} is up to date ({len(rules)} rules).")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted, "utf-8")
    except OSError as exc:
        raise HeadwaterError(f"cannot write {name}: {exc.strerror}") from None
    click.echo(f"Wrote {name} ({len(rules)} rules).")


def _index_commit(repo: GitRepo) -> str:
    parent = repo.try_resolve("HEAD")
    tree = repo.index_tree()
    return repo.commit_tree(tree, [parent] if parent else [], "headwater: index\n", scratch=True)


# -- promote -------------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option(
    "--from",
    "source",
    metavar="INSTANCE",
    help="Source instance (default: promotion.from of --to).",
)
@click.option(
    "--to", "target", required=True, metavar="INSTANCE", help="The instance to promote to."
)
@click.option("--rev", help="Commit to promote (default: what --from last applied successfully).")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="TENANT/NS",
    help="Promote only this namespace's own folder content (repeatable).",
)
@click.option("--recursive", is_flag=True, help="With --namespace: its child namespaces too.")
@click.option("--branch", help="Branch to write (default: promote/FROM-to-TO/SHA7).")
@click.option(
    "--direct",
    is_flag=True,
    help="Write onto the target branch itself (fast-forward when possible).",
)
@click.option("--push", "remote", metavar="REMOTE", help="Push the written branch to REMOTE.")
@click.option("--dry-run", is_flag=True, help="Show the promotion and its plan; write no ref.")
@click.option(
    "--force", is_flag=True, help="Promote despite the soak or a commit FROM never applied."
)
@click.option("--reason", help="Why --force (recorded in the commit message).")
@click.option(
    "--expect-head", metavar="SHA", help="Refuse unless the target branch is still at SHA."
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="markdown: the pull-request body (the promotion, then the plan).",
)
@click.option("--no-color", is_flag=True, help="Plain text output (also NO_COLOR).")
@config_option
@state_option
def promote(
    repo_path: str,
    source: str | None,
    target: str,
    rev: str | None,
    namespaces: tuple[str, ...],
    recursive: bool,
    branch: str | None,
    direct: bool,
    remote: str | None,
    dry_run: bool,
    force: bool,
    reason: str | None,
    expect_head: str | None,
    fmt: str,
    no_color: bool,
    config_path: str | None,
    state_dir: str | None,
) -> None:
    """Promote what FROM proved to TO, by branch, with the plan TO would apply.

    The commit FROM last applied successfully (or --rev, which FROM must have applied) is
    refused inside TO's promotion.soak unless --force --reason. It must validate for TO.
    Without --namespace it is merged into TO's branch on a promote/… branch (or, --direct,
    onto the branch); with --namespace, one commit on top of TO's branch takes only those
    namespaces' namespace.yaml, flows/ and files/. A branch that moved meanwhile is never
    overwritten.
    """
    if branch and direct:
        raise click.UsageError("--branch and --direct exclude each other")
    if force != bool(reason):
        raise click.UsageError("--force and --reason TEXT go together")
    if recursive and not namespaces:
        raise click.UsageError("--recursive applies to --namespace")
    request = promotion.Request(
        target=target,
        source=source,
        rev=rev,
        namespaces=tuple(dict.fromkeys(namespaces)),
        recursive=recursive,
        branch=branch,
        direct=direct,
        force_reason=reason if force else None,
        expect_head=expect_head,
        remote=remote,
    )
    with engine_for(repo_path, config_path, state_dir) as engine:
        try:
            prepared = promotion.prepare(engine, request)
        except promotion.PromotionInvalid as exc:
            click.echo(output.diagnostics_text(exc.diagnostics), err=True)
            raise
        written = False
        if not dry_run and not prepared.noop:
            promotion.write(
                engine.repo,
                prepared.move,
                remote,
                f"headwater promote {prepared.source_instance}@{prepared.source[:12]} to {target}",
            )
            written = True
    state = {
        "dry_run": dry_run,
        "written": written,
        "pushed": remote if written and remote else None,
    }
    if fmt == "json":
        body = {"promotion": {**prepared.to_json(), **state}, "plan": prepared.plan.to_json()}
        click.echo(json.dumps(body, indent=2, sort_keys=True))
    elif fmt == "markdown":
        click.echo(promotion_markdown(prepared))
    else:
        click.echo(_promotion_text(prepared, written, remote, dry_run))
        click.echo("")
        click.echo(render.plan_text(prepared.plan, output.use_color(no_color)))


def _promotion_text(
    p: promotion.Promotion, written: bool, remote: str | None, dry_run: bool
) -> str:
    what = (
        ", ".join(p.namespaces) + (" and children" if p.recursive else "")
        if p.namespaces
        else "whole commit"
    )
    lines = [f"Promotion {p.source_instance}@{p.source[:12]} → {p.target_instance} ({what})"]
    if p.applied_at is not None and p.proven_seconds is not None:
        lines.append(
            f"  source:  applied on {p.source_instance} at {p.applied_at:%Y-%m-%d %H:%M:%S}Z, ran "
            f"{promotion.human(p.proven_seconds)} (soak {promotion.human(p.soak_seconds)})"
        )
    if p.forced:
        lines.append(f"  forced:  {p.forced}")
    lines.append(f"  target:  {p.target_branch} at {p.move.base_head[:12]}")
    if p.noop:
        lines.append(f"  nothing to promote: {p.target_branch} already holds it.")
        return "\n".join(lines)
    how = "fast-forward to" if p.fast_forward else "commit"
    lines.append(f"  {how}: {p.commit[:12]} on {p.move.ref.removeprefix('refs/heads/')}")
    if written:
        lines.append("  written" + (f" and pushed to {remote}" if remote else "") + ".")
    elif dry_run:
        lines.append(
            f"  dry run: no ref written (re-run with --expect-head {p.move.base_head[:12]})."
        )
    return "\n".join(lines)


# -- rollback --git ------------------------------------------------------------------------------


def rollback_git(engine: Engine, instance: str, revision: str, remote: str | None) -> None:
    """`rollback --git`: commit the earlier revision's tree on the instance's branch."""
    try:
        prepared = promotion.prepare_rollback(engine, instance, revision, remote)
    except promotion.PromotionInvalid as exc:
        click.echo(output.diagnostics_text(exc.diagnostics), err=True)
        raise
    if prepared.noop:
        click.echo(
            f"{prepared.branch} already holds the tree of {revision[:12]} for {instance}; nothing to do."
        )
        return
    promotion.write(
        engine.repo, prepared.move, remote, f"headwater rollback {instance} to {revision[:12]}"
    )
    click.echo(render.plan_text(prepared.plan, output.use_color(False)))
    click.echo(
        f"Committed {prepared.move.new[:12]} on {prepared.branch}: rolls {instance} back to "
        f"{revision[:12]}" + (f", pushed to {remote}" if remote else "") + "."
    )
    click.echo(f"The next sync applies it (`headwater apply --instance {instance}`).")


COMMANDS = [check, codeowners, promote]
