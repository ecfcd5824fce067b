"""Lifecycle commands on a real database, without workers: admission, claims, leases, the reaper."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from graphledger.ledger import Ledger, RunRef, ThreadNotFound
from graphledger.ledger.errors import InvalidEvent
from graphledger.projections import Projections
from graphledger.runs import (
    GraphRegistry,
    NotPending,
    UnknownAssistant,
    admit,
    cancel,
    lifecycle,
)
from graphledger.runs.errors import CheckpointNotFound
from graphledger.runs.leases import LeaseKeeper, Reaper
from tests._db import raw
from tests.runs.conftest import ask


async def drain(ledger: Ledger, owner: str = "drain") -> None:
    """End every run left active in the database, so tests that share it start clean."""
    async with raw(ledger) as conn:
        rows = await conn.fetch("SELECT thread_id, run_id, status FROM runs WHERE status IN ('pending', 'running')")
    for row in rows:
        await cancel(ledger, RunRef(row["thread_id"], row["run_id"]))
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '1 hour' WHERE status = 'running'")
    await Reaper(ledger, grace_seconds=0, settle_seconds=0).reap_once()


async def test_admission_records_the_request_and_projects_a_pending_run(ledger: Ledger, graphs: GraphRegistry) -> None:
    admitted = await admit(ledger, ask("hello", metadata={"team": "a"}), graphs=graphs)
    created = admitted.created
    assert created.kind == "run.created" and created.seq == 1
    assert created.value["assistant_id"] == "demo" and created.value["metadata"] == {"team": "a"}
    assert created.value["input"]["messages"][0]["id"]
    status = await Projections(ledger).run_status(admitted.ref)
    assert status is not None and status.status == "pending"
    page = await Projections(ledger).messages(admitted.ref.thread_id)
    assert [m.data["content"] for m in page.messages] == ["hello"]
    await drain(ledger)


async def test_admission_errors_write_nothing(ledger: Ledger, graphs: GraphRegistry) -> None:
    async with raw(ledger) as conn:
        before = await conn.fetchval("SELECT count(*) FROM events")
    with pytest.raises(UnknownAssistant):
        await admit(ledger, ask().__class__.parse({"assistant_id": "ghost"}), graphs=graphs)
    with pytest.raises(ThreadNotFound):
        await admit(ledger, ask(), thread_id=uuid4(), graphs=graphs)
    existing = await admit(ledger, ask(), graphs=graphs)
    with pytest.raises(InvalidEvent, match="already exists"):
        await admit(ledger, ask(), thread_id=existing.ref.thread_id, run_id=existing.ref.run_id)
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == before + 1
    await drain(ledger)


async def test_if_not_exists_create_makes_the_thread(ledger: Ledger, graphs: GraphRegistry) -> None:
    thread = uuid4()
    admitted = await admit(ledger, ask(if_not_exists="create"), thread_id=thread, graphs=graphs)
    assert admitted.ref.thread_id == thread
    await drain(ledger)


async def test_concurrent_claimers_take_each_run_once_and_one_run_per_thread_at_a_time(ledger: Ledger, graphs: GraphRegistry) -> None:
    threads = [uuid4() for _ in range(5)]
    admitted = []
    for round_ in range(4):
        for thread in threads:
            admitted.append((await admit(ledger, ask(f"{round_}", if_not_exists="create"), thread_id=thread, graphs=graphs)).ref)
    claims = await asyncio.gather(*(lifecycle.claim(ledger, f"w{i}", limit=10, lease_seconds=30) for i in range(6)))
    taken = [c.ref for batch in claims for c in batch]
    assert len(taken) == len(set(taken)) == len(threads)  # one per thread: the first admitted of each
    first_round = set(admitted[: len(threads)])
    assert set(taken) == first_round
    assert await lifecycle.claim(ledger, "late", limit=10, lease_seconds=30) == []  # all blocked behind running runs
    # ending a running run lets the next one of its thread go, in admission order
    for ref in taken:
        await ledger.append(ref, "run.succeeded", {})
    again = await lifecycle.claim(ledger, "w", limit=100, lease_seconds=30)
    assert {c.ref for c in again} == set(admitted[len(threads): 2 * len(threads)])
    for item in again:
        assert item.started.value == {"worker": "w", "lease_seconds": 30, "attempt": 1}
        assert item.request.input["messages"][0]["content"] == "1"
    await drain(ledger)


async def test_leases_are_renewed_only_by_their_owner(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    (claimed,) = await lifecycle.claim(ledger, "owner", limit=1, lease_seconds=30)
    assert claimed.ref == ref
    assert await lifecycle.renew(ledger, "owner", [ref], lease_seconds=30) == {ref}
    assert await lifecycle.renew(ledger, "someone else", [ref], lease_seconds=30) == set()
    await ledger.append(ref, "run.succeeded", {})
    assert await lifecycle.renew(ledger, "owner", [ref], lease_seconds=30) == set()  # ended: no lease to hold


async def test_the_lease_keeper_reports_a_run_taken_from_it(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    await lifecycle.claim(ledger, "keeper", limit=1, lease_seconds=0.3)
    lost: list[RunRef] = []
    keeper = LeaseKeeper(ledger, "keeper", 0.3, on_lost=lost.append)
    keeper.hold(ref)
    keeper.start()
    try:
        await asyncio.sleep(0.5)
        assert lost == []  # renewed
        await ledger.append(ref, "run.failed", {"error": {"type": "X", "message": "ended elsewhere"}})
        for _ in range(50):
            if lost:
                break
            await asyncio.sleep(0.05)
    finally:
        await keeper.close()
    assert lost == [ref] and ref not in keeper.held


async def test_the_lease_keeper_renews_a_run_being_ended_and_lets_it_go_quietly_once_ended(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    assert [c.ref for c in await lifecycle.claim(ledger, "keeper", limit=1, lease_seconds=0.3)] == [ref]
    lost: list[RunRef] = []
    keeper = LeaseKeeper(ledger, "keeper", 0.3, on_lost=lost.append)
    keeper.hold(ref)
    keeper.ending(ref)
    await asyncio.sleep(0.5)  # past the lease taken at the claim
    await keeper.tick()
    assert ref in keeper.held and await lifecycle.held_by(ledger, "keeper", [ref]) == {ref}  # renewed while ending
    await ledger.append(ref, "run.succeeded", {})  # the end its holder was writing
    await keeper.tick()
    assert lost == [] and ref not in keeper.held


async def test_the_reaper_ends_expired_and_silent_runs_but_not_live_ones(ledger: Ledger, graphs: GraphRegistry) -> None:
    expired = (await admit(ledger, ask(), graphs=graphs)).ref
    await lifecycle.claim(ledger, "gone", limit=1, lease_seconds=30)
    live = (await admit(ledger, ask(), graphs=graphs)).ref
    await lifecycle.claim(ledger, "alive", limit=1, lease_seconds=30)
    # a run started by a writer that takes no lease, then silent
    silent_thread = await ledger.create_thread()
    silent = RunRef(silent_thread, (await ledger.create_run(silent_thread)).run_id)
    await ledger.append(silent, "run.started", {"worker": "external"})
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '20 seconds' WHERE run_id = $1", expired.run_id)
        await conn.execute("UPDATE runs SET updated_at = now() - interval '1 hour' WHERE run_id = $1", silent.run_id)
    reaper = Reaper(ledger, grace_seconds=10, idle_seconds=60, settle_seconds=0)
    assert await reaper.reap_once() == 2
    for ref, owner in ((expired, "gone"), (silent, "a writer without a lease")):
        events = await ledger.read_run(ref)
        assert [e.kind for e in events[-2:]] == ["stream:error", "run.failed"]
        assert events[-1].value["error"] == {"type": "LeaseExpired", "message": f"{owner} stopped renewing its lease on the run"}
    assert (await Projections(ledger).run_status(live)).status == "running"  # type: ignore[union-attr]
    assert await reaper.reap_once() == 0
    await drain(ledger)


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
async def test_a_run_whose_holder_died_before_carrying_out_a_cancel_ends_as_the_cancel_asked(
    ledger: Ledger, graphs: GraphRegistry, action: str
) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    assert [c.ref for c in await lifecycle.claim(ledger, "died", limit=1, lease_seconds=30)] == [ref]
    assert (await lifecycle.cancel(ledger, ref, action)).status == "running"  # asked of a holder that is gone
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '1 hour' WHERE run_id = $1", ref.run_id)
    assert await Reaper(ledger, grace_seconds=0, settle_seconds=0).reap_once() == 1
    events = await ledger.read_run(ref)
    assert [e.kind for e in events] == ["run.created", "run.started", "run.cancel_requested", "run.interrupted"]
    assert events[-1].value == {"reason": "cancel", "action": action}
    assert (await Projections(ledger).run_status(ref)).status == "interrupted"  # type: ignore[union-attr]


async def test_the_run_queue_channel_hints_on_admission_and_on_ends_but_not_on_chunks(ledger: Ledger, graphs: GraphRegistry) -> None:
    from graphledger.ledger.statement import RUNS_CHANNEL

    hints: list[float] = []
    assert ledger.hub is not None
    await ledger.hub.on_hint(RUNS_CHANNEL, lambda: hints.append(asyncio.get_running_loop().time()))

    async def hinted() -> bool:
        """Whether a hint arrived since ``hints`` was last cleared."""
        for _ in range(40):
            if hints:
                return True
            await asyncio.sleep(0.05)
        return False

    hints.clear()
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    assert await hinted()
    await lifecycle.claim(ledger, "hints", limit=1, lease_seconds=30)
    hints.clear()
    await ledger.append(ref, "stream:values", {"x": 1})
    assert not await hinted()  # a chunk changes no run's place in the queue
    await ledger.append(ref, "run.succeeded", {})
    assert await hinted()


async def test_a_periodic_task_outlives_a_failing_tick() -> None:
    from graphledger.runs.periodic import Periodic

    class Flaky(Periodic):
        ticks = 0

        async def tick(self) -> None:
            self.ticks += 1
            if self.ticks == 1:
                raise RuntimeError("the database blinked")

    flaky = Flaky(0.01)
    flaky.start()
    try:
        for _ in range(100):
            if flaky.ticks >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await flaky.close()
    assert flaky.ticks >= 3


async def test_a_run_is_started_once(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask("start me"), graphs=graphs)).ref
    async with ledger.transaction() as tx:
        started = await lifecycle.start(tx, ref, "recorder-a", lease_seconds=30)
    assert started.kind == "run.started" and started.value["worker"] == "recorder-a"
    with pytest.raises(NotPending, match="is running, not pending"):
        async with ledger.transaction() as tx:
            await lifecycle.start(tx, ref, "recorder-b", lease_seconds=30)
    assert [e.kind for e in await ledger.read_run(ref)] == ["run.created", "run.started"]  # nothing written by the refusal
    await drain(ledger)


async def test_no_lease_is_judged_until_the_database_has_been_up_a_lease_and_its_grace(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref
    await lifecycle.claim(ledger, "renewer", limit=1, lease_seconds=30)
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '20 seconds' WHERE run_id = $1", ref.run_id)
        up_for = await conn.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
    # As if the database had just restarted: its holder could not have renewed yet.
    assert await Reaper(ledger, grace_seconds=0, settle_seconds=float(up_for) + 3600).reap_once() == 0
    assert (await Projections(ledger).run_status(ref)).status == "running"
    assert await Reaper(ledger, grace_seconds=0, settle_seconds=0).reap_once() == 1
    await drain(ledger)


async def test_a_run_is_not_claimed_before_it_is_due_and_holds_back_its_threads_later_runs(ledger: Ledger, graphs: GraphRegistry) -> None:
    await drain(ledger)
    delayed = await admit(ledger, ask(after_seconds=3600), graphs=graphs)
    behind = await admit(ledger, ask(), thread_id=delayed.ref.thread_id, graphs=graphs)
    elsewhere = await admit(ledger, ask(), graphs=graphs)
    claimed = await lifecycle.claim(ledger, "due", limit=10, lease_seconds=30)
    assert [c.ref for c in claimed] == [elsewhere.ref]
    async with raw(ledger) as conn:
        due = await conn.fetchval("SELECT due_at - created_at FROM runs WHERE run_id = $1", delayed.ref.run_id)
        assert due.total_seconds() == pytest.approx(3600, abs=1)
        await conn.execute("UPDATE runs SET due_at = now() - interval '1 second' WHERE run_id = $1", delayed.ref.run_id)
    claimed = await lifecycle.claim(ledger, "due", limit=10, lease_seconds=30)
    assert [c.ref for c in claimed] == [delayed.ref]  # due now; the run behind it waits for it to end
    assert behind.ref not in [c.ref for c in await lifecycle.claim(ledger, "due", limit=10, lease_seconds=30)]
    await drain(ledger)


async def test_a_batch_is_admitted_whole_or_not_at_all(ledger: Ledger, graphs: GraphRegistry) -> None:
    await drain(ledger)
    async with raw(ledger) as conn:
        before = await conn.fetchval("SELECT count(*) FROM events")
    taken = (await admit(ledger, ask(), graphs=graphs)).ref
    missing = ask("three", checkpoint_id=str(uuid4()))
    batch = [lifecycle.Admission(ask("one")), lifecycle.Admission(ask("two")), lifecycle.Admission(missing, thread_id=taken.thread_id)]
    with pytest.raises(CheckpointNotFound):  # the third run cannot start: the first two are not admitted either
        await lifecycle.admit_batch(ledger, batch, graphs=graphs)
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == before + 1
    admitted = await lifecycle.admit_batch(ledger, batch[:2], graphs=graphs)
    assert len({a.ref.thread_id for a in admitted}) == 2
    await drain(ledger)


async def test_a_stateless_run_the_reaper_fails_has_its_thread_deleted(ledger: Ledger, graphs: GraphRegistry) -> None:
    await drain(ledger)
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    kept = (await admit(ledger, ask(on_completion="keep"), graphs=graphs)).ref
    await lifecycle.claim(ledger, "gone", limit=2, lease_seconds=30)
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '1 hour' WHERE status = 'running'")
    failed = await lifecycle.reap(ledger, grace_seconds=0, idle_seconds=0, settle_seconds=0)
    assert {(e.thread_id, e.run_id) for e in failed if e.kind == "run.failed"} == {(ref.thread_id, ref.run_id), (kept.thread_id, kept.run_id)}
    async with raw(ledger) as conn:
        deleted = dict(await conn.fetch("SELECT thread_id, deleted_at IS NOT NULL FROM threads WHERE thread_id = ANY($1)", [ref.thread_id, kept.thread_id]))
    assert deleted == {ref.thread_id: True, kept.thread_id: False}
    assert await lifecycle.complete(ledger, ref) is False  # once
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT delete_after_run FROM threads WHERE thread_id = $1", ref.thread_id) is None


async def delete_after_run(ledger: Ledger, thread_id: object) -> object:
    async with raw(ledger) as conn:
        return await conn.fetchval("SELECT delete_after_run FROM threads WHERE thread_id = $1", thread_id)


async def end_without_completing(ledger: Ledger, ref: RunRef, *, backdate: bool = True) -> None:
    """What a cancel of a pending run does before it deletes the stateless run's thread: a process that died here.

    With ``backdate`` the run's end is then set a minute back: the sweep
    leaves runs that ended in its last seconds to whoever ended them.
    """
    async with ledger.transaction() as tx:
        status = await tx.heads.lock(ref)
        await lifecycle._cancel_locked(tx, ref, status, "interrupt", reason="cancel")
    if backdate:
        await a_minute_ago(ledger, ref)


async def a_minute_ago(ledger: Ledger, ref: RunRef) -> None:
    async with raw(ledger) as conn:
        await conn.execute("UPDATE runs SET updated_at = now() - interval '1 minute' WHERE thread_id = $1 AND run_id = $2", ref.thread_id, ref.run_id)


async def deletions(ledger: Ledger, thread_id: object) -> int:
    """The thread's deletion records."""
    async with raw(ledger) as conn:
        return await conn.fetchval("SELECT count(*) FROM runs WHERE thread_id = $1 AND command = 'delete_thread'", thread_id)


