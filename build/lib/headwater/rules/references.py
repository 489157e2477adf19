"""Reference and governance checks of one namespace's flows against its instance's view. Pure.

`read()` / `nsfile://` must resolve in the effective files, `secret()` must be declared in the
effective secrets, Subflow targets must exist, plugin types must be allowed, and a flow's own
plugin defaults may not override a forced one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from headwater import inherit
from headwater.errors import Diagnostic

if TYPE_CHECKING:
    from headwater.snapshot import FlowInfo, NamespaceView, Snapshot

Views = Mapping[tuple[str, str], "NamespaceView"]


def _dynamic(text: str) -> bool:
    return "{{" in text or "{%" in text


def _suggest(name: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return close[0] if close else None


def check_namespace(view: NamespaceView, views: Views, snap: Snapshot) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    for info in view.flows.values():
        if info.refs is not None:
            diags.extend(_check_flow(info, view, views, snap))
    return diags


def _check_flow(info: FlowInfo, view: NamespaceView, views: Views, snap: Snapshot) -> list[Diagnostic]:
    assert info.refs is not None
    path = info.entry.path
    diags: list[Diagnostic] = []
    tenant = view.tenant

    for ref in info.refs.files:
        if _dynamic(ref.path) or (ref.namespace is not None and _dynamic(ref.namespace)):
            continue
        target_ns = ref.namespace or view.name
        target = views.get((tenant, target_ns))
        wanted = ref.path.lstrip("/")
        if target is None:
            diags.append(Diagnostic(
                path, ref.line, ref.column, "ref.read-missing",
                f"{ref.via}('{ref.path}') names namespace {target_ns!r}, which does not exist in tenant {tenant!r}",
                hint="check the namespace argument",
            ))
            continue
        if wanted not in target.files:
            close = _suggest(wanted, list(target.files))
            diags.append(Diagnostic(
                path, ref.line, ref.column, "ref.read-missing",
                f"{ref.via}('{ref.path}'): no file {wanted!r} is visible in namespace {target_ns!r}",
                hint=(f"did you mean '{close}'? " if close else "")
                + f"add it under files/ of {target_ns} or of one of its parents",
            ))

    secrets = view.effective.config.get("secrets") or {}
    for secret in info.refs.secrets:
        if _dynamic(secret.name) or secret.name in secrets:
            continue
        close = _suggest(secret.name, list(secrets))
        diags.append(Diagnostic(
            path, secret.line, secret.column, "ref.secret-undeclared",
            f"secret('{secret.name}') is not declared for namespace {view.name!r}",
            hint=(f"did you mean '{close}'? " if close else "")
            + f"declare it under `secrets:` in the namespace.yaml of {view.name} or of a parent",
        ))

    tenant_layout = snap.layout.tenants.get(tenant)
    for call in info.refs.subflows:
        if call.dynamic:
            continue
        target = views.get((tenant, call.namespace))
        if target is not None and call.flow_id in target.flows:
            continue
        owned = tenant_layout is not None and any(
            ".".join(call.namespace.split(".")[: i + 1]) in tenant_layout.namespaces
            for i in range(call.namespace.count(".") + 1)
        )
        if owned:
            flows = sorted(target.flows) if target is not None else []
            close = _suggest(call.flow_id, flows)
            diags.append(Diagnostic(
                path, call.line, call.column, "ref.subflow-missing",
                f"subflow {call.namespace}.{call.flow_id} does not exist in tenant {tenant!r}",
                hint=(f"did you mean '{close}'? " if close else "")
                + f"add flows/{call.flow_id}.yaml to namespace {call.namespace}, or fix the flowId",
            ))
        else:
            diags.append(Diagnostic(
                path, call.line, call.column, "ref.subflow-external",
                f"subflow {call.namespace}.{call.flow_id} is outside this repository's namespaces",
                hint="it must already exist on the instance; Headwater cannot check it",
                severity="warning",
            ))

    for use in info.refs.types:
        canonical = snap.registry.canonical(use.type) or use.type
        allowed, reason = view.effective.plugin_allowed(canonical)
        if not allowed:
            diags.append(Diagnostic(
                path, use.line, use.column, "governance.plugin-denied",
                f"plugin type {use.type} is not allowed in namespace {view.name!r}: {reason}",
                hint="use an allowed plugin, or change allowedPlugins/deniedPlugins where they are set",
            ))

    defaults = [
        (snap.registry.canonical(pd.type) or pd.type, pd.values, pd.line)
        for pd in info.refs.plugin_defaults
    ]
    if defaults:
        diags.extend(inherit.check_flow_plugin_defaults(view.effective, defaults, path))
    return diags
