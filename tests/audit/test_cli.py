"""The ``graphledger`` command as a user runs it: the audit and inspection commands (export, verify, replay,
runs, show), and what every command does with a bad database URL or with no ledger where it looks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from graphledger.audit import counted
from graphledger.cli import parser
from graphledger.embedded import EmbeddedPostgres
from graphledger.ledger import Ledger
from tests.acceptance.test_serve import free_port
from tests.audit.conftest import Recorded
from tests.conftest import with_database
from tests.http.conftest import serve
from tests.http.test_auth import ALICE, ALICE_ACTOR, make_app

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


NO_RUN = "00000000-0000-0000-0000-000000000000"


def cli(*args: str, dsn: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``graphledger ARGS`` in a child process; without DATABASE_URL, so that only what the test passes counts."""
    flags = ["--database-url", dsn] if dsn else []
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "graphledger.cli", *args, *flags], capture_output=True, timeout=120, cwd=cwd, env=env
    )


async def acli(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """:func:`cli` from an async test, without blocking the event loop its fixtures run on."""
    return await asyncio.to_thread(cli, *args, dsn=dsn)


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode(), result.stderr.decode()
    return lines[0]


async def test_export_then_verify_offline_and_a_flipped_byte_is_named(dsn: str, recorded: Recorded, tmp_path: Path) -> None:
    out = tmp_path / "thread.ndjson"
    result = await acli("export", "--thread", str(recorded.thread_id), "--out", str(out), dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "thread.ndjson.partial").exists()
    verified = await acli("verify", str(out))  # no database at all
    assert verified.returncode == 0 and b"ok: 3 runs" in verified.stdout, verified
    lines = out.read_bytes().splitlines(keepends=True)
    target = len(lines) // 2
    changed = bytearray(lines[target])
    changed[len(changed) // 2] ^= 0x01
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b"".join([*lines[:target], bytes(changed), *lines[target + 1 :]]))
    failed = await acli("verify", str(bad))
    assert failed.returncode == 1 and f"line {target + 1}:" in one_error_line(failed)
    to_stdout = await acli("export", "--thread", str(recorded.thread_id), dsn=dsn)
    assert to_stdout.returncode == 0 and to_stdout.stdout.splitlines()[1:] == out.read_bytes().splitlines()[1:]


async def test_verify_against_the_database(dsn: str, recorded: Recorded) -> None:
    one = await acli("verify", "--run", str(recorded.runs[0].run_id), dsn=dsn)
    assert one.returncode == 0 and b"ok: 1 run, " in one.stdout, one
    every = await acli("verify", "--all", dsn=dsn)
    assert every.returncode == 0 and b"every hash chain intact" in every.stdout, every


SETTLED_PROBE = """
import gc, sys
from graphledger.cli import main
code = main(sys.argv[1:])
print(gc.get_threshold()[0], gc.get_freeze_count() > 0, code)
"""


@pytest.mark.parametrize(("command", "settled"), [(["verify", "--all"], True), (["runs"], False)])
async def test_a_command_over_the_whole_log_settles_its_process_first(
    dsn: str, recorded: Recorded, command: list[str], settled: bool
) -> None:
    """verify, export, rebuild, replay and checkpoint run as serve does once started (``graphledger.process.settle``)."""
    from graphledger.process import YOUNG_THRESHOLD

    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", SETTLED_PROBE, *command, "--database-url", dsn], capture_output=True, timeout=120
    )
    threshold, frozen, code = result.stdout.decode().split()[-3:]
    assert code == "0", result.stderr.decode()
    assert (int(threshold) == YOUNG_THRESHOLD, frozen == "True") == (settled, settled)


async def test_runs_and_show_as_tables_and_json(dsn: str, recorded: Recorded, ledger: Ledger) -> None:
    listed = await acli("runs", "--thread", str(recorded.thread_id), "--json", dsn=dsn)
    runs = json.loads(listed.stdout)
    assert [r["run_id"] for r in runs] == [str(r.run_id) for r in reversed(recorded.runs)]  # newest first
    assert [r["status"] for r in runs] == ["error", "success", "success"] and runs[1]["total_tokens"] > 0
    failed_only = json.loads((await acli("runs", "--status", "error", "--thread", str(recorded.thread_id), "--json", dsn=dsn)).stdout)
    assert [r["run_id"] for r in failed_only] == [str(recorded.runs[2].run_id)]
    table = (await acli("runs", "--thread", str(recorded.thread_id), dsn=dsn)).stdout.decode()
    assert table.splitlines()[0].split() == ["RUN", "THREAD", "ASSISTANT", "STATUS", "TOKENS", "DURATION", "CREATED"]
    assert all(str(r.run_id) in table for r in recorded.runs)
    shown = json.loads((await acli("show", str(recorded.runs[0].run_id), "--json", dsn=dsn)).stdout)
    assert shown["status"] == "success" and shown["chain_ok"] and shown["tokens"]["calls"] == 2
    assert list(shown["by_model"]) == ["graphledger-demo-1"] and [m["type"] for m in shown["messages"]] == ["human", "ai", "tool", "ai"]
    assert shown["events"] == len(await ledger.read_run(recorded.runs[0]))
    text = (await acli("show", str(recorded.runs[2].run_id), dsn=dsn)).stdout.decode()
    assert "error       RuntimeError: model down" in text and "tokens:" in text


