"""Failures of the ledger a caller can act on.

asyncpg exceptions never leave the ledger: they are translated here, at one
boundary (:func:`translate`), into these classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""


class InvalidPayload(LedgerError):
    """An event payload is not encodable as canonical JSON."""


class InvalidEvent(LedgerError):
    """An event is malformed (unknown kind shape, bad sequence, bad cursor)."""


class RunNotFound(LedgerError):
    """No run with this id exists."""


class ThreadNotFound(LedgerError):
    """No thread with this id exists."""


class Conflict(LedgerError):
    """The run's head moved: another writer appended since the expected seq."""

    def __init__(self, run_id: object, expected_seq: int, actual_seq: int, last_kind: str | None) -> None:
        self.run_id = run_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        self.last_kind = last_kind
        super().__init__(
            f"run {run_id}: expected head seq {expected_seq}, found {actual_seq}"
            + (f" (last event {last_kind})" if last_kind else "")
        )


class RunFinished(LedgerError):
    """The run already has its terminal event; nothing may be appended after it."""

    def __init__(self, run_id: object, status: str, last_kind: str | None = None) -> None:
        self.run_id = run_id
        self.status = status
        self.last_kind = last_kind
        super().__init__(f"run {run_id} is finished ({status}); nothing may be appended after its terminal event")


class DatabaseUnavailable(LedgerError):
    """The database cannot be reached."""


class NoLedger(LedgerError):
    """The database holds no ledger yet (or an older schema): run ``graphledger migrate``."""


UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # no connection within the pool's time
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, crashed
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, out of memory or disk
    asyncpg.InterfaceError,  # the connection was closed under the call
    asyncpg.InternalClientError,  # a connection left mid-operation when its backend died
)
"""Driver errors that mean "the database cannot be reached now": retried by writers, 503 over HTTP."""


@contextmanager
def translate() -> Iterator[None]:
    """Turn driver errors a caller can act on into ledger errors."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise NoLedger(f"the database holds no ledger of this version ({exc}): run graphledger migrate") from exc
    except asyncpg.UntranslatableCharacterError as exc:
        raise InvalidPayload(f"payload rejected by the database: {exc}") from exc
    except asyncpg.InvalidTextRepresentationError as exc:
        raise InvalidPayload(f"payload rejected by the database: {exc}") from exc
    except asyncpg.DataError as exc:  # class 22, or an argument the driver cannot encode (an integer out of range)
        raise InvalidPayload(f"a value the database cannot take: {exc}") from exc


class RunNotEnded(LedgerError):
    """The run has not ended, so its record is not complete yet (an export of it is refused)."""
