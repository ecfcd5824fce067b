"""What LLM calls cost: prices of a model at a time, from a price file or the ``genai-prices`` package.

A :class:`PriceBook` answers :meth:`PriceBook.price` (or :func:`price`) for
one model, provider, time and token counts with a :class:`Priced` (the cost in USD and the source
that priced it) or None: a call nothing prices is unpriced, never free.

Sources, the first that knows the model wins:

1. a price file (``--prices FILE``, TOML or JSON; see :func:`load_price_file`)
   for models ``genai-prices`` does not know and for negotiated prices;
2. ``genai-prices``, its historic price of the model at the call's time.

Token counts follow LangChain's ``UsageMetadata``: ``input_tokens`` include
the cache reads and cache writes, ``output_tokens`` include the reasoning
tokens. So a call costs ``(input - cache_read - cache_write) × input rate +
cache_read × cache-read rate + cache_write × cache-write rate + output ×
output rate`` (a cache rate the source does not have is the input rate).
Reasoning tokens are priced as output, as providers bill them.

Prices that depend on the size of one request (``genai-prices`` tiers, such
as long-context rates) cannot be chosen for sums of many calls: the base tier
is used. Prices by time of day (off-peak discounts) are not applied: the
price is read at the start of the time it covers.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as genai_types

from graphledger.ledger.errors import LedgerError

MILLION = Decimal(1_000_000)
GENAI_PRICES = f"genai-prices {genai_prices.__version__}"
RATES = ("input", "output", "cache_read", "cache_write")


class PriceFileError(LedgerError):
    """A price file cannot be read or an entry in it is not a price."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of one call, or summed over calls of one model and price."""

    input: int = 0  # cache reads and writes included
    output: int = 0  # reasoning included
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of one model at one time, and who says so."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None
    source: str

    def cost(self, tokens: Tokens) -> Decimal:
        uncached = max(tokens.input - tokens.cache_read - tokens.cache_write, 0)
        total = (
            uncached * self.input
            + tokens.cache_read * (self.input if self.cache_read is None else self.cache_read)
            + tokens.cache_write * (self.input if self.cache_write is None else self.cache_write)
            + tokens.output * self.output
        )
        return total / MILLION


@dataclass(frozen=True, slots=True)
class Priced:
    """A cost in USD and the source that priced it (``genai-prices <version>`` or ``price file <name>``)."""

    cost: Decimal
    source: str


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One price of a price file: a model pattern (``*`` wildcards, any case), optionally a provider, when it holds."""

    model: str
    rates: Rates
    provider: str | None = None
    effective_from: datetime | None = None
    effective_until: datetime | None = None

    def matches(self, model: str, provider: str | None, at: datetime) -> bool:
        if not fnmatch.fnmatchcase(model.lower(), self.model.lower()):
            return False
        if self.provider is not None and (provider is None or provider.lower() != self.provider.lower()):
            return False
        if self.effective_from is not None and at < self.effective_from:
            return False
        return self.effective_until is None or at < self.effective_until


class PriceBook:
    """Prices of models over time: a price file's entries first, then ``genai-prices`` (unless ``genai=False``)."""

    def __init__(self, entries: Sequence[PriceEntry] = (), *, genai: bool = True) -> None:
        self.entries = tuple(entries)
        self.genai = genai
        self._rates = lru_cache(maxsize=65_536)(self._lookup)

    def rates(self, model: str | None, provider: str | None, at: datetime) -> Rates | None:
        """The rates of ``model`` (from ``provider``, if known) at ``at``; None when nothing prices it."""
        if not model:
            return None
        return self._rates(model, provider, at)

    def price(self, model: str | None, provider: str | None, at: datetime, tokens: Tokens) -> Priced | None:
        """What ``tokens`` of ``model`` cost at ``at``; None (unpriced) when no source knows the model then."""
        rates = self.rates(model, provider, at)
        return None if rates is None else Priced(rates.cost(tokens), rates.source)

    def changes(self, since: datetime, until: datetime) -> list[datetime]:
        """Every instant in ``(since, until)`` where some price may change; between two, every model's price holds still."""
        instants: set[datetime] = set()
        for entry in self.entries:
            instants.update(t for t in (entry.effective_from, entry.effective_until) if t is not None)
        if self.genai:
            instants.update(_genai_changes())
        return sorted(t for t in instants if since < t < until)

    def _lookup(self, model: str, provider: str | None, at: datetime) -> Rates | None:
        for entry in reversed(self.entries):  # the last matching entry of the file wins
            if entry.matches(model, provider, at):
                return entry.rates
        return _genai_rates(model, provider, at) if self.genai else None


def _genai_rates(model: str, provider: str | None, at: datetime) -> Rates | None:
    snapshot = data_snapshot.get_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        if provider is None:
            return None
        try:  # a provider genai-prices names otherwise: find the model by its name alone
            _, info = snapshot.find_provider_model(model, None, None, None)
        except LookupError:
            return None
    prices = info.get_prices(at)
    rates = {name: _base(getattr(prices, f"{name}_mtok", None)) for name in RATES}
    if rates["input"] is None or rates["output"] is None:
        return None
    return Rates(rates["input"], rates["output"], rates["cache_read"], rates["cache_write"], GENAI_PRICES)


