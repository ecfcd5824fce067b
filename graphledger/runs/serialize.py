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

import orjson
from pydantic import BaseModel

from graphledger.ledger.events import canonical_json, encode_json

_MAX_DEPTH = 200


def _convert(value: Any) -> Any:
    """One object JSON has no type for, as JSON-like data one level down (containers not walked)."""
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception:  # a model holding something pydantic cannot dump
            return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
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
            return to_json()
        except Exception:
            pass
    return str(value)


_FAST = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-encodable data (dicts with string keys, lists, str, int, float, bool, None).

    Made in C when it can be (orjson, with :func:`_convert` for what it has
    no type for, and back), which is what makes a page of 50 states cheap;
    what orjson refuses (keys that are not strings, integers beyond 64 bits,
    very deep nesting, lone surrogates) takes the walk below, to the same result.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if _depth == 0:
        try:
            return orjson.loads(orjson.dumps(value, default=_convert, option=_FAST))
        except (TypeError, ValueError):
            pass
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth > _MAX_DEPTH:
        return str(value)
    depth = _depth + 1
    if isinstance(value, dict):
        return {_key(k): to_jsonable(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, depth) for v in value]
    return to_jsonable(_convert(value), depth)


def encode(value: Any) -> str:
    """The canonical JSON text of ``to_jsonable(value)``, made in one pass when it can be (the hot path)."""
    try:
        return encode_json(value, _convert)
    except (TypeError, ValueError):
        # Keys that are not strings, integers beyond 64 bits, deep nesting,
        # text that is not UTF-8: the slow path says what is wrong, if anything.
        return canonical_json(to_jsonable(value))


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        key = key.value
    return str(key)
