"""Synthetic GitOps repositories for the benchmarks, written straight into Git objects.

A repository is generated from a size and a seed, deterministically: the same arguments give
the same tree and, because the commit dates are fixed, the same commit ids. Files never touch
a working copy: one ``git fast-import`` process receives every path inline, which writes 150k
files in seconds where ``git add`` of a checkout would take minutes.

The layout follows DESIGN §1: ``headwater.yaml`` with ``dev`` (branch ``dev``) and ``prod``
(branch ``main``); tenants with a ``tenant.yaml``; namespaces nested up to six levels, a few
reached through dotted folders; ``namespace.yaml`` files with variables, secrets, KV entries,
plugin defaults (some forced), allowed/denied plugins, locked paths and ``environments``
overlays; namespace files (scripts, SQL, JSON, templates, a few binaries), some overriding an
ancestor's; flows with nested Parallel / Sequential / If / ForEach / Switch tasks, inputs,
triggers, ``read()`` of visible files, ``secret()`` of declared secrets and Subflow calls to
flows that exist. Every generated repository validates cleanly for both instances.

    python benchmarks/generate.py --size S /tmp/repo.git     # prints the manifest
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

GENERATOR_VERSION = 1
COMMIT_TIME = 1_700_000_000  # fixed dates make the commit ids reproducible
MAX_DEPTH = 6


@dataclass(frozen=True)
class Size:
    name: str
    flows: int
    namespaces: int
    files: int
    tenants: int


SIZES: dict[str, Size] = {
    "XS": Size("XS", 50, 10, 100, 2),
    "S": Size("S", 1_000, 100, 2_000, 2),
    "M": Size("M", 10_000, 1_000, 20_000, 4),
    "L": Size("L", 50_000, 5_000, 100_000, 8),
}

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell",
           "cyberdyne", "soylent"]
WORDS = ["data", "platform", "ops", "finance", "sales", "marketing", "analytics", "ingest",
         "reports", "ml", "billing", "crm", "etl", "web", "mobile", "infra", "security", "hr",
         "legal", "support", "risk", "growth", "search", "payments", "logistics", "inventory",
         "pricing", "catalog", "audit", "quality"]
VERBS = ["ingest", "load", "sync", "export", "refresh", "score", "clean", "archive", "notify",
         "aggregate", "backfill", "publish", "check", "train", "merge"]
NOUNS = ["orders", "customers", "events", "invoices", "payments", "sessions", "clicks", "leads",
         "tickets", "metrics", "features", "inventory", "prices", "shipments", "users"]
ALLOWED = ["io.kestra.plugin.core.*", "io.kestra.plugin.scripts.*", "io.kestra.plugin.jdbc.*",
           "io.kestra.plugin.notifications.*"]
NARROWED = ["io.kestra.plugin.core.*", "io.kestra.plugin.scripts.python.*",
            "io.kestra.plugin.jdbc.*", "io.kestra.plugin.notifications.slack.*"]
TENANT_SECRETS = ["SLACK_WEBHOOK", "DB_PASSWORD", "API_TOKEN"]

LOG = "io.kestra.plugin.core.log.Log"
REQUEST = "io.kestra.plugin.core.http.Request"
RETURN = "io.kestra.plugin.core.debug.Return"
OUTPUTS = "io.kestra.plugin.core.output.OutputValues"
SUBFLOW = "io.kestra.plugin.core.flow.Subflow"
PYTHON = "io.kestra.plugin.scripts.python.Script"
QUERY = "io.kestra.plugin.jdbc.postgresql.Query"
SLACK = "io.kestra.plugin.notifications.slack.SlackIncomingWebhook"


# -- YAML output -----------------------------------------------------------------------------


class _Dumper(yaml.CSafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(value: Any) -> bytes:
    text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=10_000, indent=2)
    return text.encode("utf-8")


# -- the model -------------------------------------------------------------------------------


@dataclass(eq=False)
class Namespace:
    tenant: str
    segments: tuple[str, ...]
    parent: Namespace | None
    children: list[Namespace] = field(default_factory=list)
    folder: str = ""
    config: bool = False
    inherit_files: bool = True
    files: list[str] = field(default_factory=list)  # paths below files/
    secrets: list[str] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)
    _visible: list[str] | None = None

    @property
    def name(self) -> str:
        return ".".join(self.segments)

    @property
    def depth(self) -> int:
        return len(self.segments)

    def chain(self) -> list[Namespace]:
        """This namespace and its ancestors, nearest first."""
        node: Namespace | None = self
        result = []
        while node is not None:
            result.append(node)
            node = node.parent
        return result

    def visible_files(self) -> list[str]:
        """Own and inherited file paths, as `files.inherit` lets this namespace see them."""
        if self._visible is None:
            seen: dict[str, None] = {}
            for node in self.chain():
                seen.update(dict.fromkeys(node.files))
                if not node.inherit_files:
                    break
            self._visible = list(seen)
        return self._visible

    def visible_secrets(self) -> list[str]:
        names = list(TENANT_SECRETS)
        for node in self.chain():
            names.extend(node.secrets)
        return names

    def descendants(self) -> Iterator[Namespace]:
        for child in self.children:
            yield child
            yield from child.descendants()


@dataclass
class Manifest:
    """What was generated, and what the benchmarks edit."""

    size: str
    seed: int
    generator_version: int
    base: str
    flows: int
    namespaces: int
    files: int
    tenants: list[str]
    max_depth: int
    bytes: int
    edit_flow: str
    root_config: str
    root_namespace: str
    below_root: int
    secrets: dict[str, list[str]]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", "utf-8")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text("utf-8")))


# -- git -------------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_CONFIG_NOSYSTEM="1", LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    return env


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    proc = subprocess.run(["git", "--git-dir", str(repo), *args], input=stdin,
                          capture_output=True, env=_git_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


class FastImport:
    """One ``git fast-import`` process writing one commit onto a branch."""

    def __init__(self, repo: Path, branch: str, message: str, parent: str | None, when: int) -> None:
        self.proc = subprocess.Popen(
            ["git", "--git-dir", str(repo), "fast-import", "--quiet", "--done"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=_git_env(),
        )
        assert self.proc.stdin is not None
        self.out = self.proc.stdin
        msg = message.encode()
        header = (f"commit refs/heads/{branch}\n"
                  f"committer Headwater Bench <bench@example.com> {when} +0000\n"
                  f"data {len(msg)}\n").encode() + msg + b"\n"
        if parent is not None:
            header += f"from {parent}\n".encode()
        self.out.write(header)
        self.bytes = 0

    def put(self, path: str, data: bytes) -> None:
        self.out.write(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
        self.bytes += len(data)

    def delete(self, path: str) -> None:
        self.out.write(f"D {path}\n".encode())

    def close(self) -> None:
        self.out.write(b"\ndone\n")
        self.out.close()
        assert self.proc.stderr is not None
        with self.proc.stderr:
            err = self.proc.stderr.read()
        if self.proc.wait() != 0:
            raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")


def commit_changes(repo: Path, branch: str, changes: Mapping[str, bytes | None],
                   message: str = "change", parent: str | None = None) -> str:
    """Commit ``changes`` (path → content, None deletes) on top of ``parent`` (default: the
    branch head); returns the new commit id and moves the branch to it."""
    parent = parent or git(repo, "rev-parse", f"refs/heads/{branch}").strip()
    when = int(git(repo, "show", "-s", "--format=%ct", parent).strip()) + 60
    writer = FastImport(repo, branch, message, parent, when)
    for path, data in changes.items():
        if data is None:
            writer.delete(path)
        else:
            writer.put(path, data)
    writer.close()
    return git(repo, "rev-parse", f"refs/heads/{branch}").strip()


def read_blob(repo: Path, rev: str, path: str) -> bytes:
    proc = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "blob", f"{rev}:{path}"],
                          capture_output=True, env=_git_env(), check=True)
    return proc.stdout


_DESCRIPTION = re.compile(rb"^description: .*$", re.MULTILINE)
_RETENTION_DAYS = re.compile(rb"^(    days: )(\d+)$", re.MULTILINE)


def edit_flow(repo: Path, branch: str, path: str, parent: str | None = None) -> str:
    """Commit a one-flow edit (its description changes) on ``branch``; returns the commit."""
    parent = parent or git(repo, "rev-parse", f"refs/heads/{branch}").strip()
    old = read_blob(repo, parent, path)
    new, count = _DESCRIPTION.subn(f"description: Edited on top of {parent[:12]}".encode(), old, 1)
    if count != 1:
        raise ValueError(f"{path} has no top-level description to edit")
    return commit_changes(repo, branch, {path: new}, f"Edit {path}", parent)


def edit_config(repo: Path, branch: str, path: str, parent: str | None = None) -> str:
    """Commit a change to a root namespace.yaml (``variables.retention.days`` + 1), which
    every namespace below inherits; returns the commit."""
    parent = parent or git(repo, "rev-parse", f"refs/heads/{branch}").strip()
    old = read_blob(repo, parent, path)
    new, count = _RETENTION_DAYS.subn(lambda m: m.group(1) + str(int(m.group(2)) + 1).encode(), old, 1)
    if count != 1:
        raise ValueError(f"{path} has no variables.retention.days to edit")
    return commit_changes(repo, branch, {path: new}, f"Edit {path}", parent)


# -- the tree --------------------------------------------------------------------------------


def _spread(rng: random.Random, total: int, weights: list[float]) -> list[int]:
    """``total`` items over len(weights) bins, proportionally to the weights (random)."""
    counts = [0] * len(weights)
    for index in rng.choices(range(len(weights)), weights=weights, k=total):
        counts[index] += 1
    return counts


def _tenant_tree(rng: random.Random, tenant: str, count: int) -> list[Namespace]:
    roots = max(1, round(count * 0.04))
    nodes: list[Namespace] = []
    names: dict[Namespace | None, set[str]] = {}

    def add(parent: Namespace | None) -> None:
        taken = names.setdefault(parent, set())
        word = rng.choice([w for w in WORDS if parent is None or w != parent.segments[-1]])
        segment, n = word, 1
        while segment in taken:
            n += 1
            segment = f"{word}-{n}"
        taken.add(segment)
        node = Namespace(tenant, (*parent.segments, segment) if parent else (segment,), parent)
        if parent is not None:
            parent.children.append(node)
        nodes.append(node)

    for _ in range(min(roots, count)):
        add(None)
    while len(nodes) < count:
        open_nodes = [n for n in nodes[-50:] if n.depth < MAX_DEPTH]
        if open_nodes and rng.random() < 0.35:
            add(open_nodes[-1])  # grow a chain: deep namespaces are what hurts
        else:
            add(rng.choice([n for n in nodes if n.depth < MAX_DEPTH]))

    for node in nodes:  # folders: nested, with a few dotted shortcuts (`team.project/`)
        parent = node.parent
        if parent is None:
            node.folder = f"tenants/{tenant}/{node.segments[0]}"
        elif (not node.children and parent.parent is not None and "." not in parent.folder.rsplit("/", 1)[1]
              and rng.random() < 0.1):
            base = parent.folder.rsplit("/", 1)[0]
            node.folder = f"{base}/{parent.segments[-1]}.{node.segments[-1]}"
        else:
            node.folder = f"{parent.folder}/{node.segments[-1]}"
    return nodes


def build(size: Size, seed: int) -> tuple[list[str], dict[str, list[Namespace]]]:
    """The namespace trees of every tenant, with configs, files, secrets and flow ids assigned."""
    rng = random.Random(seed)
    tenants = TENANTS[: size.tenants]
    per_tenant = _spread(rng, size.namespaces - size.tenants, [1.0] * size.tenants)
    trees = {t: _tenant_tree(rng, t, n + 1) for t, n in zip(tenants, per_tenant, strict=True)}
    everything = [ns for t in tenants for ns in trees[t]]

    for ns in everything:
        ns.config = ns.parent is None or rng.random() < 0.5
        if ns.parent is not None and ns.config and rng.random() < 0.3:
            ns.secrets = [f"{rng.choice(NOUNS).upper()}_KEY_{len(ns.name)}{rng.randrange(100)}"]
        ns.inherit_files = ns.parent is None or rng.random() > 0.03

    file_counts = _spread(rng, size.files, [3.0 if ns.parent is None else 1.0 for ns in everything])
    for ns, count in zip(everything, file_counts, strict=True):
        for index in range(count):
            ns.files.append(_file_path(rng, ns, index))

    flow_counts = _spread(rng, size.flows, [rng.uniform(0.3, 2.0) for _ in everything])
    serial = 0
    for ns, count in zip(everything, flow_counts, strict=True):
        for _ in range(count):
            serial += 1
            ns.flows.append(f"{rng.choice(VERBS)}-{rng.choice(NOUNS)}-{serial:05d}")
        if not ns.flows and not ns.files and not ns.children:
            ns.config = True  # Git stores no empty folder: give the namespace something
    return tenants, trees


def _file_path(rng: random.Random, ns: Namespace, index: int) -> str:
    if index == 0 and ns.parent is None:
        return "scripts/common.py"
    if ns.parent is not None and rng.random() < 0.05:
        inherited = [p for p in ns.parent.visible_files() if p.endswith((".py", ".sql"))]
        if inherited:
            return rng.choice(inherited)  # nearer wins: this one overrides the ancestor's
    kind = rng.random()
    stem = f"{rng.choice(NOUNS)}_{index:03d}"
    if kind < 0.4:
        return f"scripts/{stem}.py"
    if kind < 0.75:
        return f"sql/{rng.choice(['staging', 'marts', 'reports/daily', 'reports/monthly'])}/{stem}.sql"
    if kind < 0.85:
        return f"config/{stem}.json"
    if kind < 0.95:
        return f"templates/{stem}.html.j2"
    return f"assets/{stem}.png"


# -- content ---------------------------------------------------------------------------------


def _file_content(rng: random.Random, ns: Namespace, path: str) -> bytes:
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    if path.endswith(".py"):
        lines = [f'"""{stem} for {ns.name} ({ns.tenant})."""', "import json", "import os", ""]
        for n in range(rng.randint(3, 12)):
            lines += [f"def step_{n}(rows, limit={rng.randint(10, 5000)}):",
                      f"    # {rng.choice(VERBS)} the {rng.choice(NOUNS)}",
                      "    return [r for r in rows if r.get('score', 0) > "
                      f"{rng.random():.3f}][:limit]", ""]
        lines += ["if __name__ == '__main__':", "    print(json.dumps(step_0([{'score': 1}])))"]
        return ("\n".join(lines) + "\n").encode()
    if path.endswith(".sql"):
        table = f"{rng.choice(NOUNS)}_{rng.randrange(1000)}"
        cols = rng.sample(["id", "created_at", "amount", "status", "customer_id", "region",
                           "currency", "updated_at", "source", "score"], rng.randint(3, 8))
        body = [f"-- {stem}: {ns.name}", f"INSERT INTO {ns.segments[0]}.{table} ({', '.join(cols)})",
                f"SELECT {', '.join(cols)}", f"FROM staging.{table}",
                "WHERE created_at >= '{{ inputs.start_date ?? trigger.date }}'"]
        body += [f"  AND {c} IS NOT NULL" for c in cols[1:]]
        return ("\n".join(body) + ";\n").encode()
    if path.endswith(".json"):
        return (json.dumps({"name": stem, "namespace": ns.name, "threshold": rng.random(),
                            "owners": [f"user{rng.randrange(100)}@example.com"],
                            "columns": [f"c{n}" for n in range(rng.randint(2, 20))]},
                           indent=2) + "\n").encode()
    if path.endswith(".j2"):
        return (f"<h1>{{{{ title }}}} — {stem}</h1>\n<ul>\n{{% for row in rows %}}\n"
                f"  <li>{{{{ row.{rng.choice(NOUNS)} }}}}</li>\n{{% endfor %}}\n</ul>\n").encode()
    return b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(400, 3000))


def _headwater_yaml() -> bytes:
    return dump({
        "version": 1,
        "defaults": {"variables": {"org": "bench", "retention_days": 30}},
        "instances": {
            "dev": {"branch": "dev", "tenants": ["*"], "defaults": {"variables": {"env": "dev"}}},
            "prod": {"branch": "main", "tenants": ["*"],
                     "defaults": {"variables": {"env": "prod", "retention_days": 90}},
                     "promotion": {"from": "dev", "soak": "30m"},
                     "prune": {"maxDeletePercent": 20}},
        },
    })


def _tenant_yaml(tenant: str) -> bytes:
    return dump({
        "description": f"Tenant {tenant}",
        "owners": [f"@{tenant}/platform"],
        "variables": {"company": tenant.upper(),
                      "db": {"host": "db.dev.internal", "port": 5432, "name": "warehouse"},
                      "alerts": {"channel": "#alerts-dev"}},
        "secrets": {name: {"description": f"{name.lower()} of {tenant}"} for name in TENANT_SECRETS},
        "pluginDefaults": [{"type": PYTHON, "forced": True,
                            "values": {"containerImage": "python:3.12-slim"}}],
        "allowedPlugins": ALLOWED,
        "deniedPlugins": ["io.kestra.plugin.scripts.shell.*"],
        "locked": ["variables.db.host"],
        "environments": {"prod": {"variables": {"db": {"host": "db.prod.internal"},
                                                "alerts": {"channel": "#alerts"}}}},
    })


def _namespace_yaml(rng: random.Random, ns: Namespace) -> bytes:
    doc: dict[str, Any] = {"description": f"{ns.segments[-1].title()} namespace of {ns.tenant}",
                           "owners": [f"@{ns.tenant}/{ns.segments[0]}"]}
    if ns.parent is None:
        doc["variables"] = {"team": ns.segments[0], "batch_size": rng.randint(100, 1000),
                            "retention": {"days": rng.randint(7, 90), "archive": True}}
    else:
        doc["variables"] = {"component": ns.segments[-1], "batch_size": rng.randint(10, 5000),
                            "tags": rng.sample(WORDS, 2)}
    if ns.secrets:
        doc["secrets"] = {name: {"description": f"credential for {ns.name}"} for name in ns.secrets}
    if ns.parent is None or rng.random() < 0.3:
        doc["kv"] = {"feature_flags": {"beta": rng.random() < 0.5, "new_ui": rng.random() < 0.5},
                     f"last_run_{rng.randrange(100)}": "2026-01-01"}
    defaults: list[dict[str, Any]] = []
    if ns.parent is None:
        defaults.append({"type": REQUEST, "forced": rng.random() < 0.5,
                         "values": {"options": {"connectTimeout": "PT30S"}}})
    if ns.parent is None or rng.random() < 0.2:
        defaults.append({"type": QUERY, "values": {"fetchType": "STORE",
                                                   "fetchSize": rng.choice([500, 1000, 5000])}})
    if defaults:
        doc["pluginDefaults"] = defaults
    if rng.random() < (0.3 if ns.parent is None else 0.05):
        doc["allowedPlugins"] = NARROWED
    if rng.random() < 0.05:
        doc["deniedPlugins"] = ["io.kestra.plugin.scripts.node.*"]
    if ns.parent is None:
        doc["workerGroup"] = {"key": f"{ns.tenant}-workers-{rng.randrange(4)}", "fallback": "FAIL"}
        doc["locked"] = ["workerGroup", "variables.retention"]
    if not ns.inherit_files:
        doc["files"] = {"inherit": False}
    if ns.parent is None or rng.random() < 0.4:
        doc["environments"] = {
            "dev": {"variables": {"batch_size": rng.randint(1, 50)}},
            "prod": {"variables": {"batch_size": rng.randint(1000, 20000)},
                     "kv": {"feature_flags": {"beta": False, "new_ui": False}}},
        }
    return dump(doc)


class FlowWriter:
    """Renders flows whose references all resolve: files visible in the namespace, secrets
    declared there or above, and Subflow targets among the tenant's earlier flows."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.earlier: dict[str, list[tuple[str, str]]] = {}
        self.ids = 0
        self.ns: Namespace = None  # type: ignore[assignment]
        self.flow_id = ""

    def render(self, ns: Namespace, flow_id: str) -> bytes:
        rng = self.rng
        self.ns, self.flow_id, self.ids = ns, flow_id, 0
        verb, noun = flow_id.split("-")[:2]
        flow: dict[str, Any] = {
            "id": flow_id,
            "namespace": ns.name,
            "description": f"{verb.title()} {noun} for {ns.name}",
            "labels": {"team": ns.segments[0], "tier": rng.choice(["gold", "silver", "bronze"])},
        }
        inputs = self._inputs()
        if inputs:
            flow["inputs"] = inputs
        if rng.random() < 0.2:
            flow["variables"] = {"table": f"{noun}_{rng.randrange(100)}", "chunk": rng.randint(1, 100)}
        flow["tasks"] = self._tasks(0, rng.randint(2, 5))
        if rng.random() < 0.25:
            flow["errors"] = [{"id": self._id("alert"), "type": SLACK,
                               "url": "{{ secret('SLACK_WEBHOOK') }}",
                               "payload": '{"text": "{{ flow.id }} failed in {{ flow.namespace }}"}'}]
        if rng.random() < 0.1:
            flow["finally"] = [{"id": self._id("done"), "type": LOG, "message": "finished {{ execution.id }}"}]
        triggers = self._triggers()
        if triggers:
            flow["triggers"] = triggers
        if rng.random() < 0.1:
            flow["pluginDefaults"] = [{"type": LOG, "values": {"level": "INFO"}}]
        if rng.random() < 0.15:
            flow["concurrency"] = {"limit": 1, "behavior": "QUEUE"}
        self.earlier.setdefault(ns.tenant, []).append((ns.name, flow_id))
        return dump(flow)

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}_{self.ids}"

    def _inputs(self) -> list[dict[str, Any]]:
        choices = [
            {"id": "start_date", "type": "DATE", "required": False},
            {"id": "limit", "type": "INT", "defaults": self.rng.randint(10, 10000)},
            {"id": "dry_run", "type": "BOOLEAN", "defaults": False},
            {"id": "mode", "type": "ENUM", "values": ["full", "delta"], "defaults": "delta"},
            {"id": "region", "type": "STRING", "defaults": self.rng.choice(["eu", "us", "apac"])},
        ]
        return self.rng.sample(choices, self.rng.randint(0, 3))

    def _triggers(self) -> list[dict[str, Any]]:
        rng, triggers = self.rng, []
        if rng.random() < 0.5:
            triggers.append({"id": "schedule", "type": "io.kestra.plugin.core.trigger.Schedule",
                             "cron": f"{rng.randrange(60)} {rng.randrange(24)} * * *",
                             "timezone": "Europe/Paris"})
        earlier = self.earlier.get(self.ns.tenant)
        if earlier and rng.random() < 0.1:
            namespace, flow_id = rng.choice(earlier)
            triggers.append({
                "id": "upstream", "type": "io.kestra.plugin.core.trigger.Flow",
                "conditions": [
                    {"type": "io.kestra.plugin.core.condition.ExecutionFlow",
                     "namespace": namespace, "flowId": flow_id},
                    {"type": "io.kestra.plugin.core.condition.ExecutionStatus", "in": ["SUCCESS"]},
                ],
            })
        if rng.random() < 0.05:
            triggers.append({"id": "webhook", "type": "io.kestra.plugin.core.trigger.Webhook",
                             "key": f"wh-{rng.getrandbits(64):016x}"})
        return triggers

    def _tasks(self, depth: int, count: int) -> list[dict[str, Any]]:
        tasks = []
        for _ in range(count):
            if depth < 3 and self.rng.random() < 0.35 / (depth + 1):
                tasks.append(self._container(depth))
            else:
                tasks.append(self._leaf())
        return tasks

    def _container(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(["Parallel", "Sequential", "If", "ForEach", "Switch"])
        task: dict[str, Any] = {"id": self._id(kind.lower()), "type": f"io.kestra.plugin.core.flow.{kind}"}
        inner = rng.randint(1, 3)
        if kind == "If":
            task["condition"] = "{{ inputs.dry_run ?? false }}"
            task["then"] = self._tasks(depth + 1, inner)
            if rng.random() < 0.5:
                task["else"] = self._tasks(depth + 1, 1)
        elif kind == "ForEach":
            task["values"] = rng.sample(["eu", "us", "apac", "latam", "mea"], 3)
            task["concurrencyLimit"] = rng.randint(1, 4)
            task["tasks"] = self._tasks(depth + 1, inner)
        elif kind == "Switch":
            task["value"] = "{{ inputs.mode ?? 'delta' }}"
            task["cases"] = {"full": self._tasks(depth + 1, inner), "delta": self._tasks(depth + 1, 1)}
            task["defaults"] = self._tasks(depth + 1, 1)
        else:
            task["tasks"] = self._tasks(depth + 1, inner)
        return task

    def _leaf(self) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choices(["log", "request", "python", "query", "subflow", "return", "outputs"],
                           weights=[30, 15, 20, 15, 10, 5, 5])[0]
        ns = self.ns
        if kind == "request":
            task = {"id": self._id("call_api"), "type": REQUEST,
                    "uri": f"https://api.example.com/v1/{rng.choice(NOUNS)}?limit={{{{ inputs.limit ?? 100 }}}}",
                    "method": rng.choice(["GET", "POST"]),
                    "headers": {"Authorization": f"Bearer {{{{ secret('{rng.choice(ns.visible_secrets())}') }}}}"}}
        elif kind == "python":
            scripts = [p for p in ns.visible_files() if p.endswith(".py")]
            script = f"print('{self.flow_id}')\n"
            task = {"id": self._id("script"), "type": PYTHON,
                    "beforeCommands": ["pip install --quiet pandas"]}
            if scripts:
                chosen = rng.choice(scripts)
                task["inputFiles"] = {chosen.rsplit("/", 1)[-1]: f"{{{{ read('{chosen}') }}}}"}
                script = f"import runpy\nrunpy.run_path('{chosen.rsplit('/', 1)[-1]}')\n"
            task["script"] = script
        elif kind == "query":
            queries = [p for p in ns.visible_files() if p.endswith(".sql")]
            sql = f"{{{{ read('{rng.choice(queries)}') }}}}" if queries else "SELECT 1"
            task = {"id": self._id("query"), "type": QUERY,
                    "url": "jdbc:postgresql://{{ vars.db.host }}:{{ vars.db.port }}/{{ vars.db.name }}",
                    "username": "loader", "password": "{{ secret('DB_PASSWORD') }}", "sql": sql}
        elif kind == "subflow" and self.earlier.get(ns.tenant):
            namespace, flow_id = rng.choice(self.earlier[ns.tenant])
            task = {"id": self._id("call"), "type": SUBFLOW, "namespace": namespace, "flowId": flow_id,
                    "inputs": {"start_date": "{{ inputs.start_date ?? now() }}"},
                    "wait": True, "transmitFailed": True}
        elif kind == "return":
            task = {"id": self._id("value"), "type": RETURN, "format": "{{ vars.batch_size ?? 100 }}"}
        elif kind == "outputs":
            task = {"id": self._id("outputs"), "type": OUTPUTS,
                    "values": {"rows": "{{ outputs ?? 0 }}", "namespace": ns.name}}
        else:
            task = {"id": self._id("log"), "type": LOG,
                    "message": f"{rng.choice(VERBS)} {{{{ inputs.region ?? 'eu' }}}} in {{{{ flow.namespace }}}}"}
        if rng.random() < 0.1:
            task["retry"] = {"type": "constant", "interval": "PT30S", "maxAttempts": 3}
        if rng.random() < 0.1:
            task["timeout"] = "PT15M"
        return task


# -- the repository --------------------------------------------------------------------------


def generate(repo: Path, size: Size | str, seed: int = 42) -> Manifest:
    """Write a fresh bare repository at ``repo`` (which must not exist); ``dev`` and ``main``
    both point at the one generated commit."""
    size = SIZES[size] if isinstance(size, str) else size
    tenants, trees = build(size, seed)
    content_rng = random.Random(seed + 1)
    repo.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], env=_git_env(), check=True)
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")

    writer = FastImport(repo, "dev", f"Synthetic repository {size.name} (seed {seed})", None, COMMIT_TIME)
    writer.put("headwater.yaml", _headwater_yaml())
    writer.put(".headwaterignore", b"# gitignore syntax, relative to the repository root\n**/README.md\n")
    writer.put("README.md", f"# Synthetic GitOps repository ({size.name}, seed {seed})\n".encode())
    flows = FlowWriter(random.Random(seed + 2))
    for tenant in tenants:
        writer.put(f"tenants/{tenant}/tenant.yaml", _tenant_yaml(tenant))
        for ns in trees[tenant]:
            if ns.config:
                writer.put(f"{ns.folder}/namespace.yaml", _namespace_yaml(content_rng, ns))
            for path in ns.files:
                writer.put(f"{ns.folder}/files/{path}", _file_content(content_rng, ns, path))
        for ns in trees[tenant]:
            for flow_id in ns.flows:
                writer.put(f"{ns.folder}/flows/{flow_id}.yaml", flows.render(ns, flow_id))
    writer.close()
    base = git(repo, "rev-parse", "refs/heads/dev").strip()
    git(repo, "update-ref", "refs/heads/main", base)

    everything = [ns for t in tenants for ns in trees[t]]
    first = trees[tenants[0]]
    edited = next((ns for ns in first if ns.flows and ns.depth >= 3),
                  next(ns for ns in first if ns.flows))
    root = max((ns for ns in first if ns.parent is None), key=lambda ns: sum(1 for _ in ns.descendants()))
    return Manifest(
        size=size.name, seed=seed, generator_version=GENERATOR_VERSION, base=base,
        flows=sum(len(ns.flows) for ns in everything), namespaces=len(everything),
        files=sum(len(ns.files) for ns in everything), tenants=tenants,
        max_depth=max(ns.depth for ns in everything), bytes=writer.bytes,
        edit_flow=f"{edited.folder}/flows/{edited.flows[0]}.yaml",
        root_config=f"{root.folder}/namespace.yaml",
        root_namespace=f"{root.tenant}/{root.name}",
        below_root=1 + sum(1 for _ in root.descendants()),
        secrets={t: sorted({*TENANT_SECRETS, *(s for ns in trees[t] for s in ns.secrets)}) for t in tenants},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("repo", type=Path, help="Where to create the bare repository (must not exist).")
    args = parser.parse_args(argv)
    if args.repo.exists():
        parser.error(f"{args.repo} exists")
    manifest = generate(args.repo, args.size, args.seed)
    json.dump(asdict(manifest), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
