"""Titles the model writes (--model-titles): after a conversation's first exchange, in the background, reaching open
pages as an event; never in a slot a reply waits for, given back the moment a reply needs it, and never over a
title the user chose. Model output is untrusted: what it says is cut to one plain line."""

from __future__ import annotations

import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from chat_support import ChatApi, Socket, Spy, chat_api, sim_runner, wait_until
from clawdbot.backends.admission import MemoryAdmission
from clawdbot.chat.titles import clean
from conftest import Server, script, start_gateway

ASKED = "Title of this conversation"  # in the title request's prompt: how the simulator's script tells it apart


# ---- what the model said, made a title --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("said", "title"),
    [
        ("Tuning Nginx for WebSockets", "Tuning Nginx for WebSockets"),
        ('"**Tuning Nginx.**"', "Tuning Nginx"),
        ("# Title: `Nginx` tips\nHere is why I chose it…", "Nginx tips"),
        ("<think>the user wants a title</think>\n\n「上下文长度设置」", "上下文长度设置"),
        ("标题：上下文长度", "上下文长度"),
        ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)"),  # plain text: shown, never run
        ("x" * 80, "x" * 59 + "…"),
        ("", None),
        ('"…"', None),
        ("<think>thinking and never done", None),
    ],
)
def test_an_answer_becomes_one_short_plain_line_or_nothing(said: str, title: str | None) -> None:
    assert clean(said) == title


# ---- background work in the admission control ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_background_work_runs_only_while_idle_and_gives_its_slot_back_at_once() -> None:
    admission = MemoryAdmission(1, max_queue=10, max_queue_per_user=10)
    taken_back: list[str] = []
    title = admission.enter_background("titles")
    title.preempt = lambda: taken_back.append("title")
    assert title.running  # the backend was idle
    reply = await admission.enter("ana")
    assert reply.running  # at once: the title gave its slot back
    assert (taken_back, title.running, title.preempted) == (["title"], False, True)
    admission.release(title)  # its job ending changes nothing any more
    assert (admission.running, reply.running) == (1, True)


@pytest.mark.asyncio
async def test_background_work_waits_behind_every_reply_even_later_ones() -> None:
    admission = MemoryAdmission(1, max_queue=10, max_queue_per_user=10)
    running = await admission.enter("ana")
    waiting = await admission.enter("bo")
    title = admission.enter_background("titles")  # before cy's reply, yet after it
    later = await admission.enter("cy")
    admission.release(running)
    assert waiting.running
    assert not title.running
    admission.release(waiting)
    assert later.running
    assert not title.running
    admission.release(later)
    assert title.running
    admission.release(title)
    assert admission.running == 0


# ---- on a real gateway --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spy(simulator: Server) -> Iterator[Spy]:
    recording = Spy(simulator.url)
    yield recording
    recording.stop()


@pytest.fixture(scope="module")
def gateway(spy: Spy) -> Iterator[Server]:
    server = start_gateway(spy.url, "--model-titles", "--max-running", "1")  # one slot: replies and titles share it
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


def titles_asked(spy: Spy) -> list[str]:
    """The first-exchange questions of the title requests the gateway made, in order."""
    return [e.body["messages"][-1]["content"] for e in spy.chats() if ASKED in e.body["messages"][-1]["content"]]


def replies_asked(spy: Spy) -> list[str]:
    return [e.body["messages"][-1]["content"] for e in spy.chats() if ASKED not in e.body["messages"][-1]["content"]]


@pytest.mark.asyncio
async def test_the_model_names_a_conversation_after_its_first_exchange(gateway: Server, simulator: Server) -> None:
    script(
        simulator,
        {"match": "websocket upgrade", "reply": "Set the Upgrade header.", "thinking": ""},
        {"match": ASKED, "reply": '"**Nginx and WebSockets.**"\nThis title says what it is about.', "thinking": ""},
    )
    with chat_api(gateway.url) as api:
        conversation = api.create()["id"]
    async with aiohttp.ClientSession() as session, session.ws_connect(gateway.url + "/chat/api/ws") as ws:
        socket = Socket(ws)
        await socket.next()  # hello
        await socket.command("send", conversation_id=conversation, content="How does the websocket upgrade work?")
        events = await socket.until(lambda event: event["type"] == "conversation.title")
        async with session.get(gateway.url + "/chat/api/conversations") as listing:
            listed = (await listing.json())["conversations"]
    assert events[-1] == {
        "type": "conversation.title",
        "conversation_id": conversation,
        "title": "Nginx and WebSockets",
    }
    mine = next(c for c in listed if c["id"] == conversation)
    assert (mine["title"], mine["title_set"]) == ("Nginx and WebSockets", False)  # still no name the user chose