def _base(price: Any) -> Decimal | None:
    if isinstance(price, genai_types.TieredPrices):
        return price.base
    return price if isinstance(price, Decimal) else None


@lru_cache(maxsize=1)
def _genai_changes() -> frozenset[datetime]:
    """The days (UTC midnight) on which a ``genai-prices`` price starts."""
    found: set[datetime] = set()
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            if isinstance(model.prices, list):
                for conditional in model.prices:
                    if isinstance(conditional.constraint, genai_types.StartDateConstraint):
                        found.add(datetime.combine(conditional.constraint.start_date, time(), timezone.utc))
    return frozenset(found)


# -- price files ---------------------------------------------------------------------------


def load_price_file(path: Path) -> list[PriceEntry]:
    """The entries of a price file, in order (a later one wins over an earlier one that matches too).

    TOML (``[[price]]`` tables) or JSON (``{"prices": [...]}`` or a list),
    chosen by the file's suffix (``.toml``, else JSON). Each entry::

        model = "gpt-4o*"           # pattern, * and ? wildcards, any case
        provider = "openai"         # optional: only calls that name this provider
        effective_from = 2026-03-01T00:00:00Z   # optional, inclusive
        effective_until = 2026-04-01T00:00:00Z  # optional, exclusive
        input = 2.5                 # USD per million tokens
        output = 10
        cache_read = 1.25           # optional (else the input rate)
        cache_write = 3.125         # optional (else the input rate)

    Raises :class:`PriceFileError` naming the file and the entry.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"cannot read price file {path}: {exc}") from exc
    try:
        document: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise PriceFileError(f"price file {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from exc
    if isinstance(document, Mapping):
        items = document.get("price", document.get("prices"))
    else:
        items = document
    if not isinstance(items, list):
        raise PriceFileError(f"price file {path}: expected a list of prices ([[price]] in TOML, \"prices\": [...] in JSON)")
    return [_entry(item, f"price file {path.name}", f"{path}: price {n}") for n, item in enumerate(items, 1)]


def price_book(path: Path | None = None) -> PriceBook:
    """``genai-prices``, with the entries of the price file at ``path`` first when given."""
    return PriceBook(load_price_file(path) if path is not None else ())


_FIELDS = frozenset({"model", "provider", "effective_from", "effective_until", *RATES})


def _entry(item: Any, source: str, where: str) -> PriceEntry:
    if not isinstance(item, Mapping):
        raise PriceFileError(f"{where}: expected a table of fields, not {type(item).__name__}")
    unknown = set(item) - _FIELDS
    if unknown:
        raise PriceFileError(f"{where}: unknown field {', '.join(sorted(map(str, unknown)))}; fields are {', '.join(sorted(_FIELDS))}")
    model = item.get("model")
    if not isinstance(model, str) or not model:
        raise PriceFileError(f"{where}: model must be a non-empty pattern")
    provider = item.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise PriceFileError(f"{where}: provider must be a non-empty string")
    rates = {name: _rate(item.get(name), name, where, required=name in ("input", "output")) for name in RATES}
    start, end = _instant(item.get("effective_from"), "effective_from", where), _instant(item.get("effective_until"), "effective_until", where)
    if start is not None and end is not None and start >= end:
        raise PriceFileError(f"{where}: effective_from must be before effective_until")
    assert rates["input"] is not None and rates["output"] is not None  # required above
    return PriceEntry(model, Rates(rates["input"], rates["output"], rates["cache_read"], rates["cache_write"], source), provider, start, end)


def _rate(value: Any, name: str, where: str, *, required: bool) -> Decimal | None:
    if value is None:
        if required:
            raise PriceFileError(f"{where}: {name} (USD per million tokens) is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(f"{where}: {name} must be a number of USD per million tokens")
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise PriceFileError(f"{where}: {name} must be a number of USD per million tokens, not {value!r}") from None
    if not rate.is_finite() or rate < 0:
        raise PriceFileError(f"{where}: {name} must be a finite number of at least 0")
    return rate


def _instant(value: Any, name: str, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, date):
        found = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            found = datetime.fromisoformat(value)
        except ValueError:
            raise PriceFileError(f"{where}: {name} must be an ISO 8601 time, not {value!r}") from None
    else:
        raise PriceFileError(f"{where}: {name} must be an ISO 8601 time")
    return found.astimezone(timezone.utc) if found.tzinfo is not None else found.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=1)
def _genai_only() -> PriceBook:
    return PriceBook()


def price(model: str | None, provider: str | None, at: datetime, tokens: Tokens, book: PriceBook | None = None) -> Priced | None:
    """What ``tokens`` of ``model`` cost at ``at`` per ``book`` (default: ``genai-prices`` alone); None: unpriced."""
    return (book or _genai_only()).price(model, provider, at, tokens)
