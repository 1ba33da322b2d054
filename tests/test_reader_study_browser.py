"""The reader web app in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) driven
by Playwright against the app served by uvicorn on 127.0.0.1 inside this test.

Two readers answer at the same time (asyncio: both browser pages work concurrently); one stops half way,
closes the browser context and resumes with the token on the home page; the analysis then counts every
answer. The server runs in a thread of this process and is stopped by the test; every browser step has a
timeout, and the whole scenario is bounded by `LIMIT_S`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright
from test_reader_study import make_study

from medsyn.readerstudy import make_app, reader_study_section

LIMIT_S = 150
STEP_MS = 20_000
ADMIN = "admin-token-for-test"


def find_chromium() -> str | None:
    """Debian's chromium binary (the /usr/bin wrapper or the binary itself), or $MEDSYN_CHROMIUM."""
    for candidate in (os.environ.get("MEDSYN_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):  # fmt: skip
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run installs it when it can)"
)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """The app for a fresh 12-image study, served by uvicorn on 127.0.0.1 (a free port) in a thread."""
    study = make_study(tmp_path, n=12)
    config = uvicorn.Config(make_app(study, ADMIN), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (srv.started and srv.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start within 30 s"
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", study
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the server did not stop"


async def answer(page: Page, count: int, keyboard: bool) -> None:
    """Answer `count` images, by keyboard shortcuts (R/S, 1-5, Enter) or by clicking."""
    for k in range(count):
        progress = int(await page.get_attribute("#progress", "value") or 0)
        assert await page.is_disabled("#submit")  # nothing chosen yet: cannot submit
        assert await page.eval_on_selector("#image", "img => img.complete && img.naturalWidth > 0")
        if keyboard:
            await page.keyboard.press("s" if k % 2 else "r")
            await page.keyboard.press(str(k % 5 + 1))
            async with page.expect_navigation(timeout=STEP_MS):
                await page.keyboard.press("Enter")
        else:
            await page.check("input[name=answer][value=synthetic]")
            await page.check(f"input[name=confidence][value='{k % 5 + 1}']")
            async with page.expect_navigation(timeout=STEP_MS):
                await page.click("#submit")
        if k + 1 < count:
            assert int(await page.get_attribute("#progress", "value") or 0) == progress + 1


async def from_home(browser: Browser, base: str, field: str, value: str, button: str) -> Page:
    """A fresh browser context on the home page: fill `field` with `value`, press `button`, reach an image."""
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(STEP_MS)
    await page.goto(base + "/")
    await page.fill(f"input[name={field}]", value)
    await page.click(button)
    await page.wait_for_selector("#image")
    return page


async def start(browser: Browser, base: str, name: str) -> Page:
    return await from_home(browser, base, "name", name, "#start-button")


async def steady(browser: Browser, base: str) -> None:
    page = await start(browser, base, "steady")
    await answer(page, 12, keyboard=True)
    assert "All done" in await page.content()


async def resumer(browser: Browser, base: str) -> None:
    page = await start(browser, base, "resumer")
    await answer(page, 5, keyboard=False)
    await page.keyboard.press("q")  # stop for now
    await page.wait_for_selector("#resume")
    token = (await page.get_attribute("#resume", "href")).rsplit("/", 1)[1]
    assert "5 of 12 answers are saved" in await page.content()
    await page.context.close()  # the browser is gone; a new one resumes
    page = await from_home(browser, base, "token", token, "#resume-button")
    assert await page.get_attribute("#progress", "value") == "5"
    await answer(page, 7, keyboard=True)
    assert "All done" in await page.content()


async def scenario(base: str) -> str:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            await asyncio.gather(steady(browser, base), resumer(browser, base))
            admin = await (await browser.new_context()).new_page()
            await admin.goto(f"{base}/admin")
            await admin.fill("input[name=token]", ADMIN)
            await admin.click("#admin-login")
            return await admin.inner_text("#answers")
        finally:
            await browser.close()


def test_two_readers_in_chromium_one_stops_and_resumes(server):
    base, study = server
    admin_count = asyncio.run(asyncio.wait_for(scenario(base), LIMIT_S))
    assert admin_count == "24"
    section = reader_study_section(study)
    assert section["study"]["answers"] == 24 and section["study"]["complete_readers"] == 2
    assert {r["reader"]: r["answered"] for r in section["readers"]} == {"steady": 12, "resumer": 12}
    resumer = next(r for r in section["readers"] if r["reader"] == "resumer")
    # the resumer clicked "synthetic" for the first 5, then alternated real/synthetic by keyboard
    assert resumer["sensitivity"]["n"] + resumer["specificity"]["n"] == 12
    assert section["fleiss_kappa"]["images"] == 12
