"""A plan computes a diff only when it is read: capped renderings read few, and show the same."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError

import pytest

from headwater import plan as planning
from headwater import render
from headwater.plan import Change, Plan, compute
from headwater.resources import Resource, ResourceKey, State, make


def _state(*resources: Resource) -> State:
    return {r.key: r for r in resources}


def _resources(version: int, count: int) -> list[Resource]:
    found = []
    for i in range(count):
        ns = f"team{i % 7}"
        body = "".join(f"  - id: t{j}\n    type: Log\n    message: v{version if j == i % 5 else 0}\n"
                       for j in range(i % 9))
        found.append(make("acme", ns, "flow", f"f{i}.yaml", f"id: f{i}\ntasks:\n{body}".encode(),
                          f"tenants/acme/{ns}/flows/f{i}.yaml"))
    found += [
        make("acme", "team1", "file", "empty", b""),
        make("acme", "team1", "file", "bin", b"\x00\x01" if version else b"\x00\x02"),
        make("acme", "team2", "file", "nonl", f"no newline {version}".encode()),
        make("acme", "team2", "file", "ctl", f"\x1b[31mred\u202e {version}\n```\n".encode()),
        make("acme", "team3", "kv", "kv", b'{"a": 1}\n' if version else b'{"a": 2}\n'),
        Resource(ResourceKey("acme", "team3", "secret", "TOKEN"), f"hmac:{version}"),
        Resource(ResourceKey("acme", "team4", "flow", "hash-only.yaml"), f"sha256:{version}"),
    ]
    return found


def _plans() -> list[Plan]:
    old = _state(*_resources(0, 120))
    new = _state(*_resources(1, 100))
    more = _state(*_resources(1, 160))
    managed = {k: r.hash for k, r in old.items()}
    kwargs = {"instance": "dev", "revision": "b" * 40, "base": None}
    return [
        compute(new, old, managed=managed, **kwargs),  # type: ignore[arg-type]
        compute(more, {}, **kwargs),  # type: ignore[arg-type]
        compute({}, old, **kwargs),  # type: ignore[arg-type]
        compute(more, old, **kwargs),  # type: ignore[arg-type]
    ]


def _eager(p: Plan) -> Plan:
    """The same plan with every diff already there (as read back from a plan file)."""
    return Plan.from_json(json.loads(render.plan_json(p)))


@pytest.mark.parametrize("lines", [0, 1, 3, 7, 40, 200, 4000])
def test_text_is_the_same_whatever_was_computed(lines: int) -> None:
    for p in _plans():
        for color in (False, True):
            expected = render.plan_text(_eager(p), color, max_diff_lines=lines)
            assert render.plan_text(p, color, max_diff_lines=lines) == expected


@pytest.mark.parametrize("chars", [400, 1500, 5000, 60_000])
def test_markdown_is_the_same_whatever_was_computed(chars: int) -> None:
    for p in _plans():
        assert render.plan_markdown(p, max_chars=chars) == render.plan_markdown(_eager(p), max_chars=chars)
    plans = _plans()
    assert render.plans_markdown(plans, max_chars=chars) == render.plans_markdown(
        [_eager(p) for p in plans], max_chars=chars
    )


def test_a_capped_rendering_computes_few_diffs(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real = planning._diff

    def counting(have: Resource | None, want: Resource | None, label: str) -> str | None:
        computed.append(label)
        return real(have, want, label)

    monkeypatch.setattr(planning, "_diff", counting)
    p = compute(_state(*_resources(1, 3000)), {}, instance="dev", revision="b" * 40, base=None)
    assert not computed
    text = render.plan_text(p, False, max_diff_lines=50)
    assert "diff(s) omitted past 50 lines" in text
    assert 0 < len(computed) < 30
    computed.clear()
    render.plan_markdown(p)
    assert 0 < len(computed) < 300
    doc = json.loads(render.plan_json(p))
    # every flow, "nonl", "ctl" and "kv"; not the empty, binary, secret or hash-only ones
    assert sum(c["diff"] is not None for c in doc["changes"]) == 3000 + 3 == len(p.changes) - 4


def test_a_lazy_change_equals_its_eager_self_and_stays_frozen() -> None:
    for p in _plans():
        eager = _eager(p)
        assert p == eager and hash(p.changes) == hash(eager.changes)
        assert [c.has_diff for c in p.changes] == [c.diff is not None for c in eager.changes]
        assert pickle.loads(pickle.dumps(p)) == eager
    change = _plans()[1].changes[0]
    with pytest.raises(FrozenInstanceError):
        change.diff = None  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        change.action = "delete"  # type: ignore[misc]
    again = Change(change.key, change.action, change.before_hash, change.after_hash,
                   diff=change.diff, source=change.source)
    assert again == change and repr(again) == repr(change)
    assert repr(change).startswith("Change(key=ResourceKey(")
