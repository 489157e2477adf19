from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from markdown_it import MarkdownIt
from markdown_it.token import Token

from headwater import render
from headwater.plan import Plan, compute
from headwater.resources import KINDS, Kind, Resource, ResourceKey, State, make, secret_hash

ANSI = re.compile("\x1b")
PLAN_VALIDATOR = Draft202012Validator(
    json.loads((Path(__file__).parents[1] / "schemas" / "plan.schema.json").read_text())
)
SECRET_VALUE = "s3cr3t-value-that-must-not-leak"


def res(ns: str, kind: Kind, name: str, content: bytes | str, tenant: str = "acme") -> Resource:
    data = content.encode() if isinstance(content, str) else content
    return make(tenant, ns, kind, name, data, f"tenants/{tenant}/{ns}/{kind}s/{name}")


def secret(ns: str, name: str, value: str) -> Resource:
    return Resource(ResourceKey("acme", ns, "secret", name), secret_hash(b"k", value))


def plan_of(desired: State, actual: State, instance: str = "dev", **kw: object) -> Plan:
    return compute(desired, actual, instance=instance, revision="b" * 40, base="a" * 40, **kw)  # type: ignore[arg-type]


def sample_plan() -> Plan:
    """Two namespaces: a create, an update with ``` inside, a delete, a binary, a secret, drift."""
    fenced = res("company", "file", "README.md", "# Read me\n```yaml\nid: x\n```\n")
    edited = res("company", "flow", "hello.yaml", "id: hello\n````\ntasks: []\n")
    old_edit = res("company", "flow", "hello.yaml", "id: hello\ntasks: []\n")
    logo_old = res("company", "file", "logo.png", b"\x89PNG\x00\x01")
    logo_new = res("company", "file", "logo.png", b"\x89PNG\x00\x02")
    gone = res("company.team", "flow", "old.yaml", "id: old\n")
    token_old = secret("company", "TOKEN", SECRET_VALUE)
    token_new = secret("company", "TOKEN", SECRET_VALUE + "2")
    applied = {r.key: r for r in (old_edit, logo_old, gone, token_old)}
    actual = dict(applied)
    actual[logo_old.key] = res("company", "file", "logo.png", b"\x89PNG\x00\xff")  # drift
    desired = {r.key: r for r in (fenced, edited, logo_new, token_new)}
    return plan_of(desired, actual, managed={k: r.hash for k, r in applied.items()})


def md_tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").parse(text)


def details_blocks(tokens: list[Token]) -> tuple[int, int]:
    blocks = [t.content for t in tokens if t.type == "html_block"]
    opened = sum(b.count("<details>") for b in blocks)
    closed = sum(b.count("</details>") for b in blocks)
    return opened, closed


# --- text ------------------------------------------------------------------------------------


def test_text_without_color_has_no_escapes() -> None:
    plan = sample_plan()
    text = render.plan_text(plan, color=False)
    assert not ANSI.search(text)
    assert text.endswith("Plan: 1 to create, 3 to update, 1 to delete.")
    assert "acme/company\n" in text and "acme/company.team\n" in text
    assert "  + file README.md" in text
    assert "  - flow old.yaml" in text
    assert re.search(
        r"! ~ file logo\.png .*\(binary\) sha256:[0-9a-f]{12}… → sha256:[0-9a-f]{12}…", text
    )
    assert "~ secret TOKEN (sensitive)" in text
    assert "      +````" in text  # the diff, indented under its resource
    assert SECRET_VALUE not in text


def test_text_with_color() -> None:
    text = render.plan_text(sample_plan(), color=True)
    assert "\x1b[32m" in text and "\x1b[33m" in text and "\x1b[31m" in text
    assert "\x1b[0m" in text
    assert "(sensitive)" in text


def test_text_no_changes() -> None:
    st_ = {r.key: r for r in [res("a", "flow", "f.yaml", "id: f\n")]}
    for color in (False, True):
        text = render.plan_text(plan_of(st_, st_, instance="prod"), color=color)
        assert "No changes. Instance prod is up to date." in text
        assert "Plan:" not in text


def test_text_escapes_control_characters_from_content() -> None:
    evil = res("a", "flow", "evil\x1b[2J.yaml", "id: x\n\x1b]0;pwned\x07\u202eevil\n")
    for color in (False, True):
        text = render.plan_text(plan_of({evil.key: evil}, {}), color=color)
        assert "\x1b]" not in text and "\x1b[2J" not in text and "\u202e" not in text
        assert "\\x1b]0;pwned\\x07" in text
    assert not ANSI.search(render.plan_text(plan_of({evil.key: evil}, {}), color=False))


