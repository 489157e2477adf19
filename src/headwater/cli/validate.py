"""`validate`, `explain` and `schema export`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from headwater import heap, schemas, snapshot
from headwater.cache import ResultCache
from headwater.cache import default_path as default_cache_path
from headwater.cli import output
from headwater.errors import Diagnostic, HeadwaterError
from headwater.flows import validate_flow
from headwater.gitrepo import GitRepo
from headwater.kestra_types import TypeRegistry, types_from_text

repo_option = click.option(
    "-C", "repo_path", default=".", show_default=True, type=click.Path(file_okay=False),
    help="The Git repository.",
)
cache_option = click.option(
    "--no-cache", is_flag=True, envvar="HEADWATER_NO_CACHE",
    help="Do not read or write the result cache ($HEADWATER_CACHE_DIR or ~/.cache/headwater).",
)
rev_option = click.option("--rev", default="HEAD", show_default=True, help="Commit, branch or tag to read.")


def open_repo(path: str) -> GitRepo:
    return GitRepo(path)


def open_cache(disabled: bool) -> ResultCache:
    return ResultCache(None if disabled else default_cache_path())


def instance_names(
    instances: Mapping[str, snapshot.InstanceSpec], instance: str | None, all_instances: bool
) -> list[str]:
    if instance is not None:
        if instance not in instances:
            known = ", ".join(sorted(instances)) or "none"
            raise HeadwaterError(
                f"unknown instance {instance!r}", hint=f"instances in headwater.yaml: {known}"
            )
        return [instance]
    return sorted(instances)


def _emit(diags: list[Diagnostic], fmt: str, no_color: bool, **extra: Any) -> None:
    if fmt == "json":
        click.echo(output.diagnostics_json(diags, **extra))
    elif fmt == "github":
        text = output.diagnostics_github(diags)
        if text:
            click.echo(text)
        click.echo(output.diagnostics_text(diags).splitlines()[-1])
    else:
        click.echo(output.diagnostics_text(diags, output.use_color(no_color)))


def _flow_files(paths: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files


@click.command()
@repo_option
@rev_option
@click.option("--instance", help="Validate for this instance only (default: every instance).")
@click.option("--all-instances", is_flag=True, help="Validate for every instance (the default).")
@click.option("--flows", "flows_mode", is_flag=True, help="Validate standalone flow files given as PATHS.")
@click.option("--extra-types", type=click.Path(exists=True, dir_okay=False),
              help="File naming additional task/trigger types to accept (one per line).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="Output format.")
@click.option("--no-color", is_flag=True, help="Plain text output (also NO_COLOR).")
@cache_option
@click.argument("paths", nargs=-1)
def validate(
    repo_path: str, rev: str, instance: str | None, all_instances: bool, flows_mode: bool,
    extra_types: str | None, fmt: str, no_color: bool, no_cache: bool, paths: tuple[str, ...],
) -> None:
    """Validate the repository at REV for each instance, or flow files with --flows.

    Every problem is reported at once, each with file, line, column, a stable code and a hint.
    Exit 0 when clean, 1 when there are errors.
    """
    extra = types_from_text(Path(extra_types).read_text("utf-8")) if extra_types else []
    if flows_mode or paths:
        if not flows_mode:
            raise click.UsageError("PATHS are only accepted with --flows")
        diags = _validate_flow_files(_flow_files(paths), extra)
        _emit(diags, fmt, no_color, files=len(paths))
    else:
        with open_repo(repo_path) as repo, open_cache(no_cache) as cache:
            snap = snapshot.load(repo, rev, extra_types=extra, cache=cache)
            heap.keep(snap)
            names = instance_names(snap.instances, instance, all_instances)
            diags = snap.report(names)
            _emit(diags, fmt, no_color, revision=snap.revision, instances=names)
    if any(d.severity == "error" for d in diags):
        raise SystemExit(1)


def _validate_flow_files(files: list[Path], extra: list[str]) -> list[Diagnostic]:
    registry = TypeRegistry.builtin(extra)
    diags: list[Diagnostic] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            diags.append(Diagnostic(str(path), None, None, "file.unreadable", f"cannot read: {exc.strerror}"))
            continue
        _doc, found = validate_flow(data, str(path), registry)
        diags.extend(found)
    return diags


@click.command()
@repo_option
@rev_option
@click.option("--instance", required=True, help="The instance whose view to explain.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
@cache_option
@click.argument("target", metavar="TENANT/NAMESPACE")
def explain(repo_path: str, rev: str, instance: str, fmt: str, no_cache: bool, target: str) -> None:
    """Show a namespace's effective config, where every value comes from, and its files."""
    tenant, sep, namespace = target.partition("/")
    if not sep or not tenant or not namespace:
        raise click.UsageError("give the namespace as TENANT/NAMESPACE, e.g. acme/company.team")
    with open_repo(repo_path) as repo, open_cache(no_cache) as cache:
        pieces = snapshot.split(repo, rev)  # only the tenant's folder is loaded (and the root files)
        instance_names(pieces.instances, instance, False)
        if tenant not in pieces.folders:
            raise HeadwaterError(
                f"no tenant {tenant!r} at {pieces.revision[:12]}", hint=_some("tenants", sorted(pieces.folders))
            )
        if not pieces.instances[instance].carries(tenant):
            raise HeadwaterError(
                f"instance {instance!r} does not carry tenant {tenant!r}",
                hint=f"its tenants in headwater.yaml: {', '.join(pieces.instances[instance].tenants)}",
            )
        snap = snapshot.piece(repo, pieces, instance, tenant, cache=cache)
        view = snap.view(instance).namespaces.get((tenant, namespace))
        if view is None:
            known = sorted(n for (_t, n) in snap.view(instance).namespaces)
            raise HeadwaterError(
                f"no namespace {target!r} on instance {instance!r} at {snap.revision[:12]}",
                hint=_some(f"namespaces of {tenant}", known),
            )
        rows = explain_rows(view)
        files = [
            {"path": p, "from": origin, "source": entry.path}
            for p, (origin, entry) in sorted(view.files.items())
        ]
        if fmt == "json":
            body = {
                "tenant": tenant, "namespace": namespace, "instance": instance,
                "revision": snap.revision, "config": view.effective.config,
                "values": rows, "files": files, "flows": sorted(view.flows),
            }
            click.echo(json.dumps(body, indent=2, sort_keys=True, default=str))
            return
        click.echo(f"{tenant}/{namespace} on {instance} at {snap.revision[:12]}")
        click.echo("")
        width = min(max((len(r["path"]) + len(json.dumps(r["value"])) for r in rows), default=0) + 3, 64)
        for row in rows:
            left = f"{row['path']} = {json.dumps(row['value'])}"
            origin = f"{row['source']}:{row['line']}" if row["line"] else row["source"]
            click.echo(f"  {left.ljust(width)}  {origin}  ({row['layer']})")
        click.echo("")
        click.echo(f"files ({len(files)}):")
        for f in files:
            click.echo(f"  {f['path']}  from {f['from']}  ({f['source']})")
        click.echo("")
        click.echo(f"flows ({len(view.flows)}): {', '.join(sorted(view.flows)) or '-'}")


