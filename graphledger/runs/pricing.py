"""What prices one LLM call for cost budgets: the one place a price source is wired in.

:data:`Pricer` is the interface budgets use: ``(model, provider, at, tokens)``
to the call's cost in USD, or None when nothing prices it (an unknown model).
:func:`unpriced` is the default until a price source is configured: every
call is unpriced, so a cost budget refuses as soon as a call falls in its
window (see :class:`graphledger.runs.budgets.Use`), instead of counting the
call as free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal

Pricer = Callable[[str | None, str | None, datetime, Mapping[str, int | None]], Decimal | None]
"""``price(model, provider, at, tokens)``: a call's cost in USD, None when unpriced; ``tokens`` as the token usage projection has them."""


def unpriced(model: str | None, provider: str | None, at: datetime, tokens: Mapping[str, int | None]) -> Decimal | None:
    """No price source: every call is unpriced."""
    return None


DEFAULT: Pricer = unpriced
"""The pricer admissions and ``graphledger budgets`` use unless given another."""
