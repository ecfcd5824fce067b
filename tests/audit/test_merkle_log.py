"""Signed checkpoints catch what per-run chains cannot: the database tampered with its triggers off.

Each test records runs, signs a checkpoint, then alters the database as its
owner can (``session_replication_role = replica`` switches every trigger
off, the append-only one and the foreign keys), keeping every run's chain and
head consistent, so that ``verify --all`` alone finds nothing. ``verify --all
--checkpoint OLD --key PUB`` must fail, one line on stderr, and name the change.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunRef, chain
from graphledger.ledger.note import Checkpoint, Signer
from tests.audit.test_cli import acli, one_error_line
from tests.conftest import drop_database, fresh_database, with_database


@pytest.fixture
async def fresh(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A database of its own for each test: every test here breaks its log."""
    name = await fresh_database(server_dsn, template_db)
    yield with_database(server_dsn, name)
    await drop_database(server_dsn, name)


async def record(ledger: Ledger, runs: int = 4, events: int = 3) -> list[RunRef]:
    refs = []
    for _ in range(runs):
        thread = await ledger.create_thread()
        created = await ledger.create_run(thread, payload={"input": "hi"})
        refs.append(RunRef(thread, created.run_id))
    for i in range(events):
        for ref in refs:
            await ledger.append(ref, "stream:messages", [{"content": f"token {i}"}])
    for ref in refs:
        await ledger.append(ref, "run.succeeded", {})
    return refs


async def rechain(conn: asyncpg.Connection, run_id: UUID) -> None:
    """Recompute a run's chain and head from its (altered) events, as an attacker would."""
    rows = await conn.fetch("SELECT thread_id, seq, kind, data, ts FROM events WHERE run_id = $1 ORDER BY seq", run_id)
    previous = chain.GENESIS
    for row in rows:
        previous = chain.link(previous, row["thread_id"], run_id, row["seq"], row["kind"], row["ts"], row["data"])
        await conn.execute("UPDATE events SET hash = $1 WHERE run_id = $2 AND seq = $3", previous, run_id, row["seq"])
    last = rows[-1]
    await conn.execute(
        "UPDATE runs SET last_seq = $1, last_hash = $2, last_kind = $3, thread_id = $4 WHERE run_id = $5",
        last["seq"], previous, last["kind"], last["thread_id"], run_id,
    )


