"""A later run that rewrites an earlier run's message shows in the messages view as its editor."""

from __future__ import annotations

import httpx


async def test_a_rewritten_message_names_the_run_that_edited_it(http: httpx.AsyncClient) -> None:
    thread = (await http.post("/threads", json={})).json()["thread_id"]
    ask = {"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "one two"}]}}
    first = (await http.post(f"/threads/{thread}/runs/wait", json=ask)).status_code
    assert first == 200
    page = (await http.get(f"/threads/{thread}/messages")).json()["messages"]
    answer = [m for m in page if m["type"] == "ai"][-1]
    first_run = answer["run_id"]
    assert answer["edited_by_run_id"] is None and answer["updated_run_id"] == first_run

    rewrite = {"assistant_id": "demo", "input": {"messages": [
        {"type": "ai", "content": "a different answer", "id": answer["id"]}, {"role": "user", "content": "three"},
    ]}}
    created = await http.post(f"/threads/{thread}/runs", json=rewrite)
    second_run = created.json()["run_id"]
    assert (await http.get(f"/threads/{thread}/runs/{second_run}/join")).status_code == 200

    after = {m["id"]: m for m in (await http.get(f"/threads/{thread}/messages")).json()["messages"]}
    edited = after[answer["id"]]
    assert edited["data"]["content"] == "a different answer"
    assert edited["run_id"] == first_run and edited["seq"] == answer["seq"] and edited["position"] == answer["position"]
    assert edited["updated_run_id"] == second_run and edited["edited_by_run_id"] == second_run
    untouched = [m for m in after.values() if m["id"] != answer["id"] and m["run_id"] == first_run]
    assert untouched and all(m["edited_by_run_id"] is None for m in untouched)