async def test_the_reaper_deletes_a_stateless_runs_thread_that_a_dead_process_left(ledger: Ledger, graphs: GraphRegistry) -> None:
    await drain(ledger)
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    kept = (await admit(ledger, ask(on_completion="keep"), graphs=graphs)).ref
    bound = (await admit(ledger, ask(on_completion="delete", multitask_strategy="enqueue"), thread_id=kept.thread_id, graphs=graphs)).ref
    assert await delete_after_run(ledger, ref.thread_id) == ref.run_id  # due from admission, until done
    assert await delete_after_run(ledger, kept.thread_id) is None  # on_completion keep; and a thread's own run never deletes it
    for each in (ref, kept, bound):
        await end_without_completing(ledger, each)
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT deleted_at FROM threads WHERE thread_id = $1", ref.thread_id) is None  # left
    reaper = Reaper(ledger, grace_seconds=0, settle_seconds=0)
    await reaper.tick()
    assert reaper.completed >= 1
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT deleted_at, delete_after_run FROM threads WHERE thread_id = $1", ref.thread_id)
        record = await conn.fetchval(
            "SELECT e.data::text FROM runs r JOIN events e USING (thread_id, run_id) WHERE r.thread_id = $1 AND r.command = 'delete_thread' AND e.seq = 1",
            ref.thread_id,
        )
        assert await conn.fetchval("SELECT deleted_at FROM threads WHERE thread_id = $1", kept.thread_id) is None
    assert row["deleted_at"] is not None and row["delete_after_run"] is None
    assert '"reason":"on_completion"' in record and f'"by_run_id":"{ref.run_id}"' in record  # recorded as a worker's deletion is
    await reaper.tick()
    assert await deletions(ledger, ref.thread_id) == 1  # once


