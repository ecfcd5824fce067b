"""The embedded PostgreSQL server: start, share, persist, adopt, stop."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from graphledger.embedded import EmbeddedError, EmbeddedPostgres


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="graphledger-tests-embedded-"))
    root.chmod(0o755)
    yield root / "data"
    leftover = EmbeddedPostgres(root / "data")
    if leftover._running_port() is not None:
        leftover.stop()
    shutil.rmtree(root, ignore_errors=True)


async def query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        if ";" in sql:
            return await conn.execute(sql)
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_start_share_persist_and_stop(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = first.start()
    assert "127.0.0.1" in dsn
    await query(dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    second = EmbeddedPostgres(data_dir)
    assert second.start() == dsn  # joined, not started again
    second.stop()
    assert first._running_port() is not None, "the first handle still uses the server"
    first.stop()
    assert first._running_port() is None
    again = EmbeddedPostgres(data_dir)
    dsn = again.start()
    try:
        assert await query(dsn, "SELECT x FROM kept") == 42
    finally:
        again.stop()


async def test_a_restart_keeps_the_port_while_it_is_free(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = first.start()
    assert first.recorded_dsn() == dsn
    assert await query(dsn, "SELECT 1") == 1  # connections of this run linger in TIME_WAIT after the stop
    first.stop()
    assert EmbeddedPostgres(data_dir).recorded_dsn() == dsn, "the DSN is on record while the server is down"
    again = EmbeddedPostgres(data_dir)
    try:
        assert again.start() == dsn, "the same port again, so a printed URL stays valid"
    finally:
        again.stop()


async def test_a_restart_moves_to_a_free_port_when_its_own_is_taken(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = first.start()
    first.stop()
    port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        again = EmbeddedPostgres(data_dir)
        moved = again.start()
        try:
            assert moved != dsn and f":{port}/" not in moved
            assert await query(moved, "SELECT 1") == 1
            assert EmbeddedPostgres(data_dir).recorded_dsn() == moved, "the new port is on record"
        finally:
            again.stop()


def test_no_cluster_is_created_when_asked_not_to(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    assert not server.exists()
    with pytest.raises(EmbeddedError, match=f"no embedded PostgreSQL cluster in {data_dir}"):
        server.start(create=False)
    with pytest.raises(EmbeddedError, match="no embedded PostgreSQL cluster"):
        server.recorded_dsn()
    assert not data_dir.exists(), "nothing was created"


def test_files_and_server_user(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        owner = (data_dir / "pgdata").stat().st_uid
        if os.geteuid() == 0:
            assert owner != 0 and pwd.getpwuid(owner).pw_name in ("postgres", "nobody")
            postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
            assert os.stat(f"/proc/{postmaster}").st_uid == owner, "the server must not run as root"
        else:
            assert owner == os.geteuid()
        assert (data_dir / "server.json").stat().st_mode & 0o077 == 0, "the password file is private"
    finally:
        server.stop()


async def test_server_left_by_a_killed_process_is_adopted(data_dir: Path) -> None:
    code = (
        "import sys, time; from graphledger.embedded import EmbeddedPostgres; "
        f"EmbeddedPostgres({str(data_dir)!r}).start(); print('up', flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    server = EmbeddedPostgres(data_dir)
    assert server._running_port() is not None, "the killed process left its server running"
    dsn = server.start()
    assert server.adopted
    assert await query(dsn, "SELECT 1") == 1
    server.stop()
    assert server._running_port() is None


def test_data_directory_that_is_not_a_cluster(data_dir: Path) -> None:
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "something").write_text("not postgres")
    with pytest.raises(EmbeddedError, match="not a PostgreSQL data directory"):
        EmbeddedPostgres(data_dir).start()


async def test_unreachable_data_directory_is_not_widened(data_dir: Path) -> None:
    private = data_dir.parent / "private"
    private.mkdir(mode=0o700)
    clusters = Path("/var/lib/graphledger/clusters")
    ours = [d for d in (clusters, clusters.parent) if not d.exists()]  # removed again when left empty
    target = private / "data"
    server = EmbeddedPostgres(target)
    dsn = server.start()
    try:
        assert await query(dsn, "SELECT 1") == 1
        if os.geteuid() == 0:
            # The server's user cannot search `private`: the cluster lives elsewhere, on record.
            assert str(server.pgdata).startswith("/var/lib/graphledger/clusters/")
            assert json.loads((target / "server.json").read_text())["pgdata"] == str(server.pgdata)
            again = EmbeddedPostgres(target)
            assert again.start() == dsn and again.pgdata == server.pgdata  # found again on the next start
            again.stop()
        else:
            assert server.pgdata == target / "pgdata"
    finally:
        server.stop()
        if str(server.pgdata).startswith("/var/lib/graphledger/clusters/"):
            shutil.rmtree(server.pgdata.parent, ignore_errors=True)
        for directory in ours:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: clusters of others stay
    assert private.stat().st_mode & 0o777 == 0o700, "permissions must not be widened"


def test_server_user_must_exist_and_not_be_root(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        return  # only root picks another account
    monkeypatch.setenv("GRAPHLEDGER_PG_USER", "no-such-user-here")
    with pytest.raises(EmbeddedError, match="GRAPHLEDGER_PG_USER"):
        EmbeddedPostgres(data_dir)
    monkeypatch.setenv("GRAPHLEDGER_PG_USER", "root")
    with pytest.raises(EmbeddedError, match="unprivileged"):
        EmbeddedPostgres(data_dir)
