"""What the browser tests share: how Chromium is started, page helpers, and a relay that can break connections."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from conftest import Server, start_gateway

# Chromium: CLAWDBOT_CHROMIUM names it; else the first of these on PATH (Debian's, Ubuntu's and other names).
CHROMIUM = os.environ.get("CLAWDBOT_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome", "chrome") if (found := shutil.which(name))),
    "/usr/bin/chromium",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
_LOREM = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]


def lorem(words: int) -> str:
    """Filler a scripted reply streams about a word a token. Never one word over and over: a model server ends a
    reply that repeats one token 31 times in a row (Ollama does, and so does the simulator)."""
    return " ".join(_LOREM[i % len(_LOREM)] for i in range(words)) + " "


LOREM_START = lorem(8)  # what a reply of lorem() shows first
REPLY = "[data-testid=message][data-role=assistant]"
WAIT_MS = 15_000

# Records (status, text length) of the newest reply at every DOM change, from inside the page.
RECORD = """() => {
  window.seen = [];
  const list = document.querySelector('[data-testid=message-list]');
  new MutationObserver(() => {
    const replies = list.querySelectorAll('[data-testid=message][data-role=assistant]');
    const reply = replies[replies.length - 1];
    const content = reply && reply.querySelector('[data-testid=message-content]');
    if (content) window.seen.push([reply.dataset.status, content.textContent.length]);
  }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

# Records (time, status, text) of the newest reply at every DOM change: the whole text, so that a piece shown twice
# or skipped is caught even if the end is right. Times are the page's clock, as in FETCHES.
RECORD_TEXT = """() => {
  window.shown = [];
  const list = document.querySelector('[data-testid=message-list]');
  new MutationObserver(() => {
    const replies = list.querySelectorAll('[data-testid=message][data-role=assistant]');
    const reply = replies[replies.length - 1];
    const content = reply && reply.querySelector('[data-testid=message-content]');
    if (content) window.shown.push([performance.now(), reply.dataset.status, content.textContent]);
  }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

# An init script: every fetch the page makes, as (time, method, url).
FETCHES = """(() => {
  window.fetches = [];
  const real = window.fetch;
  window.fetch = (input, init) => {
    window.fetches.push([performance.now(), (init && init.method) || 'GET', String(input)]);
    return real(input, init);
  };
})()"""


def page_gateway(ollama_url: str, *args: str) -> Server:
    """A gateway for browser tests; fails at once, saying how to fix it, when the chat page is not built."""
    server = start_gateway(ollama_url, *args)
    page = httpx.get(server.url + "/chat")
    if page.status_code != 200:
        server.stop()
        pytest.fail(f"the chat page is not built (GET /chat answered {page.status_code}): cd frontend && npm run build")
    return server


def chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (a module fixture in each browser test file); CI must have it."""
    if not Path(CHROMIUM).exists():  # a skip, which fails in CI (conftest.py)
        pytest.skip("no Chromium: apt-get install chromium fonts-noto-cjk, or set CLAWDBOT_CHROMIUM to one")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def new_page(browser: Browser, gateway: Server, problems: list[str], **options: Any) -> Page:
    settings: dict[str, Any] = {"viewport": DESKTOP, "color_scheme": "light", "accept_downloads": True}
    context = browser.new_context(base_url=gateway.url, **{**settings, **options})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    return page


# ---- page helpers ----------------------------------------------------------------------------------------------------
def open_chat(page: Page, path: str = "/chat") -> None:
    page.goto(path)
    expect(page.locator("body")).to_have_attribute("data-transport", re.compile("websocket|sse"))
    expect(page.get_by_test_id("model-picker").locator("option")).not_to_have_count(0)


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")


def last_reply(page: Page) -> Locator:
    return page.locator(REPLY).last


def finished(page: Page, status: str = "done", timeout: float | None = None) -> Locator:
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", status, timeout=timeout)
    return reply


def conversation_id(page: Page) -> str:
    found = re.search(r"#c=([0-9a-f-]+)", page.url)
    assert found, f"no conversation in the URL {page.url}"
    return found.group(1)


def view(gateway: Server, cid: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/chat/api/conversations/{cid}")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def seen(page: Page, status: str) -> list[int]:
    """Text lengths of the newest reply at each DOM change while it had `status`."""
    return [length for state, length in page.evaluate("window.seen") if state == status]


def normal(text: str) -> str:
    return " ".join(text.split())


def counting(words: int) -> str:
    """Distinct words ("aaa aab aac …"), one simulator token each: a repeated or lost piece changes the text."""
    return " ".join("".join(chr(97 + int(digit)) for digit in f"{i:04d}") for i in range(words))


def shown(page: Page, status: str) -> list[tuple[float, str]]:
    """(time, text) of the newest reply at each DOM change while it had `status` (RECORD_TEXT)."""
    return [(at, text) for at, state, text in page.evaluate("window.shown") if state == status]


def create(gateway: Server, title: str = "") -> str:
    response = httpx.post(f"{gateway.url}/chat/api/conversations", json={"title": title})
    response.raise_for_status()
    return str(response.json()["conversation"]["id"])


def leave_and_stop(page: Page, gateway: Server) -> None:
    """Stop a gateway this page used, the page leaving first: the gateway's graceful stop waits for open
    WebSockets (until Server.stop's SIGKILL, 10 s later)."""
    page.goto("about:blank")
    gateway.stop()


def post_message(gateway: Server, cid: str, content: str) -> dict[str, Any]:
    response = httpx.post(f"{gateway.url}/chat/api/conversations/{cid}/messages", json={"content": content})
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


# ---- a relay that breaks connections the way networks do -------------------------------------------------------------
class Relay:
    """A TCP relay in front of the gateway. Its live connections are WebSockets and event streams: `freeze()` turns
    them into black holes (nothing arrives, nothing closes: a dead phone network or a proxy that lost the
    connection), `cut()` closes them at once (a proxy restarting). `refuse_websockets` closes every WebSocket
    upgrade at once, as a proxy that does not forward them would; `upgrades` counts those it saw, refused or not."""

    def __init__(self, target: Server, *, refuse_websockets: bool = False) -> None:
        self.target_port = target.port
        self.refuse_websockets = refuse_websockets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.live: list[_Link] = []
        self.refused = 0
        self.upgrades = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        for link in self.live:
            link.frozen.set()

    def cut(self) -> None:
        for link in self.live:
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the relay's threads blocked reading it
        self.live.clear()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.sockets.append(client)
        try:
            head = client.recv(65536)
        except OSError:
            client.close()
            return
        websocket = head.startswith(b"GET /chat/api/ws")
        self.upgrades += int(websocket)
        if websocket and self.refuse_websockets:
            self.refused += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:  # the gateway is down (a test restarting it, or teardown): the browser sees a reset
            client.close()
            return
        self.sockets.append(upstream)
        link = _Link(client, upstream, threading.Event())
        threading.Thread(target=_pump, args=(upstream, client, link.frozen), daemon=True).start()
        # A browser may reuse a kept-alive connection for an event stream: every request on it is looked at.
        _pump(client, upstream, link.frozen, lambda request: self._look(link, request), head)

    def _look(self, link: _Link, request: bytes) -> None:
        line = request.split(b"\r\n", 1)[0]
        if link not in self.live and line.startswith(b"GET ") and (b"/chat/api/ws" in line or b"/events" in line):
            self.live.append(link)


@dataclass(eq=False)
class _Link:
    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event  # read and drop: the sender never notices


def _pump(
    source: socket.socket,
    target: socket.socket,
    frozen: threading.Event,
    look: Callable[[bytes], None] | None = None,
    first: bytes = b"",
) -> None:
    try:
        data = first or source.recv(65536)
        while data:
            if look is not None:
                look(data)
            if not frozen.is_set():
                target.sendall(data)
            data = source.recv(65536)
    except OSError:
        pass
    finally:
        source.close()
        target.close()
