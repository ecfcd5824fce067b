"""Failures of run commands a caller can act on."""

from __future__ import annotations

from graphledger.ledger.errors import LedgerError


class InvalidRequest(LedgerError):
    """A run request is malformed: an unknown stream mode or strategy, input of the wrong shape, ..."""


class UnknownAssistant(InvalidRequest):
    """The request's ``assistant_id`` names no registered graph."""


class ThreadBusy(LedgerError):
    """The thread has an active run and the request's multitask strategy is ``reject``."""


class RunBusy(LedgerError):
    """The run is pending or running: it cannot be deleted (cancel it first)."""


class NotCancellable(LedgerError):
    """The run already ended (other than interrupted): there is nothing to cancel."""


class NotPending(LedgerError):
    """The run is no longer pending (another worker started it, or it ended): it cannot be started."""


class GraphLoadError(LedgerError):
    """A graph named in ``langgraph.json`` or ``--graph`` cannot be loaded."""


class CheckpointNotFound(LedgerError):
    """The thread has no checkpoint with the id asked for."""


class NoGraph(LedgerError):
    """The thread has had no run yet, so no graph to read or update its state with."""


class InvalidBudget(LedgerError):
    """A budget's definition (from a file or the command line) is malformed, or names no budget."""


class OverBudget(LedgerError):
    """A budget the run falls under has no room for it: the admission was refused (and the refusal recorded)."""

    def __init__(self, detail: str, *, budget: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.budget = budget
        self.retry_after = retry_after
