"""The page against what people know from ChatGPT and Open WebUI, in a real browser (Debian's Chromium through
Playwright) against a real gateway and simulator: the sidebar's day groups, search snippets, the phone layout,
dialogs on a touch screen, export file names, the context meter, and code highlighting fetched on demand.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect

from browser_support import chromium, conversation_id, create, finished, new_page, open_chat, page_gateway, send
from conftest import Server, script, start_simulator

LONG_MODEL = "hf.co/bartowski/Meta-Llama-3.1-70B-Instruct-GGUF:Q4_K_M"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
ZONE = "Europe/Berlin"
WIDE = """A wide table:

| Setting | Default | What it does | Where it is read | Notes for the reader |
|---|---|---|---|---|
| `proxy_read_timeout` | 60s | how long nginx waits between reads | every upstream response | raise it for slow models |

```rust
fn main() { let squares: Vec<u64> = (1..=20).map(|n| n * n).collect(); println!("{squares:?} and a long comment"); }
```
"""
CODE = """Two files:

```rust
fn main() {
    let name = "world";
    println!("hello {name}");
}
```

```Dockerfile
FROM python:3.12-slim
RUN pip install --no-cache-dir uvicorn
```

```unknownlang
plain <b>text</b> stays
```
"""


# ---- processes and browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator(
        "--profile", "instant", "--num-parallel", "0", "--models", "qwen3:32b", "--models", LONG_MODEL
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database() -> str:
    return f"{tempfile.mkdtemp(prefix='clawdbot-page-')}/chat.db"


@pytest.fixture(scope="module")
def gateway(simulator: Server, database: str) -> Iterator[Server]:
    server = page_gateway(simulator.url, "--database-url", f"sqlite:///{database}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def problems() -> Iterator[list[str]]:
    """Script errors and CSP violations in any tab of the test: none allowed."""
    found: list[str] = []
    yield found
    assert not found


@pytest.fixture
def page(browser: Browser, gateway: Server, problems: list[str]) -> Iterator[Page]:
    tab = new_page(browser, gateway, problems)
    yield tab
    tab.context.close()


def built() -> dict[str, dict[str, dict[str, int]]]:
    static = Path(__file__).resolve().parent.parent / "src" / "clawdbot" / "static"
    return json.loads((static / "build.json").read_text())  # type: ignore[no-any-return]


def chunk(prefix: str) -> str:
    """The hashed file name of one language's chunk, from the build's own list."""
    names = [name for name in built()["chunks"] if name.startswith(prefix + "-")]
    assert len(names) == 1, f"no single {prefix} chunk in build.json: {names}"
    return names[0]


# ---- 1. the sidebar's day groups ------------------------------------------------------------------------------------
def test_sidebar_groups_by_last_activity_and_regroups_at_midnight(
    browser: Browser, gateway: Server, database: str, problems: list[str]
) -> None:
    zone = ZoneInfo(ZONE)
    # The browser's clock, 5 s before midnight; the server stamps real time (later). Only seconds pass on it: a jump
    # of minutes would also fire the page's heartbeat watchdog, which would then replace a live WebSocket.
    now = datetime(2026, 3, 15, 23, 59, 55, tzinfo=zone)
    seeds = {
        "pinned old": datetime(2025, 1, 2, 9, tzinfo=zone),
        "this morning": datetime(2026, 3, 15, 8, tzinfo=zone),
        "yesterday evening": datetime(2026, 3, 14, 22, tzinfo=zone),
        "four days back": datetime(2026, 3, 11, 12, tzinfo=zone),
        "three weeks back": datetime(2026, 2, 22, 12, tzinfo=zone),
        "in january": datetime(2026, 1, 5, 12, tzinfo=zone),
        "last november": datetime(2025, 11, 3, 12, tzinfo=zone),
    }
    ids = {title: create(gateway, title) for title in seeds}
    httpx.patch(f"{gateway.url}/chat/api/conversations/{ids['pinned old']}", json={"pinned": True}).raise_for_status()
    with sqlite3.connect(database) as db:
        for title, when in seeds.items():
            stamp = int(when.timestamp() * 1000)
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (stamp, ids[title]))

    tab = new_page(browser, gateway, problems, timezone_id=ZONE)
    try:
        tab.clock.install(time=now)
        open_chat(tab)
        # The sidebar's list arrives after the page is up: wait for every seeded title before reading the groups.
        titles = tab.get_by_test_id("sidebar").get_by_test_id("conversation-title")
        for title in seeds:
            expect(titles.filter(has_text=title)).to_have_count(1)
        expected = {
            "Pinned": ["pinned old"],
            "Today": ["this morning"],
            "Yesterday": ["yesterday evening"],
            "Previous 7 days": ["four days back"],
            "Previous 30 days": ["three weeks back"],
            "January 2026": ["in january"],
            "November 2025": ["last november"],
        }
        assert groups(tab, seeds) == expected
        sidebar = tab.get_by_test_id("sidebar")
        expect(sidebar.get_by_role("heading", level=2, name="Previous 7 days")).to_be_visible()
        region = sidebar.get_by_role("list", name="Yesterday")  # each list is named by its heading
        expect(region.get_by_test_id("conversation-title")).to_have_text(["yesterday evening"])

        tab.clock.run_for("00:10")  # past midnight, with no reload and no new data
        expect(sidebar.get_by_role("list", name="Yesterday")).to_contain_text("this morning")
        assert groups(tab, seeds) == {
            "Pinned": ["pinned old"],
            "Yesterday": ["this morning"],
            "Previous 7 days": ["yesterday evening", "four days back"],
            "Previous 30 days": ["three weeks back"],
            "January 2026": ["in january"],
            "November 2025": ["last november"],
        }

        # Sending in an old conversation moves it to the top group at once (the server's clock is later than the
        # page's, which still counts as today).
        sidebar.get_by_test_id("conversation-title").filter(has_text="last november").click()
        expect(tab).to_have_title("last november · clawdbot")  # opened: the send goes to it
        send(tab, "back again")
        finished(tab)
        today = sidebar.get_by_role("list", name="Today").get_by_test_id("conversation-title")
        expect(today.filter(has_text=re.compile("^last november$"))).to_have_count(1)
        expect(sidebar.get_by_role("heading", name="November 2025")).to_have_count(0)
    finally:
        tab.context.close()
        for cid in ids.values():  # other tests' conversations are stamped with real time: these would not be
            httpx.delete(f"{gateway.url}/chat/api/conversations/{cid}").raise_for_status()


def groups(tab: Page, titles: dict[str, object]) -> dict[str, list[str]]:
    """Heading → the seeded titles under it, in the order shown."""
    found: dict[str, list[str]] = tab.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid=conversation-list] section')].map(
             (s) => [s.querySelector('h2').textContent,
                     [...s.querySelectorAll('[data-testid=conversation-title]')].map((t) => t.textContent)]))"""
    )
    shown = {heading: [t for t in items if t in titles] for heading, items in found.items()}
    return {heading: items for heading, items in shown.items() if items}