def test_a_title_is_asked_with_the_context_size_of_the_reply_before_it(
    api: ChatApi, simulator: Server, spy: Spy
) -> None:
    """A conversation's own num_ctx goes with its title request too: another size would reload the model."""
    script(simulator, {"match": ASKED, "reply": "Sizes", "thinking": ""})
    conversation = api.create(num_ctx=3072)["id"]
    api.turn(conversation, "first question with a context of its own")
    wait_until(lambda: any("context of its own" in q for q in titles_asked(spy)), "its title request")
    sent = [e.body for e in spy.chats() if "context of its own" in e.body["messages"][-1]["content"]]
    reply, title = sorted(sent, key=lambda body: ASKED in body["messages"][-1]["content"])
    assert reply["options"]["num_ctx"] == title["options"]["num_ctx"] == 3072


def kept(gateway: Server) -> float:
    """Titles the model wrote that were not used (the user's title stood, or the answer was junk)."""
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith('clawdbot_model_titles_total{outcome="kept"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_title_the_user_chose_stands(api: ChatApi, gateway: Server, simulator: Server, spy: Spy) -> None:
    slow_title = {
        "match": ASKED,
        "reply": "A model's title",
        "thinking": "",
        "fault": {"kind": "slow_first", "seconds": 1},
    }
    script(simulator, {**slow_title, "times": -1})
    before = kept(gateway)
    named = api.create(title="My own name")["id"]
    api.turn(named, "first question of a named one")
    renamed = api.create()["id"]
    asked = len(titles_asked(spy))
    api.turn(renamed, "first question of one renamed while its title is written")
    wait_until(lambda: any("renamed while" in q for q in titles_asked(spy)[asked:]), "its title request")
    api.patch(renamed, title="Renamed by me")  # while the model writes its title
    wait_until(lambda: kept(gateway) >= before + 2, "both titles to be answered and left unused", timeout=15)
    assert api.view(named)["conversation"]["title"] == "My own name"
    assert api.view(renamed)["conversation"]["title"] == "Renamed by me"


def test_a_reply_takes_the_slot_back_from_a_title_at_once(api: ChatApi, simulator: Server, spy: Spy) -> None:
    script(
        simulator,
        {"match": ASKED, "fault": {"kind": "slow_first", "seconds": 4}},  # the first title try holds the slot
        {"match": ASKED, "reply": "Slow Title", "thinking": ""},
    )
    first = api.create()["id"]
    api.turn(first, "a first question")
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0 and titles_asked(spy), "the title request")
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    second = api.create()["id"]
    started = time.monotonic()
    reply = api.turn(second, "a question that must not wait")
    assert reply["status"] == "done"
    assert time.monotonic() - started < 2.5  # not the 4 s the title would have held the only slot
    wait_until(lambda: api.view(first)["conversation"]["title"] == "Slow Title", "the title, asked again", timeout=10)
    assert sim_runner(simulator.url)["cancelled_total"] >= cancelled  # the slow try was closed, not waited for


def test_titles_wait_behind_every_reply_even_one_sent_after_them(api: ChatApi, simulator: Server, spy: Spy) -> None:
    script(
        simulator,
        {"match": "alpha", "reply": "A.", "thinking": "", "fault": {"kind": "slow_first", "seconds": 0.5}},
        {"match": "bravo", "reply": "B.", "thinking": "", "fault": {"kind": "slow_first", "seconds": 1.5}},
        {"match": ASKED, "reply": "Some title", "thinking": "", "times": -1},
    )
    alpha, bravo, charlie = (api.create()["id"] for _ in range(3))
    first = len(spy.chats())
    a = api.send(alpha, "alpha question")["reply"]["id"]
    b = api.send(bravo, "bravo question")["reply"]["id"]  # waits for alpha's slot
    api.wait_reply(alpha, a)  # alpha's title now asks for a slot: bravo has it
    c = api.send(charlie, "charlie question")["reply"]["id"]  # after alpha's title asked
    api.wait_reply(bravo, b)
    api.wait_reply(charlie, c)
    wait_until(lambda: len(spy.chats()) >= first + 6, "the three titles")
    served = [e.body["messages"][-1]["content"] for e in spy.chats()[first:]]
    assert [("title" if ASKED in q else q.split()[0]) for q in served] == [
        *("alpha", "bravo", "charlie"),
        *("title", "title", "title"),
    ]


def test_without_the_switch_the_first_message_is_the_title(simulator: Server) -> None:
    gateway = start_gateway(simulator.url)  # --model-titles off, the default
    try:
        with chat_api(gateway.url) as api:
            conversation = api.create()["id"]
            api.turn(conversation, "What is a context window?\nMore details here.")
            time.sleep(0.3)
            assert api.view(conversation)["conversation"]["title"] == "What is a context window?"
        metrics = httpx.get(gateway.url + "/metrics").text
        assert 'clawdbot_model_titles_total{outcome="made"} 0.0' in metrics
    finally:
        gateway.stop()
