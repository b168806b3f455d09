"""Versions of messages: Regenerate adds a version of a reply, Edit a version of a user message (with its own thread),
and `POST …/versions` (or the WebSocket's `switch`) picks the one shown. What is shown is stored: a reload, another
tab, the export, search and the model's context on the next turn all follow it. Continue is not a version.

The gateway talks to the simulator through a `Spy`, so a test can compare what the model was sent with what is
shown. The migration that brings a database from before versions along: tests/test_versions_migration.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from chat_support import ChatApi, Spy, chat_api, connect, done_of, wait_until
from conftest import Server, script, start_gateway, start_simulator

LONG = " ".join(f"word{i}" for i in range(300))  # 7.5 s at 40 tokens a second: long enough to act on


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "40")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spy(simulator: Server) -> Iterator[Spy]:
    server = Spy(simulator.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(spy: Spy) -> Iterator[Server]:
    server = start_gateway(spy.url, "--heartbeat", "0.5")
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


def answers(simulator: Server, *replies: str) -> None:
    script(simulator, *({"reply": reply, "thinking": ""} for reply in replies))


def shown(api: ChatApi, conversation_id: str) -> list[str]:
    return [m["content"] for m in api.view(conversation_id)["messages"]]


def switch(api: ChatApi, conversation_id: str, message_id: str) -> dict[str, Any]:
    response = api.http.post(f"/conversations/{conversation_id}/versions", json={"message_id": message_id})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def asked(spy: Spy) -> list[str]:
    """What the model was sent last, message by message."""
    return [m["content"] for m in spy.last_chat().body["messages"]]


# ---- regenerate --------------------------------------------------------------------------------------------------
def test_regenerate_keeps_the_earlier_reply_as_a_version_and_the_shown_one_is_what_the_model_sees(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation_id = api.create()["id"]
    answers(simulator, "First try.", "Second try.", "After the first.", "After the second.", "Again after the first.")
    question = api.send(conversation_id, "try")
    first = api.wait_reply(conversation_id, question["reply"]["id"])
    regenerated = api.post(conversation_id, "regenerate")
    second = regenerated["reply"]
    assert regenerated["versions"] == {second["id"]: [first["id"], second["id"]]}
    api.wait_reply(conversation_id, second["id"])
    view = api.view(conversation_id)
    assert [m["content"] for m in view["messages"]] == ["try", "Second try."]
    assert view["versions"] == {second["id"]: [first["id"], second["id"]]}

    back = switch(api, conversation_id, first["id"])
    assert back["hidden"] == [second["id"]]
    assert [m["content"] for m in back["messages"]] == ["First try."]
    assert back["versions"] == {first["id"]: [first["id"], second["id"]]}
    view = api.view(conversation_id)  # stored: a reload sees it
    assert [m["content"] for m in view["messages"]] == ["try", "First try."]
    assert view["versions"] == {first["id"]: [first["id"], second["id"]]}

    api.turn(conversation_id, "and then?")
    assert asked(spy) == ["try", "First try.", "and then?"]
    assert shown(api, conversation_id) == ["try", "First try.", "and then?", "After the first."]

    # The other version has no thread of its own yet; coming back restores the one the first version has.
    forth = switch(api, conversation_id, second["id"])
    assert [m["content"] for m in forth["messages"]] == ["Second try."]
    assert len(forth["hidden"]) == 3
    assert shown(api, conversation_id) == ["try", "Second try."]
    api.turn(conversation_id, "and now?")
    assert asked(spy) == ["try", "Second try.", "and now?"]
    switch(api, conversation_id, first["id"])
    assert shown(api, conversation_id) == ["try", "First try.", "and then?", "After the first."]

    again = api.post(conversation_id, "regenerate")  # from a version shown again: the same as from any other
    assert len(again["versions"][again["reply"]["id"]]) == 2
    api.wait_reply(conversation_id, again["reply"]["id"])
    assert asked(spy) == ["try", "First try.", "and then?"]
    assert shown(api, conversation_id) == ["try", "First try.", "and then?", "Again after the first."]


# ---- edit ----------------------------------------------------------------------------------------------------------
def test_each_version_of_an_edited_message_keeps_its_own_thread(api: ChatApi, spy: Spy, simulator: Server) -> None:
    conversation_id = api.create()["id"]
    answers(simulator, "One.", "Two.", "Two, again.", "Three.")
    api.turn(conversation_id, "first")
    second = api.send(conversation_id, "second")
    api.wait_reply(conversation_id, second["reply"]["id"])
    edited = api.post(conversation_id, "edit", {"content": "second, rephrased"})
    assert edited["versions"] == {edited["message"]["id"]: [second["message"]["id"], edited["message"]["id"]]}
    api.wait_reply(conversation_id, edited["reply"]["id"])
    assert shown(api, conversation_id) == ["first", "One.", "second, rephrased", "Two, again."]

    back = switch(api, conversation_id, second["message"]["id"])
    assert back["hidden"] == [edited["message"]["id"], edited["reply"]["id"]]
    assert [m["content"] for m in back["messages"]] == ["second", "Two."]  # the reply that answered it
    assert shown(api, conversation_id) == ["first", "One.", "second", "Two."]
    api.turn(conversation_id, "third")
    assert asked(spy) == ["first", "One.", "second", "Two.", "third"]

    switch(api, conversation_id, edited["message"]["id"])
    assert shown(api, conversation_id) == ["first", "One.", "second, rephrased", "Two, again."]
    switch(api, conversation_id, second["message"]["id"])
    assert shown(api, conversation_id) == ["first", "One.", "second", "Two.", "third", "Three."]


def test_a_retried_send_whose_message_was_edited_gets_its_own_reply_back(api: ChatApi, simulator: Server) -> None:
    conversation_id = api.create()["id"]
    answers(simulator, "To the first.", "To the edit.")
    sent = api.send(conversation_id, "first", client_id="tab-3:1")
    api.wait_reply(conversation_id, sent["reply"]["id"])
    edited = api.post(conversation_id, "edit", {"content": "edited"})
    api.wait_reply(conversation_id, edited["reply"]["id"])
    retry = {"content": "first", "client_id": "tab-3:1"}
    again = api.http.post(f"/conversations/{conversation_id}/messages", json=retry)
    assert again.status_code == 200, again.text
    assert (again.json()["message"]["id"], again.json()["reply"]["id"]) == (sent["message"]["id"], sent["reply"]["id"])


def test_an_earlier_message_can_be_edited_and_the_conversation_branches_there(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation_id = api.create()["id"]
    answers(simulator, "One.", "Two.", "One, differently.")
    first = api.send(conversation_id, "first")
    api.wait_reply(conversation_id, first["reply"]["id"])
    api.turn(conversation_id, "second")
    body = {"content": "first, rephrased", "message_id": first["message"]["id"]}
    edited = api.post(conversation_id, "edit", body)
    api.wait_reply(conversation_id, edited["reply"]["id"])
    assert asked(spy) == ["first, rephrased"]  # nothing after the edited message
    assert shown(api, conversation_id) == ["first, rephrased", "One, differently."]
    assert api.view(conversation_id)["conversation"]["title"] == "first, rephrased"
    switch(api, conversation_id, first["message"]["id"])
    assert shown(api, conversation_id) == ["first", "One.", "second", "Two."]

    reply_id = first["reply"]["id"]
    for bad in ({"content": "x", "message_id": reply_id}, {"content": "x", "message_id": str(uuid.uuid4())}):
        refused = api.http.post(f"/conversations/{conversation_id}/edit", json=bad)
        assert refused.status_code == 404, refused.text  # only a shown user message is edited
    refused = api.http.post(f"/conversations/{conversation_id}/edit", json={"content": "x", "message_id": "nope"})
    assert refused.status_code == 400
    assert shown(api, conversation_id) == ["first", "One.", "second", "Two."]


# ---- continue ------------------------------------------------------------------------------------------------------
def test_continue_goes_on_with_the_same_version(api: ChatApi, spy: Spy, simulator: Server) -> None:
    conversation_id = api.create()["id"]
    script(simulator, {"reply": "Short.", "thinking": ""}, {"reply": LONG, "thinking": ""})
    first = api.turn(conversation_id, "go")
    stopped = api.post(conversation_id, "regenerate")["reply"]
    wait_until(lambda: spy.chats() and len(spy.chats()[-1].response.splitlines()) >= 3, "the reply to stream")
    api.http.post(f"/conversations/{conversation_id}/stop")
    api.wait_reply(conversation_id, stopped["id"])
    answers(simulator, " and the rest.")
    continued = api.post(conversation_id, "continue")
    reply = continued["reply"]
    assert continued["versions"] == {reply["id"]: [first["id"], reply["id"]]}  # two versions, not three
    api.wait_reply(conversation_id, reply["id"])
    assert api.view(conversation_id)["versions"] == {reply["id"]: [first["id"], reply["id"]]}
    refused = api.http.post(f"/conversations/{conversation_id}/versions", json={"message_id": stopped["id"]})
    assert refused.status_code == 404  # the reply that was continued is no version to go back to
    switch(api, conversation_id, first["id"])
    assert shown(api, conversation_id) == ["go", "Short."]
    switch(api, conversation_id, reply["id"])
    assert shown(api, conversation_id)[-1].endswith(" and the rest.")


# ---- what may not be switched --------------------------------------------------------------------------------------
def test_switching_while_a_reply_is_written_is_a_409_and_changes_nothing(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation_id = api.create()["id"]
    script(simulator, {"reply": "Short.", "thinking": ""}, {"reply": LONG, "thinking": ""})
    first = api.turn(conversation_id, "go")
    running = api.post(conversation_id, "regenerate")["reply"]
    wait_until(lambda: spy.chats() and len(spy.chats()[-1].response.splitlines()) >= 3, "the reply to stream")
    response = api.http.post(f"/conversations/{conversation_id}/versions", json={"message_id": first["id"]})
    assert response.status_code == 409, response.text
    assert (response.json()["code"], response.json()["reply_id"]) == ("conflict", running["id"])
    assert [m["id"] for m in api.view(conversation_id)["messages"]][-1] == running["id"]
    api.http.post(f"/conversations/{conversation_id}/stop")
    api.wait_reply(conversation_id, running["id"])


def test_unknown_and_malformed_versions_are_refused_and_change_nothing(api: ChatApi, simulator: Server) -> None:
    answers(simulator, "Here.", "There.")
    here, there = api.create()["id"], api.create()["id"]
    api.turn(here, "here")
    elsewhere = api.turn(there, "there")
    path = f"/conversations/{here}/versions"
    for body, status in [
        ({"message_id": elsewhere["id"]}, 404),  # a message of another conversation is no version of this one
        ({"message_id": str(uuid.uuid4())}, 404),
        ({"message_id": "not-an-id"}, 400),
        ({}, 400),
        ({"message_id": elsewhere["id"], "extra": 1}, 400),
    ]:
        response = api.http.post(path, json=body)
        assert response.status_code == status, (body, response.text)
    nowhere = api.http.post(f"/conversations/{uuid.uuid4()}/versions", json={"message_id": elsewhere["id"]})
    assert nowhere.status_code == 404
    assert shown(api, here) == ["here", "Here."]
    assert shown(api, there) == ["there", "There."]


# ---- exports and search --------------------------------------------------------------------------------------------
def test_exports_and_search_follow_the_shown_versions(api: ChatApi, simulator: Server) -> None:
    tag = uuid.uuid4().hex[:8]
    conversation_id = api.create()["id"]
    answers(simulator, f"apples {tag}", f"pears {tag}")
    first = api.turn(conversation_id, "fruit?")
    second = api.wait_reply(conversation_id, api.post(conversation_id, "regenerate")["reply"]["id"])
    switch(api, conversation_id, first["id"])

    markdown = api.http.get(f"/conversations/{conversation_id}/export", params={"format": "markdown"}).text
    assert f"apples {tag}" in markdown
    assert f"pears {tag}" not in markdown
    assert "version 1 of 2" in markdown
    exported = api.http.get(f"/conversations/{conversation_id}/export", params={"format": "json"}).json()
    assert [m["content"] for m in exported["messages"]] == ["fruit?", f"apples {tag}"]
    assert exported["versions"] == {first["id"]: [first["id"], second["id"]]}

    found = {r["message_id"] for r in api.search(tag)}
    assert found == {first["id"]}  # a hidden version is not searched: its text is not on the page
    assert api.search(f"pears {tag}") == []
    switch(api, conversation_id, second["id"])
    assert {r["message_id"] for r in api.search(tag)} == {second["id"]}


# ---- other tabs ----------------------------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


@pytest.mark.asyncio
async def test_versions_made_and_switched_on_one_tab_reach_the_others(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server
) -> None:
    with chat_api(gateway.url) as api:
        conversation_id = api.create()["id"]
        answers(simulator, "First.", "Second.")
        first = await asyncio.to_thread(api.turn, conversation_id, "go")
    tab, other = await connect(session, gateway.url), await connect(session, gateway.url)
    assert (await other.command("subscribe", conversation_id=conversation_id))["type"] == "ack"

    made = await tab.command("regenerate", conversation_id=conversation_id)
    second = made["reply"]
    assert made["versions"] == {second["id"]: [first["id"], second["id"]]}
    seen = await other.until(done_of(second["id"]))
    versions = [e for e in seen if e["type"] == "versions"]
    assert [e["versions"] for e in versions] == [made["versions"]]

    answer = await tab.command("switch", conversation_id=conversation_id, message_id=first["id"])
    assert (answer["type"], answer["hidden"]) == ("ack", [second["id"]])
    assert [m["id"] for m in answer["messages"]] == [first["id"]]
    event = (await other.until(lambda e: e["type"] == "version.shown"))[-1]
    assert event["conversation_id"] == conversation_id
    assert (event["message_id"], event["hidden"]) == (first["id"], [second["id"]])
    assert [m["content"] for m in event["messages"]] == ["First."]
    assert event["versions"] == {first["id"]: [first["id"], second["id"]]}

    for fields in ({"message_id": "nope"}, {}):
        refused = await tab.command("switch", conversation_id=conversation_id, **fields)
        assert (refused["type"], refused["status"]) == ("error", 400)
    refused = await tab.command("switch", conversation_id=conversation_id, message_id=str(uuid.uuid4()))
    assert (refused["type"], refused["status"]) == ("error", 404)
