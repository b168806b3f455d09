"""The chat page in a real browser (Debian's Chromium through Playwright) against a real gateway and simulator.

The simulator streams at a fixed 200 tokens/s, so a reply of a few hundred tokens visibly grows for a second or
two, and `script()` fixes the exact text. What the page rendered while streaming is recorded in the page itself
by a MutationObserver, so no assertion depends on when Python happened to look.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import (
    FETCHES,
    LOREM_START,
    RECORD,
    RECORD_TEXT,
    REPLY,
    Relay,
    chromium,
    conversation_id,
    counting,
    create,
    finished,
    last_reply,
    leave_and_stop,
    lorem,
    new_page,
    normal,
    open_chat,
    page_gateway,
    post_message,
    seen,
    send,
    shown,
    view,
)
from conftest import Server, script, start_gateway, start_simulator, wait_for

PROSE = " ".join(
    [
        "Streaming a reply means the page shows each token as it arrives instead of waiting for the end.",
        "The gateway forwards every chunk at once, and the page renders the whole text so far once per frame.",
    ]
    * 4
)
TABLE_AND_CODE = """Here is a **table**:

| Method | When | Returns |
|---|---|---|
| `create_task()` | at once | a `Task` |
| `gather()` | when all finish | a list |

```python
import asyncio

async def main() -> None:
    await asyncio.sleep(1)  # wait a second
    print("done")
```

```unknownlang
plain <b>text</b>
```