async def delete_run(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    await conn.execute("DELETE FROM events WHERE run_id = $1", refs[1].run_id)
    await conn.execute("DELETE FROM runs WHERE run_id = $1", refs[1].run_id)
    return f"run {refs[1].run_id} (thread {refs[1].thread_id}) was deleted"


async def cut_tail(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    await conn.execute("DELETE FROM events WHERE run_id = $1 AND seq > 2", refs[2].run_id)
    await rechain(conn, refs[2].run_id)
    return f"run {refs[2].run_id} was cut: its events from seq 3 on"


async def rewrite_run(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    await conn.execute("""UPDATE events SET data = '["rewritten"]' WHERE run_id = $1 AND seq > 1""", refs[0].run_id)
    await rechain(conn, refs[0].run_id)
    return f"run {refs[0].run_id} was rewritten from seq 2"


async def reorder(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    a = await conn.fetchval("SELECT tx FROM events WHERE run_id = $1 AND seq = 2", refs[0].run_id)
    b = await conn.fetchval("SELECT tx FROM events WHERE run_id = $1 AND seq = 2", refs[3].run_id)
    await conn.execute("UPDATE events SET tx = $1 WHERE run_id = $2 AND seq = 2", b, refs[0].run_id)
    await conn.execute("UPDATE events SET tx = $1 WHERE run_id = $2 AND seq = 2", a, refs[3].run_id)
    return "was reordered"


async def insert_into_old_run(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    run = refs[1].run_id
    await conn.execute("UPDATE events SET seq = seq + 1000 WHERE run_id = $1 AND seq >= 3", run)
    await conn.execute("UPDATE events SET seq = seq - 999 WHERE run_id = $1 AND seq > 1000", run)
    await conn.execute(
        """INSERT INTO events (thread_id, run_id, seq, kind, data, ts, tx, hash)
           SELECT thread_id, run_id, 3, kind, '["slipped in"]', ts, tx, hash FROM events WHERE run_id = $1 AND seq = 2""",
        run,
    )
    await rechain(conn, run)
    return f"run {run} was rewritten from seq 3"


async def insert_in_the_past(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    thread, run = refs[0].thread_id, uuid4()
    tx = await conn.fetchval("SELECT tx FROM events WHERE run_id = $1 AND seq = 1", refs[0].run_id)
    await conn.execute("INSERT INTO runs (thread_id, run_id, status) VALUES ($1, $2, 'success')", thread, run)
    for seq, kind in ((1, "run.created"), (2, "run.succeeded")):
        await conn.execute(
            "INSERT INTO events (thread_id, run_id, seq, kind, data, ts, tx, hash) VALUES ($1, $2, $3, $4, '{}', now(), $5, $6)",
            thread, run, seq, kind, tx, bytes(32),
        )
    await rechain(conn, run)
    return f"run {run} seq 1 was inserted in the past"


async def move_run(conn: asyncpg.Connection, refs: list[RunRef]) -> str:
    await conn.execute("UPDATE events SET thread_id = $1 WHERE run_id = $2", refs[0].thread_id, refs[3].run_id)
    await rechain(conn, refs[3].run_id)
    return f"run {refs[3].run_id} was moved from thread {refs[3].thread_id} to thread {refs[0].thread_id}"


TAMPERS: dict[str, Callable[[asyncpg.Connection, list[RunRef]], Awaitable[str]]] = {
    "a whole run deleted": delete_run,
    "a run's tail cut, head rolled back": cut_tail,
    "a run rewritten, chain recomputed": rewrite_run,
    "events reordered": reorder,
    "an event inserted into an old run": insert_into_old_run,
    "a run inserted in the past": insert_in_the_past,
    "a run moved to another thread": move_run,
}


async def keys(tmp_path: Path) -> tuple[Path, Path]:
    result = await acli("keygen", "--out", str(tmp_path / "keys"), "--name", "test.example/ledger")
    assert result.returncode == 0, result.stderr
    return tmp_path / "keys" / "ledger.key", tmp_path / "keys" / "ledger.pub"


@pytest.mark.parametrize("tamper", list(TAMPERS))
async def test_tampering_under_a_checkpoint_is_caught_and_named(fresh: str, tmp_path: Path, tamper: str) -> None:
    private, public = await keys(tmp_path)
    async with await Ledger.connect(fresh, tail=False) as ledger:
        refs = await record(ledger)
        signed = await acli("checkpoint", "--key", str(private), "--out", str(tmp_path / "old"), dsn=fresh)
        assert signed.returncode == 0, signed.stderr
        await record(ledger, runs=2)  # the log grows after the checkpoint: still an extension
    good = await acli("verify", "--all", "--checkpoint", str(tmp_path / "old"), "--key", str(public), dsn=fresh)
    assert good.returncode == 0 and b"extends the checkpoint of 20 events" in good.stdout, good.stdout.decode()

    conn = await asyncpg.connect(fresh)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            words = await TAMPERS[tamper](conn, refs)
    finally:
        await conn.close()

    plain = await acli("verify", "--all", dsn=fresh)
    if tamper != "a run moved to another thread":  # seq continuity and heads hold: per-run chains see nothing
        assert plain.returncode == 0, plain
    caught = await acli("verify", "--all", "--checkpoint", str(tmp_path / "old"), "--key", str(public), dsn=fresh)
    assert caught.returncode == 1, caught
    assert "does not extend the checkpoint of 20 events" in one_error_line(caught)
    assert words in caught.stdout.decode(), caught.stdout.decode()


async def test_keys_and_checkpoint_commands(fresh: str, tmp_path: Path) -> None:
    private, public = await keys(tmp_path)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    again = await acli("keygen", "--out", str(tmp_path / "keys"))
    assert again.returncode == 1 and "never overwritten" in one_error_line(again)
    printed = await acli("checkpoint", "--key", str(private), "--checkpoint-dir", str(tmp_path / "copies"), dsn=fresh)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.decode().split("\n")
    assert lines[:2] == ["test.example/ledger", "0"] and lines[3].startswith("time ") and lines[5].startswith("\u2014 test.example/ledger ")
    assert [p.read_bytes() for p in (tmp_path / "copies").iterdir()] == [printed.stdout]
    other = tmp_path / "other"
    await acli("keygen", "--out", str(other), "--name", "test.example/ledger")
    (tmp_path / "cp").write_bytes(printed.stdout)
    wrong = await acli("verify", "--all", "--checkpoint", str(tmp_path / "cp"), "--key", str(other / "ledger.pub"), dsn=fresh)
    assert wrong.returncode == 1 and "carries no signature of key" in one_error_line(wrong)
    edited = tmp_path / "edited"
    edited.write_bytes(printed.stdout.replace(b"\n0\n", b"\n1\n", 1))
    forged = await acli("verify", "--all", "--checkpoint", str(edited), "--key", str(public), dsn=fresh)
    assert forged.returncode == 1 and "does not verify" in one_error_line(forged)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["verify", "--all", "--checkpoint", "x"], 1, "needs --key"),
        (["verify", "--run", "00000000-0000-0000-0000-000000000000", "--checkpoint", "x", "--key", "y"], 1, "goes with --all"),
        (["checkpoint", "--key", "/nonexistent/ledger.key"], 1, "cannot read the signing key"),
        (["export", "--run", "00000000-0000-0000-0000-000000000000", "--checkpoint-dir", "{tmp}"], 1, "--checkpoint-dir needs --key"),
        (["export", "--run", "00000000-0000-0000-0000-000000000000", "--key", "/nonexistent/ledger.key"], 1, "cannot read the signing key"),
        (["checkpoint"], 2, "required"),
        (["keygen", "--out", "{tmp}", "--name", "has space"], 1, "without spaces"),
    ],
)
async def test_bad_merkle_arguments_get_one_line(fresh: str, tmp_path: Path, args: list[str], code: int, words: str) -> None:
    result = await acli(*(a.format(tmp=tmp_path) for a in args), dsn=fresh if code == 1 and args[0] != "keygen" else None)
    assert result.returncode == code, result
    assert words in one_error_line(result)



async def test_a_checkpoint_whose_copies_cannot_be_written_is_refused_before_it_is_signed(fresh: str, tmp_path: Path) -> None:
    private, _ = await keys(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for args, words in (
        (["--checkpoint-dir", str(a_file / "copies")], "cannot use --checkpoint-dir"),
        (["--out", str(tmp_path / "missing" / "checkpoint")], "cannot write --out"),
        (["--out", str(tmp_path)], "cannot write --out"),
    ):
        refused = await acli("checkpoint", "--key", str(private), *args, dsn=fresh)
        assert refused.returncode == 1 and words in one_error_line(refused), (args, refused)
    conn = await asyncpg.connect(fresh)
    try:
        assert await conn.fetchval("SELECT count(*) FROM checkpoints") == 0  # nothing signed, so no copy missing
    finally:
        await conn.close()


def resealed(record: dict[str, object]) -> bytes:
    from graphledger.ledger.export import sealed

    record.pop("sha256", None)
    return (sealed(record) + "\n").encode()


def edited_consistently(lines: list[bytes]) -> list[bytes]:
    """The export with one run's payloads changed and everything a chain and a seal cover recomputed."""
    records = [json.loads(line) for line in lines]
    events = [r for r in records if r["type"] == "event"]
    run = events[0]["run_id"]
    previous = chain.GENESIS
    for r in events:
        if r["run_id"] != run:
            continue
        if r["seq"] > 1 and r["kind"].startswith("stream:"):
            r["data"] = '["edited"]'
        previous = chain.link_with(previous, chain.run_prefix(UUID(r["thread_id"]), UUID(run)), r["seq"], r["kind"], r["ts"], r["data"])
        r["hash"] = previous.hex()
    trailer = records[-1]
    for entry in trailer["runs"]:
        if entry["run_id"] == run:
            entry["last_hash"] = previous.hex()
            entry["first_hash"] = next(r["hash"] for r in events if r["run_id"] == run)
    out = [resealed(records[0])]
    out += [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records[1:-1]]
    return [*out, resealed(trailer)]


async def test_an_export_proves_its_events_in_the_signed_checkpoint(fresh: str, tmp_path: Path) -> None:
    private, public = await keys(tmp_path)
    async with await Ledger.connect(fresh, tail=False) as ledger:
        refs = await record(ledger, runs=3, events=40)
        unsigned = tmp_path / "before.ndjson"
        await acli("export", "--thread", str(refs[1].thread_id), "--out", str(unsigned), dsn=fresh)
        no_proof = await acli("verify", str(unsigned), "--key", str(public))
        assert no_proof.returncode == 1 and "no signed checkpoint" in one_error_line(no_proof)
        assert (await acli("verify", str(unsigned))).returncode == 0  # without a key: chains only, as before
        assert (await acli("checkpoint", "--key", str(private), dsn=fresh)).returncode == 0
        await record(ledger, runs=1)  # newer than the checkpoint
    out = tmp_path / "run.ndjson"
    assert (await acli("export", "--thread", str(refs[1].thread_id), "--out", str(out), dsn=fresh)).returncode == 0
    verified = await acli("verify", str(out), "--key", str(public))
    assert verified.returncode == 0, verified
    assert b"42 events proven in the log's tree of 126 events" in verified.stdout and b"signed by test.example/ledger" in verified.stdout

    lines = out.read_bytes().splitlines(keepends=True)
    edited = tmp_path / "edited.ndjson"
    edited.write_bytes(b"".join(edited_consistently(lines)))
    assert (await acli("verify", str(edited))).returncode == 1  # the proofs are checked even without a key
    caught = await acli("verify", str(edited), "--key", str(public))
    assert caught.returncode == 1 and "line 3: the event is not proven to be leaf" in one_error_line(caught), caught

    stripped = [json.loads(line) for line in lines]
    for r in stripped[1:-1]:
        r["leaf"], r["proof"] = None, []
    bare = tmp_path / "bare.ndjson"
    bare.write_bytes(b"".join([lines[0], *(json.dumps(r).encode() + b"\n" for r in stripped[1:-1]), lines[-1]]))
    assert (await acli("verify", str(bare))).returncode == 0
    unproven = await acli("verify", str(bare), "--key", str(public))
    assert unproven.returncode == 1 and "not in the checkpoint's tree" in one_error_line(unproven)


async def test_export_with_the_key_signs_a_checkpoint_that_proves_every_event(fresh: str, tmp_path: Path) -> None:
    private, public = await keys(tmp_path)
    async with await Ledger.connect(fresh, tail=False) as ledger:
        await record(ledger, runs=2)
        assert (await acli("checkpoint", "--key", str(private), dsn=fresh)).returncode == 0
        (newer,) = await record(ledger, runs=1)  # 5 events the checkpoint does not cover
    plain = tmp_path / "plain.ndjson"
    unsigned = await acli("export", "--run", str(newer.run_id), "--out", str(plain), dsn=fresh)
    assert unsigned.returncode == 0 and "5 events of the export are newer than its signed checkpoint" in unsigned.stderr.decode()
    assert "--key ledger.key" in unsigned.stderr.decode()
    assert json.loads(plain.read_bytes().splitlines()[0])["unproven"] == 5
    chains_only = await acli("verify", str(plain))
    assert chains_only.returncode == 0 and b"note: 5 events without a proof" in chains_only.stdout, chains_only
    refused = await acli("verify", str(plain), "--key", str(public))
    assert refused.returncode == 1 and "graphledger export --key ledger.key" in one_error_line(refused)

    copies = tmp_path / "copies"
    proven = tmp_path / "proven.ndjson"
    signed = await acli("export", "--run", str(newer.run_id), "--key", str(private), "--checkpoint-dir", str(copies), "--out", str(proven), dsn=fresh)
    assert signed.returncode == 0 and b"warning" not in signed.stderr, signed.stderr
    header = json.loads(proven.read_bytes().splitlines()[0])
    assert header["unproven"] == 0 and header["checkpoint"].split("\n")[1] == "15"  # the whole log, grown and signed now
    assert [p.read_text() for p in copies.iterdir()] == [header["checkpoint"]]
    verified = await acli("verify", str(proven), "--key", str(public))
    assert verified.returncode == 0 and b"5 events proven in the log's tree of 15 events" in verified.stdout, verified
    assert b"note:" not in verified.stdout

    conn = await asyncpg.connect(fresh)
    try:
        count = await conn.fetchval("SELECT count(*) FROM checkpoints")
        again = await acli("export", "--run", str(newer.run_id), "--key", str(private), "--checkpoint-dir", str(copies), dsn=fresh)
        assert again.returncode == 0 and await conn.fetchval("SELECT count(*) FROM checkpoints") == count  # covered: none signed
        other, _ = await keys(tmp_path / "other")
        by_other = await acli("export", "--run", str(newer.run_id), "--key", str(other), dsn=fresh)
        assert by_other.returncode == 0 and await conn.fetchval("SELECT count(*) FROM checkpoints") == count + 1  # not our key's
    finally:
        await conn.close()


def test_a_version_1_export_still_verifies(tmp_path: Path) -> None:
    from graphledger.ledger.export import verify_lines

    thread, run = uuid4(), uuid4()
    prefix = chain.run_prefix(thread, run)
    events, previous = [], chain.GENESIS
    for seq, kind, data in ((1, "run.created", "{}"), (2, "run.succeeded", "{}")):
        ts = "2026-11-01T00:00:00.000000Z"
        previous = chain.link_with(previous, prefix, seq, kind, ts, data)
        events.append({"type": "event", "thread_id": str(thread), "run_id": str(run), "seq": seq, "kind": kind, "ts": ts, "data": data, "hash": previous.hex()})
    header = {"type": "header", "format": "graphledger-export", "version": 1, "exported_at": "x", "server_version": "0.1.0", "filters": {}, "runs": 1, "not_ended": []}
    trailer = {"type": "trailer", "events": 2, "runs": [{"thread_id": str(thread), "run_id": str(run), "events": 2, "first_hash": events[0]["hash"], "last_hash": previous.hex(), "terminal": "run.succeeded"}]}
    lines = [resealed(header), *(json.dumps(e).encode() + b"\n" for e in events), resealed(trailer)]
    report = verify_lines(lines)
    assert report.ok and report.version == 1 and report.events == 2, report

    # A real signed note (any server's GET /log/checkpoint) pasted into a version 1 header proves none of its events.
    signer = Signer.generate("test.example/ledger")
    note = signer.sign(Checkpoint.of("test.example/ledger", 1, bytes(32), datetime.now(timezone.utc)).body())
    for version in (1, True):
        forged = [resealed({**header, "version": version, "checkpoint": note}), *lines[1:]]
        refused = verify_lines(forged, signer.verifier)
        assert not refused.ok and refused.line == 1, refused
        assert "carries no proofs" in (refused.reason or "") or "version" in (refused.reason or ""), refused
    assert not verify_lines([resealed({**header, "version": True}), *lines[1:]]).ok  # a boolean is no version