async def test_show_prints_who_created_the_run(dsn: str, recorded: Recorded) -> None:
    async with serve(make_app(dsn)) as url, httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as alice:
        answer = await alice.post("/runs/wait", json={"assistant_id": "whoami", "input": {}})
    assert answer.status_code == 200, answer.text
    run_id = answer.headers["content-location"].rsplit("/", 1)[1]
    text = (await acli("show", run_id, dsn=dsn)).stdout.decode()
    assert "created by  alice (chat)\n" in text
    assert json.loads((await acli("show", run_id, "--json", dsn=dsn)).stdout)["created_by"] == ALICE_ACTOR
    anonymous = (await acli("show", str(recorded.runs[0].run_id), dsn=dsn)).stdout.decode()
    assert "created by  -\n" in anonymous  # recorded without authentication
    assert json.loads((await acli("show", str(recorded.runs[0].run_id), "--json", dsn=dsn)).stdout)["created_by"] is None


async def test_replay_prints_a_timeline_or_the_stream(dsn: str, recorded: Recorded, ledger: Ledger) -> None:
    events = await ledger.read_run(recorded.runs[0])
    timeline = await acli("replay", str(recorded.runs[0].run_id), dsn=dsn)
    lines = timeline.stdout.decode().splitlines()
    assert len(lines) == len(events) and "run.created" in lines[0] and "run.succeeded" in lines[-1]
    names = [line.split()[2] for line in lines]
    assert names == [e.kind.removeprefix("stream:") for e in events]  # in order, one line each
    assert all(len(line) <= 100 for line in lines)
    paced = await acli("replay", str(recorded.runs[0].run_id), "--speed", "1000", dsn=dsn)
    assert paced.returncode == 0 and paced.stdout == timeline.stdout
    sse = (await acli("replay", str(recorded.runs[0].run_id), "--sse", dsn=dsn)).stdout.decode()
    requested = events[0].value["stream_mode"]
    carried = [e for e in events if e.kind == "run.created" or e.kind.partition(":")[2] in requested]
    assert sse.startswith("event: metadata\ndata: ") and sse.count("\nid: ") == len(carried)
    assert [int(line[4:]) for line in sse.splitlines() if line.startswith("id: ")] == [e.seq for e in carried]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["export", "--run", "not-a-uuid"], 2, "is not a UUID"),
        (["export", "--run", "00000000-0000-0000-0000-000000000000", "--database-url", "{dsn}"], 1, "not found"),
        (["export", "--database-url", "{dsn}"], 1, "say what to export"),
        (["export", "--since", "yesterday"], 2, "ISO 8601"),
        (["export", "--thread", "00000000-0000-0000-0000-000000000000", "--database-url", UNREACHABLE], 1, "error"),
        (["verify", "/nonexistent/file.ndjson"], 1, "cannot read"),
        (["verify", "x.ndjson", "--all", "--database-url", "{dsn}"], 1, "verify one of"),
        (["replay", "00000000-0000-0000-0000-000000000000", "--database-url", "{dsn}"], 1, "not found"),
        (["replay", "00000000-0000-0000-0000-000000000000", "--speed", "0"], 2, "positive number"),
        (["show", "00000000-0000-0000-0000-000000000000", "--database-url", "{dsn}"], 1, "not found"),
        (["runs", "--status", "bogus"], 2, "invalid choice"),
        (["runs", "--limit", "many"], 2, "is not a whole number"),
        (["runs", "--since", "2026-12-01", "--until", "2026-11-01", "--database-url", "{dsn}"], 1, "must be earlier than --until"),
        (["export", "--since", "2026-12-01", "--until", "2026-12-01"], 1, "must be earlier than --until"),
        (["serve", "--port", "70000"], 2, "not a port number"),
        (["no-such-command"], 2, "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_a_non_zero_exit(dsn: str, args: list[str], code: int, words: str) -> None:
    result = cli(*(a.format(dsn=dsn) for a in args))
    assert result.returncode == code, result
    assert words in one_error_line(result)


def bad_urls(server_dsn: str) -> dict[str, tuple[str, str]]:
    """Each wrong database URL a user may give, and what its error must say."""
    parts = urlsplit(server_dsn)
    host = parts.netloc.rpartition("@")[2]
    wrong_password = urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-password@{host}"))
    return {
        "not a URL": ("not-a-url", "is not a PostgreSQL URL"),
        "another database system": ("mysql://user:secret@127.0.0.1:3306/ledger", "is not a PostgreSQL URL"),
        "wrong password": (wrong_password, "password authentication failed"),
        "missing database": (with_database(server_dsn, "graphledger_no_such_database"), 'database "graphledger_no_such_database" does not exist'),
        "nothing listening": ("postgresql://nobody@127.0.0.1:1/none", "cannot connect to postgresql://nobody@127.0.0.1:1/none"),
    }


DATABASE_COMMANDS = {
    "runs": ["runs"],
    "show": ["show", NO_RUN],
    "export": ["export", "--thread", NO_RUN],
    "verify --all": ["verify", "--all"],
    "verify --run": ["verify", "--run", NO_RUN],
    "replay": ["replay", NO_RUN],
    "rebuild": ["rebuild"],
    "access-log": ["access-log"],
    "migrate": ["migrate"],
    "serve": ["serve", "--port", "{port}"],
}


@pytest.mark.parametrize("form", ["not a URL", "another database system", "wrong password", "missing database", "nothing listening"])
@pytest.mark.parametrize("command", list(DATABASE_COMMANDS))
async def test_a_bad_database_url_is_one_line_for_every_command(server_dsn: str, command: str, form: str) -> None:
    url, words = bad_urls(server_dsn)[form]
    if form == "wrong password":
        try:
            await (await asyncpg.connect(url)).close()
        except asyncpg.InvalidPasswordError:
            pass
        else:
            pytest.skip("this test server accepts any password")
    args = [a.format(port=free_port()) for a in DATABASE_COMMANDS[command]]
    result = await acli(*args, dsn=url)
    assert result.returncode == 1, result
    line = one_error_line(result)
    assert line.startswith("graphledger: error: ") and words in line
    assert "not-the-password" not in line and "secret" not in line, "passwords are not printed"


async def test_a_bad_url_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://user@db/ledger"}
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "graphledger.cli", "runs"], capture_output=True, timeout=120, env=env, cwd=tmp_path
    )
    assert result.returncode == 1 and "DATABASE_URL 'mysql://user@db/ledger' is not a PostgreSQL URL" in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


