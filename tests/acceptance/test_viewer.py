"""The web viewer (``/ui``) in a real headless Chromium, against a real ``graphledger serve`` with authentication on.

Chromium is Debian's (``apt-get install -y chromium``; ``.ci/run`` installs it
when missing), driven by Playwright over the DevTools protocol; no browser is
ever downloaded. The test skips only when no Chromium is installed.

Screenshots of every page are written under the test's temporary directory
(the path is printed). With ``GRAPHLEDGER_DOCS_SCREENSHOTS=1`` the run page's
and the spend page's are also copied to ``docs/`` for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from graphledger.runs.assistants import graph_assistant_id
from tests.acceptance.servers import Server

PROJECT = Path(__file__).parents[1] / "http" / "authproject"
DOCS = Path(__file__).parents[2] / "docs"
ALICE, BOB, REVIEWER = "token-alice", "token-bob", "token-reviewer"
DEMO_ASSISTANT = str(graph_assistant_id("demo"))
CHROMIUM = next((path for path in (shutil.which("chromium"), "/usr/bin/chromium") if path and Path(path).exists()), None)
QUESTION = {"messages": [{"role": "user", "content": "how many words are in this question"}]}
MODES = ["messages-tuple", "values", "updates"]


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("viewer")
    workdir.chmod(0o755)
    prices = workdir / "prices.toml"  # the demo model priced, so that costs show
    prices.write_text('[[price]]\nmodel = "graphledger-demo-*"\ninput = 2\noutput = 10\n')
    server = Server(dsn, workdir, "--workers", "2", "--auth", f"{PROJECT / 'auth.py'}:auth", "--prices", str(prices))
    yield server
    server.stop()


def _client(server: Server, token: str | None) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)


def _run(user: httpx.Client, thread_id: str, **configurable: Any) -> str:
    body = {"assistant_id": "demo", "input": QUESTION, "stream_mode": MODES, "config": {"configurable": configurable}}
    answer = user.post(f"/threads/{thread_id}/runs/wait", json=body)
    assert answer.status_code == 200, answer.text
    run_id: str = answer.headers["content-location"].rsplit("/", 1)[1]
    return run_id


@pytest.fixture(scope="module")
def recorded(server: Server) -> dict[str, Any]:
    """Alice: two runs of the demo graph on one thread (tokens streamed 20 ms apart) and a failed one; Bob: one run."""
    with _client(server, ALICE) as alice, _client(server, BOB) as bob:
        thread = alice.post("/threads", json={}).json()["thread_id"]
        first = _run(alice, thread, token_delay=0.02)
        second = _run(alice, thread, tokens=4)
        failed = _run(alice, alice.post("/threads", json={}).json()["thread_id"], fail="the model is down")
        bobs = _run(bob, bob.post("/threads", json={}).json()["thread_id"])
        base = f"/threads/{thread}/runs/{first}"
        events = alice.get(f"{base}/events", params={"limit": 1000}).json()["events"]
        messages = alice.get(f"{base}/messages").json()["messages"]
        cost = alice.get(f"{base}/usage").json()["cost"]
    answer = [m for m in messages if m["type"] == "ai"][-1]["data"]["content"]
    assert cost > 0
    return {
        "thread": thread, "first": first, "second": second, "failed": failed, "bob": bobs, "events": events, "answer": answer,
        "cost": cost,
    }


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("viewer-screenshots")
    print(f"viewer screenshots: {folder}")
    return folder


def _keep(folder: Path, name: str) -> None:
    if os.environ.get("GRAPHLEDGER_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(folder / name, DOCS / name)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium): the viewer is tested in a real browser")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # A script error fails the test; the browser's notes of the 401, 404 and 422 answers the test asks for do not.
    opened.on(
        "console",
        lambda message: problems.append(f"console: {message.text}")
        if message.type == "error" and not message.text.startswith("Failed to load resource")
        else None,
    )
    yield opened
    await context.close()
    assert problems == []


async def _sign_in(page: Page, server: Server, token: str) -> None:
    await page.goto(f"{server.url}/ui")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("input[name=token]", token)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#runs")).to_be_visible()


def test_the_page_is_public_and_the_data_is_not(server: Server) -> None:
    with _client(server, None) as anonymous:
        shell = anonymous.get("/ui")
        assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in shell.headers["content-security-policy"]
        script = anonymous.get("/ui/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert anonymous.get("/ui/vendor/uPlot.LICENSE").text.startswith("The MIT License")
        for missing in ("/ui/nothing.js", "/ui/%2e%2e/pyproject.toml", "/ui/vendor/../app.js%00", "/ui/vendor", "/ui/"):
            answer = anonymous.get(missing)
            assert answer.status_code == 404 and "detail" in answer.json(), missing
        for path in ("/runs", f"/threads/{uuid.uuid4()}/runs/{uuid.uuid4()}/events"):
            answer = anonymous.get(path)
            assert (answer.status_code, answer.json()) == (401, {"detail": "missing bearer token"})
    with _client(server, "token-mallory") as mallory:
        assert mallory.get("/runs").status_code == 403


async def test_sign_in_list_runs_open_one_replay_and_export(
    page: Page, server: Server, recorded: dict[str, Any], screenshots: Path
) -> None:
    await page.goto(f"{server.url}/ui")
    login = page.locator("#login")
    await expect(login).to_contain_text("missing bearer token")  # what the server said to a request without credentials
    await page.screenshot(path=screenshots / "viewer-login.png")
    await page.fill("input[name=token]", "token-nobody")
    await page.click("#login button[type=submit]")
    await expect(login).to_contain_text("Not accepted: invalid token")
    await page.fill("input[name=token]", ALICE)
    await page.click("#login button[type=submit]")

    # The runs list: Alice's three runs, newest first; Bob's is not hers to see.
    rows = page.locator("#runs tbody tr")
    await expect(rows).to_have_count(3)
    assert [await row.get_attribute("data-run") for row in await rows.all()] == [recorded["failed"], recorded["second"], recorded["first"]]
    await expect(page.locator(f"tr[data-run='{recorded['bob']}']")).to_have_count(0)
    await expect(page.locator(f"tr[data-run='{recorded['failed']}']")).to_contain_text("error")
    # Alice may not search the server's assistants (her filter is on their owner): the id it is.
    await expect(page.locator(f"tr[data-run='{recorded['first']}'] td:nth-child(4)")).to_have_text(DEMO_ASSISTANT)
    cost = f"${recorded['cost']:.2g}"  # as the viewer writes a cost under a cent
    await expect(page.locator(f"tr[data-run='{recorded['first']}'] td.cost")).to_have_text(cost)
    await expect(page.locator(f"tr[data-run='{recorded['failed']}'] td.cost")).to_have_text("—")  # no call, no cost
    await page.screenshot(path=screenshots / "viewer-runs.png", full_page=True)

    # Filters go through the API: by status, then by thread.
    await page.select_option("select[name=status]", "error")
    await page.click("#filters button[type=submit]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-run", recorded["failed"])
    await page.click("#clear-filters")
    await expect(rows).to_have_count(3)
    await page.fill("input[name=thread_id]", recorded["thread"])
    await page.click("#filters button[type=submit]")
    await expect(rows).to_have_count(2)

    # One run: its summary, chain, messages and timeline.
    await page.click(f"tr[data-run='{recorded['first']}'] td:nth-child(2) a")
    await expect(page.locator("#chain")).to_have_text(f"verified ({len(recorded['events'])} events)")
    await expect(page.locator("#summary")).to_contain_text("success")
    await expect(page.locator("#cost")).to_have_text(cost)
    await expect(page.locator("#timeline tbody tr")).to_have_count(len(recorded["events"]))
    await expect(page.locator("#timeline tbody tr").first).to_contain_text("run.created")
    await expect(page.locator("#timeline")).to_contain_text("llm.usage")
    await expect(page.locator("#messages .msg.human")).to_contain_text("how many words are in this question")
    await expect(page.locator("#messages .msg.ai").last).to_contain_text(recorded["answer"])
    await expect(page.locator("#by-model")).to_contain_text("graphledger-demo-1")
    await page.screenshot(path=screenshots / "viewer-run.png", full_page=True)
    _keep(screenshots, "viewer-run.png")

    # The replay plays the stored stream, paced by the recorded timestamps.
    await page.select_option("#replay-speed", "10")
    await page.click("#replay-play")
    streamed = [e for e in recorded["events"] if e["kind"].startswith(("stream:", "run."))]
    await expect(page.locator("#replay-state")).to_have_text(f"replay finished: {len(streamed)} frames", timeout=60_000)
    await expect(page.locator("#replay-out")).to_contain_text(recorded["answer"])
    await expect(page.locator("#replay-frames > div")).to_have_count(len(streamed))
    await page.screenshot(path=screenshots / "viewer-replay.png", full_page=True)

    # The export download: the run's NDJSON record, every event with its hash.
    async with page.expect_download() as download_info:
        await page.click("#export")
    download = await download_info.value
    assert download.suggested_filename == f"run-{recorded['first']}.ndjson"
    lines = [json.loads(line) for line in Path(await download.path()).read_text().splitlines()]
    hashes = {line["hash"] for line in lines if isinstance(line, dict) and "hash" in line}
    assert {e["hash"] for e in recorded["events"]} <= hashes


async def test_an_unknown_or_invisible_run_shows_an_error(page: Page, server: Server, recorded: dict[str, Any], screenshots: Path) -> None:
    await _sign_in(page, server, ALICE)
    unknown = uuid.uuid4()
    await page.goto(f"{server.url}/ui#/run/{recorded['thread']}/{unknown}")
    await expect(page.locator("#error")).to_have_text(f"run {unknown} not found in thread {recorded['thread']}")
    await page.screenshot(path=screenshots / "viewer-unknown-run.png")
    await page.goto(f"{server.url}/ui#/run/not-a-thread/not-a-run")
    await expect(page.locator("#error")).to_contain_text("ids are UUIDs")
    with _client(server, BOB) as bob:
        bobs_thread = bob.get("/runs").json()["runs"][0]["thread_id"]
    await page.goto(f"{server.url}/ui#/run/{bobs_thread}/{recorded['bob']}")  # Bob's run is as unknown to Alice as a made-up one
    await expect(page.locator("#error")).to_contain_text("not found")
    await page.click("#signout")
    await expect(page.locator("#login")).to_contain_text("Signed out.")
    await page.goto(f"{server.url}/ui#/runs")
    await expect(page.locator("#login")).to_be_visible()  # sessionStorage was cleared


async def test_the_spend_page_charts_usage_by_model_assistant_and_user(
    page: Page, server: Server, recorded: dict[str, Any], screenshots: Path
) -> None:
    await _sign_in(page, server, ALICE)
    await page.click("header nav a[data-nav=spend]")
    tokens = page.locator("#spend-tokens")
    await expect(tokens.locator(".u-legend")).to_contain_text("graphledger-demo-1")  # one series per model
    assert json.loads(await tokens.get_attribute("data-series") or "") == ["graphledger-demo-1"]
    await expect(tokens.locator("canvas")).to_have_count(1)
    with _client(server, ALICE) as alice:
        runs = alice.get("/runs").json()["runs"]
    total = sum(r["total_tokens"] for r in runs)  # Alice's runs only: Bob's calls are not hers to see
    row = page.locator("#spend-totals tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("graphledger-demo-1")
    await expect(row.locator("td:nth-child(6)")).to_have_text(f"{total:,}")
    await expect(page.locator("#spend-cost .u-legend")).to_contain_text("graphledger-demo-1")
    assert json.loads(await page.locator("#spend-cost").get_attribute("data-series") or "") == ["graphledger-demo-1"]
    await expect(row.locator("td:nth-child(7)")).not_to_have_text("—")
    await expect(page.locator("#spend-latency tbody tr").first).to_contain_text("graphledger-demo-1")
    await expect(page.locator("#spend-latency-chart .u-legend")).to_contain_text("graphledger-demo-1")
    await page.screenshot(path=screenshots / "viewer-spend.png", full_page=True)
    _keep(screenshots, "viewer-spend.png")

    await page.select_option("select[name=group_by]", "identity")
    await page.click("#spend-filters button[type=submit]")
    await expect(page.locator("#spend-tokens")).to_have_attribute("data-series", '["alice"]')
    await page.select_option("select[name=group_by]", "assistant")
    await page.click("#spend-filters button[type=submit]")
    await expect(page.locator("#spend-tokens")).to_have_attribute("data-series", json.dumps([DEMO_ASSISTANT]))

    # The reviewer reads everyone's usage, and may search assistants: their names label the series.
    await page.click("#signout")
    await page.fill("input[name=token]", REVIEWER)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#spend-tokens")).to_have_attribute("data-series", '["demo"]')
    await page.select_option("select[name=group_by]", "identity")
    await page.click("#spend-filters button[type=submit]")
    await expect(page.locator("#spend-tokens")).to_have_attribute("data-series", '["alice","bob"]')
    await page.goto(f"{server.url}/ui#/spend?bucket=fortnight")
    await expect(page.locator("#error")).to_contain_text("bucket must be one of")