# ---- 2. search snippets ----------------------------------------------------------------------------------------------
def test_search_snippet_is_plain_text_with_the_match_marked_and_visible(page: Page, gateway: Server) -> None:
    cid = create(gateway, "Snippets")
    filler = "This sentence only pads the message so that the match sits far from its start. " * 40
    content = (
        filler + "Then the **Quokka** shows up next to <b>bold</b> text, [linked](https://example.com).\n\n" + filler
    )
    httpx.post(f"{gateway.url}/chat/api/conversations/{cid}/messages", json={"content": content}).raise_for_status()
    open_chat(page)
    page.get_by_test_id("search-input").fill("quokka")
    snippet = page.locator(f"[data-testid=search-result][data-id='{cid}'] [data-testid=search-snippet]")
    expect(snippet).to_contain_text("Then the Quokka shows up next to <b>bold</b> text, linked.")
    expect(snippet.locator("mark")).to_have_text(["Quokka"])
    assert snippet.locator("b").count() == 0  # the server's text is text
    assert snippet.evaluate("(s) => s.textContent.startsWith('…')")
    mark, box = snippet.locator("mark").bounding_box(), snippet.bounding_box()
    assert mark
    assert box
    assert box["y"] <= mark["y"]
    assert mark["y"] + mark["height"] <= box["y"] + box["height"] + 1
    assert box["x"] <= mark["x"]
    assert mark["x"] + mark["width"] <= box["x"] + box["width"] + 1


