"""Webhooks: once a run that named one ends, its JSON is POSTed there, with retries, every attempt in the log.

A delivery is recorded as a run of the target's thread that records
something about another run (``runs.record_of``), executed by its caller, the
deliverer: ``run.created`` with ``{"command": "deliver_webhook", "record_of":
<run id>, "url": <redacted>, "max_attempts"}``, one ``webhook.attempt`` per
attempt (``attempt``, ``sent_at``, ``status_code`` or ``error``,
``outcome``), and at the end ``run.succeeded`` (delivered) or ``run.failed``
(given up). Between attempts it stays pending; a record run is never active
(:mod:`graphledger.ledger.heads`), so it holds back nothing of its thread.

Which deliveries are due is derived from the log, not kept in memory: a run
that ended with a webhook and whose delivery record has not ended
(:data:`~graphledger.ledger.heads.WEBHOOKS_DUE_SQL`). A deliverer takes one
by setting a lease on its record; the lease covers the attempt, and after a
failed attempt it covers the backoff before the next one, so any process
(this one, or another after this one died) takes the delivery up once it
expires, and numbers the next attempt from the record's events. An attempt
whose POST was made but whose record was lost with its process is made
again: delivery is at least once.

The address as given (its user-info and query may hold secrets) is kept in
``runs.webhook`` and never in the log; the log has it redacted
(:func:`graphledger.runs.secrets.without_url_secrets`). It is cleared when
the delivery is final.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from graphledger.ledger import Ledger
from graphledger.ledger.errors import Conflict, RunFinished
from graphledger.ledger.events import (
    EXECUTOR_CALLER,
    RUN_FAILED,
    RUN_SUCCEEDED,
    NewEvent,
    RunRef,
    encode_json,
)
from graphledger.projections import Projections
from graphledger.runs.errors import InvalidRequest
from graphledger.runs.periodic import Periodic
from graphledger.runs.recorder import stream_kind
from graphledger.runs.secrets import Scrubber, without_url_secrets
from graphledger.runs.shape import iso, run_json

_log = logging.getLogger("graphledger.runs")

DELIVER_WEBHOOK = "deliver_webhook"
"""The ``command`` of the run that records a webhook's delivery (its ``record_of`` names the run delivered)."""
WEBHOOK_ATTEMPT = "webhook.attempt"
FAILURE_STATUSES = ("error", "timeout")
"""One attempt to deliver a webhook: ``attempt``, ``sent_at``, ``status_code`` or ``error``, ``outcome``."""


@dataclass(slots=True)
class WebhookSettings:
    """How webhooks are delivered."""

    attempts: int = 5  # at most this many POSTs, the first included
    backoff_seconds: float = 1.0  # before the second attempt; doubled before each next one
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 10.0  # for one POST (connect, send, answer)
    poll_interval: float = 1.0  # how often a process looks for deliveries that are due
    batch: int = 10  # deliveries taken at once by one process
    allowed_hosts: tuple[str, ...] = ()  # the only hosts a webhook may name (empty: any)


@dataclass(frozen=True, slots=True)
class Taken:
    """A delivery a deliverer holds: the run delivered, its record, the address, and the attempt about to be made."""

    ref: RunRef
    record: RunRef
    url: str
    attempt: int
    record_seq: int  # the record's head: the attempt's events follow it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one POST gave: a status code, or an error (no answer)."""

    status_code: int | None
    error: str | None
    sent_at: datetime
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """No answer, a server error or 429: worth another attempt. Any other answer is final."""
        return self.status_code is None or self.status_code == 429 or self.status_code >= 500


def check_host(url: str, settings: WebhookSettings) -> None:
    """Refuse (:class:`InvalidRequest`) a webhook whose host the server does not allow (``serve --webhook-host``)."""
    host = (urlsplit(url).hostname or "").lower()
    if settings.allowed_hosts and host not in {h.lower() for h in settings.allowed_hosts}:
        raise InvalidRequest(f"webhook host {host[:100]!r} is not allowed on this server")