def _some(what: str, names: list[str]) -> str:
    return f"{what}: " + (", ".join(names[:10]) + (" …" if len(names) > 10 else "") or "none")


def explain_rows(view: snapshot.NamespaceView) -> list[dict[str, Any]]:
    """One row per effective leaf: dotted path, value, source file, line, layer."""
    provenance = view.effective.provenance
    prefixes = {loc[:i] for loc in provenance for i in range(len(loc))}
    rows = []
    for loc, origin in sorted(provenance.items(), key=lambda kv: [str(p) for p in kv[0]]):
        if loc in prefixes or any(isinstance(part, int) for part in loc):
            continue  # an inner node, or an item of a list shown whole
        rows.append({
            "path": ".".join(str(p) for p in loc),
            "value": _lookup(view.effective.config, loc),
            "source": origin.source,
            "line": origin.line,
            "layer": origin.layer,
        })
    return rows


def _lookup(config: Any, loc: tuple[Any, ...]) -> Any:
    value = config
    for part in loc:
        if isinstance(value, list) and isinstance(part, str):
            # pluginDefaults are keyed by type in provenance
            value = next((v for v in value if isinstance(v, dict) and v.get("type") == part), None)
        elif isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    return value


@click.group()
def schema() -> None:
    """JSON schemas of the file formats."""


@schema.command("export")
@click.argument("directory", default="schemas", type=click.Path(file_okay=False))
def schema_export(directory: str) -> None:
    """Write the JSON schemas into DIRECTORY (default ./schemas)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for name in schemas.schema_names():
        (target / name).write_text(json.dumps(schemas.load_schema(name), indent=2) + "\n", "utf-8")
        click.echo(f"wrote {target / name}")


COMMANDS = [validate, explain, schema]
