"""``/openapi.json`` describes every route, and the server keeps to it under generated requests (schemathesis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from graphledger.http.app import create_app
from graphledger.http.openapi import document
from graphledger.runs.request import MAX_AFTER_SECONDS
from tests.acceptance.servers import Server

EXAMPLES = 30  # generated requests per operation


def test_the_description_names_exactly_the_app_s_routes(dsn: str) -> None:
    app = create_app(dsn)
    served = {
        (route.path_format, method.lower())  # /log/tile/{path:path} is described as /log/tile/{path}
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(path, method) for path, operations in document()["paths"].items() for method in operations}
    assert described == served


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("openapi")
    workdir.chmod(0o755)
    # Generated runs may name webhooks: only loopback ones are admitted, so no delivery leaves the machine.
    server = Server(dsn, workdir, "--workers", "2", "--max-body-bytes", "65536", "--webhook-host", "127.0.0.1")
    yield server
    server.stop()


DESCRIBED = schemathesis.openapi.from_dict(document())
OPERATIONS = [result.ok() for result in DESCRIBED.get_all_operations()]
CHECKS = [status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def known(server: Server) -> dict[str, str]:
    """A thread with a finished run: generated requests aim at them half the time, not only at unknown ids."""
    thread = httpx.post(f"{server.url}/threads", json={}).json()
    body = {"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "hello there"}]}}
    httpx.post(f"{server.url}/threads/{thread['thread_id']}/runs/wait", json=body, timeout=60).raise_for_status()
    run = httpx.get(f"{server.url}/threads/{thread['thread_id']}/runs").json()[0]
    return {"thread_id": thread["thread_id"], "run_id": run["run_id"], "assistant_id": "demo"}


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_generated_requests_get_no_5xx_and_answers_that_match_the_description(operation: Any, server: Server, known: dict[str, str]) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == document()
    aim = operation.method.upper() != "DELETE"  # deleting the known thread would leave only unknown ids
    # A thread's stream never ends by itself (clients close it): it is asked with unknown ids and bad parameters only.
    aim = aim and operation.path != "/threads/{thread_id}/stream"

    @given(case=operation.as_strategy(), data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def requests_keep_to_the_description(case: schemathesis.Case, data: st.DataObject) -> None:
        for name in ("thread_id", "run_id"):
            if aim and name in (case.path_parameters or {}) and data.draw(st.booleans()):
                case.path_parameters[name] = known[name]
        if isinstance(case.body, dict) and "assistant_id" in case.body and data.draw(st.booleans()):
            case.body["assistant_id"] = known["assistant_id"]
        for body in case.body if isinstance(case.body, list) else [case.body]:  # a batch is a list of run bodies
            # A run admitted with a delay of days would keep a wait or a stream open past any timeout, and the
            # known thread's later runs queued behind it: an admissible delay is shortened to a second (delays
            # out of range still get their 422).
            delay = body.get("after_seconds") if isinstance(body, dict) else None
            if isinstance(delay, (int, float)) and not isinstance(delay, bool) and 1 < delay <= MAX_AFTER_SECONDS:
                body["after_seconds"] = 1
        response = case.call(base_url=server.url, timeout=60)
        assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        case.validate_response(response, checks=CHECKS)

    requests_keep_to_the_description()
