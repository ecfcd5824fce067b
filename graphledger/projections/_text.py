"""Text as the projection tables can hold it."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str | None:
    """``value`` if it is a string, with NUL (which the log's JSON may carry, PostgreSQL text may not) as U+FFFD."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "\ufffd") if "\x00" in value else value
