"""pretty_json writes exactly what json.dumps(indent=2, sort_keys=True, ensure_ascii=False) does:
the text of a config resource is hashed and recorded, so one byte of difference would show
every namespace's config as changed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.resources import pretty_json


def reference(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(), inner, max_size=5)),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(plain)
def test_plain_json_data_is_written_as_json_dumps_writes_it(value: Any) -> None:
    assert pretty_json(value) == reference(value)


class Name(str):
    pass


class Count(int):
    pass


def test_what_it_leaves_to_json_dumps_comes_out_the_same() -> None:
    unusual = [
        {"a": float("nan")}, [float("inf"), float("-inf")],  # NaN, Infinity
        {1: "one", 2: "two"}, {None: 1}, {True: 1}, {1.5: 1},  # keys json.dumps converts
        {"a": (1, 2)}, {"a": Name("x")}, {"a": Count(3)}, {Name("k"): 1},  # tuples, subclasses
    ]
    for value in unusual:
        assert pretty_json(value) == reference(value)


def test_text_that_needs_escaping() -> None:
    value = {"q": 'say "hi"\\n', "ctl": "\x00\x1f\x7f", "sep": "\u2028\u2029", "é": "ü", "": [{}, []]}
    assert pretty_json(value) == reference(value)


def test_a_value_json_cannot_write_fails_as_it_does() -> None:
    for value in ({"a": object()}, {"a": 1, 2: "b"}):  # not JSON; keys json.dumps cannot sort
        try:
            reference(value)
        except TypeError as expected:
            try:
                pretty_json(value)
            except TypeError as got:
                assert str(got) == str(expected)
            else:
                raise AssertionError(f"{value!r} was written")
        else:
            raise AssertionError("json.dumps wrote it")