def backoff(settings: WebhookSettings, attempt: int) -> float:
    """The wait after failed attempt ``attempt`` (1-based) before the next one."""
    return float(min(settings.max_backoff_seconds, settings.backoff_seconds * 2 ** (attempt - 1)))


def url_secrets(url: str) -> Scrubber | None:
    """What replaces the parts of ``url`` the log must not have (the URL, its user-info, query values, fragment) in an error message."""
    parts = urlsplit(url)
    values = [url, parts.username or "", parts.password or "", parts.fragment, *(value for _, value in parse_qsl(parts.query))]
    return Scrubber.of(values)


async def due(ledger: Ledger, limit: int) -> list[RunRef]:
    """Runs whose webhook delivery is due now, oldest first."""
    async with ledger.session() as session:
        return await session.heads.webhooks_due(DELIVER_WEBHOOK, limit)


async def take(ledger: Ledger, ref: RunRef, owner: str, *, lease_seconds: float, max_attempts: int) -> Taken | None:
    """Take the delivery of ``ref``'s webhook for ``owner``; None when it is not due or another deliverer has it.

    The run's row is locked first (``SKIP LOCKED``: a deliverer taking it
    elsewhere is left to it), then its delivery record, created here at the
    first attempt. The record's lease says who holds it, and until when.
    """
    async with ledger.transaction() as tx:
        url = await tx.heads.lock_webhook(ref)
        if url is None:
            return None
        record = await tx.heads.record(ref, DELIVER_WEBHOOK)
        if record is None:
            record_ref = RunRef(ref.thread_id, uuid.uuid4())
            created = {
                "command": DELIVER_WEBHOOK, "record_of": str(ref.run_id), "executor": EXECUTOR_CALLER, "metadata": {},
                "url": without_url_secrets(url), "max_attempts": max_attempts,
            }
            event = await tx.create_run(record_ref, created)
            seq = event.seq
        elif record.status != "pending" or record.held:
            return None
        else:
            record_ref, seq = record.ref, record.last_seq
        await tx.heads.set_lease(record_ref, owner, lease_seconds)
    return Taken(ref, record_ref, url, attempt=seq, record_seq=seq)  # run.created is seq 1, attempt n is seq n + 1


async def post(client: httpx.AsyncClient, url: str, body: bytes, *, deadline: float | None = None) -> Outcome:
    """POST ``body`` (JSON) to ``url`` once, the whole of it within ``deadline`` seconds if given.

    The client's own timeout bounds each phase (connect, send, each read), not
    their sum: a receiver that answers a byte at a time could hold the POST
    past its delivery's lease, and another deliverer would send it again.
    """
    sent_at = datetime.now(UTC)
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
    except TimeoutError:
        return Outcome(None, f"TimeoutError: no whole answer within {deadline:g} s", sent_at, time.monotonic() - started)
    except httpx.HTTPError as exc:
        scrubber = url_secrets(url)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Outcome(None, scrubber.string(message) if scrubber else message, sent_at, time.monotonic() - started)
    return Outcome(response.status_code, None, sent_at, time.monotonic() - started)


