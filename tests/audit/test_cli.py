"""The audit and inspection commands as a user runs them: export, verify, replay, runs, show."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphledger.ledger import Ledger
from tests.audit.conftest import Recorded

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def cli(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[bytes]:
    flags = ["--database-url", dsn] if dsn else []
    return subprocess.run([sys.executable, "-m", "graphledger.cli", *args, *flags], capture_output=True, timeout=120)


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
    assert one.returncode == 0 and b"ok: 1 runs" in one.stdout, one
    every = await acli("verify", "--all", dsn=dsn)
    assert every.returncode == 0 and b"every hash chain intact" in every.stdout, every


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
    ],
)
def test_bad_input_gets_one_line_and_a_non_zero_exit(dsn: str, args: list[str], code: int, words: str) -> None:
    result = cli(*(a.format(dsn=dsn) for a in args))
    assert result.returncode == code, result
    assert words in result.stderr.decode().strip().splitlines()[-1]
    if code == 1:
        one_error_line(result)


@pytest.mark.parametrize("command", ["export", "verify", "replay", "runs", "show"])
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
