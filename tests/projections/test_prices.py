"""Prices: a price file's entries (patterns, providers, effective periods, the last match wins), genai-prices'
historic prices behind them, the cost formula, and a clear error for every bad entry."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from graphledger.projections.prices import GENAI_PRICES, PriceBook, Priced, PriceFileError, Tokens, load_price_file, price

UTC = timezone.utc
AT = datetime(2026, 6, 1, tzinfo=UTC)

FILE = """
[[price]]
model = "team-*"
input = 1
output = 2

[[price]]
model = "team-large"
provider = "azure"
input = 5
output = 6
cache_read = 0.5
cache_write = 7

[[price]]
model = "gpt-4o"
effective_from = 2026-05-01T00:00:00Z
effective_until = 2026-07-01T00:00:00Z
input = 0.1
output = 0.2
"""


@pytest.fixture
def book(tmp_path: Path) -> PriceBook:
    path = tmp_path / "negotiated.toml"
    path.write_text(FILE)
    return PriceBook(load_price_file(path))


def test_the_last_matching_entry_wins_and_providers_must_match(book: PriceBook) -> None:
    small = book.rates("TEAM-small", None, AT)
    assert small is not None and (small.input, small.output, small.source) == (1, 2, "price file negotiated.toml")
    generic = book.rates("team-large", "openai", AT)
    assert generic is not None and generic.input == 1
    azure = book.rates("team-large", "Azure", AT)
    assert azure is not None and (azure.input, azure.cache_read, azure.cache_write) == (5, Decimal("0.5"), 7)


def test_the_file_wins_in_its_period_and_genai_prices_answers_outside_it(book: PriceBook) -> None:
    inside = book.rates("gpt-4o", None, AT)
    assert inside is not None and inside.input == Decimal("0.1") and inside.source.startswith("price file")
    outside = book.rates("gpt-4o", None, datetime(2026, 8, 1, tzinfo=UTC))
    assert outside is not None and outside.source == GENAI_PRICES and outside.input == Decimal("2.5")
    changes = book.changes(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 8, 1, tzinfo=UTC))
    assert datetime(2026, 5, 1, tzinfo=UTC) in changes and datetime(2026, 7, 1, tzinfo=UTC) in changes


def test_cost_takes_cache_reads_and_writes_out_of_the_input(book: PriceBook) -> None:
    tokens = Tokens(input=1_000_000, output=500_000, cache_read=200_000, cache_write=100_000, reasoning=300_000)
    priced = book.price("team-large", "azure", AT, tokens)
    assert priced is not None
    # 700k uncached × 5 + 200k × 0.5 + 100k × 7 + 500k output (reasoning included) × 6, per million.
    assert priced.cost == Decimal("3.5") + Decimal("0.1") + Decimal("0.7") + Decimal("3")
    # Without cache rates, cached tokens cost the input rate.
    plain = book.price("team-small", None, AT, tokens)
    assert plain is not None and plain.cost == Decimal("1") + Decimal("1")


def test_unknown_models_are_unpriced() -> None:
    book = PriceBook()
    assert book.price("surely-no-such-model-exists", None, AT, Tokens(input=10)) is None
    assert book.price(None, None, AT, Tokens(input=10)) is None
    assert PriceBook(genai=False).price("gpt-4o", None, AT, Tokens(input=10)) is None


def test_the_module_function_prices_with_genai_prices_unless_given_a_book(book: PriceBook) -> None:
    tokens = Tokens(input=1_000_000)
    assert price("gpt-4o", None, AT, tokens) == Priced(Decimal("2.5"), GENAI_PRICES)
    assert price("gpt-4o", None, AT, tokens, book) == Priced(Decimal("0.1"), "price file negotiated.toml")
    assert price("team-small", None, AT, tokens) is None


def test_genai_prices_are_historic() -> None:
    book = PriceBook()
    rates = book.rates("gpt-4o", "openai", AT)
    assert rates is not None and rates.source == GENAI_PRICES
    assert rates.cache_read == Decimal("1.25")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[price]]\ninput = 1\noutput = 1', "model must be"),
        ('[[price]]\nmodel = "x"\noutput = 1', "input (USD per million tokens) is required"),
        ('[[price]]\nmodel = "x"\ninput = "cheap"\noutput = 1', "must be a number"),
        ('[[price]]\nmodel = "x"\ninput = true\noutput = 1', "must be a number"),
        ('[[price]]\nmodel = "x"\ninput = -1\noutput = 1', "at least 0"),
        ('[[price]]\nmodel = "x"\ninput = 1\noutput = 1\nprovider = 3', "provider must be"),
        ('[[price]]\nmodel = "x"\ninput = 1\noutput = 1\neffective_from = "soon"', "ISO 8601"),
        ('[[price]]\nmodel = "x"\ninput = 1\noutput = 1\neffective_from = 2026-02-01\neffective_until = 2026-01-01', "before"),
        ('[[price]]\nmodel = "x"\ninput = 1\noutput = 1\nunit = "k"', "unknown field unit"),
        ('price = 3', "expected a list"),
        ('[[price', "not valid TOML"),
    ],
)
def test_bad_entries_are_named(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as error:
        load_price_file(path)
    assert words in str(error.value) and str(path) in str(error.value)


def test_json_files_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('[{"model": "x", "input": "1.5", "output": 2, "effective_from": "2026-01-01T00:00:00+01:00"}]')
    (entry,) = load_price_file(path)
    assert entry.rates.input == Decimal("1.5") and entry.effective_from == datetime(2025, 12, 31, 23, tzinfo=UTC)
    path.write_text("{")
    with pytest.raises(PriceFileError, match="not valid JSON"):
        load_price_file(path)
    with pytest.raises(PriceFileError, match="cannot read"):
        load_price_file(tmp_path / "missing.json")
