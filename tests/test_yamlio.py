from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import yamlio


def load(text: str | bytes, **kwargs: object) -> object:
    data = text.encode() if isinstance(text, str) else text
    return yamlio.load(data, "f.yaml", **kwargs).value  # type: ignore[arg-type]


def error(text: str | bytes, **kwargs: object) -> yamlio.Diagnostic:  # type: ignore[name-defined]
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(yamlio.YamlError) as info:
        yamlio.load(data, "f.yaml", **kwargs)  # type: ignore[arg-type]
    assert info.value.diagnostic.path == "f.yaml"
    return info.value.diagnostic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on", "on"), ("yes", "yes"), ("No", "No"), ("off", "off"), ("y", "y"),
        ("true", True), ("False", False), ("TRUE", True),
        ("~", None), ("null", None), ("", None),
        ("12", 12), ("-3", -3), ("0o17", 15), ("0x1f", 31), ("0777", 777),
        ("1.5", 1.5), ("1e3", 1000.0), (".inf", float("inf")),
        ("1:20", "1:20"), ("2024-01-01", "2024-01-01"), ("0b101", "0b101"), ("1_000", "1_000"),
    ],
)
def test_yaml_1_2_core_scalars(text: str, expected: object) -> None:
    assert load(f"k: {text}\n") == {"k": expected}


def test_on_is_a_string_key() -> None:
    assert load("on:\n  push: {}\n") == {"on": {"push": {}}}


def test_quoted_and_tagged_scalars_stay_strings() -> None:
    assert load("a: 'true'\nb: \"12\"\nc: !!str 12\nd: !!int '7'\n") == {"a": "true", "b": "12", "c": "12", "d": 7}


def test_marks_point_at_keys_and_items() -> None:
    doc = yamlio.load(b"id: x\ntasks:\n  - id: a\n    type: t\n  - id: b\n", "f.yaml")
    assert doc.mark(("tasks", 1, "id")) == (5, 5)
    assert doc.mark(("tasks", 0, "type")) == (4, 5)
    assert doc.line(("tasks",)) == 2
    assert doc.mark(("tasks", 0, "missing", "deeper")) == (3, 5)  # nearest ancestor


def test_duplicate_key_names_both_lines() -> None:
    diag = error("a: 1\nb: 2\na: 3\n")
    assert (diag.code, diag.line) == ("yaml.duplicate-key", 3)
    assert "line 1" in diag.message


def test_duplicate_key_nested() -> None:
    diag = error("t:\n  x: 1\n  x: 2\n")
    assert (diag.code, diag.line, diag.column) == ("yaml.duplicate-key", 3, 3)


def test_syntax_error_is_located() -> None:
    diag = error("a: [1, 2\nb: 3\n")
    assert diag.code == "yaml.syntax" and diag.line is not None


def test_alias_bomb_is_bounded() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    diag = error("\n".join(lines) + "\n")
    assert diag.code == "yaml.alias-limit"


def test_small_aliases_are_fine() -> None:
    assert load("a: &x {k: v}\nb: *x\n") == {"a": {"k": "v"}, "b": {"k": "v"}}


def test_recursive_alias_refused() -> None:
    assert error("a: &x [*x]\n").code == "yaml.alias"


def test_deep_nesting_is_bounded() -> None:
    assert error("[" * 10_000 + "]" * 10_000).code == "yaml.too-deep"
    assert error("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 80))).code == "yaml.too-deep"


def test_size_limit() -> None:
    assert error(b"a: " + b"x" * 100, max_bytes=50).code == "yaml.too-large"


def test_non_utf8_refused_with_line() -> None:
    diag = error(b"a: 1\nb: caf\xe9\n")
    assert (diag.code, diag.line) == ("yaml.encoding", 2)


def test_binary_refused() -> None:
    assert error(b"\x89PNG\r\n\x1a\n\x00\x00").code == "yaml.binary"


def test_bom_is_accepted() -> None:
    assert load(b"\xef\xbb\xbfa: 1\n") == {"a": 1}


def test_multi_document_refused() -> None:
    diag = error("a: 1\n---\nb: 2\n")
    assert (diag.code, diag.line) == ("yaml.multi-document", 2)


def test_empty_documents_load_as_none() -> None:
    assert load("") is None
    assert load("# only a comment\n") is None


def test_complex_keys_refused() -> None:
    assert error("? [a, b]\n: 1\n").code == "yaml.complex-key"


def test_unknown_tag_refused() -> None:
    assert error("a: !include other.yaml\n").code == "yaml.tag"


def test_control_characters_refused_cleanly() -> None:
    assert error("a: \x07bell\n").code == "yaml.syntax"


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn", "Zl", "Zp")), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | printable,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(printable, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_documents_round_trip(value: object) -> None:
    """JSON is YAML 1.2: every JSON document loads to the same value."""
    assert load(json.dumps(value, ensure_ascii=False)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        yamlio.load(data, "f.yaml")
    except yamlio.YamlError as exc:
        assert exc.diagnostic.code.startswith("yaml.")
