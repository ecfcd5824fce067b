"""The recorder: runs a caller drives itself get the same record as runs a worker executes."""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID, uuid4

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, StateGraph
from langgraph.types import Command
from pydantic import BaseModel

from graphledger.ledger import Ledger, RunRef
from graphledger.projections import Projections
from graphledger.runs import InvalidRequest, Recorder, demo

INPUT = {"messages": [{"role": "user", "content": "count these four words"}]}


def strip_ids(value: Any) -> Any:
    """Chunks without the ids made up per call (and the run ids the recorder adds to the metadata)."""
    if isinstance(value, dict):
        return {k: strip_ids(v) for k, v in value.items() if k not in ("id", "run_id", "assistant_id", "checkpoint_ns", "langgraph_checkpoint_ns")}
    if isinstance(value, (list, tuple)):
        return [strip_ids(v) for v in value]
    return getattr(value, "content", value)


async def latest_run(ledger: Ledger, thread_id: UUID) -> RunRef:
    runs = await Projections(ledger).thread_runs(thread_id)
    latest = max(runs, key=lambda r: r.created_at)  # type: ignore[arg-type, return-value]
    return RunRef(thread_id, latest.run_id)


@pytest.mark.parametrize(
    ("stream_mode", "subgraphs"),
    [("values", False), (["updates", "messages"], False), ("updates", True), (["values", "custom"], True)],
)
async def test_the_caller_gets_exactly_what_astream_yields(ledger: Ledger, stream_mode: Any, subgraphs: bool) -> None:
    thread = UUID(int=hash((str(stream_mode), subgraphs)) & ((1 << 128) - 1))
    config = {"configurable": {"thread_id": str(thread), "tokens": 3}}
    plain = [part async for part in demo.graph.astream(INPUT, config, stream_mode=stream_mode, subgraphs=subgraphs)]
    recorded = [part async for part in Recorder(ledger).astream(demo.graph, INPUT, config, stream_mode=stream_mode, subgraphs=subgraphs)]
    assert strip_ids(recorded) == strip_ids(plain)
    ref = await latest_run(ledger, thread)
    events = await ledger.read_run(ref)
    assert [e.kind for e in events[:2]] == ["run.created", "run.started"] and events[-1].kind == "run.succeeded"
    assert events[0].tx == events[1].tx  # admitted and started in one transaction
    assert sum(1 for e in events if e.kind == "llm.usage") == 2
    assert (await ledger.verify(ref)).ok


async def test_a_string_thread_id_keeps_the_callers_checkpoints_and_maps_to_one_ledger_thread(ledger: Ledger) -> None:
    graph = demo.build().copy(update={"checkpointer": InMemorySaver()})
    recorder = Recorder(ledger)
    config = {"configurable": {"thread_id": "customer-42"}}
    first = await recorder.ainvoke(graph, INPUT, config)
    second = await recorder.ainvoke(graph, {"messages": [{"role": "user", "content": "again"}]}, config)
    assert len(first["messages"]) == 4 and len(second["messages"]) == 8  # the graph's own thread state
    assert (await graph.aget_state(config)).values["messages"][-1].id == second["messages"][-1].id
    from graphledger.runs.recorder import ledger_thread_id

    thread = ledger_thread_id("customer-42")
    assert thread is not None
    runs = await Projections(ledger).thread_runs(thread)
    assert len(runs) == 2 and all(r.status == "success" for r in runs)
    page = await Projections(ledger).messages(thread)
    assert len(page.messages) == 8


async def test_a_caller_forks_from_a_checkpoint_of_its_own_checkpointer(ledger: Ledger) -> None:
    graph = demo.build().copy(update={"checkpointer": InMemorySaver()})
    recorder = Recorder(ledger)
    config = {"configurable": {"thread_id": "customer-43"}}
    await recorder.ainvoke(graph, INPUT, config)
    first = (await graph.aget_state(config)).config["configurable"]["checkpoint_id"]
    await recorder.ainvoke(graph, {"messages": [{"role": "user", "content": "again"}]}, config)
    fork = {"configurable": {"thread_id": "customer-43", "checkpoint_id": first}}
    forked = await recorder.ainvoke(graph, {"messages": [{"role": "user", "content": "instead"}]}, fork)
    assert len(forked["messages"]) == 8  # the first run's four, then the fork's: not the ledger's checkpoints that were asked for
    from graphledger.runs.recorder import ledger_thread_id

    thread = ledger_thread_id("customer-43")
    assert thread is not None
    runs = await Projections(ledger).thread_runs(thread)
    assert len(runs) == 3 and all(r.status == "success" for r in runs)


