"""graphledger: an event-sourced run ledger and run server for LangGraph."""

from __future__ import annotations

__version__ = "0.1.0"