READ_COMMANDS = {name: args for name, args in DATABASE_COMMANDS.items() if name not in ("serve", "migrate")}


@pytest.mark.parametrize("command", list(READ_COMMANDS))
async def test_a_read_command_where_there_is_no_ledger_creates_nothing(command: str, tmp_path: Path) -> None:
    result = await asyncio.to_thread(cli, *READ_COMMANDS[command], cwd=tmp_path)
    assert result.returncode == 1, result
    line = one_error_line(result)
    assert str(tmp_path / ".graphledger") in line, "it says where it looked"
    assert all(way in line for way in ("--data-dir", "--database-url", "DATABASE_URL")), "and how to look elsewhere"
    elsewhere = tmp_path / "elsewhere"
    result = await asyncio.to_thread(cli, *READ_COMMANDS[command], "--data-dir", str(elsewhere), cwd=tmp_path)
    assert result.returncode == 1 and str(elsewhere) in one_error_line(result)
    assert list(tmp_path.iterdir()) == [], "no data directory, no cluster"


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A data directory for an embedded cluster of the test's own, reachable by the server's unprivileged user."""
    root = Path(tempfile.mkdtemp(prefix="graphledger-tests-cli-"))
    root.chmod(0o755)
    yield root / "ledger"
    leftover = EmbeddedPostgres(root / "ledger")
    if leftover.running():
        leftover.stop()
    shutil.rmtree(root, ignore_errors=True)


async def test_db_url_prints_the_embedded_url_and_read_commands_are_quiet(embedded_dir: Path, tmp_path: Path) -> None:
    missing = await asyncio.to_thread(cli, "db-url", "--data-dir", str(embedded_dir))
    assert missing.returncode == 1 and f"no embedded PostgreSQL cluster in {embedded_dir}" in one_error_line(missing)
    missing_here = await asyncio.to_thread(cli, "db-url", cwd=tmp_path)
    assert missing_here.returncode == 1 and str(tmp_path / ".graphledger") in one_error_line(missing_here)
    assert not embedded_dir.exists() and list(tmp_path.iterdir()) == [], "db-url creates nothing"

    migrated = await asyncio.to_thread(cli, "migrate", "--data-dir", str(embedded_dir))
    assert migrated.returncode == 0, migrated
    printed = await asyncio.to_thread(cli, "db-url", "--data-dir", str(embedded_dir))
    assert printed.returncode == 0, printed
    url = printed.stdout.decode().strip()
    assert url == EmbeddedPostgres(embedded_dir).recorded_dsn() and url.startswith("postgresql://graphledger:")
    assert "not running" in one_error_line(printed), "migrate stopped the server on exit, and db-url says so"

    listed = await asyncio.to_thread(cli, "runs", "--data-dir", str(embedded_dir))
    assert listed.returncode == 0 and listed.stderr == b"", "a read command logs nothing when all is well"
    assert listed.stdout.decode().split() == ["RUN", "THREAD", "ASSISTANT", "STATUS", "TOKENS", "DURATION", "CREATED"]

    server = EmbeddedPostgres(embedded_dir)
    assert server.start() == url, "the printed URL stays valid across restarts"
    try:
        conn = await asyncpg.connect(url)
        await conn.close()
        running = await asyncio.to_thread(cli, "db-url", "--data-dir", str(embedded_dir))
        assert running.stdout.decode().strip() == url and running.stderr == b""
    finally:
        server.stop()


async def test_read_commands_are_quiet_on_a_database_url(dsn: str) -> None:
    for args in (["runs"], ["verify", "--all"]):
        result = await acli(*args, dsn=dsn)
        assert result.returncode == 0 and result.stderr == b"", result


def subcommands() -> dict[str, argparse.ArgumentParser]:
    top = parser()
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_and_argument_has_help() -> None:
    top = parser()
    missing = [f"graphledger {a.option_strings or a.dest}" for a in top._actions if not a.help]
    for name, sub in subcommands().items():
        missing += [f"graphledger {name} {'/'.join(a.option_strings) or a.dest}" for a in sub._actions if not a.help]
    assert missing == []


def test_counts_agree_with_their_nouns() -> None:
    assert [counted(n, "run") for n in (0, 1, 2, 1204)] == ["0 runs", "1 run", "2 runs", "1,204 runs"]
    assert counted(1, "LLM call") == "1 LLM call"


@pytest.mark.parametrize("command", ["export", "verify", "replay", "runs", "show", "db-url", "serve", "migrate", "rebuild"])
def test_every_command_explains_itself_with_examples(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0 and b"examples:" in result.stdout


async def test_a_reader_that_goes_away_stops_the_command_quietly(dsn: str, recorded: Recorded) -> None:
    def run() -> tuple[int, bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "graphledger.cli", "replay", str(recorded.runs[0].run_id), "--database-url", dsn],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # like `| head` that has read enough: nobody reads what follows
        with child.stderr:
            error = child.stderr.read()
        return child.wait(timeout=120), error

    code, error = await asyncio.to_thread(run)
    assert code == 141 and b"Traceback" not in error and b"BrokenPipe" not in error, error


async def test_access_log_lists_reads_filters_them_and_verifies_its_chain(dsn: str) -> None:
    async with await Ledger.connect(dsn, tail=False) as ledger:
        for who, action in (("alice", "export"), ("bob", "events.read"), ("alice", "run.verify")):
            async with ledger.transaction() as tx:
                await tx.access.record(actor={"identity": who}, action=action, resource={"run_id": "r1"}, client="10.0.0.7")
    listed = json.loads((await acli("access-log", "--json", "--identity", "alice", dsn=dsn)).stdout)
    assert [e["action"] for e in listed][:2] == ["run.verify", "export"]
    assert all(e["actor"]["identity"] == "alice" and e["client"] == "10.0.0.7" for e in listed)
    table = await acli("access-log", "--verify", dsn=dsn)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert "WHO" in text and "bob" in text and "events.read" in text and "run_id=r1" in text
    assert table.stderr.decode().startswith("ok: the access log's chain holds (")
    bad = await acli("access-log", "--since", "2026-11-02", "--until", "2026-11-01", dsn=dsn)
    assert bad.returncode != 0 and "--since" in one_error_line(bad)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_append_only")
        await conn.execute("DELETE FROM access_log WHERE position = (SELECT min(position) FROM access_log)")
        await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_append_only")
    finally:
        await conn.close()
    broken = await acli("access-log", "--verify", dsn=dsn)
    assert broken.returncode == 1 and "access log broken at entry 1" in one_error_line(broken)
