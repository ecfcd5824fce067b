"""Apply the Alembic migrations shipped inside the package."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (asyncpg driver) for a libpq-style ``postgresql://`` DSN."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {dsn.split('://')[0]}://...")


def alembic_config(dsn: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read '%' in a password as a directive.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return config


def upgrade(dsn: str, revision: str = "head") -> None:
    """Migrate the database at ``dsn`` to ``revision`` (blocking; safe to run concurrently).

    Alembic's environment runs its own event loop, so the work happens on a
    worker thread: this may be called with or without a running loop.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphledger-migrate") as pool:
        pool.submit(command.upgrade, alembic_config(dsn), revision).result()

