"""Run requests: validation, the recorded form, secrets kept out of it, message ids."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

import pytest
from langchain_core.messages import AIMessageChunk
from langgraph.types import Interrupt, Send
from pydantic import BaseModel

from graphledger.ledger.events import canonical_json
from graphledger.runs import InvalidRequest, RunRequest
from graphledger.runs.request import is_secret_key, merge_secrets, split_secrets
from graphledger.runs.serialize import encode, to_jsonable

CP, CP2 = "1f1eb942-74e0-6c31-8001-6942481efdb9", "1f1eb942-7e8e-639b-8004-41506b44a0f2"


def parse(**body: Any) -> RunRequest:
    return RunRequest.parse({"assistant_id": "demo", **body})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "assistant_id is required"),
        ({"assistant_id": ""}, "assistant_id is required"),
        ({"assistant_id": 7}, "assistant_id is required"),
        ({"assistant_id": "demo", "stream_mode": "nonsense"}, "stream_mode must be one of"),
        ({"assistant_id": "demo", "stream_mode": []}, "non-empty list"),
        ({"assistant_id": "demo", "stream_mode": ["events", "tokens"]}, "stream_mode must be one of"),
        ({"assistant_id": "demo", "multitask_strategy": "ignore"}, "multitask_strategy must be one of"),
        ({"assistant_id": "demo", "on_disconnect": "explode"}, "on_disconnect must be one of"),
        ({"assistant_id": "demo", "if_not_exists": "maybe"}, "if_not_exists must be one of"),
        ({"assistant_id": "demo", "command": {"jump": 1}}, "command takes"),
        ({"assistant_id": "demo", "command": {}}, "command takes"),
        ({"assistant_id": "demo", "config": []}, "config must be an object"),
        ({"assistant_id": "demo", "config": {"configurable": 3}}, "config.configurable must be an object"),
        ({"assistant_id": "demo", "config": {"recursion_limit": 0}}, "recursion_limit"),
        ({"assistant_id": "demo", "metadata": "x"}, "metadata must be an object"),
        ({"assistant_id": "demo", "interrupt_before": "agent"}, "interrupt_before"),
        ({"assistant_id": "demo", "stream_subgraphs": "yes"}, "stream_subgraphs"),
        ({"assistant_id": "demo", "checkpoint_id": "nope"}, "checkpoint_id must be a checkpoint id"),
        ({"assistant_id": "demo", "checkpoint_id": 7}, "checkpoint_id must be a checkpoint id"),
        ({"assistant_id": "demo", "checkpoint": "x"}, "checkpoint must be an object"),
        ({"assistant_id": "demo", "checkpoint": {"checkpoint_id": "x"}}, r"checkpoint\.checkpoint_id must be"),
        ({"assistant_id": "demo", "checkpoint": {"checkpoint_id": CP, "checkpoint_ns": "agent:1"}}, "must be empty"),
        ({"assistant_id": "demo", "checkpoint": {"checkpoint_id": CP, "checkpoint_map": {"": 1}}}, "object of strings"),
        ({"assistant_id": "demo", "checkpoint": {"checkpoint_id": CP}, "checkpoint_id": CP2}, "another checkpoint"),
        ({"assistant_id": "demo", "config": {"configurable": {"checkpoint_id": CP2}}, "checkpoint_id": CP}, "another checkpoint"),
        ({"assistant_id": "demo", "config": {"configurable": {"checkpoint_id": "x"}}}, r"config\.configurable\.checkpoint_id"),
        ({"assistant_id": "demo", "after_seconds": -1}, "after_seconds must be"),
        ({"assistant_id": "demo", "after_seconds": "5"}, "after_seconds must be"),
        ({"assistant_id": "demo", "after_seconds": True}, "after_seconds must be"),
        ({"assistant_id": "demo", "after_seconds": 10**9}, "after_seconds must be"),
        ({"assistant_id": "demo", "on_completion": "later"}, "on_completion must be one of"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        RunRequest.parse(body)


def test_events_are_streamed_beside_the_graph_s_own_modes() -> None:
    request = parse(stream_mode=["events", "custom"])
    assert request.stream_mode == ["events", "custom"]
    assert request.graph_modes == ["custom", "updates"]  # events come from astream_events, not a LangGraph mode


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        RunRequest.parse(["demo"])  # type: ignore[arg-type]


def test_defaults_and_what_clients_send() -> None:
    request = parse(stream_mode="messages-tuple", unknown_key="ignored")
    assert request.stream_mode == ["messages-tuple"]
    assert request.graph_modes == ["messages", "updates"]
    assert request.multitask_strategy == "enqueue" and request.if_not_exists == "reject"
    assert parse(stream_mode=["values", "values", "updates"]).stream_mode == ["values", "updates"]
    assert parse().stream_mode == ["values"] and parse().graph_modes == ["values", "updates"]


def test_the_checkpoint_a_run_starts_from_is_recorded_in_its_config() -> None:
    for body in ({"checkpoint_id": CP}, {"checkpoint": {"checkpoint_id": CP, "checkpoint_ns": "", "thread_id": "ignored"}},
                 {"config": {"configurable": {"checkpoint_id": CP, "model": "m"}}}, {"checkpoint_id": CP.upper(), "checkpoint": {"checkpoint_id": CP}}):
        request = parse(**body)
        assert request.checkpoint_id == CP
        assert request.record()["config"]["configurable"]["checkpoint_id"] == CP
        assert RunRequest.recorded(request.record()).checkpoint_id == CP
    assert parse(checkpoint_id="", checkpoint={"checkpoint_ns": ""}).checkpoint_id is None  # the latest
    assert parse(checkpoint_id=None).record()["config"] == {}


def test_delays_and_what_becomes_of_a_stateless_runs_thread_are_recorded() -> None:
    request = parse(after_seconds=2.5, on_completion="keep")
    record = request.record()
    assert record["after_seconds"] == 2.5 and record["on_completion"] == "keep"
    again = RunRequest.recorded(record)
    assert again.after_seconds == 2.5 and again.on_completion == "keep"
    plain = parse(after_seconds=0).record()
    assert "after_seconds" not in plain and "on_completion" not in plain


def test_input_messages_get_ids_and_keep_given_ones() -> None:
    request = parse(input={"messages": [{"role": "user", "content": "hi"}, {"type": "human", "content": "x", "id": "m-1"}, "plain"]})
    first, second, third = request.input["messages"]
    assert first["id"] and second["id"] == "m-1" and third == "plain"
    assert parse(input={"messages": "just text"}).input == {"messages": "just text"}


@pytest.mark.parametrize("key", ["api_key", "openai_api_key", "OPENAI_API_KEY", "access_token", "token", "client_secret", "password", "Authorization", "credentials", "aws_access_key"])
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_tokens", "tokens", "model", "user_id", "thread_id", "secretary_name", "tokenizer"])
def test_keys_that_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


def test_secrets_leave_the_record_and_come_back_for_the_worker() -> None:
    config = {"configurable": {"model": "m", "openai_api_key": "sk-1", "nested": {"password": "p", "depth": 2}}, "tags": ["a"]}
    request = parse(config=config)
    recorded = request.record()
    assert "sk-1" not in str(recorded) and "'p'" not in str(recorded)
    assert recorded["redacted"] == ["config.configurable.nested.password", "config.configurable.openai_api_key"]
    assert recorded["config"]["configurable"]["openai_api_key"] == "[redacted]"
    assert RunRequest.recorded(recorded, request.secrets).config == config
    kept, secrets = split_secrets(config)
    assert merge_secrets(kept, secrets) == config


def test_an_actors_secrets_are_recorded_redacted_and_come_back_for_the_worker() -> None:
    user = {
        "identity": "ann", "permissions": ["chat"], "email": "ann@example.org", "access_token": "tok-abcdef",
        "github": {"login": "ann", "api_key": "gh-123456"},
    }
    request = parse(input={"messages": [{"role": "user", "content": "act with tok-abcdef", "id": "1"}]}, config={"configurable": {"api_key": "k-1234"}})
    request.set_actor(user)
    recorded = request.record()
    assert recorded["actor"] == {**user, "access_token": "[redacted]", "github": {"login": "ann", "api_key": "[redacted]"}}
    assert recorded["redacted"] == ["actor.access_token", "actor.github.api_key", "config.configurable.api_key"]
    assert recorded["input"]["messages"][0]["content"] == "act with [redacted]"  # known by value too
    assert "tok-abcdef" not in canonical_json(recorded) and "gh-123456" not in canonical_json(recorded)
    stored = to_jsonable(request.secrets)  # as run_secrets keeps them
    claimed = RunRequest.recorded(recorded, stored)
    assert claimed.actor == user and claimed.config == {"configurable": {"api_key": "k-1234"}}
    assert claimed.secrets == stored  # given back on a release, for the next attempt
    request.set_actor(None)
    assert "actor" not in request.record() and request.record()["redacted"] == ["config.configurable.api_key"]


def test_the_record_round_trips() -> None:
    request = parse(
        input={"messages": [{"role": "user", "content": "hi", "id": "1"}]},
        command=None,
        metadata={"who": "me"},
        stream_mode=["updates", "custom"],
        stream_subgraphs=True,
        multitask_strategy="rollback",
        on_disconnect="cancel",
        interrupt_before="*",
        context={"user": "u"},
    )
    again = RunRequest.recorded(request.record())
    assert again == request


def test_chunks_become_json() -> None:
    from dataclasses import dataclass

    from langchain_core.messages import AIMessage

    @dataclass
    class Point:
        x: float

    value = {
        "m": AIMessage("hi", id="a"),
        "t": (1, 2),
        "p": Point(float("nan")),
        "when": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "id": UUID(int=1),
        3: b"\x00",
        "other": object,
    }
    out = to_jsonable(value)
    assert out["m"]["type"] == "ai" and out["m"]["content"] == "hi" and out["m"]["id"] == "a"
    assert out["t"] == [1, 2] and out["p"] == {"x": None}
    assert out["when"] == "2026-01-01T00:00:00+00:00" and out["id"] == str(UUID(int=1))
    assert out["3"] == "AA==" and out["other"].startswith("<class")


class Color(enum.Enum):
    RED = "red"


class Scored(BaseModel):
    name: str
    score: float


@pytest.mark.parametrize(
    "value",
    [
        (AIMessageChunk("tok", id="run-1"), {"langgraph_node": "agent", "langgraph_step": 1, "tags": ("a", "b")}),
        {"verdict": Scored(name="judge", score=float("nan")), "at": datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)},
        {"interrupt": Interrupt(value={"question": "ok?"}, id="i-1"), "send": Send("tools", {"x": 1})},
        {"set": frozenset({3}), "bytes": b"\x01\x02", "id": UUID(int=7), "color": Color.RED, "delta": timedelta(seconds=1.5)},
        {"nan": float("nan"), "inf": [float("-inf")], "big": 2**80, "path": PurePosixPath("/tmp/x")},
        {1: "int key", "nested": {None: True}},
        {"deep": [[[[["x"]]]]], "text": "é\u2028\x1f"},
    ],
    ids=["message-tuple", "model-nan", "interrupt-send", "odd-types", "numbers", "keys", "text"],
)
def test_the_one_pass_encoding_equals_the_walk_then_encode(value: object) -> None:
    assert encode(value) == canonical_json(to_jsonable(value))
