"""Versions on the chat page, in a real browser (Debian's Chromium through Playwright) against a real gateway and
simulator: `‹ n/m ›` under a regenerated reply and under an edited message, switched with the mouse and with the
keyboard, read to a screen reader, kept across a reload, and redrawn in another tab.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from browser_support import REPLY, chromium, conversation_id, finished, new_page, open_chat, page_gateway, send, view
from conftest import Server, script, start_simulator

USER = "[data-testid=message][data-role=user]"


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--tokens-per-second", "200", "--num-parallel", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = page_gateway(simulator.url, "--heartbeat", "0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def pages(browser: Browser, gateway: Server) -> Iterator[list[Page]]:
    """Two tabs of the same person; a script error or a CSP violation in either fails the test."""
    problems: list[str] = []
    tabs = [new_page(browser, gateway, problems) for _ in range(2)]
    yield tabs
    for tab in tabs:
        tab.context.close()
    assert not problems


def switcher(message: Locator) -> Locator:
    return message.get_by_test_id("versions")


def at_version(message: Locator, label: str) -> None:
    """The message shows `‹ label ›`, e.g. "1/2", and says so to a screen reader."""
    expect(switcher(message).get_by_test_id("version-label")).to_have_text(label)
    number, count = label.split("/")
    expect(switcher(message)).to_contain_text(f"Version {number} of {count}")


def test_versions_after_regenerate_and_edit_switch_and_stay_switched(
    pages: list[Page], simulator: Server, gateway: Server
) -> None:
    page, other = pages
    script(
        simulator,
        {"match": "which fruit?", "reply": "Apples.", "thinking": ""},
        {"match": "which fruit?", "reply": "Pears.", "thinking": ""},
        {"match": "which vegetable?", "reply": "Carrots.", "thinking": ""},
    )
    open_chat(page)
    send(page, "which fruit?")
    first = finished(page)
    expect(first).to_contain_text("Apples.")
    expect(switcher(first)).to_be_hidden()  # one version: nothing to switch

    first.get_by_test_id("regenerate").click()
    reply = finished(page)
    expect(reply).to_contain_text("Pears.")
    at_version(reply, "2/2")
    expect(reply.get_by_test_id("version-next")).to_be_disabled()

    # Another tab on the same conversation, on the fallback transport (SSE and POSTs), follows every switch.
    cid = conversation_id(page)
    open_chat(other, f"/chat?transport=sse#c={cid}")
    expect(other.locator("body")).to_have_attribute("data-transport", "sse")
    expect(other.locator(REPLY)).to_contain_text("Pears.")

    reply.get_by_test_id("version-previous").click()
    reply = page.locator(REPLY)
    expect(reply).to_contain_text("Apples.")
    at_version(reply, "1/2")
    expect(reply.get_by_test_id("version-previous")).to_be_disabled()
    expect(reply.get_by_test_id("version-next")).to_be_focused()  # focus stays on the switcher
    expect(page.get_by_test_id("announcer")).to_have_text("Version 1 of 2 shown.")
    expect(other.locator(REPLY)).to_contain_text("Apples.")
    at_version(other.locator(REPLY), "1/2")

    page.reload()
    expect(page.locator(REPLY)).to_contain_text("Apples.")
    at_version(page.locator(REPLY), "1/2")
    assert [m["content"] for m in view(gateway, cid)["messages"]] == ["which fruit?", "Apples."]

    # Edit: a version of the user message, answered anew; the earlier version keeps its thread.
    page.locator(USER).get_by_test_id("edit").click()
    page.get_by_test_id("edit-input").fill("which vegetable?")
    page.get_by_test_id("edit-save").click()
    expect(finished(page)).to_contain_text("Carrots.")
    user = page.locator(USER)
    expect(user).to_contain_text("which vegetable?")
    at_version(user, "2/2")
    expect(switcher(page.locator(REPLY))).to_be_hidden()  # the edited message's reply has one version

    user.get_by_test_id("version-previous").focus()
    page.keyboard.press("Enter")
    expect(page.locator(USER)).to_contain_text("which fruit?")
    expect(page.locator(REPLY)).to_contain_text("Apples.")  # the reply that answered that version
    at_version(page.locator(USER), "1/2")
    at_version(page.locator(REPLY), "1/2")
    expect(page.locator(USER).get_by_test_id("version-next")).to_be_focused()
    expect(other.locator(USER)).to_contain_text("which fruit?")
    expect(other.locator(REPLY)).to_contain_text("Apples.")

    page.reload()
    expect(page.locator(USER)).to_contain_text("which fruit?")
    expect(page.locator(REPLY)).to_contain_text("Apples.")
    at_version(page.locator(USER), "1/2")

    expect(other.locator(USER)).to_contain_text("which fruit?")
    other.locator(USER).get_by_test_id("version-next").click()  # switched from the other tab this time
    expect(other.locator(USER)).to_contain_text("which vegetable?")
    expect(other.locator(REPLY)).to_contain_text("Carrots.")
    expect(page.locator(USER)).to_contain_text("which vegetable?")
    expect(page.locator(REPLY)).to_contain_text("Carrots.")
    expect(page.locator(REPLY)).to_have_count(1)
    shown = view(gateway, cid)["messages"]
    assert [m["content"] for m in shown] == ["which vegetable?", "Carrots."]