def test_text_lists_unmanaged_and_drift() -> None:
    applied = {r.key: r for r in [res("a", "flow", "f.yaml", "id: f\n")]}
    actual = {**applied}
    stray = res("a", "flow", "stray.yaml", "id: s\n")
    actual[stray.key] = stray
    hand = res("a", "flow", "f.yaml", "id: hand\n")
    actual[hand.key] = hand
    text = render.plan_text(
        plan_of(applied, actual, managed={hand.key: applied[hand.key].hash}), False
    )
    assert "Drift: 1 resource changed outside Git." in text
    assert "Unmanaged: 1 resource left alone" in text and "acme/a/flow/stray.yaml" in text
    assert "! ~ flow f.yaml" in text


# --- JSON ------------------------------------------------------------------------------------


def test_json_is_stable_and_sorted() -> None:
    plan = sample_plan()
    text = render.plan_json(plan)
    assert text == render.plan_json(Plan.from_json(json.loads(text)))
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    assert SECRET_VALUE not in text


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_structure() -> None:
    plan = sample_plan()
    text = render.plan_markdown(plan)
    assert text.startswith("<!-- headwater-plan:dev -->\n")
    tokens = md_tokens(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["Headwater plan for `dev`"]
    inlines = [t.content for t in tokens if t.type == "inline"]
    assert "**Plan:** 1 to create, 3 to update, 1 to delete" in inlines
    assert any(i.startswith("**Drift:** 1 resource") for i in inlines)
    assert details_blocks(tokens) == (2, 2)
    summaries = re.findall(r"<summary>(.*?)</summary>", text)
    assert summaries == ["acme/company — +1 ~3 -0", "acme/company.team — +0 ~0 -1"]
    assert SECRET_VALUE not in text
    assert "(sensitive)" in text


def test_markdown_fences_hold_content_with_backticks() -> None:
    plan = sample_plan()
    tokens = md_tokens(render.plan_markdown(plan))
    fences = [t for t in tokens if t.type == "fence"]
    diffs = [c.diff for c in plan.changes if c.diff is not None]
    assert len(fences) == len(diffs) == 3
    assert all(f.info == "diff" for f in fences)
    assert sorted(f.content for f in fences) == sorted(diffs)
    # nothing after the fences was swallowed: both sections close, the summary stands alone
    assert details_blocks(tokens) == (2, 2)


def test_markdown_no_changes() -> None:
    st_ = {r.key: r for r in [res("a", "flow", "f.yaml", "id: f\n")]}
    text = render.plan_markdown(plan_of(st_, st_, instance="prod"))
    inlines = [t.content for t in md_tokens(text) if t.type == "inline"]
    assert "**No changes.** Instance `prod` is up to date." in inlines
    assert "<details>" not in text


def test_markdown_names_cannot_break_out() -> None:
    evil = res("x</summary></details><b>", "flow", "a`b``c.yaml", "id: x\n")
    text = render.plan_markdown(plan_of({evil.key: evil}, {}, instance="i--><script>"))
    tokens = md_tokens(text)
    assert text.split("\n", 1)[0].count("-->") == 1
    assert details_blocks(tokens) == (1, 1)
    assert "&lt;b&gt;" in text  # escaped in the summary
    html = [t.content for t in tokens if t.type == "html_block"]
    assert not any("<b>" in block for block in html)
    inline_html = [c for t in tokens if t.children for c in t.children if c.type == "html_inline"]
    assert inline_html == []
    codes = [c.content for t in tokens if t.children for c in t.children if c.type == "code_inline"]
    assert "a`b``c.yaml" in codes


def test_markdown_truncates_long_plans_within_the_limit() -> None:
    big = "\n".join(f"line {i} " + "x" * 60 for i in range(3000)) + "\n"
    desired = {
        r.key: r
        for r in (
            res(f"ns{i:02}", "file", f"f{j}.txt", big + str(j)) for i in range(30) for j in range(5)
        )
    }
    plan = plan_of(desired, {})
    text = render.plan_markdown(plan)
    assert len(text) <= render.MAX_COMMENT_CHARS
    tokens = md_tokens(text)
    opened, closed = details_blocks(tokens)
    assert opened == closed >= 1
    assert "diff cut" in text
    assert "not shown: the comment size limit was reached" in text
    for fence in (t for t in tokens if t.type == "fence"):
        assert fence.info == "diff"
    inlines = [t.content for t in tokens if t.type == "inline"]
    assert "**Plan:** 150 to create, 0 to update, 0 to delete" in inlines


@pytest.mark.parametrize("limit", [2_000, 5_000, 20_000])
def test_markdown_respects_any_limit(limit: int) -> None:
    desired = {
        r.key: r
        for r in (
            res(f"ns{i}", "flow", f"f{j}.yaml", "x\n" * (40 * j + 1))
            for i in range(8)
            for j in range(8)
        )
    }
    text = render.plan_markdown(plan_of(desired, {}), max_chars=limit)
    assert len(text) <= limit
    opened, closed = details_blocks(md_tokens(text))
    assert opened == closed


def test_plans_markdown_combines_instances() -> None:
    dev = sample_plan()
    st_ = {r.key: r for r in [res("a", "flow", "f.yaml", "id: f\n")]}
    prod = plan_of(st_, st_, instance="prod")
    text = render.plans_markdown([dev, prod])
    assert text.startswith("<!-- headwater-plans -->\n")
    assert "<!-- headwater-plan:dev -->" in text and "<!-- headwater-plan:prod -->" in text
    tokens = md_tokens(text)
    items = [t.content for t in tokens if t.type == "inline"]
    assert "`dev`: 1 to create, 3 to update, 1 to delete" in items
    assert "`prod`: no changes" in items
    assert details_blocks(tokens) == (2, 2)
    assert len(text) <= render.MAX_COMMENT_CHARS
    assert SECRET_VALUE not in text
    assert "No instance is affected." in render.plans_markdown([])


# --- property: applying a plan gives the desired state ---------------------------------------

keys = st.builds(
    ResourceKey,
    st.sampled_from(["acme", "beta"]),
    st.sampled_from(["company", "company.team"]),
    st.sampled_from(KINDS),
    st.sampled_from(["a", "b.yaml", "c/d.txt"]),
)
contents = st.one_of(st.text(max_size=30).map(str.encode), st.binary(max_size=12))


def _resource(key: ResourceKey, content: bytes) -> Resource:
    if key.kind == "secret":
        return Resource(key, secret_hash(b"k", content.hex()))
    return make(key.tenant, key.namespace, key.kind, key.name, content)


states = st.dictionaries(keys, contents, max_size=12).map(
    lambda d: {k: _resource(k, c) for k, c in d.items()}
)


def apply_to(actual: State, plan: Plan, desired: State) -> State:
    """What a target does with a plan: creations/updates take the desired resource."""
    result = dict(actual)
    for change in plan.changes:
        if change.action == "delete":
            del result[change.key]
        else:
            result[change.key] = desired[change.key]
    return result


def hashes(s: State) -> dict[ResourceKey, str]:
    return {k: r.hash for k, r in s.items()}


@settings(max_examples=200, deadline=None)
@given(desired=states, actual=states)
def test_applying_a_plan_gives_the_desired_state(desired: State, actual: State) -> None:
    plan = plan_of(desired, actual)
    assert hashes(apply_to(actual, plan, desired)) == hashes(desired)
    assert plan.is_empty == (hashes(desired) == hashes(actual))
    assert plan_of(desired, apply_to(actual, plan, desired)).is_empty
    counts = plan.summary()
    assert counts["create"] + counts["update"] + counts["unchanged"] == len(desired)


@settings(max_examples=200, deadline=None)
@given(desired=states, actual=states, managed=states)
def test_applying_with_an_inventory_keeps_unmanaged(
    desired: State, actual: State, managed: State
) -> None:
    plan = plan_of(desired, actual, managed=hashes(managed))
    result = apply_to(actual, plan, desired)
    unmanaged = {k: r for k, r in actual.items() if k not in desired and k not in managed}
    assert hashes(result) == hashes(desired) | hashes(unmanaged)
    assert set(plan.unmanaged) == set(unmanaged)
    for change in plan.changes:
        assert change.drift == (change.key in plan.drift)
    # No secret's hash shows, whole or shortened as other hashes are (user content may well
    # hold the text "hmac:").
    secret_hashes = {r.hash for s in (desired, actual, managed) for r in s.values() if r.key.kind == "secret"}
    for text in (render.plan_text(plan, True), render.plan_markdown(plan), render.plan_json(plan)):
        for digest in secret_hashes:
            assert digest[: len("hmac:") + 12] not in text
    text = render.plan_json(plan)  # written change by change: the whole document's text
    assert text == whole_json(plan_of(desired, actual, managed=hashes(managed)))
    doc = json.loads(text)
    assert not list(PLAN_VALIDATOR.iter_errors(doc))
    assert Plan.from_json(doc) == plan


def whole_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=True, ensure_ascii=False)


