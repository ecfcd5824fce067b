"""The Merkle log over HTTP: the latest checkpoint and tlog tiles, for monitors."""

from __future__ import annotations

import httpx

from graphledger.ledger import Ledger, merkle
from graphledger.ledger.note import Signer, read_checkpoint
from tests.ledger.helpers import new_run


async def test_checkpoint_and_tiles_let_a_monitor_rebuild_the_root(http: httpx.AsyncClient, ledger: Ledger) -> None:
    missing = await http.get("/log/checkpoint")
    assert missing.status_code in (200, 404)
    ref = await new_run(ledger)
    for i in range(300):
        ledger.feed(ref, "stream:messages", [{"content": f"t{i}"}])
    await ledger.sync(ref)
    signer = Signer.generate("http.example/log")
    async with ledger.session() as session:
        signed, note = await session.log.sign(signer)
    answer = await http.get("/log/checkpoint")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    checkpoint = read_checkpoint(answer.text, signer.verifier)
    assert checkpoint == signed and answer.text == note

    tiles: dict[tuple[int, int], bytes] = {}
    for level, index, width in [(0, i, 256) for i in range(checkpoint.size // 256)] + merkle.tiles_for(checkpoint.size):
        got = await http.get("/log/" + merkle.tile_path(level, index, width))
        assert got.status_code == 200 and len(got.content) == 32 * width, got
        assert "immutable" in got.headers["cache-control"]
        tiles[(level, index)] = got.content
    assert (await http.get("/log/tile/0/000.p/1")).content == tiles[(0, 0)][:32]

    class Served:
        def subtree(self, height: int, index: int) -> bytes:
            return merkle.tile_hash(lambda level, i: tiles.get((level, i), b""), height, index)

    assert merkle.root(Served(), checkpoint.size) == checkpoint.root
    for bad in (
        "/log/tile/0/1", "/log/tile/entries/000", "/log/tile/0/x999/999", "/log/tile/9/000",
        "/log/tile/0/x999/x999/x999/x999/x999/x999/999",  # an index past any bigint
    ):
        refused = await http.get(bad)
        assert refused.status_code == 404 and "detail" in refused.json()
