"""namespace.schema.json and headwater.schema.json, checked with plain jsonschema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from headwater.yamlio import load

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


NAMESPACE = validator("namespace.schema.json")
HEADWATER = validator("headwater.schema.json")


def errors(checker: Draft202012Validator, text: str) -> list[str]:
    value: Any = load(text.encode(), "x.yaml").value
    return [error.message for error in checker.iter_errors(value)]


DESIGN_NAMESPACE = """\
description: Data team
owners: ["@acme/data", "@alice", "ops@acme.example"]
variables:
  db: {host: db.dev.internal, port: 5432}
secrets:
  DB_PASSWORD: {description: warehouse password}
  API_TOKEN:
kv:
  feature_flags: {beta: false}
  model.v2-threshold: 0.7
pluginDefaults:
  - type: io.kestra.plugin.scripts.python.Script
    forced: true
    values: {containerImage: "python:3.12-slim"}
allowedPlugins: ["io.kestra.plugin.core.*", "io.kestra.plugin.scripts.*"]
deniedPlugins: ["io.kestra.plugin.scripts.shell.*"]
workerGroup: {key: eu-workers, fallback: FAIL}
files: {inherit: true}
locked: [variables.db.host, workerGroup]
environments:
  prod:
    variables: {db: {host: db.prod.internal}}
    workerGroup: {fallback: WAIT}
  dev:
"""


@pytest.mark.parametrize(
    "text",
    [
        DESIGN_NAMESPACE,
        "",  # an empty file is an empty config
        "# only a comment\n",
        "variables: {}\n",
        "description: null\nowners: null\nvariables: null\nsecrets: null\nkv: null\n"
        "workerGroup: null\nfiles: null\nenvironments: null\n",
        "variables: {db: null}\nsecrets: {OLD: null}\nkv: {old: null}\n"
        "workerGroup: {key: null, fallback: null}\nfiles: {inherit: null}\n",
        "workerGroup: {key: w, fallback: CANCEL}\n",
        "pluginDefaults: []\nallowedPlugins: []\n",
        "locked: [pluginDefaults, kv.some-key, variables.a.b.c]\n",
        "environments: {prod: {description: production}}\n",
    ],
)
def test_valid_namespace_configs(text: str) -> None:
    assert errors(NAMESPACE, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("variabls: {a: 1}\n", "'variabls' was unexpected"),
        ("$schema: x\n", "'$schema' was unexpected"),
        ("secrets: {db-password: {}}\n", "does not match"),
        ("secrets: {1TOKEN: {}}\n", "does not match"),
        ("secrets: {TOKEN: {value: hunter2}}\n", "'value' was unexpected"),
        ("secrets: {TOKEN: secret}\n", "is not of type"),
        ("workerGroup: {key: eu, fallback: RETRY}\n", "is not one of"),
        ("workerGroup: {name: eu}\n", "'name' was unexpected"),
        ("kv: {-flag: 1}\n", "does not match"),
        ("kv: {a flag: 1}\n", "does not match"),
        ("pluginDefaults: [{values: {a: 1}}]\n", "'type' is a required property"),
        ("pluginDefaults: [{type: a.B, forced: yes}]\n", "is not of type 'boolean'"),
        ("pluginDefaults: [{type: a.B, values: [1]}]\n", "is not of type 'object'"),
        ("pluginDefaults: [{type: a.B, value: {}}]\n", "'value' was unexpected"),
        ("pluginDefaults: [{type: 'a b'}]\n", "does not match"),
        ("pluginDefaults: null\n", "is not of type 'array'"),
        ("allowedPlugins: null\n", "is not of type 'array'"),
        ("allowedPlugins: ['io.kestra plugin']\n", "does not match"),
        ("deniedPlugins: [a, a]\n", "non-unique"),
        ("owners: [data team]\n", "does not match"),
        ("owners: '@acme/data'\n", "is not of type"),
        ("locked: [foo.bar]\n", "does not match"),
        ("locked: [environments.prod]\n", "does not match"),
        ("locked: [variables..a]\n", "does not match"),
        ("locked: null\n", "is not of type 'array'"),
        ("files: {inherit: 'no'}\n", "is not of type"),
        ("files: {share: true}\n", "'share' was unexpected"),
        ("environments: {prod: {locked: [kv]}}\n", "'locked' was unexpected"),
        ("environments: {prod: {environments: {}}}\n", "'environments' was unexpected"),
        ("environments: {prod: {variabls: {}}}\n", "'variabls' was unexpected"),
        ("environments: {Prod: {}}\n", "does not match"),
        ("- a\n- b\n", "is not of type"),
    ],
)
def test_invalid_namespace_configs(text: str, expected: str) -> None:
    found = errors(NAMESPACE, text)
    assert found, text
    assert any(expected in message for message in found), found


DESIGN_HEADWATER = """\
version: 1
defaults:
  variables: {org: acme}
  locked: [variables.org]
