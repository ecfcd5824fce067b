"""``graphledger serve --signing-key`` as a process: checkpoints signed at an interval, kept in the database and a directory.

A monitor's view: it knows only the public key and the server's URL. Every
checkpoint file the server wrote must carry a valid signature, and each must
be consistent with the one before it, proven from the tiles the server serves
(``/log/tile/...``), never from the database.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from graphledger.ledger import merkle
from graphledger.ledger.export import verify_lines
from graphledger.ledger.note import Checkpoint, Verifier, read_checkpoint
from tests.acceptance.servers import Server
from tests.acceptance.test_serve import free_port, graphledger
from tests.audit.test_cli import acli

INPUT = {"messages": [{"role": "user", "content": "sign what you wrote"}]}
PATIENCE = 60.0  # only stops a broken server from hanging the suite; never a measurement


class ServedTiles:
    """The tree of ``size`` leaves as a monitor sees it: the tiles a computation needs, fetched over HTTP first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.wanted: set[tuple[int, int]] = set()

    def subtree(self, height: int, index: int) -> bytes:
        level, rest = divmod(height, merkle.TILE_HEIGHT)
        key = (level, (index << rest) // merkle.TILE_WIDTH)
        if key not in self.tiles:
            self.wanted.add(key)
            return bytes(32)
        return merkle.tile_hash(lambda lv, i: self.tiles[(lv, i)], height, index)

    async def fetch(self, http: httpx.AsyncClient) -> None:
        for level, index in sorted(self.wanted):
            width = min(merkle.TILE_WIDTH, merkle.tile_count(self.size, level) - index * merkle.TILE_WIDTH)
            answer = await http.get("/log/" + merkle.tile_path(level, index, width))
            assert answer.status_code == 200 and len(answer.content) == width * merkle.HASH_SIZE, answer
            self.tiles[(level, index)] = answer.content
        self.wanted.clear()

    async def consistency(self, http: httpx.AsyncClient, old: int) -> list[bytes]:
        merkle.consistency_proof(self, old, self.size)  # a first pass only names the tiles
        await self.fetch(http)
        return merkle.consistency_proof(self, old, self.size)

    async def root(self, http: httpx.AsyncClient) -> bytes:
        merkle.root(self, self.size)
        await self.fetch(http)
        return merkle.root(self, self.size)


async def latest(http: httpx.AsyncClient, verifier: Verifier, at_least: int) -> Checkpoint:
    """The server's latest checkpoint, once it covers ``at_least`` events."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        answer = await http.get("/log/checkpoint")
        if answer.status_code == 200:
            checkpoint = read_checkpoint(answer.text, verifier)
            if checkpoint.size >= at_least:
                return checkpoint
        await asyncio.sleep(0.2)
    raise AssertionError(f"no checkpoint of {at_least} events within {PATIENCE} s")


async def run_once(http: httpx.AsyncClient) -> tuple[str, int]:
    """One demo run through HTTP, to its end; its thread and how many events it wrote."""
    thread = (await http.post("/threads", json={})).json()["thread_id"]
    run = (await http.post(f"/threads/{thread}/runs", json={"assistant_id": "demo", "input": INPUT})).json()
    assert (await http.get(f"/threads/{thread}/runs/{run['run_id']}/join")).status_code == 200
    events = (await http.get(f"/threads/{thread}/runs/{run['run_id']}/events", params={"limit": 1000})).json()["events"]
    assert events[-1]["kind"] == "run.succeeded"
    return thread, len(events)


async def test_serve_signs_consistent_checkpoints_into_the_database_and_a_directory(
    dsn: str, tmp_path: Path, servers: list[Server]
) -> None:
    tmp_path.chmod(0o755)
    made = await acli("keygen", "--out", str(tmp_path / "keys"), "--name", "serve.example/log")
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "ledger.key", tmp_path / "keys" / "ledger.pub"
    verifier = Verifier.parse(public.read_text())
    copies = tmp_path / "checkpoints"
    server = Server(dsn, tmp_path, "--signing-key", str(private), "--checkpoint-interval", "1", "--checkpoint-dir", str(copies))
    servers.append(server)

    async with httpx.AsyncClient(base_url=server.url, timeout=PATIENCE) as http:
        total, seen = 0, []
        for _ in range(3):
            thread, written = await run_once(http)
            total += written
            seen.append(await latest(http, verifier, total))  # a checkpoint covering the run, signed by the server
        assert seen[-1].size == total  # the demo runs are the whole log

        files = sorted(f for f in copies.iterdir() if not f.name.endswith(".partial"))  # checkpoint-<size>-<time>: signing order
        notes = [f.read_text() for f in files]
        checkpoints = [read_checkpoint(note, verifier) for note in notes]  # every copy carries the key's signature
        assert {c.size for c in seen} <= {c.size for c in checkpoints}
        assert len({c.size for c in checkpoints}) >= 3
        conn = await asyncpg.connect(dsn)
        try:
            kept = [r["note"] for r in await conn.fetch("SELECT note FROM checkpoints ORDER BY checkpoint_id")]
        finally:
            await conn.close()
        assert notes == kept[: len(notes)]  # the same checkpoints, in the same order, in the database

        for old, new in zip(checkpoints, checkpoints[1:], strict=False):
            assert (old.size, old.time) <= (new.size, new.time)
            tree = ServedTiles(new.size)
            assert await tree.root(http) == new.root
            proof = await tree.consistency(http, old.size)
            assert merkle.verify_consistency(old.size, new.size, old.root, new.root, proof), (old, new)

        export = await http.get(f"/threads/{thread}/export")
        report = verify_lines(export.content.splitlines(keepends=True), verifier)
        assert report.ok and report.proven == report.events == written, report

    for note in (files[0], files[-1]):  # the CLI's check: the log recomputed from its events extends each copy
        checked = await acli("verify", "--all", "--checkpoint", str(note), "--key", str(public), dsn=dsn)
        assert checked.returncode == 0 and b"ok: the log of" in checked.stdout, checked
    output = server.stop()
    assert server.process.returncode == 0, output
    assert "signed checkpoint of" in output


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--signing-key", "{tmp}/nowhere/ledger.key"], "cannot read the signing key"),
        (["--signing-key", "{tmp}/garbage"], "not a signer key"),
        (["--signing-key", "{tmp}/keys/ledger.pub"], "not a signer key"),
        (["--checkpoint-dir", "{tmp}/copies"], "--checkpoint-dir needs --signing-key"),
        (["--signing-key", "{tmp}/keys/ledger.key", "--checkpoint-dir", "{tmp}/garbage"], "cannot use --checkpoint-dir"),
    ],
)
async def test_a_bad_signing_key_or_checkpoint_dir_is_one_line_and_non_zero(
    dsn: str, tmp_path: Path, flags: list[str], words: str
) -> None:
    made = await acli("keygen", "--out", str(tmp_path / "keys"))
    assert made.returncode == 0, made.stderr
    (tmp_path / "garbage").write_text("PRIVATE+KEY+not+really\n")
    process = graphledger(
        "serve", "--port", str(free_port()), "--database-url", dsn, *(f.format(tmp=tmp_path) for f in flags), cwd=tmp_path
    )
    output: str = (await asyncio.to_thread(process.communicate, timeout=60))[0]
    assert process.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphledger: error: ") and words in lines[0], output
    assert "Traceback" not in output
    assert not (tmp_path / ".graphledger").exists()  # refused before anything started
