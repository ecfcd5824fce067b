"""The ``run_secrets`` table: a run's secret config values, kept out of the log until a worker takes them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from graphledger.ledger.events import RunRef, jsonb_text
from graphledger.ledger.read import Connection

PUT_SQL = "INSERT INTO run_secrets (thread_id, run_id, secrets) VALUES ($1, $2, $3::jsonb)"
TAKE_SQL = "DELETE FROM run_secrets WHERE thread_id = $1 AND run_id = $2 RETURNING secrets"


class Secrets:
    """The statements on ``run_secrets``, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def put(self, ref: RunRef, secrets: Mapping[str, Any]) -> None:
        await self._conn.execute(PUT_SQL, ref.thread_id, ref.run_id, jsonb_text(dict(secrets), "secret config values"))

    async def take(self, ref: RunRef) -> dict[str, Any] | None:
        """Remove and return the run's secrets (None when it has none)."""
        text = await self._conn.fetchval(TAKE_SQL, ref.thread_id, ref.run_id)
        return json.loads(text) if text is not None else None
