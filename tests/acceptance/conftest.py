"""Fixtures of the tests that run real ``graphledger serve`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from graphledger.ledger import Ledger
from tests.acceptance.servers import Server


@pytest.fixture
def servers(dsn: str, tmp_path: Path) -> Iterator[list[Server]]:
    """The servers a test starts (append them): each is stopped at the end of the test."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def client(projected: Ledger) -> Ledger:
    """The test process's own ledger and listener: it reads what the servers wrote."""
    return projected
