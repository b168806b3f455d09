"""What the browser tests share: how Chromium is started, page helpers, and a relay that can break connections."""

from __future__ import annotations

import re
import socket
import threading
from typing import Any

import httpx
from playwright.sync_api import Browser, Locator, Page, expect

from conftest import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
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


def finished(page: Page, status: str = "done") -> Locator:
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", status)
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


# ---- a relay that breaks connections the way networks do -------------------------------------------------------------
class Relay:
    """A TCP relay in front of the gateway. `freeze()` turns its open WebSockets into black holes (nothing arrives,
    nothing closes: a dead phone network or a proxy that lost the connection); `refuse_websockets` closes every
    WebSocket upgrade at once, as a proxy that does not forward them would."""

    def __init__(self, target: Server, *, refuse_websockets: bool = False) -> None:
        self.target_port = target.port
        self.refuse_websockets = refuse_websockets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.websockets: list[threading.Event] = []  # each one's "frozen" flag
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        for frozen in self.websockets:
            frozen.set()

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
        head = client.recv(65536)
        websocket = head.startswith(b"GET /chat/api/ws")
        if websocket and self.refuse_websockets:
            self.refused += 1
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets.append(upstream)
        frozen = threading.Event()
        if websocket:
            self.websockets.append(frozen)
        upstream.sendall(head)
        threading.Thread(target=_pump, args=(upstream, client, frozen), daemon=True).start()
        _pump(client, upstream, frozen)


def _pump(source: socket.socket, target: socket.socket, frozen: threading.Event) -> None:
    try:
        while data := source.recv(65536):
            if not frozen.is_set():  # frozen: read and drop, so the sender never notices
                target.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        target.close()
