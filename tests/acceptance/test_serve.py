"""``graphledger serve`` and ``graphledger migrate`` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import _admin, drop_database, with_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="graphledger-tests-serve-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def graphledger(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "graphledger.cli", *args], cwd=cwd, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_ok(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ok", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_serve_on_the_embedded_server_and_stop_on_sigterm(workdir: Path) -> None:
    for attempt in range(2):  # the second start reuses the data directory
        port = free_port()
        server = graphledger("serve", "--port", str(port), cwd=workdir)
        try:
            wait_ok(port, server)
            assert httpx.get(f"http://127.0.0.1:{port}/ok").json() == {"ok": True}
        finally:
            server.send_signal(signal.SIGTERM)
            output = server.communicate(timeout=60)[0]
        assert server.returncode == 0, output
        pidfile = workdir / ".graphledger" / "pgdata" / "postmaster.pid"
        assert not pidfile.exists(), f"embedded server still running after attempt {attempt}"


def test_unreachable_database_is_one_line_and_non_zero(workdir: Path) -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing"
    process = graphledger("migrate", "--database-url", url, cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1
    lines = [line for line in output.splitlines() if line.startswith("graphledger: error:")]
    assert len(lines) == 1 and "cannot connect to postgresql://nobody:***@" in lines[0] and "secret" not in output
    assert "Traceback" not in output


def test_bad_arguments_exit_non_zero(workdir: Path) -> None:
    process = graphledger("serve", "--port", "not-a-port", cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2 and "'not-a-port' is not a port number" in output and len(output.strip().splitlines()) == 1


def test_migrate_with_database_url(workdir: Path, server_dsn: str) -> None:
    process = graphledger("migrate", cwd=workdir, env={"DATABASE_URL": server_dsn.rsplit("/", 1)[0] + "/postgres"})
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "latest schema revision" in output


async def test_migrate_creates_the_checkpointer_and_store_tables_and_the_metadata_index(workdir: Path, server_dsn: str) -> None:
    name = f"graphledger_migrate_{uuid.uuid4().hex[:8]}"
    await _admin(server_dsn, f"CREATE DATABASE {name}")
    try:
        dsn = with_database(server_dsn, name)
        process = await asyncio.to_thread(graphledger, "migrate", "--database-url", dsn, cwd=workdir)
        output = (await asyncio.to_thread(process.communicate, timeout=120))[0]
        assert process.returncode == 0, output
        conn = await asyncpg.connect(dsn)
        try:
            tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'langgraph'")}
            index = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'threads_metadata_idx'")
        finally:
            await conn.close()
        assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "store", "store_migrations"} <= tables
        assert "USING gin (metadata jsonb_path_ops)" in index
    finally:
        await drop_database(server_dsn, name)


AUTH_PROJECT = Path(__file__).parent.parent / "http" / "authproject"


def test_serve_refuses_a_non_loopback_address_without_auth(workdir: Path) -> None:
    process = graphledger("serve", "--host", "0.0.0.0", "--port", str(free_port()), cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output
    assert output.startswith("graphledger: error: refusing to serve on 0.0.0.0 without authentication") and len(output.strip().splitlines()) == 1
    assert not (workdir / ".graphledger").exists()  # refused before anything started


def test_serve_without_auth_elsewhere_only_when_told_and_then_warns(workdir: Path) -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing"  # stops right after the check
    process = graphledger("serve", "--host", "0.0.0.0", "--allow-unauthenticated", "--database-url", url, cwd=workdir)
    output = process.communicate(timeout=60)[0]
    assert "graphledger: warning: serving on 0.0.0.0 without authentication" in output
    assert "cannot connect to" in output and "refusing" not in output


def test_serve_with_auth_may_listen_anywhere(workdir: Path) -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/nothing"
    for flags in (["--auth", f"{AUTH_PROJECT}/auth.py:auth"], ["--config", str(AUTH_PROJECT / "langgraph.json")]):
        process = graphledger("serve", "--host", "0.0.0.0", "--database-url", url, *flags, cwd=workdir)
        output = process.communicate(timeout=60)[0]
        assert "cannot connect to" in output and "refusing" not in output and "warning" not in output, output
