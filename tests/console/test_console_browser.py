"""The console in a real browser: Debian's Chromium (headless) driven by Playwright, against real
``outerloop serve`` and ``outerloop daemon`` processes on a real Redis (the demo's two
processes on an embedded ``redis-server``, the tiny trained artifacts).

One story: a user's page is open; events are posted through the API and the user's new fact and
refreshed row appear on the page without a reload; an operator pauses the tool agent from the
console and the daemon stops running it (the paused agent's row keeps being served); a request
without the key changes nothing; resuming brings the agent back. Screenshots of the three pages
go to ``reports/console/`` (gitignored).

Chromium comes from :func:`tests.browser.ensure_chromium` (``make test`` installs it first);
without it this module fails, never skips.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from outerloop.contracts.keys import Keys, counts_key
from outerloop.demo.processes import services
from tests.browser import ensure_chromium
from tests.api.test_api_fixtures import tiny_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "reports" / "console"
KEY = "console-e2e-key"
USER = "console-user"
WAIT_MS = 30_000  # explicit waits: the condition, polled by Playwright, up to this long


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        chromium = ensure_chromium()
    except Exception as exc:  # noqa: BLE001 - a missing browser fails the module, never skips it
        pytest.fail(f"headless Chromium is required for the console tests: {exc}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _episodes(artifacts: Path) -> list[int]:
    """Three released episodes of one series, in order (dense ids)."""
    from outerloop.inner_loop.model.artifacts import CATALOG, catalog_from_json

    catalog = catalog_from_json(json.loads((artifacts / CATALOG).read_text()))
    now = time.time() * 1000
    by_series: dict[str, list[tuple[int, int]]] = {}
    for it in catalog.items:
        if it.kind == "episode" and it.series_id and it.episode and (it.release_ts or 0) < now:
            by_series.setdefault(it.series_id, []).append((it.episode, it.item_id))
    best = max(by_series.values(), key=len)
    assert len(best) >= 4, "the tiny world needs a series with four released episodes"
    return [item for _, item in sorted(best)][:4]


def _watch(http: httpx.Client, item: int, at_ms: int) -> str:
    """Play and finish ``item``; returns the finish event's id."""
    fid = f"e2e-{uuid.uuid4().hex[:10]}"
    r = http.post("/v1/events", json=[
        {"event_id": f"e2e-{uuid.uuid4().hex[:10]}", "user_id": USER, "item_id": item, "type": "play", "ts": at_ms},
        {"event_id": fid, "user_id": USER, "item_id": item, "type": "finish", "ts": at_ms + 40 * 60_000}])
    assert r.status_code == 200 and r.json()["applied"] == 2, r.text
    return fid


def _served_run(http: httpx.Client, row_id: str) -> str | None:
    doc = http.get(f"/v1/users/{USER}/recommendations", params={"k": 5, "row": row_id}).json()
    return doc["rows"][0]["run_id"] if doc["rows"] else None


def _runs_of(client: redis.Redis, agent: str) -> int:
    counts = client.hgetall(counts_key(Keys))
    return sum(int(v) for k, v in counts.items() if k.decode().startswith(f"{agent}|"))