# ---- 3. the phone ----------------------------------------------------------------------------------------------------
def test_phone_keeps_the_page_still_and_wide_content_scrolls_inside_with_a_cue(
    browser: Browser, simulator: Server, gateway: Server, problems: list[str]
) -> None:
    script(simulator, {"match": "wide please", "reply": WIDE, "thinking": ""})
    phone = new_page(browser, gateway, problems, **PHONE, color_scheme="dark")
    try:
        open_chat(phone)
        picker = phone.get_by_test_id("model-picker")
        picker.select_option(LONG_MODEL)
        send(phone, "wide please")
        reply = finished(phone)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.evaluate("window.scrollTo(200, 0); document.getElementById('scroller').scrollLeft = 200")
        assert phone.evaluate("[window.scrollX, document.getElementById('scroller').scrollLeft]") == [0, 0]

        box = picker.bounding_box()
        assert box is not None
        assert 0 <= box["x"] <= box["x"] + box["width"] <= 390, box
        expect(picker).to_have_attribute("title", re.compile(re.escape(LONG_MODEL)))  # the whole name, shown cut short

        for scroller in (reply.locator(".table-wrap"), reply.locator(".code-block pre")):
            assert scroller.evaluate("(s) => s.scrollWidth > s.clientWidth")  # wide: it scrolls, the page does not
            expect(scroller).to_have_attribute("data-more", "right")
            assert scroller.evaluate("(s) => getComputedStyle(s).maskImage") != "none"  # the fade at the edge
            scroller.evaluate("(s) => s.scrollBy(40, 0)")
            expect(scroller).to_have_attribute("data-more", "left right")
            scroller.evaluate("(s) => s.scrollTo(s.scrollWidth, 0)")
            expect(scroller).to_have_attribute("data-more", "left")  # the end: no cue that way
    finally:
        phone.context.close()


# ---- 4. dialogs on a touch screen ------------------------------------------------------------------------------------
def test_dialogs_do_not_pop_the_keyboard_on_a_touch_screen(
    browser: Browser, gateway: Server, page: Page, problems: list[str]
) -> None:
    phone = new_page(browser, gateway, problems, **PHONE)
    try:
        open_chat(phone)
        phone.get_by_test_id("settings-button").tap()
        expect(phone.get_by_test_id("settings-panel")).to_be_visible()
        assert phone.evaluate("document.activeElement.id") == "settings-title"  # a title: no keyboard
        phone.get_by_test_id("settings-system-prompt").tap()  # the keyboard comes when a field is tapped
        expect(phone.get_by_test_id("settings-system-prompt")).to_be_focused()
        phone.get_by_test_id("settings-cancel").tap()

        create(gateway, "to delete on a phone")
        phone.reload()
        phone.get_by_test_id("sidebar-toggle").tap()
        item = phone.get_by_test_id("conversation-item").filter(has_text="to delete on a phone")
        item.get_by_test_id("conversation-menu").tap()
        item.get_by_test_id("delete").tap()
        expect(phone.get_by_test_id("confirm-dialog")).to_be_visible()
        assert phone.evaluate("document.activeElement.tagName") not in ("INPUT", "TEXTAREA")
        phone.get_by_test_id("confirm-cancel").tap()
    finally:
        phone.context.close()

    open_chat(page)  # a keyboard user on a desktop still starts in the first field
    page.get_by_test_id("settings-button").click()
    expect(page.get_by_test_id("settings-system-prompt")).to_be_focused()


