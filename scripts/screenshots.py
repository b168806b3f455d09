"""Regenerate the chat page's screenshots in docs/ from a real gateway, simulator and Chromium.

    .venv/bin/python scripts/screenshots.py

The simulator runs at real RTX 4090 speed, so the stats under the reply read as they would at home.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from conftest import script, start_gateway, start_simulator  # noqa: E402

QUESTION = "How do I fetch many URLs concurrently in Python without overloading the server?"
THINKING = (
    "The user wants concurrency with a limit. Compare asyncio.gather, a semaphore and a worker queue, "
    "then show the semaphore version with httpx since it is the shortest correct answer."
)
ANSWER = """Use a semaphore to cap how many requests are in flight. The three usual approaches:

| Approach | Requests in flight | Memory | Best for |
|---|---|---|---|
| `asyncio.gather()` | all at once | grows with the list | a few dozen URLs |
| `asyncio.Semaphore` | at most `limit` | bounded | many URLs, a polite client |

```python
import asyncio
import httpx

async def fetch_all(urls: list[str], limit: int = 8) -> list[str]:
    gate = asyncio.Semaphore(limit)
    async with httpx.AsyncClient(timeout=10) as client:
        async def fetch(url: str) -> str:
            async with gate:
                response = await client.get(url)
                return response.text
        return await asyncio.gather(*(fetch(url) for url in urls))
```

At most `limit` requests are in flight, and `gather` keeps the pages in order."""
OTHERS = ["Trip ideas for Lisbon in May", "SQL window functions, explained", "Dockerfile for a FastAPI app"]


def warm_up(url: str) -> None:
    """One reply first, so the screenshot's TTFT is not the model loading."""
    created = httpx.post(f"{url}/chat/api/conversations", json={}).json()["conversation"]["id"]
    httpx.post(f"{url}/chat/api/conversations/{created}/messages", json={"content": "hi"}).raise_for_status()
    for _ in range(600):
        if httpx.get(f"{url}/chat/api/conversations/{created}").json()["active"] is None:
            break
        time.sleep(0.1)
    httpx.delete(f"{url}/chat/api/conversations/{created}").raise_for_status()


def conversation(page: Page, url: str) -> None:
    for title in OTHERS:
        httpx.post(f"{url}/chat/api/conversations", json={"title": title}).raise_for_status()
    pinned = httpx.post(f"{url}/chat/api/conversations", json={"title": "KV cache sizing for long contexts"}).json()
    httpx.patch(f"{url}/chat/api/conversations/{pinned['conversation']['id']}", json={"pinned": True})
    page.goto(f"{url}/chat")
    page.get_by_test_id("composer-input").fill(QUESTION)
    page.get_by_test_id("composer-input").press("Enter")
    expect(page.locator("[data-testid=message][data-role=assistant]")).to_have_attribute(
        "data-status", "done", timeout=60_000
    )
    highlighted(page)


def highlighted(page: Page) -> None:
    """The code's language arrives on demand, just after the reply: wait for its colours."""
    expect(page.locator("[data-testid=code-block] .hljs-keyword").first).to_be_visible()


def main() -> None:
    simulator = start_simulator("--profile", "4090")
    gateway = start_gateway(simulator.url)
    try:
        script(simulator, {"match": "fetch many URLs", "reply": ANSWER, "thinking": THINKING})
        warm_up(gateway.url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            desktop = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme="light")
            conversation(desktop, gateway.url)
            desktop.get_by_test_id("composer-input").blur()
            desktop.evaluate("document.getElementById('scroller').scrollTop = 0")
            desktop.screenshot(path=ROOT / "docs" / "screenshot-desktop-light.png")
            phone = browser.new_page(
                viewport={"width": 390, "height": 844},
                is_mobile=True,
                has_touch=True,
                device_scale_factor=2,
                color_scheme="dark",
            )
            phone.goto(desktop.url)
            expect(phone.locator("[data-testid=message-stats]").last).to_be_visible()
            highlighted(phone)
            phone.evaluate("document.getElementById('scroller').scrollTop = 0")
            phone.screenshot(path=ROOT / "docs" / "screenshot-phone-dark.png")
            browser.close()
    finally:
        gateway.stop()
        simulator.stop()
    print("wrote docs/screenshot-desktop-light.png and docs/screenshot-phone-dark.png")


if __name__ == "__main__":
    main()