# --- the JSON plan, written a change at a time -----------------------------------------------


def test_writing_the_json_plan_keeps_no_diff() -> None:
    plan = sample_plan()
    assert any(c._pending is not None for c in plan.changes)
    pending = [c for c in plan.changes if c._pending is not None]
    text = render.plan_json(plan)
    assert all(c._pending is not None and c._diff is None for c in pending)  # made, written, let go
    assert text == whole_json(sample_plan())
    assert text == whole_json(plan)  # and the plan still gives the same diffs when asked
    for empty in (plan_of({}, {}), dataclasses.replace(plan, changes=(), drift=(), unmanaged=())):
        assert render.plan_json(empty) == whole_json(empty)


def test_a_plans_json_written_tenant_by_tenant_is_the_whole_plans() -> None:
    """Each tenant's part goes in by section: creations and updates kind by kind across the
    tenants in order, flows callee first, then deletions in reverse, tenants in reverse."""
    desired: State = {}
    actual: State = {}
    calls: dict[ResourceKey, set[ResourceKey]] = {}
    for tenant in ("b", "a", "c"):
        for kind in KINDS:
            if kind == "secret":
                continue
            new = res("ns", kind, f"new-{kind}", f"{tenant} new", tenant)
            changed = res("ns", kind, f"changed-{kind}", f"{tenant} after", tenant)
            kept = res("ns", kind, f"kept-{kind}", "same", tenant)
            gone = res("ns", kind, f"gone-{kind}", f"{tenant} gone", tenant)
            desired.update({r.key: r for r in (new, changed, kept)})
            actual.update({r.key: r for r in (gone, kept)})
            actual[changed.key] = res("ns", kind, f"changed-{kind}", f"{tenant} before", tenant)
        flow = ResourceKey(tenant, "ns", "flow", "new-flow")
        calls[flow] = {ResourceKey(tenant, "ns", "flow", "z-called")}  # created after it if sorted
        desired[ResourceKey(tenant, "ns", "flow", "z-called")] = res("ns", "flow", "z-called", "called", tenant)
        actual[ResourceKey(tenant, "ns", "flow", "zz-gone")] = res("ns", "flow", "zz-gone", "old", tenant)
        calls[ResourceKey(tenant, "ns", "flow", "zz-gone")] = {ResourceKey(tenant, "ns", "flow", "gone-flow")}
    managed = {k: r.hash for k, r in actual.items() if k.name != "gone-kv"}  # never managed: left alone
    managed[ResourceKey("a", "ns", "file", "gone-file")] = "sha256:" + "0" * 64  # drifted
    whole = plan_of(desired, actual, managed=managed, calls=calls)
    parts = [
        plan_of({k: r for k, r in desired.items() if k.tenant == t}, {k: r for k, r in actual.items() if k.tenant == t},
                managed=managed, calls=calls)
        for t in ("a", "b", "c")
    ]
    counted = Plan(whole.instance, whole.revision, whole.base, (), (), (), whole.fingerprint, whole.unchanged,
                   whole.summary())
    with render.PlanJson() as document:
        for part in parts:
            document.add(part)
        out: list[str] = []
        document.finish(counted, out.append)
    assert "".join(out) == render.plan_json(whole)
    kinds = [(c.action, c.key.tenant, c.key.kind) for c in whole.changes]
    assert kinds.index(("delete", "c", "flow")) < kinds.index(("delete", "a", "flow"))
    assert whole.drift and whole.unmanaged and len({c.key.tenant for c in whole.changes}) == 3