# ---- 5. export file names --------------------------------------------------------------------------------------------
def test_exports_download_under_the_conversations_title(page: Page, gateway: Server) -> None:
    cid = create(gateway, "Deploying nginx: Über/Straße")
    httpx.post(f"{gateway.url}/chat/api/conversations/{cid}/messages", json={"content": "hi"}).raise_for_status()
    open_chat(page, f"/chat#c={cid}")
    page.get_by_test_id("settings-button").click()
    for test_id, name in (
        ("export-markdown", "Deploying nginx Über Straße.md"),
        ("export-json", "Deploying nginx Über Straße.json"),
    ):
        with page.expect_download() as download:
            page.get_by_test_id(test_id).click()
        assert download.value.suggested_filename == name


# ---- 6. the context meter --------------------------------------------------------------------------------------------
def test_context_meter_says_what_it_measures(page: Page, gateway: Server) -> None:
    open_chat(page)
    send(page, "a short question")
    finished(page)
    in_use = httpx.get(f"{gateway.url}/chat/api/conversations/{conversation_id(page)}").json()["context"]["in_use"]
    meter = page.get_by_test_id("context-meter")
    expect(meter).to_be_visible()
    expect(meter).to_contain_text("Context")
    compact = str(in_use) if in_use < 1000 else f"{in_use / 1000:.1f}".removesuffix(".0") + "K"
    expect(page.get_by_test_id("context-text")).to_have_text(f"{compact} / 8.2K")
    said = f"Context: {in_use:,} of 8,192 tokens (the last reply's prompt and answer)"
    expect(meter).to_have_attribute("title", said)
    expect(meter).to_have_accessible_description(re.compile("^" + re.escape(said)))
    meter.click()  # a tap on a phone, where there is no tooltip
    info = page.get_by_test_id("context-info")
    expect(info).to_be_visible()
    expect(info).to_contain_text("context window (num_ctx) the last reply filled")
    page.keyboard.press("Escape")
    expect(info).to_be_hidden()


# ---- 7. code highlighting, fetched when first needed -----------------------------------------------------------------
def test_languages_are_fetched_when_a_block_needs_them(page: Page, simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "two files", "reply": CODE, "thinking": "", "times": -1})
    fetched: list[str] = []
    page.on("request", lambda request: "/chat/assets/" in request.url and fetched.append(asset(request)))
    open_chat(page)
    first_paint = set(fetched)
    assert not first_paint & {chunk("core"), chunk("rust"), chunk("dockerfile")}  # the first paint has none

    send(page, "two files please")
    reply = finished(page)
    rust, docker, plain = reply.get_by_test_id("code-block").all()
    expect(rust.locator(".hljs-keyword").first).to_have_text("fn")
    expect(docker.locator(".hljs-keyword").first).to_have_text("FROM")
    expect(plain.locator("code")).to_have_text("plain <b>text</b> stays")
    assert plain.locator("code *").count() == 0
    assert {chunk("core"), chunk("rust"), chunk("dockerfile"), chunk("bash")} <= set(fetched)  # bash: RUN lines
    assert chunk("python") not in fetched
    assert chunk("go") not in fetched
    chunks = [name for name in fetched if name in built()["chunks"]]
    assert len(chunks) == len(set(chunks)) == 4  # each once

    page.reload()  # a stored reply: shown at once, painted when its languages arrive
    expect(finished(page).locator("[data-testid=code-block] .hljs-keyword").first).to_have_text("fn")


def test_language_chunks_are_served_as_immutable_scripts(gateway: Server) -> None:
    for name in (chunk("core"), chunk("rust")):
        response = httpx.get(f"{gateway.url}/chat/assets/{name}")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    sizes = built()
    assert sizes["first_paint_gzip"] + sum(s["gzip"] for s in sizes["chunks"].values()) == sizes["gzip_total"]


def asset(request: Request) -> str:
    return request.url.rsplit("/", 1)[-1]
