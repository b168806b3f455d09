"""The fleet on the page, in a real browser: the model picker says where each model runs and keeps one no backend
serves now (marked unavailable); the admin's Backends panel drains a backend and brings it back; a reply's details
name the backend that wrote it; a reply that moved to another backend mid-way is marked where it did, live and
after a reload."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import (
    LOREM_START,
    chromium,
    conversation_id,
    finished,
    last_reply,
    lorem,
    new_page,
    open_chat,
    send,
    view,
)
from conftest import Server, script, start_process, start_simulator

FAST = ("--profile", "instant", "--num-parallel", "0")


def start_fleet(backends: dict[str, Server]) -> Server:
    """A gateway whose backends are named (`[[backends]]`), checked often so that a stopped one is seen at once."""
    config = Path(tempfile.mkstemp(prefix="clawdbot-fleet-", suffix=".toml")[1])
    tables = (f'[[backends]]\nname = "{name}"\nurl = "{sim.url}"\n' for name, sim in backends.items())
    config.write_text("\n".join(tables))
    data = tempfile.mkdtemp(prefix="clawdbot-data-")
    args = ["--config", str(config), "--data-dir", data, "--health-interval", "0.5", "--max-running", "8"]
    return start_process(["serve", "--port", "0", "--no-auth", *args])


def backends(gateway: Server) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(gateway.url + "/readyz").json()["backends"]}


def wait_for_state(gateway: Server, name: str, state: str) -> None:
    deadline = time.monotonic() + 15
    while backends(gateway)[name]["state"] != state:
        assert time.monotonic() < deadline, f"{name} never became {state}: {backends(gateway)[name]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Server]]:
    started = {
        "gpu0": start_simulator(*FAST, "--models", "qwen3:32b"),
        "gpu1": start_simulator(*FAST, "--models", "qwen3:32b"),
        "cpu0": start_simulator(*FAST, "--models", "mistral:7b"),
    }
    yield started
    for sim in started.values():
        sim.stop()


@pytest.fixture(scope="module")
def gateway(sims: dict[str, Server]) -> Iterator[Server]:
    server = start_fleet(sims)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def problems() -> list[str]:
    return []


@pytest.fixture
def page(browser: Browser, gateway: Server, problems: list[str]) -> Iterator[Page]:
    tab = new_page(browser, gateway, problems)
    yield tab
    tab.context.close()
    assert not problems


def test_the_picker_says_where_models_run_and_keeps_an_unavailable_one(
    page: Page, sims: dict[str, Server], gateway: Server
) -> None:
    wait_for_state(gateway, "cpu0", "healthy")  # its models were listed once
    sims["cpu0"].stop()
    wait_for_state(gateway, "cpu0", "out")
    open_chat(page)
    picker = page.get_by_test_id("model-picker")
    qwen = picker.locator("option[value='qwen3:32b']")
    expect(qwen).to_contain_text("— gpu0, gpu1")
    expect(qwen).to_have_attribute("title", "Runs on gpu0, gpu1")
    expect(qwen).to_be_enabled()
    mistral = picker.locator("option[value='mistral:7b']")  # still listed: its backend is only down
    expect(mistral).to_contain_text("— unavailable")
    expect(mistral).to_have_attribute("data-unavailable", "true")
    expect(mistral).to_be_disabled()
    picker.evaluate("(select) => select.setAttribute('size', '3')")  # the list open, for the screenshot
    page.screenshot(path="/tmp/fleet-picker.png")


def test_the_admin_drains_a_backend_and_brings_it_back(page: Page, gateway: Server) -> None:
    open_chat(page, "/chat/admin")
    panel = page.get_by_test_id("backends-panel")
    gpu1 = panel.locator("[data-testid=backend][data-name=gpu1]")
    expect(gpu1).to_have_attribute("data-state", "healthy")
    expect(gpu1.get_by_test_id("backend-kind")).to_have_text("ollama")
    expect(gpu1.get_by_test_id("backend-models")).to_have_text("qwen3:32b")
    expect(gpu1.get_by_test_id("backend-slots")).not_to_be_empty()
    panel.get_by_test_id("backend").first.scroll_into_view_if_needed()
    page.screenshot(path="/tmp/fleet-admin.png")

    gpu1.get_by_test_id("backend-drain").click()
    expect(gpu1).to_have_attribute("data-state", "draining")
    expect(gpu1.get_by_test_id("backend-drain")).to_have_text("Bring back")
    assert backends(gateway)["gpu1"]["state"] == "draining"
    models = httpx.get(gateway.url + "/chat/api/models").json()["models"]
    assert next(m for m in models if m["name"] == "qwen3:32b")["backends"] == ["gpu0"]
    page.screenshot(path="/tmp/fleet-admin-draining.png")

    gpu1.get_by_test_id("backend-drain").click()
    expect(gpu1).to_have_attribute("data-state", "healthy")
    expect(gpu1.get_by_test_id("backend-drain")).to_have_text("Drain")
    assert backends(gateway)["gpu1"]["state"] == "healthy"


def test_a_reply_names_the_backend_that_wrote_it(page: Page, sims: dict[str, Server], gateway: Server) -> None:
    for name in ("gpu0", "gpu1"):
        script(sims[name], {"match": "", "reply": "Hello from the fleet.", "thinking": ""})
    open_chat(page)
    send(page, "hello")
    reply = finished(page)
    stored = view(gateway, conversation_id(page))["messages"][-1]
    assert stored["backend"] in ("gpu0", "gpu1")
    expect(reply.get_by_test_id("message-backend")).to_have_text(stored["backend"])
    expect(reply.get_by_test_id("message-backend")).to_have_attribute("title", f"Written by {stored['backend']}")
    expect(reply.get_by_test_id("switch-mark")).to_have_count(0)


def test_a_reply_that_moved_to_another_backend_is_marked_where_it_did(browser: Browser, problems: list[str]) -> None:
    """Its backend stops mid-reply: the same reply goes on from the other one, marked there, live and stored."""
    slow = ("--profile", "instant", "--num-parallel", "0", "--tokens-per-second", "40")
    pair = {"gpu0": start_simulator(*slow), "gpu1": start_simulator(*slow)}
    text = lorem(200)
    for sim in pair.values():
        script(sim, {"match": "", "reply": text, "thinking": ""})
    gateway = start_fleet(pair)
    page = new_page(browser, gateway, problems)
    try:
        open_chat(page)
        send(page, "a long one")
        expect(last_reply(page).get_by_test_id("message-content")).to_contain_text(LOREM_START)
        first = next(name for name, b in backends(gateway).items() if b["running"])
        other = next(name for name in pair if name != first)
        pair[first].kill()

        reply = last_reply(page)
        mark = reply.get_by_test_id("switch-mark")
        expect(mark).to_have_text(f"continued on {other}")  # live, from reply.switch
        expect(mark).to_have_attribute("data-from", first)
        page.screenshot(path="/tmp/fleet-switch-live.png")
        # Most of the 200 words are still to come at 40 tokens a second: 5 s or more, longer on a loaded machine.
        finished(page, timeout=30_000)
        expect(reply.get_by_test_id("message-backend")).to_have_text(f"{first} → {other}")
        stored = view(gateway, conversation_id(page))["messages"][-1]
        assert stored["backend"] == f"{first},{other}"
        [switch] = stored["switches"]
        assert (switch["from"], switch["to"]) == (first, other)
        assert " ".join(stored["content"].split()) == " ".join(text.split())
        # The mark sits in the text, which reads as it would without it.
        body = reply.get_by_test_id("message-content")
        assert " ".join(body.inner_text().replace(f"continued on {other}", "").split()) == " ".join(text.split())

        page.reload()
        reply = finished(page)
        mark = reply.get_by_test_id("switch-mark")
        expect(mark).to_have_text(f"continued on {other}")  # from the stored switches
        expect(mark).to_have_attribute("data-at", str(switch["at"]))
        expect(reply.get_by_test_id("message-backend")).to_have_text(f"{first} → {other}")
        mark.scroll_into_view_if_needed()
        page.screenshot(path="/tmp/fleet-switch-stored.png")
    finally:
        page.context.close()
        gateway.stop()
        for sim in pair.values():
            sim.stop()
    assert not problems