async def test_a_failure_is_recorded_and_raised(ledger: Ledger) -> None:
    thread = UUID(int=77)
    with pytest.raises(RuntimeError, match="boom"):
        async for _ in Recorder(ledger).astream(demo.graph, INPUT, {"configurable": {"thread_id": str(thread), "fail": "boom"}}):
            pass
    events = await ledger.read_run(await latest_run(ledger, thread))
    assert [e.kind for e in events[-2:]] == ["stream:error", "run.failed"]
    assert events[-1].value["error"] == {"type": "RuntimeError", "message": "boom"}


async def test_stopping_early_ends_the_run_interrupted(ledger: Ledger) -> None:
    thread = UUID(int=78)
    slow = {"thread_id": str(thread), "token_delay": 0.01}  # the model call is still streaming when the caller stops
    stream = Recorder(ledger).astream(demo.graph, INPUT, {"configurable": slow}, stream_mode="messages")
    async for _ in stream:
        break
    await stream.aclose()
    events = await ledger.read_run(await latest_run(ledger, thread))
    assert events[-1].kind == "run.interrupted" and events[-1].value == {"reason": "caller stopped"}
    # the call in flight still counts, marked incomplete, with the input tokens reported so far
    usage = [e.value for e in events if e.kind == "llm.usage"]
    assert usage and usage[-1]["incomplete"] is True and usage[-1]["usage"]["input_tokens"] > 0


async def test_commands_and_interrupts_are_recorded(ledger: Ledger) -> None:
    graph = demo.build().copy(update={"checkpointer": InMemorySaver()})
    config = {"configurable": {"thread_id": str(UUID(int=79)), "review": True}}
    recorder = Recorder(ledger)
    await recorder.ainvoke(graph, INPUT, config)
    first = await latest_run(ledger, UUID(int=79))
    end = (await ledger.read_run(first))[-1]
    assert end.kind == "run.interrupted" and end.value["reason"] == "interrupt"
    result = await recorder.ainvoke(graph, Command(resume="ok"), config)
    assert result["messages"][-1].content.startswith("Your message has 4 words.")
    resumed = await latest_run(ledger, UUID(int=79))
    events = await ledger.read_run(resumed)
    assert events[0].value["command"] == {"resume": "ok"} and events[-1].kind == "run.succeeded"



async def test_a_model_field_holding_nan_is_recorded_as_null(ledger: Ledger) -> None:
    class Scored(BaseModel):
        name: str
        score: float

    def judge(state: dict[str, Any]) -> dict[str, Any]:
        get_stream_writer()({"verdict": Scored(name="judge", score=float("nan"))})
        return {"n": 1}

    builder = StateGraph(dict)  # type: ignore[type-var]
    builder.add_node("judge", judge)
    builder.add_edge(START, "judge")
    graph = builder.compile()
    thread = uuid4()
    parts = [p async for p in Recorder(ledger).astream(graph, {"n": 0}, {"configurable": {"thread_id": str(thread)}}, stream_mode="custom")]
    assert len(parts) == 1 and math.isnan(parts[0]["verdict"].score)  # the caller gets what the graph wrote
    events = await ledger.read_run(await latest_run(ledger, thread))
    assert [e.value for e in events if e.kind == "stream:custom"] == [{"verdict": {"name": "judge", "score": None}}]


async def test_the_recorder_refuses_the_events_mode_as_graph_astream_would(projected: Ledger) -> None:
    with pytest.raises(InvalidRequest, match='"events"'):
        async for _ in Recorder(projected).astream(demo.graph, {"messages": []}, stream_mode=["events"]):
            pass


async def test_a_call_records_its_provider_and_time_to_first_token(ledger: Ledger) -> None:
    thread = uuid4()
    config = {"configurable": {"thread_id": str(thread), "tokens": 3}}
    await Recorder(ledger).ainvoke(demo.graph, INPUT, config)  # the model is invoked: it streams nothing
    _ = [p async for p in Recorder(ledger).astream(demo.graph, INPUT, config, stream_mode="messages")]  # it streams
    calls = []
    for run in sorted(await Projections(ledger).thread_runs(thread), key=lambda r: r.created_at):  # type: ignore[arg-type, return-value]
        calls.append([e.value for e in await ledger.read_run(RunRef(thread, run.run_id)) if e.kind == "llm.usage"])
    invoked, streamed = calls
    assert invoked and streamed
    for call in invoked + streamed:
        assert isinstance(call["provider"], str) and call["provider"]  # LangChain's ls_provider of the model
    assert all("ttft_ms" not in call for call in invoked)
    assert all(0 <= call["ttft_ms"] <= call["latency_ms"] for call in streamed)
