"""to_jsonable: the fast path (orjson) gives what the Python walk gives, and the walk takes what orjson refuses."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import Interrupt, Send

from graphledger.runs.serialize import to_jsonable


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    at: datetime


VALUES: list[Any] = [
    {"messages": [HumanMessage("hi", id="1"), AIMessage("", id="2", tool_calls=[{"name": "t", "args": {"a": 1}, "id": "c"}]),
                  ToolMessage("3", tool_call_id="c", id="3")]},
    {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "naive": datetime(2026, 1, 2), "for": timedelta(seconds=1.5)},
    {"id": UUID(int=7), "colour": Colour.RED, "amount": Decimal("1.10"), "point": Point(1, datetime(2026, 1, 1))},
    {"nan": float("nan"), "inf": float("-inf"), "tuple": (1, "a", None), "set": {3}, "bytes": b"\x00\x01"},
    [Interrupt(value={"q": 1}, id="i"), Send("node", {"x": 1})],
    {"nested": [[{"a": [1.5, True, None]}]]},
]
REFUSED: list[Any] = [
    {1: "a", None: "b", 2.5: "c"},  # keys that are not strings
    {"big": 2**70},
    {"surrogate": "\ud800"},
]


@pytest.mark.parametrize("value", VALUES + REFUSED, ids=range(len(VALUES) + len(REFUSED)))
def test_the_fast_path_equals_the_walk(value: Any) -> None:
    assert to_jsonable(value) == to_jsonable(value, 1)  # a depth of 1 takes the walk only


def test_what_orjson_refuses_is_walked() -> None:
    assert to_jsonable({1: "a", None: "b"}) == {"1": "a", "None": "b"}
    assert to_jsonable({"big": 2**70}) == {"big": 2**70}