A [link](https://example.com/docs) and an image ![diagram](https://example.com/d.png).

<img src="x" onerror="document.title='pwned'"><script>document.title='pwned'</script>
"""
PYTHON = 'import asyncio\n\nasync def main() -> None:\n    await asyncio.sleep(1)  # wait a second\n    print("done")\n'


# ---- processes and browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--tokens-per-second", "200", "--num-parallel", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = page_gateway(simulator.url, "--heartbeat", "0.5")  # a lost connection is noticed in 1.25 s
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def page(browser: Browser, gateway: Server) -> Iterator[Page]:
    """A fresh tab (own storage) at desktop size; fails the test on a script error or a CSP violation."""
    problems: list[str] = []
    tab = new_page(browser, gateway, problems)
    yield tab
    tab.context.close()
    assert not problems


# ---- 1. streaming, stats, times, the screen-reader announcement ------------------------------------------------------
def test_reply_grows_while_streaming_then_shows_its_stats(page: Page, simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "stream please", "reply": PROSE, "thinking": ""})
    open_chat(page)
    page.evaluate(RECORD)
    page.evaluate("""() => { window.said = [];
      new MutationObserver(() => window.said.push(document.querySelector('#announcer').textContent))
        .observe(document.querySelector('#announcer'), {childList: true, characterData: true, subtree: true}); }""")
    send(page, "stream please")
    reply = finished(page)

    growing = seen(page, "writing")
    assert growing == sorted(growing), growing
    assert len(set(growing)) >= 3, f"the reply was rendered at only {sorted(set(growing))} characters while streaming"
    assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(PROSE)

    stored = view(gateway, conversation_id(page))["messages"][-1]
    stats = reply.get_by_test_id("message-stats").inner_text()
    assert re.fullmatch(r"TTFT [\d.]+ m?s · [\d.]+ tok/s · [\d,]+ tokens · [\d.]+ s total", stats), stats
    assert f"{stored['output_tokens'] / stored['eval_ms'] * 1000:.1f} tok/s" in stats
    assert f"{stored['output_tokens']:,} tokens" in stats

    # One click on the stats opens where the reply's time went: the stored parts, and their sums.
    timing = reply.get_by_test_id("message-timing")
    expect(timing).to_be_hidden()
    reply.get_by_test_id("message-stats").click()
    expect(timing).to_be_visible()
    shown = {
        dd.get_attribute("data-part"): float(dd.get_attribute("data-ms") or "nan") for dd in timing.locator("dd").all()
    }
    parts = {part: ms for part, ms in stored["timing"].items() if part not in ("ttft_ms", "total_ms")}
    assert shown == {part: ms for part, ms in parts.items() if ms is not None}
    expect(timing).to_contain_text("in all")
    reply.get_by_test_id("message-stats").click()
    expect(timing).to_be_hidden()
    for message in page.get_by_test_id("message").all():
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT.*Z", message.get_by_test_id("message-time").get_attribute("datetime") or ""
        )

    # Heard once, when done, as plain text; the message that streamed is no live region.
    expect(page.get_by_test_id("announcer")).to_have_text(re.compile(re.escape(PROSE[:60])))
    assert [text for text in page.evaluate("window.said") if text] == [page.get_by_test_id("announcer").text_content()]
    assert page.locator("[data-testid=message-list] [aria-live], [data-testid=message-list][aria-live]").count() == 0
    assert page.get_by_test_id("announcer").get_attribute("aria-live") == "polite"


# ---- 2. markdown: tables, highlighted code, sanitising; streamed render == render at once ----------------------------
def test_markdown_renders_tables_and_code_the_same_streamed_or_loaded(page: Page, simulator: Server) -> None:
    # The simulator cuts text like Qwen's tokenizer: every backtick and pipe is a chunk of its own.
    script(simulator, {"match": "markdown please", "reply": TABLE_AND_CODE, "thinking": ""})
    open_chat(page)
    page.evaluate(RECORD)
    send(page, "markdown please")
    content = finished(page).get_by_test_id("message-content")
    assert len(set(seen(page, "writing"))) >= 3  # it was rendered while incomplete, not only at the end

    assert content.locator("table th").all_inner_texts() == ["Method", "When", "Returns"]
    assert content.locator("table td code").first.inner_text() == "create_task()"
    python, unknown = content.get_by_test_id("code-block").all()
    assert python.get_by_test_id("code-lang").inner_text() == "python"
    assert python.locator("code .hljs-keyword").count() >= 3  # import, async, def, await
    assert unknown.get_by_test_id("code-lang").inner_text() == "unknownlang"
    assert unknown.locator("code").inner_text().strip() == "plain <b>text</b>"

    link = content.locator("a[href='https://example.com/docs']")
    assert (link.get_attribute("target"), link.get_attribute("rel")) == ("_blank", "noopener noreferrer")
    assert content.locator("img, script, [onerror]").count() == 0
    expect(content.locator("a.image-link")).to_have_text("[image: diagram]")
    expect(content).to_contain_text("""<img src="x" onerror="document.title='pwned'">""")  # raw HTML shows as text
    assert page.title() != "pwned"

    streamed = content.inner_html()
    page.reload()
    loaded = finished(page).get_by_test_id("message-content")
    # A language's highlighting is fetched on demand: a reloaded page shows the block plain until it has arrived.
    expect(loaded.locator("code.hljs")).to_have_count(1)
    expect(loaded.locator("[data-highlight]")).to_have_count(0)
    assert loaded.inner_html() == streamed

    loaded.get_by_test_id("code-copy").first.click()
    expect(loaded.get_by_test_id("code-copy").first).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == PYTHON


# ---- 3. thinking -----------------------------------------------------------------------------------------------------
def test_thinking_is_collapsed_and_says_how_long(page: Page, simulator: Server, gateway: Server) -> None:
    thinking = "The user asks for the answer. " * 40  # ~240 tokens: over a second at 200 tokens/s
    script(simulator, {"match": "think about it", "reply": "The answer is **42**.", "thinking": thinking})
    open_chat(page)
    send(page, "think about it")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "thinking")
    expect(reply.get_by_test_id("thinking-summary")).to_have_text(re.compile(r"^Thinking…"))

    block = finished(page).get_by_test_id("thinking")
    stored = view(gateway, conversation_id(page))["messages"][-1]
    expect(block.get_by_test_id("thinking-summary")).to_have_text(f"Thought for {stored['thinking_ms'] / 1000:.1f} s")
    assert block.get_attribute("open") is None
    assert not block.locator(".thinking-body").is_visible()
    block.get_by_test_id("thinking-summary").click()
    expect(block.locator(".thinking-body")).to_contain_text("The user asks for the answer.")
    assert reply.get_by_test_id("message-content").inner_text() == "The answer is 42."


# ---- 4. stop: the button, Esc, and a plain error for sending meanwhile -----------------------------------------------
def test_stop_keeps_the_partial_reply_by_button_or_escape(page: Page, simulator: Server, gateway: Server) -> None:
    endless = lorem(3000)  # 15 s at 200 tokens/s: only Stop ends it within the test
    script(simulator, {"match": "stop me", "reply": endless, "thinking": "", "times": 2})
    open_chat(page)
    send(page, "stop me with the button")
    reply = last_reply(page)
    expect(reply.get_by_test_id("message-content")).to_contain_text(LOREM_START.strip())
    expect(page.get_by_test_id("send")).to_be_hidden()

    send(page, "may I interrupt?")  # Enter still sends; the server answers 409 and the page says why
    expect(page.get_by_test_id("error")).to_contain_text("still being written")
    expect(page.get_by_test_id("composer-input")).to_have_value("may I interrupt?")

    page.get_by_test_id("stop").click()
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("message-status")).to_have_text("Stopped")
    shown = reply.get_by_test_id("message-content").inner_text().strip()
    stored = view(gateway, conversation_id(page))["messages"][-1]
    assert stored["status"] == "stopped"
    assert shown
    assert endless.startswith(shown)
    assert stored["content"].strip() == shown

    send(page, "stop me with escape")
    expect(page.locator(REPLY)).to_have_count(2)
    expect(last_reply(page).get_by_test_id("message-content")).to_contain_text(LOREM_START.strip())
    page.keyboard.press("Escape")
    expect(last_reply(page)).to_have_attribute("data-status", "stopped")
    expect(page.get_by_test_id("send")).to_be_visible()


# ---- 5. routing ------------------------------------------------------------------------------------------------------
def test_reload_and_history_keep_the_conversation(page: Page, simulator: Server) -> None:
    script(simulator, {"match": "remember me", "reply": "I will remember.", "thinking": ""})
    open_chat(page)
    send(page, "remember me")
    finished(page)
    cid = conversation_id(page)

    page.reload()
    expect(last_reply(page)).to_have_text(re.compile("I will remember."))
    expect(page.locator("[data-testid=message][data-role=user]")).to_have_text(re.compile("remember me"))
    expect(page.locator(f"[data-testid=conversation-item][data-id='{cid}'] a")).to_have_attribute(
        "aria-current", "page"
    )

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message")).to_have_count(0)
    assert "#c=" not in page.url
    page.go_back()
    expect(last_reply(page)).to_have_text(re.compile("I will remember."))
    assert conversation_id(page) == cid
    page.go_forward()
    expect(page.get_by_test_id("message")).to_have_count(0)


# ---- 6. search -------------------------------------------------------------------------------------------------------
def test_search_finds_a_conversation_by_a_word_of_its_messages(page: Page, simulator: Server) -> None:
    script(simulator, {"match": "Zanzibar", "reply": "Spices, mostly cloves.", "thinking": ""})
    open_chat(page)
    send(page, "What does Zanzibar export?")
    finished(page)
    cid = conversation_id(page)
    page.get_by_test_id("new-chat").click()

    page.get_by_test_id("search-input").fill("cloves")
    result = page.get_by_test_id("search-result")
    expect(result).to_have_count(1)
    expect(result.locator("mark")).to_have_text("cloves")
    expect(result.get_by_test_id("search-snippet")).to_contain_text("Spices, mostly cloves.")
    result.locator("a").click()
    expect(last_reply(page)).to_contain_text("Spices, mostly cloves.")
    assert conversation_id(page) == cid


# ---- 7. exports ------------------------------------------------------------------------------------------------------
def test_both_exports_download_and_parse(page: Page, simulator: Server) -> None:
    script(simulator, {"match": "export", "reply": "Exported words, *as written*.", "thinking": ""})
    open_chat(page)
    send(page, "Please export this")
    finished(page)
    page.get_by_test_id("settings-button").click()

    with page.expect_download() as markdown_download:
        page.get_by_test_id("export-markdown").click()
    markdown = Path(markdown_download.value.path()).read_text(encoding="utf-8")
    assert markdown_download.value.suggested_filename.endswith(".md")
    assert "Please export this" in markdown
    assert "Exported words, *as written*." in markdown

    with page.expect_download() as json_download:
        page.get_by_test_id("export-json").click()
    exported = json.loads(Path(json_download.value.path()).read_text(encoding="utf-8"))
    assert [m["content"] for m in exported["messages"]] == ["Please export this", "Exported words, *as written*."]


# ---- 8. phone --------------------------------------------------------------------------------------------------------
def test_phone_layout_sends_reads_and_opens_the_drawer(browser: Browser, simulator: Server, gateway: Server) -> None:
    problems: list[str] = []
    phone = new_page(
        browser,
        gateway,
        problems,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        color_scheme="dark",
    )
    try:
        script(simulator, {"match": "small screen", "reply": "Readable on a phone.\n\n| a | b |\n|---|---|\n| 1 | 2 |"})
        open_chat(phone)
        sidebar = phone.get_by_test_id("sidebar")
        expect(sidebar).to_be_hidden()  # a drawer, off screen until asked for
        box = phone.get_by_test_id("composer-input")
        assert box.evaluate("el => getComputedStyle(el).fontSize") == "16px"  # iOS zooms into smaller inputs
        box.fill("small screen test")
        phone.get_by_test_id("send").tap()
        expect(finished(phone).get_by_test_id("message-content")).to_contain_text("Readable on a phone.")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390

        phone.get_by_test_id("sidebar-toggle").tap()
        expect(sidebar).to_be_visible()
        item = phone.locator(f"[data-testid=conversation-item][data-id='{conversation_id(phone)}']")
        expect(item).to_be_in_viewport()
        phone.get_by_test_id("drawer-backdrop").tap(position={"x": 370, "y": 400})
        expect(sidebar).to_be_hidden()
    finally:
        phone.context.close()
    assert not problems


# ---- 9. the SSE fallback ---------------------------------------------------------------------------------------------
def test_sse_fallback_streams_a_reply(page: Page, simulator: Server) -> None:
    script(simulator, {"match": "over sse", "reply": PROSE, "thinking": ""})
    sockets: list[str] = []
    streams: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda request: streams.append(request.url) if request.url.endswith("/events") else None)
    open_chat(page, "/chat?transport=sse")
    expect(page.locator("body")).to_have_attribute("data-transport", "sse")
    page.evaluate(RECORD)
    send(page, "reply over sse please")
    reply = finished(page)
    assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(PROSE)
    assert len(set(seen(page, "writing"))) >= 3
    assert streams
    assert not sockets


# ---- 10. sidebar actions; regenerate and edit ------------------------------------------------------------------------
def item_action(page: Page, cid: str, action: str) -> None:
    item = page.locator(f"[data-testid=conversation-item][data-id='{cid}']")
    item.get_by_test_id("conversation-menu").click()
    item.get_by_test_id(action).click()


def test_sidebar_renames_pins_and_deletes(page: Page, gateway: Server) -> None:
    older, newer = create(gateway, "Older plans"), create(gateway, "Newer notes")
    open_chat(page)
    items = page.get_by_test_id("conversation-item")
    expect(items.first).to_have_attribute("data-id", newer)  # newest first

    item_action(page, older, "rename")
    page.get_by_test_id("rename-input").fill("Renamed plans")
    page.get_by_test_id("rename-input").press("Enter")
    expect(page.locator(f"[data-id='{older}'] [data-testid=conversation-title]")).to_have_text("Renamed plans")
    assert view(gateway, older)["conversation"]["title"] == "Renamed plans"

    item_action(page, older, "pin")
    expect(items.first).to_have_attribute("data-id", older)
    expect(items.first).to_have_attribute("data-pinned", "true")

    item_action(page, newer, "delete")
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_contain_text("Newer notes")
    dialog.get_by_test_id("confirm-cancel").click()
    expect(page.locator(f"[data-testid=conversation-item][data-id='{newer}']")).to_have_count(1)
    item_action(page, newer, "delete")
    dialog.get_by_test_id("confirm-ok").click()
    expect(page.locator(f"[data-testid=conversation-item][data-id='{newer}']")).to_have_count(0)
    assert httpx.get(f"{gateway.url}/chat/api/conversations/{newer}").status_code == 404


def test_regenerate_and_edit_replace_the_superseded_messages(page: Page, simulator: Server) -> None:
    script(
        simulator,
        {"match": "first question", "reply": "First answer.", "thinking": ""},
        {"match": "first question", "reply": "Second answer.", "thinking": ""},
        {"match": "edited question", "reply": "Answer to the edit.", "thinking": ""},
    )
    open_chat(page)
    send(page, "first question")
    first = finished(page)
    first_id = first.get_attribute("data-id")
    expect(first).to_contain_text("First answer.")

    first.get_by_test_id("regenerate").click()
    expect(page.locator(f"[data-id='{first_id}']")).to_have_count(0)
    expect(finished(page)).to_contain_text("Second answer.")
    expect(page.locator(REPLY)).to_have_count(1)

    user = page.locator("[data-testid=message][data-role=user]")
    user.get_by_test_id("edit").click()
    page.get_by_test_id("edit-input").fill("edited question")
    page.get_by_test_id("edit-save").click()
    expect(user).to_have_count(1)
    expect(user).to_contain_text("edited question")
    expect(finished(page)).to_contain_text("Answer to the edit.")
    expect(page.locator(REPLY)).to_have_count(1)

    page.get_by_test_id("copy").last.click()
    assert page.evaluate("navigator.clipboard.readText()") == "Answer to the edit."


# ---- 11. theme; settings, context meter and left-out turns -----------------------------------------------------------
def background(page: Page) -> str:
    return str(page.evaluate("getComputedStyle(document.body).backgroundColor"))


def test_theme_follows_the_system_and_the_toggle_persists(page: Page) -> None:
    open_chat(page)
    light = background(page)
    assert light == "rgb(255, 255, 255)"
    page.get_by_test_id("theme-toggle").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark = background(page)
    assert dark != light
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")  # before the app script: no flash
    assert background(page) == dark
    page.get_by_test_id("theme-toggle").click()
    assert background(page) == light
    page.emulate_media(color_scheme="dark")  # no choice stored now: the system decides
    assert background(page) == dark


def test_settings_context_meter_and_left_out_turns(page: Page, simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "turn", "reply": "Noted.", "thinking": "", "times": -1})
    open_chat(page)
    model = page.get_by_test_id("model-picker").locator("option").first.inner_text()
    assert re.fullmatch(r"qwen3:32b · \d+\.\d GB · Q4_K_M", model), model

    page.get_by_test_id("settings-button").click()  # before the first send: kept for the conversation it creates
    page.get_by_test_id("settings-system-prompt").fill("Answer in one word.")
    page.get_by_test_id("settings-num-ctx").fill("256")
    page.get_by_test_id("settings-think").select_option("false")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-panel")).to_be_hidden()

    send(page, "first turn: " + lorem(60))  # ~70 tokens: with the next turn, more than half of 256 can hold
    finished(page)
    cid = conversation_id(page)
    settings = view(gateway, cid)["conversation"]
    assert (settings["system_prompt"], settings["num_ctx"], settings["think"]) == ("Answer in one word.", 256, False)
    meter = page.get_by_test_id("context-text")  # under 1,000 the short form is the plain number
    in_use = view(gateway, cid)["context"]["in_use"]
    expect(meter).to_have_text(f"{in_use} / 256")
    expect(page.get_by_test_id("context-omitted")).to_be_hidden()

    send(page, "second turn: " + lorem(60))  # half of 256 is kept for the reply: no room for the first turn
    expect(page.locator(REPLY)).to_have_count(2)
    finished(page)
    expect(page.get_by_test_id("context-omitted")).to_have_text("1 earlier turn left out of the context")
    expect(meter).to_have_text(f"{view(gateway, cid)['context']['in_use']} / 256")


# ---- 12. transport: a silent connection is replaced; blocked WebSockets fall back to SSE -----------------------------
def test_a_silent_websocket_is_replaced_and_the_reply_goes_on(page: Page, simulator: Server, gateway: Server) -> None:
    relay = Relay(gateway)
    try:
        text = lorem(600)  # 3 s at 200 tokens/s
        script(simulator, {"match": "survive", "reply": text, "thinking": ""})
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        open_chat(page, relay.url + "/chat")
        send(page, "survive a dead connection")
        expect(last_reply(page).get_by_test_id("message-content")).to_contain_text(LOREM_START.strip())
        relay.freeze()  # no more heartbeats or deltas, and no close either
        reply = finished(page)
        assert len(sockets) >= 2, "the page never noticed the connection had died"
        assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(text)
    finally:
        relay.close()


def test_blocked_websockets_fall_back_to_sse(page: Page, simulator: Server, gateway: Server) -> None:
    relay = Relay(gateway, refuse_websockets=True)
    try:
        script(simulator, {"match": "no sockets", "reply": PROSE, "thinking": ""})
        open_chat(page, relay.url + "/chat")
        expect(page.locator("body")).to_have_attribute("data-transport", "sse")
        assert relay.refused == 2
        send(page, "no sockets here")
        assert normal(finished(page).get_by_test_id("message-content").inner_text()) == normal(PROSE)
    finally:
        relay.close()


# ---- 13. durable replies: resume after a cut or a reload, Continue after a crash, the queue, retried sends -----------
def sent_commands(page: Page) -> list[dict[str, Any]]:
    """Every command the page sends on its WebSockets, from now on."""
    commands: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: commands.append(json.loads(payload))))
    return commands


def test_a_cut_websocket_resumes_the_reply_where_it_stopped(page: Page, simulator: Server, gateway: Server) -> None:
    text = counting(600)  # 3 s at 200 tokens/s, and no two words alike
    script(simulator, {"match": "cut me off", "reply": text, "thinking": ""})
    relay = Relay(gateway)
    try:
        commands = sent_commands(page)
        open_chat(page, relay.url + "/chat")
        page.evaluate(RECORD_TEXT)
        send(page, "cut me off halfway")
        expect(last_reply(page).get_by_test_id("message-content")).to_contain_text(text.split()[100])
        cut_at = page.evaluate("performance.now()")
        relay.cut()
        reply = finished(page)
    finally:
        relay.close()
    stored = view(gateway, conversation_id(page))["messages"][-1]
    assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(stored["content"]) == normal(text)
    writing = shown(page, "writing")
    assert all(normal(text).startswith(normal(piece)) for _, piece in writing), "a piece was shown twice or skipped"
    assert len({len(piece) for at, piece in writing if at > cut_at}) >= 3, "it did not go on streaming after the cut"
    resumes = [c for c in commands if c["type"] == "resume"]
    assert [c["reply_id"] for c in resumes] == [stored["id"]]
    assert resumes[0]["from"] > 3  # from the first event it lacked, not from the start


def test_a_silent_event_stream_is_reopened_after_the_last_event_seen(
    page: Page, simulator: Server, gateway: Server
) -> None:
    text = counting(600)
    script(simulator, {"match": "silence", "reply": text, "thinking": ""})
    relay = Relay(gateway)
    try:
        streams: list[str] = []
        page.on("request", lambda request: streams.append(request.url) if "/events" in request.url else None)
        open_chat(page, relay.url + "/chat?transport=sse")
        page.evaluate(RECORD_TEXT)
        send(page, "silence in the middle")
        expect(last_reply(page).get_by_test_id("message-content")).to_contain_text(text.split()[100])
        relay.freeze()
        reply = finished(page)
    finally:
        relay.close()
    stored = view(gateway, conversation_id(page))["messages"][-1]
    assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(stored["content"]) == normal(text)
    assert all(normal(text).startswith(normal(piece)) for _, piece in shown(page, "writing"))
    reopened = [url for url in streams if "last_event_id=" in url]
    assert reopened, streams
    last_seen = re.search(r"last_event_id=([0-9a-f-]+)%3A(\d+)", reopened[0])
    assert last_seen
    assert last_seen.group(1) == stored["id"]
    assert int(last_seen.group(2)) > 2  # after the last event it had, not from the start


def test_reloading_mid_reply_shows_it_still_coming(page: Page, simulator: Server, gateway: Server) -> None:
    thinking = "Let me think about counting. " * 100  # 3 s of thinking: the reload lands in the middle of it
    text = counting(300)
    script(simulator, {"match": "reload me", "reply": text, "thinking": thinking})
    page.add_init_script(FETCHES)
    open_chat(page)
    send(page, "reload me while it thinks")
    expect(last_reply(page)).to_have_attribute("data-status", "thinking")
    reply_id = last_reply(page).get_attribute("data-id")
    cid = conversation_id(page)

    page.reload()
    page.evaluate(RECORD_TEXT)
    reply = page.locator(f"[data-id='{reply_id}']")
    expect(reply).to_have_attribute("data-status", "thinking")
    expect(reply.get_by_test_id("thinking-summary")).to_have_text(re.compile(r"^Thinking…"))
    expect(reply).to_have_attribute("data-status", "done", timeout=20_000)
    stored = view(gateway, cid)["messages"][-1]
    assert stored["id"] == reply_id
    assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(stored["content"]) == normal(text)
    assert normal(reply.locator(".thinking-body").text_content() or "") == normal(thinking)

    writing = shown(page, "writing")
    assert len({len(piece) for _, piece in writing}) >= 3
    assert all(normal(text).startswith(normal(piece)) for _, piece in writing)
    # It went on from the live events (writing began after the reload), never re-reading the conversation meanwhile
    # (reply.done does, before its own render: hence up to the last text shown while writing).
    began, ended = writing[0][0], writing[-1][0]
    path = f"/chat/api/conversations/{cid}"
    assert not [at for at, _, url in page.evaluate("window.fetches") if url == path and began < at < ended]


def test_an_interrupted_reply_keeps_its_text_and_continues(page: Page, simulator: Server) -> None:
    script(
        simulator,
        {"match": "crash", "reply": counting(3000), "thinking": ""},  # 15 s: the gateway dies long before the end
        {"match": "crash", "reply": " And that is the end.", "thinking": ""},
    )
    first = start_gateway(simulator.url, "--checkpoint-interval", "0.2", "--heartbeat", "0.5")
    data_dir = first.args[first.args.index("--data-dir") + 1]
    try:
        cid = create(first, "Crash")
        reply_id = post_message(first, cid, "crash in the middle")["reply"]["id"]
        assert wait_for(lambda: len((view(first, cid)["active"] or {}).get("content", "")) > 200, timeout=10)
        time.sleep(0.5)  # a checkpoint or two of that text
    finally:
        first.kill()  # SIGKILL: no shutdown, only what the checkpoints saved
    second = start_gateway(simulator.url, "--data-dir", data_dir, "--heartbeat", "0.5")
    try:
        interrupted = view(second, cid)["messages"][-1]
        assert (interrupted["id"], interrupted["status"]) == (reply_id, "interrupted")
        partial = interrupted["content"]
        assert counting(3000).startswith(partial)

        open_chat(page, f"{second.url}/chat#c={cid}")
        reply = finished(page, "interrupted")
        expect(reply.get_by_test_id("message-status")).to_have_text("Interrupted")
        assert normal(reply.get_by_test_id("message-content").inner_text()) == normal(partial)
        expect(reply.get_by_test_id("regenerate")).to_be_visible()
        reply.get_by_test_id("continue").click()

        expect(page.locator(f"[data-id='{reply_id}']")).to_have_count(0)  # superseded by the continued reply
        continued = finished(page)
        expect(page.locator(REPLY)).to_have_count(1)
        expect(continued.get_by_test_id("continue")).to_be_hidden()
        stored = view(second, cid)["messages"][-1]
        assert stored["status"] == "done"
        assert stored["content"] == partial + " And that is the end."
        assert normal(continued.get_by_test_id("message-content").inner_text()) == normal(stored["content"])
    finally:
        leave_and_stop(page, second)


def test_a_waiting_reply_shows_its_place_in_line_and_a_full_queue_says_when_to_retry(
    page: Page, simulator: Server
) -> None:
    script(
        simulator,
        {"match": "first in", "reply": lorem(800), "thinking": ""},  # 4 s in the only slot
        {"match": "second in", "reply": lorem(300), "thinking": ""},
        {"match": "third in", "reply": "Finally my turn.", "thinking": ""},
    )
    limited = start_gateway(simulator.url, "--max-running", "1", "--max-queue-per-user", "2", "--heartbeat", "0.5")
    try:
        first, second, third = create(limited), create(limited), create(limited)
        for cid, text in ((first, "first in"), (second, "second in"), (third, "third in")):
            post_message(limited, cid, text)

        open_chat(page, limited.url + "/chat")  # a third reply waiting for the same user (this address): 429
        send(page, "fourth in line")
        expect(page.get_by_test_id("error")).to_have_text(
            re.compile(r"The model is busy and you already have replies waiting; try again in \d+ s\.")
        )
        expect(page.get_by_test_id("composer-input")).to_have_value("fourth in line")

        open_chat(page, f"{limited.url}/chat#c={third}")
        status = last_reply(page).get_by_test_id("message-status")
        expect(last_reply(page)).to_have_attribute("data-status", "waiting")
        expect(status).to_have_text("Waiting for the model — 2nd in line")  # from the snapshot on opening it
        expect(status).to_have_text("Waiting for the model — 1st in line")  # once the first reply is done
        expect(finished(page)).to_contain_text("Finally my turn.")
        expect(status).to_have_text("Done")
    finally:
        leave_and_stop(page, limited)


def test_the_first_reply_to_wait_says_it_is_next_in_line(page: Page, simulator: Server) -> None:
    script(
        simulator,
        {"match": "hold the slot", "reply": lorem(600), "thinking": ""},
        {"match": "wait for it", "reply": "My turn.", "thinking": ""},
    )
    limited = start_gateway(simulator.url, "--max-running", "1", "--heartbeat", "0.5")
    try:
        post_message(limited, create(limited), "hold the slot")
        open_chat(page, limited.url + "/chat")
        send(page, "wait for it")
        status = last_reply(page).get_by_test_id("message-status")
        expect(status).to_have_text("Waiting for the model — 1st in line", timeout=2_000)
        page.reload()  # the snapshot in the conversation's view says it too
        expect(status).to_have_text("Waiting for the model — 1st in line", timeout=2_000)
        expect(finished(page)).to_contain_text("My turn.")
    finally:
        leave_and_stop(page, limited)


# The send command reaches the server, then the page closes its socket: the ack never arrives, as when a phone
# loses its network just after sending.
CUT_AFTER_SEND = """(() => {
  const real = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    real.call(this, data);
    if (window.cutAfterSend && String(data).includes('"type":"send"')) {
      window.cutAfterSend = false;
      this.close();
    }
  };
})()"""


def test_a_send_cut_off_before_its_ack_is_retried_and_stored_once(
    page: Page, simulator: Server, gateway: Server
) -> None:
    script(simulator, {"match": "only once", "reply": "Stored once.", "thinking": ""})
    page.add_init_script(CUT_AFTER_SEND)
    commands = sent_commands(page)
    open_chat(page)
    page.evaluate("window.cutAfterSend = true")
    send(page, "say this only once")
    expect(finished(page)).to_contain_text("Stored once.")

    # The reply can reach the page through its watch of the conversation before the repeated send goes out.
    def sends() -> list[dict[str, Any]]:
        return [c for c in commands if c["type"] == "send"]

    assert wait_for(lambda: len(sends()) == 2, timeout=10), sends()
    sends_made = sends()
    assert len(sends_made) == 2
    assert sends_made[0]["client_id"] == sends_made[1]["client_id"]
    messages = view(gateway, conversation_id(page))["messages"]
    client_id = sends_made[0]["client_id"]
    assert [(m["role"], m["client_id"]) for m in messages] == [("user", client_id), ("assistant", None)]
    expect(page.locator("[data-testid=message][data-role=user]")).to_have_count(1)
    expect(page.get_by_test_id("composer-input")).to_have_value("")
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_coming_back_online_reconnects_without_waiting_out_the_backoff(page: Page, gateway: Server) -> None:
    relay = Relay(gateway)
    try:
        open_chat(page, relay.url + "/chat")
        relay.refuse_websockets = True
        relay.cut()
        assert wait_for(lambda: relay.refused >= 3, timeout=40)  # seconds apart at most; more on a busy machine
        time.sleep(0.2)
        relay.refuse_websockets = False
        upgrades = relay.upgrades
        page.evaluate("window.dispatchEvent(new Event('online'))")
        assert wait_for(lambda: relay.upgrades > upgrades, timeout=1.2), "it waited for its backoff"
        expect(page.get_by_test_id("link-state")).to_be_hidden()
    finally:
        relay.close()
