"""The compiled composer against the reference (``yamlio.compose_events``).

For any text, the compiled one either declines (returns None) or builds exactly what the
reference builds: the same value (types, key order), marks, mentions and plain flag. When
the reference refuses a text, the compiled one must decline it, so the error stays the
reference's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import yamlio
from headwater._compose import compose

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "conformance"


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not True), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compiled(text: str, max_depth: int = yamlio.MAX_DEPTH, max_nodes: int = yamlio.MAX_NODES) -> Any:
    return compose(text, max_depth, max_nodes, max_depth <= yamlio.MAX_DEPTH, yamlio.resolve_plain)


def agree(text: str, max_depth: int = yamlio.MAX_DEPTH, max_nodes: int = yamlio.MAX_NODES) -> bool:
    """Check the contract on ``text``; return whether the compiled composer took it."""
    got = compiled(text, max_depth, max_nodes)
    try:
        want = yamlio.compose_events(text, "f.yaml", max_depth, max_nodes, False)
    except (yamlio.YamlError, yaml.YAMLError, ValueError):
        assert got is None, f"the reference refuses {text!r}, the compiled composer took it"
        return False
    if got is None:
        return False
    value, marks, mentions, plain = got
    assert same(value, want.value), text
    assert marks == want.marks and list(marks) == list(want.marks), text
    assert mentions == want.mentions, text
    assert plain == want.plain, text
    return True


def yaml_files() -> list[Path]:
    roots = [CONFORMANCE, ROOT / "sample-repo", ROOT / "examples"]
    return sorted(p for root in roots for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_every_yaml_file_of_the_project_and_the_conformance_data() -> None:
    files = yaml_files()
    taken = 0
    for path in files:
        try:
            text = yamlio.decode(path.read_bytes(), str(path))
        except yamlio.YamlError:
            continue
        taken += agree(text)
    assert len(files) > 150
    # Only anchors, aliases, tags and errors are declined: nearly every file is taken.
    assert taken >= len(files) * 0.9, (taken, len(files))


def test_load_takes_the_compiled_path() -> None:
    assert yamlio._compiled is compose
    doc = yamlio.load(b"id: a\ntasks:\n  - script: \"{{ read('x.sql') }}\"\n", "f.yaml")
    assert doc.value == {"id": "a", "tasks": [{"script": "{{ read('x.sql') }}"}]}
    assert doc.marks == {(): (1, 1), ("id",): (1, 1), ("tasks",): (2, 1), ("tasks", 0): (3, 5),
                         ("tasks", 0, "script"): (3, 5)}
    assert doc.mentions == (((3, 5), "{{ read('x.sql') }}"),)
    assert doc.plain is True


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # anchor and alias
        "a: *x\n",  # an alias to no anchor
        "- &x [1]\n",
        "a: !!str 1\n",  # explicit tag
        "!!int 1\n",
        "a: !custom x\n",
        "a: 1\na: 2\n",  # duplicate key
        "? [a]\n: 1\n",  # complex key
        "a: 1\n---\nb: 2\n",  # a second document
        "a: [1\n",  # syntax error
        "a: \"\\0\"\n",  # an escaped NUL
        "a: " + "9" * 5000 + "\n",  # int() refuses it
    ],
)
def test_what_the_compiled_composer_leaves_to_the_reference(text: str) -> None:
    assert compiled(text) is None
    agree(text)


def test_limits_are_left_to_the_reference() -> None:
    deep = "a:\n" + "".join("  " * i + "- \n" for i in range(1, 6)) + "  " * 6 + "- 1\n"
    assert compiled(deep, max_depth=3) is None
    assert agree(deep, max_depth=8)
    many = "".join(f"k{i}: {i}\n" for i in range(50))
    assert compiled(many, max_nodes=99) is None
    assert agree(many, max_nodes=101)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "plain\n",
        "- 1\n- 1.5\n- .inf\n- -.Inf\n- .nan\n- 0o17\n- 0x1F\n- 0777\n- +3\n- 1e3\n- 1.2.3\n",
        "a: ~\nb: null\nc: True\nd: FALSE\ne: no\nf: on\ng: nul\nh:\ni: ''\nj: \"\"\n",
        "- [null, Null, NULL, NuLL, ~, ~~]\n- [true, True, TRUE, tRUE, false, False, FALSE, f]\n",
        ".inf: 1\n.5: x\n12: y\n",  # keys stay their text; an infinite one is not plain
        "a: {b: [1, {c: d}], e: []}\nf: {}\n",
        "k: ! 12\n",  # the non-specific tag of a plain scalar: resolved as plain
        "'quoted read(x)': \"secret('S')\"\nread(y): nsfile:///z\nsecret: 1\n",
        "é: \"ünïcödé read\"\nnext: [ä, 'ö']\n",
        "\ufeffa: 1\n",
        "a: |\n  multi\n  line read('q')\nb: >\n  folded\n  text\n",
        "- - - 1\n    - 2\n  - 3\n- x\n",
    ],
)
def test_the_compiled_composer_builds_what_the_reference_builds(text: str) -> None:
    assert agree(text.removeprefix("\ufeff"))


words = st.sampled_from(
    ["read", "secret", "nsfile:", "(", "'", '"', "~", "null", "True", "no", ".inf", "-.nan",
     "0x1f", "0o7", "1e3", "+1", "-", ".", "é", " ", "#", ":", "{", "[", "x"]
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(
    words, max_size=4
).map("".join)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.lists(words, max_size=3).map("".join), children, max_size=4
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.sampled_from(["block", "flow", "json", "canonical"]), st.data())
def test_dumped_values(value: Any, style: str, data: st.DataObject) -> None:
    if style == "json":
        try:
            text = json.dumps(value, ensure_ascii=data.draw(st.booleans()))
        except ValueError:
            return
    else:
        text = yaml.safe_dump(
            value,
            default_flow_style=style == "flow",
            canonical=style == "canonical",
            allow_unicode=data.draw(st.booleans()),
            sort_keys=False,
        )
    agree(text)


flow_texts = [p.read_text(encoding="utf-8") for p in yaml_files()[:60]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(flow_texts), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 4),
       st.sampled_from(["", " ", "  ", "\n", "-", ":", "&a ", "*a", "!!str ", "read(", "#", "\t",
                        "'", '"', "[", "{", "? ", "---\n", "é", "1", ".nan"])), max_size=4))
def test_edited_real_files(text: str, edits: list[tuple[int, int, str]]) -> None:
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut :]
    agree(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        text = yamlio.decode(data, "f.yaml")
    except yamlio.YamlError:
        return
    agree(text)
