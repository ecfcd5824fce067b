"""The statements on ``assistants`` and ``assistant_versions``: versions are numbered once each, and never changed."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger
from graphledger.ledger.assistants import Change
from graphledger.ledger.threads import Visibility


async def test_concurrent_changes_take_distinct_versions(ledger: Ledger) -> None:
    aid = uuid4()
    async with ledger.session() as session:
        assert await session.assistants.insert(aid, "demo", name="a", config={"configurable": {"n": 0}}) is not None
        assert await session.assistants.insert(aid, "demo", name="again") is None  # the id is taken

    async def change(n: int) -> int:
        async with ledger.transaction() as tx:
            changed = await tx.assistants.change(aid, Change(config={"configurable": {"n": n}}, metadata={f"k{n}": n}))
        assert changed is not None
        return changed.version

    versions = await asyncio.gather(*(change(n) for n in range(1, 9)))
    assert sorted(versions) == list(range(2, 10))
    async with ledger.session() as session:
        listed = await session.assistants.versions(aid, limit=100)
        current = await session.assistants.get(aid)
    assert [v.version for v in listed] == list(range(9, 0, -1))
    assert current is not None and current.version == 9
    assert current.metadata == {f"k{n}": n for n in range(1, 9)}  # each change merged into the one before it


async def test_a_version_is_never_updated_and_goes_with_its_assistant(ledger: Ledger, conn: asyncpg.Connection) -> None:
    aid = uuid4()
    async with ledger.session() as session:
        await session.assistants.insert(aid, "demo", name="a")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("UPDATE assistant_versions SET name = 'b' WHERE assistant_id = $1", aid)
    async with ledger.session() as session:
        assert await session.assistants.set_latest(aid, 2) is None  # no such version
        assert (await session.assistants.set_latest(aid, 1)) is not None
        assert await session.assistants.delete(aid)
        assert not await session.assistants.delete(aid)
    assert await conn.fetchval("SELECT count(*) FROM assistant_versions WHERE assistant_id = $1", aid) == 0


async def test_a_filter_hides_what_it_does_not_match(ledger: Ledger) -> None:
    mine, theirs = uuid4(), uuid4()
    tag = str(uuid4())
    async with ledger.session() as session:
        await session.assistants.insert(mine, "demo", name="m", metadata={"owner": "ann", "tag": tag})
        await session.assistants.insert(theirs, "demo", name="t", metadata={"owner": "bo", "tag": tag})
        ann = Visibility.of({"owner": "ann"})
        assert [a.assistant_id for a in await session.assistants.search(metadata={"tag": tag}, visible=ann)] == [mine]
        assert await session.assistants.count(metadata={"tag": tag}, visible=ann) == 1
        assert await session.assistants.get(theirs, ann) is None
        async with ledger.transaction() as tx:
            assert await tx.assistants.change(theirs, Change(name="x"), ann) is None
        assert await session.assistants.versions(theirs, visible=ann) == []
        assert not await session.assistants.delete(theirs, ann)
        assert await session.assistants.get(theirs) is not None
