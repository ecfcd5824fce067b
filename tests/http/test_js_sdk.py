"""The official JavaScript SDK (``@langchain/langgraph-sdk``), unchanged, making the calls React's ``useStream`` makes.

``tests/js/use_stream.mjs`` runs under node against the server over real
HTTP; this test checks what it saw. The SDK is installed from
``tests/js/package-lock.json`` (``npm ci``) when ``tests/js/node_modules`` is
missing; without node the test fails and says so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk.client import LangGraphClient

JS = Path(__file__).parent.parent / "js"
SCRIPT = JS / "use_stream.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the SDK installed next to the script."""
    found = shutil.which("node")
    npm = shutil.which("npm")
    if found is None or npm is None:
        pytest.fail("node and npm are needed for the JavaScript SDK test (Node.js 18 or later on PATH)")
    if not (JS / "node_modules" / "@langchain" / "langgraph-sdk").is_dir():
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(JS)], capture_output=True, text=True, timeout=600)
        if installed.returncode != 0:
            pytest.fail(f"npm ci --prefix {JS} failed:\n{installed.stderr[-2000:]}")
    return found


async def run_script(node: str, base_url: str) -> dict[str, Any]:
    # An asyncio subprocess: the server under test runs in this event loop.
    process = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), base_url, "demo", cwd=JS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-4000:]
    found: dict[str, Any] = json.loads(stdout)
    return found


@pytest.fixture(scope="module")
async def seen(node: str, base_url: str) -> dict[str, Any]:
    return await run_script(node, base_url)


def ids(parts: list[dict[str, Any]]) -> list[int]:
    return [int(p["id"]) for p in parts]


async def test_a_thread_and_a_streamed_run_with_values_and_message_tuples(seen: dict[str, Any], sdk: LangGraphClient) -> None:
    thread = seen["thread"]
    assert thread["metadata"] == {"client": "js"} and thread["status"] in ("idle", "busy")
    streamed = seen["streamed"]
    assert streamed[0]["event"] == "metadata" and streamed[0]["id"] == "1"
    assert seen["created"] == {"run_id": streamed[0]["data"]["run_id"], "thread_id": thread["thread_id"]}  # from Content-Location
    assert {p["event"] for p in streamed} == {"metadata", "values", "messages"}
    assert ids(streamed) == sorted(set(ids(streamed)))
    tokens = [p["data"][0]["content"] for p in streamed if p["event"] == "messages"]
    assert "".join(tokens).startswith("Let me count the words.")
    assert all(isinstance(p["data"][1], dict) for p in streamed if p["event"] == "messages")  # [chunk, metadata]
    final = streamed[-1]
    assert final["event"] == "values" and final["data"]["messages"][-1]["content"].startswith("Your message has 4 words.")
    run = await sdk.runs.get(thread["thread_id"], seen["created"]["run_id"])
    assert run["status"] == "success"


def test_the_history_after_the_run(seen: dict[str, Any]) -> None:
    history = seen["history"]
    assert 1 < len(history) <= 10
    latest = history[0]
    assert [m["type"] for m in latest["values"]["messages"]] == ["human", "ai", "tool", "ai"]
    assert latest["next"] == [] and latest["checkpoint"]["thread_id"] == seen["thread"]["thread_id"]
    assert latest["values"] == seen["streamed"][-1]["data"]
    created = [state["created_at"] for state in history]
    assert created == sorted(created, reverse=True)  # newest first
    assert history[-1]["checkpoint"]["checkpoint_id"] == history[-2]["parent_checkpoint"]["checkpoint_id"]


async def test_joining_again_after_the_last_event_id_misses_and_repeats_nothing(seen: dict[str, Any], sdk: LangGraphClient) -> None:
    resume = seen["resume"]
    first, rest = resume["first"], resume["rest"]
    assert len(first) == 30 and rest, "the run was still going when the stream was cut"
    assert ids(first + rest) == sorted(set(ids(first + rest)))
    assert ids(rest)[0] > ids(first)[-1]
    assert resume["status"] == "success"
    replay = [p async for p in sdk.runs.join_stream(seen["thread"]["thread_id"], resume["run_id"], last_event_id="0")]
    assert [(p.event, p.id, p.data) for p in replay] == [(p["event"], p["id"], p["data"]) for p in first + rest]


def test_stopping_a_run(seen: dict[str, Any]) -> None:
    cancel = seen["cancel"]
    assert cancel["answered"] == "interrupted" and cancel["status"] == "interrupted"
    assert seen["final_state"]["values"]["messages"]  # the thread keeps the state of its finished runs
