"""Raw SQL for tests that inspect or tamper with the database behind a ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from graphledger.ledger import Ledger


@asynccontextmanager
async def raw(ledger: Ledger) -> AsyncIterator[asyncpg.Connection]:
    """One of the ledger's own connections."""
    async with ledger.session() as session:
        yield session.connection
