"""The platform limits on the page, in a real browser: a reply the gateway cut off says so and has Continue; a
conversation's reply length and the model's context size in its settings; the admin's platform settings; a title
the model wrote arriving in the sidebar."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import REPLY, chromium, conversation_id, finished, new_page, open_chat, page_gateway, send, view
from conftest import Server, script, start_simulator

MAX_TOKENS = 200


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--tokens-per-second", "400", "--num-parallel", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = page_gateway(
        simulator.url, "--num-ctx", "6144", "--num-predict", "150", "--max-num-predict", str(MAX_TOKENS)
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def page(browser: Browser, gateway: Server) -> Iterator[Page]:
    problems: list[str] = []
    tab = new_page(browser, gateway, problems)
    yield tab
    tab.context.close()
    assert not problems
    httpx.patch(gateway.url + "/chat/api/admin/settings", json={"model_titles": None, "num_ctx": {"qwen3:32b": None}})


def test_a_reply_cut_off_by_the_gateway_says_so_and_continues(page: Page, simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "loop", "reply": "round and ", "thinking": "", "endless": True, "times": -1})
    open_chat(page)
    send(page, "loop for ever")
    cut = finished(page)
    expect(cut.get_by_test_id("message-status")).to_have_text("Cut off at the length limit")
    expect(cut.get_by_test_id("message-status")).to_be_visible()  # a reply that simply ended shows no status
    expect(cut.get_by_test_id("continue")).to_be_visible()
    first = view(gateway, conversation_id(page))["messages"][-1]
    assert (first["status"], first["done_reason"]) == ("done", "length")
    page.screenshot(path="/tmp/cut-off.png")

    cut.get_by_test_id("continue").click()
    expect(page.locator(f"[data-id='{first['id']}']")).to_have_count(0)  # superseded by the continued reply
    expect(page.locator(REPLY)).to_have_count(1)
    again = finished(page)
    expect(again.get_by_test_id("message-status")).to_have_text("Cut off at the length limit")
    stored = view(gateway, conversation_id(page))["messages"][-1]
    assert stored["content"].startswith(first["content"])
    assert len(stored["content"]) > len(first["content"])


def test_the_settings_show_the_models_size_and_take_a_reply_length(page: Page, gateway: Server) -> None:
    httpx.patch(gateway.url + "/chat/api/admin/settings", json={"num_ctx": {"qwen3:32b": 3072}}).raise_for_status()
    open_chat(page)
    page.get_by_test_id("settings-button").click()
    expect(page.get_by_test_id("settings-num-ctx")).to_have_attribute("placeholder", "server default (3072)")
    length = page.get_by_test_id("settings-num-predict")
    expect(length).to_have_attribute("placeholder", "server default (150)")
    expect(page.get_by_test_id("settings-num-predict-hint")).to_contain_text(f"at most {MAX_TOKENS}")
    length.fill(str(MAX_TOKENS + 1))
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-panel")).to_be_visible()  # the browser refuses it: over the maximum
    length.fill("40")
    page.screenshot(path="/tmp/settings.png")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-panel")).to_be_hidden()
    send(page, "a short one")
    finished(page)
    conversation = view(gateway, conversation_id(page))["conversation"]
    assert (conversation["num_predict"], conversation["num_ctx"]) == (40, None)


def test_the_admin_sets_limits_titles_and_a_models_size(page: Page, gateway: Server) -> None:
    open_chat(page, "/chat/admin")
    form = page.get_by_test_id("platform-form")
    expect(form.get_by_test_id("platform-num-predict")).to_have_attribute("placeholder", "default (150)")
    size = form.locator("[data-testid=platform-model-num-ctx][data-model='qwen3:32b']")
    expect(size).to_have_attribute("placeholder", "default (6144)")
    size.fill("4096")
    form.get_by_test_id("platform-max-reply-seconds").fill("600")
    form.get_by_test_id("platform-model-titles").check()
    page.screenshot(path="/tmp/admin-platform.png", full_page=True)
    form.get_by_test_id("platform-save").click()
    expect(page.get_by_test_id("toast")).to_have_text("Saved the platform settings.")
    saved = httpx.get(gateway.url + "/chat/api/admin/settings").json()
    assert saved["settings"]["max_reply_seconds"]["value"] == 600
    assert saved["settings"]["model_titles"]["value"] is True
    assert saved["models"] == [{"name": "qwen3:32b", "num_ctx": 4096, "own": None, "saved": True}]
    assert httpx.get(gateway.url + "/readyz").json()["context"]["models"] == {"qwen3:32b": 4096}

    form.get_by_test_id("platform-max-reply-seconds").fill("")  # back to the default
    form.get_by_test_id("platform-save").click()
    expect(form.get_by_test_id("platform-max-reply-seconds")).to_have_attribute("placeholder", "default (1800)")
    saved = httpx.get(gateway.url + "/chat/api/admin/settings").json()
    assert saved["settings"]["max_reply_seconds"]["saved"] is False


def test_a_title_the_model_wrote_reaches_the_sidebar(page: Page, simulator: Server, gateway: Server) -> None:
    httpx.patch(gateway.url + "/chat/api/admin/settings", json={"model_titles": True}).raise_for_status()
    script(
        simulator,
        {"match": "Title of this conversation", "reply": "<b>Bold</b> Nginx Tips", "thinking": ""},
        {"match": "", "reply": "Set the Upgrade header.", "thinking": ""},
    )
    open_chat(page)
    send(page, "how do websockets pass nginx?")
    finished(page)
    titles = page.get_by_test_id("conversation-title")
    expect(titles.first).to_have_text("<b>Bold</b> Nginx Tips")  # as text: the model's markup is never run
    expect(page).to_have_title(re.compile("^<b>Bold</b> Nginx Tips"))
    assert page.locator("[data-testid=sidebar] b").count() == 0
