"""``graphledger budgets`` as a user runs it: set, load, rm, the use table and JSON, refusals; bad input is one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphledger.ledger import Ledger
from graphledger.runs import GraphRegistry, admit, budget_use, demo
from graphledger.runs.errors import OverBudget
from tests.audit.test_cli import acli, one_error_line
from tests.runs.conftest import ask


async def test_set_list_load_and_remove_budgets(dsn: str, projected: Ledger, tmp_path: Path) -> None:
    done = await acli("budgets", "set", "team-a", "--per", "metadata.team", "--match", "a", "--limit", "1000", "--window", "1d",
                      "--reserve-per-run", "400", "--by", "alice", dsn=dsn)
    assert done.returncode == 0 and b"budget team-a set: metadata.team=a: 1000 total_tokens per 1d" in done.stderr, done
    admitted = await admit(projected, ask(metadata={"team": "a"}), graphs=GraphRegistry({"demo": demo.graph}))
    listed = await acli("budgets", dsn=dsn)
    assert listed.returncode == 0, listed
    header, row = listed.stdout.decode().splitlines()[:2]
    assert header.split() == ["BUDGET", "PER", "KEY", "METRIC", "USED", "RESERVED", "LIMIT", "WINDOW", "USE", "UNPRICED"]
    assert row.split() == ["team-a", "metadata.team", "a", "total_tokens", "0", "400", "1000", "1d", "40.0%"]
    as_json = json.loads((await acli("budgets", "list", "--json", dsn=dsn)).stdout)
    assert as_json == [{
        "budget": "team-a", "key": "a", "per": "metadata.team", "metric": "total_tokens", "limit": 1000, "window": "1d", "match": "a",
        "reserve_per_run": 400, "used": 0, "reserved": 400, "percent": 40.0, "window_start": as_json[0]["window_start"],
    }]
    await admit(projected, ask(metadata={"team": "a"}), graphs=GraphRegistry({"demo": demo.graph}))
    with pytest.raises(OverBudget):
        await admit(projected, ask(metadata={"team": "a"}), graphs=GraphRegistry({"demo": demo.graph}))
    refusals = await acli("budgets", "refusals", dsn=dsn)
    assert refusals.returncode == 0 and "team-a" in refusals.stdout.decode() and str(admitted.ref.run_id) not in refusals.stdout.decode()
    (refusal,) = json.loads((await acli("budgets", "refusals", "--budget", "team-a", "--json", dsn=dsn)).stdout)
    assert (refusal["budget"], refusal["key"], refusal["used"], refusal["reserved"], refusal["limit"]) == ("team-a", "a", 0, 800, 1000)
    assert json.loads((await acli("budgets", "refusals", "--identity", "nobody", "--json", dsn=dsn)).stdout) == []

    file = tmp_path / "budgets.toml"
    file.write_text('[budgets.daily]\nper = "identity"\nlimit = 5000\nwindow = "day"\n\n[budgets.team-a]\nper = "metadata.team"\nmatch = "a"\nlimit = 3000\nwindow = "1d"\n')
    loaded = await acli("budgets", "load", str(file), "--by", "bob", dsn=dsn)
    assert loaded.returncode == 0, loaded
    names = {use["budget"]: use for use in json.loads((await acli("budgets", "--json", dsn=dsn)).stdout)}
    assert set(names) == {"daily", "team-a"} and names["team-a"]["limit"] == 3000 and names["team-a"]["reserve_per_run"] == 0
    removed = await acli("budgets", "rm", "daily", dsn=dsn)
    assert removed.returncode == 0, removed
    async with projected.session() as session:
        changes = [(c.name, c.action, c.by) for c in await session.budgets.changes()]
    assert changes[0][:2] == ("daily", "remove") and changes[0][2]  # the OS user
    assert changes[1:4] == [("team-a", "set", "bob"), ("daily", "set", "bob"), ("team-a", "set", "alice")]
    for found in await budget_use.defined(projected):
        await budget_use.remove(projected, found.name, by="test")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "x", "--per", "identity", "--limit", "0", "--window", "1d"], "budget x: limit must be a positive number"),
        (["set", "x", "--per", "tenant", "--limit", "10", "--window", "1d"], "per must be identity, user.<field> or metadata.<key>"),
        (["set", "x", "--per", "identity", "--limit", "10", "--window", "fortnight"], "window must be day, month"),
        (["set", "x", "--per", "identity", "--limit", "ten", "--window", "1d"], "limit must be a number"),
        (["set", "x", "--per", "identity", "--window", "1d"], "limit is required"),
        (["set", "--per", "identity", "--limit", "10", "--window", "1d"], "budgets set needs a budget NAME"),
        (["set", "bad name", "--per", "identity", "--limit", "10", "--window", "1d"], "budget name 'bad name'"),
        (["rm", "ghost"], "there is no budget named 'ghost'"),
        (["rm"], "budgets rm needs a budget NAME"),
        (["list", "--per", "identity"], "--per does not apply to budgets list"),
        (["refusals", "--limit", "5"], "--limit does not apply to budgets refusals"),
        (["refusals", "--since", "2026-11-02", "--until", "2026-11-01"], "must be earlier than --until"),
        (["load", "/nonexistent/budgets.toml"], "cannot read budget file /nonexistent/budgets.toml"),
    ],
)
async def test_bad_input_is_one_line_and_exit_1(dsn: str, args: list[str], message: str) -> None:
    result = await acli("budgets", *args, dsn=dsn)
    assert result.returncode == 1, result
    assert message in one_error_line(result)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[budgets.daily\n", "budgets.toml: not TOML"),
        ('[budgets.daily]\nper = "identity"\nlimit = 10\n', "budgets.toml: budget daily: window is required"),
        ('[budgets.daily]\nper = "identity"\nlimit = 10\nwindow = "1d"\ncolor = "red"\n', "unknown field 'color'"),
        ('[budgets.ok]\nper = "identity"\nlimit = 10\nwindow = "1d"\n[budgets.bad]\nper = "identity"\nlimit = -1\nwindow = "1d"\n', "budget bad: limit"),
        ("[teams]\n", 'expected only a "budgets" table'),
    ],
)
async def test_a_bad_budget_file_is_one_line_and_changes_nothing(dsn: str, projected: Ledger, tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "budgets.toml"
    file.write_text(text)
    result = await acli("budgets", "load", str(file), dsn=dsn)
    assert result.returncode == 1 and message in one_error_line(result), result
    assert await budget_use.defined(projected) == []
    bad_json = tmp_path / "budgets.json"
    bad_json.write_text('{"budgets": ')
    result = await acli("budgets", "load", str(bad_json), dsn=dsn)
    assert result.returncode == 1 and "budgets.json: not JSON" in one_error_line(result)
