from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphledger.ledger.errors import InvalidEvent, InvalidPayload
from graphledger.ledger.events import (
    NewEvent,
    canonical_json,
    jsonb_text,
    validate_kind,
)


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": {"z": True, "y": "é"}}) == '{"a":{"y":"é","z":true},"b":[1,2.5,null]}'


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"x": math.nan}, "not valid JSON"),
        ({"x": [math.inf]}, "not valid JSON"),
        ({1: "int key"}, "is not a string"),
        ({"nested": {None: 1}}, "is not a string"),
        ({"x": object()}, "not JSON-encodable"),
        ({"x": {1, 2}}, "not JSON-encodable"),
        ({"x": b"bytes"}, "not JSON-encodable"),
        ({"x": "\ud800"}, "not valid UTF-8"),
    ],
)
def test_invalid_payloads_are_refused(payload: object, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        canonical_json(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_stable(value: object) -> None:
    import json

    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


@pytest.mark.parametrize("kind", ["run.created", "llm.usage", "stream:values", "stream:messages|agent:1a2b", "run.custom_thing"])
def test_valid_kinds(kind: str) -> None:
    assert validate_kind(kind) == kind


@pytest.mark.parametrize("kind", ["", "run", "Run.Created", "stream:", "stream:a\nb", "run created", "x" * 300, 5])
def test_invalid_kinds(kind: object) -> None:
    with pytest.raises(InvalidEvent):
        validate_kind(kind)  # type: ignore[arg-type]


def test_new_event_validates_both() -> None:
    assert NewEvent.of("stream:custom", {"a": 1}).data == '{"a":1}'
    with pytest.raises(InvalidEvent):
        NewEvent.of("bad kind", {})


def test_jsonb_text_refuses_nul_but_not_a_backslash_that_looks_like_one() -> None:
    with pytest.raises(InvalidPayload, match="metadata cannot contain the character U\\+0000"):
        jsonb_text({"note": "a\x00b"}, "metadata")
    with pytest.raises(InvalidPayload, match="U\\+0000"):
        jsonb_text({"a\x00": 1}, "metadata")
    assert jsonb_text({"path": "C:\\u0000"}, "metadata") == '{"path":"C:\\\\u0000"}'
