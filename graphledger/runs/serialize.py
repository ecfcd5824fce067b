"""What LangGraph streams, as JSON: the payload of a stream event.

Chunks hold LangChain messages, pydantic models, dataclasses (``Interrupt``,
``Send``), tuples, UUIDs and datetimes. They are turned into plain JSON the way
the LangGraph server sends them: messages and models as their ``model_dump``,
dataclasses as their fields, tuples as lists. Numbers JSON cannot hold (NaN,
infinities) become ``null``, and any other object its ``str``, so a chunk never
stops a run from being recorded.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from uuid import UUID

from pydantic import BaseModel

_MAX_DEPTH = 200


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-encodable data (dicts with string keys, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > _MAX_DEPTH:
        return str(value)
    depth = _depth + 1
    if isinstance(value, Mapping):
        return {_key(k): to_jsonable(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, depth) for v in value]
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except Exception:  # a model holding something pydantic cannot dump
            dumped = value.model_dump()
        return to_jsonable(dumped, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, depth)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (UUID, PurePath, Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    to_json = getattr(value, "to_json", None)  # LangChain's Serializable
    if callable(to_json):
        try:
            return to_jsonable(to_json(), depth)
        except Exception:
            pass
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        key = key.value
    return str(key)
