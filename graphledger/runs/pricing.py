"""What prices one LLM call for cost budgets: a price book (a price file, then ``genai-prices``) behind one interface.

:data:`Pricer` is what budgets use: ``(model, provider, at, tokens)`` to the
call's cost in USD, or None when nothing prices it (an unknown model). A call
without a price is never counted as free: a cost budget refuses while its
window holds one (see :class:`graphledger.runs.budgets.Use`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal

from graphledger.projections.prices import PriceBook, Tokens

Pricer = Callable[[str | None, str | None, datetime, Mapping[str, int | None]], Decimal | None]
"""``price(model, provider, at, tokens)``: a call's cost in USD, None when unpriced; ``tokens`` as the token usage projection has them."""


def of_book(book: PriceBook) -> Pricer:
    """The pricer of a price book (what ``serve --prices`` and ``GET /usage`` price with)."""

    def price(model: str | None, provider: str | None, at: datetime, tokens: Mapping[str, int | None]) -> Decimal | None:
        counts = Tokens(
            tokens.get("input_tokens") or 0, tokens.get("output_tokens") or 0, tokens.get("cache_read") or 0,
            tokens.get("cache_creation") or 0, tokens.get("reasoning") or 0,
        )
        priced = book.price(model, provider, at, counts)
        return priced.cost if priced is not None else None

    return price


def unpriced(model: str | None, provider: str | None, at: datetime, tokens: Mapping[str, int | None]) -> Decimal | None:
    """No price source: every call is unpriced."""
    return None


DEFAULT: Pricer = of_book(PriceBook())
"""``genai-prices`` alone: what admissions and ``graphledger budgets`` use unless given another."""