async def test_the_sweep_leaves_a_run_that_just_ended_to_whoever_ended_it(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    await end_without_completing(ledger, ref, backdate=False)
    assert ref not in await lifecycle.complete_due(ledger)  # its canceller is about to delete the thread
    assert await delete_after_run(ledger, ref.thread_id) == ref.run_id
    await a_minute_ago(ledger, ref)
    assert ref in await lifecycle.complete_due(ledger)  # nobody did
    assert await deletions(ledger, ref.thread_id) == 1


async def test_a_stateless_runs_thread_that_took_another_run_is_kept_and_no_longer_due(ledger: Ledger, graphs: GraphRegistry) -> None:
    await drain(ledger)
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    other = (await admit(ledger, ask(multitask_strategy="enqueue"), thread_id=ref.thread_id, graphs=graphs)).ref
    await end_without_completing(ledger, ref)
    assert await lifecycle.complete(ledger, ref) is False  # the other run is pending on it: kept, as a cancel keeps it
    assert await delete_after_run(ledger, ref.thread_id) is None
    await end_without_completing(ledger, other)
    assert ref not in await lifecycle.complete_due(ledger)  # kept for good, as a worker keeps it
    assert await deletions(ledger, ref.thread_id) == 0


async def test_a_stateless_run_interrupted_by_a_run_on_its_thread_leaves_the_thread_to_that_run(ledger: Ledger, graphs: GraphRegistry) -> None:
    """The later run ends the stateless one at its admission, and may end itself before any sweep: the thread is kept."""
    await drain(ledger)
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    other = (await admit(ledger, ask(multitask_strategy="interrupt"), thread_id=ref.thread_id, graphs=graphs)).ref
    await a_minute_ago(ledger, ref)
    await end_without_completing(ledger, other)
    assert ref not in await lifecycle.complete_due(ledger)
    assert await delete_after_run(ledger, ref.thread_id) is None  # no longer due
    assert await deletions(ledger, ref.thread_id) == 0
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", ref.run_id) == "interrupted"
        assert await conn.fetchval("SELECT deleted_at FROM threads WHERE thread_id = $1", ref.thread_id) is None


async def test_completing_a_stateless_run_that_has_not_ended_leaves_its_thread_due(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(on_completion="delete"), graphs=graphs)).ref
    assert await lifecycle.complete(ledger, ref) is False  # pending: its own end completes it
    assert await delete_after_run(ledger, ref.thread_id) == ref.run_id
    await cancel(ledger, ref)
    assert await deletions(ledger, ref.thread_id) == 1
