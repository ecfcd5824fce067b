"""The database a benchmark runs on: DATABASE_URL when set, else a fresh embedded server removed afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graphledger.ledger.migrate import upgrade  # noqa: E402


def run_on_database(main: Callable[[str], Awaitable[None]]) -> None:
    """Migrate the database and run ``main(dsn)`` on it (the embedded one has default, durable settings)."""
    if os.environ.get("DATABASE_URL"):
        dsn = os.environ["DATABASE_URL"]
        upgrade(dsn)
        asyncio.run(main(dsn))
        return
    from graphledger.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="graphledger-bench-"))
    root.chmod(0o755)
    server = EmbeddedPostgres(root / "pg")
    try:
        dsn = server.start()
        upgrade(dsn)
        asyncio.run(main(dsn))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