def test_a_comment_written_tenant_by_tenant_is_the_whole_plans_wherever_the_limit_cuts() -> None:
    """Namespaces are kept while the comment might show them, then only counted."""
    desired: State = {}
    for tenant in ("a", "b", "c"):
        for n in range(30):
            for name in ("one", "two", "three"):
                key = ResourceKey(tenant, f"ns{n:02}", "secret", name)
                desired[key] = Resource(key, secret_hash(b"k", f"{tenant}{n}{name}"))
        desired.update({r.key: r for r in [res("ns00", "file", "a.txt", "line\n" * 40, tenant)]})
    whole = plan_of(desired, {})
    parts = [plan_of({k: r for k, r in desired.items() if k.tenant == t}, {}) for t in ("a", "b", "c")]
    counted = Plan(whole.instance, whole.revision, whole.base, (), (), (), whole.fingerprint, 0, whole.summary())
    full = len(render.plan_markdown(whole, max_chars=10**9))
    cut = 0
    for limit in range(200, full + 400, 97):
        comment = render.PlanMarkdown(max_chars=limit)
        for part in parts:
            comment.add(part)
        text = comment.finish(counted)
        assert text == render.plan_markdown(whole, max_chars=limit)
        cut += "not shown: the comment size limit" in text
        if limit < full // 4:  # what no comment could show is not kept: here less than a tenant
            assert len(comment.kept) < 30 and comment.hidden
    assert cut > 30 and "not shown" not in render.plan_markdown(whole, max_chars=full + 400)
