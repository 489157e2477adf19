"""`init`: a new GitOps repository skeleton that validates as it is."""

from __future__ import annotations

from pathlib import Path

import click

from headwater.errors import HeadwaterError
from headwater.layout import NAMESPACE_RE, TENANT_RE

REPO_CONFIG = """\
version: 1
defaults:
  variables: {{}}
instances:
  dev:
    branch: dev
    tenants: ["*"]
  prod:
    branch: main
    tenants: ["*"]
    promotion: {{from: dev, soak: 30m}}
    prune: {{maxDeletePercent: 20}}
"""
NAMESPACE_CONFIG = """\
description: {namespace}
owners: []
variables: {{}}
"""
FLOW = """\
id: hello
namespace: {namespace}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "Hello from {{{{ flow.namespace }}}}"
"""


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--tenant", default="main", show_default=True, help="The first tenant.")
@click.option("--namespace", default="company", show_default=True, help="The first namespace.")
def init(directory: str, tenant: str, namespace: str) -> None:
    """Create a repository skeleton: headwater.yaml, one tenant, one namespace, one flow."""
    if not TENANT_RE.match(tenant):
        raise click.BadParameter("lowercase letters, digits, '-' and '_'", param_hint="--tenant")
    if not NAMESPACE_RE.match(namespace) or "" in namespace.split("."):
        raise click.BadParameter("a dot-separated lowercase namespace", param_hint="--namespace")
    root = Path(directory)
    if (root / "headwater.yaml").exists():
        raise HeadwaterError(f"{root / 'headwater.yaml'} already exists", hint="init only creates new repositories")
    folder = root / "tenants" / tenant / Path(*namespace.split("."))
    files = {
        root / "headwater.yaml": REPO_CONFIG.format(),
        root / ".headwaterignore": "# gitignore syntax, relative to the repository root\n**/README.md\n",
        folder / "namespace.yaml": NAMESPACE_CONFIG.format(namespace=namespace),
        folder / "flows" / "hello.yaml": FLOW.format(namespace=namespace),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        click.echo(f"created {path}")
    click.echo("next: git init && git add -A && git commit -m 'GitOps repository' && headwater validate")


COMMANDS = [init]