def shot(page: Any, name: str) -> None:
    """A full-page screenshot (the operator panel folded away) as a test artifact."""
    page.evaluate("document.getElementById('operator').open = false")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_console_live_control_and_provenance(browser: Any, tiny_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    episodes = _episodes(tiny_dir)
    t0 = int(time.time() * 1000) - 6 * 3600_000
    with services(tiny_dir, tmp_path, redis_dir=tmp_path / "redis", api_key=KEY) as svc, \
            httpx.Client(base_url=svc.base_url, timeout=10.0, headers={"X-API-Key": KEY}) as http, \
            contextlib.closing(redis.Redis.from_url(svc.redis_url)) as client:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))

        # --- the user's page is open; events arrive; the fact and the row appear without a reload
        page.goto(f"{svc.console_url}#/user/{USER}")
        expect(page.locator("#u-id")).to_have_text(USER)
        expect(page.locator("#live")).to_contain_text("live")
        expect(page.locator("[data-testid=fact]")).to_have_count(0)
        page.evaluate("window.__noReload = 'same page'")
        first = _watch(http, episodes[0], t0)
        fact = page.locator("[data-testid=fact][data-kind=continue_watching]")
        expect(fact).to_have_count(1)
        expect(fact).to_contain_text("memory")  # the source agent
        expect(fact).to_contain_text(first)  # its evidence: the finish event
        row = page.locator("[data-testid=served-row][data-row-id=continue_watching]")
        expect(row).to_be_visible()
        expect(row).to_contain_text("tools")
        assert page.evaluate("window.__noReload") == "same page"
        run_before = _served_run(http, "continue_watching")
        assert run_before and row.get_attribute("data-run-id") == run_before
        expect(page.locator("[data-testid=cycle]").first).to_contain_text("title_finished")

        # from a served item, the chain that put it there
        row.locator("li").first.click()
        chain = page.locator("[data-testid=chain]")
        expect(chain).to_contain_text(f"committed by run {run_before} of tools")
        expect(chain).to_contain_text("The planner asked for it")
        expect(chain).to_contain_text(first)
        shot(page, "user")

        # --- the operator pauses the tool agent from the console
        page.goto(f"{svc.console_url}#/agents")
        page.locator("#operator summary").click()
        page.fill("#op-name", "e2e-operator")
        page.fill("#op-key", KEY)
        tools = page.locator("[data-testid=agent-row][data-agent=tools]")
        expect(tools).to_have_attribute("data-paused", "0")
        page.select_option("#ctl-agent", "tools")
        page.fill("#ctl-note", "rows look wrong")
        page.click("#ctl-pause")
        expect(page.locator("#ctl-msg")).to_contain_text("recorded")
        expect(tools).to_have_attribute("data-paused", "1")
        expect(tools).to_contain_text("by e2e-operator")
        expect(page.locator("[data-testid=control-log]").first).to_contain_text("e2e-operator")
        expect(page.locator("[data-testid=paused-agents]")).to_contain_text("tools")

        # a request without the key changes nothing (from the page and from anywhere else)
        page.fill("#op-key", "")
        page.click("#ctl-resume")
        expect(page.locator("#ctl-msg")).to_contain_text("Refused (401)")
        anon = httpx.post(f"{svc.base_url}/console/api/control/tools", json={"action": "resume", "operator": "x"})
        assert anon.status_code == 401
        assert httpx.post(f"{svc.base_url}/console/api/control/tools", json={"action": "resume", "operator": "x"},
                          headers={"X-API-Key": "wrong"}).status_code == 401
        assert http.get("/console/api/control").json()["agents"]["tools"]["paused"] is True
        expect(tools).to_have_attribute("data-paused", "1")

        # the daemon stops running it: the next episode updates memory, the tool agent does not run
        tools_runs = _runs_of(client, "tools")
        second = _watch(http, episodes[1], t0 + 3600_000)
        page.goto(f"{svc.console_url}#/user/{USER}")
        newest = page.locator("[data-testid=cycle]").first
        expect(newest).to_contain_text("tools: paused by e2e-operator")
        expect(page.locator("[data-testid=fact][data-kind=continue_watching]")).to_contain_text(second)
        expect(newest.locator("[data-testid=run][data-agent=memory]")).to_have_count(1)
        expect(newest.locator("[data-testid=run][data-agent=tools]")).to_have_count(0)
        assert _runs_of(client, "tools") == tools_runs
        # its row keeps being served until it expires
        assert _served_run(http, "continue_watching") == run_before
        expect(page.locator("[data-testid=served-row][data-row-id=continue_watching]")).to_have_attribute(
            "data-run-id", run_before)

        # --- health, then resume: the agent runs again
        page.goto(f"{svc.console_url}#/health")
        expect(page.locator("[data-testid=daemons-alive]")).to_contain_text("1 / 1")
        expect(page.locator("[data-testid=api-latency]")).not_to_contain_text("– / –")
        page.wait_for_function("document.querySelectorAll('#c-api canvas, #c-refresh canvas').length >= 2")
        shot(page, "health")

        page.goto(f"{svc.console_url}#/agents")
        page.locator("#operator summary").click()
        page.fill("#op-key", KEY)
        page.select_option("#ctl-agent", "tools")
        page.click("#ctl-resume")
        expect(tools).to_have_attribute("data-paused", "0")
        expect(page.locator("[data-testid=hist]").first).to_be_visible()
        page.wait_for_function("document.querySelectorAll('[data-testid=hist] canvas').length >= 2")
        shot(page, "agents")
        _watch(http, episodes[2], t0 + 2 * 3600_000)
        deadline = time.monotonic() + WAIT_MS / 1000
        while _served_run(http, "continue_watching") == run_before:
            assert time.monotonic() < deadline, "the resumed tool agent never refreshed its row"
            time.sleep(0.1)
        assert _runs_of(client, "tools") > tools_runs
        assert not errors, errors
    for log in (svc.api_log, svc.daemon_log):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
