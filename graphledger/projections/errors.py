"""Failures of projection reads a caller can act on."""

from __future__ import annotations

from graphledger.ledger.errors import LedgerError


class InvalidCursor(LedgerError):
    """A page cursor is not one this ledger issued."""


class InvalidArgument(LedgerError):
    """A read's parameter is out of range or contradicts another (limit, before with after, group)."""


class RebuildRunning(LedgerError):
    """Another rebuild holds the rebuild lock of this database."""