async def settle(ledger: Ledger, taken: Taken, outcome: Outcome, owner: str, settings: WebhookSettings) -> bool:
    """Record an attempt, and end the delivery when it is final; False when ``owner`` no longer held it (nothing written).

    After a failed attempt that is not the last, the record's lease is set to
    the backoff: no deliverer takes it up before then.
    """
    if outcome.delivered:
        result = "delivered"
    elif outcome.retryable and taken.attempt < settings.attempts:
        result = "retry"
    else:
        result = "failed"
    attempt: dict[str, Any] = {"attempt": taken.attempt, "sent_at": iso(outcome.sent_at), "outcome": result,
                               "duration_ms": round(outcome.seconds * 1000, 1)}
    if outcome.status_code is not None:
        attempt["status_code"] = outcome.status_code
    else:
        attempt["error"] = outcome.error
    new = [NewEvent.of(WEBHOOK_ATTEMPT, attempt)]
    if result == "delivered":
        new.append(NewEvent.of(RUN_SUCCEEDED, {"attempts": taken.attempt, "status_code": outcome.status_code}))
    elif result == "failed":
        why = f"answered {outcome.status_code}" if outcome.status_code is not None else outcome.error
        message = f"webhook not delivered after {taken.attempt} attempt(s): {why}"
        new.append(NewEvent.of(RUN_FAILED, {"error": {"type": "WebhookNotDelivered", "message": message}, "attempts": taken.attempt}))
    try:
        async with ledger.transaction() as tx:
            await tx.heads.lock(taken.ref)  # the run's row first, as take locks it: never the other order
            record = await tx.heads.record(taken.ref, DELIVER_WEBHOOK)
            if record is None or record.ref != taken.record or record.lease_owner != owner:
                return False
            await tx.append(taken.record, new, expected_seq=taken.record_seq)
            if result == "retry":
                await tx.heads.set_lease(taken.record, owner, backoff(settings, taken.attempt))
            else:
                await tx.heads.set_webhook(taken.ref, None)  # the address with its secrets goes once the delivery is final
    except (Conflict, RunFinished):
        return False  # another deliverer took it up after our lease ran out, and recorded first
    return True


async def payload(ledger: Ledger, ref: RunRef) -> dict[str, Any]:
    """What is POSTed: the run as the API shows it, when it started and ended, when this was sent, its last values, and its error if it failed."""
    status = await Projections(ledger).run_status(ref)
    async with ledger.session() as session:
        created = (await session.first_events([ref]))[ref]
        values = await session.last_of_kind(ref, stream_kind("values"))
    body = run_json(status, created)
    body["run_started_at"] = iso(status.started_at)
    body["run_ended_at"] = iso(status.finished_at)
    body["webhook_sent_at"] = iso(datetime.now(UTC))
    body["values"] = values.value if values is not None else None  # the state as last streamed, also for a failed run
    if status.status in FAILURE_STATUSES:  # from the status projection: notes may follow the terminal event
        body["error"] = {"error": status.error_type or "Error", "message": status.error_message or ""}
    return body


class Webhooks(Periodic):
    """Delivers the webhooks that are due, every ``poll_interval`` seconds; runs in every server process."""

    name = "webhook delivery"

    def __init__(self, ledger: Ledger, settings: WebhookSettings | None = None, *, owner: str | None = None) -> None:
        self.settings = settings or WebhookSettings()
        super().__init__(self.settings.poll_interval)
        self.ledger = ledger
        self.owner = owner or f"webhooks {os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.delivered = 0
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        await super().close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def tick(self) -> None:
        await self.deliver_due()

    async def deliver_due(self) -> int:
        """Take the deliveries that are due and make one attempt of each, at once; return how many were delivered."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.timeout_seconds, follow_redirects=False, trust_env=False)
        s = self.settings
        taken = []
        for ref in await due(self.ledger, s.batch):
            found = await take(self.ledger, ref, self.owner, lease_seconds=s.timeout_seconds + 30, max_attempts=s.attempts)
            if found is not None:
                taken.append(found)
        results = await asyncio.gather(*(self._attempt(self._client, t) for t in taken))
        delivered = sum(results)
        self.delivered += delivered
        return delivered

    async def _attempt(self, client: httpx.AsyncClient, taken: Taken) -> bool:
        body = encode_json(await payload(self.ledger, taken.ref)).encode()
        outcome = await post(client, taken.url, body, deadline=self.settings.timeout_seconds)
        if not await settle(self.ledger, taken, outcome, self.owner, self.settings):
            return False
        if not outcome.delivered:
            _log.warning(
                "webhook of run %s, attempt %d: %s", taken.ref.run_id, taken.attempt,
                f"answered {outcome.status_code}" if outcome.status_code is not None else outcome.error,
            )
        return outcome.delivered