instances:
  dev:
    branch: dev
    tenants: ["*"]
    defaults: {variables: {env: dev}}
  prod:
    branch: main
    tenants: [acme, beta-corp]
    promotion: {from: dev, soak: 30m}
    prune: {maxDeletePercent: 20}
    selfHeal: true
policies: {requireOwners: true}
types:
  extra: [com.example.kestra.CustomTask]
limits: {maxFileBytes: 10485760}
"""


@pytest.mark.parametrize(
    "text",
    [
        DESIGN_HEADWATER,
        "version: 1\n",
        "version: 1\ninstances: {prod: {branch: release/2024.1}}\n",
        "version: 1\ninstances: {prod: {branch: main, promotion: {from: dev, soak: 1h30m}}}\n",
        "version: 1\ninstances: {prod: {branch: main, promotion: {from: dev, soak: 2d}}}\n",
        "version: 1\ninstances: {prod: {branch: main, prune: {maxDeletePercent: 0}}}\n",
        "version: 1\ndefaults: null\n",
    ],
)
def test_valid_headwater_configs(text: str) -> None:
    assert errors(HEADWATER, text) == []


def soak(value: str) -> str:
    promotion = f"{{from: dev, soak: {value}}}"
    return f"version: 1\ninstances: {{prod: {{branch: main, promotion: {promotion}}}}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("instances: {}\n", "'version' is a required property"),
        ("version: 2\n", "1 was expected"),
        ("version: '1'\n", "1 was expected"),
        ("version: 1\ninstance: {}\n", "'instance' was unexpected"),
        ("version: 1\ninstances: {prod: {tenants: ['*']}}\n", "'branch' is a required property"),
        ("version: 1\ninstances: {prod: {branch: main, auto: true}}\n", "'auto' was unexpected"),
        ("version: 1\ninstances: {Prod: {branch: main}}\n", "does not match"),
        ("version: 1\ninstances: {prod: {branch: -x}}\n", "does not match"),
        ("version: 1\ninstances: {prod: {branch: 'a..b'}}\n", "does not match"),
        ("version: 1\ninstances: {prod: {branch: main, tenants: [Acme]}}\n", "is not valid under"),
        (soak("30 minutes"), "does not match"),
        (soak("PT30M"), "does not match"),
        (soak("'30'"), "does not match"),
        (soak("30"), "is not of type 'string'"),
        (soak("m"), "does not match"),
        (
            "version: 1\ninstances: {prod: {branch: main, promotion: {soak: 1h}}}\n",
            "'from' is a required property",
        ),
        (
            "version: 1\ninstances: {prod: {branch: main, prune: {maxDeletePercent: 150}}}\n",
            "greater than the maximum",
        ),
        (
            "version: 1\ninstances: {prod: {branch: main, prune: {maxDeletePercent: -1}}}\n",
            "less than the minimum",
        ),
        ("version: 1\ninstances: {prod: {branch: main, selfHeal: 'yes'}}\n", "is not of type"),
        ("version: 1\ndefaults: {environments: {prod: {}}}\n", "'environments' was unexpected"),
        ("version: 1\ndefaults: {variabls: {}}\n", "'variabls' was unexpected"),
        (
            "version: 1\ninstances: {prod: {branch: main, defaults: {secrets: {a-b: {}}}}}\n",
            "does not match",
        ),
        ("version: 1\ntypes: {extra: ['not a type']}\n", "does not match"),
        ("version: 1\ntypes: {allow: []}\n", "'allow' was unexpected"),
        ("version: 1\nlimits: {maxFileBytes: 0}\n", "less than the minimum"),
        ("version: 1\nlimits: {maxFiles: 1}\n", "'maxFiles' was unexpected"),
    ],
)
def test_invalid_headwater_configs(text: str, expected: str) -> None:
    found = errors(HEADWATER, text)
    assert found, text
    assert any(expected in message for message in found), found


def test_shared_definitions_are_identical() -> None:
    """headwater.schema.json copies the namespace definitions so each file stands alone."""
    namespace = json.loads((SCHEMAS / "namespace.schema.json").read_text())["$defs"]
    headwater = json.loads((SCHEMAS / "headwater.schema.json").read_text())["$defs"]
    shared = set(namespace) & set(headwater)
    assert {"secrets", "kv", "pluginDefaults", "workerGroup", "locked"} <= shared
    for name in shared:
        assert headwater[name] == namespace[name], name
    overlay = dict(namespace["overlay"]["properties"])
    assert headwater["defaults"]["properties"] == {**overlay, "locked": {"$ref": "#/$defs/locked"}}
