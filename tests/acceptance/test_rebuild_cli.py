"""``graphledger rebuild`` as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from graphledger import projections
from graphledger.ledger import RunRef

from .test_serve import free_port, graphledger, workdir  # noqa: F401  (fixture)


async def test_rebuild_command(dsn: str, workdir: Path) -> None:  # noqa: F811
    ledger = await projections.connect(dsn, tail=False)
    try:
        thread = await ledger.create_thread()
        ref = RunRef(thread, (await ledger.create_run(thread, payload={"input": {"messages": [{"role": "user", "content": "hi", "id": "h"}]}})).run_id)
        await ledger.append(ref, "llm.usage", {"call_id": "c", "model": "m", "usage": {"input_tokens": 1, "output_tokens": 2}})
        await ledger.append(ref, "run.succeeded", {})
    finally:
        await ledger.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("DELETE FROM llm_calls")
        process = graphledger("rebuild", "--database-url", dsn, cwd=workdir)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output
        assert "rebuilt run_status, token_usage, messages from 3 events (3 folded" in output
        assert await conn.fetchval("SELECT count(*) FROM llm_calls") == 1

        process = graphledger("rebuild", "--database-url", dsn, "--only", "messages", cwd=workdir)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0 and "rebuilt messages from" in output, output

        await conn.execute(
            "INSERT INTO thread_snapshots (thread_id, checkpoint_ns, checkpoint_id, graph, version, history) VALUES ($1, '', 'c', 'demo', '1', '{}')",
            str(thread),
        )
        process = graphledger("rebuild", "--database-url", dsn, "--only", "messages", "--snapshots", cwd=workdir)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0 and "dropped the thread snapshot documents" in output, output
        assert await conn.fetchval("SELECT count(*) FROM thread_snapshots") == 0
    finally:
        await conn.close()


def test_rebuild_refuses_bad_input(workdir: Path) -> None:  # noqa: F811
    process = graphledger("rebuild", "--only", "colour", "--database-url", "postgresql://x@127.0.0.1:1/x", cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2 and "invalid choice" in output
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing"
    process = graphledger("rebuild", "--database-url", url, cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output
    assert [line for line in output.splitlines() if line.startswith("graphledger: error:")] and "Traceback" not in output
