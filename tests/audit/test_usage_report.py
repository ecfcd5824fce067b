"""``graphledger usage`` as a user runs it: a table with a bar per row, JSON, CSV, a price file, and one line for each bad option."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from graphledger.runs import demo
from tests.audit.conftest import Recorded
from tests.audit.test_cli import acli, one_error_line


async def test_a_table_with_a_bar_per_row(dsn: str, recorded: Recorded) -> None:
    result = await acli("usage", "--bucket", "day", "--by", "model,status", "--since", "2d", dsn=dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["bucket", "model", "status"]
    rows = [line for line in lines[1:-1] if demo.MODEL_NAME in line]
    assert rows and all("█" in line and "unpriced" in line for line in rows)
    assert "success" in {word for line in rows for word in line.split()}
    assert "calls unpriced" in lines[-1]


async def test_json_and_csv(dsn: str, recorded: Recorded) -> None:
    as_json = await acli("usage", "--by", "model", "--since", "2d", "--json", dsn=dsn)
    body = json.loads(as_json.stdout)
    assert body["group_by"] == ["gen_ai.request.model"] and body["plan"] == "rollup"
    (row,) = [r for r in body["rows"] if r["gen_ai.request.model"] == demo.MODEL_NAME]
    assert row["calls"] >= 3 and row["cost"] is None and row["unpriced"]["calls"] == row["calls"]
    as_csv = await acli("usage", "--by", "model", "--since", "2d", "--csv", dsn=dsn)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout.decode())))
    (line,) = [r for r in table if r["model"] == demo.MODEL_NAME]
    assert int(line["calls"]) == row["calls"] and int(line["input_tokens"]) == row["gen_ai.usage.input_tokens"]


async def test_a_price_file_prices_what_genai_prices_does_not_know(dsn: str, recorded: Recorded, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"prices": [{"model": demo.MODEL_NAME, "input": 1000000, "output": 0}]}))
    result = await acli("usage", "--by", "model", "--since", "2d", "--prices", str(prices), "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout)["rows"] if r["gen_ai.request.model"] == demo.MODEL_NAME]
    # One dollar a token of input (cache reads and writes at the input rate too).
    assert row["cost"] == row["gen_ai.usage.input_tokens"] and row["cost_sources"] == ["price file prices.json"]
    assert row["unpriced"]["calls"] == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--by", "colour"], "unknown dimension"),
        (["--tz", "Mars/Olympus_Mons"], "time zone"),
        (["--since", "yesterday"], "ISO 8601"),
        (["--filter", "model"], "DIM=VALUE"),
        (["--prices", "/nonexistent/prices.toml"], "cannot read price file"),
        (["--since", "2030-01-01", "--until", "2020-01-01"], "since must be before until"),
    ],
)
async def test_bad_options_are_one_line(dsn: str, args: list[str], words: str) -> None:
    result = await acli("usage", *args, dsn=dsn)
    assert result.returncode == 1
    assert words in one_error_line(result)


async def test_a_bad_price_file_is_named(dsn: str, tmp_path: Path) -> None:
    for text, words in (("[[price]]\nmodel = 'x'\n", "input (USD per million tokens) is required"), ("not toml [", "not valid TOML"),
                        ("[[price]]\nmodel = 'x'\ninput = 1\noutput = -1\n", "at least 0"),
                        ("[[price]]\nmodel = 'x'\ninput = 1\noutput = 1\ncolour = 1\n", "unknown field colour")):
        path = tmp_path / "prices.toml"
        path.write_text(text)
        result = await acli("usage", "--prices", str(path), dsn=dsn)
        assert result.returncode == 1 and words in one_error_line(result), result.stderr
